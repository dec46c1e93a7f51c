"""kt's kernels as one PyTorch custom op, `torch.ops.kt.apply(x, weights, op)`, with a fake implementation and
an autograd formula built from the IR's transposes.

`op` is the JSON text of an op.yaml mapping without its batch (the rows of x choose the bucket, see
kt.nn.selection); `weights` are the op's weight tensors, a BSR weight passed as its crow_indices, col_indices
and values (custom ops take no sparse tensors). Under `torch.compile(fullgraph=True)` and `torch.export` the op
is one opaque node: its fake implementation gives the output's shape and dtype without running anything.

The backward of every op is again kt ops, so each product it runs is a kernel kt generates and can tune:

- dense `y = a @ b`: `da = dy @ b.T`, `db = a.T @ dy` (two dense ops, the transposes as strided views; an
  operand that a batch shares gets its gradient summed over the batch);
- lowrank `y = x @ F1 @ ... @ Fk`: `dx` is the transposed chain `dy @ Fk.T @ ... @ F1.T` (a lowrank op);
  `dFi = (x @ F1 ... F(i-1)).T @ (dy @ Fk.T ... F(i+1).T)` (dense ops);
- blocksparse `y = F.linear(x, W)`: `dx = F.linear(dy, W.T)` with W.T a BSR weight of the transposed pattern
  (its blocks gathered and transposed: no dense matrix); `dW` on W's stored blocks only (a bsr_grad op);
- sum: each term's gradients; dx is their sum;
- monarch and butterfly: dx is the transposed op on dy (`transposed: true`), the weights' gradients batched
  GEMMs over the blocks (Monarch) or the levels replayed (butterfly); a transposed op's dx is the forward op on
  dy, and its weights' gradients are the forward op's with x and dy exchanged (`_transposable`).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import pickle
import sys
import threading
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import register_flop_formula

from kt.dtypes import dtype_name, torch_dtype
from kt.nn.selection import DEEP, MIN_BUCKET, TRUSTED, backward_role, bucket, bucket_spec, kernel_for
from kt.nn.selection import canonical_op_text as _canonical
from kt.nn.selection import parsed_op as _parsed
from kt.sparsity import bsr_index_arrays, bsr_tensor, hex_to_mask


def _constant_result(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo where nothing has yet: that import
    made `import kt.nn` take a second or more (seven times the rest of it). The decorator only sets the mark
    that torch.compile's tracer reads when it meets `fn`, by then imported (tests/test_nn_cpu.py checks that
    torch's decorator still sets it)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_constant_result  # torch.compile cannot trace json.dumps; the text is a trace constant
def op_text(op: dict[str, Any]) -> str:
    """The canonical text of an op mapping: equal ops give equal text (one kernel cache entry); a block-sparse
    pattern given by `density` and `seed`, or by `pattern`, as its `layout` (`canonical_text`)."""
    return _canonical(json.dumps(op, sort_keys=True, separators=(",", ":")))


@_constant_result  # (an op's text given as text: a trace constant too)
def canonical_text(text: str) -> str:
    """`text` with each block-sparse pattern (the op's, or a sum's term's) as its block and `layout` alone: the
    kernels, the fake implementation, the vmap rules and `decompose` read the pattern from `layout`, and an op
    whose pattern came by density and seed, or by `pattern: banded` (as op.yaml's examples give it), failed in
    all of them with a bare KeyError 'layout'; one with `layout` beside its density and seed (as `op_of_spec`
    writes it) was refused under vmap, its stacked layout checked against the density. Text that is no valid
    op is returned as it is, for `_checked_op` to name what is wrong."""
    return _canonical(text)


def _out_features(op: dict[str, Any]) -> int:
    if op["op"] == "sum":  # every term has the sum's features
        return _out_features(op["terms"][0])
    shape = op["shape"]
    if op["op"] == "dense":
        return shape["n"]
    if op["op"] == "lowrank":
        return shape["dims"][-1]
    if op["op"] == "monarch":
        (l, s, _), (k, _, p) = shape["w2"], shape["w1"]  # noqa: E741
        return k * p if op.get("transposed") else l * s
    if op["op"] in ("butterfly", "fft"):
        return shape["n"]
    return shape["out"]


def _in_features(op: dict[str, Any]) -> int:
    """The features of x's last dim (a weight gradient's: of dy, its x; a dense op's are any)."""
    if op["op"] == "sum":  # every term has the sum's features
        return _in_features(op["terms"][0])
    shape = op["shape"]
    if op["op"] == "lowrank":
        return shape["dims"][0]
    if op["op"] == "monarch":
        (l, s, _), (k, _, p) = shape["w2"], shape["w1"]  # noqa: E741
        return l * s if op.get("transposed") else k * p
    if op["op"] in ("butterfly", "fft"):
        return shape["n"]
    return shape["out"] if op["op"] == "blocksparse_grad" else shape["in"]


# -- the custom op -------------------------------------------------------------------------------------------


def _run(x: torch.Tensor, weights: list[torch.Tensor], op: str) -> torch.Tensor:
    """What the op computes: the selected kernel on x and the weights (the custom op's implementation, and the
    eager paths'), contiguous as the fake implementation promises: torch.fft.fft (a float32 FFT's PyTorch path)
    strides its output as x, so for a permuted x inductor stopped on "expected ... stride 32==64", and an
    eager `fft(x).view(-1, n)` failed where the compiled one ran."""
    _check_operands(op, x, weights)
    spec = _parsed(op)
    if spec.get(DEEP):  # a weight gradient's product: K's bucket is x's columns', here where they are ints
        op = _deep_text(op, bucket(x.shape[-1]))
        spec = _parsed(op)
    kernel = kernel_for(op, _row_count(spec, x), x.device)
    # a negated view (as x.conj().imag makes) is resolved: a kernel reads the memory, not the sign bit (and
    # refuses one). Here, in the custom op's implementation and the eager paths, not in `apply`, which
    # torch.compile traces (is_neg() returns no tensor)
    x = x.resolve_neg() if x.is_neg() else x
    weights = [w.resolve_neg() if w.is_neg() else w for w in weights]
    return kernel.launch(x, *_kernel_weights(spec, weights, check=not spec.get(TRUSTED))).contiguous()


@torch.library.custom_op("kt::apply", mutates_args=())
def _apply(x: torch.Tensor, weights: list[torch.Tensor], op: str) -> torch.Tensor:
    return _run(x, weights, op)


def _row_count(spec: dict[str, Any], x: torch.Tensor) -> int:
    """The rows the op's bucket is chosen by: a GEMM's M, else the rows of x (one plane of planar complex). 0
    for an x of too few dims (which `_check_operands` refuses first)."""
    if spec["op"] == "dense":
        return x.shape[-2] if x.dim() >= 2 else 0
    if _planar_input(spec):
        return x[0][..., 0].numel() if x.dim() >= 2 else 0
    return x[..., 0].numel() if x.dim() else 0


def _check_count(spec: dict[str, Any], weights: list[torch.Tensor], count: int) -> None:
    """Refuse weights of another count than the op's (`_part_count`): `apply` counts them eagerly, and
    `_check_operands` where it does not (under torch.compile, or torch.ops.kt.apply called directly), where four
    tensors for a block-sparse op said "_check_pattern() got multiple values for argument 'read'"."""
    if len(weights) != count:
        sparse = "blocksparse" in json.dumps(spec)  # a BSR weight, its own or a sum's term's
        raise TypeError(
            f"kt.nn.apply: the {spec['op']} op takes {count} weight tensor(s)"
            + (" (a BSR weight as its crow_indices, col_indices and values)" if sparse else "")
            + f", got {len(weights)}"
        )


def _check_operands(op: str, x: torch.Tensor, weights: list[torch.Tensor]) -> None:
    """Refuse the operands the op's kernel refuses, in one set of words for `_run` (before a kernel is selected)
    and the fake implementation, which gave an output for x of another width, a 0-d x, x of another dtype
    (float64 out, where the kernel refuses float64), a dense op's operands that do not fit, and an FFT's x of
    another n or dtype: torch.export exported such a program, and it failed only when run. Shapes and dtypes
    only, which fake tensors have; a BSR weight's parts are `_check_pattern`'s."""
    spec = _parsed(op)
    if "pin" not in spec:  # (a loaded kernel's op: `Kernel.as_op` counts them)
        _check_count(spec, weights, _part_count(spec))
    dtype, kind = torch_dtype(spec["dtype"]), spec["op"]
    if kind == "dense":  # any sizes, as the kernel takes them, if the operands fit
        (b,) = weights
        _check_dtype("a", x, dtype)
        _check_dtype("b", b, dtype)
        if x.dim() not in (2, 3) or b.dim() not in (2, 3):
            raise ValueError(
                f"kernel(a, b): a and b must be 2-D or 3-D (batch first), got {tuple(x.shape)} and {tuple(b.shape)}"
            )
        if x.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"kernel(a, b): inner dimensions differ: a is {tuple(x.shape)} and b is {tuple(b.shape)}"
            )
        if x.dim() == 3 and b.dim() == 3 and x.shape[0] != b.shape[0]:
            raise ValueError(f"kernel(a, b): batch sizes differ: a has {x.shape[0]}, b has {b.shape[0]}")
        return
    if _planar_input(spec):
        if x.is_complex():  # x.to(torch.float16) would drop x.imag
            raise TypeError(
                f"kernel(x): x is {x.dtype}; a float16 FFT takes complex values planar, (2, ..., "
                f"{spec['shape']['n']}): pass torch.stack([x.real, x.imag]).to(torch.float16)"
            )
        _check_dtype("x", x, dtype)
        check_planar(x, spec["shape"]["n"], "kernel(x)")
        return
    if kind == "fft" and dtype == torch.float32 and spec.get("input", "complex") == "complex":
        dtype = torch.complex64
    _check_dtype("dy" if kind == "blocksparse_grad" else "x", x, dtype)
    _check_last_dim("dy" if kind == "blocksparse_grad" else "x", x, _in_features(spec))
    if kind == "blocksparse_grad":  # dy's rows against the forward's x's, one for one
        forward = weights[0]
        _check_dtype("x", forward, dtype)
        _check_last_dim("x", forward, spec["shape"]["in"])
        if x.shape[:-1] != forward.shape[:-1]:
            raise ValueError(
                f"kernel: dy and x must have the same leading dims (one dy row per x row), got {tuple(x.shape)} "
                f"and {tuple(forward.shape)}"
            )
        return
    for i, (w, shape) in enumerate(zip(weights, _weight_shapes(op))):
        if w.is_floating_point() or w.is_complex():  # not a BSR weight's indices (`_check_pattern`)
            _check_dtype(f"weights[{i}]", w, dtype)
        if shape is not None and tuple(w.shape) != shape:
            raise ValueError(f"kernel: weights[{i}] must have shape {shape}, got {tuple(w.shape)}")


def _check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        hint = (
            f"it takes no complex values ({name}.to({dtype}) would drop {name}.imag)"
            if t.is_complex() and not dtype.is_complex
            else f"pass {name}.to({dtype})"
        )
        raise TypeError(f"kernel: {name}.dtype is {t.dtype}, but this kernel was built for {dtype}; {hint}")


def _check_last_dim(name: str, t: torch.Tensor, features: int) -> None:
    if t.dim() < 1 or t.shape[-1] != features:
        raise ValueError(
            f"kernel: {name} must have {features} features in its last dim, got shape {tuple(t.shape)}"
        )


@functools.lru_cache(maxsize=1024)
def _weight_shapes(op: str) -> tuple[tuple[int, ...] | None, ...]:
    """The shape of each weight tensor of a low-rank, Monarch, butterfly or sum op (None: a BSR weight's part)."""

    def shapes(term: dict[str, Any]) -> list[tuple[int, ...] | None]:
        shape = term.get("shape", {})
        if term["op"] == "sum":
            return [s for t in term["terms"] for s in shapes(t)]
        if term["op"] == "lowrank":
            return [(a, b) for a, b in zip(shape["dims"], shape["dims"][1:])]
        if term["op"] == "monarch":
            return [tuple(shape["w1"]), tuple(shape["w2"])]
        if term["op"] == "butterfly":
            return [(shape["n"].bit_length() - 1, shape["n"] // 2, 2, 2)]
        return [None] * _part_count(term)

    return tuple(shapes(_parsed(op)))


def check_planar(x: torch.Tensor, n: int, who: str) -> None:
    """A half FFT's x is planar complex (2, ..., n): else a ValueError in `who`'s words, as the kernel words it."""
    if x.dim() < 2 or x.shape[0] != 2 or x.shape[-1] != n:
        raise ValueError(
            f"{who}: x must be planar complex (2, ..., {n}) (real parts in x[0], imaginary in x[1]), got shape "
            f"{tuple(x.shape)}"
        )


def _planar_input(spec: dict[str, Any]) -> bool:
    return spec["op"] == "fft" and spec["dtype"] == "float16" and spec.get("input", "complex") == "complex"


@_apply.register_fake
def _(x: torch.Tensor, weights: list[torch.Tensor], op: str) -> torch.Tensor:
    # what `_run` refuses, refused here in its words (a planar FFT's x of one plane: a compiled backward indexed
    # x[1] first, an IndexError), a BSR weight's parts by their shapes (fake indices hold no values)
    _check_operands(op, x, weights)
    spec = _parsed(op)
    if not spec.get(TRUSTED):
        _check_bsr_weights(spec, weights, read=False)
    if spec["op"] == "blocksparse_grad":  # the stored blocks' gradient, shaped like the values
        return weights[3].new_empty(weights[3].shape)
    if spec["op"] == "fft":  # complex64 out, or planar (2, ..., n) half out
        if spec["dtype"] == "float32":
            return x.new_empty(x.shape, dtype=torch.complex64)
        return x.new_empty(x.shape if _planar_input(spec) else (2, *x.shape))
    if spec["op"] == "dense":  # any sizes, as the kernel takes them; a batch from either operand
        (b,) = weights
        return x.new_empty((*(x.shape[:-2] if x.dim() == 3 else b.shape[:-2]), x.shape[-2], b.shape[-1]))
    return x.new_empty((*x.shape[:-1], _out_features(spec)))


@register_flop_formula(torch.ops.kt.apply, get_raw=True)
def _flops(x: torch.Tensor, weights: list[torch.Tensor], op: str, *args, out_val=None, **kwargs) -> int:
    """torch.utils.flop_counter.FlopCounterMode's count of one op (it counted none: the kernel runs outside the
    mode): a dense product's from its operands, as torch counts a matmul's (the op takes any sizes), any other
    op's its problem's (kt.ir's `flops`) at the rows of x."""
    spec = _parsed(op)
    if spec["op"] == "dense":
        return 2 * out_val.numel() * x.shape[-1]
    rows = _row_count(spec, x)
    if not isinstance(rows, int):  # symbolic (inductor counts a graph's nodes on fake tensors): per row
        return _problem_flops(op, MIN_BUCKET) * rows // MIN_BUCKET
    return _problem_flops(op, rows) if rows else 0


@functools.lru_cache(maxsize=1024)
def _problem_flops(op: str, rows: int) -> int:
    from kt.ir.ops import op_from_spec

    spec = {key: value for key, value in _parsed(op).items() if key != "pin"}  # a loaded kernel's op
    problem = op_from_spec(bucket_spec(spec, rows, exact=True)).problem
    return problem.flops * rows // problem.rows  # past the rows a spec may have: the largest one's, scaled


def apply(x: torch.Tensor, weights: list[torch.Tensor], op: dict[str, Any] | str) -> torch.Tensor:
    """Run the op on x (and the weights) with its selected kernel; differentiable, compilable, exportable.

    `op` is a mapping or its text (`op_text`). Under torch.compile with dynamic shapes, a mapping whose sizes
    come from tensors' shapes cannot be traced (they are symbolic): give the text of one made from ints.

    torch.compile and torch.export see the custom op. In eager mode the custom op's dispatch would add its cost
    (about 75 microseconds a call on a CPU, with grad; more without) and nothing else, which is most of a small
    layer's time on the CPU: there the kernel is called directly when nothing is to be differentiated
    (inference, and the products of a backward pass), else through a torch.autograd.Function with the custom
    op's own backward (`_backward`, the same formulas)."""
    if isinstance(weights, torch.Tensor):  # list() would take its rows as the weights
        raise TypeError(
            "kt.nn.apply: weights must be a list of the op's weight tensors, got one tensor; pass [w]"
        )
    if torch.jit.is_tracing():  # sizes are tensors there: kt failed on "bucket: rows must be an integer"
        from kt.nn.layers import NO_TORCHSCRIPT

        raise TypeError(f"kt.nn: {NO_TORCHSCRIPT}")
    if not isinstance(weights, (list, tuple)):  # None: list()'s TypeError, naming nothing passed
        raise TypeError(
            f"kt.nn.apply: weights must be a list of the op's weight tensors, got {type(weights).__name__}"
        )
    weights = list(weights)
    _require_tensors("kt.nn.apply", x, weights)
    if isinstance(op, str):
        text = canonical_text(op)
    else:
        try:
            text = op_text(op)
        except (TypeError, ValueError) as exc:  # a torch.float32 for a dtype: json's TypeError
            raise TypeError(
                f"kt.nn.apply: op must be an op.yaml mapping of text, numbers and lists (a dtype by name: "
                f"'float16'), or its JSON text; {exc}"
            ) from None
    compiling = torch.compiler.is_compiling()
    if not compiling:  # the op's text is checked once (a trace would inline the parse)
        count = _checked_op(text)
        if count is not None:
            _check_count(_parsed(text), weights, count)
    if compiling and torch._C._functorch.maybe_current_level() is not None:
        # traced inside a torch.func transform: no path (functorch refuses the custom op's torch.library
        # autograd, pytorch/pytorch#168393, and dynamo fails on _FuncApply). dynamo cannot trace the query
        # above there (outside a transform it is None), so it breaks the graph before this line and the
        # transform runs eagerly; under fullgraph=True that break is the error. Reached otherwise, say so
        raise RuntimeError(
            "kt.nn: torch.compile of a torch.func transform (grad, vmap, jacrev) over a kt op is not supported "
            "(PyTorch's custom ops lack it: pytorch/pytorch#168393); run the transform without torch.compile"
        )
    if (
        type(x) not in _PLAIN or any(type(w) not in _PLAIN for w in weights) or compiling or x.is_meta
    ):  # a trace (its tensors are fake or functional subclasses), or shapes only (the fake implementation)
        return torch.ops.kt.apply(x, weights, text)
    _refuse_legacy_vmap(x, *weights)  # its batched tensors are plain ones to type()
    transforms = _func_transforms()
    if _FUNCTIONALIZE in transforms:  # torch.func.functionalize: its wrappers unwrapped by the custom op
        if transforms & _DIFFERENTIATING:
            raise RuntimeError(
                "kt.nn: torch.func.functionalize composed with grad or jvp (jacrev, hessian, ...) over a kt op is "
                "not supported (PyTorch has no functionalize rule for an autograd.Function, and functorch "
                "refuses the custom op's own autograd: pytorch/pytorch#168393); run either transform alone"
            )
        return torch.ops.kt.apply(x, weights, text)
    if transforms or torch.autograd.forward_ad._current_level >= 0:  # torch.func, or dual tensors
        return _FuncApply.apply(x, text, *weights)
    if torch._C._len_torch_dispatch_stack():
        # a TorchDispatchMode (make_fx's tracer, FlopCounterMode) sees the op, not the kernel's own torch ops
        # (make_fx recorded those, or failed on the interpreter's storages; FlopCounterMode counted 0 FLOPs of a
        # Triton kernel): the mode is off while the op runs
        return torch.ops.kt.apply(x, weights, text)
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return _EagerApply.apply(x, text, *weights)
    return _run(x, weights, text)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


LEGACY_VMAP = (
    "kt.nn: PyTorch's legacy vmap (torch.autograd.grad(..., is_grads_batched=True), and "
    "torch.autograd.functional.jacobian or hessian with vectorize=True) over a kt op is not supported; use "
    "torch.func (jacrev, jacfwd, hessian, or vmap over vjp: each batch one kernel call), or vectorize=False"
)


def _refuse_legacy_vmap(*tensors: torch.Tensor) -> None:
    """A tensor batched by PyTorch's legacy vmap (`torch._vmap_internals`, which is_grads_batched and
    torch.autograd.functional's vectorize=True run, none of torch.func's transforms) is refused in one line: the
    kernels read memory such a tensor has not, and the PyTorch paths' out= and view ops have no legacy batching
    rule ("Batching rule not implemented for aten::matmul.out", "Cannot access storage of BatchedTensorImpl")."""
    if not torch.compiler.is_compiling() and any(_is_legacy_batched(t) for t in tensors):  # dynamo skips it
        raise RuntimeError(LEGACY_VMAP)


_is_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def _readable(*tensors: torch.Tensor) -> bool:
    """Whether kt may read these tensors' memory and keep tensors it makes for them: plain tensors (not a trace's
    fake or functional subclasses) while no TorchDispatchMode is active (FakeTensorMode, make_fx's tracer,
    FlopCounterMode: under a mode kt's own reads and tensors go through it too, and a FakeTensorMode refused a
    plain tensor's `.cpu()`, or made a tensor kept for later calls a fake one)."""
    return not torch._C._len_torch_dispatch_stack() and all(type(t) in _PLAIN for t in tensors)


def _require_tensors(who: str, x: Any, weights) -> None:
    """A TypeError naming the argument that is no tensor: None or a numpy array failed with an AttributeError
    deep in kt (`dim`, `layout`) or with torch's dispatcher's multi-line words."""
    for name, value in (("x", x), *((f"weights[{i}]", w) for i, w in enumerate(weights))):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(value).__name__}")


@functools.lru_cache(maxsize=1024)
def _checked_op(text: str) -> int | None:
    """How many weight tensors the op of `text` takes; an op that is no valid op.yaml mapping (less its batch)
    is refused in op.yaml's words (a mapping without `shape` was a bare KeyError). None for a loaded kernel's
    pinned op (`kernel_op`, which `Kernel.as_op` checks itself)."""
    from kt.spec import SpecError

    try:
        op = json.loads(text)
    except ValueError as error:
        raise ValueError(f"kt.nn.apply: op must be an op.yaml mapping or its JSON text ({error})") from None
    if not isinstance(op, dict):
        raise ValueError(
            f"kt.nn.apply: op must be an op.yaml mapping or its JSON text, got {type(op).__name__}"
        )
    if "pin" in op:
        return None
    try:
        bucket_spec(op, MIN_BUCKET)
    except SpecError as error:
        raise ValueError(f"kt.nn.apply: op: {error}") from None
    return _part_count(op)


def _func_transforms() -> frozenset:
    """The torch.func transforms (grad, vmap, jvp, functionalize and those built on them) this call is inside:
    their tensors are wrappers whose type is still torch.Tensor, and autograd.Functions must keep their
    setup_context apart from forward there (`_FuncApply`). Under functionalize alone the custom op itself runs:
    PyTorch has no functionalize rule for an autograd.Function ("NYI: Functionalize rule for
    custom_function_call"), and its wrappers cannot reach a kernel (the PyTorch path's `out=` ops were refused,
    the interpreter found "an invalid python storage"). The functionalization torch.compile's AOT autograd
    runs is no transform: its tensors are a subclass."""
    if torch._C._functorch.peek_interpreter_stack() is None:  # the common case, ~50 ns
        return _NO_TRANSFORMS
    return frozenset(level.key() for level in torch._C._functorch.get_interpreter_stack())


_NO_TRANSFORMS: frozenset = frozenset()
_FUNCTIONALIZE = torch._C._functorch.TransformType.Functionalize
_DIFFERENTIATING = frozenset((torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp))


class _FuncApply(torch.autograd.Function):
    """The op under torch.func transforms: forward(x, op, *weights) is the custom op (whose vmap rule, `_vmap`,
    batches it), backward the same formulas. Its own Function, because the one torch.library makes for
    `register_autograd` has no separate setup_context, which functorch requires (pytorch/pytorch#168393)."""

    generate_vmap_rule = True  # forward and backward are kt ops and torch ops, each with its vmap rule

    @staticmethod
    def forward(x, op, *weights):
        return torch.ops.kt.apply(x, list(weights), op)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, op, *weights = inputs
        _setup_context(ctx, (x, weights, op), output)
        ctx.save_for_forward(x, *weights)

    @staticmethod
    def backward(ctx, dy):
        return _function_backward(ctx, dy)

    @staticmethod
    def jvp(ctx, x_t, op_t, *weights_t):
        x, *weights = ctx.saved_tensors
        return _tangent(ctx.op, x, weights, x_t, weights_t)


def _tangent(op: str, x: torch.Tensor, weights: list, x_t, weights_t) -> torch.Tensor:
    """Forward mode: the op's output tangent for tangents of x and the weights (None: none). Every op is linear
    in x and affine in each weight tensor (a butterfly in each level of its twiddles), so each tangent's share is
    the op with that input replaced by its tangent: for a sum of terms, less the op with that weight zeroed (the
    other terms), and for a BSR weight's gradient nothing from the forward weight's values (only its pattern)."""
    kind = _parsed(op)["op"]
    shares = [] if x_t is None else [apply(x_t, weights, op)]
    for i, t in enumerate(weights_t):
        if t is None or (kind == "blocksparse_grad" and i == 3):
            continue
        if kind == "butterfly":  # level by level: the product of the others and this level's tangent
            level = torch.arange(t.shape[0], device=t.device).view(-1, 1, 1, 1)
            shares += [apply(x, [torch.where(level == f, t, weights[i])], op) for f in range(t.shape[0])]
            continue
        swapped = [t if j == i else w for j, w in enumerate(weights)]
        share = apply(x, swapped, op)
        if kind == "sum":
            share = share - apply(
                x, [torch.zeros_like(t) if j == i else w for j, w in enumerate(weights)], op
            )
        shares.append(share)
    if not shares:
        return torch.zeros_like(apply(x, weights, op))
    return functools.reduce(torch.add, shares)


def _vmap(info, in_dims, x, weights, op):
    """torch.func.vmap of the op. Only x batched: one call, the batch as one more leading dim of x (the op maps
    the last dim). A dense product (`_vmap_dense`) and a block-sparse op or its weight gradient
    (`_vmap_blocksparse`): one call too (a few for many samples of a large pattern); a low-rank chain or a
    Monarch op with batched weights one call per product (`_vmap_chain`, `_vmap_monarch`), and a sum each
    term by its rule (`_vmap_sum`), when the samples outnumber the products or terms. Anything else (batched
    weights of a butterfly: an ensemble): one call per batch entry, stacked."""
    x_dim, weight_dims, _ = in_dims
    spec, size = _parsed(op), info.batch_size
    if x_dim is None and all(d is None for d in weight_dims):  # (a sum's term, `_vmap_sum`): one product
        return torch.ops.kt.apply(x, list(weights), op), None

    def sample(t, dim):
        shape = t.shape if dim is None else t.shape[:dim] + t.shape[dim + 1 :]
        return torch.empty(shape, dtype=t.dtype, device="meta")

    # one sample's operands checked as the op checks them (the rules below reshape, stack and mark their own
    # ops trusted: a BSR weight's values in another block shape ran reshaped to the op's, a Monarch's weights of
    # another size gave another output width, float16 factors of a float32 op a float16 output)
    x_sample, w_samples = sample(x, x_dim), [sample(w, d) for w, d in zip(weights, weight_dims)]
    _check_operands(op, x_sample, w_samples)
    if not spec.get(TRUSTED):
        _check_bsr_weights(spec, w_samples, read=False)
    if size == 0:  # no samples (plain torch allows it): no kernel, a sample's shape from the fake op
        one = torch.ops.kt.apply(x_sample, w_samples, op)
        return torch.empty((0, *one.shape), dtype=one.dtype, device=x.device), 0
    if spec["op"] in ("blocksparse", "blocksparse_grad"):
        return _vmap_blocksparse(spec, x, x_dim, weights, weight_dims, size)
    if spec["op"] == "dense":
        (b,), (b_dim,) = weights, weight_dims
        return _vmap_dense(
            _front(x, x_dim), x_dim is not None, _front(b, b_dim), b_dim is not None, op, size
        ), 0
    if all(d is None for d in weight_dims):
        planar = _planar_input(spec)  # x is (2, ..., n): the batch goes after the planes
        y = torch.ops.kt.apply(x.movedim(x_dim, 1 if planar else 0), list(weights), op)
        return y, 1 if spec["op"] == "fft" and spec["dtype"] == "float16" else 0  # planar out: (2, B, ..., n)
    if spec["op"] == "lowrank" and size > len(weights):  # batched factors: fewer calls as a chain of products
        return _vmap_chain(x, x_dim, weights, weight_dims, size), 0
    if spec["op"] == "monarch" and size > 2:  # as its two block products
        return _vmap_monarch(x, x_dim, weights, weight_dims, size, spec.get("transposed", False)), 0
    if spec["op"] == "sum" and size > _products(spec):  # each term by its own rule, added
        return _vmap_sum(info, spec, x, x_dim, weights, weight_dims, size), 0

    def take(t, dim, i):
        return t if dim is None else t.select(dim, i)

    outs = [
        torch.ops.kt.apply(take(x, x_dim, i), [take(w, d, i) for w, d in zip(weights, weight_dims)], op)
        for i in range(size)
    ]
    return torch.stack(outs), 0


torch.library.register_vmap("kt::apply", _vmap)  # (the function stays callable: `_vmap_sum` recurses)


def _vmap_dense(a, a_batched: bool, b, b_batched: bool, op: str, size: int) -> torch.Tensor:
    """S = `size` dense products a @ b, each a (M, K) or a batch (G, M, K) and b (K, N) or (G, K, N), the batched
    operands with S in front, as one kernel call: with b shared, S joins a's rows (per group); with a shared,
    S joins b's columns; with both batched, S joins the product batch. Returns (S, [G,] M, N). Only per-sample
    data is copied, never a shared operand S times."""
    if not b_batched:  # (S, [G,] M, K) @ b: the samples' rows in one operand
        if b.dim() == 2:  # every row of every sample (and group) against b: one 2-D product
            rows = a.reshape(-1, a.shape[-1])
            return torch.ops.kt.apply(rows, [b], _unbatched(op)).reshape(*a.shape[:-1], b.shape[-1])
        rows = a.movedim(0, -3) if a.dim() == 4 else a  # (G, S, M, K), or (S, M, K) against every group
        y = torch.ops.kt.apply(rows.reshape(*rows.shape[:-3], -1, a.shape[-1]), [b], op)  # (G, S*M, N)
        y = y.unflatten(-2, (size, a.shape[-2]))  # (G, S, M, N)
        return y.movedim(-3, 0)
    if not a_batched:  # a @ (S, [G,] K, N): the samples' columns in one operand (the op's n is S*N)
        n = b.shape[-1]
        cols = b.movedim(0, -2).reshape(*b.shape[1:-1], size * n)  # ([G,] K, S*N)
        y = torch.ops.kt.apply(a, [cols], _widened(op, size * n))  # ([G,] M, S*N)
        return y.unflatten(-1, (size, n)).movedim(-2, 0)
    groups = max(a.dim(), b.dim()) == 4
    if groups:  # one operand per group, the other shared by a sample's groups
        g = a.shape[1] if a.dim() == 4 else b.shape[1]
        a = a if a.dim() == 4 else a.unsqueeze(1).expand(size, g, *a.shape[1:])
        b = b if b.dim() == 4 else b.unsqueeze(1).expand(size, g, *b.shape[1:])
    flat_a, flat_b = a.reshape(-1, *a.shape[-2:]).contiguous(), b.reshape(-1, *b.shape[-2:]).contiguous()
    y = torch.ops.kt.apply(flat_a, [flat_b], _batched(op, flat_a.shape[0]))
    return y.unflatten(0, a.shape[:2]) if groups else y


# The most blocks a sample-stacked BSR pattern may have (its mask is in the op's text: 64 KiB of hex at this size):
# more samples than fit go in several calls
STACK_BITS = 2**18


def _vmap_blocksparse(spec, x, x_dim, weights, weight_dims, size):
    """vmap of a block-sparse op y = F.linear(x, W), or of its weight gradient dy.T @ x on W's blocks, in one
    call whatever is batched (a few for many samples of a large pattern). The op's text fixes W's pattern, so
    its indices come from there (an ensemble batches them too). A product with both sides batched (a sample's
    x and its own W; a per-sample gradient's dy and x) is one product of the samples' operands side by side
    in the features with a pattern that holds W's once per sample on its diagonal (copy i at block (i*gr + r,
    i*gc + c)); with one side shared, the copies are stacked along that side's features alone and the shared
    operand is read once, not copied. STACK_BITS bounds the larger pattern (its mask is in the op's text). Every
    member's indices must hold that pattern (checked: once per index tensors until they are written)."""
    shape, block = spec["shape"], tuple(spec["sparsity"]["block"])
    grid = (shape["out"] // block[0], shape["in"] // block[1])
    at = 0 if spec["op"] == "blocksparse" else 1  # W's crow and col: the indices the op's text fixes
    crow, col = (_unwrapped(_front(t, d)) for t, d in zip(weights[at : at + 2], weight_dims[at : at + 2]))
    if not _same_pattern(spec["sparsity"]["layout"], grid, crow, col):
        # the calls below take the pattern from the op's text: members of another pattern (an ensemble of
        # layers with their own masks) ran with the first's, silently
        raise ValueError(
            "vmap of a block-sparse op: each weight must store its blocks where the op's pattern has them (a "
            f"{shape['out']}x{shape['in']} weight in {block[0]}x{block[1]} blocks); an ensemble's layers must "
            "share one pattern (the same mask, or the same density and seed)"
        )
    a = _front(x, x_dim)
    if spec["op"] == "blocksparse":
        values, values_dim = weights[2], weight_dims[2]
        if values_dim is None:  # one W: the samples join x's leading dims
            return _stacked_call(spec, a, [], values, grid, 1, 1), (None if x_dim is None else 0)
        sides = (True, x_dim is not None)  # (the out side, W's: batched; the in side, x's)
        values = values.movedim(values_dim, 0)
    else:  # y is dy, weights[0] the forward's x; the forward weight's values are never read
        b = _front(weights[0], weight_dims[0])
        sides = (x_dim is not None, weight_dims[0] is not None)
        if not any(sides):  # only the forward weight is batched: one gradient for every sample
            return _stacked_call(spec, a, [b], weights[3], grid, 1, 1)[0], None
    per_call = STACK_BITS // (grid[0] * grid[1])
    per_call = max(1, math.isqrt(per_call) if all(sides) else per_call)
    outs = []
    for lo in range(0, size, per_call):
        count = min(per_call, size - lo)
        down, across = (count if side else 1 for side in sides)
        if spec["op"] == "blocksparse":  # (..., count * out) back to (count, ..., out)
            xs = _side_by_side(a[lo : lo + count]) if sides[1] else a
            y = _stacked_call(spec, xs, [], values[lo : lo + count], grid, down, across)
            outs.append(y.unflatten(-1, (count, shape["out"])).movedim(-2, 0))
        else:  # (count, nnz, *block), each sample's blocks in W's order
            dy = _side_by_side(a[lo : lo + count]) if sides[0] else a
            xs = _side_by_side(b[lo : lo + count]) if sides[1] else b
            outs.append(_stacked_call(spec, dy, [xs], weights[3], grid, down, across))
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), 0


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    """`t`'s values as a plain tensor: under nested transforms (an ensemble's per-sample gradients, vmap in
    vmap) an inner rule's operands are the outer levels' wrappers, whose memory cannot be read; each batched
    level's dim goes in front (the last dim stays last)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        bdim = functorch.maybe_get_bdim(t) if functorch.is_batchedtensor(t) else None
        t = functorch.get_unwrapped(t)
        if bdim is not None:
            t = t.movedim(bdim, 0)
    return t


def _vmap_chain(x, x_dim, factors, factor_dims, size: int) -> torch.Tensor:
    """A low-rank chain x @ F1 @ ... @ Fk whose factors are batched (an ensemble; an adapter per sample) as k
    dense products, each one call for every sample (`_vmap_dense`), not one fused call per sample: the rule
    takes it when the samples outnumber the factors. The products between the factors are rounded to the
    dtype, as in the chain's backward. Returns (S, ..., out)."""
    batched, a = x_dim is not None, _front(x, x_dim)
    lead = a.shape[1:-1] if batched else a.shape[:-1]  # a sample's leading dims
    h = a.reshape(*((size,) if batched else ()), math.prod(lead), a.shape[-1])
    for f, dim in zip(factors, factor_dims):
        f = _front(f, dim)
        text = _dense_text(f.dtype, int(f.shape[-1]), int(f.shape[-2]), None, _layout(h), _layout(f))
        h = _vmap_dense(h, batched, f, dim is not None, text, size)  # both shared: one product for all
        batched = batched or dim is not None
    return h.reshape(size, *lead, h.shape[-1])


def _products(spec) -> int:
    """The calls a sum's terms take under vmap with batched weights: a block-sparse term's one (its patterns
    stacked), a low-rank chain's one per factor. More samples than that: each term by its rule is fewer calls
    than the fused sum once per sample (with fewer, a chain would go sample by sample itself)."""
    return sum(1 if term["op"] == "blocksparse" else _weight_count(term) for term in spec["terms"])


def _vmap_sum(info, spec, x, x_dim, weights, weight_dims, size: int) -> torch.Tensor:
    """A sum of ops with batched weights (an ensemble) as its terms, each vmapped by its own rule (a block-sparse
    term stacked, a low-rank chain per factor), added: the rule takes it when the samples outnumber the calls
    that takes (`_products`). Returns (S, ..., out)."""
    total, at = None, 0
    for term in spec["terms"]:
        count, text = _weight_count(term), op_text(_term_spec(spec, term))
        term_weights, term_dims = weights[at : at + count], weight_dims[at : at + count]
        at += count
        y, dim = _vmap(info, (x_dim, term_dims, None), x, term_weights, text)
        y = y.expand(size, *y.shape) if dim is None else y.movedim(dim, 0)
        total = y if total is None else total + y
    return total


def _vmap_monarch(x, x_dim, weights, weight_dims, size: int, transposed: bool) -> torch.Tensor:
    """A Monarch op whose weights are batched (an ensemble) as its two block products (monarch_reference's
    steps 1 and 3; for a transposed op, y = x @ M, their adjoints in reverse order, as the op's backward
    computes dx), the permutations between them as views, each product one call for every sample
    (`_vmap_dense`), not one fused call per sample: the rule takes it for more than two samples. Where neither
    x nor the first product's weight is batched (only the second's: jacfwd of w2), that product is one call
    shared by the samples. The product between them is rounded to the dtype, as in the op's backward. Returns
    (S, ..., out)."""
    (w1, w2), (dim1, dim2) = weights, weight_dims
    w1, w2 = _front(w1, dim1), _front(w2, dim2)
    (k, q, p), (l, s, r) = w1.shape[-3:], w2.shape[-3:]  # noqa: E741
    batched, a = x_dim is not None, _front(x, x_dim)
    lead = a.shape[1:-1] if batched else a.shape[:-1]  # a sample's leading dims
    rows = math.prod(lead)

    def first(a, b, b_batched, text):  # ([S,] groups, B, f) and whether S is there
        if batched or b_batched:
            return _vmap_dense(a, batched, b, b_batched, text, size), True
        return torch.ops.kt.apply(a, [b], text), False  # nothing of it batched: one product for all samples

    front = (size,) if batched else ()
    if transposed:
        # x (B, s*l): z_j = x[:, c*l + j]; v_j = z_j @ w2[j]; u, v's blocks put back; y_i = u_i @ w1[i]
        z = a.reshape(*front, rows, s, l).movedim(-1, -3)  # ([S,] l, B, s)
        v, v_batched = first(z, w2, dim2 is not None, _dense_text(w2.dtype, r, s, l, _layout(z), _layout(w2)))
        front = (size,) if v_batched else ()
        u = v.movedim(-3, -1).reshape(*front, rows, k, q).transpose(-3, -2)  # ([S,] k, B, q)
        text = _dense_text(w1.dtype, p, q, k, _layout(u), _layout(w1))
        y = _vmap_dense(u, v_batched, w1, dim1 is not None, text, size)  # (S, k, B, p)
        return y.transpose(1, 2).reshape(size, *lead, k * p)  # y[b, i*p + c] = y_i[b, c]
    xb = a.reshape(*front, rows, k, p).transpose(-3, -2)  # ([S,] k, B, p): x's blocks
    w1t, w2t = w1.transpose(-1, -2), w2.transpose(-1, -2)
    text = _dense_text(w1.dtype, q, p, k, _layout(xb), _layout(w1t))
    u, u_batched = first(xb, w1t, dim1 is not None, text)  # ([S,] k, B, q): u_i = x_i @ w1[i].T
    front = (size,) if u_batched else ()
    v = (
        u.transpose(-3, -2).reshape(*front, rows, r, l).movedim(-1, -3)
    )  # ([S,] l, B, r): the stride permutation
    text = _dense_text(w2.dtype, s, r, l, _layout(v), _layout(w2t))
    z = _vmap_dense(v, u_batched, w2t, dim2 is not None, text, size)  # (S, l, B, s): z_j = v_j @ w2[j].T
    return z.permute(0, 2, 3, 1).reshape(size, *lead, s * l)  # y[b, c*l + j] = z[j, b, c]


def _front(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """A vmap rule's operand with its batch dim (if it has one) moved to the front."""
    return t if dim is None else t.movedim(dim, 0)


def _side_by_side(t: torch.Tensor) -> torch.Tensor:
    """Samples (S, ..., f) as one operand (..., S*f): sample i's features at columns i*f .. (i+1)*f."""
    return t.movedim(0, -2).reshape(*t.shape[1:-1], t.shape[0] * t.shape[-1])


def _stacked_call(spec, x, operands, values, grid, down, across):
    """The op (blocksparse, or blocksparse_grad with `operands` = [its x]) on x for `down` x `across` copies of
    W's pattern (`_stacked_pattern`). `values`: a forward's W blocks, (copies, nnz, *block) or (nnz, *block)
    for one copy; a gradient's forward values, of which only the dtype is read. A gradient comes back as
    (copies, nnz, *block), each copy's blocks in W's own order."""
    shape, sparsity = spec["shape"], spec["sparsity"]
    block = tuple(sparsity["block"])
    layout = _stacked_pattern(sparsity["layout"], grid, down, across)[0]
    crow, col, order = _index_tensors(_stacked_indices, (sparsity["layout"], grid, down, across), x)
    if (down, across) == (1, 1):
        # W's own op and pattern: unmarked, so it is the layer's selection, not a second one of the same op (its
        # indices, kept by `_index_tensors`, are read back once)
        text = op_text(spec)
    else:
        stacked = {"out": shape["out"] * down, "in": shape["in"] * across}
        text = op_text(
            _trusted({**spec, "shape": stacked, "sparsity": {"block": sparsity["block"], "layout": layout}})
        )
    if spec["op"] == "blocksparse":  # a copy's blocks follow the previous copy's (sample-major order)
        return torch.ops.kt.apply(x, [crow, col, values.reshape(-1, *block)], text)
    pattern = torch.empty((), dtype=values.dtype, device=x.device).expand(order.numel(), *block)
    grads = torch.ops.kt.apply(x, [*operands, crow, col, pattern], text)
    return grads[order]


def _index_tensors(kept, args: tuple, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A pattern's index arrays as int64 tensors on `like`'s device, made once per device and kept (`kept`:
    `_transposed_indices` or `_stacked_indices`, of the pattern `args` name): torch.tensor(..., device="cuda")
    copies from pageable memory, which first waits for the stream (CUDA's API synchronization behavior), so
    making them in each backward of a block-sparse layer stalled the host on the GPU there. While
    torch.compile traces (or `like` is a fake or functional tensor), they are made in the trace, as the graph's
    constants, not kept: a real tensor kept here cannot enter a trace, nor a traced one leave it (nor one made
    under a TorchDispatchMode, `_readable`)."""
    if not _readable(like) or torch.compiler.is_compiling():
        return kept.__wrapped__(args, like.device)
    return kept(args, like.device)


@functools.lru_cache(maxsize=4096)  # one per block-sparse layer and device: three nnz-long tensors each
def _transposed_indices(args: tuple, device: torch.device) -> tuple[torch.Tensor, ...]:
    return _as_indices(transposed_pattern(*args)[1:], device)


@functools.lru_cache(maxsize=32)  # vmap's stacked patterns: up to STACK_BITS blocks each
def _stacked_indices(args: tuple, device: torch.device) -> tuple[torch.Tensor, ...]:
    return _as_indices(_stacked_pattern(*args)[1:], device)


def _as_indices(arrays, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Plain tensors even inside a torch.func transform: made under grad (a nested transform's dx), they would
    be its wrappers, and one kept by `_index_tensors` would then break every later transform of the layer."""
    with torch._C._DisableFuncTorch():
        return tuple(torch.as_tensor(a, dtype=torch.int64, device=device) for a in arrays)


@functools.lru_cache(maxsize=64)
def _stacked_pattern(
    layout: str, grid: tuple[int, int], down: int, across: int
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """W's pattern (`layout` over `grid`) copied for S = max(down, across) samples, copy i moved i block-grids
    down (when `down` > 1) and across (when `across` > 1): on the diagonal of a (down*gr, across*gc) grid when
    both are S, stacked when one is 1. Returns its hex layout, crow and col indices, and for each copy the
    index of each of its blocks (in W's own order) among the larger pattern's, (S, nnz)."""
    from kt.sparsity import mask_to_hex

    rows, cols = np.nonzero(hex_to_mask(layout, grid))  # W's blocks in its own (row-major) order
    copy = np.arange(max(down, across))[:, None]
    rows = rows[None] + (copy * grid[0] if down > 1 else 0)
    cols = cols[None] + (copy * grid[1] if across > 1 else 0)
    mask = np.zeros((grid[0] * down, grid[1] * across), dtype=bool)
    mask[rows, cols] = True
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    crow, col = bsr_index_arrays(mask)
    return mask_to_hex(mask), crow, col, index[rows, cols]


@functools.lru_cache(maxsize=256)
def _unbatched(op: str) -> str:
    """A dense op's text as one product (no batch)."""
    spec = json.loads(op)
    return op_text({**spec, "shape": {k: v for k, v in spec["shape"].items() if k != "batch"}})


@functools.lru_cache(maxsize=256)
def _widened(op: str, n: int) -> str:
    """A dense op's text with `n` columns and a contiguous (row) B."""
    spec = json.loads(op)
    return op_text({**spec, "shape": {**spec["shape"], "n": n}, "layout": {**spec["layout"], "b": "row"}})


@functools.lru_cache(maxsize=256)
def _batched(op: str, size: int) -> str:
    """A dense op's text as a batch of `size` products of contiguous (row) operands."""
    spec = json.loads(op)
    return op_text({**spec, "shape": {**spec["shape"], "batch": size}, "layout": {"a": "row", "b": "row"}})


def _trusted(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, TRUSTED: True}


def _kernel_weights(
    spec: dict[str, Any], weights: list[torch.Tensor], check: bool = False
) -> list[torch.Tensor]:
    """The kernel's weight arguments: BSR weights rebuilt from their (crow, col, values) parts. `check`: each
    BSR weight must have the op's pattern (_check_pattern), as the kernel reads the indices it is given while
    the backward's dx is built from the op's pattern: torch.func.functional_call can give a layer another
    layer's indices (its eager forward refuses them itself, `BlockSparseLinear._check_weights`, but not while
    torch.compile traces), and `apply` or `Kernel.as_op` any. Checked once per index tensors until they are
    written (`_same_pattern`)."""
    if check:
        _check_bsr_weights(spec, weights)
    if spec["op"] == "blocksparse":
        return [_bsr(spec, *weights)]
    if spec["op"] == "blocksparse_grad":  # (x, crow, col, values): x, then the forward weight
        return [weights[0], _bsr(spec, *weights[1:])]
    if spec["op"] == "sum":
        out, at = [], 0
        for term in spec["terms"]:
            count = _weight_count(term)
            out += _kernel_weights(term, weights[at : at + count])
            at += count
        return out
    return list(weights)


def _check_bsr_weights(spec: dict[str, Any], weights: list[torch.Tensor], read: bool = True) -> None:
    """Each BSR weight of the op against the op's shape and pattern (`_check_pattern`; without `read`, shapes
    only: the fake implementation's tensors hold no values)."""
    if spec["op"] == "blocksparse":
        _check_pattern(spec, *weights, read=read)
    elif spec["op"] == "blocksparse_grad":  # (x, crow, col, values): x, then the forward weight
        _check_pattern(spec, *weights[1:], read=read)
    elif spec["op"] == "sum":
        at = 0
        for term in spec["terms"]:
            count = _weight_count(term)
            _check_bsr_weights(term, weights[at : at + count], read)
            at += count


def _part_count(op: dict[str, Any]) -> int:
    """How many tensors the custom op takes as an op's weights, a BSR weight as its 3 parts. Checked by
    `Kernel.as_op`: one tensor too many went on to the kernel as its `out`, and was overwritten."""
    if op["op"] == "blocksparse_grad":  # x, then the forward's BSR weight
        return 4
    if op["op"] == "sum":
        return sum(_weight_count(term) for term in op["terms"])
    fixed = {"dense": 1, "monarch": 2, "butterfly": 1, "fft": 0}
    return fixed[op["op"]] if op["op"] in fixed else _weight_count(op)


def _weight_count(term: dict[str, Any]) -> int:
    return 3 if term["op"] == "blocksparse" else len(term["shape"]["dims"]) - 1


def _bsr(spec: dict[str, Any], crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return bsr_tensor(crow, col, values, (spec["shape"]["out"], spec["shape"]["in"]))


@functools.lru_cache(maxsize=64)
def _pattern(layout: str, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return bsr_index_arrays(hex_to_mask(layout, grid))


def _check_pattern(
    spec: dict[str, Any], crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, read: bool = True
) -> None:
    """Refuse a BSR weight whose shape or pattern is not the op's: the kernel would read past its indices (a
    smaller weight), and the backward's dx is built from the op's pattern. Comparing the indices reads them back from the GPU (a
    sync), so index tensors found equal are remembered (`_same_pattern`) and not read again until written;
    not `read`: the shapes only."""
    shape, sparsity = spec["shape"], spec["sparsity"]
    block = tuple(sparsity["block"])
    grid = (shape["out"] // block[0], shape["in"] // block[1])
    nnz = len(_pattern(sparsity["layout"], grid)[1])
    what = f"a {shape['out']}x{shape['in']} BSR weight in {block[0]}x{block[1]} blocks"
    for name, index in (("crow_indices", crow), ("col_indices", col)):  # as torch's BSR tensors take them
        if index.dtype not in (torch.int64, torch.int32):  # (a float one ran forward, and failed in backward)
            raise TypeError(f"kernel(x, w): w's {name} must be torch.int64 or torch.int32, got {index.dtype}")
    got = (tuple(crow.shape), tuple(col.shape), tuple(values.shape))
    if got != ((grid[0] + 1,), (nnz,), (nnz, *block)):
        raise ValueError(
            f"kernel(x, w): w must be {what} with {nnz} stored blocks (crow_indices ({grid[0] + 1},), "
            f"col_indices ({nnz},), values {(nnz, *block)}); got crow_indices {got[0]}, col_indices {got[1]}, "
            f"values {got[2]}"
        )
    if read and not _same_pattern(sparsity["layout"], grid, crow, col):
        raise ValueError(
            f"kernel(x, w): w stores its blocks at other places than the pattern this kernel was built for "
            f"({what}, {nnz} of {grid[0] * grid[1]} stored); its backward is built from that pattern, so w must "
            f"have the spec's crow_indices and col_indices (W.to_sparse_bsr drops a block that is all zeros; a "
            "kt.nn.BlockSparseLinear takes only its own, also under torch.compile)"
        )


# Index tensors found to hold an op's pattern, by what identifies their memory and its contents: (layout, grid,
# then for crow and col their address, dtype, shape, strides and version counter, which every in-place write
# through any alias of the tensor advances). Each entry keeps the two storages alive, so no other tensor can
# take their addresses while it is here. Bounded: the oldest go first.
_CHECKED: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
# an entry for each block-sparse layer's indices (`BlockSparseLinear._check_weights`), and as_op's weights
_CHECKED_SIZE = 4096
_CHECKED_LOCK = threading.Lock()


def _checked_lock_in_child() -> None:
    """A forked child's own lock, free (a fork while another thread held it left the child's held forever)."""
    global _CHECKED_LOCK
    _CHECKED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_checked_lock_in_child)


def _same_pattern(layout: str, grid: tuple[int, int], crow: torch.Tensor, col: torch.Tensor) -> bool:
    """Whether crow and col are the indices of `layout` over `grid` (with leading dims: each entry's, as a
    vmap's batched indices). A pair already
    found equal and not written since is not read again: `Kernel.as_op` on a GPU then makes no sync after its
    first call with a weight (writes through `.data` or from outside PyTorch do not advance the version
    counter and go unseen, as they do for autograd). Inference tensors have no version counter: read each time."""
    key = None  # inference tensors have no version counter
    if not (crow.is_inference() or col.is_inference()):
        key = (
            layout,
            grid,
            *((t.device, t.data_ptr(), t.dtype, t.shape, t.stride(), t._version) for t in (crow, col)),
        )
    with _CHECKED_LOCK:
        if key in _CHECKED:
            _CHECKED.move_to_end(key)
            return True
    want_crow, want_col = _pattern(layout, grid)
    got_crow, got_col = crow.cpu().numpy(), col.cpu().numpy()  # with leading dims: every member's (vmap)
    if got_crow.shape[-1:] != want_crow.shape or got_col.shape[-1:] != want_col.shape:
        return False
    if not (
        np.array_equal(got_crow, np.broadcast_to(want_crow, got_crow.shape))
        and np.array_equal(got_col, np.broadcast_to(want_col, got_col.shape))
    ):
        return False
    if key is not None:
        with _CHECKED_LOCK:
            _CHECKED[key] = (crow.untyped_storage(), col.untyped_storage())
            while len(_CHECKED) > _CHECKED_SIZE:
                _CHECKED.popitem(last=False)
    return True


# -- autograd ------------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    x, weights, op = inputs
    ctx.op = op
    ctx.count = len(weights)
    ctx.save_for_backward(x, *weights)


def _backward(ctx, dy: torch.Tensor):
    needs = ctx.needs_input_grad[1]  # the custom op's: one flag per weight of the list
    need_w = list(needs) if isinstance(needs, (list, tuple)) else [bool(needs)] * ctx.count
    dx, dweights = _gradients(ctx, dy, bool(ctx.needs_input_grad[0]), need_w)
    return dx, dweights, None


def _gradients(ctx, dy: torch.Tensor, need_dx: bool, need_w: list[bool]):
    """(dx, dweights) of the op, only those autograd asks for: the first layer's dx (its input is data) and a
    frozen layer's weight gradients are not computed (None)."""
    x, *weights = ctx.saved_tensors
    _refuse_legacy_vmap(dy)  # torch.autograd.grad(..., is_grads_batched=True) batches dy alone
    # the backward's ops select their own kernels: a pinned forward kernel is not theirs
    spec = {key: value for key, value in _parsed(ctx.op).items() if key != "pin"}
    if spec["op"] not in GRADIENTS:
        raise RuntimeError(  # only blocksparse_grad: a block-sparse weight's gradient, differentiated again
            f"kt: a block-sparse weight's gradient ({spec['op']}) has no gradient of its own in reverse mode; "
            "torch.func.hessian (forward over reverse) differentiates it"
        )
    with backward_role():
        return GRADIENTS[spec["op"]](spec, x, weights, dy.contiguous(), need_dx, need_w)


_apply.register_autograd(_backward, setup_context=_setup_context)


class _EagerApply(torch.autograd.Function):
    """The custom op's autograd in eager mode, without its dispatch: forward(x, op, *weights)."""

    @staticmethod
    def forward(
        ctx, x, op, *weights
    ):  # the ctx form: a separate setup_context makes each call bind a signature
        _setup_context(ctx, (x, weights, op), None)
        return _run(x, list(weights), op)

    @staticmethod
    def backward(ctx, dy):
        return _function_backward(ctx, dy)


def _function_backward(ctx, dy):
    """The backward of the autograd.Functions taking (x, op, *weights): _EagerApply's and _FuncApply's."""
    need = ctx.needs_input_grad
    dx, dweights = _gradients(ctx, dy, bool(need[0]), [bool(n) for n in need[2:]])
    return (dx, None, *dweights)


def matmul(a: torch.Tensor, b: torch.Tensor, deep: bool = False) -> torch.Tensor:
    """a (M, K) @ b (K, N), or a batch of them (a 3-D operand), by kt's dense op (any strides: transposes are
    views). `deep`: K is the batch's rows (a weight gradient): the op names K's bucket, not K, so a new batch
    size reuses its bucket's kernel, and the bucket is taken from `a` when the op runs (`DEEP`), not here."""
    # a kernel called with K, N or a batch of 0 (its product is zeros or empty): no kt op has a size of 0, and
    # its backward failed naming an op's shape.n or shape.batch the user never wrote
    if a.shape[-1] == 0 or b.shape[-1] == 0 or any(t.dim() == 3 and t.shape[0] == 0 for t in (a, b)):
        return torch.matmul(a, b)
    batch = a.shape[0] if a.dim() == 3 else b.shape[0] if b.dim() == 3 else None  # a batch of block products
    # plain ints: under torch.compile(dynamic=True) a shape is a SymInt, which the op text's cache cannot hash;
    # the text names each size, so the compiled graph is specialised on it (a weight's sizes, a block count).
    # Not K's bucket: the rows vary with the batch, and a bucket computed here guarded the compiled graph on its
    # range, so each new bucket recompiled it (past torch's limit of 8: eager, or an error under fullgraph=True)
    k = None if deep else int(a.shape[-1])
    n, batch = int(b.shape[-1]), None if batch is None else int(batch)
    return apply(a, [b], _dense_text(a.dtype, n, k, batch, _layout(a), _layout(b)))


@functools.lru_cache(maxsize=1024)
def _dense_text(dtype: torch.dtype, n: int, k: int | None, batch: int | None, a: str, b: str) -> str:
    """The op text of a dense product (made once: a backward pass makes several per layer and step); `k` None:
    K is the bucket of a's columns, taken when the op runs (`DEEP`)."""
    shape = {"n": n, "k": MIN_BUCKET if k is None else k}
    if batch is not None:  # a batch of products (one per block)
        shape["batch"] = batch
    op = {"op": "dense", "dtype": dtype_name(dtype), "shape": shape, "layout": {"a": a, "b": b}}
    if op["dtype"] == "float32":
        op["precision"] = "ieee"
    if k is None:
        op[DEEP] = True
    return op_text(op)


@functools.lru_cache(maxsize=1024)
def _deep_text(text: str, k: int) -> str:
    """A `DEEP` op's text with K's bucket `k` (that of the rows a weight gradient sums over)."""
    op = json.loads(text)
    del op[DEEP]
    op["shape"]["k"] = k
    return op_text(op)


def _layout(t: torch.Tensor) -> str:
    """How a 2-D operand is stored: row (last dim contiguous) or col (a transposed view)."""
    return "col" if t.stride(-1) != 1 and t.stride(-2) == 1 else "row"


def _dense_grads(spec, a, weights, dy, need_dx, need_w):
    """y = a @ b, a (M, K) or (batch, M, K), b (K, N) or (batch, K, N): da = dy @ b.T, db = a.T @ dy, each
    summed over the batch where its operand is the 2-D one every batch entry shares."""
    (b,) = weights
    da = db = None
    if need_dx:
        if a.dim() == 2 and b.dim() == 3:
            # sum_i dy_i @ b_i.T = [dy_1 .. dy_B] (M, B*N) @ [b_1.T; ..; b_B.T] (B*N, K)
            rows = dy.permute(1, 0, 2).reshape(a.shape[0], dy.shape[0] * dy.shape[2])
            da = matmul(rows, b.transpose(1, 2).reshape(b.shape[0] * b.shape[2], a.shape[1]), deep=True)
        else:
            da = matmul(dy, b.transpose(-1, -2))
    if need_w[0]:
        if a.dim() == 3 and b.dim() == 2:  # sum_i a_i.T @ dy_i: the batch's rows stacked
            db = matmul(_rows(a).t(), _rows(dy), deep=True)
        else:
            db = matmul(a.transpose(-1, -2), dy, deep=True)
    return da, [db]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (..., f) as (rows, f). Not reshape(-1, f): under torch.func.vmap over an empty batch that is
    ambiguous (vmap puts the batch's 0 in front); nor the rows' count, which torch.compile specializes."""
    return t.flatten(0, -2) if t.dim() > 1 else t.unsqueeze(0)


def _lowrank_grads(spec, x, factors, dy, need_dx, need_w):
    lead = x.shape[:-1]
    x2, dy2 = _rows(x), _rows(dy)
    dims = spec["shape"]["dims"]
    dx = None
    if need_dx:
        transposed = {**spec, "shape": {"dims": list(reversed(dims))}}
        dx = apply(dy, [f.t() for f in reversed(factors)], transposed).reshape(*lead, dims[0])
    if not any(need_w):
        return dx, [None] * len(factors)
    # dFi = (x @ F1 @ ... @ F(i-1)).T @ (dy @ Fk.T @ ... @ F(i+1).T): each side only as far as a needed factor
    first = need_w.index(True)
    last = len(need_w) - 1 - need_w[::-1].index(True)
    prefix = [x2]
    for f in factors[:last]:
        prefix.append(matmul(prefix[-1], f))
    suffix = [dy2]  # built from the right
    for f in reversed(factors[first + 1 :]):
        suffix.append(matmul(suffix[-1], f.t()))
    suffix.reverse()  # suffix[i - first] belongs to factor i
    return dx, [
        matmul(prefix[i].t(), suffix[i - first], deep=True) if need else None for i, need in enumerate(need_w)
    ]


@functools.lru_cache(maxsize=64)
def transposed_pattern(
    layout: str, grid: tuple[int, int]
) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The pattern of W.T for W's pattern `layout` over `grid`: its hex layout, crow and col indices, and for
    each of its blocks the index of the W block it is the transpose of. Plain integers, cached; their tensors
    come from `_index_tensors` (kept per device, made in the trace under torch.compile). Numpy only: this runs
    inside the trace of a backward pass, where a torch op's `.tolist()` would give symbolic integers, which the
    cache would then keep."""
    from kt.sparsity import mask_to_hex

    mask = hex_to_mask(layout, grid)
    index = np.full(grid, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    crow, col = bsr_index_arrays(mask.T)
    order = index.T[mask.T]
    return mask_to_hex(mask.T), tuple(crow.tolist()), tuple(col.tolist()), tuple(order.tolist())


def _blocksparse_grads(spec, x, weights, dy, need_dx, need_w):
    crow, col, values = weights
    dx = _blocksparse_dx(spec, values, dy) if need_dx else None
    dvalues = bsr_grad(dy, x, crow, col, values, spec) if need_w[2] else None
    return dx, [None, None, dvalues]


def _blocksparse_dx(spec, values, dy):
    """dx = dy @ W: the block-sparse op of W.T's pattern on dy (W's stored blocks gathered and transposed)."""
    shape, sparsity = spec["shape"], spec["sparsity"]
    block = tuple(sparsity["block"])
    grid = (shape["out"] // block[0], shape["in"] // block[1])
    layout_t = transposed_pattern(sparsity["layout"], grid)[0]
    crow_t, col_t, order = _index_tensors(_transposed_indices, (sparsity["layout"], grid), values)
    values_t = values[order].transpose(1, 2).contiguous()  # the stored blocks only
    transposed = {
        **spec,
        "shape": {"in": shape["out"], "out": shape["in"]},
        "sparsity": {"block": [block[1], block[0]], "layout": layout_t},
    }
    return apply(dy, [crow_t, col_t, values_t], _trusted(transposed))


def bsr_grad(dy, x, crow, col, values, spec) -> torch.Tensor:
    """dL/dW on W's stored blocks: block n at (r, c) gets dy[:, r-th block of out].T @ x[:, c-th block of in]."""
    grad = {**spec, "op": "blocksparse_grad"}
    return apply(_rows(dy), [_rows(x), crow, col, values], grad)


def _sum_grads(spec, x, weights, dy, need_dx, need_w):
    dx, grads, at = None, [], 0
    for term in spec["terms"]:
        count = _weight_count(term)
        term_dx, term_grads = GRADIENTS[term["op"]](
            _term_spec(spec, term), x, weights[at : at + count], dy, need_dx, need_w[at : at + count]
        )
        dx = term_dx if dx is None else dx + term_dx
        grads += term_grads
        at += count
    return dx, grads


def _term_spec(spec, term) -> dict[str, Any]:
    """A sum's term as an op of its own: the term with the sum's dtype and precision."""
    return {
        **term,
        "dtype": spec["dtype"],
        **({"precision": spec["precision"]} if "precision" in spec else {}),
    }


def _conj(spec, t: torch.Tensor) -> torch.Tensor:
    """The complex conjugate in the op's complex format (planar half: the imaginary plane negated)."""
    if spec["dtype"] == "float32":
        return t.conj().resolve_conj()
    return torch.stack([t[0], -t[1]])


def _fft_grads(spec, x, weights, dy, need_dx, need_w):
    """y = F x with F the (symmetric) DFT matrix: dx = F^H dy = conj(F conj(dy)), kt's FFT once more; for a real
    input, the real part of it."""
    if not need_dx:
        return None, []
    complex_spec = {**spec, "input": "complex"}
    dx = _conj(spec, apply(_conj(spec, dy), [], complex_spec))
    if spec.get("input", "complex") == "real":
        dx = dx.real.contiguous() if spec["dtype"] == "float32" else dx[0].contiguous()
    return dx, []


def _monarch_grads(spec, x, weights, dy, need_dx, need_w):
    """Monarch y = P2 L P1 R x (docs/architecture.md): dx is the transposed Monarch op on dy; dw1 and dw2 are
    per-block outer products summed over the rows, batched GEMMs over the blocks (no dense matrix)."""
    w1, w2 = weights
    (k, q, p), (l, s, r) = w1.shape, w2.shape  # noqa: E741
    lead = x.shape[:-1]
    x2, dy2 = _rows(x), _rows(dy)
    rows = x2.shape[0]
    dx = apply(dy, [w1, w2], {**spec, "transposed": True}).reshape(*lead, k * p) if need_dx else None
    xb = x2.view(rows, k, p).permute(1, 0, 2)  # (k, B, p): block i's inputs
    dz = dy2.view(rows, s, l).transpose(1, 2)  # (B, l, s): y[b, c*l + j] = z[b, j, c]
    dw1 = dw2 = None
    if need_w[1]:
        u = matmul(xb, w1.transpose(1, 2))  # (k, B, q): u_i = x_i @ w1[i].T
        v = u.permute(1, 0, 2).reshape(rows, r, l).transpose(1, 2)  # (B, l, r): the stride permutation
        dw2 = matmul(dz.permute(1, 2, 0), v.permute(1, 0, 2), deep=True)  # (l, s, r): dz_j.T @ v_j
    if need_w[0]:
        dv = matmul(dz.permute(1, 0, 2), w2)  # (l, B, r): dv_j = dz_j @ w2[j]
        du = dv.permute(1, 2, 0).reshape(rows, k, q)  # back through the permutation: u = v.T flattened
        dw1 = matmul(du.permute(1, 2, 0), xb, deep=True)  # (k, q, p): du_i.T @ x_i
    return dx, [dw1, dw2]


def _butterfly_grads(spec, x, weights, dy, need_dx, need_w):
    """y = B_{L-1} ... B_0 x: dx is the transposed butterfly op on dy. The twiddles' gradient needs each level's
    input: the levels are replayed in fp32 torch (n log n work and memory per row, no dense matrix), then level f's
    2x2 gradients are the outer products of its output gradient and its input over the pairs."""
    (twiddles,) = weights
    n = spec["shape"]["n"]
    levels = n.bit_length() - 1
    lead = x.shape[:-1]
    dx = apply(dy, [twiddles], {**spec, "transposed": True}).reshape(*lead, n) if need_dx else None
    if not need_w[0]:
        return dx, [None]
    t32 = twiddles.float()
    inputs, a = [], _rows(x).float()
    rows = a.shape[0]
    for f in range(levels):  # the forward, level by level (the butterfly convention of docs/architecture.md)
        inputs.append(a)
        s = 1 << f
        pairs = a.view(rows, n // (2 * s), 2, s)  # [b, group, half, j]
        t = t32[f].view(n // (2 * s), s, 2, 2)  # [group, j, out, in]
        a = torch.einsum("gjoi,bgij->bgoj", t, pairs).reshape(rows, n)
    # stacked at the end, not written in place: under torch.func.vmap only dy is batched
    grads = [None] * levels
    g = _rows(dy).float()
    for f in reversed(range(levels)):
        s = 1 << f
        pg = g.view(rows, n // (2 * s), 2, s)
        pa = inputs[f].view(rows, n // (2 * s), 2, s)
        grads[f] = torch.einsum("bgoj,bgij->gjoi", pg, pa).reshape(n // 2, 2, 2)
        g = torch.einsum("gjoi,bgoj->bgij", t32[f].view(n // (2 * s), s, 2, 2), pg).reshape(rows, n)
    return dx, [torch.stack(grads).to(twiddles.dtype)]


def _transposable(grads):
    """The gradients of an op that may be `transposed` (y = x @ M, M the forward op's (out, in) matrix): dx = dy @
    M.T is the forward op on dy, and since sum(dy * (x @ M)) = sum(x * (dy @ M.T)), the weights' gradient is the
    forward op's with x and dy exchanged. `grads` itself knows the forward op only."""

    @functools.wraps(grads)
    def gradients(spec, x, weights, dy, need_dx, need_w):
        if not spec.get("transposed"):
            return grads(spec, x, weights, dy, need_dx, need_w)
        forward = {key: value for key, value in spec.items() if key != "transposed"}
        dx = apply(dy, list(weights), forward).reshape(x.shape) if need_dx else None
        _, dweights = grads(forward, dy, weights, x.contiguous(), False, need_w)
        return dx, dweights

    return gradients


GRADIENTS = {
    "butterfly": _transposable(_butterfly_grads),
    "fft": _fft_grads,
    "monarch": _transposable(_monarch_grads),
    "dense": _dense_grads,
    "lowrank": _lowrank_grads,
    "blocksparse": _blocksparse_grads,
    "sum": _sum_grads,
}


def op_of_spec(spec) -> dict[str, Any]:
    """An OpSpec as the op mapping `apply` takes: its signature without the batch (the rows choose that)."""
    op = json.loads(json.dumps(spec.signature()))
    if op["op"] == "dense":
        del op["shape"]["m"]
    elif op["op"] == "sum":
        for term in op["terms"]:
            del term["shape"]["batch"]
    else:
        del op["shape"]["batch"]
    return op


def kernel_op(kernel, exact: bool = False):
    """A kernel from `kt.load` or `kt.build` as a function `f(x, *weights)` through `torch.ops.kt.apply`:
    differentiable (the op's backward, whose kernels are selected as usual), and one opaque node under
    torch.compile and torch.export. It runs this kernel for any number of rows. Weights as the kernel takes them;
    a BSR weight either as a sparse BSR tensor or as its three parts `crow_indices, col_indices, values`, which
    is how a compiled function must take it (torch.compile takes no sparse tensor as an input). A BSR weight
    must have the spec's shape and pattern (`_check_pattern`: the indices are read once, again after a write).
    `exact`: the forward runs this kernel on CPU tensors too (`Kernel.__call__` with inputs that require grad),
    where as_op runs the op's PyTorch path there unless $KT_INTERPRET=1, as kt.nn does."""
    return KernelOp(kernel, exact)


class KernelOp:
    """`kernel_op`'s function of a kernel: called as `f(x, *weights)`; pickled as its kernel (a module keeping
    one is saved by torch.save), and pinned again where it is loaded. Copies are itself, as a Kernel's are (a
    deep copy of a model pinned the kernel again, for good). An `exact` op is the kernel's own (`Kernel._op`):
    it holds the kernel weakly, so that a kernel dropped is freed at once, not by a cycle collection."""

    def __init__(self, kernel, exact: bool = False):
        from kt.nn.selection import Selection, pin

        self._kernel = weakref.ref(kernel) if exact else kernel
        self.exact = exact
        where = str(kernel.path) if kernel.path else "kt.build"
        op = op_of_spec(kernel.spec)
        self.text = op_text({**op, "pin": pin(Selection(kernel.spec, kernel, "loaded", where), exact)})
        self.count = _part_count(op)
        self.op = op["op"]
        self.bsr = op["op"] in ("blocksparse", "blocksparse_grad", "sum")

    def __reduce__(self):
        kernel = self._kernel() if self.exact else self._kernel
        if kernel is None:
            raise pickle.PicklingError(
                "kt: this kernel op's kernel is gone; keep the Kernel to pickle its op"
            )
        return KernelOp, (kernel, self.exact)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        _require_tensors("kernel(x, *weights)", x, weights)
        if x.dim() == 0:
            raise ValueError("kernel(x, *weights): x is a 0-d tensor; it needs its features in its last dim")
        parts = []
        for w in weights:
            if w.layout == torch.sparse_bsr and w.requires_grad and torch.is_grad_enabled():
                # autograd cannot reach a sparse BSR tensor through its values (PyTorch's backward of values()
                # fails: "Sparse BSR tensors do not have is_contiguous"); said here, not in the backward
                raise ValueError(
                    "kernel(x, *weights): a sparse BSR weight that requires grad gets no gradient; give "
                    "kernel.as_op() its parts crow_indices, col_indices, values, with values requiring grad (as "
                    "kt.nn.BlockSparseLinear does)"
                )
            parts += [w.crow_indices(), w.col_indices(), w.values()] if w.layout == torch.sparse_bsr else [w]
        if len(parts) != self.count:
            raise TypeError(
                f"kernel(x, *weights): the {self.op} op takes {self.count} weight "
                f"tensor{'s' if self.count != 1 else ''}"
                + (
                    ", a BSR weight counting as its 3 parts (crow_indices, col_indices, values, or the sparse BSR "
                    "tensor itself)"
                    if self.bsr
                    else ""
                )
                + f"; got {len(parts)}"
                + (f" from {len(weights)} arguments" if len(parts) != len(weights) else "")
            )
        return apply(x, parts, self.text)
