"""Block-sparse weights and factor chains: the BSR factor, the matrix-chain order of a low-rank chain and its map.

- `BSR`: y = x @ W.T with W (out, in) a torch sparse BSR tensor whose non-zero block pattern is fixed by the
  factor (the hex text of a kt.sparsity mask), so a problem's pattern travels in its key.
- `chain_order`: the classic matrix-chain dynamic program for `x @ F1 @ F2 @ ... @ Fk`, with the tie-break and
  the evaluation order of `torch.linalg.multi_dot`, so a kernel plan built from it does the same products.
- `chain_map`: the LinearMap of such a chain, made of Dense factors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch

from kt.ir.factors import Dense, Factor, _dense_dtype, _init_features
from kt.ir.linear_map import LinearMap
from kt.sparsity import hex_to_mask, layout_counts, layout_mask, mask_to_hex


def _positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _is_block(block) -> bool:
    """Whether `block` is two positive integers (bo, bi), a tuple or a list."""
    return isinstance(block, (tuple, list)) and len(block) == 2 and all(_positive_int(b) for b in block)


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class BSR(Factor):
    """Block-sparse: y = x @ W.T for a weight W (out, in) held as a torch sparse BSR tensor with blocks (bo, bi).

    `out`, `inp` and `block` describe the stored tensor (`W.to_sparse_bsr(block)`); `layout` is the hex text
    (kt.sparsity.mask_to_hex) of its non-zero blocks over the grid (out/bo, inp/bi), normalised on construction.
    `transposed` reads the same tensor as W.T, the map inp <- out: the backward pass's dx = dy @ W needs no copy.
    """

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    out: int
    inp: int
    block: tuple[int, int]
    layout: str
    weight: str = "w"
    transposed: bool = False

    def __post_init__(self):
        if not (_positive_int(self.out) and _positive_int(self.inp)):
            raise ValueError(f"BSR shape ({self.out!r}, {self.inp!r}): both must be positive integers")
        if not _is_block(self.block):
            raise ValueError(f"BSR block={self.block!r}: must be two positive integers (bo, bi)")
        bo, bi = (int(b) for b in self.block)
        if self.out % bo or self.inp % bi:
            raise ValueError(f"BSR block {bo}x{bi} does not divide the weight shape ({self.out}, {self.inp})")
        object.__setattr__(self, "block", (bo, bi))
        try:
            mask = hex_to_mask(self.layout, self.grid)
        except (ValueError, TypeError) as err:
            raise ValueError(f"BSR layout {_short(str(self.layout))!r} {err}") from None
        object.__setattr__(self, "layout", mask_to_hex(mask))
        if self.transposed:
            _init_features(self, self.out, self.inp)
        else:
            _init_features(self, self.inp, self.out)

    @classmethod
    def from_mask(cls, mask: np.ndarray, block: tuple[int, int], weight: str = "w") -> BSR:
        """The factor of a (out/bo, in/bi) block mask."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"BSR mask has {mask.ndim} dims, expected a 2-D block grid")
        if not _is_block(block):
            raise ValueError(f"BSR block={block!r}: must be two positive integers (bo, bi)")
        bo, bi = (int(b) for b in block)
        return cls(mask.shape[0] * bo, mask.shape[1] * bi, (bo, bi), mask_to_hex(mask), weight)

    @property
    def grid(self) -> tuple[int, int]:
        """The block grid (out/bo, inp/bi) of the stored weight."""
        return self.out // self.block[0], self.inp // self.block[1]

    def mask(self) -> np.ndarray:
        """The (out/bo, inp/bi) boolean mask of the stored weight's non-zero blocks (a fresh array)."""
        return hex_to_mask(self.layout, self.grid)

    @property
    def nnz(self) -> int:
        """The number of stored blocks."""
        return layout_counts(self.layout, self.grid)[0]

    def check_weight(self, w: torch.Tensor) -> None:
        """ValueError unless `w` is a sparse BSR (out, inp) tensor with blocks `block` stored exactly at `mask()`."""
        name = self.weight
        if not isinstance(w, torch.Tensor) or w.layout != torch.sparse_bsr:
            layout = w.layout if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(
                f"weight {name!r} has layout {layout}, expected torch.sparse_bsr (W.to_sparse_bsr({self.block}))"
            )
        if tuple(w.shape) != (self.out, self.inp):
            raise ValueError(f"weight {name!r} has shape {tuple(w.shape)}, expected {(self.out, self.inp)}")
        blocksize = tuple(w.values().shape[-2:])
        if blocksize != self.block:
            raise ValueError(f"weight {name!r} has blocksize {blocksize}, expected {self.block}")
        try:
            stored = layout_mask(w)
        except ValueError as err:
            raise ValueError(f"weight {name!r}: {err}") from None
        expected = self.mask()
        if w.values().shape[0] != int(expected.sum()) or not np.array_equal(stored, expected):
            differ = int((stored != expected).sum())
            raise ValueError(
                f"weight {name!r} stores {w.values().shape[0]} blocks in a pattern other than the factor's layout "
                f"({int(expected.sum())} blocks; {differ} grid positions differ)"
            )

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = weights[self.weight]
        self.check_weight(w)
        dtype, _ = _dense_dtype(weights)
        dense = w.to_dense().to(dtype)
        return dense.T if self.transposed else dense

    def transpose(self) -> BSR:
        return replace(self, transposed=not self.transposed)

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        mark = "ᵀ" if self.transposed else ""
        bo, bi = self.block
        total = self.grid[0] * self.grid[1]
        return f"BSR[{self.weight}{mark}]({self.out_features}<-{self.in_features}, {bo}x{bi} blocks, {self.nnz}/{total})"


# ---- matrix chains ----------------------------------------------------------------------------------------------

# A chain tree: a matrix index, or a pair (left, right) of trees multiplied as left @ right.
ChainTree = int | tuple["ChainTree", "ChainTree"]


class ChainStep(NamedTuple):
    """One product `left @ right` of a chain, giving a (rows, cols) matrix.

    An operand is ("m", i) for the chain's matrix i or ("s", k) for the result of step k (an earlier step).
    """

    left: tuple[str, int]
    right: tuple[str, int]
    shape: tuple[int, int]


@dataclass(frozen=True)
class ChainOrder:
    """The evaluation order of a matrix chain with shapes (dims[0], dims[1]), (dims[1], dims[2]), ...

    `cost` is the number of scalar multiplications; `tree` the parenthesisation as nested pairs of matrix
    indices, e.g. ((0, 1), 2) for (M0 @ M1) @ M2, or just 0 for a one-matrix chain.
    """

    dims: tuple[int, ...]
    cost: int
    tree: ChainTree

    def steps(self) -> list[ChainStep]:
        """The products in execution order; each names its operands as ("m", i) or ("s", k) (see ChainStep).

        The order is the one torch.linalg.multi_dot runs: a post-order walk of `tree` that evaluates the right
        operand of a product before the left one, so a trace of multi_dot's mm calls lines up with these steps.
        """
        steps: list[ChainStep] = []

        def walk(tree: ChainTree) -> tuple[tuple[str, int], int, int]:
            if isinstance(tree, int):
                return ("m", tree), self.dims[tree], self.dims[tree + 1]
            right, _, cols = walk(tree[1])
            left, rows, _ = walk(tree[0])
            steps.append(ChainStep(left, right, (rows, cols)))
            return ("s", len(steps) - 1), rows, cols

        walk(self.tree)
        return steps


def _check_dims(dims: Sequence[int], what: str) -> tuple[int, ...]:
    dims = tuple(dims)
    if len(dims) < 2:
        raise ValueError(f"{what} dims={dims!r}: need at least two dims (one matrix)")
    if not all(_positive_int(d) for d in dims):
        raise ValueError(f"{what} dims={dims!r}: every dim must be a positive integer")
    return tuple(int(d) for d in dims)


def chain_order(dims: Sequence[int]) -> ChainOrder:
    """The cheapest order to multiply matrices of shapes (dims[0], dims[1]), (dims[1], dims[2]), ...

    The classic O(n^3) dynamic program, tie-broken exactly like torch.linalg.multi_dot (ATen's
    matrix_chain_order): for each sub-chain i..j the split k runs from i to j-1 and replaces the best so far only
    when strictly cheaper. Like multi_dot, a three-matrix chain compares its two orders directly and takes
    (M0 @ M1) @ M2 on a tie (the dynamic program alone would take M0 @ (M1 @ M2)).
    """
    p = _check_dims(dims, "chain_order")
    n = len(p) - 1
    if n == 3:
        a, b, c, d = p
        left, right = a * c * (b + d), b * d * (a + c)
        if left > right:
            return ChainOrder(p, right, (0, (1, 2)))
        return ChainOrder(p, left, ((0, 1), 2))
    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            best = None
            for k in range(i, j):
                q = cost[i][k] + cost[k + 1][j] + p[i] * p[k + 1] * p[j + 1]
                if best is None or q < best:
                    best, split[i][j] = q, k
            cost[i][j] = best

    def tree(i: int, j: int) -> ChainTree:
        if i == j:
            return i
        k = split[i][j]
        return (tree(i, k), tree(k + 1, j))

    return ChainOrder(p, cost[0][n - 1], tree(0, n - 1))


def chain_map(dims: Sequence[int], names: Sequence[str] | None = None) -> LinearMap:
    """The map y = x @ F1 @ F2 @ ... @ Fk with Fi of shape (dims[i-1], dims[i]), as Dense "in_out" factors.

    `dims` are the feature dims d0..dk (no batch); factor i is held in the weight `names[i]` (default f"f{i+1}").
    """
    d = _check_dims(dims, "chain_map")
    k = len(d) - 1
    if names is None:
        names = [f"f{i + 1}" for i in range(k)]
    names = list(names)
    if len(names) != k:
        raise ValueError(f"chain_map names: got {len(names)} for a chain of {k} factors")
    if len(set(names)) != k:
        raise ValueError(f"chain_map names {names!r}: must be distinct")
    factors = tuple(
        Dense(in_features=d[i], out_features=d[i + 1], weight=names[i], storage="in_out") for i in range(k)
    )
    return LinearMap(factors)
