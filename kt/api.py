"""kt's public Python API; `kt/__init__.py` re-exports it. The CLI calls it, or the module underneath where a
command must refuse bad input before torch loads."""

from __future__ import annotations

import functools
import logging
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kt.autotune.artifact import load_artifact
from kt.autotune.database import BASELINE_KEY
from kt.autotune.tune import Plan, Session, TuneResult, plan_tuning, run_session, tuning_space
from kt.autotune.tune import tune as _tune
from kt.autotune.versions import software_versions
from kt.codegen import Config, SearchSpace, family_for, load_source
from kt.codegen.baseline import baseline_kernel
from kt.codegen.restrict import illegal_config, restrict
from kt.device import BUILTIN, DEFAULT, DeviceProfile, ProfileError, get_profile, guess_gpu, match_gpu
from kt.errors import DeviceError, KtError, SpecError, counted, one_line, option, renamed_options
from kt.files import ranking_model
from kt.ir import op_from_spec
from kt.kernel import Kernel
from kt.spec import (
    MAX_BUDGET,
    OBJECTIVES,
    PARSED,
    OpSpec,
    check_bool,
    check_int,
    check_seed,
    load_spec,
    load_specs,
    parse_spec,
    power_cap,
)

if TYPE_CHECKING:
    from kt.autotune.inspection import InspectResult
    from kt.costmodel.evaluate import Report
    from kt.costmodel.forest import ForestModel

SpecLike = OpSpec | Mapping | str | os.PathLike


def as_spec(spec: SpecLike) -> OpSpec:
    """An OpSpec from an OpSpec, a mapping shaped like op.yaml, or the path of an op.yaml."""
    if isinstance(spec, OpSpec):
        if spec.__dict__.get(PARSED):
            return spec
        # one made otherwise (dataclasses.replace, OpSpec(...)) is checked as a file's is: m=-4 built a kernel,
        # float64 was a KeyError deep in kt
        return parse_spec(spec.to_dict(), source=spec.source)
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    raise SpecError(
        "spec", f"expected an OpSpec, a mapping or a path to an op.yaml, got {type(spec).__name__}"
    )


def resolve_profile(name: str | None = "auto") -> DeviceProfile:
    """The device profile for `name`: auto picks the GPU present (or the default, h100, with none). The GPU is
    identified through NVML (kt.autotune.gpuinfo), so this process takes no CUDA context of its own."""
    if name is None or (isinstance(name, str) and name.lower() == "auto"):  # as op.yaml's `device: AUTO`
        if not torch.cuda.is_available():
            return get_profile(DEFAULT)
        from kt.autotune.gpuinfo import visible_gpu

        gpu = visible_gpu().name
        profile = gpu_profile(gpu)
        if profile is None:
            slice_ = (
                " (a MIG slice: a share of the board's SMs and bandwidth)" if " MIG " in f" {gpu} " else ""
            )
            raise DeviceError(
                f"device: no built-in profile for {gpu!r}{slice_}; run `kt calibrate --out gpu.json` and "
                f"pass --device gpu.json (or name one of {', '.join(BUILTIN)})"
            )
        return profile
    try:
        return get_profile(name)
    except ProfileError as exc:
        # auto too, which this takes and get_profile does not: `--device h900` listed every name but auto,
        # where op.yaml's `device: h900` lists it
        raise DeviceError(f"device: {str(exc).replace('allowed: ', 'allowed: auto, ', 1)}") from None


def gpu_profile(gpu: str) -> DeviceProfile | None:
    """The built-in profile of the GPU the driver names `gpu`, or the nearest for another H100/H200 variant
    (said once, as a warning), or None for a card kt has no profile of."""
    profile = match_gpu(gpu)
    if profile is None and (profile := guess_gpu(gpu)) is not None:
        _warn_once(
            f"no built-in profile for {gpu!r}: using {profile.name}'s datasheet as a guess (limits and "
            f"peaks may differ); `kt calibrate --out gpu.json` measures this card"
        )
    return profile


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger("kt").warning(message)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _budget(budget: Any) -> int | None:
    if budget is None:
        return None
    return check_int(budget, "budget", 1, MAX_BUDGET)  # op.yaml's tune.budget's range


def plan(
    spec: SpecLike,
    budget: int | None = None,
    device: str | None = None,
    strategy: str = "guided",
    seed: int | None = None,
    model: str | os.PathLike | None = None,
    objective: str | None = None,
    power_cap_w: float | None = None,
    measures_time: bool | None = None,
) -> Plan:
    """What `tune` would do first (the ranking, and the configs of its first round), measuring nothing.

    `model`: a model file from `kt costmodel fit`, "analytic", or None for kt's default for the device;
    `measures_time`: whether a GPU would time the candidates (default: whether this machine has one).
    """
    spec = as_spec(spec)
    model = ranking_model(model)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    objective = spec.tune.objective if objective is None else objective  # "" is refused, not the spec's
    if objective not in OBJECTIVES:
        raise SpecError("objective", f"{objective!r} is not supported; allowed: {', '.join(OBJECTIVES)}")
    profile, model = _profile_for_model(spec, device, model)
    return plan_tuning(
        node.problem,
        profile,
        _budget(budget) or spec.tune.budget,
        strategy,
        spec.tune.seed if seed is None else check_seed(seed),
        model,
        objective,
        power_cap(power_cap_w, "power_cap_w") if power_cap_w is not None else spec.tune.power_cap_w,
        torch.cuda.is_available() if measures_time is None else check_bool(measures_time, "measures_time"),
        spec,
    )


def _profile_for_model(spec: OpSpec, device: str | None, model: Any) -> tuple[DeviceProfile, Any]:
    """The target profile and the model to rank with; with a model file and nothing that names a device (no
    --device, `device: auto`, no GPU here), the model's own device, and the file loaded once."""
    if not _names_device(spec, device) and isinstance(model, (str, os.PathLike)) and str(model) != "analytic":
        from kt.costmodel.forest import ForestModel

        loaded = ForestModel.load(model)
        return loaded.device, loaded
    return resolve_profile(spec.device if device is None else device), model


def space(spec: SpecLike, device: str | None = None) -> SearchSpace:
    """The kernel's search space before and after legality pruning (and the spec's `tune.space` or
    `tune.configs`, when it has one)."""
    spec = as_spec(spec)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    profile = resolve_profile(spec.device if device is None else device)  # "" is refused, not the spec's
    family = family_for(node.problem)
    whole = family.space(node.problem, profile)
    # where no config can run at all, said so: restrict blamed the user's values ("tune.space leaves none of the
    # 0 legal configs")
    if not whole.legal and (spec.tune.space or spec.tune.configs):
        tuning_space(node.problem, profile, spec)
    return restrict(whole, family, node.problem, profile, spec)


def build(
    spec: SpecLike,
    config: Config | Mapping[str, int] | str | None = None,
    device: str | None = None,
    compile_check: bool = False,
) -> Kernel:
    """The kernel for `spec` with `config` (default: the cost model's top-ranked legal config), untuned;
    `config="pytorch"` gives PyTorch's own path for the op (what a tune times as candidate zero). A config
    written as a mapping is checked as op.yaml's `tune.configs` are: integer fields on their axes, and one the
    space of this problem on the device leaves out (it cannot run there) is refused with the rule it breaks.

    `compile_check` (with no config; what kt.nn does on a GPU): the best-ranked config whose build for the
    device's architecture neither spills registers nor needs more shared memory than it has, as a tune refuses
    its candidates (legality admits a few builds that spill: unaligned 16-bit and tf32 GEMMs on sm_80 above all).
    Compiled here, a second or so each, at most COMPILE_TRIES; the configs passed over are in the kernel's
    meta (`refused`); when none of them builds, or Triton has no ptxas here, the first-ranked."""
    compile_check = check_bool(compile_check, "compile_check")  # "no" was true
    if compile_check and config is not None:  # it was passed over without a word
        raise SpecError(
            "compile_check", "checks the ranking's configs when no config is given; this call gives one"
        )
    spec = as_spec(spec)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    profile = resolve_profile(spec.device if device is None else device)  # "" is refused, not the spec's
    family = family_for(node.problem)
    if isinstance(config, str) and config == BASELINE_KEY:  # (a numpy array's == raised numpy's ValueError)
        return baseline_kernel(spec, profile.name)
    written = isinstance(config, Mapping)
    refused: list[list[str]] = []
    if config is None:
        ranking = plan_tuning(node.problem, profile, budget=1, spec=spec)
        config = ranking.config(ranking.ranked[0])
        if compile_check and _can_compile():
            config, refused = _first_building(ranking, node.problem, profile, spec.name)
    elif isinstance(config, (Mapping, family.config_type)):
        # written by hand: checked as op.yaml's tune.configs are. A config object made in code is checked on
        # its axes too (GemmConfig(-16, 16, 16) built a kernel whose results were 1e34 off); whether it can run
        # on the device is left to the caller (rows of an earlier kt's legality are still loaded by kt.nn)
        data = dict(config) if isinstance(config, Mapping) else config.to_dict()
        from kt.codegen.restrict import missing_structure

        if missing := missing_structure(family, node.problem, data):
            raise SpecError("config", missing)
        try:
            config = family.config_type.from_dict(data)
        except ValueError as exc:
            raise SpecError("config", str(exc).removeprefix("config: ").removeprefix("config.")) from None
        except TypeError:  # a field without a default left out: as op.yaml's tune.configs say it (not the
            # dataclass's "__init__() missing 2 required positional arguments")
            import dataclasses

            from kt.axes import missing_fields

            names = [f.name for f in dataclasses.fields(family.config_type)]
            raise SpecError(
                "config", missing_fields(family.name, names, data) or "fields of another kind"
            ) from None
    if not isinstance(config, family.config_type):
        raise SpecError(
            "config",
            f"{config!r} is not a config; allowed: a {family.config_type.__name__}, a mapping of its fields, or "
            f"{BASELINE_KEY!r}",
        )
    try:
        source = family.render(
            node.problem, config, name=spec.name, device=profile.name, kt_version=software_versions()["kt"]
        )
    except ValueError as exc:  # a structure choice the op does not offer
        raise SpecError("config", str(exc).removeprefix("config: ")) from None
    illegal = written and illegal_config(family, node.problem, config, profile)
    if illegal:
        raise SpecError("config", f"{config.key()} cannot run {node.problem} on {profile.name}: {illegal}")
    return Kernel(
        load_source(source), spec, config, {"measured": False, **({"refused": refused} if refused else {})}
    )


# the most configs `build(compile_check=True)` compiles (`kt show --ptx` tries as many)
COMPILE_TRIES = 8


def _can_compile() -> bool:
    """Whether this process can compile kernels for a GPU target: Triton's ptxas programs and the cuobjdump
    that reads a build's spills are here, Triton's interpreter is not switched
    on for the whole process and has not left `triton.language` patched (kt.codegen.compat)."""
    from kt.autotune.compile import target_compiler_available
    from kt.codegen.compat import interpret_requested, language_patched

    return target_compiler_available() and not interpret_requested() and not language_patched()


def _first_building(ranking, problem, profile: DeviceProfile, name: str) -> tuple[Config, list[list[str]]]:
    """The best-ranked config whose build passes `_build_refusal` (at most COMPILE_TRIES compiled; one that
    differs from a refused config only in its tile order, group_m, builds the same and is passed over unbuilt),
    else the first-ranked; and [config key, why] of each refused."""
    refused = []
    for config in distinct_tiles(ranking):
        reason = _build_refusal(problem, config, profile, name)
        if reason is None:
            return config, refused
        refused.append([config.key(), reason])
    return ranking.config(ranking.ranked[0]), refused


def distinct_tiles(ranking, tries: int = COMPILE_TRIES) -> list[Config]:
    """The best-ranked `tries` configs of a plan (`plan`, `plan_tuning`) that differ from every better-ranked one
    in more than their tile order, group_m: a group_m twin builds as its tile does, so the compile checks
    (`build(compile_check=True)`, `kt show --ptx`) build one of each."""
    configs, seen = [], []
    for index in ranking.ranked:
        config = ranking.config(index)
        tile = {k: v for k, v in config.to_dict().items() if k != "group_m"}
        if tile not in seen:
            seen.append(tile)
            configs.append(config)
            if len(configs) == tries:
                break
    return configs


def _build_refusal(problem, config: Config, profile: DeviceProfile, name: str) -> str | None:
    """Why `config`'s build of `problem` for the profile's architecture would not run well there (a tune's
    compile stage, in this process), or None."""
    from kt.autotune.compile import compile_for_target
    from kt.autotune.worker import build_refusal
    from kt.codegen import import_kernel_file, write_source

    source = family_for(problem).render(
        problem, config, name=name, device=profile.name, kt_version=software_versions()["kt"]
    )
    module = import_kernel_file(write_source(source), interpret=False, private=True)
    try:
        builds = compile_for_target(module, problem.meta_args(), profile.compute_capability)
    except Exception as exc:  # the compiler's own error, as a tune's compile_error
        return f"does not compile for sm_{profile.compute_capability}: {one_line(exc)}"
    return build_refusal(builds, profile.smem_per_block)


def reference(spec: SpecLike) -> Callable[..., torch.Tensor]:
    """The op in plain torch, taking the kernel's positional inputs (no `out=`): what a user would write without
    kt."""
    return op_from_spec(as_spec(spec)).reference


def random_args(
    spec: SpecLike, seed: int = 0, device: str | torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Random (x, *weights) in the op's documented layout."""
    return op_from_spec(as_spec(spec)).random_args(check_seed(seed), _device(device))


def random_weights(
    spec: SpecLike, seed: int = 0, device: str | torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Random weights in the op's documented layout (for dense: the B operand)."""
    return op_from_spec(as_spec(spec)).random_weights(check_seed(seed), _device(device))


def _device(device: Any) -> torch.device:
    """A torch device to make tensors on (default: the GPU, else the CPU), refused in one line naming `device`."""
    if device is None:
        return torch.device(default_device())
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SpecError("device", f"{device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):  # meta, mps, ...: torch's random draw or kt's kernels fail there
        # (a KtError, as cuda without a GPU is: a plain ValueError passed `except kt.KtError`)
        raise SpecError("device", f"{device} is not supported; allowed: cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device: {device} asked for, but this machine has no CUDA GPU")
    return device


def tune(
    spec: SpecLike | list[SpecLike],
    budget: int | None = None,
    objective: str | None = None,
    backend: str = "auto",
    db: str | os.PathLike | None = None,
    **options: Any,
) -> TuneResult | list[TuneResult | KtError]:
    """Tune `spec`. A list of specs gives a list: each op's TuneResult, or the KtError that stopped it (the
    others go on). Ops that target one device share one runner (its workers start once) and up to `concurrent`
    of them (default 4) are tuned at once, sharing its workers; `on_done(number, spec, outcome)` is called as
    each ends, `on_start(number, spec)` as each begins where they run one after the other
    (kt.autotune.tune.tune_each).

    The keywords beside budget, objective, backend and db, with the `kt tune` option each stands for (details in
    kt.autotune.tune.run_session): device (--device), workers (--workers), strategy (--strategy), model
    (--model: a file or a CostModel), seed (--seed), power_cap_w (--power-cap), progress (False: --quiet),
    timeout_s (--timeout), retry_failed (--retry-failed), timing (a kt.autotune.timing.TimingSettings:
    --cooldown-ms and the timing loop's lengths), ray (--ray), gpus (--gpus: a list of indices), deadline (a
    time.monotonic() after which nothing new starts), baseline (False: PyTorch's path is not timed first) and
    runner (a Runner already made, shared by several tunes)."""
    _check_tune_options(options, several=isinstance(spec, (list, tuple)))
    specs = [as_spec(s) for s in spec] if isinstance(spec, (list, tuple)) else [as_spec(spec)]
    if "model" in options:
        options = {**options, "model": ranking_model(options["model"])}
    found = _model_device(specs, options.get("device"), options.get("model"))
    if found is not None:  # the model loaded once, for the device and to rank with
        options = {**options, "device": found[0], "model": found[1]}
    if isinstance(spec, (list, tuple)):
        return _tune_each(specs, budget, objective, backend, db, options)
    return _tune(specs[0], budget=_budget(budget), objective=objective, backend=backend, db=db, **options)


def _model_device(specs: list[OpSpec], device: str | None, model: Any) -> tuple[str, Any] | None:
    """The device a tune targets where only its model file names one, as `kt.plan` (and `kt predict`) rank for
    it (`_profile_for_model`): the model's built-in profile's name, and the model loaded; None where the specs,
    `device` or a GPU here name the target. A tune without a GPU targeted h100 there, and refused an A100 model
    that `kt predict` had ranked with, or took a Hopper model of another card as a stand-in for h100."""
    if any(_names_device(spec, device) for spec in specs):
        return None
    if not isinstance(model, (str, os.PathLike)) or str(model) == "analytic":
        return None
    profile, loaded = _profile_for_model(specs[0], device, model)
    if BUILTIN.get(profile.name) == profile:
        return profile.name, loaded
    # a calibrated card's model (`kt costmodel fit --device gpu.json`) holds its profile, not the file: kept in
    # kt's cache under its key, so the tune targets it by path (it targeted h100, and refused an sm_80 model)
    from kt.device import save_profile
    from kt.files import cache_dir

    path = cache_dir() / "profiles" / f"{profile.key}.json"
    if not path.is_file():
        save_profile(profile, path)
    return str(path), loaded


def _names_device(spec: OpSpec, device: str | None) -> bool:
    """Whether the target is named otherwise than by a model file: `device`, the spec's, or a GPU here."""
    # `--device auto` names none (it is the default: with it a model file's device was not the target)
    named = device is not None and not (isinstance(device, str) and device.lower() == "auto")
    return named or spec.device != "auto" or torch.cuda.is_available()


def _check_tune_options(options: dict[str, Any], several: bool) -> None:
    """An unknown keyword of kt.tune is named with the ones it takes: it reached run_session, whose TypeError
    named that internal function and not what to write (`timeout=` for `timeout_s=`)."""
    import inspect

    from kt.autotune.tune import tune_each

    allowed = set(inspect.signature(run_session).parameters) - {
        "spec",
        "budget",
        "objective",
        "backend",
        "db",
    }
    allowed.add("power_cap_w")
    if several:
        allowed |= set(inspect.signature(tune_each).parameters) - {"specs", "tune_one", "options", "backend"}
    _refuse_unknown("kt.tune", options, allowed, "budget, objective, backend and db")
    _check_run_options(options)


def _refuse_unknown(who: str, options: dict[str, Any], allowed: set[str], named: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{who}() got an unexpected keyword argument {unknown[0]!r}; beside {named} it takes "
            f"{', '.join(sorted(allowed))}"
        )


def _check_run_options(options: dict[str, Any]) -> None:
    """The options of a tune or collect that the CLI's parser checks, checked by type before anything runs."""
    # the options the CLI's parser checks: given by type, they failed deep inside (an AttributeError at a Ray
    # address of 3, a runner of "x"), or, on_done, after the first op's tune had finished
    if options.get("ray") is not None and not isinstance(options["ray"], str):
        raise SpecError(
            "ray", f"must be 'local', 'auto' or an address (text), got {type(options['ray']).__name__}"
        )
    if options.get("concurrent") is not None:
        check_int(options["concurrent"], "concurrent", 1, 64)
    for name in ("on_done", "on_start"):
        if options.get(name) is not None and not callable(options[name]):
            raise SpecError(name, f"must be a function or None, got {type(options[name]).__name__}")
    if options.get("runner") is not None:
        from kt.autotune.runners import Runner

        if not isinstance(options["runner"], Runner):
            raise SpecError(
                "runner",
                f"must be a kt.autotune.runners.Runner (kt.autotune.tune.shared_runner makes one), got "
                f"{type(options['runner']).__name__}",
            )


def _tune_each(specs, budget, objective, backend, db, options) -> list[TuneResult | KtError]:
    from kt.autotune.tune import tune_each

    return tune_each(
        specs, _tune, budget=_budget(budget), objective=objective, backend=backend, db=db, **options
    )


def collect(
    spec: SpecLike,
    sample: int | None = None,
    backend: str = "auto",
    db: str | os.PathLike | None = None,
    **options: Any,
) -> Session:
    """Measure every legal config (or random ones until `sample` configs of the problem are in the database:
    rows measured before, a tune's included, count) into the database, for the cost model's data."""
    import inspect

    # what run_session takes but these (collect sets its strategy and budget): an unknown or doubled keyword
    # failed in run_session's words ("got multiple values for keyword argument 'strategy'")
    allowed = set(inspect.signature(run_session).parameters) - {"spec", "budget", "backend", "db", "strategy"}
    _refuse_unknown("kt.collect", options, allowed, "sample, backend and db")
    _check_run_options(options)
    spec = as_spec(spec)
    if backend == "auto" and not torch.cuda.is_available():
        raise DeviceError(
            "collect measures runtimes and needs a CUDA GPU; this machine has none "
            f"({option('backend', 'interpret')} checks correctness only, timing nothing)"
        )
    options.setdefault("baseline", False)  # the cost model's data: PyTorch's path is no config of the space
    if sample is None:
        return run_session(
            spec,
            budget=len(space(spec, options.get("device"))),
            backend=backend,
            db=db,
            strategy="exhaustive",
            **options,
        )
    sample = check_int(sample, "sample", 1, MAX_BUDGET)  # as --sample names it
    # its notes say "raise --sample for more", not --budget, which it lacks
    with renamed_options(budget="sample"):
        return run_session(spec, budget=sample, backend=backend, db=db, strategy="random", **options)


def load(path: str | os.PathLike, verify: bool = True) -> Kernel:
    """The tuned kernel saved by `kt tune` in the artifact directory `path`."""
    return load_artifact(path, verify=check_bool(verify, "verify"))  # "no" was true: it verified


def _measured_records(
    data: str | os.PathLike, profile: DeviceProfile, gpu: str | None, model: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The cost model's training rows in `data` for `profile` (the device of `model`, a model file, when one
    is scored); a DatabaseError saying what is there instead."""
    from collections import Counter

    from kt.autotune.dataset import is_measured, measured_records, read_rows, untimed
    from kt.errors import DatabaseError

    records = measured_records(data, target=profile.key, device=gpu)
    if records:
        return records
    rows = read_rows(data)
    where = f"data: {str(data)!r} holds no GPU-measured passing rows for target {profile.key}"
    where += f" on {gpu!r}" if gpu else ""
    measured = [r for r in rows if is_measured(r) and gpu in (None, r["device"])]
    if gpu and not measured:  # none on that GPU: its name, not the data, is what to look at
        gpus = Counter(r["device"] for r in rows if is_measured(r))
        if gpus:
            listing = ", ".join(f"{name!r} ({n} rows)" for name, n in gpus.most_common())
            raise DatabaseError(f"{where}; its GPU-measured rows are on {listing}: pass one of those names")
    other = Counter(r["target"] for r in measured if r["family"] == "gemm")
    if other and model is not None:
        listing = ", ".join(f"{target} ({n} rows)" for target, n in other.most_common())
        raise DatabaseError(
            f"{where}, the device of model {str(model)!r}; it holds some for {listing}: score a model fitted "
            "for that target (`kt costmodel fit --device`)"
        )
    if other:
        listing = ", ".join(f"{target} ({n} rows)" for target, n in other.most_common())
        raise DatabaseError(
            f"{where}; it holds some for {listing}: pass that target's profile as {option('device')}"
        )
    structured = Counter(r["family"] for r in measured)
    if structured:
        listing = ", ".join(f"{n} {family}" for family, n in structured.most_common())
        raise DatabaseError(
            f"{where}: its measured rows ({listing}) time whole structured ops, and the forest learns single "
            "GEMM launches; measure dense ops (`kt collect` of a dense op.yaml)"
        )
    kinds = untimed(rows)
    seen = f" (only rows that check but never time: {kinds})" if kinds else ""
    baselines = sum(
        r["config_key"] == BASELINE_KEY and r["runner"] == "cuda" and r.get("runtime_ms") is not None
        for r in rows
    )
    if baselines and not kinds:  # an import of Inductor's cuBLAS rows alone: "no passing rows" was untrue
        seen = (
            f" (only {counted(baselines, 'timed baseline row')}, PyTorch's own path: the forest learns "
            "generated kernels' configs)"
        )
    raise DatabaseError(f"{where}{seen}; measure some with `kt collect` on a GPU")


def fit_model(
    data: str | os.PathLike,
    out: str | os.PathLike,
    device: str | None = None,
    gpu: str | None = None,
    seed: int = 0,
) -> tuple[ForestModel, int]:
    """Fit the forest cost model on the measured rows of `data` (a tuning database or a `kt export` CSV) for
    the profile `device` (default: auto), only those measured on the GPU named `gpu` when given; save it to
    `out` (a .skops file, written atomically). The data's timed baseline rows (PyTorch's own path of dense
    GEMMs) fit the model's baseline forest. Returns the model and the number of rows it was fitted on."""
    from kt.costmodel.forest import MIN_ROWS, ForestModel
    from kt.errors import DatabaseError, ModelError
    from kt.files import MODEL_NAMES, MODEL_SUFFIX, check_not_input, check_suffix, check_writable

    seed = check_seed(seed)  # "x" failed inside the forest, -1 became 2**32 - 1
    _check_path(data, "data")
    _check_path(out, "out")  # None was pathlib's TypeError, naming neither
    out = Path(out)
    if out.is_dir():
        raise ModelError(f"out: {str(out)!r} is a directory; give a model file such as model.skops")
    check_writable(out, "out")  # before the fit, not after it
    check_not_input(out, [data], "out", "--data")
    check_suffix(out, "out", MODEL_SUFFIX, MODEL_NAMES)
    profile = resolve_profile(device)
    records = _measured_records(data, profile, gpu)
    if len(records) < MIN_ROWS:
        raise DatabaseError(
            f"data: {str(data)!r} holds {len(records)} GPU-measured passing rows for target {profile.key}; "
            f"the forest needs at least {MIN_ROWS} (on fewer every tree is one leaf, and the forest one constant): "
            "measure more with `kt collect` on a GPU"
        )
    from kt.autotune.dataset import baseline_records

    baseline = baseline_records(data, target=profile.key, device=gpu or records[0]["device"])
    try:
        model = ForestModel(profile, seed=seed).fit(
            records, source=str(Path(data).resolve()), baseline=baseline
        )
    except ValueError as exc:
        raise ModelError(f"fit: {str(data)!r}: {_one_line(exc)}") from None
    # the GPUs the rows were measured on, beside the profile's card: rows tuned for --device h100 on another
    # card were fitted as h100's model without a word (`kt costmodel fit` says so)
    model.trained["measured_on"] = sorted({str(r["device"]) for r in records})
    model.save(out)
    return model, len(records)


def evaluate_model(
    data: str | os.PathLike,
    device: str | None = None,
    gpu: str | None = None,
    folds: int = 5,
    seed: int = 0,
    model: str | os.PathLike | None = None,
) -> Report:
    """How right the forest is on the measured rows of `data`. Without `model`: cross-validation in `folds`
    folds of whole shapes held out. With `model` (a file from `fit_model`): that model scored on every row,
    less the rows of shapes it was fitted on (the report counts them in `dropped_rows`); its device profile is
    the default for `device`, and a model of another card of the same architecture stands in for `device` as in
    a tune, which the report's `notes` say."""
    from kt.costmodel.evaluate import cross_validate, holdout_key, report, unseen
    from kt.costmodel.forest import ForestModel
    from kt.errors import DatabaseError, ModelError

    _check_path(data, "data")
    if model is not None:
        _check_path(model, "model")  # (a ForestModel or an int was pathlib's TypeError)
        # a model of the same architecture stands in for another card, as the shipped H100 one does in a tune
        forest = ForestModel.load(model, resolve_profile(device) if device else None, stand_in=True)
        records, dropped_rows, dropped_shapes = unseen(
            forest, _measured_records(data, forest.device, gpu, model), repr(str(model))
        )
        if not records:
            raise DatabaseError(
                f"data: {str(data)!r}: every row's shape was in the model's training data "
                f"({counted(dropped_rows, 'row')} of {counted(dropped_shapes, 'shape')}); evaluate it on other shapes"
            )
        try:
            scored = report(forest, records)
        except ValueError as exc:
            raise ModelError(f"eval: {_one_line(exc)}") from None
        scored.dropped_rows, scored.dropped_shapes = dropped_rows, dropped_shapes
        stand_in = forest.unseen()  # fitted for another card of its architecture, as a tune would use it
        if stand_in:
            scored.notes.append(stand_in)
        return scored
    seed = check_seed(seed)  # "x" failed inside the forest, -1 inside numpy
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or not 2 <= folds <= 100:
        raise ModelError(f"folds: must be an integer from 2 to 100, got {folds!r}")  # as --folds
    folds = int(folds)
    profile = resolve_profile(device)
    records = _measured_records(data, profile, gpu)
    shapes = len({holdout_key(r) for r in records})
    if shapes < 2:
        raise DatabaseError(
            f"data: {str(data)!r} holds measurements of 1 shape for target {profile.key}; holding out whole "
            "shapes needs at least 2 (measure more with `kt collect`, or score a fitted model with --model)"
        )
    try:
        return cross_validate(records, profile, folds=folds, seed=seed)
    except ValueError as exc:
        raise ModelError(f"eval: {_one_line(exc)}") from None


def _check_path(value: Any, name: str) -> None:
    """A path argument is a str or os.PathLike: None gave pathlib's TypeError, which names no argument."""
    if not isinstance(value, (str, os.PathLike)):
        raise SpecError(name, f"expected a path (a str or os.PathLike), got {type(value).__name__}")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


def inspect(
    path: str | os.PathLike,
    db: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    plots_dir: str | os.PathLike | None = None,
    device: str | None = None,
    gpu: str | None = None,
) -> InspectResult:
    """Predicted against measured for a finished tune: `path` is an artifact directory (its problem's GPU rows
    in `db`, default the tune's database) or a tuning database (every measured problem in it). Compares the
    tuner's stored predictions and a forest's (`model`, else forests fitted on the other shapes, holding out
    each inspected one) with the measurements, and writes plots to `plots_dir` (default: the artifact, or
    <data file name>-inspect/ next to the data file). `device` names the target profile when the data cannot."""
    from kt.autotune.inspection import inspect_tune

    _check_path(path, "path")
    for name, value in (("db", db), ("plots_dir", plots_dir), ("model", model)):
        if value is not None:  # (a model of another type was pathlib's TypeError, after every row was read)
            _check_path(value, name)
    if device is not None and not isinstance(device, (str, DeviceProfile)):  # (an AttributeError)
        resolve_profile(device)  # says what it takes
    return inspect_tune(path, db=db, model=model, plots_dir=plots_dir, device=device, gpu=gpu)


__all__ = [
    "KtError",
    "Kernel",
    "SpecError",
    "as_spec",
    "build",
    "collect",
    "evaluate_model",
    "fit_model",
    "inspect",
    "load",
    "load_spec",
    "load_specs",
    "plan",
    "random_args",
    "random_weights",
    "reference",
    "resolve_profile",
    "space",
    "tune",
]
