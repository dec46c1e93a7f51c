"""A pool of worker processes in which a candidate that crashes or hangs costs one result, not the session.

Each worker serves tasks over a pair of pipes, with its environment set before it says ready. A GPU worker is a
fresh `python -m kt.autotune.worker` process (a CUDA context must not be copied); the interpreter's and the
compiler's workers are forked from kt's zygote (kt.autotune.zygote), a process that has already imported torch
and Triton and never touches CUDA, so they are ready in a fraction of a second instead of seconds
(KT_WORKER_FORK=0 starts them fresh too). A worker first imports torch and Triton (a forked one has them) and says
it is ready; a task's timeout clock starts only then (start-up has its own, longer bound), so
a slow start on a loaded machine never times out a healthy candidate. When a worker dies mid-task (a segfault,
an illegal memory access, `os._exit`), its task is reported as `crash` and a fresh worker takes its slot; when a
task outlives its timeout, the worker is killed, the task is reported as `timeout`, and the slot restarts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

STARTUP_S = 600.0  # a worker's start-up (importing torch and Triton) on a machine busy with other work
INBOX_POLL_S = 0.5  # the longest an idle pool serving an inbox goes without looking at it


class Inbox(Protocol):
    """More tasks for a running pool, from other threads (kt.autotune.dispatch.Dispatcher)."""

    open: bool  # more tasks may come: the pool's run goes on while it holds
    aborted: bool  # stop now: the run returns, its busy workers killed (their tasks are no later run's)

    @property
    def waker(self) -> Connection:
        """Readable when tasks were put in (a pool waits on it beside its workers)."""

    def take(self, group: str) -> Task | None:
        """The next task for a free worker of `group`, if any."""

    def wait(self, timeout: float) -> None:
        """Block until tasks are put in or `timeout` seconds pass."""

    def clear(self) -> None:
        """Forget the wake-ups read so far."""


@dataclass
class Task:
    """One unit of work: `kind` names a handler in kt.autotune.worker.HANDLERS, `group` the workers that run it."""

    id: int
    kind: str
    payload: dict[str, Any]
    group: str = "default"
    context: Any = None  # the caller's own data, carried through to the Outcome, never sent to a worker


@dataclass
class Outcome:
    task: Task
    status: str  # the handler's status, or crash / timeout decided here
    values: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0


class _Slot:
    """One worker: `python -m kt.autotune.worker` talking over two pipes, its output captured to a log."""

    def __init__(self, group: str, env: dict[str, str]):
        self.group, self.env = group, env
        self.process: subprocess.Popen | None = None
        self.conn_in = self.conn_out = None
        self.log = None
        self.task: Task | None = None
        self.started = 0.0  # when the task's clock started: at send, or when the worker said ready
        self.spawned = 0.0
        self.ready = False
        self.info: dict[str, Any] = {}  # what the worker said when ready (its pid)
        self.resent: Task | None = None  # the task sent again after the zygote died with its worker
        self.start()

    def start(self) -> None:
        from kt.autotune.zygote import spawn_worker

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; closed in kill()
        self.log_start = 0  # the log's size when the task was sent (`send`)
        env = worker_env(self.env)
        try:
            self.process = spawn_worker(env, to_child_r, from_child_w, self.log.fileno()) or _popen(
                [
                    sys.executable,
                    "-m",
                    "kt.autotune.worker",
                    str(to_child_r),
                    str(from_child_w),
                    str(os.getpid()),
                ],
                pass_fds=(to_child_r, from_child_w),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            self.log.close()
            self.log = None
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.conn_out = Connection(to_child_w, readable=False)
        self.conn_in = Connection(from_child_r, writable=False)
        self.task = None
        self.ready, self.spawned = False, time.monotonic()

    def restart(self) -> None:
        self.kill()
        self.start()

    def kill(self) -> None:
        """SIGKILL the worker (if alive), reap it, and release its pipes and log."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel (a hung GPU): leave it
                self.process.wait(timeout=10)
        for conn in (self.conn_in, self.conn_out):
            if conn is not None:
                conn.close()
        if self.log is not None:
            self.log.close()
        self.conn_in = self.conn_out = self.log = None

    def begin_stop(self) -> None:
        """A busy worker is killed at once (its task is abandoned); an idle one is asked to exit."""
        if self.process is None or self.conn_out is None:
            return
        if self.task is not None:
            self.process.kill()
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn_out.send(None)

    def send(self, task: Task) -> None:
        if self.process is None or self.process.poll() is not None:
            self.restart()
        self.task, self.started = task, time.monotonic()  # restarted when the worker says ready
        # where this task's output starts in the worker's log (its size: no seek, the worker shares the offset)
        self.log_start = os.fstat(self.log.fileno()).st_size if self.log is not None else 0
        # If it died since the poll, the closed pipe reads as a crash in the wait that follows.
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn_out.send(Task(task.id, task.kind, task.payload, task.group))  # the context stays here

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the worker printed (a crash's own explanation, when there is one)."""
        if self.log is None:
            return ""
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        # this task's own output: a segfault that printed nothing quoted the task before it
        self.log.seek(max(self.log_start, size - 4096))
        text = self.log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])


_STARTER: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None  # (this process's pid, its thread)
_STARTER_LOCK = threading.Lock()


def _popen(*args, **kwargs) -> subprocess.Popen:
    """subprocess.Popen from one thread that lives as long as this process. A fresh worker asks to be killed
    when its parent dies (PR_SET_PDEATHSIG), and Linux takes the parent to be the thread that started it: one
    started by a thread that then ended (the dispatcher's, after a crash, for ops tuned at once) was killed
    with it, and its next task recorded a crash by SIGKILL."""
    global _STARTER
    with _STARTER_LOCK:
        if _STARTER is None or _STARTER[0] != os.getpid():  # (a forked child has not its parent's thread)
            _STARTER = os.getpid(), concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kt-starter")
        starter = _STARTER[1]
    return starter.submit(subprocess.Popen, *args, **kwargs).result()


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """A worker's environment: this process's, `extra`, and Triton's compile cache under kt's cache folder
    (`<kt cache>/triton`, tens of MB per tune, trimmed as each pool starts: `kt.files.trim_caches`) unless
    TRITON_CACHE_DIR says where."""
    from kt.files import cache_dir

    env = {**os.environ, **extra}
    env.setdefault("TRITON_CACHE_DIR", str(cache_dir() / "triton"))
    return env


def _death_message(exitcode: int | None) -> str:
    """Why a worker died, for its candidate's crash row. kt itself kills a worker only past its timeout (a
    timeout row), so a SIGKILL came from elsewhere: on Linux most often the out-of-memory killer (a check of a
    butterfly over 2**24 features held 16 GB when it struck)."""
    if exitcode == -signal.SIGKILL:
        return (
            "worker killed by SIGKILL, not by kt (on Linux most often the out-of-memory killer: the check's "
            "tensors outgrew this machine's memory)"
        )
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    return f"worker exited with code {exitcode}"


def slot_envs(group: str, workers: int, env: dict[str, str] | list[dict[str, str]]) -> list[dict[str, str]]:
    """Each worker's environment in a group given as (workers, env): one env for all of them, or a list with
    one per worker (the GPU workers of a machine, each seeing its own GPU)."""
    if workers < 1:
        raise ValueError(f"group {group!r} needs at least 1 worker, got {workers}")
    if isinstance(env, dict):
        return [dict(env) for _ in range(workers)]
    if len(env) != workers:
        raise ValueError(f"group {group!r}: {workers} workers but {len(env)} environments")
    return [dict(e) for e in env]


class WorkerPool:
    """Groups of worker processes, each group with its own environment (set before the worker starts).

    `groups` maps a group name to (workers, env), env one mapping for every worker of the group or a list of
    one per worker; a task of the group runs on whichever of them is free. Use as a context manager so workers
    are always stopped.
    """

    def __init__(
        self,
        groups: dict[str, tuple[int, dict[str, str] | list[dict[str, str]]]],
        timeout_s: float = 300.0,
        startup_s: float = STARTUP_S,
    ):
        from kt.cpus import WORKER_THREADS_ENV
        from kt.files import trim_caches

        self.timeout_s, self.startup_s = timeout_s, startup_s
        self.slots: list[_Slot] = []
        trim_caches()  # the compiles and kernels of tunes before, before this one's workers add theirs
        # torch's threads in each worker: the CPUs this process may use, shared among all the pool's workers
        threads = {WORKER_THREADS_ENV: str(worker_threads(sum(workers for workers, _ in groups.values())))}
        try:
            for group, (workers, env) in groups.items():
                self.slots += [_Slot(group, {**threads, **e}) for e in slot_envs(group, workers, env)]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warm(self) -> None:
        """Start every worker now (each imports torch and Triton, seconds on a small machine), so that the
        caller's own work (loading a model, ranking the space) overlaps their start-up. A warm worker's ready
        message waits in its pipe until its first task."""
        for slot in self.slots:
            if slot.process is None:
                slot.start()

    def close(self) -> None:
        """Stop every worker: busy ones at once, idle ones after they read their stop (a tenth of a second's
        grace: a worker holds no state kt needs, and Python's exit with torch loaded takes about a second), then
        killed."""
        for slot in self.slots:
            with contextlib.suppress(Exception):
                slot.begin_stop()
        deadline = time.monotonic() + 0.1
        for slot in self.slots:
            if slot.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                slot.kill()

    @property
    def groups(self) -> set[str]:
        return {slot.group for slot in self.slots}

    def run(
        self,
        tasks: Iterable[Task],
        follow_up: Callable[[Outcome], Iterable[Task]] | None = None,
        deadline: float | None = None,
        inbox: Inbox | None = None,
    ) -> Iterator[Outcome]:
        """Run `tasks`, yielding each Outcome as it completes (not in submission order).

        `follow_up(outcome)` may return new tasks (the next stage of a candidate), which join the queue. After
        `deadline` (time.monotonic()) no new task starts: tasks still waiting are dropped without an outcome.
        `inbox` (kt.autotune.dispatch): a source of more tasks, asked whenever a worker of a group is free; the
        run lasts while it is open, and ends at once when it is aborted, killing the workers still busy.
        """
        pending = deque(tasks)
        groups = self.groups
        unknown = {task.group for task in pending} - groups
        if unknown:
            raise ValueError(f"tasks for unknown worker groups {sorted(unknown)}; groups: {sorted(groups)}")
        try:
            yield from self._run(pending, groups, follow_up, deadline, inbox)
        except BaseException:
            # closed early (its caller raised mid-loop) or failed: a task still running is this run's, and its
            # result went to the pool's next run, under that run's task of the same number
            self._abandon()
            raise
        if inbox is not None and inbox.aborted:  # (Ctrl-C, or one op's error, in ops tuned at once) the same:
            # the next run (a caller's runner used again) took the aborted task's result as its own
            self._abandon()

    def _abandon(self) -> None:
        """Kill the workers still busy with this run's tasks (the next send starts each afresh)."""
        for slot in self.slots:
            if slot.task is not None:
                slot.task = None
                slot.kill()

    def _run(self, pending, groups, follow_up, deadline, inbox) -> Iterator[Outcome]:
        while pending or any(slot.task for slot in self.slots) or (inbox is not None and inbox.open):
            if inbox is not None and inbox.aborted:
                return
            if deadline is not None and time.monotonic() > deadline:
                pending.clear()
                if not any(slot.task for slot in self.slots):
                    break
            for slot in self.slots:
                if slot.task is None:
                    task = next((t for t in pending if t.group == slot.group), None)
                    if task is not None:
                        pending.remove(task)
                    elif inbox is not None:
                        task = inbox.take(slot.group)
                    if task is not None:
                        slot.send(task)
            busy = [slot for slot in self.slots if slot.task]
            if not busy:  # only an open inbox keeps an idle pool here
                inbox.wait(INBOX_POLL_S)
                continue
            due = min(self._deadline(slot) for slot in busy)
            if inbox is not None:
                due = min(due, time.monotonic() + INBOX_POLL_S)
            conns = [s.conn_in for s in busy] + ([inbox.waker] if inbox is not None else [])
            ready = wait(conns, timeout=max(0.0, due - time.monotonic()))
            if inbox is not None and inbox.waker in ready:
                inbox.clear()
            for slot in busy:
                outcome = self._collect(slot, ready)
                if outcome is not None:
                    if follow_up is not None:
                        for task in follow_up(outcome):
                            if task.group not in groups:
                                raise ValueError(f"follow-up task for unknown worker group {task.group!r}")
                            pending.append(task)
                    yield outcome

    def _deadline(self, slot: _Slot) -> float:
        """When a busy slot's time is up: its task's timeout once the worker is ready, else its start-up bound."""
        return slot.started + self.timeout_s if slot.ready else slot.spawned + self.startup_s

    def _read_ready(self, slot: _Slot) -> None:
        """Read the worker's first message, its ready, and start its task's clock from now."""
        kind, info = slot.conn_in.recv()
        if kind != "ready":
            raise RuntimeError(f"worker protocol: expected ready, got {kind!r}")
        slot.ready, slot.info, slot.started = True, info, time.monotonic()

    def _collect(self, slot: _Slot, ready: list) -> Outcome | None:
        task = slot.task
        if slot.conn_in not in ready and slot.conn_in is not None and slot.conn_in.poll():
            # done since the wait: the caller took a while over an earlier result (a database insert waiting
            # on a lock), and a result there was taken for no result by its deadline, a timeout
            ready = [*ready, slot.conn_in]
        try:
            if slot.conn_in in ready and not slot.ready:
                self._read_ready(slot)
                if not slot.conn_in.poll():
                    return None
            if slot.conn_in in ready:
                status, values, message, fatal = slot.conn_in.recv()
                slot.task = None
                # after, e.g., an illegal address the worker's CUDA context is unusable: start afresh
                if fatal:
                    slot.restart()
                return Outcome(task, status, values, message, time.monotonic() - slot.started)
        except (EOFError, OSError):  # the pipe closed: the worker died
            return self._crashed(slot, task, time.monotonic() - slot.started)
        if time.monotonic() >= self._deadline(slot):
            elapsed = time.monotonic() - (slot.started if slot.ready else slot.spawned)
            message = (
                f"no result after {self.timeout_s:.0f} s"
                if slot.ready
                else f"the worker did not start within {self.startup_s:.0f} s"
            )
            slot.restart()
            return Outcome(task, "timeout", message=message, wall_s=elapsed)
        return None

    @staticmethod
    def _crashed(slot: _Slot, task: Task, elapsed: float) -> Outcome | None:
        try:
            code = slot.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if getattr(slot.process, "unborn", False):  # its zygote died before forking it: not the task's doing
            slot.restart()  # a new zygote's fork, or a fresh process
            slot.send(task)
            return None
        # killed with its zygote: every task in flight was stored as a crash, and a tune's predicted best left
        # out. Sent again once: a task that itself kills the zygote is a crash the second time
        if getattr(slot.process, "orphaned", False) and slot.resent is not task:
            slot.resent = task
            slot.restart()
            slot.send(task)
            return None
        tail = slot.log_tail()
        message = (getattr(slot.process, "failure", "") or _death_message(code)) + (
            f": {tail}" if tail else ""
        )
        slot.restart()
        return Outcome(task, "crash", message=message[:500], wall_s=elapsed)


def worker_threads(workers: int) -> int:
    """torch's threads for each of `workers` CPU workers: the CPUs this process may use, shared (at least 1)."""
    from kt.cpus import usable_cpus

    return max(1, usable_cpus() // max(1, workers))


def default_workers() -> int:
    """One per CPU this process may use (`kt.cpus.usable_cpus`: a SLURM job's or a container's, where
    os.cpu_count() counts the machine's), at most 8: a worker holds torch and Triton (about 350 MB), and runners
    use two groups."""
    from kt.cpus import usable_cpus

    return min(usable_cpus(), 8)
