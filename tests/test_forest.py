"""The learned cost model: fit, predict with spread, save and load, and every refusal of a file kt must not trust.

No runtime or power figure here is measured or made up. The mechanics tests fit on the analytic model's
predictions (kt.costmodel.roofline.gemm_terms) and on the H100 datasheet's board power: a model's outputs and a
datasheet figure standing in for targets, not timings or readings, and never stored as measured. The accuracy test
uses GPPerf's real CUTLASS SGEMM measurements on an RTX 4070 (/work/shared/data/gpperf/README.md), read where they
lie and skipped where they are absent.
"""

import dataclasses
import datetime
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io
from conftest import GPPERF, benchmark_module, kt_cli
from conftest import stand_in_records as shared_stand_in_records
from sklearn.ensemble import RandomForestRegressor

import kt
from kt.costmodel.evaluate import ape, cross_validate, r2
from kt.costmodel.features import FEATURE_NAMES
from kt.costmodel.forest import (
    MIN_ROWS,
    PARALLEL_FIT_ROWS,
    PARALLEL_ROWS,
    TRUSTED_TYPES,
    ForestModel,
    fit_jobs,
    per_tree,
)
from kt.costmodel.roofline import gemm_terms
from kt.device import H100, H200, get_profile
from kt.errors import ModelError

GPPERF_CSV = GPPERF / "cutlass_results_flat.csv"

SHAPES = [(4096, 4096, 4096), (1024, 4096, 512), (300, 2000, 1000), (64, 8192, 4096), (2048, 512, 8192)]
TILES = [(128, 128, 64), (128, 256, 64), (64, 64, 32), (64, 128, 64), (32, 64, 128), (256, 128, 32)]


CONFIGS = [(bm, bn, bk, w, st) for (bm, bn, bk), w, st in zip(TILES * 2, [4, 8] * 6, [3, 4, 2, 3, 5, 4] * 2)]


def stand_in_records(power_rows: int = 0) -> list[dict]:
    """See conftest.stand_in_records: the analytic model's outputs standing in for targets, not timings."""
    return shared_stand_in_records(SHAPES, CONFIGS, power_rows)


@pytest.fixture(scope="module")
def fitted():
    return ForestModel(H100, n_estimators=16, n_jobs=1).fit(stand_in_records(power_rows=20))


@pytest.fixture
def saved(fitted, tmp_path):
    return fitted.save(tmp_path / "h100.skops")


def rewrite(path: Path, edit) -> None:
    """Load the file's payload, let `edit` change it, and write it back as skops."""
    payload = skops.io.loads(path.read_bytes(), trusted=TRUSTED_TYPES)
    edit(payload)
    path.write_bytes(skops.io.dumps(payload))


def test_a_saved_model_loads_and_predicts_exactly_the_same(fitted, saved):
    records = stand_in_records()
    before = fitted.predict(records)
    loaded = ForestModel.load(saved, H100)
    after = loaded.predict(records)
    assert np.array_equal(before.runtime_s, after.runtime_s)
    assert np.array_equal(before.runtime_spread, after.runtime_spread)
    assert np.array_equal(before.power_w, after.power_w)
    # the stand-in watts are one datasheet figure for every row, so no power tree splits, and it says so
    assert (
        loaded.describe()
        == fitted.describe()
        == (
            "forest for h100: 60 rows, 5 shapes, power from 20 rows (none of its 16 trees splits them: it predicts "
            "one value for every config)"
        )
    )
    assert ForestModel.load(saved).device == H100  # without a device to match, the file's own profile


def test_predictions_carry_a_finite_spread_that_is_not_zero_everywhere(fitted):
    prediction = fitted.predict(stand_in_records())
    assert np.all(np.isfinite(prediction.runtime_s)) and np.all(prediction.runtime_s > 0)
    assert np.all(np.isfinite(prediction.runtime_spread)) and np.all(prediction.runtime_spread >= 0)
    assert prediction.runtime_spread.max() > 0
    assert len(fitted.predict([])) == 0


def test_the_forest_learns_its_targets_well_on_rows_it_saw(fitted):
    records = stand_in_records()
    target = np.array([r["runtime_ms"] for r in records])
    assert r2(np.log(target), np.log(fitted.predict(records).runtime_s * 1e3)) > 0.9


def test_power_is_predicted_only_with_enough_power_rows():
    few = ForestModel(H100, n_estimators=4, n_jobs=1).fit(stand_in_records(power_rows=MIN_ROWS - 1))
    assert not few.predicts_power and few.predict(stand_in_records()[:3]).power_w is None
    enough = ForestModel(H100, n_estimators=4, n_jobs=1).fit(stand_in_records(power_rows=MIN_ROWS))
    assert enough.predicts_power
    assert np.allclose(enough.predict(stand_in_records()[:3]).power_w, H100.tdp_w)


def test_the_power_forest_learns_from_this_gpus_rows_only():
    """Power is this GPU's alone, so the power forest fits on the own records' features: a bug taking the
    feature rows of another GPU's records (stacked after the own ones) pairs each power with some other
    config and predicts the wrong watts for this GPU's own configs."""
    records = stand_in_records()
    for record in records:
        # the datasheet's board power for 8 warps and half of it for 4, standing in as a target (not a reading)
        record["power_w"] = H100.tdp_w if record["num_warps"] == 8 else H100.tdp_w / 2
    # H100 rows standing in for another GPU's, listed in reverse: row i there is a config of the other warps
    others = list(reversed(stand_in_records()))
    model = ForestModel(H100, n_estimators=16, n_jobs=1).fit(records, others=[(H200, others)])
    assert model.predicts_power and model.trained["power_rows"] == len(records)
    power = np.array([r["power_w"] for r in records])
    assert np.allclose(model.predict(records).power_w, power, rtol=0.1)


def test_fit_refuses_too_few_rows():
    with pytest.raises(ValueError, match=f"at least {MIN_ROWS} measured records, got {MIN_ROWS - 1}"):
        ForestModel(H100).fit(stand_in_records()[: MIN_ROWS - 1])


def test_no_forest_is_fitted_on_rows_too_few_for_any_tree_to_split():
    """A tree splits only into leaves of min_samples_leaf (3) rows, so on 4 or 5 rows every tree of the runtime,
    power and baseline forests was one leaf: a constant, fitted and saved as a model without a word."""
    records = stand_in_records()
    for rows in (4, 5):
        with pytest.raises(
            ValueError, match=f"at least 6 measured records, got {rows}: a tree splits only into "
        ):
            ForestModel(H100, n_estimators=8, n_jobs=1).fit(records[:rows])
    model = ForestModel(H100, n_estimators=8, n_jobs=1).fit(records, baseline=records[:5])
    assert model.baseline_forest is None, "5 baseline rows split no tree"
    model = ForestModel(H100, n_estimators=8, n_jobs=1).fit(stand_in_records(power_rows=5))
    assert model.power_forest is None and not model.predicts_power
    assert "no power (read in 5 rows; a power forest needs 6)" in model.describe()
    # the floor follows the leaf size: leaves of one row split two rows (where a bootstrap sample holds both)
    tiny = ForestModel(H100, n_estimators=8, n_jobs=1, min_samples_leaf=1).fit(records[:2])
    assert any(tree.tree_.node_count > 1 for tree in tiny.runtime_forest.estimators_)
    with pytest.raises(
        ValueError, match="at least 10 measured records, got 9: a tree splits only into leaves of 5"
    ):
        ForestModel(H100, min_samples_leaf=5).fit(records[:9])


def test_a_forest_most_of_whose_trees_never_split_says_so():
    """Just above the floor most trees still hold one leaf (6 rows under leaf 3: about 1 in 70 bootstrap samples
    holds all 6 distinct rows), so the forest is nearly a constant; its description counts the trees that split."""
    records = stand_in_records()
    few = ForestModel(H100, n_jobs=1).fit(records[:6])
    split = sum(tree.tree_.node_count > 1 for tree in few.runtime_forest.estimators_)
    assert split < 20
    words = "trees split them: the rest predict one value for every config)"
    if split:
        assert f"forest for h100: 6 rows (only {split} of 200 {words}, 1 shape" in few.describe()
    else:
        assert "6 rows (none of its 200 trees splits them: it predicts one value" in few.describe()
    assert "trees split" not in ForestModel(H100, n_estimators=8, n_jobs=1).fit(records).describe()


@pytest.mark.parametrize("runtime", [0.0, -1.0, None, float("nan"), float("inf"), "fast"])
def test_fit_refuses_a_runtime_that_is_not_positive(runtime):
    records = stand_in_records()
    records[7]["runtime_ms"] = runtime
    with pytest.raises(ValueError, match=r"record 7: runtime_ms must be a positive number"):
        ForestModel(H100).fit(records)


def test_an_unfitted_model_refuses_to_predict_or_save(tmp_path):
    with pytest.raises(ModelError, match="not fitted"):
        ForestModel(H100).predict(stand_in_records())
    with pytest.raises(ModelError, match="not fitted"):
        ForestModel(H100).save(tmp_path / "m.skops")


def test_a_model_says_where_its_rows_came_from(fitted):
    """`kt predict` named the training data of kt's shipped models only (their `origin`); a model of
    `kt costmodel fit` records its data file as `source`, and said nothing of it."""
    trained = dict(fitted.trained)
    try:
        fitted.trained = {**trained, "source": "/data/sweep.db", "origin": None}
        assert fitted.origin == "the rows of /data/sweep.db"
        fitted.trained = {**trained, "source": "/data/sweep.db", "origin": "PyTorch Inductor's H100 timings"}
        assert fitted.origin == "PyTorch Inductor's H100 timings"
        fitted.trained = {**trained, "source": None}
        assert fitted.origin is None
    finally:
        fitted.trained = trained


def _load_and_fit_warning_free(path: str) -> None:
    import warnings

    warnings.simplefilter("error")  # joblib's warning raised instead of printed
    model = ForestModel.load(path, H100)
    model.predict(stand_in_records()[:5])
    ForestModel(H100, n_estimators=4).fit(stand_in_records())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_model_loads_and_fits_in_a_daemon_process_without_joblibs_warning(saved):
    """In a DataLoader worker (a daemon process), each op's first kernel selection printed sklearn's
    "Loky-backed parallel loops cannot be called in a multiprocessing, setting n_jobs=1" to the user."""
    import multiprocessing

    worker = multiprocessing.get_context("fork").Process(
        target=_load_and_fit_warning_free, args=(str(saved),), daemon=True
    )
    worker.start()
    worker.join(120)
    assert worker.exitcode == 0


def test_load_refuses_a_model_fitted_for_another_device(saved):
    with pytest.raises(ModelError, match=r"fitted for device h100, not h200"):
        ForestModel.load(saved, H200)


def test_load_refuses_a_calibrated_profile_that_differs_from_the_files(saved):
    calibrated = dataclasses.replace(H100, dram_bandwidth=3.0e12)
    with pytest.raises(ModelError, match=rf"not {calibrated.key}"):
        ForestModel.load(saved, calibrated)


def test_load_refuses_a_model_fitted_on_other_features(saved):
    rewrite(saved, lambda p: p.update(features=list(FEATURE_NAMES[:-1])))
    with pytest.raises(ModelError, match="fitted on other features"):
        ForestModel.load(saved, H100)


def _newer_scikit_learn(payload):
    major, minor = payload["versions"]["scikit-learn"].split(".")[:2]
    payload["versions"]["scikit-learn"] = f"{major}.{int(minor) + 1}.0"


def test_a_model_from_another_scikit_learn_version_loads_when_it_reproduces_its_saved_predictions(saved):
    before = ForestModel.load(saved, H100)
    rewrite(saved, _newer_scikit_learn)
    after = ForestModel.load(saved, H100)
    records = before.self_check["records"]
    assert len(records) == 8
    assert np.array_equal(after.predict(records).runtime_s, before.predict(records).runtime_s)


def test_a_model_another_scikit_learn_wrote_loads_without_its_version_warning(saved, monkeypatch):
    """Under Python 3.10 (scikit-learn 1.7.2 at most), the first load of kt's shipped forests (written by 1.9.1)
    printed scikit-learn's InconsistentVersionWarning for the forest and its trees, "This might lead to breaking
    code or invalid results", in a user's first tune or predict: kt's self-check answers that (it predicts the
    rows saved in the file and refuses a model that does not reproduce them). Here scikit-learn is told that it
    is another version than the one that wrote the file."""
    import warnings

    import sklearn.base

    rewrite(saved, _newer_scikit_learn)  # a file not read before (no cached payload), and the self-check runs
    monkeypatch.setattr(sklearn.base, "__version__", "0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = ForestModel.load(saved, H100)
    assert len(model.self_check["records"]) == 8


def test_a_model_from_another_scikit_learn_version_is_refused_when_its_predictions_drift(saved):
    def drifted(payload):
        _newer_scikit_learn(payload)
        payload["self_check"]["runtime"] = [v + 1e-6 for v in payload["self_check"]["runtime"]]

    rewrite(saved, drifted)
    with pytest.raises(
        ModelError, match=r"fitted with scikit-learn \d+\.\d+\.0 \(this setup has .*does not reproduce"
    ):
        ForestModel.load(saved, H100)


def test_a_model_whose_saved_predictions_the_features_here_do_not_reproduce_is_refused(saved):
    """Under the same library versions, a file whose forests no longer give its saved predictions was fitted on
    features that computed otherwise (an older kt, the names unchanged): it is refused, not ranked with."""

    def refitted_elsewhere(payload):
        payload["self_check"]["runtime"] = [v + 1e-6 for v in payload["self_check"]["runtime"]]

    rewrite(saved, refitted_elsewhere)
    with pytest.raises(
        ModelError,
        match=r"does not reproduce its saved predictions from the features this kt computes.*refit",
    ):
        ForestModel.load(saved, H100)


@pytest.mark.parametrize("edit", ["empty", "none", "power"])
def test_a_model_whose_self_check_is_emptied_or_whose_power_forest_drifts_is_refused(saved, edit):
    """An emptied self-check loaded unchecked (its trees edited or not), and the power forest was never in it:
    power trees set to -5 W loaded under another scikit-learn and predicted -5 W."""

    def damage(payload):
        if edit == "power":
            assert len(payload["self_check"]["power"]) == len(payload["self_check"]["runtime"])
            payload["self_check"]["power"] = [v + 1.0 for v in payload["self_check"]["power"]]
        else:
            payload["self_check"] = {} if edit == "empty" else None

    rewrite(saved, damage)
    with pytest.raises(ModelError, match=r"does not reproduce its saved predictions"):
        ForestModel.load(saved, H100)


def test_a_model_stands_in_for_a_device_of_its_architecture_only_when_asked(saved):
    model = ForestModel.load(saved, H200, stand_in=True)
    assert model.device is H200 and model.fitted_device.key == "h100"
    assert model.describe().startswith("forest for h100 predicting h200 with its own roofline")
    from kt.device import A100

    with pytest.raises(ModelError, match=r"h100 \(sm_90\), which cannot stand in for a100 \(sm_80\)"):
        ForestModel.load(saved, A100, stand_in=True)
    # saved again it was labelled the H200's, whose features then failed its self-check as another kt's
    with pytest.raises(ModelError, match=r"loaded to predict h200 \(stand_in\) is not saved again"):
        model.save(saved.parent / "again.skops")
    assert not (saved.parent / "again.skops").exists()


def test_load_refuses_a_file_of_another_format_version(saved):
    rewrite(saved, lambda p: p.update(format_version=99))
    with pytest.raises(ModelError, match="has format 99"):
        ForestModel.load(saved, H100)


def test_load_refuses_a_skops_file_that_is_not_a_kt_model(tmp_path):
    path = tmp_path / "other.skops"
    path.write_bytes(skops.io.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelError, match="is not a kt cost model"):
        ForestModel.load(path)


def test_load_refuses_a_file_that_is_not_skops(tmp_path):
    path = tmp_path / "model.skops"
    path.write_text("this is not a zip archive\n")
    with pytest.raises(ModelError, match="is not a skops file \\(not a zip archive\\)"):
        ForestModel.load(path)
    with zipfile.ZipFile(path, "w") as archive:  # a zip archive, but not one skops wrote: skops says why
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelError, match="is not a skops file \\((?!not a zip)"):
        ForestModel.load(path)


def test_load_refuses_a_skops_file_holding_an_untrusted_type(saved):
    rewrite(saved, lambda p: p.update(extra=datetime.timedelta(days=1)))
    with pytest.raises(ModelError, match=r"holds types kt does not load: datetime\.timedelta"):
        ForestModel.load(saved, H100)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("left_child", 10**6),  # past the last node: predict would read out of bounds
        ("right_child", -7),
        ("feature", len(FEATURE_NAMES)),  # past the last feature
        ("left_child", 0),  # the root its own child: predict would loop forever
    ],
)
def test_load_refuses_a_tree_whose_indices_point_out_of_range(saved, field, value):
    def tamper(payload):
        tree = payload["runtime_forest"].estimators_[3].tree_
        state = tree.__getstate__()
        nodes = state["nodes"].copy()
        nodes[field][0] = value  # node 0 is the root, never a leaf here, so every field is read
        tree.__setstate__({**state, "nodes": nodes})

    rewrite(saved, tamper)
    with pytest.raises(ModelError, match="indices out of range"):
        ForestModel.load(saved, H100)


def test_load_refuses_a_kt_model_file_missing_a_section(saved):
    rewrite(saved, lambda p: p.pop("versions"))
    with pytest.raises(ModelError, match=r"is malformed \(no versions\)"):
        ForestModel.load(saved, H100)


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ForestModel.load(tmp_path / "absent.skops", H100)


def test_a_model_lists_the_shapes_it_was_fitted_on_as_text(fitted, saved):
    expected = sorted({r["group"] for r in stand_in_records()})
    assert fitted.trained["shape_keys"] == expected
    assert ForestModel.load(saved, H100).trained["shape_keys"] == expected
    # a record's `shape` (its sizes, whatever the dtype) is the unit, when it has one
    shaped = [{**r, "shape": f"gemm {r['m']}x{r['n']}"} for r in stand_in_records()]
    model = ForestModel(H100, n_estimators=2, n_jobs=1).fit(shaped)
    assert model.trained["shape_keys"] == sorted({r["shape"] for r in shaped})


def test_the_defaults_keep_leaves_of_three_and_files_are_deflated(saved):
    assert ForestModel(H100).params["min_samples_leaf"] == 3
    with zipfile.ZipFile(saved) as archive:
        assert {entry.compress_type for entry in archive.infolist()} == {zipfile.ZIP_DEFLATED}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_model_file_gets_the_permissions_of_any_new_file(fitted, tmp_path, umask):
    old = os.umask(umask)
    try:
        path = fitted.save(tmp_path / "m.skops")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.skops"], "no temporary file left behind"


def test_load_refuses_a_device_key_that_is_not_its_profiles(saved):
    rewrite(saved, lambda p: p.update(device_key="h200"))
    with pytest.raises(ModelError, match="its device profile's key is h100, its device_key h200"):
        ForestModel.load(saved)


def test_load_refuses_versions_that_are_not_text(saved):
    rewrite(saved, lambda p: p["versions"].update(numpy=2))
    with pytest.raises(ModelError, match=r"is malformed \(versions\.numpy not text\)"):
        ForestModel.load(saved, H100)


def test_load_refuses_shape_keys_that_are_not_a_list_of_text(saved):
    rewrite(saved, lambda p: p["trained"].update(shape_keys=[1, 2]))
    with pytest.raises(ModelError, match=r"trained\.shape_keys not a list of text"):
        ForestModel.load(saved, H100)


def test_load_refuses_a_forest_of_several_outputs(saved):
    def two_outputs(payload):
        payload["runtime_forest"].n_outputs_ = 2

    rewrite(saved, two_outputs)
    with pytest.raises(ModelError, match="holds a forest with 2 outputs; kt's have 1"):
        ForestModel.load(saved, H100)


def test_load_refuses_a_tree_whose_values_are_not_one_per_node(saved):
    from sklearn.tree._tree import Tree

    def classifier_values(payload):
        estimator = payload["runtime_forest"].estimators_[2]
        state = estimator.tree_.__getstate__()
        n = state["node_count"]
        tree = Tree(len(FEATURE_NAMES), np.array([3], dtype=np.intp), 1)  # three values per node
        tree.__setstate__({**state, "values": np.zeros((n, 1, 3))})
        estimator.tree_ = tree

    rewrite(saved, classifier_values)
    with pytest.raises(
        ModelError, match=r"holds a tree whose values have shape \(\d+, 1, 3\), not \(\d+, 1, 1\)"
    ):
        ForestModel.load(saved, H100)


def test_load_says_when_the_path_is_empty_or_a_directory(tmp_path):
    empty = tmp_path / "empty.skops"
    empty.touch()
    with pytest.raises(ModelError, match=r"empty\.skops' is empty \(0 bytes\)"):
        ForestModel.load(empty)
    with pytest.raises(ModelError, match="is a directory"):
        ForestModel.load(tmp_path)


def gpperf_benchmark():
    module = benchmark_module("gpperf_costmodel")
    return module


def test_the_forest_predicts_held_out_gpperf_shapes_far_better_than_the_analytic_model():
    if not GPPERF_CSV.is_file():
        pytest.skip(f"GPPerf measurements not found at {GPPERF_CSV} (set KT_GPPERF_DIR)")
    bench = gpperf_benchmark()
    records = bench.read_records(GPPERF_CSV)[::16]  # 1008 of 16,128 rows, every shape and layout
    assert len({r["group"] for r in records}) == 36
    report = cross_validate(records, bench.RTX4070, folds=6, seed=0, n_estimators=30)
    m = report.metrics
    measured = report.runtime_ms
    analytic_ms = gemm_terms(records, bench.RTX4070)["predicted_s"] * 1e3
    assert m["runtime_log_r2"] > 0.97 and m["runtime_r2"] > 0.75
    assert m["runtime_mape"] < 20 and m["runtime_median_ape"] < 5
    assert m["runtime_mape"] < ape(measured, analytic_ms).mean() / 3


def test_a_loaded_model_is_cached_and_the_cache_is_checked_against_the_file(
    fitted, saved, tmp_path, monkeypatch
):
    """The second load of a file reads kt's pickle of its checked payload (a shipped forest: 0.02 s against
    skops' 1.5 s); a changed file misses the cache, and a damaged cache entry is read afresh from the file."""
    from kt.costmodel import forest

    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    records = stand_in_records()
    first = ForestModel.load(saved, H100)
    (entry,) = (tmp_path / "cache" / "models").iterdir()
    assert entry.name.startswith(hashlib.sha256(saved.read_bytes()).hexdigest()[:32])

    def no_skops(*args, **kwargs):
        raise AssertionError("skops read the file again")

    monkeypatch.setattr(skops.io, "loads", no_skops)
    cached = ForestModel.load(saved, H100)
    assert np.array_equal(cached.predict(records).runtime_s, first.predict(records).runtime_s)
    with pytest.raises(
        ModelError, match="was fitted for device h100"
    ):  # the checks still run on a cached one
        ForestModel.load(saved, get_profile("a100"))
    monkeypatch.undo()
    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    entry.write_bytes(entry.read_bytes()[:100])  # damaged: ignored, and written again
    again = ForestModel.load(saved, H100)
    assert np.array_equal(again.predict(records).runtime_s, first.predict(records).runtime_s)
    assert entry.stat().st_size > 100
    rewrite(saved, lambda p: p["trained"].update(note="changed"))  # another file: another entry
    ForestModel.load(saved, H100)
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2
    assert forest._cached_payload(b"not a model") is None


def test_the_model_cache_keeps_the_most_recently_used_payloads(saved, tmp_path, monkeypatch):
    """Each payload is tens of MB (60 MB a shipped forest), and every model fitted or library upgraded added one
    for good: the cache keeps the CACHED_MODELS most recently used, a read counting as a use."""
    from kt.costmodel import forest

    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(forest, "CACHED_MODELS", 2)
    files = {}
    for name in "abc":
        files[name] = tmp_path / f"{name}.skops"
        files[name].write_bytes(saved.read_bytes())
        rewrite(files[name], lambda p, name=name: p["trained"].update(note=name))

    def cached():
        return {path.name for path in (tmp_path / "cache" / "models").iterdir()}

    def entry(name):
        return forest._payload_cache(files[name].read_bytes()).name

    for name in "aba":  # a, b, then a again: read from the cache, now the most recent
        ForestModel.load(files[name], H100)
    assert cached() == {entry("a"), entry("b")}
    ForestModel.load(files["c"], H100)
    assert cached() == {entry("a"), entry("c")}
    (tmp_path / "cache" / "models" / ".x.pickle.tmp").write_bytes(b"")  # another process's write: not counted
    ForestModel.load(files["b"], H100)
    assert cached() == {entry("b"), entry("c"), ".x.pickle.tmp"}


def test_a_forest_says_what_of_a_problem_or_device_it_never_saw(fitted, saved):
    seen = fitted.trained["dtypes"][0]
    assert fitted.unseen({"family": "gemm", "dtype": seen}) is None
    note = fitted.unseen({"family": "monarch", "dtype": "float64"})
    assert note.startswith("the cost model never saw this kernel family monarch (it learned gemm;")
    assert "dtype float64 (it learned" in note and "\n" not in note
    borrowed = ForestModel.load(saved, H200, stand_in=True)
    assert "device h200 (fitted for h100" in borrowed.unseen({"family": "gemm", "dtype": seen})


def test_a_forest_says_which_float32_precision_it_never_saw():
    """tf32 runs on tensor cores and ieee does not: a forest of tf32 rows alone predicted ieee ones with no
    warning (an audit on Inductor's H100 rows found them far off), where one that never saw float32 said so."""
    records = shared_stand_in_records(
        [(512, 512, 512), (300, 700, 200)], [(64, 64, 32, 4, 3), (128, 128, 64, 8, 4)] * 3
    )
    tf32 = [{**r, "dtype": "float32", "precision": "tf32", "itemsize": 4} for r in records]
    forest = ForestModel(H100, n_estimators=4).fit(tf32)
    assert forest.trained["precisions"] == ["tf32"]
    assert forest.unseen({"family": "gemm", "dtype": "float32", "precision": "tf32"}) is None
    note = forest.unseen({"family": "gemm", "dtype": "float32", "precision": "ieee"})
    assert note == (
        "the cost model never saw this float32 precision ieee (it learned tf32): its predictions here are "
        "extrapolations"
    )
    assert forest.unseen({"family": "gemm", "dtype": "float32"}) == note  # ieee unless said
    del forest.trained["precisions"]  # a file fitted before kt recorded them: not known, not said
    assert forest.unseen({"family": "gemm", "dtype": "float32", "precision": "ieee"}) is None


def test_a_forest_names_the_split_and_launch_order_values_it_never_saw():
    """The shipped forests learned Inductor's template, which never splits K and launches in groups of 8, yet
    ranked kt's split-K and other-group configs without a word (on kt's H200 rows it favoured split-K)."""
    import kt.costmodel.models as models

    shipped = ForestModel.load(Path(models.__file__).parent / "h100.skops")
    assert shipped.seen_values() == {"split_k": [1], "group_m": [8]}
    base = {"family": "gemm", "m": 64, "n": 64, "k": 64, "block_m": 32, "block_n": 32, "block_k": 32}
    records = [{**base, "split_k": s, "group_m": g} for s, g in ((1, 8), (1, 4), (4, 8), (2, 1))]
    note = shipped.unseen_configs(records)
    assert "split_k other than 1 (2) or group_m other than 8 (2) of these 4 configs" in note
    assert shipped.unseen_configs(records[:1]) is None


@pytest.mark.shipped_models
def test_a_tune_from_the_shipped_forest_notes_the_configs_it_extrapolates_to(tmp_path):
    plan = kt.plan({"op": "dense", "shape": {"m": 256, "n": 256, "k": 4096}, "device": "h100"})
    assert "the forest never saw split_k other than 1" in plan.model_note


def test_kt_predict_warns_in_one_line_for_a_problem_the_model_never_saw(saved, tmp_path):

    spec = tmp_path / "m.yaml"
    spec.write_text("op: monarch\nshape: {batch: 64, n: 256, nblocks: 16}\ndevice: h100\n")
    done = kt_cli("predict", spec, "--model", saved, "--top", "1")
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert "never saw this kernel family monarch" in warning


@pytest.mark.parametrize("rows", [PARALLEL_ROWS - 1, PARALLEL_ROWS + 7])
def test_per_tree_gives_each_trees_own_prediction_in_order(rows):
    """per_tree converts once, skips the trees' input checks and splits the trees over threads from
    PARALLEL_ROWS rows: every tree's row must still be that tree's own `predict`, in the forest's order."""
    rng = np.random.default_rng(rows)
    x, y = rng.random((300, 6)), rng.random(300)
    forest = RandomForestRegressor(13, max_features=0.5, random_state=0).fit(x, y)
    query = rng.random((rows, 6))[:, ::-1]  # float64, not contiguous: converted to the trees' float32 once
    expected = np.stack([tree.predict(query) for tree in forest.estimators_])
    assert np.array_equal(per_tree(forest, query), expected)
    with pytest.raises(ValueError, match="features"):
        per_tree(forest, query[:, :5])  # the first tree still checks what it is given


def test_a_forests_trees_do_not_depend_on_how_many_threads_fit_them():
    """fit_jobs picks one thread for small fits and several for large ones: the trees must be the same."""
    rng = np.random.default_rng(1)
    x, y = rng.random((PARALLEL_FIT_ROWS + 50, 5)), rng.random(PARALLEL_FIT_ROWS + 50)
    assert fit_jobs(PARALLEL_FIT_ROWS - 1) == 1
    fits = [RandomForestRegressor(9, random_state=3, n_jobs=jobs).fit(x, y) for jobs in (1, 2)]
    assert np.array_equal(per_tree(fits[0], x), per_tree(fits[1], x))


def test_a_power_forest_standing_in_for_a_card_of_another_board_limit_predicts_no_power(saved, tmp_path):
    """The H100 SXM's forest standing in for the 350 W H100 PCIe predicted the SXM's watts (585 W at its best
    configs), and a 350 W cap then held every config over it. Its time is rescaled by the PCIe card's own
    roofline; its watts cannot be: a card of another board power limit gets no power from it."""

    records = stand_in_records()[:3]
    assert ForestModel.load(saved, H100).predict(records).power_w is not None
    same_limit = ForestModel.load(saved, H200, stand_in=True)  # 700 W, as the H100 SXM
    assert H200.tdp_w == H100.tdp_w and same_limit.predict(records).power_w is not None
    pcie = get_profile("h100-pcie")
    borrowed = ForestModel.load(saved, pcie, stand_in=True)
    assert not borrowed.predicts_power and borrowed.predict(records).power_w is None
    assert borrowed.describe().endswith(", no power for h100-pcie (its power forest is h100's: board limits 700 W "
                                        "and 350 W)")  # fmt: skip
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: d\ndtype: float16\nshape: {m: 512, n: 512, k: 512}\n")
    done = kt_cli(  # in this process: what it prints, not how a process ends, is checked
        "predict", spec, "--model", saved, "--device", "h100-pcie", "--objective", "energy", "--power-cap", "350",
        "--top", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert (
        "its power forest was fitted on h100, whose board power limit is not this card's (700 W and 350 W)"
        in text
    )
    assert "predicted to draw more than 350 W" not in text
