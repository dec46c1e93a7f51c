"""The files a user gives kt and gets from it. Writing a file whole or not at all: every file kt writes for a
user (CSV exports, models, plots, reports, replay traces) goes through `atomic_write`, so a crash or Ctrl-C
leaves the old file or the new one, never half of one. Reading: `existing_file` and `existing_path` refuse a
named file or folder that is not there in one line naming the field, as the command line is read and again in
the readers."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def cache_dir() -> Path:
    """kt's cache folder: $KT_CACHE_DIR, else $XDG_CACHE_HOME/kt, else ~/.cache/kt. It holds generated kernels
    (`kernels/`), Triton's compile cache for kt's workers (`triton/`) and loaded cost models (`models/`), each
    safe to delete at any time (made again on use), and the default tuning database (`tuning.db`)."""
    try:
        if os.environ.get("KT_CACHE_DIR"):  # '~/...' as a quoted setting leaves it (a .env file, docker -e)
            return Path(os.environ["KT_CACHE_DIR"]).expanduser()
        # '~/.cache' as a quoted setting is the home folder's (it made a folder named ~ in the current one), and
        # a relative one is ignored, as the XDG spec says (it moved with the current folder)
        base = Path(os.environ.get("XDG_CACHE_HOME", "")).expanduser()
        return (base if base.is_absolute() else Path.home() / ".cache") / "kt"
    except RuntimeError as exc:
        # '~nosuchuser/kt', or no home folder (HOME unset for a uid without a passwd entry, in a container): an
        # OSError, as a cache that cannot be written is, so callers that fall back to a temporary folder do (kt.load
        # blamed the artifact's kernel.py and said to re-run `kt tune`)
        raise NotADirectoryError(f"{_cache_setting()}: {exc}") from None


def _cache_setting() -> str:
    """The setting that names kt's cache folder, for messages."""
    return (
        "KT_CACHE_DIR"
        if os.environ.get("KT_CACHE_DIR")
        else "cache folder ($XDG_CACHE_HOME/kt or ~/.cache/kt)"
    )


def _written_after(path: str, moment: float) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime > moment
    except OSError:
        return False


def check_cache_dir() -> Path:
    """kt's cache folder, or a KtError naming the setting that names it: a file there, or a place where no
    folder can be made (a tune writes its kernels there; it said only "Not a directory: .../kernels")."""
    from kt.errors import KtError

    try:
        path = cache_dir()
    except OSError as exc:
        raise KtError(str(exc)) from None
    setting = _cache_setting()
    if path.exists() and not path.is_dir():
        raise KtError(f"{setting}: {str(path)!r} is a file; kt keeps generated kernels there: give a folder")
    if not path.exists() and (why := unmakeable(path)):
        raise KtError(f"{setting}: the folder {str(path)!r} cannot be made: {why}")
    # a folder kt cannot write (read-only, another user's, /proc): the tune failed after its heading, having made
    # its database, on "Permission denied: .../kernels"; the probe goes where the kernels go
    if path.is_dir() and (why := unmakeable(path / "kernels" / "probe")):
        raise KtError(f"{setting}: kt cannot write its kernels in {str(path)!r}: {why}")
    triton_cache_limit()  # KT_TRITON_CACHE_MB and KT_KERNEL_CACHE_MB, read as the workers start: refused
    kernel_cache_limit()  # before the work
    triton = os.environ.get("TRITON_CACHE_DIR")  # where the workers' Triton compiles go when it is set
    if triton:
        where = Path(triton)
        if where.exists() and not where.is_dir():
            raise KtError(
                f"TRITON_CACHE_DIR: {triton!r} is a file; Triton keeps its compiles there: give a folder"
            )
        if not where.exists() and (why := unmakeable(where)):
            # else every candidate's compile fails, and each is stored as a crash that later tunes skip
            raise KtError(f"TRITON_CACHE_DIR: the folder {triton!r} cannot be made: {why}")
    return path


TRITON_CACHE_MB = 4096  # the default size kt trims its workers' Triton compile cache to (KT_TRITON_CACHE_MB)
KERNEL_CACHE_MB = 512  # and its generated kernels' folder (KT_KERNEL_CACHE_MB): 15 KB a kernel, 30,000-odd
TRITON_CACHE_GRACE_S = 3600  # an entry written (a kernel: used) since is never trimmed: a running tune's
TRIMMED = ".kt-trimmed"  # in each folder kt trims: its time is the last trim's


def triton_cache_limit() -> int | None:
    """The size in bytes that `trim_triton_cache` keeps kt's Triton cache under (KT_TRITON_CACHE_MB, default
    TRITON_CACHE_MB), None for 'unlimited'; a KtError naming the setting for any other value."""
    return _size_setting("KT_TRITON_CACHE_MB", TRITON_CACHE_MB, "of its workers' Triton compile cache")


def kernel_cache_limit() -> int | None:
    """The size in bytes that `trim_kernel_cache` keeps kt's generated kernels under (KT_KERNEL_CACHE_MB,
    default KERNEL_CACHE_MB), None for 'unlimited'; a KtError naming the setting for any other value."""
    return _size_setting("KT_KERNEL_CACHE_MB", KERNEL_CACHE_MB, "of the kernels it generates")


def _size_setting(setting: str, default_mb: int, what: str) -> int | None:
    from kt.errors import KtError

    value = os.environ.get(setting, "").strip()
    if not value:
        return default_mb << 20
    if value.lower() == "unlimited":
        return None
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:  # isdigit() took '²', which int() refuses
        raise KtError(
            f"{setting}: {value!r} is no size; give the most MB kt keeps {what}, a positive integer (default "
            f"{default_mb}), or 'unlimited'"
        )
    return int(value) << 20


def trim_caches() -> None:
    """Trim kt's Triton compile cache and its generated kernels to their limits, as a pool of workers starts:
    the compiles and kernels of tunes before (GBs and hundreds of MB after `kt collect --all` runs), before
    this one's add theirs."""
    trim_triton_cache(triton_cache_limit())
    trim_kernel_cache(kernel_cache_limit())


def trim_triton_cache(limit: int | None, now: float | None = None) -> int:
    """Trim the Triton compile cache of kt's workers (`<kt cache>/triton`) to `limit` bytes; returns the bytes
    removed. Every kernel a tune or `kt collect` compiles leaves an entry there (hundreds of KB: GBs after a
    `kt collect --all`), which serves its tune only (the measuring worker loads what the compiling one built,
    minutes later; a kernel kt loads later compiles in the user's own Triton cache). Whole entries go, the least
    recently written first, never one written in the last TRITON_CACHE_GRACE_S (a running tune's); at most once
    in that time (the file TRIMMED holds the last trim's time). A TRITON_CACHE_DIR the user set is theirs:
    never trimmed. Entries that vanish or cannot be removed meanwhile (another kt trimming, a read-only file)
    are passed over."""
    if limit is None or os.environ.get("TRITON_CACHE_DIR"):
        return 0
    return _trim(cache_dir() / "triton", _triton_entries, limit, now)


def trim_kernel_cache(limit: int | None, now: float | None = None) -> int:
    """Trim kt's generated kernels (`<kt cache>/kernels`: each candidate a tune or `kt collect` generates, and
    each kernel kt.nn or kt.load imports, is a module there, about 15 KB, with its bytecode in `__pycache__`)
    to `limit` bytes; returns the bytes removed. Each is written again from its source where it is needed
    (`kt.codegen.emit.write_source`; a worker from its task), so what goes is only disk. A kernel and its
    bytecode go together, the least recently used first (`write_source` refreshes a module's time as it hands
    it out), never one used in the last TRITON_CACHE_GRACE_S (Triton's interpreter reads a module's file again
    at its first launch); at most once in that time, as `trim_triton_cache`."""
    if limit is None:
        return 0
    return _trim(cache_dir() / "kernels", _kernel_entries, limit, now)


Entry = tuple[float, int, list[str]]  # (last written or used, bytes, its paths) of what a trim removes whole


def _triton_entries(listing: list[os.DirEntry]) -> list[Entry]:
    """Triton's cache entries: a folder each."""
    entries = []
    for entry in listing:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(entry.path))
            entries.append((entry.stat(follow_symlinks=False).st_mtime, size, [entry.path]))
        except OSError:
            continue
    return entries


def _kernel_entries(listing: list[os.DirEntry]) -> list[Entry]:
    """The generated kernels: `k_<hash>.py` with its bytecode, `__pycache__/k_<hash>.<tag>.pyc` (one a Python
    version), or the bytecode alone where its module has gone."""
    found: dict[str, Entry] = {}

    def add(name: str, entry: os.DirEntry) -> None:
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError:
            return
        written, size, paths = found.get(name, (0.0, 0, []))
        found[name] = (max(written, status.st_mtime), size + status.st_size, [*paths, entry.path])

    for entry in listing:
        if (
            entry.name.startswith("k_")
            and entry.name.endswith(".py")
            and entry.is_file(follow_symlinks=False)
        ):
            add(entry.name.removesuffix(".py"), entry)
        elif entry.name == "__pycache__" and entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                for compiled in os.scandir(entry.path):
                    if compiled.name.startswith("k_") and compiled.name.endswith(".pyc"):
                        add(compiled.name.split(".")[0], compiled)
    return list(found.values())


def _trim(
    root: Path, entries_of: Callable[[list[os.DirEntry]], list[Entry]], limit: int, now: float | None
) -> int:
    """Remove `root`'s entries (`entries_of` its listing), the least recently written first, until they hold
    `limit` bytes or less, none written in the last TRITON_CACHE_GRACE_S; at most once in that time."""
    now = time.time() if now is None else now
    marker = root / TRIMMED  # once an hour at most: the scan takes 0.4 s at 10,000 entries
    with contextlib.suppress(OSError):
        if marker.stat().st_mtime > now - TRITON_CACHE_GRACE_S:
            return 0
    try:
        listing = list(os.scandir(root))
    except OSError:  # none yet, or unreadable: nothing to trim
        return 0
    entries = entries_of(listing)
    total = sum(size for _, size, _ in entries)
    removed = 0
    for written, size, paths in sorted(entries):
        if total - removed <= limit or written > now - TRITON_CACHE_GRACE_S:
            break
        if any(_written_after(path, now - TRITON_CACHE_GRACE_S) for path in paths):
            continue  # used since the scan: write_source refreshes a module's time as another process takes it
        for path in paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if not any(os.path.lexists(path) for path in paths):
            removed += size
    with contextlib.suppress(OSError):  # a read-only cache: scanned each time
        marker.touch()
        os.utime(marker, (now, now))
    return removed


# what to give instead, for the files and folders a user names
MODEL_HINT = "give a model file written by `kt costmodel fit`"
DATA_HINT = "give a tuning database (.db) or a `kt export` CSV"
INSPECT_HINT = "give an artifact directory or a tuning database (.db or .csv)"


def existing_file(path: str | os.PathLike, field: str, hint: str, error: type[Exception]) -> Path:
    """A file the user named, or `error` in one line naming `field`: `<field>: 'path' not found`, or `is a
    directory; <hint>`. The CLI calls it as the command line is read (before torch or a model loads), and the
    readers call it again for API callers."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{field}: {str(path)!r} is a directory; {hint}")
    strange = not_a_file(path)  # /dev/null is there: "not found" would send the user looking for it
    if strange:
        raise error(f"{field}: {str(path)!r} {strange}; {hint}")
    if not path.is_file():
        raise error(f"{field}: {str(path)!r} not found")
    return path


def model_file(path: str | os.PathLike) -> Path:
    """A cost-model file the user named: present, not empty, and a zip archive as skops writes one; else a
    ModelError in one line. The CLI calls it as the command line is read (the standard library's zipfile, not
    skops or scikit-learn), and ForestModel.load again before skops reads the file."""
    import zipfile

    from kt.errors import ModelError

    path = existing_file(path, "model", MODEL_HINT, ModelError)
    if path.stat().st_size == 0:
        raise ModelError(f"model: {str(path)!r} is empty (0 bytes); {MODEL_HINT}")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"model: {str(path)!r} is not a skops file (not a zip archive); {MODEL_HINT}")
    return path


def ranking_model(model: Any) -> Any:
    """The `model` that ranks candidates as kt.plan and kt.tune take it, read as `--model` reads it: any case of
    "analytic" is the analytic model, and a path is a model file (`model_file`), refused in one line naming
    both choices ("" was read as the folder '.', and `ANALYTIC` as a missing file). Other values (None, a
    loaded model) pass through."""
    from kt.errors import ModelError

    if not isinstance(model, (str, os.PathLike)):
        return model
    if not str(model).strip():
        raise ModelError("model: an empty path; give a model file written by `kt costmodel fit`, or analytic")
    if str(model).lower() == "analytic":
        return "analytic"
    try:
        model_file(model)
    except ModelError as exc:
        raise ModelError(f"{str(exc).removesuffix(f'; {MODEL_HINT}')}; {MODEL_HINT}, or analytic") from None
    return model


def existing_path(path: str | os.PathLike, field: str, hint: str) -> Path:
    """A file or folder the user named, or a KtError: `<field>: 'path' not found; <hint>`."""
    from kt.errors import KtError

    path = Path(path)
    if not path.exists():
        raise KtError(f"{field}: {str(path)!r} not found; {hint}")
    return path


def check_writable(path: str | os.PathLike, field: str, make_parent: bool = True) -> Path:
    """A file kt is to write for the user, refused in one line naming `field` before the work that makes it: a
    folder in its place, a missing folder (unless `make_parent`: then its nearest existing folder), a file where a
    folder should be, or a place that takes no new file (a probe file is made and removed there)."""
    from kt.errors import KtError

    path = Path(path)
    if path.is_dir():
        raise KtError(f"{field}: {str(path)!r} is a folder; give a file path")
    if why := not_a_file(path):  # writing /dev/null would replace the device with a file
        raise KtError(f"{field}: {str(path)!r} {why}; give a file path")
    if is_sqlite(path):  # `kt export ~/.cache/kt/tuning.db` would replace every measurement with CSV
        raise KtError(
            f"{field}: {str(path)!r} is a SQLite database (a tuning database?), which kt never writes over; "
            "give another path"
        )
    if not make_parent and not path.parent.exists():  # a file in the folder's place: unmakeable says so
        raise KtError(f"{field}: the folder {str(path.parent)!r} does not exist; create it first")
    if why := unmakeable(path):
        raise KtError(f"{field}: {str(path)!r} cannot be written: {why}")
    if why := _unwritable(Path(os.path.realpath(path))):  # atomic_write refuses it: after the work, it was
        raise KtError(f"{field}: {str(path)!r} cannot be written: {why[1]}")
    return path


MODEL_SUFFIX = ".skops"
MODEL_NAMES = f"kt writes and reads models as {MODEL_SUFFIX} files (skops' zip archives)"


def check_suffix(path: str | os.PathLike, field: str, suffix: str, why: str) -> Path:
    """Refuse, naming `field`, an output whose name does not end in `suffix` (`why`: what kt makes of any other
    name): `--out op.yaml` would replace the spec with a model. A SpecError, a ValueError, as the API's other
    argument checks (a bare KtError escaped `except ValueError` around kt.fit_model)."""
    from kt.errors import SpecError

    path = Path(path)
    if path.suffix.lower() != suffix:
        raise SpecError(field, f"{str(path)!r} must end in {suffix}; {why}")
    return path


def check_not_input(path: str | os.PathLike, inputs, field: str, what: str) -> None:
    """Refuse, naming `field`, an output that is one of the command's input files (`what` names them): it would
    be replaced by the output before anything else could read it (`kt import inductor log --out log`). A
    SpecError, as `check_suffix`'s."""
    from kt.errors import SpecError

    path = Path(path)
    if not path.exists():
        return
    for given in inputs:
        if Path(given).exists() and path.samefile(given):
            raise SpecError(field, f"{str(path)!r} is {what} itself; give another file")


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path`, which is there, is no regular file kt may replace (after symbolic links), or None."""
    path = Path(path)
    if not path.exists() or path.is_file() or path.is_dir():  # a folder: the callers' own words
        return None
    return "is not a regular file (a device, a pipe or a socket)"


def is_sqlite(path: str | os.PathLike) -> bool:
    """Whether `path` is a file that starts as every SQLite database does."""
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def existing_parent(path: str | os.PathLike) -> Path:
    """The nearest path above `path` that exists: a folder, or a file where one should be."""
    return next(parent for parent in Path(path).absolute().parents if parent.exists())


# Filesystems shared between hosts (or between a VM and its host), by their type in /proc/self/mountinfo. SQLite's
# write-ahead log works only among processes of one host ("WAL does not work over a network filesystem",
# sqlite.org/wal.html), and its -shm index needs shared memory that some of them lack (GPFS and Lustre fail it
# with "locking protocol", 9p and vboxsf refuse MAP_SHARED).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "afs",
        "panfs", "wekafs", "gfs2", "ocfs2", "9p", "vboxsf", "davfs", "fuse.sshfs", "fuse.glusterfs",
        "fuse.ceph-fuse", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.beegfs",
    }
)  # fmt: skip


def mount_type(path: str | os.PathLike, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem that holds `path` (a path yet to be made: the folder it would be made in), as
    /proc/self/mountinfo lists it (`nfs4`, `ext4`, ...): the mount at the longest prefix of its real path, the
    last one listed there where mounts are stacked. None where that file cannot be read (not Linux)."""
    real = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    found, longest = None, -1
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:] or len(fields) < 5:
            continue
        # mount points escape a space, tab, newline and backslash as octal: \040, \011, \012, \134
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:
            found, longest = fields[fields.index("-", 6) + 1], len(point)
    return found


def network_filesystem(path: str | os.PathLike) -> str | None:
    """The type of the filesystem holding `path` where it is one shared between hosts (NETWORK_FILESYSTEMS:
    NFS, SMB, Lustre, GPFS, ...), else None."""
    kind = mount_type(path)
    return kind if kind in NETWORK_FILESYSTEMS else None


def link_target(path: str | os.PathLike) -> Path | None:
    """Where the symbolic link `path` leads at last, or None where links go round in a loop. realpath stops at a
    link of the loop on every Python; Path.resolve raised on one before 3.13, and from 3.13 returns it."""
    real = Path(os.path.realpath(path))
    return None if real.is_symlink() else real


def unmakeable(path: str | os.PathLike) -> str | None:
    """Why nothing can be made at `path`, in words, or None: its nearest existing folder is a file, or takes no
    new entry (a probe file is made and removed there: read-only places, /proc, ...)."""
    where = existing_parent(path)
    if not where.is_dir():
        return f"{str(where)!r} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(dir=where, prefix=".kt-probe-")
    except OSError as exc:
        return f"nothing can be made in {str(where)!r} ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return None


def make_folder(path: str | os.PathLike, field: str) -> Path:
    """The folder the user named, made with its parents, or a KtError naming `field` and why it cannot be."""
    from kt.errors import KtError

    path = Path(path)
    if path.exists() and not path.is_dir():  # /dev/null said "cannot be made (File exists)"
        raise KtError(f"{field}: {str(path)!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KtError(f"{field}: the folder {str(path)!r} cannot be made ({exc.strerror or exc})") from None
    return path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unwritable(path: Path) -> tuple[int, str] | None:
    """(errno, why) where `path`, an existing file, cannot be written by this user; None where it can (or is
    not there)."""
    if not path.exists() or os.access(path, os.W_OK):
        return None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return errno.EROFS, "the file is on a read-only file system; give another path"
    return errno.EACCES, "the file is read-only (chmod u+w it, or give another path)"


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[Any]], Any],
    binary: bool = False,
    make_parent: bool = True,
    sync: bool = False,
) -> Any:
    """Call `write(handle)` on a temporary file beside `path`, then rename it over `path`; returns what `write`
    returned. The file gets the user's umask (a new file's usual mode, not mkstemp's 0600). On any error the
    temporary file is removed and `path` is untouched. `sync` flushes to disk before the rename (a model).
    A symbolic link is written through (its target is replaced, the link stays); a path that is there but is no
    regular file (a device such as /dev/null, a pipe) is refused: the rename would put a file in its place."""
    path = Path(os.path.realpath(path))
    if why := not_a_file(path):
        raise OSError(errno.EINVAL, f"{why}; give a file path", str(path))
    mode, owner = 0o666 & ~umask(), None
    try:  # a file replaced as an editor saves it: refused where it could not be written, its mode and owner kept
        info = path.stat()
    except FileNotFoundError:
        pass
    else:
        mode, owner = stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
        if why := _unwritable(path):
            raise PermissionError(*why, str(path))
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    except OSError as exc:  # named by the file the user gave, not by the temporary one beside it
        raise OSError(
            exc.errno,
            f"{exc.strerror or exc} (nothing can be written in its folder, {path.parent})",
            str(path),
        ) from None
    try:
        # UTF-8 whatever the locale: kt reads its files as UTF-8 (an export under LC_ALL=C raised
        # UnicodeEncodeError on a non-ASCII message; under Latin-1 it wrote a file kt refused)
        text_mode = {} if binary else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, "wb" if binary else "w", **text_mode) as handle:
            result = write(handle)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            # a shared file keeps its owner and group (root, or a member of the group, may give them back): it
            # came back the writer's, and its group could no longer write it
            with contextlib.suppress(OSError):
                os.chown(tmp, *owner)
        os.chmod(tmp, mode)  # after chown, which clears setuid and setgid bits
        os.replace(tmp, path)
        _sweep_temporaries(path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # ENOSPC while writing: named by the user's file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


STALE_TEMPORARY_S = 3600.0  # a temporary file this old beside its file is a dead writer's (a kill -9)
_SWEPT: set[Path] = set()  # the folders where this process looked for dead writers' temporaries


# bytes of a file's name its temporary file keeps: with the dot, mkstemp's eight characters and `.tmp` (14 bytes)
# a name of 242 to 255 bytes, which the file system takes, made a temporary name it refused, and the write
# failed after the work was done ("File name too long (nothing can be written in its folder)")
TEMPORARY_NAME_BYTES = 200


def _temporary_prefix(path: Path) -> str:
    """`.<name>.`, the name cut to TEMPORARY_NAME_BYTES (whole characters) where it is longer."""
    name = path.name
    while len(os.fsencode(name)) > TEMPORARY_NAME_BYTES:
        name = name[:-1]
    return f".{name}."


def _sweep_temporaries(path: Path) -> None:
    """Remove the temporary files that writers of `path` killed mid-write left beside it (mkstemp's names:
    `.<name>.` and eight characters, `.tmp`), once an hour old: each stayed for good (60 MB for a model
    cache's pickle). A live writer's is minutes old at most; one of another file's name is never matched. Once
    per folder and process: the first file written there (a model cache's pickle, an export) is swept."""
    if path.parent in _SWEPT:  # once per folder and process: a scan of a kernel cache's thousands of files on
        return  # every write made each write sixty times slower
    _SWEPT.add(path.parent)
    pattern = re.compile(rf"{re.escape(_temporary_prefix(path))}[a-z0-9_]{{8}}\.tmp")
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                if pattern.fullmatch(entry.name):
                    try:
                        if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY_S:
                            os.unlink(entry.path)
                    except OSError:  # gone already (another sweep), or not ours to remove
                        continue
    except OSError:  # the file is written; what is left of others' is no error of this write
        return


def atomic_write_text(path: str | os.PathLike, text: str, make_parent: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(text), make_parent=make_parent)


def csv_records(text: str, where: str, error: type[Exception]) -> Iterator[tuple[str, dict[str, str]]]:
    """The rows of CSV `text` (a file kt wrote, whose every row ends with a line break), each with where it
    is (`where` and its line). A row with fewer or more cells than the header, or a last row without its
    line break, is a cut-off or damaged file: refused as an `error` naming the line, not read as a row whose
    missing cells are empty."""
    if text and not text.endswith("\n"):
        raise error(
            f"{where} line {text.count(chr(10)) + 1}: the file ends without a line break, so its last row may "
            "be cut off (kt ends every row with one); write it again, or end the line if the row is whole"
        )
    # a cell may be as long as kt writes it: csv's 131,072 characters refused the layout of a block-sparse W that
    # `kt export` wrote (16384 square in 16x16 blocks: 262,144), whole, and a long message
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    # a row is named by the line it starts on, lines counted by \n as editors and grep -n count them: csv's
    # line_num is a row's last line, and it counted a lone \r in a cell (which kt export writes as it is) as one
    lines_read = 0

    def lines():
        nonlocal lines_read
        for line in io.StringIO(text, newline="\n"):  # split at \n only, nothing translated
            lines_read += 1
            yield line

    reader = csv.DictReader(lines())
    try:
        _ = reader.fieldnames  # the header, read now: each row's start is then the line after those read
    except csv.Error as exc:
        raise error(f"{where} line 1: not valid CSV ({exc})") from None
    while True:
        start = lines_read + 1
        try:
            raw = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise error(f"{where} line {start}: not valid CSV ({exc})") from None
        at = f"{where} line {start}"
        if None in raw or None in raw.values():  # DictReader's marks of extra and of missing cells
            cells = len(reader.fieldnames) + len(raw.get(None, ())) - list(raw.values()).count(None)
            raise error(
                f"{at}: {cells} cells, the header has {len(reader.fieldnames)}: a cut-off or damaged row"
            )
        yield at, raw
