"""The tune loop: plan (legal space, model ranking, search strategy), measure what is new, pick the best.

Every finished measurement is committed to the database as it arrives, so a tune that is killed loses only
the candidates in flight, and running it again measures only what is missing.

Every tune also runs candidate zero: what a user would call without kt (PyTorch's own path for the problem,
kt.codegen.baseline), through the same runner, check and timer as the generated kernels, outside the budget.
On a GPU, when no generated kernel beats it, the best is PyTorch's path: the artifact says so and its
kernel.py calls PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kt.autotune.database import BASELINE_KEY, COLUMN_NAMES, KEY_COLUMNS, Database
from kt.autotune.dispatch import DispatcherStopped
from kt.autotune.pool import default_workers
from kt.autotune.progress import TuneBoard, TuneProgress
from kt.autotune.runners import Candidate, Result, Runner, make_runner
from kt.autotune.search import (
    SearchState,
    SearchStrategy,
    SearchTrace,
    TopSearch,
    first_of_each,
    make_strategy,
    run_search,
)
from kt.autotune.timing import TimingSettings
from kt.autotune.versions import software_versions
from kt.codegen import Config, SearchSpace, config_from_dict, family_for, write_source
from kt.codegen.baseline import baseline_impl, baseline_version, render_baseline
from kt.codegen.restrict import restrict
from kt.costmodel import AnalyticModel, rank
from kt.costmodel.models import shipped_model_path
from kt.costmodel.prediction import Prediction, model_noun
from kt.costmodel.roofline import LAUNCH_S
from kt.costmodel.staged import predict_records
from kt.device import DeviceProfile
from kt.errors import KtError, ModelError, SpecError, counted, option, option_word
from kt.files import ranking_model
from kt.ir.problems import Problem
from kt.spec import OBJECTIVES, OpSpec, check_bool, power_cap


@dataclass(eq=False)  # == compared numpy arrays (a ValueError): a plan equals itself only
class Plan:
    """What a tune would do first: the legal space, the model's predictions and ranking, the first round."""

    problem: Problem
    space: SearchSpace
    records: list[dict[str, Any]]
    prediction: Prediction
    ranked: list[int]  # indices into space.legal, best predicted objective first
    chosen: list[int]  # indices the first round measures, in order
    model: str  # the model that ranked: "analytic" or a forest's description
    strategy: str = "guided"
    objective: str = "time"
    power_cap_w: float | None = None
    # the baseline forest's prediction of PyTorch's own path (cuBLAS for a dense GEMM), when the model has one
    baseline_s: float | None = None
    budget: int = 0  # the budget the search spends: the one asked for, or less (see size_budget)
    budget_note: str | None = None  # why the budget is smaller than asked
    model_origin: str | None = None  # where the ranking forest's training rows came from, when it says
    model_note: str | None = (
        None  # what of the problem or device the ranking forest never saw (ForestModel.unseen)
    )
    # the class of each legal config, configs of one class running one program (SearchState.alias): a tune
    # measures one of each; None: each its own (no family rule, a listed tune.configs, an exhaustive search)
    alias: np.ndarray | None = None
    # the tile of each legal config (SearchState.variant): a guided first round takes one config per tile;
    # None: no family rule, or a listed tune.configs (the user chose them)
    variant: np.ndarray | None = None
    # the spec lists its configs (tune.configs): every one is measured, so no strategy stops early
    listed: bool = False
    measures_time: bool = True  # whether the tune times its configs (else it checks them): its notes' verb

    @property
    def predicted_s(self) -> np.ndarray:
        return self.prediction.runtime_s

    @property
    def programs(self) -> int:
        """How many legal configs run differently (one per `alias` class): what a budget can spend at most."""
        return programs_of(self.space.legal, self.alias)

    @property
    def ranked_programs(self) -> list[int]:
        """`ranked` with one config per program (`alias`): the best ranked of each, the ones a tune measures."""
        if self.alias is None:
            return list(self.ranked)
        return first_of_each(np.array(self.ranked, dtype=np.int64), self.alias).tolist()

    @property
    def twin_note(self) -> str | None:
        """How many legal configs run another's program (`alias`), which the tune does not measure again."""
        if self.alias is None:
            return None
        legal = len(self.space.legal)
        twins = legal - self.programs
        return (
            f"{twins} of the {legal} legal configs run the same program as another (group_m only orders the "
            "output tiles, and on this grid several values give one order): one of each is "
            + ("measured" if self.measures_time else "checked")
        )

    def config(self, index: int) -> Config:
        return self.space.legal[index]

    def __repr__(self) -> str:  # the dataclass's own listed every legal config and record (megabytes)
        return (
            f"Plan({self.problem}: {len(self.space.legal)} legal of {self.space.total} configs, ranked by "
            f"{self.model}; {len(self.chosen)} in the first round)"
        )

    @property
    def unapplied(self) -> str | None:
        """What the ranking cannot apply, in words, or None: without predicted power, an energy or edp objective
        and a power cap count only where measured (`kt predict`'s note; a tune's first line said so of the
        objective, not of the cap, and kt.plan of neither)."""
        if self.prediction.power_w is not None:
            return None
        asked = ([self.objective] if self.objective != "time" else []) + (
            ["the power cap"] if self.power_cap_w is not None else []
        )
        if not asked:
            return None
        verb = "apply" if len(asked) > 1 else "applies"
        return f"the ranking is by predicted time; {' and '.join(asked)} {verb} only to measured configs"

    @property
    def baseline_ratio(self) -> float | None:
        """The predicted PyTorch time over the best predicted config's (> 1: kt predicted faster); None
        without a baseline prediction."""
        if self.baseline_s is None or not self.ranked:
            return None
        return self.baseline_s / float(self.prediction.runtime_s[self.ranked[0]])


# The forests import scikit-learn (a second or more): this module imports them where it uses them, so that a
# tune's workers start (kt.autotune.runners) before the import, and its wait overlaps their start-up.
CostModel = "AnalyticModel | ForestModel | CorrectedModel"

# Budget sizing from the predicted ratio to PyTorch's path: a problem where kt's best is predicted at least this
# fast relative to cuBLAS gets the whole budget; below it, the budget shrinks in proportion, to at most a quarter
# of it (and never below MIN_SIZED_BUDGET candidates): measuring many configs that all lose to cuBLAS buys little.
FULL_BUDGET_RATIO = 0.9
MIN_BUDGET_SHARE = 0.25
MIN_SIZED_BUDGET = 4


def predicted_baseline_s(model: CostModel, problem: Problem) -> float | None:
    """The model's prediction of PyTorch's own path for `problem` (a dense GEMM: cuBLAS), or None when the
    model has no baseline forest or the problem is not one it learned (structured families run chains)."""
    if isinstance(model, AnalyticModel):
        return None
    from kt.costmodel.correction import CorrectedModel
    from kt.costmodel.forest import ForestModel

    forest = model.base if isinstance(model, CorrectedModel) else model
    if not isinstance(forest, ForestModel) or not forest.predicts_baseline or problem.family != "gemm":
        return None
    return float(forest.predict_baseline([problem.to_record()]).runtime_s[0])


def size_budget(budget: int, ratio: float | None) -> tuple[int, str | None]:
    """The budget to spend given the predicted ratio (PyTorch's time over kt's best, > 1: kt faster), and a note
    when it is smaller than asked."""
    if ratio is None or ratio >= FULL_BUDGET_RATIO or budget <= MIN_SIZED_BUDGET:
        return budget, None
    share = max(MIN_BUDGET_SHARE, ratio / FULL_BUDGET_RATIO)
    sized = max(MIN_SIZED_BUDGET, min(budget, int(np.ceil(budget * share))))
    if sized == budget:
        return budget, None
    return sized, (
        f"the cost model predicts kt's best at {ratio:.2f}x PyTorch's path (cuBLAS), so this tune measures "
        f"{sized} candidates, not {budget}"
    )


def resolve_model(profile: DeviceProfile, model: str | os.PathLike | CostModel | None = None) -> CostModel:
    """The cost model that ranks candidates for `profile`.

    None: the forest shipped with kt for this device when there is one, else the analytic model;
    "analytic": the analytic model; a path: a model file from `kt costmodel fit` (refused when it was fitted
    for another device).
    """
    if isinstance(model, AnalyticModel):
        # the roofline of the model's own device predicted under the target's name (an H100's for an A100: 3x
        # too fast); the analytic model holds nothing else, so it is the target's, as "analytic" is
        return model if model.device.key == profile.key else AnalyticModel(profile)
    from kt.costmodel.correction import CorrectedModel
    from kt.costmodel.forest import ForestModel

    if isinstance(model, (ForestModel, CorrectedModel)):
        return _model_object_for(model, profile)
    if model is None:
        shipped = shipped_model_path(profile)
        if shipped is None:
            return AnalyticModel(profile)
        try:
            return _load_shipped(shipped, profile)
        except (ModelError, OSError) as exc:  # e.g. another scikit-learn that predicts otherwise
            from kt.costmodel.models import MODELS_DIR

            whose = "kt's own" if shipped.parent == MODELS_DIR else "$KT_MODELS_DIR's"  # the user's, not kt's
            logging.getLogger("kt").warning(
                "%s %s model is not usable here (%s); ranking with the analytic model",
                whose,
                profile.key,
                exc,
            )
            return AnalyticModel(profile)
    if not isinstance(model, (str, os.PathLike)):
        raise SpecError(
            "model", f"expected a model file's path, 'analytic' or a cost model, got {type(model).__name__}"
        )
    if ranking_model(model) == "analytic":
        return AnalyticModel(profile)
    return ForestModel.load(model, profile, stand_in=True)  # same architecture: as kt's own model


def _model_object_for(model: CostModel, profile: DeviceProfile) -> CostModel:
    """A forest (or a corrected model) made in code, for `profile`: as it is when it predicts for that device; a
    forest of another device of the same architecture as a stand-in for it, as a model file of one loads
    (`ForestModel.load(stand_in=True)`: a copy, predicting with the target's roofline); else refused, as such a
    file is. It was used as given: its own device's roofline under the target's name, without a word."""
    import copy

    from kt.costmodel.forest import ForestModel

    device = model.device
    if device.key == profile.key:
        return model
    if isinstance(model, ForestModel) and device.compute_capability == profile.compute_capability:
        stand_in = copy.copy(model)
        stand_in.device, stand_in.fitted_device = profile, model.fitted_device or device
        return stand_in
    raise ModelError(
        f"model: {model.describe()} predicts for {device.key} (sm_{device.compute_capability}), which cannot "
        f"stand in for {profile.key} (sm_{profile.compute_capability}); give a model of {profile.key}"
    )


_SHIPPED: dict[tuple, Any] = {}  # (file, its mtime and size, profile key) -> the loaded ForestModel
_SHIPPED_LOCK = threading.Lock()  # ops tuned at once load it once between them, not once each


def _shipped_lock_in_child() -> None:
    """A forked child's own lock, free: a fork while another thread loaded a shipped forest under it (seconds)
    left the child's held by a thread it does not have, and its first load waited forever."""
    global _SHIPPED_LOCK
    _SHIPPED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_shipped_lock_in_child)


def _load_shipped(path: Path, profile: DeviceProfile):
    """kt's own model for `profile`, loaded once per process (kt.nn builds a kernel per layer and bucket; a
    model never changes once loaded: refits wrap it in a CorrectedModel)."""
    from kt.costmodel.forest import ForestModel

    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, profile.key)
    with _SHIPPED_LOCK:
        if key not in _SHIPPED:
            _SHIPPED[key] = ForestModel.load(path, profile, stand_in=True)
        return _SHIPPED[key]


def search_strategy(strategy: str | SearchStrategy, measures_time: bool) -> SearchStrategy:
    """The strategy named (a SpecError, a ValueError as the other arguments' are, for an unknown name); without
    timing there is nothing to refit on, so an adaptive strategy becomes the model's top candidates."""
    try:
        strategy = make_strategy(strategy)
    except ValueError as exc:
        raise SpecError("strategy", str(exc).removeprefix("strategy: ")) from None
    return TopSearch() if strategy.adaptive and not measures_time else strategy


def tuning_space(problem: Problem, profile: DeviceProfile, spec: OpSpec | None = None) -> SearchSpace:
    """The configs of `problem` that can run on `profile`, kept to `spec`'s `tune.space` values or exactly its
    `tune.configs`: a KtError when none can run, a SpecError naming a listed config that cannot and why."""
    family = family_for(problem)
    space = family.space(problem, profile)
    if not space.legal:
        raise KtError(
            f"no config of the {family.name} family can run {problem} on {profile.name}: "
            f"{', '.join(f'{n} {r}' for r, n in space.dropped.items())}"
        )
    return restrict(space, family, problem, profile, spec) if spec is not None else space


def plan_tuning(
    problem: Problem,
    profile: DeviceProfile,
    budget: int,
    strategy: str | SearchStrategy = "guided",
    seed: int = 0,
    model: str | os.PathLike | CostModel | None = None,
    objective: str = "time",
    power_cap_w: float | None = None,
    measures_time: bool = True,
    spec: OpSpec | None = None,
    space: SearchSpace | None = None,
) -> Plan:
    """Rank the legal space with the cost model and take the strategy's first round.

    Without timing (`measures_time` false) there is nothing to refit on, so a guided search becomes the
    model's top `budget`. `spec`'s `tune.space` restricts the space to those axis values, its `tune.configs` to
    exactly those configs, which are then all measured whatever the budget. `space`: that space, when the
    caller has it already (`tuning_space`).
    """
    family = family_for(problem)
    if space is None:
        space = tuning_space(problem, profile, spec)
    from kt.costmodel.correction import CorrectedModel, model_name  # scikit-learn: once the space is sound

    listed = spec is not None and bool(spec.tune.configs)  # all measured: no sizing, no twins left out
    listed_note = None
    if listed and budget != len(space.legal):
        count = len(space.legal)  # configs listed twice (the same once defaults are filled in) count once
        listed_note = (
            f"tune.configs lists {count} distinct config{'s' if count != 1 else ''}: all are "
            f"{'measured' if measures_time else 'checked'} ({option_word('budget')} {budget} ignored)"
        )
    if listed:
        budget = len(space.legal)
    strategy = search_strategy(strategy, measures_time)
    cost_model = resolve_model(profile, model)
    records = family.records(problem, space.legal)  # structured families add their launches as `stages`
    prediction = predict_records(cost_model, records)
    values = prediction.objective(objective, power_cap_w)
    ranked = [int(i) for i in rank(records, values)]
    baseline_s = predicted_baseline_s(cost_model, problem)
    note, asked = None, budget
    # sized where the model leads (`strategy.sized`): kt collect's sweeps measured the forest's best 3,729 of
    # 6,120 configs, a sample its first 15 of 24, where cuBLAS was predicted ahead; without timing it only
    # checks configs
    if measures_time and baseline_s is not None and not listed and strategy.sized:
        budget, note = size_budget(budget, baseline_s / float(prediction.runtime_s[ranked[0]]))
    note = note or listed_note
    # listed configs are each measured, group_m twins included (the user named them); the exhaustive search
    # leaves none out either (`--strategy exhaustive`: every legal config as far as the budget goes)
    alias = None if listed or strategy.name == "exhaustive" else aliases(family, problem, space)
    variant = None if listed else _classes(family, "tile_of", problem, space)
    programs = programs_of(space.legal, alias)
    if budget > programs and not listed:  # the budget shrank without a word (5000 asked, 18 spent)
        distinct = "legal configs" if alias is None else "legal configs that run differently"
        verb = "measured" if measures_time else "checked"
        # what is spent, in place of a sizing note's "measures 22 candidates, not 64" that was never true here
        note = f"the {option_word('budget')} ({asked}) is more than the {programs} {distinct}: " + (
            # a guided search may stop before them: 16 of 20 measured, the note saying all were
            "the search measures at most all of them (it stops where nothing is expected to beat its best)"
            if measures_time and strategy.adaptive
            else f"all of them are {verb}"
        )
    budget = min(budget, programs)  # what the search can spend (meta.json's tuning.budget says it)
    state = SearchState(
        values,
        prediction.spread(objective),
        np.array(ranked),
        {},
        budget,
        0,
        seed,
        alias=alias,
        variant=variant,
    )
    chosen = strategy.propose(state)[:budget]
    return Plan(
        problem,
        space,
        records,
        prediction,
        ranked,
        chosen,
        model_name(cost_model),
        strategy.name,
        objective,
        power_cap_w,
        baseline_s,
        budget,
        note,
        getattr(cost_model.base if isinstance(cost_model, CorrectedModel) else cost_model, "origin", None),
        _unseen(cost_model.base if isinstance(cost_model, CorrectedModel) else cost_model, problem, records),
        alias,
        variant,
        listed,
        measures_time,
    )


def aliases(family, problem: Problem, space: SearchSpace) -> np.ndarray | None:
    """SearchState.alias for the legal configs: the class of each by the family's `same_program` (a GEMM's
    group_m where it orders no tiles), numbered in space order; None when every config is its own."""
    return _classes(family, "same_program", problem, space)


def _classes(family, method: str, problem: Problem, space: SearchSpace) -> np.ndarray | None:
    """The class of each legal config by the family's `method` (problem, config) -> key, numbered in space
    order; None when the family has no such method or every config is its own class."""
    key_of = getattr(family, method, None)
    if key_of is None:
        return None
    classes: dict[Any, int] = {}
    found = np.array([classes.setdefault(key_of(problem, c), len(classes)) for c in space.legal])
    return found if len(classes) < len(space.legal) else None


def _unseen(model, problem: Problem, records: list[dict[str, Any]]) -> str | None:
    """ForestModel.unseen for the problem and unseen_configs for its legal configs, one line (None for the
    analytic model, which has no training data)."""
    if not hasattr(model, "unseen"):
        return None
    found = [model.unseen(problem.to_record())]
    if problem.family == "gemm":  # a structured op's records are its own configs, not GEMM launches
        found.append(model.unseen_configs(records))
    return "; ".join(n for n in found if n) or None


@dataclass(frozen=True)
class PyTorchPath:
    """Candidate zero's stand-in for a config: PyTorch's own path has no tiles (its rows' config is {})."""

    impl: str

    def key(self) -> str:
        return BASELINE_KEY

    def to_dict(self) -> dict[str, Any]:
        return {}

    def __str__(self) -> str:
        return f"PyTorch: {self.impl}"


@dataclass
class Best:
    config: Config | None  # the best generated config (None when none passed and PyTorch's path is the best)
    measured: bool
    runtime_ms: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    predicted_ms: float | None = None
    row: dict[str, Any] = field(default_factory=dict)
    pytorch: bool = False  # True: no generated kernel beat PyTorch's own path, which is the best
    # the objective a measured choice was ranked by: the tune's, or time where no config had a power reading
    objective: str | None = None


@dataclass(eq=False)  # it holds a Plan (== raised)
class TuneResult:
    spec: OpSpec
    problem: Problem
    target: DeviceProfile
    runner: str  # cuda | interpret
    ran_on: str  # the GPU's name or the interpreter
    objective: str
    plan: Plan
    rows: list[dict[str, Any]]  # one per checked config, by the model's rank (best first), with that rank
    best: Best
    newly_measured: int
    wall_s: float
    db_path: Path
    notes: list[str] = field(default_factory=list)
    trace: SearchTrace = field(default_factory=SearchTrace)
    baseline: dict[str, Any] | None = None  # candidate zero's row: PyTorch's own path
    seed: int | None = None  # the search's and the check inputs' (--seed, else the spec's tune.seed)

    @property
    def measured(self) -> bool:
        return self.best.measured

    @property
    def baseline_impl(self) -> str:
        return baseline_impl(self.problem)

    @property
    def baseline_ratio(self) -> float | None:
        """PyTorch's measured objective over the best generated kernel's (> 1: kt is faster), by the objective
        the best was chosen by (time, where an energy tune had no power reading: the ratio was by energy, None);
        None when either was not timed or PyTorch's path was left out (`baseline_left_out`)."""

        def value(row: dict[str, Any]) -> float | None:
            return objective_value(row, self.ranked_by, self.plan.power_cap_w)

        theirs = value(self.baseline) if self.baseline else None
        ours = min((v for v in map(value, self.rows) if v is not None), default=None)
        return theirs / ours if theirs and ours else None

    @property
    def ranked_by(self) -> str:
        """The objective the best was chosen by: the tune's, or time where no config had a power reading."""
        return self.best.objective or self.objective

    @property
    def baseline_left_out(self) -> str | None:
        """Why PyTorch's timed path was not compared (over the power cap, no energy reading), or None."""
        return baseline_left_out(self.baseline, self.ranked_by, self.plan.power_cap_w)

    def statuses(self) -> Counter:
        return Counter(row["status"] for row in self.rows)

    def __repr__(self) -> str:  # the dataclass's own printed the plan's every legal config: 3 MB of text
        best = "PyTorch's path" if self.best.pytorch or self.best.config is None else self.best.config.key()
        if self.best.measured and self.best.runtime_ms is not None:
            how = f"measured {self.best.runtime_ms:.4g} ms on {self.ran_on}"
        else:
            how = f"not measured ({self.ran_on})"
        return (
            f"TuneResult({self.spec.name}: {self.spec.op} {self.spec.dtype}, best {best}, {how}; "
            f"{counted(len(self.rows), 'row')}, {self.newly_measured} new)"
        )

    def table(self, top: int = 10) -> list[dict[str, Any]]:
        """The best rows: by the objective when measured, else by the model's rank (passing rows first)."""
        from kt.spec import check_int

        top = check_int(top, "top", 1, 1 << 30)  # -1 dropped the last row, "2" failed in a slice
        if self.measured:
            objective = self.objective if any(self.value(r) is not None for r in self.rows) else "time"
            ok = [r for r in self.rows if objective_value(r, objective, self.plan.power_cap_w) is not None]
            return sorted(ok, key=lambda r: objective_value(r, objective, self.plan.power_cap_w))[:top]
        return sorted(self.rows, key=lambda r: (r["status"] != "ok", r["rank"]))[:top]

    def value(self, row: dict[str, Any]) -> float | None:
        return objective_value(row, self.objective, self.plan.power_cap_w)

    @property
    def best_model(self) -> str:
        """The model whose prediction the best's row shows: the one that ranked the round in which this tune
        measured it; else the plan's, whose prediction `_Tuner.rows` gives a row an earlier run measured (it was
        "a model of an earlier run" beside this plan's figure), and where PyTorch's path is the best and no
        generated config passed (no config to name a round by)."""
        if self.best.config is None:
            return self.plan.model
        key = self.best.config.key()
        for index, round_ in zip(self.trace.measured, self.trace.rounds):
            if self.plan.config(index).key() == key:
                return self.trace.models[round_]
        return self.plan.model

    def save(self, path: str | Path) -> Path:
        """Write the best kernel as an artifact folder at `path` (kernel.py, and meta.json with the tuning record;
        what `kt.load(path)` imports), and return its path. An artifact already there is kept as `<path>.prev`
        where its spec, kernel, config, target, objective or power cap differ, else replaced
        (kt.autotune.artifact.save_artifact_report)."""
        from kt.autotune.artifact import save_artifact

        return save_artifact(self, path)


def programs_of(legal: list, alias: np.ndarray | None) -> int:
    """How many of the `legal` configs run differently: one per class of `alias` (SearchState.alias)."""
    return len(legal) if alias is None else int(alias.max()) + 1


def _models_text(models: list[str]) -> str:
    """The models that ranked a search's rounds, in order: the first, the refits between, the last (each refit's
    name differs by its row count, so every round's was listed: 22 names, 2,210 characters, in one note)."""
    names = list(dict.fromkeys(models))
    if len(names) <= 3:
        return " -> ".join(names)
    return f"{names[0]} -> {len(names) - 2} refits -> {names[-1]}"


ROW_UNITS = {"time": 1e3, "energy": 1e3, "edp": 1e6}  # Prediction.objective's s, J, J*s -> ms, mJ, mJ*ms


def objective_value(row: dict[str, Any], objective: str, power_cap_w: float | None = None) -> float | None:
    """The measured number to minimise for `objective`, or None when the row lacks it (failed, no power
    reading) or drew more than `power_cap_w` watts."""
    if row.get("status") != "ok" or row.get("runtime_ms") is None:
        return None
    if power_cap_w is not None and row.get("power_w") is not None and row["power_w"] > power_cap_w:
        return None
    if objective == "time":
        return row["runtime_ms"]
    if row.get("energy_mj") is None:
        return None
    return row["energy_mj"] if objective == "energy" else row["energy_mj"] * row["runtime_ms"]


def baseline_left_out(
    baseline: dict[str, Any] | None, objective: str, power_cap_w: float | None
) -> str | None:
    """Why PyTorch's own path (candidate zero), timed and passing, has no value for `objective`: it drew more
    than the cap, or has no energy reading; None when it has one, or was not timed."""
    if baseline is None or objective_value(baseline, "time") is None:
        return None
    if objective_value(baseline, objective, power_cap_w) is not None:
        return None
    if power_cap_w is not None and baseline.get("power_w") is not None and baseline["power_w"] > power_cap_w:
        return f"it drew {baseline['power_w']:.0f} W, over the {power_cap_w:g} W power cap"
    return f"it has no energy reading to rank by {objective}"


def tune(
    spec: OpSpec,
    *,
    budget: int | None = None,
    objective: str | None = None,
    power_cap_w: float | None = None,
    **options: Any,
) -> TuneResult:
    """Tune `spec`'s kernel: measure up to `budget` configs chosen by the cost model, return the best.

    `options` go to `run_session` (backend, db, device, workers, strategy, model, seed, progress, timeout_s,
    retry_failed, timing, deadline, baseline, runner, ray, gpus: its docstring says what each does).
    """
    started = time.monotonic()
    objective = spec.tune.objective if objective is None else objective  # "" is refused, not the spec's
    if objective not in OBJECTIVES:  # a SpecError, as kt.plan's (the caller's mistake)
        raise SpecError("objective", f"{objective!r} is not supported; allowed: {', '.join(OBJECTIVES)}")
    power_cap_w = power_cap(power_cap_w, "power_cap_w") if power_cap_w is not None else spec.tune.power_cap_w
    session = run_session(
        spec,
        budget=budget or spec.tune.budget,
        objective=objective,
        power_cap_w=power_cap_w,
        **options,
    )
    plan, runner, profile = session.plan, session.runner, session.profile
    notes = [note for note in (plan.budget_note, plan.model_note, plan.twin_note, session.retry_note) if note]
    time_only = False  # a measuring tune of energy whose model predicts no power
    if not runner.measures_time:
        missing = getattr(runner, "compile_missing", None)  # None: the compile stage was switched off
        compiled = (
            f"compiled for sm_{profile.compute_capability}"
            if getattr(runner, "compile_target", False)  # a Runner of the caller's own may have none
            else f"not compiled for the GPU ({missing})"
            if missing
            else "not compiled for the GPU"
        )
        checked = (
            "on the full problem through the GPU's measure path (a dry run: its wall clock is no runtime)"
            if runner.name == "dryrun"
            else "on reduced problems"
        )
        notes.append(  # the target is named on the best line above it
            f"no GPU here: candidates were checked in Triton's interpreter {checked} and "
            f"{compiled}; nothing was timed, and the choice is the best prediction of {model_noun(plan.model)} "
            "among those that passed"
        )
        if power_cap_w is not None and session.final_prediction.power_w is None:
            notes.append(  # --power-cap was silently ignored: no reading, and no model of power
                f"the {power_cap_w:g} W power cap was not applied: nothing was measured and "
                f"{model_noun(plan.model)} predicts no power"
            )
        if objective != "time" and session.final_prediction.power_w is None:
            notes.append(  # meta.json said `objective: energy` of a choice made by predicted time
                f"the {objective} objective was not applied: nothing was measured and {model_noun(plan.model)} "
                "predicts no power, so the choice is by predicted time"
            )
    else:
        rounds = max(session.trace.rounds, default=-1) + 1
        if rounds:
            # this tune's own rows: a search's picks another tune of the problem measured at the same time (two
            # ops of one problem) were counted as new beside "nothing new was measured"
            others = len(session.trace.measured) - session.fresh
            taken = (
                f" (and {others} taken from another tune of this problem at the same time)"
                if others > 0
                else ""
            )
            notes.append(
                f"{session.fresh} new measurements{taken} in {rounds} round"
                f"{'s' if rounds != 1 else ''}, ranked by: {_models_text(session.trace.models)}"
            )
        # guided stops where nothing left is expected to beat its best: the budget, unspent, went unsaid, and
        # a rerun of the same budget measured more
        if session.trace.stopped_early and len(session.rows) < plan.budget:
            notes.append(
                f"the search stopped at {len(session.rows)} of the budget's {plan.budget} configs: nothing left "
                "was expected to beat the best measured; a rerun goes on from the rows this one kept"
            )
        if session.skipped_rows:
            notes.append(f"{session.skipped_rows} malformed rows of the database were left out of the refits")
        time_only = objective != "time" and session.final_prediction.power_w is None  # said once the best is
        if power_cap_w is not None and any(
            r.get("power_w") is None for r in session.rows if r["status"] == "ok"
        ):
            notes.append(
                f"some configs have no power reading, so the {power_cap_w:g} W cap was not checked for them"
            )
    if session.fresh == 0 and session.rows:
        # a rerun with another --strategy or --model: meta.json credits them, yet they chose nothing
        verb = "measured" if runner.measures_time else "checked"
        # (only where configs that run differently are left: a larger budget finds nothing else to run)
        more = (
            f"; raise {option('budget')} to {'measure' if runner.measures_time else 'check'} more"
            if len(session.rows) < plan.programs
            else ""
        )
        notes.append(
            f"nothing new was {verb}: the database held {counted(len(session.rows), 'config')} of this problem "
            f"{verb} by earlier runs or by another tune at the same time, which fill the budget whatever "
            f"strategy and model chose them{more}"
        )
    deadline = options.get("deadline")
    if deadline is not None and not session.rows and time.monotonic() > deadline:
        # the search stopped at the deadline before the first generated config came back: say so, not "none
        # of the 0 candidates passed" (2026-12-04, the H200's `kt bench` at 3 minutes: its last quick tunes)
        legal = len(plan.space.legal)
        baseline_ok = session.baseline is not None and session.baseline.get("status") == "ok"
        if not (runner.measures_time and baseline_ok):  # without a GPU, PyTorch's path is never the choice
            verb = "measured" if runner.measures_time else "checked"
            raise KtError(
                f"deadline: it passed before any of the {legal} legal configs was {verb}; give the tune more "
                "time"
            )
        notes.append(
            f"the deadline passed before any of the {legal} legal configs was measured: PyTorch's path, the "
            "only candidate measured, is the artifact's kernel.py"
        )
    if session.stalled:
        notes.append(
            f"the tune stopped after its first {counted(session.stalled, 'check')} all timed out in Triton's "
            f"interpreter (one per worker), where the rest of the budget would have too: give a longer "
            "--timeout, or tune on a GPU"
        )
    best = choose_best(plan, session.rows, objective, runner, notes, power_cap_w, session.baseline)
    if time_only:
        # "and the best by measured energy" beside choose_best's "no power readings, so the best is by time"
        measured = f" and the best by measured {objective}" if best.objective == objective else ""
        notes.append(
            f"{model_noun(plan.model)} predicts time only: candidates were chosen by predicted time{measured}"
        )
    if not runner.measures_time and power_cap_w is not None:
        _over_cap_note(plan, session.final_prediction, best, power_cap_w, notes)
    if not runner.measures_time and best.predicted_ms is not None and best.predicted_ms < LAUNCH_S * 1e3:
        notes.insert(  # first, right under the best line (the CLI's alone said it: not meta.json, not .notes)
            0,
            f"that prediction is less than one kernel launch ({LAUNCH_S * 1e3:.5f} ms), which no measured "
            "kernel took: outside what the model was fitted on, so read it as the order of the configs, not a "
            "time",
        )
    return TuneResult(
        spec,
        plan.problem,
        profile,
        runner.name,
        runner.device,
        objective,
        plan,
        session.rows,
        best,
        session.fresh,
        time.monotonic() - started,
        session.db_path,
        notes,
        session.trace,
        session.baseline,
        session.seed,
    )


@dataclass(eq=False)
class Session:
    """One search over a problem's legal space: what `kt tune` and `kt collect` share."""

    plan: Plan
    runner: Runner
    profile: DeviceProfile
    rows: list[dict[str, Any]]
    fresh: int
    db_path: Path
    trace: SearchTrace = field(default_factory=SearchTrace)
    final_prediction: Prediction | None = None  # the last model's, after any refits
    skipped_rows: int = 0  # malformed database rows that refits left out
    baseline: dict[str, Any] | None = None  # candidate zero's row (PyTorch's own path)
    seed: int = 0  # the search's (`_session_options`: the one given, else the spec's tune.seed)
    retry_note: str = ""  # --retry-failed's failed configs the budget left no room to run again
    stalled: int = 0  # the first checks, all timed out in the interpreter, after which the tune stopped

    def __repr__(self) -> str:  # the dataclass's own printed its plan, rows and trace: tens of kB
        return (
            f"Session({self.plan.problem} on {self.runner.name}: {counted(len(self.rows), 'row')}, "
            f"{self.fresh} new, database {self.db_path})"
        )


# run_session's options that make its runner: what a runner shared by several tunes is made from
RUNNER_OPTIONS = ("device", "workers", "seed", "timeout_s", "timing", "ray", "gpus")


def shares_runner(specs: list[OpSpec], device: str | None = None) -> bool:
    """Whether tuning `specs` together shares one runner: several ops, all for one device."""
    return len(specs) > 1 and len({spec.device if device is None else device for spec in specs}) == 1


def shared_runner(
    specs: list[OpSpec],
    backend: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    seed: int | None = None,
    timeout_s: float = 300.0,
    timing: TimingSettings | None = None,
    ray: str | None = None,
    gpus: list[int] | None = None,
):
    """One runner for tuning several ops that target one device (a context manager: entered, its workers
    start once and serve every op's compiles and measurements; pass it to `run_session(runner=...)`); a null
    context giving None for a single op or ops for several devices, each of which then makes its own."""
    from kt.api import resolve_profile  # the API owns turning specs into profiles

    if not shares_runner(specs, device):
        return contextlib.nullcontext(None)
    targets = {spec.device if device is None else device for spec in specs}
    extra = {"timing": timing} if timing is not None else {}
    return make_runner(
        backend,
        resolve_profile(targets.pop()),
        workers=workers,
        # the seed of a candidate's check inputs where it names none (each tune's candidates name their own)
        seed=specs[0].tune.seed if seed is None else seed,
        timeout_s=timeout_s,
        ray=ray,
        gpus=gpus,
        **extra,
    )


DEFAULT_CONCURRENT_OPS = 4  # ops tuned at once on a shared runner: enough to keep its GPU workers fed


def ops_at_once(specs: list[OpSpec], device: str | None = None, concurrent: int | None = None) -> int:
    """How many of `specs` tune_each tunes at once: up to `concurrent` (default DEFAULT_CONCURRENT_OPS) when
    they share a runner, else one after the other."""
    concurrent = DEFAULT_CONCURRENT_OPS if concurrent is None else concurrent
    if concurrent < 1:
        raise KtError(f"concurrent ops: {concurrent} is not allowed; give 1 (one after the other) or more")
    return min(concurrent, len(specs)) if shares_runner(specs, device) else 1


def tune_each(
    specs: list[OpSpec],
    tune_one: Callable[..., TuneResult],
    concurrent: int | None = None,
    on_done: Callable[[int, OpSpec, TuneResult | KtError], None] | None = None,
    on_start: Callable[[int, OpSpec], None] | None = None,
    progress: bool = True,
    backend: str = "auto",
    **options: Any,
) -> list[TuneResult | KtError]:
    """Tune every spec: each op's TuneResult, or the KtError that stopped it (the others go on), in the specs'
    order. Ops that target one device share one runner (its workers start once). Up to `concurrent` of them
    (default DEFAULT_CONCURRENT_OPS; 1: one after the other) are tuned at once, each in a thread of its own
    with its own rounds, budget and database rows, all served by the runner's workers through a dispatcher
    (kt.autotune.dispatch) and shown on one TuneBoard. `tune_one(spec, progress=..., runner=..., backend=...,
    **options)` tunes one op (kt.autotune.tune.tune, or the API's wrapper of it); `on_done(number, spec,
    outcome)` is called as each op ends, one call at a time (the CLI prints the op's table and writes its
    artifact there); `on_start(number, spec)` as each begins, only when they run one after the other."""
    concurrent = ops_at_once(specs, options.get("device"), concurrent)
    results: list[TuneResult | KtError | None] = [None] * len(specs)
    lock = threading.Lock()
    runner_options = {key: options[key] for key in RUNNER_OPTIONS if key in options}
    # a runner the caller made is the one shared (entered here where it is not): each op's thread drove its
    # pool at once, with no dispatcher between them (a hang, or a worker's result read as None), while this
    # made a second runner for nobody
    given = options.pop("runner", None)
    if given is None:
        context = shared_runner(specs, backend, **runner_options)
    else:
        context = given if given.pool is None else contextlib.nullcontext(given)
    with context as runner:
        board = TuneBoard(progress, len(specs)) if concurrent > 1 else None
        shared = {} if runner is None else {"runner": runner}

        def one(number: int, spec: OpSpec) -> None:
            try:
                outcome = tune_one(spec, progress=board or progress, backend=backend, **options, **shared)
            except KtError as exc:
                outcome = exc
            results[number - 1] = outcome
            with lock:
                if board is not None:
                    board.finished(spec.name, "done" if isinstance(outcome, TuneResult) else "failed")
                if on_done is not None:
                    with board.above() if board is not None else contextlib.nullcontext():
                        on_done(number, spec, outcome)

        try:
            if board is None:
                for number, spec in enumerate(specs, 1):
                    if on_start is not None:
                        on_start(number, spec)
                    one(number, spec)
            else:
                with (
                    runner.shared() as dispatcher,
                    ThreadPoolExecutor(concurrent, thread_name_prefix="kt-op") as threads,
                ):
                    futures = [threads.submit(one, number, spec) for number, spec in enumerate(specs, 1)]
                    try:
                        # an error that is no KtError (a bug, the pool's failure) stops the run as it happens,
                        # not once the ops before it in the list have ended (one may wait on another process)
                        for future in wait(futures, return_when=FIRST_EXCEPTION).done:
                            future.result()
                        for future in futures:
                            future.result()
                    except BaseException as exc:  # Ctrl-C or a bug: every op stops now, not after its tune
                        for future in futures:
                            future.cancel()
                        dispatcher.abort()
                        if isinstance(exc, DispatcherStopped) and exc.__cause__ is not None:
                            raise exc.__cause__ from None  # the pool's own error, as one op's tune raises it
                        raise
        finally:
            if board is not None:
                board.stop()
    return results


RETRYABLE = ("timeout", "crash")
CLAIM_POLL_S = 0.5  # how often a tune looks for the configs another tune on its database is measuring


def run_session(
    spec: OpSpec,
    *,
    budget: int,
    backend: str = "auto",
    db: str | Path | None = None,
    device: str | None = None,
    workers: int | None = None,
    strategy: str | SearchStrategy = "guided",
    model: str | os.PathLike | CostModel | None = None,
    objective: str = "time",
    power_cap_w: float | None = None,
    seed: int | None = None,
    progress: bool | TuneBoard = True,
    timeout_s: float = 300.0,
    retry_failed: bool = False,
    timing: TimingSettings | None = None,
    deadline: float | None = None,
    baseline: bool = True,
    runner: Runner | None = None,
    ray: str | None = None,
    gpus: list[int] | None = None,
) -> Session:
    """Plan, then search: measure what the database lacks, round by round, until the strategy stops or the
    budget (counting configs measured before) is spent. `retry_failed` measures again configs whose earlier
    attempt timed out or crashed (both can be transient: a short timeout, a busy machine). `timing` sets how
    long the GPU times each config and its energy loop (default: kt.autotune.timing.DEFAULT_TIMING).
    `deadline` (time.monotonic()) ends the search early: nothing new starts after it. `baseline` runs
    candidate zero, PyTorch's own path, with the first round. `runner`: one already made (and perhaps started,
    so that several tunes share its workers), whose backend, workers, timeout and timing then apply. `ray`: the
    workers are actors of that Ray cluster ("local", "auto" or an address; kt.autotune.raypool). `gpus`: the
    GPUs to measure on, one GPU worker each (indices in torch's numbering; default: every visible GPU of
    cuda:0's model)."""
    from kt.api import resolve_profile  # the API owns turning specs into profiles
    from kt.ir import op_from_spec

    seed, timeout_s = _session_options(spec, seed, timeout_s, workers, deadline)
    retry_failed, baseline = check_bool(retry_failed, "retry_failed"), check_bool(baseline, "baseline")
    if not isinstance(progress, TuneBoard):
        progress = check_bool(progress, "progress")
    if db is not None and not isinstance(db, (str, os.PathLike)):
        raise SpecError("db", f"expected a database file's path, got {type(db).__name__}")
    (node,) = op_from_spec(spec).kernel_graph().kernels  # dense lowers to one kernel
    profile = resolve_profile(spec.device if device is None else device)  # "" is refused, not the spec's
    search = search_strategy(strategy, measures_time=True)  # refuse an unknown name before any runner starts
    if timing is not None and not isinstance(timing, TimingSettings):  # it failed after the workers started
        raise SpecError(
            "timing", f"must be a kt.autotune.timing.TimingSettings or None, got {type(timing).__name__}"
        )
    owned = runner is None
    if owned:
        extra = {"timing": timing} if timing is not None else {}
        # no more workers than candidates (the budget, or the listed configs, which are measured whatever the
        # budget, and candidate zero): each takes seconds to start
        candidates = len(spec.tune.configs) if spec.tune.configs else budget
        workers = workers or min(default_workers(), candidates + 1)
        runner = make_runner(
            backend, profile, workers=workers, seed=seed, timeout_s=timeout_s, ray=ray, gpus=gpus, **extra
        )
    search = search_strategy(search, runner.measures_time)
    runner.refuse_unfit(node.problem)  # before any worker starts or the database opens
    # the runner's workers start first, so their imports overlap making the space, loading the model and ranking
    with runner if owned else contextlib.nullcontext():
        # a listed config that cannot run is refused here, before the model loads or the database opens
        space = tuning_space(node.problem, profile, spec)
        cost_model = resolve_model(profile, model)  # a model that is refused makes no database
        with Database(db) as database:
            plan = plan_tuning(
                node.problem,
                profile,
                budget,
                search,
                seed,
                cost_model,
                objective,
                power_cap_w,
                runner.measures_time,
                spec,
                space,
            )
            tuner = _Tuner(plan, spec, runner, profile, database, cost_model, seed)
            trace, fresh = tuner.search(search, plan.budget, progress, retry_failed, deadline, baseline)
            rows = tuner.rows(trace)
            return Session(
                plan,
                runner,
                profile,
                rows,
                fresh,
                database.path,
                trace,
                tuner.prediction,
                tuner.skipped_rows,
                tuner.baseline_row() if baseline else None,
                seed,
                tuner.retry_note,
                tuner.stalled,
            )


def _session_options(spec, seed, timeout_s, workers, deadline) -> tuple[int, float]:
    """The Python API's options, checked as the CLI's are, before anything runs: a bad seed was stored as every
    candidate's crash (so later tunes on that database failed too), a timeout of nan made the pool busy-wait and
    one of 0 stored every candidate as timed out, workers=0 meant the default."""
    from kt.spec import check_int, check_seconds, check_seed

    seed = spec.tune.seed if seed is None else check_seed(seed)
    timeout_s = check_seconds(timeout_s, "timeout_s")
    if workers is not None:
        check_int(workers, "workers", 1, 64)
    if deadline is not None:
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
        ):
            raise SpecError("deadline", f"must be a time.monotonic() value, got {deadline!r}")
        now = time.monotonic()
        if deadline <= now:
            raise SpecError(
                "deadline",
                f"{deadline:g} has passed (time.monotonic() is {now:.1f}): it is a time.monotonic() value, "
                "e.g. time.monotonic() + 600 for ten minutes",
            )
    return seed, timeout_s


class _Tuner:
    """The tune loop's moving parts: the model as it is refitted, the database, the runner."""

    def __init__(self, plan, spec, runner, profile, database, model, seed):
        self.plan, self.spec, self.runner, self.profile = plan, spec, runner, profile
        self.database, self.start, self.seed = database, model, seed
        self.family = family_for(plan.problem)
        self.key = row_key(runner, profile, plan.problem)
        self.baseline_key = row_key(runner, profile, plan.problem, pytorch=True)
        self.index_of = {config.key(): i for i, config in enumerate(plan.space.legal)}
        self.prediction = plan.prediction
        self.model_name = plan.model
        self.rank_of = {index: position for position, index in enumerate(plan.ranked)}
        self.skipped_rows = 0  # malformed database rows left out of refits
        self.inserted: set[str] = set()  # the config keys whose rows this tune wrote
        self.retry_note = ""  # `search`: failed configs --retry-failed leaves as they are, in words
        # the first checks in Triton's interpreter, one per worker, when every one timed out: the tune stops there
        self.stalled = 0
        # failed rows --retry-failed deleted to run their configs again (`_put_back`)
        self.set_aside: list[dict[str, Any]] = []
        self.probed = False  # those first checks have run (alone, before the rest of their round)
        self._config_x: np.ndarray | None = None  # the legal configs' encoding (structured refits)
        self._distance = None  # config index -> every legal config's distance from it, once asked
        self._legal_space = None  # the legal configs as a space's (parameters, points), once asked

    def value(self, row: dict[str, Any]) -> float | None:
        return objective_value(row, self.plan.objective, self.plan.power_cap_w)

    def known(
        self, retry_failed: bool, budget: int, baseline: bool = True
    ) -> tuple[dict[int, float | None], list[int], int]:
        """Values of this problem's configs already in the database (they count against the budget); with
        `retry_failed`, the failed (timed-out, crashed) configs to run again, best ranked first, as many as the
        budget leaves room for beside the rows that stay (their rows are deleted: they run first), and how many
        failed ones stay. Every failed row was deleted, and the search then spent the budget on what it chose:
        failures went without a row and without a word. A failed PyTorch row goes only where `baseline` runs it
        again (`kt collect`, which runs no baseline, deleted it for good)."""
        known = self.database.measured_configs(**self.key)
        # candidate zero's row too, where this tune compares against it: a warm tune stopped once its PyTorch row
        # was in left it for a flushed tune, which chose PyTorch by a warm time against flushed ones
        zero = [row for row in [self.baseline_row()] if row] if baseline else []
        self._check_regime([*known.values(), *zero])
        retry: list[int] = []
        failed_count = 0
        if retry_failed:
            failed = sorted(
                (
                    self.index_of[k]
                    for k, row in known.items()
                    if k in self.index_of and row["status"] in RETRYABLE
                ),
                key=self.rank_of.__getitem__,
            )
            staying = sum(k in self.index_of for k in known) - len(failed)
            retry = failed[: max(0, budget - staying)]
            failed_count = len(failed) - len(retry)
            stale = [known[self.plan.config(index).key()] for index in retry]
            if baseline:
                stale += [row for row in [self.baseline_row()] if row and row["status"] in RETRYABLE]
            self.set_aside = stale  # put back, each, where the tune stops before running it (`_put_back`)
            self.database.delete([row["id"] for row in stale])
            known = self.database.measured_configs(**self.key)
        values = {self.index_of[k]: self.value(row) for k, row in known.items() if k in self.index_of}
        return values, retry, failed_count

    def _check_regime(self, rows) -> None:
        """Refuse rows of this problem timed under another regime than this tune's (`TimingSettings.regime`):
        a database keeps one row per config, so a warm-L2 tune counted, refitted on and chose among flushed
        rows (or mixed the two) without a word. A row without a regime is the default's, l2_flushed."""
        regime = getattr(getattr(self.runner, "timing", None), "regime", None)
        if not (self.runner.measures_time and regime):
            return
        other = {r.get("timing_regime") or "l2_flushed" for r in rows if r["status"] == "ok"} - {regime}
        if other:
            raise KtError(
                f"timing: {self.database.path} holds this problem's rows timed {' and '.join(sorted(other))}, and this "
                f"tune times {regime}; a database keeps one row per config, so give another database (db) or "
                "time as its rows were"
            )

    def baseline_row(self) -> dict[str, Any] | None:
        """Candidate zero's row in the database (PyTorch's own path for this problem), if it has run."""
        return self.database.measured_configs(**self.baseline_key).get(BASELINE_KEY)

    def baseline_candidate(self) -> Candidate:
        # the interpreter checks it on the reduced problems of the model's first choice
        checks = self.family.check_problems(self.plan.problem, self.plan.config(self.plan.ranked[0]))
        return pytorch_candidate(
            self.plan.problem, checks, seed=self.seed, name=self.spec.name, device=self.profile.name
        )

    def predict(self) -> tuple[Prediction, str]:
        return self.prediction, self.model_name

    def refit(self) -> bool:
        """Refit on every passing GPU measurement of this device and template (all shapes, this tune's and
        earlier ones), starting from the tune's first model (kt.costmodel.correction.refit); False when there
        are too few rows."""
        from kt.autotune.dataset import to_record

        if self.family.name != "gemm":  # structured rows are whole ops, not the GEMM launches models learn
            return self.refit_own()
        rows = self.database.find(
            runner=self.runner.name,
            device=self.runner.device,
            target=self.profile.key,
            family=self.family.name,
            family_version=self.family.version,
            status="ok",
        )
        records = []
        for row in rows:
            if row["config_key"] == BASELINE_KEY:  # PyTorch's path is no config the model ranks
                continue
            try:
                records.append(to_record(row))
            except KtError:  # a malformed old row must not stop a tune between rounds
                self.skipped_rows += 1
        from kt.costmodel.correction import model_name, refit

        model = refit(self.start, records, self.seed)
        if model is None:
            return False
        self.prediction = predict_records(model, self.plan.records)
        self.model_name = model_name(model)
        return True

    def distance(self, index: int) -> np.ndarray:
        """How many config fields every legal config differs from config `index` in (the guided search's
        polish around the best measured)."""
        if self._distance is None:
            from kt.autotune.spaces import distances

            self._distance = distances(*self.legal_space())
        return self._distance(index)

    def legal_space(self):
        """The legal configs as a space's parameters and points (their fields), built once for both the
        polish's distances and the structured refits' features."""
        if self._legal_space is None:
            from kt.autotune.spaces import config_space

            self._legal_space = config_space([c.to_dict() for c in self.plan.space.legal])
        return self._legal_space

    def refit_own(self) -> bool:
        """A structured family's refit: a parameter forest (kt.costmodel.paramforest) on this problem's own
        measured rows learns log(measured / first-predicted runtime) from the config's fields, and which
        configs fail (a wrong result, a crash, out of resources); the first model's power stays. False when
        fewer than three configs of this problem ran."""
        from kt.autotune.spaces import features
        from kt.costmodel.paramforest import MIN_ROWS as OWN_MIN_ROWS
        from kt.costmodel.paramforest import ParamForest

        indices, runtime_ms = [], []
        for config_key, row in self.database.measured_configs(**self.key).items():
            if config_key in self.index_of:
                indices.append(self.index_of[config_key])
                ok = row["status"] == "ok" and row.get("runtime_ms")
                runtime_ms.append(float(row["runtime_ms"]) if ok else np.nan)
        runtime_ms = np.array(runtime_ms, dtype=np.float64)
        if int(np.isfinite(runtime_ms).sum()) < OWN_MIN_ROWS:
            return False
        if self._config_x is None:
            self._config_x = features(*self.legal_space())
        start = self.plan.prediction
        offset = np.log(start.runtime_s * 1e3)
        model = ParamForest(seed=self.seed).fit(self._config_x[indices], runtime_ms, offset[indices])
        own = model.predict(self._config_x, offset)
        self.prediction = Prediction(
            own.runtime_s * 1e-3,
            np.sqrt(start.runtime_spread**2 + own.runtime_spread**2),
            start.power_w,
            start.power_spread_w,
            fail_prob=own.fail_prob,
        )
        self.model_name = f"{self.plan.model} corrected by a {model.describe()}"
        return True

    def search(
        self,
        strategy: SearchStrategy,
        budget: int,
        progress: bool | TuneBoard,
        retry_failed: bool,
        deadline: float | None = None,
        baseline: bool = True,
    ):
        known, retry, unretried = self.known(retry_failed, budget, baseline)
        zero = [self.baseline_candidate()] if baseline and self.baseline_row() is None else []
        zero_key, zero_due = {**self.baseline_key, "config_key": BASELINE_KEY}, bool(zero)
        if self.runner.measures_time and strategy.adaptive:
            self.refit()  # rank the first round with what the database knows of this device already
        total = min(budget, len(self.plan.space.legal))
        if isinstance(progress, TuneBoard):
            reporter = progress.reporter(self.spec.name, self.runner.measures_time)
        else:
            reporter = TuneProgress(progress, self.runner.measures_time)
        verb = "measuring" if self.runner.measures_time else "checking"
        ranked = f"first ranked by {model_noun(self.plan.model)}"
        if self.plan.unapplied:  # it predicts no power
            ranked += f" ({self.plan.unapplied})"
        reporter.start(
            total,
            # the failed configs run again fill the budget up (it was full at the start, and went past it)
            min(len(known), total - len(retry)),
            f"{self.runner.name} on {self.runner.device}",
            summary=f"target {self.profile.label} · space: {self.plan.space.total} configs, "
            f"{len(self.plan.space.legal)} legal · {verb} up to {total}: {strategy.description}, {ranked}",
        )
        fresh = 0

        def run(batch: list[int]) -> dict[int, float | None]:
            """Measure the configs `batch` (claimed by this process) and candidate zero if it is still due."""
            nonlocal fresh
            todo = [
                generated_candidate(
                    self.plan.problem,
                    self.plan.config(index),
                    float(self.prediction.runtime_s[index]) * 1e3,
                    seed=self.seed,
                    name=self.spec.name,
                    device=self.profile.name,
                )
                for index in batch
            ]
            # released whether or not this tune got it (release drops only this tune's own claim): a stop
            # (Ctrl-C, SIGTERM) just after the claim, before it was known to be ours, left it in the database
            claimed = [zero_key] if zero else []
            values = {}
            try:
                if claimed and self.database.claim(claimed) == ["mine"]:
                    todo[:0] = zero  # candidate zero goes with the first round (unless another tune runs it)
                zero[:] = []
                waves = [todo]
                if self.runner.name == "interpret" and not self.probed:
                    # The interpreter checks a structured op at its full width on the CPU: a butterfly over 2**20
                    # features timed out at 300 s in every check, and a 64-config tune spent hours on timeouts
                    # before its end said why. Its first checks (one per worker) run alone, and where every one
                    # times out the tune stops there.
                    first = self.runner.workers + len(todo) - len(batch)  # candidate zero's check beside them
                    waves, self.probed = [todo[:first], todo[first:]], True
                for wave in waves:
                    if self.stalled or not wave:
                        break
                    statuses = []
                    for result in self.runner.run(wave, deadline):  # each row committed as its result comes
                        if isinstance(result.candidate.config, PyTorchPath):
                            row = measurement_row(
                                result, self.spec, self.runner, self.baseline_key, self.family
                            )
                            self.database.insert(row)
                            reporter.baseline(result)
                            continue
                        row = measurement_row(result, self.spec, self.runner, self.key, self.family)
                        if self.database.insert(row):
                            fresh += 1
                            self.inserted.add(row["config_key"])
                        values[self.index_of[result.candidate.config.key()]] = self.value(row)
                        statuses.append(result.status)
                        reporter.advance(result)
                    # the first checks alone: a second batch all timed out after a first that passed, and the
                    # note said the tune stopped after its first checks all timed out, though none was skipped
                    if len(waves) > 1 and wave is waves[0] and statuses and set(statuses) == {"timeout"}:
                        self.stalled = len(statuses)
            finally:
                self.database.release(claimed, quiet=True)  # candidate zero's (the configs' go in measure())
            return values

        def measure(batch: list[int]) -> dict[int, float | None]:
            """Claim the batch in the database, measure what this process claimed, and wait for the configs
            another tune of the same database is measuring (taking over any whose process is gone)."""
            keys = {index: {**self.key, "config_key": self.plan.config(index).key()} for index in batch}
            pending, values, announced = list(batch), {}, False
            try:
                while pending:
                    states = dict(zip(pending, self.database.claim([keys[i] for i in pending])))
                    mine = [i for i in pending if states[i] == "mine"]
                    if mine:
                        values.update(run(mine))
                        self.database.release([keys[i] for i in mine])
                    rows = self.database.measured_configs(**self.key)
                    for index in [i for i in pending if keys[i]["config_key"] in rows]:
                        if index not in values:  # another tune's measurement
                            values[index] = self.value(rows[keys[index]["config_key"]])
                            reporter.advance_row(rows[keys[index]["config_key"]])
                    pending = [i for i in pending if i not in values and states[i] == "theirs"]
                    if not pending or (deadline is not None and time.monotonic() > deadline):
                        break
                    if not announced:
                        holders = self.database.holders([keys[i] for i in pending])
                        reporter.note(
                            f"waiting for {len(pending)} configs that another tune (kt process or op) is "
                            f"{'measuring' if self.runner.measures_time else 'checking'} in {self.database.path}"
                            + (f": held by {holders}" if holders else "")
                        )
                        announced = True
                    stopped = getattr(self.runner.pool, "check_alive", None)  # a dispatcher's: ops at once
                    if stopped is not None:
                        stopped()  # Ctrl-C or another op's failure stopped the run: stop waiting too
                    time.sleep(CLAIM_POLL_S)
            finally:  # a crash or Ctrl-C: what this process claimed and did not finish is free again
                self.database.release(list(keys.values()), quiet=True)
            return values

        if unretried:
            self.retry_note = (
                f"{option('retry_failed')}: {counted(unretried, 'failed config')} keep their rows: the "
                f"{option_word('budget')} ({budget}) leaves room to run {len(retry)} of them again beside the rows that stay; raise "
                f"{option('budget')} for more"
            )
            reporter.note(self.retry_note)
        try:
            retried: dict[int, float | None] = {}
            if retry:  # the failed configs asked for again run first, counted against the budget
                retried, retry_model = measure(retry), self.model_name
                known.update(retried)
            trace = run_search(
                strategy,
                self.predict,
                measure,
                budget,
                self.seed,
                refit=self.refit if self.runner.measures_time else None,
                known=known,
                # the prediction in objective_value's units (ms, mJ, mJ*ms), the units `measure` answers in
                objective=lambda p: (
                    p.objective(self.plan.objective, self.plan.power_cap_w) * ROW_UNITS[self.plan.objective]
                ),
                comparable=lambda p: self.plan.objective == "time" or p.power_w is not None,
                spread=lambda p: p.spread(self.plan.objective),
                # ranked as plan_tuning ranks (in s, J, J*s): rank's near-tie buckets are not scale-free
                order=lambda values: rank(self.plan.records, values / ROW_UNITS[self.plan.objective]),
                out_of_time=lambda: (
                    bool(self.stalled) or (deadline is not None and time.monotonic() > deadline)
                ),
                distance=self.distance,
                alias=self.plan.alias,
                variant=self.plan.variant,
                # a listed tune.configs is measured whole: a guided search stopped when nothing was expected
                # to beat its best (38 of 60 listed configs measured, its note saying all were)
                stop=not self.plan.listed,
            )
            if retried:  # the rerun is this search's first round: its notes, rounds and the best's model
                again = [index for index in retry if index in retried]
                trace.measured[:0] = again
                trace.values[:0] = [retried[index] for index in again]
                trace.rounds[:] = [0] * len(again) + [r + 1 for r in trace.rounds]
                trace.models.insert(0, retry_model)
            if zero and (deadline is None or time.monotonic() < deadline):
                # no config was due (the budget spent by known ones, --retry-failed's rerun of a failed
                # candidate zero among them): candidate zero runs alone
                run([])
        finally:
            if zero_due:  # again, for a stop that cut short run()'s own release
                self.database.release([zero_key], quiet=True)
            self._put_back()
            reporter.stop()
        return trace, fresh

    def _put_back(self) -> None:
        """The failed rows --retry-failed deleted whose configs this tune stopped before running again (its
        first checks all timed out, a deadline, Ctrl-C), put back: they were gone, the tune said nothing of it,
        and the next tune checked those configs again (timeouts of up to 300 s each)."""
        for row in self.set_aside:
            if not self.database.count(**{column: row[column] for column in KEY_COLUMNS}):
                self.database.insert({k: v for k, v in row.items() if k != "id" and v is not None})
        self.set_aside = []

    def rows(self, trace: SearchTrace) -> list[dict[str, Any]]:
        """The rows of every config of this problem in the database that the search counted, best rank first.

        A row this tune wrote keeps the prediction it was measured with; another row (an earlier or another
        tune's, perhaps under another model) shows this tune's model's, which the table and the artifact name."""
        known = self.database.measured_configs(**self.key)
        rows = []
        for config_key, row in known.items():
            index = self.index_of.get(config_key)
            if index is None:
                continue
            predicted = row.get("predicted_ms") if config_key in self.inserted else None
            rows.append(
                {
                    **row,
                    "rank": self.rank_of[index] + 1,
                    "predicted_ms": predicted
                    if predicted is not None
                    else float(self.plan.predicted_s[index]) * 1e3,
                }
            )
        return sorted(rows, key=lambda r: r["rank"])


def row_key(
    runner: Runner, profile: DeviceProfile, problem: Problem, pytorch: bool = False
) -> dict[str, str]:
    """The identity columns of `problem`'s rows measured by `runner` for `profile`: a generated kernel's (its
    family's template version), or candidate zero's (`pytorch`: the PyTorch module's template version)."""
    family = family_for(problem)
    return {
        "runner": runner.name,
        "device": runner.device,
        "target": profile.key,
        "family": family.name,
        "family_version": baseline_version() if pytorch else family.version,
        "problem_key": problem.key(),
        "triton_version": software_versions()["triton"],
    }


def generated_candidate(
    problem: Problem,
    config: Config,
    predicted_ms: float | None = None,
    seed: int | None = None,
    **render: str,
) -> Candidate:
    """A generated kernel of `problem` with `config` as a runner's candidate (its source in kt's cache; `seed`:
    its check inputs', else the runner's)."""
    source = family_for(problem).render(problem, config, kt_version=software_versions()["kt"], **render)
    return Candidate(problem, config, str(write_source(source)), predicted_ms, source=source, seed=seed)


def pytorch_candidate(
    problem: Problem, checks: list[Problem] | None = None, seed: int | None = None, **render: str
) -> Candidate:
    """Candidate zero of `problem`: PyTorch's own path (kt.codegen.baseline) as a runner's candidate."""
    source = render_baseline(problem, kt_version=software_versions()["kt"], **render)
    path = str(write_source(source))
    config = PyTorchPath(baseline_impl(problem))
    return Candidate(problem, config, path, None, checks, source=source, seed=seed)


def measurement_row(
    result: Result, spec: OpSpec, runner: Runner, key: dict[str, str], family
) -> dict[str, Any]:
    candidate = result.candidate
    versions = software_versions()
    row = {
        **key,
        "config_key": candidate.config.key(),
        "op": spec.op,
        "spec_name": spec.name,
        "dtype": candidate.problem.dtype,
        "problem": candidate.problem.to_dict(),
        "config": candidate.config.to_dict(),
        "status": result.status,
        "message": result.message or None,
        "predicted_ms": candidate.predicted_ms,
        "wall_s": result.wall_s,
        "kt_version": versions["kt"],
        "torch_version": versions["torch"],
        "triton_version": versions["triton"],
        "cuda_version": versions["cuda"],
        "python_version": versions["python"],
    }
    if runner.name == "interpret":  # the reduced problems it checked (every other runner checks the full one)
        checks = candidate.checks or family.check_problems(candidate.problem, candidate.config)
        row["checked_problems"] = [p.to_dict() for p in checks]
    row.update({k: v for k, v in result.values.items() if k in COLUMN_NAMES and v is not None})
    return row


def _over_cap_note(
    plan: Plan, prediction: Prediction | None, best: Best, power_cap_w: float, notes: list[str]
) -> None:
    """Without a GPU the choice is the best ranked config that passed its check: one predicted over the power
    cap was chosen without a word (a GPU's tune refuses when every config drew more)."""
    if prediction is None or prediction.power_w is None or best.config is None:
        return
    try:
        chosen = float(prediction.power_w[plan.space.legal.index(best.config)])
    except ValueError:  # not a config of the space (none is): nothing to say
        return
    if chosen <= power_cap_w:
        return
    least = float(np.min(prediction.power_w))
    why = (
        f"{model_noun(plan.model)} predicts every config to draw more (the least: {least:.0f} W)"
        if least > power_cap_w
        else "none of the configs predicted under it passed its check"
    )
    notes.append(
        f"the {power_cap_w:g} W power cap could not be met: {why}, so the choice, predicted to draw "
        f"{chosen:.0f} W, is the best prediction as if there were no cap"
    )


def choose_best(
    plan: Plan,
    rows: list[dict[str, Any]],
    objective: str,
    runner: Runner,
    notes: list[str],
    power_cap_w: float | None = None,
    baseline: dict[str, Any] | None = None,
) -> Best:
    """The best generated config by the measured objective (on a GPU) or by the model's rank (without one). On
    a GPU, PyTorch's own path (`baseline`, candidate zero) is the best when no generated kernel beats it."""
    statuses = Counter(row["status"] for row in rows)
    if runner.measures_time:
        scored = [(objective_value(r, objective, power_cap_w), r) for r in rows]
        scored = [(v, r) for v, r in scored if v is not None]
        passing = [r for r in rows if objective_value(r, "time") is not None]
        readings = [r["power_w"] for r in passing if r.get("power_w") is not None]
        every_read = passing and len(readings) == len(passing)
        # PyTorch's path under the cap is the best where every generated config is over it, not an error
        under_cap = baseline is not None and objective_value(baseline, objective, power_cap_w) is not None
        over_cap = not scored and power_cap_w is not None and every_read and min(readings) > power_cap_w
        if over_cap and not under_cap:
            raise KtError(
                f"power_cap_w: every passing config drew more than {power_cap_w:g} W "
                f"(the least: {min(readings):.0f} W)"
            )
        if not scored and objective != "time" and not over_cap:  # (over the cap: readings, all too high)
            notes.append(f"no power readings, so the best is by time, not {objective}")
            objective = "time"
            scored = [(objective_value(r, objective, power_cap_w), r) for r in rows]
            scored = [(v, r) for v, r in scored if v is not None]
        elif objective != "time" and len(scored) < len(passing):
            unread = [r for r in passing if r.get("energy_mj") is None]
            if unread:  # an earlier run's runtime-only rows, or a counter that moved too little
                fastest = min(unread, key=lambda r: r["runtime_ms"])
                notes.append(
                    f"{len(unread)} of {len(passing)} passing configs have no energy reading and are not "
                    f"ranked by {objective} (the fastest of them: {fastest['config_key']}, "
                    f"{fastest['runtime_ms']:.4g} ms)"
                )
        theirs = (
            objective_value(baseline, objective, power_cap_w) if baseline else None
        )  # (by time, if so above)
        best_value, row = min(scored, key=lambda pair: pair[0]) if scored else (None, None)
        left_out = baseline_left_out(baseline, objective, power_cap_w)
        if left_out and scored:
            # it was left out of the choice without a word, and the summary said nothing generated was timed
            notes.append(f"PyTorch's own path ({baseline_impl(plan.problem)}) was not compared: {left_out}")
        if theirs is not None and (best_value is None or theirs <= best_value):
            impl = baseline_impl(plan.problem)
            if over_cap:
                notes.append(
                    f"every passing generated config drew more than {power_cap_w:g} W (the least: "
                    f"{min(readings):.0f} W) and PyTorch's own path ({impl}) did not: the artifact's kernel.py "
                    "calls PyTorch"
                )
            elif rows and not passing:  # none ran correctly: none had a time to beat PyTorch's with
                listing = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()) if s != "ok")
                notes.append(
                    f"none of the {len(rows)} generated configs passed ({listing}): the artifact's kernel.py "
                    f"calls PyTorch's own path ({impl})"
                )
            elif (
                rows
            ):  # with none (a deadline passed first), tune's note says so: nothing had a chance to beat it
                notes.append(
                    f"no generated kernel beat PyTorch's own path ({impl}) on the measured {objective}: "
                    "the artifact's kernel.py calls PyTorch"
                )
            generated = config_from_dict(plan.problem.family, row["config"]) if row else None
            return Best(
                generated,
                True,
                baseline["runtime_ms"],
                baseline.get("power_w"),
                baseline.get("energy_mj"),
                None,
                baseline,
                pytorch=True,
                objective=objective,
            )
        if scored:
            return Best(
                config_from_dict(plan.problem.family, row["config"]),
                True,
                row["runtime_ms"],
                row.get("power_w"),
                row.get("energy_mj"),
                row["predicted_ms"],
                row,
                objective=objective,
            )
    else:
        passing = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["rank"])
        if passing:
            row = passing[0]
            return Best(
                config_from_dict(plan.problem.family, row["config"]),
                False,
                predicted_ms=row["predicted_ms"],
                row=row,
            )
    summary = ", ".join(f"{n} {s}" for s, n in statuses.most_common()) or "nothing measured"
    failed = next((r for r in rows if r["status"] != "ok"), None)
    example = (
        f"; e.g. {failed['config_key']}: {failed['message']}" if failed and failed.get("message") else ""
    )
    retry = sum(statuses[s] for s in RETRYABLE)
    hint = (
        f"; {retry} of them timed out or crashed, which can be transient (a short --timeout, a busy machine): "
        "`kt tune --retry-failed` runs those again"
        if retry
        else ""
    )
    if statuses["timeout"] and all(r.get("runner") == "interpret" for r in rows if r["status"] == "timeout"):
        # not transient: a butterfly over 2**20 features timed out at the default 300 s on a 2-core machine
        # every time (2**16: 50-57 s a check), and "a busy machine" sent the user to retry for nothing
        hint += (
            "; the timeouts ran in Triton's interpreter, on this machine's CPU, which checks a structured op at "
            "its full width (only its rows are cut), minutes a check for a large one, and a tune stops once its "
            "first checks (one per worker) all time out there: give a longer --timeout, or tune on a GPU"
        )
    raise KtError(f"none of the {len(rows)} candidates passed ({summary}){example}{hint}")
