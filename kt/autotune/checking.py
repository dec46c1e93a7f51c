"""Correctness of a kernel against its problem's independent float64 reference."""

from __future__ import annotations

import math
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


def _guarded(shape, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(buffer, out, guard): a NaN-poisoned contiguous `out` of `shape` inside `buffer`, with `guard` elements
    of another value on either side (at least a row of `out` and 64, a multiple of 64 so that `out` stays as
    aligned as a fresh tensor). A write past either end of `out` (a row mask off by one) changes them; in a
    tensor of its own it went unseen, into memory the check did not own."""
    numel = math.prod(shape)
    row = shape[-1] if len(shape) else 1
    guard = 64 * -(-max(row, 64) // 64)
    buffer = torch.full((numel + 2 * guard,), 1234.0, dtype=dtype, device=device)
    out = buffer[guard : guard + numel].view(shape)
    out.fill_(float("nan"))
    return buffer, out, guard


def _same(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Elementwise: does `now` hold what `before` held (NaN included)?"""
    return (now == before) | (now.isnan() & before.isnan())


def check_kernel(module: ModuleType, problem, seed: int, device: str | torch.device) -> CheckResult:
    """Run `module.kernel` on fresh random inputs into a NaN-poisoned output and compare with the reference.

    Poisoning catches unwritten elements; the problem's tolerance (kt.dtypes.TOLERANCE, per dtype) catches wrong ones;
    the guards around `out` catch writes past its ends.
    """
    args = problem.random_args(seed, device)
    out_type = problem.out_type()
    buffer, out, guard = _guarded(out_type.shape, torch_dtype(out_type.dtype), device)
    guards = (buffer[:guard].clone(), buffer[guard + out.numel() :].clone())
    result = module.kernel(*args, out=out)
    if result is not out:
        return CheckResult(False, None, "kernel did not return the `out` tensor it was given")
    stray = sum(
        int((~_same(now, before)).sum())
        for now, before in zip((buffer[:guard], buffer[guard + out.numel() :]), guards)
    )
    if stray:
        return CheckResult(
            False,
            None,
            f"the kernel wrote {stray} elements outside `out`, in the {guard} on either side of it",
        )
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
