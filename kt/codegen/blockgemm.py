"""The block-GEMM families: Monarch, butterfly and FFT as launches of one batched block-GEMM kernel.

One template (blockgemm.py.j2) serves the three: the IR's lowering passes (kt.ir.lowering) turn the op's
factors into stages, each a block-diagonal GEMM whose loads and stores follow strided index maps, and the
template bakes the stages in as constants. A config is a schedule (tiles, blocks per program, warps, pipeline
depth) plus the op's structure choice: Monarch fused into one kernel or not, butterfly levels per stage, or
the FFT's split n = n1 * n2. None of it changes what is computed. A transposed Monarch or butterfly (the
backward pass's map, `transposed` on the problem) lowers to stages that read the forward op's weight tensors
transposed (a transposed view of w1, w2; transposed blocks built from the same twiddles): the same families.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from kt.axes import BLOCK_GEMM_AXES, BLOCK_GEMM_FIELDS, FLAG_AXES
from kt.codegen.family import StructuredFamily, gemm_stage
from kt.codegen.gemm import (
    MIN_DOT,
    config_from_mapping,
    k_step_registers,
    kept_stages,
    padded,
    two_warp_k_reason,
    wgmma_tile,
)
from kt.device import DeviceProfile
from kt.dtypes import itemsize
from kt.ir.factors import ButterflyGroup
from kt.ir.lowering import Stage, lower
from kt.ir.problems import ButterflyProblem, FFTProblem, MonarchProblem, StructuredProblem

AXES = BLOCK_GEMM_AXES  # kt.axes holds every family's axes
STRUCTURE_AXES = ("fused", "levels", "split")  # one of them is used by each family


@dataclass(frozen=True, order=True)
class BlockGemmConfig:
    block_b: int
    block_n: int
    block_k: int
    group: int = 1
    num_warps: int = 4
    num_stages: int = 3
    fused: int = 0  # monarch: 1 runs both factors in one kernel
    levels: int = 0  # butterfly: levels multiplied out into each stage
    split: int = 0  # fft: n1 of the four-step split n = n1 * n2
    # 1: x and y cross a strided end map (the first launch's loads, the last one's stores) through feature-major
    # copies, each one transpose launch, where the caller's row-major layout would move them as scalars
    ends: int = 0

    def structure(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STRUCTURE_AXES if getattr(self, name)}

    def key(self) -> str:
        structure = "".join(f"{name[0]}{value}" for name, value in self.structure().items())
        if self.fused:
            structure = "fused"
        return (
            f"b{self.block_b}n{self.block_n}k{self.block_k}g{self.group}"
            f"w{self.num_warps}s{self.num_stages}{'-' + structure if structure else ''}{'-fm' if self.ends else ''}"
        )

    def to_dict(self) -> dict[str, int]:
        data = asdict(self)
        if not self.ends:  # written only when set: configs without it keep their records, rows and dicts
            del data["ends"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockGemmConfig:
        return config_from_mapping(cls, data, BLOCK_GEMM_FIELDS)

    def __str__(self) -> str:
        return " ".join(f"{k.upper() if k.startswith('block') else k}={v}" for k, v in self.to_dict().items())


def stages_for(problem: StructuredProblem, config: BlockGemmConfig) -> list[Stage]:
    """The launches `config` runs (for a fused Monarch: the two it replaces)."""
    return lowered(problem, config.structure())


def lowered(problem: StructuredProblem, structure: dict[str, int]) -> list[Stage]:
    """The launches of a structure choice, lowered once per (problem, choice): the index tables behind them hold
    every feature, and legality, the cost model's records, `kt show` and rendering each asked again (a butterfly
    over n = 2**16 took seconds per pass)."""
    return list(_lowered(problem, tuple(sorted(structure.items()))))


@functools.lru_cache(maxsize=64)
def _lowered(problem: StructuredProblem, structure: tuple) -> tuple[Stage, ...]:
    return tuple(lower(problem.linear_map(dict(structure))))


def strided_ends(stages: list[Stage]) -> tuple[bool, bool]:
    """Whether the first launch reads x, and the last writes y, through a strided map: a block's elements lie
    apart (elem > 1), so in the caller's row-major layout a tile's elements are a map stride apart and the sm_90
    build moves them as 2-byte scalars (benchmarks/layout_probe.py --ptx). `ends` = 1 sends those ends
    through feature-major copies."""
    return stages[0].in_map.elem != 1, stages[-1].out_map.elem != 1


def stage_transposed(factor) -> bool:
    """Whether a stage multiplies by the transposes of its weight's stored blocks: a BlockDiag stored (in, out)
    (a transposed Monarch's w1, w2) or a transposed butterfly group (built from the same twiddles)."""
    if isinstance(factor, ButterflyGroup):
        return factor.transposed
    return factor.storage == "in_out"


def is_complex(problem: StructuredProblem) -> bool:
    return isinstance(problem, FFTProblem)


def stage_tiles(stage: Stage, config: BlockGemmConfig) -> tuple[int, int]:
    """BLOCK_N and BLOCK_K of one stage: the config's, cut to the stage's padded block (a butterfly's stages
    differ in size when the levels do not divide evenly)."""
    return min(config.block_n, padded(stage.blk_out)), min(config.block_k, padded(stage.blk_in))


# The fused Monarch's batched (3D) tl.dot over fewer blocks than warps: Triton 3.6 (the GPU machines') spreads
# the warps over the batch axis first, so warps beyond the batch repeat the same products (its sm_90 PTX held
# num_warps / group times the mma.sync of Triton 3.9's when the two-launch kernel still ran batched dots).
# Such configs are left out, so the space does not depend on the Triton version. The two-launch stage kernel
# takes a program's GROUP blocks one after the other, each a plain 2D dot (wgmma on Hopper).
WARPS_OVER_BATCH = (
    "fewer blocks per program than warps (Triton 3.6 repeats the batched dot on the extra warps)"
)


SECTOR_BYTES = 32  # the unit DRAM and L2 move: a scattered 2-byte load still costs a whole sector


def run_bytes(index_map, tile: int, size: int) -> int:
    """Contiguous bytes a program touches per row of the caller's row-major x or y through `index_map`: its
    tile of a block's elements when they are adjacent (elem 1), else one element.

    Until 2026-12-04 a program spanning GROUP adjacent blocks was priced as filling the sectors (the blocks'
    loads following each other, L2 serving the next block). The second H200 run's probe (benchmarks/results/
    h200-2026-12-04/probe.csv) did not bear it out: Monarch n = 4096 took 3.10 to 3.60 ms over groups 1 to 16
    where this model had predicted 0.26 to 0.83 ms, the one-block configs the slowest; the FFT n = 4096 took
    6.8 to 15.0 ms, its one-block configs 10.1 to 11.0 among them. And the sm_90 builds move such elements as
    2-byte scalars whatever the group (benchmarks/layout_probe.py --ptx)."""
    return tile * size if index_map.elem == 1 else size


def dram_bytes(
    problem: StructuredProblem, config: BlockGemmConfig, stage: Stage, index: int, count: int
) -> int:
    """Launch `index` of `count`'s DRAM traffic for its input and output, each access rounded up to whole
    sectors. Intermediates between launches are stored feature-major (the kernel's `_scratch`), so a program's
    BLOCK_B rows are adjacent there whatever the map, as are x and y where feature-major ends copy them; else x
    and y keep the caller's row-major layout, where a strided map moves a whole sector per element
    (`run_bytes`; the first H200 run's Monarch ran 4 to 11 times slower than two torch.bmm)."""
    size = itemsize(problem.dtype)
    planes = 2 if is_complex(problem) else 1
    real_input = isinstance(problem, FFTProblem) and problem.input == "real" and index == 0
    block_n, block_k = stage_tiles(stage, config)
    total = 0
    # with `ends`, x and y at a strided end are feature-major copies (their traffic: the record's `copy_bytes`)
    x_copied = bool(config.ends) and index == 0 and stage.in_map.elem != 1
    y_copied = bool(config.ends) and index == count - 1 and stage.out_map.elem != 1
    for features, index_map, tile, scratch, tensors in (
        (stage.in_features, stage.in_map, block_k, index > 0 or x_copied, 1 if real_input else planes),
        (stage.out_features, stage.out_map, block_n, index < count - 1 or y_copied, planes),
    ):
        run = min(config.block_b, problem.rows) * size if scratch else run_bytes(index_map, tile, size)
        total += tensors * problem.rows * features * size * SECTOR_BYTES // min(SECTOR_BYTES, run)
    return total


def copy_bytes(problem: StructuredProblem, stages: list[Stage]) -> int:
    """DRAM traffic of feature-major ends: each strided end's tensor read and written once by its transpose
    launch (x before the first launch, y after the last)."""
    size = itemsize(problem.dtype)
    planes = 2 if is_complex(problem) else 1
    x_planes = 1 if isinstance(problem, FFTProblem) and problem.input == "real" else planes
    first, last = strided_ends(stages)
    features = (stages[0].in_features * x_planes if first else 0) + (
        stages[-1].out_features * planes if last else 0
    )
    return 2 * problem.rows * features * size


FUSED_FIXED = (MIN_DOT, MIN_DOT, 1, min(AXES["num_stages"]))  # block_n, block_k, group, num_stages


def fused_reason(problem: MonarchProblem, config: BlockGemmConfig, device: DeviceProfile) -> str | None:
    """Why the fused Monarch kernel cannot run `problem` with `config`, or None (the problem's shape rule,
    `MonarchProblem.fusable`, decides whether its space has a fused form at all).

    It holds a (BLOCK_B, n) slab of x, the whole intermediate and both weights on chip."""
    k, l = problem.w1[0], problem.w2[0]  # noqa: E741
    # Its kernel has no loop (whole blocks in one dot each), so NUM_STAGES pipelines nothing: configs of other
    # stages built to the same sm_90 PTX, and the forest ranked the copies apart (a guided first round took two)
    if (config.block_n, config.block_k, config.group, config.num_stages) != FUSED_FIXED:
        return "tile choices unused by the fused kernel (it takes block_n {}, block_k {}, group {}, {} stages)".format(
            *FUSED_FIXED
        )
    if min(k, l) < config.num_warps:
        return WARPS_OVER_BATCH
    working_set, acc = resources(problem, config, device)
    if working_set > device.smem_per_block:
        return "fused Monarch's working set over the on-chip memory"
    if acc > device.acc_regs_limit:
        return f"accumulator over {device.acc_regs_limit} registers per thread"
    # Sampled fused float32 builds in two warps spilled at n=512, 32 blocks (b16, both precisions: all 255
    # registers, or 10 KB of local memory at 32); 16-bit ones did not (146 to 166 registers, sm_80 and sm_90).
    if config.num_warps < 4 and problem.dtype == "float32":
        return "fused Monarch in two warps spills in float32"
    # 16-bit ones with blocks 32 wide did, at 128 accumulator registers (n=512, 16 blocks, b16: all 255 registers
    # and 88 bytes of local memory on sm_90, 64 on sm_80, Triton 3.9, 2026-12-07), where 16 wide (32 blocks) took
    # 146 and 64 accumulator registers (n=256, 8 blocks) 94
    wide = max(*problem.w1[1:], *problem.w2[1:]) > 16
    if config.num_warps < 4 and wide and acc > device.acc_regs_limit // 2:
        return f"fused Monarch in two warps spills with blocks over 16 wide and over {device.acc_regs_limit // 2} accumulator registers"
    return None


def resources(problem: StructuredProblem, config: BlockGemmConfig, device: DeviceProfile) -> tuple[int, int]:
    """Estimated on-chip bytes (the pipelined tiles, or a fused Monarch's working set) and fp32 accumulator
    registers per thread of one program."""
    size = itemsize(problem.dtype)
    threads = config.num_warps * device.warp_size
    if config.fused:
        (k, q, p), (l, s, r) = problem.w1, problem.w2  # noqa: E741
        activations = config.block_b * (k * p * size + k * q * (4 + size) + l * s * 4)
        return activations + (k * q * p + l * s * r) * size, config.block_b * k * q // threads
    # A build keeps every pipeline stage's tiles only with wgmma: 60 sampled mma.sync builds of the examples that
    # every stage's count refused (Triton 3.9, 2026-12-05, sm_80 and sm_90; benchmarks/stage_builds.py --family)
    # allocated no more than `stages - 1` stages' count, wgmma ones up to every stage's. Only 16-bit builds count
    # so: the compile stage refused 3 of those 36 for a spill, but 13 of the 24 tf32 ones (b16n128k128g1w8s2:
    # 128 bytes of local memory), a register limit this count stood in for and the register rules below do not
    # draw (BENCHMARKS.md, "Block-GEMM configs legal by the stages a build keeps").
    every = wgmma_tile(problem, config.block_b, config.num_warps, device) or size != 2
    stages = kept_stages(config.num_stages, every)
    planes = 2 if is_complex(problem) else 1
    return shared_memory(problem, config, stages), config.block_b * config.block_n * planes // threads


def shared_memory(problem: StructuredProblem, config: BlockGemmConfig, stages: int) -> int:
    """Bytes of shared memory a stage-kernel program of `config` holds with `stages` pipeline stages' tiles
    (`resources` gives it the stages a build keeps; `config.num_stages`, every stage, was the rule until
    2026-12-05 and is every 4-byte build's)."""
    size = itemsize(problem.dtype)
    planes = 2 if is_complex(problem) else 1
    # The stage kernel's dots are 2D; with wgmma every pipeline stage's tiles stay in shared memory, however many
    # blocks a program takes (its flattened loop pipelines across them: sm_90 wgmma builds under Triton 3.6 and
    # 3.9, tests/test_compile_target.py), with mma.sync `stages - 1` (`resources`).
    # A launch whose tiles are thin in K can need more for its epilogue: storing a (BLOCK_B, BLOCK_N) tile to a
    # feature-major intermediate converts its layout through shared memory (b256n64k16 builds took 32 KiB
    # where the pipelined tiles held 30).
    # A complex launch over several blocks held one more x tile (FFT fp16 b64n64k32g4w8s2: 36 KiB for 32); in one
    # block, sampled sm_90 wgmma builds (Triton 3.9, 2026-12-03) held up to 4096 bytes more than their pipelined
    # tiles, with 64 rows (b64n128k64g1w8s3: 151552 built, 147456 in the tiles; b64n32k32g1w8s3, b64n64k64g1w8s3
    # and b64n128k128g1w8s2 alike), none with 128 or 256.
    tiles = stages * (config.block_b + config.block_n) * config.block_k
    smem = max(tiles, config.block_b * config.block_n) * planes * size
    if planes == 2:
        smem += config.block_b * config.block_k * size if config.group > 1 else COMPLEX_SCRATCH
    return smem


COMPLEX_SCRATCH = 4096  # bytes a complex launch in one block held beyond its tiles (resources)
COMPLEX_DEEP_K_REGS = 112  # a 16-bit complex launch in one block, K steps over 32 (illegal_reason)
MAX_GRID_YZ = 65535  # CUDA's gridDim.y and gridDim.z (the interpreter has no such limit)


class StageBounds(NamedTuple):
    """What legality reads of a structure choice's launches, the same for each of its configs (`stage_bounds`)."""

    padded_in: int  # the widest block's input, padded (`padded`)
    padded_out: int  # and its output
    most: int  # the most blocks a launch has
    launches: tuple[tuple[int, int, int], ...]  # each launch's nblocks, blk_out and padded blk_out


def stage_bounds(stages: list[Stage]) -> StageBounds:
    """`stages`' StageBounds: worked out once per structure choice (`BlockGemmFamily.judge`), not once for each
    of its thousands of configs (a butterfly's space read every stage's blocks for each config: 0.6 s)."""
    return StageBounds(
        padded(max(s.blk_in for s in stages)),
        padded(max(s.blk_out for s in stages)),
        max(s.nblocks for s in stages),
        tuple((s.nblocks, s.blk_out, padded(s.blk_out)) for s in stages),
    )


def illegal_reason(
    problem: StructuredProblem,
    config: BlockGemmConfig,
    device: DeviceProfile,
    stages: list[Stage],
    bounds: StageBounds | None = None,
) -> str | None:
    """Why `config` cannot (or cannot sensibly) run `problem` on `device`, or None when it can. `bounds`:
    `stage_bounds(stages)`, given where many configs of one structure choice are judged."""
    bounds = bounds or stage_bounds(stages)
    if config.block_b > padded(problem.rows):
        return "tile larger than the padded problem"
    if config.fused:
        return (
            "feature-major ends with the fused kernel"
            if config.ends
            else fused_reason(problem, config, device)
        )
    if config.ends and not any(strided_ends(stages)):
        return "feature-major ends where no end map is strided (x and y already move in whole runs)"
    if (
        config.ends and problem.rows == 1
    ):  # as `extras` leaves it out: kt.build took what tune.configs refused
        return "feature-major ends of one row (a row is adjacent to itself: the same launches as without)"
    if config.block_n > bounds.padded_out or config.block_k > bounds.padded_in:
        return "tile larger than the padded problem"
    most = bounds.most
    if (
        config.group > 1 << (most - 1).bit_length()
    ):  # a smaller GROUP already takes every block in one program
        if most == 1:
            return "more blocks per program than the 1 block a launch has (GROUP 1 takes it)"
        return f"more blocks per program than the {most} blocks (GROUP {1 << (most - 1).bit_length()} takes them all)"
    # the launch grid is (rows / BLOCK_B, nblocks / GROUP, blk_out / block_n), block_n cut to the stage's padded
    # block (`stage_tiles`)
    for nblocks, blk_out, padded_out in bounds.launches:
        block_n = min(config.block_n, padded_out)
        if -(-nblocks // config.group) > MAX_GRID_YZ or -(-blk_out // block_n) > MAX_GRID_YZ:
            return f"a launch grid over CUDA's {MAX_GRID_YZ} programs on its y or z axis"
    smem, acc = resources(problem, config, device)
    if smem > device.smem_per_block:
        kept = kept_stages(
            config.num_stages, bool(wgmma_tile(problem, config.block_b, config.num_warps, device))
        )
        if not config.fused and shared_memory(problem, config, kept) <= device.smem_per_block:
            # a 4-byte mma.sync build's stages, all counted where a build keeps fewer: the stand-in for the
            # registers 13 of 24 sampled ones spilled (`resources`), not a shared-memory overflow, which its
            # builds showed none of (A100 tf32 FFT b128n64k32g1w8s4: 200704 counted, 147456 built, no spill)
            return (
                f"every pipeline stage of a 4-byte build over {device.smem_limit_text} (counted in full for "
                "the registers such builds spilled)"
            )
        return f"shared memory over {device.smem_limit_text}"
    # In one block too, a complex launch's deep K steps keep its four operand tiles (16-bit, two to a register)
    # beside the two accumulators: sampled float16 builds with K steps of 64 and 128 (Triton 3.9, 2026-12-03,
    # sm_80 and sm_90, n = 4096, real and complex input, 48 of them) spilled at all 255 registers over 112
    # registers per thread of accumulator and operands (b64n64k64g1w4: 64 + 64; b128n32k64g1w4: 64 + 80;
    # b16n128k128g1w4: 32 + 144; b256n16k64g1w4: 64 + 136), and never at or below it (b128n32k128g1w8: 32 + 80;
    # b128n64k64g1w8: 64 + 48), but for A100 b64n64k128g1w8 (32 + 64). K steps of 32 built clean past it.
    if (
        is_complex(problem)
        and config.group == 1
        and config.block_k > 2 * MIN_DOT
        and itemsize(problem.dtype) == 2
    ):
        threads = config.num_warps * device.warp_size
        operands = 2 * (config.block_b + config.block_n) * config.block_k // (2 * threads)
        if acc + operands > COMPLEX_DEEP_K_REGS:
            return (
                f"accumulator and operand tiles over {COMPLEX_DEEP_K_REGS} registers per thread for complex dots "
                f"with a K step over {2 * MIN_DOT}"
            )
    # A complex launch's four dots keep two accumulators and four operand tiles beside them: in the sm_90
    # builds every such config with 128 accumulator registers per thread spilled at all 255 registers (`kt show
    # --ptx`; the FFT's b256n64k32g1w8s4, a 120 s compile timeout on the first H200 run, among them), none with
    # 64 did; so did two-warp programs. A loop over several blocks keeps the next step's operands live beside
    # the accumulator: tensor-core dots over several blocks with more than 32 accumulator registers per thread
    # are judged by a count of both (`several_blocks_reason`, last); FMA dots, not sampled, keep 32.
    fma = problem.dtype == "float32" and problem.precision == "ieee"
    tight = is_complex(problem) or config.num_warps < 4
    if config.group > 1 and fma:
        limit, why = device.acc_regs_limit // 4, " (FMA dots over several blocks)"
    else:
        limit, why = (
            device.acc_regs_limit // (2 if tight else 1),
            " (complex or two-warp dots)" if tight else "",
        )
    if acc > limit:
        return f"accumulator over {limit} registers per thread{why}"
    threads = config.num_warps * device.warp_size
    planes = 2 if is_complex(problem) else 1
    if fma:
        # Without tensor cores a dot runs as FMAs on operand tiles held in registers: those count too. Sampled
        # sm_90 builds that spilled at all 255 registers held 112 (Triton 3.6) to 224 accumulator and operand
        # registers per thread, or, for the FFT's four complex dots, 56 to 128, every K step over 16 and every
        # batched one; none within 96 (real) or 64 in one block with K steps of 16 (complex) did, on either
        # Triton.
        if planes == 2 and config.block_k > MIN_DOT:
            return f"complex FMA dots need K steps of {MIN_DOT} (their operands spill)"
        # Over several blocks the next step's operand tiles are live beside these (b256n16k16g16w4 spilled).
        operands = planes * (config.block_b + config.block_n) * config.block_k // threads
        operands *= 2 if config.group > 1 else 1
        fma_limit = 3 * device.acc_regs_limit // 4 if planes == 1 else device.acc_regs_limit // 2
        if acc + operands > fma_limit:
            return f"accumulator and operand tiles over {fma_limit} registers per thread (FMA dots)"
    # a loop over several blocks keeps the next block's operand tiles live beside these: counted twice (sm_90
    # builds of Monarch's 128-wide blocks spilled at 32 accumulator and 96 operand registers, GROUP 4 and 8)
    operands = k_step_registers(problem.dtype, config.block_b, config.block_n, config.block_k, threads)
    operands *= 2 if config.group > 1 else 1
    why = two_warp_k_reason(problem, device, config.num_warps, config.block_k, acc, operands, planes)
    if why:
        return why
    return complex_several_k_reason(problem, config, device, acc, threads) or several_blocks_reason(
        problem, config, device, acc, threads, strided_launch(config, stages)
    )


# `complex_several_k_reason`: a complex launch (the FFT's) over several blocks with a K step over 32 spills past
# this count of accumulator registers and twice one K step's operand registers per thread (both planes: the
# next block's tiles are live beside them), by compute capability (sm_90's from 90 on, sm_80's below it: sm_86
# and sm_89 were not sampled) and operand size (tf32's four-byte elements take a register each). Each is the
# highest count at which no build of the fit and held-out samples spilled, as the compile stage judges it (2026-12-05, Triton 3.9;
# `benchmarks/complex_group_k_builds.py`, BENCHMARKS.md). The count is a coarse one: Triton spreads the warps
# over a tile's rows or columns (warpsPerCTA) as it chooses, and where a tile has fewer rows or columns than
# its warps take, operands are held in several warps at once; so builds spilled well below counts at which
# others were clean (sm_90 tf32 b32n32k64g16w8s2 at 72 against clean ones at 224). Until then every such
# launch was refused for its K step alone, after one sm_90 build spilled (FFT fp16 b64n64k128g4w4s3, at 320).
COMPLEX_SEVERAL_K_LIMITS = {(90, 2): 136, (90, 4): 64, (80, 2): 152, (80, 4): 128}


def complex_several_k_reason(
    problem: StructuredProblem, config: BlockGemmConfig, device: DeviceProfile, acc: int, threads: int
) -> str | None:
    """Why a complex launch over several blocks (GROUP over 1) with a K step over 32 would spill, or None: its
    accumulator and twice one K step's operand registers of both planes per thread pass
    `COMPLEX_SEVERAL_K_LIMITS` (by compute capability and operand bytes)."""
    if config.group == 1 or not is_complex(problem) or config.block_k <= 2 * MIN_DOT:
        return None
    size = 4 if problem.precision == "tf32" else itemsize(problem.dtype)
    limit = COMPLEX_SEVERAL_K_LIMITS[(90 if device.compute_capability >= 90 else 80, size)]
    if acc + 2 * k_step_operands(problem, config, threads) > limit:  # both planes
        return (
            f"accumulator and twice its K-step operand registers over {limit} per thread in a complex "
            f"program over several blocks (K step over {2 * MIN_DOT})"
        )
    return None


# `several_blocks_reason`: a tensor-core launch over several blocks (GROUP over 1) with more than
# `SEVERAL_BLOCKS_FREE_ACC` accumulator registers per thread spills past this count of accumulator registers and
# twice one K step's operand registers per thread (both planes where complex; the next block's tiles are live
# beside them), by compute capability (sm_90's from 90 on, sm_80's below it: sm_86 and sm_89 were not sampled),
# real or complex dots, operand size (tf32's four-byte elements take a register each) and whether the launch
# moves x or y through a strided end map (`strided_ends`, without feature-major ends: element by element, each
# with its own address, so such launches spilled at far lower counts). Each is the highest count at which no
# build of the fit and held-out samples spilled (2026-12-05, Triton 3.9; `benchmarks/several_blocks_builds.py`,
# BENCHMARKS.md). The count is coarse (where a tile is narrower than its warps, each
# warp holds the same operands): it refuses some clean builds and lets a few spills in, which the compile stage
# then refuses. Until then every such launch was refused (an accumulator over 32 registers per thread).
SEVERAL_BLOCKS_FREE_ACC = 32
SEVERAL_BLOCKS_LIMITS = {  # (compute capability, dots, operand bytes, strided end map): count
    (90, "real", 2, False): 440,
    (90, "real", 2, True): 120,
    (90, "real", 4, False): 440,
    (90, "real", 4, True): 168,
    (90, "complex", 2, False): 208,
    (90, "complex", 2, True): 104,
    (90, "complex", 4, False): 152,
    (90, "complex", 4, True): 200,
    (80, "real", 2, False): 248,
    (80, "real", 2, True): 96,
    (80, "real", 4, False): 192,
    (80, "real", 4, True): 96,
    (80, "complex", 2, False): 208,
    (80, "complex", 2, True): 192,
    (80, "complex", 4, False): 352,
    (80, "complex", 4, True): 248,
}


def strided_launch(config: BlockGemmConfig, stages: list[Stage]) -> bool:
    """Whether the launches move x or y through a strided end map: one is strided (`strided_ends`) and the
    config has no feature-major ends."""
    return not config.ends and any(strided_ends(stages))


def k_step_operands(problem: StructuredProblem, config: BlockGemmConfig, threads: int) -> int:
    """Registers per thread one K step's operand tiles take, both planes where complex (`k_step_registers`)."""
    planes = 2 if is_complex(problem) else 1
    return planes * k_step_registers(problem.dtype, config.block_b, config.block_n, config.block_k, threads)


def several_blocks_reason(
    problem: StructuredProblem,
    config: BlockGemmConfig,
    device: DeviceProfile,
    acc: int,
    threads: int,
    strided: bool,
) -> str | None:
    """Why a tensor-core launch over several blocks (GROUP over 1) with an accumulator over
    `SEVERAL_BLOCKS_FREE_ACC` registers per thread would spill, or None: its accumulator and twice one K step's
    operand registers per thread (both planes where complex) pass `SEVERAL_BLOCKS_LIMITS` (`strided`: x or y
    moves through a strided end map)."""
    if config.group == 1 or acc <= SEVERAL_BLOCKS_FREE_ACC:
        return None
    size = 4 if problem.precision == "tf32" else itemsize(problem.dtype)
    arch = 90 if device.compute_capability >= 90 else 80
    limit = SEVERAL_BLOCKS_LIMITS[(arch, "complex" if is_complex(problem) else "real", size, strided)]
    if acc + 2 * k_step_operands(problem, config, threads) > limit:
        ends = "strided" if strided else "contiguous"
        return (
            f"accumulator and twice its K-step operand registers over {limit} per thread in a program over "
            f"several blocks with {ends} ends (accumulator over {SEVERAL_BLOCKS_FREE_ACC})"
        )
    return None


class BlockGemmFamily(StructuredFamily):
    """The family of one structured problem type; all three share the template and the config type."""

    template = "blockgemm.py.j2"
    axes = AXES
    config_type = BlockGemmConfig
    structure_axes = {flag: BLOCK_GEMM_FIELDS[flag] for flag in FLAG_AXES}  # `tune.space` names them too

    resources = staticmethod(resources)

    def judge(self, problem: StructuredProblem, structure: dict[str, int], device: DeviceProfile):
        stages = lowered(problem, structure)  # once per structure choice, for all its configs
        bounds = stage_bounds(stages)
        return lambda config: illegal_reason(problem, config, device, stages, bounds)

    def extras(self, problem: StructuredProblem, structure: dict[str, int]) -> tuple[dict[str, int], ...]:
        """Each config of a structure choice as it is, and with feature-major ends (`ends` = 1) where an end map
        of that structure is strided, the kernel is not the fused one and there is more than one row (a single
        row is adjacent to itself: the kernel copies nothing, so the twin would run the same launches)."""
        if structure.get("fused") or problem.rows == 1 or not any(strided_ends(lowered(problem, structure))):
            return ({},)
        return ({}, {"ends": 1})

    def tile_of(self, problem: StructuredProblem, config: BlockGemmConfig) -> BlockGemmConfig:
        """The config without its blocks per program and its ends, which the cost model cannot rank: each launch
        is predicted as a GEMM that has no GROUP (the second H200 run's eleven Monarch configs, GROUP 1 to 16,
        took 3.10 to 3.60 ms: `run_bytes`), and whether the copies of feature-major ends cost less than the
        scalars they replace is a GPU's to say. A guided first round takes one config per tile, and the polish
        of later rounds tries the best measured tile's other variants first (kt.autotune.search, `variant`)."""
        return replace(config, group=1, ends=0)

    launch_legend = "load/store maps: inner, outer, inner_stride, elem"
    launch_note = (
        "ends=1 (config key -fm), beside each choice but the fused one at more than one row: where the first "
        "launch's load map is strided (elem > 1), x is first copied feature-major, and where the last launch's "
        "store map is, y is written feature-major and copied into place: one transpose launch per plane and copy"
    )

    def launch_texts(self, problem: StructuredProblem, structure: dict[str, int]) -> list[str]:
        """What each launch of a structure choice runs, for `kt show`."""
        if structure.get("fused"):
            # kept though its batched 3D dots run mma.sync, not wgmma: it saves the intermediate's round trip
            # through DRAM, and the cost model predicts it at mma.sync speed (`mma: "sync"` on its launches)
            return [
                "one launch, the intermediate kept on chip (where it fits); batched 3D dots on mma.sync, "
                "kept for the DRAM round trip it saves"
            ]
        return [str(stage) for stage in lowered(problem, structure)]

    def check_problems(self, problem: StructuredProblem, config: BlockGemmConfig) -> list[StructuredProblem]:
        """Problems for the interpreter: the same features (the structure is the problem) with rows cut to one
        full tile of rows and a ragged one, so every mask and index map runs."""
        rows = min(problem.rows, config.block_b + config.block_b // 2 + 1)
        return [replace(problem, rows=rows)]

    def stage_records(
        self, problem: StructuredProblem, config: BlockGemmConfig, stages: list[Stage]
    ) -> list[dict[str, Any]]:
        """Each of `config`'s launches (`stages`, lowered for its structure) as the batched GEMM it is (one
        product per block) for the cost model: the rows of x are M, a block's outputs N and inputs K; a complex
        stage is its real form, twice as wide each way."""
        planes = 2 if is_complex(problem) else 1
        records = []
        for index, stage in enumerate(stages):
            block_n, block_k = stage_tiles(stage, config)
            real_input = isinstance(problem, FFTProblem) and problem.input == "real" and index == 0
            records.append(
                gemm_stage(
                    problem,
                    problem.rows,
                    stage.blk_out * planes,
                    stage.blk_in * (1 if real_input else planes),
                    batch=stage.nblocks,
                    block_m=config.block_b,  # a fused kernel's dots span whole blocks
                    block_n=padded(stage.blk_out) if config.fused else block_n,
                    block_k=padded(stage.blk_in) if config.fused else block_k,
                    group_m=1,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    split_k=1,
                )
            )
            if not config.fused:  # a fused kernel's tiles are whole blocks
                records[-1]["dram_bytes"] = dram_bytes(problem, config, stage, index, len(stages))
            if config.fused:  # batched 3D dots: mma.sync on every architecture
                records[-1]["mma"] = "sync"
        return records

    def records(self, problem: StructuredProblem, configs) -> list[dict[str, Any]]:
        """The cost model's record of each config: the problem, the config, and its launches as `stages`
        (`fused_bytes`: DRAM traffic a fused kernel saves, the intermediate written and read back)."""
        base = problem.to_record()
        lowered: dict[tuple, list[Stage]] = {}  # per structure choice: many configs share one lowering
        out = []
        for config in configs:
            structure = tuple(config.structure().items())
            if structure not in lowered:
                lowered[structure] = stages_for(problem, config)
            record = {**base, **config.to_dict(), "group_m": config.group, "split_k": 1}
            record["stages"] = self.stage_records(problem, config, lowered[structure])
            if config.fused:
                (k, q, _), _ = problem.w1, problem.w2
                record["fused_bytes"] = 2 * problem.rows * k * q * itemsize(problem.dtype)
            if config.ends:
                record["copy_bytes"] = copy_bytes(problem, lowered[structure])
            out.append(record)
        return out

    def variables(self, problem: StructuredProblem, config: BlockGemmConfig) -> dict[str, Any]:
        stages, launches = [], stages_for(problem, config)
        for stage in launches:
            block_n, block_k = stage_tiles(stage, config)
            factor = stage.factor
            weight = (factor.first, factor.levels) if isinstance(problem, ButterflyProblem) else factor.weight
            stages.append(
                {
                    "weight": repr(weight),
                    "nblocks": stage.nblocks,
                    "blk_in": stage.blk_in,
                    "blk_out": stage.blk_out,
                    "in_features": stage.in_features,
                    "out_features": stage.out_features,
                    "in_map": stage.in_map.astuple(),
                    "out_map": stage.out_map.astuple(),
                    "diag": repr(stage.diag.weight if stage.diag else None),
                    "block_n": block_n,
                    "block_k": block_k,
                    "transposed": stage_transposed(factor),
                    "text": str(stage.factor) + (f" * {stage.diag}" if stage.diag else ""),
                }
            )
        variables: dict[str, Any] = {"op": problem.family}
        if isinstance(problem, MonarchProblem) and problem.transposed:
            variables.update(
                w1=problem.w1,
                w2=problem.w2,
                transposed=True,
                op_doc="transposed Monarch y = x @ M = M^T x, M = Perm(l, s) BlockDiag(w2) Perm(r, l) BlockDiag(w1)",
                call_doc="kernel(x, w1, w2): x (..., l*s), w1 (k, q, p), w2 (l, s, r) -> y (..., k*p).",
            )
        elif isinstance(problem, MonarchProblem):
            variables.update(
                w1=problem.w1,
                w2=problem.w2,
                transposed=False,
                op_doc="Monarch y = Perm(l, s) BlockDiag(w2) Perm(r, l) BlockDiag(w1) x",
                call_doc="kernel(x, w1, w2): x (..., k*p), w1 (k, q, p), w2 (l, s, r) -> y (..., l*s).",
            )
        elif isinstance(problem, ButterflyProblem):
            mark = "transposed " if problem.transposed else ""
            variables.update(
                n=problem.n,
                transposed=problem.transposed,
                op_doc=f"{mark}butterfly over n={problem.n} (log2 n levels of 2x2 twiddles)",
                call_doc="kernel(x, twiddles): x (..., n), twiddles (log2 n, n/2, 2, 2) -> y (..., n)"
                + (", y = x @ B for the butterfly B of the twiddles." if problem.transposed else "."),
            )
        else:
            n1 = config.split
            variables.update(
                n=problem.n,
                n1=n1,
                n2=problem.n // n1,
                input=problem.input,
                op_doc=f"FFT over n={problem.n} as dense DFT blocks (four-step, n = {n1} x {problem.n // n1})",
                call_doc="kernel(x) = torch.fft.fft(x) over the last dim (complex format: see kernel()).",
            )
        if config.ends:
            variables["ends_doc"] = _ends_doc(*strided_ends(launches), planes=problem.family == "fft")
        return {**variables, "fused": bool(config.fused), "ends": bool(config.ends), "stages": stages}


def _ends_doc(x: bool, y: bool, planes: bool) -> str:
    """What feature-major ends copy, for a module's docstring: the ends whose map is strided, each where its
    tensor's rows are not adjacent (`_run` in the template)."""
    launch = "one transpose launch per plane: a complex tensor has two" if planes else "one transpose launch"
    if x and y:
        return (
            "x and y, which the first launch reads and the last writes through strided end maps, go through "
            f"feature-major copies ({launch}) where their rows are not adjacent."
        )
    which = "x, which the first launch reads" if x else "y, which the last launch writes"
    return f"{which} through a strided end map, goes through a feature-major copy ({launch}) where its rows are not adjacent."
