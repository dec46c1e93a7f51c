"""How right a cost model is: metrics on measured records, and cross-validation with whole shapes held out.

Rows of one shape are near-twins (the same problem under configs that differ a little), so a random split of
rows leaks every test shape into training and flatters the model. Every evaluation here holds out whole shapes
(`holdout_key`: a record's `shape`, its sizes, else its `group`) instead: the question a tuner asks is how well
the model ranks a shape it never saw. A model file lists the shapes it was fitted on, and `unseen` leaves them out
when it is scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from kt.costmodel.features import column
from kt.costmodel.forest import LEAF, ForestModel, min_rows
from kt.device import DeviceProfile
from kt.errors import counted


def r2(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination: 1 - residual / total sum of squares."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    total = np.sum((true - true.mean()) ** 2)
    return float(1 - np.sum((true - pred) ** 2) / total) if total > 0 else float("nan")


def ape(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Absolute percentage errors, in percent."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return 100 * np.abs(pred - true) / true


def shape_of(record: dict[str, Any]) -> str:
    """A record's shape: its family and sizes, whatever its dtype and layouts ("gemm 4096x4096x4096", with "xB"
    for a batch of more than one)."""
    batch = f"x{record['batch']}" if record.get("batch", 1) > 1 else ""
    return f"{record['family']} {record['m']}x{record['n']}x{record['k']}{batch}"


def holdout_key(record: dict[str, Any]) -> Any:
    """The unit held out together: the record's `shape` (its sizes, whatever the dtype and layouts: an fp16 and a
    bf16 sweep of one size are near-twins), else its `group`."""
    return record["shape"] if "shape" in record else record["group"]


def _by_group(groups: Sequence[Any]) -> dict[Any, np.ndarray]:
    index = defaultdict(list)
    for i, g in enumerate(groups):
        index[g].append(i)
    return {g: np.array(rows) for g, rows in index.items()}


def _nan_last(pred: np.ndarray) -> np.ndarray:
    """Predictions with a NaN (a model that could not predict a row) ranked after every number."""
    return np.where(np.isnan(pred), np.inf, pred)


def spearman_within(true: np.ndarray, pred: np.ndarray, groups: Sequence[Any]) -> float:
    """Mean Spearman rank correlation of predicted and true within each group of at least 3 rows whose measured
    values are not all equal. Tied predictions count as a random order among the tied rows (`_spearman`): a
    group the model predicts all equal counts 0 (it ranks nothing), not left out."""
    true, pred = np.asarray(true, dtype=np.float64), _nan_last(np.asarray(pred, dtype=np.float64))
    scores = []
    for rows in _by_group(groups).values():
        if len(rows) >= 3 and np.ptp(true[rows]) > 0:
            scores.append(_spearman(true[rows], pred[rows]))
    return float(np.mean(scores)) if scores else float("nan")


def _spearman(true: np.ndarray, pred: np.ndarray) -> float:
    """Spearman's rho of `pred` against `true`, its expectation over a random order of tied predictions: the
    correlation of the ranks, the predictions' ranks averaged over their ties (each tied row's expected rank)
    with the variance of untied ranks, (n^2 - 1) / 12, which any order of them has. scipy's tie correction
    shrinks that variance instead, which scored predictions that tie in part above any order of them (times
    1..10 predicted [0, 1, 1, ..., 1]: 0.52, where a random order of the nine ties gives 0.27 on average).
    Measured ties are ties: their average ranks, with their own variance. Untied, this is scipy's rho."""
    rt, rp = rankdata(true), rankdata(pred)
    n = len(rt)
    spread = rt.std() * np.sqrt((n * n - 1) / 12)
    return float(np.mean((rt - rt.mean()) * (rp - rp.mean())) / spread)


def pick_ratios(true: np.ndarray, pred: np.ndarray, groups: Sequence[Any]) -> list[float]:
    """Per group of at least 2 rows: the true best / the true value of the model's pick. Where several rows tie
    for the best prediction the pick is any of them at random, so the ratio is its expectation (the geometric
    mean over the tied rows), not the first row's, which flattered a model that ties (the analytic and classic
    models tie at their best on most problems) by the data's order."""
    true, pred = np.asarray(true, dtype=np.float64), _nan_last(np.asarray(pred, dtype=np.float64))
    ratios = []
    for rows in _by_group(groups).values():
        if len(rows) >= 2:
            tied = rows[pred[rows] == pred[rows].min()]
            ratios.append(float(np.exp(np.mean(np.log(true[rows].min() / true[tied])))))
    return ratios


def _top_chances(values: np.ndarray, k: int) -> np.ndarray:
    """Each row's chance of being among the k smallest `values` when ties are broken at random: 1 below the k-th
    value, the places left over shared among the rows tied at it, 0 above."""
    cut = np.sort(values)[k - 1]
    below, tied = values < cut, values == cut
    return np.where(below, 1.0, np.where(tied, (k - below.sum()) / tied.sum(), 0.0))


def top1_score(true: np.ndarray, pred: np.ndarray, groups: Sequence[Any]) -> float:
    """Geometric mean over groups of at least 2 rows of (the true best / the true value of the model's pick,
    `pick_ratios`): 1.0 is a perfect pick everywhere, 0.9 a pick 11% slower on a typical shape; NaN when no
    group has 2 rows (a model cannot pick wrong among one)."""
    ratios = pick_ratios(true, pred, groups)
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")


def topk_recall(true: np.ndarray, pred: np.ndarray, groups: Sequence[Any], k: int = 5) -> float:
    """Mean over groups of more than k rows of the share of the true best k that the model also puts in its best
    k; NaN when no group has more than k rows (in a group of k or fewer both best k are every row: any model
    scores 1). Rows tied at the model's k-th value share its remaining places at random: each counts with the
    chance it gets one (and so do measured ties at the k-th best time)."""
    true, pred = np.asarray(true, dtype=np.float64), _nan_last(np.asarray(pred, dtype=np.float64))
    scores = []
    for rows in _by_group(groups).values():
        if len(rows) <= k:
            continue
        picked, measured = _top_chances(pred[rows], k), _top_chances(true[rows], k)
        scores.append(float(picked @ measured) / k)
    return float(np.mean(scores)) if scores else float("nan")


def one_per_config(
    true: np.ndarray, pred: np.ndarray, groups: Sequence[Any], configs: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(true, pred, groups) with one row per (group, config): the median measured value and the median
    prediction of its rows (one model's is the same for each, from the same features; the tuner's stored ones
    are each tune's own); as they are when `configs` is None or names no config twice in a group (a None in it
    names a config of its own)."""
    if configs is None:
        return np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64), list(groups)
    # a row that names no config (a record without config_key) is a config of its own: records without the key
    # were each problem's one median row, and every ranking metric came out blank
    keys = [(g, c if c is not None else ("row", i)) for i, (g, c) in enumerate(zip(groups, configs))]
    if len(set(keys)) == len(keys):
        return np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64), list(groups)
    rows: dict[tuple[Any, Any], list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(key, []).append(i)
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return (
        np.array([np.median(true[i]) for i in rows.values()]),
        np.array([np.median(pred[i]) for i in rows.values()]),
        [group for group, _ in rows],
    )


@dataclass
class Report:
    """Predicted against measured over a set of records; `metrics` is what `kt costmodel eval` prints."""

    runtime_ms: np.ndarray
    predicted_ms: np.ndarray
    groups: list[Any]
    power_w: np.ndarray | None = None
    predicted_power_w: np.ndarray | None = None
    folds: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # rows of `data` left out because a model file was fitted on their shapes, and how many shapes those were
    dropped_rows: int = 0
    dropped_shapes: int = 0
    # each row's unit held out (`holdout_key`); None: the groups are the shapes
    held: list[Any] | None = None
    # each row's config (its key): the ranking metrics take one row per config of a group, its median time (a
    # database built over several tunes holds a config's repeats, which filled two of a shape's top five and
    # made its best the luckiest of noisy repeats); None: each row its own config
    configs: list[Any] | None = None
    # what the scores must be read with: a model file standing in for another card (ForestModel.unseen)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        t, p, g = self.runtime_ms, self.predicted_ms, self.groups
        errors = ape(t, p)
        rt, rp, rg = one_per_config(t, p, g, self.configs)
        self.metrics = {
            "rows": len(t),
            "problems": len(set(g)),
            "shapes": len(set(self.held if self.held is not None else g)),
            "runtime_r2": r2(t, p),
            "runtime_log_r2": r2(np.log(t), np.log(p)),
            "runtime_mape": float(errors.mean()),
            "runtime_median_ape": float(np.median(errors)),
            "spearman_within_problem": spearman_within(rt, rp, rg),
            "top1_score": top1_score(rt, rp, rg),
            "top5_recall": topk_recall(rt, rp, rg, 5),
        }
        if self.power_w is not None and self.predicted_power_w is not None:
            # a reading of 0 W (the data checks allow it) is no reading: the forest trains on power > 0 only,
            # and its relative error was inf
            have = np.isfinite(self.power_w) & np.isfinite(self.predicted_power_w) & (self.power_w > 0)
            if have.any():
                self.metrics["power_rows"] = int(have.sum())
                self.metrics["power_median_ape"] = float(
                    np.median(ape(self.power_w[have], self.predicted_power_w[have]))
                )

    def details(self) -> str:
        """One line of what was scored: rows, shapes, folds, rows left out, R2 and power."""
        m = self.metrics
        power = f", power median APE {_fmt(m['power_median_ape'], '.1f')}%" if "power_median_ape" in m else ""
        held = f", {self.folds} folds of whole shapes held out" if self.folds else ""
        dropped = (
            f" ({counted(self.dropped_rows, 'row')} of {counted(self.dropped_shapes, 'shape')} the model was "
            "fitted on left out)"
            if self.dropped_rows
            else ""
        )
        problems = f", {counted(m['problems'], 'problem')}" if m["problems"] != m["shapes"] else ""
        return (
            f"{counted(m['rows'], 'row')}{problems}, {counted(m['shapes'], 'shape')}{held}{dropped}: runtime R2 "
            f"{_fmt(m['runtime_r2'], '.3f')}, "
            f"log R2 {_fmt(m['runtime_log_r2'], '.3f')}{power}"
        )

    def summary(self) -> str:
        """The headline metrics on one line, as `kt costmodel eval` ends; "-" for one that is NaN (nothing to
        measure it on)."""
        m = self.metrics
        return (
            f"MAPE {_fmt(m['runtime_mape'], '.1f')}% | median APE {_fmt(m['runtime_median_ape'], '.1f')}% | "
            f"Spearman within problem {_fmt(m['spearman_within_problem'], '.3f')} | top-1 "
            f"{_fmt(m['top1_score'], '.3f')} | top-5 recall {_fmt(m['top5_recall'], '.2f')} | shapes {m['shapes']}"
        )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def targets(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(runtime_ms, power_w with NaN where absent, group) of measured records."""
    runtime = np.array([r["runtime_ms"] for r in records], dtype=np.float64)
    return runtime, column(records, "power_w"), [r["group"] for r in records]


def assign_folds(shapes: set[Any], folds: int, seed: int) -> dict[Any, int]:
    """shape -> fold, for at most `folds` folds: the shapes dealt out at random (by `seed`), round robin."""
    ordered = sorted(shapes, key=str)
    folds = min(folds, len(ordered))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: position % folds for position, i in enumerate(order)}


def report(model: ForestModel, records: Sequence[dict[str, Any]]) -> Report:
    """`model` (already fitted) against the measured `records`."""
    runtime, power, groups = targets(records)
    prediction = model.predict(records)
    held = [holdout_key(r) for r in records]
    configs = [r.get("config_key") for r in records]
    return Report(
        runtime, prediction.runtime_s * 1e3, groups, power, prediction.power_w, held=held, configs=configs
    )


def unseen(
    model: ForestModel, records: Sequence[dict[str, Any]], source: str = "the model"
) -> tuple[list[dict[str, Any]], int, int]:
    """The records whose shape (`holdout_key`) `model` was not fitted on (its `trained["shape_keys"]`), and how
    many rows and shapes were left out. A model that lists no shapes (a file from before kt recorded them, or
    fitted on records with neither `shape` nor `group`) is refused: it left nothing out, and was scored on its
    own training rows as if they were new."""
    from kt.errors import ModelError

    trained = set(model.trained.get("shape_keys") or ())
    if not trained:
        raise ModelError(
            f"model: {source} lists no shapes it was fitted on, so its training rows cannot be told from new "
            "ones; refit it with `kt costmodel fit`"
        )
    kept = [r for r in records if str(holdout_key(r)) not in trained]
    seen = {holdout_key(r) for r in records if str(holdout_key(r)) in trained}
    return kept, len(records) - len(kept), len(seen)


def cross_validate(
    records: Sequence[dict[str, Any]],
    device: DeviceProfile,
    folds: int = 5,
    seed: int = 0,
    **params: Any,
) -> Report:
    """Fit on all shapes but one fold's, predict that fold's; every record is predicted by a model that never
    saw its shape. Shapes are dealt to folds at random (by `seed`)."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    runtime, power, groups = targets(records)
    held = [holdout_key(r) for r in records]
    if len(set(held)) < 2:
        raise ValueError(f"holding out whole shapes needs at least 2 shapes, got {len(set(held))}")
    fold_of = assign_folds(set(held), folds, seed)
    folds = max(fold_of.values()) + 1
    fold = np.array([fold_of[h] for h in held])
    predicted = np.zeros(len(records))
    predicted_power = np.full(len(records), np.nan)
    need = min_rows(params.get("min_samples_leaf", LEAF))
    for f in range(folds):
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        if len(train) < need:  # the forest's own refusal counted a fold's rows, not the data's
            raise ValueError(
                f"holding out fold {f + 1} of {folds} ({counted(len(test), 'row')}) leaves {len(train)} rows of "
                f"other shapes to fit on, and the forest needs at least {need} (on fewer every tree is one leaf, "
                "and the forest one constant): measure more shapes, or use fewer folds"
            )
        model = ForestModel(device, seed=seed, **params).fit([records[i] for i in train])
        prediction = model.predict([records[i] for i in test])
        predicted[test] = prediction.runtime_s * 1e3
        if prediction.power_w is not None:
            predicted_power[test] = prediction.power_w
    configs = [r.get("config_key") for r in records]
    return Report(runtime, predicted, groups, power, predicted_power, folds=folds, held=held, configs=configs)
