"""benchmarks/nn_layers.py on a machine without a GPU: its cases, its arguments and its refusal."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("nn_layers")


def test_lists_every_layer_kind(bench, capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("dense", "lowrank", "blocksparse", "monarch", "butterfly", "fft"):
        assert name in listed


def test_only_filters_and_refuses_an_unknown_name(bench, capsys):
    assert bench.main(["--list", "--only", "monarch"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    with pytest.raises(SystemExit) as exited:
        bench.main(["--list", "--only", "nothing-like-this"])
    assert exited.value.code == 2


def test_refuses_without_a_gpu(bench, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rows.csv"
    assert bench.main(["--budget", "0", "--csv", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nn_layers: needs a CUDA GPU; this machine has none (--device cpu times the CPU path)"
    assert not out.exists()


def test_cpu_run_times_every_layer_against_its_formula(bench, capsys, tmp_path):
    """--device cpu: kt.nn's PyTorch path on CPU tensors, each layer checked against its formula, then timed by
    the wall clock beside nn.Linear and the formula (figures: BENCHMARKS.md; not asserted, a CI runner is busy)."""
    import csv

    out = tmp_path / "rows.csv"
    assert bench.main(["--device", "cpu", "--only", "r=64", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    # the whole command: a caption rebuilt from --device alone dropped --only
    assert (
        f"`python benchmarks/nn_layers.py --device cpu --only r=64 --csv {out}`" in printed
        and "cores" in printed
    )
    (row,) = list(csv.DictReader(out.open()))
    assert row["command"] == f"python benchmarks/nn_layers.py --device cpu --only r=64 --csv {out}"
    assert row["layer"] == "lowrank r=64" and float(row["rel_err"]) < 1e-5
    assert float(row["kt_ms"]) > 0 and float(row["baseline_ms"]) > 0 and float(row["linear_ms"]) > 0
    assert "cores" in row["device"]


def test_cpu_lists_the_cpu_sizes(bench, capsys):
    assert bench.main(["--list", "--device", "cpu"]) == 0
    listed = capsys.readouterr().out
    assert (
        "monarch 8 blocks" in listed
        and "butterfly n=512" in listed
        and "F.linear with W.to_dense()" in listed
    )


def test_negative_budget_is_a_usage_error(bench):
    with pytest.raises(SystemExit) as exited:
        bench.main(["--budget", "-1"])
    assert exited.value.code == 2


def test_a_layer_whose_output_is_not_its_formulas_is_named_and_the_run_exits_1(bench, capsys, monkeypatch):
    """Its error went into the CSV alone: the layer was timed and tabled as any other, and the run exited 0."""
    import dataclasses

    cases = bench.cases

    def doubled(device):  # the formula made twice the layer's output: the layer reads as wrong
        return [
            dataclasses.replace(c, baseline=lambda layer, made=c.baseline: lambda x: 2 * made(layer)(x))
            for c in cases(device)
        ]

    monkeypatch.setattr(bench, "cases", doubled)
    assert bench.main(["--device", "cpu", "--only", "r=64"]) == 1
    err = capsys.readouterr().err
    assert (
        "nn_layers: lowrank r=64: kt's output is off the formula's by a relative error of 5.00e-01" in err
    ), err
    assert "its times above are of a wrong result" in err
