"""Artifacts: a tuned kernel as a directory with `kernel.py` (needs only torch and triton) and `meta.json`.

Saving is atomic: everything is written into a temporary sibling directory, which then replaces the target
in one rename, so a crash leaves the old artifact or the new one, never half of one. Where the file system
cannot exchange two folders in one step (NFS, an old glibc), the exchange is three renames: a save killed
between them leaves the old artifact in a hidden folder beside it, which the next save of it puts back. `meta.json` records the
SHA-256 of `kernel.py`; loading refuses a kernel.py that no longer matches.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kt.autotune.versions import software_versions
from kt.costmodel.prediction import model_noun
from kt.errors import ArtifactError, KtError, counted, one_line
from kt.files import link_target, umask, unmakeable

if TYPE_CHECKING:
    from kt.kernel import Kernel

FORMAT = 1


def save_artifact(result, path: str | os.PathLike) -> Path:
    """Write `result`'s best kernel and its record to the directory `path` (replacing what was there; see
    `save_artifact_report`)."""
    return save_artifact_report(result, path)[0]


PREVIOUS_SUFFIX = ".prev"
KERNELS = ("generated", "pytorch")  # meta.json's kernel: what kernel.py runs
KEPT = ".kt-kept"  # in a `<name>.prev/` that kt made: what it may replace with a newer previous artifact


def _artifact_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise ArtifactError(
            f"path: expected an artifact folder's path (a str or os.PathLike), got {type(path).__name__}"
        )
    if not os.fspath(path):  # Path("") is the working folder
        raise ArtifactError("expected an artifact folder's path, got an empty one")
    return Path(path)


def previous_path(path: str | os.PathLike) -> Path:
    """Where the artifact that a save to `path` replaces is kept: `<path>.prev`."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def save_artifact_report(result, path: str | os.PathLike) -> tuple[Path, str | None]:
    """`save_artifact`, and what became of an artifact already at `path` (None when there was none): when its
    spec, kernel, config, target, objective or power cap differ from the new one's, it is kept as
    `<path>.prev/` (replacing an older one); else it is replaced."""
    try:
        return _save_report(result, path)
    except OSError as exc:
        _too_long(Path(path), exc)
        raise


def _save_report(result, path: str | os.PathLike) -> tuple[Path, str | None]:
    from kt.codegen import family_for  # torch and triton: reading an artifact's meta.json needs neither
    from kt.codegen.baseline import render_baseline

    path = _artifact_path(path)
    if path.name in ("", ".."):  # ".", "/" or "x/..": pathlib could not name its `.prev` (a bare ValueError)
        raise ArtifactError(
            f"{str(path)!r} names no artifact folder of its own; give the folder to save into"
        )
    real = _followed(path)
    for named in dict.fromkeys((path, real)):
        if named.name.endswith(PREVIOUS_SUFFIX):  # as kt tune refuses a spec's name ending so
            raise ArtifactError(
                f"{named}: a folder named '*{PREVIOUS_SUFFIX}' is where kt keeps the artifact that a new one at "
                f"{named.with_name(named.name[: -len(PREVIOUS_SUFFIX)])} replaces; save to another path"
            )
    spec, problem, best = result.spec, result.problem, result.best
    family = family_for(problem)
    if best.pytorch:
        ratio = result.baseline_ratio
        versus = f" ({1 / ratio:.2f}x the best generated kernel's speed)" if ratio else ""
        provenance = (
            f"PyTorch's own path: no generated kernel of {len(result.rows)} measured on {result.ran_on} beat it"
            f"{versus}, so this module calls PyTorch ({best.runtime_ms:.4f} ms)"
        )
    elif best.measured:
        provenance = (
            f"the best {result.ranked_by} of {counted(len(result.rows), 'config')} measured "
            f"on {result.ran_on}, {best.runtime_ms:.4f} ms"
        )
    else:
        provenance = (
            f"not measured; the best prediction of {model_noun(result.plan.model)} among "
            f"{counted(len(result.rows), 'config')} checked in Triton's interpreter"
        )
    render = render_baseline if best.pytorch else partial(family.render, config=best.config)
    source = render(
        problem,
        name=spec.name,
        device=result.target.name,
        kt_version=software_versions()["kt"],
        provenance=provenance,
    )
    row = best.row
    meta: dict[str, Any] = {
        "format": FORMAT,
        "name": spec.name,
        "op": spec.op,
        "spec": spec.to_dict(),
        "family": family.name,
        "family_version": family.version,
        "problem": problem.to_dict(),
        "config": best.config.to_dict() if best.config else None,  # the best generated config
        "kernel": "pytorch" if best.pytorch else "generated",  # what kernel.py runs
        "baseline": _baseline_meta(result),
        "objective": result.objective,
        "measured": best.measured,
        "runtime_ms": best.runtime_ms,
        "power_w": best.power_w,
        "energy_mj": best.energy_mj,
        "runtime_stats": {
            k: row.get(k) for k in ("runtime_min_ms", "runtime_p20_ms", "runtime_p80_ms", "runs")
        }
        if best.measured
        else None,
        "sm_clock_mhz": row.get("sm_clock_mhz"),
        "temperature_c": row.get("temperature_c"),
        "prediction": {
            "model": result.best_model,
            "runtime_ms": best.predicted_ms,
            "device": result.target.name,
        },
        # key: the profile's, as the rows' target column (a calibrated profile's name plus a hash of its fields)
        "device": {
            "target": result.target.name,
            "key": result.target.key,
            "ran_on": result.ran_on,
            "runner": result.runner,
        },
        "checked": {
            "rel_err": row.get("rel_err"),
            "problems": row.get("checked_problems") or [problem.to_dict()],
            "smem_bytes": row.get("smem_bytes"),
        },
        "tuning": {
            "space": result.plan.space.total,
            "legal": len(result.plan.space.legal),
            # configs run for this problem, earlier runs' included (each checked against float64 unless it
            # failed first: statuses below), and those of them with a GPU runtime (none without a GPU)
            "checked": len(result.rows),
            "timed": sum(1 for r in result.rows if r.get("runtime_ms") is not None),
            "budget": result.plan.budget,  # the one the search spent (--budget overrides the spec's tune.budget)
            "strategy": result.plan.strategy,
            "seed": result.seed,  # --seed, else the spec's: a random search's picks follow it
            "first_model": result.plan.model,
            # this run's own search: the configs it ran, its rounds and the models that ranked them, round by
            # round (a rerun whose budget earlier runs' rows already cover runs none: 0, 0 and [])
            "new": result.newly_measured,
            "models": list(dict.fromkeys(result.trace.models)),
            "rounds": max(result.trace.rounds, default=-1) + 1,
            "objective": result.objective,
            "power_cap_w": result.plan.power_cap_w,
            "statuses": dict(result.statuses()),
            "wall_s": round(result.wall_s, 2),
            "db": str(Path(result.db_path).resolve()),  # absolute: `kt inspect` may run from elsewhere
        },
        "notes": result.notes,
        "software": software_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kernel_sha256": hashlib.sha256(source.encode()).hexdigest(),
    }
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        check_target(real, "save to another path")  # says why in one line
        raise
    # another save of this artifact (two `kt tune` of one op into one --out) waits until this one is done: a
    # save between this one's exchange and its rename saw a half-made `.prev`, or renamed onto it, and failed
    with _locked(real) as held:
        check_target(real, "save to another path")
        if held:
            _sweep(real)
        try:
            with _signals_held():
                return path, _swap_in(real, source, meta)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):  # named by the artifact
                raise ArtifactError(f"{path} cannot be written ({exc.strerror})") from None
            raise


def _too_long(path: Path, exc: OSError) -> None:
    """A name the file system cannot hold, in one line (it was OSError's "File name too long", naming the
    hidden staging folder, which adds 14 characters to the artifact's name)."""
    if exc.errno == errno.ENAMETOOLONG:
        shown = repr(str(path)[:80]) + ("..." if len(str(path)) > 80 else "")
        raise ArtifactError(
            f"{shown}: a name in it is too long for the file system (a save writes the artifact first into "
            ".NAME.tmp-XXXXXXXX beside it, 14 characters more); save to a shorter path"
        ) from None


def _sweep(path: Path) -> None:
    """Remove the hidden staging folders of saves of `path` that were killed (`kill -9`, a lost machine): saves
    of one artifact take turns (`_locked`), so while this one holds the lock any such folder is a dead save's.

    Where `_exchange` had to rename three times (no renameat2: NFS, an old glibc), a save killed after its
    first rename left the artifact (or its `.prev`) only in the exchange's aside folder, `.NAME.old-*/NAME`:
    it is put back in its place, not removed with the folder (the old artifact was lost, and the next save
    reported none there)."""
    previous = previous_path(path)
    asides = {f".{target.name}.old-": target for target in (path, previous)}
    prefixes = (f".{path.name}.tmp-", *asides)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if not (entry.name.startswith(prefixes) and entry.is_dir(follow_symlinks=False)):
                continue
            target = next((t for prefix, t in asides.items() if entry.name.startswith(prefix)), None)
            if target is not None and not os.path.lexists(target):
                with contextlib.suppress(OSError):
                    os.replace(os.path.join(entry.path, target.name), target)
            elif target is None or target == path:
                # killed after its exchange (or the fallback's second rename), before `_keep`: the folder holds
                # the artifact the one at `path` replaced, which was owed as `.prev`, and was removed
                _keep_replaced(Path(entry.path) if target is None else Path(entry.path) / path.name, path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _keep_replaced(aside: Path, path: Path) -> None:
    """Keep `aside`, a dead save's folder, as `path`'s `.prev` where it holds the artifact that the one at `path`
    replaced: an artifact (kernel.py and meta.json) written before the one at `path` (a save writes its new
    artifact last: a folder written after it is a new artifact never swapped in) that differs from it as a save
    keeps one."""
    try:
        new = json.loads((path / "meta.json").read_text())
        older = (aside / "meta.json").stat().st_mtime_ns < (path / "meta.json").stat().st_mtime_ns
        whole = (aside / "kernel.py").is_file()
    except (OSError, ValueError, RecursionError):
        return
    changed = _changes(aside / "meta.json", new) if isinstance(new, dict) and older and whole else ""
    if changed and changed != "its meta.json was unreadable":
        with contextlib.suppress(OSError):
            _write(aside / KEPT, f"the artifact {path.name} that a later save replaced ({changed})\n")
            _keep(aside, previous_path(path))


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C, SIGTERM and SIGHUP held for the milliseconds a save writes and swaps its folders (in the main thread: no
    other may set a handler), then raised as it ends: one that landed in the clean-up left the staging folder
    beside the artifact (`.NAME.tmp-*`, swept only by a later save of the same name)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    # not one whose handler was set outside Python (getsignal None): it could not be put back
    held = [
        signum
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) not in (None, signal.SIG_IGN)
    ]
    before = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])  # as it would have landed: its handler raises, or the default acts


def _swap_in(path: Path, source: str, meta: dict[str, Any]) -> str | None:
    """Write the artifact into a staging folder beside `path` and swap it in (the old one kept as `.prev` when
    it differs); what became of the old one, in words, or None when there was none."""
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    report = None
    text = json.dumps(meta, indent=2) + "\n"
    changed = ""
    kept = False
    try:
        # mkdtemp makes 0700; an artifact is as readable as any other new directory
        os.chmod(staging, 0o777 & ~umask())
        _write(staging / "kernel.py", source)
        _write(staging / "meta.json", text)
        # an empty folder (made beforehand, as check_target allows) holds no artifact: it was exchanged, said to
        # be one whose meta.json was unreadable, and kept as an empty .prev
        if not path.exists() or (path.is_dir() and not path.is_symlink() and not any(path.iterdir())):
            try:
                os.replace(staging, path)
            except OSError as exc:  # another save made it since: this one replaces that one
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not path.is_dir():
                    raise
            else:
                return None
        if path.exists():
            changed = _changes(path / "meta.json", meta)
            _exchange(staging, path)  # staging now holds the old artifact: kept, or removed below
            if changed:
                previous = previous_path(path)  # check_target: absent, or one kt kept
                unmarked = None
                try:
                    _write(
                        staging / KEPT, f"the artifact {path.name} that a later save replaced ({changed})\n"
                    )
                except OSError as exc:
                    # (a full disk) the new artifact is in place and the old one is kept all the same: the save
                    # said the artifact "cannot be written"
                    unmarked = exc.strerror or str(exc)
                _keep(staging, previous)
                kept = True
                report = f"replaced the artifact there ({changed}); the previous one is kept as {previous}"
                if unmarked:
                    # (a later save still knows it for one kt kept: it is the same op's, `kept_artifact`)
                    report += f", without its note {KEPT} ({unmarked})"
            else:
                report = "replaced the artifact there (same spec, kernel, config, target and objective)"
    finally:
        if changed and not kept and _holds_another(staging, text):
            # stopped (Ctrl-C, SIGTERM) between the exchange and the rename, or its note not written (a full
            # disk): staging holds the old artifact, which the user was promised as <name>.prev, not its removal
            # (kept without its note where that cannot be written: a later save knows it by its op's name)
            with contextlib.suppress(OSError):
                _write(staging / KEPT, f"the artifact {path.name} that a later save replaced ({changed})\n")
            with contextlib.suppress(OSError):
                _keep(staging, previous_path(path))
        shutil.rmtree(staging, ignore_errors=True)  # (after `_keep`: the older `.prev`, exchanged out)
    return report


def _keep(staging: Path, previous: Path) -> None:
    """Make `staging` (the replaced artifact, marked KEPT) `previous` in one step: an older kept artifact there is
    exchanged into `staging`, which the caller removes. Removing it first, in place, and being killed meanwhile
    left a half-removed `.prev` (no KEPT file) that every later save refused as a folder kt did not keep."""
    if previous.is_dir() and not previous.is_symlink():
        _exchange(staging, previous)
    else:
        os.replace(staging, previous)


def _holds_another(staging: Path, text: str) -> bool:
    """Whether the staging folder holds an artifact other than the one being saved (whose meta.json is `text`):
    the old one, after the exchange."""
    try:
        return (staging / "meta.json").read_text() != text
    except OSError:
        return False


def _changes(old_meta: Path, meta: dict[str, Any]) -> str:
    """What differs between the artifact recorded in `old_meta` and `meta`: "" when nothing that matters."""
    try:
        old = json.loads(old_meta.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        old = None
    if not isinstance(old, dict):
        return "its meta.json was unreadable"
    changed = [what for what in ("spec", "kernel", "config") if old.get(what) != meta.get(what)]
    if _target(old) != _target(meta):  # `--device` tunes one spec for another GPU
        changed.append("target")
    tuning = old.get("tuning") if isinstance(old.get("tuning"), dict) else {}  # a hand edit: differs
    for what in ("objective", "power_cap_w"):  # `--objective`, `--power-cap`: the spec's own stays as it was
        if tuning.get(what) != meta["tuning"].get(what):
            changed.append(what.removesuffix("_w").replace("_", " "))
    if not changed:
        return ""
    return f"{' and '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}"


def _target(meta: dict[str, Any]) -> Any:
    """The device profile an artifact was tuned for: its key (artifacts before it was recorded: the name)."""
    device = meta.get("device")
    return (device.get("key") or device.get("target")) if isinstance(device, dict) else None


def _baseline_meta(result) -> dict[str, Any] | None:
    """Candidate zero in meta.json: PyTorch's own path, how it fared, and kt's ratio to it."""
    row = result.baseline
    if row is None:
        return None
    return {
        "impl": row.get("impl") or result.baseline_impl,
        "status": row["status"],
        "message": row.get("message"),
        "timed": row.get("runtime_ms") is not None,
        "runtime_ms": row.get("runtime_ms"),
        "power_w": row.get("power_w"),
        "energy_mj": row.get("energy_mj"),
        "rel_err": row.get("rel_err"),
        "ratio": result.baseline_ratio,  # PyTorch's measured objective over the best generated kernel's
    }


def check_target(path: str | os.PathLike, instead: str = "choose another --out") -> None:
    """Refuse, before any work, a destination that is a file, a directory kt did not write, or a place where no
    folder can be made. `instead`: what the message tells the user to do (kt tune's flag; `save`'s path). A
    symbolic link is followed: the folder it leads to is checked, as a save writes there."""
    path = _followed(Path(path), instead)
    # a save of this artifact running now is waited for: between its exchange and its rename, its `.prev` is
    # half made and read as a folder kt did not keep
    with _locked(path) if path.parent.is_dir() else contextlib.nullcontext():
        _check_target(path, instead)


def _check_target(path: Path, instead: str) -> None:
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} exists and is a file, not an artifact directory; {instead}")
    if path.is_dir() and not (path / "meta.json").exists() and any(path.iterdir()):
        raise ArtifactError(f"{path} exists and is not a kt artifact; {instead}")
    if why := unmakeable(path):
        raise ArtifactError(f"{path} cannot be created: {why}; {instead}")
    if (path / "meta.json").exists() and not os.access(path, os.W_OK | os.X_OK):
        # the new artifact would take its place, and then the old one could not be marked as kept (it was left
        # in a hidden staging folder, and the save failed after the replacement)
        raise ArtifactError(
            f"{path} is a read-only folder, so the artifact there cannot be replaced; make it writable "
            f"(chmod u+w {path}) or {instead}"
        )
    previous = previous_path(path)
    if path.is_dir() and (previous.exists() or previous.is_symlink()) and not kept_artifact(previous):
        if previous.is_symlink():  # kt never makes one: replacing it would replace the folder it leads to
            what = f"a symbolic link (to {os.readlink(previous)})"
        else:
            what = "a folder kt did not keep there" if previous.is_dir() else "a file"
        raise ArtifactError(
            f"{previous} is where kt keeps the artifact that a new one at {path} replaces, but it is {what}; "
            f"move it, or {instead}"
        )


def _followed(path: Path, instead: str = "save to another path") -> Path:
    """Where a save to `path` writes: `path`, or the folder the symbolic link `path` leads to (the link stays and
    shows the new artifact, and the replaced one is kept as `.prev` beside that folder). Replacing the link
    itself left it a plain folder, a stray link in a staging name, and `.kt-kept` in the folder it led to."""
    if not path.is_symlink():
        return path
    real = link_target(path)
    if real is None:
        raise ArtifactError(f"{path} is a symbolic link that leads round in a loop; remove it, or {instead}")
    return real


_HELD = threading.local()  # the artifact locks this thread holds: a save's own check_target takes its lock


@contextlib.contextmanager
def _locked(path: Path):
    """Hold the lock of the artifact at `path` (flock on `<parent>/.<name>.lock`, removed when released): one save
    or check of one artifact at a time, across processes and threads. Where no lock file can be made (a read-only
    folder, where no save can write either) or the file system has no flock, it goes on unlocked. Yields whether
    this call took the lock (not where this thread held it already)."""
    lock = path.with_name(f".{path.name}.lock")
    held = _HELD.__dict__.setdefault("locks", set())
    key = os.path.abspath(lock)
    handle = None if key in held else _acquire(lock)
    if handle is None:  # held already by this thread (an outer save's, whose staging folder is live), or no
        yield False  # lock to be had: not this call's to say that no other save is under way
        return
    held.add(key)
    try:
        yield True
    finally:
        held.discard(key)
        # removed while still held: a save waiting on this file then finds it gone and locks a new one
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(handle)


def _acquire(lock: Path) -> int | None:
    """A descriptor of `lock` holding its exclusive flock, or None where it cannot be had."""
    while True:
        try:
            handle = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            opened, named = os.fstat(handle), os.stat(lock)
            if (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino):
                return handle
        except FileNotFoundError:  # its holder removed it as it let go: lock the one there now
            pass
        except OSError:  # no flock on this file system
            os.close(handle)
            return None
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)  # the file was replaced while this one waited: lock the one there now


def kept_artifact(folder: str | os.PathLike) -> bool:
    """Whether `folder` is an artifact kt kept as `<name>.prev` when a save replaced it, so a later save may
    replace it and kt.nn's lookup skips it: it holds KEPT, or (kept before kt wrote KEPT) it is an artifact of
    the op whose artifact is `<name>` beside it."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / KEPT).is_file():
        return True
    if not folder.name.endswith(PREVIOUS_SUFFIX):
        return False
    names = []
    for meta in (
        folder / "meta.json",
        folder.with_name(folder.name.removesuffix(PREVIOUS_SUFFIX)) / "meta.json",
    ):
        try:
            names.append(json.loads(meta.read_text()).get("name"))
        except (OSError, ValueError, AttributeError):
            return False
    return names[0] is not None and names[0] == names[1]


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE): readers see one or the other.

    Where the kernel or libc cannot, fall back to three renames through an aside folder, which leave a moment
    with neither (`_sweep` puts a killed save's old artifact back)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    except (OSError, AttributeError):
        pass
    aside = Path(tempfile.mkdtemp(dir=b.parent, prefix=f".{b.name}.old-")) / b.name
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)
    aside.parent.rmdir()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:  # as it is read, whatever the locale
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    return _read(path)[0]


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """meta.json (checked) and kernel.py's bytes, both from one version of the artifact.

    A new artifact replaces an old one by exchanging the two folders (`_exchange`): files read by path one after
    the other could come from either side (a loader then saw a checksum mismatch, or a config of one version
    with the kernel of the other). Read through the folder's descriptor, both come from the folder opened.
    """
    path = _artifact_path(path)
    if path.is_file() and path.name in ("meta.json", "kernel.py"):
        raise ArtifactError(f"{path} is a file of an artifact; give the artifact's folder, {path.parent}")
    if not path.is_dir():
        raise ArtifactError(
            f"artifact {str(path)!r} not found" if not path.exists() else f"{path} is not a directory"
        )
    files = _read_files(path)
    try:
        meta = json.loads(files["meta.json"].decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path / 'meta.json'} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path / 'meta.json'} is not a JSON object (it is a {type(meta).__name__})")
    if type(meta.get("format")) is not int or meta["format"] != FORMAT:  # true and 1.0 passed for 1
        raise ArtifactError(
            f"{path / 'meta.json'} has format {meta.get('format')!r}; this kt reads format {FORMAT}"
        )
    _check_meta(meta, f"{path / 'meta.json'} is damaged")
    return meta, files["kernel.py"]


def _check_meta(meta: dict[str, Any], damaged: str) -> None:
    """The fields every reader of meta.json goes by, each refused by name when a hand edit broke it (a family
    of another name or a device of null came out as Python's KeyError or TypeError text; "measured": "yes"
    passed as true)."""
    from kt.axes import CONFIG_FIELDS as FAMILIES  # the family names, without kt.codegen's torch

    for key in ("family", "measured", "device", "problem"):
        if key not in meta:
            raise ArtifactError(f"{damaged}: it has no {key!r}")
    family = meta.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ArtifactError(f"{damaged}: family {family!r} is not one of {', '.join(FAMILIES)}")
    if not isinstance(meta.get("measured"), bool):
        raise ArtifactError(f"{damaged}: measured must be true or false, got {meta.get('measured')!r}")
    device = meta.get("device")
    if not isinstance(device, dict) or not all(isinstance(device.get(k), str) for k in ("target", "ran_on")):
        raise ArtifactError(
            f"{damaged}: device must be a mapping whose target and ran_on are strings, got {device!r}"
        )
    if not isinstance(meta.get("problem"), dict):
        raise ArtifactError(f"{damaged}: problem must be a mapping, got {meta.get('problem')!r}")
    if meta.get("kernel", "generated") not in KERNELS:  # absent from the first artifacts kt wrote
        raise ArtifactError(f"{damaged}: kernel must be one of {', '.join(KERNELS)}, got {meta['kernel']!r}")
    tuning = meta.get("tuning", {})  # an artifact's own tune (where its rows are: kt inspect)
    if not isinstance(tuning, dict):
        raise ArtifactError(f"{damaged}: tuning must be a mapping, got {tuning!r}")
    if not isinstance(tuning.get("db", ""), str):
        raise ArtifactError(f"{damaged}: tuning.db must be the database's path, got {tuning['db']!r}")


def _check_built_for(meta: dict[str, Any], spec, module, damaged: str) -> None:
    """meta.json's spec and problem are what kernel.py was built for: its dtype and transpose, and the problem
    the spec makes (kt.nn picks an artifact by its problem; an edited one picked a kernel of another shape)."""
    import torch

    from kt.ir import op_from_spec
    from kt.spec import PRECISIONS

    built = getattr(module, "DTYPE", None)
    if isinstance(built, torch.dtype) and built != getattr(torch, spec.dtype, None):
        raise ArtifactError(
            f"{damaged}: its spec's dtype is {spec.dtype}, but kernel.py was built for {str(built).removeprefix('torch.')}; "
            "re-run `kt tune`, or load with verify=False to use it as it is"
        )
    # a Monarch or butterfly kernel multiplies by M or by its transpose: a meta.json whose spec and problem
    # both said the other ran this kernel for it (relative error 1.35, and kt.nn took it for a backward's dx)
    built = getattr(module, "TRANSPOSED", None)
    if isinstance(built, bool) and built != bool(getattr(spec, "transposed", False)):
        raise ArtifactError(
            f"{damaged}: its spec's transposed is {bool(getattr(spec, 'transposed', False))}, but kernel.py was "
            f"built with transposed {built}; re-run `kt tune`, or load with verify=False to use it as it is"
        )
    # float32's products (tf32 or ieee) are baked into kernel.py's tl.dot calls: a meta.json edited to the
    # other precision made a Kernel that said ieee and ran TF32. The generated module says them in its first
    # line ("float32 (tf32 products)"), PyTorch's path in PRECISION.
    built = getattr(module, "PRECISION", None)
    if built is None:
        said = re.search(r"\((\w+) products\)\.?$", (module.__doc__ or "").partition("\n")[0])
        built = said and said.group(1)
    if spec.dtype == "float32" and built in PRECISIONS and built != spec.precision:
        raise ArtifactError(
            f"{damaged}: its spec's precision is {spec.precision}, but kernel.py was built for {built}; re-run "
            "`kt tune`, or load with verify=False to use it as it is"
        )
    try:
        (node,) = op_from_spec(spec).kernel_graph().kernels
    except (KtError, ValueError, TypeError, OSError):  # a pattern file on another machine: nothing to compare
        return
    made, said = json.loads(json.dumps(node.problem.to_dict())), meta["problem"]
    if made != said:
        differ = "; ".join(
            f"{key} {said.get(key)!r} where its spec makes {made.get(key)!r}"
            for key in sorted(set(made) | set(said), key=str)
            if made.get(key) != said.get(key)
        )
        raise ArtifactError(
            f"{damaged}: its problem is not the one its spec makes ({differ}); re-run `kt tune`, or load with "
            "verify=False to use it as it is"
        )


def _read_files(path: Path, tries: int = 5) -> dict[str, bytes]:
    """kernel.py and meta.json read through one descriptor of the folder. A save that replaces the artifact
    removes the old folder right after the exchange: a reader that opened it just before finds its files gone
    (the folder at `path` is then another one), and reads the new one instead."""
    for attempt in range(tries):
        try:
            folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            # another user's folder (mode 0700): a bare PermissionError, and kt.nn did not skip it
            raise ArtifactError(f"artifact {path} cannot be read ({exc.strerror})") from None
        try:
            files = {}
            for name in ("kernel.py", "meta.json"):
                try:
                    with open(
                        name, "rb", opener=lambda n, flags, fd=folder: os.open(n, flags, dir_fd=fd)
                    ) as handle:
                        files[name] = handle.read()
                except (FileNotFoundError, IsADirectoryError):
                    if attempt + 1 < tries and _replaced(path, folder):
                        break
                    other = "kernel.py" if name == "meta.json" else "meta.json"
                    # with the other file there, it is kt's artifact missing one (a copy or a removal cut short)
                    why = (
                        "a copy or a removal cut it short; re-run `kt tune` to write it again"
                        if os.path.exists(os.path.join(path, other))
                        else "it was not written by `kt tune`"
                    )
                    raise ArtifactError(f"artifact {path} has no {name}; {why}") from None
                except OSError as exc:
                    # unreadable, a link to itself: it named 'kernel.py' alone, no artifact
                    raise ArtifactError(f"{path / name} cannot be read ({exc.strerror})") from None
            else:
                return files
        finally:
            os.close(folder)
    raise AssertionError("unreachable: the last try returns or raises")


def _replaced(path: Path, folder: int) -> bool:
    """Whether `path` now names another folder than the descriptor `folder` opened."""
    try:
        now, opened = os.stat(path), os.fstat(folder)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def load_artifact(path: str | os.PathLike, verify: bool = True) -> Kernel:
    """The artifact's kernel as a callable; `verify=False` accepts a hand-edited kernel.py."""
    from kt.codegen import config_from_dict, import_kernel_file, load_source
    from kt.kernel import Kernel
    from kt.spec import parse_spec

    path = _artifact_path(path)
    meta, source = _read(path)
    if verify and "kernel_sha256" not in meta:  # no checksum for kernel.py to differ from
        raise ArtifactError(
            f"{path / 'meta.json'} is damaged: it has no 'kernel_sha256' to check kernel.py by; re-run `kt tune`, "
            "or load with verify=False to use it as it is"
        )
    if verify and hashlib.sha256(source).hexdigest() != meta["kernel_sha256"]:
        raise ArtifactError(
            f"{path / 'kernel.py'} does not match the checksum in meta.json (edited or damaged); "
            "re-run `kt tune`, or load with verify=False to use it as it is"
        )
    damaged = f"{path / 'meta.json'} is damaged"
    for key in ("spec", "config"):  # the family: `_read` checked it
        if key not in meta:
            raise ArtifactError(f"{damaged}: it has no {key!r}")
    try:
        spec = parse_spec(meta["spec"], check_files=False)  # its profile file may live on another machine
    except (KtError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{damaged}: spec: {exc}") from None
    if meta["config"] is None:
        config = None  # PyTorch's path (a generated kernel.py without a config is refused once imported)
    else:
        family, data = meta["family"], meta["config"]  # the family checked by `_read`
        if not isinstance(data, dict):
            raise ArtifactError(
                f"{damaged}: config must be a mapping of the {family} config's fields, got {data!r}"
            )
        from kt.axes import CONFIG_FIELDS, missing_fields

        try:
            config = config_from_dict(family, data)
        except (ValueError, TypeError) as exc:
            missing = isinstance(exc, TypeError) and missing_fields(family, list(CONFIG_FIELDS[family]), data)
            if missing:  # not the dataclass's
                raise ArtifactError(f"{damaged}: config: {missing}") from None  # "3 required positional"
            raise ArtifactError(
                f"{damaged}: config: {str(exc).removeprefix('config: ').removeprefix('config.')}"
            ) from None
    try:
        text = source.decode()
    except UnicodeDecodeError:
        raise ArtifactError(f"{path / 'kernel.py'} is not UTF-8 text (edited or damaged)") from None
    # imported from kt's kernel cache, where a file is named by its hash and never changes: the artifact's own
    # kernel.py may be replaced while Triton reads the source it imported
    try:
        try:
            module = load_source(text)
        except OSError:  # no kernel cache to write (a read-only home): the artifact's own file, as it is now
            module = import_kernel_file(path / "kernel.py")
    except SyntaxError as exc:  # named by the artifact's file and line, not by the cache's copy
        line = f", line {exc.lineno}" if exc.lineno else ""  # none for a null byte ("line None")
        raise ArtifactError(
            f"{path / 'kernel.py'}{line}: {exc.msg} (edited or damaged); re-run `kt tune`"
        ) from None
    except Exception as exc:  # its code raised while it was imported (an edit, or a damaged file)
        raise ArtifactError(
            f"{path / 'kernel.py'} failed to import: {one_line(exc)}; re-run `kt tune`"
        ) from None
    # an edit or a cut-off file: its first call failed, naming kt's cache module and not the artifact's file
    if not callable(getattr(module, "kernel", None)):
        raise ArtifactError(
            f"{path / 'kernel.py'} defines no kernel() function (edited or damaged); re-run `kt tune`"
        )
    # what kernel.py is and runs, as meta.json says: the checksum covers kernel.py only, and an edited meta.json
    # made a Kernel that contradicted itself (kernel "pytorch" over a generated kernel.py crashed kt.nn's forward)
    runs = "pytorch" if hasattr(module, "IMPLEMENTATION") else "generated"  # PyTorch's path names its call
    said = meta.get("kernel", runs)  # absent from the first artifacts kt wrote
    what = "PyTorch's path" if runs == "pytorch" else "a generated kernel"
    if said != runs:
        raise ArtifactError(f"{damaged}: its kernel is {said!r}, but kernel.py is {what}; re-run `kt tune`")
    if runs == "generated" and meta["config"] is None:  # PyTorch's path keeps the best generated config
        raise ArtifactError(f"{damaged}: config is null, but kernel.py is a generated kernel")
    meta = {**meta, "kernel": runs}
    if verify:
        _check_built_for(meta, spec, module, damaged)
    # the config kernel.py was rendered with (an older one may lack it): the checksum covers kernel.py only, and
    # an edited meta.json named a config its module does not run
    built = getattr(module, "CONFIG", None)
    if verify and config is not None and isinstance(built, dict):
        try:
            same = config_from_dict(meta["family"], built) == config
        except (ValueError, TypeError):
            same = False
        if not same:
            raise ArtifactError(
                f"{damaged}: its config {config.key()} is not the one kernel.py was built with ({built}); "
                "re-run `kt tune`, or load with verify=False to use it as it is"
            )
    return Kernel(module, spec, config, meta, path)
