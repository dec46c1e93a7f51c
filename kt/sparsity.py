"""Block-sparsity patterns: which blocks of a weight W (out, in) with blocks (bo, bi) are non-zero.

A pattern is a boolean mask over the block grid (out/bo, in/bi). It is made from a seed and a density, a named
pattern (diagonal, banded), a mask file, or by keeping the largest blocks of a dense weight; kt stores it as the
hex text of the mask's bits (row-major, padded to whole bytes), so a problem's pattern travels in the problem,
the tuning database and artifacts (a problem's key names a long one by its SHA-256: `kt.keys.layout_digest`).
Everything here is plain numpy and torch, with no kt imports, so the spec parser can use it; torch is imported
where a function makes tensors, so a spec is read without it.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PATTERNS = ("diagonal", "banded")


def block_count(density: float, grid: tuple[int, int]) -> int:
    """How many blocks a pattern of `density` keeps: the nearest whole number, at least one."""
    total = grid[0] * grid[1]
    return min(total, max(1, round(density * total)))


def random_mask(grid: tuple[int, int], density: float, seed: int) -> np.ndarray:
    """`block_count(density)` blocks chosen uniformly without replacement (numpy's PCG64, stable across
    machines)."""
    total = grid[0] * grid[1]
    chosen = np.random.default_rng(seed).choice(total, size=block_count(density, grid), replace=False)
    mask = np.zeros(total, dtype=bool)
    mask[chosen] = True
    return mask.reshape(grid)


def banded_mask(grid: tuple[int, int], width: int = 0) -> np.ndarray:
    """Blocks on the matrix's diagonal (width 0), or within `width` blocks of it on either side.

    For a non-square grid the diagonal is the line from the top-left to the bottom-right corner: block (i, j)
    is on it when its rows and columns, as fractions of the whole, overlap."""
    rows, cols = grid
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    # row block i spans [i/rows, (i+1)/rows); column block j spans [j/cols, (j+1)/cols): compare in integers
    overlap = (i * cols < (j + 1 + width) * rows) & ((j - width) * rows < (i + 1) * cols)
    return np.ascontiguousarray(overlap)


def block_norms(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The Frobenius norm of every (bo, bi) block of a dense (out, in) weight, shape (out/bo, in/bi)."""
    bo, bi = block
    out, inp = weight.shape
    blocks = weight.detach().double().reshape(out // bo, bo, inp // bi, bi)
    return blocks.pow(2).sum(dim=(1, 3)).sqrt()


def prune_mask(weight: torch.Tensor, block: tuple[int, int], density: float) -> np.ndarray:
    """The `block_count(density)` blocks of `weight` with the largest norms (ties: the earlier block)."""
    norms = block_norms(weight, block)
    grid = tuple(norms.shape)
    order = np.argsort(-norms.flatten().cpu().numpy(), kind="stable")
    mask = np.zeros(grid[0] * grid[1], dtype=bool)
    mask[order[: block_count(density, grid)]] = True
    return mask.reshape(grid)


def mask_to_hex(mask: np.ndarray) -> str:
    return np.packbits(np.asarray(mask, dtype=bool).flatten()).tobytes().hex()


def hex_to_mask(text: str, grid: tuple[int, int]) -> np.ndarray:
    """The mask of `grid` that `mask_to_hex` wrote; ValueError when the text cannot be one."""
    total = grid[0] * grid[1]
    if not isinstance(text, str):
        raise ValueError(f"must be hex text, got {type(text).__name__}")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise ValueError("is not hex text") from None
    if len(data) != (total + 7) // 8:
        raise ValueError(
            f"holds {len(data)} bytes; a {grid[0]}x{grid[1]} block grid needs {(total + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[total:].any():
        raise ValueError("has bits set past the end of the block grid")
    return bits[:total].astype(bool).reshape(grid)


@functools.lru_cache(maxsize=64)
def layout_counts(text: str, grid: tuple[int, int]) -> tuple[int, int, int]:
    """(stored blocks, those of the fullest block-row, block-columns holding one) of the layout `text`, decoded
    once per layout: a space's legality and cost records ask for them for each of its configs, and decoding a
    32768-square W's 16x16-block layout 19,444 times took 45 s of `kt space`'s 50."""
    mask = hex_to_mask(text, grid)
    return int(mask.sum()), int(mask.sum(axis=1).max()), int(mask.any(axis=0).sum())


def bsr_index_arrays(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """crow_indices and col_indices (int64 numpy arrays) of the BSR layout with non-zero blocks `mask`. No torch:
    code that torch.compile traces reads them as constants (a torch op there would be traced, and `.tolist()`
    on its result would give symbolic integers)."""
    mask = np.asarray(mask, dtype=bool)
    crow = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    return crow.astype(np.int64), np.nonzero(mask)[1].astype(np.int64)


def bsr_indices(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """crow_indices and col_indices (int64 tensors) of the BSR layout with non-zero blocks `mask`."""
    import torch

    crow, cols = bsr_index_arrays(mask)
    return torch.from_numpy(crow), torch.from_numpy(cols)


def layout_mask(weight: torch.Tensor) -> np.ndarray:
    """The block mask of a torch sparse BSR tensor (its stored blocks, zero-valued or not)."""
    bo, bi = weight.values().shape[-2:]
    grid = (weight.shape[0] // bo, weight.shape[1] // bi)
    return indices_mask(weight.crow_indices().cpu().numpy(), weight.col_indices().cpu().numpy(), grid)


def indices_mask(crow: np.ndarray, cols: np.ndarray, grid: tuple[int, int], whose: str = "a") -> np.ndarray:
    """The block mask over `grid` of BSR indices (block-row offsets `crow`, block columns `cols`); ValueError
    where they are no pattern of it (`whose` grid, in the message). Unchecked, a column of -1 would mark the last
    block-column and a column past the grid or offsets past `cols` would raise numpy's own errors."""
    crow, cols = np.asarray(crow), np.asarray(cols)
    if (
        crow.ndim != 1
        or cols.ndim != 1
        or len(crow) != grid[0] + 1
        or crow[0] != 0
        or (np.diff(crow) < 0).any()
        or crow[-1] != len(cols)
        or (len(cols) and (cols.min() < 0 or cols.max() >= grid[1]))
    ):
        raise ValueError(
            f"not the BSR indices of a pattern of {whose} {grid[0]}x{grid[1]} block grid "
            f"(crow_indices: {grid[0] + 1} non-decreasing offsets from 0 to len(col_indices); col_indices: "
            f"block columns from 0 to {grid[1] - 1}); got {crow.size} offsets and {cols.size} columns"
        )
    mask = np.zeros(grid, dtype=bool)
    mask[np.repeat(np.arange(grid[0]), np.diff(crow)), cols] = True
    return mask


def describe(mask: np.ndarray) -> str:
    """`nnz/total blocks (density), k empty block-rows` in a few words."""
    mask = np.asarray(mask, dtype=bool)
    empty = int((~mask.any(axis=1)).sum())
    text = f"{int(mask.sum())}/{mask.size} blocks ({mask.mean():.1%})"
    return text + (f", {empty} empty block-rows" if empty else "")


def bsr_tensor(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int], check: bool = False
) -> torch.Tensor:
    """torch.sparse_bsr_tensor on values' device, without torch's "BSR support is in beta" warning (which it
    gives on every construction) or its "Sparse invariant checks are implicitly disabled" (torch 2.11 on the
    H200, 2026-12-04, once a process, with `check_invariants` given); `check` runs torch's invariant checks (a
    device sync: not in a hot path). kt builds crow and col from a checked pattern."""
    import torch

    device = values.device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_bsr_tensor(
            crow.to(device), col.to(device), values, size=tuple(size), check_invariants=check
        )
