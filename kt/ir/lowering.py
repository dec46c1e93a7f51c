"""Lowering passes: a LinearMap of structured factors to block-GEMM stages, with no permutation kernel left.

A stage is one launch of the block-GEMM family: for each block g and each row b,
    y[b, out_map(g, c)] = d[g*blk_out + c] * sum_t W[g, c, t] * x[b, in_map(g, t)]
where in_map and out_map are strided index maps (IndexMap) and d is an optional diagonal.

Passes, in the order `lower` runs them:
1. permutations into loads and stores: every Perm is composed into an index table; a Perm before the first block
   factor becomes its load map, a Perm after the last block factor becomes its store map, and a Perm between two
   block factors becomes the next stage's load map when that is strided, else the previous stage's store map (a
   forward Monarch's middle Perm fuses into the second stage's loads, and so does a square transposed
   Monarch's; a rectangular transposed Monarch's, whose next load is no strided map, into the first stage's
   stores);
2. diagonals into epilogues: a Diag right after a block factor scales that stage's output before the store;
3. each index table is recognised as a strided IndexMap (exactly, checked on every element), or lowering fails;
   a butterfly group's own map, where no permutation moves it, is read off the group (`_group_map`).

`group_butterfly` is the butterfly's own pass: it multiplies `levels` consecutive ButterflyFactors into one
ButterflyGroup, a block-diagonal stage in a strided order. How many levels per stage is a tuning choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kt.ir.factors import BlockDiag, ButterflyFactor, ButterflyGroup, Diag, Perm
from kt.ir.linear_map import LinearMap


class LoweringError(ValueError):
    """A map that this lowering cannot run without a separate permutation kernel."""


@dataclass(frozen=True)
class IndexMap:
    """Feature index of element t of block g: (g // inner) * outer + (g % inner) * inner_stride + t * elem."""

    inner: int = 1
    outer: int = 0
    inner_stride: int = 0
    elem: int = 1

    def table(self, nblocks: int, size: int) -> torch.Tensor:
        g = torch.arange(nblocks)[:, None]
        t = torch.arange(size)[None, :]
        return (g // self.inner) * self.outer + (g % self.inner) * self.inner_stride + t * self.elem

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.inner, self.outer, self.inner_stride, self.elem)

    @classmethod
    def fit(cls, table: torch.Tensor) -> IndexMap:
        """The strided map equal to `table` (nblocks, size) on every element; LoweringError when none is."""
        nblocks, size = table.shape
        elem = int(table[0, 1] - table[0, 0]) if size > 1 else 1
        base = table[:, 0]
        inner_stride = int(base[1] - base[0]) if nblocks > 1 else 0
        steps = base - base[0] - torch.arange(nblocks) * inner_stride
        off = torch.nonzero(steps).flatten()
        inner = int(off[0]) if len(off) else max(nblocks, 1)
        outer = int(base[inner] - base[0]) if inner < nblocks else inner * inner_stride
        candidate = cls(inner, outer, inner_stride, elem)
        if int(base[0]) != 0 or not torch.equal(candidate.table(nblocks, size), table):
            raise LoweringError(f"the index table {table.tolist()[:2]}... is not a strided map")
        return candidate


@dataclass(frozen=True)
class Stage:
    """One block-GEMM launch; `factor` is the block factor it runs (its weights), maps say where data lives."""

    factor: BlockDiag | ButterflyGroup
    in_map: IndexMap
    out_map: IndexMap
    in_features: int  # of the tensor it reads
    out_features: int  # of the tensor it writes
    diag: Diag | None = None

    @property
    def nblocks(self) -> int:
        return self.factor.nblocks

    @property
    def blk_in(self) -> int:
        f = self.factor
        return f.in_blk if isinstance(f, BlockDiag) else 1 << f.levels

    @property
    def blk_out(self) -> int:
        f = self.factor
        return f.out_blk if isinstance(f, BlockDiag) else 1 << f.levels

    def blocks(self, weights) -> torch.Tensor:
        """(nblocks, blk_out, blk_in): what the kernel multiplies by (the reference for the stage's weights)."""
        return self.factor.blocks(weights)

    def apply(self, x: torch.Tensor, weights) -> torch.Tensor:
        """The stage in plain torch (float64 when x is): gather, batched matmul, diagonal, scatter. Real x and
        complex weights (a real-input FFT's first stage) compute in the complex dtype: cast to x's, the weights'
        imaginary parts were dropped."""
        blocks = self.blocks(weights)
        dtype = torch.promote_types(x.dtype, blocks.dtype)
        x, blocks = x.to(dtype), blocks.to(dtype)
        gathered = x[:, self.in_map.table(self.nblocks, self.blk_in)]  # (B, g, t)
        z = torch.einsum("bgt,gct->bgc", gathered, blocks)
        if self.diag is not None:
            z = z * weights[self.diag.weight].to(dtype).view(self.nblocks, self.blk_out)
        y = torch.zeros(x.shape[0], self.out_features, dtype=dtype, device=x.device)
        y[:, self.out_map.table(self.nblocks, self.blk_out)] = z
        return y

    def __str__(self) -> str:
        d = f" * {self.diag}" if self.diag else ""
        return f"stage[{self.factor}{d} load{self.in_map.astuple()} store{self.out_map.astuple()}]"


def _natural(factor: BlockDiag | ButterflyGroup, side: str) -> torch.Tensor:
    if isinstance(factor, ButterflyGroup):
        return factor.positions()
    size = factor.in_blk if side == "in" else factor.out_blk
    return torch.arange(factor.nblocks * size).view(factor.nblocks, size)


def _group_map(group: ButterflyGroup) -> IndexMap:
    """`IndexMap.fit(group.positions())`, read off the group's definition without the table: block g holds
    features ((g >> f) << (f + L)) | (g & (2**f - 1)) | (t << f) for first level f and L levels, the map
    (inner 2**f, outer 2**(f + L), inner stride 1, elem 2**f) in the canonical form `fit` gives (f = 0: one
    run of blocks 2**L apart; one block: no stride). Each table holds every feature, and fitting a butterfly's
    over n = 2**24 took 40 of `kt space`'s 43 s; tests/test_ir_structured.py checks this against `fit` for
    every group up to n = 2**12."""
    first, levels, nblocks = group.first, group.levels, group.nblocks
    elem = 1 << first
    if nblocks == 1:
        return IndexMap(1, 0, 0, elem)
    if first == 0:
        return IndexMap(nblocks, nblocks << levels, 1 << levels, elem)
    inner = min(1 << first, nblocks)
    return IndexMap(inner, 1 << (first + levels) if inner < nblocks else inner, 1, elem)


def _natural_map(factor: BlockDiag | ButterflyGroup, side: str) -> IndexMap:
    """The map of `_natural(factor, side)`, where no permutation moves it."""
    if isinstance(factor, ButterflyGroup):
        return _group_map(factor)
    return IndexMap.fit(_natural(factor, side))


def _is_strided(table: torch.Tensor) -> bool:
    try:
        IndexMap.fit(table)
    except LoweringError:
        return False
    return True


def _inverse(source: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(source)
    inverse[source] = torch.arange(len(source))
    return inverse


def _between(
    source: torch.Tensor, load: torch.Tensor, store: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(load table of the next stage, store table of the previous one) with the permutation `source`
    (y = x[source]) between them fused into one of the two: the load when that stays strided, else the store."""
    if _is_strided(source[load]):
        return source[load], store
    moved = _inverse(source)[store]  # the previous stage writes each result where the permutation puts it
    if _is_strided(moved):
        return load, moved
    raise LoweringError(
        "the permutation between two block factors is a strided map neither on the next one's loads "
        f"({source[load].tolist()[:2]}...) nor on the previous one's stores ({moved.tolist()[:2]}...)"
    )


def lower(linear_map: LinearMap) -> list[Stage]:
    """The stages that run `linear_map` (see the module docstring); LoweringError for what they cannot run."""
    stages: list[dict] = []
    pending: torch.Tensor | None = None  # source index of each position, for Perms not yet fused
    width = linear_map.in_features  # features of the tensor the next stage reads
    for factor in linear_map.factors:
        if isinstance(factor, Perm):
            source = factor.source_index()
            pending = source if pending is None else pending[source]
        elif isinstance(factor, (BlockDiag, ButterflyGroup)):
            # each table is fitted once it is final and dropped: a table holds every feature, and keeping them
            # all to the end held two per stage (a butterfly over n = 2**24: 24 stages, 6 GiB); where no
            # permutation moves a factor's features, its map is read off the factor (`_natural_map`)
            if pending is None:
                in_map = _natural_map(factor, "in")
                if stages:
                    stages[-1]["out"] = _natural_map(stages[-1]["factor"], "out")
            elif stages:
                previous = stages[-1]
                table, store = _between(pending, _natural(factor, "in"), _natural(previous["factor"], "out"))
                previous["out"], in_map = IndexMap.fit(store), IndexMap.fit(table)
            else:
                in_map = IndexMap.fit(pending[_natural(factor, "in")])
            pending = None
            stages.append({"factor": factor, "in": in_map, "out": None, "diag": None, "in_features": width})
            width = factor.out_features
        elif isinstance(factor, Diag):
            if not stages or pending is not None or stages[-1]["diag"] is not None:
                raise LoweringError(f"{factor} must follow a block factor directly to fuse into its epilogue")
            if isinstance(stages[-1]["factor"], ButterflyGroup):  # the epilogue indexes it in BlockDiag order
                raise LoweringError(
                    f"{factor} after a butterfly group has no epilogue lowering (its outputs lie apart)"
                )
            stages[-1]["diag"] = factor
        elif isinstance(factor, ButterflyFactor):
            raise LoweringError(f"{factor}: group butterfly levels with group_butterfly() first")
        else:
            raise LoweringError(f"{factor} has no block-GEMM lowering")
    if not stages:
        raise LoweringError("the map has no block factor to run")
    last = stages[-1]
    if pending is None:
        last["out"] = _natural_map(last["factor"], "out")
    else:  # trailing Perms: store each result where the permutation puts it
        last["out"] = IndexMap.fit(_inverse(pending)[_natural(last["factor"], "out")])
    return [
        Stage(
            s["factor"],
            s["in"],
            s["out"],
            s["in_features"],
            s["factor"].out_features,
            s["diag"],
        )
        for s in stages
    ]


def group_butterfly(linear_map: LinearMap, levels: int) -> LinearMap:
    """Multiply each run of `levels` consecutive ButterflyFactors into one ButterflyGroup (the last run may be
    shorter); other factors are kept."""
    if levels < 1:
        raise ValueError(f"levels per stage must be >= 1, got {levels}")
    out: list = []
    run: list[ButterflyFactor] = []

    def flush():
        if run:
            first = run[0]
            transposed = first.transposed
            low = min(f.level for f in run)
            out.append(ButterflyGroup(first.n, low, len(run), first.weight, transposed))
            run.clear()

    for factor in linear_map.factors:
        if isinstance(factor, ButterflyFactor):
            contiguous = run and factor.weight == run[-1].weight and factor.transposed == run[-1].transposed
            step = -1 if factor.transposed else 1
            if run and not (contiguous and factor.level == run[-1].level + step):
                flush()
            run.append(factor)
            if len(run) == levels:
                flush()
        else:
            flush()
            out.append(factor)
    flush()
    return LinearMap(tuple(out))


def apply_stages(stages: list[Stage], x: torch.Tensor, weights) -> torch.Tensor:
    """Run the stages in plain torch: what the block-GEMM kernels compute, for tests of the passes."""
    for stage in stages:
        x = stage.apply(x, weights)
    return x
