"""Replay: run a search strategy against a recorded exhaustive sweep instead of the GPU.

`kt collect --all` measures every legal config of a problem. Replaying a strategy over such a sweep answers each
"measurement" with the recorded value, so strategies can be compared on the same real measurements, many times,
without a GPU: this is how the search-efficiency benchmark judges model-guided search against random search.
The model that guides a replayed search never sees the replayed shape before it measures it: its prior is
fitted on the other sweeps only (whole shapes held out), and each refit adds what the search has measured.
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from kt.autotune.database import BASELINE_KEY
from kt.autotune.dataset import read_rows, untimed
from kt.autotune.search import SearchStrategy, SearchTrace, make_strategy, run_search
from kt.autotune.spaces import (
    TuningSpace,
    budget_label,
    check_space_file,
    is_kernel_tuner_file,
    load_kernel_tuner,
    parse_budget,
)
from kt.costmodel import AnalyticModel, rank
from kt.costmodel.correction import model_name, refit
from kt.costmodel.evaluate import shape_of
from kt.costmodel.forest import MIN_ROWS, ForestModel
from kt.costmodel.paramforest import MIN_ROWS as SPACE_MIN_ROWS
from kt.costmodel.paramforest import ParamForest
from kt.device import BUILTIN, DeviceProfile, get_profile
from kt.errors import KtError, counted
from kt.files import atomic_write
from kt.ir.problems import problem_from_dict


@dataclass
class Sweep:
    """Every measured config of one problem: feature records and the measured runtime (NaN where it failed)."""

    key: str
    records: list[dict[str, Any]]
    runtime_ms: np.ndarray
    shape: str = ""  # what is held out together (sizes only: an fp16 and a bf16 sweep are near-twins)
    target: str | None = None  # the device profile the sweep was measured for (kt.device)
    gpu: str | None = None  # the GPU that measured it (the rows' device)

    def __post_init__(self):
        if not self.shape:
            self.shape = shape_of(self.records[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def label(self) -> str:
        """Short name of the problem: MxNxK (xbatch) dtype, its precision and layouts (problems that differ only
        in those were one name in the trace), and the target when one is recorded."""
        r = self.records[0]
        batch = f"x{r['batch']}" if r["batch"] > 1 else ""
        precision = f" {r['precision']}" if r["dtype"] == "float32" else ""
        layouts = f"a:{'col' if r['a_col'] else 'row'} b:{'col' if r['b_col'] else 'row'}"
        target = f" on {self.target}" if self.target else ""
        return f"{r['m']}x{r['n']}x{r['k']}{batch} {r['dtype']}{precision} {layouts}{target}"

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
    """GPU-measured GEMM rows (any status) grouped into one sweep per problem (and GPU, target, template and
    Triton version) with at least `min_configs` configs and one that passed."""
    sweeps = []
    for (key, target, gpu, *_), by_config in _swept(rows, min_configs).items():
        records, values = [], []
        for config_key, row in sorted(by_config.items()):
            problem = problem_from_dict(row["family"], row["problem"])
            records.append({**problem.to_record(), **row["config"], "config_key": config_key})
            values.append(row["runtime_ms"] if _passed(row) else np.nan)
        values = np.array(values, dtype=np.float64)
        if np.isfinite(values).any():
            sweeps.append(Sweep(key, records, values, target=target, gpu=gpu))
    return sweeps


def _passed(row: dict[str, Any]) -> bool:
    """Whether a row measured its config: it ran, and has a time."""
    return bool(row["status"] == "ok" and row.get("runtime_ms"))


def _swept(rows: Sequence[dict[str, Any]], min_configs: int = 20) -> dict[tuple, dict[str, dict[str, Any]]]:
    """GPU-measured GEMM rows by problem (and GPU, target, template and Triton version) and config, for each
    problem with at least `min_configs` configs, whether any passed or not, in a stable order."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        # the GEMM launches the models learn; PyTorch's own path (candidate zero) is no config of the space,
        # whatever template version an edited database gives its row
        if row["runner"] == "cuda" and row["family"] == "gemm" and row["config_key"] != BASELINE_KEY:
            identity = (
                row["problem_key"],
                row.get("target"),
                row.get("device"),
                row.get("family_version"),
                row.get("triton_version"),
            )
            earlier = groups[identity].get(row["config_key"])
            if earlier is not None:  # two files joined, say: the last one's time was kept, without a word
                ids = (
                    f" (row ids {earlier.get('id')} and {row.get('id')})" if row.get("id") is not None else ""
                )
                raise KtError(
                    f"space: two rows measure config {row['config_key']} of problem {row['problem_key']} on "
                    f"{row.get('device')}{ids}; a replayed space holds one time per config: keep one of them"
                )
            groups[identity][row["config_key"]] = row
    return {
        identity: by_config
        for identity, by_config in sorted(groups.items(), key=lambda item: tuple(map(str, item[0])))
        if len(by_config) >= min_configs
    }


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
    ship) when there are enough and the strategy ranks by it, else the analytic model; after each round it is
    refitted on what the search measured with kt.costmodel.correction.refit, the routine the tune loop calls.
    """
    strategy = make_strategy(strategy)
    # a random search's picks need no forest: fitting one on every other problem's rows took seconds a space
    if strategy.ranked and len(prior) >= MIN_ROWS:
        start = ForestModel(device, n_estimators=n_estimators, seed=seed).fit(prior)
    else:
        start = AnalyticModel(device)
    state: dict[str, Any] = {"prediction": start.predict(sweep.records), "name": model_name(start)}
    measured: list[int] = []
    measure = _answers(sweep.runtime_ms, measured)

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
        objective=lambda p: p.runtime_s * 1e3,  # the sweep's units (ms): expected improvement compares them
        order=lambda values: rank(sweep.records, values / 1e3),  # in s, as kt tune ranks
    )


def _answers(values: np.ndarray, measured: list[int]) -> Callable[[list[int]], dict[int, float | None]]:
    """A replay's `measure`: each index answered with its recorded value (None where it failed on the GPU),
    every index asked for appended to `measured`."""

    def measure(batch: list[int]) -> dict[int, float | None]:
        measured.extend(batch)
        return {i: (float(values[i]) if np.isfinite(values[i]) else None) for i in batch}

    return measure


def reached(sweep: Sweep, trace: SearchTrace, budget: int) -> float:
    """The fraction of the sweep's best that the search reached within `budget` (1.0: it found the best)."""
    best = trace.best_after(budget)
    return 0.0 if best is None else sweep.best / best


def parameter_forest(seed: int) -> ParamForest:
    """The forest a replayed search refits after each round (unfitted)."""
    return ParamForest(seed=seed)


def replay_space(
    space: TuningSpace,
    strategy: str | SearchStrategy,
    budget: int,
    seed: int = 0,
    features: np.ndarray | None = None,
    model: Callable[[int], ParamForest] = parameter_forest,
) -> SearchTrace:
    """Search a space measured whole (a Kernel Tuner cache, say) with `strategy`, answering each measurement
    from the space: a point that failed on the GPU is a spent evaluation that returned a failure.

    There is no model before the first measurements (the guided strategy starts with a random sample); after
    each round a ParamForest (`model(seed)`, unfitted) is refitted on every point measured, failures
    included."""
    strategy = make_strategy(strategy)
    x = space.features() if features is None else features
    state: dict[str, Any] = {"prediction": None, "name": "none"}
    measured: list[int] = []
    measure = _answers(space.objective, measured)

    def refit_() -> bool:
        values = space.objective[measured]
        if int(np.isfinite(values).sum()) < SPACE_MIN_ROWS:
            return False
        fitted = model(seed + len(measured)).fit(x[measured], values)
        state["prediction"], state["name"] = fitted.predict(x), fitted.describe()
        return True

    rng = np.random.default_rng(seed)

    def order(values: np.ndarray) -> np.ndarray:
        # A forest's predictions tie on whole plateaus: break ties at random, not by the file's order
        return np.lexsort((rng.random(len(values)), values))

    return run_search(
        strategy,
        lambda: (state["prediction"], state["name"]),
        measure,
        budget,
        seed,
        refit=refit_,
        size=len(space),
        order=order,
        distance=space.distance,
    )


@dataclass
class ReplayResult:
    """Repeated replays of one strategy at one budget: each repeat's score (optimum / best found within the
    budget; 0 when nothing ran) and trace, on one space or on every problem of a kt sweep file."""

    source: str
    strategy: str
    budget: int | str  # a count, or "5%" of each space
    spaces: list[str]
    sizes: list[int] = field(default_factory=list)  # each space's points
    counts: list[int] = field(default_factory=list)  # each space's evaluations per search (a % rounded up)
    scores: list[float] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the per-evaluation trace (`kt replay --csv`)
    # False: no per-evaluation rows (without --csv they took ~6.5 MB a repeat of a 17,956-point space, kept for
    # nothing); `spent` counts each search's evaluations all the same
    keep_rows: bool = True
    spent: Counter = field(default_factory=Counter)  # (space, repeat) -> evaluations
    decision_s: float = 0.0  # the strategy's own time (model fits, ranking), all repeats together
    evaluations: int = 0
    rounds: int = 0
    repeats: int = 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def p10(self) -> float:
        """The 10th percentile of the scores, interpolated linearly between the two nearest (numpy's default):
        with 20 repeats, 0.9 of the way from the second-worst score to the third-worst (position 0.1 * 19)."""
        return float(np.percentile(self.scores, 10))

    def line(self) -> str:
        over = f"{self.repeats} repeat{'s' if self.repeats != 1 else ''}" + (
            f" x {len(self.spaces)} problems" if len(self.spaces) > 1 else ""
        )
        return f"{self.strategy} budget {self.budget}: mean score {self.mean:.3f}, p10 {self.p10:.3f}, over {over}"

    def add(
        self,
        space: str,
        repeat: int,
        seed: int,
        trace: SearchTrace,
        points: list[str],
        optimum: float,
        seconds: float,
    ) -> None:
        best = None
        self.spent[(space, repeat)] += len(trace.measured)
        for n, (index, value, round_) in enumerate(zip(trace.measured, trace.values, trace.rounds), start=1):
            if value is not None and (best is None or value < best):
                best = value
            if not self.keep_rows:
                continue
            self.rows.append(
                {
                    "space": space,
                    "strategy": self.strategy,
                    "budget": self.budget,
                    "repeat": repeat,
                    "seed": seed,
                    "evaluation": n,
                    "round": round_,
                    "config": points[index],
                    "value": "" if value is None else value,
                    "best": "" if best is None else best,
                    "score": 0.0 if best is None else optimum / best,
                }
            )
        self.scores.append(0.0 if best is None else optimum / best)
        self.decision_s += seconds
        self.evaluations += len(trace.measured)
        self.rounds += len(trace.models)


def _unique(names: list[str]) -> list[str]:
    """The names, a repeated one numbered (#2, #3: sweeps of one problem under other template or Triton
    versions), so that a trace's (space, repeat, evaluation) names one evaluation."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def _check_foreign(strategy: str, count: int | None, fraction: Fraction | None, space: TuningSpace) -> None:
    """top and exhaustive go in a cost model's order, which a Kernel Tuner space has none of (kt's models know
    kt's GEMM configs): below the whole space they would take the file's first points."""
    asked = count if fraction is None else math.ceil(fraction * len(space))
    whole = asked >= len(space)
    if strategy == "top" or (strategy == "exhaustive" and not whole):
        raise KtError(
            f"strategy: {strategy} goes in a cost model's order, and a Kernel Tuner space has no model before "
            "its first measurements; use guided or random"
            + (
                f", or exhaustive with the whole space (--budget 100% or {len(space)})"
                if strategy == "exhaustive"
                else ""
            )
        )


def _sweep_profiles(sweeps: list[Sweep], device: str | Path | None) -> dict[str | None, DeviceProfile]:
    """The device profile each sweep was measured for, by its rows' target: a built-in one by name, a
    calibrated one (name-hash) only from the profile file given as `device`, whose key must be the target (the
    forest's features are that profile's). A target is never read as a file: it was a traceback (an unknown
    profile), or a file of that name read from the current folder."""
    given = get_profile(device) if device is not None else None
    profiles: dict[str | None, DeviceProfile] = {}
    for target in sorted({s.target for s in sweeps}, key=str):
        if target is None or target.lower() in BUILTIN:
            profiles[target] = get_profile(target)
        elif given is not None and given.key == target:
            profiles[target] = given
        else:
            got = f" (--device gives {given.key!r})" if given is not None else ""
            raise KtError(
                f"space: its rows were measured for the device profile {target!r}, a calibrated one{got}; give "
                "that profile's .json with --device"
            )
    if given is not None and all(p.key != given.key for p in profiles.values()):  # was ignored without a word
        measured = ", ".join(repr(p.key) for p in profiles.values())
        raise KtError(
            f"device: the sweeps were measured for {measured}, not for {given.key!r}; --device names the "
            "calibrated profile that sweeps tuned with `--device gpu.json` were measured for: leave it out here"
        )
    return profiles


def replay_file(
    path: str | Path,
    strategy: str,
    budget: str | int,
    repeats: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    min_configs: int = 20,
    device: str | Path | None = None,
    keep_rows: bool = True,
) -> ReplayResult:
    """Replay `strategy` `repeats` times (seeds seed, seed+1, ...) on the space(s) of `path`: a Kernel Tuner
    cache file (one space) or a kt tuning database/CSV of finished `kt collect --all` sweeps (each problem is
    a space; the guided search starts from a forest fitted on the other problems' sweeps, as kt ships).
    `device`: the calibrated profile (its .json) that sweeps measured for one were tuned for. `keep_rows`
    False keeps no per-evaluation rows (`write_trace` needs them; `spent` counts the evaluations)."""
    path = Path(path)
    count, fraction = parse_budget(budget)
    ranked = make_strategy(strategy).ranked  # an unknown name fails before any reading
    check_space_file(path)
    if is_kernel_tuner_file(path):
        spaces: list[Any] = [load_kernel_tuner(path)]
    else:
        rows = read_rows(path, "space")
        spaces = sweeps_from_rows(rows, min_configs=min_configs)
        if not spaces:
            failed = _swept(rows, min_configs)
            if failed:  # "holds no exhaustive sweep" was said of sweeps whose every config failed
                statuses = Counter(
                    row["status"] if row["status"] != "ok" else "ok without a time"
                    for by_config in failed.values()
                    for row in by_config.values()
                )
                listed = ", ".join(f"{n} {status}" for status, n in statuses.most_common())
                raise KtError(
                    f"space: {str(path)!r} holds {counted(len(failed), 'problem')} swept ({min_configs} or more "
                    f"GEMM configs measured on a GPU) but none of them has a config that passed ({listed}): "
                    "a replay scores a search against the best time of its space"
                )
            kinds = untimed(rows) if not any(r.get("runtime_ms") is not None for r in rows) else ""
            raise KtError(
                f"space: {str(path)!r} holds no exhaustive sweep (a problem with {min_configs} or more GEMM configs "
                "measured on a GPU, as `kt collect --all` writes there)"
                + (f": its rows were checked, never timed ({kinds})" if kinds else "")
            )
    if is_kernel_tuner_file(path):
        _check_foreign(strategy, count, fraction, spaces[0])
        if device is not None:  # a foreign space's search reads its own parameters, never a device profile
            raise KtError(
                "device: a Kernel Tuner cache is searched on its own parameters, with no device profile; "
                "--device is for kt sweeps measured for a calibrated profile: leave it out here"
            )
    profiles = _sweep_profiles([s for s in spaces if isinstance(s, Sweep)], device)
    gpus = {s.gpu for s in spaces if isinstance(s, Sweep)}
    names = _unique(
        [
            s.name if isinstance(s, TuningSpace) else s.label + (f" ({s.gpu})" if len(gpus) > 1 else "")
            for s in spaces
        ]
    )
    counts = [count if fraction is None else max(1, math.ceil(fraction * len(s))) for s in spaces]
    result = ReplayResult(
        str(path),
        strategy,
        budget_label(budget),
        names,
        [len(s) for s in spaces],
        counts,
        repeats=repeats,
        keep_rows=keep_rows,
    )
    total, done = repeats * len(spaces), 0
    # each sweep's measured records, made once: remade for every other space, a database of 316 problems took
    # 10.7 s to start, the 4,765 of Inductor's four logs more than 5 minutes (even for random, which needs none)
    records = {id(s): s.measured_records(range(len(s))) for s in spaces if ranked and isinstance(s, Sweep)}
    for space, name, n in zip(spaces, names, counts):
        if isinstance(space, TuningSpace):
            x = space.features()
            # the file's own keys: the values joined in tune_params order named another point where they differ
            points = space.config_keys or [",".join(map(str, p)) for p in space.points]
            optimum = space.best
        else:
            # a strategy that ranks starts from a forest of these (`replay`); others need none
            prior = (
                [
                    r
                    for other in spaces
                    if other.shape != space.shape and other.gpu == space.gpu  # kt ships one GPU's forest
                    for r in records[id(other)]
                ]
                if ranked
                else []
            )
            profile = profiles[space.target]
            points = [r["config_key"] for r in space.records]
            optimum = space.best
        for repeat in range(repeats):
            started = time.perf_counter()
            if isinstance(space, TuningSpace):
                trace = replay_space(space, strategy, n, seed + repeat, features=x)
            else:
                trace = replay(space, strategy, profile, n, seed + repeat, prior=prior)
            result.add(name, repeat, seed + repeat, trace, points, optimum, time.perf_counter() - started)
            done += 1
            if progress is not None:
                progress(done, total)
    return result


def write_trace(result: ReplayResult, path: str | Path) -> None:
    """The per-evaluation trace as CSV, written whole or not at all."""
    columns = [
        "space",
        "strategy",
        "budget",
        "repeat",
        "seed",
        "evaluation",
        "round",
        "config",
        "value",
        "best",
        "score",
    ]
    atomic_write(path, lambda handle: _write_csv(handle, columns, result.rows))


def _write_csv(handle, columns, rows) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
