"""The `kt` command: a thin layer over kt's Python API that prints with rich.

Every error a user can cause prints one line and exits with code 2; an interrupted tune says what was kept.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import shlex
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

import kt  # its heavy parts (torch, scikit-learn) load when a command first uses them
from kt.autotune.database import STATUSES, check_data, check_file, named  # the standard library only
from kt.errors import DatabaseError, KtError, command_line, counted
from kt.files import (
    DATA_HINT,
    INSPECT_HINT,
    MODEL_HINT,
    MODEL_NAMES,
    MODEL_SUFFIX,
    check_cache_dir,
    check_not_input,
    check_suffix,
    check_writable,
    existing_file,
    existing_path,
    make_folder,
    ranking_model,
)

# kt.spec.MAX_BUDGET (tune.budget's most), not imported for it: kt.spec loads yaml. test_cli checks they agree
MAX_BUDGET = 100_000

# Markup off: IR text such as Dense[b] and gemm[m=...] must print as it is. Wider than 80 when piped.
# soft_wrap: a long line stays one line (tables still fit the width).
# NO_COLOR (no-color.org): no escape codes at all (rich drops only the colours, and printed bold and italic).
_STYLES = {"color_system": None} if os.environ.get("NO_COLOR") else {}


def _terminal(stream) -> bool:
    """Whether `stream` is a terminal: None, as Python leaves sys.stdout with its descriptor closed (`kt ... >&-`),
    is not (every command, `kt --help` too, failed on `None.isatty()` as this module loaded)."""
    return stream is not None and stream.isatty()


# Emoji off: ':b:' in a user's text ('a:b:c:1') printed as an emoji
out = Console(
    highlight=False,
    markup=False,
    emoji=False,
    soft_wrap=True,
    width=None if _terminal(sys.stdout) else 120,
    **_STYLES,
)
err = Console(
    stderr=True,
    highlight=False,
    markup=False,
    emoji=False,
    soft_wrap=True,
    width=None if _terminal(sys.stderr) else 120,
    **_STYLES,
)


# click 8.2 and later raise this for a group given no command (8.1 printed the help and exited by itself)
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `kill`, Slurm, `docker stop`) or SIGHUP (the terminal closed, an ssh session lost),
    raised where Ctrl-C raises KeyboardInterrupt: every cleanup Ctrl-C runs (a save's `.prev`, the claims, the
    workers) runs for it too."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


# the signals that end a command as SIGTERM does; SIGHUP only where it is not ignored (nohup ignores it); the compile and GPU workers ignore it (kt.autotune.worker): their parent stops them
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


_STOPPED: list[int] = []  # the signal that stopped the running command (`_terminate`), if one did


def _terminate(signum, frame) -> None:
    # a second signal must not cut the cleanup short (a no-op, not SIG_IGN, which workers started now would keep)
    for each in _TERMINATING:
        if signal.getsignal(each) is _terminate:
            signal.signal(each, lambda *_: None)
    _STOPPED.append(signum)
    raise _Terminated(signum)


def _said(line: str) -> None:
    """`line` on stderr, where a hung-up terminal (EIO) or a closed one may no longer take it: then stdout and
    stderr are pointed at /dev/null, so that the interpreter's last flush of them cannot fail too (exit 120).
    rich turns a broken pipe into SystemExit(1) (`Console.on_broken_pipe`)."""
    try:
        err.print(line)
    except (OSError, ValueError, SystemExit):
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                os.dup2(null, fd)


def _lenient(stream) -> None:
    """A stream whose encoding cannot write every character kt prints (ᵀ, ·, box lines: PYTHONIOENCODING=ascii,
    a latin-1 locale) writes a replacement for them: each command ended in a UnicodeEncodeError traceback."""
    encoding = getattr(stream, "encoding", None)
    if (
        encoding
        and hasattr(stream, "reconfigure")
        and codecs.lookup(encoding).name not in ("utf-8", "utf-16")
    ):
        with contextlib.suppress(ValueError, OSError):  # a stream closed or detached
            stream.reconfigure(errors="replace")


class _Group(click.Group):
    def main(self, *args, **kwargs):
        for stream in (sys.stdout, sys.stderr):
            _lenient(stream)
        # kt's warnings (e.g. its own model cannot load here) print as one line, like its errors
        # once per process: main called again (click's CliRunner, a script running commands) printed each warning
        # once per earlier call
        logger = logging.getLogger("kt")
        if not any(isinstance(known, _StderrHandler) for known in logger.handlers):
            handler = _StderrHandler()
            handler.setLevel(logging.WARNING)  # kt's info lines (a bench's log) go to files, not the terminal
            handler.setFormatter(_OneLine("kt: warning: %(message)s"))
            logger.addHandler(handler)
        # only the main thread may set a handler (click's CliRunner may call this from another)
        main_thread = threading.current_thread() is threading.main_thread()
        before = {}
        if main_thread:
            for signum in _TERMINATING:
                current = signal.getsignal(signum)
                if signum == signal.SIGTERM or current is not signal.SIG_IGN:
                    before[signum] = signal.signal(signum, _terminate)
        _STOPPED.clear()
        try:
            with command_line():
                return self._run(args, kwargs)
        except BaseException as exc:
            # stopped by a signal, then what click or kt wrote to a terminal already gone failed (EIO, a broken
            # pipe), and that error took the signal's place: a hung-up kt exited 1 with a traceback's attempt
            code = 128 + _STOPPED[0] if _STOPPED else None
            if code is not None and not (isinstance(exc, SystemExit) and exc.code == code):
                kept = _kept(self._command(args, kwargs))
                _said(f"kt: terminated ({signal.Signals(_STOPPED[0]).name}){kept}")
                sys.exit(code)
            raise
        finally:
            for signum, handler in before.items():  # None: a handler set outside Python
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def invoke(self, ctx):
        # click's main writes a line break to stderr as it turns a KeyboardInterrupt into Abort (to end a
        # terminal's ^C echo): a blank line above `kt: interrupted` off a terminal, and after SIGTERM. An Abort
        # passes click's main as it is, and _run says the one line
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise click.exceptions.Abort() from exc

    def _run(self, args, kwargs):
        """click's main, every error it lets out said in one line with its exit code."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except KtError as exc:
            err.print(f"kt: error: {exc}", style="red")
            sys.exit(2)
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:  # click turns Ctrl-C into Abort
            kept = _kept(self._command(args, kwargs))
            terminated = exc if isinstance(exc, _Terminated) else exc.__cause__
            if isinstance(terminated, _Terminated):
                _said(f"kt: terminated ({signal.Signals(terminated.signum).name}){kept}")
                sys.exit(128 + terminated.signum)
            # a signal's _Terminated that Ray (ray.wait) raised again as a plain KeyboardInterrupt: "kt:
            # interrupted" came before "kt: terminated (SIGTERM)"
            if _STOPPED:
                _said(f"kt: terminated ({signal.Signals(_STOPPED[0]).name}){kept}")
                sys.exit(128 + _STOPPED[0])
            # a Ctrl-C on a terminal left its ^C echoed there: the line goes below it
            _said(f"{chr(10) if err.is_terminal else ''}kt: interrupted{kept}")
            sys.exit(130)
        except _NO_ARGS as exc:  # `kt` or `kt costmodel` alone: the help, as it is
            err.print(exc.format_message())
            sys.exit(2)
        except click.UsageError as exc:
            # an option without its value has no context: the subcommand on the command line, as the others name
            named = self._command(args, kwargs)
            command = exc.ctx.command_path if exc.ctx else f"kt {named}" if named else "kt"
            err.print(f"kt: error: {exc.format_message()} (see `{command} --help`)", style="red")
            sys.exit(2)
        except sqlite3.Error as exc:  # a database that failed once open: damaged, the disk full, read-only
            from kt.autotune.database import failure

            err.print(f"kt: error: {failure(exc)}", style="red")
            sys.exit(2)
        except OSError as exc:  # a path the user gave: unwritable, a file where a directory should be, ...
            named = exc.filename or _console_written(exc)
            where = f": {named}" if named else ""
            err.print(f"kt: error: {exc.strerror or exc}{where}{_cache_hint(exc.filename)}", style="red")
            sys.exit(2)
        except click.ClickException as exc:
            err.print(f"kt: error: {exc.format_message()}", style="red")
            sys.exit(exc.exit_code)

    def _command(self, args, kwargs) -> str | None:
        """The subcommand on the command line (click's own context is gone once the exception is out)."""
        given = args[0] if args else kwargs.get("args")
        words = sys.argv[1:] if given is None else list(given)
        return next((word for word in words if word in self.commands), None)


def _console_written(exc: OSError) -> str | None:
    """ "standard output" where `exc` came from writing `out` (a full disk or /dev/full behind `kt ... > file`:
    the error said "No space left on device" and named nothing, as if a file kt writes were at fault), else None.
    rich writes its console's stream from a method of the console, so the traceback holds a frame of `out`."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_locals.get("self") is out:
            return "standard output"
        tb = tb.tb_next
    return None


class _OneLine(logging.Formatter):
    """A record as its one line, without the traceback of a record logged with one (a bench part that failed:
    its traceback is for bench.log; on the terminal it was one per failure, 22 on a full disk)."""

    def format(self, record: logging.LogRecord) -> str:
        return self._style.format(logging.makeLogRecord({**record.__dict__, "message": record.getMessage()}))


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record, not as it was when made: a rich progress display
    (`_working`'s spinner) swaps sys.stderr while it runs, and warnings written past it landed on its line."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the current sys.stderr is used instead
        pass


def _cache_hint(filename) -> str:
    """Where a path that failed is inside kt's cache folder: which setting names that folder."""
    from kt.files import cache_dir

    if not filename:
        return ""
    cache = cache_dir()
    path = Path(os.fsdecode(filename))
    if path != cache and cache not in path.parents:
        return ""
    setting = "$KT_CACHE_DIR" if os.environ.get("KT_CACHE_DIR") else "$XDG_CACHE_HOME/kt or ~/.cache/kt"
    return f" (in kt's cache folder, {setting}: {str(cache)!r}; give it a folder kt can write)"


# What an interrupted command kept, after "kt: interrupted" (nothing for the commands that only read)
INTERRUPTED = {
    command: "; every finished measurement is in the database, and running the same command again resumes where "
    "this one stopped"
    for command in ("tune", "collect")
}
INTERRUPTED["bench"] = (
    "; the report in its --out folder holds the parts that finished (a bench writes it as it stops)"
)


def _kept(command: str | None) -> str:
    """What an interrupted command kept: INTERRUPTED's words, a bench's only where it wrote its report (one
    stopped as it started has none)."""
    if command == "bench":
        bench = sys.modules.get("kt.bench")
        if bench is None or bench.WRITTEN is None:
            return "; it was stopped as it started, before it wrote a report"
    return INTERRUPTED.get(command, "")


def _spec_path(ctx, param, value):
    return kt.load_spec(value)  # a SpecError reaches _Group.main: one line, exit code 2


SPEC = click.argument("spec", metavar="OP_YAML", callback=_spec_path)


def _spec_paths(ctx, param, values):
    """Every op of every OP_YAML given (a folder: its *.yaml and *.yml files, in name order, not hidden ones
    such as an editor's lock file), each file and each name once."""
    specs, where, read = [], {}, set()
    for value in values:
        path = Path(value)
        if path.is_dir():
            files = sorted(
                file
                for file in [*path.glob("*.yaml"), *path.glob("*.yml")]
                if not file.name.startswith(".") and file.is_file()
            )
        else:
            files = [path]
        if not files:
            raise click.BadParameter(
                f"folder {value!r} holds no .yaml or .yml file", param_hint="'OP_YAML...'"
            )
        for file in files:
            try:  # the same file given twice (a.yaml a.yaml, or a folder and a file in it)
                same = file.resolve() if file.is_file() else None
            except OSError:  # a name too long, say: load_specs says what is wrong
                same = None
            if same in read:
                raise click.BadParameter(f"{str(file)!r} is given twice", param_hint="'OP_YAML...'")
            if same is not None:
                read.add(same)
            for spec in kt.load_specs(file):
                if spec.name in where:
                    raise KtError(
                        f"{spec.source}: name: {spec.name!r} is also the name of an op in {where[spec.name]}; "
                        "each op needs its own name (its artifact's folder)"
                    )
                where[spec.name] = spec.source
                specs.append(spec)
    return specs


SPECS = click.argument("specs", metavar="[OP_YAML]...", nargs=-1, callback=_spec_paths)  # or --from-model


def _device_name(ctx, param, value):
    """A named or calibrated profile is checked as the command line is read, before anything loads torch."""
    if value is not None and value.lower() == "auto":  # as op.yaml's `device: AUTO` (and --device H100)
        return "auto"
    if value is not None:
        from kt.device import ProfileError, get_profile

        try:
            get_profile(value)
        except ProfileError as exc:
            raise kt.DeviceError(f"device: {exc}") from None
    return value


def _sweep_profile(ctx, param, value):
    """`kt replay --device`: `_device_name`'s check, without auto: it names the profile sweeps were measured for
    (a calibrated one), and "auto" reached get_profile as a name, a traceback."""
    if value is not None and value.lower() == "auto":
        raise click.BadParameter(
            "auto names no profile sweeps were measured for; allowed: the calibrated profile's .json their "
            "rows name, or a built-in profile name (`kt devices`)"
        )
    return _device_name(ctx, param, value)


def _model_file(ctx, param, value):
    """A ranking model is checked as the command line is read, before torch or scikit-learn load, as kt.plan and
    kt.tune check theirs (`ranking_model`: any case of analytic, or a model file)."""
    return _checked_model(value, "allowed: a model file from `kt costmodel fit`, or analytic")


def _checked_model(value, allowed: str):
    """`ranking_model(value)`, its refusal a click usage error ending in `allowed`."""
    try:
        return ranking_model(value)
    except KtError as exc:  # "model: ... not found" named neither the option nor the other choice
        why = str(exc).removeprefix("model: ").removesuffix(f"; {MODEL_HINT}, or analytic")  # click names it
        raise click.BadParameter(f"{why}; {allowed}") from None


def _forest_file(ctx, param, value):
    """A forest model file (`kt costmodel eval --model`, `kt inspect --model`): `_model_file`'s check, without
    analytic, which these commands cannot score (their refusal offered it, and taking it failed later with
    "model: 'analytic' not found")."""
    allowed = "allowed: a model file from `kt costmodel fit`"
    if value is not None and str(value).lower() == "analytic":
        raise click.BadParameter(f"analytic is no model file; {allowed}")
    return _checked_model(value, allowed)


def _gpu_name(ctx, param, value):
    """--gpu: an empty name matched no row and was reported as the data holding no rows for the device."""
    if value is not None and not value.strip():
        raise click.BadParameter(
            "an empty name; allowed: a GPU's name as the driver gives it (`nvidia-smi -L`)"
        )
    return value


def _data_file(ctx, param, value):
    """A file of measurements is checked as the command line is read, before torch or scikit-learn load."""
    if value is not None:
        _measurements(existing_file(value, "data", DATA_HINT, DatabaseError), "data")
    return value


def _measurements(path: Path, field: str) -> Path:
    """A file of measurements (not an artifact's folder) is checked to be one kt reads (check_data)."""
    if path.is_file():
        check_data(path, field)
    return path


def _db_option(
    create: bool,
    help: str = "Tuning database (SQLite). Default: $KT_DB, else tuning.db in kt's cache folder ($KT_CACHE_DIR, else "
    "$XDG_CACHE_HOME/kt, else ~/.cache/kt).",
    kt_db: bool = True,
):
    """--db. The path is checked as the command line is read, before torch loads or anything is measured: a
    folder in its place, a missing file (a command that only reads, `create` False), a new file where none can
    be made, or a file there that is not a kt database (kt.autotune.database.check_file). `kt_db`: the default
    is $KT_DB's, checked too (kt bench's is its --out folder's, and kt inspect's an artifact's tune's first: a
    bad $KT_DB refused a run that would not open it)."""

    def check(ctx, param, value):
        if value is not None:
            check_file(value, create)
        elif kt_db and os.environ.get("KT_DB"):
            # the default's setting, named as such (it said db: after the op's heading and the imports, and
            # `kt export`'s refusal of a missing one named db:, an option nobody gave)
            with named("KT_DB"):
                check_file(Path(os.environ["KT_DB"]), create)
        return value

    return click.option(
        "--db",
        type=_Path(path_type=Path, noun="a database file, such as tuning.db"),
        default=None,
        callback=check,
        help=help,
    )


class _Path(click.Path):
    """click.Path that refuses an empty path, which pathlib reads as "." (`--out ''` wrote artifacts into the
    current folder, `--db ''` said "'.' is a directory")."""

    def __init__(self, *args, noun: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # what to give instead (a database option takes a file, though click.Path leaves folders to kt's check)
        self.noun = noun or (
            "a folder" if not self.file_okay else "a file" if not self.dir_okay else "a path"
        )

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail(f"an empty path; give {self.noun}", param, ctx)
        if isinstance(value, str) and value.startswith("~"):
            # the shell leaves `--out=~/art` (and a quoted '~/art') as it is: kt made a folder named '~' in the
            # current one, which a later `rm -rf ~` to clean it up would have taken for the home folder
            value = os.path.expanduser(value)
        if isinstance(value, (str, os.PathLike)) and (too_long := _name_too_long(os.fspath(value))):
            self.fail(too_long, param, ctx)  # the OS's "File name too long" named no option
        return super().convert(value, param, ctx)


def _name_too_long(path: str) -> str | None:
    """Why the file system cannot hold `path`'s name (a name in it, or the whole, over its limits), or None."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):  # the folder it would be made in
        folder = os.path.dirname(folder)
    limits = {}
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits[key] = os.pathconf(folder, key)
        except (OSError, ValueError):
            limits[key] = default
    longest = max((os.fsencode(part) for part in Path(path).parts), key=len, default=b"")
    if len(longest) > limits["PC_NAME_MAX"]:
        shown = longest.decode(errors="replace")
        return (
            f"the name {shown[:24]}...{shown[-8:]} in it is {len(longest)} bytes; allowed: at most "
            f"{limits['PC_NAME_MAX']} bytes per name here"
        )
    if (size := len(os.fsencode(full))) >= limits["PC_PATH_MAX"]:
        return f"the full path is {size} bytes; allowed: under {limits['PC_PATH_MAX']} here"
    return None


class _NamedRange:
    """A click number range whose refusal of a value that is no number names the range allowed (click's said
    only "'abc' is not a valid integer range."); `kind` and `article` word what it takes."""

    kind: str
    article = "a"

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            if "not a valid" not in exc.message:
                raise
            self.fail(
                f"{value!r} is no {self.kind}; allowed: {self.article} {self.kind} in {self._describe_range()}",
                param,
                ctx,
            )


class _IntRange(_NamedRange, click.IntRange):
    kind, article = "integer", "an"


class _FiniteRange(_NamedRange, click.FloatRange):
    """A number range that refuses nan too: every comparison with nan is false, so FloatRange lets it by (a
    --timeout of nan made the worker pool wait on nothing, busy, with no timeout)."""

    kind = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


DEVICE = click.option(
    "--device",
    default=None,
    metavar="NAME|PROFILE.json",
    callback=_device_name,
    help="Target device profile (a name `kt devices` lists, or a calibrated JSON); default: the spec's, else auto.",
)
DB, DB_TO_READ = _db_option(create=True), _db_option(create=False)
BACKEND = click.option(
    "--backend",
    type=click.Choice(["auto", "cuda", "interpret", "dryrun"]),
    default="auto",
    show_default=True,
    help="cuda measures on the GPU; interpret checks on the CPU, never times; dryrun runs the GPU's measure "
    "path on the CPU in the interpreter (full problems: keep them small), never times.",
)
COOLDOWN = click.option(
    "--cooldown-ms",
    type=_FiniteRange(0, 60_000),
    default=None,
    help="GPU idle before each candidate is timed, so each starts from the same thermal state "
    "(default: 200; 0 with --backend dryrun).",
)
TIMEOUT = click.option(
    "--timeout",
    type=_FiniteRange(1, 86400),
    default=300,
    show_default=True,
    help="Seconds one candidate may take before its worker is killed and it is recorded as timeout.",
)
RETRY = click.option(
    "--retry-failed",
    is_flag=True,
    help="Measure again the configs whose earlier attempt timed out or crashed, first and best ranked first, as many "
    "as the budget leaves room for beside the rows that stay (the others keep their rows, and a note says so).",
)
BUDGET = click.option(
    "--budget",
    type=_IntRange(1, MAX_BUDGET),
    default=None,
    help="Configs to measure (default: the spec's).",
)
OBJECTIVE = click.option(
    "--objective",
    type=click.Choice(["time", "energy", "edp"]),
    default=None,
    help="What the best minimises, and the ranking where the cost model predicts power (kt's shipped models "
    "and the analytic one do not: they rank by time) (default: the spec's).",
)
SEED = click.option("--seed", type=_IntRange(0, 2**32 - 1), default=None, help="Seed (default: the spec's).")
MODEL = click.option(
    "--model",
    default=None,
    metavar="MODEL.skops|analytic",
    callback=_model_file,
    help="Cost model that ranks candidates: a file from `kt costmodel fit`, or analytic. "
    "Default: kt's model for the device when it ships one, else analytic.",
)
POWER_CAP = click.option(
    "--power-cap",
    "power_cap_w",
    type=_FiniteRange(1, 2000),
    default=None,
    metavar="WATTS",
    help="The best must draw at most this board power, where its measurement read one (configs without a "
    "reading, and a tune without a GPU, are not limited) (default: the spec's tune.power_cap_w).",
)
WORKERS = click.option(
    "--workers",
    type=_IntRange(1, 64),
    default=None,
    help="Worker processes for compiling and checking (default: one per CPU this process may use, its affinity "
    "and cgroup quota: a SLURM job's or a container's, at most 8, and for `kt tune` of one op at most "
    "its budget + 1, or with `tune.configs` their count + 1).",
)


def _gpus_text(ctx, param, value: str | None) -> str | None:
    """--gpus's form, checked as the command line is read (it was parsed after torch loaded, 1.9 s)."""
    if value is not None:
        from kt.autotune.gpuinfo import parse_gpus  # the standard library only

        parse_gpus(value)
    return value


GPUS = click.option(
    "--gpus",
    default=None,
    callback=_gpus_text,
    metavar="all|I,J,...",
    help="The GPUs to measure on, one GPU worker each (indices as torch numbers them, after "
    "CUDA_VISIBLE_DEVICES; all of one model). Default: every visible GPU of the model of GPU 0.",
)


STRATEGY = click.option(
    "--strategy",
    type=click.Choice(["guided", "top", "random", "exhaustive"]),
    default="guided",
    show_default=True,
    help="guided: rounds ranked by the cost model, refitted on what each round measured (what `kt tune` and "
    "`kt replay` run); top: the first model's best, never refitted, one config of each program (group_m "
    "twins that order no tiles differently run one); random: a random sample; exhaustive: every legal "
    "config, twins included, best predicted first, as far as the budget goes (give the budget of the space, "
    "or 100% in `kt replay`, for all). Without a GPU nothing is timed to refit on, so guided runs as top.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kt.__version__, prog_name="kt")
def main():
    """kt: tune structured matmul kernels (Triton) for your GPU."""


def _spread(spread: float) -> str:
    """A predicted time's spread (the standard deviation of the trees' log times) as the percentages one standard
    deviation moves it up and down: "+107%/-52%", where a symmetric "+-107%" read as a negative time."""
    if not spread > 0:
        return "-"
    return f"+{100 * math.expm1(spread):.0f}%/-{-100 * math.expm1(-spread):.0f}%"


def _header(spec) -> None:
    out.print(f"{spec.name}: {spec.summary()}", style="bold")


def _ray_address(ctx, param, value):
    """--ray is checked as the command line is read (Ray's own errors for a bad address are tracebacks)."""
    if value is not None:
        from kt.autotune.raypool import check_address  # the standard library only

        check_address(value)
    return value


@main.command()
@SPECS
@click.option(
    "--from-model",
    "from_model",
    multiple=True,  # so that a second one is refused, not silently taken in place of the first
    callback=lambda ctx, param, value: _one_model(value),
    metavar="FILE.py:FACTORY|MODULE:FACTORY",
    help="Tune every op a model runs: FACTORY() returns (model, example_input); each nn.Linear and kt.nn layer "
    "it calls becomes an op at its batch bucket (kt.nn.discover).",
)
@click.option(
    "--rows",
    "extra_rows",
    default=None,
    callback=lambda ctx, param, value: _row_counts(value),
    metavar="N,N,...",
    help="With --from-model: tune each op at these row counts too (each at its batch bucket), beside the example's: "
    "the rows a call runs that the example does not, such as a generation's decode steps (one row per sequence).",
)
@click.option(
    "--ray",
    default=None,
    callback=_ray_address,
    metavar="local|auto|ADDRESS",
    help="Run the workers as Ray actors: local (a Ray instance started here), auto (this machine's cluster) or "
    "a cluster address; compiles on any node's CPUs, measurements on one actor per GPU. Needs `pip install ray`.",
)
@click.option(
    "--concurrent",
    type=_IntRange(1, 64),
    default=None,
    metavar="N",
    help="Ops tuned at once when several are given for one device (default 4; 1: one after the other). They "
    "share the compile and GPU workers; each keeps its own rounds, budget and artifact. Ops for several "
    "devices are tuned one after the other, each with its own workers.",
)
@BUDGET
@OBJECTIVE
@click.option(
    "--out",
    "out_dir",
    type=_Path(file_okay=False, path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Directory that receives each op's artifact, as DIR/<name>/.",
)
@SEED
@click.option(
    "--top", type=_IntRange(1, 1000), default=10, show_default=True, help="Rows in the final table."
)
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress bar: the results only, with the notes that say what they are (no GPU here, what the "
    "cost model never saw); several ops: each named as it ends (and as it starts with --concurrent 1), with "
    "how many are still to go, to say whose results follow.",
)
@STRATEGY
@MODEL
@POWER_CAP
@TIMEOUT
@RETRY
@BACKEND
@COOLDOWN
@DEVICE
@DB
@WORKERS
@GPUS
def tune(
    specs,
    from_model,
    extra_rows,
    ray,
    concurrent,
    budget,
    objective,
    out_dir,
    seed,
    top,
    quiet,
    strategy,
    model,
    power_cap_w,
    timeout,
    retry_failed,
    backend,
    cooldown_ms,
    device,
    db,
    workers,
    gpus,
):
    """Tune each OP_YAML's kernel (or --from-model's) and write OUT/<name>/ (kernel.py + meta.json). Several files, a folder
    of them, or a file of several ops (a list of shapes or batches, or several YAML documents) tune each op,
    several at once (--concurrent), one artifact each; an op that fails as it is tuned is reported and the others go
    on (a spec error found as the files are read, or an unusable --out, stops the command before any op is
    tuned; a tune.configs entry the device cannot run fails its own op)."""
    if not specs and not from_model:
        raise click.UsageError("give OP_YAML files or folders, or --from-model FILE.py:FACTORY")
    from kt.autotune.artifact import check_target
    from kt.codegen.emit import no_triton, triton_installed

    if ray is None and not triton_installed():  # before a model loads or a note is said (a Ray cluster's own)
        raise KtError(no_triton("kt tune"))
    if extra_rows and not from_model:
        raise click.UsageError("--rows adds row counts to --from-model's ops; an OP_YAML gives its own batch")
    if from_model:
        specs = [*specs, *_model_specs(from_model, {spec.name for spec in specs}, extra_rows or ())]
    for spec in specs:
        check_target(out_dir / spec.name)  # before any tune, not after it
    check_cache_dir()
    import torch

    checks_only = backend == "interpret" or (backend == "auto" and not torch.cuda.is_available())
    gpus = _gpus(gpus, backend, ray)
    from kt.autotune.runners import check_gpus

    check_gpus(backend, gpus, ray)  # before the first op's heading
    from kt.api import _model_device

    found = _model_device(specs, device, model)  # a model file that alone names the device: its device, as
    if found is not None:  # kt predict's; the first note named sm_90 over an A100 model's sm_80 tune
        device, model = found
    options = dict(
        budget=budget,
        objective=objective,
        power_cap_w=power_cap_w,
        strategy=strategy,
        model=model,
        backend=backend,
        db=db,
        device=device,
        workers=workers,
        seed=seed,
        progress=not quiet,
        timeout_s=timeout,
        retry_failed=retry_failed,
        timing=_timing(cooldown_ms),
        ray=ray,
        gpus=gpus,
    )
    if len(specs) == 1:
        _header(specs[0])
        _checks_only_note(checks_only, specs, device)
        result = kt.tune(specs[0], **options)
        _report_one(result, out_dir, top)
        return
    from kt.autotune.tune import ops_at_once

    concurrent = ops_at_once(specs, device, concurrent)
    sources = sorted({spec.source or from_model for spec in specs})  # a model's ops have no file
    where = sources[0] if len(sources) == 1 else f"{len(sources)} {'sources' if from_model else 'files'}"
    how = "one after the other" if concurrent == 1 else f"up to {concurrent} at once"
    out.print(f"{where}: {len(specs)} ops, tuned {how}", style="bold")
    _checks_only_note(checks_only, specs, device)
    started = time.monotonic()
    outcomes: dict[int, tuple[str, str, str, str]] = {}

    def begin(number: int, spec) -> None:  # one op after the other: name it above its progress
        out.print(f"\n[{number}/{len(specs)}] {spec.name}: {spec.summary()}", style="bold")

    def done(number: int, spec, outcome) -> None:
        # the artifact first: a reader gone (`kt tune ... | head`) stops the command at the first print, and a
        # finished op's artifact was lost to its "ended" line; a save refused (a `.prev` that is a file, a full
        # disk) fails this op, not the others (it stopped every op mid-tune, and the summary never came)
        saved = None
        if not isinstance(outcome, KtError):
            try:
                saved = _save_one(outcome, out_dir)
            except KtError as exc:
                saved = exc
        line = _ops_line(number, specs, outcomes, time.monotonic() - started)
        out.print(f"{'' if concurrent == 1 else chr(10)}{line}", style="bold")
        if concurrent > 1:
            _header(spec)
        if isinstance(saved, KtError):
            _results_table(outcome, top)  # what was measured, before the error says why it was not saved
            outcome = saved
        if isinstance(outcome, KtError):
            err.print(f"kt: error: {spec.name}: {outcome}", style="red")  # the other ops go on
            outcomes[number] = (spec.name, "failed", str(outcome), "-")
        else:
            outcomes[number] = _report_one(outcome, out_dir, top, saved)

    kt.tune(specs, concurrent=concurrent, on_done=done, on_start=begin, **options)
    _tuned_summary([outcomes[number] for number in sorted(outcomes)])


def _model_noun(name: str, figures: bool = False) -> str:
    from kt.costmodel.prediction import model_noun  # numpy: not at import, for --help's sake

    return model_noun(name, figures)


def _gpus(text: str | None, backend: str, ray: str | None = None) -> list[int] | None:
    """--gpus as indices (None: the default, every visible GPU of GPU 0's model). "all" too must name GPUs
    something measures on (check_gpus, which make_runner calls for indices)."""
    from kt.autotune.gpuinfo import parse_gpus
    from kt.autotune.runners import check_gpus

    indices = None if text is None else parse_gpus(text)
    if text is not None and indices is None:  # "all": the default, but asked for (indices are checked later)
        check_gpus(backend, [], ray)
    return indices


def _row_counts(text: str | None) -> tuple[int, ...] | None:
    """--rows as row counts: positive integers up to kt's limit, comma-separated."""
    if text is None:
        return None
    from kt.spec import MAX_DIM

    counts = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or not 1 <= int(part) <= MAX_DIM:
            raise click.BadParameter(
                f"{part!r} is no row count: give integers from 1 to {MAX_DIM:,} separated by commas, e.g. 1,8,64",
                param_hint="'--rows'",
            )
        counts.append(int(part))
    return tuple(counts)


def _one_model(values: tuple[str, ...]) -> str | None:
    if len(values) > 1:
        raise click.BadParameter(
            f"given {len(values)} times ({', '.join(values)}); tune one model per command, or write each "
            "model's ops with kt.nn.selections().write_yaml() and tune the files together",
            param_hint="'--from-model'",
        )
    where, _, attr = values[0].rpartition(":") if values else ("", "", "")
    if values and not (where and attr):  # as kt.nn.discover.load_factory says, before torch loads (3.5 s)
        raise click.BadParameter(
            f"{values[0]!r} must be MODULE:FACTORY or path/to/file.py:FACTORY", param_hint="'--from-model'"
        )
    if where.endswith(".py") and not Path(where).is_file():  # as load_factory says it, 1.5 s later (torch)
        raise KtError(f"--from-model: {where!r} not found")
    return values[0] if values else None


def _model_specs(target: str, taken: set[str], extra_rows: tuple[int, ...] = ()) -> list:
    """The ops of --from-model's model (kt.nn.discover), listed as a table before they are tuned; each also at
    the buckets of --rows."""
    from kt.nn.discover import load_factory, model_ops

    model, args, kwargs = load_factory(target)
    found = model_ops(model, *args, name_prefix=target.rpartition(":")[2], extra_rows=extra_rows, **kwargs)
    clash = sorted(taken & {spec.name for spec in found.specs})
    if clash:
        raise KtError(f"--from-model: an OP_YAML already has an op named {clash[0]!r}; rename it")
    if not found.specs:  # one line, no empty table before it
        skipped = (
            f" ({len(found.skipped)} skipped, e.g. {found.skipped[0][0]}: {found.skipped[0][1]})"
            if found.skipped
            else ""
        )
        raise KtError(f"--from-model: {target} runs no nn.Linear or kt.nn layer kt can tune{skipped}")
    # a Text, so that neither `:factory:` (an emoji code) nor brackets in the path are read as markup
    table = Table(title=Text(f"{target}: {counted(len(found.specs), 'op')} to tune"))
    for name in ("op", "what", "modules"):
        table.add_column(name)
    for spec in found.specs:
        table.add_row(spec.name, spec.summary(), ", ".join(found.modules[spec.name]))
    for path, why in found.skipped:
        table.add_row(path, f"skipped: {why}", path, style="yellow")
    out.print(table)
    plain = [path for path in found.plain if path not in found.subclassed]
    if plain:  # tuned for a DenseLinear made from them: torch's nn.Linear never reads an artifact
        kinds = ["nn.Linear", *["Conv1D"] * bool(found.conv1d), *["1x1 convolution"] * bool(found.pointwise)]
        noun = (
            f"plain {', '.join(kinds[:-1])} or {kinds[-1]} layer"
            if len(kinds) > 1
            else "plain nn.Linear layer"
        )
        out.print(
            f"note: {counted(len(plain), noun)} ({_listed(plain)}): torch runs {_them(plain)} and reads no "
            "artifact; kt.nn uses theirs once they are kt.nn.DenseLinear "
            '(kt.nn.structurize(model, {"*": kt.nn.DenseLinear.from_dense}), or a rule per name)',
            markup=False,
        )
    if found.subclassed:  # which structurize leaves alone (their forward may differ from F.linear's)
        out.print(
            f"note: {counted(len(found.subclassed), 'layer')} of a subclass of nn.Linear "
            f"({_listed(found.subclassed)}): torch runs {_them(found.subclassed)} and reads no artifact, and "
            f"kt.nn.structurize leaves {_them(found.subclassed)} alone; where one computes F.linear(x, weight, "
            "bias), set kt.nn.DenseLinear.from_dense(layer) in its place yourself",
            markup=False,
        )
    return found.specs


def _them(paths: list[str]) -> str:
    return "it" if len(paths) == 1 else "them"


def _checks_only_note(checks_only: bool, specs, device: str | None) -> None:
    """The tune's first note without a GPU: configs are checked in the interpreter, and compiled for the
    targets' architectures where Triton's tools are here (else why not, in the tune's closing note's words)."""
    if not checks_only:
        return
    from kt.api import resolve_profile
    from kt.autotune.compile import target_compiler_missing

    archs = set()
    for spec in specs:
        try:
            archs.add(resolve_profile(device or spec.device).compute_capability)
        except KtError:  # the op's own tune says what is wrong with its device
            continue
    missing = target_compiler_missing()
    if missing:
        compiled = f"not compiled for the GPU ({missing})"
    elif archs:
        compiled = f"compiled for {' and '.join(f'sm_{arch}' for arch in sorted(archs))}"
    else:
        compiled = "compiled for the target"
    out.print(
        f"note: no GPU here: each config is checked in Triton's interpreter and {compiled}, nothing is timed, "
        "and the choice is the cost model's best prediction; a larger budget only checks more configs",
        style="yellow",
    )


def _save_one(result, out_dir) -> tuple:
    """An op's artifact saved: (its path, whether it replaced one)."""
    from kt.autotune.artifact import save_artifact_report

    return save_artifact_report(result, out_dir / result.spec.name)


def _report_one(result, out_dir, top, saved: tuple | None = None) -> tuple[str, str, str, str]:
    """An op's results table and artifact (`saved`: already saved), and how it went for the summary: (name,
    measured | checked, best -> artifact, PyTorch / kt)."""
    # saved before the table is printed: a reader gone (`kt tune ... | head`) stops the command at the first
    # print (rich's broken-pipe exit), and the finished tune's artifact was never written
    try:
        path, replaced = saved if saved is not None else _save_one(result, out_dir)
    except Exception:
        _results_table(result, top)  # what was measured, before the error says why it was not saved
        raise
    _results_table(result, top)
    _tuned(result, path, replaced)
    best = result.best
    what = "PyTorch's path" if best.pytorch else best.config.key()
    return result.spec.name, "measured" if best.measured else "checked", f"{what} -> {path}", _versus(result)


def _ops_line(number: int, specs, outcomes: dict, elapsed_s: float) -> str:
    """Where a tune of several ops stands as op `number` ends: ops ended so far (measured, checked, failed),
    and how many are still running or waiting."""
    states = [status for _, status, *_ in outcomes.values()]
    ended = ", ".join(f"{states.count(s)} {s}" for s in ("measured", "checked", "failed") if states.count(s))
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (
        f"[{len(outcomes) + 1}/{len(specs)}] {specs[number - 1].name} ended · before it: {ended or 'none'} · "
        f"{len(specs) - len(outcomes) - 1} still running or to go · {minutes}m{seconds:02d}s"
    )


def _versus(result) -> str:
    """kt against PyTorch's path for the summary: measured on the GPU, else the cost model's prediction."""
    from kt.costmodel.roofline import LAUNCH_S

    if result.best.measured:
        return f"{result.baseline_ratio:.2f}x measured" if result.baseline_ratio else "-"
    predicted = result.plan.baseline_ratio
    if not predicted:  # a family whose PyTorch path the model does not predict: "-" read as a failure
        return "not timed (no GPU)"
    # a prediction under one kernel launch is a forest far outside its rows (kt predict says so): its ratio is
    # no figure to print (a 1x1x1 op read "0.17x predicted")
    times = [result.plan.baseline_s, result.best.predicted_ms / 1e3 if result.best.predicted_ms else None]
    if min(t for t in times if t is not None) < LAUNCH_S:
        return "not timed (no GPU; predicted under one launch)"
    return f"{predicted:.2f}x predicted (no GPU)"


def _tuned_summary(outcomes: list[tuple[str, str, str, str]]) -> None:
    """The table after a tune of several ops; exit code 2 when any of them failed (each said why above)."""
    table = Table(title=f"{len(outcomes)} ops")
    for name in ("op", "result", "best -> artifact, or why not", "PyTorch / kt"):
        table.add_column(name)
    for row in outcomes:
        table.add_row(*row, style="red" if row[1] == "failed" else None)
    out.print(table)
    failed = [name for name, status, *_ in outcomes if status == "failed"]
    if failed:
        err.print(f"kt: error: {len(failed)} of {len(outcomes)} ops failed: {', '.join(failed)}", style="red")
        sys.exit(2)


def _tuned(result, path, replaced: str | None) -> None:
    """The lines after a tune's table: the best, the notes, the artifact."""
    best = result.best
    if best.pytorch:
        out.print(
            f"best: PyTorch's own path ({result.baseline_impl}) · {_ms(best.runtime_ms)} ms on {result.ran_on}: "
            "no generated kernel beat it",
            style="yellow",
        )
    elif best.measured:
        tflops = result.problem.flops / (best.runtime_ms * 1e-3) / 1e12
        power = (
            f", {best.power_w:.0f} W, {best.energy_mj:.3f} mJ per call" if best.power_w is not None else ""
        )
        out.print(
            f"best: {best.config.key()} · {_ms(best.runtime_ms)} ms ({tflops:.1f} TFLOP/s){power} "
            f"on {result.ran_on}"
        )
    else:
        out.print(
            f"best: {best.config.key()} · not measured (predicted {_ms(best.predicted_ms)} ms on "
            f"{result.target.label} by {_model_noun(result.plan.model, figures=True)})",
            style="yellow",
        )
    for note in result.notes:
        out.print(f"note: {note}", style="yellow")
    if replaced:
        out.print(f"note: {replaced}", style="yellow")
    out.print(
        f"artifact: {path} (measured: {str(best.measured).lower()}) · "
        f"{counted(result.newly_measured, 'new measurement' if best.measured else 'new check')} in {result.db_path} · "
        f"{result.wall_s:.1f} s · {baseline_summary(result)}"
    )


def baseline_summary(result) -> str:
    """How the tune fared against PyTorch's own path (candidate zero), for the last line."""
    impl, row = result.baseline_impl, result.baseline
    if row is None:
        return f"PyTorch ({impl}): not run"
    if row["status"] != "ok":
        return f"PyTorch ({impl}): {row['status']}"
    if row.get("runtime_ms") is None:
        return f"PyTorch ({impl}): checked, not timed (no GPU)"
    ratio = result.baseline_ratio
    if ratio is None:
        why = result.baseline_left_out
        if why:
            return f"PyTorch ({impl}): {_ms(row['runtime_ms'])} ms, not compared ({why})"
        return f"PyTorch ({impl}): {_ms(row['runtime_ms'])} ms, nothing generated was timed"
    return f"{ratio:.2f}x vs PyTorch ({impl}, {_ms(row['runtime_ms'])} ms)"


def _timing(cooldown_ms: float | None):
    """The GPU timing settings with the cooldown asked for (None: kt's defaults)."""
    if cooldown_ms is None:
        return None
    from kt.autotune.timing import TimingSettings

    return TimingSettings(cooldown_ms=cooldown_ms)


def _results_table(result, top: int) -> None:
    measured = result.measured
    table = Table(
        title=f"best {min(top, len(result.rows))} of {len(result.rows)} "
        f"({', '.join(f'{n} {s}' for s, n in result.statuses().most_common())})"
    )
    table.add_column("rank", justify="right")
    table.add_column("config", **_whole("config", "config", (row["config_key"] for row in result.table(top))))
    table.add_column("status")
    if measured:
        for name in ("ms", "TFLOP/s", "W", "mJ"):
            table.add_column(name, justify="right")
    table.add_column(f"predicted ms ({result.target.label})", justify="right")
    table.add_column("rel err", justify="right")
    table.add_column("smem KiB", justify="right")
    flops = result.problem.flops
    for row in result.table(top):
        cells = [str(row["rank"]), row["config_key"], row["status"]]
        if measured:
            ms = row.get("runtime_ms")
            cells += [
                _ms(ms),
                _fmt(flops / (ms * 1e-3) / 1e12 if ms else None, ".1f"),
                _fmt(row.get("power_w"), ".0f"),
                _fmt(row.get("energy_mj"), ".3f"),
            ]
        cells += [
            _ms(row.get("predicted_ms")),
            _fmt(row.get("rel_err"), ".1e"),
            _fmt(row["smem_bytes"] / 1024 if row.get("smem_bytes") else None, ".0f"),
        ]
        table.add_row(*cells)
    # at 80 columns a GPU tune's table cut its times to "0.00…" (and at 60 a tune without a GPU)
    _print_fitted(table, ("TFLOP/s", "W", "mJ", "rel err", "smem KiB"))


def _baseline_name(problem) -> str:
    from kt.codegen.baseline import baseline_impl

    return baseline_impl(problem)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ms(value) -> str:
    """Milliseconds with at least three significant digits: 0.2386, 0.00512, 2.70e-06 (a tiny GEMM's
    prediction printed as 0.0000 beside a ratio computed from it)."""
    if value is None:
        return "-"
    # by the rounded value: 0.09996 printed "0.100" (three figures past 0.1) beside 0.1554
    return f"{value:.4f}" if abs(float(f"{value:#.3g}")) >= 0.1 else f"{value:#.3g}"


def _runs(numbers: list[int]) -> str:
    """Sorted integers with consecutive ones joined: [21, 22, 23, 30, 40, 41] -> '21-23, 30, 40-41'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@main.command()
@SPEC
@DEVICE
@click.option(
    "--ptx",
    "ptx_dir",
    type=_Path(file_okay=False, path_type=Path),
    default=None,
    help="Compile the config kt would choose first (the model's best) for the device's architecture, write each "
    "launch's PTX into DIR and print what the compiler made of it (MMA kind, TMA, registers, spills, shared "
    "memory). Needs no GPU.",
)
def show(spec, device, ptx_dir):
    """Print OP_YAML's IR (the factor product) and its kernel graph (with --ptx, the chosen config's PTX written
    to DIR and summarised)."""
    if ptx_dir is not None:  # before any work: a folder that cannot be made is a usage error
        make_folder(ptx_dir, "--ptx")
    from kt.ir import op_from_spec

    op = op_from_spec(spec)
    source = f", from {spec.source}" if spec.source else ""
    out.print(f"{spec.name}: {spec.op} {spec.dtype}{source}", style="bold")
    out.print(f"  {op.describe()}")
    heading, text = op.map_text()
    out.print(f"\n{heading}:")
    out.print(f"  {text}")
    graph = op.kernel_graph()
    out.print(f"\nkernel graph ({len(graph)} kernel{'s' if len(graph) != 1 else ''}):")
    out.print(str(graph))
    for node in graph.kernels:
        structures = getattr(node.problem, "structures", None)
        if structures is None:
            continue
        from kt.codegen import family_for

        family = family_for(node.problem)
        out.print(f"\n{node.name}: launches per structure choice ({family.launch_legend}):")
        for structure in structures():
            choice = " ".join(f"{k}={v}" for k, v in structure.items()) or "(one form)"
            out.print(f"  {choice}: " + " ; ".join(family.launch_texts(node.problem, structure)))
        if getattr(family, "launch_note", None):
            out.print(f"  {family.launch_note}")
    if ptx_dir is not None:
        _show_ptx(spec, device, ptx_dir)


def _show_ptx(spec, device, ptx_dir: Path) -> None:
    """`kt show --ptx`: compile the model's first configs in workers (Triton's compiler, not its interpreter) and
    keep the first that builds within the device (no spills, shared memory within the limit), as a tune would.
    The PTX files an earlier run wrote into the folder (launch<i>_<kernel>.ptx) are removed before the chosen
    config's are written; nothing else there is touched."""
    import re
    import tempfile

    from kt.api import distinct_tiles, resolve_profile
    from kt.autotune.compile import target_compiler_missing
    from kt.autotune.pool import Task
    from kt.autotune.runners import compile_builds, compile_pool
    from kt.autotune.tune import generated_candidate

    arch = resolve_profile(device or spec.device).compute_capability
    missing = target_compiler_missing()
    if missing:
        raise KtError(f"--ptx: nothing is compiled for sm_{arch}: {missing}")
    with _working(_planning(spec)):
        plan = kt.plan(spec, budget=1, device=device)
    configs = distinct_tiles(plan)  # as many as kt.build's compile check tries; group_m twins build alike
    ptx_dir.mkdir(parents=True, exist_ok=True)
    try:  # a folder there that cannot be written (read-only, another user's, a full disk): before the builds
        tempfile.TemporaryFile(dir=ptx_dir).close()
    except OSError as exc:
        raise KtError(f"--ptx: {ptx_dir} cannot be written ({exc.strerror or exc})") from None
    jobs = [
        (generated_candidate(plan.problem, config, name=spec.name), plan.space.device) for config in configs
    ]
    with compile_pool(timeout_s=600) as pool:
        outcomes = compile_builds(jobs, pool)
        chosen = next((o for o in outcomes if o.status == "ok"), None)
        for outcome in outcomes[: chosen.task.id if chosen else len(outcomes)]:
            out.print(f"skipped {configs[outcome.task.id].key()}: {outcome.status}: {outcome.message}")
        if chosen is None:
            raise KtError(f"--ptx: none of the model's first {len(configs)} configs builds for sm_{arch}")
        rank = chosen.task.id
        for old in ptx_dir.iterdir():  # an earlier run's launches, which this one's would sit beside
            if re.fullmatch(r"launch\d+_\w+\.ptx", old.name) and (old.is_file() or old.is_symlink()):
                old.unlink()
        # once more, writing its PTX (Triton caches the compile, so this is quick)
        (chosen,) = pool.run(
            [Task(0, "compile", {**chosen.task.payload, "ptx_dir": str(ptx_dir)}, "compile")]
        )
    # its PTX not written (a folder named as a launch's file): kt printed an empty table, exit 0
    if chosen.status != "ok":
        raise KtError(
            f"--ptx: the PTX of {configs[rank].key()} was not written: {chosen.status}: {chosen.message}"
        )
    launches = chosen.values.get("launch_evidence", [])
    # its rank as kt predict shows it (its place among the distinct tiles differs once one fails to build)
    order = [plan.space.legal[i].key() for i in plan.ranked]
    place = order.index(configs[rank].key()) + 1 if configs[rank].key() in order else rank + 1
    title = f"{configs[rank].key()} (rank {place} by {_model_noun(plan.model)}) "
    table = Table(title=title + f"compiled for sm_{arch}: PTX in {ptx_dir}")
    for name in ("launch", "kernel", "MMA", "TMA", "registers", "spill bytes", "shared KiB", "why not wgmma"):
        table.add_column(name, justify="left" if name in ("kernel", "MMA", "why not wgmma") else "right")
    for index, (launch, why) in enumerate(zip(launches, _why_not_wgmma(plan, configs[rank], launches))):
        table.add_row(
            str(index),
            launch["kernel"],
            launch["mma"],
            "yes" if launch["tma"] else "no",
            _fmt(launch["registers"], "d"),
            _fmt(launch["local_bytes"], "d"),
            _fmt(launch["smem_bytes"] / 1024, ".0f"),
            why,
        )
    # every value whole: a narrow terminal cut the kernel's name and its MMA kind, what the table is for
    _print_fitted(table, ())


def _why_not_wgmma(plan, config, launches) -> list[str]:
    """Why each of `config`'s launches (their evidence, in call order) is off Hopper's warpgroup MMA: nothing
    for a wgmma launch; "no matrix product" for one without a dot (a transpose); for the others, the model's
    reason for its stage record: the stage records are the launches with a dot, in order, where the counts
    agree, else the config's first reason."""
    from kt.codegen import family_for
    from kt.costmodel.roofline import launch_wgmma_reasons

    (record,) = family_for(plan.problem).records(plan.problem, [config])
    reasons = launch_wgmma_reasons(record, plan.space.device)
    unexpected = "the compiler's choice (the tile allows wgmma)"
    first = next((r for r in reasons if r), unexpected)
    dots = [i for i, launch in enumerate(launches) if launch.get("dot") is not False]  # None: not known
    by_launch = dict(zip(dots, reasons)) if len(dots) == len(reasons) else {}
    why = []
    for index, launch in enumerate(launches):
        if launch["mma"] == "wgmma":
            why.append("")
        elif launch.get("dot") is False:
            why.append("no matrix product in this launch")
        else:
            why.append((by_launch[index] or unexpected) if index in by_launch else first)
    return why


@main.command()
@SPEC
@click.option(
    "--sample", type=_IntRange(0, 1000), default=10, show_default=True, help="Legal configs to list."
)
@click.option("--seed", type=_IntRange(0, 2**32 - 1), default=0, show_default=True)
@DEVICE
def space(spec, sample, seed, device):
    """Print the search space's size before and after legality pruning, the MMA its configs get, and a
    sample of configs."""
    from kt.codegen import family_for
    from kt.codegen.restrict import user_axes
    from kt.costmodel.roofline import expected_mma

    with _working(_planning(spec)):
        plan = kt.plan(spec, budget=1, device=device)
    space_ = plan.space
    family = family_for(space_.problem)
    # the schedule's axes and the op's structure choice (tma, fused, levels, split): what tune.space may name
    every = user_axes(family, space_.problem)
    axes = " x ".join(f"{name} {'|'.join(map(str, values))}" for name, values in every.items())
    out.print(f"search space of {space_.problem} on {space_.device.label}", style="bold")
    defaults, required = [], []
    for f in dataclasses.fields(family.config_type):
        if f.name not in every:
            continue
        if f.default is not dataclasses.MISSING and f.default in every[f.name]:
            defaults.append(f"{f.name} {f.default}")
        else:  # no default, or one the problem does not offer (a butterfly's levels 0)
            required.append(f.name)
    out.print(f"  axes: {axes}")
    out.print(
        f"  tune.configs: a field left out takes its default ({', '.join(defaults)})"
        + (f"; give {', '.join(required)}" if required else "")
    )
    out.print(f"  all:   {space_.total} configs")
    share = 100 * len(space_.legal) / space_.total
    out.print(
        f"  legal: {len(space_.legal)} ({share:.0f}%)"
        if share >= 1
        else f"  legal: {len(space_.legal)} ({share:.2g}%)"
    )
    for reason, count in space_.dropped.items():
        out.print(f"  dropped {count}: {reason}")
    mma = [expected_mma(record, space_.device) for record in plan.records]
    kinds = Counter(kind for kind, _ in mma)
    out.print("  MMA of the legal configs: " + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
    for why, n in Counter(why for _, why in mma if why).most_common():
        out.print(f"    {n} off wgmma: {why}")
    rng = random.Random(seed)
    picks = sorted(
        rng.sample(range(len(space_.legal)), min(sample, len(space_.legal))), key=plan.ranked.index
    )
    if not picks:
        return
    table = Table(
        title=f"{counted(len(picks), 'legal config')}, sampled with seed {seed}, in the order of "
        f"{_model_noun(plan.model)}"
    )
    columns = (
        "rank",
        "config",
        "smem KiB (at most)",
        "acc regs/thread",
        "MMA",
        f"predicted ms ({space_.device.label})",
    )
    for name in columns:
        table.add_column(
            name,
            justify="left" if name in ("config", "MMA") else "right",
            no_wrap=name == "config",  # _print_fitted keeps it as wide as its widest config
        )
    for index in picks:
        config = space_.legal[index]
        smem, acc = family.resources(space_.problem, config, space_.device)
        table.add_row(
            str(plan.ranked.index(index) + 1),
            config.key(),
            f"{smem / 1024:.0f}",
            str(acc),
            mma[index][0],
            _ms(plan.predicted_s[index] * 1e3),
        )
    _print_fitted(table, ("smem KiB (at most)", "acc regs/thread"))


@main.command()
@SPEC
@click.option("--top", type=_IntRange(1, 100_000), default=20, show_default=True, help="Configs to list.")
@BUDGET
@OBJECTIVE
@click.option(
    "--gpu/--no-gpu",
    "measures_time",
    default=None,
    help="Plan the tune as on a GPU (rounds refitted on measurements) or as without one (the model's best "
    "budget configs, checked only). Default: whether this machine has a GPU.",
)
@SEED
@MODEL
@POWER_CAP
@DEVICE
def predict(spec, top, budget, objective, measures_time, seed, model, power_cap_w, device):
    """Show what the cost model predicts for OP_YAML's legal configs, best first, and what a tune would measure."""
    import numpy as np

    from kt.costmodel.roofline import LAUNCH_S
    from kt.costmodel.staged import roofline_and_bound

    with _working(_planning(spec)):
        plan = kt.plan(
            spec,
            budget=budget,
            device=device,
            seed=seed,
            model=model,
            objective=objective,
            power_cap_w=power_cap_w,
            measures_time=measures_time,
        )
    _header(spec)
    prediction, space_ = plan.prediction, plan.space
    budget = plan.budget  # what the tune spends: the one asked for, sized or capped (a note below says why)
    if plan.strategy != "guided":
        first = f"it checks the model's best {len(plan.chosen)} (nothing is timed without a GPU)"
    elif len(plan.chosen) < plan.budget:
        first = (
            f"its first round measures {len(plan.chosen)} of a budget of {budget}; later rounds follow the "
            "model refitted on those measurements"
        )
    else:  # the first round is the whole budget (or space): no refit follows
        first = f"its one round measures {len(plan.chosen)} of a budget of {budget}, all of it, so nothing is refitted"
    out.print(
        f"model: {plan.model} · target {space_.device.label} · {len(space_.legal)} legal of {space_.total} "
        f"configs · {plan.strategy} tune: {first}"
    )
    # a tune counts the rows its database already holds for the op against its budget, and measures only what is
    # missing: predict said which configs a tune "measures" where that tune then measured none
    out.print(
        "(as a tune on an empty database: a tune counts the rows its database holds for this op against the "
        "budget, and runs only configs not yet there)"
    )
    if plan.model_origin:
        out.print(f"the forest was fitted on {plan.model_origin}")
    if plan.model_note:
        err.print(f"warning: {plan.model_note}", style="yellow")
    if model is None and plan.model == "analytic" and not os.environ.get("KT_MODELS_DIR"):
        from kt.costmodel.models import STAND_INS, shipped_model_path

        if shipped_model_path(space_.device) is None:  # "model: analytic" alone did not say why
            shipped = " and ".join(f"sm_{cc}" for cc in sorted(STAND_INS))
            out.print(
                f"note: kt ships forests for {shipped} only, so {space_.device.label} "
                f"(sm_{space_.device.compute_capability}) is ranked by the analytic model; fit a forest on its "
                "own rows (`kt collect` on it, then `kt costmodel fit`)",
                style="yellow",
            )
    rows = plan.ranked[:top]
    records = [plan.records[i] for i in rows]
    roofline_s, bounds = roofline_and_bound(records, space_.device)
    roofline_ms = roofline_s * 1e3
    chosen = set(plan.chosen)
    # the first config of each program, best first (for a guided tune, the best of each tile before the rest,
    # as its first round takes them: Plan.variant): the model's own picks (exploit); `twin_of` the rank of the
    # program a config runs, when a better-ranked config runs it too (Plan.alias)
    firsts = plan.ranked_programs
    if plan.strategy == "guided" and plan.variant is not None:
        from kt.autotune.search import one_per_tile

        firsts = one_per_tile(firsts, plan.variant, set())
    exploit = set(firsts[: len(plan.chosen)])
    twin_of: dict[int, int] = {}
    if plan.alias is not None:
        rank_of = {index: position + 1 for position, index in enumerate(plan.ranked)}
        program_rank = {int(plan.alias[i]): rank_of[i] for i in firsts}
        twin_of = {
            i: program_rank[int(plan.alias[i])]
            for i in plan.ranked
            if program_rank[int(plan.alias[i])] != rank_of[i]
        }
    ranked_by = plan.objective if prediction.power_w is not None else "time"
    table = Table(
        title=f"best {len(rows)} of {len(space_.legal)} by predicted {ranked_by} (predictions, not measurements; "
        "within 0.1% a tie, in the tuner's preferred order)"
    )
    powered = prediction.power_w is not None  # W and mJ only where the model predicts power (else all "-")
    columns = (
        "rank",
        "config",
        "ms",
        "spread",
        "TFLOP/s",
        *(("W", "mJ") if powered else ()),
        "roofline ms",
        "config bound",
        "tune measures",
    )
    for name in columns:
        text = name in ("config bound", "tune measures")  # these wrap; a number or a config is never cut
        table.add_column(
            name,
            justify="left" if text or name == "config" else "right",
            overflow="fold" if text else "ellipsis",
            no_wrap=not text,  # _print_fitted keeps each as wide as its widest value
        )
    flops = space_.problem.flops
    for position, index in enumerate(rows):
        ms = prediction.runtime_s[index] * 1e3
        spread = prediction.runtime_spread[index]
        power = None if prediction.power_w is None else prediction.power_w[index]
        measures = "-" if index not in chosen else "yes" if plan.strategy != "guided" else "round 1"
        if index in chosen and index not in exploit:
            measures += " (explores)"
        if index in twin_of:
            measures = f"no: rank {twin_of[index]}'s program"
        table.add_row(
            str(position + 1),
            plan.config(index).key(),
            _ms(ms),
            _spread(spread),
            f"{flops / (ms * 1e-3) / 1e12:.1f}",
            *((_fmt(power, ".0f"), _fmt(None if power is None else power * ms, ".3f")) if powered else ()),
            _ms(roofline_ms[position]),
            bounds[position],
            measures,
        )
    dropped = _print_fitted(table, ("spread", "TFLOP/s", "roofline ms", "config bound"))
    if "config bound" not in dropped:
        out.print(  # the two columns come from two models: a reader took l2 for what bounds the roofline time
            "roofline ms: max(FLOPs at peak, least bytes at DRAM bandwidth), summed over the launches; config "
            "bound: what limits that config in the analytic model (math, smem, l2 or dram traffic)",
            style="dim",
        )
    beyond = sorted(plan.ranked.index(i) + 1 for i in chosen - set(rows))
    if beyond:
        out.print(
            f"{'round 1 also measures' if plan.strategy == 'guided' else 'the tune also takes'} "
            f"{counted(len(beyond), 'config')} ranked below the table "
            f"({'rank' if len(beyond) == 1 else 'ranks'} {_runs(beyond)})"
        )
    if plan.baseline_ratio is not None:
        out.print(
            f"predicted best: {plan.baseline_ratio:.2f}x {_baseline_name(space_.problem)} (the baseline forest "
            f"predicts PyTorch's path at {_ms(plan.baseline_s * 1e3)} ms; > 1 means kt is predicted faster)"
        )
    # a forest far outside its rows (a tiny problem): say which prediction is under a launch, with its figure
    under = []
    if len(prediction.runtime_s) and float(np.min(prediction.runtime_s)) < LAUNCH_S:
        best = float(np.min(prediction.runtime_s))
        under.append(f"{_model_noun(plan.model)} predicts the best config at {_ms(best * 1e3)} ms")
    if plan.baseline_s is not None and plan.baseline_s < LAUNCH_S:
        under.append(f"the baseline forest predicts PyTorch's path at {_ms(plan.baseline_s * 1e3)} ms")
    if under:
        out.print(
            f"note: {' and '.join(under)}, less than one kernel launch "
            f"({_ms(LAUNCH_S * 1e3)} ms), which no measured kernel took: outside what it was fitted on, so read "
            "the order of its configs, not their times"
            + (" or the ratio to PyTorch" if plan.baseline_ratio is not None else ""),
            style="yellow",
        )
    for note in (plan.budget_note, plan.twin_note):
        if note:
            out.print(f"note: {note}", style="yellow")
    if prediction.power_w is not None and plan.power_cap_w is not None:
        over = int(np.sum(prediction.power_w > plan.power_cap_w))
        if over:
            out.print(
                f"note: {over} of {len(space_.legal)} configs are predicted to draw more than "
                f"{plan.power_cap_w:g} W; "
                + (
                    "they rank after all the others"
                    if over < len(space_.legal)
                    else "so are all, which rank in their own order as without the cap"  # no others to follow
                ),
                style="yellow",
            )
    if prediction.power_w is None:
        few = re.search(r"no power \(read in (\d+) rows?; a power forest needs (\d+)\)", plan.model)
        other = re.search(
            r"no power for \S+ \(its power forest is (\S+)'s: board limits ([^)]*)\)", plan.model
        )
        why = (  # a forest fitted on the user's GPU rows, too few of them with a reading: not "no public data"
            f"its data held a power reading in only {few[1]} rows, and a power forest needs {few[2]}, so "
            "power predictions stay untrained until more are measured (`kt collect` on a GPU, then "
            "`kt costmodel fit`)"
            if few
            else "none of the rows it was fitted on held a power reading (kt's GPU rows hold one where NVML reads "
            "the card's energy counter, and say why not in energy_status; Inductor's logs hold none), so power "
            "predictions stay untrained until rows with one are measured (`kt collect` on such a GPU, then "
            "`kt costmodel fit`)"
            if "no power (none of its rows holds a power reading)" in plan.model
            else f"its power forest was fitted on {other[1]}, whose board power limit is not this card's "
            f"({other[2]}), so its watts are not this card's; fit one on this card's rows (`kt collect` on it, "
            "then `kt costmodel fit`)"
            if other
            else "it is a roofline of time alone; a forest fitted on kt's own GPU rows predicts power (`kt "
            "collect` on a GPU, then `kt costmodel fit`)"
            if plan.model == "analytic"
            else "no public data measures power during Triton kernels, so power predictions stay untrained "
            "until a forest is fitted on kt's own GPU rows (`kt collect` on a GPU, then `kt costmodel fit`)"
        )
        out.print(
            f"note: {_model_noun(plan.model)} predicts no power: {why}; W and mJ need it", style="yellow"
        )
        if plan.unapplied:
            out.print(f"note: so {plan.unapplied}", style="yellow")


@main.command()
@SPEC
@click.option(
    "--all", "everything", is_flag=True, help="Measure every legal config (within the spec's tune.space)."
)
@click.option(
    "--sample",
    type=_IntRange(1, MAX_BUDGET),
    default=None,
    help="Measure random legal configs until N of this problem are in the database (rows measured before, "
    "a tune's included, count: for a uniform sample, use a --db of its own), one of each set of configs that run "
    "the same program (group_m twins: 1,465 programs among the 4,395 legal configs of an fp16 16x4096x4096 GEMM on "
    "the H100; --all measures every one).",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no progress notes: the results only.")
@TIMEOUT
@RETRY
@BACKEND
@DEVICE
@DB
@WORKERS
@GPUS
def collect(spec, everything, sample, quiet, timeout, retry_failed, backend, device, db, workers, gpus):
    """Measure every legal config (--all) or a random sample into the database: the cost model's data."""
    if everything == (sample is not None):
        raise click.UsageError("give exactly one of --all or --sample N")
    check_cache_dir()
    session = kt.collect(
        spec,
        sample=sample,
        backend=backend,
        db=db,
        device=device,
        workers=workers,
        gpus=_gpus(gpus, backend),
        progress=not quiet,
        timeout_s=timeout,
        retry_failed=retry_failed,
    )
    counts = Counter(row["status"] for row in session.rows)
    out.print(
        f"{spec.name}: {counted(len(session.rows), 'config')} in {session.db_path} ({session.fresh} new; "
        f"{', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) on {session.runner.device}"
    )
    # why fewer or more were measured than --sample asked (tune.configs lists them all; fewer distinct programs),
    # and the failed configs --retry-failed left (shown with the bar, not under --quiet): never printed
    for note in (session.plan.budget_note, session.retry_note if quiet else ""):
        if note:
            out.print(f"note: {note}")


def _profile_name(ctx, param, value):
    """--name, checked before minutes of measuring (a profile so named did not load back)."""
    from kt.device import name_problem

    if value is not None and (why := name_problem(value)):
        raise click.BadParameter(why.removeprefix("name "))
    return value


def _profile_target(value: Path) -> Path:
    """kt calibrate's output: a .json file (any other name was written over, an op.yaml included)."""
    value = check_writable(value, "out")
    return check_suffix(value, "out", ".json", "a device profile is a JSON file that `device:` names")


@main.command()
@click.option(
    "--out",
    "out_path",
    type=_Path(path_type=Path),
    required=True,
    callback=lambda ctx, param, value: _profile_target(value),  # before the GPU is measured
    help="Profile JSON to write (a .json file).",
)
@click.option(
    "--name",
    default=None,
    callback=_profile_name,
    help="Profile name: letters, digits, _ . - (default: the matching built-in's, e.g. h100, else gpu).",
)
def calibrate(out_path, name):
    """Measure this machine's GPU (copy bandwidth, matmul throughput, limits) into a device profile."""
    from kt.autotune.calibrate import calibrate as run_calibration
    from kt.device import ProfileError, save_profile
    from kt.errors import DeviceError

    profile = run_calibration(name)
    try:  # a driver's figure that a profile does not allow (refused before it was written)
        save_profile(profile, out_path)
    except ProfileError as exc:
        raise DeviceError(f"calibrate: {exc}") from None
    out.print(
        f"{profile.gpu_name}: {profile.dram_bandwidth / 1e12:.2f} TB/s copy, "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in profile.peak_flops.items())
        + f" -> {out_path}"
    )


def _export_target(value: Path) -> Path:
    """kt export's output: a .csv (every reader of kt's files takes any other suffix for a database)."""
    value = check_writable(value, "OUT.csv", make_parent=False)
    return check_suffix(value, "OUT.csv", ".csv", "kt reads any other file as a tuning database")


@main.command()
@click.argument(
    "csv_path",
    metavar="OUT.csv",
    type=_Path(path_type=Path),
    callback=lambda ctx, param, value: _export_target(value),
)
@click.option(
    "--runner",
    type=click.Choice(["cuda", "interpret", "dryrun"]),
    default=None,
    help="Only rows from this runner (cuda rows are the measured ones; dryrun rows come from --backend dryrun).",
)
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default=None,
    help="Only rows with this status.",
)
@DB_TO_READ
def export(csv_path, runner, status, db):
    """Write the tuning database's rows (every column, with device and versions) to a CSV file (its folder
    must exist)."""
    from kt.autotune.database import Database

    where = {k: v for k, v in (("runner", runner), ("status", status)) if v is not None}
    with Database(db, create=False, readonly=True) as database:
        count = database.export_csv(csv_path, **where)
        out.print(f"{count} rows from {database.path} -> {csv_path}")


@main.group(name="import")
def import_():
    """Turn GPU measurements made by other tools into rows kt's cost model reads."""


@import_.command()
@click.argument(
    "files", metavar="FILE...", nargs=-1, required=True, type=_Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_path",
    type=_Path(dir_okay=False, path_type=Path),
    required=True,
    callback=lambda ctx, param, value: check_writable(value, "out"),  # before the logs are read
    help="CSV to write (read by `kt costmodel fit/eval --data`).",
)
@click.option(
    "--origin",
    default=None,
    help="Where the logs came from, named in every row's source column "
    "(default: autoheuristic-datasets@3ed2bc4, the public logs of PyTorch's learned mm heuristic).",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no progress notes: the results only.")
def inductor(files, out_path, origin, quiet):
    """Convert PyTorch Inductor's autoheuristic mm logs (.txt or .txt.gz) into a measurement CSV: one row per
    problem and Triton config, cuBLAS (extern_mm) as each problem's baseline row."""
    from kt.autotune.inductor import import_inductor

    with _LateProgress(not quiet, "reading Inductor logs") as progress:
        summary = import_inductor(files, out_path, origin=origin, progress=progress)
    out.print(str(summary))


@main.command()
@click.argument("space_path", metavar="SPACE", type=_Path(dir_okay=False, path_type=Path))
@STRATEGY
@click.option(
    "--budget",
    required=True,
    help="Evaluations per search: a count (100) or a percentage of each space's valid points, those that "
    "failed on the GPU included (5%).",
)
@click.option("--repeats", type=_IntRange(1, 100_000), default=20, show_default=True)
@click.option(
    "--seed", type=_IntRange(0, 2**63 - 1), default=0, show_default=True, help="Repeat r uses seed + r."
)
@click.option(
    "--csv",
    "csv_path",
    type=_Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every evaluation of every repeat (config, value, best so far, score so far) to this CSV.",
)
@click.option(
    "--device",
    default=None,
    metavar="PROFILE.json",
    callback=_sweep_profile,
    help="The calibrated profile kt sweeps were measured for (their rows name it; built-in ones need nothing; "
    "not auto).",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no progress notes: the results only.")
def replay(space_path, strategy, budget, repeats, seed, csv_path, device, quiet):
    """Replay a search strategy on a space measured whole, answering each evaluation from the measurements
    instead of a GPU.

    SPACE is a Kernel Tuner cache file (.json, .json.gz: every valid configuration timed, as in
    ../shared/data/kerneltuner; its strategies: guided or random, or exhaustive with 100%) or a kt tuning
    database / `kt export` CSV of finished `kt collect --all` sweeps of dense ops (each problem with 20 or more
    GEMM configs timed on a GPU is one space; a tune's rows count only where it timed 20 or more). A
    configuration that failed on the GPU is a spent evaluation that returned a failure. A repeat's score is
    optimum time / best time found within the budget."""
    from kt.autotune.spaces import check_space_file, parse_budget

    # what can be refused without reading the space is refused before the search's model stack loads
    parse_budget(budget)
    check_space_file(space_path)
    if csv_path is not None:
        check_writable(csv_path, "csv", make_parent=False)
        check_not_input(csv_path, [space_path], "csv", "SPACE")
        check_suffix(csv_path, "csv", ".csv", "the trace is CSV, and `--csv op.yaml` would replace the spec")
    from kt.autotune.replay import replay_file, write_trace

    with _LateProgress(not quiet, f"replaying {strategy}", counts=True) as progress:
        result = replay_file(
            space_path,
            strategy,
            budget,
            repeats=repeats,
            seed=seed,
            progress=progress,
            device=device,
            keep_rows=csv_path is not None,
        )
    out.print(_space_line(result))
    per_eval = 1e3 * result.decision_s / max(1, result.evaluations)
    per_round = 1e3 * result.decision_s / max(1, result.rounds)
    out.print(
        f"decision time: {per_eval:.1f} ms per evaluation, {per_round:.0f} ms per round "
        f"({result.evaluations} evaluations in {result.rounds} round{'s' if result.rounds != 1 else ''})"
    )
    if csv_path is not None:
        write_trace(result, csv_path)
        out.print(f"trace: {csv_path} ({len(result.rows)} evaluations)")
    # each space's own evaluations (a percentage rounded up) against its size: at 100%, or a count equal to the
    # size, guided stopped short without a word; a budget just the size, all of it spent, needs no note
    small = {name: size for name, size, n in zip(result.spaces, result.sizes, result.counts) if size <= n}
    # guided stops where nothing left is expected to beat its best: "measured them all" was not so
    short = [n for (name, _), n in result.spent.items() if name in small and n < small[name]]
    if short or any(size < n for size, n in zip(result.sizes, result.counts)):
        what = (
            "a search there measured them all"
            if not short
            else f"a search there could measure them all ({result.strategy} stopped after as few as "
            f"{min(short)}, expecting nothing left to beat its best)"
        )
        listed = _listed([f"{name} ({size})" for name, size in small.items()])
        out.print(f"note: budget {result.budget} covers every point of {listed}: {what}")
    out.print(result.line())


def _space_line(result) -> str:
    """kt replay's first line: the space(s) and their sizes. A tune's few rows of a problem are a space too,
    of only the configs it measured (a model's picks: `top` scores 1.000 there); the counts show it."""
    low, high = min(result.sizes), max(result.sizes)
    configs = f"{low} configs" if low == high else f"{low} to {high} configs"
    if len(result.spaces) == 1:
        return f"space: {result.spaces[0]} ({configs}; {result.source})"
    return f"space: {len(result.spaces)} problems of {configs}: {_listed(result.spaces)} ({result.source})"


def _listed(items: list[str], most: int = 3) -> str:
    """The first `most` items, and how many more."""
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


class _LateProgress:
    """A rich progress bar over bytes that appears only once a job has run `after_s` seconds: a quick job
    prints nothing but its result."""

    def __init__(self, enabled: bool, label: str, after_s: float = 1.0, counts: bool = False):
        self.enabled, self.label, self.after_s, self.counts = enabled, label, after_s, counts
        self.bar = None

    def __enter__(self):
        import time

        self.started = self.logged = time.monotonic()
        return self if self.enabled else None

    def __call__(self, done: int, total: int) -> None:
        import time

        # rich draws no bar off a terminal, nor on a dumb one (TERM=dumb): a line now and then, for a log
        if not err.is_terminal or err.is_dumb_terminal:
            from kt.autotune.progress import LOG_EVERY_S

            now = time.monotonic()
            if now - self.started >= self.after_s and now - self.logged >= LOG_EVERY_S:
                self.logged = now
                amount = f"{done}/{total}" if self.counts else f"{100 * done // max(1, total)}%"
                err.print(f"{self.label}: {amount}", highlight=False, markup=False)
            return
        if self.bar is None:
            if time.monotonic() - self.started < self.after_s:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn() if self.counts else DownloadColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _planning(spec) -> str:
    """The spinner's words while `kt.plan` runs (seconds: the space judged, every config predicted, the forests
    loaded; for a large block-sparse layout or a deep butterfly, a minute or more)."""
    return f"planning {spec.name}: judging its search space, predicting every legal config"


@contextlib.contextmanager
def _working(label: str):
    """A spinner with the time spent, on a terminal, while a job with no count of its own runs (a forest's
    fit, a cross-validation: 20 s to minutes with nothing on the screen); gone when it ends. Off a terminal,
    nothing (the result follows)."""
    if not err.is_terminal:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn(label), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        bar.add_task(label, total=None)
        yield


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=_Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for report.md, results.csv, measurements.csv, artifacts/ and bench.log.",
)
@click.option(
    "--minutes",
    type=_FiniteRange(0.5, 600),
    default=9.0,
    show_default=True,
    help="The whole run's time box; each part gets a share and is cut, not failed, when it runs out.",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="No GPU: every part on tiny shapes through the dry run (the GPU's measure path in the interpreter); "
    "nothing is timed.",
)
@click.option(
    "--budget",
    type=_IntRange(1, 10_000),
    default=None,
    help="Configs per quick tune (default 8; smoke 1).",
)
@click.option(
    "--only",
    default="",
    help="Of the quick-tune cases, run only those whose name contains this text (the smoke and collect parts run as always).",
)
@click.option(
    "--update",
    "update_path",
    type=_Path(dir_okay=False, path_type=Path),
    default=None,
    help="Merge the run's quick-tune rows into this BENCHMARKS.md (GPU runs only).",
)
@click.option(
    "--from",
    "from_dir",
    type=_Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Run nothing: merge the report already in this directory (with --update).",
)
@click.option("--quiet", is_flag=True, help="No progress bars and no progress notes: the results only.")
@_db_option(
    True,
    "Tuning database (SQLite) the run writes. Default: tuning.db in the --out folder, beside the report "
    "($KT_DB is not used).",
    kt_db=False,
)
@WORKERS
def bench(out_dir, minutes, smoke, budget, only, update_path, from_dir, quiet, db, workers):
    """One time-boxed run that fills BENCHMARKS.md: a smoke check of every family, quick tunes against PyTorch,
    and cost-model samples with the time left."""
    from kt.bench import run_bench, update_benchmarks

    if update_path is not None:
        check_suffix(update_path, "update", ".md", "it names the Markdown file (BENCHMARKS.md) kt edits")
    if from_dir is not None:
        if update_path is None or out_dir is not None:
            raise click.UsageError(
                "--from DIR merges an existing report: give it with --update FILE and no --out"
            )
        # a run's options, which a merge would pass over without a word (--only merged every case)
        context = click.get_current_context()
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("minutes", "smoke", "budget", "only", "quiet", "db", "workers")
            if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"--from DIR merges an existing report, whole: {', '.join(given)} "
                f"{'is' if len(given) == 1 else 'are'} for a run (--out DIR); drop {'it' if len(given) == 1 else 'them'}"
            )
        count = update_benchmarks(from_dir, update_path)
        out.print(f"{counted(count, 'row')} of {from_dir} merged into {update_path}")
        return
    if out_dir is None:
        raise click.UsageError("give --out DIR (or --from DIR with --update FILE)")
    if update_path is not None:  # refused before the run, not after it
        if smoke:
            raise click.UsageError(
                "--update: a --smoke run is a dry run, nothing timed; only GPU runs go into BENCHMARKS.md"
            )
        check_writable(update_path, "update", make_parent=False)
    check_cache_dir()
    command = shlex.join(["kt", *sys.argv[1:]])  # runnable as written: `--only "dense fp16 skinny"`
    result = run_bench(
        out_dir,
        minutes=minutes,
        smoke=smoke,
        budget=budget,
        db=db,
        workers=workers,
        progress=not quiet,
        command=command,
        only=only,
    )
    prefix = "dry run, nothing timed on a GPU: " if smoke else ""
    for part, info in result.parts.items():
        out.print(f"{prefix}{part}: {info['status']} in {info['seconds']:.0f} s ({info['note']})")
    if update_path is not None:
        count = update_benchmarks(out_dir, update_path)
        out.print(f"{counted(count, 'row')} merged into {update_path}")
    out.print(f"{prefix}report: {result.report}")


def _print_fitted(table: Table, optional: tuple[str, ...]) -> list[str]:
    """Print `table` with no value cut: each column at least as wide as its widest value (its longest word for
    the text columns that wrap), and where the terminal is still too narrow the `optional` columns left out,
    last first, with a note naming them (at 80 columns a "config bound" column came out empty and a number as
    "0.0…")."""
    for column in table.columns:
        cells = [str(cell) for cell in column.cells]
        words = [len(word) for text in (str(column.header), *cells) for word in text.split()]
        if column.no_wrap:  # its values whole; its header wraps at spaces
            column.min_width = max([column.min_width or 0, *map(len, cells), *words])
        else:  # wraps at spaces, never inside a word
            column.min_width = max([column.min_width or 0, *words])

    def needed() -> int:  # each column's least width, its padding (1 each side) and the lines between them
        return sum(column.min_width + 2 for column in table.columns) + len(table.columns) + 1

    dropped = []
    for name in reversed(optional):
        if needed() <= out.width:
            break
        kept = [column for column in table.columns if column.header != name]
        if len(kept) < len(table.columns):
            table.columns[:] = kept
            dropped.append(name)
    width = out.width
    if needed() > width:
        # narrower than the columns kept (a 40-column pane): rich gave a column no width at all ("tune measures"
        # came out empty, at 20 columns "rank" too); the table is printed as wide as it needs, the terminal
        # wrapping its lines
        out.width = needed()
    try:
        out.print(table)
    finally:
        out.width = width
    if dropped:
        out.print(
            f"(left out at {out.width} columns: {', '.join(reversed(dropped))}; a wider terminal shows them)",
            style="dim",
        )
    return dropped


def _whole(name: str, key: str, values) -> dict[str, Any]:
    """add_column's options that keep column `key` whole (its values name each row: at 80 columns rich cut
    three configs to one "m128n1…"), other columns giving up the width."""
    if name != key:
        return {}
    return {"no_wrap": True, "min_width": max((len(str(v)) for v in values), default=0)}


@main.command()
def devices():
    """List the built-in device profiles."""
    from kt.device import BUILTIN

    table = Table(title="built-in device profiles (datasheet figures)")
    for name in ("name", "GPU", "SMs", "smem/block KiB", "L2 MiB", "DRAM TB/s", "fp16 TFLOP/s", "TDP W"):
        table.add_column(name, **_whole(name, "name", BUILTIN))
    for p in BUILTIN.values():
        table.add_row(
            p.name,
            p.gpu_name,
            str(p.sm_count),
            str(p.smem_per_block // 1024),
            f"{p.l2_bytes / 2**20:.0f}",
            f"{p.dram_bandwidth / 1e12:.2f}",
            f"{p.peak_flops['float16'] / 1e12:.0f}",
            f"{p.tdp_w:.0f}",
        )
    _print_fitted(table, ())  # at 80 columns the A100's GPU name came out as "A100-SX…"


DATA = click.option(
    "--data",
    type=_Path(dir_okay=False, path_type=Path),
    required=True,
    callback=_data_file,
    help="Measurements: a tuning database (.db) or a CSV written by `kt export`.",
)
MODEL_DEVICE = click.option(
    "--device",
    default=None,
    metavar="NAME|PROFILE.json",
    callback=_device_name,
    help="Device profile the rows were tuned for (a name `kt devices` lists, or a calibrated JSON); default: "
    "auto, the GPU here, else h100 (`kt costmodel eval --model`: the model's own; `kt inspect`: the artifact's "
    "target, else the data's only one).",
)
GPU = click.option(
    "--gpu",
    default=None,
    metavar="NAME",
    callback=_gpu_name,
    help="Only rows measured on this GPU (as the driver names it).",
)
MODEL_SEED = click.option(
    "--seed", type=_IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed of the forests."
)


@main.group()
def costmodel():
    """Fit and evaluate the learned cost model (a random forest) on measured rows."""


@costmodel.command()
@DATA
@click.option(
    "--out",
    "out_path",
    type=_Path(dir_okay=False, path_type=Path),
    required=True,
    callback=lambda ctx, param, value: check_writable(value, "out"),
    help="Model file to write (.skops).",
)
@MODEL_DEVICE
@GPU
@MODEL_SEED
def fit(data, out_path, device, gpu, seed):
    """Fit the forest on every GPU-measured passing row of dense GEMM configs in --data for the device, and
    save it."""
    check_not_input(out_path, [data], "out", "--data")  # as fit_model checks, before scikit-learn loads
    check_suffix(out_path, "out", MODEL_SUFFIX, MODEL_NAMES)
    from kt.api import fit_model

    with _working(f"fitting the forest on {data}"):
        model, _ = fit_model(data, out_path, device=device, gpu=gpu, seed=seed)
    out.print(f"{model.describe()} from {data} -> {out_path}")
    measured_on = model.trained.get("measured_on") or []
    if any(not _the_profiles_card(gpu, model.device) for gpu in measured_on):
        out.print(
            f"note: the rows were measured on {', '.join(measured_on)}, and this is {model.device.key}'s model "
            f"({model.device.gpu_name}): give --device the profile of the card they were measured on (kt "
            "calibrate writes one)",
            style="yellow",
        )
    if not model.predicts_baseline:  # its absence switched off kt predict's line and the tune's sizing unsaid
        out.print(
            "note: no baseline forest: the data holds no timed PyTorch rows (a tune's candidate zero; kt collect "
            "times none), so this model neither predicts PyTorch's time nor sizes a tune's budget by it",
            style="yellow",
        )


def _the_profiles_card(gpu: str, profile) -> bool:
    """Whether rows measured on the GPU the driver (or a log) names `gpu` are `profile`'s card's: its own name,
    or a name no profile matches whose nearest is this profile (an Inductor log's "NVIDIA H100 (autoheuristic
    log; variant not recorded)", for which `kt costmodel fit` advised a calibration nobody can run)."""
    from kt.device import guess_gpu, match_gpu

    if gpu == profile.gpu_name:
        return True
    if match_gpu(gpu) is not None:  # a card of its own profile (an H100 PCIe beside h100's SXM)
        return False
    card = guess_gpu(gpu)
    return card is not None and card.name == profile.name


def _value(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)  # value != value: NaN


def _ranked_shapes(report) -> int:
    """Shapes with at least two configs measured: the only ones whose ranking metrics say anything. Configs, not
    rows: a config measured twice (two tunes) is one ranked row, and its shape's two rows left out the note."""
    from kt.costmodel.evaluate import one_per_config

    _, _, groups = one_per_config(report.runtime_ms, report.predicted_ms, report.groups, report.configs)
    return sum(n >= 2 for n in Counter(groups).values())


def _metric_rows(report) -> list[tuple[str, str]]:
    m = report.metrics
    ranked = _ranked_shapes(report) > 0
    return [
        ("runtime R2", _value(m["runtime_r2"], ".3f")),
        ("runtime MAPE %", _value(m["runtime_mape"], ".1f")),
        ("runtime median APE %", _value(m["runtime_median_ape"], ".1f")),
        ("power median APE %", _value(m.get("power_median_ape"), ".1f")),
        ("Spearman within problem", _value(m["spearman_within_problem"], ".3f")),
        ("top-1 (best / pick, 1 = best)", _value(m["top1_score"] if ranked else None, ".3f")),
        ("top-5 recall", _value(m["top5_recall"] if ranked else None, ".2f")),
        ("rows", str(m["rows"])),
        ("problems", str(m["problems"])),
        ("shapes", str(m["shapes"])),
    ]


@costmodel.command(name="eval")
@DATA
@click.option(
    "--model",
    type=_Path(dir_okay=False, path_type=Path),
    default=None,
    callback=_forest_file,
    help="Score this model file on --data instead of cross-validating a fresh forest.",
)
@click.option(
    "--folds",
    type=_IntRange(2, 100),
    default=5,
    show_default=True,
    help="Folds of whole shapes held out.",
)
@MODEL_DEVICE
@GPU
@MODEL_SEED
def evaluate(data, model, folds, device, gpu, seed):
    """Predicted against measured: cross-validated with whole shapes held out, or a model file's score."""
    from kt.api import evaluate_model

    doing = f"scoring {model} on {data}" if model is not None else f"cross-validating a forest on {data}"
    with _working(doing):
        report = evaluate_model(data, device=device, gpu=gpu, folds=folds, seed=seed, model=model)
    title = (
        f"model {model} on the shapes of {data} it was not fitted on"
        if model is not None
        else f"forest on {data}, {report.folds} folds of whole shapes held out"
    )
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _metric_rows(report):
        table.add_row(name, value)
    table.add_row("folds", str(report.folds) if report.folds else "- (model file)")
    out.print(table)
    out.print(report.details())
    for note in report.notes:
        out.print(f"note: {note}", style="yellow")
    if not _ranked_shapes(report):
        out.print("note: no shape has 2 or more configs measured, so the ranking metrics say nothing")
    out.print(report.summary())


@main.command()
@click.argument(
    "path",
    metavar="ARTIFACT|DB",
    type=_Path(path_type=Path),
    callback=lambda ctx, param, value: _measurements(
        existing_path(value, "inspect", INSPECT_HINT), "inspect"
    ),
)
@_db_option(
    create=False,
    help="For an artifact: the tuning database with its rows (default: the tune's, else $KT_DB, else tuning.db in "
    "kt's cache folder).",
    kt_db=False,
)
@click.option(
    "--model",
    type=_Path(dir_okay=False, path_type=Path),
    default=None,
    callback=_forest_file,
    help="A forest model file (default: forests fitted on the data's other shapes).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=_Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the PNG plots (default: the artifact, or <data file name>-inspect/ next to the data file).",
)
@MODEL_DEVICE
@GPU
def inspect(path, db, model, plots_dir, device, gpu):
    """Predicted against measured for a finished tune (an artifact) or every problem in a database."""
    from kt.autotune.inspection import inspect_tune  # loads torch only past the refusals that need none

    # a bad plot folder (--plots, or the default one) is refused by inspect_tune before the work
    with _working(f"inspecting {path}: fitting forests, scoring, plotting"):
        result = inspect_tune(path, db=db, model=model, plots_dir=plots_dir, device=device, gpu=gpu)
    first, last = result.dates
    when = (
        "no measurement dates recorded" if first == "?" else first if first == last else f"{first} to {last}"
    )
    rows, shapes = len(result.records), result.shapes
    out.print(
        f"{path}: {rows} measured row{'s' * (rows != 1)} of {shapes} problem{'s' * (shapes != 1)} on "
        f"{result.gpu} (target {result.target}), {when}, from {result.db_path}",
        style="bold",
    )
    if result.chosen:
        row = min(
            (r for r in result.records if r["config_key"] == result.chosen), key=lambda r: r["runtime_ms"]
        )
        # configs, not rows: a database of several tunes holds a config's repeats
        faster = len({r["config_key"] for r in result.records if r["runtime_ms"] < row["runtime_ms"]})
        out.print(
            f"chosen: {result.chosen} · {_ms(row['runtime_ms'])} ms measured ({counted(faster, 'config')} faster)"
        )
    reports = [(f"tuner ({result.tuner_model or 'stored'})", result.tuner), ("forest", result.forest)]
    reports = [(name, report) for name, report in reports if report is not None]
    table = Table(title=f"predicted vs measured (top-k with k = 5) on {result.gpu}")
    table.add_column("metric")
    for name, _ in reports:
        table.add_column(name, justify="right")
    columns = [_metric_rows(report) for _, report in reports]
    for i, (name, _) in enumerate(columns[0]):
        table.add_row(name, *(rows[i][1] for rows in columns))
    out.print(table)
    if result.tuner is not None:
        out.print(
            "tuner: each row's prediction as its tune stored it, by the model of its round (after the first, "
            "refitted on the rows before it, this problem's among them: not held out)"
        )
    if result.forest_from:
        out.print(f"forest: {result.forest_from}")
    for label, importances in result.importances.items():
        top = list(importances.items())[:10]
        out.print(f"feature importances ({label} forest): " + ", ".join(f"{n} {v:.3f}" for n, v in top))
    out.print("plots: " + ", ".join(str(p) for p in result.plots))
    if not any(_ranked_shapes(report) for _, report in reports):
        result.notes.append("no problem has 2 or more configs measured, so the ranking metrics say nothing")
    for note in result.notes:
        out.print(f"note: {note}", style="yellow")


if __name__ == "__main__":
    main()
