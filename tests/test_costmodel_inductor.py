"""The cost model on PyTorch Inductor's real H100/A100 measurements (../shared/data/autoheuristic, skipped when
absent), the models kt ships, and what `kt predict` and `kt tune` do with them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kt.autotune.dataset import baseline_record, is_baseline, is_measured, to_record
from kt.autotune.tune import MIN_SIZED_BUDGET, size_budget
from kt.cli import main
from kt.costmodel.evaluate import ape
from kt.costmodel.forest import ForestModel, _payload_cache
from kt.costmodel.models import MODELS_DIR, models_dir, shipped_model_path
from kt.costmodel.roofline import roofline_time
from kt.device import A100, H100, H200, H200_NVL

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "autoheuristic"
H100_LOG = DATA / "h100_mm.txt.gz"
needs_data = pytest.mark.skipif(not H100_LOG.is_file(), reason="../shared/data/autoheuristic is absent")


def kt(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def h100_rows():
    from kt.autotune.inductor import read_logs

    return read_logs([H100_LOG]).rows()


def records_of(rows, shapes=None):
    measured = [to_record(r, "test") for r in rows if is_measured(r)]
    baseline = [baseline_record(r, "test") for r in rows if is_baseline(r)]
    if shapes is not None:
        measured = [r for r in measured if r["shape"] in shapes]
        baseline = [r for r in baseline if r["shape"] in shapes]
    return measured, baseline


@needs_data
def test_import_then_eval_prints_the_headline_line(tmp_path):
    csv = tmp_path / "h100.csv"
    result = kt("import", "inductor", H100_LOG, "--out", csv)
    assert result.exit_code == 0, result.stderr
    result = kt("costmodel", "eval", "--data", csv, "--folds", "3")
    assert result.exit_code == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"MAPE ([\d.]+)% \| median APE ([\d.]+)% \| Spearman within problem ([\d.]+) \| top-1 ([\d.]+) \| "
        r"top-5 recall ([\d.]+) \| shapes (\d+)",
        last,
    )
    assert match, last
    mape, _, spearman, top1, _, shapes = (float(g) for g in match.groups())
    assert shapes == 82
    # three folds of h100_mm alone (no timm rows): well short of the shipped model's data, but it must rank
    assert mape < 20 and spearman > 0.8 and top1 > 0.9, last


@needs_data
def test_the_baseline_forest_predicts_cublas_on_held_out_problems_better_than_the_roofline(h100_rows):
    shapes = sorted({r["shape"] for r in records_of(h100_rows)[0]})
    held = set(shapes[::4])
    train, train_base = records_of(h100_rows, set(shapes) - held)
    _, test_base = records_of(h100_rows, held)
    model = ForestModel(H100, n_estimators=30).fit(train, baseline=train_base)
    assert model.predicts_baseline and model.trained["baseline_rows"] == len(train_base)
    truth = np.array([r["runtime_ms"] for r in test_base])
    forest = model.predict_baseline(test_base).runtime_s * 1e3
    roofline = roofline_time(test_base, H100) * 1e3
    assert np.median(ape(truth, forest)) < 0.5 * np.median(ape(truth, roofline))


@needs_data
def test_rows_of_another_gpu_train_with_their_own_profile(h100_rows):
    measured, _ = records_of(h100_rows)
    shapes = sorted({r["shape"] for r in measured})
    own = [r for r in measured if r["shape"] in set(shapes[:10])]
    # H100 rows standing in for another GPU's
    other = [r for r in measured if r["shape"] in set(shapes[10:30])]
    model = ForestModel(H100, n_estimators=10).fit(own, others=[(A100, other)])
    assert model.trained["other_devices"] == [{"device": "a100", "rows": len(other)}]
    assert model.trained["rows"] == len(own) and len(model.trained["shape_keys"]) == 30
    assert f"plus {len(other)} rows of a100" in model.describe()
    prediction = model.predict(measured[:50]).runtime_s
    assert np.all(np.isfinite(prediction)) and np.all(prediction > 0)


def test_the_budget_shrinks_only_where_pytorch_is_predicted_well_ahead():
    assert size_budget(64, None) == (64, None)
    assert size_budget(64, 1.3) == (64, None)
    assert size_budget(64, 0.9) == (64, None)
    sized, note = size_budget(64, 0.45)
    assert sized == 32 and "0.45x PyTorch's path" in note and "32 candidates, not 64" in note
    assert size_budget(64, 0.05)[0] == 16  # never below a quarter
    assert size_budget(6, 0.1)[0] == MIN_SIZED_BUDGET
    assert size_budget(3, 0.1) == (3, None)


@pytest.mark.shipped_models  # the baseline forest sizes the budget
def test_only_the_model_led_searches_are_sized_so_kt_collect_measures_what_it_is_asked():
    """kt collect's sweeps (exhaustive) and samples (random) were sized as a tune is: on a GPU, where cuBLAS
    was predicted well ahead, --all measured the forest's best 3,729 of 6,120 configs and --sample 24 its 15."""
    import kt

    spec = {
        "op": "dense",
        "dtype": "float32",
        "shape": {"m": 2048, "n": 2048, "k": 8192},
        "layout": {"a": "row", "b": "col"},
    }
    budgets = {
        strategy: kt.plan(spec, budget=24, strategy=strategy, measures_time=True, device="h100").budget
        for strategy in ("guided", "top", "random", "exhaustive")
    }
    assert budgets["guided"] == budgets["top"] < 24 and budgets["random"] == budgets["exhaustive"] == 24, (
        budgets
    )


# -- the shipped models ----------------------------------------------------------------------------------------

SHIPPED = MODELS_DIR / "h100.skops"


def needs_model(test):
    """Run with kt's own forests visible (see conftest.shipped_models), when they have been fitted."""
    skip = pytest.mark.skipif(not SHIPPED.is_file(), reason="kt/costmodel/models/h100.skops not fitted yet")
    return pytest.mark.shipped_models(skip(test))


@needs_model
@pytest.mark.parametrize("key", ["h100", "a100"])
def test_a_shipped_model_is_small_loads_fast_and_names_its_source(key):
    """The first load reads the skops file (seconds, scikit-learn's and skops' imports with it) and keeps kt's
    quick copy in the cache folder; every later one, each `kt tune` and `kt predict`, reads that copy."""
    path = MODELS_DIR / f"{key}.skops"
    assert path.stat().st_size <= 20 * 2**20
    profile = {"h100": H100, "a100": A100}[key]
    ForestModel.load(path, profile)  # this run's cache folder starts empty (conftest): the skops read
    assert _payload_cache(path.read_bytes()).is_file(), "the quick copy the next loads read"
    start = time.perf_counter()
    model = ForestModel.load(path, profile)
    assert time.perf_counter() - start < 2.0
    trained = model.trained
    assert "autoheuristic-datasets" in trained["origin"] and f"{key}_mm.txt.gz" in trained["origin"]
    assert trained["rows"] > 10_000 and trained["shapes"] > 300 and trained["baseline_rows"] > 300
    assert {"mape", "top1", "spearman", "how"} <= set(trained["evaluation"])
    assert model.predicts_baseline and not model.predicts_power
    assert model.origin == trained["origin"] and model.origin not in model.describe()


@needs_model
def test_hopper_cards_use_the_h100_model_with_their_own_roofline():
    assert models_dir() == MODELS_DIR
    assert shipped_model_path(H100) == SHIPPED
    assert shipped_model_path(H200) == SHIPPED and shipped_model_path(H200_NVL) == SHIPPED
    assert shipped_model_path(A100) == MODELS_DIR / "a100.skops"
    from kt.autotune.tune import resolve_model

    model = resolve_model(H200)
    assert model.device is H200 and model.fitted_device.key == "h100"
    assert "forest for h100 predicting h200 with its own roofline" in model.describe()


@needs_model
def test_kt_predict_uses_the_shipped_model_with_no_flag_and_says_where_it_came_from():
    result = kt("predict", ROOT / "examples" / "dense.yaml", "--top", "3")  # no flag: auto (h100 here)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "model: forest for h100" in text
    assert "the forest was fitted on PyTorch Inductor max-autotune logs (autoheuristic-datasets@" in text
    ratio = re.search(r"predicted best: ([\d.]+)x torch.matmul", text)
    assert ratio and 0.2 < float(ratio.group(1)) < 5, text
    assert "power predictions stay untrained" in text
    assert "less than one kernel launch" not in text


@needs_model
def test_kt_predict_says_when_the_forest_predicts_less_than_a_launch(tmp_path):
    """An 8x8x8 GEMM, far below every shape in the forest's data: its times (tens of nanoseconds) printed as
    0.0000 ms beside a ratio to PyTorch computed from them, with no word that they are out of the forest's range."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("op: dense\nshape: {m: 8, n: 8, k: 8}\n")
    result = kt("predict", spec, "--top", "1")
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "0.0000" not in text
    assert re.search(
        r"note: the forest for h100 predicts the best config at \S+ ms( and the baseline forest predicts "
        r"PyTorch's path at \S+ ms)?, less than one kernel launch \(0.00400 ms\), which no "
        r"measured kernel took: outside what it was fitted on, so read the order of its configs, not their "
        r"times or the ratio to PyTorch",
        text,
    ), text


def test_without_a_model_file_kt_ranks_with_the_analytic_model(tmp_path, monkeypatch):
    from kt.autotune.tune import resolve_model

    monkeypatch.setenv("KT_MODELS_DIR", str(tmp_path))
    assert shipped_model_path(H100) is None and resolve_model(H200).name == "analytic"


def test_a_damaged_model_in_the_users_models_dir_is_not_called_kts_own(tmp_path, monkeypatch, caplog):
    """The warning said "kt's own h100 model is not usable here" of the user's file in $KT_MODELS_DIR."""
    import logging

    from kt.autotune.tune import resolve_model

    (tmp_path / "h100.skops").write_bytes(b"PK\x03\x04 not a whole zip")
    monkeypatch.setenv("KT_MODELS_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="kt"):
        assert resolve_model(H100).name == "analytic"
    (warned,) = [r.getMessage() for r in caplog.records if r.name == "kt"]
    assert warned.startswith("$KT_MODELS_DIR's h100 model is not usable here (model: "), warned
    assert warned.endswith("; ranking with the analytic model"), warned


def test_a_models_dir_that_is_no_folder_is_warned_of_once(tmp_path, monkeypatch, caplog):
    """A mistyped KT_MODELS_DIR switched kt to the analytic model without a word."""
    import logging

    from kt.costmodel import models

    typo = str(tmp_path / "modles")
    monkeypatch.setenv("KT_MODELS_DIR", typo)
    monkeypatch.setattr(models, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="kt"):
        assert shipped_model_path(H100) is None and shipped_model_path(H200) is None
    warned = [r.getMessage() for r in caplog.records if r.name == "kt"]
    assert warned == [
        f"KT_MODELS_DIR: {typo!r} is not a folder, so kt uses none of its forests (the analytic model ranks); "
        "unset it for the models kt ships"
    ]
    caplog.clear()
    monkeypatch.setenv(
        "KT_MODELS_DIR", str(tmp_path)
    )  # an empty folder, how one asks for no forest: no warning
    with caplog.at_level(logging.WARNING, logger="kt"):
        assert shipped_model_path(H100) is None
    assert not caplog.records
    # models of the user's, none for this device (or its architecture's stand-in): said only "model: analytic"
    (tmp_path / "a100.skops").write_bytes(b"PK\x03\x04")
    with caplog.at_level(logging.WARNING, logger="kt"):
        assert shipped_model_path(H200) is None and shipped_model_path(H200) is None
    assert [r.getMessage() for r in caplog.records if r.name == "kt"] == [
        f"KT_MODELS_DIR: {str(tmp_path)!r} holds a100.skops but no h200.skops or h100.skops, so kt uses none of "
        "its forests for h200 (the analytic model ranks); fit one with `kt costmodel fit --device h200 --out "
        f"{tmp_path / 'h200.skops'}`, or unset it for the models kt ships"
    ]
