"""Projections of a dense nn.Linear-style weight W (out, in) onto structured forms: keep its largest blocks
(block-sparse) or its top singular directions (a rank-r chain x @ f1 @ f2).

Both return new weights to initialise a structured layer from a trained dense one; they do not track gradients.
"""

from __future__ import annotations

import numbers

import torch

from kt.ir.sparse import _positive_int
from kt.sparsity import bsr_indices, bsr_tensor, prune_mask


def _check_weight(weight: torch.Tensor, what: str) -> None:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{what}: weight is a {type(weight).__name__}, expected a torch.Tensor")
    if weight.layout != torch.strided:
        raise ValueError(f"{what}: weight has layout {weight.layout}, expected a dense (strided) tensor")
    if weight.dim() != 2:
        raise ValueError(f"{what}: weight has shape {tuple(weight.shape)}, expected 2-D (out, in)")


@torch.no_grad()
def prune_blocks(weight: torch.Tensor, block: tuple[int, int], density: float) -> torch.Tensor:
    """A sparse BSR copy of `weight` (out, in) keeping the blocks of kt.sparsity.prune_mask: the
    `block_count(density)` blocks of largest Frobenius norm. Kept blocks stay stored even when all zero, so the
    tensor's layout is exactly that mask. Same dtype and device as `weight`."""
    _check_weight(weight, "prune_blocks")
    if not weight.is_floating_point():
        raise ValueError(f"prune_blocks: weight has dtype {weight.dtype}, expected a floating dtype")
    block_t = tuple(block) if isinstance(block, (tuple, list)) else (block,)
    if len(block_t) != 2 or not all(_positive_int(b) for b in block_t):
        raise ValueError(f"prune_blocks: block={block!r} must be two positive integers (bo, bi)")
    bo, bi = block_t
    out, inp = weight.shape
    if out % bo or inp % bi:
        raise ValueError(f"prune_blocks: block {bo}x{bi} does not divide the weight shape ({out}, {inp})")
    # numbers.Real: numpy's floats too, as BlockSparseLinear and op.yaml take them (np.float32(0.5) was "out of range")
    if isinstance(density, torch.Tensor) and density.dim() == 0 and density.is_floating_point():
        density = float(density)
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise ValueError(f"prune_blocks: density={density!r} must be in (0, 1]")
    mask = prune_mask(weight, (bo, bi), density)
    crow, cols = bsr_indices(mask)
    blocks = weight.reshape(out // bo, bo, inp // bi, bi).transpose(1, 2)  # (grid rows, grid cols, bo, bi)
    keep = torch.from_numpy(mask).to(weight.device)
    values = blocks[keep].contiguous()  # (nnz, bo, bi) in row-major grid order, as crow/cols list them
    return bsr_tensor(crow, cols, values, (out, inp))


@torch.no_grad()
def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f1 (in, rank) and f2 (rank, out) with `x @ f1 @ f2` the best rank-`rank` approximation of
    `F.linear(x, weight)` (Eckart-Young, in both the spectral and the Frobenius norm).

    With weight = U S Vh: f1 = Vh[:r].T * sqrt(S[:r]) and f2 = sqrt(S[:r])[:, None] * U[:, :r].T, so the singular
    values are split evenly between the factors. Computed in float64 (complex128 for complex weights) and
    returned in weight.dtype on weight's device.
    """
    _check_weight(weight, "truncated_svd")
    if not (weight.is_floating_point() or weight.is_complex()):
        raise ValueError(f"truncated_svd: weight has dtype {weight.dtype}, expected a floating dtype")
    out, inp = weight.shape
    if not _positive_int(rank) or rank > min(out, inp):
        raise ValueError(
            f"truncated_svd: rank={rank!r} must be an integer in 1..{min(out, inp)} for a {out}x{inp} weight"
        )
    wide = weight.to(torch.promote_types(weight.dtype, torch.float64))
    u, s, vh = torch.linalg.svd(wide, full_matrices=False)
    root = s[:rank].sqrt()
    f1 = vh[:rank].T * root
    f2 = root[:, None] * u[:, :rank].T
    return f1.to(weight.dtype), f2.to(weight.dtype)


@torch.no_grad()
def project_butterfly(weight: torch.Tensor) -> torch.Tensor:
    """Twiddles (L, n/2, 2, 2) of a butterfly (docs/architecture.md's convention) close to a square W (n, n),
    exact when W is a butterfly matrix.

    Levels 0 .. L-2 mix only the low bits, so B = B_{L-1} · diag(M0, M1) with M0, M1 butterflies of half size.
    Then for each j < n/2 the (2, n/2) matrix of rows j and j + n/2 of W's left half is the outer product of the
    2x2 twiddle's first column with row j of M0 (the right half likewise with M1): each is fitted by its best
    rank-1 approximation (an SVD), and M0, M1 recursively. The fit is greedy, level by level from the top: the
    best at each level, not over all levels at once. Computed in float64 (complex128 for a complex W), returned
    in W's dtype.
    """
    _check_weight(weight, "project_butterfly")
    n = weight.shape[0]
    if weight.shape != (n, n) or n < 2 or n & (n - 1):
        raise ValueError(
            f"project_butterfly: W must be square with a power-of-two size >= 2, got {tuple(weight.shape)}"
        )
    levels = n.bit_length() - 1
    # float64, or complex128 for a complex W (its imaginary part was cast away: a DFT butterfly came back 1.0 off)
    wide = torch.promote_types(weight.dtype, torch.float64)
    twiddles = torch.zeros(levels, n // 2, 2, 2, dtype=wide, device=weight.device)

    def fit(matrix: torch.Tensor, base: int) -> None:
        size = matrix.shape[0]
        level, half = size.bit_length() - 2, size // 2
        if size == 2:
            twiddles[0, base // 2] = matrix
            return
        rows = torch.stack([matrix[:half], matrix[half:]], dim=1)  # (half, 2, size): rows j and j + half
        parts = []
        for side in (rows[..., :half], rows[..., half:]):  # the left half (M0) and the right half (M1)
            u, s, vh = torch.linalg.svd(side, full_matrices=False)  # batched over j
            root = s[:, :1].sqrt()
            parts.append(
                (u[:, :, 0] * root, vh[:, 0, :] * root)
            )  # twiddle column (half, 2), row of M (half, half)
        (left, m0), (right, m1) = parts
        twiddles[level, base // 2 : base // 2 + half] = torch.stack([left, right], dim=-1)
        fit(m0, base)
        fit(m1, base + half)

    fit(weight.to(wide), 0)
    return twiddles.to(weight.dtype)
