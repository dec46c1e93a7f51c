"""Worker pool and runners: a candidate that crashes or hangs its worker costs one record, and work goes on."""

import textwrap

from kt.autotune.pool import Task, WorkerPool
from kt.autotune.runners import Candidate, InterpretRunner
from kt.codegen import FAMILIES, GemmConfig, write_source
from kt.device import H100
from kt.ir import GemmProblem

PROBLEM = GemmProblem(40, 30, 20)
GOOD = GemmConfig(32, 32, 16, group_m=4, num_warps=4, num_stages=3)


def candidate_from(source: str, config=GOOD) -> Candidate:
    return Candidate(PROBLEM, config, str(write_source(source)))


def good_candidate(config=GOOD) -> Candidate:
    return candidate_from(FAMILIES["gemm"].render(PROBLEM, config), config)


SEGFAULT = textwrap.dedent("""
    import os, signal

    def kernel(a, b, out=None):
        print("about to die")
        os.kill(os.getpid(), signal.SIGSEGV)
""")
HANG = textwrap.dedent("""
    import time

    def kernel(a, b, out=None):
        time.sleep(3600)
""")
WRONG = textwrap.dedent("""
    def kernel(a, b, out=None):
        out.copy_(a @ b)
        out[0, 0] += 100.0
        return out
""")
BROKEN = "def kernel(a, b, out=None:\n    pass\n"


def test_crash_hang_wrong_and_broken_candidates_are_recorded_and_good_ones_still_pass():
    candidates = [
        good_candidate(),
        candidate_from(SEGFAULT),
        candidate_from(HANG),
        candidate_from(WRONG),
        candidate_from(BROKEN),
        good_candidate(GemmConfig(16, 16, 16, group_m=1, num_warps=2, num_stages=2, split_k=2)),
    ]
    runner = InterpretRunner(H100, workers=2, timeout_s=10, compile_target=False)
    results = {id(r.candidate): r for r in runner.run(candidates)}
    statuses = [results[id(c)].status for c in candidates]
    assert statuses == ["ok", "crash", "timeout", "wrong_result", "compile_error", "ok"]
    crash = results[id(candidates[1])]
    assert "SIGSEGV" in crash.message and "about to die" in crash.message, crash.message
    assert "relative error" in results[id(candidates[3])].message
    assert results[id(candidates[0])].values["rel_err"] < 2e-3


def test_follow_up_tasks_run_in_their_own_group_with_its_environment():
    groups = {"interp": (1, {"TRITON_INTERPRET": "1"}), "compile": (1, {"TRITON_INTERPRET": "0"})}
    source = write_source(FAMILIES["gemm"].render(PROBLEM, GOOD))
    check = Task(
        0,
        "check",
        {
            "family": "gemm",
            "problem": PROBLEM.to_dict(),
            "source_path": str(source),
            "device": "cpu",
            "seed": 0,
        },
        "interp",
    )

    def then_compile(outcome):
        if outcome.task.kind == "check" and outcome.status == "ok":
            return [
                Task(
                    0,
                    "compile",
                    {
                        "family": "gemm",
                        "problem": PROBLEM.to_dict(),
                        "source_path": str(source),
                        "arch": 90,
                        "smem_limit": H100.smem_per_block,
                    },
                    "compile",
                )
            ]
        return []

    with WorkerPool(groups, timeout_s=120) as pool:
        outcomes = list(pool.run([check], then_compile))
    assert [(o.task.kind, o.status) for o in outcomes] == [("check", "ok"), ("compile", "ok")]
    assert outcomes[1].values["smem_bytes"] > 0
