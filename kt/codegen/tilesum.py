"""The tile-sum families: block-sparse, low-rank chains and sums of them, from one template (tilesum.py.j2).

Every launch is one tile kernel whose output tile accumulates over a list of sources: dense products A @ B (a
chain's steps, a sum's low-rank terms) and the non-zero blocks of a BSR weight, walked block-row by block-row
from its crow/col indices, so an empty block-row costs nothing and writes exact zeros. A two-factor chain can
instead run as one fused kernel that keeps x @ F1 on chip, and a sum can run as one accumulation over all its
terms; both are structure choices (`fused`) the tuner weighs against the separate launches. A config is a
schedule: tiles, the GROUP_M tile order, SPLIT (programs sharing one tile's steps, or for the fused chain its
column tiles), warps and pipeline depth. None of it changes what is computed.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from kt.axes import TILE_AXES, TILE_FIELDS
from kt.codegen.family import StructuredFamily, gemm_stage
from kt.codegen.gemm import (
    TWO_WARP_K_LIMITS,
    accumulator_reason,
    config_from_mapping,
    deep_k_reason,
    k_step_registers,
    kept_stages,
    output_tile_bytes,
    padded,
    two_warp_k_reason,
    wgmma_build,
)
from kt.device import DeviceProfile
from kt.dtypes import itemsize
from kt.ir.problems import BlockSparseProblem, ChainProblem, SumProblem
from kt.ir.sparse import chain_order
from kt.sparsity import layout_counts

AXES = TILE_AXES  # kt.axes holds every family's axes
STRUCTURE_AXES = ("fused",)

TileSumProblem = BlockSparseProblem | ChainProblem | SumProblem


@dataclass(frozen=True, order=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 1
    num_warps: int = 4
    num_stages: int = 3
    split: int = 1
    fused: int = 0  # lowrank: one kernel keeps x @ F1 on chip; sum: one accumulation over every term

    def structure(self) -> dict[str, int]:
        return {"fused": self.fused}

    def key(self) -> str:
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}g{self.group_m}w{self.num_warps}s{self.num_stages}"
            f"x{self.split}{'-fused' if self.fused else ''}"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileConfig:
        return config_from_mapping(cls, data, TILE_FIELDS)

    def __str__(self) -> str:
        return " ".join(
            f"{k.upper() if k.startswith(('block', 'group', 'split')) else k}={v}"
            for k, v in self.to_dict().items()
        )


# -- launches: what a config runs, as GEMM-shaped steps --------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One kernel launch, described as the GEMM it resembles: (m, n, k) with k the depth each output element
    sums over (for a BSR source, the non-zero blocks' columns averaged over block-rows)."""

    text: str
    m: int
    n: int
    k: int
    a_cols: int | None = None  # the columns of x it reads, where not k (a BSR source: every block's columns)
    a_ld: int | None = None  # A's row stride in elements, where not a_cols (a BSR source reads x's own rows)


def _bsr_depth(term: BlockSparseProblem) -> int:
    """The mean depth an output element of the block-sparse product sums over."""
    return max(1, round(term.nnz * term.block[0] * term.block[1] / term.out_features))


def _fullest_row(term: BlockSparseProblem) -> int:
    """The stored blocks of the term's fullest block-row (the layout decoded once, not for each config)."""
    return layout_counts(term.layout, term.grid)[1]


def _bsr_width(term: BlockSparseProblem) -> int:
    """The columns of x the block-sparse product reads: those of every block-column holding a stored block."""
    return layout_counts(term.layout, term.grid)[2] * term.block[1]


def _chain_launches(rows: int, dims: tuple[int, ...], last: str) -> list[Launch]:
    """The products of x (rows, d0) @ F1 @ ... in the matrix-chain program's order."""
    return list(_chain_program(rows, tuple(dims), last))


@functools.lru_cache(maxsize=256)
def _chain_program(rows: int, dims: tuple[int, ...], last: str) -> tuple[Launch, ...]:
    """`_chain_launches`, worked out once per chain: legality and the cost records ask for a space's every config
    (a sum of five low-rank chains: 209,290 chain orders for 11,616 configs)."""
    shapes = [(rows, dims[0]), *zip(dims, dims[1:])]
    launches = []
    for index, (left, right) in enumerate(_steps(chain_order((rows, *dims)))):
        m = shapes[left[1]][0] if left[0] == "m" else launches[left[1]].m
        k = shapes[left[1]][1] if left[0] == "m" else launches[left[1]].n
        n = shapes[right[1]][1] if right[0] == "m" else launches[right[1]].n
        text = f"{_operand(left)} @ {_operand(right)}"
        text = f"s{index} = {text}" if index < len(shapes) - 2 else f"{last} = {text}"
        launches.append(Launch(text, m, n, k))
    return tuple(launches)


def _operand(operand: tuple[str, int]) -> str:
    kind, index = operand
    return ("x" if index == 0 else f"f{index}") if kind == "m" else f"s{index}"


def _steps(order) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """The chain program's steps as ((kind, index), (kind, index)) pairs: ("m", i) matrix i, ("s", j) step j."""
    return [(tuple(left), tuple(right)) for left, right, *_ in order.steps()]


def launches(problem: TileSumProblem, config: TileConfig) -> list[Launch]:
    """The launches `config` runs on `problem`, in order."""
    return list(_launches(problem, bool(config.fused)))


@functools.lru_cache(maxsize=8)  # a block-sparse problem holds its layout (megabytes at most): a few kept
def _launches(problem: TileSumProblem, fused: bool) -> tuple[Launch, ...]:
    """`launches`: a function of the problem and whether the config is fused alone, so worked out once for the
    thousands of configs legality judges (0.36 s of the 0.97 s examples/sum.yaml's legality took under cProfile)."""
    return tuple(_launches_of(problem, fused))


def _launches_of(problem: TileSumProblem, fused: bool) -> list[Launch]:
    rows = problem.rows
    if isinstance(problem, BlockSparseProblem):
        return [
            Launch(
                "x @ W.T (non-zero blocks)",
                rows,
                problem.out_features,
                _bsr_depth(problem),
                _bsr_width(problem),
                problem.in_features,
            )
        ]
    if isinstance(problem, ChainProblem):
        if fused:
            d0, r, d2 = problem.dims
            return [
                Launch("one kernel: t = x @ f1, kept on chip", rows, r, d0),
                Launch("then y = t @ f2", rows, d2, r),
            ]
        return _chain_launches(rows, problem.dims, "y")
    out = []
    fused_depth = fused_cols = 0  # the accumulation's depth, and the columns of its A it reads from DRAM
    for i, term in enumerate(problem.terms):
        if isinstance(term, BlockSparseProblem):
            depth = _bsr_depth(term)
            if not fused:
                out.append(
                    Launch(
                        f"term {i}: x @ W{i}.T (non-zero blocks)",
                        rows,
                        term.out_features,
                        depth,
                        _bsr_width(term),
                        term.in_features,
                    )
                )
            fused_cols += _bsr_width(term)  # x's columns its blocks meet
        elif fused:
            out += _chain_launches(rows, term.dims[:-1], f"term {i}: u{i}")
            depth = term.dims[-2]
            fused_cols += depth
        else:
            out += _chain_launches(rows, term.dims, f"term {i}: y{i}")
            depth = 0
        fused_depth += depth
    if fused:
        # its A is x (every column a block-sparse term's blocks meet) and each u_i: counted as k columns alone,
        # x's bytes were left out and the fused sum's roofline lay below its DRAM floor
        out.append(
            Launch("y = sum of terms (one accumulation)", rows, problem.out_features, fused_depth, fused_cols)
        )
    return out


# -- legality ------------------------------------------------------------------------------------------------


def _bsr_terms(problem: TileSumProblem) -> list[BlockSparseProblem]:
    terms = problem.terms if isinstance(problem, SumProblem) else (problem,)
    return [t for t in terms if isinstance(t, BlockSparseProblem)]


def resources(problem: TileSumProblem, config: TileConfig, device: DeviceProfile) -> tuple[int, int]:
    """Shared-memory bytes a build allocates at most, and fp32 accumulator registers per thread of a program.

    Pipelined tiles as the dense GEMM's builds keep them (`kt.codegen.gemm.built_shared_memory`): every stage
    with wgmma, stages - 1 (at least one) with mma.sync and FMA dots, where sampled Triton 3.9 builds kept at
    most that many (block-sparse float16 m256n32k128 w8 s3 on the A100: 73736 bytes built, 221184 by every
    stage's count; float32 low-rank m128n32k32 w8 s3: 40960, two stages). The output tile's layout conversion
    before the store reuses them (`output_tile_bytes`; fp32 for a split's workspace): low-rank bfloat16
    m256n64k16 w8 s2 split 2 on the H100 built 65536 bytes where its pipelined tiles held 20480."""
    size = itemsize(problem.dtype)
    threads = config.num_warps * device.warp_size
    stages = kept_stages(config.num_stages, wgmma_build(problem, config, device))
    if config.fused and isinstance(problem, ChainProblem):
        # Two pipelined loops: x's and F1's tiles into t (block_m, rank), then F2's (rank, block_n) tiles, each
        # with its own buffers. u, t in the stored dtype, sits in shared memory beside either loop's buffers, and
        # the output tile's conversion beside the second's. Sampled sm_80 and sm_90 builds (Triton 3.9,
        # 2026-12-07: 30 random legal configs, ranks 32-256, every dtype) never allocated more, and 14 of them
        # exactly this: float16 rank 256 m64n128k16 w8 s4 on the H100 built 311296 bytes, where one F2 tile
        # after the first loop's stages said 106496 and the space held it.
        rank = padded(problem.dims[1])
        u = config.block_m * rank * size
        first = stages * (config.block_m + rank) * config.block_k * size + u
        out = output_tile_bytes(config.block_m, config.block_n, problem.dtype, False)
        second = stages * rank * config.block_n * size + u + out
        # registers: t and the output tile counted at once. A sampled 16-bit rank 256 build of each did not
        # spill, but counting t, then the tile beside u, admitted 350 more 16-bit configs per space, of which
        # 3 of 46 sampled sm_80 and sm_90 builds spilled (2026-12-07)
        return max(first, second), config.block_m * (rank + config.block_n) // threads
    smem = stages * (config.block_m + config.block_n) * config.block_k * size
    out = output_tile_bytes(config.block_m, config.block_n, problem.dtype, config.split > 1)
    return max(smem, out), config.block_m * config.block_n // threads


MAX_GRID_X = 2**31 - 1  # CUDA's gridDim.x (the interpreter has no such limit)


def programs(problem: TileSumProblem, config: TileConfig) -> int:
    """The most programs on axis 0 of any of `config`'s launches on `problem`: a row tile times the column
    tiles, which a block-sparse source tiles block-row by block-row (out // height blocks of
    ceil(height / block_n) tiles each); a fused chain's programs are its row tiles."""
    rows = -(-problem.rows // config.block_m)
    if config.fused and isinstance(problem, ChainProblem):
        return rows
    heights = [t.block[0] for t in _bsr_terms(problem)]
    most = 0
    for launch in launches(problem, config):
        columns = [-(-launch.n // config.block_n)]
        columns += [(launch.n // h) * -(-h // config.block_n) for h in heights if launch.n % h == 0]
        most = max(most, rows * max(columns))
    return most


# `two_warp_k_reason`'s limits for a sum's fused accumulation, whose loops over every term's sources spilled at
# lower counts than a single source's on sm_80: from 176 (m128n16k128 w2, 32 + 144;
# benchmarks/two_warp_k_builds.py); sm_90's no higher than a single source's
FUSED_SUM_TWO_WARP_K_LIMITS = {90: 184, 80: 168}
FUSED_FMA_W2 = 2048  # the W2 tile (rank x block_n) of a fused float32 FMA chain whose builds did not spill


def illegal_reason(problem: TileSumProblem, config: TileConfig, device: DeviceProfile) -> str | None:
    """Why `config` cannot (or cannot sensibly) run `problem` on `device`, or None when it can."""
    if config.block_m > padded(problem.rows):
        return "tile larger than the padded problem"
    steps = launches(problem, config)
    if config.fused and isinstance(problem, ChainProblem):
        d0, _, d2 = problem.dims
        if config.group_m != 1:
            return "tile choices unused by the fused kernel"
        if config.block_k > padded(d0) or config.block_n > padded(d2):
            return "tile larger than the padded problem"
        if config.split > -(-d2 // config.block_n):
            return "more column splits than column tiles"
        # Without tensor cores the second dot, t (block_m, rank) @ W2 (rank, block_n), runs as FMAs on operands
        # held in registers: sampled sm_80 and sm_90 builds of rank 64 spilled at all 255 registers with
        # block_n 64 and 128 (6 configs, 2 to 8 warps), none with 16 or 32 (6 configs).
        rank = padded(problem.dims[1])
        if (
            problem.dtype == "float32"
            and problem.precision == "ieee"
            and rank * config.block_n > FUSED_FMA_W2
        ):
            return f"rank x block_n over {FUSED_FMA_W2} in a fused FMA chain (its second dot spills)"
    else:
        heights = [t.block[0] for t in _bsr_terms(problem)]
        widest = min([padded(h) for h in heights] + [padded(max(s.n for s in steps))])
        # a BSR launch steps through one stored block's columns at a time (KSTEPS per block), so a block_k past
        # the padded block width only masks: its depth (the blocks' mean) does not widen the step. Such configs
        # did 2 to 8 times the dots' work, priced as fewer full steps of the mean depth (16x16 blocks: block_k
        # 32 predicted as fast as 16, and 23 of the analytic model's top 50)
        deepest = max(
            [padded(t.block[1]) for t in _bsr_terms(problem)]
            + [padded(s.k) for s in steps if s.k and s.a_cols is None]
        )
        if config.block_n > widest or config.block_k > deepest:
            return "tile larger than the padded problem"
        # a BSR source's run is its block-row's blocks times the steps per block: the fullest block-row's, not
        # the blocks' mean depth (a skewed pattern lost exactly the splits that even out its load)
        runs = [-(-s.k // config.block_k) for s in steps] + [
            _fullest_row(t) * -(-t.block[1] // config.block_k) for t in _bsr_terms(problem)
        ]
        if config.split > 1 and config.split > max(runs):
            return "more splits than steps"
    if programs(problem, config) > MAX_GRID_X:
        return f"a launch grid over CUDA's {MAX_GRID_X} programs on its x axis"
    smem, acc = resources(problem, config, device)
    if smem > device.smem_per_block:
        return f"shared memory over {device.smem_limit_text}"
    fused_chain = config.fused and isinstance(problem, ChainProblem)  # two dots: its own accumulator count
    fused_sum = config.fused and isinstance(problem, SumProblem)
    # a K step's tiles: x's and W1's (block_k x rank) in a fused chain, else a source's and the weight's
    cols = padded(problem.dims[1]) if fused_chain else config.block_n
    threads = config.num_warps * device.warp_size
    operands = k_step_registers(problem.dtype, config.block_m, cols, config.block_k, threads)
    return (
        accumulator_reason(acc, device, problem.dtype, problem.precision, config.num_warps, config.block_k)
        or (None if fused_chain else deep_k_reason(problem, config, device, acc))
        or two_warp_k_reason(
            problem,
            device,
            config.num_warps,
            config.block_k,
            acc,
            operands,
            limits=FUSED_SUM_TWO_WARP_K_LIMITS if fused_sum else TWO_WARP_K_LIMITS,
            what="a two-warp fused sum" if fused_sum else "a two-warp program",
        )
    )


# -- the family ----------------------------------------------------------------------------------------------


def crop_blocksparse(problem: BlockSparseProblem) -> BlockSparseProblem:
    """A few block-rows and block-columns of the pattern with its block size: an empty block-row (when the
    pattern has one), the fullest, and the next; at most four block-columns, those the kept rows use first."""
    from kt.sparsity import mask_to_hex

    mask = problem.mask()
    counts = mask.sum(axis=1)
    picks = [int(np.argmax(counts))]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        picks.append(int(empty[0]))
    for row in range(mask.shape[0]):
        if len(picks) >= 3:
            break
        if row not in picks:
            picks.append(row)
    sub = mask[sorted(picks)]
    used = list(np.flatnonzero(sub.any(axis=0)))[:4]
    spare = [c for c in range(mask.shape[1]) if c not in used]
    cols = sorted(used + spare[: max(0, min(4, mask.shape[1]) - len(used))])
    sub = sub[:, cols]
    bo, bi = problem.block
    return BlockSparseProblem(
        problem.rows,
        len(cols) * bi,
        len(picks) * bo,
        problem.block,
        mask_to_hex(sub),
        problem.dtype,
        problem.precision,
    )


class TileSumFamily(StructuredFamily):
    """The family of one problem type (blocksparse, lowrank or sum); the three share the template and config."""

    template = "tilesum.py.j2"
    axes = AXES
    config_type = TileConfig

    illegal_reason = staticmethod(illegal_reason)
    resources = staticmethod(resources)

    launch_legend = "each as the GEMM it resembles, (m x k) @ (k x n)"

    def launch_texts(self, problem: TileSumProblem, structure: dict[str, int]) -> list[str]:
        """What each launch of a structure choice runs, for `kt show`."""
        config = TileConfig(16, 16, 16, **structure)
        return [
            f"{launch.text}: ({launch.m} x {launch.k}) @ ({launch.k} x {launch.n})"
            for launch in launches(problem, config)
        ]

    def same_program(self, problem: TileSumProblem, config: TileConfig) -> tuple[TileConfig, tuple[int, ...]]:
        """What `config`'s launches run on `problem`, tile for tile (kt.codegen.gemm's `same_program`): every
        launch orders its output tiles in groups of group_m row-tiles (tilesum.py.j2), so every group_m at or
        above a launch's row-tiles gives it one order. Configs with the same answer are one program."""
        orders = tuple(
            min(config.group_m, -(-launch.m // config.block_m)) for launch in launches(problem, config)
        )
        return TileConfig(**{**asdict(config), "group_m": 1}), orders

    def tile_of(self, problem: TileSumProblem, config: TileConfig) -> TileConfig:
        """`config` without its group_m, which the cost model cannot rank within a tile (each launch is priced as
        the GEMM it resembles, and the forests were fitted on group_m 8 alone), as kt.codegen.gemm's `tile_of`.
        A guided tune's first round takes one config per tile: the H200's quick tunes (2026-12-04) spent their
        first round's measurements on group_m twins (block-sparse 8 configs of 3 tiles, low-rank 8 of 5)."""
        return replace(config, group_m=1)

    def check_problems(self, problem: TileSumProblem, config: TileConfig) -> list[TileSumProblem]:
        """Problems for the interpreter: rows cut to one full tile and a ragged one, and a block-sparse op's
        pattern cut to a few block-rows (an empty one when it has one) and block-columns."""
        rows = min(problem.rows, config.block_m + config.block_m // 2 + 1)
        if isinstance(problem, BlockSparseProblem):
            problem = crop_blocksparse(problem)
        return [problem.with_rows(rows)]

    def records(self, problem: TileSumProblem, configs) -> list[dict[str, Any]]:
        """The cost model's record of each config: the problem, the config, and its launches as `stages` (each
        the GEMM it resembles); `fused_bytes` is the DRAM traffic a fused chain saves, `copy_bytes` the partial
        outputs' round trip of a sum's separate launches (kt.costmodel.staged)."""
        base = problem.to_record()
        cache: dict[int, list[Launch]] = {}
        out = []
        for config in configs:
            if config.fused not in cache:
                cache[config.fused] = launches(problem, config)
            stages = [
                gemm_stage(
                    problem,
                    launch.m,
                    launch.n,
                    max(1, launch.k),
                    block_m=config.block_m,
                    block_n=config.block_n,
                    block_k=config.block_k,
                    group_m=config.group_m,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    split_k=1 if config.fused and isinstance(problem, ChainProblem) else config.split,
                )
                | ({} if launch.a_cols is None else {"a_cols": launch.a_cols})
                | ({} if launch.a_ld is None else {"a_ld": launch.a_ld})
                for launch in cache[config.fused]
            ]
            if config.fused and isinstance(problem, ChainProblem):
                stages[0]["m"] *= config.split  # each of a slab's SPLIT programs reads x and computes t again
            record = {**base, **config.to_dict(), "split_k": config.split, "stages": stages}
            if config.fused and isinstance(problem, ChainProblem):
                record["fused_bytes"] = self._fused_bytes(problem)
            elif isinstance(problem, SumProblem) and not config.fused:
                # the separate launches' fp32 partial outputs, written and read back by the final sum: traffic
                # the fused sum does not have (taken off the fused record's launches instead, which never had
                # it, it put the fused form below its DRAM floor and first in every ranking)
                record["copy_bytes"] = self._sum_bytes(problem, config.split)
            out.append(record)
        return out

    @staticmethod
    def _fused_bytes(problem: ChainProblem) -> int:
        """A fused chain keeps x @ F1 on chip (written and read back otherwise)."""
        return 2 * problem.rows * problem.dims[1] * itemsize(problem.dtype)

    @staticmethod
    def _sum_bytes(problem: SumProblem, split: int) -> int:
        """The traffic of a sum's separate launches that their records leave out. Each term's last launch
        writes SPLIT fp32 slices of the workspace, which the final sum reads back (its fp32 result written and
        read again) before writing y once. The records count each term's output written at the dtype's size, and
        with SPLIT > 1 the split's fp32 round trip (`partial_bytes`): that round trip is counted here only at
        SPLIT 1 (it was charged twice), and the terms' dtype-sized writes, which never happen, are taken off."""
        cells = problem.rows * problem.out_features
        size, terms = itemsize(problem.dtype), len(problem.terms)
        round_trip = 2 * 4 * terms if split == 1 else 0
        return max(0, cells * (round_trip + 2 * 4 + size - terms * size))

    def variables(self, problem: TileSumProblem, config: TileConfig) -> dict[str, Any]:
        plan = _plan(problem, config)
        launch_lines = [
            f"#   {i}. {launch.text}: ({launch.m} x {launch.k}) @ ({launch.k} x {launch.n})"
            for i, launch in enumerate(launches(problem, config))
        ]
        plan["constants"] = [*plan["constants"], "# Launches (as the GEMMs they resemble):", *launch_lines]
        return {**plan, "in_features": problem.in_features, "out_features": problem.out_features}


def _plan(problem: TileSumProblem, config: TileConfig) -> dict[str, Any]:
    """The template's variables for `problem` and `config`: kernels, constants, argument checks, the body."""
    names = problem.weight_names
    split_doc = "programs sharing each output tile's steps (partial sums added in fp32)"
    fused_doc = "separate launches"
    kernels: list[dict[str, Any]] = []
    constants: list[str] = []
    checks: list[str] = []
    body: list[str] = []
    chains = lowrank_fused = False

    def bsr_check(term: BlockSparseProblem, weight: str, label: str, shape: str | None = None) -> None:
        from kt.sparsity import describe

        constants.append(
            f"{label} = {tuple(term.block)!r}  # blocks (rows, columns) of W; tuned for {describe(term.mask())}"
        )
        checks.append(f"_check_bsr({weight!r}, {weight}, {label}, x.device{', ' + shape if shape else ''})")

    def chain_checks(term: ChainProblem, weights: tuple[str, ...]) -> None:
        for weight, (a, b) in zip(weights, zip(term.dims, term.dims[1:])):
            checks.append(f"_check_tensor({weight!r}, {weight}, {(a, b)!r}, x.device)")

    if isinstance(problem, BlockSparseProblem):
        op_doc = "block-sparse y = F.linear(x, W) with W a torch sparse BSR tensor"
        call_doc = (
            f"kernel(x, w): x (..., {problem.in_features}), w = W.to_sparse_bsr({tuple(problem.block)}) with W "
            f"({problem.out_features}, {problem.in_features}) -> y (..., {problem.out_features}) = F.linear(x, W); "
            "block-rows of W with no stored block give exact zeros. Any W in these blocks works; the config was "
            "tuned for the shape and pattern in the module's docstring."
        )
        fused_doc = "one launch: a block-sparse layer has no fused form"
        features = "w.shape[1], w.shape[0]"
        bsr_check(problem, "w", "BLOCK")
        kernels.append({"name": "bsr_kernel", "sources": ["bsr"]})
        body.append(
            '_launch(bsr_kernel, y2, BLOCK[0], _bsr_args(x2, w), {"BI0": BLOCK[1]}, [x2, w.values()])'
        )
    elif isinstance(problem, ChainProblem):
        dims = problem.dims
        features = "IN_FEATURES, OUT_FEATURES"
        op_doc = f"low-rank chain y = x @ {' @ '.join(names)} ({' -> '.join(map(str, dims))})"
        call_doc = (
            f"kernel(x, {', '.join(names)}): x (..., {dims[0]}), "
            + ", ".join(f"{n} ({a}, {b})" for n, a, b in zip(names, dims, dims[1:]))
            + f" -> y (..., {dims[-1]}) = x @ {' @ '.join(names)}."
        )
        chain_checks(problem, names)
        constants.append(f"DIMS = {tuple(dims)!r}")
        if config.fused:
            lowrank_fused = True
            split_doc = "programs per slab of rows, each writing every SPLIT-th column tile"
            fused_doc = "one kernel keeps t = x @ f1 on chip"
            constants.append(f"R_PAD = {padded(dims[1])}  # the rank, padded to a power of two for the dots")
            body += [
                "grid = (triton.cdiv(x2.shape[0], BLOCK_M), SPLIT)",
                "lowrank_fused_kernel[grid](",
                "    x2, f1, f2, y2, x2.shape[0], DIMS[0], DIMS[1], DIMS[2],",
                "    x2.stride(0), x2.stride(1), f1.stride(0), f1.stride(1), f2.stride(0), f2.stride(1),",
                "    y2.stride(0), y2.stride(1), R_PAD=R_PAD, SPLIT=SPLIT, **_options(x2, f1, f2, y2),",
                ")",
            ]
        else:
            chains = True
            kernels.append({"name": "dense_kernel", "sources": ["dense"]})
            steps = _steps(problem.order())
            constants.append(
                f"STEPS = {tuple(steps)!r}  # the matrix-chain program's order (m: matrix, s: step)"
            )
            body.append(f"_chain([x2, {', '.join(names)}], STEPS, y2)")
    else:
        parts = problem.split_weights(names)
        features = "IN_FEATURES, OUT_FEATURES"
        op_doc = f"a sum of {len(problem.terms)} terms ({' + '.join(t.family for t in problem.terms)})"
        call_doc = (
            f"kernel(x, {', '.join(names)}): x (..., {problem.in_features}) -> y (..., {problem.out_features}) = "
            + " + ".join(
                f"F.linear(x, {w[0]}.to_dense())"
                if isinstance(t, BlockSparseProblem)
                else f"x @ {' @ '.join(w)}"
                for t, w in zip(problem.terms, parts)
            )
            + "; block-sparse weights are torch sparse BSR tensors."
        )
        fused_doc = (
            "one accumulation over every term" if config.fused else "each term into its own fp32 slice"
        )
        sources, source_args, bi, tensors = [], [], {}, []
        for i, (term, weights) in enumerate(zip(problem.terms, parts)):
            if isinstance(term, BlockSparseProblem):
                bsr_check(term, weights[0], f"BLOCK{i}", "(OUT_FEATURES, IN_FEATURES)")
                if config.fused:
                    bi[f"BI{len(sources)}"] = f"BLOCK{i}[1]"
                    sources.append("bsr")
                    source_args.append(f"*_bsr_args(x2, {weights[0]})")
                    tensors += ["x2", f"{weights[0]}.values()"]
                else:
                    body.append(
                        f"_launch(bsr_kernel, ws[{i} * SPLIT:{i + 1} * SPLIT], BLOCK{i}[0], "
                        f'_bsr_args(x2, {weights[0]}), {{"BI0": BLOCK{i}[1]}}, [x2, {weights[0]}.values()])'
                    )
            else:
                chains = True
                chain_checks(term, weights)
                dims = term.dims
                if config.fused:
                    prefix = _steps(chain_order((term.rows, *dims[:-1])))
                    constants.append(
                        f"PREFIX{i} = {tuple(prefix)!r}  # term {i}'s leading products, in order"
                    )
                    body.append(f"u{i} = _chain([x2, {', '.join(weights[:-1])}], PREFIX{i})")
                    sources.append("dense")
                    source_args.append(f"*_dense_args(u{i}, {weights[-1]})")
                    tensors += [f"u{i}", weights[-1]]
                else:
                    constants.append(
                        f"STEPS{i} = {tuple(_steps(term.order()))!r}  # term {i}'s products, in order"
                    )
                    body.append(
                        f"_chain([x2, {', '.join(weights)}], STEPS{i}, ws[{i} * SPLIT:{i + 1} * SPLIT])"
                    )
        first_bsr = next((i for i, t in enumerate(problem.terms) if isinstance(t, BlockSparseProblem)), None)
        if first_bsr is not None and not config.fused:
            kernels.append({"name": "bsr_kernel", "sources": ["bsr"]})
        if chains:
            kernels.append({"name": "dense_kernel", "sources": ["dense"]})
        if config.fused:
            kernels.append({"name": "sum_kernel", "sources": sources})
            bo = f"BLOCK{first_bsr}[0]" if first_bsr is not None else "out_features"
            bi_text = "{" + ", ".join(f'"{k}": {v}' for k, v in bi.items()) + "}"
            body.append(
                f"_launch(sum_kernel, y2, {bo}, [{', '.join(source_args)}], {bi_text}, [{', '.join(tensors)}])"
            )
        else:
            body.insert(
                0,
                f"ws = torch.empty(({len(problem.terms)} * SPLIT, x2.shape[0], out_features), dtype=torch.float32, device=x.device)",
            )
            body.append("y2.copy_(ws.sum(dim=0))  # the terms' fp32 results, rounded once to DTYPE")
    return {
        "op_doc": op_doc,
        "call_doc": call_doc,
        "split_doc": split_doc,
        "fused_doc": fused_doc,
        "kernels": kernels,
        "constants": constants,
        "checks": checks,
        "body": body,
        "chains": chains,
        "lowrank_fused": lowrank_fused,
        # a BSR weight to check and pass: the helpers for one are emitted only then
        "bsr": bool(_bsr_terms(problem)),
        "features": features,
        "signature": ", ".join(["x: torch.Tensor", *(f"{n}: torch.Tensor" for n in names)]),
        "weights": list(names),
    }
