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
from kt.errors import KtError, option


def _ray():
    try:
        import ray
    except ImportError:
        raise KtError(
            f'{option("ray")} needs Ray: pip install ray (in a checkout of kt: pip install -e ".[ray]")'
        ) from None
    except Exception as exc:  # an install that is there but broken
        from kt.errors import one_line

        raise KtError(
            f"{option('ray')}: Ray did not import ({one_line(exc)}); reinstall it: pip install ray"
        ) from None
    return ray


class _Actor:
    """One kt worker inside a Ray actor: warm up on creation, then run tasks with the local worker's handlers."""

    def __init__(self):
        from kt.autotune.worker import _warm_up
        from kt.errors import KtError
        from kt.files import kernel_cache_limit, trim_kernel_cache

        with contextlib.suppress(
            KtError, OSError
        ):  # a node's KT_KERNEL_CACHE_MB that is no size: not trimmed
            trim_kernel_cache(
                kernel_cache_limit()
            )  # its node's kernels, which its tasks write (once an hour)
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
        from kt.files import kernel_cache_limit, trim_kernel_cache

        ray = _ray()
        check_address(address)
        trim_kernel_cache(kernel_cache_limit())  # this machine's: a tune writes its candidates there
        self.owned = not ray.is_initialized()  # kt started it (or connected): kt shuts it down on close
        if self.owned:
            _connect(ray, address)
        self.timeout_s, self.startup_s = timeout_s, startup_s
        remote = ray.remote(max_restarts=-1, max_task_retries=0)(_Actor)
        gpu = set(gpu_groups)
        self.slots: list[dict[str, Any]] = []
        actors = sum(workers for workers, _ in groups.values())
        # on a cluster up to a CPU each, so Ray spreads them over the nodes, and a share of one where the cluster
        # has fewer CPUs than actors (else the rest would wait for CPUs forever: a 2-core head node and two
        # groups of 2); in a local instance none, so that a small machine holds both groups (they take turns on
        # its cores like local workers)
        cpus = 0.0 if address == "local" else _cpu_share(ray, actors)
        for group, (workers, env) in groups.items():
            for worker_env in slot_envs(group, workers, env):
                options: dict[str, Any] = {"num_cpus": cpus}
                # Ray gives each GPU actor its own GPU (and sets CUDA_VISIBLE_DEVICES), on any node: the
                # driver's numbering does not name it (its UUID does)
                if group in gpu:
                    options["num_gpus"] = 1
                    worker_env.pop("CUDA_VISIBLE_DEVICES", None)
                    worker_env.pop("KT_GPU_INDEX", None)
                options["runtime_env"] = {"env_vars": worker_env}
                actor = remote.options(**options).remote()
                # `ready` answers once the actor has started (imported torch and Triton): a task's timeout counts
                # from then, not from when it was queued behind the start-up
                self.slots.append(
                    {"group": group, "actor": actor, "ready": False, "started": actor.ready.remote()}
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
        if self.owned:
            self.owned = False
            with _ctrl_c_held():
                ray.shutdown()

    def run(
        self,
        tasks: Iterable[Task],
        follow_up: Callable[[Outcome], Iterable[Task]] | None = None,
        deadline: float | None = None,
        inbox: Inbox | None = None,
    ) -> Iterator[Outcome]:
        """Run `tasks` on the actors, yielding each Outcome as it completes (see WorkerPool.run)."""
        ray = _ray()
        busy: dict[Any, tuple[dict[str, Any], Task, float]] = {}  # ref -> (slot, task, sent)
        try:
            yield from self._run(ray, deque(tasks), busy, follow_up, deadline, inbox)
        except BaseException:
            # closed early (its caller raised mid-loop) or failed: an actor still running this run's task would
            # run the next run's after it, whose timeout counted the wait (a spurious timeout) and whose timing
            # came after it; Ray restarts the actor, and its next task waits for the new one
            self._abandon(ray, busy)
            raise
        # aborted (Ctrl-C, one op's error, in ops tuned at once): the same, a caller's runner used again queued
        # its next task behind the abandoned one, timed out counting the wait
        if inbox is not None and inbox.aborted:
            self._abandon(ray, busy)

    def _abandon(self, ray, busy) -> None:
        """Restart the actors still running this run's tasks."""
        for slot, _, _ in busy.values():
            with contextlib.suppress(Exception):
                ray.kill(slot["actor"], no_restart=False)
            self._restarted(slot)
        busy.clear()

    def _run(self, ray, pending, busy, follow_up, deadline, inbox) -> Iterator[Outcome]:
        while pending or busy or (inbox is not None and inbox.open):
            if inbox is not None and inbox.aborted:
                return
            if deadline is not None and time.monotonic() > deadline:
                pending.clear()
                if not busy:
                    break
            taken = {id(slot) for slot, _, _ in busy.values()}
            # a slot whose actor Ray is restarting: its next task waits, the other slots go on
            waiting = False
            for slot in self.slots:
                if id(slot) in taken:
                    continue
                if slot.get("restarting") and not self._restart_done(ray, slot):
                    waiting = True
                    continue
                task = next((t for t in pending if t.group == slot["group"]), None)
                if task is not None:
                    pending.remove(task)
                elif inbox is not None:
                    task = inbox.take(slot["group"])
                if task is not None:
                    busy[slot["actor"].run.remote(task.kind, _portable(task.payload))] = (
                        slot,
                        task,
                        time.monotonic(),
                    )
            if not busy and waiting:  # every free slot's actor is restarting: look again shortly
                time.sleep(RESTART_POLL_S)
                continue
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
                if outcome is None:  # its actor died before it started: not the task's doing, so again
                    pending.appendleft(task)
                    continue
                yield from self._with_follow_up(outcome, follow_up, pending)
            for ref, (slot, task, sent) in list(busy.items()):
                if not slot["ready"]:
                    if ray.wait([slot["started"]], timeout=0)[0]:  # it has started: the task runs from now
                        slot["ready"] = True
                        busy[ref] = (slot, task, now)
                        continue
                    if now - sent <= self.startup_s:
                        continue
                    message = (
                        f"the Ray actor did not start within {self.startup_s:.0f} s (a node short of the CPUs "
                        "or GPUs it asks for, or a slow start)"
                    )
                elif now - sent > self.timeout_s:
                    # done meanwhile (ray.wait hands back one a pass, and the caller took a while over an
                    # earlier result): read next pass, no timeout
                    if ray.wait([ref], timeout=0)[0]:
                        continue
                    message = f"no result after {self.timeout_s:.0f} s"
                else:
                    continue
                del busy[ref]
                ray.kill(slot["actor"], no_restart=False)  # Ray restarts it for the next task
                self._restarted(slot)
                yield from self._with_follow_up(Outcome(task, "timeout", message=message, wall_s=now - sent),
                                                follow_up, pending)  # fmt: skip

    @staticmethod
    def _started(ray, slot) -> bool:
        """Whether the slot's actor answered `ready` (it had started) before it died."""
        if slot["ready"]:
            return True
        done, _ = ray.wait([slot["started"]], timeout=0)
        if not done:
            return False
        try:
            ray.get(done[0])
        except ray.exceptions.RayError:  # it died before `ready` answered
            return False
        return True

    @staticmethod
    def _restarted(slot) -> None:
        """The slot's actor is being restarted: its next task waits until it answers again (`_restart_done`),
        and is timed from then. The process that answered last is noted: a `ready` sent just after `ray.kill`
        can still reach it, as it goes."""
        slot["gone_pid"] = RayPool._pid(slot)
        slot["ready"], slot["restarting"] = False, True
        slot["restart_began"] = time.monotonic()
        slot["started"] = slot["actor"].ready.remote()

    @staticmethod
    def _pid(slot) -> int | None:
        """The process of the slot's actor that answered its last `ready`, where that answer is in."""
        ray = _ray()
        try:
            if ray.wait([slot["started"]], timeout=0)[0]:
                return ray.get(slot["started"], timeout=0).get("pid")
        except ray.exceptions.RayError:  # it died before answering
            pass
        return None

    def _restart_done(self, ray, slot) -> bool:
        """Whether the slot's restarting actor answers again, without waiting: a task sent to an actor that is
        still restarting fails without running, and a wait here (up to the start-up bound, 5 s at a time) held
        every other actor's results and timeouts with it. A `ready` that failed (sent while the actor was
        down) is sent again; past the start-up bound the task is sent anyway, timed as a first task is."""
        done, _ = ray.wait([slot["started"]], timeout=0)
        late = time.monotonic() - slot.get("restart_began", 0.0) > self.startup_s
        if done:
            try:  # back: a process other than the one killed answered
                pid = ray.get(done[0]).get("pid")
                back = pid is None or pid != slot.get("gone_pid")
            except ray.exceptions.RayError:  # sent while it was down
                back = False
            if not back and not late:
                slot["started"] = slot["actor"].ready.remote()  # ask again
                return False
            slot["ready"] = back
        elif not late:
            return False
        slot["restarting"] = False
        return True

    @staticmethod
    def _with_follow_up(outcome, follow_up, pending) -> Iterator[Outcome]:
        if follow_up is not None:
            pending.extend(follow_up(outcome))
        yield outcome

    @staticmethod
    def _outcome(ray, ref, slot, task: Task, elapsed: float) -> Outcome | None:
        """The task's Outcome, or None where its actor died before it started (killed, or short of memory,
        while it imported torch and Triton): the task is sent again, up to STARTS_BEFORE_CRASH starts."""
        try:
            status, values, message, fatal = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the candidate took its actor down: Ray restarts it
            started = RayPool._started(ray, slot)
            RayPool._restarted(slot)
            if not started:
                slot["unborn"] = slot.get("unborn", 0) + 1
                if slot["unborn"] < STARTS_BEFORE_CRASH:
                    return None
            return Outcome(task, "crash", message=f"the Ray actor died: {str(exc).splitlines()[0][:300]}",
                           wall_s=elapsed)  # fmt: skip
        except ray.exceptions.RayError as exc:
            return Outcome(task, "crash", message=str(exc).splitlines()[0][:300], wall_s=elapsed)
        slot["ready"], slot["unborn"] = True, 0
        if fatal:  # the actor's CUDA context is unusable: a fresh process for the next task
            ray.kill(slot["actor"], no_restart=False)
            RayPool._restarted(slot)
        return Outcome(task, status, values, message, elapsed)


@contextlib.contextmanager
def _ctrl_c_held():
    """Ctrl-C caught in the main thread and raised when the block ends: Ctrl-C while Ray shut down (in
    its atexit hook, as kt ended) printed a traceback, exited 0 and left Ray's agents running for minutes.
    SIGTERM still stops a shutdown that hangs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    before = signal.signal(signal.SIGINT, lambda number, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if caught:
        if callable(before):
            before(signal.SIGINT, caught[0])
        elif before != signal.SIG_IGN:
            raise KeyboardInterrupt


ADDRESS_HELP = "local, auto, HOST:PORT (a cluster's GCS address) or ray://HOST:PORT (Ray Client)"
CONNECT_S = 5.0  # how long a HOST:PORT has to accept a connection before --ray says nothing answers there
STARTS_BEFORE_CRASH = 3  # an actor that dies this many times before it starts costs its task a crash
RESTART_POLL_S = 0.2  # how often the dispatch looks again while every free actor is restarting
# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, a Ray Client server) answers
# with a frame of its own, where an HTTP/1 server (Ray's dashboard on 8265) answers with text or hangs up
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str) -> None:
    """`--ray`'s value, checked as the command line is read: local, auto, HOST:PORT or ray://HOST:PORT with a
    port from 1 to 65535 (Ray's own errors for others are tracebacks)."""
    if address in ("local", "auto"):
        return
    host, port = _host_port(address)
    if not host or "/" in host or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise KtError(f"{option('ray')}: {address!r} is not a Ray address; allowed: {ADDRESS_HELP}")


def _host_port(address: str) -> tuple[str, str]:
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), port


@contextlib.contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """Ray's notice, as it starts kt's own local instance where a token exists (~/.ray/auth_token), that token
    authentication is on and how to opt out: printed through logging's last resort into kt's output, --quiet
    included. Its warning that authentication is off (no token) is left to say."""
    import logging

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def notice(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")

    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _connect(ray, address: str) -> None:
    """ray.init for `address`, every failure one KtError naming --ray. A HOST:PORT is probed first (`probe`):
    ray.init retries an address where nothing listens, or where something else does, for minutes or forever."""
    import signal
    import threading

    if address not in ("local", "auto"):
        probe(address)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    # Ctrl-C held while kt starts a Ray of its own: one inside ray.init left no pool to close, and Ray's agents
    # ran on for a minute. Joining a cluster starts none, and ray.init may retry one that does not answer
    # (`auto`, not probed) for good: Ctrl-C stops that as it comes
    held = _ctrl_c_held() if address == "local" else contextlib.nullcontext()
    try:
        with held:
            try:
                if address == "local":  # a new instance of this process's own, even where a cluster runs here
                    with _quiet_token_notice():
                        ray.init(
                            address="local",
                            include_dashboard=False,
                            log_to_driver=False,
                            configure_logging=False,
                            _system_config=_local_config(),
                        )
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            finally:
                _restore_sigterm(signal, sigterm)
    except KeyboardInterrupt:  # a Ctrl-C held above, or kt's SIGTERM: the Ray started is shut down first
        if ray.is_initialized():
            with _ctrl_c_held():
                ray.shutdown()
        raise
    except SystemExit as exc:
        # ray.init sets its own SIGTERM handler (sys.exit(15)) first thing: a SIGTERM before it returned exited
        # 15 without a word and left Ray's agents running. The Ray started is shut down, and kt's handler acts
        if not (callable(sigterm) and exc.code == signal.SIGTERM):
            raise
        if ray.is_initialized():
            with _ctrl_c_held():
                ray.shutdown()
        sigterm(signal.SIGTERM, None)
        raise
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: Ray's own words, on one line
        from kt.errors import one_line

        raise KtError(
            f"{option('ray', address)}: Ray could not connect ({one_line(exc)}){_token_hint(address)}"
        ) from None


def _local_config() -> dict:
    """The Ray that kt starts runs its actors at kt's own priority, as kt's local workers run. Ray's default
    raises a worker's niceness by 15 (`worker_niceness`, to keep its raylet responsive), and on a machine busy
    with anything else the compiling and measuring actors got a few percent of a core: a tune that took 12 s
    took 120 s beside three busy processes (one 2-core machine, 2026-12-06), and a measuring actor starved
    between its launches can stretch what a timing holds. RAY_worker_niceness, where the user sets it, is Ray's
    to read (a `_system_config` entry would override it)."""
    import os

    return {} if "RAY_worker_niceness" in os.environ else {"worker_niceness": 0}


def _restore_sigterm(signal, before) -> None:
    """ray.init puts in Ray's own SIGTERM handler (sys.exit: a stack dump from Ray's C++, exit 15 or 134, the
    agents left running) over kt's, which says `kt: terminated`, releases its claims and shuts down the Ray it
    started: kt's (any handler of the caller's own) is put back. Only over Ray's: a default the caller had is
    left to Ray (which exits, its agents stopped), and a handler kt's SIGTERM left as it ran stays."""
    current = signal.getsignal(signal.SIGTERM)
    if callable(before) and callable(current) and getattr(current, "__module__", "").startswith("ray"):
        signal.signal(signal.SIGTERM, before)


def _token_hint(address: str) -> str:
    """Where a token exists (~/.ray/auth_token), `ray start --head` turns token authentication on, and a
    HOST:PORT connection without RAY_AUTH_MODE=token is refused ("InvalidAuthToken", in Ray's log lines only)."""
    import os
    from pathlib import Path

    if address in ("local", "auto") or os.environ.get("RAY_AUTH_MODE"):  # set to token, or opted out
        return ""
    if not (Path.home() / ".ray" / "auth_token").is_file():
        return ""
    return "; a cluster started where ~/.ray/auth_token exists asks for that token: set RAY_AUTH_MODE=token"


def probe(address: str) -> None:
    """A KtError unless HOST:PORT (or ray://HOST:PORT) accepts a TCP connection within CONNECT_S and speaks
    gRPC, as Ray's GCS and Ray Client servers do (in the clear; with RAY_USE_TLS only the connection is
    checked): the dashboard's port (8265, HTTP) kept ray.init waiting without end, printing Ray's warnings, and
    a signal took half a minute to stop it."""
    import os
    import socket

    host, port = _host_port(address)
    try:
        connection = socket.create_connection((host, int(port)), timeout=CONNECT_S)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise KtError(
            f"{option('ray')}: nothing answers at {address!r} ({why}); give a running cluster's address"
        ) from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # a TLS handshake first: Ray's to do
            return
        try:
            connection.sendall(_HTTP2_HELLO)
            answer = connection.recv(9)
        except OSError:  # silence, or a server that hangs up
            answer = b""
    if len(answer) < 9 or answer[3] != 4:  # no SETTINGS frame back
        raise KtError(
            f"{option('ray')}: {address!r} answers, but not as a Ray cluster (no gRPC there); give the cluster's GCS "
            "address (HOST:6379 by default), not its dashboard's"
        )


def _cpu_share(ray, actors: int) -> float:
    """The CPUs each of `actors` actors asks for on a cluster: one, or an equal share of the cluster's CPUs
    where it has fewer (Ray takes fractions; its unit is 1/10000 of a CPU)."""
    total = float(ray.cluster_resources().get("CPU", 0.0))
    if actors <= 0 or total >= actors:
        return 1.0
    return max(1e-4, int(total / actors * 1e4) / 1e4)


def _portable(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with the generated module's text instead of a path on this machine."""
    path = payload.get("source_path")
    if path is None or payload.get("source") is not None:  # a candidate's payload carries its text
        return payload
    return {**payload, "source": Path(path).read_text()}
