"""Monarch, butterfly and FFT as products of factors, each with an independent plain-torch reference.

The conventions are those of docs/architecture.md ("Math conventions"); each map's docstring says which factor
does which step.
The references never touch the factors: they are written from the convention, so map == reference checks both.
"""

from __future__ import annotations

import math
import operator

import torch

from kt.ir.factors import BlockDiag, ButterflyFactor, Diag, Perm, positive
from kt.ir.linear_map import LinearMap


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _log2(n: int, what: str) -> int:
    _require(
        not isinstance(n, bool) and hasattr(n, "__index__"), f"{what}={n!r}: must be a power of two >= 2"
    )
    n = operator.index(n)  # a numpy integer had no bit_length
    _require(n >= 2 and n & (n - 1) == 0, f"{what}={n}: must be a power of two >= 2")
    return n.bit_length() - 1


# ---------------------------------------------------------------------------------------------------------------
# Monarch: x (B, n), w1 (k, q, p) with k*p = n, w2 (l, s, r) with l*r = k*q, y (B, l*s).


def monarch_map(k: int, q: int, p: int, l: int, s: int, r: int) -> LinearMap:  # noqa: E741
    """Monarch with w1 (k, q, p) and w2 (l, s, r): y = Perm(l, s) · BlockDiag(w2) · Perm(r, l) · BlockDiag(w1) x.

    1. u = BlockDiag(w1) x: u[i*q + a] = sum_e w1[i, a, e] x[i*p + e], k*q features;
    2. Perm(r, l) is "view u as (r, l), transpose to (l, r)": v[j*r + t] = u[t*l + j];
    3. z = BlockDiag(w2) v: z[j*s + c] = sum_t w2[j, c, t] v[j*r + t];
    4. Perm(l, s) is "view z as (l, s), transpose, flatten": y[c*l + j] = z[j*s + c].
    Square case (k = l = m, p = q = r = s = m): Perm(m, m) is its own inverse, so this is M = P L P^T R.
    """
    _require(
        k * q == l * r,
        f"monarch: w1 (k={k}, q={q}, p={p}) gives k*q={k * q} but w2 (l={l}, r={r}) takes l*r={l * r}",
    )
    return LinearMap(
        (
            BlockDiag(k, q, p, weight="w1"),
            Perm(r, l),
            BlockDiag(l, s, r, weight="w2"),
            Perm(l, s),
        )
    )


def monarch_square_map(n: int, nblocks: int) -> LinearMap:
    """The spec's shorthand: k = l = nblocks, p = q = r = s = n / nblocks."""
    _require(
        positive(n) and positive(nblocks),
        f"monarch: n={n!r} and nblocks={nblocks!r} must be positive integers",
    )
    _require(n % nblocks == 0, f"monarch: n={n} is not a multiple of nblocks={nblocks}")
    b = n // nblocks
    return monarch_map(nblocks, b, b, nblocks, b, b)


def check_monarch(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, transposed: bool = False) -> None:
    """One ValueError naming the shapes where x, w1 (k, q, p) and w2 (l, s, r) make no Monarch product (l*r
    = k*q, x's width k*p, or l*s transposed): a wrong width or w1 given (k, p, q) raised torch's reshape error
    about an inner shape, naming neither, where the butterfly's references name theirs (`check_twiddles`)."""
    _require(
        w1.dim() == 3 and w2.dim() == 3,
        f"monarch: w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} must be 3-D, (k, q, p) and (l, s, r)",
    )
    (k, q, p), (l, s, r) = w1.shape, w2.shape  # noqa: E741
    _require(
        l * r == k * q,
        f"monarch: w2 {tuple(w2.shape)} takes l*r = {l * r} features; w1 {tuple(w1.shape)} gives k*q = {k * q}",
    )
    width = l * s if transposed else k * p
    _require(
        x.dim() >= 1 and x.shape[-1] == width,
        f"monarch: x has shape {tuple(x.shape)}; w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} take {width} features",
    )


def monarch_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The convention's four steps with two torch.bmm (the Monarch paper's reference code); any leading dims."""
    check_monarch(x, w1, w2)
    k, q, p = w1.shape
    l, s, r = w2.shape  # noqa: E741
    lead = x.shape[:-1]
    x = x.reshape(-1, k * p)
    batch = x.shape[0]
    # 1. u[b, i, :] = w1[i] @ x[b, i*p:(i+1)*p]
    u = torch.bmm(x.view(batch, k, p).transpose(0, 1), w1.transpose(-1, -2))  # (k, B, q)
    u = u.transpose(0, 1).reshape(batch, k * q)
    # 2. view as (B, r, l), transpose to (B, l, r)
    v = u.view(batch, r, l).transpose(1, 2)
    # 3. z[b, j, :] = w2[j] @ v[b, j, :]
    z = torch.bmm(v.transpose(0, 1), w2.transpose(-1, -2))  # (l, B, s)
    # 4. transpose to (B, s, l) and flatten: y[b, c*l + j] = z[b, j, c]
    y = z.permute(1, 2, 0).reshape(batch, s * l)
    return y.reshape(*lead, s * l)


# ---------------------------------------------------------------------------------------------------------------
# Butterfly: n = 2**L, twiddles (L, n/2, 2, 2), y = B_{L-1} ... B_1 B_0 x.


def butterfly_map(n: int, weight: str = "twiddles") -> LinearMap:
    """log2(n) ButterflyFactors on one twiddle tensor, level f (stride 2**f) acting first for f = 0."""
    levels = _log2(n, "butterfly: n")
    return LinearMap(tuple(ButterflyFactor(n, f, weight=weight) for f in range(levels)))


def check_twiddles(n: int, twiddles: torch.Tensor) -> int:
    """The levels of a butterfly on `n` features, whose twiddles must be (levels, n/2, 2, 2): one ValueError
    naming both shapes (the transposed references took too few levels as a shorter butterfly, without a word)."""
    levels = _log2(n, "butterfly: n")
    _require(
        tuple(twiddles.shape) == (levels, n // 2, 2, 2),
        f"butterfly: twiddles have shape {tuple(twiddles.shape)}, expected {(levels, n // 2, 2, 2)}",
    )
    return levels


def butterfly_reference(x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
    """A per-factor torch loop: at level f (stride s) the pair (x[2sg + j], x[2sg + s + j]) is mapped by
    twiddles[f, g*s + j]."""
    n = x.shape[-1]
    levels = check_twiddles(n, twiddles)
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    for f in range(levels):
        s = 1 << f
        pairs = y.reshape(-1, n // (2 * s), 2, s)  # [b, g, half, j]
        t = twiddles[f].reshape(n // (2 * s), s, 2, 2)  # [g, j, out, in]
        top, bottom = pairs[:, :, 0, :], pairs[:, :, 1, :]
        new_top = t[..., 0, 0] * top + t[..., 0, 1] * bottom
        new_bottom = t[..., 1, 0] * top + t[..., 1, 1] * bottom
        y = torch.stack([new_top, new_bottom], dim=2).reshape(-1, n)
    return y.reshape(*lead, n)


# ---------------------------------------------------------------------------------------------------------------
# FFT: y[k] = sum_j x[j] exp(-2 pi i j k / n), equal to torch.fft.fft, by the four-step identity for n = n1*n2.


def fft_map(n: int, n1: int, n2: int) -> LinearMap:
    """The four-step FFT as Perm · BlockDiag · Diag · Perm · BlockDiag · Perm, dense form the DFT matrix.

    With X[j1, j2] = x[n2*j1 + j2]:
    Perm(n1, n2) makes columns contiguous (index j2*n1 + j1); BlockDiag(dft1) takes the size-n1 DFT of each
    column (index j2*n1 + k1); Diag(twiddle) multiplies by T[k1, j2] = exp(-2 pi i k1 j2 / n); Perm(n2, n1) makes
    rows contiguous (index k1*n2 + j2); BlockDiag(dft2) takes the size-n2 DFT of each row, giving
    Y[k1, k2] at k1*n2 + k2; Perm(n1, n2) reads it out transposed, y[k1 + n1*k2] = Y[k1, k2].
    Weights (from `fft_weights`): dft1 (n2, n1, n1), twiddle (n,), dft2 (n1, n2, n2), all complex.
    """
    _require(n1 * n2 == n, f"fft: split n1={n1} x n2={n2} = {n1 * n2} does not equal n={n}")
    return LinearMap(
        (
            Perm(n1, n2),
            BlockDiag(n2, n1, n1, weight="dft1"),
            Diag(n, weight="twiddle"),
            Perm(n2, n1),
            BlockDiag(n1, n2, n2, weight="dft2"),
            Perm(n1, n2),
        )
    )


def dft_matrix(n: int, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """F[k, j] = exp(-2 pi i j k / n); the product j*k is reduced mod n first to keep the angle exact."""
    # numpy's integers too, as the factors take them (fft_map built where fft_weights refused it); not a bool
    _require(positive(n), f"dft_matrix n={n!r}: must be a positive integer")
    n = operator.index(n)
    idx = torch.arange(n)
    angle = (-2 * math.pi / n) * (torch.outer(idx, idx) % n).to(torch.float64)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def fft_weights(n: int, n1: int, n2: int, dtype: torch.dtype = torch.complex128) -> dict[str, torch.Tensor]:
    """The weights of `fft_map(n, n1, n2)`: the DFT blocks (expanded views, no copies) and the twiddles."""
    _require(n1 * n2 == n, f"fft: split n1={n1} x n2={n2} = {n1 * n2} does not equal n={n}")
    k1 = torch.arange(n1)
    j2 = torch.arange(n2)
    # the twiddle at position j2*n1 + k1 is T[k1, j2]
    angle = (-2 * math.pi / n) * (torch.outer(j2, k1) % n).to(torch.float64).flatten()
    twiddle = torch.polar(torch.ones_like(angle), angle).to(dtype)
    return {
        "dft1": dft_matrix(n1, dtype).expand(n2, n1, n1),
        "twiddle": twiddle,
        "dft2": dft_matrix(n2, dtype).expand(n1, n2, n2),
    }
