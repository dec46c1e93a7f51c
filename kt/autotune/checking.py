"""Correctness of a kernel against its problem's independent float64 reference."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from kt.dtypes import torch_dtype

MAX_ERROR_FACTOR = 4  # the worst element may be off by this many tolerances of the largest |result|


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    rel_err: float | None
    message: str = ""


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (Frobenius norm over every element)."""
    out, ref = _real(out), _real(ref)
    return float((out - ref).norm() / ref.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _real(t: torch.Tensor) -> torch.Tensor:
    """float64, with a complex tensor's real and imaginary parts as a last dim of two."""
    return torch.view_as_real(t.to(torch.complex128)) if t.is_complex() else t.double()


def check_kernel(module: ModuleType, problem, seed: int, device: str | torch.device) -> CheckResult:
    """Run `module.kernel` on fresh random inputs into a NaN-poisoned output and compare with the reference.

    Poisoning catches unwritten elements; the problem's tolerance (kt.dtypes.TOLERANCE, per dtype) catches wrong ones.
    """
    args = problem.random_args(seed, device)
    out_type = problem.out_type()
    out = torch.full(out_type.shape, float("nan"), dtype=torch_dtype(out_type.dtype), device=device)
    result = module.kernel(*args, out=out)
    if result is not out:
        return CheckResult(False, None, "kernel did not return the `out` tensor it was given")
    bad = (~torch.isfinite(out)).sum().item()
    if bad:
        return CheckResult(
            False,
            None,
            f"{bad} of {out.numel()} output elements were not written (still NaN) or are not finite",
        )
    ref = problem.reference(*args)
    err = relative_error(out, ref)
    limit = problem.tolerance()
    if err > limit:
        return CheckResult(
            False, err, f"relative error {err:.2e} over the {problem.dtype} tolerance {limit:.0e}"
        )
    # A few wrong elements vanish in a norm over millions: bound the worst element too.
    tiny = torch.finfo(torch.float64).tiny
    out, ref = _real(out), _real(ref)
    worst = float((out - ref).abs().max() / ref.abs().max().clamp_min(tiny))
    if worst > MAX_ERROR_FACTOR * limit:
        return CheckResult(
            False,
            err,
            f"an element is off by {worst:.2e} of the largest result "
            f"(allowed {MAX_ERROR_FACTOR * limit:.0e})",
        )
    return CheckResult(True, err)
