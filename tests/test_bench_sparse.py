"""benchmarks/sparse_vs_torch.py on the CPU: its cases, its arguments, its baselines' correctness check, and its
refusal without a GPU (it times nothing here)."""

import pytest
import torch
from conftest import benchmark_module

import kt
from kt.autotune.checking import relative_error


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("sparse_vs_torch")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_cases_are_the_issues_shapes_and_valid_specs(bench):
    cases = bench.cases()
    sparse = [c for c in cases if c.op == "blocksparse"]
    lowrank = [c for c in cases if c.op == "lowrank"]
    assert len(sparse) == 8 and len(lowrank) == 5 and len(cases) == 13
    assert "blocksparse 64x64 density=10%" in [c.name for c in sparse]
    assert "lowrank 4096->64->4096" in [c.name for c in lowrank]
    blocks = set()
    for case in sparse:
        spec = kt.parse_spec(case.spec)
        assert (spec.dtype, spec.shape.batch, spec.in_features, spec.out_features) == (
            "float16",
            8192,
            4096,
            4096,
        )
        blocks.add((spec.sparsity.block, spec.sparsity.density))
        assert list(case.baselines) == [bench.TORCH_BSR, bench.DENSE]
        assert case.targets == ({bench.TORCH_BSR: 1.3} if spec.sparsity.density == 0.1 else {})
    assert blocks == {((b, b), d) for b in (32, 64) for d in (0.05, 0.1, 0.25, 0.5)}
    ranks = []
    for case in lowrank:
        spec = kt.parse_spec(case.spec)
        assert (spec.dtype, spec.shape.batch, spec.shape.dims[0], spec.shape.dims[2]) == (
            "float16",
            8192,
            4096,
            4096,
        )
        ranks.append(spec.shape.dims[1])
        assert list(case.baselines) == [bench.TWO_MATMULS]
        assert case.targets == ({bench.TWO_MATMULS: 1.2} if spec.shape.dims[1] <= 64 else {})
    assert ranks == [16, 32, 64, 128, 256]


def _small(case, dtype="float32"):
    """The case's op on 3 rows of 256 features (same blocks, density and rank)."""
    if case.op == "blocksparse":
        shape = {"batch": 3, "in": 256, "out": 256}
    else:
        shape = {"batch": 3, "dims": [256, case.spec["shape"]["dims"][1], 256]}
    return kt.parse_spec({**case.spec, "dtype": dtype, "shape": shape})


def test_every_baseline_computes_the_op_and_passes_the_check(bench):
    for case in bench.cases():
        spec = _small(case)
        args = kt.random_args(spec, seed=0, device="cpu")
        expected = kt.reference(spec)(*args).double()
        for name, factory in case.baselines.items():
            checked = bench.check(lambda f=factory, a=args: f(a), expected, 1e-5)
            assert checked.status == "ok", (case.name, name, checked.status)
            assert checked.run is not None and checked.rel_err < 1e-5
            assert relative_error(checked.run(), expected) == checked.rel_err


def test_a_refusing_or_wrong_baseline_is_recorded_with_nothing_to_time(bench):
    expected = torch.ones(3, 4, dtype=torch.float64)

    def refuses():
        raise NotImplementedError("\"addmm\" not implemented for 'Half'\nmore detail\nand more")

    refused = bench.check(refuses, expected, 1e-3)
    assert refused.run is None and refused.rel_err is None
    assert refused.status == "unavailable: NotImplementedError: \"addmm\" not implemented for 'Half'"
    wrong = bench.check(lambda: lambda: 2 * expected, expected, 1e-3)
    assert wrong.run is None and wrong.status.startswith("wrong: relative error 1.00e+00")
    shape = bench.check(lambda: lambda: expected.T, expected, 1e-3)
    assert shape.run is None and shape.status == "wrong: output shape (4, 3), expected (3, 4)"


def test_interpreter_rows_give_no_best_fused_or_unfused(bench):
    """Rows checked in the interpreter carry no runtime: they are never a best config's figure."""
    rows = [
        {"status": "ok", "config": {"fused": 1}, "config_key": "a-fused"},
        {"status": "ok", "config": {"fused": 0}, "config_key": "b", "runtime_ms": None},
        {"status": "wrong_result", "config": {"fused": 0}, "config_key": "c"},
    ]
    assert bench.best_rows_by_structure(rows) == {}


def test_arguments(bench):
    args = bench.parse_args([])
    assert (args.budget, args.db, args.csv, args.only, args.list) == (64, None, None, "", False)
    assert len(args.cases) == 13
    assert {c.op for c in bench.parse_args(["--only", "lowrank"]).cases} == {"lowrank"}
    assert len(bench.parse_args(["--only", "blocksparse"]).cases) == 8
    assert [c.name for c in bench.parse_args(["--only", "64x64 density=10%"]).cases] == [
        "blocksparse 64x64 density=10%"
    ]
    args = bench.parse_args(["--budget", "8", "--db", "t.db", "--csv", "out.csv"])
    assert (args.budget, args.db, str(args.csv)) == (8, "t.db", "out.csv")


@pytest.mark.parametrize("argv", [["--only", "monarch"], ["--budget", "0"], ["--budget", "x"]])
def test_bad_arguments_exit_2(bench, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(bench, no_gpu, tmp_path, capsys):
    out = tmp_path / "results" / "sparse.csv"
    assert bench.main(["--budget", "1", "--csv", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "sparse_vs_torch: needs a CUDA GPU; this machine has none\n"
    assert not out.exists() and not out.parent.exists()


def test_list_prints_the_cases_without_a_gpu(bench, no_gpu, capsys):
    assert bench.main(["--list", "--only", "lowrank"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[0].startswith("lowrank 4096->16->4096: lowrank 8192 rows")
    assert all(line.endswith("baselines: two torch.matmul") for line in lines)
