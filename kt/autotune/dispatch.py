"""One worker pool serving several tunes at once, each in its own thread.

A pool's `run` is a loop that owns its workers: one caller at a time. `Dispatcher` runs that loop in a thread of
its own, fed through the pool's inbox, and gives each tune's thread the pool's interface (`run(tasks,
follow_up, deadline)`, yielding that tune's outcomes only). So the ops of `kt tune a.yaml b.yaml c.yaml` share
the compile workers and the GPU workers: while one op refits its model or waits for a slow compile, another
op's candidates keep the GPU busy.

Fairness: a free worker takes the next task of its group from the tunes in turn (round-robin), and a
candidate's next stage goes before a tune's new candidates, so one op with a large round cannot starve the
others. A tune's deadline is its own: past it, its waiting tasks are dropped (its running ones finish), as in
a pool's own run. A tune that stops reading (an error in its thread, Ctrl-C) takes its waiting tasks with it;
the results of its running ones are dropped when they come.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import Pipe
from typing import Any

from kt.autotune.pool import Outcome, Task

POLL_S = 0.2  # how often a waiting tune looks at its deadline and at the dispatcher's health


class DispatcherStopped(RuntimeError):
    """The dispatcher stopped (closed, aborted, or its pool failed) while a tune waited for outcomes."""


@dataclass(eq=False)
class _Job:
    deadline: float | None
    waiting: deque = field(default_factory=deque)  # tasks not yet taken by a worker
    outcomes: queue.Queue = field(default_factory=queue.Queue)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


class Dispatcher:
    """A pool's interface for several threads at once (see the module's docstring). A context manager: on
    entry its thread starts serving the pool; on exit it stops (waiting for nothing still queued)."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.groups = set(pool.groups)
        self.open, self.aborted = True, False
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._turn = 0  # where the round-robin over jobs starts next (the index after the last job served)
        self._running: dict[int, tuple[_Job, Task]] = {}  # pool task id -> (job, the job's own task)
        self._ids = itertools.count()
        self._reader, self._writer = Pipe(duplex=False)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="kt-dispatcher", daemon=True)

    def __enter__(self) -> Dispatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pool's side (its run loop, in the dispatcher's thread) --

    @property
    def waker(self):
        return self._reader

    def take(self, group: str) -> Task | None:
        with self._lock:
            # _turn may point one past the last job: a job that registers since goes next, else the first does
            start = self._turn % len(self._jobs) if self._jobs else 0
            jobs = self._jobs[start:] + self._jobs[:start]
            for offset, job in enumerate(jobs):
                if job.expired():
                    if job.waiting:
                        job.outcomes.put(("dropped", len(job.waiting)))
                        job.waiting.clear()
                    continue
                task = next((t for t in job.waiting if t.group == group), None)
                if task is None:
                    continue
                job.waiting.remove(task)
                self._turn = (start + offset) % len(self._jobs) + 1
                number = next(self._ids)
                self._running[number] = (job, task)
                return Task(number, task.kind, task.payload, task.group)
        return None

    def wait(self, timeout: float) -> None:
        if self._reader.poll(timeout):
            self.clear()

    def clear(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            while self._reader.poll():
                self._reader.recv_bytes()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.send_bytes(b"")

    def _serve(self) -> None:
        try:
            for outcome in self.pool.run([], inbox=self):
                with self._lock:
                    job, task = self._running.pop(outcome.task.id)
                    live = job in self._jobs
                if live:
                    job.outcomes.put(
                        Outcome(task, outcome.status, outcome.values, outcome.message, outcome.wall_s)
                    )
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting tune, which raises it
            self._error = exc
        finally:
            self.open = False
            with self._lock:
                jobs = list(self._jobs)
            for job in jobs:
                job.outcomes.put(("stopped", None))

    # -- a tune's side (its own thread) --

    def run(
        self,
        tasks: Iterable[Task],
        follow_up: Callable[[Outcome], Iterable[Task]] | None = None,
        deadline: float | None = None,
    ) -> Iterator[Outcome]:
        """The pool's `run` for one caller among several: yields the outcomes of `tasks` (and of their
        follow-ups) as they complete, while other threads' tasks share the workers."""
        job = _Job(deadline)
        tasks = list(tasks)
        outstanding = len(tasks)  # counted here: the dispatcher may take some as soon as they are submitted
        self._submit(job, tasks, register=True)
        try:
            while outstanding:
                try:
                    item = job.outcomes.get(timeout=POLL_S)
                except queue.Empty:
                    self.check_alive()
                    if job.expired():
                        with self._lock:
                            outstanding -= len(job.waiting)
                            job.waiting.clear()
                    continue
                if isinstance(item, tuple):
                    kind, count = item
                    if kind == "stopped":
                        self.check_alive()
                        raise DispatcherStopped("the worker pool stopped while this tune waited for it")
                    outstanding -= count
                    continue
                outstanding -= 1
                if follow_up is not None:
                    more = list(follow_up(item))
                    self._submit(job, more, front=True)
                    outstanding += len(more)
                yield item
        finally:
            with self._lock:
                if job in self._jobs:
                    # the job due next keeps its turn when one before it leaves
                    if self._jobs.index(job) < self._turn:
                        self._turn -= 1
                    self._jobs.remove(job)
                job.waiting.clear()

    def _submit(self, job: _Job, tasks: list[Task], register: bool = False, front: bool = False) -> None:
        unknown = {task.group for task in tasks} - self.groups
        if unknown:
            raise ValueError(
                f"tasks for unknown worker groups {sorted(unknown)}; groups: {sorted(self.groups)}"
            )
        self.check_alive()
        with self._lock:
            if register:
                self._jobs.append(job)
            if front:
                job.waiting.extendleft(reversed(tasks))
            else:
                job.waiting.extend(tasks)
        self._wake()

    def check_alive(self) -> None:
        """DispatcherStopped (its cause: the pool's own error, if it failed) once the dispatcher is stopped: a
        tune's thread that waits on something else (another tune's claims) asks, so Ctrl-C stops it too."""
        if self._error is not None:
            raise DispatcherStopped(f"the worker pool failed: {self._error}") from self._error
        if self.aborted or not self._thread.is_alive():
            raise DispatcherStopped("the worker pool was stopped")

    # -- the owner's side --

    def close(self) -> None:
        """Stop serving once the pool is idle (nothing new starts after this; running tasks finish)."""
        self.open = False
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        self._close_pipe()

    def abort(self) -> None:
        """Stop now: waiting tunes raise DispatcherStopped, busy workers are left to the pool's close."""
        self.aborted = True
        self.open = False
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._close_pipe()

    def _close_pipe(self) -> None:
        for end in (self._reader, self._writer):
            with contextlib.suppress(OSError):
                end.close()
