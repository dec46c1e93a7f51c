"""Kernels compile for the H100 (sm_90) with Triton's bundled ptxas, no GPU needed: what the interpreter cannot see."""

import random
from pathlib import Path

import pytest

import kt
from kt.autotune.pool import Task, WorkerPool
from kt.autotune.runners import compile_payload
from kt.autotune.tune import generated_candidate
from kt.codegen import GemmConfig
from kt.codegen.blockgemm import BlockGemmConfig, illegal_reason, resources, stages_for
from kt.codegen.blockgemm import shared_memory as block_shared_memory
from kt.codegen.compat import triton_version
from kt.codegen.gemm import (
    built_shared_memory,
    output_tile_bytes,
    shared_memory,
    unaligned_reason,
    wgmma_build,
)
from kt.codegen.gemm import illegal_reason as gemm_illegal_reason
from kt.device import A100, H100
from kt.ir import GemmProblem
from kt.ir.problems import ButterflyProblem, FFTProblem, MonarchProblem

CASES = [
    (
        GemmProblem(4096, 4096, 4096, b_layout="col"),
        GemmConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3),
    ),
    (
        GemmProblem(1000, 999, 77, batch=3, dtype="bfloat16"),
        GemmConfig(64, 64, 32, group_m=4, num_warps=4, num_stages=4, split_k=2),
    ),
    (
        GemmProblem(4096, 4096, 4096, dtype="float32", precision="tf32"),
        GemmConfig(128, 128, 32, num_warps=8, num_stages=3),
    ),
    (GemmProblem(1 << 20, 4096, 4096), GemmConfig(128, 128, 64, num_warps=4, num_stages=4)),  # 64-bit offsets
]


def ran(pool, tasks):
    """Every task's outcome, by id: a pool that gave back fewer (past a deadline it drops the tasks still
    waiting) would leave the checks over them unrun, and the test passing."""
    tasks = list(tasks)
    outcomes = sorted(pool.run(tasks), key=lambda o: o.task.id)
    assert len(outcomes) == len(tasks), f"{len(outcomes)} of {len(tasks)} tasks came back"
    return outcomes


def compile_task(index, problem, config, smem_limit=H100.smem_per_block, arch=90):
    """The worker task a runner sends to build `config` of `problem` for sm_90 (kt.autotune.runners)."""
    candidate = generated_candidate(problem, config)
    return Task(index, "compile", compile_payload(candidate, arch, smem_limit), "compile")


def compile_tasks(cases, smem_limit=H100.smem_per_block):
    return [compile_task(i, p, c, smem_limit) for i, (p, c) in enumerate(cases)]


@pytest.fixture(scope="module")
def pool():
    with WorkerPool({"compile": (2, {"TRITON_INTERPRET": "0"})}, timeout_s=300) as workers:
        yield workers


def test_generated_kernels_compile_for_sm90_and_use_exactly_the_estimated_shared_memory(pool):
    outcomes = ran(pool, compile_tasks(CASES))
    for outcome, (problem, config) in zip(outcomes, CASES):
        assert outcome.status == "ok", outcome.message
        used = outcome.values["smem_bytes"]
        assert 0 < used <= shared_memory(problem, config), (config.key(), used)
    assert outcomes[0].values["smem_bytes"] == shared_memory(*CASES[0]), "fp16 keeps every pipeline stage"
    assert [o.values["uses_wgmma"] for o in outcomes] == [True, True, True, True], "Hopper's warpgroup MMA"


# Legality's shared memory is what the build allocates (2026-12-02, Triton 3.9): mma.sync and FMA builds keep
# num_stages - 1 pipeline stages, wgmma builds all of them, and a wgmma split-K build converts its fp32 tile
# through shared memory. The first two A100 configs, and the H100's mma.sync one, were refused as over the limit
# by the estimate of every stage (stages * (BM + BN) * BK * itemsize) though they build.
BUILT = [
    (
        A100,
        GemmProblem(4096, 4096, 4096, b_layout="col"),
        GemmConfig(128, 128, 64, num_warps=4, num_stages=6),
    ),
    (
        A100,
        GemmProblem(4096, 4096, 4096, dtype="float32", precision="tf32", b_layout="col"),
        GemmConfig(64, 256, 128, num_warps=8, num_stages=2, split_k=4),
    ),
    (
        H100,
        GemmProblem(4096, 4096, 4096, b_layout="col"),
        GemmConfig(32, 256, 128, num_warps=4, num_stages=4),
    ),
    (
        H100,
        GemmProblem(4096, 4096, 4096, dtype="bfloat16", b_layout="col"),
        GemmConfig(64, 256, 16, num_warps=4, num_stages=3, split_k=16),
    ),
]


def test_legality_counts_the_shared_memory_each_build_allocates_on_sm80_and_sm90(pool):
    tasks = [
        compile_task(i, problem, config, device.smem_per_block, device.compute_capability)
        for i, (device, problem, config) in enumerate(BUILT)
    ]
    outcomes = ran(pool, tasks)
    for outcome, (device, problem, config) in zip(outcomes, BUILT):
        where = (device.name, config.key())
        assert outcome.status == "ok", (where, outcome.message)
        assert outcome.values["smem_bytes"] == built_shared_memory(problem, config, device), where
        assert gemm_illegal_reason(problem, config, device) is None, where
        assert outcome.values["uses_wgmma"] == wgmma_build(problem, config, device), where
    assert [shared_memory(p, c) > d.smem_per_block for d, p, c in BUILT] == [True, True, True, False]
    staged = outcomes[3].values["smem_bytes"]
    assert staged == 64 * 256 * 4 > shared_memory(*BUILT[3][1:]), "the split-K tile, over the pipeline's"


# 16-bit operands whose rows are not 16-element aligned: one buffer for such an operand's tile, a pipeline's
# stages for an aligned one (the estimate gave every operand a buffer per stage: 3 to 5 times the build)
UNALIGNED_16 = [
    (device, GemmProblem(m, n, k, dtype=dtype, a_layout=a, batch=batch), config)
    for device in (H100, A100)
    for m, n, k, a, dtype, batch in [
        (1000, 1000, 1000, "col", "float16", None),  # both
        (1000, 1024, 1000, "col", "float16", None),  # A only
        (1024, 1000, 1024, "row", "float16", None),  # B only
        (1000, 1000, 1000, "col", "bfloat16", 3),  # both, batched
    ]
    for config in (
        GemmConfig(64, 64, 128, 1, 4, 3),
        GemmConfig(128, 128, 64, 8, 8, 4),
        GemmConfig(64, 128, 32, 8, 4, 5),
    )
    if unaligned_reason(GemmProblem(m, n, k, dtype=dtype, a_layout=a, batch=batch), config, device) is None
]  # (the register rule refuses builds that spill)
# 1000^3 float16, A column-major: legal only now (the old estimate, 340 KiB, was over the limit)
REGAINED = (H100, GemmProblem(1000, 1000, 1000, a_layout="col"), GemmConfig(16, 256, 128, 1, 8, 5))
UNALIGNED_16.append(REGAINED)


def test_legality_counts_one_buffer_for_an_unaligned_16_bit_operand(pool):
    tasks = [
        compile_task(i, problem, config, device.smem_per_block, device.compute_capability)
        for i, (device, problem, config) in enumerate(UNALIGNED_16)
    ]
    outcomes = ran(pool, tasks)
    compared = 0
    for outcome, (device, problem, config) in zip(outcomes, UNALIGNED_16):
        where = (device.name, str(problem), config.key())
        if outcome.status == "out_of_resources" and "spills registers" in outcome.message:
            continue  # the register rule at its limit (A100, B unaligned, m64n64k128: 8 bytes), not this one
        assert outcome.status == "ok", (where, outcome.message)
        compared += 1
        built, estimate = outcome.values["smem_bytes"], built_shared_memory(problem, config, device)
        # exact, but where the C tile's layout conversion is the larger (a wgmma build may skip it: not less)
        tile = output_tile_bytes(config.block_m, config.block_n, problem.dtype, config.split_k > 1)
        assert built == estimate or (built < estimate == tile), (where, built, estimate)
    assert compared >= len(UNALIGNED_16) - 2, compared
    device, problem, config = REGAINED
    assert outcomes[-1].status == "ok" and outcomes[-1].values["smem_bytes"] == (16 + 256) * 128 * 2
    assert gemm_illegal_reason(problem, config, device) is None


def test_a_kernel_over_the_shared_memory_limit_is_out_of_resources(pool):
    (outcome,) = pool.run(compile_tasks(CASES[:1], smem_limit=100 * 1024))
    assert outcome.status == "out_of_resources" and "147456 bytes of shared memory" in outcome.message


# The first H200 run (2026-11-30): its Monarch ran 4x slower than two torch.bmm and its FFT n=4096 compiled for
# over 120 s under Triton 3.6. A program now takes its blocks one after the other in one flattened loop of plain
# 2D dots: wgmma on Hopper whatever the number of blocks per program, once the tile has 64 rows.
STRUCTURED = [
    (MonarchProblem(16384, (64, 64, 64), (64, 64, 64)), BlockGemmConfig(128, 64, 64, 1, 8, 3)),
    (FFTProblem(16384, 4096, "float16"), BlockGemmConfig(128, 64, 32, 1, 8, 4, split=64)),
    (MonarchProblem(16384, (64, 64, 64), (64, 64, 64)), BlockGemmConfig(64, 64, 64, 8, 4, 3)),
    (MonarchProblem(4096, (32, 32, 32), (32, 32, 32), "bfloat16"), BlockGemmConfig(64, 32, 32, 16, 4, 3)),
    (FFTProblem(16384, 4096, "float16"), BlockGemmConfig(64, 64, 32, 4, 8, 3, split=64)),
    (MonarchProblem(16384, (64, 64, 64), (64, 64, 64)), BlockGemmConfig(32, 64, 64, 8, 8, 3)),
]


def structured_task(index, problem, config):
    return compile_task(index, problem, config, smem_limit=1 << 30)


def test_structured_kernels_run_wgmma_for_any_number_of_blocks_per_program(pool):
    tasks = [structured_task(i, p, c) for i, (p, c) in enumerate(STRUCTURED)]
    outcomes = ran(pool, tasks)
    for outcome, (problem, config) in zip(outcomes, STRUCTURED):
        assert illegal_reason(problem, config, H100, stages_for(problem, config)) is None, config.key()
        assert outcome.status == "ok", outcome.message
        values = outcome.values
        if config.block_b >= 64:
            assert values["uses_wgmma"] and values["mma_sync"] == 0, (config.key(), values)
        else:  # 32 rows: under the warpgroup MMA's 64
            assert not values["uses_wgmma"] and values["mma_sync"] > 0, (config.key(), values)
        # the legality estimate never undercounts what the compiler allocates
        assert values["smem_bytes"] <= resources(problem, config, H100)[0], (config.key(), values)


# mma.sync block-GEMM builds keep stages - 1 pipeline stages, as the dense GEMM's do: two 16-bit configs that
# every stage's count refused (benchmarks/stage_builds.py --family, Triton 3.9, 2026-12-05: 147456 and 200704
# bytes built, 196608 and 299008 by every stage's count) build clean within kt's bound on sm_80 and sm_90
STAGES_LESS_ONE = [
    (A100, 80, ButterflyProblem(8192, 1024), BlockGemmConfig(128, 64, 128, 2, 8, 4, levels=8)),
    (H100, 90, FFTProblem(49152, 4096, "float16", input="real"), BlockGemmConfig(16, 128, 128, 1, 8, 4, split=128)),
]  # fmt: skip


def test_mma_sync_block_gemm_builds_keep_stages_less_one_as_legality_counts(pool):
    from kt.autotune.compile import target_compiler_available

    if not target_compiler_available():
        pytest.skip("Triton's NVIDIA backend (its ptxas) is not installed")
    tasks = [
        compile_task(i, problem, config, device.smem_per_block, arch)
        for i, (device, arch, problem, config) in enumerate(STAGES_LESS_ONE)
    ]
    outcomes = ran(pool, tasks)
    for outcome, (device, _, problem, config) in zip(outcomes, STAGES_LESS_ONE):
        every_stage = block_shared_memory(problem, config, config.num_stages)
        assert every_stage > device.smem_per_block, config.key()  # the count before 2026-12-05 refused it
        assert illegal_reason(problem, config, device, stages_for(problem, config)) is None, config.key()
        assert outcome.status == "ok", (config.key(), outcome.message)
        values = outcome.values
        assert values["mma_sync"] > 0 and not values["uses_wgmma"] and values["local_bytes"] == 0, values
        assert values["smem_bytes"] <= resources(problem, config, device)[0] <= device.smem_per_block, values


# -- every family, every dtype: sampled legal configs build clean, on wgmma where the tile allows --------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAMILY_EXAMPLES = ["dense", "monarch", "butterfly", "fft_half", "blocksparse", "lowrank", "sum"]


def wgmma_tile(family: str, config) -> bool:
    """Whether Triton can lower `config`'s dots to Hopper's warpgroup MMA: 2D dots with 64 rows or more over
    whole warpgroups (the fused Monarch runs batched 3D dots; a fused low-rank or sum kernel runs 2D ones)."""
    rows = getattr(config, "block_b", None) or config.block_m
    fused_monarch = family == "monarch" and getattr(config, "fused", 0)
    return rows >= 64 and config.num_warps % 4 == 0 and not fused_monarch


def sampled(example: str, dtype: str, count: int = 2):
    spec = kt.load_spec(EXAMPLES / f"{example}.yaml").replace(dtype=dtype)
    plan = kt.plan(spec, budget=1, device="h100")
    rng = random.Random(f"{example}-{dtype}")
    picks = [plan.ranked[0], *rng.sample(range(len(plan.space.legal)), min(count, len(plan.space.legal)))]
    return plan.problem, [plan.space.legal[i] for i in dict.fromkeys(picks)]


def test_sampled_legal_configs_of_every_family_build_clean_for_sm90_and_use_wgmma_where_the_tile_allows(pool):
    cases = []
    for example in FAMILY_EXAMPLES:
        for dtype in ("float16", "bfloat16", "float32") if example != "fft_half" else ("float16", "float32"):
            # float32's only check is that no tensor cores are used: the ranked config shows it; each 16-bit
            # dtype builds its ranked config and one drawn from the legal space (two drawn cost CI 13 builds)
            problem, configs = sampled(example, dtype, count=0 if dtype == "float32" else 1)
            cases += [(example, dtype, problem, config) for config in configs]
    tasks = [compile_task(index, problem, config) for index, (_, _, problem, config) in enumerate(cases)]
    outcomes = ran(pool, tasks)
    bad = [
        ((example, dtype, config.key()), outcome.message)
        for outcome, (example, dtype, _, config) in zip(outcomes, cases)
        if outcome.status != "ok"
    ]
    assert not bad, bad  # legal means it builds: no spills, no shared memory overflow
    for outcome, (example, dtype, problem, config) in zip(outcomes, cases):
        where = (example, dtype, config.key())
        launches = outcome.values["launch_evidence"]
        # feature-major ends add transpose launches (no dots) beside the stages
        copies = [launch for launch in launches if launch["kernel"] == "transpose_kernel"]
        assert bool(copies) == bool(getattr(config, "ends", 0)), (where, launches)
        assert all(launch["mma"] == "none" for launch in copies), (where, launches)
        kinds = {launch["mma"] for launch in launches if launch not in copies}
        if dtype == "float32":  # kt's float32 default is ieee precision: no tensor cores
            assert kinds == {"none"}, (where, outcome.values["launch_evidence"])
            continue
        expected = "wgmma" if wgmma_tile(problem.family, config) else "mma.sync"
        assert kinds == {expected}, (where, outcome.values["launch_evidence"])


def test_a_config_that_spills_under_register_pressure_is_refused_with_its_evidence(pool):
    """128 accumulator registers per thread in a loop over several blocks (within the limit of one block per
    program) with strided ends: all 255 registers and local memory besides on Triton 3.6 and 3.9, so the build
    is refused as out of resources, and the legal space leaves it out (128 + 2 * 80 registers over 120)."""
    problem = MonarchProblem(16384, (64, 64, 64), (64, 64, 64))
    config = BlockGemmConfig(256, 64, 64, 4, 4, 3)
    assert illegal_reason(problem, config, H100, stages_for(problem, config)).startswith(
        "accumulator and twice its K-step operand registers over 120 per thread in a program over several"
    )
    fft, timed_out = FFTProblem(16384, 4096, "float16"), BlockGemmConfig(256, 64, 32, 1, 8, 4, split=64)
    assert illegal_reason(fft, timed_out, H100, stages_for(fft, timed_out)).startswith("accumulator over 64")
    (outcome,) = pool.run([structured_task(0, problem, config)])
    assert outcome.status == "out_of_resources" and "spills registers" in outcome.message, outcome.message
    assert outcome.values["registers"] == 255 and outcome.values["local_bytes"] > 0
    assert outcome.values["mma_kind"] == "wgmma" and outcome.values["tma"] == 0


def test_the_fused_builds_that_spilled_are_illegal_and_their_clean_neighbours_legal():
    """Legal configs that kt's own compile then refused (all 255 registers and local memory): fused float32 FMA
    chains whose second dot's W2 tile (rank x block_n) passed 2048 elements, and fused Monarchs in two warps in
    float32 (10 KB of local memory at 32 registers). The configs that built clean stay legal."""
    from kt.codegen import tilesum
    from kt.codegen.tilesum import TileConfig
    from kt.device import A100
    from kt.ir.problems import ChainProblem

    chain = ChainProblem(8192, (4096, 64, 4096), "float32")
    spilled = [
        (16, 64, 32, 1, 2, 2, 2),
        (128, 64, 32, 1, 8, 4, 1),
        (64, 128, 32, 1, 8, 4, 1),
        (32, 128, 16, 1, 4, 4, 1),
    ]
    clean = [
        (64, 32, 16, 1, 4, 4, 2),
        (128, 32, 32, 1, 8, 2, 4),
        (32, 32, 16, 1, 4, 4, 2),
        (16, 32, 32, 1, 8, 3, 4),
    ]
    for device in (H100, A100):
        for fields in spilled:
            reason = tilesum.illegal_reason(chain, TileConfig(*fields, fused=1), device)
            assert reason and reason.startswith("rank x block_n over 2048"), (fields, reason)
        for fields in clean:
            assert tilesum.illegal_reason(chain, TileConfig(*fields, fused=1), device) is None, fields
    assert tilesum.illegal_reason(chain, TileConfig(64, 128, 32, 1, 8, 4, fused=0), H100) is None  # unfused
    tf32 = ChainProblem(8192, (4096, 64, 4096), "float32", "tf32")  # tensor cores: no FMA operands held
    assert tilesum.illegal_reason(tf32, TileConfig(16, 64, 32, 1, 2, 2, 2, fused=1), H100) is None

    def monarch(dtype, block_b, nblocks=32, warps=2, device=H100):
        width = 512 // nblocks
        problem = MonarchProblem(4096, (nblocks, width, width), (nblocks, width, width), dtype)
        config = BlockGemmConfig(block_b, 16, 16, 1, warps, 2, fused=1)
        return illegal_reason(problem, config, device, stages_for(problem, config))

    assert monarch("float32", 16).startswith("fused Monarch in two warps spills")
    assert monarch("float16", 16) is None and monarch("bfloat16", 16) is None
    # blocks 32 wide at 128 accumulator registers: all 255 registers and local memory on sm_80 and sm_90 in
    # 16 bits too (n=512, 16 blocks, Triton 3.9); in four warps 85 registers, and 16 wide (above) 146
    for device in (H100, A100):
        for dtype in ("float16", "bfloat16"):
            reason = monarch(dtype, 16, nblocks=16, device=device)
            assert reason and reason.startswith("fused Monarch in two warps spills with blocks over 16 wide")
            assert monarch(dtype, 16, nblocks=16, warps=4, device=device) is None


def test_a_build_with_kilobytes_of_local_memory_below_255_registers_is_refused(pool):
    """The spill check asked for all 255 registers: this fused float32 Monarch kept 10 KB per thread in local
    memory at 32 registers (ptxas: 24 KB of spill stores) and came back ok."""
    problem = MonarchProblem(4096, (32, 16, 16), (32, 16, 16), "float32")
    (outcome,) = pool.run([structured_task(0, problem, BlockGemmConfig(16, 16, 16, 1, 2, 2, fused=1))])
    assert outcome.status == "out_of_resources" and "spills registers" in outcome.message, outcome.message
    if triton_version() >= (3, 9):  # Triton 3.6 builds it at all 255 registers (with local memory besides)
        assert outcome.values["registers"] < 255 and outcome.values["local_bytes"] > 1024, outcome.values


def test_kt_show_ptx_writes_each_launch_and_prints_the_evidence(tmp_path):
    from click.testing import CliRunner

    from kt.cli import main

    out = tmp_path / "ptx"
    result = CliRunner().invoke(main, ["show", str(EXAMPLES / "lowrank.yaml"), "--ptx", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["launch0_dense_kernel.ptx", "launch1_dense_kernel.ptx"], files
    assert all("wgmma.mma_async" in (out / f).read_text() for f in files)
    assert "compiled for sm_90" in result.output and "wgmma" in result.output
    for column in ("MMA", "TMA", "registers", "spill bytes", "shared KiB", "why not wgmma"):
        assert column in result.output


def test_the_tma_kernel_builds_with_tma_and_wgmma_within_its_shared_memory_estimate(pool):
    """The persistent TMA dense kernel for sm_90 (with and without a subtiled epilogue), in both operand layouts
    and both half dtypes: TMA
    (cp.async.bulk.tensor) and wgmma in the build, no spills, and shared memory (pipeline, staged C tile,
    mbarriers) within the legality check's estimate."""
    cases = [
        (GemmProblem(4096, 4096, 4096, b_layout="col"), GemmConfig(128, 256, 64, 8, 8, 3, tma=1)),
        (
            GemmProblem(4096, 4096, 4096, dtype="bfloat16", a_layout="col"),
            GemmConfig(128, 128, 64, 8, 4, 4, tma=1),
        ),
        # the subtiled epilogue stages half the C tile: four stages of 128x256x64 fit in 227 KiB
        (GemmProblem(4096, 4096, 4096), GemmConfig(128, 256, 64, 8, 8, 4, tma=2)),
    ]
    for outcome in ran(pool, compile_tasks(cases)):
        problem, config = cases[outcome.task.id]
        assert outcome.status == "ok", outcome.message
        values = outcome.values
        assert values["tma"] == 1 and values["mma_kind"] == "wgmma" and values["local_bytes"] == 0, values
        assert shared_memory(problem, config) - 128 < values["smem_bytes"] <= shared_memory(problem, config)


# Every build converts its output tile's layout through shared memory before the store: A100 float16
# m128n128k16 w8 s2 keeps one 8 KiB pipeline stage and allocates 32 KiB (the estimate counted 8 KiB before). A
# K that is no multiple of 16 elements makes the loads scalar: m128n128k64 w4 spills on (4096, 4100, 4104).
def test_the_estimate_bounds_the_output_tile_scratch_and_unaligned_rows_spill_as_legality_says(pool):
    odd, config = GemmProblem(4096, 4100, 4104), GemmConfig(128, 128, 64, num_warps=4, num_stages=3)
    scratch = GemmConfig(128, 128, 16, num_warps=8, num_stages=2)
    tasks = [compile_task(0, GemmProblem(4096, 4096, 4096), scratch, A100.smem_per_block, 80)]
    tasks.append(compile_task(1, odd, config))
    built, spilled = ran(pool, tasks)
    assert built.status == "ok", built.message
    assert (
        built.values["smem_bytes"]
        == 32768
        <= built_shared_memory(GemmProblem(4096, 4096, 4096), scratch, A100)
    )
    assert spilled.status == "out_of_resources" and "spills registers" in spilled.message
    assert "unaligned operand tiles" in gemm_illegal_reason(odd, config, H100)


def test_unaligned_float32_fma_builds_at_the_accumulator_limit_with_k_steps_of_32_spill_on_sm80(
    pool, monkeypatch
):
    """The sm_80 rule of fma_unaligned_reason, built with the Triton installed: under Triton 3.8 or later the
    refused config spills, under 3.6 and 3.7 it builds clean and the rule is off (it was off under 3.8 too, and
    this config spilled there); its K16 neighbour builds clean and stays legal, and neither the aligned problem
    nor sm_90 is ruled."""
    from kt.codegen import gemm

    odd = GemmProblem(4096, 4104, 4096, dtype="float32")  # B's rows (N) not 16-element aligned
    refused, neighbour = (
        GemmConfig(128, 64, 32, num_warps=4, num_stages=3),
        GemmConfig(128, 64, 16, num_warps=4, num_stages=2),
    )
    tasks = [compile_task(i, odd, c, A100.smem_per_block, 80) for i, c in enumerate((refused, neighbour))]
    built, clean = ran(pool, tasks)
    if gemm.fma_unaligned_reason(odd, refused, A100):
        assert built.status == "out_of_resources" and "at all 255 registers" in built.message, built.message
    else:
        assert triton_version() < gemm.FMA_SPILL_TRITON and built.status == "ok", built.message
    assert clean.status == "ok", clean.message
    monkeypatch.setattr(gemm, "triton_version", lambda: (3, 6))
    assert gemm_illegal_reason(odd, refused, A100) is None
    monkeypatch.setattr(gemm, "triton_version", lambda: gemm.FMA_SPILL_TRITON)
    assert "FMA dot at 64 accumulator registers" in gemm_illegal_reason(odd, refused, A100)
    assert gemm_illegal_reason(odd, neighbour, A100) is None
    assert gemm_illegal_reason(GemmProblem(4096, 4096, 4096, dtype="float32"), refused, A100) is None
    assert gemm_illegal_reason(odd, refused, H100) is None
    tf32 = GemmProblem(4096, 4104, 4096, dtype="float32", precision="tf32")
    assert "FMA" not in (gemm_illegal_reason(tf32, refused, A100) or "")


def test_an_interpreted_kernel_leaves_triton_language_as_it_was_so_the_process_still_compiles(monkeypatch):
    """An interpreted kernel's device call (tl.cdiv: a compiled-mode helper, see kt.codegen.compat) left
    triton.language patched for the interpreter (Triton 3.6 and 3.9 drop the scope that undoes it), and every later
    compile of the process failed ('block_argument' object has no attribute 'dtype'): kt.build's compile check
    refused every config as not compiling."""
    import torch

    from kt.autotune.compile import compile_for_target
    from kt.codegen.compat import language_patched
    from kt.codegen.emit import import_kernel_file

    monkeypatch.setenv("KT_INTERPRET", "1")
    spec = {"name": "d", "op": "dense", "dtype": "float32", "shape": {"m": 40, "k": 24, "n": 33}}
    a, b = kt.random_args(spec, seed=1, device="cpu")
    torch.testing.assert_close(kt.build(spec, device="h100")(a, b), a @ b, rtol=1e-5, atol=1e-5)
    assert not language_patched()
    monkeypatch.delenv("KT_INTERPRET")
    problem, config = GemmProblem(256, 4096, 1024), GemmConfig(128, 128, 32, num_warps=4, num_stages=3)
    module = import_kernel_file(
        generated_candidate(problem, config).source_path, interpret=False, private=True
    )
    (build,) = compile_for_target(module, problem.meta_args(), 90)
    assert build.uses_wgmma and build.local_bytes == 0


def test_interpreted_launches_leave_no_language_patches_behind(monkeypatch):
    """kt's device-call wrapper kept every patch scope the interpreter made, a launch's own included (which the
    launch undoes itself): one more object per interpreted launch, for the life of the process."""
    import gc

    from triton.runtime import interpreter

    monkeypatch.setenv("KT_INTERPRET", "1")
    spec = {"name": "d", "op": "dense", "dtype": "float32", "shape": {"m": 40, "k": 24, "n": 33}}
    kernel, (a, b) = kt.build(spec, device="h100"), kt.random_args(spec, seed=1, device="cpu")
    kernel(a, b)

    def scopes():
        gc.collect()
        return sum(isinstance(o, interpreter._LangPatchScope) for o in gc.get_objects())

    before = scopes()
    for _ in range(3):
        kernel(a, b)
    assert scopes() == before


# An unaligned float16 GEMM on the A100: the 16-bit count (unaligned_reason) admits builds of it that spill at
# small M and K (docs/architecture.md), and the shipped forest ranks one of them first (m256n32k32 w4: 376
# bytes of local memory under Triton 3.9, 208 under 3.6). The unaligned tf32 op of the same shape spilled
# under 3.9 only.
UNALIGNED = {
    "name": "unaligned_half",
    "op": "dense",
    "dtype": "float16",
    "shape": {"m": 256, "k": 1000, "n": 4100},
}


@pytest.mark.shipped_models
def test_build_with_compile_check_passes_over_the_ranked_configs_that_spill_on_the_device():
    """kt.nn's untuned fallback (a GPU, no tuned row) ran the model's first-ranked config, unchecked: here a
    build that spills at all 255 registers on sm_80. With compile_check, the first config that builds clean,
    and each one passed over with why."""
    from kt.autotune.compile import compile_for_target
    from kt.autotune.worker import build_refusal
    from kt.codegen.emit import import_kernel_file

    plain = kt.build(UNALIGNED, device="a100")
    checked = kt.build(UNALIGNED, device="a100", compile_check=True)
    refused = checked.meta["refused"]
    assert refused and refused[0][0] == plain.config.key() and checked.config != plain.config
    assert all("spills registers" in why and "at all 255 registers" in why for _, why in refused), refused
    plan = kt.plan(UNALIGNED, device="a100")
    ranked = [plan.config(i).key() for i in plan.ranked]
    assert ranked.index(checked.config.key()) > max(ranked.index(key) for key, _ in refused)
    problem = GemmProblem(256, 4100, 1000)
    module = import_kernel_file(checked.module.__file__, interpret=False, private=True)
    assert build_refusal(compile_for_target(module, problem.meta_args(), 80), A100.smem_per_block) is None
    # a config that builds clean is the first-ranked, compiled once
    aligned = {**UNALIGNED, "shape": {"m": 256, "k": 1024, "n": 4096}}
    first = kt.build(aligned, device="a100", compile_check=True)
    assert first.config == kt.build(aligned, device="a100").config and "refused" not in first.meta


@pytest.mark.parametrize(
    "value,on",
    [("1", True), ("true", True), ("ON", True), ("yes", True), ("0", False), ("false", False), ("", False)],
)
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, tmp_path, value, on):
    """Triton takes `true`, `on` and `yes` for the interpreter as well as `1`; kt read `1` alone, so with
    TRITON_INTERPRET=true it compiled for the GPU in a process Triton interprets, and a compile check on a cold
    Triton cache refused every config ("does not compile for sm_90: AssertionError")."""
    from kt import api
    from kt.codegen.compat import interpret_requested
    from kt.codegen.emit import interpreter_wanted

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpret_requested() is on and (not on or interpreter_wanted())
    assert not (on and api._can_compile())  # no compile for the GPU where Triton interprets
    if value == "true":
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
        built = kt.build(EXAMPLES / "dense.yaml", device="h100", compile_check=True)
        assert "refused" not in built.meta, built.meta["refused"]


def test_build_with_compile_check_builds_at_most_the_tries_and_not_a_tile_order_twin(monkeypatch):
    """group_m only orders the tiles: a config that differs from a refused one in nothing else builds the same
    and is not compiled again; after COMPILE_TRIES refusals the first-ranked config is kept, and kt.nn's
    selection says none built clean (it said "8 better-ranked configs refused", the first of them running)."""
    import torch

    from kt import api
    from kt.nn import selection

    built = []
    monkeypatch.setattr(api, "_build_refusal", lambda p, config, *a: built.append(config) or "spills (test)")
    kernel = kt.build(UNALIGNED, device="a100", compile_check=True)
    plan = kt.plan(UNALIGNED, device="a100")
    assert kernel.config == plan.space.legal[plan.ranked[0]]
    assert len(built) == api.COMPILE_TRIES == len(kernel.meta["refused"])
    tiles = [tuple(v for k, v in c.to_dict().items() if k != "group_m") for c in built]
    assert len(set(tiles)) == len(tiles)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(selection, "_best_row", lambda problem, family, gpu: None)
    chosen = selection._select(kt.parse_spec(UNALIGNED | {"device": "a100"}), torch.device("cuda"))
    assert chosen.kernel.config == kernel.config
    assert "none of the 8 best-ranked configs built clean (spills (test))" in chosen.where
    firsts = [plan.space.legal[i] for i in plan.ranked[:40]]
    skipped = [c for c in firsts[: firsts.index(built[-1])] if c not in built]
    assert skipped and all(
        any(c.to_dict() | {"group_m": 0} == b.to_dict() | {"group_m": 0} for b in built) for c in skipped
    )


@pytest.mark.shipped_models
def test_kt_nn_on_a_gpu_without_a_tuned_row_runs_the_best_ranked_config_that_builds_clean(monkeypatch):
    """kt.nn's choice on a CUDA device with nothing tuned (the GPU's name and its empty database row stood in
    for here): the compile-checked config, the refused ones named in the selection; Triton's interpreter (CPU
    tensors with KT_INTERPRET=1) has no registers to spill and keeps the first-ranked config uncompiled."""
    import torch

    from kt.nn import selection

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(selection, "_best_row", lambda problem, family, gpu: None)
    op = {k: v for k, v in UNALIGNED.items() if k != "name"} | {"shape": {"k": 1000, "n": 4100}}
    spec = selection.bucket_spec(op | {"device": "a100"}, 200)  # the bucket of 256 rows
    chosen = selection._select(spec, torch.device("cuda"))
    assert chosen.source == "cost model" and chosen.kernel.config != kt.build(spec).config
    assert chosen.kernel.config == kt.build(spec, compile_check=True).config
    assert (
        "1 better-ranked config refused when compiled" in chosen.where and "spills registers" in chosen.where
    )
    interpreted = selection._select(spec, torch.device("cpu"))
    assert interpreted.kernel.config == kt.build(spec).config and "refused" not in interpreted.where


def test_every_launch_asks_for_fused_multiply_add_so_tritons_default_cannot_change_a_tuned_kernel(
    monkeypatch,
):
    """kt measures its kernels with fused multiply-add on, Triton's default up to 3.9; Triton 3.10 turns the
    default off (3.9 warns about it at every compile without TRITON_DEFAULT_FP_FUSION). Every launch of every
    template asks for it, so a kernel builds as it was measured whatever the default: with the default off,
    `kt show examples/fft.yaml --ptx` (its complex twiddles) had 2,048 FMAs, not 2,080."""
    import numpy as np

    from kt.autotune.compile import capture_launches, compile_for_target
    from kt.codegen.bsrgrad import BsrGradConfig
    from kt.codegen.emit import import_kernel_file
    from kt.ir.problems import BsrGradProblem
    from kt.sparsity import mask_to_hex

    cases = [
        (GemmProblem(256, 256, 256), GemmConfig(128, 128, 64, num_warps=4, num_stages=3, tma=1)),
        (GemmProblem(256, 256, 256), GemmConfig(64, 64, 32, num_warps=4, num_stages=3, split_k=2)),
        (
            BsrGradProblem(
                64, 32, 32, (16, 16), mask_to_hex(np.array([[1, 0], [1, 1]], dtype=bool)), "float16"
            ),
            BsrGradConfig(16, 16, 16, split=2),
        ),
    ]
    small_monarch = {"name": "m", "op": "monarch", "shape": {"batch": 64, "n": 256, "nblocks": 16}}  # fusable
    specs = [kt.load_spec(EXAMPLES / f"{example}.yaml") for example in FAMILY_EXAMPLES]
    for spec in [
        *specs,
        small_monarch,
    ]:  # the first legal config of each structure: every kernel of a template
        plan = kt.plan(spec, budget=1, device="h100")
        shapes = {}
        for config in plan.space.legal:
            shape = tuple(
                getattr(config, axis, None) for axis in ("fused", "levels", "split", "ends", "split_k")
            )
            shapes.setdefault(shape, config)
        cases += [(plan.problem, config) for config in shapes.values()]
    kernels = set()
    for problem, config in cases:
        module = import_kernel_file(
            generated_candidate(problem, config).source_path, interpret=False, private=True
        )
        launches = capture_launches(module, problem.meta_args())
        assert launches, (problem, config.key())
        for name, _, _, kwargs in launches:
            assert kwargs.get("enable_fp_fusion") is True, (problem, config.key(), name)
            kernels.add(name)
    assert {
        "gemm_kernel", "gemm_tma_kernel", "bsr_grad_kernel", "stage_kernel", "transpose_kernel",
        "monarch_fused_kernel", "lowrank_fused_kernel",
    } <= kernels, kernels  # fmt: skip

    spec = kt.load_spec(EXAMPLES / "fft.yaml")
    plan = kt.plan(spec, budget=1, device="h100")
    config = next(c for c in plan.space.legal if not getattr(c, "ends", 0))
    module = import_kernel_file(
        generated_candidate(plan.problem, config).source_path, interpret=False, private=True
    )
    fmas = {}
    for default in ("0", "1"):
        monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", default)
        fmas[default] = [
            b.ptx.count("fma.rn") for b in compile_for_target(module, plan.problem.meta_args(), 90)
        ]
    assert fmas["0"] == fmas["1"] and sum(fmas["1"]) > 0, fmas


TRANSPOSED_MONARCH = {  # its feature-major ends: x is copied feature-major before the stages read it
    "name": "mon_t",
    "op": "monarch",
    "dtype": "float16",
    "shape": {"batch": 64, "n": 256, "nblocks": 16},
    "transposed": True,
    "device": "h100",
    "tune": {
        "configs": [dict(block_b=64, block_n=16, block_k=16, group=2, num_warps=4, num_stages=3, ends=1)]
    },
}


def test_launches_are_captured_in_the_order_the_kernel_makes_them():
    """The recorders kept a list each, so the launches came back grouped by kernel: the transposed Monarch's
    transpose (its first launch) came last."""
    from kt.autotune.compile import capture_launches
    from kt.codegen.emit import import_kernel_file

    plan = kt.plan(TRANSPOSED_MONARCH, budget=1)
    module = import_kernel_file(
        generated_candidate(plan.problem, plan.config(plan.ranked[0])).source_path,
        interpret=False,
        private=True,
    )
    launches = capture_launches(module, plan.problem.meta_args())
    assert [name for name, *_ in launches] == ["transpose_kernel", "stage_kernel", "stage_kernel"]


def test_kt_show_ptx_numbers_launches_in_call_order_and_replaces_an_earlier_runs_files_alone(
    tmp_path, monkeypatch
):
    """The transposed Monarch's launches as it makes them (transpose, stage, stage: kt said stage, stage,
    transpose), the transpose's "why not wgmma" that it has no matrix product (it read "the compiler's choice
    (the tile allows wgmma)"), and the PTX of an earlier run removed from the folder, nothing else there."""
    import yaml
    from click.testing import CliRunner

    from kt import cli

    monkeypatch.setattr(cli.out, "width", 250)  # a row of the table on one line
    spec = tmp_path / "mon_t.yaml"
    spec.write_text(yaml.safe_dump(TRANSPOSED_MONARCH))
    out = tmp_path / "ptx"
    out.mkdir()
    for kept in ("notes.txt", "launch.ptx", "launch0_stage_kernel.txt", "mine.ptx"):
        (out / kept).write_text("the user's\n")
    (out / "launch3_gemm_kernel.ptx").write_text("an earlier run's\n")
    result = CliRunner().invoke(cli.main, ["show", str(spec), "--ptx", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "launch.ptx", "launch0_stage_kernel.txt", "launch0_transpose_kernel.ptx", "launch1_stage_kernel.ptx",
        "launch2_stage_kernel.ptx", "mine.ptx", "notes.txt",
    ]  # fmt: skip
    assert (out / "notes.txt").read_text() == "the user's\n"
    assert "wgmma.mma_async" not in (out / "launch0_transpose_kernel.ptx").read_text()
    rows = [line for line in result.output.splitlines() if "_kernel" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["transpose_kernel", "stage_kernel", "stage_kernel"]
    assert "no matrix product in this launch" in rows[0]
    assert "the compiler's choice" not in result.output


def test_kt_show_ptx_that_cannot_write_its_files_says_so(tmp_path):
    """The second compile, which writes the PTX, failed (a folder where a launch's file goes; a read-only or
    full folder) and kt printed an empty table under "compiled for sm_90: PTX in DIR", exit 0."""
    from click.testing import CliRunner

    from kt import cli

    out = tmp_path / "ptx"
    (out / "launch0_gemm_kernel.ptx").mkdir(parents=True)
    result = CliRunner().invoke(cli.main, ["show", str(EXAMPLES / "dense.yaml"), "--ptx", str(out)])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("kt: error")]
    assert "--ptx: the PTX of m" in line and "was not written: crash" in line and "Is a directory" in line
    assert "compiled for sm_" not in result.output


def triton_without(root: Path, tool: str) -> Path:
    """A folder to put first on PYTHONPATH: the installed triton package linked entry by entry, but for `tool` in
    its backends/nvidia/bin (what a Triton install without that binary looks like)."""
    import triton

    real, copy = Path(triton.__file__).parent, root / "triton"
    for inner in ("", "backends", "backends/nvidia", "backends/nvidia/bin"):
        (copy / inner).mkdir(parents=True, exist_ok=True)
        skip = {"": "backends", "backends": "nvidia", "backends/nvidia": "bin", "backends/nvidia/bin": tool}
        for entry in (real / inner).iterdir():
            if entry.name != skip[inner]:
                (copy / inner / entry.name).symlink_to(entry)
    return root


def without_env(overlay: Path, tmp_path: Path) -> dict:
    """The environment of a kt command run with `overlay`'s triton, and no cuobjdump on PATH either."""
    import os

    path = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "cuobjdump").exists()]
    python_path = [str(overlay), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    return {**env, "PATH": os.pathsep.join(path), "KT_DB": str(tmp_path / "t.db"), "PYTHONWARNINGS": "ignore"}


def run(args: list[str], env: dict, cwd: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_the_compile_stage_looks_for_the_ptxas_triton_runs_for_the_target(tmp_path):
    """Triton 3.9 builds sm_90 with ptxas-blackwell: kt looked for bin/ptxas alone, said the compile stage
    would run, and every config crashed ("Cannot find ptxas-blackwell"). Without the ptxas Triton's own
    get_ptxas(90) names, `kt show --ptx` now says which is missing before compiling anything."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = Path(get_ptxas(90).path).name  # ptxas-blackwell under Triton 3.9, ptxas under 3.6
    env = without_env(triton_without(tmp_path / "overlay", tool), tmp_path)
    probe = run(["-c", "from triton.backends.nvidia.compiler import get_ptxas; get_ptxas(90)"], env, tmp_path)
    assert f"Cannot find {tool}" in probe.stderr, probe.stderr[-2000:]  # the copy lacks it, as Triton sees
    shown = run(["-m", "kt.cli", "show", str(EXAMPLES / "dense.yaml"), "--ptx", "ptx"], env, tmp_path)
    assert shown.returncode == 2, shown.stdout[-2000:] + shown.stderr[-2000:]
    assert shown.stderr.strip().splitlines()[-1] == (
        f"kt: error: --ptx: nothing is compiled for sm_90: Triton's {tool}, which builds GPU code, is not "
        "installed here"
    )
    assert "skipped" not in shown.stdout


def test_without_cuobjdump_no_build_passes_as_spill_free_and_the_notes_name_it(tmp_path):
    """cuobjdump reads a build's registers and spills: without it a build that spills came back ok (its
    registers None) and the tune's notes said it was compiled for sm_90. The compile stage is now off, and the
    first and last notes of the tune and `kt show --ptx` say why; a compile task asked for all the same fails.
    The three run in one process started with the overlay (click's runner for the two commands): a process for
    each cost CI two more imports of kt and a worker zygote's."""
    import json

    env = without_env(triton_without(tmp_path / "overlay", "cuobjdump"), tmp_path)
    why = "Triton's cuobjdump, which reads a build's registers and spills, is not installed here"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny\nop: dense\ndtype: float16\nshape: {m: 24, n: 40, k: 32}\ntune: {budget: 1}\n"
    )
    options = ["--out", "art", "--quiet", "--workers", "1", "--backend", "interpret"]
    script = (
        "import json\n"
        "from click.testing import CliRunner\n"
        "import kt\n"
        "from kt.cli import main\n"
        "from kt.autotune.runners import compile_builds\n"
        "from kt.autotune.tune import generated_candidate\n"
        f"tuned = CliRunner().invoke(main, ['tune', {str(spec)!r}, *{options!r}])\n"
        f"shown = CliRunner().invoke(main, ['show', {str(spec)!r}, '--ptx', 'ptx'])\n"
        f"plan = kt.plan({str(spec)!r}, budget=1)\n"
        "candidate = generated_candidate(plan.problem, plan.config(plan.ranked[0]))\n"
        "(o,) = compile_builds([(candidate, plan.space.device)])\n"
        "done = [[r.exit_code, r.stdout, r.stderr, repr(r.exception)] for r in (tuned, shown)]\n"
        "print(json.dumps(done + [[o.status, o.message, o.values.get('registers')]]))\n"
    )
    ran = run(["-c", script], env, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    tuned, shown, built = json.loads(ran.stdout.strip().splitlines()[-1])
    assert tuned[0] == 0, tuned[2:]
    notes = [line for line in tuned[1].splitlines() if line.startswith("note: no GPU here")]
    assert len(notes) == 2 and all(f"not compiled for the GPU ({why})" in note for note in notes), notes
    assert "compiled for the target" not in tuned[1] and "compiled for sm_90" not in tuned[1]
    assert shown[0] == 2 and shown[2].strip().endswith(why), shown
    status, message, _ = built
    assert status == "crash" and message.endswith(why), built


def test_a_ptxas_path_naming_no_program_falls_back_to_the_bundled_one_as_triton_does(monkeypatch):
    """TRITON_PTXAS_PATH=/nonexistent: Triton still finds its bundled ptxas (it tries the variable's path, then
    its own), but kt said ptxas was not installed and left the compile stage out."""
    from triton import knobs

    from kt.autotune.compile import target_compiler_available

    for variable in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
        monkeypatch.setenv(variable, "/nonexistent")
    assert target_compiler_available()
    from kt.autotune.compile import tool_path

    for name in ("ptxas", "ptxas-blackwell"):
        if hasattr(knobs.nvidia, name.replace("-", "_")):  # what Triton itself runs
            assert tool_path(name) == getattr(knobs.nvidia, name.replace("-", "_")).path


def test_the_cuda_backend_without_tritons_compiler_tools_is_refused_before_it_starts(monkeypatch):
    """Every candidate's compile then failed, each a crash row with a hint to retry what cannot pass. A GPU is
    present (as torch says) but cuobjdump is not; under Ray the nodes have their own tools."""
    import torch

    from kt.autotune import runners
    from kt.autotune.compile import CUOBJDUMP_MISSING
    from kt.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runners, "target_compiler_missing", lambda: CUOBJDUMP_MISSING)
    for backend in ("cuda", "auto"):
        with pytest.raises(
            DeviceError,
            match=rf"^backend: cuda compiles each candidate before it times it, and {CUOBJDUMP_MISSING}; reinstall",
        ):
            runners.check_gpus(backend, None)
    runners.check_gpus("cuda", None, ray="auto")
    runners.check_gpus("interpret", None)


def test_two_warp_programs_with_deep_k_steps_that_legality_admits_build_clean(pool):
    """The two-warp K-step count (kt.codegen.gemm.two_warp_k_reason) admits these near its limits, which the
    rule before it refused for their K step alone (benchmarks/two_warp_k_builds.py's samples built them clean).
    """
    from test_legality_evidence import TWO_WARP_K

    cases = [(device, problem, config) for device, problem, config, spilled in TWO_WARP_K if not spilled]
    tasks = [
        compile_task(i, problem, config, device.smem_per_block, device.compute_capability)
        for i, (device, problem, config) in enumerate(cases)
    ]
    outcomes = ran(pool, tasks)
    assert [o.status for o in outcomes] == ["ok"] * len(cases), [o.message for o in outcomes]
    for outcome, (_, _, config) in zip(outcomes, cases):
        assert outcome.values["local_bytes"] == 0, (config.key(), outcome.values)
