"""What the structured kernel families share: a name, a template with its version, and a search space built from
the config axes and the problem's structure choices."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from kt.codegen.gemm import SearchSpace, cached_space
from kt.codegen.render import render_template, template_version
from kt.device import DeviceProfile
from kt.ir.problems import GemmProblem


class StructuredFamily(ABC):
    """A family of one problem type; `judge` says, per structure choice, why a config is illegal (or None)."""

    template: str
    shared_configs = False  # each space makes its configs (kt.codegen.gemm.space_bytes)
    axes: dict[str, tuple[int, ...]]
    config_type: type
    # illegal_reason(problem, config, device): why a config cannot run, or None; a family sets it or overrides judge
    illegal_reason: Callable[..., str | None]

    def __init__(self, name: str):
        self.name = name

    @property
    def version(self) -> str:
        """Changes whenever the template does, so stale measurements are never reused."""
        return template_version(self.template)

    @staticmethod
    @abstractmethod
    def resources(problem, config, device: DeviceProfile) -> tuple[int, int]:
        """Estimated shared-memory bytes and fp32 accumulator registers per thread of one program."""

    @abstractmethod
    def variables(self, problem, config) -> dict[str, Any]:
        """The template's variables that are the family's own (`render` adds those every template takes)."""

    def judge(self, problem, structure: dict[str, int], device: DeviceProfile) -> Callable:
        """A function of a config of `structure` saying why it cannot run `problem` on `device`, or None."""
        return lambda config: self.illegal_reason(problem, config, device)

    def render(
        self,
        problem,
        config,
        *,
        name: str = "kernel",
        device: str = "h100",
        kt_version: str = "",
        provenance: str = "a candidate, not yet measured",
    ) -> str:
        """The kernel module's source; `provenance` says in its docstring how the config was chosen."""
        self.check_structure(problem, config)
        return render_template(
            self.template,
            name=name,
            dtype=problem.dtype,
            precision=problem.precision,
            problem=str(problem),
            device=device,
            c=config,
            config_line=str(config),
            config_dict=repr(config.to_dict()),
            dot_options=f', input_precision="{problem.precision}"' if problem.dtype == "float32" else "",
            kt_version=kt_version,
            family_version=self.version,
            provenance=provenance,
            **self.variables(problem, config),
        )

    def extras(self, problem, structure: dict[str, int]) -> tuple[dict[str, int], ...]:
        """The further fields each point of the axes takes in `structure`, one config per entry (default: none)."""
        return ({},)

    def judged(self, problem, device: DeviceProfile) -> Iterator[tuple[Any, str | None]]:
        """Every point of the axes in each structure `problem` offers (with each of the family's `extras`), with
        why it cannot run (None: it can)."""
        for structure in problem.structures():
            reason = self.judge(problem, structure, device)
            extras = self.extras(problem, structure)
            for values in itertools.product(*self.axes.values()):
                for extra in extras:
                    config = self.config_type(**dict(zip(self.axes, values)), **structure, **extra)
                    yield config, reason(config)

    def space(self, problem, device: DeviceProfile) -> SearchSpace:
        return cached_space(self, problem, device)

    def check_structure(self, problem, config) -> None:
        """ValueError unless `config`'s structure choice is one `problem` offers (a fused form it cannot run,
        say): the space never holds such a config, but a config given by hand might."""
        offered = problem.structures()
        structure = {key: getattr(config, key) for key in offered[0]}
        # a structure axis of another family's problem, set (a butterfly's config with fused=1: the fused Monarch
        # kernel's rule then read the Monarch factors the butterfly lacks, an AttributeError)
        foreign = {k: v for k, v in config.structure().items() if k not in structure and v}
        if structure not in offered or foreign:
            listing = "; ".join(", ".join(f"{k}={v}" for k, v in s.items()) for s in offered)
            chosen = ", ".join(f"{k}={v}" for k, v in {**structure, **foreign}.items())
            raise ValueError(f"config: structure {chosen} is not offered for {problem}; allowed: {listing}")


def gemm_stage(problem, m: int, n: int, k: int, batch: int = 1, a_col: bool = False, **tiles: int) -> dict:
    """One launch of a structured kernel as the record of the GEMM it resembles (what the cost model predicts
    launch by launch, kt.costmodel.staged): GemmProblem's record in `problem`'s dtype and precision, and the
    launch's tiles (block_m, block_n, block_k, group_m, num_warps, num_stages, split_k)."""
    gemm = GemmProblem(m, n, k, batch, problem.dtype, problem.precision, "col" if a_col else "row")
    return {**gemm.to_record(), **tiles}
