"""The GEMM kernel family: its config, its search space with hardware legality, and its source.

A config is a schedule only: it never changes what is computed (the IR's GemmProblem), only how.
"""

from __future__ import annotations

import functools
import itertools
import pickle
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from kt.axes import GEMM_AXES, GEMM_FIELDS, GEMM_STRUCTURE_AXES, check_fields
from kt.codegen.compat import triton_version
from kt.codegen.render import render_template, template_version
from kt.device import DeviceProfile
from kt.dtypes import itemsize
from kt.ir.problems import GemmProblem

# The axes of the space, before legality (kt.axes holds every family's).
AXES = GEMM_AXES
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16
STRUCTURE_AXES = GEMM_STRUCTURE_AXES  # the persistent TMA kernel (1, 2: C stored in halves) or not
TMA_ALIGN = 16  # bytes: a TMA descriptor's base and every stride but the last must be multiples of this
TMA_BARRIER_BYTES = 128


@dataclass(frozen=True, order=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    tma: int = 0  # 1: the persistent TMA kernel (tensor descriptors, a loop over tiles), for sm_90; 2: its C
    # tile stored in two halves (epilogue subtiling)

    def key(self) -> str:
        """Short, stable text that names this config in the database and in tables ("t" ends a TMA one, "t2"
        one with a subtiled epilogue)."""
        tma = {0: "", 1: "t"}.get(self.tma, f"t{self.tma}")
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}g{self.group_m}"
            f"w{self.num_warps}s{self.num_stages}x{self.split_k}{tma}"
        )

    def to_dict(self) -> dict[str, int]:
        data = asdict(self)
        if not self.tma:  # written only when set: the classic configs' records and rows keep their keys
            del data["tma"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmConfig:
        return config_from_mapping(cls, data, GEMM_FIELDS)

    def __str__(self) -> str:
        return " ".join(
            f"{k.upper() if k.startswith(('block', 'group', 'split')) else k}={v}"
            for k, v in self.to_dict().items()
        )


def config_from_mapping(cls, data: dict[str, Any], axes: dict[str, tuple[int, ...] | None]):
    """A config dataclass from a mapping: unknown keys and values off an axis are one-line ValueErrors (a field
    with no axis takes any non-negative integer; kt.axes.check_fields words them)."""
    check_fields({f.name: axes.get(f.name) for f in fields(cls)}, data)
    return cls(**{key: int(value) for key, value in data.items()})  # numpy's integers become ints


def padded(dim: int) -> int:
    """The smallest power-of-two tile (at least MIN_DOT) that covers `dim`."""
    return max(MIN_DOT, 1 << (dim - 1).bit_length())


def shared_memory(problem: GemmProblem, config: GemmConfig) -> int:
    """Bytes of shared memory a program needs: one A and one B tile per pipeline stage, and for the TMA kernel
    the C tile it stores through shared memory."""
    size = itemsize(problem.dtype)
    # the TMA kernel's C tile (half of it, subtiled), and its pipeline's mbarriers (24-56 bytes in sampled sm_90
    # builds)
    staged = config.block_m * config.block_n * size // config.tma + TMA_BARRIER_BYTES if config.tma else 0
    return config.num_stages * (config.block_m + config.block_n) * config.block_k * size + staged


def wgmma_build(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> bool:
    """Whether Triton builds `config` with Hopper's warpgroup MMA: sm_90, tensor-core math (every dtype but
    float32 ieee), 64 rows or more and whole warpgroups (kt.costmodel.roofline.wgmma_tile's rule)."""
    return wgmma_tile(problem, config.block_m, config.num_warps, device)


def wgmma_tile(problem, block_m: int, num_warps: int, device: DeviceProfile) -> bool:
    """`wgmma_build` for a 2D dot of `block_m` rows in `num_warps` warps of `problem`'s dtype and precision
    (any family's problem: the block-GEMM kernel's launches take BLOCK_B rows)."""
    tensor_cores = problem.dtype != "float32" or problem.precision == "tf32"
    return device.compute_capability >= 90 and tensor_cores and block_m >= 64 and num_warps % 4 == 0


def kept_stages(num_stages: int, wgmma: bool) -> int:
    """Pipeline stages whose tiles a build keeps in shared memory: every stage with wgmma, stages - 1 (at
    least one) with mma.sync and FMA dots (`built_shared_memory`)."""
    return num_stages if wgmma else max(1, num_stages - 1)


def output_tile_bytes(block_m: int, block_n: int, dtype: str, fp32_out: bool) -> int:
    """Bytes of the scratch a build converts its (block_m, block_n) output tile's layout through before the
    store (the dot's accumulator layout to the store's): the tile in the stored dtype, fp32 for a split's
    partial sums (`fp32_out`). Sampled sm_80 and sm_90 builds (Triton 3.9, 2026-12-03) allocated up to this much
    where the pipeline's tiles were smaller (A100 float16 m128n128k16 w8 s2: 32768 bytes built, 8192 in its one
    kept stage; m64n32k16 split 16: 8192, an fp32 tile)."""
    return block_m * block_n * (4 if fp32_out else itemsize(dtype))


def built_shared_memory(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> int:
    """Bytes of shared memory a build of `config` for `device` allocates at most, for legality (`shared_memory`,
    the cost model's feature, stays as the forests were fitted). Sampled sm_80 and sm_90 builds (Triton 3.9,
    2026-12-02, tests/test_compile_target.py) keep every pipeline stage only with wgmma; mma.sync and FMA
    builds keep stages - 1 (at least one). Every build also converts its C tile's layout through shared memory
    before the store (`output_tile_bytes`: BM x BN in C's dtype, fp32 with split-K), reusing the pipeline's,
    so a build allocates the larger of the two. The TMA kernel keeps `shared_memory`'s figure (its C tile is
    staged there already)."""
    if config.tma:
        return shared_memory(problem, config)
    stages = kept_stages(config.num_stages, wgmma_build(problem, config, device))
    a_buffers = b_buffers = stages
    if itemsize(problem.dtype) == 2:
        # a 16-bit operand whose rows are not 16-element aligned is loaded element by element (no cp.async), so
        # its tile has one buffer, not a pipeline's: sm_80 and sm_90 builds (Triton 3.9, 2026-12-04) of
        # 1000^3 and 1000x1024x1000 float16 and bfloat16, either or both operands unaligned, allocate exactly
        # that, where a buffer per stage for both said 3 to 5 times as much and dropped configs that build
        # (tests/test_compile_target.py). float32 loads its rows with 4-byte copies and keeps its pipeline.
        a_unaligned, b_unaligned = unaligned_operands(problem)
        a_buffers, b_buffers = (1 if a_unaligned else stages), (1 if b_unaligned else stages)
    smem = (
        (a_buffers * config.block_m + b_buffers * config.block_n) * config.block_k * itemsize(problem.dtype)
    )
    return max(smem, output_tile_bytes(config.block_m, config.block_n, problem.dtype, config.split_k > 1))


def leading_dims(problem: GemmProblem) -> tuple[int, int]:
    """A's and B's row lengths along their unit-stride dim in the problem's contiguous layouts: K (M when A is
    column-major) and N (K when B is column-major)."""
    a_lead = problem.m if problem.a_layout == "col" else problem.k
    b_lead = problem.k if problem.b_layout == "col" else problem.n
    return a_lead, b_lead


def tma_reason(problem: GemmProblem, config: GemmConfig) -> str | None:
    """Why the persistent TMA kernel cannot run `problem` with `config`, or None. It is built for half-precision
    wgmma (four or eight warps, a warpgroup each), one product (no batch) and no split-K, and every row of A, B
    and C in the problem's layouts must start on a 16-byte boundary (the leading dimension times the element
    size a multiple of 16). A call whose tensors do not qualify runs the classic kernel (kernel.py says so)."""
    if problem.dtype not in ("float16", "bfloat16"):
        return "TMA kernel: float16 and bfloat16 only"
    if problem.batch:
        return "TMA kernel: one product, no batch"
    if config.split_k > 1:
        return "TMA kernel: no split-K"
    if config.num_warps < 4:
        return "TMA kernel: four or eight warps (a warpgroup's wgmma)"
    if config.tma == 2 and config.block_n < 2 * MIN_DOT:
        return f"TMA kernel: a subtiled epilogue needs BLOCK_N of at least {2 * MIN_DOT}"
    size = itemsize(problem.dtype)
    if any(dim * size % TMA_ALIGN for dim in (*leading_dims(problem), problem.n)):
        return "TMA kernel: rows not 16-byte aligned"
    return None


def accumulator_registers(config: GemmConfig, warp_size: int = 32) -> int:
    """fp32 accumulator registers each thread holds: the BLOCK_M x BLOCK_N tile spread over the program's threads."""
    return config.block_m * config.block_n // (config.num_warps * warp_size)


def accumulator_limit(device: DeviceProfile, dtype: str, precision: str, num_warps: int) -> tuple[int, str]:
    """The fp32 accumulator registers per thread a 2D dot may hold before its build spills, and why it is lower
    than the device's limit. Sampled sm_90 builds (Triton 3.6 and 3.9) spilled at all 255 registers with 128
    accumulator registers per thread in two-warp programs (mma.sync) and in float32 FMA dots (no tensor cores,
    operands held in registers too), and with 64 in two-warp FMA programs; below those they did not."""
    if dtype == "float32" and precision == "ieee":  # two-warp FMA programs spilled with 64 too
        return device.acc_regs_limit // (2 if num_warps >= 4 else 4), " (FMA dots)"
    if num_warps < 4:
        return device.acc_regs_limit // 2, " (two-warp programs)"
    return device.acc_regs_limit, ""


def accumulator_reason(
    acc: int, device: DeviceProfile, dtype: str, precision: str, num_warps: int, block_k: int
) -> str | None:
    """Why a program's registers would spill, or None: its accumulator over `accumulator_limit`, or a K step
    over 32 in an FMA dot. The tile-sum and BSR-gradient families add `two_warp_k_reason` (the block-GEMM ones
    have their own limits); the plain GEMM template's two-warp programs take any K step (its m16n256k128 w2 ran
    the first H200 run's skinny case)."""
    limit, why = accumulator_limit(device, dtype, precision, num_warps)
    if acc > limit:
        return f"accumulator over {limit} registers per thread{why}"
    if dtype == "float32" and precision == "ieee" and block_k > 2 * MIN_DOT:  # spilled under Triton 3.6
        return f"K step over {2 * MIN_DOT} for FMA dots"
    return None


# `deep_k_reason`: the elements of one K step's A and B tiles per thread that an mma.sync program with its
# accumulator at the limit held without spilling (benchmarks/deep_k_builds.py), and the Triton it holds from
DEEP_K_ELEMENTS = 192
DEEP_K_TRITON = (3, 8)


def stage_elements(config, warp_size: int) -> int:
    """Elements of one K step's A and B tiles, (block_m + block_n) x block_k, per thread of a program."""
    return (config.block_m + config.block_n) * config.block_k // (config.num_warps * warp_size)


def deep_k_reason(problem, config, device: DeviceProfile, acc: int) -> str | None:
    """Why a tensor-core program of four or eight warps built with mma.sync (not wgmma: sm_80, or narrow tiles)
    would spill, or None: its accumulator at the limit (`accumulator_limit`, 128 registers per thread) with more
    than DEEP_K_ELEMENTS of A and B tile elements per thread in a K step; where the installed Triton is 3.8 or
    later (`DEEP_K_TRITON`). In sampled sm_80 builds (2026-12-03, `benchmarks/deep_k_builds.py`) four-warp
    programs with 256 and 320 spilled under Triton 3.9, in 16-bit and tf32 alike (K steps of 128; of 64 too in
    tf32), dense GEMMs and tile sums; those with 128 and 160, and eight-warp ones with 192, mostly built clean.
    Under Triton 3.6 the dense 16-bit ones with 256 and 320 built clean as often as not, so the rule is off
    there. The fit sample again (2026-12-06): under Triton 3.8.0 all 54 four-warp builds with 256 and 320
    spilled, as under 3.9; under 3.7.1, 29 of the 54, as under 3.6. FMA dots (float32 ieee) have
    accumulator_reason's K-step rule."""
    reason = deep_k_spills(problem, config, device, acc)  # first: most configs are not ruled, and Triton's
    return reason if reason and triton_version() >= DEEP_K_TRITON else None  # version costs its import


def deep_k_spills(problem, config, device: DeviceProfile, acc: int) -> str | None:
    """`deep_k_reason` whatever Triton is installed: what Triton 3.9's sm_80 builds showed."""
    if problem.dtype == "float32" and problem.precision == "ieee":
        return None
    if config.num_warps < 4 or wgmma_build(problem, config, device):
        return None
    limit, _ = accumulator_limit(device, problem.dtype, problem.precision, config.num_warps)
    elements = stage_elements(config, device.warp_size)
    if acc >= limit and elements > DEEP_K_ELEMENTS:
        return (
            f"accumulator at {limit} registers per thread with {elements} A and B tile elements a K step per "
            f"thread (mma.sync), over {DEEP_K_ELEMENTS}"
        )
    return None


# `two_warp_k_reason`: a real two-warp tensor-core program (16-bit or tf32) of a structured family with a K
# step over 32 spills past this count of accumulator registers and operand registers of one K step per thread
# (`k_step_registers`; a block-GEMM loop over several blocks counts its operands twice), by compute capability
# (sm_90's for later ones, sm_80's for earlier); a sum's fused accumulation over its terms has limits of its own
# (`kt.codegen.tilesum.FUSED_SUM_TWO_WARP_K_LIMITS`). Each is the highest count at which no build of the fit and
# held-out samples spilled, as the compile stage judges it (`kt.autotune.worker.MAX_LOCAL_BYTES`: some admitted
# builds keep 8 bytes of stack below 255 registers) (2026-12-05, Triton 3.9; `benchmarks/two_warp_k_builds.py`,
# BENCHMARKS.md): sm_90
# builds spilled from 192 (tf32 Monarch b64n64k64 w2, float16 sums m64n64k128 w2), sm_80 ones from 224. Until
# then every such program was refused for its K step alone, which no recorded sample supported.
TWO_WARP_K_LIMITS = {90: 184, 80: 216}


def k_step_registers(dtype: str, rows: int, cols: int, block_k: int, threads: int) -> int:
    """Registers per thread one K step's operand tiles take, `rows x block_k` and `block_k x cols` over
    `threads` threads: 16-bit elements two to a register."""
    return (rows + cols) * block_k * itemsize(dtype) // (4 * threads)


def two_warp_k_reason(
    problem,
    device: DeviceProfile,
    num_warps: int,
    block_k: int,
    acc: int,
    operands: int,
    planes: int = 1,
    limits: dict[int, int] = TWO_WARP_K_LIMITS,
    what: str = "a two-warp program",
) -> str | None:
    """Why a structured family's two-warp program with a K step over 32 would spill, or None: real tensor-core
    dots (16-bit or tf32) whose accumulator and one K step's operand registers (`operands`, from
    `k_step_registers`) pass the device's limit in `limits` (`what` names the program in the reason); any K
    step over 32 for complex dots and FMA dots (float32 ieee), as no such builds were sampled."""
    if num_warps >= 4 or block_k <= 2 * MIN_DOT:
        return None
    if planes > 1 or (problem.dtype == "float32" and problem.precision == "ieee"):
        return f"K step over {2 * MIN_DOT} in a two-warp program"
    limit = limits[90 if device.compute_capability >= 90 else 80]
    if acc + operands > limit:
        return (
            f"accumulator and K-step operand registers over {limit} per thread in {what} "
            f"(K step over {2 * MIN_DOT})"
        )
    return None


DIVISIBILITY = 16  # elements: Triton specialises an integer argument divisible by 16 (tt.divisibility)


# `unaligned_reason` for four- and eight-warp programs: what an unaligned A's and B's tile element weighs in
# registers per thread, and the limit by compute capability
UNALIGNED_WEIGHTS = (1.5, 0.75)
UNALIGNED_LIMITS = {90: 176, 80: 168}
# two-warp 16-bit programs, one limit for sm_80 and sm_90 (until 2026-12-05 weights 1 and 1 over 224: caught
# 41 of 131 spills of the held-out two-warp builds below)
TWO_WARP_UNALIGNED_WEIGHTS = (0.75, 0.25)
TWO_WARP_UNALIGNED_LIMIT = 112
# the same for tf32 (float32 operands on tensor cores), one limit for sm_80 and sm_90
TF32_UNALIGNED_WEIGHTS = (2.5, 0.25)
TF32_UNALIGNED_LIMIT = 224


def unaligned_operands(problem: GemmProblem) -> tuple[bool, bool]:
    """Whether A's and B's rows (along their unit-stride dim) are, as the classic kernel's launch sees them, not
    known to be 16-element aligned: the leading stride (the problem's contiguous layouts give it: K or M for A,
    N or K for B), and the mask's bound along the same dim must be a multiple of 16 (then a batch's stride is too), or
    Triton cannot vectorise the loads (no cp.async: each element is loaded on its own, through registers)."""
    a_lead, b_lead = leading_dims(problem)
    return a_lead % DIVISIBILITY != 0, b_lead % DIVISIBILITY != 0


def unaligned_tiles(problem: GemmProblem, config: GemmConfig, warp_size: int) -> tuple[int, int, int]:
    """What `unaligned_reason` weighs, per thread: the accumulator's registers, and A's and B's tile elements
    where that operand's rows are not 16-element aligned (0 where they are). Every tile holds 256 elements or
    more and a program at most 256 threads, so the divisions are exact."""
    a_unaligned, b_unaligned = unaligned_operands(problem)
    threads = config.num_warps * warp_size
    return (
        accumulator_registers(config, warp_size),
        config.block_m * config.block_k // threads if a_unaligned else 0,
        config.block_k * config.block_n // threads if b_unaligned else 0,
    )


def unaligned_reason(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> str | None:
    """Why a 16-bit or tf32 classic-kernel build whose operand rows are not 16-element aligned would spill, or
    None (a float32 ieee one: `fma_unaligned_reason`).

    Such a build loads the unaligned operand's tile element by element into registers (no cp.async, no
    software pipeline), so its tile counts beside the accumulator, per thread: `acc + wa * BM*BK/threads` (A
    unaligned) `+ wb * BK*BN/threads` (B unaligned), refused over `limit` (four or eight warps: A's elements
    weigh 1.5, B's 0.75, `UNALIGNED_WEIGHTS`; limits 176 on sm_90 and 168 on sm_80, `UNALIGNED_LIMITS`;
    two-warp programs 0.75, 0.25 and 112 on both, `TWO_WARP_UNALIGNED_WEIGHTS`). The weights and limits were fitted on 630 sm_80 and sm_90 builds of 7
    unaligned float16 shapes (Triton 3.9, 2026-12-03; the tiles, warps, stages and splits legality admits
    otherwise, with the unweighted count between 96 and 400) as the rule that refuses no clean build and
    catches the most spills, and checked on 630 builds of 7 other shapes: no clean build refused, 130 of 186
    sm_80 spills and 92 of 111 sm_90 spills caught (the unweighted count with limits 144 and 192, the rule
    before: 15 clean sm_80 builds refused, 141 and 55 spills caught). Builds of the held-out shapes under
    Triton 3.6: 130 of 181 and 91 of 114 caught, 2 clean sm_90 builds refused (m128n16k128 w4 at 254
    registers; 632 bytes of local memory under Triton 3.9). `benchmarks/unaligned_builds.py` draws, builds
    and scores such samples.

    Two-warp programs (`--two-warps`, 20 builds per shape, 2026-12-05): fitted on 280 builds of the 7 fit shapes
    (Triton 3.9, seeds 61 sm_80 and 62 sm_90) as the weighting that refuses no clean build and misses fewest
    spills, and checked on 280 builds of the held-out shapes (seeds 71 and 72): no clean build refused, 49 of 80
    sm_80 and 42 of 51 sm_90 spills caught; the same held-out draws under Triton 3.6 alike (49 of 78, 42 of 51).
    The rule before (weights 1 and 1 over 224, from no recorded sample) caught 21 and 20 of them.

    tf32 builds load unaligned rows with 4-byte cp.async copies, an address each, so they weigh differently:
    A's elements 2.5, B's 0.25, over 224 on sm_80 and sm_90 (`TF32_UNALIGNED_WEIGHTS`, `TF32_UNALIGNED_LIMIT`;
    four or eight warps only, none of two was sampled). `--fit`'s first weighting on 420 tf32 builds of the 7
    fit shapes (`--dtype tf32`, Triton 3.9, 2026-12-03), checked on 420 builds of the 7 held-out shapes: no
    clean build refused, 46 of 115 sm_80 and 21 of 27 sm_90 spills caught (Triton 3.6: 45 of 102 and 21 of
    25, 1 clean sm_80 build refused, which spills under 3.9; docs/architecture.md)."""
    if config.tma or problem.dtype not in ("float16", "bfloat16", "float32"):
        return None
    a_unaligned, b_unaligned = unaligned_operands(problem)
    if not (a_unaligned or b_unaligned):
        return None
    tf32 = problem.dtype == "float32" and problem.precision == "tf32"
    if problem.dtype == "float32" and not tf32:
        return fma_unaligned_reason(problem, config, device)
    if tf32:
        if config.num_warps < 4:
            return None  # no sample of two-warp tf32 builds
        (wa, wb), limit = TF32_UNALIGNED_WEIGHTS, TF32_UNALIGNED_LIMIT
    elif config.num_warps < 4:
        (wa, wb), limit = TWO_WARP_UNALIGNED_WEIGHTS, TWO_WARP_UNALIGNED_LIMIT
    else:
        (wa, wb), limit = UNALIGNED_WEIGHTS, UNALIGNED_LIMITS[90 if device.compute_capability >= 90 else 80]
    acc, a_tile, b_tile = unaligned_tiles(problem, config, device.warp_size)
    if acc + wa * a_tile + wb * b_tile > limit:
        return (
            f"accumulator and unaligned operand tiles over {limit} registers per thread (A's elements weigh "
            f"{wa}, B's {wb}; rows not 16-element aligned: "
            + ("4-byte copies, an address each)" if tf32 else "scalar loads)")
        )
    return None


# The first Triton whose sm_80 builds of unaligned float32 FMA GEMMs spill as `fma_unaligned_reason` says
FMA_SPILL_TRITON = (3, 8)


def fma_unaligned_reason(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> str | None:
    """Why a float32 FMA build (precision ieee) with an operand's rows not 16-element aligned would spill on
    sm_80, or None. Four warps holding the FMA accumulator limit (64 registers per thread) with K steps of 32
    spill at all 255 registers under Triton 3.9; eight warps at 64 and every count at 32 registers were mixed
    in a first probe (2026-12-03, no script), and so was sm_90, so neither is ruled. tf32 has a rule of its
    own (`unaligned_reason`). The spills are those of Triton 3.8 and later: of 70 such builds over 7 shapes
    (`benchmarks/unaligned_builds.py --dtype float32 --arch 80 --seed 5 --per-shape 10`, 2026-12-03), 65
    spilled under Triton 3.9 (the 5 clean: m32n256) and 22 under Triton 3.6 (m256n32 spilled under both;
    m32n256 and m64n128 built clean under 3.6, m128n64 clean in 10 of 13). The same sample (2026-12-06): 65
    spilled under Triton 3.8.0, 22 under 3.7.1, so the rule holds where the installed Triton is 3.8 or later
    (`FMA_SPILL_TRITON`)."""
    return fma_unaligned_spills(problem, config, device) if triton_version() >= FMA_SPILL_TRITON else None


def fma_unaligned_spills(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> str | None:
    """`fma_unaligned_reason` whatever Triton is installed: what Triton 3.9's sm_80 builds showed."""
    if problem.precision != "ieee" or device.compute_capability >= 90 or config.num_warps != 4:
        return None
    limit, _ = accumulator_limit(device, problem.dtype, problem.precision, config.num_warps)
    if accumulator_registers(config, device.warp_size) >= limit and config.block_k > MIN_DOT:
        return (
            f"FMA dot at {limit} accumulator registers with K steps over {MIN_DOT} and rows not 16-element "
            f"aligned (spills on sm_{device.compute_capability})"
        )
    return None


def illegal_reason(problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> str | None:
    """Why `config` cannot (or cannot sensibly) run `problem` on `device`, or None when it can."""
    if config.tma:
        if device.compute_capability < 90:  # tensor descriptors then compile to plain loads: no TMA, no wgmma
            return f"TMA kernel: Hopper (sm_90) or newer; {device.label} is sm_{device.compute_capability}"
        reason = tma_reason(problem, config)
        if reason:
            return reason
    smem = built_shared_memory(problem, config, device)
    if smem > device.smem_per_block:
        return f"shared memory over {device.smem_limit_text}"
    acc = accumulator_registers(config, device.warp_size)
    too_many = accumulator_reason(
        acc, device, problem.dtype, problem.precision, config.num_warps, config.block_k
    )
    if too_many:
        return too_many
    k_per_split = -(-problem.k // config.split_k)
    if (
        config.block_m > padded(problem.m)
        or config.block_n > padded(problem.n)
        or config.block_k > padded(k_per_split)
    ):
        return "tile larger than the padded problem"
    if config.split_k > 1 and config.split_k > -(-problem.k // config.block_k):
        return "more K splits than K tiles"
    return unaligned_reason(problem, config, device) or deep_k_reason(problem, config, device, acc)


@dataclass(frozen=True)
class SearchSpace:
    problem: GemmProblem
    device: DeviceProfile
    total: int  # every point of the axes
    legal: tuple[GemmConfig, ...]
    dropped: dict[str, int]  # reason -> count

    def __len__(self) -> int:
        return len(self.legal)

    def __repr__(self) -> str:  # not every legal config
        return f"SearchSpace({self.problem} on {self.device.name}: {len(self.legal)} legal of {self.total})"

    @classmethod
    def of(cls, problem, device: DeviceProfile, judged) -> SearchSpace:
        """The space from every point of the axes with why it is illegal (None when it is legal)."""
        legal, dropped, total = [], Counter(), 0
        for config, reason in judged:
            total += 1
            if reason is None:
                legal.append(config)
            else:
                dropped[reason] += 1
        return cls(problem, device, total, tuple(legal), dict(dropped.most_common()))


# The spaces made in this process, the latest last: kt.nn plans each layer of a model, and a model repeats its
# shapes (24 blocks of one width planned the 25,200 GEMM configs 24 times, a third of a second each). Legality is
# a function of the family, the problem, the device profile and Triton's version alone; a SearchSpace is frozen.
# They are kept while they hold no more than SPACES_BYTES together (`space_bytes`), the oldest going first.
_SPACES: OrderedDict[tuple, tuple[SearchSpace, int]] = OrderedDict()
SPACES_BYTES = 64 << 20
_SPACES_LOCK = threading.Lock()  # `kt tune` plans several ops at once, one thread each
# What a config of a structured family takes, its own (a dataclass of 7 to 9 ints and its __dict__: 152 bytes
# measured with tracemalloc); a GEMM space's configs are the family's, shared (`gemm_configs`): a reference each
CONFIG_BYTES = 160


def space_bytes(space: SearchSpace, shared_configs: bool) -> int:
    """About what `space` holds: its legal configs (a reference each where they are the family's `shared_configs`,
    else CONFIG_BYTES), the drop reasons and its problem (pickled: a block-sparse problem's layout, hex of the
    block mask, is most of it)."""
    per_config = 8 if shared_configs else 8 + CONFIG_BYTES
    reasons = sum(len(reason) for reason in space.dropped)
    return per_config * len(space.legal) + reasons + len(pickle.dumps(space.problem)) + 1024


def cached_space(family, problem, device: DeviceProfile) -> SearchSpace:
    """`family`'s space of `problem` on `device` (SearchSpace.of over `family.judged`), made once per process
    while the spaces made since take no more than SPACES_BYTES (`space_bytes`)."""
    key = (family.name, problem, repr(device), triton_version())
    with _SPACES_LOCK:
        entry = _SPACES.get(key)
        if entry is not None:
            _SPACES.move_to_end(key)
            return entry[0]
        space = SearchSpace.of(problem, device, family.judged(problem, device))
        _SPACES[key] = space, space_bytes(space, family.shared_configs)
        held = sum(size for _, size in _SPACES.values())
        while held > SPACES_BYTES and len(_SPACES) > 1:
            _, (_, size) = _SPACES.popitem(last=False)
            held -= size
    return space


@functools.cache
def gemm_configs() -> tuple[GemmConfig, ...]:
    """`GemmFamily.all_configs`: the axes' points, each without split-K followed by its TMA twins (tma 1 and 2).
    Made once per process and shared by every problem's space (each space made its own until 2026-12-07: 2.4 MB
    of configs kept for the 15,708 legal at 1000x1024x768 float16 on the H100, 3.8 MB for all 25,200 now)."""
    out = []
    for values in itertools.product(*AXES.values()):
        config = GemmConfig(**dict(zip(AXES, values)))
        out.append(config)
        if config.split_k == 1:
            out.extend((replace(config, tma=1), replace(config, tma=2)))
    return tuple(out)


@functools.cache
def group_twins() -> tuple[int, ...]:
    """For each of `gemm_configs`, the index of its group_m class (the configs equal but for group_m), classes
    numbered in order of first sight: `GemmFamily.judged` judges each class once, at its first config."""
    first: dict[GemmConfig, int] = {}
    return tuple(first.setdefault(replace(c, group_m=AXES["group_m"][0]), len(first)) for c in gemm_configs())


class GemmFamily:
    name = "gemm"
    template = "gemm.py.j2"
    shared_configs = True  # its spaces hold `gemm_configs`' objects (kt.codegen.gemm.space_bytes)
    axes = AXES
    config_type = GemmConfig

    @property
    def version(self) -> str:
        """Changes whenever the template does, so stale measurements are never reused."""
        return template_version(self.template)

    structure_axes = STRUCTURE_AXES

    def all_configs(self) -> tuple[GemmConfig, ...]:
        """Every point of the axes, each without split-K also as the persistent TMA kernel and as that kernel
        with a subtiled epilogue (right after it): one tuple per process (`gemm_configs`)."""
        return gemm_configs()

    def judged(self, problem: GemmProblem, device: DeviceProfile) -> Iterator[tuple[GemmConfig, str | None]]:
        """Every config (`all_configs`) with why it cannot run `problem` on `device` (None: it can).

        Legality never reads group_m (it orders the output tiles, nothing a build holds), so each config is
        judged as its twin of the first group_m (`group_twins`): a third of the calls to `illegal_reason`.
        tests/test_space.py checks the answers against judging every config."""
        configs, twins = gemm_configs(), group_twins()
        reasons: list[str | None] = []
        for config, twin in zip(configs, twins):
            if twin < len(reasons):
                yield config, reasons[twin]
            else:
                reasons.append(illegal_reason(problem, config, device))
                yield config, reasons[-1]

    def space(self, problem: GemmProblem, device: DeviceProfile) -> SearchSpace:
        return cached_space(self, problem, device)

    def same_program(self, problem: GemmProblem, config: GemmConfig) -> GemmConfig:
        """The config whose kernel runs `config`'s program on `problem`, tile for tile: group_m only orders the
        output tiles (gemm.py.j2: groups of group_m row-tiles, column by column), so every group_m at or above
        the grid's row-tiles gives one column-major order, and any group_m the row-major order of a grid one
        tile wide. Configs with the same answer are one kernel: a tune measures one of them."""
        rows = -(-problem.m // config.block_m)
        columns = -(-problem.n // config.block_n)
        return replace(config, group_m=1 if columns == 1 else min(config.group_m, rows))

    def tile_of(self, problem: GemmProblem, config: GemmConfig) -> GemmConfig:
        """`config` with what the starting models cannot rank within a tile left out: group_m (it orders the
        tiles; the forests were fitted on group_m 8 alone) and TMA (not a feature of theirs). A guided tune's
        first round takes one config per tile (kt.autotune.search.GuidedSearch)."""
        return replace(config, group_m=1, tma=0)

    def records(self, problem: GemmProblem, configs) -> list[dict[str, Any]]:
        """The cost model's record of each config: the problem's numbers and the config's."""
        base = problem.to_record()
        return [{**base, **config.to_dict()} for config in configs]

    def resources(self, problem: GemmProblem, config: GemmConfig, device: DeviceProfile) -> tuple[int, int]:
        """Shared-memory bytes a build allocates (legality's figure) and fp32 accumulator registers per thread."""
        return built_shared_memory(problem, config, device), accumulator_registers(config, device.warp_size)

    def check_problems(self, problem: GemmProblem, config: GemmConfig) -> list[GemmProblem]:
        """Small problems for the interpreter that still run every code path the real problem takes.

        Always a ragged one: M and N keep one full tile and a ragged one (edge masks and the tile-order swizzle
        run), unless the real problem is smaller, and M, N and K differ where the real problem lets them; K gives every split two K steps, the last one ragged, so the
        loop, the masks and the split-K sum all run. When the real problem is a whole number of tiles, its
        launch takes the unmasked EVEN path, so a problem of whole tiles is checked too. The batch keeps two
        entries; layouts and dtype are unchanged.
        """

        bm, bn, bk, split = config.block_m, config.block_n, config.block_k, config.split_k
        batch = min(problem.batch, 2) if problem.batch else None
        # the TMA kernel runs only where every row is 16-byte aligned: its ragged edges are half a tile (a
        # multiple of 8 elements) instead of half a tile and one
        edge = 0 if config.tma else 1
        m = min(problem.m, bm + bm // 2 + edge)
        # M, N and K of different sizes (a tile more where they would meet, as ragged as before): with equal
        # tiles they were one size, and a kernel that took one for another passed its check
        n = min(problem.n, bn + bn // 2 + edge)
        if n == m and n + bn <= problem.n:
            n += bn
        k = min(problem.k, (split - 1) * 2 * bk + bk + bk // 2 + edge)
        while k in (m, n) and k + bk <= problem.k:
            k += bk
        ragged = replace(problem, m=m, n=n, k=k, batch=batch)
        if problem.m % bm or problem.n % bn or problem.k % bk:
            return [ragged]
        whole = replace(
            problem,
            m=bm * min(2, problem.m // bm),
            n=bn * min(2, problem.n // bn),
            k=bk * min(2 * split, problem.k // bk),
            batch=batch,
        )
        return [ragged, whole] if whole != ragged else [ragged]

    def render(
        self,
        problem: GemmProblem,
        config: GemmConfig,
        *,
        name: str = "gemm",
        device: str = "h100",
        kt_version: str = "",
        provenance: str = "a candidate, not yet measured",
    ) -> str:
        """The kernel module's source; `provenance` says in its docstring how the config was chosen."""
        return render_template(
            self.template,
            name=name,
            dtype=problem.dtype,
            precision=problem.precision,
            problem=str(problem),
            device=device,
            c=config,
            config_line=str(config),
            # the 16-bit operands whose rows the build judged legal took unaligned (one buffer, not a stage's)
            unaligned=unaligned_operands(problem) if itemsize(problem.dtype) == 2 else (False, False),
            kt_version=kt_version,
            family_version=self.version,
            provenance=provenance,
        )
