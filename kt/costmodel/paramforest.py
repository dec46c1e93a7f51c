"""A forest on a search space's own parameters: the model that guides a search where kt's features do not
apply (a foreign kernel's space, replayed by `kt replay`), and the correction that structured families refit
between the rounds of a tune.

It learns log(objective) from the numeric encoding of each point's parameters (kt.autotune.spaces), optionally
on top of a starting model's log prediction (`offset`: then it learns where that model is wrong, as
kt.costmodel.correction does for GEMM launches). The trees' spread is the uncertainty the guided search explores
with. Points that failed on the GPU are learned too: a classifier forest gives each candidate's chance of
failing: the search's exploiting picks pass over a candidate more likely to fail than to run, and its exploring
picks weigh each one's expected gain by its chance of running (kt.autotune.search)."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from kt.costmodel.forest import fit_jobs, per_tree
from kt.costmodel.prediction import Prediction

TREES = 48  # a refit runs after every round: enough trees for a spread, fast at 18k candidates
MIN_ROWS = 3  # fewer passing points fit no forest


class ParamForest:
    """Predicts log(objective) (minus an optional offset) from parameter encodings, with a failure model."""

    name = "parameter forest"
    regressor = RandomForestRegressor  # the trees that learn the objective (a subclass may swap them)

    def __init__(
        self, n_estimators: int = TREES, max_features: float = 0.5, min_samples_leaf: int = 1, seed=0
    ):
        self.params = {
            "n_estimators": n_estimators,
            "max_features": max_features,
            "min_samples_leaf": min_samples_leaf,
            "random_state": seed % 2**32,  # a replay adds to the seed (seed + repeat + round): kept in range
        }
        self.forest: RandomForestRegressor | None = None
        self.failures: RandomForestClassifier | None = None
        self.rows = self.failed_rows = 0

    def fit(self, x: np.ndarray, objective: np.ndarray, offset: np.ndarray | None = None) -> ParamForest:
        """Fit on measured points: `objective` > 0 where the point ran, NaN where it failed; `offset` the
        starting model's log prediction per point (None: learn the objective itself)."""
        objective = np.asarray(objective, dtype=np.float64)
        ran = np.isfinite(objective) & (objective > 0)
        if ran.sum() < MIN_ROWS:
            raise ValueError(
                f"a parameter forest needs at least {MIN_ROWS} points that ran, got {int(ran.sum())}"
            )
        target = np.log(objective[ran]) - (0.0 if offset is None else offset[ran])
        jobs = fit_jobs(len(x))
        self.forest = self.regressor(**self.params, n_jobs=jobs).fit(x[ran], target)
        self.rows, self.failed_rows = int(ran.sum()), int((~ran).sum())
        self.failures = None
        if self.failed_rows:
            params = {**self.params, "n_estimators": max(8, self.params["n_estimators"] // 2), "n_jobs": jobs}
            self.failures = RandomForestClassifier(**params).fit(x, ~ran)
        return self

    def predict(self, x: np.ndarray, offset: np.ndarray | None = None) -> Prediction:
        if self.forest is None:
            raise ValueError("the parameter forest is not fitted")
        trees = per_tree(self.forest, x)
        mean = trees.mean(axis=0) + (0.0 if offset is None else offset)
        fail = None
        if self.failures is not None:
            fail = self.failures.predict_proba(x)[:, list(self.failures.classes_).index(True)]
        return Prediction(np.exp(mean), trees.std(axis=0), fail_prob=fail)

    def describe(self) -> str:
        failed = f", {self.failed_rows} failed" if self.failed_rows else ""
        return f"parameter forest on {self.rows} measured points{failed}"
