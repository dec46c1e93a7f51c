"""kt's public Python API; `kt/__init__.py` re-exports it and the CLI calls nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from kt.autotune.artifact import load_artifact
from kt.autotune.tune import Plan, Session, TuneResult, plan_tuning, run_session
from kt.autotune.tune import tune as _tune
from kt.autotune.versions import software_versions
from kt.codegen import GemmConfig, SearchSpace, family_for, load_source
from kt.device import DEFAULT, DeviceProfile, ProfileError, get_profile, match_gpu
from kt.errors import DeviceError, KtError, SpecError
from kt.ir import op_from_spec
from kt.kernel import Kernel
from kt.spec import OpSpec, load_spec, parse_spec

SpecLike = OpSpec | Mapping | str | os.PathLike


def as_spec(spec: SpecLike) -> OpSpec:
    """An OpSpec from an OpSpec, a mapping shaped like op.yaml, or the path of an op.yaml."""
    if isinstance(spec, OpSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    raise SpecError("", f"expected an OpSpec, a mapping or a path to an op.yaml, got {type(spec).__name__}")


def resolve_profile(name: str | None = "auto") -> DeviceProfile:
    """The device profile for `name`: auto picks the GPU present (or the default, h100, with none)."""
    if name in (None, "auto"):
        if not torch.cuda.is_available():
            return get_profile(DEFAULT)
        gpu = torch.cuda.get_device_name()
        profile = match_gpu(gpu)
        if profile is None:
            raise DeviceError(
                f"device: no built-in profile for {gpu!r}; run `kt calibrate --out gpu.json` and "
                "pass --device gpu.json (or name h100 / h200)"
            )
        return profile
    try:
        return get_profile(name)
    except ProfileError as exc:
        raise DeviceError(f"device: {exc}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _budget(budget: Any) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise SpecError("budget", f"must be a positive integer, got {budget!r}")
    return budget


def plan(
    spec: SpecLike,
    budget: int | None = None,
    device: str | None = None,
    strategy: str = "ranked",
    seed: int | None = None,
) -> Plan:
    """What `tune` would measure, without measuring anything."""
    spec = as_spec(spec)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    return plan_tuning(
        node.problem,
        resolve_profile(device or spec.device),
        _budget(budget) or spec.tune.budget,
        strategy,
        spec.tune.seed if seed is None else seed,
    )


def space(spec: SpecLike, device: str | None = None) -> SearchSpace:
    """The kernel's search space before and after legality pruning."""
    spec = as_spec(spec)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    return family_for(node.problem).space(node.problem, resolve_profile(device or spec.device))


def build(
    spec: SpecLike, config: GemmConfig | Mapping[str, int] | None = None, device: str | None = None
) -> Kernel:
    """The kernel for `spec` with `config` (default: the cost model's top-ranked legal config), untuned."""
    spec = as_spec(spec)
    (node,) = op_from_spec(spec).kernel_graph().kernels
    profile = resolve_profile(device or spec.device)
    family = family_for(node.problem)
    if config is None:
        ranking = plan_tuning(node.problem, profile, budget=1)
        config = ranking.config(ranking.ranked[0])
    elif isinstance(config, Mapping):
        try:
            config = GemmConfig.from_dict(dict(config))
        except (TypeError, ValueError) as exc:
            raise SpecError("config", str(exc).removeprefix("config: ").removeprefix("config.")) from None
    source = family.render(
        node.problem, config, name=spec.name, device=profile.name, kt_version=software_versions()["kt"]
    )
    return Kernel(load_source(source), spec, config, {"measured": False})


def reference(spec: SpecLike) -> Callable[..., torch.Tensor]:
    """The op in plain torch, with the kernel's signature: what a user would write without kt."""
    return op_from_spec(as_spec(spec)).reference


def random_args(
    spec: SpecLike, seed: int = 0, device: str | torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Random (x, *weights) in the op's documented layout."""
    return op_from_spec(as_spec(spec)).random_args(seed, device or default_device())


def random_weights(
    spec: SpecLike, seed: int = 0, device: str | torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Random weights in the op's documented layout (for dense: the B operand)."""
    return op_from_spec(as_spec(spec)).random_weights(seed, device or default_device())


def tune(
    spec: SpecLike,
    budget: int | None = None,
    objective: str | None = None,
    backend: str = "auto",
    db: str | os.PathLike | None = None,
    **options: Any,
) -> TuneResult:
    """Tune `spec` (see kt.autotune.tune.tune for the options)."""
    return _tune(
        as_spec(spec), budget=_budget(budget), objective=objective, backend=backend, db=db, **options
    )


def collect(
    spec: SpecLike,
    sample: int | None = None,
    backend: str = "auto",
    db: str | os.PathLike | None = None,
    **options: Any,
) -> Session:
    """Measure every legal config (or a random `sample` of them) into the database, for the cost model's data."""
    spec = as_spec(spec)
    if backend == "auto" and not torch.cuda.is_available():
        raise DeviceError(
            "collect measures runtimes and needs a CUDA GPU; this machine has none "
            "(use --backend interpret to sweep correctness only)"
        )
    if sample is None:
        return run_session(
            spec,
            budget=len(space(spec, options.get("device"))),
            backend=backend,
            db=db,
            strategy="exhaustive",
            **options,
        )
    return run_session(spec, budget=_budget(sample), backend=backend, db=db, strategy="random", **options)


def load(path: str | os.PathLike, verify: bool = True) -> Kernel:
    """The tuned kernel saved by `kt tune` in the artifact directory `path`."""
    return load_artifact(Path(path), verify=verify)


__all__ = [
    "KtError",
    "Kernel",
    "SpecError",
    "as_spec",
    "build",
    "collect",
    "load",
    "load_spec",
    "plan",
    "random_args",
    "random_weights",
    "reference",
    "resolve_profile",
    "space",
    "tune",
]
