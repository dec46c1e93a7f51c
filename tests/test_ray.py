"""Tuning through a Ray cluster (issue 18): a local Ray instance runs kt's workers as actors. Skipped where Ray is
not installed (`pip install -e ".[ray]"`)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from kt.autotune.pool import Task  # noqa: E402
from kt.autotune.raypool import RayPool, _local_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPS = {
    "d": "name: d\nop: dense\nshape: {m: 40, n: 48, k: 32}\ntune: {budget: 2}\n",
    "l": "name: l\nop: lowrank\nshape: {batch: 24, dims: [32, 8, 48]}\ntune: {budget: 2}\n",
    "m": "name: m\nop: monarch\nshape: {batch: 16, n: 64, nblocks: 4}\ntune: {budget: 2}\n",
}


def tune(tmp_path: Path, where: str, *extra: str, in_process: bool = False) -> subprocess.CompletedProcess:
    """`kt tune` of the three ops into tmp_path/where: a process of its own, or (`in_process`) click's CliRunner
    in this one."""
    files = []
    for name, text in OPS.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        files.append(str(tmp_path / f"{name}.yaml"))
    args = ["tune", *files, "--out", str(tmp_path / where / "art"), "--db", str(tmp_path / where / "t.db"),
            "--quiet", "--workers", "1", *extra]  # fmt: skip
    if in_process:
        from click.testing import CliRunner

        from kt.cli import main

        done = CliRunner().invoke(main, args)
        failure = "".join(traceback.format_exception(done.exception)) if done.exception else ""
        return subprocess.CompletedProcess(args, done.exit_code, done.stdout, done.stderr + failure)
    return subprocess.run(
        [sys.executable, "-m", "kt.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled"},
    )


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        try:
            return sorted(conn.execute("SELECT problem_key, config_key, status FROM measurements").fetchall())
        except sqlite3.OperationalError:  # the tune has made the file but not yet its tables
            return []


@pytest.fixture(scope="module")
def local_ray():
    if (
        not ray.is_initialized()
    ):  # its actors at the tests' own priority, as in the Ray kt starts (_local_config)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=_local_config())
    yield
    ray.shutdown()


def test_three_ops_through_a_local_ray_cluster_match_a_local_run_and_a_rerun_measures_nothing(
    local_ray, tmp_path
):
    """The `--ray local` tune is a real `kt tune` process that starts (and shuts down) its own Ray instance; the
    local run and the rerun need no process of their own (CliRunner, in this process). The rerun's `--ray local`
    finds this module's Ray already up and uses it: what it shows is the resume, not a second Ray start."""
    local = tune(tmp_path, "local", in_process=True)
    assert local.returncode == 0, local.stderr[-2000:]
    through_ray = tune(tmp_path, "ray", "--ray", "local")
    assert through_ray.returncode == 0, through_ray.stderr[-2000:]
    assert (
        rows(tmp_path / "ray" / "t.db") == rows(tmp_path / "local" / "t.db")
        and len(rows(tmp_path / "ray" / "t.db")) == 9
    )
    for name in OPS:
        ours, theirs = (
            json.loads((tmp_path / w / "art" / name / "meta.json").read_text()) for w in ("ray", "local")
        )
        assert ours["config"] == theirs["config"] and ours["problem"] == theirs["problem"]
    again = tune(tmp_path, "ray", "--ray", "local", in_process=True)
    assert again.returncode == 0 and again.stdout.count("0 new checks") == 3  # resumed: everything was there


def _task(index: int, path: Path | None = None) -> Task:
    """An interpreter check of a real GEMM candidate, or of the module at `path` (the handler imports it first)."""
    from kt.autotune.tune import generated_candidate
    from kt.codegen import GemmConfig
    from kt.ir import GemmProblem

    problem = GemmProblem(40, 48, 32)
    source = str(path) if path else generated_candidate(problem, GemmConfig(16, 16, 16)).source_path
    payload = {
        "family": "gemm",
        "source_path": source,
        "problems": [problem.to_dict()],
        "device": "cpu",
        "seed": 0,
    }
    return Task(index, "check", payload, "interpret")


def test_a_candidate_that_kills_its_actor_is_a_crash_and_ray_restarts_the_actor(local_ray, tmp_path):
    crash = tmp_path / "k_crash.py"
    crash.write_text("import os\nos._exit(3)\n")
    hang = tmp_path / "k_hang.py"
    hang.write_text("import time\ntime.sleep(600)\n")
    # the hang is cut after 3 s (it sleeps for minutes: any cut shows the timeout); the real checks have
    # minutes, as an interpreter check on a loaded 2-core machine (the suite's other workers, Ray's own
    # processes) took longer than 8 s
    with RayPool({"interpret": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=300) as pool:
        first = list(pool.run([_task(0, crash)]))
        assert [o.status for o in first] == ["crash"] and "Ray actor died" in first[0].message
        later = list(pool.run([_task(1)]))  # the restarted actor takes the next task
        assert later[0].task.id == 1 and later[0].status == "ok", later[0].message
        assert later[0].values["rel_err"] < 1e-2
        pool.timeout_s = 3
        slow = list(pool.run([_task(2, hang)]))
        assert [o.status for o in slow] == ["timeout"] and slow[0].message == "no result after 3 s"
        pool.timeout_s = 300
        after = list(pool.run([_task(3)]))
        assert after[0].status == "ok", after[0].message


def test_an_actor_ray_is_restarting_holds_only_its_own_next_task(local_ray):
    """A task for an actor Ray was restarting (after a crash or a timeout) waited for it in the dispatch loop,
    up to the start-up bound, 5 s at a time: every other actor's results and timeouts waited with it. The slot
    is now asked without waiting, and the other slots go on."""
    with RayPool({"interpret": (2, {"TRITON_INTERPRET": "1"})}, timeout_s=300) as pool:
        assert [o.status for o in pool.run([_task(0), _task(1)])] == ["ok", "ok"]
        down, up = pool.slots
        ray.kill(down["actor"], no_restart=False)  # Ray restarts it: a new process imports torch and Triton
        pool._restarted(down)
        asked = time.monotonic()
        assert pool._restart_done(ray, down) is False and time.monotonic() - asked < 2
        outcomes = list(pool.run([_task(2), _task(3), _task(4)]))
        assert sorted(o.task.id for o in outcomes) == [2, 3, 4] and {o.status for o in outcomes} == {"ok"}
        assert not down.get("restarting") or up["ready"]


def test_each_actor_trims_its_nodes_generated_kernels_as_it_starts(local_ray, tmp_path):
    """An actor writes each task's module into its node's kernel cache, which only the driver's own trim
    reached: a node of a cluster kept every kernel of every tune."""
    node = tmp_path / "node"  # the actor's kt cache: as another node's, which the driver does not trim
    stale = node / "kernels" / "k_stale.py"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"#" * (2 << 20))
    then = time.time() - 10 * 3600
    os.utime(stale, (then, then))
    env = {"TRITON_INTERPRET": "1", "KT_CACHE_DIR": str(node), "KT_KERNEL_CACHE_MB": "1"}
    with RayPool({"interpret": (1, env)}, timeout_s=300) as pool:
        (done,) = pool.run([_task(0)])
    assert done.status == "ok", done.message
    assert not stale.exists() and (node / "kernels" / ".kt-trimmed").exists()


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (
            ImportError("no ray here"),
            r'^ray needs Ray: pip install ray \(in a checkout of kt: pip install -e "\.\[ray\]"\)$',
        ),
        # a broken install was a traceback
        (
            AttributeError("module 'grpc' has no attribute 'aio'"),
            r"^ray: Ray did not import \(AttributeError: module 'grpc' has no attribute 'aio'\)",
        ),
    ],
)
def test_without_a_working_ray_the_option_says_how_to_get_it(monkeypatch, failure, says):
    import builtins

    from kt.autotune import raypool
    from kt.errors import KtError

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise failure
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(KtError, match=says):
        raypool._ray()


def test_a_ray_actor_killed_mid_tune_costs_its_candidate_only_and_the_rerun_measures_just_that(
    local_ray, tmp_path, monkeypatch
):
    """SIGKILL the tune's compiling actor while it works: Ray restarts it, the tune finishes (the candidate in
    flight, if any, recorded as a crash), and a rerun with --retry-failed measures exactly the rows that crashed
    and nothing else."""
    import os
    import signal
    import threading
    import time

    import kt

    actors = {}  # group -> its actor's pid, asked as the pool starts (before any task queues there)
    made = RayPool.__init__

    def recording(self, *args, **kwargs):
        made(self, *args, **kwargs)
        for slot in self.slots:
            actors[slot["group"]] = ray.get(slot["actor"].ready.remote())["pid"]

    monkeypatch.setattr(RayPool, "__init__", recording)
    spec = kt.parse_spec(
        {"name": "k", "op": "dense", "shape": {"m": 40, "n": 48, "k": 32}, "tune": {"budget": 6}}
    )
    db = tmp_path / "t.db"
    outcome = {}

    def run():
        try:
            outcome["result"] = kt.tune(spec, backend="interpret", db=db, progress=False, baseline=False,
                                        ray="local", workers=1)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not (db.exists() and rows(db)):  # the first check is in: the actors are up and working
            assert thread.is_alive(), f"the tune ended before its first row: {outcome}"
            assert time.monotonic() < deadline, "no row after 300 s"
            time.sleep(0.05)
        os.kill(actors["compile"], signal.SIGKILL)  # the compiles take longest: it is busy, as a rule
    finally:  # never leave the tune running into the next tests (and past this module's ray.shutdown)
        thread.join(timeout=600)
    assert "error" not in outcome, outcome
    first = outcome["result"]
    statuses = [status for _, _, status in rows(db)]
    assert len(statuses) == 6 and first.newly_measured == 6
    crashed = statuses.count("crash")
    again = kt.tune(spec, backend="interpret", db=db, progress=False, baseline=False, ray="local", workers=1,
                    retry_failed=True)  # fmt: skip
    assert again.newly_measured == crashed
    assert [status for _, _, status in rows(db)] == ["ok"] * 6


def test_a_first_task_times_out_after_the_timeout_not_after_the_actor_start_too(local_ray, tmp_path):
    """An actor's first task (and the first after a restart) had `startup_s + timeout_s` (600 + 300 s in a
    tune): a hang there was not cut for 15 minutes. Now its time counts from the actor's start."""
    import time

    hang = tmp_path / "k_hang.py"
    hang.write_text("import time\ntime.sleep(600)\n")
    with RayPool({"interpret": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=3, startup_s=120) as pool:
        started = time.monotonic()
        first = list(pool.run([_task(0, hang)]))
        assert [o.status for o in first] == ["timeout"] and first[0].message == "no result after 3 s"
        assert time.monotonic() - started < 60, "cut after the actor's start and 3 s, not 123 s"
        started = time.monotonic()
        again = list(pool.run([_task(1, hang)]))  # the restarted actor's first task
        assert [o.status for o in again] == ["timeout"] and time.monotonic() - started < 60
        pool.timeout_s = 300  # a real check's time under load (the hangs above were cut after 3 s)
        assert list(pool.run([_task(2)]))[0].status == "ok"


def test_on_a_cluster_with_fewer_cpus_than_actors_every_actor_runs(local_ray):
    """A CPU per actor on a 2-CPU cluster left two of four actors (two groups of two: `kt tune --ray auto` on
    a small head node) waiting for CPUs forever. They now share the cluster's CPUs."""
    assert ray.cluster_resources()["CPU"] == 2
    env = {"TRITON_INTERPRET": "1"}
    with RayPool({"a": (2, env), "b": (2, env)}, timeout_s=120, address="auto", startup_s=120) as pool:
        tasks = [Task(i, "check", _task(i).payload, "ab"[i % 2]) for i in range(4)]
        outcomes = list(pool.run(tasks))
    assert sorted(o.task.id for o in outcomes) == [0, 1, 2, 3]
    assert all(o.status == "ok" for o in outcomes), [o.message for o in outcomes]


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("localhost:abc", "--ray: 'localhost:abc' is not a Ray address; allowed: local, auto, HOST:PORT"),
        ("", "--ray: '' is not a Ray address"),
        ("garbage", "--ray: 'garbage' is not a Ray address"),
        ("127.0.0.1:1", "--ray: nothing answers at '127.0.0.1:1'"),  # it retried for minutes
        ("http://127.0.0.1:1", "--ray: 'http://127.0.0.1:1' is not a Ray address"),  # was probed as a host
    ],
)
def test_a_bad_or_dead_ray_address_is_one_line(tmp_path, address, says):
    (tmp_path / "d.yaml").write_text(OPS["d"])
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "tune", str(tmp_path / "d.yaml"), "--db", str(tmp_path / "t.db"),
         "--out", str(tmp_path / "art"), "--ray", address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


def test_an_actor_that_dies_before_it_starts_is_no_crash_of_its_task(local_ray, tmp_path, monkeypatch):
    """An actor killed as it started (by hand, or short of memory), before it answered `ready`, was recorded as
    a `crash` of the task queued behind that answer, kept by every rerun. Its task now waits for the restart.
    (Killed inside its __init__, Ray holds the tasks queued on it until it has restarted.)"""
    from kt.autotune import raypool

    marker = tmp_path / "died"

    class DiesOnce(raypool._Actor):  # made here, so that Ray sends the class itself, not its module's name
        def ready(self):
            import os

            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return super().ready()

    monkeypatch.setattr(raypool, "_Actor", DiesOnce)
    with RayPool({"interpret": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=120, startup_s=120) as pool:
        outcomes = list(pool.run([_task(0)]))
    assert marker.exists()
    assert [o.status for o in outcomes] == ["ok"], [o.message for o in outcomes]


class _Http:
    """An HTTP/1 server on a free port of this machine (Ray's dashboard answers so, on 8265)."""

    def __enter__(self):
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()


def test_a_port_that_answers_but_not_as_ray_is_one_line_in_seconds(local_ray, tmp_path):
    """The dashboard's port given for the cluster's (an HTTP server) kept ray.init waiting without end, with
    Ray's warnings, and signals took half a minute. A gRPC server (the running cluster's GCS) passes the probe."""
    import time

    from kt.autotune import raypool
    from kt.errors import KtError

    raypool.probe(ray.get_runtime_context().gcs_address)
    (tmp_path / "d.yaml").write_text(OPS["d"])
    with _Http() as address:
        with pytest.raises(KtError, match="answers, but not as a Ray cluster"):
            raypool.probe(address)
        with pytest.MonkeyPatch.context() as patch:  # a TLS cluster's handshake is Ray's: only the connection
            patch.setenv("RAY_USE_TLS", "1")
            raypool.probe(address)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "kt.cli", "tune", str(tmp_path / "d.yaml"), "--db", str(tmp_path / "t.db"),
             "--out", str(tmp_path / "art"), "--ray", address],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 2 and time.monotonic() - started < 120
    assert done.stderr.strip().splitlines() == [
        f"kt: error: --ray: '{address}' answers, but not as a Ray cluster (no gRPC there); give the cluster's "
        "GCS address (HOST:6379 by default), not its dashboard's"
    ]
    assert not (tmp_path / "art").exists()


@pytest.fixture(scope="module")
def kts_own_ray_in_a_process(tmp_path_factory) -> subprocess.CompletedProcess:
    """One process (under `nice -n 3`, without RAY_worker_niceness) that starts kt's own local Ray twice, for
    the three tests below, each of which reads its lines: its SIGTERM handler kept through ray.init, its actor's
    niceness, a Ctrl-C while the pool's close shuts Ray down, and a Ctrl-C inside ray.init. (Each start of Ray
    takes seconds: one process for all of them, not one each.)"""
    script = tmp_path_factory.mktemp("ray_process") / "own.py"
    script.write_text(
        "import os, signal, time\n"
        "import ray\n"
        "from kt.autotune.raypool import RayPool\n"
        "def mine(number, frame):\n"
        "    raise SystemExit('terminated')\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "pool = RayPool({'interpret': (1, {'TRITON_INTERPRET': '1'})}, address='local')\n"
        "print('handler kept:', signal.getsignal(signal.SIGTERM) is mine, flush=True)\n"
        "pid = ray.get(pool.slots[0]['actor'].ready.remote())['pid']\n"
        "print('niceness', os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, pid), flush=True)\n"
        "real_shutdown, state = ray.shutdown, {}\n"
        "def shutdown(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as Ray shuts down\n"
        "    time.sleep(0.5)\n"
        "    real_shutdown(*args, **kwargs)\n"
        "    state['done'] = True\n"
        "ray.shutdown = shutdown\n"
        "try:\n"
        "    pool.close()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after the shutdown:', state.get('done'), ray.is_initialized(), flush=True)\n"
        "ray.shutdown = real_shutdown\n"
        "real_init = ray.init\n"
        "def init(*args, **kwargs):\n"
        "    started = real_init(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as Ray is up, before ray.init returns\n"
        "    time.sleep(0.5)\n"
        "    return started\n"
        "ray.init = init\n"
        "try:\n"
        "    RayPool({'interpret': (1, {'TRITON_INTERPRET': '1'})}, address='local')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted, Ray left running:', ray.is_initialized(), flush=True)\n"
    )
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_worker_niceness", None)
    return subprocess.run(["nice", "-n", "3", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def test_ctrl_c_while_ray_shuts_down_waits_for_the_shutdown_then_interrupts(kts_own_ray_in_a_process):
    """A Ray instance kt started was shut down by Ray's atexit hook as kt ended: Ctrl-C there printed a
    traceback, exited 0 and left Ray's agents running for minutes. The pool now shuts it down on close, with
    Ctrl-C held until the shutdown is over."""
    done = kts_own_ray_in_a_process
    assert done.returncode == 0, done.stderr[-2000:]
    assert "interrupted after the shutdown: True False" in done.stdout, (done.stdout, done.stderr[-2000:])


def test_starting_kts_local_ray_does_not_print_rays_token_notice_but_keeps_its_warning(caplog):
    """`kt tune --ray local --quiet` printed Ray's "Token authentication is enabled for this Ray cluster. Set
    RAY_AUTH_MODE=disabled to opt out" into kt's output where a token exists; Ray's warning that
    authentication is off stays."""
    import logging

    from kt.autotune.raypool import _quiet_token_notice

    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")  # Ray 2.5x's
    if not hasattr(setup, "_warn_token_auth_enabled"):
        pytest.skip("this Ray has no token notice")

    with caplog.at_level(logging.WARNING, logger=setup.logger.name), _quiet_token_notice():
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("Token authentication is disabled"), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=setup.logger.name):
        setup._warn_token_auth_enabled()  # outside kt's start: Ray's own
    assert len(caplog.records) == 1


def test_starting_ray_keeps_kts_sigterm_handler_and_a_ctrl_c_there_shuts_ray_down(kts_own_ray_in_a_process):
    """ray.init put in Ray's own SIGTERM handler: a SIGTERM during a `--ray` tune printed Ray's stack dump,
    exited 134 or 15 without kt's line, and left Ray's agents running. A Ctrl-C inside ray.init left no pool to
    close, and Ray's agents ran on for a minute: it is held until Ray is up, which is then shut down."""
    done = kts_own_ray_in_a_process
    assert done.returncode == 0, done.stderr[-2000:]
    assert "handler kept: True" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert "interrupted, Ray left running: False" in done.stdout, (done.stdout, done.stderr[-2000:])


def test_the_ray_kt_starts_runs_its_actors_at_kts_own_priority(kts_own_ray_in_a_process, monkeypatch):
    """Ray raises its workers' niceness by 15: kt's compiling and measuring actors got a few percent of a core
    beside any other busy process (a 12 s tune took 120 s beside three). The Ray kt starts runs them at kt's own
    priority (its local workers' too), under `nice` as well; RAY_worker_niceness, set by the user, is Ray's."""
    done = kts_own_ray_in_a_process
    assert done.returncode == 0, done.stderr[-2000:]
    own = __import__("os").getpriority(__import__("os").PRIO_PROCESS, 0)
    assert f"niceness {own + 3} {own + 3}" in done.stdout, (done.stdout, done.stderr[-2000:])
    monkeypatch.setenv("RAY_worker_niceness", "7")
    assert _local_config() == {}  # Ray reads the user's setting; a _system_config entry would override it
    monkeypatch.delenv("RAY_worker_niceness")
    assert _local_config() == {"worker_niceness": 0}


def test_a_refused_connection_where_a_ray_token_exists_names_ray_auth_mode(tmp_path, monkeypatch):
    """`ray start --head` turns token authentication on where ~/.ray/auth_token exists; `--ray HOST:PORT`
    without RAY_AUTH_MODE=token then failed with Ray's "could not connect" alone (the reason in its log lines)."""
    from kt.autotune.raypool import _token_hint

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert _token_hint("10.0.0.1:6379") == ""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert _token_hint("10.0.0.1:6379").endswith("asks for that token: set RAY_AUTH_MODE=token")
    assert _token_hint("local") == ""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert _token_hint("10.0.0.1:6379") == ""


def test_a_run_closed_early_leaves_no_task_running_for_the_next_run(local_ray, tmp_path):
    """A run its caller leaves mid-loop (a tune that raised over one result) left its other task running on its
    actor: the next run's task on that actor waited behind it (10 minutes here), and its timeout counted the
    wait. The actor is restarted, and the next run's tasks are timed from its restart."""
    hang = tmp_path / "k_hang.py"
    hang.write_text("import time\ntime.sleep(600)\n")
    with RayPool({"interpret": (2, {"TRITON_INTERPRET": "1"})}, timeout_s=300) as pool:
        run = pool.run([_task(0), _task(1, hang)])
        first = next(run)
        assert first.task.id == 0 and first.status == "ok", first.message
        run.close()  # the caller leaves: task 1 still sleeps on its actor
        pool.timeout_s = 60
        later = list(pool.run([_task(2), _task(3)]))
        assert sorted(o.task.id for o in later) == [2, 3]
        assert {o.status for o in later} == {"ok"}, [o.message for o in later]


def test_an_aborted_dispatcher_run_leaves_no_task_running_and_a_slow_caller_gets_no_false_timeout(
    local_ray, tmp_path
):
    """An aborted dispatcher run (Ctrl-C, one op's error, in ops tuned at once) returned with its actor still
    running the abandoned task: the next run's task waited behind it and was recorded a timeout. And ray.wait
    hands back one finished result a pass: a caller that took longer than the timeout over an earlier result
    had a finished task recorded a timeout and its actor killed."""
    import threading
    import time

    from kt.autotune.dispatch import Dispatcher, DispatcherStopped

    hang = tmp_path / "k_hang.py"
    hang.write_text("import time\ntime.sleep(600)\n")
    with RayPool({"interpret": (1, {"TRITON_INTERPRET": "1"})}, timeout_s=300) as pool:
        assert [o.status for o in pool.run([_task(0)])] == ["ok"]
        stopped = []
        with Dispatcher(pool) as dispatcher:

            def op():
                with pytest.raises(DispatcherStopped):
                    list(dispatcher.run([_task(1, hang)]))
                stopped.append(True)

            thread = threading.Thread(target=op)
            thread.start()
            time.sleep(3)
            dispatcher.abort()
            thread.join(60)
        assert stopped
        pool.timeout_s = 30
        assert [(o.task.id, o.status) for o in pool.run([_task(2)])] == [(2, "ok")]
    with RayPool({"interpret": (2, {"TRITON_INTERPRET": "1"})}, timeout_s=4) as pool:
        assert sorted(o.status for o in pool.run([_task(3), _task(4)])) == ["ok", "ok"]  # both actors started
        seen = []
        for outcome in pool.run([_task(5), _task(6)]):
            seen.append((outcome.task.id, outcome.status))
            if len(seen) == 1:
                time.sleep(6)  # the caller busy with the first result past the timeout
        assert sorted(status for _, status in seen) == ["ok", "ok"], seen


def test_a_sigterm_inside_ray_init_shuts_ray_down_and_reaches_kts_handler(monkeypatch):
    """ray.init sets its own SIGTERM handler (sys.exit(15)) first thing: a SIGTERM before it returned exited 15
    without a word and left Ray's agents running. And Ray raises kt's _Terminated again as a plain
    KeyboardInterrupt (inside ray.wait): kt said "kt: interrupted" and then "kt: terminated (SIGTERM)"."""
    import signal
    import types

    from click.testing import CliRunner

    from kt import cli
    from kt.autotune import raypool

    shut = []

    class Terminated(Exception):
        pass

    def handler(signum, frame):
        raise Terminated

    fake = types.SimpleNamespace(
        init=lambda **kwargs: (_ for _ in ()).throw(SystemExit(signal.SIGTERM)),
        is_initialized=lambda: True,
        shutdown=lambda: shut.append(True),
    )
    before = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Terminated):
            raypool._connect(fake, "auto")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert shut == [True]

    def stopped_in_ray(*args, **kwargs):
        cli._STOPPED.append(signal.SIGTERM)
        raise KeyboardInterrupt  # as Ray raises the _Terminated again

    monkeypatch.setattr(cli.kt, "plan", stopped_in_ray)
    result = CliRunner().invoke(
        cli.main, ["space", str(Path(__file__).parents[1] / "examples" / "dense.yaml")]
    )
    assert result.exit_code == 143 and "kt: interrupted" not in result.output, result.output
    assert result.output.count("kt: terminated (SIGTERM)") == 1, result.output
