"""Drop-in replacements for `nn.Linear` whose matmul is a kt kernel: the same call (`layer(x)` over the last dim of
x, any leading dims), the same optional bias, `device`/`dtype` arguments, `.to()` and `state_dict`.

Each layer holds its weights in the op's documented layout, describes its op (`op()`: an op.yaml mapping without
the batch) and runs `kt.nn.functional.apply`, which picks the tuned kernel for the batch's bucket (or the cost
model's best) and differentiates through the IR's transposes. `from_dense(linear, ...)` builds a layer from a
trained `nn.Linear` by the projections of kt.ir (block pruning, truncated SVD).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from kt.dtypes import DTYPES, dtype_name
from kt.errors import counted, shown
from kt.nn.functional import _readable, _rows, _same_pattern, apply, check_planar, op_text
from kt.sparsity import (
    bsr_indices,
    bsr_tensor,
    hex_to_mask,
    indices_mask,
    layout_mask,
    mask_to_hex,
    random_mask,
)
from kt.spec import FFT_MAX_BLOCK, MAX_CHAIN, MAX_DIM, MAX_TERMS, SpecError, check_seed


def conv1d(module: Any) -> bool:
    """Whether `module` is Hugging Face transformers' Conv1D (the projections of GPT-2, OpenAI GPT, ImageGPT and
    a few more): y = x @ weight + bias, an nn.Linear's math with its weight stored (in, out), transposed. Looked
    up in sys.modules: a model that holds one has imported transformers, which kt never imports itself."""
    base = _conv1d_class()
    return base is not None and unparametrized(module) is base


def _conv1d_class() -> type | None:
    """transformers' Conv1D, where a model has imported transformers (kt never imports it itself)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _init_chain(weights: list[torch.Tensor], fan_ins: list[int]) -> None:
    """nn.Linear's initialisation for a product of weights: an output's variance a third of its input's, as
    nn.Linear's (uniform within 1/sqrt(fan-in)) gives, whatever the number of factors. Each factor drawn so
    took a third (a chain of 8 came out 2,500 times below nn.Linear's, a Monarch 3 times): those before the
    last keep their input's variance (uniform within sqrt(3 / fan-in)), the last takes nn.Linear's."""
    for i, (weight, fan_in) in enumerate(zip(weights, fan_ins)):
        bound = (1 if i == len(weights) - 1 else math.sqrt(3)) / math.sqrt(fan_in)
        nn.init.uniform_(weight, -bound, bound)


def conv1d_subclass(module: Any) -> bool:
    """Whether `module` is a subclass of transformers' Conv1D (whose forward may differ): left alone by
    structurize and by `kt tune --from-model`, each saying so."""
    base = _conv1d_class()
    return base is not None and isinstance(module, base) and not conv1d(module)


def unparametrized(module: Any) -> type:
    """The class of `module`, or for a module under torch.nn.utils.parametrize (parametrizations.weight_norm,
    orthogonal, spectral_norm, a user's own) the class it had: parametrize swaps in a subclass of it,
    Parametrized<Class>, which computes the parametrized tensors where they are read and adds no forward, so a
    ParametrizedLinear computes nn.Linear's math."""
    cls = type(module)
    bases = cls.__bases__
    if (
        len(bases) == 1
        and cls.__name__ == f"Parametrized{bases[0].__name__}"
        and "forward" not in vars(cls)
        and isinstance(module, nn.Module)
        and parametrize.is_parametrized(module)
    ):
        return bases[0]
    return cls


# torch's convolutions whose 1x1 instances are matmuls over their channels (`pointwise`)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def pointwise(module: Any) -> bool:
    """Whether `module` is a torch Conv1d, Conv2d or Conv3d (under parametrize too) that is a matmul over its
    channels at each position: kernel 1, no padding and one group (any stride: it keeps every stride-th
    position; dilation does nothing to a kernel of 1). ConvNeXt's and MobileNet's pointwise convolutions, a
    ResNet bottleneck's 1x1 ones."""
    return unparametrized(module) in CONVOLUTIONS and not _not_pointwise(module)


def convolution_subclassed(module: Any) -> str | None:
    """The name of the torch convolution (Conv1d, Conv2d, Conv3d) that `module` is a subclass of (timm's
    StdConv2d, whose forward standardizes its weight: Conv2d), or None where it is none of them or one of them
    itself (under parametrize too): a 1x1 one structurize leaves alone and `kt tune --from-model` lists as skipped."""
    if not isinstance(module, CONVOLUTIONS) or unparametrized(module) in CONVOLUTIONS:
        return None
    return next(c for c in CONVOLUTIONS if isinstance(module, c)).__name__


def _not_pointwise(conv: nn.Module) -> str:
    """Why the convolution `conv` is no matmul over its channels ("" where it is one)."""
    why = []
    if any(k != 1 for k in conv.kernel_size):
        why.append(f"kernel {tuple(conv.kernel_size)}")
    padding = conv.padding
    if not (padding in ("valid", "same") or all(p == 0 for p in padding)):  # "same" pads a kernel of 1 by 0
        why.append(f"padding {tuple(padding)}")
    if conv.groups != 1:
        why.append(f"groups={conv.groups}")
    return ", ".join(why)


def as_linear(module: nn.Module) -> nn.Linear:
    """The nn.Linear that computes what the transformers Conv1D `module` does, or a 1x1 convolution (`pointwise`)
    at each position, for from_dense and structurize's rules to read: its weight is a view of the module's (the
    Conv1D's transposed, the convolution's (out, in, 1, ...) as (out, in); no copy), its bias the module's, and
    it takes the module's mode and freezing."""
    weight = module.weight.detach()
    if pointwise(module):
        weight = weight.reshape(weight.shape[0], weight.shape[1]).t()
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False, device="meta")  # allocates nothing
    linear.weight = nn.Parameter(weight.t(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach(), requires_grad=module.bias.requires_grad)
    return linear.train(module.training)


# the kt.nn layers whose weights are held by submodules they never call (a LowRankLinear's factors, a Sum's
# terms): accelerate's offloading loads such weights only for a class named in its preload_module_classes
PRELOAD_MODULE_CLASSES = ["LowRankLinear", "Sum"]


def _on_meta(who: str, device: torch.device) -> str:
    """Why a layer whose weights are on the meta device cannot run on `device`'s x (it said only "kernel: f1
    is on meta but the first argument is on cpu")."""
    return (
        f"{who}: its weights are on the meta device (x is on {device}), which holds no values: load them first "
        "(layer.to_empty(device=...) then load_state_dict, or load_state_dict(..., assign=True)); under "
        "accelerate's offloading (cpu_offload, disk_offload, dispatch_model with offloaded modules), pass "
        f"preload_module_classes={PRELOAD_MODULE_CLASSES} (kt.nn.layers.PRELOAD_MODULE_CLASSES): those layers "
        "read their factors' or terms' weights without calling them, so accelerate never loads them"
    )


TORCH_DTYPES = ", ".join(
    f"torch.{name}" for name in DTYPES
)  # the dtypes kt's kernels take, as torch names them


def _kt_dtype(dtype: torch.dtype, who: str) -> str:
    """kt's name of `dtype`, or a TypeError naming the dtypes kt's kernels take (a dtype given by name, "float16",
    was refused as "not one that kt's kernels take; use float16, ...")."""
    allowed = TORCH_DTYPES
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{who}: dtype must be a torch.dtype ({allowed}), got {shown(dtype)} ({type(dtype).__name__})"
        )
    try:
        return dtype_name(dtype)
    except KeyError:
        raise TypeError(
            f"{who}: dtype {dtype} is not one that kt's kernels take; allowed: {allowed}"
        ) from None


def _a(noun: str) -> str:
    """`noun` with its article: "an int", "a float"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _takes(dtype: torch.dtype) -> bool:
    """Whether kt's kernels take `dtype` (a layer can be converted to it)."""
    try:
        dtype_name(dtype)
    except KeyError:
        return False
    return True


def _count(value: Any, name: str, who: str) -> int:
    """A positive integer argument (numpy's included), or a ValueError naming it: 0, -4, 4.0 or True reached
    torch or numpy (a ZeroDivisionError, "empty() takes 1 positional argument")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {shown(value)}")
    # before any tensor is made (2**25 features took 8 GiB first, 10**30 a torch TypeError)
    if value > MAX_DIM:
        raise ValueError(f"{who}: {name} must be at most {MAX_DIM}, got {value}")
    return int(value)


def _check_features(who: str, x: torch.Tensor, expected: int) -> None:
    """x's last dim holds `expected` features (a 0-d x, which has none, named as such), else a ValueError."""
    if not isinstance(x, torch.Tensor):  # as nn.Linear refuses one (a numpy array or None: an AttributeError)
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != expected:
        got = "is a 0-d tensor" if x.dim() == 0 else f"has {counted(x.shape[-1], 'feature')} in its last dim"
        raise ValueError(f"{who}: x {got}; expected {counted(expected, 'feature')} in its last dim")


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype torch.autocast runs a linear layer on x in, on x's device: None where autocast is off, or x is
    a tensor it does not cast (not floating point, or float64: nn.Linear refuses those under autocast)."""
    if not x.is_floating_point() or x.dtype == torch.float64:
        return None
    device = x.device.type
    # the meta device has no autocast (asking about it is an error there)
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _check_op(op: dict[str, Any], who: str) -> None:
    """A layer whose op kt cannot build is refused where it is made (an FFT of n = 4099, a low-rank chain of 9
    factors were refused at their first forward, in the words of an op.yaml's fields)."""
    from kt.errors import SpecError
    from kt.nn.selection import MIN_BUCKET, bucket_spec

    try:
        bucket_spec(op, MIN_BUCKET)
    except SpecError as error:
        raise ValueError(f"{who}: {error.reason} ({error.field} of its op)") from None


def _refresh_after_load(module: _KtLinear, incompatible_keys) -> None:
    """A module-level function (a lambda would make the layer unpicklable). A block-sparse layer's index
    buffers written again, as normal tensors (an assign-load under torch.inference_mode gave it inference
    tensors, read back on every forward)."""
    if isinstance(module, BlockSparseLinear):
        module._write_indices()
    module._refresh()


def _check_before_load(module: _KtLinear, state_dict, prefix: str, local_metadata, *args) -> None:
    """load_state_dict(..., assign=True) gives the layer the checkpoint's tensors, dtype and all: one that
    kt's kernels do not take (float64), or a mix of two, is refused before any of the layer's tensors is
    replaced (the layer was left holding float64 weights that no forward took)."""
    if not local_metadata.get("assign_to_params_buffers", False):
        return  # copied into the layer's own tensors, in their dtype
    # the layer's tensors and those of its parts (a low-rank layer's factor list, a sum's terms)
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    dtypes = {}
    for name, current in own.items():
        value = state_dict.get(prefix + name, current)
        if not (current.is_floating_point() or current.is_complex()):
            continue  # a block-sparse layer's index buffers: integers, kept so (BlockSparseLinear)
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            dtypes[name] = value.dtype
    who = type(module).__name__
    for name, dtype in dtypes.items():
        if not _takes(dtype):
            raise TypeError(
                f"{who}.load_state_dict(assign=True): {prefix + name} is {dtype}, which kt's kernels do not "
                f"take ({', '.join(DTYPES)}); convert the checkpoint's tensors first, or load without assign"
            )
    if len(set(dtypes.values())) > 1:
        mix = ", ".join(f"{prefix + name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(
            f"{who}.load_state_dict(assign=True): the layer's tensors would be of different dtypes ({mix}); "
            "convert the checkpoint's tensors to one dtype first, or load without assign"
        )


NO_TORCHSCRIPT = (
    "TorchScript (torch.jit.script, torch.jit.trace, torch.onnx.export(..., dynamo=False)) is not supported by "
    "kt.nn layers; torch.compile and torch.export are (one kt.apply node per layer), and for ONNX, "
    "torch.onnx.export of torch.export.export(model, args).run_decompositions(kt.nn.decompositions())"
)


class _NoTorchScript:
    """torch.jit.script calls this first: refused in one line, not a dump of TorchScript's failure to compile
    the layer's forward (torch.jit.trace is refused by kt.nn.functional.apply)."""

    def __prepare_scriptable__(self):
        raise TypeError(f"{type(self).__name__}: {NO_TORCHSCRIPT}")


_NOT_GIVEN = object()  # an argument left out, as `forward` tells it from None


class _KtLinear(_NoTorchScript, nn.Module, ABC):
    """What the layers share: features, bias, dtype, the op text, and the forward over any leading dims."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device, dtype):
        super().__init__()
        who = type(self).__name__
        in_features, out_features = (
            _count(in_features, "in_features", who),
            _count(out_features, "out_features", who),
        )
        self.in_features, self.out_features = in_features, out_features
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        # none given: torch's default, as nn.Linear takes it (named as such, not as a dtype the caller passed)
        if dtype is None and not _takes(factory["dtype"]):
            raise TypeError(
                f"{who}: torch's default dtype is {factory['dtype']} (torch.set_default_dtype), which kt's kernels "
                "do not take; pass dtype=torch.float32 (or torch.float16, torch.bfloat16)"
            )
        _kt_dtype(factory["dtype"], who)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._factory = factory
        # load_state_dict(..., assign=True) of another dtype changes the weights without _apply: the op text is
        # remade right after (in eager code), not in the next forward, which torch.compile would trace
        self.register_load_state_dict_pre_hook(_check_before_load)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _init_bias(self, fan_in: int) -> None:
        if self.bias is not None:  # nn.Linear's initialisation
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def dtype(self) -> torch.dtype:
        return self._weights()[-1].dtype

    @abstractmethod
    def op(self) -> dict[str, Any]:
        """The layer's op: an op.yaml mapping without its batch."""

    @abstractmethod
    def _weights(self) -> list[torch.Tensor]:
        """The op's weight tensors, in the kernel's order (a BSR weight as crow, col, values)."""

    def _check_weights(self) -> None:
        """Refuse weights the op cannot take as they are (a block-sparse layer's: another pattern's indices)."""

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each weight parameter must have, by its name in `named_parameters` (none where the layer
        checks its own)."""
        return {}

    def _check_shapes(self) -> None:
        """Weights and bias of other shapes (torch.func.functional_call can pass any) are refused by the
        parameter's name: the kernel's own check named its argument (`kernel: f1 must have shape ...`), not
        `factors.0`, and a bias of another shape failed in torch's broadcast."""
        want = {**self._shapes(), **({"bias": (self.out_features,)} if self.bias is not None else {})}
        for name, tensor in self.named_parameters():
            if name in want and tuple(tensor.shape) != want[name]:
                raise ValueError(
                    f"{type(self).__name__}: {name} must have shape {want[name]}, got {tuple(tensor.shape)}"
                )

    def forward(self, x: Any = _NOT_GIVEN, input: Any = None) -> torch.Tensor:
        # `input=` as nn.Linear names it (a model calling `self.fc(input=x)` failed once structurize swapped fc);
        # x not given is not None (layer(None) is told that x must be a tensor). input's default is None, not
        # _NOT_GIVEN: TorchScript's ONNX exporter passes a forward's defaults as positional inputs (an object failed)
        if (x is _NOT_GIVEN) == (input is None):
            raise TypeError(
                f"{type(self).__name__}: give x once (as layer(x), layer(x=x) or, as nn.Linear names it, "
                f"layer(input=x)), got {'neither' if x is _NOT_GIVEN else 'both x and input'}"
            )
        x = x if input is None else input
        _check_features(type(self).__name__, x, self.in_features)
        self._check_shapes()
        self._check_weights()
        weights = self._weights()
        if not x.is_meta and any(w.is_meta for w in weights):
            raise ValueError(_on_meta(type(self).__name__, x.device))
        dtype = autocast_dtype(x)
        if dtype is not None:  # torch.autocast: as nn.Linear does, the op runs on a copy of x in its dtype
            x = x.to(dtype)
        if x.dtype != self.dtype and dtype is None:
            who = f"{type(self).__name__}: x.dtype is {x.dtype}, but the layer's weights are {self.dtype}"
            if not _takes(self.dtype):  # assigned a parameter of a dtype kt does not take: x cannot follow it
                raise TypeError(
                    f"{who}, which kt's kernels do not take; convert the layer (.to(torch.float32))"
                )
            if x.is_complex() and not self.dtype.is_complex:  # x.to(self.dtype) would drop x.imag
                raise TypeError(
                    f"{who}; the layer takes no complex values (x.to({self.dtype}) would drop x.imag)"
                )
            convert = f", or convert the layer (.to({x.dtype}))" if _takes(x.dtype) else ""
            raise TypeError(f"{who}; pass x.to({self.dtype}){convert}")
        # y + bias would promote y to the bias's dtype (under autocast both are cast to autocast's)
        if dtype is None and self.bias is not None and self.bias.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__}: bias is {self.bias.dtype}, but the layer's weights are {self.dtype}; "
                f"convert the layer (.to({self.dtype})), not its bias alone"
            )
        if dtype is None or dtype == self.dtype:
            y, bias = self._forward(x, weights, self.op_text), self.bias
        else:
            # and on copies of the weights and the bias cast to it (the gradients reach the parameters in their
            # own dtype)
            weights = [w.to(dtype) if w.is_floating_point() else w for w in weights]
            y = self._forward(x, weights, self._op_text_in(dtype))
            bias = None if self.bias is None else self.bias.to(dtype)
        return y + bias if bias is not None else y

    def _forward(self, x: torch.Tensor, weights: list[torch.Tensor], text: str) -> torch.Tensor:
        return apply(x, weights, text)

    def _op_text_in(self, dtype: torch.dtype) -> str:
        """`op_text` with the op's dtype changed to `dtype` (made once per dtype, like `op_text`)."""
        if self._stale():
            self._refresh()
        texts = self.__dict__.setdefault("_op_texts", {})
        if dtype not in texts:
            texts[dtype] = op_text({**self.op(), "dtype": _kt_dtype(dtype, type(self).__name__)})
        return texts[dtype]

    @property
    def op_text(self) -> str:
        """`op()` as canonical JSON, kept from one dtype change (`.to()`, `.half()`) to the next, so forward does
        no JSON work (and torch.compile sees a constant). Remade when the weights' dtype is no longer the text's:
        `load_state_dict(..., assign=True)` of another dtype, or a parameter assigned, changes it without `_apply`."""
        if self.__dict__.get("_op_dtype") is not self.dtype or self._stale():
            self._refresh()
        return self.__dict__["_op_text"]

    def _stale(self) -> bool:
        """Whether the op changed in a way the dtype does not show (a Sum's terms)."""
        return False

    def _refresh(self) -> None:
        if "_op_text" not in self.__dict__:  # the layer being made (later: a dtype, a Sum's terms mid-change)
            _check_op(self.op(), type(self).__name__)
        self.__dict__["_op_text"] = op_text(self.op())
        self.__dict__["_op_dtype"] = self.dtype
        self.__dict__["_op_texts"] = {}
        self.__dict__["_op_number"] = next(_CHANGES)  # a Sum holding this layer remakes its op (`Sum._stale`)

    def __setstate__(self, state) -> None:
        """Unpickled (torch.load of a whole model, a spawned process's copy): a fresh op number, and a Sum's op
        remade. The numbers count in each process, so a loaded term's next change could take the very number it
        was saved with: a Sum kept the old pattern's op and refused its term's new weights."""
        super().__setstate__(state)
        if "_op_number" in self.__dict__:
            self.__dict__["_op_number"] = next(_CHANGES)
        self.__dict__.pop("_op_changes", None)

    def _apply(self, fn, *args, **kwargs):
        probe = fn(self._weights()[-1].detach()[:0])  # what the conversion would make of a weight, on no data
        if probe.is_floating_point() or probe.is_complex():
            try:  # refused before any of this layer's parameters is converted
                _kt_dtype(probe.dtype, type(self).__name__)
            except TypeError as error:  # model.to() converts the modules in order: those before this one are
                raise TypeError(
                    f"{error} (a model-wide conversion may have converted the modules before this layer: "
                    f".to({self.dtype}) restores them)"
                ) from None

        def keep_indices(t: torch.Tensor) -> torch.Tensor:
            # Module.type(torch.float16) casts every tensor: BSR indices stay integer, as .half() keeps them
            result = fn(t)
            if not (t.is_floating_point() or t.is_complex()) and (
                result.is_floating_point() or result.is_complex()
            ):
                return t.to(device=result.device)
            return result

        result = super()._apply(keep_indices, *args, **kwargs)
        self._refresh()
        return result

    def _op_base(self, op: str) -> dict[str, Any]:
        return {"op": op, "dtype": _kt_dtype(self.dtype, type(self).__name__)}

    @classmethod
    def _linear(cls, linear: Any, projects: bool = True) -> nn.Linear:
        """from_dense's argument as an nn.Linear: an nn.Linear (a subclass too) as it is, a transformers Conv1D
        as the nn.Linear it computes (`as_linear`); refused in one line otherwise: a tensor or a torch Conv1d
        failed with an AttributeError on its first missing attribute. Its weight's dtype must be one kt's
        kernels take and, where the layer `projects` it (an SVD, block norms), its values finite."""
        if conv1d(linear):
            linear = as_linear(linear)
        elif not isinstance(linear, nn.Linear):
            hint = (
                f" (a 1x1 convolution: kt.nn.Pointwise.from_dense(conv, lambda linear: {cls.__name__}."
                "from_dense(linear, ...)) makes the layer and computes the convolution with it; structurize does too)"
                if pointwise(linear)
                else ""
            )
            raise TypeError(
                f"{cls.__name__}.from_dense: linear must be an nn.Linear or a transformers Conv1D, got "
                f"{type(linear).__name__}{hint}"
            )
        weight = linear.weight
        if not _takes(weight.dtype):  # named as linear's: the caller passed no dtype (it said "dtype ...")
            raise TypeError(
                f"{cls.__name__}.from_dense: linear's weight is {weight.dtype}, which kt's kernels do not take "
                f"(allowed: {TORCH_DTYPES}); convert the layer first, e.g. linear.float()"
            )
        if projects and weight.device.type != "meta":
            bad = (~torch.isfinite(weight.detach())).nonzero()
            if len(bad):  # an SVD of it failed inside torch, or made every factor NaN without a word
                where = tuple(bad[0].tolist())
                raise ValueError(
                    f"{cls.__name__}.from_dense: linear's weight holds {len(bad)} non-finite "
                    f"value{'s' if len(bad) > 1 else ''} ({weight[where].item()} at {list(where)}); a projection "
                    "of it needs finite values: fix or reinitialise them first"
                )
        return linear

    @classmethod
    def _from_linear(cls, linear: nn.Linear, *args: Any, weights: dict[str, torch.Tensor], **kwargs: Any):
        """A layer of `linear`'s features, bias, device and dtype (built with `args`, `kwargs`), its parameters
        named in `weights` set to those values and its bias to `linear`'s."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            *args,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            for name, value in weights.items():
                layer.get_parameter(name).copy_(value)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class DenseLinear(_KtLinear):
    """y = x @ W.T + b with W (out, in), nn.Linear's math, by kt's dense GEMM. The bias is added to the product
    as rounded to the layer's dtype: in float32 the result is nn.Linear's, in float16 and bfloat16 it can differ
    from nn.Linear's (whose bias is added before the one rounding) in the last bit."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **self._factory))
        # nn.Linear's parameter order (weight, bias): an optimizer's state_dict is matched by position, so Adam's
        # state saved for the nn.Linear that `structurize` replaced gave the bias the weight's moments, and the
        # next step failed on their shapes. (The other layers keep theirs, bias first.)
        if "bias" in self._parameters:
            self._parameters["bias"] = self._parameters.pop("bias")
        self.reset_parameters()
        self._refresh()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_bias(self.in_features)

    def op(self) -> dict[str, Any]:
        return {
            **self._op_base("dense"),
            "shape": {"n": self.out_features, "k": self.in_features},
            "layout": {"a": "row", "b": "col"},
        }

    def _weights(self) -> list[torch.Tensor]:
        return [self.weight]

    def _check_weights(self) -> None:
        # the dense kernel takes any n and k: a weight of another shape made rows of another width
        want = (self.out_features, self.in_features)
        if tuple(self.weight.shape) != want:
            raise ValueError(
                f"DenseLinear: weight must have shape (out_features, in_features) = {want}, "
                f"got {tuple(self.weight.shape)}"
            )

    def _forward(self, x: torch.Tensor, weights: list[torch.Tensor], text: str) -> torch.Tensor:
        x2 = _rows(x)
        y = apply(x2, [weights[0].t()], text)
        return y.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> DenseLinear:
        """The same weight and bias as `linear`."""
        linear = cls._linear(linear, projects=False)  # a copy: inf stays inf, as in nn.Linear
        return cls._from_linear(linear, weights={"weight": linear.weight.detach()})


class LowRankLinear(_KtLinear):
    """y = x @ F1 @ ... @ Fk + b: a chain through `rank` (an int: F1 (in, r), F2 (r, out); a tuple of ranks for a
    longer chain)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | tuple[int, ...],
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        ranks = (rank,) if not isinstance(rank, (tuple, list)) else tuple(rank)
        if not ranks or any(
            isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1 for r in ranks
        ):
            raise ValueError(
                f"LowRankLinear: rank must be a positive integer or a tuple of them, got {shown(rank)}"
            )
        if len(ranks) > MAX_CHAIN - 1:  # before any tensor is made, as the feature counts are (`_count`)
            raise ValueError(
                f"LowRankLinear: rank takes at most {MAX_CHAIN - 1} ranks (a chain of 2 to {MAX_CHAIN} factors), "
                f"got {len(ranks)}"
            )
        for i, r in enumerate(ranks):
            _count(r, "rank" if len(ranks) == 1 else f"rank[{i}]", "LowRankLinear")
        self.dims = (self.in_features, *map(int, ranks), self.out_features)
        self.factors = nn.ParameterList(
            nn.Parameter(torch.empty(a, b, **self._factory)) for a, b in zip(self.dims, self.dims[1:])
        )
        self.reset_parameters()
        self._refresh()

    def reset_parameters(self) -> None:
        _init_chain(list(self.factors), [f.shape[0] for f in self.factors])
        self._init_bias(self.in_features)

    def op(self) -> dict[str, Any]:
        return {**self._op_base("lowrank"), "shape": {"dims": list(self.dims)}}

    def _weights(self) -> list[torch.Tensor]:
        return list(self.factors)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"factors.{i}": (a, b) for i, (a, b) in enumerate(zip(self.dims, self.dims[1:]))}

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The best rank-`rank` approximation of `linear` (truncated SVD, kt.ir.truncated_svd)."""
        linear = cls._linear(linear)
        from kt.ir.projections import truncated_svd

        try:
            f1, f2 = truncated_svd(linear.weight.detach(), rank)
        except ValueError as exc:  # named kt.ir's function, which the caller never called
            raise ValueError(f"LowRankLinear.from_dense: {str(exc).partition(': ')[2]}") from None
        size, dense = (
            rank * (linear.in_features + linear.out_features),
            linear.in_features * linear.out_features,
        )
        if size >= dense:  # legal, and no smaller: the point of a low-rank layer is lost without a word
            warnings.warn(
                f"LowRankLinear.from_dense: rank {rank} gives {size} weights, no fewer than the dense layer's "
                f"{dense} ({linear.in_features} x {linear.out_features}); a rank under "
                f"{-(-dense // (linear.in_features + linear.out_features))} saves memory",
                stacklevel=2,
            )
        return cls._from_linear(linear, rank, weights={"factors.0": f1, "factors.1": f2})

    def extra_repr(self) -> str:
        return f"dims={self.dims}, bias={self.bias is not None}"


def _block_mask(mask: Any) -> np.ndarray:
    """A block mask as booleans: bools, or numbers each 0 or 1 (np.asarray(mask, bool) took NaN, 0.1 or the
    text "0" as a kept block)."""
    if isinstance(mask, torch.Tensor):
        if mask.is_meta:
            raise ValueError("BlockSparseLinear: mask is on the meta device, which holds no values")
        if mask.layout != torch.strided:  # .numpy()'s TypeError, "can't convert Sparse layout tensor"
            raise ValueError(
                f"BlockSparseLinear: mask must be a dense tensor or array of the block grid, got {mask.layout} "
                "(a sparse one: pass mask.to_dense())"
            )
        mask = mask.detach().cpu().numpy()
    try:
        values = np.asarray(mask)
    except ValueError:  # ragged rows: numpy's "setting an array element with a sequence"
        raise ValueError(
            "BlockSparseLinear: mask must be a 2-D array of the block grid (rows of equal length), got rows of "
            "different lengths"
        ) from None
    if values.dtype == bool:
        return values
    numeric = values.dtype.kind in "iuf"
    # the first value that is not 0 or 1 (an object array's 1 passed beside its None, and was named)
    wrong = values[~np.isin(values, (0, 1))] if numeric else [v for v in values.ravel() if v not in (0, 1)]
    if len(wrong):
        raise ValueError(
            f"BlockSparseLinear: mask must hold booleans or 0/1 numbers (1: the block is kept), got "
            f"{values.dtype} values such as {shown(wrong[0])}"
        )
    return values.astype(bool)


def _pattern_difference(name: str, theirs: torch.Tensor, mine: torch.Tensor) -> str:
    """How a checkpoint's BSR index tensor `name` differs from this layer's: what each says of its pattern
    (crow_indices: stored blocks and block-rows; col_indices: stored blocks), or, where that is alike, the first
    entry that differs."""

    def words(index: torch.Tensor) -> str:
        if name == "crow_indices" and index.dim() == 1 and index.numel():
            return f"{int(index[-1])} stored blocks in {index.numel() - 1} block-rows"
        return f"{index.numel()} stored blocks"

    if words(theirs) != words(mine) or theirs.shape != mine.shape:
        return f"{name}: {words(theirs)}, where this layer's has {words(mine)}"
    differs = (theirs.cpu().to(torch.float64) != mine.to(torch.float64)).flatten().nonzero()
    at = int(differs[0]) if differs.numel() else 0
    return f"{name}[{at}] is {theirs.flatten()[at].item():g}, where this layer's is {mine.flatten()[at].item():g}"


class BlockSparseLinear(_KtLinear):
    """y = F.linear(x, W) + b with W (out, in) block-sparse: only the blocks of a fixed pattern are stored.

    The pattern is a boolean mask over the block grid (out/bo, in/bi): pass `mask`, or `density` (and `seed`)
    for a random one. The stored blocks are the parameter `values` (nnz, bo, bi), in the order of the BSR
    indices `crow_indices`/`col_indices` (buffers); `weight_bsr()` is W as a torch sparse BSR tensor.

    `torch.nn.utils.parametrize` cannot wrap `values`: it keeps its parametrizations in a ModuleDict, which
    takes no key named as one of its methods (pytorch/pytorch#71203), and deletes the parameter as it fails.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block: tuple[int, int],
        density: float | None = None,
        mask: Any = None,
        seed: int = 0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        with torch.inference_mode(False):  # its tensors normal ones, as below
            super().__init__(in_features, out_features, bias, device, dtype)
        in_features, out_features = self.in_features, self.out_features
        if not isinstance(block, (tuple, list)) or len(block) != 2:
            raise ValueError(
                f"BlockSparseLinear: block must be (rows, cols) of one block of W, got {block!r}"
            )
        bo, bi = (_count(b, f"block[{i}]", "BlockSparseLinear") for i, b in enumerate(block))
        if out_features % bo or in_features % bi:
            raise ValueError(
                f"BlockSparseLinear: block {block} must divide (out, in) = ({out_features}, {in_features})"
            )
        grid = (out_features // bo, in_features // bi)
        if (mask is None) == (density is None):
            raise ValueError("BlockSparseLinear: give exactly one of density (with seed) or mask")
        if mask is not None and not (isinstance(seed, numbers.Integral) and seed == 0):  # it was ignored
            raise ValueError(
                f"BlockSparseLinear: seed draws a density's pattern; a mask gives it, got seed={shown(seed)}"
            )
        if mask is None:
            # a 0-d float tensor as prune_blocks (and so from_dense) takes it
            if isinstance(density, torch.Tensor) and density.dim() == 0 and density.is_floating_point():
                density = float(density)
            if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
                raise ValueError(f"BlockSparseLinear: density must be in (0, 1], got {density!r}")
            try:  # as op.yaml's sparsity.seed: None drew another pattern each time, -1 failed inside numpy
                seed = check_seed(seed)
            except SpecError as exc:
                raise ValueError(f"BlockSparseLinear: {exc}") from None
            mask = random_mask(grid, density, seed)
        mask = _block_mask(mask)
        if mask.shape != grid:
            raise ValueError(f"BlockSparseLinear: mask has shape {mask.shape}; the block grid is {grid}")
        if not mask.any():
            raise ValueError("BlockSparseLinear: the mask keeps no block")
        self.block = (bo, bi)
        self.layout = mask_to_hex(mask)
        index = {"dtype": torch.int64, "device": device}  # filled from the layout by reset_parameters
        # made as normal tensors under torch.inference_mode too: inference tensors have no version counter,
        # which the sparse tensor the kernel takes needs ("Cannot set version_counter for inference tensor":
        # such a layer ran only inside inference mode), and whose indices would be read back every call
        with torch.inference_mode(False):
            self.register_buffer("crow_indices", torch.empty(grid[0] + 1, **index))
            self.register_buffer("col_indices", torch.empty(int(mask.sum()), **index))
            self.values = nn.Parameter(torch.empty(int(mask.sum()), bo, bi, **self._factory))
        self.reset_parameters()
        self._refresh()

    def reset_parameters(self) -> None:
        """The values and bias drawn afresh (and the pattern's index buffers rewritten from `layout`)."""
        self._write_indices()
        self._init_bias(self._draw_values(self.mask()))

    def _draw_values(self, mask: np.ndarray) -> int:
        """The stored blocks drawn afresh, by the inputs of the fullest block-row (returned: the bias's fan-in)."""
        fan_in = max(1, int(mask.sum(axis=1).max())) * self.block[1]
        nn.init.uniform_(self.values, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        return fan_in

    def _write_indices(self) -> None:
        """The index buffers written from `layout`, which alone says what they hold; as normal tensors, also
        after a move under torch.inference_mode (inference tensors have no version counter, so their pattern
        would be read back from the GPU on every forward, `_check_weights`)."""
        crow, col = bsr_indices(self.mask())
        with torch.inference_mode(False):
            for name in ("crow_indices", "col_indices"):
                index = getattr(self, name)
                if index.dtype not in (
                    torch.int64,
                    torch.int32,
                ):  # an assign-load's float copy of the pattern
                    setattr(self, name, torch.empty(index.shape, dtype=torch.int64, device=index.device))
                elif index.is_inference():
                    setattr(self, name, index.clone())
        with torch.no_grad():
            self.crow_indices.copy_(crow)
            self.col_indices.copy_(col)

    def _check_weights(self) -> None:
        """The index buffers must hold the layer's pattern: torch.func.functional_call can give it another
        layer's, whose forward the kernel would run (it reads the indices it is given) while dx came from this
        layer's pattern (relative error 1.09). Read back once per buffer until it is written (`_same_pattern`);
        not while torch.compile traces, nor under a torch.func transform (vmap's rule checks every member; the
        indices may be a transform's wrappers, whose memory cannot be read), nor for fake or functional indices
        or under a TorchDispatchMode (`_readable`: FakeTensorMode, functional_call with a fake state, make_fx,
        aot_export_module failed on their data pointer; the op checks them where it runs on real ones)."""
        # a block for each column index (which, outside a trace, must be the pattern's, below): else the kernel
        # would read past fewer blocks, or skip more; shapes only, so also while torch.compile traces
        want = (self.col_indices.shape[0], *self.block)
        if tuple(self.values.shape) != want:
            raise ValueError(
                f"{type(self).__name__}: values must have shape {want} (a {self.block[0]}x{self.block[1]} block "
                f"for each of the pattern's {want[0]} stored blocks), got {tuple(self.values.shape)}"
            )
        crow, col = self.crow_indices, self.col_indices
        if (
            torch.compiler.is_compiling()
            or torch._C._functorch.peek_interpreter_stack() is not None  # a torch.func transform
            or not _readable(crow, col)
            or crow.is_meta
            or col.is_meta
        ):
            return
        grid = (self.out_features // self.block[0], self.in_features // self.block[1])
        if not _same_pattern(self.layout, grid, crow, col):
            raise ValueError(
                f"{type(self).__name__}: its crow_indices and col_indices are not those of its own pattern "
                f"({self.out_features}x{self.in_features} in {self.block[0]}x{self.block[1]} blocks): a layer "
                "takes only its own (not another layer's, given through torch.func.functional_call); a "
                "checkpoint's pattern is taken by load_state_dict, or by layer.load_pattern(crow, col), not by "
                "setting the buffers (for accelerate's load_checkpoint_and_dispatch, call "
                "kt.nn.load_patterns(model, state_dict) on the model first)"
            )

    def _apply(self, fn, *args, **kwargs):
        # after to_empty() (a model built on the meta device) the index buffers would hold whatever the memory
        # held, and a kernel would read x and the blocks at those offsets: they are written again after any move
        self._take_set_indices()
        result = super()._apply(fn, *args, **kwargs)
        self._write_indices()
        return result

    def _take_set_indices(self) -> None:
        """Before a move: index buffers set directly to another pattern of the block grid, with as many stored
        blocks as `values` holds, are taken as the layer's pattern. accelerate's load_checkpoint_and_dispatch
        sets a checkpoint's tensors one by one (not through load_state_dict) and then moves the model, whose
        `_apply` wrote the buffers again from the layer's own pattern: the layer ran the checkpoint's blocks in
        its own pattern's places (relative error near 1), without a word. Buffers that hold no such pattern
        (to_empty's memory) are written from the layout as before."""
        crow, col = self.crow_indices, self.col_indices
        if (
            crow.is_meta
            or col.is_meta
            or torch.compiler.is_compiling()
            or not _readable(crow, col)
            or crow.dtype not in (torch.int64, torch.int32)
            or col.dtype not in (torch.int64, torch.int32)
            or col.shape[0] != self.values.shape[0]
        ):
            return
        grid = (self.out_features // self.block[0], self.in_features // self.block[1])
        if _same_pattern(self.layout, grid, crow, col):
            return
        try:
            mask = self._pattern_of(crow, col, type(self).__name__)
        except (TypeError, ValueError):  # no pattern of the grid: memory to write over
            return
        self.layout = mask_to_hex(mask)

    def op(self) -> dict[str, Any]:
        return {
            **self._op_base("blocksparse"),
            "shape": {"in": self.in_features, "out": self.out_features},
            "sparsity": {"block": list(self.block), "layout": self.layout},
        }

    def _weights(self) -> list[torch.Tensor]:
        return [self.crow_indices, self.col_indices, self.values]

    def mask(self) -> np.ndarray:
        return hex_to_mask(
            self.layout, (self.out_features // self.block[0], self.in_features // self.block[1])
        )

    def weight_bsr(self) -> torch.Tensor:
        """W as a torch sparse BSR tensor (out, in) sharing `values`."""
        return bsr_tensor(
            self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features)
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # the layer's pattern from its layout, which a layer built on the meta device knows too (its buffers hold
        # no data there: a model built on meta is loaded with assign=True); each index tensor the state_dict
        # holds is checked (a checkpoint with only one of them paired it with another pattern's)
        # A checkpoint converted whole ({k: v.half() ...}) has float indices: taken where they hold the pattern
        # exactly (the buffers stay integers, `_write_indices`), else refused by their dtype, not as another
        # pattern (float16 holds integers exactly up to 2048, bfloat16 up to 256)
        who = type(self).__name__
        # an assign of float64 or of two dtypes is refused before the pattern is taken: the pre-hooks run in the
        # call below, and the layer was left with the checkpoint's layout, uninitialised values and indices
        _check_before_load(self, state_dict, prefix, local_metadata)
        names = ("crow_indices", "col_indices")
        for name, mine in zip(names, bsr_indices(self.mask())):
            index = state_dict.get(prefix + name)
            if not isinstance(index, torch.Tensor) or index.is_meta:
                continue
            if index.is_complex() or index.dtype == torch.bool:
                raise TypeError(
                    f"{who}: the state_dict's {prefix}{name} is {index.dtype}; index tensors must be integers "
                    "(torch.int64 or torch.int32)"
                )
            if not torch.equal(index.cpu().to(torch.float64), mine.to(torch.float64)):
                exact = (
                    2 ** (1 - int(math.log2(torch.finfo(index.dtype).eps)))
                    if index.is_floating_point()
                    else 0
                )
                # blamed on the dtype only where it cannot hold the pattern's indices (another pattern's, held
                # exactly, is another pattern)
                if index.shape == mine.shape and (int(mine.max()) if mine.numel() else 0) > exact > 0:
                    raise TypeError(
                        f"{who}: the state_dict's {prefix}{name} is {index.dtype}, which does not hold the block "
                        "pattern's indices exactly; keep a checkpoint's index tensors integers (convert only its "
                        "floating-point tensors)"
                    )
                self._take_pattern(state_dict, prefix, local_metadata, _pattern_difference(name, index, mine))
                break
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def _take_pattern(self, state_dict, prefix: str, local_metadata, difference: str) -> None:
        """The checkpoint's block pattern taken as the layer's (its layout; the post-hook writes the index
        buffers from it and remakes the op), so that a checkpoint of a layer whose pattern `from_dense` chose
        loads into a model structurized afresh (a Trainer's resume). Where the stored blocks are copied into the
        layer's own `values` (not `assign`), only a pattern of as many stored blocks: the parameter stays the
        one an optimizer holds. With `assign` (the checkpoint's tensors become the layer's) any count: torch
        assigns only tensors of the layer's shapes, so `values` and `col_indices` take the checkpoint's count
        first. Else refused, the layer unchanged, saying to take the pattern first."""
        who = type(self).__name__
        tensors = [state_dict.get(prefix + name) for name in ("crow_indices", "col_indices", "values")]
        assign = local_metadata.get("assign_to_params_buffers", False)
        why = ""
        if not all(isinstance(t, torch.Tensor) and not t.is_meta for t in tensors):
            why = "; the state_dict has not all of its crow_indices, col_indices and values"
        elif not assign and tuple(tensors[2].shape) != tuple(self.values.shape):
            why = (
                f"; its values {tuple(tensors[2].shape)} cannot be copied into this layer's "
                f"{tuple(self.values.shape)} (load with assign=True, which takes the checkpoint's tensors)"
            )
        if not why:
            crow, col = (
                t.to(torch.int64) if t.is_floating_point() and torch.equal(t, t.round()) else t
                for t in tensors[:2]
            )
            mask = self._pattern_of(crow, col, f"{who}: the state_dict's {prefix[:-1] or 'layer'}")
            nnz = int(mask.sum())
            # checked before the layer changes: a refused assign had left the layer the checkpoint's pattern
            # over unwritten values (garbage out, without a word)
            values = tuple(tensors[2].shape)
            if values[1:] != tuple(self.block):
                raise ValueError(
                    f"{who}: the state_dict's {prefix}values {values} are not blocks of this layer's "
                    f"{tuple(self.block)}; a checkpoint loads into a layer of its own block shape (block=...)"
                )
            if values[0] != nnz:
                raise ValueError(
                    f"{who}: the state_dict's {prefix}values {values} hold {values[0]} blocks where its "
                    f"indices give {nnz}; the checkpoint is not one layer's"
                )
            self.layout = mask_to_hex(mask)
            if nnz != self.values.shape[0]:  # (assign) torch assigns only tensors of the shapes the layer has
                self._hold(nnz)
            return
        layer = f"model.get_submodule({prefix[:-1]!r})" if prefix else "layer"
        raise ValueError(
            f"{who}: the state_dict's block pattern differs from this layer's ({prefix}{difference}){why}; take "
            f"it first with {layer}.load_pattern(state_dict[{prefix + 'crow_indices'!r}], "
            f"state_dict[{prefix + 'col_indices'!r}]), or build the layer with that pattern (mask=...)"
        )

    def load_pattern(self, crow_indices: torch.Tensor, col_indices: torch.Tensor) -> None:
        """Take another block pattern of the same block grid, given as BSR indices (a checkpoint's
        `crow_indices` and `col_indices`, whose pattern `from_dense` chose by the weights it pruned). The stored
        blocks are drawn afresh (`values`, as `reset_parameters` draws them; the bias is kept): a new parameter,
        so make an optimizer after this. (`load_state_dict` takes a checkpoint's pattern itself where it can:
        see `_load_from_state_dict`.)"""
        self._take_mask(self._pattern_of(crow_indices, col_indices, f"{type(self).__name__}.load_pattern"))

    def _take_mask(self, mask: np.ndarray) -> None:
        """load_pattern's work for a block mask `_pattern_of` already checked."""
        self.layout = mask_to_hex(mask)
        self._hold(int(mask.sum()))
        self._write_indices()
        with torch.no_grad():
            self._draw_values(mask)
        self._refresh()

    def _hold(self, nnz: int) -> None:
        """`col_indices` and `values` (a new parameter, as frozen as the old) of `nnz` stored blocks, unwritten;
        normal tensors under torch.inference_mode too."""
        with torch.inference_mode(False):
            self.col_indices = self.col_indices.new_empty(nnz)
            values = self.values.new_empty(nnz, *self.block)
            self.values = nn.Parameter(values, requires_grad=self.values.requires_grad)

    def _pattern_of(self, crow_indices: Any, col_indices: Any, who: str) -> np.ndarray:
        """The block mask that BSR indices give over this layer's block grid; refused in `who`'s words where
        they are no pattern of it."""
        grid = (self.out_features // self.block[0], self.in_features // self.block[1])
        rows = []
        for name, index in (("crow_indices", crow_indices), ("col_indices", col_indices)):
            if not isinstance(index, torch.Tensor) or index.dim() != 1:
                got = (
                    f"shape {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
                )
                raise TypeError(f"{who}: {name} must be a 1-D tensor of integers, got {got}")
            if index.is_meta:
                raise ValueError(f"{who}: {name} is on the meta device, which holds no values")
            if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
                raise TypeError(
                    f"{who}: {name} must hold integers (torch.int64 or torch.int32), got {index.dtype}"
                )
            rows.append(index.detach().cpu().to(torch.int64).numpy())
        crow, col = rows
        try:
            mask = indices_mask(crow, col, grid, whose="this layer's")
        except ValueError as err:
            raise ValueError(f"{who}: {err}") from None
        rows = np.repeat(np.arange(grid[0]), np.diff(crow))
        if (np.diff(col)[rows[1:] == rows[:-1]] <= 0).any():  # the buffers, written sorted, would not be its
            raise ValueError(f"{who}: col_indices must increase within each block-row (a BSR tensor's order)")
        if not mask.any():
            raise ValueError(f"{who}: the pattern keeps no block")
        return mask

    @classmethod
    def from_dense(cls, linear: nn.Linear, block: tuple[int, int], density: float) -> BlockSparseLinear:
        """Keep the `density` fraction of `linear`'s blocks with the largest norms (kt.ir.prune_blocks)."""
        linear = cls._linear(linear)
        from kt.ir.projections import prune_blocks

        if linear.weight.is_meta:  # which blocks to keep depends on the weight's values
            raise ValueError(
                "BlockSparseLinear.from_dense: the nn.Linear is on the meta device (no values to prune by); "
                "load its weights first, or build BlockSparseLinear(..., density=...) or (mask=...) on meta"
            )
        try:
            pruned = prune_blocks(linear.weight.detach(), block, density)
        except ValueError as exc:  # named kt.ir's function, which the caller never called
            raise ValueError(f"BlockSparseLinear.from_dense: {str(exc).partition(': ')[2]}") from None
        return cls._from_linear(linear, block, mask=layout_mask(pruned), weights={"values": pruned.values()})

    def extra_repr(self) -> str:
        from kt.sparsity import describe

        return f"{super().extra_repr()}, block={self.block}, {describe(self.mask())}"


# one count over every Sum's terms: a list put in place of another never matches it
_CHANGES = itertools.count(1)


# why a checkpoint holds a kt layer's tensors under a name the model lacks, and what to save instead
OTHER_NAMES = (
    "a checkpoint of another model, or of other names: transformers' save_pretrained writes some models under "
    "their checkpoints' older names (renamed only by from_pretrained): save the structurized model's own with "
    "safetensors.torch.save_file(model.state_dict(), path) or torch.save"
)


def own_names(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """A torch.compile'd model's state_dict by the compiled model's own names: the wrapper names every key
    `_orig_mod.<name>` (nested wrappers, several times over); any other state_dict as it is."""
    prefix = "_orig_mod."
    keys = [key for key in state_dict if isinstance(key, str)]
    while keys and len(keys) == len(state_dict) and all(key.startswith(prefix) for key in keys):
        state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
        keys = list(state_dict)
    return state_dict


def load_patterns(model: nn.Module, state_dict: Mapping[str, Any] | str | os.PathLike) -> list[str]:
    """Give each BlockSparseLinear of `model` (a Sum's terms too) the block pattern `state_dict` holds for it
    (its `<name>.crow_indices` and `<name>.col_indices`; nothing else is read), by `load_pattern`; returns the
    names of the layers that took another pattern. For a checkpoint loaded other than by load_state_dict
    (which takes the pattern itself): accelerate's load_checkpoint_and_dispatch sets the tensors one by one,
    so a model built on the meta device (`init_empty_weights`, patterns drawn at random) must take the
    checkpoint's patterns first. Works on meta layers; the stored blocks are drawn afresh, for the loader to
    overwrite. `state_dict` may be the checkpoint itself, a path: a .safetensors file, a save_pretrained
    folder (its model.safetensors, or the shards its model.safetensors.index.json names), or a torch.save'd
    state_dict; only its index tensors are read (safetensors reads each one alone)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_patterns: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _checkpoint_indices(Path(state_dict))
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"load_patterns: state_dict must be a mapping of names to tensors (a state_dict, or "
            f"safetensors' load_file) or a checkpoint's path, got {type(state_dict).__name__}"
        )
    from kt.nn.structurize import uncompiled

    state_dict, model = own_names(state_dict), uncompiled(model)  # a compiled model's names, `_orig_mod.` off
    taken, read = [], set()
    # every name of a layer held under several (`nn.Sequential(bsl, act, bsl)`): its pattern is under each of
    # them, and the second was refused as "no BlockSparseLinear of the model"
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, BlockSparseLinear):
            continue
        prefix = f"{name}." if name else ""
        read |= {prefix + "crow_indices", prefix + "col_indices"}
        crow, col = state_dict.get(prefix + "crow_indices"), state_dict.get(prefix + "col_indices")
        if crow is None and col is None:
            continue
        if crow is None or col is None:
            raise ValueError(
                f"load_patterns: the state_dict holds {prefix}{'col' if crow is None else 'crow'}_indices but not "
                f"{prefix}{'crow' if crow is None else 'col'}_indices"
            )
        mask = module._pattern_of(crow, col, f"load_patterns: {name or 'the model'}")
        if not np.array_equal(mask, module.mask()):
            module._take_mask(mask)
            taken.append(name)
    # a pattern the model has no BlockSparseLinear for: a checkpoint of other names (transformers' save_pretrained
    # writes some models under their checkpoints' older names) left every layer's drawn pattern, without a word
    unread = list(  # the layers' names, in the state_dict's order
        dict.fromkeys(
            key.rpartition(".")[0]
            for key in state_dict
            if isinstance(key, str) and key.endswith(("crow_indices", "col_indices")) and key not in read
        )
    )
    if unread:
        raise ValueError(
            f"load_patterns: the state_dict holds a block pattern under {unread[0]!r}"
            + (f" (and {counted(len(unread) - 1, 'more layer')})" if len(unread) > 1 else "")
            + f", which is no BlockSparseLinear of the model; {OTHER_NAMES}"
        )
    return taken


def _checkpoint_indices(path: Path) -> dict[str, torch.Tensor]:
    """The BSR index tensors (`*.crow_indices`, `*.col_indices`) of the checkpoint at `path`, read alone."""
    wanted = ("crow_indices", "col_indices")
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            import json

            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"load_patterns: {index} is no safetensors index ({exc})") from None
            files = sorted({file for key, file in weight_map.items() if key.endswith(wanted)})
            found: dict[str, torch.Tensor] = {}
            for file in files:
                found.update(_checkpoint_indices(path / file))
            return found
        if (path / "model.safetensors").is_file():
            return _checkpoint_indices(path / "model.safetensors")
        raise FileNotFoundError(
            f"load_patterns: {path} holds neither model.safetensors nor model.safetensors.index.json"
        )
    if not path.is_file():
        raise FileNotFoundError(f"load_patterns: {path} is no file or folder")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError(
                "load_patterns: reading a .safetensors file needs safetensors (pip install safetensors)"
            ) from None
        try:
            with safe_open(str(path), "pt") as handle:
                keys = handle.keys()  # (a safe_open handle is no mapping)
                return {key: handle.get_tensor(key) for key in keys if key.endswith(wanted)}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds for a file it cannot read
            raise ValueError(
                f"load_patterns: {path} is no safetensors file ({type(exc).__name__}: {exc})"
            ) from None
    try:
        try:  # mapped, not read whole: a model's checkpoint may be larger than memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file of torch's legacy format, which cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds for a file that is no state_dict
        raise ValueError(
            f"load_patterns: {path} is no state_dict torch.load reads ({type(exc).__name__})"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"load_patterns: {path} holds a {type(state).__name__}, not a state_dict")
    return {key: value for key, value in state.items() if isinstance(key, str) and key.endswith(wanted)}


class _Terms(nn.ModuleList):
    """A Sum's terms: a ModuleList that has its Sum remake its op text as soon as a term is replaced, added or
    removed, however that is done (`terms[0] = t`, `setattr(terms, "0", t)` as module surgery does, `append`,
    `insert`, `del`), in eager code, so a compiled forward traces no JSON; each change takes a new number from
    `_CHANGES` (`Sum._stale`)."""

    changes = 0

    def __setstate__(self, state) -> None:  # a fresh number in this process (`_KtLinear.__setstate__`)
        super().__setstate__(state)
        if "changes" in self.__dict__:
            self.changes = next(_CHANGES)

    def _changed(self) -> None:
        self.changes = next(_CHANGES)
        owner = self.__dict__.get("_owner")  # set with object.__setattr__: not a submodule of its own terms
        if owner is not None and "_op_text" in owner.__dict__:  # not while the Sum is being built
            owner._refresh()

    def __setattr__(self, name: str, value) -> None:  # `terms[i] = t` comes here too
        super().__setattr__(name, value)
        if isinstance(value, nn.Module):
            self._changed()

    def add_module(self, name: str, module) -> None:  # append, extend and += come here
        super().add_module(name, module)
        self._changed()

    def __delitem__(self, index) -> None:  # pop comes here
        super().__delitem__(index)
        self._changed()

    def insert(self, index, module) -> None:
        super().insert(index, module)
        self._changed()


def _check_terms(terms, changed: bool = False) -> None:
    """A Sum's terms: 2 to 8 bias-free BlockSparseLinear / LowRankLinear of one shape and dtype. Checked when
    the terms are given, and (`changed`) in every forward, since `sum.terms` may be edited in steps (`del`,
    `append`) and a term's bias set afterwards: a term's bias would be left out of the sum."""
    terms = list(terms)  # a slice of a _Terms would be a new _Terms, counted as a change
    if not changed and len(terms) == 1 and isinstance(terms[0], (list, tuple, nn.ModuleList)):
        raise TypeError(
            f"Sum: takes its terms as arguments, Sum(a, b), not one {type(terms[0]).__name__} of them "
            "(Sum(*terms) spreads one)"
        )
    after = " (the Sum or its terms were changed after it was made)" if changed else ""
    if not 2 <= len(terms) <= MAX_TERMS:
        raise ValueError(
            f"Sum: has {len(terms)} term{'s' if len(terms) != 1 else ''}{after}; a Sum takes 2 to {MAX_TERMS} "
            "BlockSparseLinear / LowRankLinear terms"
        )
    for i, t in enumerate(terms):
        if not isinstance(t, (BlockSparseLinear, LowRankLinear)):
            raise ValueError(
                f"Sum: term {i} is {_a(type(t).__name__)}{after}; a Sum takes BlockSparseLinear / LowRankLinear terms"
            )
        if t.bias is not None:
            raise ValueError(
                f"Sum: term {i} has a bias{after}; build the terms with bias=False (or set term.bias = None): "
                "the sum has one bias of its own"
            )
    first = terms[0]
    for i, t in enumerate(terms[1:], start=1):
        if (t.in_features, t.out_features) != (first.in_features, first.out_features):
            raise ValueError(
                f"Sum: term {i} maps {t.in_features} -> {t.out_features} features but term 0 maps "
                f"{first.in_features} -> {first.out_features}{after}; every term needs the same shape"
            )
        if t.dtype != first.dtype and not changed:  # in a forward, Sum.dtype names every term's dtype
            raise ValueError(
                f"Sum: term {i} holds {t.dtype} but term 0 holds {first.dtype}{after}; every term needs the "
                "same dtype (convert the whole Sum with .to(dtype), not one term)"
            )


class Sum(_KtLinear):
    """y = term_0(x) + term_1(x) + ... + b for BlockSparseLinear and LowRankLinear terms of the same shape, run
    as one kt sum op (fused into one output accumulation where the terms allow). The terms are built with
    bias=False; the sum has one bias of its own. `sum.terms` may be changed like any ModuleList, or replaced by
    another list of terms (which the Sum then holds as a list of its own)."""

    def __init__(self, *terms: _KtLinear, bias: bool = True):
        _check_terms(terms)
        first = terms[0]
        super().__init__(
            first.in_features, first.out_features, bias, first._weights()[-1].device, first.dtype
        )
        self.terms = terms
        self.reset_parameters()
        self._refresh()

    def __setattr__(self, name: str, value) -> None:
        if name != "terms":
            super().__setattr__(name, value)
            return
        # a list put in place of the terms is checked, and held as a _Terms owned by this Sum (a _Terms of
        # another Sum is not taken over: that Sum would no longer hear of its changes)
        terms = list(value)
        _check_terms(terms)
        held = (
            value
            if isinstance(value, _Terms) and value.__dict__.get("_owner") in (None, self)
            else _Terms(terms)
        )
        super().__setattr__(name, held)
        object.__setattr__(held, "_owner", self)
        if "_op_text" in self.__dict__:
            self._refresh()

    def reset_parameters(self) -> None:
        """The sum's own bias (each term resets its own weights)."""
        self._init_bias(self.in_features)

    @classmethod
    def from_dense(
        cls, linear: nn.Linear, block: tuple[int, int], density: float, rank: int, rounds: int = 4
    ) -> Sum:
        """A block-sparse term plus a rank-`rank` term close to `linear`'s weight W (sparse + low-rank), and
        `linear`'s bias. Alternating projections, `rounds` times: S keeps the `density` fraction of the blocks
        of W - L with the largest norms (L = 0 at first: BlockSparseLinear.from_dense's blocks), then L is the
        best rank-`rank` fit of W - S (truncated SVD). Each step is the best for its term with the other held,
        so the error never grows from round to round, and is at most BlockSparseLinear.from_dense's alone.
        Computed in float64, the terms held in `linear`'s dtype."""
        linear = cls._linear(linear)
        from kt.ir.projections import prune_blocks, truncated_svd

        if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
            raise ValueError(f"Sum.from_dense: rounds={rounds!r} must be a positive integer")
        if linear.weight.is_meta:  # which blocks to keep depends on the weight's values
            raise ValueError(
                "Sum.from_dense: the nn.Linear is on the meta device (no values to fit); load its weights first"
            )
        weight = linear.weight.detach().to(torch.promote_types(linear.weight.dtype, torch.float64))
        low = torch.zeros_like(weight)
        try:
            for _ in range(rounds):
                sparse = prune_blocks(weight - low, block, density)
                f1, f2 = truncated_svd(weight - sparse.to_dense(), rank)
                low = (f1 @ f2).t()  # x @ f1 @ f2 = F.linear(x, (f1 @ f2).T)
        except ValueError as exc:  # named kt.ir's function, which the caller never called
            raise ValueError(f"Sum.from_dense: {str(exc).partition(': ')[2]}") from None
        made = {"bias": False, "device": linear.weight.device, "dtype": linear.weight.dtype}
        blocks = BlockSparseLinear(
            linear.in_features, linear.out_features, block, mask=layout_mask(sparse), **made
        )
        chain = LowRankLinear(linear.in_features, linear.out_features, rank, **made)
        layer = cls(blocks, chain, bias=linear.bias is not None)
        with torch.no_grad():
            blocks.values.copy_(sparse.values())
            for factor, value in zip(chain.factors, (f1, f2)):
                factor.copy_(value)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        size, dense = (
            sparse.values().numel() + chain.factors[0].numel() + chain.factors[1].numel(),
            linear.weight.numel(),
        )
        if size >= dense:  # legal, and no smaller: the point of a structured layer is lost without a word
            warnings.warn(
                f"Sum.from_dense: density {density} and rank {rank} give {size} weights, no fewer than the dense "
                f"layer's {dense} ({linear.in_features} x {linear.out_features})",
                stacklevel=2,
            )
        return layer

    @property
    def dtype(self) -> torch.dtype:
        dtypes = [t.dtype for t in self.terms]
        if any(d != dtypes[0] for d in dtypes[1:]):
            raise TypeError(
                f"Sum: its terms hold {', '.join(str(d) for d in dtypes)}: convert the whole Sum (.to(dtype)), "
                "not one term"
            )
        return dtypes[0]

    def op(self) -> dict[str, Any]:
        terms = []
        for t in self.terms:
            term = t.op()
            del term["dtype"]
            term["shape"] = {**term["shape"]}
            terms.append(term)
        return {"op": "sum", "dtype": _kt_dtype(self.dtype, "Sum"), "terms": terms}

    def _weights(self) -> list[torch.Tensor]:
        return [w for t in self.terms for w in t._weights()]

    def _check_weights(self) -> None:
        _check_terms(self.terms, changed=True)
        for term in self.terms:
            term._check_shapes()
            term._check_weights()

    def _stale(self) -> bool:
        """The terms changed since the op text was made, in a way that did not remake it at once: the old
        terms' op ran the backward of the new ones (dx wrong by 120%) or refused their weights; or a term's own
        op did (`load_pattern`: the term ran its new pattern, the sum refused it as another layer's). Ints
        compared, so torch.compile guards on them and traces no JSON."""
        return self.__dict__.get("_op_changes") != self._changes()

    def _changes(self) -> tuple[int, ...]:
        """The terms list's change number, and each term's op number (`_KtLinear._refresh`)."""
        return (getattr(self.terms, "changes", 0), *(t.__dict__.get("_op_number", 0) for t in self.terms))

    def _refresh(self) -> None:
        super()._refresh()
        self.__dict__["_op_changes"] = self._changes()


class MonarchLinear(_KtLinear):
    """y = Monarch(w1, w2) x + b (docs/architecture.md): w1 (k, q, p), w2 (l, s, r) with k = l = `nblocks`,
    p = in / k, s = out / l and the middle width k*q = in (q = r = p)."""

    def __init__(
        self, in_features: int, out_features: int, nblocks: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        in_features, out_features = self.in_features, self.out_features
        nblocks = _count(nblocks, "nblocks", "MonarchLinear")
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"MonarchLinear: nblocks={nblocks} must divide in_features={in_features} and out_features={out_features}"
            )
        k = l = nblocks  # noqa: E741
        p, s = in_features // k, out_features // l
        q = r = p
        self.w1 = nn.Parameter(torch.empty(k, q, p, **self._factory))
        self.w2 = nn.Parameter(torch.empty(l, s, r, **self._factory))
        self.nblocks = nblocks
        self.reset_parameters()
        self._refresh()

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        k = self.__dict__.get("nblocks")  # not in a layer pickled by an earlier kt
        if k is None:
            return {}
        p, s = self.in_features // k, self.out_features // k
        return {"w1": (k, p, p), "w2": (k, s, p)}

    def reset_parameters(self) -> None:
        _init_chain([self.w1, self.w2], [self.w1.shape[-1], self.w2.shape[-1]])
        self._init_bias(self.in_features)  # every output reads every input (its block's fan-in made it 4x)

    def op(self) -> dict[str, Any]:
        return {**self._op_base("monarch"), "shape": {"w1": list(self.w1.shape), "w2": list(self.w2.shape)}}

    def _weights(self) -> list[torch.Tensor]:
        return [self.w1, self.w2]

    @classmethod
    def from_dense(cls, linear: nn.Linear, nblocks: int) -> MonarchLinear:
        """The Monarch matrix closest to `linear`'s weight in Frobenius norm (kt.ir.monarch.project)."""
        linear = cls._linear(linear)
        from kt.ir.monarch import project

        nblocks = _count(nblocks, "nblocks", "MonarchLinear")
        if linear.in_features % nblocks or linear.out_features % nblocks:
            raise ValueError(
                f"MonarchLinear: nblocks={nblocks} must divide in_features={linear.in_features} and "
                f"out_features={linear.out_features}"
            )
        w1, w2 = project(linear.weight.detach().double(), nblocks, nblocks)
        size, dense = w1.numel() + w2.numel(), linear.weight.numel()
        if size >= dense:  # legal, and no smaller (nblocks 1 doubles the weights): said, as LowRankLinear's
            warnings.warn(
                f"MonarchLinear.from_dense: nblocks {nblocks} gives {size} weights, no fewer than the dense "
                f"layer's {dense} ({linear.in_features} x {linear.out_features}); more blocks save memory",
                stacklevel=2,
            )
        return cls._from_linear(linear, nblocks, weights={"w1": w1, "w2": w2})

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w1={tuple(self.w1.shape)}, w2={tuple(self.w2.shape)}"


class FFT(_NoTorchScript, nn.Module):
    """y = torch.fft.fft(x) over the last dim (n features) by kt's FFT kernels (dense DFT blocks on tensor cores).

    float32: x complex64 (or float32 with input="real"), y complex64. float16: complex values are planar,
    (2, ..., n) with real parts in [0] and imaginary in [1] (torch has no usable complex half); a real input
    is (..., n). Differentiable: the gradient is kt's FFT of the conjugate, conjugated.
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float32, input: str = "complex"):
        super().__init__()
        if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float16):
            got = dtype if isinstance(dtype, torch.dtype) else f"{shown(dtype)} ({type(dtype).__name__})"
            raise ValueError(f"FFT: dtype must be torch.float32 or torch.float16, got {got}")
        if not isinstance(input, str) or input not in ("complex", "real"):
            raise ValueError(f"FFT: input must be 'complex' or 'real', got {shown(input)}")
        n = _count(n, "n", "FFT")
        # the op's own limit (two DFT stages of at most FFT_MAX_BLOCK), not MAX_DIM: FFT(1) named 2**24, and an n
        # between them was refused naming the op's field, not the argument
        if not 2 <= n <= FFT_MAX_BLOCK**2:
            raise ValueError(f"FFT: n must be an integer from 2 to {FFT_MAX_BLOCK**2}, got {n}")
        self.n, self.input, self.float_dtype = n, input, dtype
        op = {"op": "fft", "dtype": dtype_name(dtype), "shape": {"n": n}, "input": input}
        _check_op(op, "FFT")
        self.__dict__["op_text"] = op_text(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features("FFT", x, self.n)
        half, real = self.float_dtype == torch.float16, self.input == "real"
        want = self.float_dtype if half or real else torch.complex64
        if x.dtype != want:  # in the layer's words, not its kernel's
            form = (
                "real input"
                if real
                else "planar complex: (2, ..., n), real parts in [0]"
                if half
                else "complex"
            )
            if x.is_complex() and real:  # x.to(want) would drop x.imag (torch only warns)
                layer = "FFT(n)" if want == torch.float32 else "FFT(n, dtype=torch.float16), planar"
                form += f") and no complex values (x.to({want}) would drop x.imag"
                hint = f"for complex x use {layer}"
            elif x.is_complex() and half:
                hint = f"pass torch.stack([x.real, x.imag]).to({want})"
            else:
                hint = f"pass x.to({want})"
            raise TypeError(f"FFT: x.dtype is {x.dtype}, but this layer takes {want} ({form}); {hint}")
        if half and not real:  # in the layer's words (the kernel and the op's fake refuse it in theirs)
            check_planar(x, self.n, "FFT")
        return apply(x, [], self.op_text)

    def extra_repr(self) -> str:
        return f"n={self.n}, dtype={self.float_dtype}, input={self.input}"


class ButterflyLinear(_KtLinear):
    """y = B_{L-1} ... B_0 x + b over n = 2**L features, twiddles (L, n/2, 2, 2) (docs/architecture.md), by
    kt's butterfly kernels (levels multiplied out into block-diagonal stages, a tuning choice)."""

    def __init__(
        self, in_features: int, out_features: int | None = None, bias: bool = True, device=None, dtype=None
    ):
        out_features = in_features if out_features is None else out_features
        in_features = _count(in_features, "in_features", "ButterflyLinear")
        out_features = _count(out_features, "out_features", "ButterflyLinear")
        if in_features != out_features or in_features < 2 or in_features & (in_features - 1):
            raise ValueError(
                f"ButterflyLinear: in_features and out_features must be one power of two >= 2, got "
                f"{in_features} and {out_features}"
            )
        super().__init__(in_features, out_features, bias, device, dtype)
        levels = in_features.bit_length() - 1
        self.twiddles = nn.Parameter(torch.empty(levels, in_features // 2, 2, 2, **self._factory))
        self.reset_parameters()
        self._refresh()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.twiddles, std=1 / math.sqrt(2))  # each 2x2 keeps a vector's expected norm
        self._init_bias(self.in_features)

    def op(self) -> dict[str, Any]:
        return {**self._op_base("butterfly"), "shape": {"n": self.in_features}}

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> ButterflyLinear:
        """A butterfly close to `linear`'s square weight (kt.ir.project_butterfly: level by level from the top,
        each level's 2x2 twiddles by rank-1 fits; exact when the weight is a butterfly)."""
        linear = cls._linear(linear)
        from kt.ir.projections import project_butterfly

        try:
            twiddles = project_butterfly(linear.weight.detach())
        except ValueError as exc:  # named kt.ir's function, which the caller never called
            raise ValueError(f"ButterflyLinear.from_dense: {str(exc).partition(': ')[2]}") from None
        return cls._from_linear(linear, weights={"twiddles": twiddles})

    def _weights(self) -> list[torch.Tensor]:
        return [self.twiddles]

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"twiddles": (self.in_features.bit_length() - 1, self.in_features // 2, 2, 2)}


class Pointwise(_NoTorchScript, nn.Module):
    """A 1x1 convolution computed by a kt layer over its channels: y[..., :, p] = layer(x[..., :, p]) at each
    (strided) position p of a (N, C, *spatial) or unbatched (C, *spatial) input, as torch's Conv1d, Conv2d or
    Conv3d of kernel 1, no padding and one group computes with the layer's dense weight. `structurize` puts one
    in place of each such convolution a rule replaces (the rule is given the nn.Linear the convolution computes,
    `as_linear`), so a CNN's pointwise convolutions (ConvNeXt's and MobileNet's, a ResNet bottleneck's) can be
    low-rank, block-sparse, Monarch or butterfly. The layer sees the positions as rows: the channels are moved
    last (`movedim`, a view; a channels_last input needs no copy) and moved back in the output, which is laid
    out as the convolution's (channels_last for a channels_last input, else contiguous: one copy).

    `layer`: any module with in_features and out_features (a kt layer); `dims`: the convolution's spatial dims
    (1, 2 or 3); `stride`: an int or one per spatial dim. Its state is the layer's, under `layer.`."""

    def __init__(self, layer: nn.Module, dims: int = 2, stride: int | tuple[int, ...] = 1):
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Pointwise: layer must be an nn.Module (a kt layer), got {type(layer).__name__}")
        for attribute in ("in_features", "out_features"):
            value = getattr(layer, attribute, None)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise TypeError(
                    f"Pointwise: layer must have a positive integer {attribute} (a kt layer, or an nn.Linear), "
                    f"got {type(layer).__name__} with {attribute}={shown(value)}"
                )
        # 2.0 is in (1, 2, 3): it failed later, in (stride,) * dims
        if isinstance(dims, bool) or not isinstance(dims, numbers.Integral) or dims not in (1, 2, 3):
            raise ValueError(
                f"Pointwise: dims must be 1, 2 or 3 (a Conv1d's, Conv2d's or Conv3d's), got {shown(dims)}"
            )
        strides = (stride,) * dims if isinstance(stride, numbers.Integral) else stride
        if (
            not isinstance(strides, (tuple, list))
            or len(strides) != dims
            or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in strides)
        ):
            raise ValueError(
                f"Pointwise: stride must be a positive integer or {dims} of them (one per spatial dim), got "
                f"{shown(stride)}"
            )
        self.layer = layer
        self.dims = int(dims)
        self.stride = tuple(int(s) for s in strides)

    @property
    def in_channels(self) -> int:
        return self.layer.in_features

    @property
    def out_channels(self) -> int:
        return self.layer.out_features

    @classmethod
    def from_dense(cls, conv: nn.Module, make: Any) -> Pointwise:
        """The Pointwise of the 1x1 convolution `conv` (a torch Conv1d, Conv2d or Conv3d of kernel 1, no padding,
        one group), its layer `make(linear)` of the nn.Linear `conv` computes (e.g. `lambda linear:
        LowRankLinear.from_dense(linear, rank=16)`), taking `conv`'s mode and stride."""
        if unparametrized(conv) not in CONVOLUTIONS:
            raise TypeError(
                f"Pointwise.from_dense: conv must be a torch Conv1d, Conv2d or Conv3d, got {type(conv).__name__}"
            )
        why = _not_pointwise(conv)
        if why:
            raise ValueError(
                f"Pointwise.from_dense: the {unparametrized(conv).__name__} has {why}: only a convolution of "
                "kernel 1, no padding and one group is a matmul over its channels"
            )
        if not callable(make):
            raise TypeError(
                f"Pointwise.from_dense: make must be a function linear -> layer, got {type(make).__name__}"
            )
        linear = as_linear(conv)
        layer = make(linear)
        made = (getattr(layer, "in_features", None), getattr(layer, "out_features", None))
        if made != (linear.in_features, linear.out_features):
            raise ValueError(
                f"Pointwise.from_dense: make returned a layer of {getattr(layer, 'in_features', '?')} -> "
                f"{getattr(layer, 'out_features', '?')} features; the convolution maps {linear.in_features} -> "
                f"{linear.out_features} channels"
            )
        return cls(layer, dims=len(conv.kernel_size), stride=tuple(conv.stride)).train(conv.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"Pointwise: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (self.dims + 1, self.dims + 2):
            raise ValueError(
                f"Pointwise: input must be (N, C, {self._spatial()}) or unbatched (C, {self._spatial()}) "
                f"for its {self.dims} spatial dim(s), got shape {tuple(input.shape)}"
            )
        channel = input.dim() - self.dims - 1
        if input.shape[channel] != self.in_channels:
            raise ValueError(
                f"Pointwise: input has {input.shape[channel]} channels (dim {channel} of {tuple(input.shape)}), "
                f"the layer takes {self.in_channels}"
            )
        # the convolution's output is channels_last for a channels_last input (before its stride), else
        # contiguous: laid out alike, a caller's `out.view(n, -1)` works where it did
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(input.dim())
        # not asked under torch.func's transforms, whose batched tensors refuse it ("NYI: querying
        # is_contiguous inside of vmap"): vmap over (N, C, H, W) samples failed where nn.Conv2d's runs
        transformed = torch._C._functorch.maybe_current_level() is not None
        last = (
            fmt is not None
            and not transformed
            and input.is_contiguous(memory_format=fmt)
            and not input.is_contiguous()
        )
        if any(s != 1 for s in self.stride):  # a kernel of 1 at stride s reads every s-th position
            input = input[(slice(None),) * (channel + 1) + tuple(slice(None, None, s) for s in self.stride)]
        out = self.layer(input.movedim(channel, -1)).movedim(-1, channel)  # channels_last-strided
        return out if last else out.contiguous()

    def _spatial(self) -> str:
        return ", ".join("DHW"[3 - self.dims :])

    def extra_repr(self) -> str:
        return f"dims={self.dims}, stride={self.stride}"
