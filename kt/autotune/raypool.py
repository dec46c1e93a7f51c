"""Worker pools on a Ray cluster (`kt tune --ray local|auto|ADDRESS`, issue 18): the same tasks and outcomes as
kt.autotune.pool.WorkerPool, run by Ray actors instead of local processes. Ray schedules, places and restarts;
kt does not grow its own cluster scheduler.

- Each worker group (interpret, compile, measure) is a set of actors with the group's environment
  (`runtime_env` env_vars, set before the actor's Python starts) and, for a GPU group, one GPU each
  (`num_gpus=1`). An actor runs kt.autotune.worker's handlers in its own process, as a local worker does.
- The generated source travels with the task (nodes need kt installed, nothing else): the actor writes it into
  its own kernel cache before it runs the task.
- A candidate that kills its actor (a segfault, `os._exit`) costs one `crash` outcome; Ray restarts the actor
  (`max_restarts=-1`) for the next task. A task past its timeout is a `timeout`: its actor is killed and
  restarted. A handler's `fatal` (an unusable CUDA context) restarts its actor too.
- The driver (kt's process) stays the single writer of the tuning database: outcomes stream back to it as they
  finish, so killing the driver loses nothing committed and rerunning resumes.

Ray is an optional dependency (`pip install -e ".[ray]"`); `ray_pool` says how to get it when it is missing.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kt.autotune.pool import INBOX_POLL_S, STARTUP_S, Inbox, Outcome, Task, slot_envs
from kt.errors import KtError


def _ray():
    try:
        import ray
    except ImportError:
        raise KtError('--ray needs Ray: pip install -e ".[ray]" (or pip install ray)') from None
    return ray


class _Actor:
    """One kt worker inside a Ray actor: warm up on creation, then run tasks with the local worker's handlers."""

    def __init__(self):
        from kt.autotune.worker import _warm_up

        self.info = _warm_up()

    def ready(self) -> dict[str, Any]:
        return self.info

    def run(self, kind: str, payload: dict[str, Any]):
        from kt.autotune.worker import run_task
        from kt.codegen.emit import write_source

        source = payload.pop("source", None)
        if source is not None:  # the generated module, written into this node's kernel cache
            payload = {**payload, "source_path": str(write_source(source))}
        return run_task(kind, payload)


class RayPool:
    """WorkerPool's interface (`run`, `warm`, `close`, a context manager) over Ray actors.

    `groups` maps a group name to (workers, env) as for WorkerPool; `gpu_groups` names the groups whose actors
    each hold a GPU. `address`: "local" starts a Ray instance in this process (`ray.init()`), anything else is
    given to `ray.init(address=...)` ("auto": the cluster this machine is part of)."""

    def __init__(
        self,
        groups: dict[str, tuple[int, dict[str, str]]],
        timeout_s: float = 300.0,
        address: str = "local",
        gpu_groups: Iterable[str] = (),
        startup_s: float = STARTUP_S,
    ):
        ray = _ray()
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.timeout_s, self.startup_s = timeout_s, startup_s
        remote = ray.remote(max_restarts=-1, max_task_retries=0)(_Actor)
        gpu = set(gpu_groups)
        self.slots: list[dict[str, Any]] = []
        for group, (workers, env) in groups.items():
            for worker_env in slot_envs(group, workers, env):
                # on a cluster a CPU each, so Ray spreads them over the nodes; in a local instance none, so that
                # a small machine holds both groups (they take turns on its cores like local workers)
                options = {"num_cpus": 0 if address == "local" else 1}
                # Ray gives each GPU actor its own GPU (and sets CUDA_VISIBLE_DEVICES), on any node: the
                # driver's numbering does not name it (its UUID does)
                if group in gpu:
                    options["num_gpus"] = 1
                    worker_env.pop("CUDA_VISIBLE_DEVICES", None)
                    worker_env.pop("KT_GPU_INDEX", None)
                options["runtime_env"] = {"env_vars": worker_env}
                self.slots.append(
                    {"group": group, "actor": remote.options(**options).remote(), "ready": False}
                )

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def groups(self) -> set[str]:
        return {slot["group"] for slot in self.slots}

    def warm(self) -> None:
        """Actors start (and import torch and Triton) as soon as they are made: nothing to do here."""

    def close(self) -> None:
        ray = _ray()
        for slot in self.slots:
            with contextlib.suppress(Exception):  # an actor already gone
                ray.kill(slot["actor"], no_restart=True)
        self.slots = []

    def run(
        self,
        tasks: Iterable[Task],
        follow_up: Callable[[Outcome], Iterable[Task]] | None = None,
        deadline: float | None = None,
        inbox: Inbox | None = None,
    ) -> Iterator[Outcome]:
        """Run `tasks` on the actors, yielding each Outcome as it completes (see WorkerPool.run)."""
        ray = _ray()
        pending = deque(tasks)
        busy: dict[Any, tuple[dict[str, Any], Task, float]] = {}  # ref -> (slot, task, sent)
        while pending or busy or (inbox is not None and inbox.open):
            if inbox is not None and inbox.aborted:
                return
            if deadline is not None and time.monotonic() > deadline:
                pending.clear()
                if not busy:
                    break
            taken = {id(slot) for slot, _, _ in busy.values()}
            for slot in self.slots:
                if id(slot) in taken:
                    continue
                task = next((t for t in pending if t.group == slot["group"]), None)
                if task is not None:
                    pending.remove(task)
                elif inbox is not None:
                    task = inbox.take(slot["group"])
                if task is not None:
                    if slot.get("restarting"):
                        self._await_restart(ray, slot)
                    busy[slot["actor"].run.remote(task.kind, _portable(task.payload))] = (
                        slot,
                        task,
                        time.monotonic(),
                    )
            if not busy:
                if pending:
                    groups = sorted({t.group for t in pending})
                    raise ValueError(f"tasks for worker groups this pool does not have: {groups}")
                if inbox is None:
                    break
                inbox.wait(INBOX_POLL_S)
                continue
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=1.0 if inbox is None else 0.05)
            if inbox is not None:
                inbox.clear()
            now = time.monotonic()
            for ref in ready:
                slot, task, sent = busy.pop(ref)
                outcome = self._outcome(ray, ref, slot, task, now - sent)
                yield from self._with_follow_up(outcome, follow_up, pending)
            for ref, (slot, task, sent) in list(busy.items()):
                limit = self.timeout_s if slot["ready"] else self.startup_s + self.timeout_s
                if now - sent > limit:
                    del busy[ref]
                    ray.kill(slot["actor"], no_restart=False)  # Ray restarts it for the next task
                    slot["ready"], slot["restarting"] = False, True
                    message = f"no result after {self.timeout_s:.0f} s"
                    yield from self._with_follow_up(Outcome(task, "timeout", message=message, wall_s=now - sent),
                                                    follow_up, pending)  # fmt: skip

    def _await_restart(self, ray, slot) -> None:
        """Wait (up to the start-up bound) until Ray has restarted the slot's actor: a task sent to an actor
        that is still restarting fails without running."""
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            try:
                ray.get(slot["actor"].ready.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.2)
                continue
            except ray.exceptions.RayError:
                time.sleep(0.2)
                continue
            break
        slot["restarting"] = False

    @staticmethod
    def _with_follow_up(outcome, follow_up, pending) -> Iterator[Outcome]:
        if follow_up is not None:
            pending.extend(follow_up(outcome))
        yield outcome

    @staticmethod
    def _outcome(ray, ref, slot, task: Task, elapsed: float) -> Outcome:
        try:
            status, values, message, fatal = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the candidate took its actor down: Ray restarts it
            slot["ready"], slot["restarting"] = False, True
            return Outcome(task, "crash", message=f"the Ray actor died: {str(exc).splitlines()[0][:300]}",
                           wall_s=elapsed)  # fmt: skip
        except ray.exceptions.RayError as exc:
            return Outcome(task, "crash", message=str(exc).splitlines()[0][:300], wall_s=elapsed)
        slot["ready"] = True
        if fatal:  # the actor's CUDA context is unusable: a fresh process for the next task
            ray.kill(slot["actor"], no_restart=False)
            slot["ready"], slot["restarting"] = False, True
        return Outcome(task, status, values, message, elapsed)


def _portable(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with the generated module's text instead of a path on this machine."""
    path = payload.get("source_path")
    if path is None:
        return payload
    return {**payload, "source": Path(path).read_text()}
