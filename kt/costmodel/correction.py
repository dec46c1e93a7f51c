"""Refitting during a tune: how the model that ranks candidates learns from what a tune has measured.

A tune starts from a model: a forest shipped with kt or given with --model, or the analytic model. Between
rounds it refits on the measurements of this device in the database. The starting model is never thrown away:
a shipped forest's training data is not at hand, and a forest fitted on a few dozen rows of one shape would
lose what it learned from thousands; the analytic model knows the device's physics. So a `CorrectedModel`
keeps the starting model and learns a correction on top of it: a forest fitted on log(measured / predicted)
runtime (and on log(measured / predicted) power when the starting model predicts power; else a power forest
of its own). With few rows the correction is nearly one factor for every candidate, which keeps the starting
model's ranking; as rows accumulate it learns where that model is wrong.

`refit` is the one routine both the tune loop and the replayed searches of the search-efficiency benchmark call,
so the benchmark scores the algorithm `kt tune` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kt.costmodel.features import column, features
from kt.costmodel.forest import ForestModel, fit_jobs, min_rows, per_tree
from kt.costmodel.prediction import Prediction
from kt.costmodel.roofline import AnalyticModel

if TYPE_CHECKING:  # scikit-learn (a second to import) only where a forest is fitted
    from sklearn.ensemble import RandomForestRegressor

REFIT_TREES = 100  # fewer than a saved model: a refit runs between rounds while the GPU waits
LEAF = 3  # rows per leaf: a handful of rows cannot split a shape's configs apart on noise
MIN_ROWS = min_rows(LEAF)  # fewer rows than this split no tree: a correction of one constant factor


class CorrectedModel:
    """A starting model (analytic or forest) times a learned correction; predicts like any model, never saved."""

    name = "corrected"

    def __init__(self, base: AnalyticModel | ForestModel, n_estimators: int = REFIT_TREES, seed: int = 0):
        self.base, self.device = base, base.device
        self.params = {
            "n_estimators": n_estimators,
            "max_features": 0.5,
            "min_samples_leaf": LEAF,
            "random_state": seed % 2**32,  # a replay adds to the seed (seed + repeat + round): kept in range
        }
        self.forest: RandomForestRegressor | None = None
        self.power_forest: RandomForestRegressor | None = None
        self.power_relative = False  # True: power_forest learns log(measured / base's predicted power)
        self.rows = self.power_rows = 0

    def fit(self, records: Sequence[dict[str, Any]]) -> CorrectedModel:
        """Fit on measured records (runtime_ms > 0 each; power_w where read)."""
        if len(records) < MIN_ROWS:
            raise ValueError(f"a correction needs at least {MIN_ROWS} measured records, got {len(records)}")
        runtime_s = column(records, "runtime_ms", 1e-3)
        if not np.all(np.isfinite(runtime_s) & (runtime_s > 0)):
            raise ValueError("every record needs a positive, finite runtime_ms")
        from sklearn.ensemble import RandomForestRegressor

        x = self._features(records)
        start = self.base.predict(records)
        jobs = fit_jobs(len(records))
        self.forest = RandomForestRegressor(**self.params, n_jobs=jobs).fit(
            x, np.log(runtime_s / start.runtime_s)
        )
        power = column(records, "power_w")
        has = np.isfinite(power) & (power > 0)
        self.power_rows = int(has.sum())
        if self.power_rows >= MIN_ROWS:
            self.power_relative = start.power_w is not None
            target = np.log(power[has] / start.power_w[has]) if self.power_relative else power[has]
            self.power_forest = RandomForestRegressor(**self.params, n_jobs=jobs).fit(x[has], target)
        self.rows = len(records)
        return self

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        start = self.base.predict(records)
        if len(records) == 0:
            return start
        x = self._features(records)
        correction = per_tree(self.forest, x)
        runtime = start.runtime_s * np.exp(correction.mean(axis=0))
        spread = np.sqrt(start.runtime_spread**2 + correction.var(axis=0))
        power, power_spread = start.power_w, start.power_spread_w
        if self.power_forest is not None:
            trees = per_tree(self.power_forest, x)
            if self.power_relative:
                power = start.power_w * np.exp(trees.mean(axis=0))
                power_spread = np.sqrt(start.power_spread_w**2 + (power * trees.std(axis=0)) ** 2)
            else:
                power, power_spread = trees.mean(axis=0), trees.std(axis=0)
        return Prediction(runtime, spread, power, power_spread)

    def _features(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """The starting model's features and the GEMM's structure choice (`tma`, 0 when absent): the shipped
        forests were fitted on a classic template only, so the correction is where measurements of the TMA
        kernel teach the tune how it differs from its classic twin."""
        tma = np.array([[float(r.get("tma", 0))] for r in records])
        return np.hstack([features(records, self.device), tma])

    def describe(self) -> str:
        power = f", power from {self.power_rows}" if self.power_forest is not None else ""
        return f"{model_name(self.base)} corrected on {self.rows} measured rows{power}"


def refit(
    start: AnalyticModel | ForestModel | CorrectedModel,
    records: Sequence[dict[str, Any]],
    seed: int = 0,
) -> CorrectedModel | None:
    """The model to rank with after measuring `records` (this device's passing measurements), starting from
    `start` (a CorrectedModel restarts from its base); None when there are too few rows to fit anything."""
    if len(records) < MIN_ROWS:
        return None
    base = start.base if isinstance(start, CorrectedModel) else start
    return CorrectedModel(base, seed=seed).fit(records)


def model_name(model: Any) -> str:
    """How progress lines and artifacts name a model."""
    if isinstance(model, (CorrectedModel, ForestModel)):
        return model.describe()
    return "analytic"
