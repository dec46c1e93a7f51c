"""Legality against sampled sm_80 / sm_90 builds (Triton 3.9's bundled ptxas, 2026-12-03): pure Python, each case
a build that was compiled, with what it did."""

import pytest

from kt.codegen import GemmConfig
from kt.codegen.blockgemm import BlockGemmConfig, stages_for
from kt.codegen.blockgemm import illegal_reason as block_reason
from kt.codegen.blockgemm import resources as block_resources
from kt.codegen.gemm import built_shared_memory, illegal_reason, unaligned_operands
from kt.codegen.tilesum import TileConfig
from kt.codegen.tilesum import resources as tile_resources
from kt.device import A100, H100
from kt.ir import GemmProblem
from kt.ir.problems import ChainProblem, FFTProblem

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
