"""benchmarks/gpperf_costmodel.py's nested cross-validation, on GPPerf's real CUTLASS SGEMM measurements (RTX 4070).

Skipped where that public data is absent (evaluation data kept outside this repository, read, never copied). No
runtime here is made up.
"""

import pytest
from conftest import GPPERF, benchmark_module

from kt.costmodel.evaluate import assign_folds, holdout_key

GPPERF_CSV = GPPERF / "cutlass_results_flat.csv"

pytestmark = pytest.mark.skipif(not GPPERF_CSV.is_file(), reason=f"GPPerf measurements not found at {GPPERF}")


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("gpperf_costmodel")


@pytest.fixture(scope="module")
def records(bench):
    return bench.read_records(GPPERF_CSV)[::16]  # 1008 of 16,128 rows, every shape and layout


def test_hyperparameters_are_chosen_without_the_held_out_shapes(bench, records, monkeypatch):
    fitted = []
    real_fit = bench.ForestModel.fit

    def spy(self, rows, *args, **kwargs):
        fitted.append(({holdout_key(r) for r in rows}, self.params["n_estimators"]))
        return real_fit(self, rows, *args, **kwargs)

    monkeypatch.setattr(bench.ForestModel, "fit", spy)
    grid = [(1, 0.5), (20, 1.0)]
    report, chosen = bench.nested_cross_validate(
        records, bench.RTX4070, folds=3, seed=0, inner_folds=2, inner_trees=5, grid=grid
    )
    outer = assign_folds({holdout_key(r) for r in records}, 3, 0)
    assert len(chosen) == 3 and report.folds == 3 and report.metrics["rows"] == len(records)
    # per outer fold: 2 grid pairs x 2 inner folds of 5 trees, then one forest of kt's default size
    assert len(fitted) == 3 * (len(grid) * 2 + 1)
    for f, fold in enumerate(chosen):
        held_out = {shape for shape, k in outer.items() if k == f}
        calls = fitted[f * 5 : (f + 1) * 5]
        assert all(not (shapes & held_out) for shapes, _ in calls), "a forest saw a held-out shape"
        assert [trees for _, trees in calls] == [
            5,
            5,
            5,
            5,
            bench.ForestModel(bench.RTX4070).params["n_estimators"],
        ]
        assert calls[-1][0] == set(outer) - held_out  # the refit takes every training shape
        assert (fold["min_samples_leaf"], fold["max_features"]) in grid
        assert set(fold["scores"]) == set(grid)
        assert fold["scores"][(fold["min_samples_leaf"], fold["max_features"])] == min(
            fold["scores"].values()
        )
    assert report.metrics["runtime_log_r2"] > 0.9


def test_the_outer_folds_are_those_of_cross_validate(bench, records):
    _, chosen = bench.nested_cross_validate(
        records, bench.RTX4070, folds=6, seed=0, inner_folds=2, inner_trees=2, grid=[(3, 0.5)]
    )
    outer = assign_folds({holdout_key(r) for r in records}, 6, 0)
    sizes = [sum(1 for k in outer.values() if k == f) for f in range(6)]
    assert [fold["shapes"] for fold in chosen] == sizes
