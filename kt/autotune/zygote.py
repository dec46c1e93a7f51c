"""Workers that never touch a GPU, forked from a process that has already imported what they need.

A fresh worker spends 3-6 s of CPU importing torch, Triton and kt's checker before it can take a task; a tune on
the CPU starts several, and starts another after every crash or timeout. The zygote is one `python -m
kt.autotune.zygote` per kt process: it imports those modules once, then forks a worker for each request, ready in
a fraction of a second. The worker is then the same code as a fresh one (`kt.autotune.worker.serve` over the same
two pipes), with its environment, working folder and log set before it says ready.

Only the interpreter's and the compiler's workers come from here. The zygote never creates a CUDA context (it
refuses to serve if the CUDA driver was initialized in it by its imports; the library being loaded is fine), and
GPU workers are fresh processes as before: a CUDA context must not be copied.

The protocol: the kt process sends one SOCK_SEQPACKET message per worker with five file descriptors (the
worker's two pipe ends, its log, a status socket, and a temporary file holding the JSON {env, cwd}: an
environment of any size). The zygote forks, writes the child's pid
to the status socket, and when it reaps the child, its return code (as subprocess gives it: -N for signal N); a
byte sent back on it, or its closing, has the zygote kill the child. The kt process holds a `ForkedWorker` with
Popen's poll/wait/kill/pid. The zygote exits when the kt process closes its end of the socket (on exit or death),
killing its workers, which also die with it by PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

FORK_ENV = "KT_WORKER_FORK"  # "0": every worker a fresh process, as before the zygote
_MESSAGE_MAX = 16  # one request's message: a marker (the environment comes in a file)


class ForkedWorker:
    """A worker forked by the zygote, seen from the kt process with subprocess.Popen's interface. Its status
    socket carries the pid and later the return code; a byte sent back, or closing it, asks the zygote to kill
    the worker, which only the zygote can do without racing its reaping."""

    def __init__(self, zygote: Zygote, status: socket.socket):
        self.zygote, self._status = zygote, status
        self._pid: int | None = None
        self.returncode: int | None = None
        self.failure = ""  # why the fork failed, for the pool's crash message
        self.unborn = False  # the zygote died before it forked this worker (the pool starts another)
        self.orphaned = False  # the zygote died after it forked this worker, which died with it
        self._buffer = b""

    def _read(self, timeout: float | None) -> None:
        """Take what the zygote wrote (the pid, then the return code), waiting up to `timeout` for something."""
        if self._status is None or self.returncode is not None:
            return
        readable, _, _ = select.select([self._status], [], [], timeout)
        if not readable:
            return
        try:
            chunk = self._status.recv(256)
        except OSError:
            chunk = b""
        self._buffer += chunk
        lines = self._buffer.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            word, _, value = line.decode().partition(" ")
            if word == "pid":
                self._pid, self.zygote.proven = int(value), True
            elif word == "exit":
                self.returncode = int(value)
            elif word == "error":  # the fork itself failed
                self.failure, self.returncode = f"the worker could not be forked: {value}", 1
        if not chunk and self.returncode is None:  # the zygote went away without a word about this worker
            self.returncode = -signal.SIGKILL
            self.unborn = self._pid is None
            self.orphaned = not self.unborn  # the pool sends its task again, once
            if not self.unborn:  # killed with it: said so, not blamed on the task as the OOM killer's SIGKILL
                code = self.zygote.process.poll()
                self.failure = (
                    "the zygote that forked this worker died"
                    + (f" (exit code {code})" if code is not None else "")
                    + ", and the worker with it: not the task's doing"
                )
        if self.returncode is not None:
            self._status.close()
            self._status = None

    @property
    def pid(self) -> int | None:
        """The worker's pid; waits for the fork (the zygote may still be importing torch on a busy machine)."""
        from kt.autotune.pool import STARTUP_S

        deadline = time.monotonic() + STARTUP_S
        while self._pid is None and self.returncode is None and time.monotonic() < deadline:
            self._read(1.0)
        return self._pid

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._read(0)
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("kt.autotune.zygote worker", timeout)
            self._read(left)
        return self.returncode

    def kill(self) -> None:
        """Have the zygote SIGKILL the worker. One it has not forked yet (it may still be importing torch) is let
        go at once: the zygote kills it as it forks it, finding its status socket closed, so a pool that closes
        early does not wait for the zygote's imports."""
        if self.poll() is not None:
            return
        if self._pid is None:
            self._status.close()
            self._status, self.returncode = None, -signal.SIGKILL
            return
        with contextlib.suppress(OSError):
            self._status.send(b"k")


class Zygote:
    """The kt process's handle on its zygote (one per process, started on first use; `shared`)."""

    _lock = threading.Lock()
    _shared: Zygote | None = None
    _broken = ""  # why forking is off for this process: a zygote that failed before forking a worker

    def __init__(self, env: dict[str, str]):
        self.owner = os.getpid()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the zygote
        self.proven = False  # it has forked a worker: later failures are the workers', not its imports
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kt.autotune.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self.sock.close()
            self.log.close()
            raise
        finally:
            theirs.close()

    @classmethod
    def shared(cls) -> Zygote | None:
        """This process's zygote, started if there is none or it has died; None where forking is off
        (KT_WORKER_FORK=0, or a zygote died before it had forked a single worker: fresh workers then say why)."""
        if os.environ.get(FORK_ENV) == "0" or not hasattr(socket, "send_fds"):
            return None
        with cls._lock:
            if cls._broken:
                return None
            zygote = cls._shared
            usable = zygote is not None and zygote.owner == os.getpid()
            if usable and zygote.process.poll() is not None:
                if not zygote.proven:
                    cls._broken = zygote.failure_message()
                    logging.getLogger("kt").warning(
                        "workers start as fresh processes (slower): %s", cls._broken
                    )
                    return None
                usable = False  # it served, then died: start another, closing its socket and log (only this
                # lock's holder reads them; a worker it forked keeps its own status socket)
                zygote.close()
            if not usable:
                # Triton decides at import whether its own helpers are interpreted: they must not be here, since
                # compile workers come from this process too (interpreted kernels call them through
                # kt.codegen.compat, as in any process that imported Triton first)
                env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
                zygote = cls._shared = Zygote(env)
            return zygote

    def spawn(self, env: dict[str, str], to_child: int, from_child: int, log: int) -> ForkedWorker | None:
        """Ask for a worker serving the pipe ends `to_child` (it reads) and `from_child` (it writes), its output
        to `log`. The descriptors are copied to the zygote; the caller still closes its own. None where the
        request cannot be written (no temporary file, or no working folder to name): start a fresh process.

        The request, {env, cwd} as JSON, goes in a temporary file whose descriptor is sent with the others: as
        the socket message itself, an environment over the socket's buffer (about 200 KB) failed to send
        (EMSGSIZE), which was taken for the zygote's death, and the pool restarted the worker for ever."""
        # the working folder deleted under a tune: os.getcwd() raised out of the pool, "No such file or directory"
        try:
            cwd = os.getcwd()
        except OSError:
            return None
        message = json.dumps({"env": env, "cwd": cwd}).encode()
        # no temporary file here (a full disk) is not the zygote's death, and a retry would fail the same way:
        # a fresh process
        try:
            request = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, once sent
        except OSError:
            return None
        try:
            request.write(message)
            request.flush()
        except OSError:
            request.close()
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(
                    self.sock, [b"r"], [to_child, from_child, log, theirs.fileno(), request.fileno()]
                )
        except OSError:  # the zygote is gone: a worker that died at once (the pool's crash path restarts it)
            pass
        finally:
            theirs.close()
            request.close()
        worker = ForkedWorker(self, ours)
        worker.poll()
        return worker

    def close(self) -> None:
        """Let go of a zygote that has died: its socket (a spawn still holding it gets an OSError, as from a dead
        zygote) and its log."""
        self.sock.close()
        self.log.close()

    def failure_message(self) -> str:
        code = self.process.poll()
        self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, self.log.tell() - 2048))
        tail = " | ".join(line.strip() for line in self.log.read().decode(errors="replace").splitlines()[-3:])
        state = "is still running" if code is None else f"exited with code {code}"
        return f"the worker's zygote {state}" + (f": {tail}" if tail else "")


def spawn_worker(env: dict[str, str], to_child: int, from_child: int, log: int) -> ForkedWorker | None:
    """A forked worker for a slot whose environment asks for no GPU, or None (start a fresh process)."""
    if env.get("KT_WORKER_GPU") == "1":
        return None
    zygote = Zygote.shared()
    if zygote is None:
        return None
    return zygote.spawn(env, to_child, from_child, log)


# ---- the zygote process ---------------------------------------------------------------------------------------


_CUDA_ERROR_NOT_INITIALIZED = 3


def _cuda_driver_initialized() -> bool:
    """Whether this process has initialized the CUDA driver (cuInit): a forked child must not inherit that. The
    library only being loaded is harmless, and on the H200 machines (torch 2.11, Triton 3.6; 2026-12-04) the
    imports load it: the copy already loaded is asked for the current context, which answers "not initialized"
    until cuInit has run. When it cannot be asked, the answer is yes (the zygote then refuses, as is safe)."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split(None, 5)[-1].strip() for line in maps if "libcuda.so" in line})
    if not paths:
        return False
    import ctypes

    try:
        driver = ctypes.CDLL(paths[0], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return driver.cuCtxGetCurrent(ctypes.byref(ctypes.c_void_p())) != _CUDA_ERROR_NOT_INITIALIZED
    except (OSError, AttributeError):
        return True


def serve(sock: socket.socket) -> None:
    """Import the workers' modules, then fork a worker per request until the kt process closes the socket."""
    import importlib

    from kt.autotune.worker import PRELOAD

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the kt process's to handle, and stops it, not us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the kt process's handler, were it forked from it
    # a closed terminal is the kt process's to handle: it stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for name in PRELOAD:
        importlib.import_module(name)
    if sys.platform.startswith("linux") and _cuda_driver_initialized():
        print(
            "kt zygote: the CUDA driver was initialized by the imports; workers must start fresh", flush=True
        )
        raise SystemExit(3)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's exit wakes the selector through wake_w
    children: dict[int, socket.socket] = {}  # pid -> its status socket, until reaped
    events = selectors.DefaultSelector()
    events.register(sock, selectors.EVENT_READ)
    events.register(wake_r, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in events.select():
                if key.fileobj is sock:
                    if not _take_request(sock, children, events, (wake_r, wake_w)):
                        return  # the kt process closed its end: it has exited, or died
                elif key.fileobj == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                else:  # a byte or EOF on a worker's status socket: kill it (reaped below)
                    events.unregister(key.fileobj)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(key.data, signal.SIGKILL)
            _reap(children, events)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _take_request(sock, children, events, wake) -> bool:
    try:
        message, fds, _, _ = socket.recv_fds(sock, _MESSAGE_MAX, 5)
    except ConnectionResetError:
        return False
    if not message:
        return False
    to_child, from_child, log, status_fd, request_fd = fds
    status = socket.socket(fileno=status_fd)
    try:
        request = _read_request(request_fd)
    finally:
        os.close(request_fd)
    pid = _fork(request, (to_child, from_child, log), status, sock, children, events, wake)
    for fd in (to_child, from_child, log):
        os.close(fd)
    if pid is None:
        status.close()
        return True
    children[pid] = status
    try:
        status.sendall(f"pid {pid}\n".encode())
    except OSError:  # nobody waits for this worker any more: it was killed before it was forked
        os.kill(pid, signal.SIGKILL)
        return True
    events.register(status, selectors.EVENT_READ, pid)
    return True


def _read_request(fd: int) -> dict:
    """The {env, cwd} request in the file `fd` (read from its start, whatever its shared offset)."""
    size, chunks, at = os.fstat(fd).st_size, [], 0
    while at < size:
        chunk = os.pread(fd, size - at, at)
        if not chunk:
            break
        chunks.append(chunk)
        at += len(chunk)
    return json.loads(b"".join(chunks))


def _fork(request, fds, status, sock, children, events, wake) -> int | None:
    sys.stdout.flush()
    zygote = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        with contextlib.suppress(OSError):
            status.sendall(f"error {exc}\n".encode())
        return None
    if pid:
        return pid
    code = 1
    try:  # the child: become a worker
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        events.close()
        for fd in (*wake, sock.detach(), status.detach(), *(s.detach() for s in children.values())):
            os.close(fd)
        to_child, from_child, log = fds
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from multiprocessing.connection import Connection

        from kt.autotune import worker

        worker._die_with_parent(zygote)
        worker.serve(Connection(to_child, writable=False), Connection(from_child, readable=False))
        code = 0
    except BaseException:  # noqa: BLE001 - the worker's log says why, and the pool sees the exit
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(children: dict[int, socket.socket], events) -> None:
    """Collect every exited child and tell its kt side the return code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = children.pop(pid, None)
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                events.unregister(sock)
            with contextlib.suppress(OSError):
                sock.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            sock.close()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
