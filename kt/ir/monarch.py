"""Monarch projection and the butterfly that computes the DFT.

`project(W, k, l)`: the Monarch matrix closest to a dense W in Frobenius norm. With the factor product of
`structured.monarch_map`, entry M[c*l + j, i*p + e] = sum_t w2[j, c, t] * w1[i, t*l + j - i*q, e] over the t with
t*l + j in block i (i*q <= t*l + j < (i+1)*q). So the (s, p) block (j, i) of W, rows c*l + j and columns i*p + e,
is a sum of |T(i, j)| outer products, and each column w2[j, :, t] and each row w1[i, a, :] appears in exactly one
block. The blocks are therefore independent and the best fit of each is its truncated SVD of rank |T(i, j)|
(rank 1 in the square case, k = l = m, p = q = r = s = m). Exact when W is Monarch.
"""

from __future__ import annotations

import math

import torch

from kt.ir.factors import positive
from kt.ir.structured import _log2, _require


def project(W: torch.Tensor, k: int, l: int, q: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: E741
    """Monarch weights (w1 (k, q, p), w2 (l, s, r)) whose map is the closest Monarch matrix to W (out, in).

    p = in / k and s = out / l; the middle width k*q defaults to in (q = p), and r = k*q / l.
    Works for real and complex W (the map is a plain product, no conjugates).
    """
    _require(W.dim() == 2, f"project: W has shape {tuple(W.shape)}, expected a 2-d (out, in) matrix")
    for name, value in (("k", k), ("l", l), ("q", q)):  # 0 was a ZeroDivisionError
        _require(
            (value is None and name == "q") or positive(value),
            f"project: {name}={value!r} must be a positive integer",
        )
    out_features, in_features = W.shape
    _require(in_features % k == 0, f"project: in={in_features} is not a multiple of k={k}")
    _require(out_features % l == 0, f"project: out={out_features} is not a multiple of l={l}")
    p, s = in_features // k, out_features // l
    q = p if q is None else q
    _require((k * q) % l == 0, f"project: k*q={k * q} is not a multiple of l={l}")
    r = k * q // l

    # blocks[j, i] is the (s, p) block of W at rows c*l + j, columns i*p + e
    blocks = W.reshape(s, l, k, p).permute(1, 2, 0, 3)
    # in float64 (complex128) at least: torch has no float16 or bfloat16 SVD, and W comes back in its own dtype
    U, S, Vh = torch.linalg.svd(blocks.to(torch.promote_types(W.dtype, torch.float64)), full_matrices=False)
    rank = math.ceil(q / l) + 1  # an upper bound on |T(i, j)|
    if S.shape[-1] < rank:  # a block's rank can not exceed min(s, p): the extra terms are zero
        extra = rank - S.shape[-1]
        U = torch.nn.functional.pad(U, (0, extra))
        S = torch.nn.functional.pad(S, (0, extra))
        Vh = torch.nn.functional.pad(Vh, (0, 0, 0, extra))
    root = S.sqrt().to(U.dtype)

    # each middle index u = i*q + a = t*l + j takes the m-th singular triple of block (j, i), m counted from the
    # first t whose t*l + j lands in block i
    u = torch.arange(k * q)
    i, a, t, j = u // q, u % q, u // l, u % l
    m = t + torch.div(j - i * q, l, rounding_mode="floor")
    w1 = torch.zeros(k, q, p, dtype=W.dtype, device=W.device)
    w2 = torch.zeros(l, s, r, dtype=W.dtype, device=W.device)
    w1[i, a, :] = (root[j, i, m, None] * Vh[j, i, m, :]).to(W.dtype)
    w2[j, :, t] = (U[j, i, :, m] * root[j, i, m, None]).to(W.dtype)
    return w1, w2


def bit_reversal(n: int) -> torch.Tensor:
    """idx with idx[m] = m with its log2(n) bits reversed (an involution)."""
    bits = _log2(n, "bit_reversal: n")
    idx = torch.zeros(n, dtype=torch.long)
    m = torch.arange(n)
    for b in range(bits):
        idx |= ((m >> b) & 1) << (bits - 1 - b)
    return idx


def butterfly_dft_twiddles(n: int, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """Twiddles (log2 n, n/2, 2, 2) that make `butterfly_map(n)` the radix-2 decimation-in-time FFT.

    Level f (stride s = 2**f) maps each pair by [[1, w], [1, -w]] with w = exp(-2 pi i j / (2s)). The map then
    takes bit-reversed input: butterfly(x) == torch.fft.fft(x[..., bit_reversal(n)]), i.e. its dense matrix is
    DFT[:, bit_reversal(n)] = DFT @ P with P[m, bit_reversal(n)[m]] = 1. So the butterfly op covers the FFT.
    """
    levels = _log2(n, "butterfly_dft_twiddles: n")
    twiddles = torch.empty(levels, n // 2, 2, 2, dtype=dtype)
    h = torch.arange(n // 2)
    for f in range(levels):
        s = 1 << f
        angle = (-math.pi / s) * (h % s).to(torch.float64)
        w = torch.polar(torch.ones_like(angle), angle).to(dtype)
        twiddles[f, :, 0, 0] = 1
        twiddles[f, :, 0, 1] = w
        twiddles[f, :, 1, 0] = 1
        twiddles[f, :, 1, 1] = -w
    return twiddles
