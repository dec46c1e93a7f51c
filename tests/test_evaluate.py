"""How the cost model is judged: metrics on hand-computed arrays, and cross-validation that holds out whole shapes.

The metric tests use small abstract arrays, not runtimes. The cross-validation tests fit on the analytic model's
predictions (kt.costmodel.roofline.gemm_terms): a model's outputs standing in for targets, not timings, and never
stored as measured.
"""

import math
from collections import Counter

import numpy as np
import pytest
from conftest import stand_in_records as shared_stand_in_records

import kt.costmodel.evaluate as evaluate
from kt.costmodel.evaluate import (
    Report,
    ape,
    cross_validate,
    holdout_key,
    pick_ratios,
    r2,
    spearman_within,
    top1_score,
    topk_recall,
    unseen,
)
from kt.costmodel.forest import ForestModel
from kt.device import H100
from kt.errors import ModelError


def test_r2_is_one_minus_residual_over_total_sum_of_squares():
    assert r2([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(1 - 1 / 5)
    assert r2([1, 2, 3, 4], [2.5, 2.5, 2.5, 2.5]) == pytest.approx(0)
    assert r2([1, 2, 3], [1, 2, 3]) == 1
    assert math.isnan(r2([2, 2, 2], [1, 2, 3])), "no variance to explain"


def test_ape_is_the_absolute_error_in_percent_of_the_truth():
    assert list(ape([2, 4, 10], [3, 3, 10])) == [50, 25, 0]


def test_spearman_within_averages_over_groups_that_can_be_ranked():
    true = [1, 2, 3, 1, 2, 3, 5, 6, 7, 8, 9, 9]
    pred = [10, 20, 30, 3, 2, 1, 1, 2, 4, 4, 4, 1]
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 2 + ["d"] * 3 + ["e"]
    # a ranks perfectly (+1), b backwards (-1), d's constant predictions rank nothing (0); c has 2 rows and e
    # 1 row: left out.
    assert spearman_within(true, pred, groups) == pytest.approx(0)
    assert spearman_within(true[:6] + true[8:11], pred[:3] + [4, 4, 4] + pred[8:11], "aaabbbddd") == 1 / 3
    assert spearman_within([1, 2, 3, 4], [1, 3, 2, 4], "gggg") == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert math.isnan(spearman_within([1, 2], [1, 2], "gg"))


def test_spearman_counts_tied_predictions_as_a_random_order_of_them():
    """scipy's tie correction scored predictions that tie in part above every order of them: times 1..10
    predicted [0, 1, 1, ..., 1] scored 0.52 where a random order of the nine tied rows gives 0.27 on average
    (the classic Triton model ties on 7,005 of h100_mm's 8,701 rows). The expectation is exact: the mean over
    every order of the ties (here every placement of the one row that ties with another)."""
    import itertools

    from scipy.stats import spearmanr

    true = np.arange(1.0, 11.0)
    pred = np.array([0.0] + [1.0] * 9)
    assert spearman_within(true, pred, [0] * 10) == pytest.approx(3 / 11)
    assert spearmanr(true, pred).statistic == pytest.approx(0.522, abs=1e-3)  # what scipy alone gives
    small_true, small_pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 2.0, 3.0])
    orders = [
        spearmanr(small_true, [1.0, 2.0 + a, 2.0 + b, 3.0]).statistic
        for a, b in itertools.permutations([0.0, 0.5])
    ]
    assert spearman_within(small_true, small_pred, "gggg") == pytest.approx(np.mean(orders))
    rng = np.random.default_rng(0)
    for _ in range(20):  # untied predictions, measured ties among them: scipy's rho
        t, p = rng.integers(0, 6, 12).astype(float), rng.random(12)
        assert spearman_within(t, p, [0] * 12) == pytest.approx(spearmanr(t, p).statistic)


def test_top1_score_is_the_geometric_mean_of_the_true_best_over_the_models_pick():
    true = [4, 2, 3, 5, 6]
    pred = [1, 2, 3, 9, 8]
    groups = ["a", "a", "a", "b", "b"]
    # a: the model picks the first (4) where 2 was best: 0.5; b: it picks 6 where 5 was best: 5/6.
    assert top1_score(true, pred, groups) == pytest.approx((0.5 * 5 / 6) ** 0.5)
    assert top1_score(true, true, groups) == 1


def test_a_model_that_ties_is_scored_as_picking_any_of_its_tied_best_not_the_first_row():
    """The analytic model tied at its best on 203 of h100_mm's 322 problems and the classic Triton model on all
    322: argmin took the first tied row, so their top-1 depended on the data's order."""
    true, pred, groups = [1.0, 2.0, 4.0, 8.0], [5, 5, 5, 9], "gggg"
    expected = (1 * 0.5 * 0.25) ** (1 / 3)  # the geometric mean of best / pick over the three tied picks
    assert top1_score(true, pred, groups) == pytest.approx(expected)
    assert top1_score(true[::-1], pred[::-1], groups) == pytest.approx(expected), "whatever the row order"
    assert pick_ratios(true, pred, groups) == [pytest.approx(expected)]
    # top-2: rows 0 and 1 are the true best two; the model's two places go to two of its three tied rows
    assert topk_recall(true, pred, groups, k=2) == pytest.approx(2 * (2 / 3) / 2)
    assert topk_recall(true[::-1], pred[::-1], groups, k=2) == pytest.approx(2 / 3)
    assert topk_recall(true, [1, 2, 2, 3], groups, k=2) == pytest.approx((1 + 0.5) / 2)


def test_a_nan_prediction_ranks_last_and_measured_ties_share_their_places():
    true, groups = np.array([1.0, 2.0, 3.0]), [0, 0, 0]
    nan_first = np.array([np.nan, 1.0, 2.0])  # the best row unpredicted: ranked last, as argsort put it
    assert topk_recall(true, nan_first, groups, k=1) == 0 and top1_score(true, nan_first, groups) == 0.5
    assert spearman_within(true, nan_first, groups) == pytest.approx(-0.5)
    # three rows tie at the second-best time: the true best two are row 0 and any one of them
    tied = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    pred = np.arange(5.0)
    assert topk_recall(tied, pred, [0] * 5, k=2) == topk_recall(tied[::-1], pred[::-1], [0] * 5, k=2)
    assert topk_recall(tied, pred, [0] * 5, k=2) == pytest.approx((1 + 1 / 3) / 2)


def test_ranking_metrics_skip_groups_of_one_row_and_are_nan_without_a_group_of_two():
    # c has one row: the model cannot pick wrong among one, so it must not count as a perfect pick.
    true, pred, groups = [4, 2, 3, 7], [1, 2, 3, 0], ["a", "a", "a", "c"]
    assert top1_score(true, pred, groups) == pytest.approx(0.5)
    assert topk_recall(true, pred, groups, k=1) == pytest.approx(0.0)
    assert math.isnan(top1_score([1, 2], [2, 1], ["a", "b"]))
    assert math.isnan(topk_recall([1, 2], [2, 1], ["a", "b"]))


def test_top_k_recall_skips_groups_of_k_rows_or_fewer_where_any_model_scores_one():
    """A problem of 5 or fewer configs (a small tune, a `tune.configs` list) gave top-5 recall 1.0 to a model
    that ranked it exactly backwards."""
    true, groups = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0], list("aaabbbbb")
    backwards = [-t for t in true]
    assert math.isnan(topk_recall(true, backwards, groups, k=5))
    assert topk_recall(true + [6.0], backwards + [-6.0], groups + ["b"], k=5) == pytest.approx(4 / 5)


def test_a_report_prints_a_dash_for_a_metric_it_cannot_measure():
    report = Report(np.array([1.0, 2.0]), np.array([1.5, 2.5]), ["a", "b"])
    assert math.isnan(report.metrics["top1_score"]) and math.isnan(report.metrics["spearman_within_problem"])
    summary = report.summary()
    assert (
        summary
        == "MAPE 37.5% | median APE 37.5% | Spearman within problem - | top-1 - | top-5 recall - | shapes 2"
    )


def test_topk_recall_is_the_share_of_the_true_best_k_that_the_model_also_puts_first():
    true = [1, 2, 3, 4, 7]
    pred = [1, 3, 2, 4, 0]
    groups = ["a", "a", "a", "a", "b"]
    # a: true best 2 are rows 0 and 1, predicted best 2 rows 0 and 2: 1/2; b has one row and is left out.
    assert topk_recall(true, pred, groups, k=2) == pytest.approx(0.5)
    assert topk_recall(true, pred, groups, k=3) == pytest.approx(3 / 3)
    assert math.isnan(topk_recall(true, pred, groups, k=4)), "a's best 4 are all its rows, whatever the model"


SHAPES = [(4096, 4096, 4096), (1024, 4096, 512), (300, 2000, 1000), (64, 8192, 4096), (2048, 512, 8192)]
SHAPES += [(512, 512, 512), (8192, 1024, 1024)]
TILES = [(128, 128, 64, 8), (128, 256, 64, 8), (64, 64, 32, 4), (64, 128, 64, 4), (32, 64, 128, 4)]


def stand_in_records() -> list[dict]:
    """See conftest.stand_in_records: the analytic model's outputs standing in for targets, not timings."""
    return shared_stand_in_records(SHAPES, [(bm, bn, bk, warps, 3) for bm, bn, bk, warps in TILES])


class Witness(ForestModel):
    """A forest that notes the shapes it was fitted on and fails if asked to predict one of them."""

    fits: list[set] = []
    predicted: Counter = Counter()

    def fit(self, records, source=None):
        self.seen = {r["group"] for r in records}
        Witness.fits.append(self.seen)
        return super().fit(records, source)

    def predict(self, records):
        asked = {r["group"] for r in records}
        assert not asked & self.seen, f"predicted shapes it was fitted on: {sorted(asked & self.seen)}"
        Witness.predicted.update(r["group"] for r in records)
        return super().predict(records)


@pytest.fixture
def witness(monkeypatch):
    Witness.fits, Witness.predicted = [], Counter()
    monkeypatch.setattr(evaluate, "ForestModel", Witness)
    return Witness


def test_cross_validation_never_predicts_a_shape_with_a_model_that_saw_it(witness):
    records = stand_in_records()
    report = cross_validate(records, H100, folds=3, seed=5, n_estimators=5, n_jobs=1)
    shapes = {r["group"] for r in records}
    assert len(witness.fits) == report.folds == 3
    # Every row predicted exactly once; each fold trains on all shapes but its own.
    assert witness.predicted == Counter(r["group"] for r in records)
    held_out = [shapes - seen for seen in witness.fits]
    assert set().union(*held_out) == shapes and sum(map(len, held_out)) == len(shapes)
    assert sorted(map(len, held_out)) == [2, 2, 3], "shapes are dealt evenly"
    assert report.metrics["rows"] == len(records) and report.metrics["shapes"] == len(shapes)
    assert np.all(report.predicted_ms > 0)


def test_cross_validation_with_more_folds_than_shapes_holds_out_one_shape_each(witness):
    report = cross_validate(stand_in_records(), H100, folds=50, n_estimators=3, n_jobs=1)
    assert report.folds == len(SHAPES) and all(len(SHAPES) - len(seen) == 1 for seen in witness.fits)


def test_cross_validation_is_repeatable_for_a_seed():
    records = stand_in_records()
    first, second = (
        cross_validate(records, H100, folds=3, seed=1, n_estimators=5, n_jobs=1) for _ in range(2)
    )
    assert np.array_equal(first.predicted_ms, second.predicted_ms)


def test_the_held_out_unit_is_the_shape_when_a_record_has_one_else_the_group():
    assert holdout_key({"shape": "gemm 64x64x64", "group": "fp16 key"}) == "gemm 64x64x64"
    assert holdout_key({"shape": "gemm 64x64x64"}) == "gemm 64x64x64"
    assert holdout_key({"group": (64, 64, 64)}) == (64, 64, 64)


def test_a_model_is_scored_only_on_shapes_it_was_not_fitted_on():
    records = stand_in_records()
    first = {r["group"] for r in records[:10]}
    model = ForestModel(H100, n_estimators=2, n_jobs=1).fit([r for r in records if r["group"] in first])
    kept, rows, shapes = unseen(model, records)
    assert {r["group"] for r in kept} == {r["group"] for r in records} - first
    assert rows == sum(r["group"] in first for r in records) and shapes == len(first)
    # a file from before models listed them, or a forest fitted on records without shape or group: nothing can
    # be left out, and it was scored on its own training rows under "the shapes it was not fitted on"
    model.trained.pop("shape_keys")
    with pytest.raises(ModelError, match=r"^model: 'm.skops' lists no shapes it was fitted on, .* refit it"):
        unseen(model, records, "'m.skops'")


def test_cross_validation_refuses_what_cannot_hold_a_shape_out():
    records = stand_in_records()
    with pytest.raises(ValueError, match="folds must be at least 2, got 1"):
        cross_validate(records, H100, folds=1)
    one_shape = [r for r in records if r["group"] == records[0]["group"]]
    with pytest.raises(ValueError, match="at least 2 shapes, got 1"):
        cross_validate(one_shape, H100)


def test_ranking_metrics_take_one_row_per_config_of_a_shape():
    """A database built over several tunes holds a config's repeats: they filled two of a shape's top five, and
    its best was the luckiest of a config's noisy repeats."""
    from kt.costmodel.evaluate import Report

    # one shape, six configs; the model ranks a..f in order, but config a was measured three times
    true = np.array([1.0, 1.2, 0.8, 2.0, 3.0, 4.0, 5.0, 6.0])
    pred = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    configs = ["a", "a", "a", "b", "c", "d", "e", "f"]
    groups = ["s"] * 8
    per_row = Report(true, pred, groups)
    per_config = Report(true, pred, groups, configs=configs)
    assert per_config.metrics["top1_score"] == 1.0  # a's median (1.0) is the best: the model picked it
    assert per_row.metrics["top1_score"] < 1.0  # a's luckiest repeat (0.8) against its three tied predictions
    assert per_config.metrics["top5_recall"] == 1.0  # five distinct configs, the model's five
    assert (
        per_config.metrics["rows"] == 8
        and per_config.metrics["runtime_mape"] == per_row.metrics["runtime_mape"]
    )


def test_a_reading_of_0_watts_is_no_reading_in_the_power_error():
    """The data checks take power_w >= 0 and the forest trains on power > 0 only: a 0 W reading made the power
    error infinite."""
    from kt.costmodel.evaluate import Report

    report = Report(
        np.array([1.0, 2.0, 3.0]),
        np.array([1.0, 2.0, 3.0]),
        [0, 0, 0],
        power_w=np.array([0.0, 0.0, 300.0]),
        predicted_power_w=np.array([250.0, 260.0, 330.0]),
    )
    assert report.metrics["power_rows"] == 1 and report.metrics["power_median_ape"] == pytest.approx(10.0)


def test_records_without_config_keys_are_each_their_own_config():
    """`one_per_config` merges repeats of a config; records that carry no config_key (built by hand, as the
    ForestModel docstring allows) were each problem's one median row, and every ranking metric came out blank."""
    from kt.costmodel.evaluate import one_per_config

    true, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.5, 2.0, 5.0])
    groups = ["a", "a", "a", "b"]
    kept = one_per_config(true, pred, groups, [None] * 4)
    assert kept[0].tolist() == true.tolist() and kept[2] == groups
    merged = one_per_config(
        true, pred, groups, ["x", "x", None, None]
    )  # a named config's repeats still merge
    assert merged[0].tolist() == [1.5, 3.0, 4.0] and merged[2] == ["a", "a", "b"]
