"""Replay: run a search strategy against a recorded exhaustive sweep instead of the GPU.

`kt collect --all` measures every legal config of a problem. Replaying a strategy over such a sweep answers each
"measurement" with the recorded value, so strategies can be compared on the same real measurements, many times,
without a GPU: this is how the search-efficiency benchmark judges model-guided search against random search.
The model that guides a replayed search never sees the replayed shape before it measures it: its prior is
fitted on the other sweeps only (whole shapes held out), and each refit adds what the search has measured.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kt.autotune.search import SearchStrategy, SearchTrace, make_strategy, run_search
from kt.costmodel import AnalyticModel, rank
from kt.costmodel.correction import model_name, refit
from kt.costmodel.evaluate import shape_of
from kt.costmodel.forest import MIN_ROWS, ForestModel
from kt.device import DeviceProfile
from kt.ir.problems import problem_from_dict


@dataclass
class Sweep:
    """Every measured config of one problem: feature records and the measured runtime (NaN where it failed)."""

    key: str
    records: list[dict[str, Any]]
    runtime_ms: np.ndarray
    shape: str = ""  # what is held out together (sizes only: an fp16 and a bf16 sweep are near-twins)

    def __post_init__(self):
        if not self.shape:
            self.shape = shape_of(self.records[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def label(self) -> str:
        """Short name of the shape: MxNxK (xbatch) dtype."""
        r = self.records[0]
        batch = f"x{r['batch']}" if r["batch"] > 1 else ""
        return f"{r['m']}x{r['n']}x{r['k']}{batch} {r['dtype']}"

    @property
    def best(self) -> float:
        return float(np.nanmin(self.runtime_ms))

    def measured_records(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """Training records (with runtime_ms and group) of the given configs that passed."""
        return [
            {
                **self.records[i],
                "runtime_ms": float(self.runtime_ms[i]),
                "group": self.key,
                "shape": self.shape,
            }
            for i in indices
            if np.isfinite(self.runtime_ms[i])
        ]


def sweeps_from_rows(rows: Sequence[dict[str, Any]], min_configs: int = 20) -> list[Sweep]:
    """GPU-measured GEMM rows (any status) grouped into one sweep per problem (and target, template and
    Triton version) with at least `min_configs` configs and one that passed."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row["runner"] == "cuda" and row["family"] == "gemm":  # the GEMM launches the models learn
            identity = (
                row["problem_key"],
                row.get("target"),
                row.get("family_version"),
                row.get("triton_version"),
            )
            groups[identity][row["config_key"]] = row
    sweeps = []
    for (key, *_), by_config in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        if len(by_config) < min_configs:
            continue
        records, values = [], []
        for config_key, row in sorted(by_config.items()):
            problem = problem_from_dict(row["family"], row["problem"])
            records.append({**problem.to_record(), **row["config"], "config_key": config_key})
            ok = row["status"] == "ok" and row.get("runtime_ms")
            values.append(row["runtime_ms"] if ok else np.nan)
        values = np.array(values, dtype=np.float64)
        if np.isfinite(values).any():
            sweeps.append(Sweep(key, records, values))
    return sweeps


def replay(
    sweep: Sweep,
    strategy: str | SearchStrategy,
    device: DeviceProfile,
    budget: int,
    seed: int = 0,
    prior: Sequence[dict[str, Any]] = (),
    n_estimators: int = 100,
) -> SearchTrace:
    """Search `sweep` with `strategy`, answering measurements from the sweep, the way `kt tune` searches.

    The tune's starting model is a forest fitted on `prior` (measured records of other shapes: what kt would
    ship) when there are enough, else the analytic model; after each round it is refitted on what the search
    measured with kt.costmodel.correction.refit, the routine the tune loop calls.
    """
    strategy = make_strategy(strategy)
    if len(prior) >= MIN_ROWS:
        start = ForestModel(device, n_estimators=n_estimators, seed=seed).fit(prior)
    else:
        start = AnalyticModel(device)
    state: dict[str, Any] = {"prediction": start.predict(sweep.records), "name": model_name(start)}
    measured: list[int] = []

    def measure(batch: list[int]) -> dict[int, float | None]:
        measured.extend(batch)
        return {i: (float(sweep.runtime_ms[i]) if np.isfinite(sweep.runtime_ms[i]) else None) for i in batch}

    def refit_() -> bool:
        model = refit(start, sweep.measured_records(measured), seed)
        if model is None:
            return False
        state["prediction"], state["name"] = model.predict(sweep.records), model_name(model)
        return True

    return run_search(
        strategy,
        lambda: (state["prediction"], state["name"]),
        measure,
        budget,
        seed,
        refit=refit_,
        order=lambda values: rank(sweep.records, values),
    )


def reached(sweep: Sweep, trace: SearchTrace, budget: int) -> float:
    """The fraction of the sweep's best that the search reached within `budget` (1.0: it found the best)."""
    best = trace.best_after(budget)
    return 0.0 if best is None else sweep.best / best
