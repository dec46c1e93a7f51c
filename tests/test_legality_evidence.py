"""Legality against sampled sm_80 / sm_90 builds (Triton 3.9's bundled ptxas, 2026-12-03): pure Python, each case
a build that was compiled, with what it did."""

import dataclasses

import pytest

from kt.codegen import GemmConfig
from kt.codegen.blockgemm import BlockGemmConfig, stages_for
from kt.codegen.blockgemm import illegal_reason as block_reason
from kt.codegen.blockgemm import resources as block_resources
from kt.codegen.blockgemm import shared_memory as block_shared_memory
from kt.codegen.bsrgrad import BsrGradConfig
from kt.codegen.gemm import GemmFamily, built_shared_memory, illegal_reason, unaligned_operands
from kt.codegen.tilesum import TileConfig
from kt.codegen.tilesum import illegal_reason as tile_reason
from kt.codegen.tilesum import resources as tile_resources
from kt.device import A100, H100
from kt.ir import GemmProblem
from kt.ir.ops import op_from_spec
from kt.ir.problems import BsrGradProblem, ChainProblem, FFTProblem
from kt.sparsity import mask_to_hex, random_mask
from kt.spec import parse_spec

ODD = GemmProblem(4096, 4100, 4104)  # neither K nor N a multiple of 16 elements
ODD_K = GemmProblem(4096, 4096, 4104)
ODD_N = GemmProblem(4096, 4100, 4096)
EVEN = GemmProblem(4096, 4096, 4096)


def test_alignment_is_read_from_the_layouts_and_the_batch():
    assert unaligned_operands(EVEN) == (False, False)
    assert unaligned_operands(ODD) == (True, True)
    assert unaligned_operands(ODD_K) == (True, False)  # K leads A's rows; B's rows are N long
    assert unaligned_operands(GemmProblem(4096, 4096, 4104, b_layout="col")) == (True, True)
    assert unaligned_operands(GemmProblem(4104, 4096, 4096, a_layout="col")) == (True, False)
    assert unaligned_operands(GemmProblem(4095, 4096, 4096)) == (False, False)  # M is no row's length
    assert unaligned_operands(GemmProblem(4096, 4100, 4096, batch=2)) == (False, True)


# (device, problem, config, spilled): builds of the designed samples. Spilled: all 255 registers and local memory.
SMALL = GemmProblem(768, 1032, 1000)  # K and N unaligned, M small
UNALIGNED = [
    (H100, ODD, GemmConfig(256, 128, 64, 8, 8, 3), True),  # 376 B/thread: the forest's top config
    (H100, ODD, GemmConfig(128, 128, 64, 8, 4, 3), True),  # 608 B
    (H100, ODD, GemmConfig(64, 256, 32, 8, 4, 3), True),  # 104 B
    (H100, ODD_N, GemmConfig(128, 128, 128, 8, 4, 3), True),  # 368 B
    (H100, ODD, GemmConfig(32, 256, 64, 8, 4, 2), True),  # mma.sync, 216 B
    (A100, ODD_K, GemmConfig(128, 128, 32, 8, 4, 4), True),  # 72 B at stages 2 to 5 alike
    (A100, ODD, GemmConfig(128, 64, 64, 8, 4, 5), True),  # 512 B
    (H100, ODD_K, GemmConfig(128, 128, 32, 8, 4, 5), False),  # 249 registers
    (H100, ODD_N, GemmConfig(64, 256, 32, 8, 4, 3), False),  # 255 registers, no local memory
    (H100, ODD, GemmConfig(128, 128, 64, 8, 8, 3), False),  # 254
    (H100, ODD, GemmConfig(32, 128, 128, 8, 4, 2), False),  # mma.sync, 255
    (A100, ODD_K, GemmConfig(128, 64, 64, 8, 4, 4), False),  # 192
    (A100, ODD, GemmConfig(256, 64, 32, 8, 8, 3), False),  # 255
    # held-out builds of the weighted count (kt.codegen.gemm.unaligned_reason; benchmarks/unaligned_builds.py):
    # spills the unweighted count (acc + A's + B's tile elements per thread) let in, clean builds it refused
    (H100, SMALL, GemmConfig(256, 64, 16, 4, 4, 5), True),  # 88 B; unweighted 64 + 32 + 8 = 104
    (H100, SMALL, GemmConfig(128, 128, 32, 4, 4, 3, split_k=8), True),  # 160 B; unweighted 192
    (H100, GemmProblem(256, 4100, 1000), GemmConfig(128, 64, 64, 8, 4, 4), True),  # 136 B; 160
    (A100, SMALL, GemmConfig(256, 64, 64, 4, 8, 2, split_k=4), True),  # 440 B; unweighted 144
    (A100, SMALL, GemmConfig(256, 128, 16, 8, 8, 3, split_k=8), False),  # 252; unweighted 152
    (A100, SMALL, GemmConfig(16, 256, 128, 1, 8, 2, split_k=2), False),  # 219; unweighted 152
    (A100, SMALL, GemmConfig(128, 128, 16, 8, 4, 5, split_k=4), False),  # 253; unweighted 160
    # two-warp programs (held-out builds of `--two-warps`, 2026-12-05): spills the rule before (acc + A's + B's
    # over 224) let in, and clean builds at the new limit (acc + 0.75 * A's + 0.25 * B's over 112)
    (A100, SMALL, GemmConfig(64, 16, 128, 8, 2, 5, split_k=2), True),  # 136 B; 120 by the count, 176 before
    (A100, SMALL, GemmConfig(128, 32, 64, 1, 2, 5), True),  # 1088 B; 168, 224 before
    (H100, SMALL, GemmConfig(128, 16, 64, 4, 2, 3, split_k=16), True),  # 752 B; 132, 176 before
    (A100, SMALL, GemmConfig(32, 64, 128, 1, 2, 2, split_k=8), False),  # 255 registers; 112
    (H100, SMALL, GemmConfig(32, 64, 128, 8, 2, 5), False),  # 255; 112
]
# Spills the weighted count lets in (the compile stage refuses them): the shipped A100 forest's first-ranked
# config of this op (376 B; 64 + 1.5 * 64 + 0.75 * 8 = 166 by the count) and its first-ranked of 4096 x 4104 x
# 4100 (M x N x K), a tile at K steps of 16 (32 B; 164), which builds clean at other shapes and split-K (253 to 255 registers)
MISSED = [
    (A100, GemmProblem(256, 4100, 1000), GemmConfig(256, 32, 32, 8, 4, 4)),
    (A100, GemmProblem(4096, 4104, 4100), GemmConfig(128, 128, 16, 8, 4, 4)),
]


@pytest.mark.parametrize("device, problem, config, spilled", UNALIGNED)
def test_unaligned_rows_count_the_scalar_loaded_tiles_beside_the_accumulator(
    device, problem, config, spilled
):
    reason = illegal_reason(problem, config, device)
    if spilled:
        assert reason and "unaligned operand tiles" in reason, (device.name, config.key())
        assert illegal_reason(EVEN, config, device) is None, "the same tile builds clean on 4096^3"
    else:
        assert reason is None, (device.name, config.key(), reason)


@pytest.mark.parametrize("device, problem, config", MISSED)
def test_the_weighted_count_lets_in_some_spills(device, problem, config):
    assert illegal_reason(problem, config, device) is None


def tf32(m: int, n: int, k: int) -> GemmProblem:
    return GemmProblem(m, n, k, dtype="float32", precision="tf32")


# tf32 (float32 operands on tensor cores) with rows not 16-element aligned, held-out builds of the tf32 count
# (acc + 2.5 * A's + 0.25 * B's tile elements per thread, over 224; benchmarks/unaligned_builds.py --dtype tf32)
TF32_UNALIGNED = [
    (
        A100,
        tf32(768, 1032, 1000),
        GemmConfig(256, 32, 32, 4, 4, 4, split_k=8),
        True,
    ),  # 200 B; 226 by the count
    (A100, tf32(3000, 2000, 1000), GemmConfig(256, 64, 32, 1, 4, 2, split_k=2), True),  # 360 B; 288
    (A100, tf32(1536, 3080, 777), GemmConfig(256, 128, 64, 4, 8, 2, split_k=4), True),  # 424 B; 296
    (H100, tf32(768, 1032, 1000), GemmConfig(256, 16, 64, 8, 4, 2), True),  # 288 B; 354
    (A100, tf32(3000, 2000, 1000), GemmConfig(256, 32, 32, 1, 4, 4, split_k=4), False),  # 212 registers; 224
    (H100, tf32(3000, 2000, 1000), GemmConfig(128, 64, 64, 8, 4, 2, split_k=16), False),  # 176; 224
    (H100, tf32(640, 1000, 1000), GemmConfig(128, 128, 32, 1, 4, 4, split_k=16), False),  # 255; 216
    (H100, tf32(768, 1032, 1000), GemmConfig(64, 64, 128, 1, 4, 2), False),  # 255; 208
]
# Spills the tf32 count lets in: the shipped A100 forest's first-ranked configs of two unaligned tf32 ops
# (benchmarks/first_builds.py: 104 B, 184 by the count; 32 B, 172)
TF32_MISSED = [
    (A100, tf32(256, 4100, 1000), GemmConfig(128, 256, 32, 8, 8, 4, split_k=2)),
    (A100, tf32(4096, 4104, 4100), GemmConfig(128, 128, 16, 8, 4, 3)),
]


@pytest.mark.parametrize("device, problem, config, spilled", TF32_UNALIGNED)
def test_unaligned_tf32_rows_count_the_tiles_copied_four_bytes_at_a_time(device, problem, config, spilled):
    reason = illegal_reason(problem, config, device)
    if spilled:
        assert reason and "unaligned operand tiles" in reason and "4-byte copies" in reason, config.key()
        assert illegal_reason(tf32(4096, 4096, 4096), config, device) is None, "aligned, the tile is legal"
    else:
        assert reason is None, (device.name, config.key(), reason)


@pytest.mark.parametrize("device, problem, config", TF32_MISSED)
def test_the_tf32_count_lets_in_some_spills(device, problem, config):
    assert illegal_reason(problem, config, device) is None


def test_two_warp_tf32_programs_are_not_counted():
    """No two-warp tf32 build was sampled, so the tf32 count leaves them be (16-bit ones have a rule of their
    own); a four-warp program of the same tile and count is refused."""
    odd = tf32(768, 1032, 1000)
    two = GemmConfig(64, 32, 128, 8, 2, 2)  # 32 + 2.5 * 128 + 0.25 * 64 = 368 by the count
    assert illegal_reason(odd, two, H100) is None
    assert "4-byte copies" in illegal_reason(odd, GemmConfig(128, 64, 128, 8, 4, 2), H100)


def problem_of(**data):
    """The one kernel's problem of an op.yaml mapping (float32 is tf32 here)."""
    if data["dtype"] == "float32":
        data["precision"] = "tf32"
    (node,) = op_from_spec(parse_spec(data)).kernel_graph().kernels
    return node.problem


def dense(m: int, n: int, k: int, dtype: str):
    return problem_of(op="dense", dtype=dtype, shape={"m": m, "n": n, "k": k})


def blocksparse(dtype: str):
    sparsity = {"block": [128, 128], "density": 0.1, "seed": 0}
    return problem_of(
        op="blocksparse", dtype=dtype, shape={"batch": 4096, "in": 4096, "out": 4096}, sparsity=sparsity
    )


def lowrank(dtype: str):
    return problem_of(op="lowrank", dtype=dtype, shape={"batch": 8192, "dims": [4096, 64, 4096]})


def legality(problem, config, device):
    return (illegal_reason if isinstance(config, GemmConfig) else tile_reason)(problem, config, device)


# mma.sync programs (sm_80) with the accumulator at 128 registers per thread and deep K steps: held-out sm_80
# builds (benchmarks/deep_k_builds.py --ops held-out --seed 2), (problem, config, spilled). Over 192 A and B tile
# elements per thread in a K step at four warps every sampled build spilled; at 160 and at eight warps' 192 some
# did not.
DEEP_K = [
    (dense(768, 4096, 1024, "bfloat16"), GemmConfig(128, 128, 128, 1, 4, 2, split_k=4), True),  # 256; 8 B
    (blocksparse("float32"), TileConfig(128, 128, 128, 1, 4, 2, 4), True),  # 256; 488 B
    (blocksparse("bfloat16"), TileConfig(256, 64, 128, 1, 4, 2, 1), True),  # 320; 168 B
    (lowrank("float32"), TileConfig(256, 64, 128, 1, 4, 2, 4), True),  # 320; 448 B
    (
        dense(3072, 1536, 2560, "float16"),
        GemmConfig(256, 64, 64, 1, 4, 3, split_k=16),
        False,
    ),  # 160; 249 regs
    (dense(3072, 1536, 2560, "bfloat16"), GemmConfig(128, 256, 128, 1, 8, 2, split_k=4), False),  # 192; 254
    (lowrank("float16"), TileConfig(256, 128, 128, 1, 8, 2, 2), False),  # eight warps, 192; 255, no local
]
# Spills it lets in: the same held-out sample, 160 elements at four warps and 192 at eight
DEEP_K_MISSED = [
    (dense(768, 4096, 1024, "float32"), GemmConfig(256, 64, 64, 1, 4, 2, split_k=2)),  # 216 B
    (lowrank("float16"), TileConfig(256, 128, 128, 1, 8, 2, 1)),  # 56 B
]


@pytest.fixture
def triton_39(monkeypatch):
    """The deep-K rule as it holds: from Triton 3.9 (`DEEP_K_TRITON`), whatever Triton is installed."""
    from kt.codegen import gemm

    monkeypatch.setattr(gemm, "triton_version", lambda: gemm.DEEP_K_TRITON)


@pytest.mark.usefixtures("triton_39")
@pytest.mark.parametrize("problem, config, spilled", DEEP_K)
def test_mma_sync_programs_at_the_accumulator_limit_count_a_k_steps_operand_tiles(problem, config, spilled):
    reason = legality(problem, config, A100)
    if spilled:
        assert reason and "A and B tile elements a K step" in reason, (str(problem), config.key(), reason)
        # the same program on the H100 is built with wgmma: the rule is mma.sync's
        assert "tile elements" not in (legality(problem, config, H100) or ""), config.key()
    else:
        assert reason is None, (str(problem), config.key(), reason)


@pytest.mark.usefixtures("triton_39")
@pytest.mark.parametrize("problem, config", DEEP_K_MISSED)
def test_the_deep_k_count_lets_in_some_spills(problem, config):
    assert legality(problem, config, A100) is None


def test_the_deep_k_rule_is_off_below_triton_3_9(monkeypatch):
    """Under Triton 3.6 (the GPU machines') dense 16-bit programs the rule refuses built clean in 17 of 24
    held-out builds: there it refuses nothing."""
    from kt.codegen import gemm

    monkeypatch.setattr(gemm, "triton_version", lambda: (3, 6))
    for problem, config, _ in DEEP_K:
        assert legality(problem, config, A100) is None, config.key()
    assert gemm.deep_k_spills(*DEEP_K[0][:2], A100, 128)  # the rule itself, as Triton 3.9 builds showed


@pytest.mark.usefixtures("triton_39")
def test_the_deep_k_rule_refuses_what_stages_minus_one_let_in_and_nothing_built_with_wgmma():
    """Tile-sum m256n64k128g1w4s3 on the A100 spilled (block-sparse 160 bytes, low-rank 136) once shared memory
    counted the stages the build keeps; no H100 program of four or eight warps reaches 128 accumulator
    registers off wgmma (that takes 64 rows or more), so no H100 config is refused by the rule."""
    assert "tile elements" in tile_reason(lowrank("float16"), TileConfig(256, 64, 128, 1, 4, 3), A100)
    assert "tile elements" in tile_reason(blocksparse("float16"), TileConfig(256, 64, 128, 1, 4, 3), A100)
    for dtype in ("float16", "float32"):
        problem = dense(4096, 4096, 4096, dtype)
        reasons = [reason for _, reason in GemmFamily().judged(problem, H100)]
        assert not any("tile elements" in (reason or "") for reason in reasons)
        a100 = [reason for _, reason in GemmFamily().judged(problem, A100)]
        assert (
            sum("tile elements" in (reason or "") for reason in a100) == {"float16": 90, "float32": 45}[dtype]
        )


# FFT n=4096 float16, one block per program, K steps of 64 and 128 (real or complex input: the same verdicts).
FFT = [
    (H100, BlockGemmConfig(128, 32, 128, 1, 4, 2, split=128), True),  # 944 B
    (A100, BlockGemmConfig(64, 64, 64, 1, 4, 2, split=4), True),  # 16 B
    (H100, BlockGemmConfig(256, 32, 64, 1, 8, 3, split=4), True),
    (H100, BlockGemmConfig(256, 16, 64, 1, 4, 3, split=4), True),
    (H100, BlockGemmConfig(16, 128, 128, 1, 4, 3, split=4), True),
    (H100, BlockGemmConfig(64, 128, 128, 1, 8, 2, split=4), True),  # 120 B
    (H100, BlockGemmConfig(64, 128, 64, 1, 8, 3, split=4), False),  # 236 registers
    (H100, BlockGemmConfig(128, 64, 64, 1, 8, 3, split=4), False),  # 134
    (H100, BlockGemmConfig(128, 32, 128, 1, 8, 2, split=4), False),  # 145
    (A100, BlockGemmConfig(16, 64, 128, 1, 4, 2, split=128), False),  # 72
    (H100, BlockGemmConfig(256, 16, 32, 1, 4, 3, split=4), False),  # K step 32: 254, past the 112
]


@pytest.mark.parametrize("device, config, spilled", FFT)
def test_complex_dots_in_one_block_with_deep_k_steps_count_their_operand_tiles(device, config, spilled):
    problem = FFTProblem(49152, 4096, "float16")
    reason = block_reason(problem, config, device, stages_for(problem, config))
    if spilled:
        assert reason and "operand tiles" in reason, config.key()
    else:
        assert reason is None, (config.key(), reason)


# (device, problem, config, bytes the build allocated): each build converts its output tile's layout through
# shared memory, more than its pipelined tiles held; the estimate before counted only the latter.
DENSE_BUILT = [
    (A100, EVEN, GemmConfig(64, 32, 16, 4, 4, 2, 16), 8192),
    (A100, EVEN, GemmConfig(128, 64, 16, 8, 8, 3, 8), 32768),
    (A100, EVEN, GemmConfig(128, 128, 16, 8, 8, 2, 1), 32768),
    (H100, EVEN, GemmConfig(32, 256, 16, 8, 4, 2, 4), 16384),
    (H100, EVEN, GemmConfig(128, 128, 16, 8, 8, 2, 1), 32768),
    (
        H100,
        GemmProblem(4096, 4096, 4096, dtype="float32", precision="tf32"),
        GemmConfig(128, 128, 16, 8, 8, 2),
        65536,
    ),
]


@pytest.mark.parametrize("device, problem, config, built", DENSE_BUILT)
def test_the_shared_memory_estimate_bounds_the_output_tiles_conversion(device, problem, config, built):
    assert built <= built_shared_memory(problem, config, device) <= device.smem_per_block
    assert illegal_reason(problem, config, device) is None


def test_structured_estimates_bound_their_builds_and_keep_stages_as_the_build_does():
    # low-rank bfloat16 m256n64k16 w8 s2 split 2 on the H100 (wgmma): 65536 bytes built, its fp32 split tile
    lowrank = ChainProblem(8192, (4096, 64, 4096), "bfloat16")
    assert tile_resources(lowrank, TileConfig(256, 64, 16, 4, 8, 2, 2), H100)[0] >= 65536
    # block-sparse float16 m256n32k128 w8 s3 split 2 on the A100 (mma.sync) built 73736 bytes; every stage's
    # count, 221184, refused it. The pipelined-tile estimate depends on the dtype and tiles only.
    blocksparse_like = ChainProblem(8192, (4096, 64, 4096), "float16")
    smem = tile_resources(blocksparse_like, TileConfig(256, 32, 128, 4, 8, 3, 2), A100)[0]
    assert 73736 <= smem <= A100.smem_per_block
    # float32 FMA low-rank m128n32k32 w8 s3 on the H100: 40960 bytes, two stages
    assert (
        tile_resources(
            ChainProblem(8192, (4096, 64, 4096), "float32"), TileConfig(128, 32, 32, 1, 8, 3), H100
        )[0]
        == 40960
    )
    # FFT float16 b64n128k64g1w8s3 split 4 on the H100 (wgmma): 151552 bytes built
    fft = FFTProblem(49152, 4096, "float16")
    assert block_resources(fft, BlockGemmConfig(64, 128, 64, 1, 8, 3, split=4), H100)[0] >= 151552


def chain(rank: int, dtype: str) -> ChainProblem:
    return ChainProblem(4096, (1024, rank, 1024), dtype, "tf32" if dtype == "float32" else "ieee")


# fused low-rank chains' builds (Triton 3.9's ptxas, 2026-12-07; an audit's repro and a sample of 30 legal
# configs): (device, problem, config, bytes built). Those over the device's limit were in the legal space while
# the estimate counted one F2 tile after the first loop's stages (311296 built, 106496 counted)
FUSED_CHAIN_BUILT = [
    (H100, chain(256, "float16"), TileConfig(64, 128, 16, 1, 8, 4, 1, 1), 311296),
    (H100, chain(256, "float16"), TileConfig(64, 128, 64, 1, 8, 3, 1, 1), 245760),
    (A100, chain(256, "float16"), TileConfig(16, 128, 16, 1, 4, 4, 1, 1), 208896),
    (A100, chain(256, "float32"), TileConfig(32, 64, 16, 1, 4, 3, 2, 1), 167936),
    (A100, chain(32, "float32"), TileConfig(128, 16, 128, 1, 8, 3, 8, 1), 180224),  # the first loop's and u
    (H100, chain(256, "float32"), TileConfig(64, 32, 16, 1, 8, 2, 4, 1), 139264),
    (H100, chain(128, "float32"), TileConfig(16, 128, 128, 1, 4, 3, 1, 1), 155648),
    (A100, chain(128, "float16"), TileConfig(32, 16, 16, 1, 4, 3, 2, 1), 17408),
    (A100, chain(32, "float16"), TileConfig(256, 16, 128, 1, 4, 3, 4, 1), 147456),
    (H100, chain(64, "bfloat16"), TileConfig(64, 64, 128, 1, 8, 3, 4, 1), 98304),
]  # fmt: skip


@pytest.mark.parametrize("device, problem, config, built", FUSED_CHAIN_BUILT)
def test_a_fused_chains_estimate_bounds_its_build_and_refuses_one_over_the_limit(
    device, problem, config, built
):
    assert built <= tile_resources(problem, config, device)[0]
    reason = tile_reason(problem, config, device)
    if built > device.smem_per_block:
        assert reason == f"shared memory over {device.smem_limit_text}"
    else:
        assert reason is None


def bsr_grad(block: int, dtype: str, precision: str = "ieee") -> BsrGradProblem:
    grid = (4096 // block,) * 2
    return BsrGradProblem(
        8192, 4096, 4096, (block, block), mask_to_hex(random_mask(grid, 0.1, 0)), dtype, precision
    )


# block-sparse weight-gradient configs every stage's count refused, built (Triton 3.9's ptxas, 2026-12-07) within
# the stages an mma.sync build keeps and clean: 30 sampled of 470 such (0 over, 0 spilled)
BSR_GRAD_BUILT = [
    (A100, bsr_grad(128, "float16"), BsrGradConfig(128, 64, 128, 4, 4, 1), 147456),
    (A100, bsr_grad(64, "float32", "tf32"), BsrGradConfig(16, 64, 128, 4, 5, 1), 163840),
    (H100, bsr_grad(128, "float32", "tf32"), BsrGradConfig(32, 64, 128, 4, 5, 16), 196608),
]  # fmt: skip


@pytest.mark.parametrize("device, problem, config, built", BSR_GRAD_BUILT)
def test_bsr_grad_configs_count_the_stages_an_mma_sync_build_keeps(device, problem, config, built):
    from kt.codegen.bsrgrad import illegal_reason as bsr_grad_reason
    from kt.codegen.bsrgrad import resources as bsr_grad_resources

    assert (
        config.num_stages
        * (config.block_m + config.block_n)
        * config.block_k
        * 2
        * (2 if problem.dtype == "float32" else 1)
        > device.smem_per_block
    )  # every stage's count, the rule before
    assert built <= bsr_grad_resources(problem, config, device)[0] <= device.smem_per_block
    assert bsr_grad_reason(problem, config, device) is None


# Two-warp programs of the structured families with K steps over 32 (benchmarks/two_warp_k_builds.py,
# 2026-12-05, Triton 3.9): refused whatever their size until then; now by a count of accumulator and one K
# step's operand registers per thread (`kt.codegen.gemm.two_warp_k_reason`)
def monarch_128(dtype: str):
    return problem_of(op="monarch", dtype=dtype, shape={"batch": 4096, "n": 8192, "nblocks": 64})


def example_sum(dtype: str):
    banded = {"block": [64, 64], "pattern": "banded", "width": 1}
    terms = [
        {"op": "blocksparse", "shape": {"batch": 4096, "in": 1024, "out": 1024}, "sparsity": banded},
        {"op": "lowrank", "shape": {"batch": 4096, "dims": [1024, 32, 1024]}},
    ]
    return problem_of(op="sum", dtype=dtype, terms=terms)


def bsr_64x128(dtype: str):
    sparsity = {"block": [64, 128], "density": 0.3, "seed": 3}
    return problem_of(
        op="blocksparse", dtype=dtype, shape={"batch": 2048, "in": 2048, "out": 1024}, sparsity=sparsity
    )


FUSED_SUM = TileConfig(128, 16, 128, 1, 2, 3, 2, fused=1)  # 32 accumulator + 144 operand registers
TWO_WARP_K = [  # (device, problem, config, spilled)
    (H100, monarch_128("float16"), BlockGemmConfig(128, 16, 128, 1, 2, 2), False),  # 184 registers; 32 + 144
    # over several blocks the next block's operands are live too: 32 + 2 * 96 (16 bytes of local memory)
    (H100, monarch_128("float16"), BlockGemmConfig(32, 64, 128, 4, 2, 2), True),
    (A100, lowrank("float16"), TileConfig(64, 64, 128, 4, 2, 4), False),  # 226 registers; 64 + 128
    (A100, example_sum("float16"), FUSED_SUM, True),  # 72 B: a fused sum's limit is lower on sm_80
    (H100, example_sum("bfloat16"), FUSED_SUM, False),  # 190 registers
    # the first spills of the fit and held-out samples, just over each limit (184 and 216)
    (H100, problem_of(op="monarch", dtype="float32", shape={"batch": 16384, "n": 4096, "nblocks": 64}),
     BlockGemmConfig(64, 64, 64, 1, 2, 3), True),  # tf32, 64 + 128 = 192: 24 B
    (A100, problem_of(op="blocksparse", dtype="float32", shape={"batch": 4096, "in": 2048, "out": 2048},
                      sparsity={"block": [128, 128], "density": 0.2, "seed": 1}),
     TileConfig(32, 128, 64, 8, 2, 3, 4), True),  # tf32, 64 + 160 = 224: 48 B
]  # fmt: skip


@pytest.mark.parametrize("device, problem, config, spilled", TWO_WARP_K)
def test_two_warp_programs_with_deep_k_steps_count_accumulator_and_operand_registers(
    device, problem, config, spilled
):
    reason = (block_reason if isinstance(config, BlockGemmConfig) else tile_reason)(
        problem,
        config,
        device,
        *([stages_for(problem, config)] if isinstance(config, BlockGemmConfig) else []),
    )
    if spilled:
        assert reason and "K-step operand registers over" in reason, (config.key(), reason)
    else:
        assert reason is None, (config.key(), reason)


def test_a_fused_sums_refusal_names_its_own_limit():
    reason = tile_reason(example_sum("float16"), FUSED_SUM, A100)
    assert reason == (
        "accumulator and K-step operand registers over 168 per thread in a two-warp fused sum (K step over 32)"
    )


def test_the_two_warp_count_lets_in_some_spills():
    """The check sample's two spills it lets in: tf32 block-sparse at 192 on the A100 (8 bytes of local memory),
    where the fit samples' tf32 builds at 192 were clean."""
    assert tile_reason(bsr_64x128("float32"), TileConfig(64, 64, 64, 8, 2, 2, 4), A100) is None


def test_complex_and_fma_two_warp_programs_keep_k_steps_of_32():
    """No such builds were sampled: any K step over 32 is refused, as before."""
    import dataclasses

    fft = problem_of(op="fft", dtype="float16", shape={"batch": 64, "n": 4096})
    config = BlockGemmConfig(16, 16, 64, 1, 2, 2, split=64)
    assert block_reason(fft, config, H100, stages_for(fft, config)) == "K step over 32 in a two-warp program"
    tf32_chain = problem_of(op="lowrank", dtype="float32", shape={"batch": 64, "dims": [256, 16, 256]})
    fma = dataclasses.replace(tf32_chain, precision="ieee")
    small = TileConfig(16, 16, 64, 1, 2, 2)
    assert tile_reason(tf32_chain, small, H100) is None  # 4 + 32 registers
    assert "K step over 32" in tile_reason(fma, small, H100)
    monarch = problem_of(op="monarch", dtype="float32", shape={"batch": 64, "n": 256, "nblocks": 4})
    fma_monarch = dataclasses.replace(monarch, precision="ieee")
    small = BlockGemmConfig(16, 16, 64, 1, 2, 2)  # FMA dots: 4 + 32 registers, within their own limit
    assert block_reason(monarch, small, H100, stages_for(monarch, small)) is None
    reason = block_reason(fma_monarch, small, H100, stages_for(fma_monarch, small))
    assert reason == "K step over 32 in a two-warp program"


# The FFT's complex launches over several blocks with K steps over 32 (benchmarks/complex_group_k_builds.py,
# 2026-12-05, Triton 3.9): refused whatever their size until then; now by a count of the accumulator and twice
# one K step's operand registers of both planes per thread (`kt.codegen.blockgemm.complex_several_k_reason`)
def fft(n: int, batch: int, dtype: str, input: str = "complex"):
    extra = {"dtype": "float32", "precision": "tf32"} if dtype == "tf32" else {"dtype": dtype}
    return problem_of(op="fft", shape={"batch": batch, "n": n}, input=input, **extra)


COMPLEX_SEVERAL_K = [  # (device, problem, config, spilled): builds of the fit and held-out samples
    # sm_90, 16-bit: 16 + 2 * 64 = 144 over 136 (24 bytes of local memory); 32 + 2 * 48 = 128 clean
    (H100, fft(1024, 16384, "float16"), BlockGemmConfig(32, 32, 128, 2, 4, 4, split=4, ends=1), True),
    (H100, fft(4096, 49152, "float16", "real"), BlockGemmConfig(32, 64, 64, 16, 4, 4, split=8), False),
    # sm_90, tf32: 8 + 2 * 32 = 72 over 64 (8 bytes); 4 + 2 * 24 = 52 clean
    (H100, fft(1024, 16384, "tf32"), BlockGemmConfig(32, 32, 64, 16, 8, 2, split=64), True),
    (H100, fft(4096, 49152, "tf32"), BlockGemmConfig(32, 16, 64, 4, 8, 2, split=4, ends=1), False),
    # sm_80: 16-bit 32 + 2 * 64 = 160 over 152 (544 bytes); tf32 8 + 2 * 64 = 136 over 128 (288 bytes)
    (A100, fft(4096, 49152, "float16"), BlockGemmConfig(64, 64, 128, 8, 8, 2, split=16, ends=1), True),
    (A100, fft(1024, 16384, "tf32"), BlockGemmConfig(32, 32, 128, 2, 8, 2, split=8), True),
]


@pytest.mark.parametrize("device, problem, config, spilled", COMPLEX_SEVERAL_K)
def test_complex_launches_over_several_blocks_with_deep_k_steps_count_their_registers(
    device, problem, config, spilled
):
    reason = block_reason(problem, config, device, stages_for(problem, config))
    if spilled:
        assert reason and reason.startswith("accumulator and twice its K-step operand registers over"), (
            config,
            reason,
        )
        assert "in a complex program over several blocks (K step over 32)" in reason
    else:
        assert reason is None, (config.key(), reason)


# Tensor-core launches over several blocks with more than 32 accumulator registers per thread
# (benchmarks/several_blocks_builds.py, 2026-12-05, Triton 3.9): refused whatever their registers until then; now
# by a count of the accumulator and twice one K step's operand registers per thread, whose limit is far lower
# where x or y moves through a strided end map (`kt.codegen.blockgemm.several_blocks_reason`)
MONARCH = {"op": "monarch", "dtype": "float16", "shape": {"batch": 16384, "n": 4096, "nblocks": 64}}
RECT = {"op": "monarch", "dtype": "float16", "shape": {"batch": 8192, "w1": [16, 96, 64], "w2": [32, 48, 48]}}
SEVERAL_BLOCKS = [  # (device, op, config, spilled): builds of the fit and held-out samples
    # sm_90, 16-bit, strided ends: 64 + 2 * 32 = 128 over 120 (a two-warp program); 64 + 2 * 20 = 104 clean
    (H100, RECT, BlockGemmConfig(64, 64, 32, 4, 2, 4), True),
    (H100, MONARCH, BlockGemmConfig(256, 64, 32, 2, 8, 2), False),
    # feature-major ends: 128 + 2 * 80 = 288 clean (the same tile with strided ends spilled at all 255)
    (H100, MONARCH, BlockGemmConfig(256, 64, 64, 2, 4, 2, ends=1), False),
    (H100, MONARCH, BlockGemmConfig(256, 64, 64, 2, 4, 2), True),
    # sm_80, 16-bit, strided ends: 64 + 2 * 18 = 100 over 96
    (A100, MONARCH, BlockGemmConfig(256, 32, 16, 8, 4, 3), True),
]


@pytest.mark.parametrize("device, op, config, spilled", SEVERAL_BLOCKS)
def test_launches_over_several_blocks_count_their_accumulator_and_operand_registers(
    device, op, config, spilled
):
    problem = problem_of(**op)
    reason = block_reason(problem, config, device, stages_for(problem, config))
    if spilled:
        ends = "contiguous" if config.ends else "strided"
        assert reason and reason.startswith("accumulator and twice its K-step operand registers over"), reason
        assert reason.endswith(f"in a program over several blocks with {ends} ends (accumulator over 32)")
    else:
        assert reason is None, (config.key(), reason)
    # one block per program keeps the accumulator limit alone (128 registers; 64 for two-warp programs)
    single = dataclasses.replace(config, group=1)
    assert block_reason(problem, single, device, stages_for(problem, single)) is None


def test_fma_dots_over_several_blocks_keep_32_accumulator_registers():
    """float32 without tensor cores (FMA dots) was not sampled over several blocks: 32 stays its limit."""
    problem = problem_of(**{**MONARCH, "dtype": "float32", "precision": "ieee"})
    problem = dataclasses.replace(problem, precision="ieee")
    config = BlockGemmConfig(128, 32, 16, 2, 4, 2)  # 32 accumulator registers: within
    assert block_reason(problem, config, H100, stages_for(problem, config)) is None
    wider = BlockGemmConfig(128, 64, 16, 2, 4, 2)  # 64
    assert block_reason(problem, wider, H100, stages_for(problem, wider)) == (
        "accumulator over 32 registers per thread (FMA dots over several blocks)"
    )


def test_a_group_over_a_single_block_is_refused_in_the_singular():
    """ "more blocks per program than the 1 blocks (GROUP 1 takes them all)"."""
    from kt.codegen import family_for

    problem = problem_of(op="butterfly", dtype="float16", shape={"batch": 512, "n": 256})
    reasons = {reason for _, reason in family_for(problem).judged(problem, H100) if reason}
    assert "more blocks per program than the 1 block a launch has (GROUP 1 takes it)" in reasons
    assert not any("the 1 blocks" in reason for reason in reasons)


# benchmarks/stage_builds.py --family ... --sample 12 --controls 3 --seed 7 (Triton 3.9, 2026-12-05): 16-bit
# block-GEMM configs that every stage's count refused, built with mma.sync within `stages - 1` stages' count and
# clean (bytes built, every stage's count); tf32 ones of the same kind spilled in 13 of 24 builds and stay refused
BLOCK_STAGES = [  # (device, problem, config, built or None where it spilled)
    (A100, problem_of(op="butterfly", dtype="float16", shape={"batch": 8192, "n": 1024}),
     BlockGemmConfig(128, 64, 128, 2, 8, 4, levels=8), 147456),  # 196608 every stage
    (H100, FFTProblem(49152, 4096, "float16", input="real"),
     BlockGemmConfig(32, 128, 128, 1, 8, 3, split=32), 163840),  # 249856
    (A100, FFTProblem(49152, 4096, "float16", input="real"),
     BlockGemmConfig(64, 32, 128, 2, 8, 4, split=1024, ends=1), 98304),  # 212992
    (H100, FFTProblem(49152, 4096, "float32", precision="tf32"),
     BlockGemmConfig(16, 128, 128, 1, 8, 2, split=256), None),  # 128 bytes of local memory; 299008
]  # fmt: skip


@pytest.mark.parametrize("device, problem, config, built", BLOCK_STAGES)
def test_mma_sync_block_gemm_configs_count_the_stages_a_16_bit_build_keeps(device, problem, config, built):
    every_stage = block_shared_memory(problem, config, config.num_stages)
    assert every_stage > device.smem_per_block  # the count before 2026-12-05 refused each
    reason = block_reason(problem, config, device, stages_for(problem, config))
    if built is None:  # tf32: its stages counted in full for its registers, and said so (not "shared memory")
        assert reason == (
            f"every pipeline stage of a 4-byte build over {device.smem_limit_text} (counted in full for the "
            "registers such builds spilled)"
        )
    else:
        assert (
            reason is None and built <= block_resources(problem, config, device)[0] <= device.smem_per_block
        )
