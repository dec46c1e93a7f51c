"""Worker pool and runners: a candidate that crashes or hangs its worker costs one record, and work goes on."""

import textwrap
from pathlib import Path

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
            "problems": [PROBLEM.to_dict()],
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


def _hang_tasks(count):
    source = write_source(HANG)
    payload = {
        "family": "gemm",
        "problems": [PROBLEM.to_dict()],
        "source_path": str(source),
        "device": "cpu",
        "seed": 0,
    }
    return [Task(i, "check", payload, "default") for i in range(count)]


def test_closing_a_pool_of_hung_workers_takes_seconds_not_minutes():
    import time

    pool = WorkerPool({"default": (3, {"TRITON_INTERPRET": "1"})}, timeout_s=600)
    for slot, task in zip(pool.slots, _hang_tasks(3)):
        slot.send(task)  # as run() does: every worker now busy with a kernel that never returns
    time.sleep(3)
    started = time.monotonic()
    pool.close()  # what Ctrl-C does
    assert time.monotonic() - started < 8
    assert all(slot.process.poll() is not None for slot in pool.slots)


def test_workers_die_with_a_killed_parent(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_pool import WorkerPool, _hang_tasks
        pool = WorkerPool({{"default": (2, {{"TRITON_INTERPRET": "1"}})}}, timeout_s=600)
        print(" ".join(str(s.process.pid) for s in pool.slots), flush=True)
        list(pool.run(_hang_tasks(2)))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    time.sleep(3)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            pid
            for pid in pids
            if os.path.exists(f"/proc/{pid}") and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        ]
    assert alive == [], "orphaned workers must not keep running"


def test_workers_put_tritons_compile_cache_under_kts_cache_folder(monkeypatch, tmp_path):
    from kt.autotune.pool import worker_env

    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert worker_env({"A": "1"})["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert worker_env({"A": "1"})["A"] == "1"
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/else")  # the user's choice wins
    assert worker_env({})["TRITON_CACHE_DIR"] == "/somewhere/else"
