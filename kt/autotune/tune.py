"""The tune loop: plan (legal space, model ranking, search strategy), measure what is new, pick the best.

Every finished measurement is committed to the database as it arrives, so a tune that is killed loses only
the candidates in flight, and running it again measures only what is missing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kt.autotune.database import COLUMN_NAMES, Database
from kt.autotune.progress import TuneProgress
from kt.autotune.runners import Candidate, Result, Runner, make_runner
from kt.autotune.search import STRATEGIES, SearchStrategy
from kt.autotune.versions import software_versions
from kt.codegen import GemmConfig, SearchSpace, family_for, write_source
from kt.costmodel import AnalyticModel, rank
from kt.device import DeviceProfile
from kt.errors import KtError
from kt.ir.problems import GemmProblem
from kt.spec import OBJECTIVES, OpSpec


@dataclass
class Plan:
    """What a tune would do: the legal space, the model's predictions and ranking, the configs to measure."""

    problem: GemmProblem
    space: SearchSpace
    records: list[dict[str, Any]]
    predicted_s: np.ndarray
    ranked: list[int]  # indices into space.legal, best predicted first
    chosen: list[int]  # indices to measure, in order
    model: str

    def config(self, index: int) -> GemmConfig:
        return self.space.legal[index]


def plan_tuning(
    problem: GemmProblem,
    profile: DeviceProfile,
    budget: int,
    strategy: str | SearchStrategy = "ranked",
    seed: int = 0,
) -> Plan:
    family = family_for(problem)
    space = family.space(problem, profile)
    if not space.legal:
        raise KtError(
            f"no config of the {family.name} family can run {problem} on {profile.name}: "
            f"{', '.join(f'{n} {r}' for r, n in space.dropped.items())}"
        )
    records = [{**problem.to_record(), **config.to_dict()} for config in space.legal]
    model = AnalyticModel(profile)
    predicted = model.predict(records)
    ranked = [int(i) for i in rank(records, predicted)]
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise KtError(f"strategy: {strategy!r} is not supported; allowed: {', '.join(STRATEGIES)}")
        strategy = STRATEGIES[strategy]()
    chosen = strategy.select(ranked, budget, seed)
    return Plan(problem, space, records, predicted, ranked, chosen, model.name)


@dataclass
class Best:
    config: GemmConfig
    measured: bool
    runtime_ms: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    predicted_ms: float | None = None
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuneResult:
    spec: OpSpec
    problem: GemmProblem
    target: DeviceProfile
    runner: str  # cuda | interpret
    ran_on: str  # the GPU's name or the interpreter
    objective: str
    plan: Plan
    rows: list[dict[str, Any]]  # one per chosen config, in plan order, each with its rank
    best: Best
    newly_measured: int
    wall_s: float
    db_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.best.measured

    def statuses(self) -> Counter:
        return Counter(row["status"] for row in self.rows)

    def table(self, top: int = 10) -> list[dict[str, Any]]:
        """The best rows: by the objective when measured, else by the model's rank (passing rows first)."""
        if self.measured:
            ok = [r for r in self.rows if objective_value(r, self.objective) is not None]
            return sorted(ok, key=lambda r: objective_value(r, self.objective))[:top]
        return sorted(self.rows, key=lambda r: (r["status"] != "ok", r["rank"]))[:top]

    def save(self, path: str | Path) -> Path:
        from kt.autotune.artifact import save_artifact

        return save_artifact(self, path)


def objective_value(row: dict[str, Any], objective: str) -> float | None:
    """The number to minimise for `objective`, or None when the row lacks it (failed, or no power reading)."""
    if row.get("status") != "ok" or row.get("runtime_ms") is None:
        return None
    if objective == "time":
        return row["runtime_ms"]
    if row.get("energy_mj") is None:
        return None
    return row["energy_mj"] if objective == "energy" else row["energy_mj"] * row["runtime_ms"]


def tune(
    spec: OpSpec, *, budget: int | None = None, objective: str | None = None, **options: Any
) -> TuneResult:
    """Tune `spec`'s kernel: measure up to `budget` configs chosen by the cost model, return the best.

    `options` go to `run_session` (backend, db, device, workers, strategy, seed, progress, timeout_s).
    """
    started = time.monotonic()
    objective = objective or spec.tune.objective
    if objective not in OBJECTIVES:
        raise KtError(f"objective: {objective!r} is not supported; allowed: {', '.join(OBJECTIVES)}")
    session = run_session(spec, budget=budget or spec.tune.budget, **options)
    plan, runner, profile = session.plan, session.runner, session.profile
    notes = []
    if not runner.measures_time:
        compiled = (
            f"compiled for sm_{profile.compute_capability}"
            if runner.compile_target
            else "not compiled for the GPU (Triton's ptxas is not installed)"
        )
        notes.append(
            f"no GPU here: candidates were checked in Triton's interpreter on reduced problems and "
            f"{compiled}; nothing was timed, and the choice is the {plan.model} model's best prediction "
            f"for {profile.name} among those that passed"
        )
    elif objective != "time":
        notes.append(
            f"the {plan.model} model predicts time only: candidates were chosen by predicted time "
            f"and the best by measured {objective}"
        )
    best = choose_best(plan, session.rows, objective, runner, notes)
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
    )


@dataclass
class Session:
    """One pass of plan-and-measure: what `kt tune` and `kt collect` share."""

    plan: Plan
    runner: Runner
    profile: DeviceProfile
    rows: list[dict[str, Any]]
    fresh: int
    db_path: Path


def run_session(
    spec: OpSpec,
    *,
    budget: int,
    backend: str = "auto",
    db: str | Path | None = None,
    device: str | None = None,
    workers: int | None = None,
    strategy: str | SearchStrategy = "ranked",
    seed: int | None = None,
    progress: bool = True,
    timeout_s: float = 300.0,
    retry_failed: bool = False,
) -> Session:
    """Plan, then measure what the database lacks. `retry_failed` measures again configs whose earlier
    attempt timed out or crashed (both can be transient: a short timeout, a busy machine)."""
    from kt.api import resolve_profile  # the API owns turning specs into profiles
    from kt.ir import op_from_spec

    seed = spec.tune.seed if seed is None else seed
    (node,) = op_from_spec(spec).kernel_graph().kernels  # dense lowers to one kernel
    profile = resolve_profile(device or spec.device)
    runner = make_runner(backend, profile, workers=workers, seed=seed, timeout_s=timeout_s)
    plan = plan_tuning(node.problem, profile, budget, strategy, seed)
    with Database(db) as database:
        rows, fresh = measure_plan(plan, spec, runner, profile, database, progress, retry_failed)
        return Session(plan, runner, profile, rows, fresh, database.path)


RETRYABLE = ("timeout", "crash")


def measure_plan(
    plan: Plan,
    spec: OpSpec,
    runner: Runner,
    profile: DeviceProfile,
    database: Database,
    progress: bool,
    retry_failed: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Measure the plan's chosen configs not yet in the database; return the rows of all of them."""
    problem, family = plan.problem, family_for(plan.problem)
    key = {
        "runner": runner.name,
        "device": runner.device,
        "target": profile.key,
        "family": family.name,
        "family_version": family.version,
        "problem_key": problem.key(),
        "triton_version": software_versions()["triton"],
    }
    known = database.measured_configs(**key)
    if retry_failed:
        chosen_keys = {plan.config(index).key() for index in plan.chosen}
        stale = {k for k, row in known.items() if k in chosen_keys and row["status"] in RETRYABLE}
        database.delete([known.pop(k)["id"] for k in stale])
    todo = []
    for index in plan.chosen:
        config = plan.config(index)
        if config.key() not in known:
            source = family.render(
                problem, config, name=spec.name, device=profile.name, kt_version=software_versions()["kt"]
            )
            todo.append(
                Candidate(problem, config, str(write_source(source)), float(plan.predicted_s[index]) * 1e3)
            )
    reporter = TuneProgress(progress, runner.measures_time)
    verb = "measuring" if runner.measures_time else "checking"
    reporter.start(
        len(plan.chosen),
        len(plan.chosen) - len(todo),
        f"{runner.name} on {runner.device}",
        summary=f"target {profile.name} · space: {plan.space.total} configs, {len(plan.space.legal)} "
        f"legal · {verb} {len(plan.chosen)} chosen by the {plan.model} model",
    )
    fresh = 0
    try:
        for result in runner.run(todo):
            if database.insert(measurement_row(result, spec, runner, key, family)):
                fresh += 1
            reporter.advance(result)
    finally:
        reporter.stop()
    known = database.measured_configs(**key)
    rows = []
    rank_of = {index: position for position, index in enumerate(plan.ranked)}
    for index in plan.chosen:
        row = known.get(plan.config(index).key())
        if row is not None:
            rows.append(
                {**row, "rank": rank_of[index] + 1, "predicted_ms": float(plan.predicted_s[index]) * 1e3}
            )
    return rows, fresh


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
    if not runner.measures_time:
        row["checked_problems"] = [
            p.to_dict() for p in family.check_problems(candidate.problem, candidate.config)
        ]
    row.update({k: v for k, v in result.values.items() if k in COLUMN_NAMES and v is not None})
    return row


def choose_best(
    plan: Plan, rows: list[dict[str, Any]], objective: str, runner: Runner, notes: list[str]
) -> Best:
    statuses = Counter(row["status"] for row in rows)
    if runner.measures_time:
        scored = [(objective_value(r, objective), r) for r in rows]
        scored = [(v, r) for v, r in scored if v is not None]
        if not scored and objective != "time":
            notes.append(f"no power readings, so the best is by time, not {objective}")
            scored = [(objective_value(r, "time"), r) for r in rows if objective_value(r, "time") is not None]
        if scored:
            _, row = min(scored, key=lambda pair: pair[0])
            return Best(
                GemmConfig.from_dict(row["config"]),
                True,
                row["runtime_ms"],
                row.get("power_w"),
                row.get("energy_mj"),
                row["predicted_ms"],
                row,
            )
    else:
        passing = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["rank"])
        if passing:
            row = passing[0]
            return Best(GemmConfig.from_dict(row["config"]), False, predicted_ms=row["predicted_ms"], row=row)
    summary = ", ".join(f"{n} {s}" for s, n in statuses.most_common()) or "nothing measured"
    failed = next((r for r in rows if r["status"] != "ok"), None)
    example = (
        f"; e.g. {failed['config_key']}: {failed['message']}" if failed and failed.get("message") else ""
    )
    raise KtError(f"none of the {len(rows)} candidates passed ({summary}){example}")
