"""kt.nn on CPU tensors: the op's PyTorch path (the tune's candidate zero) under kt's custom op and autograd, not
Triton's interpreter, unless KT_INTERPRET=1 asks for kt's kernels (tests/test_nn.py runs those)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kt
import kt.nn as knn
from kt.ir.structured import monarch_reference
from kt.nn import selection
from tests.test_nn import (
    BLOCKSPARSE_VMAP_CASES,
    CASES,
    DENSE_VMAP_CASES,
    F32,
    FUNC_CASES,
    LOWRANK_VMAP_CASES,
    MONARCH_VMAP_CASES,
    MONARCH_VMAP_IDS,
    SUM_VMAP_CASES,
    SUM_VMAP_IDS,
    bsr_dense,
    check_against_reference,
    check_torch_func,
    check_vmap_blocksparse,
    check_vmap_dense,
    check_vmap_lowrank,
    check_vmap_monarch,
    check_vmap_sum,
    make_case,
    rel,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state:UserWarning"),
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """No interpreter asked for, fresh selections, and a Triton interpreter that fails the test if it runs."""
    monkeypatch.delenv("KT_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("KT_ARTIFACTS", raising=False)
    selection._SELECTED.clear()
    torch.manual_seed(0)
    yield
    selection._SELECTED.clear()


def assert_all_pytorch():
    chosen = knn.selections()
    assert chosen, "nothing was selected"
    for s in chosen:
        assert s.source == selection.CPU_SOURCE and s.kernel.pytorch and s.device == "cpu", s


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_path_matches_float64_reference(name):
    """Every layer case of test_nn (every kind, dtype, strided and transposed inputs) on the PyTorch path: output
    and every gradient against float64 autograd, and no generated kernel selected for any product."""
    layer, leaf, view, tol = make_case(name)
    check_against_reference(layer, leaf, view, tol)
    assert_all_pytorch()
    roles = {s.role for s in knn.selections()}
    complex_fft = name.startswith("fft") and "real" not in name  # its backward is the same op: conj F conj
    assert roles == ({"forward"} if complex_fft else {"forward", "backward"})


def test_a_block_sparse_layers_seed_and_a_bucket_are_checked():
    """BlockSparseLinear's seed went to numpy unchecked (-1: numpy's error; None: another pattern each time);
    kt.nn.bucket(float('inf')) never returned."""
    for seed in (-1, None, 1.5, "x", True, 2**40):
        with pytest.raises(
            ValueError, match=r"^BlockSparseLinear: seed: must be an integer from 0 to 4294967295"
        ):
            knn.BlockSparseLinear(32, 32, block=(16, 16), density=0.5, seed=seed)
    grid = np.ones((2, 2))
    for mask in (grid * np.nan, grid * 0.1, np.full((2, 2), "0"), torch.ones(2, 2, device="meta")):
        with pytest.raises(ValueError, match=r"^BlockSparseLinear: mask "):  # NaN, 0.1, "0": all blocks kept
            knn.BlockSparseLinear(32, 32, block=(16, 16), mask=mask)
    assert knn.BlockSparseLinear(32, 32, block=(16, 16), mask=np.eye(2, dtype=int)).mask().sum() == 2
    for rows in (float("inf"), float("nan"), 3.5, None, "64", True):
        with pytest.raises(TypeError, match=r"^bucket: rows must be an integer"):
            selection.bucket(rows)
    assert selection.bucket(17) == 32 and selection.bucket(torch.tensor(100).item()) == 128


def test_write_yaml_of_a_filtered_list_that_kept_nothing_says_so():
    """It said "no kernel selected yet; run the model first" of a filter that kept none, the model having run
    (on CPU tensors every source is PyTorch's path, so the docstring's `source == "cost model"` filter kept none)."""
    with torch.no_grad():
        knn.MonarchLinear(32, 32, 4)(torch.randn(8, 32))
    kept = selection.Selections(s for s in knn.selections() if s.source == "cost model")
    with pytest.raises(ValueError, match=r"^Selections.write_yaml: this list is empty$"):
        kept.write_yaml("never.yaml")


def test_a_compiled_models_backward_selections_are_listed_and_logged_as_backward(caplog):
    """The compiled backward graph calls kt's ops outside `backward_role` (it was active only while the graph
    was traced): each backward selection was listed with role forward and logged at INFO as a forward op."""
    caplog.set_level(logging.DEBUG, logger="kt.nn")
    layer = knn.MonarchLinear(64, 64, nblocks=4)
    torch.compile(layer, backend="aot_eager")(torch.randn(8, 64, requires_grad=True)).sum().backward()
    roles = [(s.role, s.spec.op) for s in knn.selections()]
    assert roles[0] == ("forward", "monarch") and len(roles) >= 3, roles
    assert all(role == "backward" for role, _ in roles[1:]), roles
    loud = [r.getMessage() for r in caplog.records if r.name == "kt.nn" and r.levelno >= logging.INFO]
    assert len(loud) == 1 and loud[0].startswith("monarch 16 rows"), loud


def _step_ms(fs, x, dy, reps=20) -> list[float]:
    """Each function's fastest forward+backward in ms, the functions taking turns rep by rep, so that a burst of
    load from another process on a shared machine lands on both sides (one side timed after the other once
    failed here at 22 ms against 1.1 ms while two other replays ran on the two cores)."""
    for f in fs:
        for _ in range(3):
            f(x).backward(dy)
    times = [[] for _ in fs]
    for _ in range(reps):
        for f, spent in zip(fs, times):
            started = time.perf_counter()
            f(x).backward(dy)
            spent.append(time.perf_counter() - started)
    return [min(spent) * 1e3 for spent in times]


@pytest.mark.parametrize("name", FUNC_CASES)
def test_torch_func_on_the_cpu_path_matches_float64_reference(name, monkeypatch):
    """test_nn's torch.func checks (grad, vmap, per-sample gradients) on the PyTorch path."""
    check_torch_func(name, monkeypatch)
    assert_all_pytorch()


@pytest.mark.parametrize("a3, b3, a_batched, b_batched", DENSE_VMAP_CASES)
def test_vmap_of_a_dense_product_on_the_cpu_path_is_one_call(a3, b3, a_batched, b_batched, monkeypatch):
    check_vmap_dense(a3, b3, a_batched, b_batched, monkeypatch)


@pytest.mark.parametrize(
    "kind, batched", BLOCKSPARSE_VMAP_CASES, ids=[f"{k}-{'+'.join(b)}" for k, b in BLOCKSPARSE_VMAP_CASES]
)
def test_vmap_of_a_block_sparse_op_on_the_cpu_path_stacks_the_samples(kind, batched, monkeypatch):
    check_vmap_blocksparse(kind, batched, monkeypatch)


@pytest.mark.parametrize(
    "batched, rows", LOWRANK_VMAP_CASES, ids=["all", "x-shared", "1d-x-F1-shared", "last-factor-only"]
)
def test_vmap_of_a_low_rank_chain_on_the_cpu_path_is_one_call_per_factor(batched, rows, monkeypatch):
    check_vmap_lowrank(batched, rows, monkeypatch)


@pytest.mark.parametrize("batched", MONARCH_VMAP_CASES, ids=MONARCH_VMAP_IDS)
def test_vmap_of_a_monarch_op_on_the_cpu_path_is_one_call_per_block_product(batched, monkeypatch):
    check_vmap_monarch(batched, monkeypatch)


@pytest.mark.parametrize("x_batched, w_batched, f_batched", SUM_VMAP_CASES, ids=SUM_VMAP_IDS)
def test_vmap_of_a_sum_on_the_cpu_path_runs_each_term_by_its_rule(
    x_batched, w_batched, f_batched, monkeypatch
):
    check_vmap_sum(x_batched, w_batched, f_batched, monkeypatch)


def test_a_block_sparse_backward_makes_its_transposed_pattern_indices_once_per_device(monkeypatch):
    """dx of a block-sparse layer runs the op of W.T's pattern, whose index tensors kt derives: made on the
    first backward, then reused (torch.tensor(..., device="cuda") from host memory waits for the stream: a
    device sync in each backward)."""
    layer = knn.BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=1)
    layout = layer.op()["sparsity"]["layout"]
    knn.functional._transposed_indices.cache_clear()
    seen, run = [], knn.functional._run

    def spy(x, weights, op):
        if layout not in op:  # the transposed pattern's op
            seen.append(weights)
        return run(x, weights, op)

    monkeypatch.setattr(knn.functional, "_run", spy)
    for _ in range(2):
        x = torch.randn(5, 32, requires_grad=True)
        layer(x).sum().backward()
    first, second = seen  # the transposed op's (crow, col, values) of each backward
    assert first[0] is second[0] and first[1] is second[1]
    assert knn.functional._transposed_indices.cache_info().currsize == 1


def test_a_nested_transform_over_a_block_sparse_layer_leaves_later_transforms_working():
    """jacfwd over the stored blocks of grad over x (a gradient penalty's mixed derivative) makes dx's transposed
    pattern indices inside grad; kept as grad's wrappers, they broke every later torch.func call on the layer
    (PyTorch's internal assert on the transform level). Kept plain, the same calls work again: against
    float64, twice."""
    layer = knn.BlockSparseLinear(12, 8, (4, 4), density=0.5, seed=3)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    buffers = dict(layer.named_buffers())
    x = torch.randn(3, 12)
    knn.functional._transposed_indices.cache_clear()

    def dx(values):  # d(sum y^2)/dx as a function of the stored blocks
        def loss(x):
            return (
                torch.func.functional_call(layer, ({**params, "values": values}, buffers), (x,))
                .square()
                .sum()
            )

        return torch.func.grad(loss)(x)

    def dx_reference(values):  # the same in float64 on the dense weight
        dense = bsr_dense(layer, values)
        return 2 * (x.double() @ dense.T + params["bias"].double()) @ dense

    values = params["values"]
    want_jacobian, want_dx = torch.func.jacrev(dx_reference)(values.double()), dx_reference(values.double())
    for _ in range(2):
        assert rel(torch.func.jacfwd(dx)(values), want_jacobian) < F32
        assert rel(torch.func.grad(lambda x: layer(x).square().sum())(x), want_dx) < F32
    assert knn.functional._transposed_indices.cache_info().currsize == 1


def test_forward_mode_ad_with_dual_tensors_gives_the_layers_tangent():
    """torch.autograd.forward_ad (dual tensors, no torch.func): a layer's output tangent is the map applied to
    x's tangent (the layer is linear in x), against the float64 formula."""
    import torch.autograd.forward_ad as fwAD

    layer = knn.MonarchLinear(32, 48, 4)
    x, t = torch.randn(5, 32), torch.randn(5, 32)
    with fwAD.dual_level():
        y = layer(fwAD.make_dual(x, t))
        tangent = fwAD.unpack_dual(y).tangent
    w1, w2 = (p.detach().double() for p in (layer.w1, layer.w2))
    expected = monarch_reference(t.double(), w1, w2)
    assert tangent is not None and float((tangent.double() - expected).norm() / expected.norm()) < 1e-5


def test_torch_compile_of_a_torch_func_transform_runs_it_eagerly_or_names_why_under_fullgraph():
    """Traced, a kt op under a torch.func transform has no path (the custom op's torch.library autograd is
    refused by functorch): kt.nn's apply breaks the graph there, so torch.compile runs the transform eagerly
    (same gradients), and fullgraph=True refuses it at that line."""
    torch._dynamo.reset()
    layer = knn.LowRankLinear(24, 16, 8)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    x = torch.randn(5, 24)

    def loss(p, x):
        return torch.func.functional_call(layer, p, (x,)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
    eager = per_sample(params, x)
    compiled = torch.compile(per_sample)(params, x)
    for name in params:
        torch.testing.assert_close(compiled[name], eager[name], rtol=0, atol=0)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="kt/nn/functional.py"):  # the graph break names apply's line
        torch.compile(per_sample, fullgraph=True)(params, x)


@pytest.mark.parametrize("kind", ["monarch", "lowrank"])
def test_a_cpu_layer_runs_at_torch_speed(kind):
    """Forward+backward of a 512-feature layer at batch 64 against the plain torch formula of its structure. The
    interpreter took seconds here (issue 17); benchmarks/nn_layers.py --device cpu gives the figures (within
    3x); this bound is loose so a busy CI machine does not fail it."""
    from kt.ir.structured import monarch_reference

    if kind == "monarch":
        layer = knn.MonarchLinear(512, 512, 8)
        formula = lambda x: monarch_reference(x, layer.w1, layer.w2) + layer.bias  # noqa: E731
    else:
        layer = knn.LowRankLinear(512, 512, 64)
        formula = lambda x: x @ layer.factors[0] @ layer.factors[1] + layer.bias  # noqa: E731
    x = torch.randn(64, 512, requires_grad=True)
    dy = torch.randn(64, 512)
    kt_ms, plain_ms = _step_ms([layer, formula], x, dy)
    assert kt_ms < 10 * plain_ms + 2.0, (kt_ms, plain_ms)
    assert_all_pytorch()


def test_kt_interpret_runs_the_generated_kernels_and_both_agree(monkeypatch):
    layer = knn.MonarchLinear(32, 48, 4)
    x = torch.randn(9, 32)
    with torch.no_grad():
        torch_y = layer(x)
    assert_all_pytorch()
    monkeypatch.setenv("KT_INTERPRET", "1")
    with torch.no_grad():
        kernel_y = layer(x)
    generated = [s for s in knn.selections() if s.source != selection.CPU_SOURCE]
    assert len(generated) == 1 and not generated[0].kernel.pytorch and generated[0].source == "cost model"
    torch.testing.assert_close(kernel_y, torch_y, rtol=1e-5, atol=1e-5)


def test_one_log_line_per_layer_and_a_selections_table(caplog):
    caplog.set_level(logging.DEBUG, logger="kt.nn")
    model = torch.nn.Sequential(
        knn.LowRankLinear(32, 32, 4),
        knn.BlockSparseLinear(32, 32, (8, 8), density=0.5),
        knn.MonarchLinear(32, 32, 4),
    )
    for rows in (20, 30):  # one bucket
        model(torch.randn(rows, 32, requires_grad=True)).sum().backward()
    loud = [r for r in caplog.records if r.name == "kt.nn" and r.levelno >= logging.INFO]
    assert [r.getMessage().split(" ", 1)[0] for r in loud] == ["lowrank", "blocksparse", "monarch"]
    for record in loud:
        message = record.getMessage()
        assert record.levelno == logging.INFO and "\n" not in message
        assert "PyTorch" in message and "KT_INTERPRET=1" in message
    table = str(knn.selections())
    lines = table.splitlines()
    assert lines[0].split() == ["op", "device", "role", "source", "runs", "where"]
    assert len(lines) == 2 + len(knn.selections())
    assert sum(" forward " in line for line in lines) == 3
    assert "two torch.bmm" in table and "blocksparse_grad" in table
    assert str(selection.Selections()) == "kt.nn: no kernel selected yet"


def test_selections_write_the_specs_to_give_kt_tune(tmp_path):
    """The table's op column is a summary; `write_yaml` writes each distinct spec (forward and backward, one per
    bucket) as op.yaml documents with names of their own, which `kt tune` reads as they are."""
    model = torch.nn.Sequential(knn.LowRankLinear(32, 32, 4), knn.MonarchLinear(32, 32, 4))
    for rows in (20, 30, 40):  # buckets 32 and 64
        model(torch.randn(rows, 32, requires_grad=True)).sum().backward()
    chosen = knn.selections()
    distinct = {json.dumps(s.spec.signature(), sort_keys=True) for s in chosen}
    assert chosen.write_yaml(tmp_path / "ops.yaml") == len(distinct)
    specs = kt.load_specs(tmp_path / "ops.yaml")  # refuses two ops of one name
    assert {json.dumps(s.signature(), sort_keys=True) for s in specs} == distinct
    assert {s.op for s in specs} == {"lowrank", "monarch", "dense"}  # dense: the backward's weight gradients
    assert any(s.transposed for s in specs)  # the Monarch layer's dx
    with pytest.raises(ValueError, match="this list is empty"):  # the model ran: kernels were selected
        selection.Selections().write_yaml(tmp_path / "none.yaml")
    selection._SELECTED.clear()
    with pytest.raises(ValueError, match="no kernel selected yet; run the model first"):
        knn.selections().write_yaml(tmp_path / "none.yaml")
    assert not (tmp_path / "none.yaml").exists()


def test_specs_written_by_two_processes_never_give_two_ops_one_name():
    """Named after the shape alone, a low-rank layer's weight gradient (dense 32x4x16, b: row) and a dense
    layer's forward (dense 32x4x16, b: col) were both dense_32x4x16_float32: tuned into one folder, the second
    replaced the first's artifact (kept as .prev, which kt.nn passes over)."""

    def names(run) -> dict[str, str]:
        selection._SELECTED.clear()  # as in a process of its own
        run()
        chosen = selection.Selections(s for s in knn.selections() if "32x4x16" in s.spec.summary())
        return {spec.name: spec.summary() for spec in chosen.specs()}

    lowrank = knn.LowRankLinear(16, 24, rank=4)
    training = names(lambda: lowrank(torch.randn(20, 16)).sum().backward())
    dense = knn.DenseLinear(16, 4)
    inference = names(lambda: dense(torch.randn(20, 16)))
    assert len(training) == len(inference) == 1
    assert set(training).isdisjoint(inference), (training, inference)
    assert names(lambda: dense(torch.randn(20, 16))) == inference  # the same op: the same name, every time
    assert re.fullmatch(r"dense_32x4x16_float32_[0-9a-f]{6}", next(iter(inference)))


def test_a_loaded_kernel_as_op_runs_pytorch_on_cpu_unless_asked(monkeypatch):
    spec = kt.parse_spec(
        {"name": "m", "op": "monarch", "dtype": "float32", "shape": {"batch": 16, "n": 32, "nblocks": 4}}
    )
    kernel = kt.build(spec)  # a generated kernel (the cost model's pick)
    assert not kernel.pytorch
    x, w1, w2 = kt.random_args(spec, seed=1, device="cpu")
    expected = kt.reference(spec)(x.double(), w1.double(), w2.double())

    def refuse(*args, **kwargs):
        raise AssertionError("the generated kernel ran")

    op = kernel.as_op()
    generated = kernel.module.kernel
    monkeypatch.setattr(kernel.module, "kernel", refuse)
    y = op(x[:7], w1, w2)  # any rows
    torch.testing.assert_close(y.double(), expected[:7], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("KT_INTERPRET", "1")
    with pytest.raises(AssertionError, match="the generated kernel ran"):
        op(x, w1, w2)
    monkeypatch.setattr(kernel.module, "kernel", generated)
    torch.testing.assert_close(op(x, w1, w2).double(), expected, rtol=1e-5, atol=1e-5)


BLOCKSPARSE_SPEC = {  # a block-sparse op a kernel is built for (kt.build), as a user's op.yaml gives it
    "name": "b",
    "op": "blocksparse",
    "dtype": "float32",
    "shape": {"batch": 24, "in": 48, "out": 80},
    "sparsity": {"block": [16, 16], "density": 0.4, "seed": 2},
}


def test_a_blocksparse_kernel_as_op_takes_the_bsr_weight_or_its_parts_and_compiles_with_the_parts():
    spec = kt.parse_spec(BLOCKSPARSE_SPEC)
    x, w = kt.random_args(spec, seed=4, device="cpu")
    expected = F.linear(x.double(), w.to_dense().double())
    op = kt.build(spec).as_op()
    parts = (w.crow_indices(), w.col_indices(), w.values())
    torch.testing.assert_close(op(x, w).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op(x[:5], *parts).double(), expected[:5], rtol=1e-5, atol=1e-5)
    # torch.compile takes no sparse tensor as an input: a compiled function takes the parts
    torch._dynamo.reset()
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    grads = []
    for run in (op, compiled):
        x1 = x.detach().clone().requires_grad_(True)
        values = parts[2].detach().clone().requires_grad_(True)
        y = run(x1, parts[0], parts[1], values)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
        y.square().sum().backward()
        grads.append((x1.grad, values.grad))
    torch.testing.assert_close(grads[1], grads[0])
    for wrong in [(parts[0], parts[2]), (w, parts[2]), ()]:
        with pytest.raises(
            TypeError, match=r"the blocksparse op takes 3 weight tensors, a BSR weight counting"
        ):
            op(x, *wrong)


@pytest.mark.parametrize("interpret", [False, True], ids=["pytorch-path", "interpreter"])
@pytest.mark.parametrize("dims", [(2, 2), (3, 2), (2, 3), (3, 3)], ids=lambda d: f"a{d[0]}d-b{d[1]}d")
def test_a_dense_kernel_as_op_differentiates_batched_and_shared_operands(monkeypatch, interpret, dims):
    """A batch of products, one operand possibly shared (2-D): its gradient is summed over the batch. Before,
    the backward transposed with .t(), which a 3-D operand refuses."""
    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    batch = {"batch": 3} if 3 in dims else {}
    spec = {"name": "d", "op": "dense", "dtype": "float32", "precision": "ieee"}
    op = kt.build(spec | {"shape": {"m": 5, "n": 7, "k": 9, **batch}}).as_op()
    g = torch.Generator().manual_seed(7)
    a = torch.randn(*[3] * (dims[0] - 2), 9, 5, generator=g).transpose(-1, -2).requires_grad_()  # strided
    b = torch.randn(*[3] * (dims[1] - 2), 9, 7, generator=g).requires_grad_()
    dy = torch.randn(*[3] * bool(batch), 5, 7, generator=g)
    op(a, b).backward(dy)
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    torch.matmul(a64, b64).backward(dy.double())
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interpret", [False, True], ids=["pytorch-path", "interpreter"])
def test_a_blocksparse_kernel_as_op_refuses_a_weight_of_another_shape_or_pattern(monkeypatch, interpret):
    """The kernel reads the weight's own indices, but as_op's op is the spec's: a smaller weight was read past
    its crow_indices (a segfault in the interpreter), and one of another pattern gave a wrong x.grad."""
    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    raw = {
        "name": "b",
        "op": "blocksparse",
        "dtype": "float32",
        "shape": {"batch": 8, "in": 64, "out": 48},
        "sparsity": {"block": [16, 16], "density": 0.5, "seed": 0},
    }
    spec = kt.parse_spec(raw)
    op = kt.build(spec).as_op()
    x, w = kt.random_args(spec, seed=3, device="cpu")
    expected = F.linear(x.double(), w.to_dense().double())
    torch.testing.assert_close(op(x, w).double(), expected, rtol=1e-5, atol=1e-5)
    smaller = torch.randn(32, 64).to_sparse_bsr((16, 16))
    full = torch.randn(48, 64).to_sparse_bsr((16, 16))  # every block stored
    mask = w.to_dense().reshape(3, 16, 4, 16).abs().sum((1, 3)) > 0
    moved = (
        torch.randn(48, 64) * mask.flip(1).repeat_interleave(16, 0).repeat_interleave(16, 1)
    ).to_sparse_bsr((16, 16))  # as many blocks as the spec's, at other columns
    assert moved.values().shape == w.values().shape and not torch.equal(moved.col_indices(), w.col_indices())
    for wrong, message in [
        (
            smaller,
            r"w must be a 48x64 BSR weight in 16x16 blocks with 6 stored blocks .* got crow_indices \(3,\)",
        ),
        (full, r"with 6 stored blocks .* col_indices \(12,\)"),
        (moved, r"w stores its blocks at other places than the pattern this kernel was built for"),
    ]:
        with pytest.raises(ValueError, match=message):
            op(x, wrong)
        with pytest.raises(ValueError, match=message):
            op(x.requires_grad_(), wrong.crow_indices(), wrong.col_indices(), wrong.values())
        x = x.detach()
    summed = kt.parse_spec(
        {
            "name": "s",
            "op": "sum",
            "dtype": "float32",
            "terms": [
                {"op": "lowrank", "shape": {"batch": 8, "dims": [64, 4, 48]}},
                {"op": "blocksparse", "shape": raw["shape"], "sparsity": raw["sparsity"]},
            ],
        }
    )
    x, f1, f2, w = kt.random_args(summed, seed=5, device="cpu")
    op = kt.build(summed).as_op()
    expected = x.double() @ f1.double() @ f2.double() + F.linear(x.double(), w.to_dense().double())
    torch.testing.assert_close(op(x, f1, f2, w).double(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="w stores its blocks at other places"):
        op(x, f1, f2, moved)


@pytest.mark.parametrize(
    "sparsity",
    [
        {"block": [4, 2], "density": 0.5, "seed": 1},  # as examples/blocksparse.yaml gives it
        {"block": [4, 2], "pattern": "banded", "width": 1},
        "layout beside",  # as op_of_spec writes it: the layout beside its density and seed
    ],
)
def test_a_block_sparse_op_whose_pattern_is_not_its_layout_runs_everywhere(sparsity):
    """apply takes an op.yaml mapping, but the kernels, the fake implementation and decompose read the pattern
    from `layout`: a pattern by density and seed, or by `pattern`, was a bare KeyError 'layout' in each, and
    one with its layout beside its density was refused under vmap (the stacked layout checked against the
    density: "sparsity.layout: does not match the pattern that density gives")."""
    from torch.func import vmap

    from kt.nn.functional import apply, canonical_text, op_text
    from kt.nn.portable import decompose

    shape = {"in": 8, "out": 12}
    if sparsity == "layout beside":
        sparsity = {"block": [4, 2], "density": 0.5, "seed": 1}
        spec = kt.parse_spec(
            {"name": "b", "op": "blocksparse", "shape": {"batch": 16, **shape}, "sparsity": sparsity}
        )
        sparsity = spec.signature()["sparsity"]
        assert set(sparsity) == {"block", "layout", "density", "seed"}
    op = {"op": "blocksparse", "dtype": "float32", "shape": shape, "sparsity": sparsity}
    written = json.dumps(op)
    layout = json.loads(op_text(op))["sparsity"]
    assert set(layout) == {"block", "layout"} and json.loads(canonical_text(written)) == json.loads(
        op_text(op)
    )
    mask = torch.as_tensor(kt.sparsity.hex_to_mask(layout["layout"], (3, 4)))
    dense = torch.randn(12, 8) * mask.repeat_interleave(4, 0).repeat_interleave(2, 1)
    w = dense.to_sparse_bsr((4, 2))
    parts = [w.crow_indices().clone(), w.col_indices().clone(), w.values().clone()]
    x = torch.randn(3, 8)
    expected = F.linear(x, dense)
    torch.testing.assert_close(apply(x, parts, op), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply(x, parts, written), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.ops.kt.apply(x, parts, written), expected, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, c, k, v: apply(x, [c, k, v], op), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, *parts), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decompose(x, parts, written), expected, rtol=1e-5, atol=1e-5)
    values = torch.stack([parts[2], 2 * parts[2]])  # an ensemble of two, and per-sample gradients
    ys = vmap(lambda v: apply(x, [parts[0], parts[1], v], op))(values)
    torch.testing.assert_close(ys, torch.stack([expected, 2 * expected]), rtol=1e-5, atol=1e-5)
    grads = vmap(torch.func.grad(lambda v, x: apply(x[None], [parts[0], parts[1], v], op).sum()), (None, 0))(
        parts[2], x
    )
    assert grads.shape == (3, *parts[2].shape)


@pytest.mark.parametrize("kind", ["monarch", "lowrank", "blocksparse"])
def test_vmap_over_weights_the_op_refuses_refuses_them_too(kind):
    """The vmap rules of batched weights stack and reshape the operands into ops of their own, marked trusted:
    weights the op refuses eagerly ran under vmap, a BSR weight's values in another block shape reshaped to the
    op's (wrong numbers), a Monarch's of another size (25 output features where the op says 40), a float32
    chain's float16 factors (a float16 output)."""
    from torch.func import vmap

    from kt.nn.functional import apply

    if kind == "monarch":
        op = {"op": "monarch", "dtype": "float32", "shape": {"w1": [4, 6, 3], "w2": [8, 5, 3]}}
        x, weights = torch.randn(2, 12), [torch.randn(4, 4, 5, 3), torch.randn(4, 5, 5, 4)]
    elif kind == "lowrank":
        op = {"op": "lowrank", "dtype": "float32", "shape": {"dims": [7, 3, 5]}}
        x, weights = torch.randn(2, 7), [torch.randn(4, 7, 3).half(), torch.randn(4, 3, 5).half()]
    else:
        op = {"op": "blocksparse", "dtype": "float32", "shape": {"in": 8, "out": 12}}
        op["sparsity"] = {"block": [4, 2], "layout": "da40"}
        crow, col = (
            torch.as_tensor(a) for a in kt.sparsity.bsr_index_arrays(kt.sparsity.hex_to_mask("da40", (3, 4)))
        )
        x, weights = (
            torch.randn(2, 8),
            [crow.expand(4, -1), col.expand(4, -1), torch.randn(4, len(col), 2, 4)],
        )
    with pytest.raises((ValueError, TypeError)) as eager:
        apply(x, [w[0] for w in weights], op)
    with pytest.raises(type(eager.value), match=re.escape(str(eager.value))):
        vmap(lambda *ws: apply(x, list(ws), op))(*weights)


def test_block_sparse_weights_of_another_pattern_are_refused_under_vmap_and_functional_call():
    """The op's text fixes a block-sparse weight's pattern. An ensemble of layers with their own patterns
    (stack_module_state, vmap) ran every member with the first one's (relative errors 0.94 and 1.48), as_op
    under vmap with batched indices did the same, and a layer given another layer's index buffers through
    functional_call ran that layer's forward but built dx from its own pattern (relative error 1.09): each is
    now refused. Members of one pattern still run as one call, and match each layer."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    def ensemble(seeds):
        layers = [knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=s) for s in seeds]
        params, buffers = stack_module_state(layers)
        base = copy.deepcopy(layers[0]).to("meta")
        x = torch.randn(5, 32)
        ys = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(
            params, buffers, x
        )
        for y, layer in zip(ys, layers):
            torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)

    ensemble([1, 1, 1])
    with pytest.raises(ValueError, match="vmap of a block-sparse op: each weight must store its blocks"):
        ensemble([0, 1, 2])
    spec = kt.parse_spec(
        {
            "name": "b",
            "op": "blocksparse",
            "dtype": "float32",
            "shape": {"batch": 4, "in": 32, "out": 16},
            "sparsity": {"block": [8, 8], "density": 0.5, "seed": 0},
        }
    )
    op = kt.build(spec).as_op()
    x, w = kt.random_args(spec, seed=1, device="cpu")
    other = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=1)
    crows = torch.stack([w.crow_indices(), other.crow_indices])
    cols = torch.stack([w.col_indices(), other.col_indices])
    values = torch.stack([w.values(), w.values()])
    with pytest.raises(ValueError, match="vmap of a block-sparse op"):
        vmap(op, in_dims=(None, 0, 0, 0))(x, crows, cols, values)
    with pytest.raises(ValueError, match="vmap of a block-sparse op"):  # one index pair, not the op's
        vmap(op, in_dims=(0, None, None, None))(x[None], other.crow_indices, other.col_indices, w.values())
    same = vmap(op, in_dims=(None, 0, 0, 0))(x, crows[:1].expand(2, -1), cols[:1].expand(2, -1), values)
    torch.testing.assert_close(same[1], F.linear(x, w.to_dense()), rtol=1e-5, atol=1e-5)
    mine = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=0)
    xr = torch.randn(4, 32, requires_grad=True)
    with pytest.raises(ValueError, match="BlockSparseLinear: its crow_indices .* a layer takes only its own"):
        functional_call(mine, {**dict(other.named_parameters()), **dict(other.named_buffers())}, (xr,))
    summed = knn.Sum(
        knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=0, bias=False),
        knn.LowRankLinear(32, 16, 4, bias=False),
    )
    with pytest.raises(ValueError, match="a layer takes only its own"):
        functional_call(summed, {"terms.0.crow_indices": other.crow_indices, "terms.0.col_indices": other.col_indices},
                        (xr,))  # fmt: skip


def test_block_sparse_indices_of_another_pattern_are_refused_under_torch_compile_and_by_apply():
    """A layer's eager forward refuses index buffers that are not its pattern's, but not while torch.compile
    traces (it cannot read them): compiled, a layer given another layer's buffers through functional_call, or
    whose col_indices were moved in place, ran the forward on those indices and built dx from its own pattern
    (relative errors 1.06 and 0.62 in dx). `kt.nn.functional.apply` did the same in eager code (1.19). The op
    now checks any BSR weight it is given, but the indices kt derives itself."""
    from torch.func import functional_call

    from kt.nn import functional

    mine = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=0)
    other = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=1)
    theirs = {**dict(other.named_parameters()), **dict(other.named_buffers())}
    torch._dynamo.reset()
    call = torch.compile(lambda p, x: functional_call(mine, p, (x,)), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 32, requires_grad=True)
    with pytest.raises(
        ValueError, match="w stores its blocks at other places .* a kt.nn.BlockSparseLinear takes only"
    ):
        call(theirs, x)
    compiled = torch.compile(mine, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    saved = mine.col_indices.clone()
    with torch.no_grad():
        mine.col_indices.copy_((saved + 1) % 4)  # the same count of blocks per row, at other columns
    with pytest.raises(ValueError, match="w stores its blocks at other places"):
        compiled(x)
    with torch.no_grad():
        mine.col_indices.copy_(saved)
    y = compiled(x)
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    dense = mine.weight_bsr().to_dense().detach()
    xd = x.detach().double().requires_grad_()
    expected = F.linear(xd, dense.double(), mine.bias.detach().double())
    (want,) = torch.autograd.grad(expected.square().sum(), xd)
    torch.testing.assert_close(dx.double(), want, rtol=1e-5, atol=1e-5)
    values = other.values.detach().clone().requires_grad_()
    with pytest.raises(ValueError, match="w stores its blocks at other places"):
        functional.apply(x, [other.crow_indices, other.col_indices, values], mine.op())
    with pytest.raises(ValueError, match=r"w must be a 16x32 BSR weight .* got crow_indices \(2,\)"):
        functional.apply(x, [other.crow_indices[:2], other.col_indices, values], mine.op())
    y = functional.apply(x, [mine.crow_indices, mine.col_indices, mine.values], mine.op())
    torch.testing.assert_close(
        y.double(), F.linear(x.detach().double(), dense.double()), rtol=1e-5, atol=1e-5
    )


def test_block_sparse_ensembles_nest_and_a_compiled_layer_reads_its_indices_back_once():
    """The pattern checks above read indices back from the GPU (a sync) once per index tensor. A first version
    also checked the indices kt derives for dx, which a compiled backward makes afresh: a read every step. And
    under vmap in vmap (an ensemble's per-sample gradients) the inner rule's indices are the outer level's
    wrappers, whose memory cannot be read ("Cannot access data pointer")."""
    import copy

    from torch.func import functional_call, grad, stack_module_state, vmap

    from kt.nn import functional

    reads = []
    real = functional.np.array_equal
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(functional.np, "array_equal", lambda a, b: reads.append(1) or real(a, b))
        layer = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=5)
        torch._dynamo.reset()
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        for _ in range(3):
            compiled(torch.randn(4, 32, requires_grad=True)).sum().backward()
        for _ in range(3):
            layer(torch.randn(4, 32, requires_grad=True)).sum().backward()
    assert len(reads) <= 2, len(reads)  # crow, then col, once
    members = [knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=1) for _ in range(3)]
    for member in members[1:]:
        with torch.no_grad():
            member.values.normal_()
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    x = torch.randn(5, 2, 32)
    ys = vmap(lambda p, b: vmap(lambda xi: functional_call(base, (p, b), (xi,)))(x))(params, buffers)
    for y, member in zip(ys, members):
        torch.testing.assert_close(y, member(x), rtol=1e-5, atol=1e-5)

    def loss(p, b, xi):
        return functional_call(base, (p, b), (xi,)).square().sum()

    grads = vmap(vmap(grad(loss), in_dims=(None, None, 0)), in_dims=(0, 0, None))(params, buffers, x[:, 0])
    assert grads["values"].shape == (3, 5, *members[0].values.shape)
    others = [knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=s) for s in range(3)]
    params, buffers = stack_module_state(others)
    with pytest.raises(ValueError, match="vmap of a block-sparse op"):
        vmap(lambda p, b: vmap(lambda xi: functional_call(base, (p, b), (xi,)))(x))(params, buffers)


def test_a_layer_whose_op_kt_cannot_build_is_refused_where_it_is_made():
    """FFT(4099) and a low-rank chain of 9 factors were made, and refused at their first forward in the words of
    an op.yaml's fields (SpecError: shape.n ...)."""
    with pytest.raises(ValueError, match=r"^FFT: 4099 is not a product n1 \* n2 .* \(shape.n of its op\)$"):
        knn.FFT(4099)
    with pytest.raises(
        ValueError, match=r"^LowRankLinear: rank takes at most 7 ranks \(a chain of 2 to 8 factors\), got 8$"
    ):
        knn.LowRankLinear(16, 16, rank=(3, 4, 5, 6, 7, 8, 2, 3))
    assert knn.FFT(4096).n == 4096 and knn.LowRankLinear(16, 16, rank=(3, 4, 5, 6, 7, 8, 2)).dims[-1] == 16


def test_a_block_sparse_layer_built_under_inference_mode_runs_outside_it():
    """Its values and index buffers were inference tensors, which have no version counter: outside inference
    mode every forward failed ("Cannot set version_counter for inference tensor", from the sparse tensor the
    kernel takes), where nn.Linear built the same way runs. They are now made as normal tensors."""
    with torch.inference_mode():
        layer = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=3)
        summed = knn.Sum(
            knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, bias=False),
            knn.LowRankLinear(32, 16, 4, bias=False),
        )
        inside = layer(torch.ones(2, 32))
    assert not layer.crow_indices.is_inference() and not layer.values.is_inference()
    x = torch.randn(4, 32, requires_grad=True)
    y = layer(x)
    expected = F.linear(x.detach().double(), layer.weight_bsr().to_dense().double(), layer.bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(layer(torch.ones(2, 32)), inside)
        assert summed(x).shape == (4, 16)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()  # its bias too is a normal tensor
    layer.reset_parameters()
    loaded = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=3)
    with (
        torch.inference_mode()
    ):  # a serving loader's assign-load: the checkpoint's tensors are inference ones
        loaded.load_state_dict(copy.deepcopy(layer.state_dict()), assign=True)
        assert not loaded.crow_indices.is_inference() and not loaded.col_indices.is_inference()
        torch.testing.assert_close(loaded(torch.ones(2, 32)), layer(torch.ones(2, 32)))


def test_a_checkpoint_converted_whole_keeps_a_block_sparse_layers_indices_integers():
    """{k: v.half() for k, v in state_dict.items()} casts the index buffers too. Loaded with assign=True, the
    layer kept float16 indices for good (.float() made them float32), and every forward failed deep in torch
    ("convert_indices_from_csr_to_coo_cpu" not implemented for 'Half'). Indices that hold the pattern exactly
    are now taken into integer buffers; others (bfloat16 holds integers exactly only up to 256) are refused by
    their dtype, not as another pattern."""
    layer = knn.BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=2)
    x = torch.randn(4, 32)
    expected = layer.half()(x.half())
    for assign in (True, False):
        loaded = knn.BlockSparseLinear(32, 48, (16, 8), density=0.5, seed=2).half()
        loaded.load_state_dict({k: v.half() for k, v in layer.state_dict().items()}, assign=assign)
        assert loaded.crow_indices.dtype == loaded.col_indices.dtype == torch.int64
        torch.testing.assert_close(loaded(x.half()), expected)
        assert loaded.float()(x).dtype == torch.float32
    wide = knn.BlockSparseLinear(1040, 16, (1, 2), density=1.0, bias=False)  # crow_indices up to 8320
    state = {k: v.bfloat16() for k, v in wide.state_dict().items()}
    with pytest.raises(TypeError, match=r"^BlockSparseLinear: the state_dict's crow_indices is torch.bfloat16, "
                       r"which does not hold the block pattern's indices exactly; keep"):  # fmt: skip
        wide.load_state_dict(state, assign=True)
    assert wide.col_indices.dtype == torch.int64 and wide.values.dtype == torch.float32  # left as it was
    other = knn.BlockSparseLinear(
        32, 48, (16, 8), density=0.75, seed=1
    )  # another pattern, held exactly in half
    with pytest.raises(ValueError, match="the state_dict's block pattern differs from this layer's"):
        layer.load_state_dict({k: v.half() for k, v in other.state_dict().items()})
    with pytest.raises(TypeError, match=r"crow_indices is torch.complex64; index tensors must be integers"):
        layer.load_state_dict({**layer.state_dict(), "crow_indices": layer.crow_indices.to(torch.complex64)})


def test_a_blocksparse_kernel_as_op_reads_a_weights_indices_once_until_they_are_written(monkeypatch):
    """as_op compares a user's BSR indices with the op's pattern, which reads them back from the GPU (a sync) on
    every call. Indices found equal are remembered by their memory and version counter: read again when other
    tensors or an in-place write (through any alias) could hold another pattern, each time for inference
    tensors, and never accepted from memory a tensor has reused after the one checked was freed."""
    from kt.nn import functional

    reads = []
    real = functional.np.array_equal
    monkeypatch.setattr(functional.np, "array_equal", lambda a, b: reads.append(1) or real(a, b))
    functional._CHECKED.clear()
    spec = kt.parse_spec(
        {
            "name": "b",
            "op": "blocksparse",
            "dtype": "float32",
            "shape": {"batch": 8, "in": 64, "out": 48},
            "sparsity": {"block": [16, 16], "density": 0.5, "seed": 0},
        }
    )
    op = kt.build(spec).as_op()
    x, w = kt.random_args(spec, seed=3, device="cpu")
    expected = F.linear(x.double(), w.to_dense().double())
    moved_col = (w.col_indices() + 1) % 4  # the same count of blocks per row, at other columns

    def count(*weight):
        before = len(reads)
        torch.testing.assert_close(op(x, *weight).double(), expected, rtol=1e-5, atol=1e-5)
        return len(reads) - before

    assert count(w) == 2  # crow, then col
    assert count(w) == 0 and count(w.crow_indices(), w.col_indices(), w.values()) == 0
    copied = torch.sparse_bsr_tensor(w.crow_indices().clone(), w.col_indices().clone(), w.values(), w.shape)
    assert count(copied) == 2 and count(copied) == 0
    w.col_indices().copy_(w.col_indices().clone())  # the same pattern, written: read again
    assert count(w) == 2 and count(w) == 0
    saved = w.col_indices().clone()
    w.col_indices().copy_(moved_col)  # another pattern written in place: refused, not remembered as good
    with pytest.raises(ValueError, match="w stores its blocks at other places"):
        op(x, w)
    w.col_indices().copy_(saved)
    assert count(w) == 2
    with torch.inference_mode():
        frozen = torch.sparse_bsr_tensor(
            w.crow_indices().clone(), w.col_indices().clone(), w.values(), w.shape
        )
        assert count(frozen) == 2 and count(frozen) == 2
        frozen.col_indices().copy_(moved_col)
        with pytest.raises(ValueError, match="w stores its blocks at other places"):
            op(x, frozen)
    crow, col = w.crow_indices().clone(), w.col_indices().clone()
    assert count(crow, col, w.values()) == 2
    del crow, col  # its memory stays the memo's: no pair of another pattern can be made at its addresses
    for key, kept in functional._CHECKED.items():
        for (_, address, *_), storage in zip(key[2:], kept):
            assert storage.data_ptr() <= address < storage.data_ptr() + storage.nbytes()
    with pytest.raises(ValueError, match="w stores its blocks at other places"):
        op(x, w.crow_indices().clone(), moved_col.clone(), w.values())
    assert count(w) == 0 and count(copied) == 0
    monkeypatch.setattr(functional, "_CHECKED_SIZE", 1)
    assert count(w.crow_indices().clone(), w.col_indices().clone(), w.values()) == 2  # the others go
    assert len(functional._CHECKED) == 1 and count(w) == 2 and count(copied) == 2 and count(copied) == 0


@pytest.mark.parametrize(
    "name", ["monarch-up-3d", "blocksparse-gaps-3d", "lowrank-chain-strided", "fft-real"]
)
def test_compile_fullgraph_and_export_keep_one_kt_node_on_the_cpu_path(name):
    layer, leaf, view, _ = make_case(name)
    x = view(leaf)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager)
    x1 = x.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x1).abs().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    compiled(x2).abs().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    for p, g in zip(layer.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    exported = torch.export.export(layer, (x.detach().contiguous(),))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert "kt.apply.default" in targets
    assert_all_pytorch()


def test_inference_calls_skip_the_custom_op_dispatch(monkeypatch):
    """With nothing to differentiate, eager calls run the kernel directly (the dispatch costs more than a small
    CPU product); with a grad they go through autograd with kt's own backward."""
    calls = []
    monkeypatch.setattr(torch.ops.kt, "apply", lambda *a: calls.append(a))
    layer = knn.DenseLinear(24, 40)
    with torch.no_grad():
        y = layer(torch.randn(5, 24))
    assert y.shape == (5, 40) and calls == []
    x = torch.randn(5, 24, requires_grad=True)
    layer(x).sum().backward()
    assert calls == [] and x.grad is not None and x.grad.shape == x.shape


def test_structurize_example_runs_on_the_cpu_in_seconds():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KT_INTERPRET", None)
    env.pop("TRITON_INTERPRET", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "structurize_mlp.py"), "--steps", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("loss") == 4 and "two torch.bmm" in done.stdout
    assert elapsed < 60, elapsed  # 3 s on the 2-core machine (README); loose for a busy CI runner


SMALL_LAYERS = {
    "dense": lambda: knn.DenseLinear(24, 40),
    "lowrank": lambda: knn.LowRankLinear(32, 24, rank=5),
    "blocksparse": lambda: knn.BlockSparseLinear(32, 48, block=(16, 8), density=0.5),
    "monarch": lambda: knn.MonarchLinear(32, 48, nblocks=4),
    "butterfly": lambda: knn.ButterflyLinear(32, 32),
    "sum": lambda: knn.Sum(
        knn.BlockSparseLinear(32, 32, block=(16, 16), density=0.5, bias=False),
        knn.LowRankLinear(32, 32, rank=4, bias=False),
    ),
}


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_under_autocast_a_float32_layer_runs_in_autocasts_dtype_like_nn_linear(name):
    """As nn.Linear under torch.autocast: the op runs in autocast's dtype on cast copies (the same result as a
    bfloat16 copy of the layer), and the float32 parameters get the copy's gradients in float32. An nn.Linear
    before it hands it bfloat16 input, which outside autocast is refused."""
    layer = SMALL_LAYERS[name]()
    low = copy.deepcopy(layer).to(torch.bfloat16)
    x = torch.randn(3, 5, layer.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = low(x.to(torch.bfloat16))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    dy = torch.randn(y.shape)
    (y.float() * dy).sum().backward()
    (expected.float() * dy).sum().backward()
    for (n, p), q in zip(layer.named_parameters(), low.parameters()):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, n
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=0, atol=0, msg=n)
    with pytest.raises(TypeError, match="bfloat16"):
        layer(x.to(torch.bfloat16))  # autocast off: the layer's own dtype, as before

    model = torch.nn.Sequential(torch.nn.Linear(8, layer.in_features), layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_under_autocast_a_layer_already_in_autocasts_dtype_takes_float32_input_and_refuses_the_rest(name):
    """A bfloat16 layer under bfloat16 autocast with float32 input (a residual stream, a LayerNorm's output)
    runs as nn.Linear does: on x cast to bfloat16. It was refused (x.dtype is float32, the weights bfloat16),
    while a float16 layer took it. Integer, bool, complex and float64 input, which autocast does not cast
    and nn.Linear refuses, were cast silently (complex lost its imaginary part): refused as outside autocast."""
    layer = SMALL_LAYERS[name]().to(torch.bfloat16)
    x = torch.randn(3, 5, layer.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        for dtype in (torch.int64, torch.bool, torch.complex64, torch.float64):
            with pytest.raises(TypeError, match=f"x.dtype is {dtype}"):
                layer(torch.ones(3, layer.in_features, dtype=dtype))
    torch.testing.assert_close(y, layer(x.to(torch.bfloat16)), rtol=0, atol=0)


def test_a_planar_half_fft_is_bucketed_by_the_rows_of_one_plane():
    """A float16 FFT takes planar complex (2, rows, n): its bucket is that of `rows`, not of both planes."""
    layer = knn.FFT(16, dtype=torch.float16)
    with torch.no_grad():
        layer(torch.randn(2, 16, 16).half())
    assert knn.selections()[-1].spec.shape.batch == 16


def test_a_half_fft_of_one_plane_is_refused_in_the_layers_words_compiled_with_grad_too():
    """Compiled with grad, the backward's conjugate indexed x[1] while tracing: a bare IndexError, where eager
    and no-grad calls named the planar form."""
    layer = knn.FFT(32, dtype=torch.float16)
    x = torch.randn(1, 9, 32).half().requires_grad_(True)
    torch._dynamo.reset()
    with pytest.raises(
        ValueError, match=r"^FFT: x must be planar complex \(2, \.\.\., 32\).*got shape \(1, 9, 32\)"
    ):
        torch.compile(layer, backend="aot_eager")(x)
    torch._dynamo.reset()  # through the op itself (kt.nn.apply, as_op, a kernel under compile): its fake says so
    with pytest.raises(
        Exception, match=r"x must be planar complex \(2, \.\.\., 32\).*got shape \(1, 9, 32\)"
    ):
        torch.compile(lambda x: knn.apply(x, [], layer.op_text), backend="aot_eager")(x)


def test_one_dim_input_to_a_dense_op_or_a_half_fft_is_the_kernels_own_error():
    """_row_count read x.shape[-2] (a dense as_op) and x[0][..., 0] (a planar half FFT) before the kernel's
    argument checks: an IndexError, not the one line that names the shape."""
    with pytest.raises(ValueError, match=r"planar complex \(2, \.\.\., 64\).*got shape \(64,\)"):
        knn.FFT(64, dtype=torch.float16)(torch.randn(64).half())
    with pytest.raises(ValueError, match=r"2-D or 3-D.*\(64,\)"):
        op = {
            "op": "dense",
            "dtype": "float32",
            "shape": {"n": 48, "k": 64},
            "layout": {"a": "row", "b": "row"},
        }
        knn.apply(torch.randn(64), [torch.randn(64, 48)], op)


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_a_layer_built_on_the_meta_device_is_whole_after_to_empty_and_reset_parameters(name):
    """The large-model recipe: build on the meta device, `to_empty()`, then each module's `reset_parameters()`
    (as nn.Linear has). A block-sparse layer's pattern (its index buffers) comes back from its layout, and the
    draws are those of a layer built directly under the same seed."""
    torch.manual_seed(3)
    direct = SMALL_LAYERS[name]()
    with torch.device("meta"):
        model = torch.nn.Sequential(SMALL_LAYERS[name]())
    model.to_empty(device="cpu")
    for buffer in model.buffers():
        buffer.fill_(-7)  # what to_empty's memory may hold
    torch.manual_seed(3)

    def children_first(module):  # a sum's terms before the sum, the order they were built in
        for child in module.children():
            yield from children_first(child)
        yield module

    for module in children_first(model):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for (n, a), b in zip(direct.state_dict().items(), model[0].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=n)
    x = torch.randn(4, direct.in_features)
    torch.testing.assert_close(model(x), direct(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_a_model_built_on_meta_loads_a_checkpoint_of_another_dtype_with_assign(name):
    """Meta init, then `load_state_dict(..., assign=True)` of a half-precision checkpoint: a block-sparse layer
    read its meta index buffers to compare patterns (NotImplementedError: cannot copy out of meta tensor), and
    every layer kept the op text of float32, refusing both float32 and float16 inputs."""
    torch.manual_seed(3)
    source = SMALL_LAYERS[name]().to(torch.float16)
    with torch.device("meta"):
        model = SMALL_LAYERS[name]()
    model.load_state_dict(source.state_dict(), assign=True)
    assert model.dtype == torch.float16
    x = torch.randn(4, source.in_features, dtype=torch.float16)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_a_model_on_the_meta_device_runs_forward_and_backward_for_shapes(name):
    """As nn.Linear does on meta (shape inference, memory planning): kt's fake implementation gives the output,
    and the backward the gradients' shapes. It failed in autocast's check of the meta device, then in the kernel."""
    cpu = SMALL_LAYERS[name]()
    with torch.device("meta"):
        layer = SMALL_LAYERS[name]()
    x = torch.randn(3, 5, cpu.in_features, device="meta", requires_grad=True)
    y = layer(x)
    assert y.device.type == "meta" and y.shape == (3, 5, cpu.out_features)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p, q in zip(layer.parameters(), cpu.parameters()):
        assert p.grad is not None and p.grad.shape == q.shape and p.grad.device.type == "meta"
    with torch.no_grad():
        assert layer(x).shape == y.shape


def test_a_sum_whose_first_term_is_low_rank_compiles():
    """The fake implementation took a sum's features from its first term's `out`, which a low-rank term does not
    have (KeyError under torch.compile and torch.export)."""
    layer = knn.Sum(
        knn.LowRankLinear(32, 24, rank=4, bias=False),
        knn.BlockSparseLinear(32, 24, block=(8, 8), density=0.5, bias=False),
    )
    x = torch.randn(3, 5, 32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))
    assert torch.export.export(layer, (x,)).module()(x).shape == (3, 5, 24)


def test_use_artifacts_refuses_a_folder_that_is_not_there_and_kt_artifacts_warns_once(
    tmp_path, monkeypatch, caplog
):
    saved = list(selection._ARTIFACT_DIRS)
    with pytest.raises(FileNotFoundError, match=r"^kt.nn.use_artifacts: .*nope is not there; give folders"):
        knn.use_artifacts(tmp_path, tmp_path / "nope")
    assert saved == selection._ARTIFACT_DIRS  # none added when one is wrong
    (tmp_path / "f").write_text("")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        knn.use_artifacts(tmp_path / "f")
    gone = tmp_path / "gone"
    monkeypatch.setenv("KT_ARTIFACTS", os.pathsep.join([str(gone), str(tmp_path)]))
    monkeypatch.setattr(selection, "_MISSING_DIRS", set())
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        for _ in range(2):
            dirs = selection._artifact_dirs()
            assert tmp_path in dirs and gone not in dirs
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # (that a folder of no artifact warns as a layer looks in it: test_nn's test of $KT_ARTIFACTS)
    assert warnings == [f"$KT_ARTIFACTS names {gone}, which is not a folder; it is skipped"]
    # a $KT_DB that names nothing was silently no database
    monkeypatch.setenv("KT_DB", str(tmp_path / "typo.db"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        for _ in range(2):
            assert selection._best_row(None, None, "gpu") is None
    assert caplog.text.count("$KT_DB names") == 1 and "typo.db, which is not there" in caplog.text


@pytest.mark.parametrize("name", [*SMALL_LAYERS, "lowrank-chain"])
def test_backward_computes_only_the_gradients_autograd_asks_for(name, monkeypatch):
    """A first layer's dx (its input is data) and a frozen weight's gradient are not computed: fewer kt products
    in the backward pass, and the gradients that are computed are the same as with everything asked for."""
    layer = {"lowrank-chain": lambda: knn.LowRankLinear(32, 24, rank=(6, 4, 5)), **SMALL_LAYERS}[name]()
    x = torch.randn(6, layer.in_features)
    dy = torch.randn(6, layer.out_features)
    calls = []
    real = knn.functional.apply

    def counting(x, weights, op):
        calls.append(op)
        return real(x, weights, op)

    # the backward's products (the layer's forward calls its own import of apply), and the torch einsums of the
    # butterfly's twiddle gradients
    monkeypatch.setattr(knn.functional, "apply", counting)
    einsum = torch.einsum

    def counting_einsum(*args):
        calls.append("einsum")
        return einsum(*args)

    monkeypatch.setattr(torch, "einsum", counting_einsum)
    weights = [(n, p) for n, p in layer.named_parameters() if n != "bias"]

    def backward(x_grad: bool, frozen: set[str]):
        calls.clear()
        layer.zero_grad(set_to_none=True)
        for n, p in weights:
            p.requires_grad_(n not in frozen)
        leaf = x.clone().requires_grad_(x_grad)
        (layer(leaf) * dy).sum().backward()
        return len(calls), leaf.grad, {n: p.grad for n, p in weights}

    count, dx, grads = backward(True, set())
    assert dx is not None and all(g is not None for g in grads.values())
    partial = {n for i, (n, _) in enumerate(weights) if i % 2 == 0}  # every other weight (a chain's 1st, 3rd)
    for x_grad, frozen in [(False, set()), (True, {n for n, _ in weights}), (True, partial)]:
        if x_grad and not frozen:
            continue  # everything asked for: the first run
        fewer, dx2, grads2 = backward(x_grad, frozen)
        assert fewer < count, (x_grad, frozen, fewer, count)
        if x_grad:
            torch.testing.assert_close(dx2, dx, rtol=0, atol=0)
        else:
            assert dx2 is None
        for n, g in grads2.items():
            if n in frozen:
                assert g is None, n
            else:
                torch.testing.assert_close(g, grads[n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: knn.MonarchLinear(16, 16, nblocks=0),
            "MonarchLinear: nblocks must be a positive integer, got 0",
        ),
        (lambda: knn.MonarchLinear(16, 16, nblocks=4.0), "nblocks must be a positive integer, got 4.0"),
        (
            lambda: knn.MonarchLinear.from_dense(torch.nn.Linear(16, 16), 0),
            "nblocks must be a positive integer",
        ),
        (
            lambda: knn.MonarchLinear.from_dense(torch.nn.Linear(16, 16), 3),
            "nblocks=3 must divide in_features=16",
        ),
        (lambda: knn.MonarchLinear(0, 16, 4), "MonarchLinear: in_features must be a positive integer, got 0"),
        (
            lambda: knn.BlockSparseLinear(32, 32, (0, 16), density=0.5),
            "block\\[0\\] must be a positive integer",
        ),
        (
            lambda: knn.BlockSparseLinear(32, 32, (8.0, 8.0), density=0.5),
            "block\\[0\\] must be a positive int",
        ),
        (
            lambda: knn.BlockSparseLinear(32, 32, 16, density=0.5),
            "block must be \\(rows, cols\\) of one block",
        ),
        (
            lambda: knn.BlockSparseLinear(-32, 32, (16, 16), density=0.5),
            "in_features must be a positive integer",
        ),
        (
            lambda: knn.BlockSparseLinear(32, 32, (16, 16), density="0.5"),
            "density must be in \\(0, 1\\], got '0.5'",
        ),
        (
            lambda: knn.LowRankLinear(16, 16, rank=2.0),
            "rank must be a positive integer or a tuple of them, got 2.0",
        ),
        (lambda: knn.LowRankLinear(16, 16, rank=True), "rank must be a positive integer or a tuple of them"),
        (
            lambda: knn.LowRankLinear(16.0, 16, 2),
            "LowRankLinear: in_features must be a positive integer, got 16.0",
        ),
        (lambda: knn.DenseLinear(0, 4), "DenseLinear: in_features must be a positive integer, got 0"),
        (lambda: knn.DenseLinear(16, -1), "DenseLinear: out_features must be a positive integer, got -1"),
        (
            lambda: knn.ButterflyLinear(16.0),
            "ButterflyLinear: in_features must be a positive integer, got 16.0",
        ),
        (lambda: knn.FFT(0), "FFT: n must be a positive integer, got 0"),
        (lambda: knn.FFT(1), "FFT: n must be an integer from 2 to 1048576, got 1"),
        # past two DFT stages of 1024: the op's field was named, not the argument
        (lambda: knn.FFT(2**20 + 2), "FFT: n must be an integer from 2 to 1048576, got 1048578"),
        (lambda: knn.FFT(16.0), "FFT: n must be a positive integer, got 16.0"),
    ],
)
def test_a_bad_layer_argument_is_one_value_error_naming_it(make, message):
    """Each was a ZeroDivisionError, a torch or numpy error from deep inside, or (FFT) accepted until the first
    forward."""
    with pytest.raises(ValueError, match=message):
        make()


def test_a_block_sparse_layers_density_may_be_a_0d_float_tensor_as_from_dense_takes_it():
    # it was refused as "density must be in (0, 1], got tensor(0.5000)"
    made = knn.BlockSparseLinear(32, 16, (8, 4), density=torch.tensor(0.5), seed=3)
    assert made.values.shape == knn.BlockSparseLinear(32, 16, (8, 4), density=0.5, seed=3).values.shape
    assert made.values.shape[0] == 8
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got tensor\(\[0.5000\]\)"):
        knn.BlockSparseLinear(32, 16, (8, 4), density=torch.tensor([0.5]))


def test_numpy_integers_are_layer_sizes_and_a_complex_dtype_leaves_the_layer_as_it_was():
    import numpy as np

    assert knn.LowRankLinear(16, 16, rank=np.int64(4)).dims == (16, 4, 16)
    assert knn.FFT(np.int64(16)).n == 16
    layer = knn.MonarchLinear(16, 16, nblocks=4)
    before = copy.deepcopy(layer.state_dict())
    with pytest.raises(TypeError, match="dtype torch.complex64 is not one that kt's kernels take"):
        layer.to(torch.complex64)  # converted every parameter, then refused
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert layer(torch.randn(3, 16)).dtype == torch.float32


@pytest.mark.parametrize(
    "name",
    [
        "dense-3d",
        "lowrank-chain-strided",
        "blocksparse-gaps-3d",
        "monarch-down-strided",
        "sum-blocksparse-lowrank-3d",
        "fft-real",
    ],
)
def test_opcheck_passes_on_kts_custom_op_dynamic_shapes_included(name):
    """torch.library.opcheck: schema, autograd registration, fake tensors and AOT dispatch with dynamic shapes.
    The last failed for dense, lowrank, monarch and sum (`unhashable type: non-nested SymInt`: a weight's
    symbolic size reached the backward's cached op text)."""
    layer, leaf, view, _ = make_case(name)
    x = view(leaf).detach().requires_grad_(True)
    own = [] if isinstance(layer, knn.FFT) else layer._weights()  # the FFT takes no weights
    weights = [w.detach().requires_grad_(w.is_floating_point()) for w in own]
    if isinstance(layer, knn.DenseLinear):  # as its forward calls the op: rows of x, W.T a strided view
        x, weights = x.detach().reshape(-1, layer.in_features).requires_grad_(True), [weights[0].t()]
    results = torch.library.opcheck(
        torch.ops.kt.apply.default, (x, weights, layer.op_text), raise_exception=False
    )
    assert all(result == "SUCCESS" for result in results.values()), results


def test_the_custom_op_returns_the_contiguous_output_its_fake_promises_for_a_permuted_fft_input():
    """torch.fft.fft (the float32 FFT's PyTorch path) strides its output as x: with x's leading dims permuted,
    inductor stopped on "expected size 4==4, stride 32==64 at dim=1" (its fake is contiguous)."""
    layer = knn.FFT(32)
    x = torch.randn(3, 2, 4, 32, dtype=torch.complex64).transpose(1, 2)
    results = torch.library.opcheck(
        torch.ops.kt.apply.default,
        (x, [], layer.op_text),
        test_utils=("test_faketensor",),
        raise_exception=False,
    )
    assert results == {"test_faketensor": "SUCCESS"}, results
    torch.testing.assert_close(torch.ops.kt.apply(x, [], layer.op_text), torch.fft.fft(x))


@pytest.mark.parametrize(
    "spec",
    [
        {"op": "lowrank", "shape": {"batch": 8, "dims": [17, 5, 33]}},
        {"op": "dense", "shape": {"m": 8, "n": 12, "k": 17}},
        {"op": "monarch", "shape": {"batch": 8, "w1": [4, 6, 3], "w2": [8, 5, 3]}},
    ],
    ids=lambda s: s["op"],
)
def test_a_kernel_as_op_compiles_with_dynamic_shapes_forward_and_backward(spec):
    spec = kt.parse_spec({**spec, "dtype": "float32"})
    op = kt.build(spec, "pytorch").as_op()
    compiled = torch.compile(op, backend="aot_eager", fullgraph=True, dynamic=True)
    for rows in (9, 5):
        x, *weights = kt.random_args(spec, seed=rows, device="cpu")
        x = x[:rows] if spec.op == "dense" else torch.randn(rows, x.shape[-1])
        eager = [t.detach().requires_grad_() for t in (x, *weights)]
        traced = [t.detach().requires_grad_() for t in (x, *weights)]
        y = op(*eager)
        dy = torch.randn_like(y)
        torch.testing.assert_close(compiled(*traced), y)
        for ours, theirs in zip(
            torch.autograd.grad(compiled(*traced), traced, dy), torch.autograd.grad(y, eager, dy)
        ):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: knn.DenseLinear(16, 8),
        lambda: knn.LowRankLinear(16, 8, rank=3),
        lambda: knn.MonarchLinear(16, 16, nblocks=4),
        lambda: knn.Sum(
            knn.LowRankLinear(16, 16, rank=2, bias=False), knn.LowRankLinear(16, 16, rank=3, bias=False)
        ),
    ],
    ids=["dense", "lowrank", "monarch", "sum"],
)
def test_training_under_dynamic_shapes_compiles_once_not_per_batch_size_or_bucket(make):
    """The weight gradient's op names K's bucket; computing it with bit_length fixed the exact row count in the
    traced backward (a guard Eq(rows, 2)), so every batch size recompiled and fullgraph failed at the 9th. Then
    computed by comparisons in the trace, it guarded the graph on the bucket's range: each new bucket
    recompiled, and fullgraph failed at the 9th bucket (2049 rows). The bucket is now taken inside the op."""
    torch.manual_seed(0)
    layer = make()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    torch.compiler.reset()
    compiled = torch.compile(layer, backend=backend, fullgraph=True, dynamic=True)
    for rows in [*range(2, 13), 3, 20, 31, 40, 70, 150, 300]:  # buckets 16, 32, 64, 128, 256 and 512
        x = torch.randn(rows, 16, requires_grad=True)
        compiled(x).sum().backward()
        reference = x.detach().requires_grad_()
        layer(reference).sum().backward()
        torch.testing.assert_close(x.grad, reference.grad)
    assert len(graphs) <= 2, f"{len(graphs)} compiles for six buckets"


def test_a_dense_ops_fake_shape_is_the_kernels_for_a_shared_operand_and_for_sizes_off_the_spec():
    """The fake implementation gave (5, 6) where the kernel gives (3, 5, 6) (a 2-D operand shared by a batch
    of 3), and the spec's n where the kernel, which takes any sizes, used b's: compile failed or mis-shaped."""
    batched = kt.parse_spec(
        {"op": "dense", "dtype": "float32", "shape": {"m": 5, "n": 6, "k": 4, "batch": 3}}
    )
    small = kt.parse_spec({"op": "dense", "dtype": "float32", "shape": {"m": 8, "n": 4, "k": 4}})
    for spec, (a, b) in (
        (batched, (torch.randn(5, 4), torch.randn(3, 4, 6))),
        (small, (torch.randn(3, 5), torch.randn(5, 6))),
    ):
        op = kt.build(spec, "pytorch").as_op()
        assert op(a.to("meta"), b.to("meta")).shape == op(a, b).shape
        four = (
            a.reshape(1, *a.shape) if a.dim() == 3 else a.reshape(1, 1, *a.shape)
        )  # refused, as by the kernel
        with pytest.raises(ValueError, match="must be 2-D or 3-D"):
            op(four.to("meta"), b.to("meta"))
        eager = [a.clone().requires_grad_(), b.clone().requires_grad_()]
        traced = [a.clone().requires_grad_(), b.clone().requires_grad_()]
        y = op(*eager)
        compiled = torch.compile(op, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(*traced), y)
        dy = torch.randn_like(y)
        for ours, theirs in zip(
            torch.autograd.grad(compiled(*traced), traced, dy), torch.autograd.grad(y, eager, dy)
        ):
            torch.testing.assert_close(ours, theirs)


def test_apply_with_an_op_mapping_compiles_with_fullgraph():
    """apply(x, weights, op) takes a mapping or its text; torch.compile could not trace the mapping's json.dumps."""
    op = {"op": "lowrank", "dtype": "float32", "shape": {"dims": [5, 2, 6]}}
    x, f1, f2 = torch.randn(3, 5), torch.randn(5, 2), torch.randn(2, 6)
    compiled = torch.compile(
        lambda x, f1, f2: knn.apply(x, [f1, f2], op), backend="aot_eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(x, f1, f2), x @ f1 @ f2)


@pytest.mark.parametrize("interpret", [False, True])
def test_a_sum_whose_term_is_replaced_runs_the_new_terms_op(monkeypatch, interpret):
    """The op text was remade only when the dtype changed: after `sum.terms[0] = ...` the backward ran the old
    pattern's transpose on the new weights (dx 120% wrong, no error), and a new rank was refused."""
    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    layer = knn.Sum(
        knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 0], [0, 1]], bias=False),
        knn.LowRankLinear(32, 32, rank=4, bias=False),
    )
    x = torch.randn(6, 32)
    layer(x)  # the first forward makes the op text
    layer.terms[0] = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[0, 1], [1, 0]], bias=False)
    check_against_reference(layer, x, lambda t: t, 1e-4)
    layer.terms[1] = knn.LowRankLinear(32, 32, rank=8, bias=False)
    layer.zero_grad(set_to_none=True)
    check_against_reference(layer, x, lambda t: t, 1e-4)


def test_a_0d_input_is_named_not_an_index_error():
    for layer in (knn.DenseLinear(4, 4), knn.FFT(4)):
        with pytest.raises(ValueError, match="x is a 0-d tensor; expected 4 features in its last dim"):
            layer(torch.tensor(1.0))
    with pytest.raises(
        ValueError, match="x has 2 features in its last dim; expected 1 feature in its last dim"
    ):
        knn.DenseLinear(1, 2)(torch.ones(3, 2))  # "1 features" before
    kernel = kt.build(kt.parse_spec({"op": "dense", "shape": {"m": 4, "n": 4, "k": 4}, "dtype": "float32"}))
    with pytest.raises(ValueError, match="x is a 0-d tensor"):
        kernel.as_op()(torch.tensor(1.0), torch.randn(4, 4))


def test_a_compiled_sum_follows_a_replaced_term():
    torch._dynamo.reset()  # this file compiles Sum.forward often: a fresh recompile budget for the two here
    layer = knn.Sum(
        knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 0], [0, 1]], bias=False),
        knn.LowRankLinear(32, 32, rank=4, bias=False),
    )
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 32)

    def dx(module):
        leaf = x.clone().requires_grad_(True)
        module(leaf).sum().backward()
        return leaf.grad

    torch.testing.assert_close(dx(compiled), dx(layer))
    layer.terms[0] = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[0, 1], [1, 0]], bias=False)
    fresh = knn.Sum(*layer.terms)  # a new Sum makes its op from these terms (bias: no part of dx)
    torch.testing.assert_close(dx(compiled), dx(fresh))
    torch.testing.assert_close(dx(layer), dx(fresh))
    twin = copy.deepcopy(layer)  # a copy's terms tell the copy, not the original
    assert twin.terms._owner is twin and layer.terms._owner is layer
    twin.terms[1] = knn.LowRankLinear(32, 32, rank=8, bias=False)
    assert twin.op_text != layer.op_text
    torch.testing.assert_close(dx(twin), dx(knn.Sum(*twin.terms)))


def test_a_compiled_layer_follows_a_checkpoint_of_another_dtype_loaded_with_assign():
    """The op text was remade on the next forward, inside the compiled graph: torch.compile(fullgraph=True)
    then traced json.dumps and failed (Unsupported method call)."""
    torch._dynamo.reset()
    layer = knn.MonarchLinear(32, 32, 4)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 32)
    compiled(x)
    layer.load_state_dict({k: v.half() for k, v in layer.state_dict().items()}, assign=True)
    y = compiled(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, layer(x.half()))


@pytest.mark.parametrize("interpret", [False, True])
def test_layers_made_and_run_under_inference_mode(monkeypatch, interpret):
    """The butterfly kernel's block cache and the block-sparse PyTorch path's dense cache read the weights'
    version counters, which inference tensors do not have (RuntimeError)."""
    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    torch.manual_seed(3)
    x = torch.randn(8, 64, dtype=torch.float16)  # float16: the block-sparse PyTorch path's dense fallback
    half = {"dtype": torch.float16}
    for make in (
        lambda: knn.ButterflyLinear(64, **half),
        lambda: knn.BlockSparseLinear.from_dense(
            torch.nn.Linear(64, 64, **half), block=(16, 16), density=0.5
        ),
    ):
        torch.manual_seed(4)
        expected = make()(x).detach()
        with torch.inference_mode():
            torch.manual_seed(4)
            layer = make()
            for _ in range(2):  # the second call: no stale cache either
                torch.testing.assert_close(layer(x), expected)


def _two_term_sum():
    return knn.Sum(
        knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 0], [0, 1]], bias=False),
        knn.LowRankLinear(32, 32, rank=4, bias=False),
    )


def _other_pattern():
    return knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[0, 1], [1, 0]], bias=False)


@pytest.mark.parametrize(
    "how", ["setattr", "list twice", "list then item", "append then del", "autocast list"]
)
def test_a_sum_follows_its_terms_however_they_are_changed(how):
    """Only `terms[i] = t` and the list methods were counted: module surgery (`setattr(terms, "0", t)`, as a
    model walker does), a second list put in place of the terms, an item set in a plain list put there, and one
    list under autocast (whose op texts never asked) left the old op, whose backward gave dx 100-140% wrong."""
    layer = _two_term_sum()
    x = torch.randn(6, 32)
    autocast = how == "autocast list"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        layer(x)  # the first forward makes the op text
    if how == "setattr":
        setattr(layer.get_submodule("terms"), "0", _other_pattern())
    elif how == "list twice":
        layer.terms = torch.nn.ModuleList([_other_pattern(), layer.terms[1]])
        layer(x)
        layer.terms = torch.nn.ModuleList([layer.terms[1], _other_pattern()])
    elif how == "list then item":
        layer.terms = torch.nn.ModuleList(list(layer.terms))
        layer(x)
        layer.terms[0] = _other_pattern()
    elif how == "append then del":
        layer.terms.append(_other_pattern())
        layer(x)
        del layer.terms[0]
    else:
        layer.terms = torch.nn.ModuleList([_other_pattern(), layer.terms[1]])
    if autocast:  # bfloat16: compared with the float32 Sum of the same terms
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        fresh = knn.Sum(*layer.terms)
        fresh.bias = layer.bias
        torch.testing.assert_close(y.float(), fresh(x), rtol=0.05, atol=0.05)
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(leaf).float().sum().backward()
        fresh_leaf = x.clone().requires_grad_(True)
        fresh(fresh_leaf).sum().backward()
        torch.testing.assert_close(leaf.grad, fresh_leaf.grad, rtol=0.05, atol=0.05)
    else:
        layer.zero_grad(set_to_none=True)
        check_against_reference(layer, x, lambda t: t, 1e-4)


def test_a_sum_refuses_terms_it_cannot_run_and_names_terms_of_mixed_dtypes():
    layer = _two_term_sum()
    for held in (list, tuple, torch.nn.ModuleList):  # it said "has 1 term", of a Sum given its two terms
        with pytest.raises(
            TypeError, match=f"^Sum: takes its terms as arguments, Sum\\(a, b\\), not one {held.__name__}"
        ):
            knn.Sum(held(list(layer.terms)))
    with pytest.raises(ValueError, match="Sum: has 1 term; a Sum takes 2 to 8"):
        layer.terms = torch.nn.ModuleList([_other_pattern()])
    with pytest.raises(ValueError, match="Sum: term 1 maps 32 -> 16 features but term 0 maps 32 -> 32"):
        layer.terms = [_other_pattern(), knn.LowRankLinear(32, 16, rank=4, bias=False)]
    other = _two_term_sum()
    other.terms = layer.terms  # another Sum's list is copied, so both keep hearing of their own changes
    assert other.terms is not layer.terms and layer.terms._owner is layer and other.terms._owner is other
    layer.terms[1].half()
    with pytest.raises(
        TypeError, match=r"Sum: its terms hold torch.float32, torch.float16: convert the whole Sum"
    ):
        layer(torch.randn(2, 32))


def test_a_layer_given_x_of_another_dtype_names_itself_and_x():
    with pytest.raises(
        TypeError, match=r"DenseLinear: x.dtype is torch.float16, but the layer's weights are "
    ):
        knn.DenseLinear(5, 7)(torch.randn(3, 5, dtype=torch.float16))
    with pytest.raises(TypeError) as error:  # it suggested .to(torch.float64), which kt then refuses
        knn.DenseLinear(5, 7)(torch.randn(3, 5, dtype=torch.float64))
    assert str(error.value).endswith("pass x.to(torch.float32)"), error.value


@pytest.mark.parametrize(
    "layer",
    [
        lambda: knn.DenseLinear(8, 6),
        lambda: knn.MonarchLinear(8, 8, nblocks=2),
        lambda: knn.ButterflyLinear(8),
        lambda: knn.LowRankLinear(8, 6, rank=2),
    ],
)
def test_a_layer_of_real_weights_given_complex_x_is_not_told_to_cast_away_x_imag(layer):
    """The layers said "pass x.to(torch.float32)" to complex x, which drops x.imag (the kernels say not)."""
    with pytest.raises(
        TypeError, match=r"takes no complex values \(x.to\(torch.float32\) would drop x.imag\)$"
    ):
        layer()(torch.randn(3, 8, dtype=torch.complex64))


def test_a_block_sparse_layer_holds_its_pattern_after_to_empty_alone():
    """to_empty() left the index buffers holding whatever the memory held; a checkpoint loaded non-strictly
    without them then ran the kernel on those offsets (a segfault in half the runs)."""
    with torch.device("meta"):
        layer = knn.BlockSparseLinear(15, 21, block=(7, 5), mask=[[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    layer.to_empty(device="cpu")
    expected = knn.BlockSparseLinear(15, 21, block=(7, 5), mask=[[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    assert torch.equal(layer.crow_indices, expected.crow_indices)
    assert torch.equal(layer.col_indices, expected.col_indices)
    state = {k: v for k, v in expected.state_dict().items() if not k.endswith("_indices")}
    layer.load_state_dict(state, strict=False)
    x = torch.randn(4, 15)
    torch.testing.assert_close(layer(x), expected(x))


def test_a_block_sparse_checkpoint_with_one_index_of_another_pattern_is_refused():
    layer = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 0], [0, 1]])
    other = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[0, 1], [1, 0]])
    state = {k: v for k, v in other.state_dict().items() if k != "crow_indices"}
    with pytest.raises(ValueError, match="block pattern differs"):
        layer.load_state_dict(state, strict=False)
    # in a model, the error names the layer's key and what differs (it said only "differs")
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), layer)
    denser = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"\(1\.crow_indices: 3 stored blocks in 2 block-rows, where this layer's "
                       r"has 2 stored blocks in 2 block-rows\)"):  # fmt: skip
        model.load_state_dict(torch.nn.Sequential(torch.nn.Linear(32, 32), denser).state_dict())
    with pytest.raises(ValueError, match=r"its values \(3, 16, 16\) cannot be copied into this layer's \(2, 16, "
                       r"16\) \(load with assign=True"):  # fmt: skip
        model.load_state_dict(torch.nn.Sequential(torch.nn.Linear(32, 32), denser).state_dict())
    assert layer.layout == knn.BlockSparseLinear(32, 32, (16, 16), mask=[[1, 0], [0, 1]]).layout  # unchanged


def test_load_state_dict_takes_a_checkpoints_block_pattern_where_it_can():
    """A checkpoint of a block-sparse layer whose pattern from_dense chose (by the weights it pruned) did not load
    into the same model structurized afresh: refused as "another pattern", so a Trainer's resume_from_checkpoint
    failed. Now a pattern of as many stored blocks is taken, its blocks copied into the layer's own `values`
    (the parameter an optimizer holds), a Sum over the layer follows, and a compiled model runs the new op;
    with assign=True any pattern of the grid is taken (the checkpoint's tensors become the layer's)."""
    torch.manual_seed(0)
    layer = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 0, 1, 0], [0, 1, 0, 1]])
    moved = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 1, 0, 0], [0, 0, 1, 1]])
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), layer)
    values = layer.values
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 32)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x)
    saved = torch.nn.Sequential(torch.nn.Linear(32, 32), moved)
    model.load_state_dict(saved.state_dict())
    assert layer.layout == moved.layout and layer.values is values
    assert torch.equal(layer.crow_indices, moved.crow_indices) and torch.equal(
        layer.col_indices, moved.col_indices
    )
    torch.testing.assert_close(model(x), saved(x), rtol=0, atol=0)
    torch.testing.assert_close(compiled(x), saved(x))
    dense = layer.weight_bsr().to_dense()
    assert torch.equal(dense, moved.weight_bsr().to_dense()) and dense[:16, 8:16].abs().sum() > 0
    model(x).sum().backward()
    optimizer.step()  # the optimizer's parameter is the layer's: the step moves the loaded blocks
    assert not torch.equal(layer.values, moved.values)
    # a Sum over a block-sparse term follows its new pattern
    term = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 0, 1, 0], [0, 1, 0, 1]], bias=False)
    summed = knn.Sum(term, knn.LowRankLinear(32, 32, 2, bias=False))
    other = knn.Sum(
        knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[0, 1, 1, 0], [1, 0, 0, 1]], bias=False),
        knn.LowRankLinear(32, 32, 2, bias=False),
    )
    summed.load_state_dict(other.state_dict())
    assert summed.op()["terms"][0]["sparsity"]["layout"] == other.terms[0].layout
    torch.testing.assert_close(summed(x), other(x), rtol=0, atol=0)
    # assign=True: a pattern of another count of blocks, on a model built on the meta device too
    denser = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 1, 1, 0], [0, 1, 1, 1]])
    with torch.device("meta"):
        empty = knn.BlockSparseLinear(32, 32, block=(16, 8), density=0.25)
    empty.load_state_dict(denser.state_dict(), assign=True)
    assert empty.layout == denser.layout and empty.values.shape == (6, 16, 8)
    torch.testing.assert_close(empty(x), denser(x), rtol=0, atol=0)
    # a checkpoint with only the indices, or indices that are no pattern of the grid, is refused as it was
    fresh = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 0, 1, 0], [0, 1, 0, 1]])
    partial = {k: v for k, v in moved.state_dict().items() if k != "values"}
    with pytest.raises(
        ValueError, match=r"; the state_dict has not all of its crow_indices, col_indices and values; take"
    ):
        fresh.load_state_dict(partial, strict=False)
    unsorted = {**moved.state_dict(), "col_indices": torch.tensor([1, 0, 3, 2])}
    with pytest.raises(
        ValueError, match=r"^BlockSparseLinear: the state_dict's layer: col_indices must increase"
    ):
        fresh.load_state_dict(unsorted)
    assert fresh.layout == knn.BlockSparseLinear(32, 32, (16, 8), mask=[[1, 0, 1, 0], [0, 1, 0, 1]]).layout


@pytest.mark.parametrize(
    "checkpoint", ["another block shape", "values of another count", "float64", "two dtypes"]
)
def test_a_refused_assign_of_a_block_sparse_checkpoint_leaves_the_layer_as_it_was(checkpoint):
    """A checkpoint whose indices fit the layer's block grid but whose values are no blocks of the layer's (a
    (4, 8) layer's 6 x 2 grid fits a (4, 4) layer's 6 x 4 one): with assign=True its pattern was taken and
    `values` emptied before torch refused the values' shape, and the layer returned 1e37 ever after. Refused
    now before anything changes, naming the values."""
    torch.manual_seed(0)
    layer = knn.BlockSparseLinear(16, 24, block=(4, 4), density=0.5)
    x = torch.randn(3, 16)
    before, layout, values = layer(x), layer.layout, layer.values
    if checkpoint == "another block shape":
        state = knn.BlockSparseLinear(16, 24, block=(4, 8), density=0.5).state_dict()
        message = (
            r"^BlockSparseLinear: the state_dict's values \(6, 4, 8\) are not blocks of this layer's \(4, 4\)"
        )
    elif checkpoint == "values of another count":
        state = knn.BlockSparseLinear(16, 24, block=(4, 4), density=0.25).state_dict()
        state["values"] = torch.cat([state["values"], state["values"][:1]])
        message = r"values \(7, 4, 4\) hold 7 blocks where its indices give 6"
    else:  # refused by dtype after the pattern was taken: values uninitialised, indices of garbage
        state = knn.BlockSparseLinear(16, 24, block=(4, 4), density=0.25, seed=3).state_dict()
        if checkpoint == "float64":
            state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        else:
            state["values"] = state["values"].half()
        message = r"float64, which kt's kernels do not take" if checkpoint == "float64" else "would be of"
    with pytest.raises((ValueError, TypeError), match=message):
        layer.load_state_dict(state, assign=True)
    assert layer.layout == layout and layer.values is values
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


def test_a_move_takes_index_buffers_set_to_another_pattern_and_load_patterns_checks_its_input(tmp_path):
    """A move (.to, .float) wrote the index buffers again from the layer's own pattern, discarding a pattern
    that a loader had set directly (with the values of its blocks): taken now where the buffers hold a pattern
    of the grid with as many blocks as `values`; other contents (to_empty's memory) are written over as before.
    load_patterns takes a state_dict's patterns by load_pattern, meta layers too."""
    layer = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[1, 0, 1, 0], [0, 1, 0, 1]])
    other = knn.BlockSparseLinear(32, 32, block=(16, 8), mask=[[0, 1, 1, 0], [1, 0, 0, 1]])
    layer.crow_indices = other.crow_indices.clone()
    layer.col_indices = other.col_indices.clone()
    layer.values = torch.nn.Parameter(other.values.detach().clone())
    layer.bias = torch.nn.Parameter(other.bias.detach().clone())
    x = torch.randn(3, 32)
    with pytest.raises(ValueError, match="not those of its own pattern"):  # not moved: refused, as before
        layer(x)
    layer.float()
    assert layer.layout == other.layout
    torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
    with torch.no_grad():
        layer.col_indices.copy_(torch.tensor([3, 2, 1, 0]))  # no pattern (unsorted): written over
    layer.to("cpu")
    assert layer.layout == other.layout and torch.equal(layer.col_indices, other.col_indices)
    with torch.device("meta"):
        model = torch.nn.Sequential(knn.BlockSparseLinear(32, 32, block=(16, 8), density=0.5))
    assert knn.load_patterns(
        model, {"0.crow_indices": other.crow_indices, "0.col_indices": other.col_indices}
    ) == ["0"]
    assert model[0].layout == other.layout and model[0].values.is_meta
    # a checkpoint's path: a torch.save'd state_dict, and a save_pretrained folder of shards and their index
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with torch.device("meta"):
        fresh = torch.nn.Sequential(knn.BlockSparseLinear(32, 32, block=(16, 8), density=0.5))
    torch.save({f"0.{k}": v for k, v in other.state_dict().items()}, tmp_path / "whole.pt")
    assert knn.load_patterns(fresh, tmp_path / "whole.pt") == ["0"] and fresh[0].layout == other.layout
    safetensors = pytest.importorskip("safetensors.torch")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    safetensors.save_file({"0.values": other.values.detach()}, str(sharded / "a.safetensors"))
    indices = {"0.crow_indices": other.crow_indices, "0.col_indices": other.col_indices}
    safetensors.save_file(indices, str(sharded / "b.safetensors"))
    weight_map = {
        "0.values": "a.safetensors",
        "0.crow_indices": "b.safetensors",
        "0.col_indices": "b.safetensors",
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with torch.device("meta"):
        fresh = torch.nn.Sequential(knn.BlockSparseLinear(32, 32, block=(16, 8), density=0.5))
    assert knn.load_patterns(fresh, sharded) == ["0"] and fresh[0].layout == other.layout
    for args, error, words in [
        ((torch.zeros(3), {}), TypeError, r"^load_patterns: model must be an nn.Module, got Tensor$"),
        ((model, tmp_path / "none"), FileNotFoundError, r"^load_patterns: .*none is no file or folder$"),
        ((model, tmp_path), FileNotFoundError, r"holds neither model.safetensors nor model.safetensors.index"),
        ((model, tmp_path / "junk.pt"), ValueError, r"^load_patterns: .*junk.pt is no state_dict torch.load reads"),
        ((model, [1]), TypeError, r"^load_patterns: state_dict must be a mapping of names to tensors"),
        ((model, {"0.crow_indices": other.crow_indices}), ValueError,
         r"^load_patterns: the state_dict holds 0.crow_indices but not 0.col_indices$"),
        ((model, {"0.crow_indices": other.crow_indices, "0.col_indices": other.col_indices + 9}), ValueError,
         r"^load_patterns: 0: not the BSR indices of a pattern of this layer's 2x4 block grid"),
    ]:  # fmt: skip
        with pytest.raises(error, match=words):
            knn.load_patterns(*args)


def test_structurize_replaces_a_shared_linear_under_all_its_names():
    """named_modules() lists a module once: `model.b = model.a` left b the old nn.Linear, no longer shared."""
    model = torch.nn.Module()
    model.a = torch.nn.Linear(8, 8)
    model.b = model.a
    model.head = torch.nn.Linear(8, 4)
    assert knn.structurize(model, {"b": lambda linear: knn.DenseLinear.from_dense(linear)}) == ["a", "b"]
    assert isinstance(model.a, knn.DenseLinear) and model.a is model.b
    assert type(model.head) is torch.nn.Linear


def test_structurize_warns_that_a_weight_tied_to_another_module_is_no_longer_tied():
    """An output head tied to the embedding (head.weight = embed.weight) was untied without a word: the model
    doubled those weights. A layer shared under two names (one module) is no tie, and is not warned of."""
    import warnings

    model = torch.nn.Module()
    model.embed, model.head = torch.nn.Embedding(50, 32), torch.nn.Linear(32, 50, bias=False)
    model.head.weight = model.embed.weight
    model.again = model.head
    with pytest.warns(
        UserWarning, match=r"^structurize: the weight of 'head' is also 'embed.weight'; the new layer"
    ):
        knn.structurize(model, {"head": knn.DenseLinear.from_dense})
    assert model.head is model.again and model.head.weight is not model.embed.weight
    shared = torch.nn.Module()
    shared.a = torch.nn.Linear(8, 8)
    shared.b = shared.a
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knn.structurize(shared, {"a": knn.DenseLinear.from_dense})


def test_structurize_names_a_shared_bias_a_layer_without_features_and_layers_already_made():
    """An audit of structurize: a bias shared with another module (BERT's MLM decoder and cls.predictions.bias)
    was untied unsaid; a factory's nn.Sequential of the right shape was said to map "? -> ?"; a second run of
    the same rules said only "it has no nn.Linear"; MonarchLinear.from_dense at nblocks 1 doubled the weights
    without the word LowRankLinear's says."""
    model = torch.nn.Module()
    model.c, model.d = torch.nn.Linear(8, 4), torch.nn.Linear(16, 4)
    model.d.bias = model.c.bias
    with pytest.warns(
        UserWarning, match=r"^structurize: the bias of 'c' is also 'd.bias'; the new layer holds"
    ):
        knn.structurize(model, {"c": knn.DenseLinear.from_dense})
    plain = torch.nn.Sequential(torch.nn.Linear(16, 8))
    sequential = lambda linear: torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.Linear(4, 8))  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"^structurize: the layer made for '0' \(Sequential\) has no in_features and out_features "
        r"attributes, which structurize checks it by; set them \('0' maps 16 -> 8\)$",
    ):
        knn.structurize(plain, {"0": sequential})
    twice = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    rules = {"*": lambda linear: knn.LowRankLinear.from_dense(linear, rank=4)}
    assert knn.structurize(twice, rules) == ["0", "2"]
    with pytest.raises(
        ValueError,
        match=r"matches no nn.Linear of the model \('0' is already a kt.nn.LowRankLinear; '2' is already a "
        r"kt.nn.LowRankLinear\); it has no nn.Linear$",
    ):
        knn.structurize(twice, rules)
    with pytest.warns(UserWarning, match=r"^MonarchLinear.from_dense: nblocks 1 gives 512 weights, no fewer"):
        knn.MonarchLinear.from_dense(torch.nn.Linear(16, 16), 1)


@pytest.mark.parametrize("how", ["prune", "spectral_norm", "parametrizations.spectral_norm"])
def test_a_tied_weight_under_prune_or_a_norm_is_said_to_be_untied_too(how):
    """The tie check looked up `head.weight`, which prune and the norms compute afresh at each call: the
    embedding's weight, tied as head.weight_orig (or the parametrization's original), was untied unsaid."""
    import torch.nn.utils.prune  # noqa: F401 - torch.nn.utils.prune is not loaded by torch itself

    model = torch.nn.Module()
    model.embed, model.head = torch.nn.Embedding(50, 32), torch.nn.Linear(32, 50, bias=False)
    model.head.weight = model.embed.weight
    if how == "prune":
        torch.nn.utils.prune.l1_unstructured(model.head, "weight", 0.3)
    elif how == "spectral_norm":
        torch.nn.utils.spectral_norm(model.head)
    else:
        torch.nn.utils.parametrizations.spectral_norm(model.head)
    with pytest.warns(
        UserWarning, match=r"^structurize: the weight of 'head' is also 'embed.weight'; the new"
    ):
        knn.structurize(model, {"head": knn.DenseLinear.from_dense})


def test_a_rule_every_layer_of_which_an_earlier_pattern_takes_is_said_to_be_unused():
    """{"*": ..., "0": ...}: layer 0 was made by "*" and the "0" rule did nothing, without a word (a pattern that
    matches nothing is refused for that reason)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    with pytest.warns(
        UserWarning, match=r"^structurize: the rule '0' is not used: every layer it matches is "
    ):
        made = knn.structurize(
            model,
            {"*": knn.DenseLinear.from_dense, "0": lambda layer: knn.LowRankLinear.from_dense(layer, rank=2)},
        )
    assert made == ["0", "1"] and all(isinstance(m, knn.DenseLinear) for m in model)


def test_structurize_of_shared_layers_root_convolutions_and_lazy_ones():
    """An audit of structurize: a layer held under two names was refused by structurize_as and load_patterns
    ("no module of the model" for its second name); a model that is itself a 1x1 convolution or Conv1D was
    reported replaced and ran dense; a checkpoint's 0-d w1 was an IndexError; an un-run nn.LazyConv2d was called
    a subclass whose forward may differ."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    def shared(layer):
        torch.manual_seed(0)
        lin = layer()
        return nn.Sequential(lin, nn.ReLU(), lin)

    model = shared(lambda: nn.Linear(8, 8))
    assert knn.structurize(model, {"*": lambda lin: knn.LowRankLinear.from_dense(lin, 2)}) == ["0", "2"]
    fresh = shared(lambda: nn.Linear(8, 8))
    assert knn.structurize_as(fresh, model.state_dict()) == ["0", "2"] and fresh[0] is fresh[2]
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), model(x))
    sparse = shared(lambda: knn.BlockSparseLinear(32, 32, (4, 4), density=0.5, seed=1))
    other = shared(lambda: knn.BlockSparseLinear(32, 32, (4, 4), density=0.5, seed=2))
    assert not np.array_equal(other[0].mask(), sparse[0].mask())
    assert knn.load_patterns(other, sparse.state_dict()) == ["0"] and other[2] is other[0]
    assert np.array_equal(other[0].mask(), sparse[0].mask())
    for root in (nn.Conv2d(8, 16, 1), Conv1D(16, 8)):
        with pytest.raises(
            ValueError, match=rf"the model is itself a {type(root).__name__}, which cannot be"
        ):
            knn.structurize(root, {"*": lambda lin: knn.LowRankLinear.from_dense(lin, 2)})
    with pytest.raises(
        ValueError, match=r"a Monarch layer's state is w1 \(k, p, p\) and w2 \(k, s, p\), got w1 \(\)"
    ):
        knn.structurize_as(
            nn.Sequential(nn.Linear(8, 8)), {"0.w1": torch.tensor(2.0), "0.w2": torch.zeros(2, 4, 4)}
        )
    lazy = nn.Sequential(nn.LazyConv2d(8, 1))
    with pytest.raises(ValueError, match=r"is an nn.LazyConv2d not run yet, with no weight to build from"):
        knn.structurize(lazy, {"0": lambda lin: knn.LowRankLinear.from_dense(lin, 2)})


def test_a_dense_pattern_of_structurize_as_that_matches_no_layer_is_refused():
    """A typo in `dense` (`*.atn.c_proj`) read square DenseLinear weights as Conv1D ones, transposed, without a
    word: GPT-2's logits were 0.14 off."""
    state = torch.nn.Sequential(torch.nn.Linear(8, 8)).state_dict()
    with pytest.raises(
        ValueError, match=r"^structurize_as: the dense pattern 'typo' matches no nn.Linear, Conv1D"
    ):
        knn.structurize_as(torch.nn.Sequential(torch.nn.Linear(8, 8)), state, dense="typo")
    assert knn.structurize_as(torch.nn.Sequential(torch.nn.Linear(8, 8)), state, dense="0") == ["0"]


def test_a_butterfly_kernel_leaves_its_twiddles_swappable(monkeypatch):
    """The generated kernel's block cache held the twiddles weakly, and torch.utils.swap_tensors (which
    `.to()` and `load_state_dict` use for tensor subclasses, or when asked to) refuses a tensor held weakly."""
    monkeypatch.setenv("KT_INTERPRET", "1")
    layer = knn.ButterflyLinear(16)
    x = torch.randn(3, 16)
    layer(x)  # the kernel caches the blocks of these twiddles
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        state = {k: v.clone() * 0.5 for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        check_against_reference(layer, x, lambda t: t, 1e-4)  # the new twiddles' blocks, not the cached ones
        layer.half()
        assert layer.twiddles.dtype == torch.float16
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def test_a_layer_takes_no_database_row_measured_under_another_triton(tmp_path, monkeypatch):
    """A row's identity holds its Triton version (tunes measure again under another), but kt.nn's lookup did not
    ask: a database kept across a Triton upgrade made a layer run the config of a stale timing."""
    from kt.autotune.database import Database
    from kt.autotune.versions import software_versions
    from kt.codegen import family_for
    from kt.ir import op_from_spec

    spec = kt.parse_spec({"op": "dense", "dtype": "float16", "shape": {"m": 64, "n": 32, "k": 48}})
    (node,) = op_from_spec(spec).kernel_graph().kernels
    family = family_for(node.problem)
    gpu = "NVIDIA H100 80GB HBM3"

    def row(config_key, triton, runtime_ms):
        return {
            "runner": "cuda",
            "device": gpu,
            "target": "h100",
            "family": family.name,
            "family_version": family.version,
            "problem_key": node.problem.key(),
            "triton_version": triton,
            "config_key": config_key,
            "status": "ok",
            "runtime_ms": runtime_ms,
            "problem": node.problem.to_dict(),
            "config": {"block_m": 16},
        }

    path = tmp_path / "t.db"
    with Database(path) as db:
        db.insert(row("m16n16k16g1w4s2x1", software_versions()["triton"], 0.5))
        db.insert(row("m32n32k16g1w4s2x1", "3.1.0", 0.1))  # faster, under an older Triton
    monkeypatch.setenv("KT_DB", str(path))
    best = selection._best_row(node.problem, family, gpu)
    assert best is not None and best["config_key"] == "m16n16k16g1w4s2x1"
    with Database(
        path
    ) as db:  # of the rows it may take, the fastest; none of another template version or GPU
        db.insert(row("m32n16k16g1w4s2x1", software_versions()["triton"], 0.3))
        db.insert(row("m64n16k16g1w4s2x1", software_versions()["triton"], 0.4))
        db.insert({**row("m16n32k16g1w4s2x1", software_versions()["triton"], 0.05), "family_version": "0"})
        db.insert({**row("m16n64k16g1w4s2x1", software_versions()["triton"], 0.01), "device": "NVIDIA A100"})
    best = selection._best_row(node.problem, family, gpu)
    assert best is not None and best["config_key"] == "m32n16k16g1w4s2x1"


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_a_checkpoint_assigned_in_a_dtype_kt_refuses_or_in_two_dtypes_leaves_the_layer_as_it_was(name):
    """load_state_dict(..., assign=True) of a float64 checkpoint raised, but only after the layer held its
    float64 tensors, and forward then advised x.to(torch.float64), which kt refuses too. A float16 bias beside
    float32 weights was taken, and the output silently became float32."""
    layer = SMALL_LAYERS[name]()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(3, layer.in_features)
    expected = layer(x)
    double = {k: v.double() if v.is_floating_point() else v for k, v in before.items()}
    with pytest.raises(TypeError, match=r"load_state_dict\(assign=True\): .* is torch.float64, which kt's"):
        layer.load_state_dict(double, assign=True)
    mixed = {k: v.half() if k.endswith("bias") and v is not None else v for k, v in before.items()}
    if any(k.endswith("bias") for k in before):
        with pytest.raises(TypeError, match="would be of different dtypes"):
            layer.load_state_dict(mixed, assign=True)
    for key, value in layer.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.load_state_dict(double)  # copied into the layer's own tensors, in their dtype
    assert layer.dtype == torch.float32


def test_a_layer_whose_weights_were_assigned_float64_says_to_convert_the_layer_not_x():
    layer = knn.DenseLinear(5, 7)
    layer.weight = torch.nn.Parameter(layer.weight.detach().double())
    with pytest.raises(
        TypeError, match=r"which kt's kernels do not take; convert the layer \(.to\(torch.float32"
    ):
        layer(torch.randn(3, 5))


def test_module_type_of_a_half_dtype_keeps_the_block_sparse_indices_integer():
    """The legacy Module.type(dtype) casts every tensor: the index buffers became float16, and forward failed
    ("convert_indices_from_csr_to_coo_cpu" not implemented for 'Half')."""
    layer = SMALL_LAYERS["sum"]()
    halved = copy.deepcopy(layer).half()
    model = torch.nn.Sequential(layer).type(torch.float16)
    bsr = layer.terms[0]
    assert bsr.crow_indices.dtype == bsr.col_indices.dtype == torch.int64
    assert bsr.values.dtype == torch.float16 and layer.dtype == torch.float16
    x = torch.randn(3, 32, dtype=torch.float16)
    torch.testing.assert_close(model(x), halved(x), rtol=0, atol=0)


def test_from_dense_and_structurize_name_an_argument_that_is_no_module():
    """From an API fuzz: a tensor given for the nn.Linear, or a state_dict for the model, failed with an
    AttributeError on its first missing attribute."""
    weight = torch.randn(16, 16)
    for make in (
        lambda: knn.DenseLinear.from_dense(weight),
        lambda: knn.LowRankLinear.from_dense(weight, rank=2),
        lambda: knn.BlockSparseLinear.from_dense(weight, block=(8, 8), density=0.5),
        lambda: knn.MonarchLinear.from_dense(weight, nblocks=4),
        lambda: knn.ButterflyLinear.from_dense(weight),
    ):
        with pytest.raises(
            TypeError,
            match=r"^\w+Linear.from_dense: linear must be an nn.Linear or a transformers Conv1D, got Tensor$",
        ):
            make()
    with pytest.raises(TypeError, match="^structurize: model must be an nn.Module, got OrderedDict$"):
        knn.structurize(torch.nn.Linear(4, 4).state_dict(), {"*": knn.DenseLinear.from_dense})


def test_structurize_names_a_pattern_that_is_no_string():
    with pytest.raises(TypeError, match=r"^structurize: a rule's pattern must be a str .*, got int 0$"):
        knn.structurize(torch.nn.Sequential(torch.nn.Linear(4, 4)), {0: knn.DenseLinear.from_dense})


@pytest.mark.parametrize(
    "factory, says",
    [
        (knn.DenseLinear, r"is the class DenseLinear; .*: give DenseLinear.from_dense$"),
        (
            knn.LowRankLinear,
            r"is the class LowRankLinear; .*lambda l: LowRankLinear.from_dense\(l, rank=...\)$",
        ),
        (
            knn.BlockSparseLinear,
            r"is the class BlockSparseLinear; .*BlockSparseLinear.from_dense\(l, block=..., density=...\)$",
        ),
        (
            torch.nn.Linear,
            r"is the class Linear; .*: give a function that makes the layer from the nn.Linear$",
        ),
        (knn.DenseLinear(4, 4), r"is the layer DenseLinear, not a factory: give a function that takes"),
        ("DenseLinear", r"is a str, not a factory"),
        (None, r"is a NoneType, not a factory"),
    ],
)
def test_structurize_names_a_rule_whose_factory_is_a_class_or_no_function(factory, says):
    """`{"*": DenseLinear}` called DenseLinear(linear): "the rule for '0': DenseLinear.__init__() missing 1
    required positional argument: 'out_features'"; a layer already made was called on the nn.Linear."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    before = model[0]
    with pytest.raises(TypeError, match=r"^structurize: the rule for '\*' " + says):
        knn.structurize(model, {"0": knn.DenseLinear.from_dense, "*": factory})
    assert model[0] is before  # refused before any layer was made


@pytest.mark.parametrize(
    "rules, says",
    [
        (
            knn.DenseLinear.from_dense,
            r"a function that cannot take \(name, linear\): .*give \{'\*': factory\}$",
        ),
        (lambda linear: None, r"a function that cannot take \(name, linear\)"),
        (knn.DenseLinear, r"the class DenseLinear, not a function of \(name, linear\) or a mapping"),
        (knn.DenseLinear(4, 4), r"the layer DenseLinear, not a function"),
    ],
)
def test_structurize_names_a_function_rule_that_cannot_take_a_name_and_a_linear(rules, says):
    """structurize(model, DenseLinear.from_dense) said "the rule for '0': DenseLinear.from_dense() takes 2
    positional arguments but 3 were given"."""
    with pytest.raises(TypeError, match=r"^structurize: rules is " + says):
        knn.structurize(torch.nn.Sequential(torch.nn.Linear(4, 4)), rules)


def test_a_structurized_transformer_encoder_runs_kts_layers_in_eval_mode(monkeypatch):
    """PyTorch's fused inference path of nn.TransformerEncoderLayer reads linear1.weight and linear2.weight
    itself: after structurize, eval mode was an AttributeError for a low-rank layer and passed over a
    DenseLinear without a word. structurize switches that path off for the layers it changes."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    x, mask = torch.randn(2, 5, 32), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    knn.structurize(
        encoder, {"layers.*.linear*": lambda linear: knn.LowRankLinear.from_dense(linear, rank=8)}
    )
    trained = encoder(x, src_key_padding_mask=mask)  # training mode: the plain path
    encoder.eval()
    with torch.no_grad():
        inferred = encoder(x, src_key_padding_mask=mask)
    kept = ~mask
    torch.testing.assert_close(inferred[kept], trained.detach()[kept], rtol=1e-5, atol=1e-5)
    calls = []
    real = knn.DenseLinear.forward
    monkeypatch.setattr(knn.DenseLinear, "forward", lambda self, x: calls.append(1) or real(self, x))
    dense = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    knn.structurize(dense, {"linear*": knn.DenseLinear.from_dense})
    with torch.no_grad():
        dense(x)
    assert len(calls) == 2  # linear1 and linear2, each once


def test_from_dense_of_a_block_sparse_layer_on_meta_says_it_needs_the_weights():
    with torch.device("meta"):
        linear = torch.nn.Linear(32, 32)
    with pytest.raises(
        ValueError, match="on the meta device .no values to prune by.; load its weights first"
    ):
        knn.BlockSparseLinear.from_dense(linear, block=(8, 8), density=0.5)


def test_structurize_keeps_the_models_mode_and_frozen_parameters_and_warns_of_hooks():
    """A frozen model in eval mode came back with trainable layers in training mode, and hooks on a replaced
    nn.Linear were silently no longer called."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    model.requires_grad_(False).eval()
    model[2].bias.requires_grad_(True)  # a head whose bias alone trains
    model[0].register_forward_hook(lambda module, inputs, output: None)
    with pytest.warns(UserWarning, match=r"structurize: '0' has forward hooks, which stay on the replaced"):
        knn.structurize(model, {"*": lambda linear: knn.LowRankLinear.from_dense(linear, rank=4)})
    assert not any(m.training for m in model.modules())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["2.bias"]
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 16))
    knn.structurize(fresh, {"*": lambda linear: knn.DenseLinear.from_dense(linear)})
    assert fresh[0].training and all(p.requires_grad for p in fresh.parameters())


def test_each_gpu_of_a_process_gets_its_own_kernel_choice(monkeypatch):
    """kt.nn chose a layer's kernel once per device type: in a process with two GPU models (an A100 beside an
    H100), the second ran the first one's database row or artifact, compile-checked for the first one."""
    layer = knn.DenseLinear(32, 48)
    chosen = []

    def select(spec, device):
        chosen.append(device)
        return selection.Selection(spec, selection._pytorch_kernel(spec), "cost model", "stand-in")

    monkeypatch.setattr(selection, "_select", select)
    monkeypatch.setattr(selection, "_SELECTED", {})
    for device in ("cuda:0", "cuda:1", "cuda:0", "cuda:1"):
        selection.kernel_for(layer.op_text, 16, torch.device(device))
    assert chosen == [torch.device("cuda:0"), torch.device("cuda:1")]


def test_a_sum_edited_into_terms_it_cannot_run_says_so_at_its_forward():
    """`sum.terms` may be edited in steps, so the list is checked in the forward: a term with a bias, appended or
    given one afterwards, was left out of the sum silently (relative error 0.22); one term left, or a layer of
    another kind, failed in op.yaml's words (`terms[2].op`)."""
    x = torch.randn(3, 32)
    with_bias = _two_term_sum()
    with_bias.terms.append(knn.LowRankLinear(32, 32, rank=4, bias=True))
    given_bias = _two_term_sum()
    given_bias.terms[1].bias = torch.nn.Parameter(torch.zeros(32))
    one_left = _two_term_sum()
    del one_left.terms[1]
    too_many = knn.Sum(*(knn.LowRankLinear(32, 32, rank=4, bias=False) for _ in range(8)))
    too_many.terms.append(knn.LowRankLinear(32, 32, rank=4, bias=False))
    other_kind = _two_term_sum()
    other_kind.terms.append(knn.MonarchLinear(32, 32, 4, bias=False))
    other_shape = _two_term_sum()
    other_shape.terms[1] = knn.LowRankLinear(32, 48, rank=4, bias=False)
    for layer, message in [
        (
            with_bias,
            "Sum: term 2 has a bias (the Sum or its terms were changed after it was made); build the terms with bias=False",
        ),
        (given_bias, "Sum: term 1 has a bias (the Sum or its terms were changed after it was made)"),
        (
            one_left,
            "Sum: has 1 term (the Sum or its terms were changed after it was made); a Sum takes 2 to 8",
        ),
        (
            too_many,
            "Sum: has 9 terms (the Sum or its terms were changed after it was made); a Sum takes 2 to 8",
        ),
        (other_kind, "Sum: term 2 is a MonarchLinear (the Sum or its terms were changed after it was made)"),
        (
            other_shape,
            "Sum: term 1 maps 32 -> 48 features but term 0 maps 32 -> 32 (the Sum or its terms were changed after it was made)",
        ),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            layer(x)
        assert "\n" not in str(error.value)
    given_bias.terms[1].bias = None  # put right, the sum runs
    with torch.no_grad():
        terms = given_bias.terms
        expected = terms[0](x) + terms[1](x) + given_bias.bias
        torch.testing.assert_close(given_bias(x), expected, rtol=1e-4, atol=1e-4)


def test_weights_and_bias_a_layer_cannot_run_are_refused_in_its_words():
    """Assigned parameters of another shape or dtype: a BlockSparseLinear with a block too few read past the end
    of its values (its output changed with the memory beyond them), one too many was dropped silently; a
    DenseLinear's weight of another out_features failed in a reshape; a float64 bias made a float64 output."""
    x = torch.randn(5, 32)
    sparse = knn.BlockSparseLinear(32, 16, block=(8, 8), density=0.5, bias=False)
    nnz = sparse.values.shape[0]
    for count in (nnz - 1, nnz + 1):
        sparse.values = torch.nn.Parameter(torch.randn(count, 8, 8))
        with pytest.raises(ValueError, match=re.escape(f"values must have shape ({nnz}, 8, 8) (a 8x8 block")):
            sparse(x)
    dense = knn.DenseLinear(24, 20)
    dense.weight = torch.nn.Parameter(torch.randn(30, 24))
    with pytest.raises(
        ValueError, match=re.escape("weight must have shape (out_features, in_features) = (20, 24)")
    ):
        dense(torch.randn(5, 24))
    for dtype in (torch.float64, torch.float16):
        layer = knn.LowRankLinear(24, 20, rank=4)
        layer.bias = torch.nn.Parameter(torch.zeros(20, dtype=dtype))
        with pytest.raises(TypeError, match=f"LowRankLinear: bias is {dtype}, but the layer's weights are "):
            layer(torch.randn(5, 24))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # both cast to autocast's dtype: no promotion
            assert layer(torch.randn(5, 24)).dtype == torch.bfloat16


def test_fft_dtype_errors_and_apply_arguments_are_named_in_the_callers_words():
    """kt.nn.FFT's wrong dtypes were told in its kernel's words ("kernel: ... this kernel was built for"), where
    the other layers name themselves; kt.nn.apply with an op without its shape raised a bare KeyError, and with
    one weight tensor in place of the list took the tensor's rows as 33 weights."""
    with pytest.raises(
        TypeError, match=r"^FFT: x.dtype is torch.float32, but this layer takes torch.complex64"
    ):
        knn.FFT(64)(torch.randn(4, 64))
    # complex x: the hint was x.to(torch.float32), which drops x.imag (torch only warns; max error 12.3)
    z = torch.randn(4, 64, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"^FFT: x.dtype is torch.complex64, but this layer takes torch.float32 "
                       r"\(real input\) and no complex values \(x.to\(torch.float32\) would drop x.imag\); for "
                       r"complex x use FFT\(n\)$"):  # fmt: skip
        knn.FFT(64, input="real")(z)
    with pytest.raises(TypeError, match=r"\(real input\) and no complex values .*; for complex x use FFT\(n, "
                       r"dtype=torch.float16\), planar$"):  # fmt: skip
        knn.FFT(64, dtype=torch.float16, input="real")(z)
    with pytest.raises(TypeError, match=r"\(planar complex: .*\); pass torch.stack\(\[x.real, x.imag\]\)"
                       r".to\(torch.float16\)$"):  # fmt: skip
        knn.FFT(64, dtype=torch.float16)(z)
    with pytest.raises(TypeError, match=r"^FFT: x.dtype is torch.float32, .* torch.float16 \(planar complex"):
        knn.FFT(64, dtype=torch.float16)(torch.randn(2, 4, 64))
    dense = {"op": "dense", "dtype": "float32", "shape": {"n": 48, "k": 32}}
    x, b = torch.randn(5, 32), torch.randn(32, 48)
    with pytest.raises(ValueError, match=r"^kt.nn.apply: op: shape: is required"):
        knn.apply(x, [b], {"op": "dense", "dtype": "float32"})
    with pytest.raises(ValueError, match=r"^kt.nn.apply: op: op: 'fancy' .* allowed: dense"):
        knn.apply(x, [], {"op": "fancy"})
    with pytest.raises(
        TypeError, match=r"^kt.nn.apply: weights must be a list .* got one tensor; pass \[w\]$"
    ):
        knn.apply(x, b, dense)
    with pytest.raises(TypeError, match=r"^kt.nn.apply: the dense op takes 1 weight tensor\(s\), got 2$"):
        knn.apply(x, [b, b], dense)
    bsr = {"op": "blocksparse", "dtype": "float32", "shape": {"in": 32, "out": 16},
           "sparsity": {"block": [8, 8], "pattern": "diagonal"}}  # fmt: skip
    with pytest.raises(TypeError, match=r"takes 3 weight tensor\(s\) \(a BSR weight as its crow_indices"):
        knn.apply(x, [b], bsr)
    torch.testing.assert_close(knn.apply(x, [b], dense), x @ b, rtol=1e-5, atol=1e-5)


def test_a_wrong_weight_count_is_refused_in_kts_words_under_torch_compile_and_by_the_op_itself():
    """kt.nn.apply counted the weights only eagerly: under torch.compile four tensors for a block-sparse op said
    "_check_pattern() got multiple values for argument 'read'", two "missing 1 required positional argument",
    and a Monarch op's extra tensor went on to the kernel; torch.ops.kt.apply, called directly, counted none."""
    layer = knn.BlockSparseLinear(32, 32, (16, 16), density=1.0, bias=False)
    parts = [layer.crow_indices, layer.col_indices, layer.values]
    monarch = knn.MonarchLinear(16, 16, 4, bias=False)
    cases = [
        (
            torch.randn(4, 32),
            layer.op_text,
            [*parts, layer.values],
            "the blocksparse op takes 3 weight tensor",
        ),
        (torch.randn(4, 32), layer.op_text, parts[:2], "the blocksparse op takes 3 weight tensor"),
        (
            torch.randn(3, 16),
            monarch.op_text,
            [monarch.w1, monarch.w2, torch.zeros(3, 16)],
            "the monarch op takes 2",
        ),
    ]
    for x, text, weights, says in cases:
        with pytest.raises(TypeError, match=rf"^kt.nn.apply: {says}"):
            torch.ops.kt.apply(x, [w.detach() for w in weights], text)
        compiled = torch.compile(
            lambda x, *w, t=text: knn.apply(x, list(w), t), backend="eager", fullgraph=True
        )
        with pytest.raises(Exception, match=rf"TypeError\('kt.nn.apply: {says}"):
            compiled(x, *weights)
        torch._dynamo.reset()


def test_vmap_of_a_block_sparse_layer_runs_the_layers_own_selection():
    """vmap over x of a block-sparse layer made its call under a marked op text (kt's derived indices), which
    selected the layer's kernel a second time (on a GPU: a second choice and log line for one op)."""
    from kt.nn import selection

    layer = knn.BlockSparseLinear(32, 16, (8, 8), density=0.5, seed=11)
    x = torch.randn(3, 5, 32)
    layer(x[0])
    keys = [key for key in selection._SELECTED if key[0] == layer.op_text]
    before = len(selection._SELECTED)
    ys = torch.func.vmap(layer)(x)
    assert keys and len(selection._SELECTED) == before
    torch.testing.assert_close(ys, torch.stack([layer(xi) for xi in x]), rtol=1e-5, atol=1e-5)


def test_a_layer_takes_more_rows_than_a_spec_may_have_as_nn_linear_does():
    """DenseLinear(16, 16) on 16,777,217 rows (CPU) failed with "shape.m: must be an integer from 1 to 16777216,
    got 33554432": the bucket's spec, a field and a number the user never wrote. The bucket is now the largest a
    spec can have (the kernel takes any rows); an op refused at any row count keeps its own error."""
    from kt.errors import SpecError
    from kt.nn.selection import bucket_spec, kernel_for

    dense = knn.DenseLinear(16, 16, dtype=torch.float16)
    assert bucket_spec(dense.op(), 16_777_217).shape.m == 16_777_216
    wide = knn.DenseLinear(
        8192, 8192, dtype=torch.float16, device="meta"
    )  # x and y 32 GiB: 128.1 at the bucket
    assert bucket_spec(wide.op(), 2_097_153).shape.m == 2_097_152
    low = knn.LowRankLinear(16, 16, rank=4)
    assert bucket_spec(low.op(), 16_777_217).shape.batch == 16_777_216
    kernel = kernel_for(dense.op_text, 16_777_217, torch.device("cpu"))
    x = torch.randn(40, 16, dtype=torch.float16)  # the kernel chosen for them runs any rows
    torch.testing.assert_close(kernel(x, dense.weight.detach().t()), x @ dense.weight.detach().t())
    with pytest.raises(SpecError, match="dtype"):
        bucket_spec({**dense.op(), "dtype": "float8"}, 16_777_217)


def test_torchscript_is_refused_in_one_line_naming_what_works():
    """torch.jit.trace failed with "bucket: rows must be an integer, got Tensor" (kt's internals) and
    torch.jit.script with a dump of TorchScript's compile error; the README says TorchScript is unsupported."""
    for layer, x in (
        (knn.MonarchLinear(64, 64, nblocks=4), torch.randn(8, 64)),
        (knn.FFT(16), torch.randn(8, 16, dtype=torch.complex64)),
    ):
        with pytest.raises(
            TypeError,
            match=r"^kt.nn: TorchScript \(torch.jit.script, torch.jit.trace, torch.onnx.export\(\.\.\., dynamo=False\)\) is not",
        ):
            torch.jit.trace(layer, (x,))
        with pytest.raises(TypeError, match=rf"^{type(layer).__name__}: TorchScript .* torch.compile and"):
            torch.jit.script(torch.nn.Sequential(layer))


def test_a_forked_child_names_its_pins_apart_from_its_parents():
    """The pins' random prefix was drawn at import: a forked child continued the parent's prefix and counter,
    so parent and child named two kernels alike (a program exported in one ran the other's kernel)."""
    import types

    made = types.SimpleNamespace(where="kt.build", kernel=None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, selection.pin(made).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    parent = selection.pin(made)
    assert child.split(".")[0] != parent.split(".")[0], (child, parent)
    selection._PINNED.pop(parent)


def test_importing_kt_nn_leaves_dynamo_unimported_and_layers_and_build_run_where_kts_cache_cannot_be_written(
    tmp_path,
):
    """Two checks of one fresh process (each a second Python and torch import of its own before):
    `import kt.nn` imported torch._dynamo for one decorator (a second or more of each import, 2.4 s of 5.2 s
    on a loaded 2-core machine); kt now sets the mark that decorator sets, which this checks torch still uses.
    A read-only cache (here: a path under a file, which root cannot write either): kt.load fell back to a
    temporary file, but kt.nn's layers and kt.build failed with a 20-frame OSError traceback, and each
    unpickled kernel left a /tmp/kt-kernel-* folder of its own."""
    (tmp_path / "file").write_text("")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = (
        "import pickle, sys, torch, kt, kt.nn\n"
        "from kt.nn.functional import op_text\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
        "assert op_text._dynamo_marked_constant is True\n"
        "marked = torch.compiler.assume_constant_result(lambda: 0)\n"
        "assert getattr(marked, '_dynamo_marked_constant', None) is True, vars(marked)\n"
        "layer = kt.nn.DenseLinear(8, 4)\n"
        "x = torch.randn(3, 8)\n"
        "assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)\n"
        "spec = {'op': 'dense', 'dtype': 'float32', 'shape': {'m': 5, 'n': 6, 'k': 7}}\n"
        "kernel = kt.build(spec, device='h100')\n"
        "a, b = kt.random_args(spec, device='cpu')\n"
        "for k in (kernel, pickle.loads(pickle.dumps(kernel)), pickle.loads(pickle.dumps(kernel))):\n"
        "    assert torch.allclose(k(a, b), a @ b, atol=1e-4)\n"
    )
    env = {**os.environ, "KT_CACHE_DIR": str(tmp_path / "file" / "cache"), "TMPDIR": str(temporary)}
    env.pop("KT_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in temporary.iterdir() if p.name.startswith("kt-kernel-")] == []  # removed at exit


def test_a_second_reverse_derivative_through_block_sparse_weight_gradients_names_the_way_that_works():
    """A penalty on dL/dvalues of a block-sparse layer differentiates its weight-gradient op again, which has no
    reverse-mode gradient (README): the error named kt's internal op only. It names what it is and
    torch.func.hessian, which computes it."""
    layer = knn.BlockSparseLinear(12, 8, (4, 4), density=0.5, seed=3)
    (grad,) = torch.autograd.grad(layer(torch.randn(3, 12)).square().sum(), [layer.values], create_graph=True)
    with pytest.raises(RuntimeError, match=r"block-sparse weight's gradient .*torch\.func\.hessian"):
        grad.square().sum().backward()


def test_threads_making_a_layers_first_call_at_once_select_its_kernel_once(monkeypatch):
    """Each of four threads selected (and logged) the kernel of a layer's first call: on a GPU each would
    compile-check the fallback's configs. One selects; the others take its choice."""
    import threading

    chosen = []
    original = selection._log
    monkeypatch.setattr(selection, "_log", lambda selected: chosen.append(selected) or original(selected))
    layer = knn.DenseLinear(24, 40)
    x = torch.randn(13, 24)
    barrier, out = threading.Barrier(4), {}

    def first_call(i):
        barrier.wait()
        with torch.no_grad():
            out[i] = layer(x)

    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reference = F.linear(x, layer.weight, layer.bias)
    assert all(torch.equal(out[i], out[0]) for i in range(4)) and torch.allclose(out[0], reference)
    assert len(chosen) == 1


def test_a_dense_layers_parameters_are_in_nn_linears_order_so_an_optimizers_state_carries_over():
    """DenseLinear registered its bias first: Adam's state_dict saved for the nn.Linear model that structurize
    replaced (matched by position on load) gave the bias the weight's moments, and the next step failed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(5, 8)
    model(x).square().sum().backward()
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    twin = copy.deepcopy(model)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=0.01)
    twin_optimizer.load_state_dict(copy.deepcopy(saved))  # (a loaded state's tensors are the dict's own)

    knn.structurize(model, lambda name, linear: knn.DenseLinear.from_dense(linear))
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in twin.named_parameters()]
    resumed = torch.optim.Adam(model.parameters(), lr=0.01)
    resumed.load_state_dict(copy.deepcopy(saved))
    for net, opt in ((model, resumed), (twin, twin_optimizer)):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    for (name, mine), (_, theirs) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)


@pytest.mark.parametrize(
    "make, name, shape, says",
    [
        (lambda: knn.LowRankLinear(24, 16, rank=4), "factors.0", (24, 5), "LowRankLinear: factors.0 must have shape (24, 4)"),
        (lambda: knn.LowRankLinear(24, 16, rank=4), "bias", (15,), "LowRankLinear: bias must have shape (16,)"),
        (lambda: knn.MonarchLinear(16, 16, nblocks=4), "w2", (4, 4, 3), "MonarchLinear: w2 must have shape (4, 4, 4)"),
        (lambda: knn.ButterflyLinear(16), "twiddles", (4, 8, 2, 3), "ButterflyLinear: twiddles must have shape (4, 8, 2, 2)"),
        (lambda: knn.Sum(knn.LowRankLinear(16, 16, rank=2, bias=False), knn.LowRankLinear(16, 16, rank=3, bias=False)),
         "terms.1.factors.1", (4, 16), "LowRankLinear: factors.1 must have shape (3, 16)"),
    ],
)  # fmt: skip
def test_a_parameter_of_another_shape_through_functional_call_is_named_by_the_layer(make, name, shape, says):
    """torch.func.functional_call can pass any tensor for a parameter: the kernel's own check named its argument
    ("kernel: f1 must have shape (64, 8)"), not the layer's factors.0, and a bias of another shape failed in
    torch's broadcast ("The size of tensor a (32) must match ...")."""
    layer = make()
    params = dict(layer.named_parameters())
    params[name] = torch.randn(*shape)
    x = torch.randn(3, layer.in_features)
    with pytest.raises(ValueError) as caught:
        torch.func.functional_call(layer, params, (x,))
    assert str(caught.value) == f"{says}, got {shape}"
    assert torch.func.functional_call(layer, dict(layer.named_parameters()), (x,)).shape == (
        3,
        layer.out_features,
    )


def _first_call_in_a_child(layer, x):
    # One thread, as PyTorch's DataLoader gives its workers: a child forked after the parent ran any MKL matmul
    # (torch 2.13's CPU build, OpenMP by libgomp) hung in its first one, on this AMD EPYC even a 3x64 @ 64x64
    # (2026-12-06), with no kt code involved; what this test is about is kt's selection lock.
    torch.set_num_threads(1)
    return layer(x).shape


def test_a_child_forked_while_another_thread_selects_a_kernel_makes_its_own_first_call(monkeypatch):
    """A fork (a DataLoader worker, a fork Pool) while another thread selected a layer's kernel left the child
    with that key's selection lock held by a thread it does not have: the child's first call of the layer
    waited forever. Here the other thread's selection of the same layer is held up inside the lock (as an
    interpreted artifact's import or a GPU's compile checks hold it), and the child calls the layer."""
    import multiprocessing
    import os
    import threading

    from kt.nn import selection

    layer = knn.LowRankLinear(24, 16, rank=4)  # never called before: its key's first selection
    x = torch.randn(3, 24)
    parent, held, release = os.getpid(), threading.Event(), threading.Event()
    real = selection._pytorch_kernel  # what a first call on CPU tensors selects, inside its key's lock

    def slow_in_the_parent(*args, **kwargs):  # the child inherits the patch, and passes through
        if os.getpid() == parent:
            held.set()
            release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "_pytorch_kernel", slow_in_the_parent)
    thread = threading.Thread(target=layer, args=(x,))
    thread.start()
    try:
        assert held.wait(30), "the thread did not reach the selection"
        free = [lock.acquire(blocking=False) for lock in selection._SELECTING_KEY.values()]
        assert not all(free), "no selection lock is held across the fork"
        for lock, taken in zip(selection._SELECTING_KEY.values(), free):
            if taken:
                lock.release()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_first_call_in_a_child, (layer, x))
            try:
                assert child.get(timeout=60) == (3, 16)
            finally:
                pool.terminate()
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize(
    "make, error, says",
    [
        (lambda: knn.DenseLinear(8, 8, dtype="float16"), TypeError,
         "DenseLinear: dtype must be a torch.dtype (torch.float16, torch.bfloat16, torch.float32), got 'float16' (str)"),
        (lambda: knn.DenseLinear(8, 8, dtype=torch.float64), TypeError,
         "DenseLinear: dtype torch.float64 is not one that kt's kernels take; allowed: torch.float16, "
         "torch.bfloat16, torch.float32"),
        (lambda: knn.FFT(8, dtype="float16"), ValueError,
         "FFT: dtype must be torch.float32 or torch.float16, got 'float16' (str)"),
        (lambda: knn.FFT(8, input=np.array([1, 2])), ValueError,
         "FFT: input must be 'complex' or 'real', got array([1, 2])"),
        (lambda: knn.LowRankLinear.from_dense(torch.nn.Linear(8, 8), rank=9), ValueError,
         "LowRankLinear.from_dense: rank=9 must be an integer in 1..8 for a 8x8 weight"),
        (lambda: knn.BlockSparseLinear.from_dense(torch.nn.Linear(8, 8), block=(3, 3), density=0.5), ValueError,
         "BlockSparseLinear.from_dense: block 3x3 does not divide the weight shape (8, 8)"),
        (lambda: knn.DenseLinear(2**25, 1), ValueError, "DenseLinear: in_features must be at most 16777216, got 33554432"),
        (lambda: knn.DenseLinear(np.array([[8, 8], [8, 8]]), 8), ValueError,
         "DenseLinear: in_features must be a positive integer, got array([[8, 8], [8, 8]])"),
        (lambda: knn.Sum(1, 2), ValueError, "Sum: term 0 is an int; a Sum takes BlockSparseLinear / LowRankLinear terms"),
        (lambda: knn.use_artifacts(["a"]), TypeError,
         "kt.nn.use_artifacts: each folder must be a path (str or os.PathLike), got list; pass folders as separate "
         "arguments, use_artifacts(*folders)"),
    ],
)  # fmt: skip
def test_a_layers_bad_argument_is_one_line_naming_it_and_what_is_allowed(make, error, says):
    """A dtype given by name was refused as "dtype float16 is not one that kt's kernels take; use float16, ...";
    from_dense named kt.ir's functions (truncated_svd, prune_blocks); 2**25 features allocated 8 GiB before any
    check, 10**30 gave torch's TypeError; a numpy array printed over several lines; "a int"; a list of folders
    gave os.fspath's TypeError."""
    with pytest.raises(error) as caught:
        make()
    assert str(caught.value) == says


def _linear(poison: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.nn.Linear:
    linear = torch.nn.Linear(8, 8).to(dtype)
    if poison:
        with torch.no_grad():
            linear.weight[1, 2] = poison
    return linear


@pytest.mark.parametrize(
    "make, error, says",
    [
        # an SVD of a weight holding inf made every factor NaN without a word; nan failed in torch's linalg
        (lambda: knn.LowRankLinear.from_dense(_linear(math.inf), 2), ValueError,
         "LowRankLinear.from_dense: linear's weight holds 1 non-finite value (inf at [1, 2]); a projection of it "
         "needs finite values: fix or reinitialise them first"),
        (lambda: knn.MonarchLinear.from_dense(_linear(math.inf), 2), ValueError, "MonarchLinear.from_dense: linear"),
        (lambda: knn.ButterflyLinear.from_dense(_linear(math.nan)), ValueError, "ButterflyLinear.from_dense: linear"),
        (lambda: knn.Sum.from_dense(_linear(math.nan), (2, 2), 0.5, 2), ValueError, "Sum.from_dense: linear's"),
        (lambda: knn.BlockSparseLinear.from_dense(_linear(-math.inf), (2, 2), 0.5), ValueError, "(-inf at [1, 2])"),
        # named the dtype the caller never passed, and Sum's as BlockSparseLinear's (after its SVD rounds)
        (lambda: knn.Sum.from_dense(_linear(dtype=torch.float64), (2, 2), 0.5, 2), TypeError,
         "Sum.from_dense: linear's weight is torch.float64, which kt's kernels do not take (allowed: torch.float16, "
         "torch.bfloat16, torch.float32); convert the layer first, e.g. linear.float()"),
        (lambda: knn.structurize_as(None, {}), TypeError, "structurize_as: model must be an nn.Module, got NoneType"),
        (lambda: knn.structurize_as(torch.nn.Linear(8, 8), {}, dense=3), TypeError,
         "structurize_as: dense must be a glob pattern or a sequence of them, got 3"),
        (lambda: knn.structurize_as(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                    {"0.factors.0": torch.randn(8), "0.factors.1": torch.randn(2, 8)}), ValueError,
         "structurize_as: '0': a low-rank layer's state is factors.0, factors.1, ..., each 2-D, got factors.0 (8,), "
         "factors.1 (2, 8)"),
        (lambda: knn.Pointwise(knn.LowRankLinear(8, 8, 2), 2.0), ValueError,
         "Pointwise: dims must be 1, 2 or 3 (a Conv1d's, Conv2d's or Conv3d's), got 2.0"),
        (lambda: knn.apply(torch.randn(2, 8), None, "{}"), TypeError,
         "kt.nn.apply: weights must be a list of the op's weight tensors, got NoneType"),
        (lambda: knn.apply(torch.randn(2, 8), [torch.randn(8, 8)], {"op": "dense", "dtype": torch.float32}),
         TypeError, "kt.nn.apply: op must be an op.yaml mapping of text, numbers and lists (a dtype by name: "
         "'float16'), or its JSON text; Object of type dtype is not JSON serializable"),
        # the factors were made first: torch's overflow TypeError, or 512 GiB asked of the allocator
        (lambda: knn.LowRankLinear(4, 3, 10**30), ValueError,
         "LowRankLinear: rank must be at most 16777216, got 1000000000000000000000000000000"),
        (lambda: knn.LowRankLinear(4096, 4096, (8, 2**25)), ValueError,
         "LowRankLinear: rank[1] must be at most 16777216, got 33554432"),
        (lambda: knn.LowRankLinear(4, 3, (2,) * 8), ValueError,
         "LowRankLinear: rank takes at most 7 ranks (a chain of 2 to 8 factors), got 8"),
        (lambda: knn.BlockSparseLinear(8, 4, (2, 2), mask=[[1, 0], [1]]), ValueError,
         "BlockSparseLinear: mask must be a 2-D array of the block grid (rows of equal length), got rows of "
         "different lengths"),
        (lambda: knn.BlockSparseLinear(8, 4, (2, 2), mask=torch.ones(4, 2).to_sparse()), ValueError,
         "BlockSparseLinear: mask must be a dense tensor or array of the block grid, got torch.sparse_coo (a "
         "sparse one: pass mask.to_dense())"),
        (lambda: knn.BlockSparseLinear(8, 4, (2, 2), mask=[[1, None], [1, 0], [1, 1], [0, 1]]), ValueError,
         "BlockSparseLinear: mask must hold booleans or 0/1 numbers (1: the block is kept), got object values "
         "such as None"),
        (lambda: knn.BlockSparseLinear(8, 4, (2, 2), mask=[[1, 0], [1, 0], [1, 1], [0, 1]], seed=5), ValueError,
         "BlockSparseLinear: seed draws a density's pattern; a mask gives it, got seed=5"),
        (lambda: selection.bucket(-5), ValueError, "bucket: rows must be 0 or more, got -5"),
    ],
)  # fmt: skip
def test_what_an_audit_of_kt_nn_found_is_one_line_naming_the_argument(make, error, says):
    """What a read-only audit of kt.nn's arguments found: tracebacks from inside torch, numpy or json that named
    nothing the caller passed, and layers made silently of NaN."""
    with pytest.raises(error) as caught:
        make()
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_dense_copy_of_a_weight_holding_inf_is_taken_as_nn_linear_holds_it():
    layer = knn.DenseLinear.from_dense(_linear(math.inf))
    assert layer.weight[1, 2] == math.inf


class Scaled(torch.nn.Linear):
    """A subclass of nn.Linear with a forward of its own (as an adapter's), which structurize leaves alone."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_structurize_refuses_a_torchscript_model_and_says_what_its_patterns_left_alone():
    """A scripted or traced model said "the pattern '*' matches no nn.Linear of the model; it has no nn.Linear".
    An nn.Linear subclass that a pattern matched (one with its own forward; an attention's out_proj) was left
    dense without a word while the pattern matched other layers."""
    import warnings

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    for scripted in (torch.jit.script(model), torch.jit.trace(model, torch.randn(2, 8))):
        with pytest.raises(
            TypeError, match=r"^structurize: the model is a TorchScript module \(\w+, from torch"
        ):
            knn.structurize(scripted, {"*": knn.DenseLinear.from_dense})
    inside = torch.nn.Sequential(
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 8))), torch.nn.Linear(8, 8)
    )
    with pytest.raises(TypeError, match=r"^structurize: the model's '0' is a TorchScript module"):
        knn.structurize(inside, {"*": knn.DenseLinear.from_dense})
    scaled = torch.nn.Sequential(Scaled(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    with pytest.warns(UserWarning, match=r"^structurize: left alone, though a rule's pattern matches: '0' is a "
                      r"Scaled: a subclass of nn.Linear"):  # fmt: skip
        assert knn.structurize(scaled, {"*": knn.DenseLinear.from_dense}) == ["2"]
    encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    with pytest.warns(UserWarning, match=r"'self_attn.out_proj' is an nn.MultiheadAttention's out_proj, whose "
                      r"weight the attention reads itself without calling it \(as it does its packed in_proj"):  # fmt: skip
        knn.structurize(encoder, {"*": knn.DenseLinear.from_dense})
    again = torch.nn.Sequential(Scaled(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    with warnings.catch_warnings():  # a pattern that does not match the subclass says nothing of it
        warnings.simplefilter("error")
        knn.structurize(again, {"2": knn.DenseLinear.from_dense})


def test_structurize_warns_when_the_names_of_one_layer_match_different_rules():
    """One nn.Linear held as `a` and `b` is made by the rule of its first name: an explicit rule for `b` after
    `*` matched `a` was passed over without a word."""
    import warnings

    model = torch.nn.Module()
    model.a = torch.nn.Linear(8, 8)
    model.b = model.a
    rules = {
        "b": lambda linear: knn.LowRankLinear.from_dense(linear, rank=2),
        "*": knn.DenseLinear.from_dense,
    }
    with pytest.warns(UserWarning, match=r"^structurize: 'a' and 'b' are one layer; it is made by the rule '\*' "
                      r"for 'a', and the rule 'b' \(for 'b'\) is not used"):  # fmt: skip
        knn.structurize(model, rules)
    assert isinstance(model.b, knn.DenseLinear) and model.a is model.b
    # a rule that keeps the layer (None) passes it to the next name's: that rule made it, and nothing is said
    kept = torch.nn.Module()
    kept.a = torch.nn.Linear(8, 8)
    kept.b = kept.a
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knn.structurize(kept, {"a": lambda linear: None, "b": knn.DenseLinear.from_dense})
    assert isinstance(kept.a, knn.DenseLinear)
    # and a structurize that fails (the model left as it was) warns of nothing
    failing = torch.nn.Module()
    failing.a = torch.nn.Linear(8, 8)
    failing.b = failing.a
    failing.attention = torch.nn.MultiheadAttention(8, 2)

    def refuse(linear):
        raise ValueError("no")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="the rule for 'a': no"):
            knn.structurize(failing, {"a": refuse, "*": knn.DenseLinear.from_dense})
    assert type(failing.a) is torch.nn.Linear


def test_structurize_of_a_weight_normed_linear_says_the_norm_split_is_gone():
    """torch.nn.utils.weight_norm's forward pre-hook was named as a hook to register on the new layer, which
    cannot take it (it reads weight_g and weight_v); the layer was made from the weight as last computed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        model = torch.nn.Sequential(torch.nn.utils.weight_norm(torch.nn.Linear(8, 8)))
    x = torch.randn(3, 8)
    expected = model(x)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        knn.structurize(model, {"*": knn.DenseLinear.from_dense})
    texts = [str(w.message) for w in said if str(w.message).startswith("structurize")]
    assert texts == [
        "structurize: '0' was under torch.nn.utils.weight_norm; the new layer was made from its weight "
        "(weight_g * weight_v / ||weight_v||) and trains it directly, without the norm split"
    ]
    torch.testing.assert_close(model(x), expected)
    # its weight is computed at each forward only: the layer was made from the last forward's (stale after a
    # step) and, after a forward under torch.no_grad(), frozen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stepped = torch.nn.Sequential(torch.nn.utils.weight_norm(torch.nn.Linear(8, 8)))
    with torch.no_grad():
        stepped(x)
        stepped[0].weight_g.mul_(2)
    g, v, bias = stepped[0].weight_g, stepped[0].weight_v, stepped[0].bias
    now = torch.nn.functional.linear(x, g * v / v.norm(dim=1, keepdim=True), bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        knn.structurize(stepped, {"*": knn.DenseLinear.from_dense})
    torch.testing.assert_close(stepped(x), now)
    assert stepped[0].weight.requires_grad and stepped[0].bias.requires_grad


def test_structurize_replaces_a_parametrized_linear_with_the_weight_it_computes():
    """torch.nn.utils.parametrize (parametrizations.weight_norm, which replaced the deprecated weight_norm,
    orthogonal, a user's own) makes a subclass of nn.Linear, ParametrizedLinear, that computes nn.Linear's math:
    structurize left it alone ("a subclass of nn.Linear, whose forward may differ"), so a weight-normed model
    stayed dense. Now it is replaced from the weights as they compute now (after an optimizer step), freezing
    follows the originals, and a warning says the parametrizations are gone."""
    import warnings

    from torch.nn.utils import parametrizations, parametrize

    class Halved(torch.nn.Module):
        def forward(self, b):
            return b / 2

    torch.manual_seed(7)
    model = torch.nn.Sequential(
        parametrizations.weight_norm(torch.nn.Linear(8, 8)),
        torch.nn.Tanh(),
        parametrizations.orthogonal(torch.nn.Linear(8, 8)),
        torch.nn.Linear(8, 4),
    )
    parametrize.register_parametrization(model[0], "bias", Halved())
    parametrize.register_parametrization(model[0], "bias", Halved())  # two on one tensor
    model[2].parametrizations.weight.original.requires_grad_(False)
    x = torch.randn(3, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).square().sum().backward()
    optimizer.step()  # the originals moved; the parametrized tensors follow at their next read
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert knn.structurize(model, {"*": knn.DenseLinear.from_dense}) == ["0", "2", "3"]
    assert [type(m).__name__ for m in model] == ["DenseLinear", "Tanh", "DenseLinear", "DenseLinear"]
    assert [str(w.message) for w in said] == [
        "structurize: '0' was under torch.nn.utils.parametrize (WeightNorm); the new layer was made from the "
        "weight it computes and trains it directly, without it",
        "structurize: '0' was under torch.nn.utils.parametrize (Halved, Halved); the new layer was made from the "
        "bias they compute and trains it directly, without them",
        "structurize: '2' was under torch.nn.utils.parametrize (Orthogonal); the new layer was made from the "
        "weight it computes and trains it directly, without it",
    ]
    torch.testing.assert_close(model(x), expected)
    assert model[0].weight.requires_grad and model[0].bias.requires_grad
    assert not model[2].weight.requires_grad and model[2].bias.requires_grad
    torch.testing.assert_close(model[2].weight @ model[2].weight.T, torch.eye(8), atol=1e-5, rtol=0)
    model(x).sum().backward()
    assert model[0].weight.grad is not None and model[2].weight.grad is None


def test_structurize_of_a_pruned_or_spectral_normed_linear_uses_its_weight_as_now_and_says_what_is_gone():
    """torch.nn.utils.prune and spectral_norm compute the weight at each forward, as weight_norm does: the new
    layer was made from the weight of the last forward (stale after an optimizer step), and their hooks were
    named as hooks to register on the new layer, which cannot take them."""
    import warnings

    from torch.nn.utils import prune, spectral_norm

    torch.manual_seed(6)
    pruned = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    prune.l1_unstructured(pruned[0], "weight", amount=0.25)  # twice: a PruningContainer
    prune.random_unstructured(pruned[0], "bias", amount=0.5)
    pruned[1].weight.requires_grad_(False)
    prune.l1_unstructured(
        pruned[1], "weight", amount=0.5
    )  # its weight_orig frozen: the new layer's weight too
    torch.optim.SGD(pruned.parameters(), lr=1.0).zero_grad()
    pruned(torch.randn(2, 8)).sum().backward()
    torch.optim.SGD(pruned.parameters(), lr=1.0).step()  # weight_orig moved; weight is the last forward's
    now = [(m.weight_orig * m.weight_mask).detach() for m in pruned]
    bias_now = (pruned[0].bias_orig * pruned[0].bias_mask).detach()
    assert not torch.equal(pruned[0].weight, now[0])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        knn.structurize(pruned, {"*": knn.DenseLinear.from_dense})
    assert [str(w.message) for w in said] == [
        "structurize: '0' was pruned by torch.nn.utils.prune; the new layer was made from its masked weight "
        "(weight_orig * weight_mask) and trains it without the mask: pruned entries no longer stay zero",
        "structurize: '0' was pruned by torch.nn.utils.prune; the new layer was made from its masked bias "
        "(bias_orig * bias_mask) and trains it without the mask: pruned entries no longer stay zero",
        "structurize: '1' was pruned by torch.nn.utils.prune; the new layer was made from its masked weight "
        "(weight_orig * weight_mask) and trains it without the mask: pruned entries no longer stay zero",
    ]
    assert torch.equal(pruned[0].weight, now[0]) and torch.equal(pruned[0].bias, bias_now)
    assert torch.equal(pruned[1].weight, now[1])
    assert pruned[0].weight.requires_grad and pruned[0].bias.requires_grad
    assert not pruned[1].weight.requires_grad and pruned[1].bias.requires_grad
    normed = torch.nn.Sequential(spectral_norm(torch.nn.Linear(8, 6))).eval()
    x = torch.randn(3, 8)
    expected = normed(x)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        knn.structurize(normed, {"*": knn.DenseLinear.from_dense})
    assert [str(w.message) for w in said] == [
        "structurize: '0' was under torch.nn.utils.spectral_norm; the new layer was made from its weight "
        "(weight_orig / sigma, its spectral norm as last estimated) and trains it directly, without the norm"
    ]
    torch.testing.assert_close(normed(x), expected)


def test_a_kt_layer_takes_its_input_by_nn_linears_keyword_too():
    """`self.fc(input=x)` is a valid call of an nn.Linear: once structurize swapped fc, it was a TypeError."""
    layer = knn.LowRankLinear(8, 6, rank=2)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(input=x), layer(x))
    torch.testing.assert_close(layer(x=x), layer(x))
    for args, kwargs, got in [((x,), {"input": x}, "both x and input"), ((), {}, "neither")]:
        with pytest.raises(TypeError, match=rf"^LowRankLinear: give x once \(as layer\(x\), .*got {got}$"):
            layer(*args, **kwargs)


def test_butterfly_from_dense_names_itself_not_kt_ir():
    with pytest.raises(
        ValueError, match=r"^ButterflyLinear.from_dense: W must be square with a power-of-two"
    ):
        knn.ButterflyLinear.from_dense(torch.nn.Linear(96, 96))


def test_a_block_sparse_layer_takes_a_checkpoints_pattern_before_loading_it():
    """A checkpoint of a structurized model could not be loaded into the same model structurized afresh (from_dense
    prunes by the weights, so the pattern differs) without rebuilding each mask from the indices by hand."""
    torch.manual_seed(0)
    saved = torch.nn.Sequential(knn.BlockSparseLinear(64, 32, (16, 16), density=0.5, seed=1))
    state = saved.state_dict()
    fresh = torch.nn.Sequential(knn.BlockSparseLinear(64, 32, (16, 16), density=0.25, seed=2))
    with pytest.raises(ValueError, match=r"; take it first with model.get_submodule\('0'\).load_pattern\("
                       r"state_dict\['0.crow_indices'\], state_dict\['0.col_indices'\]\), or build"):  # fmt: skip
        fresh.load_state_dict(state)
    assigned = torch.nn.Sequential(knn.BlockSparseLinear(64, 32, (16, 16), density=0.25, seed=2))
    assigned.load_state_dict(state, assign=True)  # the checkpoint's tensors: any count of blocks
    assert assigned[0].layout == saved[0].layout
    fresh[0].load_pattern(state["0.crow_indices"], state["0.col_indices"].int())
    assert fresh[0].layout == saved[0].layout and fresh[0].values.shape == saved[0].values.shape
    fresh.load_state_dict(state)
    x = torch.randn(5, 64)
    torch.testing.assert_close(fresh(x), saved(x), rtol=0, atol=0)
    assert fresh[0].op()["sparsity"]["layout"] == saved[0].layout  # the kernel's op is the new pattern's
    crow, col = state["0.crow_indices"], state["0.col_indices"]
    layer = fresh[0]
    for args, error, words in [
        ((crow[:-1], col), ValueError, r"not the BSR indices of a pattern of this layer's 2x4 block grid"),
        (
            (crow, col + 3),
            ValueError,
            r"not the BSR .*block columns from 0 to 3\); got 3 offsets and 4 columns",
        ),
        ((crow, torch.tensor([0, 0, 1, 2])), ValueError, r"col_indices must increase within each block-row"),
        # unsorted: taken, the buffers written sorted, and the checkpoint's own refused again by load_state_dict
        ((crow, torch.tensor([3, 2, 1, 3])), ValueError, r"col_indices must increase within each block-row"),
        ((crow.to("meta"), col), ValueError, r"crow_indices is on the meta device, which holds no values"),
        ((torch.zeros(3, dtype=torch.int64), col[:0]), ValueError, r"the pattern keeps no block"),
        ((crow.float(), col), TypeError, r"crow_indices must hold integers \(torch.int64 or torch.int32\)"),
        (([0, 2, 4], col), TypeError, r"crow_indices must be a 1-D tensor of integers, got list"),
    ]:
        with pytest.raises(error, match=rf"^BlockSparseLinear.load_pattern: {words}"):
            layer.load_pattern(*args)
    assert layer.layout == saved[0].layout  # a refused pattern leaves the layer as it was


@pytest.mark.parametrize("name", ["blocksparse", "sum"])
def test_a_block_sparse_layer_gives_shapes_on_fake_and_functional_tensors(name):
    """A block-sparse layer's forward read its index buffers' memory unless they were meta tensors or a torch.func
    transform's: under FakeTensorMode (a layer built there, torch.func.functional_call with a fake state), make_fx's
    fake and symbolic tracing and aot_export_module's joint graph it failed on ".numpy() is not supported for
    tensor subclasses" or "Cannot access data pointer of Tensor"."""
    from torch._functorch.aot_autograd import aot_export_module
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    layer = SMALL_LAYERS[name]()
    x = torch.randn(5, 32)
    eager = layer(x)
    state = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
    mode = FakeTensorMode()
    fake = {key: mode.from_tensor(value) for key, value in state.items()}
    with mode:
        assert functional_call(layer, fake, (mode.from_tensor(x),)).shape == eager.shape
        assert SMALL_LAYERS[name]()(torch.randn(5, 32)).shape == eager.shape  # built in the mode
    for tracing in ("fake", "symbolic"):
        traced = make_fx(lambda s, x: functional_call(layer, s, (x,)), tracing_mode=tracing)(state, x)
        torch.testing.assert_close(traced(state, x), eager)

    class Loss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return (self.layer(x) ** 2).sum(), x

    joint, _ = aot_export_module(Loss(), [x], trace_joint=True, output_loss_index=0)
    targets = [str(n.target) for n in joint.graph.nodes if n.op == "call_function"]
    assert targets.count("kt.apply.default") >= 2  # the forward and the backward's products


def _traced_kt_only(layer, x):
    """make_fx's graph of layer(x) (real tracing), checked to hold kt.apply nodes and no product of torch's."""
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(layer)(x)
    targets = {str(n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert "kt.apply.default" in targets, targets
    assert not {t for t in targets if re.search(r"mm|fft|einsum|matmul|linear|_to_copy|empty", t)}, targets
    return traced


@pytest.mark.parametrize("interpret", [False, True], ids=["pytorch-path", "interpreter"])
def test_functionalize_make_fx_and_flop_counter_see_one_kt_op_per_layer(monkeypatch, interpret):
    """`apply` ran the kernel itself whenever its tensors were plain and nothing compiled, so torch.func.functionalize
    failed (with grad: "must override the setup_context"; without, on the PyTorch path "custom (non-ATen) operator
    whose output has alias annotations: aten::matmul.out", under the interpreter "an invalid python storage"),
    make_fx recorded the PyTorch path's own ops (or failed under the interpreter), and FlopCounterMode counted
    that path's ops (the dense fallback of a block-sparse weight: twice its FLOPs) or, for a Triton kernel, none.
    Now the op runs under each of them as one kt.apply, and FlopCounterMode counts the op's own FLOPs (kt.ir)."""
    from torch.func import functionalize, grad
    from torch.utils.flop_counter import FlopCounterMode

    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    layers = {
        **SMALL_LAYERS,
        "fft": lambda: knn.FFT(16),
        "fft-half": lambda: knn.FFT(16, dtype=torch.float16),
    }
    for name in ["dense", "blocksparse", "fft-half"] if interpret else layers:
        layer = layers[name]()
        if name == "fft":
            x = torch.randn(5, 16, dtype=torch.complex64)
        else:
            x = torch.randn(2, 5, 16).half() if name == "fft-half" else torch.randn(5, layer.in_features)
        with torch.no_grad():
            eager = layer(x)
        for grad_on in (False, True):
            with torch.set_grad_enabled(grad_on):
                y = functionalize(layer)(x)
            torch.testing.assert_close(y, eager, msg=name)
            assert y.requires_grad == (grad_on and name not in ("fft", "fft-half")), name
        if name != "fft-half":  # gradients through functionalize: the parameters' and x's, as eager's
            leaf, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
            functionalize(layer)(leaf).abs().sum().backward()
            grads = [p.grad for p in layer.parameters()]
            layer.zero_grad()
            layer(reference).abs().sum().backward()
            torch.testing.assert_close(leaf.grad, reference.grad, msg=name)
            for ours, param in zip(grads, layer.parameters()):
                torch.testing.assert_close(ours, param.grad, msg=name)
        torch.testing.assert_close(_traced_kt_only(layer, x)(x), eager, msg=name)
        with FlopCounterMode(display=False) as counter:
            layer(x)
        assert counter.get_total_flops() == _flops_of(name, layer, x), name
    layer = knn.MonarchLinear(32, 48, nblocks=4)
    with pytest.raises(RuntimeError, match=r"^kt.nn: torch.func.functionalize composed with grad or jvp"):
        functionalize(grad(lambda x: layer(x).sum()))(torch.randn(5, 32))


def _flops_of(name, layer, x) -> int:
    """The FLOPs of SMALL_LAYERS' ops (and the FFTs') on x's rows, from their shapes (kt.ir's conventions)."""
    rows = x.shape[-2]
    if name == "dense":
        return 2 * rows * layer.in_features * layer.out_features
    if name == "lowrank":
        return 2 * rows * sum(f.shape[0] * f.shape[1] for f in layer.factors)
    if name in ("blocksparse", "sum"):
        terms = layer.terms if name == "sum" else [layer]
        return sum(
            2 * rows * t.values.numel()
            if isinstance(t, knn.BlockSparseLinear)
            else _flops_of("lowrank", t, x)
            for t in terms
        )
    if name == "monarch":
        return 2 * rows * (layer.w1.numel() + layer.w2.numel())
    if name == "butterfly":
        return 6 * rows * layer.in_features * layer.twiddles.shape[0] // 2
    return int(5 * rows * 16 * 4)  # an FFT: 5 n log2 n per row


def test_a_sum_follows_its_terms_new_pattern_in_every_sum_that_holds_the_term():
    """A Sum remade its op only when its list of terms changed: after a term's load_pattern the term ran its new
    pattern, while the Sum (one holding the term, another sharing it, a compiled one) kept the old pattern's op
    and refused the term's indices ("w stores its blocks at other places than the pattern this kernel was built
    for ... a kt.nn.BlockSparseLinear takes only its own")."""
    from kt.sparsity import bsr_indices

    torch._dynamo.reset()
    term = knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[1, 0], [0, 1]], bias=False)
    first = knn.Sum(term, knn.LowRankLinear(32, 32, rank=4, bias=False))
    second = knn.Sum(knn.LowRankLinear(32, 32, rank=2, bias=False), term)
    compiled = torch.compile(first, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 32)
    compiled(x), first(x), second(x)
    term.load_pattern(*bsr_indices(np.array([[0, 1], [1, 1]])))
    torch.testing.assert_close(compiled(x), term(x) + first.terms[1](x) + first.bias)
    for layer in (first, second):
        layer.zero_grad(set_to_none=True)
        check_against_reference(layer, x, lambda t: t, 1e-4)


def test_a_sum_loaded_in_another_process_follows_its_terms_new_pattern(monkeypatch):
    """The op numbers by which a Sum sees a term's change count in each process: a Sum saved in one process and
    loaded in a fresh one (torch.load of a whole model, mp.spawn's copy) saw its term's load_pattern take the
    very number the term was saved with, kept the old pattern's op and refused the term's new weights."""
    import itertools
    import pickle

    from kt.nn import layers
    from kt.sparsity import bsr_indices

    term = knn.BlockSparseLinear(16, 8, (4, 4), mask=[[1, 0, 1, 0], [0, 1, 0, 1]], bias=False)
    summed = knn.Sum(term, knn.LowRankLinear(16, 8, 2, bias=False))
    x = torch.randn(3, 16)
    summed(x)
    saved = pickle.dumps(summed)
    number = term.__dict__["_op_number"]
    # a fresh process: its count starts where the term's number was made
    monkeypatch.setattr(layers, "_CHANGES", itertools.count(number))
    loaded = pickle.loads(saved)
    loaded.terms[0].load_pattern(*bsr_indices(np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)))
    expected = loaded.terms[0](x) + loaded.terms[1](x) + loaded.bias
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def _outcome(run):
    """What a call gives: its output's shape, strides and dtype, or its error's type and words."""
    try:
        y = run()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    return tuple(y.shape), y.stride(), y.dtype


def _real_fake_and_meta(x, weights, op):
    """`_outcome` of the custom op on real tensors, on fake ones and on meta ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = _outcome(lambda: torch.ops.kt.apply(x, weights, op))
    with FakeTensorMode() as mode:
        fake = _outcome(
            lambda: torch.ops.kt.apply(mode.from_tensor(x), [mode.from_tensor(w) for w in weights], op)
        )
    meta = _outcome(lambda: torch.ops.kt.apply(x.to("meta"), [w.to("meta") for w in weights], op))
    return real, fake, meta


@pytest.mark.filterwarnings("ignore:Casting complex values to real discards the imaginary part")
def test_the_fake_implementation_refuses_what_the_kernel_refuses_in_its_words():
    """The fake implementation gave an output for operands every kernel refuses (x of another width, a 0-d x, x
    or a weight of another dtype, float64 out for float64 x, a dense op's operands of other K or batch, an FFT's
    x of another n or dtype): torch.export exported such a program and a meta run shaped it; it failed only when
    run. Now the op refuses them before any kernel, and its fake in the same words."""
    cases = []  # (what, x, weights, op): every case but those named as the layer alone is refused
    plain = {"lowrank", "blocksparse", "monarch", "butterfly", "sum", "dense", "fft"}
    for name in ("lowrank", "blocksparse", "monarch", "butterfly", "sum"):
        layer = SMALL_LAYERS[name]()
        weights, n = [w.detach() for w in layer._weights()], layer.in_features
        cases += [
            (f"{name}", torch.randn(4, n), weights, layer.op_text),
            (f"{name} wider x", torch.randn(4, n + 1), weights, layer.op_text),
            (f"{name} 0-d x", torch.tensor(1.0), weights, layer.op_text),
            (f"{name} half x", torch.randn(4, n).half(), weights, layer.op_text),
            (f"{name} float64 x", torch.randn(4, n).double(), weights, layer.op_text),
            (f"{name} complex x", torch.randn(4, n, dtype=torch.complex64), weights, layer.op_text),
            (
                f"{name} float64 weight",
                torch.randn(4, n),
                [*weights[:-1], weights[-1].double()],
                layer.op_text,
            ),
        ]
    lowrank = SMALL_LAYERS["lowrank"]()
    f1, f2 = (f.detach() for f in lowrank.factors)
    cases.append(
        ("lowrank factor of another rank", torch.randn(4, 32), [f1, torch.randn(6, 24)], lowrank.op_text)
    )
    dense = SMALL_LAYERS["dense"]()
    b = dense.weight.detach().t()
    cases += [
        ("dense", torch.randn(5, 24), [b], dense.op_text),
        ("dense other K", torch.randn(5, 23), [b], dense.op_text),
        ("dense batches differ", torch.randn(3, 5, 24), [torch.randn(2, 24, 40)], dense.op_text),
        ("dense 1-D", torch.randn(24), [b], dense.op_text),
        ("dense float64", torch.randn(5, 24).double(), [b.double()], dense.op_text),
    ]
    for kind in ({}, {"input": "real"}, {"dtype": torch.float16}, {"dtype": torch.float16, "input": "real"}):
        layer = knn.FFT(16, **kind)
        half, real = kind.get("dtype") == torch.float16, kind.get("input") == "real"
        dtype = torch.float16 if half else torch.float32 if real else torch.complex64
        lead = (2, 3) if half and not real else (3,)
        other = torch.complex64 if dtype == torch.float32 else torch.float32
        cases += [
            ("fft", torch.randn(*lead, 16, dtype=dtype), [], layer.op_text),
            (f"fft {kind} n 18", torch.randn(*lead, 18, dtype=dtype), [], layer.op_text),
            (f"fft {kind} {other}", torch.randn(*lead, 16, dtype=other), [], layer.op_text),
        ]
    cases.append(
        (
            "planar fft of complex x",
            torch.randn(3, 16, dtype=torch.complex64),
            [],
            knn.FFT(16, dtype=torch.float16).op_text,
        )
    )
    for what, x, weights, op in cases:
        real, fake, meta = _real_fake_and_meta(x, weights, op)
        assert real == fake == meta, (what, real, fake, meta)
        assert isinstance(real[0], type) == (what not in plain), (what, real)

    class Model(torch.nn.Module):
        def forward(self, x):
            return knn.apply(x, [f1, f2], lowrank.op_text)

    with pytest.raises(
        TypeError, match=r"^kernel: x.dtype is torch.float64, but this kernel was built for torch.float32"
    ):
        torch.export.export(Model(), (torch.randn(4, 32).double(),))


@pytest.mark.parametrize("name", [*SMALL_LAYERS, "fft", "fft-real", "fft-half", "fft-half-real"])
def test_eager_fake_and_compiled_outputs_have_one_layout_for_permuted_input(name):
    """The float32 FFT's PyTorch path (torch.fft.fft) strides its output as x: eager gave (16, 64, 1) for a
    permuted x where the fake implementation (and so torch.compile) gives contiguous (48, 16, 1), so
    `fft(x).view(-1, 16)` ran compiled and failed eager. Every layer's output is contiguous on each path."""
    ffts = {
        "fft": ({}, torch.complex64),
        "fft-real": ({"input": "real"}, torch.float32),
        "fft-half": ({"dtype": torch.float16}, torch.float16),
        "fft-half-real": ({"dtype": torch.float16, "input": "real"}, torch.float16),
    }
    if name in ffts:
        kind, dtype = ffts[name]
        layer, n = knn.FFT(16, **kind), 16
    else:
        layer, dtype = SMALL_LAYERS[name](), torch.float32
        n = layer.in_features
    lead = (2, 4, 3) if name == "fft-half" else (4, 3)  # planes first, then the permuted leading dims
    x = torch.randn(*lead[:-2], lead[-1], lead[-2], n, dtype=dtype).transpose(-3, -2)
    assert not x.is_contiguous()
    with torch.no_grad():
        eager = layer(x)
    grad = layer(x.clone().requires_grad_())  # through _EagerApply
    meta = copy.deepcopy(layer).to("meta")(x.to("meta"))
    torch._dynamo.reset()  # a fresh recompile budget: this file compiles these layers' forward often
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert eager.is_contiguous(), eager.stride()
    assert eager.stride() == grad.stride() == meta.stride() == compiled.stride(), name
    assert eager.view(-1, eager.shape[-1]).shape[0] == eager.numel() // eager.shape[-1]


@pytest.mark.parametrize("name", [*SMALL_LAYERS, "fft"])
def test_pytorchs_legacy_vmap_is_refused_in_one_line_naming_torch_func(name):
    """torch.autograd.grad(..., is_grads_batched=True), which torch.autograd.functional's jacobian and hessian
    run with vectorize=True, batch dy with PyTorch's legacy vmap: every layer failed in its backward with
    "Batching rule not implemented for aten::matmul.out" (or flatten, mm.out, copy_), and a generated kernel
    with "Cannot access storage of BatchedTensorImpl". It is refused in kt's words, naming torch.func, which
    works; vectorize=False still does."""
    layer = knn.FFT(16) if name == "fft" else SMALL_LAYERS[name]()
    n, dtype = (16, torch.complex64) if name == "fft" else (layer.in_features, torch.float32)
    x = torch.randn(3, n, dtype=dtype, requires_grad=True)
    y = layer(x)
    with pytest.raises(RuntimeError, match=r"legacy vmap .*is_grads_batched.*torch\.func"):
        torch.autograd.grad(y, x, torch.randn(2, *y.shape, dtype=y.dtype), is_grads_batched=True)
    if name == "fft":
        return
    with pytest.raises(RuntimeError, match=r"legacy vmap"):
        torch.autograd.functional.jacobian(layer, x.detach()[:1], vectorize=True)
    row = x.detach()[:1]
    torch.testing.assert_close(torch.autograd.functional.jacobian(layer, row), torch.func.jacrev(layer)(row))


@pytest.mark.parametrize("name", list(SMALL_LAYERS))
def test_a_layer_made_under_a_default_dtype_kt_refuses_names_the_default_and_how_to_pass_one(name):
    """Under torch.set_default_dtype(torch.float64), a layer made without dtype= (as nn.Linear takes torch's
    default) was told "dtype torch.float64 is not one that kt's kernels take", a dtype its caller never passed.
    It names torch's default and the argument to give; given dtype=torch.float32 it runs there."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(
            TypeError, match=r"torch's default dtype is torch\.float64 .*dtype=torch\.float32"
        ):
            SMALL_LAYERS[name]()
        layer = knn.DenseLinear(4, 3, dtype=torch.float32)
        assert layer(torch.randn(2, 4, dtype=torch.float32)).dtype == torch.float32
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("make", [lambda: knn.LowRankLinear(16, 24, 4), lambda: knn.MonarchLinear(16, 24, 4)])
def test_a_layer_whose_weights_are_on_meta_says_so_for_an_x_that_is_not(make):
    """It failed in its kernel's words: "kernel: f1 is on meta but the first argument is on cpu"."""
    layer = make().to("meta")
    with pytest.raises(
        ValueError,
        match=r"^\w+Linear: its weights are on the meta device \(x is on cpu\), which holds no values",
    ):
        layer(torch.randn(3, 16))
    assert layer(torch.randn(3, 16, device="meta")).shape == (3, 24)  # meta in, meta out: shapes only


def test_structurize_and_model_ops_see_through_torch_compiles_wrapper():
    """Under torch.compile's wrapper every name begins with `_orig_mod.`: a rule for "0" matched no nn.Linear
    ("its nn.Linear layers: _orig_mod.0, _orig_mod.2"), and --from-model named its ops `_orig_mod.0_b16_...`."""
    from kt.nn.discover import model_ops

    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    compiled = torch.compile(model)
    x = torch.randn(2, 8)
    dense = compiled(x)
    found = model_ops(compiled, x)
    assert found.plain == ["0", "2"] and [s.name.rsplit("_", 1)[0] for s in found.specs] == ["0_b16", "2_b16"]
    assert knn.structurize(compiled, {"0": lambda lin: knn.LowRankLinear.from_dense(lin, rank=2)}) == ["0"]
    assert type(model[0]) is knn.LowRankLinear
    with torch.no_grad():  # the wrapper runs the new layer: it recompiled on the changed module
        assert torch.allclose(compiled(x), model(x), atol=1e-6) and not torch.allclose(
            compiled(x), dense, atol=1e-3
        )


# 1x1 convolutions (kt.nn.Pointwise): a CNN's pointwise convolutions are matmuls over their channels, and
# structurize said "the pattern '*' matches no nn.Linear of the model; it has no nn.Linear" of a ConvNeXt-style
# block (timm's convnext_atto: its MLPs are 1x1 Conv2d) or a ResNet bottleneck
POINTWISE_MAKERS = {
    "dense": knn.DenseLinear.from_dense,
    "lowrank": lambda lin: knn.LowRankLinear.from_dense(lin, rank=3),
    "blocksparse": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(4, 4), density=0.5),
    "monarch": lambda lin: knn.MonarchLinear.from_dense(lin, nblocks=2),
    "butterfly": knn.ButterflyLinear.from_dense,
    "sum": lambda lin: knn.Sum.from_dense(lin, block=(4, 4), density=0.5, rank=2),
}
POINTWISE_CONVS = {  # (convolution, input): odd sizes, a stride, channels_last, unbatched, a strided view
    "conv1d": (lambda: torch.nn.Conv1d(8, 8, 1), lambda: torch.randn(3, 8, 11)),
    "conv2d-stride-channels-last": (
        lambda: torch.nn.Conv2d(8, 8, 1, stride=(2, 1)),
        lambda: torch.randn(2, 8, 7, 5).to(memory_format=torch.channels_last),
    ),
    "conv2d-strided-view": (
        lambda: torch.nn.Conv2d(8, 8, (1, 1)),
        lambda: torch.randn(2, 8, 9, 10)[:, :, 1:, ::2],
    ),
    "conv3d-unbatched-stride": (lambda: torch.nn.Conv3d(8, 8, 1, stride=2), lambda: torch.randn(8, 3, 5, 4)),
}


def dense_of(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The (out, in) matrix and the bias that `layer` computes, read off its rows: layer(I) - layer(0)."""
    with torch.no_grad():
        zero = layer(torch.zeros(1, layer.in_features))
        return (layer(torch.eye(layer.in_features)) - zero).t(), zero[0]


@pytest.mark.parametrize("conv", POINTWISE_CONVS)
@pytest.mark.parametrize("kind", POINTWISE_MAKERS)
def test_a_structurized_1x1_convolution_computes_the_convolution_of_its_layers_matrix(kind, conv):
    torch.manual_seed(0)
    make_conv, make_input = POINTWISE_CONVS[conv]
    model = torch.nn.Sequential(make_conv(), torch.nn.ReLU()).eval()
    x = make_input()
    before = model(x)
    assert knn.structurize(model, {"0": POINTWISE_MAKERS[kind]}) == ["0"]
    point = model[0]
    assert (
        type(point) is knn.Pointwise and point.in_channels == point.out_channels == 8 and not point.training
    )
    weight, bias = dense_of(point.layer)
    conv_of = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[point.dims]
    reference = conv_of(x, weight.reshape(8, 8, *[1] * point.dims), bias, stride=point.stride).relu()
    out = model(x)
    assert out.shape == before.shape and rel(out, reference) < 1e-5, rel(out, reference)
    assert out.stride() == before.stride()  # laid out as the convolution's output: `out.view(n, -1)` works
    if kind == "dense":  # made from the convolution's own weight: its output
        assert rel(out, before) < 1e-5
    model(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in point.parameters() if p.requires_grad)


def test_structurize_replaces_only_the_convolutions_that_are_matmuls_and_says_why_of_the_others():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),  # 0: a 3x3
        torch.nn.Conv2d(8, 8, 1, groups=2),  # 1: grouped
        torch.nn.Conv2d(8, 8, 1, padding=1),  # 2: padded (its border is the bias)
        torch.nn.Conv2d(8, 16, 1, padding="same"),  # 3: a kernel of 1 pads nothing
        torch.nn.Conv2d(16, 8, 1, stride=2, dilation=3, bias=False),  # 4: dilation does nothing to a 1x1
    ).eval()
    model[4].requires_grad_(False)
    x = torch.randn(2, 4, 7, 6)
    before, dense = model(x), copy.deepcopy(model)
    assert knn.structurize(model, {"*": knn.DenseLinear.from_dense}) == ["3", "4"]
    assert [type(m).__name__ for m in model] == ["Conv2d", "Conv2d", "Conv2d", "Pointwise", "Pointwise"]
    assert rel(model(x), before) < 1e-5 and model[4].stride == (2, 2) and model[4].layer.bias is None
    assert not any(p.requires_grad for p in model[4].parameters()) and model[3].layer.weight.requires_grad
    for pattern, why in [
        ("0", r"'0' is a Conv2d of kernel \(3, 3\), padding \(1, 1\): no matmul over its channels"),
        ("1", r"'1' is a Conv2d of groups=2: no matmul"),
        ("2", r"'2' is a Conv2d of padding \(1, 1\): no matmul"),
    ]:
        with pytest.raises(ValueError, match=rf"matches no nn.Linear of the model \({why}.*; its nn.Linear layers "
                                             r"and 1x1 convolutions: 3, 4$"):  # fmt: skip
            knn.structurize(copy.deepcopy(dense), {pattern: knn.DenseLinear.from_dense})
    with pytest.raises(
        ValueError, match=r"'0' is a Conv2d of kernel \(3, 3\).*; it has no nn.Linear or 1x1 convolution$"
    ):
        knn.structurize(dense[:3], {"0": knn.DenseLinear.from_dense})


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_runs_under_vmap_over_batched_samples_as_the_convolution_does(dims):
    """Its channels_last query raised under vmap ("NYI: querying is_contiguous inside of vmap") for samples
    of (N, C, H, W) or (N, C, D, H, W), where the nn.Conv2d it replaces runs."""
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(6, 4, 1)
    layer = knn.Pointwise.from_dense(conv, knn.DenseLinear.from_dense)
    x = torch.randn(3, 2, 6, *[5] * dims)
    got = torch.func.vmap(layer)(x)
    with torch.no_grad():
        want = torch.stack([conv(sample) for sample in x])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_pointwise_from_dense_and_its_forward_refuse_in_one_line():
    conv = torch.nn.Conv2d(8, 6, 1, stride=2)
    point = knn.Pointwise.from_dense(conv, lambda lin: knn.LowRankLinear.from_dense(lin, rank=2))
    assert (
        point.stride == (2, 2)
        and point.out_channels == 6
        and point(torch.randn(1, 8, 5, 5)).shape == (1, 6, 3, 3)
    )
    with pytest.raises(TypeError, match=r"got Conv2d \(a 1x1 convolution: kt.nn.Pointwise.from_dense\(conv, lambda "
                                        r"linear: LowRankLinear.from_dense\(linear, ...\)\)"):  # fmt: skip
        knn.LowRankLinear.from_dense(conv, rank=2)
    with pytest.raises(
        ValueError, match=r"^Pointwise.from_dense: the Conv2d has kernel \(3, 3\): only a convolution"
    ):
        knn.Pointwise.from_dense(torch.nn.Conv2d(8, 6, 3), knn.DenseLinear.from_dense)
    with pytest.raises(
        TypeError, match=r"^Pointwise.from_dense: conv must be a torch Conv1d, Conv2d or Conv3d, got Linear$"
    ):
        knn.Pointwise.from_dense(torch.nn.Linear(8, 6), knn.DenseLinear.from_dense)
    with pytest.raises(
        ValueError, match=r"make returned a layer of 8 -> 8 features; the convolution maps 8 -> 6"
    ):
        knn.Pointwise.from_dense(conv, lambda lin: knn.DenseLinear(8, 8))
    with pytest.raises(ValueError, match=r"^Pointwise: input must be \(N, C, H, W\) or unbatched \(C, H, W\) for its 2 "
                                         r"spatial dim\(s\), got shape \(8, 5\)$"):  # fmt: skip
        point(torch.randn(8, 5))
    with pytest.raises(
        ValueError, match=r"^Pointwise: input has 7 channels \(dim 1 of \(2, 7, 5, 5\)\), the layer takes 8$"
    ):
        point(torch.randn(2, 7, 5, 5))
    with pytest.raises(ValueError, match=r"^Pointwise: stride must be a positive integer or 2 of them"):
        knn.Pointwise(knn.DenseLinear(8, 6), stride=(1, 0))
    with pytest.raises(TypeError, match=r"^Pointwise: layer must have a positive integer in_features"):
        knn.Pointwise(torch.nn.ReLU())


def test_a_structurized_cnn_checkpoint_reloads_by_structurize_as_compiles_and_exports_without_kt_ops():
    def cnn():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 1), torch.nn.GELU(),
            torch.nn.Conv2d(32, 16, 1, stride=2), torch.nn.Flatten(), torch.nn.Linear(16 * 9, 10),
        ).eval()  # fmt: skip

    model = cnn()
    knn.structurize(model, {
        "1": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5),
        "3": lambda lin: knn.LowRankLinear.from_dense(lin, rank=4),
        "5": knn.DenseLinear.from_dense,
    })  # fmt: skip
    x = torch.randn(2, 3, 6, 6)
    out = model(x)
    state = model.state_dict()
    assert "1.layer.col_indices" in state and "3.layer.factors.1" in state and "1.weight" not in state
    again = cnn()
    assert knn.structurize_as(again, state, dense="5") == ["1", "3", "5"]
    again.load_state_dict(state)
    assert torch.equal(again(x), out) and type(again[3].layer) is knn.LowRankLinear
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert rel(compiled(x), out) < 1e-6
    program = torch.export.export(model, (x,)).run_decompositions(knn.decompositions())
    assert "kt.apply" not in str(program.graph) and rel(program.module()(x), out) < 1e-5


def test_from_model_finds_1x1_convolutions_with_their_positions_as_rows_and_a_pointwise_layers_op():
    from kt.nn.discover import model_ops
    from kt.nn.selection import bucket

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 1, stride=2), torch.nn.Conv2d(32, 24, 1)
    ).eval()  # fmt: skip
    knn.structurize(model, {"2": lambda lin: knn.LowRankLinear.from_dense(lin, rank=4)})
    found = model_ops(model, torch.randn(2, 3, 9, 8))  # the stride-2 conv's output: 2 x 5 x 4 positions
    ops = {found.modules[spec.name][0]: spec.to_dict() for spec in found.specs}
    assert sorted(ops) == ["1", "2.layer"] and found.pointwise == ["1"] and found.plain == ["1"]
    assert ops["1"]["op"] == "dense" and ops["1"]["shape"] == {"m": bucket(40), "n": 32, "k": 16}
    assert ops["2.layer"]["op"] == "lowrank" and ops["2.layer"]["shape"]["batch"] == bucket(40)


def test_a_compiled_models_state_dict_rebuilds_by_structurize_as_and_gives_load_patterns_its_patterns():
    """torch.compile's wrapper names every key `_orig_mod.<name>`: structurize_as found no kt layer under the
    model's names and replaced nothing, without a word, and load_patterns left every drawn pattern."""

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))

    model = mlp()
    knn.structurize(model, {
        "0": lambda lin: knn.LowRankLinear.from_dense(lin, rank=4),
        "2": lambda lin: knn.BlockSparseLinear.from_dense(lin, block=(8, 8), density=0.5),
    })  # fmt: skip
    state, x = torch.compile(model, backend="eager").state_dict(), torch.randn(3, 16)
    assert list(state)[0].startswith("_orig_mod.")
    again = torch.compile(mlp(), backend="eager")
    assert knn.structurize_as(again, state) == ["0", "2"]
    again.load_state_dict(state)
    assert torch.equal(again(x), model(x))
    drawn = mlp()
    knn.structurize(drawn, {"2": lambda lin: knn.BlockSparseLinear(32, 16, block=(8, 8), density=0.5)})
    assert knn.load_patterns(drawn, state) == ["2"] and np.array_equal(drawn[2].mask(), model[2].mask())
    with pytest.raises(ValueError, match=r"^load_patterns: the state_dict holds a block pattern under '9', which is "
                                         r"no BlockSparseLinear of the model; a checkpoint of another model"):  # fmt: skip
        knn.load_patterns(
            drawn,
            {
                "9.crow_indices": state["_orig_mod.2.crow_indices"],
                "9.col_indices": state["_orig_mod.2.col_indices"],
            },
        )


def test_a_1x1_convolution_of_a_subclass_is_left_alone_and_named_where_a_pattern_matches_it():
    class Standardized(torch.nn.Conv2d):  # timm's StdConv2d: its forward standardizes the weight first
        def forward(self, input):
            weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std(
                (1, 2, 3), keepdim=True
            )
            return F.conv2d(input, weight, self.bias, self.stride)

    model = torch.nn.Sequential(Standardized(8, 8, 1), torch.nn.Conv2d(8, 4, 1))
    with pytest.warns(UserWarning, match=r"left alone, though a rule's pattern matches: '0' is a Standardized: a "
                                         r"subclass of Conv2d, whose forward may differ"):  # fmt: skip
        assert knn.structurize(model, {"*": knn.DenseLinear.from_dense}) == ["1"]
    assert type(model[0]) is Standardized


def test_a_chain_and_a_monarch_start_at_nn_linears_scale_whatever_their_factors():
    """Each factor drawn as nn.Linear draws its weight took a third of its input's variance: a chain of 8 came
    out 2,500 times below nn.Linear's output, a Monarch 3 times, and a Monarch's bias was drawn within
    1/sqrt(a block's fan-in) (4 times nn.Linear's at 16 blocks)."""
    torch.manual_seed(0)
    x = torch.randn(8192, 256)
    with torch.no_grad():
        linear = torch.nn.Linear(256, 256, bias=False)(x).var().item()
        layers = [
            knn.LowRankLinear(256, 256, 32, bias=False),
            knn.LowRankLinear(256, 256, (64,) * 7, bias=False),
            knn.MonarchLinear(256, 256, 16, bias=False),
            knn.MonarchLinear(256, 128, 8, bias=False),
        ]
        for layer in layers:
            assert 0.6 < layer(x).var().item() / linear < 1.6, layer
    bias = knn.MonarchLinear(1024, 1024, 32).bias
    assert bias.abs().max() <= 1 / math.sqrt(1024)


def test_a_weight_gradient_past_the_rows_a_spec_holds_is_selected_at_the_largest_k_that_fits():
    """A dense weight gradient's K is the rows it sums over: past 2**24 (or past the bytes a spec's operands
    may hold) its spec was refused, and the backward of a forward that ran raised a SpecError."""
    deep = selection.bucket_spec({"op": "dense", "dtype": "float32", "shape": {"n": 3, "k": 2**25}}, 16)
    assert (deep.shape.m, deep.shape.k) == (16, 2**24)
    wide = selection.bucket_spec({"op": "dense", "dtype": "float32", "shape": {"n": 2**14, "k": 2**26}}, 16)
    assert wide.shape.k < 2**24 and wide.shape.n == 2**14
    with pytest.raises(kt.SpecError, match="shape.n"):  # what no rows or K make fit is still refused
        selection.bucket_spec({"op": "dense", "dtype": "float32", "shape": {"n": 2**25, "k": 16}}, 16)


def test_use_artifacts_overtaking_a_selection_under_way_is_not_lost_and_a_choice_made_again_is_said_once(
    tmp_path, monkeypatch, caplog
):
    """A layer selecting its kernel while use_artifacts ran stored its older choice and cleared the stale mark:
    the new folders were never looked at. And every use_artifacts made every choice again, logging each one's
    warning again though nothing changed."""
    import logging
    import threading

    monkeypatch.setenv("KT_INTERPRET", "1")
    saved, real = list(selection._ARTIFACT_DIRS), selection._select
    inside, go = threading.Event(), threading.Event()

    def held(spec, device):
        inside.set()
        go.wait(60)
        return real(spec, device)

    monkeypatch.setattr(selection, "_select", held)
    try:
        layer, x = knn.DenseLinear(32, 48), torch.randn(5, 32)
        with torch.no_grad():
            thread = threading.Thread(target=layer, args=(x,))
            thread.start()
            assert inside.wait(60)
            knn.use_artifacts(tmp_path)
            go.set()
            thread.join(60)
            (key,) = [k for k in selection._SELECTED if "dense" in k[0]]
            assert key in selection._STALE, "the choice made before use_artifacts is made again"
            monkeypatch.setattr(selection, "_select", real)
            with caplog.at_level(logging.WARNING, logger="kt.nn"):
                for _ in range(2):
                    layer(x)
                    knn.use_artifacts(tmp_path)
                layer(x)
        assert caplog.text.count("untuned") == 1, (
            caplog.text
        )  # the first choice; the same one again is not said
    finally:
        selection._ARTIFACT_DIRS[:] = saved
        selection._STALE.clear()
