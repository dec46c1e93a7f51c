"""Correctness of a kernel against its problem's independent float64 reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import torch

from kt.dtypes import torch_dtype

MAX_ERROR_FACTOR = 4  # the worst element may be off by this many tolerances of the largest |result|
# The check compares the output with its float64 reference a run of rows at a time, each run's float64 arguments
# and result about this many bytes (and counts non-finite elements this many sixteenths at a time).
RUN_BYTES = 1 << 29
# An argument's fingerprint sums its bits as int64 this many elements at a time, weighted by their position modulo
# a prime: each sum stays under 2**61 for 32-bit elements (2**31 * 251 * 2**22), so it does not wrap.
PRINT_ELEMENTS = 1 << 22
PRINT_PRIME = 251
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
    the guards around `out` catch writes past its ends, and each argument's fingerprint (before and after the call)
    writes into the inputs. The comparison takes a run of rows at a time (`_runs_of_rows`), so the check needs
    little more memory than the op's own operands.
    """
    args = problem.random_args(seed, device)
    prints = [fingerprint(a) for a in args]
    out_type = problem.out_type()
    buffer, out, guard = _guarded(out_type.shape, torch_dtype(out_type.dtype), device)
    guards = (buffer[:guard].clone(), buffer[guard + out.numel() :].clone())
    result = module.kernel(*args, out=out)
    if result is not out:
        return CheckResult(False, None, "kernel did not return the `out` tensor it was given")
    # The reference is computed from the arguments after the call: a kernel that wrote over an input (zeroed it,
    # then wrote zeros) was compared with the reference of what it had left there, and passed with error 0.
    changed = [i for i, (a, before) in enumerate(zip(args, prints)) if fingerprint(a) != before]
    if changed:
        types = problem.arg_types()
        named = ", ".join(f"argument {i + 1} of {len(args)} ({types[i]})" for i in changed)
        return CheckResult(False, None, f"the kernel wrote into its input: {named}")
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
    bad = _non_finite(out)
    if bad:
        return CheckResult(
            False,
            None,
            f"{bad} of {out.numel()} output elements were not written (still NaN) or are not finite",
        )
    limit = problem.tolerance()
    # Norms and extremes over runs of rows: the float64 reference of the whole output, the output in float64
    # and their difference took 6 to 10 times the op's own memory (a butterfly over 65536 features, 8192 rows
    # of fp16: 20 GiB for 2 GiB of operands), so an op that fitted the GPU could fail its check.
    err_sq = ref_sq = worst = top = 0.0
    for ref, got in _runs_of_rows(problem, args, out):
        got, ref = _real(got), _real(ref)
        diff = got - ref
        err_sq += float(torch.linalg.vector_norm(diff)) ** 2
        ref_sq += float(torch.linalg.vector_norm(ref)) ** 2
        worst = max(worst, float(diff.abs().max()))
        top = max(top, float(ref.abs().max()))
        del ref, got, diff
    tiny = torch.finfo(torch.float64).tiny
    if not (math.isfinite(ref_sq) and math.isfinite(top)):
        # a reference with NaN or inf in it: NaN > limit is False, so every finite output passed
        return CheckResult(
            False, None, "the reference result is not finite: the problem's reference is wrong"
        )
    err = math.sqrt(err_sq) / max(math.sqrt(ref_sq), tiny)
    if not err <= limit:
        return CheckResult(
            False, err, f"relative error {err:.2e} over the {problem.dtype} tolerance {limit:.0e}"
        )
    # A few wrong elements vanish in a norm over millions: bound the worst element too.
    worst /= max(top, tiny)
    if not worst <= MAX_ERROR_FACTOR * limit:
        return CheckResult(
            False,
            err,
            f"an element is off by {worst:.2e} of the largest result "
            f"(allowed {MAX_ERROR_FACTOR * limit:.0e})",
        )
    return CheckResult(True, err)


def fingerprint(arg) -> tuple[int, ...]:
    """Two integer sums of each of an argument's tensors' bits (a BSR tensor's indices and values), plain and
    weighted by position: equal before and after a call unless the call wrote into it. Taken PRINT_ELEMENTS at a
    time, so it needs little memory beside the argument, in any strides."""
    if not isinstance(arg, torch.Tensor):
        return (hash(repr(arg)),)
    if arg.layout == torch.sparse_bsr:
        return tuple(
            s for part in (arg.crow_indices(), arg.col_indices(), arg.values()) for s in fingerprint(part)
        )
    t = torch.view_as_real(arg) if arg.is_complex() else arg
    bits = t.view(torch.uint8) if t.dtype == torch.bool else t.view(_BITS[t.element_size()])
    plain = weighted = position = 0
    for piece in _pieces(bits.reshape(1) if bits.dim() == 0 else bits):
        piece = piece.to(torch.int64)
        weights = torch.arange(position, position + piece.numel(), device=piece.device) % PRINT_PRIME + 1
        plain += int(piece.sum())
        weighted += int((piece * weights).sum())
        position += piece.numel()
    return plain, weighted


def _pieces(t: torch.Tensor):
    """`t`'s elements in order as flat tensors of at most PRINT_ELEMENTS (each a copy only of itself)."""
    if t.numel() <= PRINT_ELEMENTS:
        yield t.reshape(-1)
    elif t.dim() == 1:
        for start in range(0, t.numel(), PRINT_ELEMENTS):
            yield t[start : start + PRINT_ELEMENTS]
    elif (row := t[0].numel()) <= PRINT_ELEMENTS:
        rows = PRINT_ELEMENTS // max(1, row)
        for start in range(0, t.shape[0], rows):
            yield t.narrow(0, start, min(rows, t.shape[0] - start)).reshape(-1)
    else:
        for i in range(t.shape[0]):
            yield from _pieces(t[i])


def _non_finite(out: torch.Tensor) -> int:
    """How many of `out`'s elements are NaN or infinite, counted RUN_BYTES / 16 of them at a time (torch.isfinite of
    the whole tensor takes an |out| and two masks: 1.5 times its memory in fp16)."""
    flat = out.reshape(-1)  # `out` is the contiguous tensor `_guarded` made: a view
    step = max(1, RUN_BYTES // 16)
    return sum(int((~torch.isfinite(flat[i : i + step])).sum()) for i in range(0, flat.numel(), step))


def _runs_of_rows(problem, args, out: torch.Tensor):
    """(float64 reference, kernel output) of consecutive runs of the output's rows, each run's float64 arguments
    and result about RUN_BYTES at most (at least one row); the whole output at once for a problem whose rows
    are not independent (`row_dims` None)."""
    dims = problem.row_dims()
    if dims is not None:
        arg_dims, out_dim = dims
        rows = out.shape[out_dim]
        row_elements = sum(a.numel() // max(1, a.shape[d]) for a, d in zip(args, arg_dims) if d is not None)
        row_elements += out.numel() // max(1, rows)
        step = max(1, RUN_BYTES // (16 * max(1, row_elements)))  # 16: a complex128 element
    if dims is None or step >= rows:
        yield problem.reference(*args), out
        return
    # dense weights in float64 once, not once a run (the references' own .double() then copies nothing); a
    # block-sparse reference densifies its weight's slabs on every run whatever its dtype, so a BSR weight stays
    args = [
        a.double() if d is None and a.layout == torch.strided and a.is_floating_point() else a
        for a, d in zip(args, arg_dims)
    ]
    for start in range(0, rows, step):
        length = min(step, rows - start)
        run = (a if d is None else a.narrow(d, start, length) for a, d in zip(args, arg_dims))
        yield problem.reference(*run), out.narrow(out_dim, start, length)
