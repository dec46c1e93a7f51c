"""kt's op in PyTorch's own operators (kt.nn.portable): equal to the op for every layer kind, dtype and view, and
what `torch.onnx.export` writes, run in ONNX Runtime. On PyTorch's CPU path, without Triton's interpreter."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import kt.nn as knn
from kt.nn.functional import _dense_text, _layout, op_text
from tests.test_nn import CASES, make_case, rel
from tests.test_nn_cpu import (
    BLOCKSPARSE_SPEC,
    torch_path,  # noqa: F401  (autouse: kt.nn's PyTorch path, no interpreter)
)


def _kt_targets(program) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function" and "kt." in str(n.target)]


@pytest.mark.parametrize("name", list(CASES))
def test_decomposed_program_computes_what_the_layer_does(name):
    """torch.export's program of each layer, decomposed with kt.nn.decompositions(): core ATen operators only,
    no kt op, and the layer's output on fresh inputs of another row count and on the case's view (strided,
    transposed), for every dtype kt takes."""
    layer, leaf, view, tol = make_case(name)
    x = view(leaf)
    program = torch.export.export(layer, (x.detach().contiguous(),))
    assert _kt_targets(program) == ["kt.apply.default"]
    decomposed = program.run_decompositions(knn.decompositions())  # a new program; `program` is kept
    assert _kt_targets(program) == ["kt.apply.default"]
    assert _kt_targets(decomposed) == []
    noncore = {
        str(n.target)
        for n in decomposed.graph.nodes
        if isinstance(n.target, torch._ops.OpOverload) and torch.Tag.core not in n.target.tags
    }  # core ATen (ExecuTorch's operator set), but for the FFT's torch.fft.fft
    assert noncore <= (
        {"aten._fft_c2c.default", "aten.complex.default", "aten.view_as_real.default"}
        if "fft" in name
        else set()
    )
    with torch.no_grad():
        assert rel(decomposed.module()(x), layer(x)) < tol
        fresh = torch.randn_like(leaf)
        assert rel(decomposed.module()(view(fresh)), layer(view(fresh))) < tol


@pytest.mark.parametrize("name", ["monarch-up-3d", "monarch-down-strided", "butterfly-3d"])
def test_decompose_of_a_transposed_op_is_the_ops(name):
    """A backward's transposed Monarch and butterfly ops (y = x @ M), decomposed, equal the op's PyTorch path."""
    layer, leaf, _, tol = make_case(name)
    op = {**json.loads(layer.op_text), "transposed": True}
    x = torch.randn(7, layer.out_features)
    weights = [w.detach() for w in layer._weights()]
    want = torch.ops.kt.apply(x, weights, op_text(op))
    assert want.shape == (7, layer.in_features)
    assert rel(knn.decompose(x, weights, op_text(op)), want) < tol


def test_decompose_of_a_batched_dense_product_and_an_empty_block_row():
    """kt.nn.functional.matmul's batched dense op (a batch of block products, a transposed operand), and a
    block-sparse op whose empty block row must come out zero (index_add adds nothing there)."""
    a, b = torch.randn(3, 9, 5), torch.randn(3, 7, 5).transpose(1, 2)
    text = _dense_text(a.dtype, 7, 5, 3, _layout(a), _layout(b))  # as matmul(a, b) makes it
    want = torch.ops.kt.apply(a, [b], text)
    torch.testing.assert_close(want, torch.bmm(a, b))
    torch.testing.assert_close(knn.decompose(a, [b], text), want)
    layer, _, _, _ = make_case("blocksparse-gaps-3d")
    x = torch.randn(4, 32)
    out = knn.decompose(x, [w.detach() for w in layer._weights()], layer.op_text)
    assert torch.equal(out[:, 16:32], torch.zeros(4, 16))
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight_bsr().to_dense()))


def test_decompose_refuses_an_op_it_has_no_form_for():
    op = '{"dtype":"float32","op":"blocksparse_grad","shape":{"in":32,"out":48},"sparsity":{"block":[8,8],"layout":"ff"}}'
    with pytest.raises(
        ValueError, match=r"^kt.nn.decompose: the blocksparse_grad op has no decomposition \(ops"
    ):
        knn.decompose(torch.randn(2, 48), [], op)


def test_legacy_onnx_export_is_refused_in_one_line():
    """torch.onnx.export(..., dynamo=False) traces with TorchScript: a kt layer as the model itself failed on the
    forward's default (an object is no JIT input), inside a model on TorchScript's own words."""
    pytest.importorskip("onnx")
    layer = knn.LowRankLinear(8, 6, 2)
    for model in (layer, torch.nn.Sequential(layer)):
        with pytest.raises(
            TypeError,
            match=r"^kt.nn: TorchScript .*dynamo=False.* for ONNX, .*run_decompositions\(kt.nn.decompositions\(\)\)$",
        ):
            torch.onnx.export(model, (torch.randn(2, 8),), io.BytesIO(), dynamo=False)
    y = torch.randn(2, 8)
    torch.testing.assert_close(layer(input=y), layer(y))
    with pytest.raises(TypeError, match="got both x and input"):
        layer(y, y)


ONNX_CASES = {
    "dense": lambda: knn.DenseLinear(40, 24),
    "lowrank": lambda: knn.LowRankLinear(40, 24, (5, 3)),
    "blocksparse": lambda: make_case("blocksparse-gaps-3d")[0],
    "sum": lambda: make_case("sum-blocksparse-lowrank-3d")[0],
    "monarch": lambda: knn.MonarchLinear(48, 32, 4),
    "butterfly": lambda: knn.ButterflyLinear(32),
}


def _onnx(model, x, dynamic_shapes=None):
    """The README's recipe: torch.export, kt's op decomposed, then torch.onnx.export of the program."""
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)
    program = program.run_decompositions(knn.decompositions())
    return torch.onnx.export(program, dynamo=True, verbose=False).model_proto


@pytest.mark.parametrize("kind", list(ONNX_CASES))
def test_onnx_export_runs_in_onnx_runtime_with_the_structure_kept(kind):
    """torch.onnx.export of a model with a kt layer, its op decomposed (batch and sequence dims dynamic): the
    file holds standard ONNX operators and no kt op, no dense weight of the structured layers (its initializers
    hold fewer values than in*out), and ONNX Runtime computes what the model does at other sizes."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    layer = ONNX_CASES[kind]()
    model = torch.nn.Sequential(layer, torch.nn.GELU()).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    proto = _onnx(model, torch.randn(2, 3, layer.in_features), (dims,))
    ops = [node.op_type for node in proto.graph.node]
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}, ops
    assert "Einsum" not in ops  # a block-sparse layer's products are MatMul, which every runtime has
    values = sum(int(torch.tensor(list(t.dims)).prod()) for t in proto.graph.initializer)
    floats = sum(p.numel() for p in layer.parameters())
    assert floats <= values <= floats + layer.out_features + 64  # its parameters and a BSR weight's indices
    if kind != "dense":
        assert values < layer.in_features * layer.out_features
    session = ort.InferenceSession(proto.SerializeToString())
    for shape in [(1, 7), (5, 1), (3, 2)]:
        x = torch.randn(*shape, layer.in_features)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert got.shape == want.shape
        assert (torch.from_numpy(got) - want).norm() / want.norm() < 1e-5


def test_onnx_export_of_float16_layers_runs_in_onnx_runtime():
    """A float16 model's file runs in ONNX Runtime's CPU provider: a block-sparse layer's block rows were summed
    by a ScatterND adding, which that provider takes no float16 for ("MLFloat16 data type is not supported with
    ScatterND opset 16 when reduction is 'add'"); they are gathered and reduced now."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    rows = [[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]]  # an empty row, a full one
    summed = knn.Sum(
        knn.BlockSparseLinear(48, 16, (8, 8), density=0.5, bias=False),
        knn.LowRankLinear(48, 16, 2, bias=False),
    )
    model = torch.nn.Sequential(
        knn.LowRankLinear(32, 24, 4),
        torch.nn.GELU(),
        knn.BlockSparseLinear(24, 48, (8, 8), mask=rows),
        knn.MonarchLinear(48, 48, 4),
        summed,
    )
    model = model.half().eval()
    x = torch.randn(5, 32).half()
    session = ort.InferenceSession(_onnx(model, x).SerializeToString())
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).float()
    assert got.dtype == np.float16
    assert (torch.from_numpy(got).float() - want).norm() / want.norm() < 2e-3


def test_onnx_export_of_a_half_planar_fft():
    """The float16 FFT takes and gives planar complex (2, ..., n): real tensors ONNX Runtime runs (a complex64
    FFT's input is complex, which ONNX Runtime takes none of)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    layer = knn.FFT(16, dtype=torch.float16)
    session = ort.InferenceSession(_onnx(layer, torch.randn(2, 3, 16).half()).SerializeToString())
    x = torch.randn(2, 3, 16).half()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    want = layer(x).float()
    assert (torch.from_numpy(got).float() - want).norm() / want.norm() < 2e-3


def test_a_loaded_kernels_op_decomposes_as_its_op():
    """kt.build(spec).as_op() pins its kernel in the op text ("pin"): the decomposition computes the op the
    kernel was built for (a block-sparse one here, with its weight's three parts)."""
    import kt

    spec = kt.parse_spec(BLOCKSPARSE_SPEC)
    x, w = kt.random_args(spec, seed=4, device="cpu")
    op = kt.build(spec).as_op()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.values = torch.nn.Parameter(w.values())
            self.register_buffer("crow", w.crow_indices())
            self.register_buffer("col", w.col_indices())

        def forward(self, x):
            return op(x, self.crow, self.col, self.values)

    program = torch.export.export(Model(), (x,))
    (node,) = [n for n in program.graph.nodes if "kt." in str(n.target)]
    assert '"pin"' in node.args[2]
    decomposed = program.run_decompositions(knn.decompositions())
    assert _kt_targets(decomposed) == []
    fresh = torch.randn(24, 48)  # (the program is specialised on its example's rows)
    assert rel(decomposed.module()(fresh), torch.nn.functional.linear(fresh, w.to_dense())) < 1e-5


def test_an_aoti_package_of_the_decomposed_program_runs_without_kt(tmp_path):
    """AOTInductor compiles the decomposed program into a package of inductor's own kernels, which a process
    without kt loads and runs (one compiled from the program as exported keeps kt's op, whose Python custom op
    AOTI runs only where kt is imported)."""
    import shutil
    import subprocess
    import sys

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("AOTInductor needs a C++ compiler")
    blocksparse = make_case("blocksparse-gaps-3d")[0]  # 32 -> 48, an empty block row
    model = torch.nn.Sequential(blocksparse, torch.nn.ReLU(), knn.LowRankLinear(48, 24, 4)).eval()
    x = torch.randn(5, 32)
    program = torch.export.export(model, (x,)).run_decompositions(knn.decompositions())
    try:
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    except Exception as exc:  # noqa: BLE001 - this machine's C++ toolchain (headers, OpenMP), not kt
        from torch._inductor.exc import CppCompileError

        # only the C++ build's own failure: InductorError wraps every failure of lowering too (kt's
        # decompositions among the causes), which a skip on its name passed over
        if not isinstance(exc, CppCompileError) and not isinstance(
            getattr(exc, "inner_exception", None), CppCompileError
        ):
            raise
        pytest.skip(f"AOTInductor could not build here: {type(exc).__name__}: {str(exc)[:200]}")
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "sys.modules['kt'] = None  # no kt in this process\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"run = torch._inductor.aoti_load_package({package!r})\n"
        "print(float((run(io['x']) - io['y']).abs().max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5


def test_decompose_refuses_the_operands_the_op_refuses():
    """Where the op refuses in one line, decompose returned a tensor: a low-rank op's one factor of two (x @ f1), an
    x of float64, and a BSR weight of another pattern, whose blocks past the op's widest block-row were cut."""
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    lowrank = knn.LowRankLinear(16, 8, 4, bias=False)
    f1, f2 = [w.detach() for w in lowrank._weights()]
    sparse = knn.BlockSparseLinear(16, 16, (4, 4), density=0.5, bias=False)
    crow, col, values = [w.detach() for w in sparse._weights()]
    for xx, weights, op, error, words in (
        (x, [f1], lowrank.op_text, TypeError, "the lowrank op takes 2 weight tensor"),
        (x.double(), [f1.double(), f2.double()], lowrank.op_text, TypeError, "x.dtype is torch.float64"),
        (x, [crow, (col + 1) % 4, values], sparse.op_text, ValueError, "w stores its blocks at other places"),
    ):
        with pytest.raises(error, match=words):
            torch.ops.kt.apply(xx, weights, op)
        with pytest.raises(error, match=words):
            knn.decompose(xx, weights, op)
