"""Worker pool and runners: a candidate that crashes or hangs its worker costs one record, and work goes on."""

import ast
import textwrap
from pathlib import Path

import pytest

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
KILLED = SEGFAULT.replace("SIGSEGV", "SIGKILL")  # as the out-of-memory killer ends a worker
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
        candidate_from(KILLED),
    ]
    runner = InterpretRunner(H100, workers=2, timeout_s=10, compile_target=False)
    results = {id(r.candidate): r for r in runner.run(candidates)}
    statuses = [results[id(c)].status for c in candidates]
    assert statuses == ["ok", "crash", "timeout", "wrong_result", "compile_error", "ok", "crash"]
    crash = results[id(candidates[1])]
    assert "SIGSEGV" in crash.message and "about to die" in crash.message, crash.message
    # kt kills a worker only past its timeout (a timeout row): a SIGKILL came from elsewhere, the OOM killer
    # most often (a butterfly over 2**24 features: "worker killed by SIGKILL" and no more)
    killed = results[id(candidates[-1])].message
    assert "SIGKILL, not by kt" in killed and "out-of-memory killer" in killed, killed
    assert "relative error" in results[id(candidates[3])].message
    assert results[id(candidates[0])].values["rel_err"] < 2e-3


def test_a_candidate_whose_cache_file_was_deleted_under_the_run_is_written_again_not_a_crash(tmp_path):
    """`kernels/` of kt's cache deleted while a tune ran (the README: safe to delete): every candidate was
    stored as a crash (FileNotFoundError), which later tunes skipped for good. A candidate carries its source,
    and the worker writes it again."""
    from kt.autotune.tune import generated_candidate

    candidate = generated_candidate(PROBLEM, GOOD)
    Path(candidate.source_path).unlink()
    runner = InterpretRunner(H100, workers=1, timeout_s=60, compile_target=False)
    (result,) = runner.run([candidate])
    assert result.status == "ok", result.message
    assert Path(candidate.source_path).read_text() == candidate.source


def test_a_retry_joins_the_run_in_place_of_a_candidate_that_ends_at_its_first_stage():
    """`Runner.run(..., retry=)`: a candidate ending at its first stage (here a source that does not compile)
    is offered to `retry`, whose candidate joins the same run and yields its own result. Without a compile
    target the interpreter's check is the only stage, so every candidate ends there and is offered (the
    retry's own, passing, too): `retry` decides by the status."""
    asked = []

    def retry(candidate, status):
        asked.append(status)
        return good_candidate() if len(asked) == 1 else None

    broken = candidate_from(BROKEN)
    runner = InterpretRunner(H100, workers=2, timeout_s=60, compile_target=False)
    results = list(runner.run([broken, candidate_from(BROKEN)], retry=retry))
    assert sorted(r.status for r in results) == ["compile_error", "compile_error", "ok"]
    assert sorted(asked) == ["compile_error", "compile_error", "ok"]  # in the order the outcomes came
    (passed,) = [r for r in results if r.status == "ok"]
    assert passed.candidate.config == GOOD and passed.values["rel_err"] < 2e-3


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
        from kt.autotune.zygote import Zygote
        pool = WorkerPool({{"default": (2, {{"TRITON_INTERPRET": "1"}})}}, timeout_s=600)
        pids = [s.process.pid for s in pool.slots] + [Zygote._shared.process.pid]  # forked workers, their zygote
        print(" ".join(map(str, pids)), flush=True)
        list(pool.run(_hang_tasks(2)))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 3
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


# Workers for the CPU are forked from kt's zygote (kt.autotune.zygote), which has imported torch and Triton once.

CWD_AND_ENV = textwrap.dedent("""
    import os, pathlib
    pathlib.Path(os.environ["KT_TEST_REPORT"]).write_text(
        f"{os.getcwd()}|{os.environ.get('KT_TEST_GROUP')}|{os.getppid()}"
    )

    def kernel(a, b, out=None):
        out.copy_(a @ b)
        return out
""")


def _report_task(index, group, source):
    payload = {"family": "gemm", "problems": [PROBLEM.to_dict()], "source_path": str(source), "device": "cpu",
               "seed": 0}  # fmt: skip
    return Task(index, "check", payload, group)


def test_cpu_workers_are_forked_ready_and_each_has_its_groups_environment_and_the_callers_folder(
    tmp_path, monkeypatch
):
    import os
    import time

    from kt.autotune.zygote import ForkedWorker, Zygote

    source = write_source(CWD_AND_ENV)
    monkeypatch.chdir(tmp_path)
    groups = {
        name: (
            1,
            {"TRITON_INTERPRET": interpret, "KT_TEST_GROUP": name, "KT_TEST_REPORT": str(tmp_path / name)},
        )
        for name, interpret in (("interp", "1"), ("compile", "0"))
    }
    with WorkerPool(groups, timeout_s=120) as pool:
        assert all(isinstance(slot.process, ForkedWorker) for slot in pool.slots)
        outcomes = list(pool.run([_report_task(0, "interp", source), _report_task(1, "compile", source)]))
        assert [o.status for o in outcomes] == ["ok", "ok"], [o.message for o in outcomes]
        zygote = Zygote._shared.process.pid
        for name in groups:
            assert (tmp_path / name).read_text() == f"{tmp_path}|{name}|{zygote}"
        assert len({slot.process.pid for slot in pool.slots} | {os.getpid(), zygote}) == 4
        started = time.monotonic()
        for _ in range(3):  # a fresh worker imports torch and Triton for seconds; a fork is ready at once
            for slot in pool.slots:
                slot.restart()
            list(pool.run([Task(i, "describe", {}, name) for i, name in enumerate(groups)]))
        assert time.monotonic() - started < 6


def test_a_cpu_worker_of_a_large_environment_is_forked():
    """An environment over the zygote socket's buffer (about 200 KB) failed to send (EMSGSIZE), which was taken
    for the zygote's death: the pool restarted the worker for ever, `kt tune` hanging at 100% CPU. The request
    now goes in a file."""
    import os
    import subprocess
    import sys

    script = textwrap.dedent("""
        import os
        from kt.autotune.pool import Task, WorkerPool
        from kt.autotune.zygote import ForkedWorker
        for i in range(3):  # 300 KB (one variable may hold 128 KiB on Linux)
            os.environ[f"KT_TEST_BIG_{i}"] = "x" * 100_000
        with WorkerPool({"cpu": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=60) as pool:
            assert isinstance(pool.slots[0].process, ForkedWorker)
            (outcome,) = pool.run([Task(0, "describe", {}, "cpu")])
            print(outcome.status, outcome.message)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], env=os.environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.split()[0] == "ok", done.stdout + done.stderr


def test_gpu_workers_and_kt_worker_fork_0_start_fresh_processes(monkeypatch):
    import subprocess

    with WorkerPool({"gpu": (1, {"KT_WORKER_GPU": "1"})}, timeout_s=120) as pool:
        assert isinstance(pool.slots[0].process, subprocess.Popen)
        assert [o.status for o in pool.run([Task(0, "describe", {}, "gpu")])] == ["ok"]
    monkeypatch.setenv("KT_WORKER_FORK", "0")
    with WorkerPool({"cpu": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=120) as pool:
        assert isinstance(pool.slots[0].process, subprocess.Popen)


def test_a_worker_killed_before_its_zygote_forked_it_never_runs():
    import os
    import subprocess
    import time

    from kt.autotune.zygote import Zygote

    zygote = Zygote(dict(os.environ))  # a zygote of its own, still importing torch: nothing is forked yet
    try:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        with open(os.devnull, "wb") as log:
            worker = zygote.spawn(dict(os.environ), to_child_r, from_child_w, log.fileno())
        started = time.monotonic()
        worker.kill()  # let go at once: a pool that closes early does not wait for the zygote's imports
        assert time.monotonic() - started < 1 and worker.poll() == -9 and worker.pid is None
        second = zygote.spawn(dict(os.environ), to_child_r, from_child_w, os.open(os.devnull, os.O_WRONLY))
        assert (
            second.pid is not None and second.poll() is None
        )  # the first was forked and killed; it serves on
        second.kill()
        assert second.wait(timeout=30) == -9
        deadline = time.monotonic() + 10
        while True:  # both reaped: no zombies (the first is reaped when its SIGCHLD comes)
            children = subprocess.run(
                ["ps", "--ppid", str(zygote.process.pid), "-o", "pid="], capture_output=True
            ).stdout.split()
            if not children or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert children == []
    finally:
        zygote.sock.close()  # as at kt's exit: the zygote goes
        assert zygote.process.wait(timeout=30) == 0


def test_a_zygote_that_dies_before_forking_costs_no_task_and_workers_then_start_fresh(monkeypatch, caplog):
    import os
    import signal
    import subprocess

    from kt.autotune.zygote import Zygote

    monkeypatch.setattr(Zygote, "_shared", None)
    monkeypatch.setattr(Zygote, "_broken", "")
    with WorkerPool({"cpu": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=120) as pool:
        os.kill(Zygote._shared.process.pid, signal.SIGKILL)  # as the OOM killer would, while it imports torch
        outcomes = list(pool.run([Task(0, "describe", {}, "cpu")]))
        assert [o.status for o in outcomes] == [
            "ok"
        ]  # the task ran in a fresh process, not recorded as a crash
        assert isinstance(pool.slots[0].process, subprocess.Popen)
    assert "exited with code -9" in Zygote._broken
    assert "workers start as fresh processes" in caplog.text


def test_a_zygote_that_dies_after_serving_is_replaced_and_its_socket_and_log_are_closed(monkeypatch):
    """A zygote that had forked workers and then died was replaced, but the kt process kept its socket and log
    open: 2 file descriptors for every replacement."""
    import os
    import signal

    from kt.autotune.zygote import Zygote

    monkeypatch.setattr(Zygote, "_shared", None)
    monkeypatch.setattr(Zygote, "_broken", "")
    with WorkerPool({"cpu": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=120) as pool:
        assert [o.status for o in pool.run([Task(0, "describe", {}, "cpu")])] == ["ok"]
        first = Zygote._shared
        assert pool.slots[0].process.pid is not None and first.proven  # it forked the worker
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
        assert Zygote.shared() is not first and not Zygote._broken
        assert first.sock.fileno() == -1 and first.log.closed
        pool.slots[0].restart()  # the next worker comes from the new zygote
        assert [o.status for o in pool.run([Task(1, "describe", {}, "cpu")])] == ["ok"]
    second = Zygote._shared
    second.close()  # this test's zygote goes (the process-wide one is put back by monkeypatch)
    assert second.process.wait(timeout=30) == 0


def test_a_task_whose_zygote_died_under_it_runs_again_once_and_is_not_blamed_for_the_sigkill(monkeypatch):
    """A zygote that dies takes its workers with it: each busy one's task was recorded a crash "killed by
    SIGKILL, not by kt (on Linux most often the out-of-memory killer...)", as if the task had done it; then a
    crash "not the task's doing", which a tune left out of its best all the same. It is sent again, once."""
    import os
    import signal
    import subprocess
    import threading
    import time

    from kt.autotune.zygote import Zygote

    monkeypatch.setattr(Zygote, "_shared", None)
    monkeypatch.setattr(Zygote, "_broken", "")

    def kill_zygotes(count: int) -> None:
        """SIGKILL the shared zygote once it has forked a worker (the busy one), `count` zygotes in turn."""
        killed = []
        deadline = time.monotonic() + 120
        while len(killed) < count and time.monotonic() < deadline:
            zygote = Zygote._shared
            forked = (
                zygote is not None
                and subprocess.run(
                    ["ps", "--ppid", str(zygote.process.pid), "-o", "pid="], capture_output=True
                ).stdout.split()
            )
            if forked and zygote not in killed:
                time.sleep(1.0)  # the task under way
                os.kill(zygote.process.pid, signal.SIGKILL)
                killed.append(zygote)
            time.sleep(0.05)

    with WorkerPool({"default": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=120) as pool:
        assert [o.status for o in pool.run([Task(0, "describe", {}, "default")])] == ["ok"]
        killer = threading.Thread(target=kill_zygotes, args=(1,))
        killer.start()
        (outcome,) = pool.run([_check_task(1, SLOW)])  # 2 s: killed under it at 1 s, then run again whole
        killer.join()
        assert outcome.status == "ok", outcome.message
        killer = threading.Thread(target=kill_zygotes, args=(2,))
        killer.start()
        (outcome,) = pool.run([_check_task(2, HANG)])
        killer.join()
    assert outcome.status == "crash"
    assert outcome.message.startswith("the zygote that forked this worker died"), outcome.message
    assert "out-of-memory" not in outcome.message
    Zygote._shared.close()


def test_a_worker_started_after_the_working_folder_was_deleted_starts_fresh(monkeypatch, tmp_path):
    """The zygote's request names the working folder: os.getcwd() raised FileNotFoundError out of the pool,
    and `kt tune` ended on "No such file or directory"."""
    import os

    from kt.autotune.zygote import Zygote

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(FileNotFoundError):
        os.getcwd()
    zygote = object.__new__(Zygote)  # no process: the request is refused before anything is sent
    assert zygote.spawn(dict(os.environ), 0, 1, 2) is None


_STAND_IN_DRIVER = """
static int initialized;
int cuInit(unsigned int flags) { initialized = 1; return 0; }
int cuCtxGetCurrent(void **ctx) { if (!initialized) return 3; *ctx = 0; return 0; }
"""


def test_the_zygote_forks_beside_a_loaded_cuda_driver_but_not_an_initialized_one(tmp_path):
    """Where a GPU is, importing torch can load libcuda without initializing it (the H200 machines, 2026-12-04):
    forking is safe until cuInit has run. There is no driver here, so a stand-in library named libcuda.so.1 with
    the two entry points the check touches (cuCtxGetCurrent answers 3, CUDA_ERROR_NOT_INITIALIZED, before cuInit,
    as the driver API documents) is loaded in a fresh interpreter, and the check is asked before and after
    cuInit, and of a process with none loaded."""
    import shutil
    import subprocess
    import sys

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in libcuda.so.1")
    (tmp_path / "driver.c").write_text(_STAND_IN_DRIVER)
    library = tmp_path / "libcuda.so.1"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "driver.c")], check=True, timeout=60
    )
    probe = (
        "import ctypes, sys\n"
        "from kt.autotune.zygote import _cuda_driver_initialized as init\n"
        "before = init()\n"
        f"lib = ctypes.CDLL({str(library)!r})\n"
        "loaded = init()\n"
        "lib.cuInit(0)\n"
        "print(before, loaded, init())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


THREADS = textwrap.dedent("""
    import os, pathlib, torch, threadpoolctl
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    pathlib.Path(os.environ["KT_TEST_REPORT"]).write_text(f"{torch.get_num_threads()}|{blas}")

    def kernel(a, b, out=None):
        out.copy_(a @ b)
        return out
""")


def test_cpu_workers_share_the_cpus_among_them_in_torchs_threads_and_numpys_blas(tmp_path, monkeypatch):
    """Each worker ran torch and numpy's BLAS (the interpreter's dots) on every core: 2 workers on 2 cores ran
    4 threads, and a CPU tune of examples/monarch.yaml (--budget 8 --workers 2) took 50 s where it takes 34 s."""
    import kt.cpus

    monkeypatch.setattr(kt.cpus, "usable_cpus", lambda: 8)  # 8 CPUs among 2 workers: 4 threads each
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    source = write_source(THREADS)
    groups = {
        name: (1, {"TRITON_INTERPRET": interpret, "KT_TEST_REPORT": str(tmp_path / name)})
        for name, interpret in (("interp", "1"), ("compile", "0"))
    }
    with WorkerPool(groups, timeout_s=120) as pool:
        outcomes = list(pool.run([_report_task(0, "interp", source), _report_task(1, "compile", source)]))
    assert [o.status for o in outcomes] == ["ok", "ok"], [o.message for o in outcomes]
    for name in groups:
        torch_threads, blas = (tmp_path / name).read_text().split("|")
        assert torch_threads == "4" and set(ast.literal_eval(blas)) <= {4}, (name, torch_threads, blas)


def _check_task(index: int, source: str) -> Task:
    problem = GemmProblem(16, 16, 16)
    payload = {"family": "gemm", "problems": [problem.to_dict()], "source_path": str(write_source(source)),
               "device": "cpu", "seed": 0}  # fmt: skip
    return Task(index, "check", payload, "default")


FAST = "def kernel(a, b, out=None):\n    out.copy_(a @ b)\n    return out\n"
SLOW = "import time\n\ndef kernel(a, b, out=None):\n    time.sleep(2)\n    out.copy_(a @ b)\n    return out\n"
SLOW_WRONG = SLOW.replace("    return out", "    out[0, 0] += 100.0\n    return out")


def test_a_run_its_caller_left_mid_loop_hands_its_running_task_to_no_later_run():
    """A tune that raised over its first result (a database insert, say) left its other task running: the
    pool's next run, another op's, yielded that task's result as its own task of the same number."""
    import time

    with WorkerPool({"default": (2, {"TRITON_INTERPRET": "1"})}, timeout_s=60) as pool:
        with pytest.raises(RuntimeError):
            for _ in pool.run([_check_task(0, FAST), _check_task(1, SLOW_WRONG)]):
                raise RuntimeError("the caller's insert failed")
        time.sleep(2.5)  # the abandoned task would have finished by now
        outcomes = list(pool.run([_check_task(0, FAST), _check_task(1, FAST)]))
    assert sorted((o.task.id, o.status) for o in outcomes) == [(0, "ok"), (1, "ok")], outcomes


def test_a_result_that_came_while_the_caller_was_busy_is_no_timeout():
    """The ready workers were read once per pass: a task that finished while the caller took 5 s over an
    earlier result was past its 4 s deadline when its turn came, and was recorded a timeout."""
    import time

    with WorkerPool({"default": (2, {"TRITON_INTERPRET": "1"})}, timeout_s=4) as pool:
        pool.warm()
        seen = {}
        for outcome in pool.run([_check_task(0, FAST), _check_task(1, SLOW)]):
            seen[outcome.task.id] = outcome.status
            if outcome.task.id == 0:
                time.sleep(5)
    assert seen == {0: "ok", 1: "ok"}, seen


def test_a_crash_quotes_its_own_tasks_output_not_the_tasks_before():
    """The crash message quoted the worker's whole log: a segfault that printed nothing read "worker killed by
    SIGSEGV: hello from task A", the task before it on that worker."""
    loud = FAST.replace("    out.copy_", "    print('hello from task A')\n    out.copy_")
    silent = "import os, signal\n\ndef kernel(a, b, out=None):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    with WorkerPool({"default": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=60) as pool:
        outcomes = {o.task.id: o for o in pool.run([_check_task(0, loud), _check_task(1, silent)])}
    assert outcomes[0].status == "ok" and outcomes[1].status == "crash"
    assert "task A" not in outcomes[1].message and outcomes[1].message.startswith("worker killed by SIGSEGV")
