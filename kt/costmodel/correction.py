"""Refitting during a tune: how the model that ranks candidates learns from what a tune has measured.

A tune starts from a model (a forest shipped with kt or given with --model, or the analytic model) and, between
rounds, refits on the measurements of this device in the database. Two cases:

- The starting model is the analytic one: a `ForestModel` is fitted on the measured rows (its features include
  the analytic terms, so it starts from what the analytic model knows).
- The starting model is a forest: its training data is not at hand (a shipped model carries only its trees),
  and a forest fitted on a few dozen rows of one shape would throw away what it learned from thousands. So a
  `CorrectedModel` keeps it and learns a correction on top: a forest fitted on log(measured / the starting
  forest's prediction). Where the correction has no data it stays near zero and the starting forest decides.

`refit` is the one routine both the tune loop and the replayed searches of the search-efficiency benchmark call,
so the benchmark scores the algorithm `kt tune` runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from kt.costmodel.features import features
from kt.costmodel.forest import MIN_ROWS, ForestModel, per_tree
from kt.costmodel.prediction import Prediction
from kt.costmodel.roofline import AnalyticModel
from kt.device import DeviceProfile

REFIT_TREES = 100  # fewer than a saved model: a refit runs between rounds while the GPU waits


class CorrectedModel:
    """A starting forest times a learned correction; predicts like any model, is never saved."""

    name = "corrected"

    def __init__(self, base: ForestModel, n_estimators: int = REFIT_TREES, seed: int = 0):
        self.base, self.device = base, base.device
        self.params = {"n_estimators": n_estimators, "max_features": 0.5, "random_state": seed}
        self.forest: RandomForestRegressor | None = None
        self.power_forest: RandomForestRegressor | None = None
        self.rows = 0

    def fit(self, records: Sequence[dict[str, Any]]) -> CorrectedModel:
        runtime_s = np.array([r["runtime_ms"] for r in records], dtype=np.float64) * 1e-3
        x = features(records, self.device)
        start = self.base.predict(records).runtime_s
        jobs = min(4, os.cpu_count() or 1)
        self.forest = RandomForestRegressor(**self.params, n_jobs=jobs).fit(x, np.log(runtime_s / start))
        power = np.array(
            [np.nan if r.get("power_w") is None else r["power_w"] for r in records], dtype=np.float64
        )
        has_power = np.isfinite(power) & (power > 0)
        if has_power.sum() >= MIN_ROWS:
            self.power_forest = RandomForestRegressor(**self.params, n_jobs=jobs).fit(
                x[has_power], power[has_power]
            )
        self.rows = len(records)
        return self

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        start = self.base.predict(records)
        if len(records) == 0:
            return start
        x = features(records, self.device)
        correction = per_tree(self.forest, x)
        runtime = start.runtime_s * np.exp(correction.mean(axis=0))
        spread = np.sqrt(start.runtime_spread**2 + correction.var(axis=0))
        power, power_spread = start.power_w, start.power_spread_w
        if self.power_forest is not None:
            trees = per_tree(self.power_forest, x)
            power, power_spread = trees.mean(axis=0), trees.std(axis=0)
        return Prediction(runtime, spread, power, power_spread)

    def describe(self) -> str:
        return f"{self.base.describe()}, corrected on {self.rows} measured rows"


def refit(
    start: Any, device: DeviceProfile, records: Sequence[dict[str, Any]], seed: int = 0
) -> ForestModel | CorrectedModel | None:
    """The model to rank with after measuring `records` (this device's passing measurements), starting from
    `start`; None when there are too few rows to fit anything."""
    if len(records) < MIN_ROWS:
        return None
    if isinstance(start, CorrectedModel):
        start = start.base
    if isinstance(start, ForestModel):
        return CorrectedModel(start, seed=seed).fit(records)
    if not isinstance(start, AnalyticModel):
        raise TypeError(f"cannot refit from {type(start).__name__}")
    return ForestModel(device, n_estimators=REFIT_TREES, seed=seed).fit(records)


def model_name(model: Any) -> str:
    """How progress lines and artifacts name a model."""
    if isinstance(model, CorrectedModel):
        return model.describe()
    if isinstance(model, ForestModel):
        return model.describe()
    return "analytic"
