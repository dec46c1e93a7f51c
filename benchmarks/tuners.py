"""External baseline optimizers replayed on a fully measured search space, for comparing kt's own search with
the strategies other auto-tuners ship.

Each optimizer searches a `kt.autotune.spaces.TuningSpace` (every valid point measured on a real GPU, such as the
brute-forced Kernel Tuner caches of `../shared/data/kerneltuner`) with an exact budget of evaluations; a
"measurement" is read from the space. The accounting is the same for every optimizer, and it is Kernel Tuner's:

- an evaluation is the first visit of a distinct valid point of the space; a point that failed on the GPU (NaN in
  `space.objective`) still costs one, and comes back as None;
- a combination of values that is not a valid point costs nothing (Kernel Tuner never runs it either), and
  neither does a revisit of a point already evaluated;
- no optimizer gets more than `budget` evaluations; one that stops earlier by its own rules reports what it did,
  with nothing padded.

Optimizers (`EXTERNAL`, the ones whose package is installed; `available()`, the ones that import):

- `kerneltuner:<strategy>`: Kernel Tuner's own strategies in its simulation mode, given a Kernel Tuner cache
  written from the space and, as restriction, membership in the space (the valid set is the cache's keys, failed
  points included: Kernel Tuner's `tune_cache` would drop the failed ones from the space, which would make them
  free). Its strategies draw from Python's and NumPy's global generators, seeded before each run (and restored
  after); `bayes_opt` also draws its Latin hypercube from a fresh unseeded NumPy generator, which is handed a
  seeded one here, so that every run is reproducible from its seed.
- `optuna:tpe`: Optuna's TPE sampler over the parameters that vary, one categorical per parameter. An invalid
  combination is told as pruned (TPE counts pruned trials among the bad ones, so it learns to leave the invalid
  region), a point that failed on the GPU as failed, a revisit with its known outcome again.
- `smac:rf`: SMAC3's hyperparameter-optimization facade (random forest, log-scaled costs, Sobol initial design)
  driven through ask and tell, with `n_trials` set to the budget (which sizes its initial design as for a run of
  that many evaluations; the asks go on past it while invalid points are skipped). Invalid and failed points are
  told as crashes with a finite crash cost (SMAC's default, infinity, would make its log-scaled cost encoding
  divide by infinity).

Optuna and SMAC choose, for each parameter that varies, among the values it takes at some valid point (numbers
in rising order); Kernel Tuner is given every parameter with all its values, as in its cache.

The time each returns is the whole wall time of the run: nothing is measured, so all of it is the optimizer's
own overhead (for Kernel Tuner, this includes building its search space and reading the cache from a temporary
file; writing that file is not counted).

Kernel Tuner strategies that stop before the budget by their own rules (with their default options): simulated
annealing (its schedule counts revisits: 674 of 898 evaluations on gemm_RTX_3090), dual annealing (scipy's
`maxfun` counts every call, revisits and invalid points included: 198 of 898, 16 of 100), and the genetic
algorithm (90 generations: 420 of 898; `options={"maxiter": 10_000}` lets it spend the budget).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import math
import random
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any
from unittest import mock

import numpy as np

from kt.autotune.spaces import TuningSpace

KERNEL_TUNER_STRATEGIES = (
    "genetic_algorithm",
    "simulated_annealing",
    "dual_annealing",
    "mls",
    "greedy_ils",
    "bayes_opt",
)
ALL_EXTERNAL = (*(f"kerneltuner:{s}" for s in KERNEL_TUNER_STRATEGIES), "optuna:tpe", "smac:rf")

# The package each optimizer family needs (the module name that is imported).
_PACKAGES = {"kerneltuner": "kernel_tuner", "optuna": "optuna", "smac": "smac"}

# Optuna: give up after this many asks per evaluation of the budget (invalid and repeated points cost no
# evaluation, so a sampler stuck on them would otherwise never stop).
ASKS_PER_EVALUATION = 200

# SMAC: the cost told for an invalid or failed point. Finite, far above any runtime in ms (the log-scaled
# encoding then keeps the valid costs' ratios and sets the crashes apart).
SMAC_CRASH_COST = 1e9

# Kernel Tuner's tuning specifics of the spaces in ../shared/data/kerneltuner (its README), by Kernel Tuner
# `kernel_name`: what a real tuning run of each kernel passes to `tune_kernel`. In simulation mode only the
# problem size has to match the cache; the restrictions give exactly the cache's keys (tests check that), but a
# run restricts to membership in the space instead, which holds for any cache.
KERNEL_TUNER_KERNELS: dict[str, dict[str, Any]] = {
    "Xgemm": {  # CLBlast's GEMM
        "restrictions": [
            "KWG % KWI == 0",
            "MWG % (MDIMC * VWM) == 0",
            "NWG % (NDIMC * VWN) == 0",
            "MWG % (MDIMA * VWM) == 0",
            "NWG % (NDIMB * VWN) == 0",
            "KWG % ((MDIMC * NDIMC)/MDIMA) == 0",
            "KWG % ((MDIMC * NDIMC)/NDIMB) == 0",
        ],
        "block_size_names": ["MDIMC", "NDIMC", "block_size_z"],
        "grid_div_x": ["MWG"],
        "grid_div_y": ["NWG"],
        "problem_size": (4096, 4096),
    },
    "convolution_kernel": {  # 2-D convolution, 15 x 15 filter
        "restrictions": [
            "use_padding==0 or block_size_x % 32 != 0",
            "block_size_x*block_size_y<=1024",
            "use_padding==0 or use_shmem != 0",
            "use_shmem == 0 or (((block_size_x*tile_size_x+(filter_width-1)))"
            "*((block_size_y*tile_size_y+(filter_height-1)))) < 12*1024",
        ],
        "block_size_names": ["block_size_x", "block_size_y"],
        "grid_div_x": ["block_size_x", "tile_size_x"],
        "grid_div_y": ["block_size_y", "tile_size_y"],
        "problem_size": (4096, 4096),
    },
}


class ExternalError(RuntimeError):
    """An external optimizer that cannot run here, or a run that broke the accounting."""


@dataclass
class ExternalTrace:
    """One run: the evaluated points (indices into `space.points`, in evaluation order, each once), their
    measured values (None: failed on the GPU) and the run's wall time in seconds."""

    points: list[int]
    values: list[float | None]
    seconds: float


EXTERNAL = tuple(name for name in ALL_EXTERNAL if importlib.util.find_spec(_PACKAGES[name.split(":")[0]]))


@functools.cache
def _import_error(family: str) -> str | None:
    try:
        importlib.import_module(_PACKAGES[family])
    except Exception as error:  # a broken install fails with anything, not only ImportError
        return f"{type(error).__name__}: {error}"
    return None


def available() -> tuple[str, ...]:
    """The optimizers whose package imports here (`EXTERNAL` only checks that it is installed)."""
    return tuple(name for name in EXTERNAL if _import_error(name.split(":")[0]) is None)


def run_external(
    space: TuningSpace, name: str, budget: int, seed: int, *, options: dict[str, Any] | None = None
) -> tuple[list[float | None], float]:
    """Evaluate up to `budget` distinct valid points of `space` with optimizer `name`; return the measured values
    in evaluation order (None for a point that failed on the GPU: it still counts as an evaluation) and the
    optimizer's own decision time in seconds (the whole wall time: nothing is really measured).

    `options`: extra `strategy_options` for a Kernel Tuner strategy (its defaults otherwise), e.g.
    `{"maxiter": 10_000}` for a genetic algorithm that stops on the budget instead of after 90 generations."""
    trace = trace_external(space, name, budget, seed, options=options)
    return trace.values, trace.seconds


def trace_external(
    space: TuningSpace, name: str, budget: int, seed: int, *, options: dict[str, Any] | None = None
) -> ExternalTrace:
    """`run_external`, with the evaluated points too."""
    family, _, method = name.partition(":")
    if name not in ALL_EXTERNAL:
        raise ValueError(f"unknown external optimizer {name!r}; known: {', '.join(ALL_EXTERNAL)}")
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ValueError(f"budget must be a positive number of evaluations, got {budget!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if options and family != "kerneltuner":
        raise ValueError(f"options are Kernel Tuner strategy options; {name} takes none")
    if options and "max_fevals" in options:
        raise ValueError("the budget sets max_fevals")
    problem = _import_error(family)
    if problem is not None:
        raise ExternalError(
            f"{name} needs the Python package {_PACKAGES[family]!r}, which does not import: {problem}"
        )
    budget, seed = min(int(budget), len(space)), int(seed)
    if family == "kerneltuner":
        points, seconds = _run_kernel_tuner(space, method, budget, seed, options or {})
    elif family == "optuna":
        points, seconds = _run_optuna(space, budget, seed)
    else:
        points, seconds = _run_smac(space, budget, seed)
    if len(points) > budget or len(set(points)) != len(points):
        raise ExternalError(
            f"{name}: {len(points)} evaluations ({len(set(points))} distinct) for budget {budget}"
        )
    return ExternalTrace(points, [_value(space, i) for i in points], seconds)


def _value(space: TuningSpace, index: int) -> float | None:
    value = float(space.objective[index])
    return value if math.isfinite(value) else None


def _point_index(space: TuningSpace) -> dict[tuple[Any, ...], int]:
    return {point: i for i, point in enumerate(space.points)}


# -- Kernel Tuner ------------------------------------------------------------------------------------------------


def kernel_tuner_restriction(space: TuningSpace):
    """Kernel Tuner's restriction for `space`: a configuration (a dict of every parameter) is valid exactly when
    it is a point of the space, failed ones included."""
    index = _point_index(space)
    keys = list(space.params)

    def in_space(config: dict[str, Any]) -> bool:
        return tuple(config[k] for k in keys) in index

    return in_space


def kernel_tuner_space_size(space: TuningSpace, restrictions=None) -> int:
    """How many configurations Kernel Tuner's search space holds under `restrictions` (default: membership in
    `space`), built as `tune_kernel` builds it in simulation mode; raises if they are not the space's points."""
    from kernel_tuner.searchspace import Searchspace

    if restrictions is None:
        restrictions = kernel_tuner_restriction(space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the simulation runner's thread limit (no device limits a simulated block)
        searchspace = Searchspace(space.params, restrictions, 1_000_000_000)
    if set(searchspace.list) != set(space.points):
        raise ExternalError(
            f"{space.name}: Kernel Tuner's search space ({searchspace.size} configurations) is not the space's "
            f"{len(space)} points"
        )
    return searchspace.size


_checked: set[tuple[Any, ...]] = set()


def _check_kernel_tuner_space(space: TuningSpace) -> None:
    """`kernel_tuner_space_size` once per space and process (about 0.3 s for the 82,944 GEMM combinations)."""
    key = (space.name, space.source, tuple(space.params), hash(tuple(space.points)))
    if key not in _checked:
        kernel_tuner_space_size(space)
        _checked.add(key)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {value!r} to a Kernel Tuner cache")


def write_kernel_tuner_cache(
    space: TuningSpace, path: Path, kernel_name: str, problem_size: list[int]
) -> None:
    """`space` as a Kernel Tuner cache file: its parameters and, per point, the measured `time` (the string
    `RuntimeFailedConfig` where the point failed, which Kernel Tuner reads as a failed configuration). The
    source file's other fields (the 32 runs, compile times) are left out: simulation mode reads none of them
    unless given a time limit, and without them the file reads several times faster."""
    keys = list(space.params)
    cache = {}
    for point, value in zip(space.points, space.objective):
        record: dict[str, Any] = dict(zip(keys, point))
        record["time"] = float(value) if math.isfinite(value) else "RuntimeFailedConfig"
        cache[",".join(str(v) for v in point)] = record
    data = {
        "device_name": space.device,
        "kernel_name": kernel_name,
        "problem_size": problem_size,
        "tune_params_keys": keys,
        "tune_params": space.params,
        "objective": "time",
        "cache": cache,
    }
    path.write_text(json.dumps(data, default=_json_value))


@contextlib.contextmanager
def _seeded_globals(seed: int) -> Iterator[None]:
    """Python's and NumPy's global generators seeded for the run, and restored after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def _seeded_latin_hypercube(seed: int) -> Iterator[None]:
    """Kernel Tuner's bayes_opt draws its initial Latin hypercube from `scipy.stats.qmc.LatinHypercube(d=...)`,
    which without a generator seeds itself from the OS: give it one seeded from `seed` (same sampler)."""
    import inspect

    from kernel_tuner.strategies import bayes_opt
    from scipy.stats.qmc import LatinHypercube

    keyword = "rng" if "rng" in inspect.signature(LatinHypercube).parameters else "seed"
    seeded = functools.partial(LatinHypercube, **{keyword: np.random.default_rng(seed)})
    with mock.patch.object(bayes_opt, "LatinHypercube", seeded):
        yield


def _run_kernel_tuner(
    space: TuningSpace, strategy: str, budget: int, seed: int, options: dict[str, Any]
) -> tuple[list[int], float]:
    import kernel_tuner

    # The strategy's module is imported before the generators are seeded: imported for the first time inside a
    # seeded run, bayes_opt picked differently in a process's first run than in every later run of that seed.
    importlib.import_module(f"kernel_tuner.strategies.{strategy}")
    kernel_name = str(space.meta.get("kernel_name") or space.name)
    spec = KERNEL_TUNER_KERNELS.get(kernel_name, {})
    size = space.meta.get("problem_size", spec.get("problem_size", [1]))
    problem_size = list(size) if isinstance(size, list | tuple) else [size]
    _check_kernel_tuner_space(space)
    index = _point_index(space)
    keys = list(space.params)
    specifics = {
        name: spec[name] for name in ("block_size_names", "grid_div_x", "grid_div_y") if name in spec
    }
    with tempfile.TemporaryDirectory(prefix="kt-kerneltuner-") as folder:
        cache = Path(folder) / f"{space.name}.json"
        write_kernel_tuner_cache(space, cache, kernel_name, problem_size)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_seeded_globals(seed))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            if strategy == "bayes_opt":
                stack.enter_context(_seeded_latin_hypercube(seed))
            start = perf_counter()
            results, _ = kernel_tuner.tune_kernel(
                kernel_name,
                "",  # simulation mode compiles nothing (Kernel Tuner's own tune_cache passes "")
                tuple(problem_size),
                [],
                space.params,
                restrictions=kernel_tuner_restriction(space),
                cache=str(cache),
                simulation_mode=True,
                strategy=strategy,
                strategy_options={**options, "max_fevals": budget},
                quiet=True,
                verbose=False,
                **specifics,
            )
            seconds = perf_counter() - start
    # Kernel Tuner's results list every configuration the strategy had run, revisits included (served from its
    # cache, at no cost to its budget); failed ones carry an error instead of a time.
    points, seen = [], set()
    for result in results:
        i = index.get(tuple(result[k] for k in keys))
        if i is None:
            raise ExternalError(
                f"kerneltuner:{strategy} returned a configuration outside the space: {result}"
            )
        if i not in seen:
            seen.add(i)
            points.append(i)
    return points[:budget], seconds


# -- Optuna and SMAC: a categorical search over the parameters that vary -------------------------------------------


class _Encoding:
    """The parameters that vary among the valid points, each with the values it takes there (numbers in rising
    order, others in the file's), and the way back from one choice per parameter to a point of the space."""

    def __init__(self, space: TuningSpace):
        self.index = _point_index(space)
        self.fixed: dict[int, Any] = {}
        self.varying: list[tuple[int, str, list[Any]]] = []
        for j, name in enumerate(space.params):
            present = {_key(p[j]) for p in space.points}
            values = [v for v in _unique(space.params[name]) if _key(v) in present]
            if len(values) == 1:
                self.fixed[j] = values[0]
            else:
                if all(_numeric(v) for v in values):
                    values.sort()
                self.varying.append((j, name, values))
        self.width = len(space.params)

    def numeric(self, name: str) -> bool:
        return all(_numeric(v) for j, n, values in self.varying if n == name for v in values)

    def lookup(self, choices: dict[str, int]) -> int | None:
        """The index of the point that `choices` (the position of each varying parameter's value) make, or None
        where that combination is not a valid point."""
        point: list[Any] = [None] * self.width
        for j, value in self.fixed.items():
            point[j] = value
        for j, name, values in self.varying:
            point[j] = values[int(choices[name])]
        return self.index.get(tuple(point))


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _key(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _unique(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        if _key(v) not in seen:
            seen.add(_key(v))
            out.append(v)
    return out


def _run_optuna(space: TuningSpace, budget: int, seed: int) -> tuple[list[int], float]:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    encoding = _Encoding(space)
    distributions = {name: CategoricalDistribution(list(range(len(v)))) for _, name, v in encoding.varying}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    points: list[int] = []
    seen: set[int] = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = perf_counter()
            study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
            for _ in range(ASKS_PER_EVALUATION * budget):
                if len(points) >= budget:
                    break
                trial = study.ask(distributions)
                i = encoding.lookup(trial.params)
                if i is None:  # not a point of the space: no evaluation, a bad trial for TPE
                    study.tell(trial, state=TrialState.PRUNED)
                    continue
                value = space.objective[i]
                if math.isfinite(value):
                    study.tell(trial, float(value))
                else:  # failed on the GPU
                    study.tell(trial, state=TrialState.FAIL)
                if i not in seen:
                    seen.add(i)
                    points.append(i)
            seconds = perf_counter() - start
    finally:
        optuna.logging.set_verbosity(verbosity)
    return points, seconds


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_smac(space: TuningSpace, budget: int, seed: int) -> tuple[list[int], float]:
    import joblib
    from ConfigSpace import CategoricalHyperparameter, ConfigurationSpace, OrdinalHyperparameter
    from smac import HyperparameterOptimizationFacade, Scenario
    from smac.main.exceptions import ConfigurationSpaceExhaustedException
    from smac.runhistory.dataclasses import TrialValue
    from smac.runhistory.enumerations import StatusType

    encoding = _Encoding(space)
    if not encoding.varying:
        raise ExternalError(f"smac:rf: {space.name} has a single point, nothing to search")
    points: list[int] = []
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kt-smac-"))
        stack.enter_context(_quiet_logger("smac"))
        # SMAC's forest predicts with joblib threads on every core (n_jobs=-1); for its 10 small trees the
        # threads cost more than they save (25 evaluations of convolution_A100 on 2 cores: 9.5 s threaded,
        # 5.4 s sequential), and the trees are the same either way, so the run's decisions are too.
        stack.enter_context(joblib.parallel_config(backend="sequential"))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        start = perf_counter()
        configspace = ConfigurationSpace(seed=seed)
        for _, name, values in encoding.varying:
            positions = list(range(len(values)))
            if encoding.numeric(name):  # ordered: the forest splits on the position
                configspace.add(OrdinalHyperparameter(name, sequence=positions))
            else:
                configspace.add(CategoricalHyperparameter(name, choices=positions))
        scenario = Scenario(
            configspace,
            deterministic=True,
            n_trials=budget,
            seed=seed,
            crash_cost=SMAC_CRASH_COST,
            output_directory=Path(folder) / "smac",
        )
        smac = HyperparameterOptimizationFacade(scenario, None, logging_level=False, overwrite=True)
        crashed = TrialValue(cost=SMAC_CRASH_COST, status=StatusType.CRASHED)
        for _ in range(ASKS_PER_EVALUATION * budget):
            if len(points) >= budget:
                break
            try:
                info = smac.ask()
            except (StopIteration, ConfigurationSpaceExhaustedException):  # nothing new found to propose
                break
            i = encoding.lookup(dict(info.config))
            if i is None:  # not a point of the space: no evaluation
                smac.tell(info, crashed, save=False)
                continue
            value = space.objective[i]
            smac.tell(info, TrialValue(cost=float(value)) if math.isfinite(value) else crashed, save=False)
            if i not in seen:
                seen.add(i)
                points.append(i)
        seconds = perf_counter() - start
    return points, seconds
