"""Generated kernels called directly, as a user calls `kt.build` or `kt.load` kernels: a negated view (which a
kernel cannot see), writes through `out=` that autograd and kt's own caches must see, `as_op`'s weight count, and
inputs that require grad (a differentiable result). Triton's interpreter on the CPU (the GPU where there is one)."""

from __future__ import annotations

import pytest
import torch

import kt

DENSE = {"op": "dense", "dtype": "float32", "shape": {"m": 13, "n": 11, "k": 9}}
MONARCH = {"op": "monarch", "dtype": "float32", "shape": {"batch": 5, "n": 16, "nblocks": 4}}
BUTTERFLY = {"op": "butterfly", "dtype": "float32", "shape": {"batch": 3, "n": 16}}
LOWRANK = {"op": "lowrank", "dtype": "float32", "shape": {"batch": 7, "dims": [13, 5, 7]}}
FFT = {"op": "fft", "dtype": "float32", "input": "real", "shape": {"batch": 3, "n": 12}}
SPECS = {"dense": DENSE, "monarch": MONARCH, "butterfly": BUTTERFLY, "lowrank": LOWRANK}
BSR = {"block": [8, 8], "density": 0.5, "seed": 1}
BSR_TERM = {"op": "blocksparse", "shape": {"batch": 5, "in": 32, "out": 24}, "sparsity": BSR}
BLOCKSPARSE = {**BSR_TERM, "dtype": "float32"}
SUM = {
    "op": "sum",
    "dtype": "float32",
    "terms": [BSR_TERM, {"op": "lowrank", "shape": {"batch": 5, "dims": [32, 4, 24]}}],
}
EVERY_FAMILY = {**SPECS, "fft": FFT, "blocksparse": BLOCKSPARSE, "sum": SUM}


def negated(t: torch.Tensor) -> torch.Tensor:
    """A view holding t's values whose memory holds -t (its neg bit set), as `c.conj().imag` gives."""
    view = torch.view_as_complex(torch.stack([torch.zeros_like(t), -t], -1)).conj().imag
    assert view.is_neg()
    return view


@pytest.fixture(scope="module")
def kernels():
    return {name: kt.build(spec, device="h100") for name, spec in SPECS.items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_a_negated_view_is_refused_as_input_written_right_as_out_and_resolved_by_as_op(
    kernels, name, monkeypatch
):
    """The kernels read a negated view's memory: every family gave the result with the wrong sign (relative
    error 2), as x and as out, and so did kt.nn's layers and as_op functions running them."""
    kernel = kernels[name]
    x, *weights = kt.random_args(SPECS[name], seed=1, device="cpu")
    expected = kernel(x, *weights)
    with pytest.raises(ValueError, match="is a negated view .* pass .*resolve_neg"):
        kernel(negated(x), *weights)
    out = negated(torch.zeros_like(expected))
    assert kernel(x, *weights, out=out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    monkeypatch.setenv(
        "KT_INTERPRET", "1"
    )  # as_op runs the generated kernel on CPU tensors, not PyTorch's path
    torch.testing.assert_close(kernel.as_op()(negated(x), *weights), expected, rtol=0, atol=0)


def test_a_write_through_out_is_seen_by_autograd(kernels):
    """out= written by Triton left out's version counter as it was: a tensor autograd had saved was overwritten
    and backward returned a wrong gradient (off by 20), where torch.matmul(out=) makes backward refuse."""
    kernel = kernels["dense"]
    a, b = kt.random_args(DENSE, seed=2, device="cpu")
    w = torch.randn(13, 11, requires_grad=True)
    h = w * 1
    loss = (h**2).sum()  # saves h
    before = h._version
    kernel(a, b, out=h.detach())
    assert h._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_twiddles_written_through_out_are_seen_by_the_butterfly_cache(kernels):
    """The butterfly kernel caches its blocks per twiddle version: twiddles rewritten by a kernel's out= kept
    the old blocks, and the old result (relative error 1)."""
    butterfly, dense = (
        kernels["butterfly"],
        kt.build({**DENSE, "shape": {"m": 16, "n": 8, "k": 9}}, device="h100"),
    )
    x, twiddles = kt.random_args(BUTTERFLY, seed=3, device="cpu")
    butterfly(x, twiddles)  # caches the blocks of these twiddles
    a, b = kt.random_args({**DENSE, "shape": {"m": 16, "n": 8, "k": 9}}, seed=4, device="cpu")
    dense(a, b, out=twiddles.view(16, 8))
    torch.testing.assert_close(butterfly(x, twiddles), butterfly(x, twiddles.clone()), rtol=0, atol=0)


def test_as_op_refuses_a_weight_too_many_and_leaves_it_as_it_was():
    """One tensor more than the op's weights went on to the kernel as `out`: a low-rank op wrote its result into
    the extra factor, an FFT into x itself."""
    lowrank = kt.build(LOWRANK, device="h100").as_op()
    x, f1, f2 = kt.random_args(LOWRANK, seed=5, device="cpu")
    kept = f2.clone()
    with pytest.raises(TypeError, match="the lowrank op takes 2 weight tensors; got 3"):
        lowrank(x, f1, f2, f2)
    assert torch.equal(f2, kept)
    fft = kt.build(FFT, device="h100").as_op()
    (x,) = kt.random_args(FFT, seed=6, device="cpu")
    with pytest.raises(TypeError, match="the fft op takes 0 weight tensors; got 1"):
        fft(x, x)


@pytest.mark.parametrize("spec", [DENSE, LOWRANK], ids=["dense", "lowrank"])
def test_pytorchs_path_takes_inputs_that_require_grad_as_a_generated_kernel_does(spec):
    """Its torch.matmul(out=...) and mm(out=...) refused any input that required grad (an nn.Parameter weight),
    so code worked or failed by which kernel won the tune. Both now give a differentiable result."""
    pytorch, generated = kt.build(spec, "pytorch", device="h100"), kt.build(spec, device="h100")
    x, *weights = kt.random_args(spec, seed=7, device="cpu")
    weights = [torch.nn.Parameter(w) for w in weights]
    y = pytorch(x, *weights)
    assert y.requires_grad and generated(x, *weights).requires_grad
    torch.testing.assert_close(y, generated(x, *weights), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not pytorch(x, *weights).requires_grad and not generated(x, *weights).requires_grad


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_a_kernel_called_on_inputs_that_require_grad_gives_a_differentiable_result(name, monkeypatch):
    """`kernel(x, w)` with inputs that require grad gave a result with no graph, silently: a weight's gradient
    lacked the kernel's part (or backward failed far from the call). It now runs as `as_op()` with this
    generated kernel as the forward (on CPU tensors too), its gradients those of the float64 reference; with
    out= or under no_grad it records no graph, as before."""
    spec = EVERY_FAMILY[name]
    kernel = kt.build(spec, device="h100")
    args = kt.random_args(spec, seed=10, device="cpu")
    dense = [t.layout == torch.strided for t in args]  # a BSR weight stays as it is (test below)
    inputs = [t.detach().clone().requires_grad_(True) if d else t for t, d in zip(args, dense)]
    calls = []
    generated = kernel.module.kernel
    monkeypatch.setattr(kernel.module, "kernel", lambda *a, **k: calls.append(1) or generated(*a, **k))
    y = kernel(*inputs)
    assert calls and y.grad_fn is not None
    torch.testing.assert_close(y.detach(), generated(*args), rtol=0, atol=0)  # the generated kernel's result
    cotangent = torch.randn_like(y)
    y.backward(cotangent)
    references = [_double(t).requires_grad_(True) if d else _double(t) for t, d in zip(args, dense)]
    expected = kt.reference(spec)(*references)
    expected.backward(_double(cotangent))
    for got, want in [(t.grad, r.grad) for t, r, d in zip(inputs, references, dense) if d]:
        assert (_double(got) - want).norm() / want.norm() < 1e-5
    with torch.no_grad():
        assert kernel(*inputs).grad_fn is None
    out = torch.empty_like(y)
    assert kernel(*inputs, out=out) is out and out.grad_fn is None
    torch.testing.assert_close(out, y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("k, n", [(0, 11), (9, 0)], ids=["k0", "n0"])
def test_a_dense_kernel_with_k_or_n_of_0_has_torchs_gradients(k, n):
    """The forward took K or N of 0 (zeros, or an empty result, as torch gives); its backward failed with
    "kt.nn.apply: op: shape.n: must be an integer from 1 ...", an op the user never wrote."""
    kernel = kt.build(DENSE, device="h100")
    a = torch.randn(13, k, requires_grad=True)
    b = torch.randn(k, n, requires_grad=True)
    y = kernel(a, b)
    assert y.shape == (13, n) and not y.abs().sum()
    cotangent = torch.randn(13, n)
    y.backward(cotangent)
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    (a2 @ b2).backward(cotangent)
    torch.testing.assert_close(a.grad, a2.grad, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, b2.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    "a_shape, b_shape", [((0, 13, 9), (9, 11)), ((13, 9), (0, 9, 11)), ((0, 13, 9), (0, 9, 11))]
)
def test_a_dense_kernel_with_a_batch_of_0_has_torchs_gradients(a_shape, b_shape):
    """The forward took a batch of 0 (an empty result, as torch.matmul gives); its backward failed with
    "kt.nn.apply: op: shape.batch: must be an integer from 1 to 65535, got 0"."""
    kernel = kt.build(DENSE, device="h100")
    a = torch.randn(a_shape, requires_grad=True)
    b = torch.randn(b_shape, requires_grad=True)
    y = kernel(a, b)
    assert y.shape == torch.matmul(a, b).shape and y.numel() == 0
    y.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    assert not a.grad.abs().sum() and not b.grad.abs().sum()


def test_a_kernel_called_with_grad_by_argument_names_is_differentiable_and_not_kept_alive():
    """Inputs given by name took the module's kernel (no graph) past a check that looked at positional ones; and
    the op a call with grad makes pins its kernel: held strongly, every such kernel lived as long as the
    process."""
    import gc
    import weakref

    kernel = kt.build(DENSE, device="h100")
    a, b = kt.random_args(DENSE, seed=12, device="cpu")
    w = torch.nn.Parameter(b.clone())
    y = kernel(a=a, b=w)
    assert y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(w.grad, a.t() @ torch.ones(13, 11), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="positional argument"):
        kernel(a, w, torch.empty(13, 11))  # out is keyword-only, as in the module's kernel
    alive = weakref.ref(kernel)
    del kernel, y
    gc.collect()
    assert alive() is None


def test_a_bsr_weight_that_requires_grad_is_refused_at_the_call_not_in_the_backward():
    """PyTorch's backward of a BSR tensor's values() fails ("Sparse BSR tensors do not have is_contiguous"):
    the call says so, naming the parts as_op takes; with the values requiring grad they get their gradient."""
    kernel = kt.build(BLOCKSPARSE, device="h100")
    x, w = kt.random_args(BLOCKSPARSE, seed=11, device="cpu")
    with pytest.raises(
        ValueError, match=r"a sparse BSR weight that requires grad .* kernel.as_op\(\) its parts"
    ):
        kernel(x, w.detach().clone().requires_grad_(True))
    values = w.values().detach().clone().requires_grad_(True)
    kernel.as_op()(x, w.crow_indices(), w.col_indices(), values).sum().backward()
    dense = w.to_dense().requires_grad_(True)
    torch.nn.functional.linear(x, dense).sum().backward()
    blocks = torch.sparse_bsr_tensor(w.crow_indices(), w.col_indices(), values.grad, w.shape).to_dense()
    torch.testing.assert_close(blocks, dense.grad * (w.to_dense() != 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["generated", "pytorch"])
@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_a_tensor_too_many_is_refused_not_written_as_out_and_a_sparse_tensor_is_named(name, kind):
    """`out` could be passed by position: kernel(x, w, w) returned w overwritten by the product, and
    kernel(x, w, bias) wrote it into the bias. A sparse COO x or out reached torch's internals
    ("Cannot access storage of SparseTensorImpl")."""
    spec = EVERY_FAMILY[name]
    kernel = kt.build(spec, *(["pytorch"] if kind == "pytorch" else []), device="h100")
    args = kt.random_args(spec, seed=8, device="cpu")
    expected = kernel(*args)
    spare = torch.zeros_like(expected)
    with pytest.raises(TypeError, match="positional argument"):
        kernel(*args, spare)
    assert not spare.any()
    x, *weights = args
    if not x.is_complex():  # a complex x has no sparse COO form that keeps its layout
        with pytest.raises(TypeError, match=r"must be a dense \(strided\) tensor, got torch.sparse_coo"):
            kernel(x.to_sparse(), *weights)
    if not expected.is_complex():
        with pytest.raises(TypeError, match=r"out must be a dense .*tensor.*torch.sparse_coo"):
            kernel(*args, out=spare.to_sparse())
    torch.testing.assert_close(kernel(*args), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_a_generated_kernel_given_meta_tensors_points_to_as_op(name):
    """Meta tensors reached Triton's interpreter, which failed deep inside ("Cannot copy out of meta tensor; no
    data!"); as_op gives the shape there, as PyTorch's path does when called directly."""
    spec = EVERY_FAMILY[name]
    kernel = kt.build(spec, device="h100")
    args = kt.random_args(spec, seed=9, device="cpu")
    on_meta = [t.to("meta") for t in args]
    with pytest.raises(ValueError, match=r"a meta tensor holds no data .* kernel.as_op\(\) gives the output"):
        kernel(*on_meta)
    with pytest.raises(ValueError, match="a meta tensor holds no data"):
        kernel(*args, out=kernel(*args).to("meta"))
    if name == "dense":
        pytorch = kt.build(spec, "pytorch", device="h100")
        assert pytorch(*on_meta).shape == pytorch(*args).shape


@pytest.mark.parametrize(
    ("spec", "config", "out_is_x"),
    [
        ({**DENSE, "shape": {"m": 13, "n": 11, "k": 40}}, {"block_m": 16, "block_n": 16, "block_k": 16, "split_k": 2},
         False),  # split-K's copy
        (DENSE, {"block_m": 16, "block_n": 16, "block_k": 16, "split_k": 1}, False),
        (MONARCH, None, True),  # an out that is x is written through a copy
        (LOWRANK, None, False),
        (DENSE, "pytorch", False),
    ],
    ids=["dense-split-k", "dense", "monarch-out-is-x", "lowrank", "pytorch"],
)  # fmt: skip
def test_an_out_that_requires_grad_is_written_whatever_the_config(spec, config, out_is_x):
    """PyTorch's path wrote an out that requires grad (it runs under no_grad), and so did a generated kernel
    that writes out in place; one that copies into it (split-K's sum, an out that is an input) raised "a leaf
    Variable that requires grad is being used in an in-place operation". Which one ran was the tuned config's
    choice, not the caller's."""
    kernel = kt.build(spec, config, device="h100") if config else kt.build(spec, device="h100")
    x, *weights = kt.random_args(spec, seed=2, device="cpu")
    expected = kernel(x, *weights)
    out = (x.clone() if out_is_x else torch.zeros_like(expected)).requires_grad_()
    assert kernel(out if out_is_x else x, *weights, out=out) is out
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["generated", "pytorch"])
def test_a_float16_fft_given_complex_values_says_how_to_make_them_planar(kind):
    """It said "pass x.to(torch.float16)", which drops the imaginary parts (the next call was then refused as
    not planar)."""
    spec = {"op": "fft", "dtype": "float16", "shape": {"batch": 3, "n": 16}}
    kernel = kt.build(spec, *(["pytorch"] if kind == "pytorch" else []), device="h100")
    x = torch.randn(3, 16, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"planar, \(2, \.\.\., 16\): pass torch.stack\(\[x.real, x.imag\]\)"):
        kernel(x)
    y = kernel(torch.stack([x.real, x.imag]).to(torch.float16))
    expected = torch.fft.fft(x.to(torch.complex128))
    got = torch.complex(y[0].double(), y[1].double())
    assert (got - expected).norm() / expected.norm() < 1e-2


@pytest.mark.parametrize("kind", ["generated", "pytorch"])
@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_complex_input_to_a_real_kernel_is_not_told_to_cast_away_its_imaginary_part(name, kind):
    """Every kernel of real values said "pass x.to(torch.float32)" to complex x: a real-input FFT then gave
    the transform of x.real, 0.71 from torch.fft.fft(x). A real dtype of the wrong width still gets the cast."""
    spec = EVERY_FAMILY[name]
    kernel = kt.build(spec, *(["pytorch"] if kind == "pytorch" else []), device="h100")
    x, *weights = kt.random_args(spec, seed=2, device="cpu")
    first = "a" if name == "dense" else "x"
    with pytest.raises(
        TypeError, match=rf"takes no complex values \({first}.to\(torch.float32\) would drop {first}.imag\)"
    ):
        kernel(x.to(torch.complex64), *weights)
    with pytest.raises(
        TypeError, match=rf"but this kernel was built for torch.float32; pass {first}.to\(torch.float32\)$"
    ):
        kernel(x.double(), *weights)


def test_a_kernel_pickles_and_a_deep_copy_of_a_model_shares_it(kernels, tmp_path):
    """A Kernel held a module: copy.deepcopy of a model keeping one (an EMA copy) and torch.save of it failed
    with "cannot pickle 'module' object"."""
    import copy
    import pickle

    kernel = kernels["lowrank"]
    x, *weights = kt.random_args(LOWRANK, seed=2, device="cpu")
    again = pickle.loads(pickle.dumps(kernel))
    assert again is not kernel and again.source == kernel.source and again.config == kernel.config
    assert again.spec == kernel.spec and repr(again) == repr(kernel)
    torch.testing.assert_close(again(x, *weights), kernel(x, *weights), rtol=0, atol=0)

    model = torch.nn.Module()
    model.kernel, model.w = kernel, torch.nn.ParameterList(weights)
    assert copy.deepcopy(model).kernel is kernel  # nothing in a kernel changes: shared, as torch ops are
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.testing.assert_close(loaded.kernel(x, *loaded.w), kernel(x, *weights), rtol=0, atol=0)

    # a model keeping the kernel's op (README's `as_op()` pattern) pickles too: it failed on the local function
    model.op = kernel.as_op()
    assert copy.deepcopy(model).op is model.op  # shared, as the kernel is (a copy pinned the kernel again)
    torch.save(model, tmp_path / "op.pt")
    loaded = torch.load(tmp_path / "op.pt", weights_only=False)
    torch.testing.assert_close(loaded.op(x, *loaded.w), model.op(x, *weights), rtol=0, atol=0)

    pytorch_path = kt.build(LOWRANK, config="pytorch")  # PyTorch's own path, made from a template too
    torch.testing.assert_close(
        pickle.loads(pickle.dumps(pytorch_path))(x, *weights), pytorch_path(x, *weights)
    )

    # in another process, where kt's kernel cache cannot be written (a file in its place): the kernel is imported
    # from a temporary folder instead (it failed there with the cache's OSError)
    import os
    import subprocess
    import sys

    (tmp_path / "saved.pt").write_bytes(pickle.dumps((kernel, x, weights, kernel(x, *weights))))
    (tmp_path / "no-cache").write_text("")
    code = (
        "import pickle, sys, torch\n"
        "kernel, x, weights, expected = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "torch.testing.assert_close(kernel(x, *weights), expected, rtol=0, atol=0)\n"
        "print(kernel.module.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "saved.pt")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KT_CACHE_DIR": str(tmp_path / "no-cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kt-kernel-" in done.stdout, done.stdout


@pytest.mark.parametrize("kind", ["generated", "pytorch"])
@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_an_out_whose_rows_overlap_is_refused_and_one_with_gaps_is_written(name, kind):
    """Only a stride of 0 was refused: an out of shape (rows, n) and strides (n // 2, 1) was written over itself,
    1.1 to 1.3 off, without a word (torch.matmul(out=) does the same; torch.add refuses it)."""
    spec = EVERY_FAMILY[name]
    kernel = kt.build(spec, *(["pytorch"] if kind == "pytorch" else []), device="h100")
    args = kt.random_args(spec, seed=8, device="cpu")
    expected = kernel(*args)
    rows, n = expected.reshape(-1, expected.shape[-1]).shape
    shape, (row, col) = expected.shape, expected.stride()[-2:]
    stride = (*expected.stride()[:-2], row, col)
    storage = torch.zeros(2 * expected.numel() + 64, dtype=expected.dtype)
    overlapping = storage.as_strided(shape, (*stride[:-2], max(1, n // 2), 1))
    with pytest.raises(ValueError, match="out overlaps itself"):
        kernel(*args, out=overlapping)
    padded = storage.as_strided(shape, (*(s * 2 for s in stride[:-2]), n + 3, 1))  # gaps, no overlap
    torch.testing.assert_close(kernel(*args, out=padded), expected)


def test_as_op_refuses_bsr_indices_that_are_not_integers():
    """Float, int16 or uint8 index tensors ran the forward and failed in the backward's blocksparse_grad kernel
    ("repeat_interleave_cpu" not implemented for 'Float')."""
    f = kt.build(BLOCKSPARSE, device="h100").as_op()
    x, w = kt.random_args(BLOCKSPARSE, seed=3, device="cpu")
    for dtype in (torch.float32, torch.int16, torch.uint8):
        with pytest.raises(
            TypeError, match=rf"w's crow_indices must be torch.int64 or torch.int32, got {dtype}"
        ):
            f(x, w.crow_indices().to(dtype), w.col_indices(), w.values())
    y = f(x, w.crow_indices().int(), w.col_indices().int(), w.values())
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w.to_dense()))


def test_a_layer_apply_and_as_op_given_no_tensor_name_the_argument():
    """layer(None), layer(numpy array), kt.nn.apply(None, ...) and as_op()(x, None) failed with an
    AttributeError deep in kt ('dim', 'layout') or torch's dispatcher's multi-line words."""
    import kt.nn as knn

    layer = knn.LowRankLinear(13, 7, rank=5)
    for x in (None, torch.randn(3, 13).numpy()):
        with pytest.raises(TypeError, match=r"^LowRankLinear: x must be a torch.Tensor, got "):
            layer(x)
    x, *weights = kt.random_args(LOWRANK, seed=1, device="cpu")
    with pytest.raises(TypeError, match=r"^kt.nn.apply: x must be a torch.Tensor, got NoneType$"):
        knn.apply(None, weights, LOWRANK)
    with pytest.raises(TypeError, match=r"^kt.nn.apply: weights\[1\] must be a torch.Tensor, got NoneType$"):
        knn.apply(x, [weights[0], None], LOWRANK)
    with pytest.raises(TypeError, match=r"^kernel\(x, \*weights\): weights\[0\] must be a torch.Tensor, got"):
        kt.build(LOWRANK, device="h100").as_op()(x, None, weights[1])


def test_a_kernel_called_inside_torch_compile_runs_as_its_op_and_out_calls_run_eagerly(monkeypatch):
    """Called inside a compiled function, dynamo traced into the Triton interpreter's launch and failed there
    ("KeyError(torch.uint64)", 150 lines); the README points at as_op() for one node, and a plain call must run."""
    monkeypatch.setenv("KT_INTERPRET", "1")  # the generated kernel, not PyTorch's path, on CPU tensors
    torch._dynamo.reset()
    kernel = kt.build(DENSE, device="h100")
    a, b = kt.random_args(DENSE, seed=5, device="cpu")
    twice = torch.compile(lambda a, b: kernel(a, b) * 2, backend="aot_eager")
    torch.testing.assert_close(twice(a, b), 2 * (a @ b), rtol=1e-5, atol=1e-5)
    out = torch.full((13, 11), float("nan"))

    def into(a, b):
        kernel(a, b, out=out)
        return out + 1

    torch.testing.assert_close(
        torch.compile(into, backend="aot_eager")(a, b), a @ b + 1, rtol=1e-5, atol=1e-5
    )
    w = b.clone().requires_grad_(True)
    torch.compile(lambda a, w: kernel(a, w).sum(), backend="aot_eager")(a, w).backward()
    torch.testing.assert_close(w.grad, a.t() @ torch.ones(13, 11), rtol=1e-5, atol=1e-5)
    # made on the first call, the op is one node of a whole graph from then on
    assert torch._dynamo.explain(lambda a, b: kernel(a, b) * 2)(a, b).graph_break_count == 0


GRAD = {
    "op": "blocksparse_grad",
    "dtype": "float32",
    "shape": {"batch": 5, "in": 32, "out": 24},
    "sparsity": BSR,
}


@pytest.mark.parametrize("name", [*EVERY_FAMILY, "blocksparse_grad"])
def test_every_generated_kernel_runs_on_its_tensors_gpu(name):
    """Triton launches on the current CUDA device, not the tensors': a model on cuda:1 while cuda:0 was current
    had a kernel read another GPU's memory. Every generated module's `kernel` is wrapped to make the first
    tensor's GPU current (tests/test_gpu.py runs it across two GPUs where there are two); its signature, which
    kt.Kernel reads to place inputs given by name, stays the kernel's."""
    import inspect

    kernel = kt.build(EVERY_FAMILY.get(name, GRAD), device="h100")
    module = kernel.module
    guard = module._on_the_tensors_gpu
    assert module.kernel.__code__ is guard(lambda: None).__code__, "kernel is not the guard's wrapper"
    inner = inspect.unwrap(module.kernel)
    assert inner.__name__ == "kernel" and inner is not module.kernel
    assert inspect.signature(module.kernel) == inspect.signature(inner)
    assert "out" in inspect.signature(module.kernel).parameters


def test_a_templates_version_covers_the_templates_it_includes(tmp_path, monkeypatch):
    """The guard lives in one template the others include: a change to it must change their versions, or rows
    measured with the old code would be reused for the new."""
    from kt.codegen import render

    (tmp_path / "main.py.j2").write_text('x = 1\n{% include "part.py.j2" %}\n')
    (tmp_path / "part.py.j2").write_text("y = 2\n")
    monkeypatch.setattr(render, "TEMPLATES", tmp_path)
    render.template_version.cache_clear()
    try:
        before = render.template_version("main.py.j2")
        (tmp_path / "part.py.j2").write_text("y = 3\n")
        render.template_version.cache_clear()
        assert render.template_version("main.py.j2") != before
    finally:
        render.template_version.cache_clear()


@pytest.mark.parametrize(
    "spec",
    [
        {"op": "lowrank", "dtype": "float32", "shape": {"batch": 5, "dims": [32, 4, 24]}},
        {"op": "blocksparse", "dtype": "float32", "shape": {"batch": 5, "in": 32, "out": 32},
         "sparsity": {"block": [16, 16], "density": 1.0, "seed": 0}},
    ],
    ids=["lowrank", "blocksparse"],
)  # fmt: skip
def test_a_split_kernel_writes_an_out_made_in_inference_mode(spec):
    """A split config sums its fp32 slices into `out` with torch, which refuses to write an inference tensor
    outside inference mode (one of split 1, stored by Triton, was taken): every generated kernel now writes such
    an `out` in inference mode."""
    space = kt.space(spec)
    config = next(c for c in space.legal if c.split > 1 and not c.fused)
    kernel = kt.build(spec, config)
    args = kt.random_args(spec, seed=0, device="cpu")
    expected = kernel(*args)
    with torch.inference_mode():
        out = torch.full_like(expected, float("nan"))
    assert kernel(*args, out=out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
