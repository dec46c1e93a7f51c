"""Every example op file (examples/*.yaml) tuned on the CPU as a user first tries them: one `kt tune` of them all
(`kt tune` takes several files and overlaps their ops on one set of workers, so the suite starts its workers and
checks each example once, not once per example). Each example's artifact then loads with kt.load and computes
its op on a new batch, and its database rows pass the dataset's checks."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import kt
from kt.autotune.checking import relative_error
from kt.autotune.dataset import read_rows
from kt.ir import op_from_spec
from kt.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = sorted(path.stem for path in EXAMPLES.glob("*.yaml"))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from kt.cli import main

    where = tmp_path_factory.mktemp("examples")
    files = [str(EXAMPLES / f"{name}.yaml") for name in NAMES]
    result = CliRunner().invoke(
        main, ["tune", *files, "--budget", "1", "--db", str(where / "t.db"), "--out", str(where / "art")]
    )
    artifacts = {}
    if result.exit_code == 0:
        by_spec = [(kt.load(path).spec, path) for path in (where / "art").iterdir()]
        for name in NAMES:
            artifacts[name] = [path for spec, path in by_spec if spec == load_spec(EXAMPLES / f"{name}.yaml")]
    return where, result, artifacts


def test_one_tune_of_every_example_on_the_cpu_exits_0_with_an_unmeasured_artifact_each(tuned):
    where, result, _ = tuned
    assert len(NAMES) >= 9 and {"dense", "fft_half", "sum"} <= set(NAMES), NAMES
    assert result.exit_code == 0, result.output
    assert result.output.count("measured: false") == len(NAMES), result.output
    assert len(list((where / "art").iterdir())) == len(NAMES)


@pytest.mark.parametrize("example", NAMES)
def test_each_examples_artifact_loads_computes_its_op_and_its_rows_pass_the_dataset_checks(tuned, example):
    where, result, artifacts = tuned
    assert result.exit_code == 0, result.output
    spec = load_spec(EXAMPLES / f"{example}.yaml")
    (artifact,) = artifacts[example]
    kernel = kt.load(artifact)
    if spec.op == "sum":
        small = spec.replace(
            terms=[{**t, "shape": {**t["shape"], "batch": 5}} for t in spec.to_dict()["terms"]]
        )
    elif (
        spec.op == "dense"
    ):  # a GEMM kernel takes any m, n, k: 5 x 72 x 40 (partial tiles) in the interpreter
        small = spec.replace(shape={"m": 5, "n": 72, "k": 40})
    else:
        small = spec.replace(shape={**spec.to_dict()["shape"], "batch": 5})
    args = kt.random_args(small, seed=1, device="cpu")
    y = kernel(*args)
    reference = kt.reference(small)(*(a.to(torch.float64) if a.is_floating_point() else a for a in args))
    assert (
        y.shape == reference.shape and relative_error(y, reference) < op_from_spec(spec).problem.tolerance()
    )
    rows = [row for row in read_rows(where / "t.db") if row["spec_name"] == artifact.name]
    # candidate zero and the config, each once (their checks run side by side: the first done is the first row)
    assert sorted(r["config_key"] == "pytorch" for r in rows) == [False, True], rows
    family = op_from_spec(spec).problem.family
    assert all(r["family"] == family and r["status"] == "ok" and r["runner"] == "interpret" for r in rows)
