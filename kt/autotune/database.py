"""The tuning database: SQLite in WAL mode, one row per measurement, each row committed on its own.

A row is written whole or not at all (one transaction each), so a tune killed at any moment leaves every
finished measurement and no partial one, and a second tune of the same problem on the same device skips what
is already there. A row is identified by (runner, device, target, family, template version, problem, config):
a changed template never reuses an old measurement.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from kt.errors import DatabaseError
from kt.files import (
    atomic_write,
    existing_file,
    existing_parent,
    is_sqlite,
    link_target,
    network_filesystem,
    unmakeable,
)
from kt.keys import DIGEST, compact_key, joined_layouts, split_layouts

SCHEMA_VERSION = 6  # 2: the timer, regime, graph, cooldown, energy status and implementation columns;
# 3: the target build's registers, local memory (spills), MMA kind and TMA; 4: which GPU of the machine;
# 5: the energy loop's own average power; 6: a problem key, problem and checked problems name a long block-sparse
# layout by its SHA-256 (kt.keys.layout_digest) instead of holding it, and table layouts holds it once
# config_key of candidate zero: PyTorch's own path for the problem (its config is {}), timed like any candidate
BASELINE_KEY = "pytorch"
STATUSES = ("ok", "compile_error", "wrong_result", "out_of_resources", "timeout", "crash")

# (column, SQL type); the identity columns come first.
KEY_COLUMNS = (
    "runner",
    "device",
    "target",
    "family",
    "family_version",
    "problem_key",
    "config_key",
    "triton_version",
)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("runner", "TEXT NOT NULL"),  # cuda | interpret | dryrun
    ("device", "TEXT NOT NULL"),  # the GPU's name, or the interpreter
    # the device profile the candidates were legal for: h100, or name-hash for a calibrated one
    ("target", "TEXT NOT NULL"),
    ("family", "TEXT NOT NULL"),
    ("family_version", "TEXT NOT NULL"),
    ("problem_key", "TEXT NOT NULL"),
    ("config_key", "TEXT NOT NULL"),
    ("created_at", "TEXT NOT NULL"),
    ("op", "TEXT"),
    ("spec_name", "TEXT"),
    ("dtype", "TEXT"),
    ("problem", "TEXT NOT NULL"),  # JSON
    ("config", "TEXT NOT NULL"),  # JSON
    ("status", f"TEXT NOT NULL CHECK (status IN ({', '.join(repr(s) for s in STATUSES)}))"),
    ("message", "TEXT"),
    ("rel_err", "REAL"),
    ("timer", "TEXT"),  # cuda_events (a GPU measurement) or wall_clock_interpreter (a dry run: no runtime)
    ("timing_regime", "TEXT"),  # l2_flushed | l2_warm, for runtime and energy alike
    ("runtime_ms", "REAL"),  # median over `runs` timed runs (GPU only)
    ("runtime_min_ms", "REAL"),
    ("runtime_p20_ms", "REAL"),
    ("runtime_p80_ms", "REAL"),
    ("runs", "INTEGER"),
    # the call's energy over the longer of its runtime and its time in the loop (the flush's energy taken out)
    ("power_w", "REAL"),
    ("energy_mj", "REAL"),  # per call
    # the energy loop's own average power (l2_flushed: flushes included), what the card's power limit governs
    ("loop_power_w", "REAL"),
    ("energy_loop_s", "REAL"),
    ("energy_status", "TEXT"),  # ok, or why there is no energy figure (no NVML, a vGPU's counter, ...)
    ("cuda_graph", "INTEGER"),  # 1: the energy loop replayed a CUDA graph; 0: a Python loop (capture failed)
    ("flush_energy_mj", "REAL"),  # l2_flushed: one flush's energy, taken off each call's
    ("cooldown_ms", "REAL"),  # the idle gap before the candidate was timed
    ("sm_clock_mhz", "REAL"),
    ("temperature_c", "REAL"),
    ("smem_bytes", "INTEGER"),  # shared memory of the target build (its largest launch)
    ("registers", "INTEGER"),  # registers per thread of the target build (its largest launch)
    ("local_bytes", "INTEGER"),  # local memory per thread: register spills (0: none)
    (
        "mma_kind",
        "TEXT",
    ),  # the MMA instructions of its launches: wgmma, mma.sync, none, or several joined by +
    ("tma", "INTEGER"),  # 1: a launch moves tiles with TMA (cp.async.bulk.tensor)
    ("checked_problems", "TEXT"),  # JSON list of the reduced problems the interpreter checked
    ("predicted_ms", "REAL"),  # the ranking model's prediction when the candidate was chosen
    ("wall_s", "REAL"),  # compile + check + measure
    ("gpu_name", "TEXT"),
    ("gpu_index", "INTEGER"),  # the GPU's index in the tune's numbering (torch's cuda:N), one worker per GPU
    ("gpu_uuid", "TEXT"),  # the GPU's UUID (which card of the machine, whatever the numbering)
    ("impl", "TEXT"),  # candidate zero: which of PyTorch's routes ran (e.g. a dense fallback of BSR F.linear)
    ("kt_version", "TEXT"),
    ("torch_version", "TEXT"),
    ("triton_version", "TEXT NOT NULL"),  # part of the identity: another Triton compiles other code
    ("cuda_version", "TEXT"),
    ("python_version", "TEXT"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
LAYOUT_COLUMNS = ("problem", "checked_problems")  # JSON columns whose problems may hold block-sparse layouts


CLAIM_STALE_S = 6 * 3600  # a claim from another host (a shared file system) is dropped after this long


# Claims held by this process, per database file and claim key: the Database (its `_token`) of the tune that
# holds each. A claim's row names only the process, so two ops of one `kt tune` on the same problem (threads,
# each with its own Database) both found their claims "mine" and checked every config twice.
_HELD: dict[tuple[str, str], int] = {}
_HELD_LOCK = threading.Lock()
_TOKENS = itertools.count(1)


def claim_key(key: dict[str, Any]) -> str:
    """The claims table's name for a measurement key."""
    return json.dumps([key[k] for k in KEY_COLUMNS])


_PROBLEM_KEY_AT = KEY_COLUMNS.index("problem_key")
# rows whose key may hold a whole layout (schema 5 and before): `"layout":"` is no GEMM's ("a_layout":"row")
_LONG_LAYOUT = """problem_key LIKE '%"layout":"%'"""


def _compact_claim(name: str) -> str:
    """A claim's name (`claim_key`) with its problem key as kt writes it now (`compact_key`)."""
    try:
        values = json.loads(name)
        values[_PROBLEM_KEY_AT] = compact_key(values[_PROBLEM_KEY_AT])
    except (ValueError, TypeError, IndexError):  # not a claim kt wrote: left as it is
        return name
    return json.dumps(values)


def _host() -> str:
    import socket

    return socket.gethostname()


def _alive(pid: int, host: str, claimed_at: str, now: datetime) -> bool:
    """Whether a claim's holder may still be measuring: its process runs (on this host), or (on another) the
    claim is younger than CLAIM_STALE_S."""
    if host != _host():
        try:
            age = (now - datetime.fromisoformat(claimed_at)).total_seconds()
        except ValueError:
            return False
        return age < CLAIM_STALE_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    stat = _stat(pid)
    if stat and stat[0] in ("Z", "X"):
        # killed, not yet reaped by its parent (a driver's Popen never waited on, a container's PID 1 that reaps
        # nothing): signal 0 reaches it, and a later tune waited for its claims as long as it stayed so
        return False
    try:  # a pid the system gave again to a process that started after the claim: not its holder
        return not _started_after(stat, datetime.fromisoformat(claimed_at))
    except ValueError:
        return True


def _stat(pid: int) -> list[str] | None:
    """Process `pid`'s /proc stat fields from its state on (field 3; Linux's /proc), or None where they cannot
    be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started_after(stat: list[str] | None, when: datetime) -> bool:
    """Whether the process of `stat` (`_stat`) started after `when` (the boot time and the process's start in
    clock ticks since; False where that cannot be read). A killed tune's claims name its pid, which a container
    in particular soon gives to another process: a later tune waited for that one forever."""
    try:
        ticks = int(stat[19])  # field 22, starttime
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, TypeError, StopIteration):
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return started > when.timestamp() + 2  # the claim's time has whole seconds, btime too


def default_path() -> Path:
    """$KT_DB, else tuning.db in kt's cache directory."""
    if os.environ.get("KT_DB"):
        return Path(os.environ["KT_DB"])
    from kt.codegen.emit import cache_dir

    return cache_dir() / "tuning.db"


LOCKED_WAIT_S = 60.0  # how long opening a database waits for another writer (SQLite's busy timeout too)


LOCK_NOTE_S = 2.0  # how long a write waits for another writer's lock before saying that it waits


def _begin_immediate(conn: sqlite3.Connection, path: Path) -> None:
    """BEGIN IMMEDIATE (the write lock, taken before anything is read), saying so when another writer holds it
    for more than LOCK_NOTE_S: a tune waited up to a minute after its heading without a word."""
    conn.execute(f"PRAGMA busy_timeout = {int(LOCK_NOTE_S * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        logging.getLogger("kt.db").warning(
            "db: %r is locked by another writer (a kt, or any SQLite connection); waiting up to %g s for it",
            str(path),
            LOCKED_WAIT_S,
        )
        conn.execute(f"PRAGMA busy_timeout = {int((LOCKED_WAIT_S - LOCK_NOTE_S) * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(LOCKED_WAIT_S * 1000)}")


def _retry_locked(step):
    """Run `step`, again while SQLite says the database is locked, for up to LOCKED_WAIT_S."""
    deadline = time.monotonic() + LOCKED_WAIT_S
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# SQLite on Unix opens no file whose full path is over 512 bytes (MAX_PATHNAME in os_unix.c), its rollback
# journal's ("<db>-journal") included: 505 bytes of database path said "unable to open database file"
SQLITE_PATH_BYTES = 512 - len("-journal")


def check_path(path: Path, create: bool = True) -> bool:
    """Whether the database at `path` exists, after refusing what cannot be one in one line: a path too long for
    SQLite, a folder in its place, a missing file (unless `create`), or a new file where none can be made.
    Whether an existing file is a kt database is found on opening (`check_file` opens it)."""
    full = len(os.fsencode(os.path.realpath(path)))
    if full > SQLITE_PATH_BYTES:
        raise DatabaseError(
            f"db: {str(path)!r} is {full} bytes as a full path; SQLite opens a database only at a path of at most "
            f"{SQLITE_PATH_BYTES} bytes (512 with its journal's suffix); give a shorter path"
        )
    if not create or path.is_dir():  # a file to read, or a folder in its place: kt.files words both
        existing_file(path, "db", "give a file path", DatabaseError)
        return True
    if path.suffix.lower() == ".csv" and not path.exists():
        # a new one: kt's readers took a database so named for a `kt export` CSV (they now look at its first
        # bytes, so one made before is still read and written)
        raise DatabaseError(
            f"db: {str(path)!r} ends in .csv, the suffix of `kt export`'s CSV files, not of a tuning database "
            "(SQLite); give a path such as tuning.db"
        )
    if path.exists():
        real = path.resolve()  # SQLite writes beside the file a symbolic link names, not beside the link
        folder = real.parent
        side = [real.with_name(real.name + end) for end in ("-wal", "-shm")]
        if not os.access(folder, os.W_OK | os.X_OK) and not all(p.exists() for p in side):
            # SQLite's write-ahead log opens -wal and -shm files beside the database: a writable file in a
            # read-only folder was said to be "a readonly database", after the op's heading
            raise DatabaseError(
                f"db: {str(path)!r} is in a folder where no file can be made ({folder}), and SQLite makes its "
                f"-wal and -shm files beside the database as it writes; move it to a writable folder or give "
                "another --db"
            )
        if not os.access(real, os.W_OK):  # refused after the op's heading, by SQLite, as it first wrote
            raise DatabaseError(
                f"db: {str(path)!r} is a read-only file; make it writable or give another --db"
            )
        return True
    if (
        path.is_symlink()
    ):  # a link to nothing: SQLite makes the file it names, so that is what must be makeable
        # (under Python 3.13 a loop passed here, and SQLite failed after the heading)
        target = link_target(path)
        if target is None:
            raise DatabaseError(f"db: {str(path)!r} is a symbolic link that leads round in a loop")
        if why := unmakeable(target):
            raise DatabaseError(
                f"db: {str(path)!r} is a symbolic link to {str(target)!r}, which cannot be created there ({why})"
            )
        return False
    if why := unmakeable(path):
        raise DatabaseError(f"db: {str(path)!r} cannot be created there ({why})")
    return False


def check_file(path: Path, create: bool = True) -> None:
    """`check_path`, and that a file already there is a kt tuning database: it is opened read-only and closed.
    The CLI calls it as the command line is read (the standard library's sqlite3 only, before torch loads), so a
    wrong file is refused at once. Where a database may be made (`create`), a file without tables is accepted:
    an empty file, or one whose tune stopped before making them."""
    if not check_path(path, create):
        return
    try:
        Database(path, create=False, readonly=True).close()
    except _Blank:
        if not create:
            raise


_OPENED: list[Path] = []  # the database opened last
# SQLite's result codes (sqlite_errorname, before any extended part) by what a user can do about them
_KINDS = {
    "SQLITE_FULL": "full",
    "SQLITE_CORRUPT": "damaged",
    "SQLITE_NOTADB": "damaged",
    "SQLITE_READONLY": "read-only",
    "SQLITE_CANTOPEN": "read-only",
    "SQLITE_PERM": "read-only",
    # no room to grow the -shm file beside the database as it opens: the disk is full (it read "the disk failed")
    "SQLITE_IOERR_SHMSIZE": "full",
    "SQLITE_IOERR": "disk",
}
# another process held the write lock past the connection's busy timeout (LOCKED_WAIT_S); not SQLITE_BUSY's
# other extended codes (BUSY_SNAPSHOT does not wait) nor SQLITE_LOCKED (a conflict within one connection)
_WAITED = ("SQLITE_BUSY", "SQLITE_BUSY_TIMEOUT")


# SQLite's own words for the result codes above (sqlite3_errstr), which Python before 3.11 gives in place of
# sqlite_errorname; they tell no extended code (SQLITE_IOERR_SHMSIZE reads "disk I/O error" as every IOERR does)
_WORDS = {
    "database or disk is full": "SQLITE_FULL",
    "database disk image is malformed": "SQLITE_CORRUPT",
    "file is not a database": "SQLITE_NOTADB",
    "attempt to write a readonly database": "SQLITE_READONLY",
    "unable to open database file": "SQLITE_CANTOPEN",
    "access permission denied": "SQLITE_PERM",
    "disk I/O error": "SQLITE_IOERR",
    "database is locked": "SQLITE_BUSY",
}
FULL_BELOW = 1 << 20  # a disk I/O error where fewer bytes than this are free there: the disk is full


def _errorname(exc: sqlite3.Error) -> str:
    """SQLite's result code for `exc` (sqlite_errorname, from Python 3.11; before it, from SQLite's words)."""
    name = getattr(exc, "sqlite_errorname", None)
    return name if name is not None else _WORDS.get(str(exc), "")


def _kind(exc: sqlite3.Error, path: Path | None = None) -> str | None:
    """What a user can do about `exc` (_KINDS), or None. Where only SQLite's words tell the code (Python 3.10),
    a disk I/O error is the disk full where `path`'s folder has under FULL_BELOW bytes free."""
    name = _errorname(exc)
    kind = next((kind for code, kind in _KINDS.items() if name == code or name.startswith(code + "_")), None)
    if kind == "disk" and path is not None and getattr(exc, "sqlite_errorname", None) is None:
        import shutil

        with contextlib.suppress(OSError):
            if shutil.disk_usage(existing_parent(path)).free < FULL_BELOW:
                return "full"
    return kind


def failure(exc: sqlite3.Error, path: Path | None = None) -> str:
    """One line for an SQLite error of a database kt was using (a tune, an export): the disk full under it, the
    file damaged or read-only. The CLI prints it where such an error would have been a traceback; rows already
    committed stay."""
    path = path or (_OPENED[0] if _OPENED else None)
    where = f"db: {str(path)!r}" if path else "db"
    kind = "locked" if _errorname(exc) in _WAITED else _kind(exc, path)
    if kind == "full":
        return (
            f"{where}: the disk is full ({exc}); free space there and run the command again (committed rows "
            "are kept)"
        )
    if kind == "damaged":
        import shlex

        recover = f"sqlite3 {shlex.quote(str(path)) if path else 'FILE'} .recover"
        return f"{where} is damaged ({exc}); `{recover}` may save its rows, or give another --db"
    if kind == "read-only":
        return f"{where} cannot be written ({exc}); give a --db where kt may write"
    if kind == "disk":
        return f"{where}: the disk failed ({exc})"
    if kind == "locked":
        return (
            f"{where} stayed locked by another process for the {LOCKED_WAIT_S:g} s kt waits ({exc}); what was "
            "already committed is kept (a tune run again goes on from its rows)"
        )
    return f"{where}: SQLite failed ({exc})"


def _sqlite_header(path: Path) -> bool:
    """Whether the file at `path` begins as every SQLite database does: one that then fails as malformed is a
    database damaged (a cut-off copy said "not a kt tuning database"), not some other file."""
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _in_wal_mode(path: Path) -> bool:
    """Whether the database file says it is in WAL mode (its header's read and write versions, bytes 18 and 19,
    are 2); False for rollback-journal mode (1) or a file that cannot be read."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return header[18:20] == b"\x02\x02"


_WARNED_SHARED: set[str] = set()


def _warn_shared_wal(path: Path, kind: str) -> None:
    """Once per file: a database on a network filesystem stayed in WAL mode (another connection has it open)."""
    if str(path) in _WARNED_SHARED:
        return
    _WARNED_SHARED.add(str(path))
    logging.getLogger("kt.db").warning(
        "db: %r lies on a %s filesystem, where SQLite's write-ahead log is safe only among processes of one "
        "host; another connection has it open in WAL mode, so it stays so: use it from one host at a time, or "
        "close the others and kt switches it to a rollback journal",
        str(path),
        kind,
    )


class _Blank(DatabaseError):
    """A readable file that holds no tables: not a kt database yet (a tune would make its tables there)."""


class Database:
    legacy_keys = False  # a file of schema 5 or before, opened read-only: its problem keys were not migrated

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True, readonly: bool = False):
        """Open (or, with `create`, make) the database at `path`, default `default_path()`.

        `readonly` opens an existing file for reading only (SQLite's `mode=ro`, and `immutable` when no writer's
        log is beside it): nothing is created, migrated or written, and a file that is not a kt database (an
        empty one included) is refused as it is.
        """
        self.path = Path(path) if path is not None else default_path()
        self.readonly = readonly
        self.shared: str | None = None  # the network filesystem it lies on, where it does
        self._layouts: dict[str, str] = {}  # layouts stored or read through this object, by digest
        _OPENED[:] = [self.path]  # what `failure` names when SQLite fails later, outside this class
        existed = check_path(self.path, create and not readonly)
        try:
            if readonly:
                # Read with SQLite's locks, and as it stands (immutable, no locks) only where they cannot be had:
                # a WAL file without its log in a folder where the log's shared memory cannot be made. SQLite
                # keeps the log beside the file itself: through a symbolic link, beside its target (looked for
                # beside the link, it was never found, and a reader then took no locks while a writer wrote:
                # stale rows, duplicates, "malformed"). A file in rollback-journal mode (a database on a network
                # filesystem) never has a log beside it, writer or not: it is read with locks.
                real = self.path.resolve()
                wal = real.with_name(real.name + "-wal")
                in_wal = _in_wal_mode(real)
                immutable = in_wal and not wal.exists()
                # A WAL file kt may write is opened as a writer would be, writes refused (query_only): the last
                # connection to close then removes the log's -wal and -shm files, which a mode=ro reader left
                # beside the file for good
                writable = in_wal and os.access(real, os.W_OK) and os.access(real.parent, os.W_OK)
                try:  # with locks, as SQLite reads a live file: no log now is no writer in a second (a tune
                    # starting mid-read checkpointed pages under an immutable reader: duplicated and missing rows,
                    # or "malformed")
                    self._connect_readonly(real, "rw" if writable else "ro")
                except sqlite3.OperationalError:
                    if not immutable:
                        raise
                    # a read-only folder, where SQLite cannot make the log's shared memory: read as it stands
                    self.conn.close()
                    self._connect_readonly(real, "immutable")
            else:
                try:  # through a symbolic link to nothing, the folder of the file it names
                    self.path.resolve().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # a file where a folder should be, a read-only place, ...
                    why = unmakeable(self.path) or exc.strerror or exc
                    raise DatabaseError(f"db: {str(self.path)!r} cannot be created there ({why})") from None
                self.conn = sqlite3.connect(self.path, timeout=LOCKED_WAIT_S, isolation_level=None)
                self.conn.row_factory = sqlite3.Row
                # refused before anything is changed: the switch to WAL below rewrote the header of another
                # application's SQLite file, or a newer kt's, that was then refused
                if existed:
                    _retry_locked(self._check)
                # switching a new file to WAL takes an exclusive lock for which SQLite does not wait: when
                # another tune is making the same file, try again (up to the connection's 60 s)
                self.shared = network_filesystem(self.path)
                if self.shared:
                    self._rollback_journal()
                else:
                    _retry_locked(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
                self.conn.execute("PRAGMA synchronous=FULL")
                if _retry_locked(self._migrate):  # it moved an older file's long layouts out of its rows
                    self._shrink()
        except (sqlite3.DatabaseError, DatabaseError) as exc:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            if isinstance(exc, DatabaseError):
                raise
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise DatabaseError(
                    f"db: {str(self.path)!r} stayed locked by another writer for the {LOCKED_WAIT_S:.0f} s this "
                    f"waited ({exc})"
                ) from None
            if not existed and isinstance(exc, sqlite3.OperationalError):  # it was to be made here
                if _kind(exc, self.path) == "full":  # it read "cannot be created there (disk I/O error)"
                    raise DatabaseError(
                        f"db: {str(self.path)!r} cannot be created there: the disk is full ({exc}); free space "
                        "there or give another --db"
                    ) from None
                raise DatabaseError(f"db: {str(self.path)!r} cannot be created there ({exc})") from None
            real = self.path.resolve()
            wal = real.with_name(real.name + "-wal")
            if readonly and _kind(exc) == "read-only" and wal.exists() and not os.access(wal.parent, os.W_OK):
                # even a reader of a file with a writer's log beside it makes a -shm file there (SQLite's own
                # shell cannot open it either): "give a --db where kt may write" misled a command that reads
                raise DatabaseError(
                    f"db: {str(self.path)!r} has a write-ahead log beside it ({wal.name}), which SQLite reads "
                    "only where it may create its -shm file, and this folder is read-only; copy the file and its "
                    "-wal to a folder kt may write, or open it once where it lies from an account that may write"
                ) from None
            if _kind(exc) in ("full", "read-only", "disk"):  # a kt database all the same, which kt cannot use
                raise DatabaseError(failure(exc, self.path)) from None
            if _kind(exc) == "damaged" and _sqlite_header(self.path):  # one cut short, or written over
                raise DatabaseError(failure(exc, self.path)) from None
            raise DatabaseError(f"db: {str(self.path)!r} is not a kt tuning database ({exc})") from None

    def _rollback_journal(self) -> None:
        """On a network filesystem: a rollback journal, not SQLite's write-ahead log, which works only among
        processes of one host. A file already in WAL mode (made on a local disk, or by an older kt) switches
        when no other connection has it open; while one does (it holds the log's index) the switch waits
        LOCK_NOTE_S, then the file stays in WAL mode with a warning, where waiting the whole LOCKED_WAIT_S
        would only fail the tune."""
        if not _in_wal_mode(self.path):  # a new file, or one in rollback mode already: nothing to switch
            self.conn.execute("PRAGMA journal_mode=DELETE")
            return
        self.conn.execute(f"PRAGMA busy_timeout = {int(LOCK_NOTE_S * 1000)}")
        try:
            self.conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            _warn_shared_wal(self.path, str(self.shared))
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(LOCKED_WAIT_S * 1000)}")

    def _connect_readonly(self, real: Path, how: str) -> None:
        """A connection that reads `real`: "rw" (a writer's, refusing writes), "ro" or "immutable" (no locks)."""
        query = {"rw": "mode=rw", "ro": "mode=ro", "immutable": "mode=ro&immutable=1"}[how]
        self.conn = sqlite3.connect(
            f"{real.as_uri()}?{query}", uri=True, timeout=LOCKED_WAIT_S, isolation_level=None
        )
        self.conn.row_factory = sqlite3.Row
        if how == "rw":
            self.conn.execute("PRAGMA query_only=ON")
        self._check()

    def _check(self) -> set[str]:
        """The file's tables, after refusing a newer schema or an SQLite file of something else."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"db: {str(self.path)!r} has schema {version}, newer than this kt's "
                f"{SCHEMA_VERSION}; upgrade kt"
            )
        if tables and "measurements" not in tables:
            raise DatabaseError(f"db: {str(self.path)!r} is an SQLite file but not a kt tuning database")
        if self.readonly and not tables:
            empty = "is empty" if self.path.stat().st_size == 0 else "holds no tables"
            raise _Blank(f"db: {str(self.path)!r} {empty}, so it is not a kt tuning database")
        # a stored problem key as kt writes it now: for the migration, and for lookups in a file read as it stands
        self.conn.create_function("kt_compact_key", 1, compact_key, deterministic=True)
        if self.readonly and version < 6:
            # read as it stands (nothing migrated), its keys may hold whole layouts: a lookup by problem key
            # compares each row's key as kt writes it now (every row read, where the index found the key)
            self.legacy_keys = True
        return tables

    def _migrate(self) -> bool:
        """Create or bring the tables up to SCHEMA_VERSION; whether long layouts were moved out of rows."""
        tables = self._check()
        moved = False
        columns = ",\n  ".join(f"{name} {kind}" for name, kind in COLUMNS)
        with self.conn:
            # IMMEDIATE: the write lock is taken (waiting its turn, up to the connection's timeout) before
            # anything is read, so tunes opening a new database at once create it one after the other instead
            # of one failing with "database is locked" when its read lock cannot be upgraded
            _begin_immediate(self.conn, self.path)
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS measurements (\n  id INTEGER PRIMARY KEY,\n  {columns})"
            )
            if "measurements" in tables:  # an older schema: add the columns it lacks (all may be NULL)
                have = {r[1] for r in self.conn.execute("PRAGMA table_info(measurements)")}
                for name, kind in COLUMNS:
                    if name not in have:
                        self.conn.execute(f"ALTER TABLE measurements ADD COLUMN {name} {kind}")
                if "checked_problem" in have:
                    # the first schema's one checked problem (JSON), renamed to a list of them; a kt before
                    # 2026-12-05 added the new column empty beside it
                    self.conn.execute(
                        "UPDATE measurements SET checked_problems = '[' || checked_problem || ']' "
                        "WHERE checked_problem IS NOT NULL AND checked_problems IS NULL"
                    )
            indexed = [r[2] for r in self.conn.execute("PRAGMA index_info(measurement_key)")]
            if indexed and indexed != list(KEY_COLUMNS):
                # an older key (schema 1's lacked triton_version): kept, it made every row of another Triton
                # collide with an old one, so each check was dropped as already present and the tune found none
                self.conn.execute("DROP INDEX measurement_key")
            self.conn.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS measurement_key ON measurements ({', '.join(KEY_COLUMNS)})"
            )
            # a problem's rows whatever their runner, target and template: kt.nn looks a layer's best row up by
            # problem, GPU and Triton, which the key's index (runner, device, target, ...) narrowed only to the
            # GPU's rows (21-40 ms a lookup in 78,000 rows of one GPU; 0.3 ms with this index)
            self.conn.execute("CREATE INDEX IF NOT EXISTS measurement_problem ON measurements (problem_key)")
            # candidates being measured now: one row per measurement key, so two tunes on one database never
            # measure the same config at once (older kt ignores the table)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS claims (claim_key TEXT PRIMARY KEY, pid INTEGER NOT NULL, "
                "host TEXT NOT NULL, claimed_at TEXT NOT NULL)"
            )
            # each long block-sparse layout once (schema 6), which a row's problem names by its digest: a row held
            # its whole layout (4 MiB of hex for a 2**24-block grid) in its problem and, before, in its key
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS layouts (digest TEXT PRIMARY KEY, layout TEXT NOT NULL)"
            )
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]  # under the lock: one migrates
            if "measurements" in tables and version < 6:
                moved = self._store_old_layouts()
                # keys that hold a whole layout (megabytes for a large grid, in the row, both indexes and
                # every claim) renamed as kt writes them now, so a lookup by today's key finds those rows
                self.conn.execute(
                    f"UPDATE measurements SET problem_key = kt_compact_key(problem_key) WHERE {_LONG_LAYOUT}"
                )
                for (name,) in self.conn.execute("SELECT claim_key FROM claims").fetchall():
                    renamed = _compact_claim(name)
                    if renamed != name:  # a live older kt's claim stays one, under the key kt looks for now
                        self.conn.execute(
                            "UPDATE OR IGNORE claims SET claim_key = ? WHERE claim_key = ?", (renamed, name)
                        )
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return moved

    def _store_old_layouts(self) -> bool:
        """Move the long layouts of an older file's rows (their problem and checked problems) to the layouts
        table, one row at a time (each may hold megabytes); whether any was moved."""
        holding = " OR ".join(f'{column} LIKE \'%"layout": "%\'' for column in LAYOUT_COLUMNS)
        ids = [r[0] for r in self.conn.execute(f"SELECT id FROM measurements WHERE {holding}")]
        moved = False
        for row_id in ids:
            values = self.conn.execute(
                f"SELECT {', '.join(LAYOUT_COLUMNS)} FROM measurements WHERE id = ?", (row_id,)
            ).fetchone()
            changed = {}
            for column, text in zip(LAYOUT_COLUMNS, values):
                try:
                    data = json.loads(text) if text is not None else None
                except ValueError:  # damaged: left for the reader to refuse by its id
                    continue
                kept, named = split_layouts(data)
                if named:
                    self._put_layouts(named)
                    moved = True
                    changed[column] = _encode(kept)
            if changed:
                assignments = ", ".join(f"{column} = ?" for column in changed)
                self.conn.execute(
                    f"UPDATE measurements SET {assignments} WHERE id = ?", (*changed.values(), row_id)
                )
        return moved

    def _shrink(self) -> None:
        """After a migration moved long layouts out of the rows, give the pages they held back to the file
        system when they are half of the file or more: SQLite keeps a file's size (9 rows of a 16384 x 16384
        pattern kept their 14.2 MB once migrated; 0.3 MB after VACUUM). A VACUUM that cannot run (another
        connection writing past the lock's wait, no room for its copy) leaves the file as it is, whole and in
        use."""
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        if 2 * free < self.conn.execute("PRAGMA page_count").fetchone()[0]:
            return
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("VACUUM")

    def _put_layouts(self, named: dict[str, str]) -> None:
        """Store layouts by digest, each once (inside the caller's transaction)."""
        for digest, layout in named.items():
            if digest not in self._layouts:
                self.conn.execute(
                    "INSERT OR IGNORE INTO layouts (digest, layout) VALUES (?, ?)", (digest, layout)
                )

    def _layout(self, digest: str) -> str:
        """The layout a row's problem names by `digest` (read once per database object)."""
        layout = self._layouts.get(digest)
        if layout is None:
            try:
                found = self.conn.execute("SELECT layout FROM layouts WHERE digest = ?", (digest,)).fetchone()
            except sqlite3.OperationalError:  # no layouts table: an older file, edited
                found = None
            if found is None:
                raise ValueError(f"its problem names layout {digest[:23]}..., which the layouts table lacks")
            layout = self._layouts[digest] = found[0]
        return layout

    def close(self) -> None:
        self._let_go(None)
        self.conn.close()

    def _let_go(self, names: list[str] | None) -> None:
        """Forget this object's claims in this process (`names`, or all of them)."""
        token = self.__dict__.get("_token")
        if token is None:
            return
        db_file = str(self.path.resolve())
        with _HELD_LOCK:
            for held in [k for k, v in _HELD.items() if v == token and k[0] == db_file]:
                if names is None or held[1] in names:
                    del _HELD[held]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def insert(self, row: dict[str, Any]) -> bool:
        """Commit one measurement; False (and nothing written) when its key is already present."""
        unknown = set(row) - set(COLUMN_NAMES)
        if unknown:
            raise ValueError(f"unknown measurement columns: {sorted(unknown)}")
        missing = [k for k in KEY_COLUMNS + ("status", "problem", "config") if row.get(k) is None]
        if missing:
            raise ValueError(f"a measurement needs {missing}")
        row = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **row}
        named: dict[str, str] = {}
        for column in LAYOUT_COLUMNS:  # a long layout is stored once, in the layouts table
            if isinstance(row.get(column), (dict, list)):
                row[column], layouts = split_layouts(row[column])
                named.update(layouts)
        row = {k: _encode(v) for k, v in row.items()}
        names = list(row)
        try:
            with self.conn:
                if named:  # the layouts and the row that names them, together (the connection autocommits)
                    self.conn.execute("BEGIN")
                self._put_layouts(named)
                self.conn.execute(
                    f"INSERT INTO measurements ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [row[n] for n in names],
                )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                return False
            raise
        self._layouts.update(named)
        return True

    def claim(self, keys: list[dict[str, Any]]) -> list[str]:
        """Claim measurement keys (KEY_COLUMNS values) for this process, in one transaction: for each, "mine"
        (claimed now, or already by this process), "measured" (its row is in), or "theirs" (another live
        process holds it: on this host while its pid runs, from another host for CLAIM_STALE_S). A dead
        holder's claim is taken over."""
        me, host = os.getpid(), _host()
        now = datetime.now(timezone.utc)
        token = self.__dict__.setdefault("_token", next(_TOKENS))
        db_file = str(self.path.resolve())
        states = []
        with self.conn, _HELD_LOCK:
            _begin_immediate(self.conn, self.path)
            # every dead holder's claim goes, not only those of the keys asked for now: a tune killed while
            # measuring candidate zero left a claim no later tune asks for (its row is in, so it is not claimed)
            dead = [
                (r["claim_key"],)
                for r in self.conn.execute("SELECT claim_key, pid, host, claimed_at FROM claims")
                if not _alive(r["pid"], r["host"], r["claimed_at"], now)
            ]
            self.conn.executemany("DELETE FROM claims WHERE claim_key = ?", dead)
            for key in keys:
                where = " AND ".join(f"{k} = ?" for k in KEY_COLUMNS)
                values = [key[k] for k in KEY_COLUMNS]
                name = claim_key(key)
                held = self.conn.execute(
                    "SELECT pid, host, claimed_at FROM claims WHERE claim_key = ?", [name]
                )
                held = held.fetchone()
                if self.conn.execute(f"SELECT 1 FROM measurements WHERE {where}", values).fetchone():
                    states.append("measured")
                    continue
                if held is not None and (held["pid"], held["host"]) != (me, host) and _alive(*held, now):
                    states.append("theirs")
                    continue
                if held is not None and _HELD.get((db_file, name), token) != token:  # another tune of ours
                    states.append("theirs")
                    continue
                _HELD[(db_file, name)] = token
                self.conn.execute(
                    "INSERT OR REPLACE INTO claims (claim_key, pid, host, claimed_at) VALUES (?, ?, ?, ?)",
                    [name, me, host, now.isoformat(timespec="seconds")],
                )
                states.append("mine")
        return states

    def release(self, keys: list[dict[str, Any]], quiet: bool = False) -> None:
        """Drop this process's claims on these keys (measured, or given up). `quiet`: an SQLite error is let go
        (a `finally` after a failure, such as the disk filling up, must not hide that failure behind its own;
        a claim left behind is taken over once this process is gone)."""
        if not keys or self.readonly:
            return
        token, db_file = self.__dict__.get("_token"), str(self.path.resolve())
        try:
            with self.conn, _HELD_LOCK:
                # not another tune's of this process (a batch's keys it waited for): its claim row names the
                # same process, and deleting it let a third tune measure that config beside it
                names = [
                    name
                    for name in (claim_key(key) for key in keys)
                    if _HELD.get((db_file, name), token) == token
                ]
                self.conn.execute("BEGIN")
                self.conn.executemany(
                    "DELETE FROM claims WHERE claim_key = ? AND pid = ? AND host = ?",
                    [(name, os.getpid(), _host()) for name in names],
                )
            self._let_go(names)
        except sqlite3.Error:
            if not quiet:
                raise

    def holders(self, keys: list[dict[str, Any]]) -> str:
        """Who holds the claims on `keys`, in words: each process (pid, host, since when), and for one on another
        host when kt takes its claims over and how to free them sooner."""
        names = [claim_key(key) for key in keys]
        found: dict[tuple[int, str], list[str]] = {}
        for start in range(0, len(names), 500):  # SQLite's limit on a statement's variables
            chunk = names[start : start + 500]
            rows = self.conn.execute(
                f"SELECT pid, host, claimed_at FROM claims WHERE claim_key IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                found.setdefault((row["pid"], row["host"]), []).append(row["claimed_at"])
        import shlex

        here = _host()
        parts = []
        for (pid, host), times in sorted(found.items(), key=lambda item: min(item[1])):
            since = f"since {min(times).replace('T', ' ').replace('+00:00', ' UTC')}"
            if (pid, host) == (os.getpid(), here):
                parts.append(f"another op of this kt process, {since}")
            elif host == here:
                parts.append(f"pid {pid} on this host, {since}")
            else:
                free = f"\"DELETE FROM claims WHERE host = '{host}'\""  # (a host name has no " or $)
                parts.append(
                    f"pid {pid} on host {host!r}, {since} (kt takes over another host's claims "
                    f"{CLAIM_STALE_S // 3600} h after they were made; if that tune is gone, `sqlite3 "
                    f"{shlex.quote(str(self.path))} {free}` frees them now)"
                )
        return "; ".join(parts)

    def claims(self) -> list[dict[str, Any]]:
        """Every claim held now (claim_key, pid, host, claimed_at)."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM claims ORDER BY claimed_at")]

    def delete(self, ids: list[int]) -> None:
        """Remove rows by id, all in one transaction."""
        if not ids:
            return
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("DELETE FROM measurements WHERE id = ?", [(i,) for i in ids])

    def _columns(self) -> str:
        """The SELECT list of today's columns that the table has: a column an older schema had and renamed stays
        in its table (schema 1's checked_problem, which export's CSV writer refused), and a database opened for
        reading only is not migrated, so it may lack today's (its rows read them as missing)."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(measurements)")}
        names = ["id", *(name for name in COLUMN_NAMES if name in have)]
        if "checked_problem" in have:  # (beside an empty checked_problems an older kt's migration added)
            names = [name for name in names if name != "checked_problems"]
            listed = "'[' || checked_problem || ']'"
            if "checked_problems" in have:
                listed = f"COALESCE(checked_problems, {listed})"
            names.append(f"{listed} AS checked_problems")
        return ", ".join(names)

    def find(self, *, numbers: bool = True, **where: Any) -> list[dict[str, Any]]:
        """Rows whose columns equal the given values (e.g. problem_key=..., device=...), oldest first; with
        `numbers`, a row with text in a numeric column is refused (the dataset reader, which checks each
        row's figures and their ranges itself, reads without)."""
        return list(self._rows(numbers, where))

    def _rows(
        self, numbers: bool, where: dict[str, Any], since: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """`find`'s rows one at a time (`since`: created then or later), read from the database as they are
        taken: `kt export` of a database of block-sparse rows (each its layout, megabytes) held them all."""
        since_sql = " AND created_at >= ?" if since is not None else ""
        cursor = self.conn.execute(
            f"SELECT {self._columns()} FROM measurements WHERE {_where(where, self.legacy_keys)}{since_sql} "
            "ORDER BY id",
            [*where.values(), *([since] if since is not None else [])],
        )
        for r in cursor:
            try:
                stored = dict(r)
                row = decode_row(dict(stored))
                # a layout named by its digest, given back from the layouts table
                for column in LAYOUT_COLUMNS:
                    text = stored.get(column)
                    if isinstance(text, str) and f'"layout": "{DIGEST}' in text:
                        row[column] = joined_layouts(row[column], self._layout)
                yield _check_numbers(row) if numbers else row
            except ValueError as exc:
                raise DatabaseError(f"db: {str(self.path)!r} row id {r['id']}: {exc}") from None

    def measured_configs(self, **key: Any) -> dict[str, dict[str, Any]]:
        """config_key -> row for every row matching the identity columns given."""
        return {row["config_key"]: row for row in self.find(**key)}

    def count(self, **where: Any) -> int:
        """How many rows have columns equal to the given values (all rows when none are given)."""
        return self.conn.execute(
            f"SELECT COUNT(*) FROM measurements WHERE {_where(where, self.legacy_keys)}", [*where.values()]
        ).fetchone()[0]

    def all_rows(self) -> Iterable[dict[str, Any]]:
        return self.find()

    def export_csv(self, path: str | os.PathLike, since: str | None = None, **where: Any) -> int:
        """Write the matching rows (every column; JSON columns as JSON) to a CSV file, atomically; `since` (an
        ISO time, as created_at holds it) keeps only the rows created then or later."""
        import csv

        def write(handle: IO[str]) -> int:  # atomic_write opens text with newline="", as csv wants
            writer = csv.DictWriter(handle, fieldnames=["id", *COLUMN_NAMES])
            writer.writeheader()
            count = 0
            for row in self._rows(True, where, since):  # one row in memory at a time
                writer.writerow({k: _encode(v) for k, v in row.items()})
                count += 1
            return count

        return atomic_write(path, write)


# what a reader needs (without runtime_ms, a file of GPU rows was "no exhaustive sweep" to kt replay)
CSV_COLUMNS = (
    "runner",
    "device",
    "target",
    "family",
    "problem",
    "config_key",
    "config",
    "status",
    "runtime_ms",
)


def export_text(path: Path, field: str = "data") -> str:
    """The text of a `kt export` CSV, after refusing in one line a file that is not UTF-8 or whose header lacks
    a column the readers need (CSV_COLUMNS). The CLI calls it as the command line is read (the standard
    library only, before torch loads), and kt.autotune.dataset before it reads the rows. An error names
    `field`, the option or argument that gave the file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatabaseError(
            f"{field}: {str(path)!r} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); `kt export` "
            "writes UTF-8 CSV"
        ) from None
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise DatabaseError(f"{field}: {str(path)!r} line 1: not a readable CSV header ({exc})") from None
    missing = set(CSV_COLUMNS) - set(header)
    if missing:
        raise DatabaseError(
            f"{field}: {str(path)!r} is not a `kt export` CSV (no {', '.join(sorted(missing))} column)"
        )
    return text


def check_data(path: Path, field: str = "data") -> None:
    """That a file of measurements is one kt reads (as kt.autotune.dataset.read_rows tells them apart): a `kt
    export` CSV's text and header (`export_text`), else a tuning database, opened read-only and closed
    (`check_file`). The standard library only, so the CLI asks it as the command line is read. An error names
    `field`, the option or argument that gave the file."""
    if path.suffix.lower() == ".csv" and not is_sqlite(path):
        export_text(path, field)
        return
    with named(field):
        try:
            check_file(path, create=False)
        except DatabaseError as exc:
            other = foreign_measurements(path)
            if other is None:
                raise
            if (
                field == "space" and "Kernel Tuner" in other
            ):  # kt replay itself: it reads caches by their name
                other = "it is a Kernel Tuner cache: name it .json (or .json.gz, gzipped) for kt replay to read it"
            raise DatabaseError(f"{exc}: {other}") from None


def foreign_measurements(path: Path) -> str | None:
    """What to do with another tool's measurements that kt reads through another command, by the file's first
    bytes (gzipped or not), or None: `--data` called Inductor's log, a source the README names, only "not a kt
    tuning database"."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as file:
            zipped = file.read(2) == b"\x1f\x8b"
        with (gzip.open if zipped else open)(path, "rb") as file:
            text = file.read(4096).decode("utf-8", "replace")
    except (OSError, EOFError, zlib.error):
        return None
    if '"numerical_features"' in text and "feedback" in text:
        return "it is a PyTorch Inductor autoheuristic log, which `kt import inductor` turns into kt's rows"
    if '"tune_params_keys"' in text or '"tune_params"' in text:
        return (
            "it is a Kernel Tuner cache, which `kt replay` replays; a cost model is fitted on kt's own rows"
        )
    return None


@contextlib.contextmanager
def named(field: str) -> Iterator[None]:
    """A DatabaseError raised inside names `field` (the option or argument that gave the file) where the
    database's own messages say `db:`, the name of the option that usually gives it."""
    try:
        yield
    except DatabaseError as exc:
        text = str(exc)
        if field == "db" or not text.startswith("db: "):
            raise
        # a file that is no --db here: "give another --db" sent `kt inspect X.db` to its own --db refusal
        text = text.removeprefix("db: ").replace("give another --db", "give another file")
        raise DatabaseError(f"{field}: {text}") from None
    except sqlite3.Error as exc:  # a page found damaged as the rows are read: named here, not as --db
        text = failure(exc)
        if field != "db":
            text = f"{field}: " + text.removeprefix("db: ").replace("give another --db", "give another file")
        raise DatabaseError(text) from None


def _where(where: dict[str, Any], legacy_keys: bool = False) -> str:
    """The SQL condition that each named column equals its value (given as parameters, in order); with
    `legacy_keys`, the problem key as kt writes it now (`Database.legacy_keys`) where the key sought names a
    layout by its digest (any other key reads the same in either schema, and its index finds it)."""
    unknown = set(where) - set(COLUMN_NAMES) - {"id"}
    if unknown:
        raise ValueError(f"unknown measurement columns: {sorted(unknown)}")
    digested = legacy_keys and f'"layout":"{DIGEST}' in str(where.get("problem_key", ""))
    names = {"problem_key": "kt_compact_key(problem_key)"} if digested else {}
    return " AND ".join(f"{names.get(k, k)} = ?" for k in where) or "1"


def _encode(value: Any) -> Any:
    """Stored form of a value: the JSON columns (problem, config, checked_problems) as JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


NUMERIC_COLUMNS = tuple(name for name, kind in COLUMNS if kind.startswith(("REAL", "INTEGER")))


def _check_numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row whose numeric columns hold numbers (or NULL): SQLite keeps text that is no number in a REAL
    column as text, which an edit or damage can put there (the results table then raised a TypeError)."""
    for name in NUMERIC_COLUMNS:
        value = row.get(name)
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(
                f"column {name} is {value!r}, not a number (the row was edited or damaged; `DELETE FROM "
                f"measurements WHERE id = {row.get('id')}` in sqlite3 removes it)"
            )
    return row


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as stored (or exported) with its JSON columns parsed, and its problem key as kt writes it now
    (`compact_key`: a file before schema 6 held whole layouts there); ValueError when one is not valid JSON."""
    if isinstance(row.get("problem_key"), str):
        row["problem_key"] = compact_key(row["problem_key"])
    for key in ("problem", "config", "checked_problems"):
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError as exc:
                raise ValueError(f"column {key} is not JSON ({exc})") from None
            except ValueError:  # an integer past Python's 4300 digits, which named no column
                raise ValueError(f"column {key} holds a number too long for kt (over 4300 digits)") from None
            except RecursionError:  # nested past Python's limit (a damaged or edited file): a traceback
                raise ValueError(f"column {key} is not JSON kt writes (nested too deep)") from None
    return row
