"""Kernels compile for the H100 (sm_90) with Triton's bundled ptxas, no GPU needed: what the interpreter cannot see."""

import pytest

from kt.autotune.pool import Task, WorkerPool
from kt.codegen import FAMILIES, GemmConfig, write_source
from kt.codegen.blockgemm import BlockGemmConfig, resources
from kt.codegen.gemm import shared_memory
from kt.device import H100
from kt.ir import GemmProblem
from kt.ir.problems import FFTProblem, MonarchProblem

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


def compile_tasks(cases, smem_limit=H100.smem_per_block):
    return [
        Task(
            i,
            "compile",
            {
                "family": "gemm",
                "problem": p.to_dict(),
                "arch": 90,
                "smem_limit": smem_limit,
                "source_path": str(write_source(FAMILIES["gemm"].render(p, c))),
            },
            "compile",
        )
        for i, (p, c) in enumerate(cases)
    ]


@pytest.fixture(scope="module")
def pool():
    with WorkerPool({"compile": (2, {"TRITON_INTERPRET": "0"})}, timeout_s=300) as workers:
        yield workers


def test_generated_kernels_compile_for_sm90_and_use_exactly_the_estimated_shared_memory(pool):
    outcomes = sorted(pool.run(compile_tasks(CASES)), key=lambda o: o.task.id)
    for outcome, (problem, config) in zip(outcomes, CASES):
        assert outcome.status == "ok", outcome.message
        used = outcome.values["smem_bytes"]
        assert 0 < used <= shared_memory(problem, config), (config.key(), used)
    assert outcomes[0].values["smem_bytes"] == shared_memory(*CASES[0]), "fp16 keeps every pipeline stage"
    assert [o.values["uses_wgmma"] for o in outcomes] == [True, True, True, True], "Hopper's warpgroup MMA"


def test_a_kernel_over_the_shared_memory_limit_is_out_of_resources(pool):
    (outcome,) = pool.run(compile_tasks(CASES[:1], smem_limit=100 * 1024))
    assert outcome.status == "out_of_resources" and "147456 bytes of shared memory" in outcome.message


# The first H200 run (2026-11-30): its Monarch ran 4x slower than two torch.bmm and its FFT n=4096 compiled for
# over 120 s under Triton 3.6. A group of one block now runs plain 2D dots (wgmma on Hopper); a batched dot
# keeps at least as many blocks as warps (Triton 3.6 repeated the products on the extra warps).
STRUCTURED = [
    (MonarchProblem(16384, (64, 64, 64), (64, 64, 64)), BlockGemmConfig(128, 64, 64, 1, 8, 3)),
    (FFTProblem(16384, 4096, "float16"), BlockGemmConfig(256, 64, 32, 1, 8, 4, split=64)),
    (MonarchProblem(16384, (64, 64, 64), (64, 64, 64)), BlockGemmConfig(64, 64, 64, 8, 8, 2)),
    (MonarchProblem(4096, (32, 32, 32), (32, 32, 32), "bfloat16"), BlockGemmConfig(16, 32, 32, 16, 4, 3)),
]


def structured_task(index, problem, config):
    source = write_source(FAMILIES[problem.family].render(problem, config))
    payload = {"family": problem.family, "problem": problem.to_dict(), "arch": 90, "smem_limit": 1 << 30}
    return Task(index, "compile", {**payload, "source_path": str(source)}, "compile")


def test_structured_kernels_use_wgmma_for_one_block_and_no_repeated_mma_for_batches(pool):
    tasks = [structured_task(i, p, c) for i, (p, c) in enumerate(STRUCTURED)]
    outcomes = sorted(pool.run(tasks), key=lambda o: o.task.id)
    for outcome, (problem, config) in zip(outcomes, STRUCTURED):
        assert outcome.status == "ok", outcome.message
        values = outcome.values
        if config.group == 1:
            assert values["uses_wgmma"] and values["mma_sync"] == 0, (config.key(), values)
        else:  # m16n8k16 steps of one K step of the batched tile, shared by the warps
            ideal = config.group * config.block_b * config.block_n * config.block_k // (16 * 8 * 16)
            assert values["mma_sync"] == ideal // config.num_warps, (config.key(), values, ideal)
        # the legality estimate never undercounts what the compiler allocates
        assert values["smem_bytes"] <= resources(problem, config, H100)[0], (config.key(), values)
