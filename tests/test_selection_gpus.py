"""kt.nn's choice of kernel on GPUs of several kinds, without a GPU: the driver's names and the database's rows
stand in (what runs is built and checked here; a GPU test runs them, tests/test_gpu.py)."""

import json
import logging
import sqlite3
from types import SimpleNamespace

import pytest
import torch

import kt
from kt.autotune import gpuinfo
from kt.nn import selection

OP = {"op": "dense", "dtype": "float16", "shape": {"k": 64, "n": 96}}
RTX = "NVIDIA GeForce RTX 4090"
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"


@pytest.fixture
def gpus(monkeypatch):
    """`use(*names)`: a machine whose cuda:i is names[i] (torch's and NVML's cuda:0 alike)."""

    def use(*names):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(
            torch.cuda,
            "get_device_name",
            lambda device=None: names[torch.device(device or "cuda:0").index or 0],
        )
        monkeypatch.setattr(gpuinfo, "visible_gpu", lambda: SimpleNamespace(name=names[0]))

    return use


def _row(config: dict) -> dict:
    return {"config_key": "measured", "config": config, "db": "tuning.db"}


def test_a_card_without_a_profile_runs_its_database_rows_and_else_pytorchs_path(gpus, monkeypatch, caplog):
    """On an RTX 4090 every layer's first call raised "no built-in profile ... pass --device gpu.json" (kt.build
    resolved cuda:0's profile), its database rows of that very card included."""
    gpus(RTX)
    spec = selection.bucket_spec(OP, 40)
    config = kt.build(spec, device="h100").config
    monkeypatch.setattr(selection, "_best_row", lambda problem, family, gpu: _row(config.to_dict()))
    chosen = selection._select(spec, torch.device("cuda", 0))
    assert (chosen.source, chosen.kernel.config) == ("database", config)
    assert "on gpu" in chosen.kernel.source  # the module names no profile it was not made for
    monkeypatch.setattr(selection, "_best_row", lambda problem, family, gpu: None)
    chosen = selection._select(spec, torch.device("cuda", 0))
    assert chosen.source == selection.NO_PROFILE and chosen.kernel.pytorch
    assert f"no device profile for {RTX}" in chosen.where and "kt tune --device gpu.json" in chosen.where
    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        selection._log(chosen)
    assert "untuned: no device profile for" in caplog.text


def test_the_cost_models_pick_is_ranked_for_the_tensors_gpu_not_cuda_0s(gpus, monkeypatch):
    """cuda:1 an A100 beside an H100 as cuda:0: its pick was ranked (and compile-checked) for the H100."""
    from kt import api

    gpus(H100, A100)
    monkeypatch.setattr(selection, "_best_row", lambda problem, family, gpu: None)
    monkeypatch.setattr(api, "_build_refusal", lambda *args: None)  # no compile here: each config builds
    spec = selection.bucket_spec(OP | {"shape": {"k": 4096, "n": 4096}}, 512)
    on_a100 = selection._select(spec, torch.device("cuda", 1))
    assert (
        on_a100.where.startswith("ranked for a100")
        and on_a100.kernel.config == kt.build(spec, device="a100").config
    )
    assert selection._select(spec, torch.device("cuda", 0)).where.startswith("ranked for h100")


def test_a_database_damaged_past_its_header_is_one_warning_not_a_traceback(
    gpus, monkeypatch, caplog, tmp_path
):
    """Damaged pages fail the query, not the open: sqlite3's DatabaseError came out of a layer's first call."""
    from kt.autotune.database import Database

    gpus(H100)
    path = tmp_path / "t.db"
    with Database(path):
        pass
    monkeypatch.setenv("KT_DB", str(path))

    def damaged(self, **where):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Database, "find", damaged)
    spec = selection.bucket_spec(OP, 40)
    (node,) = kt.ir.op_from_spec(spec).kernel_graph().kernels
    from kt.codegen import family_for

    with caplog.at_level(logging.WARNING, logger="kt.nn"):
        for _ in range(3):  # once, not once per layer, bucket and backward product
            assert selection._best_row(node.problem, family_for(node.problem), H100) is None
    assert caplog.text.count("cannot read the tuning database") == 1
    assert "database disk image is malformed" in caplog.text and str(path) in caplog.text


def test_a_choice_that_failed_to_be_made_again_is_not_run_the_next_time(monkeypatch):
    """Marked stale (use_artifacts), then a selection that raised: the next call ran the old choice."""
    from kt.nn.functional import op_text

    made = []

    def select(spec, device):
        made.append(spec)
        if len(made) == 2:
            raise kt.DatabaseError("cannot read the tuning database (test)")
        return selection.Selection(spec, kt.build(spec, device="h100"), "cost model", f"choice {len(made)}")

    monkeypatch.setattr(selection, "_select", select)
    text, cuda = op_text(OP | {"name": "stale_test"}), torch.device("cuda", 0)
    first = selection.kernel_for(text, 40, cuda)
    selection._STALE.update(selection._SELECTED)  # as use_artifacts marks them
    with pytest.raises(kt.DatabaseError):
        selection.kernel_for(text, 40, cuda)
    again = selection.kernel_for(text, 40, cuda)
    assert len(made) == 3 and again is not first
    assert selection.kernel_for(text, 40, cuda) is again and len(made) == 3


def test_an_artifact_of_the_layers_op_at_another_row_count_is_named_not_passed_over(tmp_path, caplog):
    """An artifact tuned at the real batch (m=20) where the layer looks up the bucket (m=32): skipped, and the
    warning that followed told the user to point KT_ARTIFACTS at the tune, which they had."""
    spec = kt.parse_spec(
        {**OP, "name": "rows20", "shape": {"m": 20, "k": 64, "n": 96}, "tune": {"budget": 1}}
    )
    result = kt.tune(spec, db=tmp_path / "t.db", workers=1, progress=False)
    result.save(tmp_path / "art" / "rows20")
    _selected_at_20_rows(OP, tmp_path / "art", caplog, "m=20, where this layer looks up m=32")
    assert json.loads((tmp_path / "art" / "rows20" / "meta.json").read_text())["problem"]["m"] == 20


def _selected_at_20_rows(op, artifacts, caplog, named):
    """The layer's selection for `op` at 20 rows (its bucket, 32) with `artifacts` in use: the cost model's,
    with the warning that names the artifact at another row count (`named`)."""
    selection.use_artifacts(artifacts)
    try:
        with caplog.at_level(logging.WARNING, logger="kt.nn"):
            chosen = selection._select(selection.bucket_spec(op, 20), torch.device("cpu"))
        assert chosen.source == "cost model"
        assert f"holds this op with {named}" in caplog.text, caplog.text
    finally:
        selection._ARTIFACT_DIRS.clear()


@pytest.mark.parametrize(
    "op",
    [
        {"op": "monarch", "dtype": "float16", "shape": {"n": 32, "nblocks": 4}},
        {"op": "sum", "dtype": "float16", "terms": [
            {"op": "lowrank", "shape": {"dims": [32, 4, 48]}},
            {"op": "blocksparse", "shape": {"in": 32, "out": 48},
             "sparsity": {"block": [16, 16], "pattern": "diagonal"}},
        ]},
    ],
    ids=["monarch", "sum"],
)  # fmt: skip
def test_a_structured_or_sum_artifact_at_another_row_count_is_named_too(op, tmp_path, caplog):
    """The structured families call their rows `rows` (the near check knew a GEMM's m and batch), and a sum
    keeps its rows in its terms: an artifact of such an op tuned at the real batch was passed over without a
    word. meta.json as a tune writes it, of the op at 20 rows where the layer looks up its bucket, 32."""
    from kt.codegen import family_for
    from kt.ir import op_from_spec

    def problem(rows, exact):
        (node,) = op_from_spec(selection.bucket_spec(op, rows, exact=exact)).kernel_graph().kernels
        return node.problem

    tuned = problem(20, exact=True)
    folder = tmp_path / "art" / "at20"
    folder.mkdir(parents=True)
    meta = {"family": tuned.family, "problem": tuned.to_dict(), "family_version": family_for(tuned).version}
    (folder / "meta.json").write_text(json.dumps(meta))
    _selected_at_20_rows(op, tmp_path / "art", caplog, "rows=20, where this layer looks up rows=32")
