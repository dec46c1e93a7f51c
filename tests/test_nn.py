"""kt.nn end to end in Triton's CPU interpreter: every layer's forward and gradients against a float64 plain-torch
reference's autograd, torch.compile (aot_eager, and one inductor compile) and torch.export over each layer,
state_dict round trips and dtype changes, from_dense projections, structurize, run-time kernel selection per batch
bucket (cost-model fallback logged once, artifacts), and the layers' argument errors."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kt
import kt.nn as knn
from kt.ir import butterfly_map, monarch_map
from kt.ir.structured import butterfly_reference, monarch_reference
from kt.nn import selection
from kt.nn.layers import (
    FFT,
    BlockSparseLinear,
    ButterflyLinear,
    DenseLinear,
    LowRankLinear,
    MonarchLinear,
    Sum,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state:UserWarning")

F32, F16, BF16 = 1e-5, 5e-3, 3e-2  # relative Frobenius error against float64, per layer dtype


@pytest.fixture(autouse=True, scope="module")
def interpreter():
    """Every kernel of this module is kt's generated kernel run in Triton's interpreter on CPU tensors
    (KT_INTERPRET=1; without it kt.nn runs the op's PyTorch path there, tested in test_nn_cpu.py). Set while
    these tests run only, so that GPU tests collected with them still compile for the GPU."""
    before = {name: os.environ.get(name) for name in ("TRITON_INTERPRET", "KT_INTERPRET")}
    os.environ.update({name: "1" for name in before})
    yield
    for name, value in before.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def fresh_selection(monkeypatch):
    """Each test selects its kernels afresh, sees no $KT_ARTIFACTS and leaves the artifact directories as found."""
    monkeypatch.delenv("KT_ARTIFACTS", raising=False)
    saved = list(selection._ARTIFACT_DIRS)
    selection._SELECTED.clear()
    torch.manual_seed(0)
    yield
    selection._SELECTED.clear()
    selection._ARTIFACT_DIRS[:] = saved


# -- float64 references ---------------------------------------------------------------------------------------


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    wide = torch.complex128 if ref.is_complex() or out.is_complex() else torch.float64
    ref = ref.detach().to(wide)
    return float((out.detach().to(wide) - ref).norm() / ref.norm())


def mask_with_gaps(grid: tuple[int, int], empty_row: int, empty_col: int, seed: int = 0) -> np.ndarray:
    """A random half-full block mask with one empty block-row and one empty block-column."""
    mask = np.random.default_rng(seed).random(grid) < 0.6
    mask[:, (empty_col + 1) % grid[1]] = True  # never empty anywhere else by chance
    mask[empty_row] = False
    mask[:, empty_col] = False
    return mask


def bsr_dense(layer: BlockSparseLinear, values: torch.Tensor) -> torch.Tensor:
    """The dense (out, in) weight of `layer` with stored blocks `values`, differentiable in `values`."""
    mask = torch.from_numpy(layer.mask())
    (rows, cols), (bo, bi) = mask.shape, layer.block
    grid = values.new_zeros(rows, cols, bo, bi)
    r, c = mask.nonzero(as_tuple=True)  # row-major: the BSR order of `values`
    grid = grid.index_put((r, c), values)
    return grid.permute(0, 2, 1, 3).reshape(rows * bo, cols * bi)


def reference(layer: nn.Module, x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str = "", bias=True):
    """`layer(x)` in plain torch on the (float64) parameters `p`, named as layer.named_parameters() names them."""
    if isinstance(layer, FFT):
        planar_in = layer.float_dtype == torch.float16 and layer.input == "complex"
        y = torch.fft.fft(torch.complex(x[0], x[1]) if planar_in else x)
        return torch.stack([y.real, y.imag]) if layer.float_dtype == torch.float16 else y
    if isinstance(layer, DenseLinear):
        y = F.linear(x, p[prefix + "weight"])
    elif isinstance(layer, LowRankLinear):
        y = x
        for i in range(len(layer.factors)):
            y = y @ p[f"{prefix}factors.{i}"]
    elif isinstance(layer, BlockSparseLinear):
        y = F.linear(x, bsr_dense(layer, p[prefix + "values"]))
    elif isinstance(layer, MonarchLinear):
        y = monarch_reference(x, p[prefix + "w1"], p[prefix + "w2"])
    elif isinstance(layer, ButterflyLinear):
        y = butterfly_reference(x, p[prefix + "twiddles"])
    elif isinstance(layer, Sum):  # the terms' own biases are not used
        y = sum(reference(t, x, p, f"{prefix}terms.{i}.", bias=False) for i, t in enumerate(layer.terms))
    else:
        raise AssertionError(type(layer))
    return y + p[prefix + "bias"] if bias and layer.bias is not None else y


def wide(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def check_against_reference(layer, leaf, view, tol, dy=None):
    """layer(view(leaf)) and the gradients of leaf and of every parameter against float64 autograd."""
    leaf = leaf.detach().requires_grad_(True)
    y = layer(view(leaf))
    dy = torch.randn(y.shape, dtype=y.dtype) if dy is None else dy
    y.backward(dy)
    leaf64 = wide(leaf).requires_grad_(True)
    p64 = {name: wide(p).requires_grad_(True) for name, p in layer.named_parameters()}
    y64 = reference(layer, view(leaf64), p64)
    y64.backward(wide(dy))
    assert y.shape == y64.shape
    assert rel(y, y64) < tol, ("forward", rel(y, y64))
    assert rel(leaf.grad, leaf64.grad) < tol, ("dx", rel(leaf.grad, leaf64.grad))
    for name, param in layer.named_parameters():
        if p64[name].grad is None:  # a Sum term's own bias
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.dtype == param.dtype, name
            assert rel(param.grad, p64[name].grad) < tol, (name, rel(param.grad, p64[name].grad))
    return y


# -- the layers under test ------------------------------------------------------------------------------------


def same(x):
    return x


def transposed(x):  # leaf (in, rows): x is its column-major view
    return x.t()


def strided(x):  # leaf (..., 2*in): every other feature
    return x[..., ::2]


def _bs_gaps(dtype=torch.float32, bias=True):
    return BlockSparseLinear(32, 48, (16, 8), mask=mask_with_gaps((3, 4), 1, 2), bias=bias, dtype=dtype)


def _sum_bs_lr(dtype=torch.float32):
    return Sum(
        BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1, bias=False, dtype=dtype),
        LowRankLinear(32, 48, 4, bias=False, dtype=dtype),
    )


def _sum_bs_bs():  # different block heights: the sum cannot be fused
    return Sum(
        BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1, bias=False),
        BlockSparseLinear(32, 48, (8, 16), density=0.4, seed=2, bias=False),
    )


# id: (layer factory, leaf shape, view, leaf dtype or None for the layer's, tolerance)
CASES = {
    "dense-3d": (lambda: DenseLinear(24, 40), (5, 3, 24), same, None, F32),
    "dense-nobias-strided": (lambda: DenseLinear(24, 40, bias=False), (37, 48), strided, None, F32),
    "dense-transposed-x": (lambda: DenseLinear(40, 24), (40, 7), transposed, None, F32),
    "lowrank-3d": (lambda: LowRankLinear(24, 40, 5), (5, 3, 24), same, None, F32),
    "lowrank-chain-strided": (lambda: LowRankLinear(24, 40, (5, 7)), (37, 48), strided, None, F32),
    "lowrank-chain-transposed-x": (lambda: LowRankLinear(40, 24, (5, 7)), (40, 9), transposed, None, F32),
    "blocksparse-gaps-3d": (_bs_gaps, (5, 3, 32), same, None, F32),
    "blocksparse-wide-blocks-transposed-x": (
        lambda: BlockSparseLinear(48, 32, (8, 16), density=0.4, seed=3),
        (48, 21),
        transposed,
        None,
        F32,
    ),
    "blocksparse-strided": (
        lambda: BlockSparseLinear(32, 32, (8, 8), density=0.3, seed=4, bias=False),
        (19, 64),
        strided,
        None,
        F32,
    ),
    "monarch-up-3d": (lambda: MonarchLinear(32, 48, 4), (5, 3, 32), same, None, F32),
    "monarch-down-strided": (lambda: MonarchLinear(48, 24, 4), (19, 96), strided, None, F32),
    "monarch-square-transposed-x": (
        lambda: MonarchLinear(64, 64, 8, bias=False),
        (64, 11),
        transposed,
        None,
        F32,
    ),
    "butterfly-3d": (lambda: ButterflyLinear(32), (5, 3, 32), same, None, F32),
    "butterfly-transposed-x": (lambda: ButterflyLinear(16, 16, bias=False), (16, 9), transposed, None, F32),
    "sum-blocksparse-lowrank-3d": (_sum_bs_lr, (5, 3, 32), same, None, F32),
    "sum-blocksparse-blocksparse": (_sum_bs_bs, (23, 64), strided, None, F32),
    "fft-complex-3d": (lambda: FFT(16), (5, 3, 16), same, torch.complex64, F32),
    "fft-complex-transposed-x": (lambda: FFT(32), (32, 7), transposed, torch.complex64, F32),
    "fft-real": (lambda: FFT(32, input="real"), (7, 32), same, torch.float32, F32),
    "fft-f16-planar": (lambda: FFT(16, dtype=torch.float16), (2, 5, 16), same, torch.float16, F16),
    "fft-f16-real": (
        lambda: FFT(16, dtype=torch.float16, input="real"),
        (3, 5, 16),
        same,
        torch.float16,
        F16,
    ),
    "dense-f16": (lambda: DenseLinear(24, 40, dtype=torch.float16), (5, 3, 24), same, None, F16),
    "lowrank-chain-bf16": (
        lambda: LowRankLinear(24, 40, (5, 7), dtype=torch.bfloat16),
        (21, 24),
        same,
        None,
        BF16,
    ),
    "blocksparse-gaps-f16": (lambda: _bs_gaps(torch.float16), (5, 3, 32), same, None, F16),
    "monarch-bf16": (lambda: MonarchLinear(32, 48, 4, dtype=torch.bfloat16), (5, 3, 32), same, None, BF16),
    "butterfly-f16": (lambda: ButterflyLinear(16, dtype=torch.float16), (13, 16), same, None, F16),
    "sum-bf16": (lambda: _sum_bs_lr(torch.bfloat16), (13, 32), same, None, BF16),
}


def make_case(name):
    factory, shape, view, dtype, tol = CASES[name]
    layer = factory()
    dtype = dtype or layer.dtype
    return layer, torch.randn(shape, dtype=dtype), view, tol


# -- forward and gradients against float64 autograd -----------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_float64_reference(name):
    layer, leaf, view, tol = make_case(name)
    y = check_against_reference(layer, leaf, view, tol)
    assert y.shape[:-1] == view(leaf).shape[:-1] or isinstance(layer, FFT)


def test_blocksparse_reference_weight_is_the_layers_bsr_weight():
    layer = _bs_gaps()
    torch.testing.assert_close(bsr_dense(layer, layer.values.detach()), layer.weight_bsr().to_dense())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_blocksparse_empty_block_rows_and_columns_are_exact_zeros(dtype):
    """An empty block-row gives exact zeros (no bias), an empty block-column of W takes no gradient from x, and
    an output gradient only on the empty block-row reaches neither x nor the stored blocks."""
    layer = _bs_gaps(
        dtype, bias=False
    )  # block-row 1 (outputs 16..31) and block-column 2 (inputs 16..23) empty
    x = torch.randn(3, 7, 32, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert torch.equal(y[..., 16:32], torch.zeros_like(y[..., 16:32]))
    assert y[..., :16].count_nonzero() > 0
    y.backward(torch.randn_like(y))
    assert torch.equal(x.grad[..., 16:24], torch.zeros_like(x.grad[..., 16:24]))
    assert x.grad[..., :16].count_nonzero() > 0

    x.grad = None
    layer.values.grad = None
    dy = torch.zeros_like(y)
    dy[..., 16:32] = torch.randn_like(dy[..., 16:32])
    layer(x).backward(dy)
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(layer.values.grad, torch.zeros_like(layer.values))


def test_blocksparse_empty_block_row_gives_the_bias():
    layer = _bs_gaps()
    y = layer(torch.randn(11, 32))
    assert torch.equal(y[:, 16:32], layer.bias[16:32].detach().expand(11, 16))


def test_sum_of_two_blocksparse_with_different_block_heights_runs_unfused():
    layer = _sum_bs_bs()
    with torch.no_grad():
        layer(torch.randn(9, 32))
    (chosen,) = [s for s in knn.selections() if s.spec.op == "sum"]
    assert chosen.kernel.config.fused == 0


def test_sum_is_the_sum_of_its_terms_and_refuses_biased_terms():
    a = BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1, bias=False)
    b = LowRankLinear(32, 48, 4, bias=False)
    layer = Sum(a, b, bias=False)
    x = torch.randn(6, 32)
    with torch.no_grad():
        assert rel(layer(x), a(x) + b(x)) < F32
    with pytest.raises(ValueError, match="bias=False") as info:
        Sum(BlockSparseLinear(32, 48, (16, 8), density=0.5), LowRankLinear(32, 48, 4, bias=False))
    assert "\n" not in str(info.value)


# -- torch.compile and torch.export ---------------------------------------------------------------------------

LAYER_CASES = [
    "dense-3d",
    "lowrank-chain-strided",
    "blocksparse-gaps-3d",
    "monarch-up-3d",
    "butterfly-3d",
    "sum-blocksparse-lowrank-3d",
    "sum-blocksparse-blocksparse",
    "fft-complex-3d",
    "fft-real",
    "fft-f16-planar",
]


def forward_backward(module, layer, leaf, view, dy):
    for p in layer.parameters():
        p.grad = None
    leaf = leaf.detach().requires_grad_(True)
    y = module(view(leaf))
    y.backward(dy)
    return y.detach(), leaf.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize(
    "name",
    LAYER_CASES,
)
def test_compile_fullgraph_aot_eager_matches_eager(name):
    torch._dynamo.reset()
    layer, leaf, view, _ = make_case(name)
    with torch.no_grad():
        y0 = layer(view(leaf))  # (one eager forward for dy's shape and dtype)
    dy = torch.randn(y0.shape, dtype=y0.dtype)
    # the compiled pass first, kt's caches emptied: what a model's first backward pass meets when it is compiled
    # (an eager pass first would fill them with what the trace then only reads)
    for cache in (knn.functional.transposed_pattern, knn.functional._dense_text, selection.parsed_op):
        cache.cache_clear()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    cy, cdx, cgrads = forward_backward(compiled, layer, leaf, view, dy)
    y, dx, grads = forward_backward(layer, layer, leaf, view, dy)
    torch.testing.assert_close(cy, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cdx, dx, rtol=1e-6, atol=1e-6)
    assert grads.keys() == cgrads.keys()
    for n in grads:
        if grads[n] is None:
            assert cgrads[n] is None, n
        else:
            torch.testing.assert_close(cgrads[n], grads[n], rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["blocksparse-gaps-3d", "sum-blocksparse-blocksparse"])
def test_compile_fullgraph_inference_of_blocksparse_matches_eager(name):
    torch._dynamo.reset()
    layer, leaf, view, _ = make_case(name)
    x = view(leaf)
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-6, atol=1e-6)


def test_compile_inductor_small_sequential_trains_like_eager():
    torch._dynamo.reset()
    model = nn.Sequential(DenseLinear(16, 32), nn.GELU(), LowRankLinear(32, 16, 4))
    x = torch.randn(10, 16)
    y = model(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    cy = compiled(x)
    cy.square().sum().backward()
    torch.testing.assert_close(cy, y, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LAYER_CASES)
def test_export_has_a_kt_apply_node_and_matches_eager(name):
    layer, leaf, view, _ = make_case(name)
    x = view(leaf)
    ep = torch.export.export(layer, (x,))
    targets = [node.target for node in ep.graph.nodes if node.op == "call_function"]
    assert torch.ops.kt.apply.default in targets
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), layer(x), rtol=1e-6, atol=1e-6)


# -- state_dict and dtype changes -----------------------------------------------------------------------------


# -- torch.func transforms --------------------------------------------------------------------------------------


def inner(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """<y, dy>, complex values as pairs of reals: a scalar loss whose gradient in y is dy."""
    return (torch.view_as_real(y) * torch.view_as_real(dy)).sum() if y.is_complex() else (y * dy).sum()


FUNC_CASES = [
    "dense-3d",
    "lowrank-chain-strided",
    "blocksparse-gaps-3d",
    "monarch-up-3d",
    "butterfly-transposed-x",
    "sum-blocksparse-lowrank-3d",
    "fft-real",
    "fft-f16-planar",
]


@pytest.mark.parametrize("name", FUNC_CASES)
def test_torch_func_grad_vmap_and_per_sample_grads_match_the_float64_reference(name, monkeypatch):
    check_torch_func(name, monkeypatch)


def check_torch_func(name, monkeypatch):
    """torch.func.grad (every parameter and x), vmap of the layer over x's batch, and per-sample gradients
    (vmap of grad) against the same transforms of the float64 plain-torch reference; both over an empty
    batch too."""
    layer, leaf, view, tol = make_case(name)
    # at most 7 samples (odd): the transforms' rules do not depend on their count, and each sample is a row of
    # the per-sample gradients' batched products, which the interpreter runs program by program
    x = view(leaf[:7] if view is strided else leaf)
    f16_fft = isinstance(layer, FFT) and layer.float_dtype == torch.float16
    x_dim = 1 if f16_fft and layer.input == "complex" else 0  # planar x is (2, batch, n)
    y_dim = 1 if f16_fft else 0  # and so is a half FFT's y
    params = {n: p.detach() for n, p in layer.named_parameters()}
    with torch.no_grad():
        y = layer(x)
    dy = torch.randn(y.shape, dtype=y.dtype)
    p64, x64, dy64 = {n: wide(p) for n, p in params.items()}, wide(x), wide(dy)

    def loss(p, x, dy):
        return inner(torch.func.functional_call(layer, p, (x,)), dy)

    def loss64(p, x, dy):
        return inner(reference(layer, x, p), dy)

    calls = {}
    run = knn.functional._run
    for transform, batched in ((torch.func.grad, False), (torch.func.grad, True)):
        f, f64 = transform(loss, argnums=(0, 1)), transform(loss64, argnums=(0, 1))
        if batched:  # one gradient per sample of x
            f = torch.func.vmap(f, in_dims=(None, x_dim, y_dim))
            f64 = torch.func.vmap(f64, in_dims=(None, x_dim, y_dim))
        calls[batched] = []
        monkeypatch.setattr(knn.functional, "_run", lambda *args, c=calls[batched]: c.append(1) or run(*args))
        (dp, dx), (dp64, dx64) = f(params, x, dy), f64(p64, x64, dy64)
        monkeypatch.setattr(knn.functional, "_run", run)
        assert dx.shape == dx64.shape and rel(dx, dx64) < tol, (batched, "dx", rel(dx, dx64))
        for n in params:
            assert dp[n].shape == dp64[n].shape and rel(dp[n], dp64[n]) < tol, (
                batched,
                n,
                rel(dp[n], dp64[n]),
            )
    # per-sample gradients cost the kernel calls of one gradient, not one per sample
    assert len(calls[True]) == len(calls[False]), (len(calls[True]), len(calls[False]))
    if name == "dense-3d":  # the per-sample weight gradients ran as one batched product, selected as such
        assert any(s.spec.op == "dense" and s.spec.shape.batch == x.shape[0] for s in knn.selections())
    # forward mode: the output's tangent for tangents of every parameter and of x
    tangents = ({n: torch.randn_like(p) for n, p in params.items()}, torch.randn_like(x))

    def out(p, x):
        return torch.func.functional_call(layer, p, (x,))

    _, y_t = torch.func.jvp(out, (params, x), tangents)
    _, y_t64 = torch.func.jvp(
        lambda p, x: reference(layer, x, p),
        (p64, x64),
        ({n: wide(t) for n, t in tangents[0].items()}, wide(tangents[1])),
    )
    assert y_t.shape == y_t64.shape and rel(y_t, y_t64) < tol, ("jvp", rel(y_t, y_t64))
    calls = []
    run = knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    yv = torch.func.vmap(layer, in_dims=x_dim, out_dims=y_dim)(x)
    y64 = torch.func.vmap(lambda x: reference(layer, x, p64), in_dims=x_dim, out_dims=y_dim)(x64)
    assert yv.shape == y64.shape and rel(yv, y64) < tol
    # the batch joins x's leading dims: one kernel call per op, not one per sample
    assert len(calls) == 1
    # an empty batch (plain torch allows it): the shapes of the results, and no kernel call
    calls.clear()
    empty = x.narrow(x_dim, 0, 0)
    assert torch.func.vmap(layer, in_dims=x_dim, out_dims=y_dim)(empty).shape == y.narrow(y_dim, 0, 0).shape
    dp, dx = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, x_dim, y_dim))(
        params, empty, dy.narrow(y_dim, 0, 0)
    )
    assert dx.shape == empty.movedim(x_dim, 0).shape and not calls
    assert all(dp[n].shape == (0, *p.shape) for n, p in params.items())


DENSE_VMAP_CASES = [
    (a3, b3, a_batched, b_batched)
    for a3, b3, a_batched, b_batched in itertools.product([False, True], repeat=4)
    if a_batched or b_batched
]


@pytest.mark.parametrize(
    "a3, b3, a_batched, b_batched",
    DENSE_VMAP_CASES,
    ids=[
        f"{'G' if a3 else ''}a{'[S]' if ab else ''}@{'G' if b3 else ''}b{'[S]' if bb else ''}"
        for a3, b3, ab, bb in DENSE_VMAP_CASES
    ],
)
def test_vmap_of_a_dense_product_is_one_kernel_call_for_every_operand_batched_or_shared(
    a3, b3, a_batched, b_batched, monkeypatch
):
    check_vmap_dense(a3, b3, a_batched, b_batched, monkeypatch)


def check_vmap_dense(a3, b3, a_batched, b_batched, monkeypatch):
    """kt's dense op (the products of every layer's backward) vmapped over 3 samples, each operand 2-D or a
    batch of 4 products, batched or shared: one kernel call (the samples join rows, columns or the product
    batch), equal to torch.matmul vmapped in float64."""
    S, G, M, K, N = 3, 4, 5, 6, 7
    a = torch.randn(*((S,) if a_batched else ()), *((G,) if a3 else ()), M, K)
    b = torch.randn(*((S,) if b_batched else ()), *((G,) if b3 else ()), K, N)
    calls = []
    run = knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    dims = (0 if a_batched else None, 0 if b_batched else None)
    y = torch.func.vmap(knn.functional.matmul, in_dims=dims)(a, b)
    y64 = torch.func.vmap(torch.matmul, in_dims=dims)(wide(a), wide(b))
    assert y.shape == y64.shape and rel(y, y64) < F32 and len(calls) == 1


# (the batched operands of the block-sparse op's vmap): for the forward y = F.linear(x, W) "x" and/or "W" (its
# values, as in an ensemble), for the weight gradient dy.T @ x on W's blocks "dy" and/or "x", or "W" alone (an
# ensemble's indices: one gradient for all)
BLOCKSPARSE_VMAP_CASES = [
    ("forward", ("W",)),
    ("forward", ("x", "W")),
    ("forward", ("x",)),
    ("grad", ("dy", "x")),
    ("grad", ("dy",)),
    ("grad", ("x",)),
    ("grad", ("W",)),
]


@pytest.mark.parametrize(
    "kind, batched", BLOCKSPARSE_VMAP_CASES, ids=[f"{k}-{'+'.join(b)}" for k, b in BLOCKSPARSE_VMAP_CASES]
)
def test_vmap_of_a_block_sparse_op_is_one_kernel_call_per_stack_of_samples(kind, batched, monkeypatch):
    check_vmap_blocksparse(kind, batched, monkeypatch)


def check_vmap_blocksparse(kind, batched, monkeypatch):
    """A block-sparse op (or its weight gradient) vmapped over 5 samples, batched at dim 1, with a pattern that
    has an empty block-row and block-column, odd rows and strided x: equal to the float64 formula of each
    sample, in one kernel call, and, with STACK_BITS lowered to hold 4 copies of the pattern, in 3 calls when
    both sides are batched (2 + 2 + 1 samples on the diagonal: the last a single copy) or 2 when one is shared
    (4 + 1 stacked)."""
    S, rows, block, grid = 5, 3, (8, 4), (3, 5)
    layer = BlockSparseLinear(20, 24, block, mask=mask_with_gaps(grid, 1, 2), bias=False)
    spec, (crow, col, values) = layer.op(), (layer.crow_indices, layer.col_indices, layer.values.detach())
    mask, nnz = torch.from_numpy(layer.mask()), layer.values.shape[0]
    leaf = {"x": torch.randn(rows, S, 40), "dy": torch.randn(rows, S, 24), "W": torch.randn(nnz, S, *block)}
    ops = {  # (the operands, sample dim 1 when batched), each sample's float64 result
        "x": leaf["x"][..., ::2] if "x" in batched else leaf["x"][:, 0, ::2],
        "dy": leaf["dy"] if "dy" in batched else leaf["dy"][:, 0],
        "W": leaf["W"] if "W" in batched else values,
    }
    dims = tuple(1 if name in batched else None for name in ("x", "dy", "W"))

    def sample(name, i):
        return wide(ops[name].select(1, i) if name in batched else ops[name])

    def expected(i):
        w = torch.zeros(grid[0], grid[1], *block, dtype=torch.float64)
        w[mask] = sample("W", i)
        dense = w.permute(0, 2, 1, 3).reshape(24, 20)
        if kind == "forward":
            return F.linear(sample("x", i), dense)
        full = sample("dy", i).T @ sample("x", i)  # (24, 20)
        return full.reshape(grid[0], block[0], grid[1], block[1]).permute(0, 2, 1, 3)[mask]

    if kind == "forward":

        def f(x, dy, w):
            return knn.functional.apply(x, [crow, col, w], spec)
    else:

        def f(x, dy, w):
            return knn.functional.bsr_grad(dy, x, crow, col, w, spec)

    want = torch.stack([expected(i) for i in range(S)])
    calls, run = [], knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    stacked = set(batched) & ({"x", "W"} if kind == "forward" else {"dy", "x"})
    if kind == "forward" and "W" not in batched:  # one W: the samples join x's rows, nothing is stacked
        stacked = set()
    lowered = {0: 1, 1: 2, 2: 3}[len(stacked)]  # 5 samples, 4 a call or 2 a call (on the diagonal)
    for stack_bits, count in ((knn.functional.STACK_BITS, 1), (grid[0] * grid[1] * 4, lowered)):
        monkeypatch.setattr(knn.functional, "STACK_BITS", stack_bits)
        calls.clear()
        got = torch.func.vmap(f, in_dims=dims, out_dims=0)(ops["x"], ops["dy"], ops["W"])
        assert got.shape == want.shape and rel(got, want) < F32, (stack_bits, rel(got, want))
        assert len(calls) == count, (stack_bits, len(calls))


# (which of x, F1, F2, F3 are batched; x's sample shape)
LOWRANK_VMAP_CASES = [
    ((True, True, True, True), (3, 2)),
    ((False, True, False, True), (4,)),
    ((True, False, True, False), ()),
    ((False, False, False, True), (3,)),
]


@pytest.mark.parametrize(
    "batched, rows",
    LOWRANK_VMAP_CASES,
    ids=["all", "x-shared", "1d-x-F1-shared", "last-factor-only"],
)
def test_vmap_of_a_low_rank_chain_with_batched_factors_is_one_call_per_factor(batched, rows, monkeypatch):
    check_vmap_lowrank(batched, rows, monkeypatch)


def check_vmap_lowrank(batched, rows, monkeypatch):
    """x @ F1 @ F2 @ F3 vmapped with batched factors (an ensemble, an adapter per sample), at dim 1 where
    batched, x strided: 5 samples in one dense call per factor, 2 samples (fewer than the factors) one fused
    call per sample; both equal to the float64 chain of each sample."""
    layer = LowRankLinear(24, 40, (5, 7), bias=False)
    calls, run = [], knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    for size, count in ((5, 3), (2, 2)):
        leaf = torch.randn(*rows, size, 48)[..., ::2]  # strided
        operands = [leaf if batched[0] else leaf.select(-2, 0)]
        for a, b, on in zip(layer.dims, layer.dims[1:], batched[1:]):
            operands.append(torch.randn(a, size, b) if on else torch.randn(a, b))
        dims = tuple(-2 if on and i == 0 else 1 if on else None for i, on in enumerate(batched))

        def sample(i, t=None, on=None, dim=None):
            return wide(t.select(dim, i) if on else t)

        want = torch.stack(
            [
                functools.reduce(
                    torch.matmul, [sample(i, t, on, d) for t, on, d in zip(operands, batched, dims)]
                )
                for i in range(size)
            ]
        )
        calls.clear()
        got = torch.func.vmap(lambda x, *f: knn.functional.apply(x, list(f), layer.op_text), in_dims=dims)(
            *operands
        )
        assert got.shape == want.shape and rel(got, want) < F32, (size, rel(got, want))
        assert len(calls) == count, (size, len(calls))


# (x, w1, w2) batched; in "only-w1" and "only-w2" the first block product of the forward or the transposed op
# has nothing batched (jacfwd or an ensemble of one weight, x shared): one call that the samples share
MONARCH_VMAP_CASES = [
    (True, True, True),
    (False, True, True),
    (True, False, True),
    (True, True, False),
    (False, True, False),
    (False, False, True),
]
MONARCH_VMAP_IDS = ["all", "x-shared", "w1-shared", "w2-shared", "only-w1", "only-w2"]


@pytest.mark.parametrize("batched", MONARCH_VMAP_CASES, ids=MONARCH_VMAP_IDS)
def test_vmap_of_a_monarch_op_with_batched_weights_is_one_call_per_block_product(batched, monkeypatch):
    check_vmap_monarch(batched, monkeypatch)


def check_vmap_monarch(batched, monkeypatch):
    """Monarch(w1, w2) x vmapped with batched weights (an ensemble), at dim 1 where batched, x (3, 2, n) per
    sample and strided: 5 samples in one dense call per block product (2), the transposed op (y = x @ M) too,
    and 2 samples in one fused call each; all equal to the float64 reference of each sample."""
    layer = MonarchLinear(32, 48, 4, bias=False)
    (k, q, p), (l, s, r) = layer.w1.shape, layer.w2.shape  # noqa: E741
    calls, run = [], knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    for transposed, size, count in ((False, 5, 2), (True, 5, 2), (True, 2, 2)):
        n_in = l * s if transposed else k * p
        leaf = torch.randn(3, 2, size, 2 * n_in)[..., ::2]  # strided
        w1 = torch.randn(k, size, q, p) if batched[1] else torch.randn(k, q, p)
        w2 = torch.randn(l, size, s, r) if batched[2] else torch.randn(l, s, r)
        x = leaf if batched[0] else leaf.select(-2, 0)
        dims = (-2 if batched[0] else None, 1 if batched[1] else None, 1 if batched[2] else None)

        def sample(t, on, dim, i):
            return wide(t.select(dim, i) if on else t)

        def reference(x, w1, w2, transposed=transposed):
            if not transposed:
                return monarch_reference(x, w1, w2)
            return x @ monarch_reference(torch.eye(k * p, dtype=x.dtype), w1, w2).T  # x @ M, M (l*s, k*p)

        want = torch.stack(
            [
                reference(*(sample(t, on, d, i) for t, on, d in zip((x, w1, w2), batched, dims)))
                for i in range(size)
            ]
        )
        text = knn.functional.op_text({**layer.op(), **({"transposed": True} if transposed else {})})
        calls.clear()
        got = torch.func.vmap(
            lambda x, w1, w2, text=text: knn.functional.apply(x, [w1, w2], text), in_dims=dims
        )(x, w1, w2)
        assert got.shape == want.shape and rel(got, want) < F32, (transposed, rel(got, want))
        assert len(calls) == count, (transposed, len(calls))


# (x batched, the block-sparse term's W batched, the low-rank term's factors batched)
SUM_VMAP_CASES = [
    (True, True, True),
    (False, True, True),
    (True, False, True),
    (False, False, True),
    (False, True, False),
]
SUM_VMAP_IDS = ["all", "x-shared", "bsr-w-shared", "only-low-rank", "only-bsr"]


@pytest.mark.parametrize("x_batched, w_batched, f_batched", SUM_VMAP_CASES, ids=SUM_VMAP_IDS)
def test_vmap_of_a_sum_with_batched_weights_runs_each_term_by_its_rule(
    x_batched, w_batched, f_batched, monkeypatch
):
    check_vmap_sum(x_batched, w_batched, f_batched, monkeypatch)


def check_vmap_sum(x_batched, w_batched, f_batched, monkeypatch):
    """A sum of a block-sparse and a 3-factor low-rank term vmapped over members' weights (at dim 1; x
    strided): at 5 members (more than the 4 calls of its terms' rules) each term by its own rule, 1 call for
    the block-sparse term (stacked patterns, or the samples joining x's rows, or one product for all when
    nothing of it is batched) and one per factor for a batched chain (one fused call when nothing of it is
    batched); at 3 the fused sum once per member (the terms' rules would take 4: the chain goes sample by
    sample at 3). Equal to the float64 sum of each member's terms."""
    layer = Sum(
        BlockSparseLinear(32, 48, (16, 8), mask=mask_with_gaps((3, 4), 1, 2), bias=False),
        LowRankLinear(32, 48, (4, 6), bias=False),
    )
    bsr = layer.terms[0]
    crow, col, nnz = bsr.crow_indices, bsr.col_indices, bsr.values.shape[0]
    calls, run = [], knn.functional._run
    monkeypatch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
    for size, count in ((5, 4 if f_batched else 2), (3, 3)):
        values = torch.randn(nnz, size, 16, 8) if w_batched else bsr.values.detach()
        shapes = ((32, 4), (4, 6), (6, 48))
        factors = [torch.randn(a, size, b) if f_batched else torch.randn(a, b) for a, b in shapes]
        leaf = torch.randn(3, size, 64)[..., ::2]
        x = leaf if x_batched else leaf[:, 0]
        dims = (1 if x_batched else None, 1 if w_batched else None, *([1 if f_batched else None] * 3))

        def member(i, x=x, values=values, factors=factors):
            pairs = ((x, x_batched), (values, w_batched), *((f, f_batched) for f in factors))
            xi, vi, *fi = (wide(t.select(1, i) if on else t) for t, on in pairs)
            return F.linear(xi, bsr_dense(bsr, vi)) + functools.reduce(torch.matmul, [xi, *fi])

        want = torch.stack([member(i) for i in range(size)])
        calls.clear()
        got = torch.func.vmap(
            lambda x, v, *f: knn.functional.apply(x, [crow, col, v, *f], layer.op_text), in_dims=dims
        )(x, values, *factors)
        assert got.shape == want.shape and rel(got, want) < F32, (size, rel(got, want))
        assert len(calls) == count, (size, len(calls))


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: LowRankLinear(24, 40, (5, 7)), (24,)),
        (lambda: MonarchLinear(32, 48, 4), (32,)),
        (lambda: BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1), (32,)),
        (lambda: ButterflyLinear(16), (16,)),
    ],
    ids=["lowrank", "monarch", "blocksparse", "butterfly"],
)
def test_torch_func_jacrev_an_ensemble_and_hessians_match_the_float64_reference(make, shape):
    """jacrev of a layer at one x (the layer's matrix, transposed: vmap over the cotangents of its backward),
    an ensemble of two layers of one pattern vmapped over their stacked parameters (batched weights), and
    Hessians (forward mode over the backward) in x and in the first weight."""
    layers = [make(), make()]
    with torch.no_grad():  # a different ensemble member, same structure
        for p in layers[1].parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(shape)
    p64 = {n: wide(p) for n, p in layers[0].named_parameters()}
    jac = torch.func.jacrev(layers[0])(x)
    jac64 = torch.func.jacrev(lambda x: reference(layers[0], x, p64))(wide(x))
    assert jac.shape == jac64.shape and rel(jac, jac64) < F32
    params, buffers = torch.func.stack_module_state(layers)
    xs = torch.randn(5, *shape)

    def member(p, b, x):
        return torch.func.functional_call(layers[0], (p, b), (x,))

    calls, run = [], knn.functional._run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(knn.functional, "_run", lambda *args: calls.append(1) or run(*args))
        ys = torch.func.vmap(member, in_dims=(0, 0, None))(params, buffers, xs)
    if isinstance(layers[0], BlockSparseLinear):  # the members' patterns stacked: one call
        assert len(calls) == 1, len(calls)
    for i, one in enumerate(layers):
        ref = reference(one, wide(xs), {n: wide(p) for n, p in one.named_parameters()})
        assert rel(ys[i], ref) < F32, i
    # second order through the backward's own ops, in forward mode over reverse mode: the Hessian of a loss in
    # x, and its product with a direction in the first weight (a BSR weight's values: their gradient op depends
    # on their pattern, not on their values)
    first = next(n for n in p64 if n != "bias")

    def loss(p, x, layer=layers[0]):
        return torch.tanh(torch.func.functional_call(layer, p, (x,))).square().sum()

    def loss64(p, x):
        return torch.tanh(reference(layers[0], x, p)).square().sum()

    p32 = {n: p.detach() for n, p in layers[0].named_parameters()}
    hx, hx64 = (
        torch.func.hessian(loss, argnums=1)(p32, x),
        torch.func.hessian(loss64, argnums=1)(p64, wide(x)),
    )
    assert hx.shape == hx64.shape and rel(hx, hx64) < F32
    v = torch.randn_like(p32[first])
    _, hv = torch.func.jvp(torch.func.grad(lambda w: loss({**p32, first: w}, x)), (p32[first],), (v,))
    _, hv64 = torch.func.jvp(
        torch.func.grad(lambda w: loss64({**p64, first: w}, wide(x))), (p64[first],), (wide(v),)
    )
    assert hv.shape == hv64.shape and rel(hv, hv64) < F32, rel(hv, hv64)


def fresh_like(layer: nn.Module) -> nn.Module:
    """A layer of the same shapes (and block pattern), differently initialised."""
    torch.manual_seed(123)
    if isinstance(layer, DenseLinear):
        return DenseLinear(layer.in_features, layer.out_features, layer.bias is not None)
    if isinstance(layer, LowRankLinear):
        return LowRankLinear(layer.in_features, layer.out_features, layer.dims[1:-1], layer.bias is not None)
    if isinstance(layer, BlockSparseLinear):
        return BlockSparseLinear(
            layer.in_features, layer.out_features, layer.block, mask=layer.mask(), bias=layer.bias is not None
        )
    if isinstance(layer, MonarchLinear):
        return MonarchLinear(layer.in_features, layer.out_features, layer.w1.shape[0], layer.bias is not None)
    if isinstance(layer, ButterflyLinear):
        return ButterflyLinear(layer.in_features, bias=layer.bias is not None)
    if isinstance(layer, Sum):
        return Sum(*(fresh_like(t) for t in layer.terms), bias=layer.bias is not None)
    raise AssertionError(type(layer))


STATE_CASES = [
    "dense-3d",
    "lowrank-chain-strided",
    "blocksparse-gaps-3d",
    "monarch-down-strided",
    "butterfly-3d",
    "sum-blocksparse-lowrank-3d",
]


@pytest.mark.parametrize("name", STATE_CASES)
def test_state_dict_round_trip_gives_identical_outputs(name):
    layer, leaf, view, _ = make_case(name)
    x = view(leaf)
    other = fresh_like(layer)
    with torch.no_grad():
        assert not torch.equal(other(x), layer(x))
        other.load_state_dict(layer.state_dict())
        assert torch.equal(other(x), layer(x))


def test_blocksparse_state_dict_of_another_pattern_is_taken_or_refused_by_its_count():
    """A checkpoint of another pattern with as many stored blocks is taken (kt's kernel then runs the new
    pattern); one of another count is refused (its blocks cannot be copied into the layer's values)."""
    layer = BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1)
    other_pattern = BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=2)
    assert not np.array_equal(layer.mask(), other_pattern.mask())
    other_pattern.load_state_dict(layer.state_dict())
    assert np.array_equal(layer.mask(), other_pattern.mask())
    x = torch.randn(7, 32)
    torch.testing.assert_close(other_pattern(x), layer(x), rtol=0, atol=0)
    torch.testing.assert_close(other_pattern(x), F.linear(x, layer.weight_bsr().to_dense(), layer.bias))
    denser = BlockSparseLinear(32, 48, (16, 8), density=0.75, seed=1)
    with pytest.raises(ValueError, match="block pattern differs .* cannot be copied into this layer's"):
        denser.load_state_dict(layer.state_dict())


@pytest.mark.parametrize(
    "name", ["dense-3d", "blocksparse-gaps-3d", "monarch-up-3d", "sum-blocksparse-lowrank-3d"]
)
@pytest.mark.parametrize("convert", ["half", "to_bfloat16"])
def test_dtype_change_changes_the_op_and_still_runs(name, convert):
    layer, leaf, view, _ = make_case(name)
    x = view(leaf)
    with torch.no_grad():
        expected = layer(x)
    assert json.loads(layer.op_text)["dtype"] == "float32"
    dtype = torch.float16 if convert == "half" else torch.bfloat16
    layer = layer.half() if convert == "half" else layer.to(torch.bfloat16)
    assert layer.dtype == dtype
    assert json.loads(layer.op_text)["dtype"] == ("float16" if convert == "half" else "bfloat16")
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    assert rel(y, expected) < (F16 if convert == "half" else BF16) * 2  # the weights were rounded too
    y.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == dtype for p in layer.parameters())
    layer.float()
    assert json.loads(layer.op_text)["dtype"] == "float32"


@pytest.mark.parametrize("make", [lambda: DenseLinear(24, 40), _sum_bs_lr], ids=["dense", "sum"])
def test_double_is_a_one_line_type_error_naming_kt_dtypes(make):
    with pytest.raises(
        TypeError, match="float64.*allowed: torch.float16, torch.bfloat16, torch.float32"
    ) as info:
        make().double()
    assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="float64"):
        DenseLinear(24, 40, dtype=torch.float64)


def test_failed_double_leaves_the_layer_usable():
    layer = DenseLinear(24, 40)
    with pytest.raises((KeyError, TypeError, ValueError)):
        layer.double()
    assert layer.weight.dtype == torch.float32
    layer(torch.randn(3, 24))


# -- from_dense ------------------------------------------------------------------------------------------------


def test_dense_from_dense_equals_the_linear():
    linear = nn.Linear(24, 40)
    layer = DenseLinear.from_dense(linear)
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)
    x = torch.randn(5, 3, 24)
    with torch.no_grad():
        assert rel(layer(x), linear(x)) < F32


@pytest.mark.parametrize("rank", [1, 5, 17])
def test_lowrank_from_dense_error_is_the_eckart_young_bound(rank):
    linear = nn.Linear(40, 24)
    layer = LowRankLinear.from_dense(linear, rank)
    approx = (layer.factors[0] @ layer.factors[1]).detach().double().T  # (out, in)
    weight = linear.weight.detach().double()
    s = torch.linalg.svdvals(weight)
    bound = s[rank:].square().sum().sqrt()
    assert abs(float((weight - approx).norm() - bound)) < 1e-5 * float(s.norm())
    assert torch.equal(layer.bias, linear.bias)
    x = torch.randn(9, 40)
    with torch.no_grad():
        assert rel(layer(x), F.linear(x.double(), approx, linear.bias.double())) < F32


def test_lowrank_from_dense_at_full_rank_reproduces_the_linear():
    linear = nn.Linear(40, 24)
    # 24 * (40 + 24) weights, more than the dense 960: said, as a layer that saves nothing (it was silent)
    with pytest.warns(UserWarning, match=r"rank 24 gives 1536 weights, no fewer than the dense layer's 960 "):
        layer = LowRankLinear.from_dense(linear, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LowRankLinear.from_dense(linear, 14)  # 14 * 64 = 896 weights: fewer
    x = torch.randn(5, 3, 40)
    with torch.no_grad():
        assert rel(layer(x), linear(x)) < F32


def block_norms(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    (out, inp), (bo, bi) = weight.shape, block
    return weight.detach().reshape(out // bo, bo, inp // bi, bi).transpose(1, 2).square().sum((-1, -2))


def test_blocksparse_from_dense_keeps_the_largest_blocks():
    linear = nn.Linear(32, 48)
    with torch.no_grad():
        linear.weight[16:32, 8:16] *= 10  # two clearly largest blocks
        linear.weight[0:16, 24:32] *= 8
    layer = BlockSparseLinear.from_dense(linear, (16, 8), density=0.5)
    mask = torch.from_numpy(layer.mask())
    norms = block_norms(linear.weight, (16, 8))
    assert int(mask.sum()) == 6
    assert mask[1, 1] and mask[0, 3]
    assert norms[mask].min() >= norms[~mask].max()
    dense = linear.weight.detach() * mask.repeat_interleave(16, 0).repeat_interleave(8, 1)
    torch.testing.assert_close(layer.weight_bsr().to_dense(), dense, rtol=0, atol=0)
    x = torch.randn(7, 32)
    with torch.no_grad():
        assert rel(layer(x), F.linear(x, dense, linear.bias)) < F32


def test_blocksparse_from_dense_at_density_one_is_exact():
    linear = nn.Linear(32, 48)
    layer = BlockSparseLinear.from_dense(linear, (8, 16), density=1.0)
    assert layer.mask().all()
    torch.testing.assert_close(layer.weight_bsr().to_dense(), linear.weight.detach(), rtol=0, atol=0)
    x = torch.randn(5, 3, 32)
    with torch.no_grad():
        assert rel(layer(x), linear(x)) < F32


@pytest.mark.parametrize("features", [(32, 48), (48, 24), (64, 64)])
def test_monarch_from_dense_is_exact_on_a_monarch_weight(features):
    inp, out = features
    nblocks = 4
    p, s = inp // nblocks, out // nblocks
    w1, w2 = torch.randn(nblocks, p, p, dtype=torch.float64), torch.randn(nblocks, s, p, dtype=torch.float64)
    weight = monarch_map(nblocks, p, p, nblocks, s, p).to_dense({"w1": w1, "w2": w2})
    assert weight.shape == (out, inp)
    linear = nn.Linear(inp, out)
    with torch.no_grad():
        linear.weight.copy_(weight)
    layer = MonarchLinear.from_dense(linear, nblocks)
    x = torch.randn(6, inp)
    with torch.no_grad():
        assert rel(layer(x), F.linear(x.double(), weight, linear.bias.double())) < F32
        assert rel(layer(x), linear(x)) < F32


def test_monarch_from_dense_error_is_finite_and_no_worse_than_zero():
    linear = nn.Linear(32, 48)
    layer = MonarchLinear.from_dense(linear, 4)
    eye = torch.eye(32)
    with torch.no_grad():
        approx = (layer(eye) - layer.bias).T.double()  # the layer's matrix, column by column
    weight = linear.weight.detach().double()
    error = float((approx - weight).norm())
    assert np.isfinite(error) and error < float(weight.norm())
    monarch_ref = monarch_reference(eye.double(), layer.w1.detach().double(), layer.w2.detach().double()).T
    assert rel(approx, monarch_ref) < F32


def test_butterfly_from_dense_is_exact_on_a_butterfly_weight():
    twiddles = torch.randn(4, 8, 2, 2, dtype=torch.float64)
    weight = butterfly_map(16).to_dense({"twiddles": twiddles})
    linear = nn.Linear(16, 16)
    with torch.no_grad():
        linear.weight.copy_(weight)
    layer = ButterflyLinear.from_dense(linear)
    x = torch.randn(5, 3, 16)
    with torch.no_grad():
        assert rel(layer(x), F.linear(x.double(), weight, linear.bias.double())) < F32


def sum_matrix(layer: Sum) -> torch.Tensor:
    """The (out, in) matrix a Sum's two terms multiply by, from their own weights (float64)."""
    blocks, chain = layer.terms
    low = (chain.factors[0] @ chain.factors[1]).detach().double().T
    return blocks.weight_bsr().to_dense().detach().double() + low


def planted_linear() -> nn.Linear:
    """An nn.Linear (48 -> 32) whose weight is a rank-3 matrix plus one large 16x16 block, plus a little noise."""
    torch.manual_seed(3)
    linear = nn.Linear(48, 32)
    with torch.no_grad():
        weight = torch.randn(32, 3) @ torch.randn(3, 48)
        weight[16:, 32:] += 6 * torch.randn(16, 16)
        linear.weight.copy_(weight + 0.01 * torch.randn(32, 48))
    return linear


def test_sum_from_dense_fits_sparse_plus_low_rank_better_each_round():
    linear = planted_linear()
    weight = linear.weight.detach().double()
    errors = []
    for rounds in range(1, 7):
        layer = Sum.from_dense(linear, (16, 16), density=1 / 6, rank=3, rounds=rounds)
        errors.append(float((sum_matrix(layer) - weight).norm() / weight.norm()))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:])), errors  # never worse
    blocks_alone = (
        BlockSparseLinear.from_dense(linear, (16, 16), density=1 / 6).weight_bsr().to_dense().double()
    )
    low_alone = LowRankLinear.from_dense(linear, 3)
    low_alone = (low_alone.factors[0] @ low_alone.factors[1]).detach().double().T
    assert errors[0] <= float((blocks_alone - weight).norm() / weight.norm())
    # the planted structure is found: far closer than either kind alone (each leaves the other's part out)
    assert errors[-1] < 0.02 < 0.3 < float((low_alone - weight).norm() / weight.norm())
    assert layer.terms[0].mask().tolist() == [[False, False, False], [False, False, True]]
    assert torch.equal(layer.bias, linear.bias) and all(t.bias is None for t in layer.terms)
    x = torch.randn(5, 3, 48)
    with torch.no_grad():
        assert rel(layer(x), F.linear(x.double(), sum_matrix(layer), linear.bias.double())) < F32


def test_sum_from_dense_keeps_the_dtype_and_refuses_in_its_own_name():
    linear = planted_linear().half()
    layer = Sum.from_dense(linear, (16, 16), density=1 / 3, rank=2)
    assert layer.dtype == torch.float16 and all(p.dtype == torch.float16 for p in layer.parameters())
    no_bias = nn.Linear(48, 32, bias=False)
    assert Sum.from_dense(no_bias, (16, 16), density=1 / 3, rank=2).bias is None
    for kwargs, said in [
        ({"block": (5, 16), "density": 0.5, "rank": 2}, r"^Sum.from_dense: block 5x16 does not divide"),
        (
            {"block": (16, 16), "density": 0.5, "rank": 40},
            r"^Sum.from_dense: rank=40 must be an integer in 1..32",
        ),
        ({"block": (16, 16), "density": 0.5, "rank": 2, "rounds": 0}, r"^Sum.from_dense: rounds=0 must be"),
        (
            {"block": (16, 16), "density": 0.5, "rank": 2, "rounds": True},
            r"^Sum.from_dense: rounds=True must",
        ),
    ]:
        with pytest.raises(ValueError, match=said):
            Sum.from_dense(linear, **kwargs)
    with pytest.raises(ValueError, match="^Sum.from_dense: the nn.Linear is on the meta device"):
        Sum.from_dense(nn.Linear(48, 32, device="meta"), (16, 16), density=0.5, rank=2)
    with pytest.warns(
        UserWarning, match=r"density 1.0 and rank 30 give 3936 weights, no fewer than the dense"
    ):
        Sum.from_dense(linear, (16, 16), density=1.0, rank=30)


# -- structurize ----------------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), Block(), Block(), nn.Linear(32, 8))


def test_structurize_with_exact_projections_keeps_the_function():
    model = small_model()
    x = torch.randn(12, 16)
    with torch.no_grad():
        expected = model(x)
    replaced = knn.structurize(
        model,
        {
            "*.fc1": lambda linear: LowRankLinear.from_dense(linear, rank=32),
            "2.fc2": lambda linear: BlockSparseLinear.from_dense(linear, (16, 16), density=1.0),
            "*.fc2": lambda linear: DenseLinear.from_dense(linear),
        },
    )
    assert replaced == ["2.fc1", "2.fc2", "3.fc1", "3.fc2"]
    assert isinstance(model[2].fc1, LowRankLinear) and isinstance(model[3].fc1, LowRankLinear)
    assert isinstance(model[2].fc2, BlockSparseLinear) and isinstance(model[3].fc2, DenseLinear)
    assert type(model[0]) is nn.Linear and type(model[4]) is nn.Linear
    with torch.no_grad():
        assert rel(model(x), expected) < 1e-5


def test_structurize_model_still_trains():
    model = small_model()
    teacher = small_model()
    replaced = knn.structurize(
        model,
        {
            "2.fc1": lambda linear: LowRankLinear.from_dense(linear, rank=8),
            "2.fc2": lambda linear: BlockSparseLinear.from_dense(linear, (16, 16), density=0.5),
            "3.fc1": lambda linear: MonarchLinear.from_dense(linear, nblocks=4),
            "3.fc2": lambda linear: LowRankLinear.from_dense(linear, rank=4),
        },
    )
    assert len(replaced) == 4
    x = torch.randn(24, 16)
    with torch.no_grad():
        target = teacher(x)
    # three steps in the interpreter: the worst loss ratio over 20 seeds (their PyTorch path) was 0.27
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(3):
        loss = F.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_structurize_with_a_function_rule():
    model = small_model()

    def rule(name, linear):
        if linear.out_features == 8 or name.endswith("fc2"):
            return DenseLinear.from_dense(linear)
        return None

    assert knn.structurize(model, rule) == ["2.fc2", "3.fc2", "4"]
    assert isinstance(model[4], DenseLinear) and type(model[2].fc1) is nn.Linear
    assert model(torch.randn(5, 16)).shape == (5, 8)


def test_structurize_rejects_a_layer_of_the_wrong_shape():
    model = small_model()
    with pytest.raises(ValueError, match="'2.fc1'") as info:
        knn.structurize(model, {"*.fc1": lambda linear: DenseLinear(32, 48)})
    assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="rules"):
        knn.structurize(model, 3)


def test_structurize_refuses_a_pattern_that_matches_nothing_and_leaves_the_model_as_it_was_on_any_error():
    model = small_model()
    before = [(name, type(m)) for name, m in model.named_modules()]
    lowrank = lambda linear: LowRankLinear.from_dense(linear, rank=4)  # noqa: E731
    cases = [
        # a typo: nothing would be replaced, silently
        (
            {"*.fc1": lowrank, "*.fc3": lowrank},
            ValueError,
            r"the pattern '\*\.fc3' matches no nn.Linear of the model; its nn.Linear layers: 0, 2.fc1, 2.fc2, 3.fc1, 3.fc2, 4$",
        ),
        ({"1": lowrank}, ValueError, "the pattern '1' matches no nn.Linear"),  # a GELU
        # the second layer fails after the first was made: neither is swapped in
        (
            {"2.fc1": lowrank, "3.fc1": lambda linear: DenseLinear(32, 48)},
            ValueError,
            "'3.fc1' maps 32 -> 64",
        ),
        ({"*.fc2": lambda linear: "x"}, TypeError, "the rule for '2.fc2' returned a str, not an nn.Module"),
    ]
    for rules, error, message in cases:
        with pytest.raises(error, match=message) as info:
            knn.structurize(model, rules)
        assert "\n" not in str(info.value)
        assert [(name, type(m)) for name, m in model.named_modules()] == before


def test_structurize_refuses_a_model_that_is_a_linear_and_names_a_subclass_it_leaves_alone():
    """A bare nn.Linear (named "", which "*" matches) was reported replaced while a child module named "" was
    added to it; a subclass of nn.Linear was "no nn.Linear"."""
    from torch.nn.utils import parametrizations

    lowrank = lambda linear: LowRankLinear.from_dense(linear, rank=1)  # noqa: E731
    bare = nn.Linear(4, 4)
    with pytest.raises(
        ValueError, match="the model is itself an nn.Linear, which cannot be replaced in place"
    ):
        knn.structurize(bare, {"*": lowrank})
    assert dict(bare.named_children()) == {} and len(bare.state_dict()) == 2

    class Scaled(nn.Linear):  # a forward of its own, as an adapter's
        def forward(self, x):
            return 2 * super().forward(x)

    scaled = nn.Sequential(nn.Linear(8, 8), Scaled(8, 6))
    with pytest.raises(ValueError, match=r"'1' is a Scaled: a subclass of nn.Linear, whose forward may"):
        knn.structurize(scaled, {"1": lowrank})
    assert knn.structurize(scaled, {"*": lowrank}) == ["0"]  # the subclass stays as it is
    # a Linear under torch.nn.utils.parametrize (a ParametrizedLinear) computes nn.Linear's math: replaced
    normed = nn.Sequential(nn.Linear(8, 8), parametrizations.weight_norm(nn.Linear(8, 6)))
    with pytest.warns(
        UserWarning, match=r"^structurize: '1' was under torch.nn.utils.parametrize \(WeightNorm\)"
    ):
        assert knn.structurize(normed, {"1": lowrank}) == ["1"]


def test_structurize_names_the_layer_a_rule_failed_for_and_why_it_leaves_lazy_and_attention_linears():
    """A factory's error did not say which layer it was making; an nn.LazyLinear not run yet and an attention's
    out_proj were "a subclass of nn.Linear ... make its layer with from_dense yourself", which fails on the
    first (no weight yet) and would never run for the second (the attention reads out_proj.weight itself)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6))
    with pytest.raises(ValueError) as error:
        knn.structurize(model, {"*": lambda linear: MonarchLinear.from_dense(linear, 4)})
    assert str(error.value) == (
        "structurize: the rule for '1': MonarchLinear: nblocks=4 must divide in_features=8 and out_features=6"
    )
    assert all(type(m) is nn.Linear for m in model)  # nothing replaced
    dense = lambda linear: DenseLinear.from_dense(linear)  # noqa: E731
    with pytest.raises(ValueError, match=r"'0' is an nn.LazyLinear not run yet, .* run the model once"):
        knn.structurize(nn.Sequential(nn.LazyLinear(8)), {"*": dense})
    attention = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    with pytest.raises(
        ValueError, match=r"'self_attn.out_proj' is an nn.MultiheadAttention's out_proj, .* never"
    ):
        knn.structurize(attention, {"self_attn.out_proj": dense})


def test_a_model_wide_conversion_to_a_dtype_kt_refuses_says_how_to_restore_the_converted_modules():
    model = nn.Sequential(nn.Linear(8, 8), LowRankLinear(8, 8, rank=2))
    with pytest.raises(
        TypeError, match=r"converted the modules before this layer: .to\(torch.float32\) restores"
    ):
        model.double()
    assert model[0].weight.dtype == torch.float64  # PyTorch converted it before the kt layer refused
    model.to(torch.float32)
    assert model(torch.randn(2, 8)).dtype == torch.float32


# -- kernel selection -----------------------------------------------------------------------------------------


def test_bucket_values():
    assert [knn.bucket(r) for r in (0, 1, 15, 16, 17, 31, 32, 33, 100, 1024, 1025)] == [
        16,
        16,
        16,
        16,
        32,
        32,
        32,
        64,
        128,
        1024,
        2048,
    ]


@pytest.mark.parametrize(
    "name", ["dense-3d", "monarch-up-3d", "blocksparse-gaps-3d", "lowrank-chain-strided"]
)
def test_one_selection_per_op_and_bucket(name):
    layer, _, _, _ = make_case(name)
    assert knn.selections() == []
    with torch.no_grad():
        layer(torch.randn(17, layer.in_features))
        assert len(knn.selections()) == 1
        layer(torch.randn(30, layer.in_features))  # the same bucket (32)
        layer(torch.randn(2, 15, layer.in_features))
        assert len(knn.selections()) == 1
        layer(torch.randn(40, layer.in_features))  # a new bucket (64)
        assert len(knn.selections()) == 2
    assert {s.spec.op for s in knn.selections()} == {json.loads(layer.op_text)["op"]}


@pytest.mark.parametrize(
    "name", ["dense-3d", "monarch-up-3d", "blocksparse-gaps-3d", "lowrank-chain-strided"]
)
def test_backward_reuses_the_buckets_kernels(name):
    """Weight gradients name the bucket of the batch rows, so a new batch size in the bucket selects nothing."""
    layer, _, _, _ = make_case(name)
    layer(torch.randn(17, layer.in_features, requires_grad=True)).sum().backward()
    count = len(knn.selections())
    assert count >= 2
    layer(torch.randn(29, layer.in_features, requires_grad=True)).sum().backward()
    assert len(knn.selections()) == count


def test_cost_model_fallback_warns_once_per_op_and_bucket(caplog):
    caplog.set_level(logging.INFO, logger="kt.nn")
    layer = MonarchLinear(32, 48, 4)
    twin = MonarchLinear(32, 48, 4)  # the same op: the same kernel
    with torch.no_grad():
        for rows in (17, 20, 32):
            layer(torch.randn(rows, 32))
        twin(torch.randn(25, 32))
    records = [r for r in caplog.records if r.name == "kt.nn"]
    assert len(records) == 1
    (record,) = records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message and "{" not in message  # one line, no JSON
    assert "cost model" in message and "untuned" in message and "kt tune" in message
    assert "kt.nn.selections()" in message
    # CPU tensors never read the database (its rows are GPU timings): it pointed at $KT_DB, which did nothing
    assert message.endswith("(then point $KT_ARTIFACTS (`kt tune --out`) at the result)"), message
    spec = selection.bucket_spec(json.loads(layer.op_text), 20)
    assert message.startswith(spec.summary())
    assert "monarch 32 rows" in message
    (chosen,) = knn.selections()
    assert chosen.source == "cost model" and chosen.spec == spec
    assert chosen.device == "cpu" and chosen.role == "forward"
    assert json.dumps(spec.signature()) in json.dumps(chosen.spec.signature())  # the spec to tune is listed

    with torch.no_grad():
        layer(torch.randn(33, 32))  # a new bucket: one more warning
    records = [r for r in caplog.records if r.name == "kt.nn"]
    assert len(records) == 2 and "monarch 64 rows" in records[1].getMessage()


def test_backward_selections_log_at_debug_and_are_listed_as_backward(caplog):
    caplog.set_level(logging.DEBUG, logger="kt.nn")
    layer = LowRankLinear(24, 40, 5)
    layer(torch.randn(17, 24, requires_grad=True)).sum().backward()
    loud = [r for r in caplog.records if r.name == "kt.nn" and r.levelno >= logging.INFO]
    assert len(loud) == 1 and loud[0].getMessage().startswith("lowrank 32 rows")
    roles = [s.role for s in knn.selections()]
    assert roles[0] == "forward" and roles.count("backward") == len(roles) - 1 >= 3
    quiet = [r for r in caplog.records if r.name == "kt.nn" and r.levelno == logging.DEBUG]
    assert len(quiet) == len(roles) - 1


@pytest.fixture(scope="module")
def artifacts(interpreter, tmp_path_factory):
    """`kt tune` artifacts (interpreter-checked, cost-model chosen) for the 20-row bucket of a few layers' ops."""
    makers = {"dense": lambda: DenseLinear(24, 40), "monarch": lambda: MonarchLinear(32, 48, 4)}
    specs = [selection.bucket_spec(json.loads(make().op_text), 20) for make in makers.values()]
    made = {}
    # one tune of both ops: one set of workers
    for (name, make), result in zip(makers.items(), kt.tune(specs, budget=1, backend="interpret")):
        directory = tmp_path_factory.mktemp(f"artifacts-{name}")
        result.save(directory / name)
        made[name] = (directory, make)
    return made


def artifact_selection(layer: nn.Module, rows: int):
    with torch.no_grad():
        layer(torch.randn(rows, layer.in_features))
    (chosen,) = knn.selections()
    return chosen


@pytest.mark.parametrize(
    "name",
    [
        "dense",
        "monarch",
    ],
)
def test_artifact_given_to_use_artifacts_is_picked_and_an_unmeasured_one_warns_once(artifacts, name, caplog):
    directory, make = artifacts[name]
    knn.use_artifacts(directory)
    caplog.set_level(logging.INFO, logger="kt.nn")
    layer = make()
    chosen = artifact_selection(layer, 20)
    assert chosen.source == "artifact"
    assert chosen.where == str(directory / name)
    with torch.no_grad():
        layer(torch.randn(19, layer.in_features))  # the same bucket: no second word
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not measured" in warnings[0] and "tuned without a GPU" in warnings[0]


def test_artifact_in_kt_artifacts_is_picked_and_another_bucket_is_not(artifacts, monkeypatch):
    directory, make = artifacts["dense"]
    monkeypatch.setenv("KT_ARTIFACTS", os.pathsep.join([str(directory / "missing"), str(directory)]))
    layer = make()
    assert artifact_selection(layer, 31).source == "artifact"  # 31 rows: the same bucket as 20
    selection._SELECTED.clear()
    assert artifact_selection(layer, 40).source == "cost model"  # bucket 64: not tuned


def test_an_artifact_of_another_template_version_is_not_picked(artifacts, tmp_path, monkeypatch, caplog):
    """An artifact tuned under another version of the family's template (its config may not be legal, or not
    best, now) is passed over: the layer falls back to the cost model, and says why (it said nothing, and its
    note on the cost model's pick told the user to point $KT_ARTIFACTS at what it already named)."""
    directory, make = artifacts["dense"]
    stale = tmp_path / "dense"
    shutil.copytree(directory / "dense", stale)
    monkeypatch.setenv("KT_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(selection, "_MISSING_DIRS", set())
    assert artifact_selection(make(), 20).source == "artifact"  # the copy as it was tuned
    selection._SELECTED.clear()
    meta = json.loads((stale / "meta.json").read_text())
    (stale / "meta.json").write_text(json.dumps({**meta, "family_version": "0"}))
    with caplog.at_level("WARNING", logger="kt"):
        assert artifact_selection(make(), 20).source == "cost model"
    assert f"{stale} was tuned for this layer under another version of kt's gemm kernel template; " in (
        caplog.text
    )
    caplog.clear()
    selection._SELECTED.clear()
    shutil.copytree(directory / "dense", tmp_path / "fresh")  # a current one beside it: picked, no word
    with caplog.at_level("WARNING", logger="kt"):
        assert artifact_selection(make(), 20).source == "artifact"
    assert "another version" not in caplog.text


def test_a_relative_use_artifacts_folder_holds_after_a_chdir_and_a_damaged_meta_json_is_skipped_with_a_word(
    artifacts, tmp_path, monkeypatch, caplog
):
    """A relative folder was kept relative: after os.chdir the layer silently fell back to the cost model. A
    meta.json that is JSON but not an object ([1, 2], null) beside a good artifact made every forward fail
    ('list' object has no attribute 'get')."""
    directory, make = artifacts["dense"]
    shutil.copytree(directory / "dense", tmp_path / "kept" / "dense")
    # before "dense"; one not UTF-8 (a UnicodeDecodeError is no JSONDecodeError: every forward failed)
    for name, text in (
        ("a-list", b"[1, 2]"),
        ("b-null", b"null"),
        ("c-cut", b'{"family": '),
        ("c-xff", b'"\xff"'),
    ):
        (tmp_path / "kept" / name).mkdir()
        (tmp_path / "kept" / name / "meta.json").write_bytes(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(selection, "_ARTIFACT_DIRS", [])
    monkeypatch.setattr(selection, "_MISSING_DIRS", set())
    knn.use_artifacts("kept")
    monkeypatch.chdir(directory)
    caplog.set_level(logging.WARNING, logger="kt.nn")
    chosen = artifact_selection(make(), 20)
    assert (chosen.source, chosen.where) == ("artifact", str(tmp_path / "kept" / "dense"))
    damaged = [r.getMessage() for r in caplog.records if "is not a kt artifact's meta.json" in r.getMessage()]
    assert sorted(damaged) == [
        f"{tmp_path / 'kept' / name / 'meta.json'} is not a kt artifact's meta.json (a JSON object); skipped"
        for name in ("a-list", "b-null", "c-cut", "c-xff")
    ]
    selection._SELECTED.clear()
    caplog.clear()
    assert artifact_selection(make(), 20).source == "artifact"
    assert "is not a kt artifact" not in caplog.text  # once each


def test_an_edited_or_damaged_artifact_beside_a_good_one_is_skipped_with_a_word(
    artifacts, tmp_path, monkeypatch, caplog
):
    """A copy whose kernel.py was edited (or is missing, or whose config is damaged) and whose meta.json names
    the layer's problem made every forward fail with kt.load's ArtifactError, whose remedy (verify=False)
    kt.nn cannot give."""
    directory, make = artifacts["dense"]
    for name in ("a-edited", "b-no-kernel", "b-looping", "c-bad-config", "dense"):  # all before the good one
        shutil.copytree(directory / "dense", tmp_path / name)
    with open(tmp_path / "a-edited" / "kernel.py", "a") as handle:
        handle.write("\n# an edit\n")
    (tmp_path / "b-no-kernel" / "kernel.py").unlink()
    # one that cannot be read (a link to itself; an unreadable file alike): a bare OSError, not skipped
    (tmp_path / "b-looping" / "kernel.py").unlink()
    (tmp_path / "b-looping" / "kernel.py").symlink_to("kernel.py")
    meta = json.loads((tmp_path / "c-bad-config" / "meta.json").read_text())
    (tmp_path / "c-bad-config" / "meta.json").write_text(json.dumps({**meta, "config": {"block_m": 7}}))
    monkeypatch.setenv("KT_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(selection, "_MISSING_DIRS", set())
    caplog.set_level(logging.INFO, logger="kt.nn")
    chosen = artifact_selection(make(), 20)
    assert (chosen.source, chosen.where) == ("artifact", str(tmp_path / "dense"))
    skipped = sorted(r.getMessage() for r in caplog.records if r.getMessage().endswith("; skipped"))
    assert len(skipped) == 4, skipped
    # the skipped ones are not named as others that hold the op ("4 artifacts hold this op ... also: a-edited")
    assert not any("artifacts hold this op" in r.getMessage() for r in caplog.records)
    for says in (
        "a-edited/kernel.py does not match the checksum in meta.json (edited or damaged); skipped",
        "b-no-kernel has no kernel.py",
        "b-looping/kernel.py cannot be read (Too many levels of symbolic links)",
        "c-bad-config/meta.json is damaged: config: block_m: 7 is not allowed",
    ):
        assert any(says in message for message in skipped), (says, skipped)


def test_use_artifacts_makes_earlier_selections_again_and_lists_them_until_then(artifacts):
    """use_artifacts() forgot every earlier choice: selections() (and write_yaml) missed those ops until they
    ran again."""
    directory, make = artifacts["dense"]
    layer = make()
    assert artifact_selection(layer, 20).source == "cost model"
    knn.use_artifacts(directory)
    assert [s.source for s in knn.selections()] == ["cost model"]  # listed until made again
    assert artifact_selection(layer, 20).source == "artifact"
    assert [s.source for s in knn.selections()] == ["artifact"]


def test_kt_artifacts_may_name_one_artifact_and_a_folder_of_none_warns(
    artifacts, monkeypatch, tmp_path, caplog
):
    """`kt tune` prints the artifact's own folder: given as $KT_ARTIFACTS it was silently never looked in."""
    directory, make = artifacts["dense"]
    monkeypatch.setenv("KT_ARTIFACTS", str(directory / "dense"))
    assert artifact_selection(make(), 20).source == "artifact"
    selection._SELECTED.clear()
    monkeypatch.setenv("KT_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(selection, "_MISSING_DIRS", set())
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        assert artifact_selection(make(), 20).source == "cost model"
    assert f"{tmp_path} holds no artifact (no <name>/meta.json)" in caplog.text
    # the `.prev` folder `kt tune` printed, named itself: skipped as kt's kept artifact, without a word before
    kept = tmp_path / "dense.prev"
    shutil.copytree(directory / "dense", kept)
    (kept / ".kt-kept").write_text("the artifact dense that a later save replaced\n")
    selection._SELECTED.clear()
    monkeypatch.setenv("KT_ARTIFACTS", str(kept))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        assert artifact_selection(make(), 20).source == "cost model"
    assert (
        f"{kept} is the artifact kt kept when a later tune replaced it ({tmp_path / 'dense'})" in caplog.text
    )


# -- argument errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: DenseLinear(24, 40),
        lambda: LowRankLinear(24, 40, (5, 7)),
        lambda: BlockSparseLinear(32, 48, (16, 8), density=0.5),
        lambda: MonarchLinear(32, 48, 4),
        lambda: ButterflyLinear(32),
        _sum_bs_lr,
        lambda: FFT(16, input="real"),
    ],
    ids=["dense", "lowrank", "blocksparse", "monarch", "butterfly", "sum", "fft"],
)
def test_wrong_in_features_is_a_one_line_value_error(make):
    layer = make()
    n = layer.n if isinstance(layer, FFT) else layer.in_features
    with pytest.raises(ValueError, match=f"expected {n}") as info:
        layer(torch.randn(3, n + 8))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MonarchLinear(30, 48, 4), "nblocks"),
        (lambda: MonarchLinear(32, 50, 4), "nblocks"),
        (lambda: ButterflyLinear(24), "power of two"),
        (lambda: ButterflyLinear(16, 32), "power of two"),
        (lambda: ButterflyLinear(1), "power of two"),
        (lambda: BlockSparseLinear(32, 48, (16, 7), density=0.5), "divide"),
        (lambda: BlockSparseLinear(32, 48, (10, 8), density=0.5), "divide"),
        (lambda: BlockSparseLinear(32, 48, (16, 8), density=0.0), "density"),
        (lambda: BlockSparseLinear(32, 48, (16, 8), density=1.5), "density"),
        (lambda: BlockSparseLinear(32, 48, (16, 8)), "exactly one"),
        (lambda: BlockSparseLinear(32, 48, (16, 8), density=0.5, mask=np.ones((3, 4))), "exactly one"),
        (lambda: BlockSparseLinear(32, 48, (16, 8), mask=np.ones((4, 3))), "grid"),
        (lambda: BlockSparseLinear(32, 48, (16, 8), mask=np.zeros((3, 4))), "no block"),
        (lambda: LowRankLinear(24, 40, 0), "rank"),
        (lambda: LowRankLinear(24, 40, (5, 0)), "rank"),
        (lambda: LowRankLinear(24, 40, ()), "rank"),
        (lambda: FFT(16, dtype=torch.bfloat16), "dtype"),
        (lambda: FFT(16, input="imaginary"), "input"),
        (lambda: Sum(LowRankLinear(32, 48, 4, bias=False)), "Sum: has 1 term; a Sum takes 2 to 8"),
        (
            lambda: Sum(LowRankLinear(32, 48, 4, bias=False), DenseLinear(32, 48, bias=False)),
            "Sum: term 1 is a DenseLinear",
        ),
        (lambda: Sum(LowRankLinear(32, 48, 4, bias=False), LowRankLinear(32, 40, 4, bias=False)), "same"),
        (
            lambda: Sum(
                LowRankLinear(32, 48, 4, bias=False),
                LowRankLinear(32, 48, 4, bias=False, dtype=torch.float16),
            ),
            "same",
        ),
    ],
)
def test_bad_constructor_arguments_are_one_line_value_errors(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


_EXPORT_AS_OP = """
import sys, torch, kt, kt.nn
spec = kt.parse_spec({"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 64, "nblocks": 4}})
f = kt.build(spec).as_op()


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(4, 16, 16))
        self.w2 = torch.nn.Parameter(torch.randn(4, 16, 16))

    def forward(self, x):
        return f(x, self.w1, self.w2)


m = M()
torch.export.save(torch.export.export(m, (torch.randn(16, 64),)), sys.argv[1])
torch.save({"w1": m.w1.detach(), "w2": m.w2.detach()}, sys.argv[2])
"""


def test_an_exported_as_op_program_loaded_in_another_process_runs_its_own_op(tmp_path, caplog):
    """A program saved by torch.export with a kernel's as_op() carries the kernel's pin, a name that meant
    something in the process that made it only: loaded in another, it raised a bare KeyError, or, where that
    process had pinned a kernel of its own (the same counter, from 0), ran that kernel (a transposed Monarch's:
    relative error 1.37). The op's kernel is now selected as a layer's is, with a warning."""
    import subprocess
    import sys

    script = tmp_path / "export.py"
    script.write_text(_EXPORT_AS_OP)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "p.pt2"), str(tmp_path / "w.pt")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    spec = kt.parse_spec({"op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 64, "nblocks": 4}})
    transposed = kt.parse_spec({**spec.signature(), "transposed": True})
    kt.build(transposed).as_op()  # this process's own pin, of another op
    weights = torch.load(tmp_path / "w.pt")
    program = torch.export.load(tmp_path / "p.pt2").module()
    x = torch.randn(16, 64)
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        y = program(x)
    assert rel(y, kt.reference(spec)(x, weights["w1"], weights["w2"])) < 1e-4
    assert "an op pinned to a kernel (kt.build's, by as_op()) that this process does not hold" in caplog.text


def test_a_meta_json_edited_to_the_transposed_op_is_refused(artifacts, tmp_path):
    """kt.load compared kernel.py's dtype with meta.json's spec, not its transpose: a meta.json whose spec and
    problem both said `transposed: true` over a kernel built for M loaded, computed M (relative error 1.35
    against its spec's reference), and kt.nn took it for a MonarchLinear's backward dx."""
    directory, _ = artifacts["monarch"]
    copy = tmp_path / "monarch"
    shutil.copytree(directory / "monarch", copy)
    meta = json.loads((copy / "meta.json").read_text())
    assert "transposed" not in meta["spec"] and "transposed" not in meta["problem"]  # written when true only
    meta["spec"]["transposed"] = meta["problem"]["transposed"] = True
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        kt.ArtifactError,
        match="is damaged: its spec's transposed is True, but kernel.py was built with transposed False",
    ):
        kt.load(copy)
    assert kt.load(copy, verify=False).spec.transposed  # as it is, when asked
