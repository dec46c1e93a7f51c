"""`kt bench`: one time-boxed run that turns a few GPU minutes into every BENCHMARKS.md row.

Three parts, each with its own share of the time and each cut (not failed) when its share runs out; a part or a
case that fails is recorded and the run goes on:

1. smoke: every family in every dtype on a full problem, the cost model's first config and PyTorch's own path,
   checked against float64 and timed once (the measure path end to end); a config the compiler refuses (a
   spill) sends the next ranked one, up to `SMOKE_TRIES`;
2. tunes: quick tunes (a small budget, runtime only) of the cases below, each against its PyTorch baseline
   (candidate zero), then the winner and the baseline timed again back to back with energy;
3. collect: with the time left, runtime-only `kt collect` samples of dense shapes for the cost model.

It writes DIR/report.md (the rows for BENCHMARKS.md with the device, driver, clocks, versions, date and command),
DIR/results.csv, DIR/measurements.csv (an export of the run's tuning database), DIR/artifacts/ and DIR/bench.log;
`update_benchmarks` merges a report into BENCHMARKS.md. `smoke=True` runs every part on tiny shapes through the
dry run (kt.autotune.runners.DryRunner) on a machine without a GPU: every line it writes says that nothing was
timed on a GPU, and `update_benchmarks` refuses its report.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kt.errors import KtError, counted, one_line
from kt.files import atomic_write_text, check_not_input, csv_records, make_folder

log = logging.getLogger("kt.bench")

# Each part's share of what is left of the run's time when it starts (what a part leaves unused goes to the later
# ones). The smoke's was 0.15: a 3.5-minute run on the H200 (2026-12-04) gave it 31 s and it reached 2 of its 46
# rows, where the 7-minute run's (2026-11-30) took 67 s for 45; its rows are the GPU's check of every family
SHARES = {"smoke": 0.3, "tunes": 0.6, "collect": 0.1}
# the quick tunes' was 0.5 (and collect's 0.2): a 3-minute run on the H200 (2026-12-04) gave them 90 s for 9
# cases of about 12.5 s each, and its last two measured no generated config
# A quick tune's first guess at what its case takes after the tune: its winner and PyTorch's path timed again
# back to back, with energy (3.3 to 3.6 s a case on the H200, 2026-12-04). Each case's tune gets its share less
# this (less what the case before took, once there is one), so that the tunes before it do not eat the time of
# the last cases; never less than half its share.
RETIME_S = 4.0
# configs the smoke tries per family and dtype, in the model's order: the next is built only when the one before
# was refused at its compile (out_of_resources: legality let in a build that spills)
SMOKE_TRIES = 3
DRY = "dry run, nothing timed on a GPU"
MAX_FILE_BYTES = 16 * 1024 * 1024  # every file of a report stays small enough to commit


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]


def _bsr(block: int, density: float) -> dict[str, Any]:
    return {"block": [block, block], "density": density, "seed": 0}


def tune_cases(smoke: bool) -> list[Case]:
    """Part 2's cases (the issue's list); `smoke` shrinks each to a tiny problem of the same kind."""
    if smoke:
        return [
            Case("dense fp16", {"op": "dense", "dtype": "float16", "shape": {"m": 32, "n": 32, "k": 32}}),
            Case("dense bf16", {"op": "dense", "dtype": "bfloat16", "shape": {"m": 32, "n": 32, "k": 32}}),
            Case("dense fp16 skinny m=16", {"op": "dense", "shape": {"m": 16, "n": 48, "k": 32}}),
            Case("dense fp16 odd", {"op": "dense", "shape": {"m": 37, "n": 29, "k": 19}}),
            Case("monarch", {"op": "monarch", "shape": {"batch": 16, "n": 64, "nblocks": 4}}),
            Case(
                "blocksparse",
                {
                    "op": "blocksparse",
                    "shape": {"batch": 16, "in": 64, "out": 64},
                    "sparsity": _bsr(16, 0.25),
                },
            ),
            Case("lowrank", {"op": "lowrank", "shape": {"batch": 16, "dims": [64, 8, 64]}}),
            Case("fft fp16", {"op": "fft", "dtype": "float16", "shape": {"batch": 8, "n": 64}}),
            Case("butterfly", {"op": "butterfly", "shape": {"batch": 16, "n": 64}}),
        ]
    return [
        Case(
            "dense fp16 4096^3",
            {"op": "dense", "dtype": "float16", "shape": {"m": 4096, "n": 4096, "k": 4096}},
        ),
        Case(
            "dense bf16 4096^3",
            {"op": "dense", "dtype": "bfloat16", "shape": {"m": 4096, "n": 4096, "k": 4096}},
        ),
        Case("dense fp16 skinny m=16", {"op": "dense", "shape": {"m": 16, "n": 4096, "k": 4096}}),
        Case("dense fp16 odd 4097x4095x4099", {"op": "dense", "shape": {"m": 4097, "n": 4095, "k": 4099}}),
        Case("monarch n=4096 nb=64", {"op": "monarch", "shape": {"batch": 16384, "n": 4096, "nblocks": 64}}),
        Case(
            "blocksparse 10% 64x64",
            {
                "op": "blocksparse",
                "shape": {"batch": 8192, "in": 4096, "out": 4096},
                "sparsity": _bsr(64, 0.1),
            },
        ),
        Case("lowrank 4096-64-4096", {"op": "lowrank", "shape": {"batch": 8192, "dims": [4096, 64, 4096]}}),
        Case("fft fp16 n=4096", {"op": "fft", "dtype": "float16", "shape": {"batch": 16384, "n": 4096}}),
        Case("butterfly n=1024", {"op": "butterfly", "shape": {"batch": 8192, "n": 1024}}),
    ]


def smoke_specs(smoke: bool) -> list[dict[str, Any]]:
    """Part 1: one problem of every family in every dtype it takes (full problems; tiny ones for `smoke`)."""
    if smoke:
        rows, n, feat, block = 9, 64, 32, 8
    else:
        rows, n, feat, block = 1000, 1024, 1024, 64
    bsr = {"block": [block, block], "density": 0.25, "seed": 1}
    sparse_shape = {"batch": rows, "in": feat, "out": feat}
    ops = [
        {"op": "dense", "shape": {"m": rows, "n": feat - 3, "k": feat // 2 + 1}},
        {"op": "monarch", "shape": {"batch": rows, "n": n, "nblocks": int(math.isqrt(n))}},
        {"op": "butterfly", "shape": {"batch": rows, "n": n}},
        {"op": "fft", "shape": {"batch": rows, "n": n}},
        {"op": "blocksparse", "shape": sparse_shape, "sparsity": bsr},
        {"op": "lowrank", "shape": {"batch": rows, "dims": [feat, 16, feat]}},
        {
            "op": "sum",
            "terms": [
                {"op": "blocksparse", "shape": sparse_shape, "sparsity": bsr},
                {"op": "lowrank", "shape": {"batch": rows, "dims": [feat, 8, feat]}},
            ],
        },
        {"op": "blocksparse_grad", "shape": sparse_shape, "sparsity": bsr},
    ]
    specs = []
    for op in ops:
        for dtype in ("float16", "bfloat16", "float32"):
            if op["op"] == "fft" and dtype == "bfloat16":
                continue  # the FFT takes float16 (planar) and float32 (complex64)
            name = f"smoke_{op['op']}_{dtype}"
            specs.append({**op, "dtype": dtype, "name": name})
    return specs


def collect_shapes(smoke: bool) -> list[tuple[int, int, int]]:
    """Part 3: dense shapes for the cost model's data, in the order they are sampled until the time is up."""
    if smoke:
        return [(24, 40, 32)]
    return [
        (4096, 4096, 4096),
        (1024, 1024, 1024),
        (16, 4096, 4096),
        (8192, 2048, 128),
        (777, 1333, 555),
        (2048, 2048, 2048),
        (128, 12288, 4096),
        (4097, 4095, 4099),
        (64, 64, 65536),
        (3000, 5000, 700),
    ]


@dataclass
class BenchResult:
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> {"seconds", "status", "note"}
    interrupted: str = ""  # the part a Ctrl-C, SIGTERM or SIGHUP stopped ("" when the run was not stopped)

    @property
    def report(self) -> Path:
        return self.out / "report.md"


class _Clock:
    """The run's time box: a deadline for the whole run and one per part, each part's share of what is left."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.done: set[str] = set()

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def part_deadline(self, part: str) -> float:
        remaining = [p for p in SHARES if p not in self.done]
        share = SHARES[part] / sum(SHARES[p] for p in remaining)
        return time.monotonic() + self.left() * share


def run_bench(
    out: str | Path,
    minutes: float = 9.0,
    smoke: bool = False,
    budget: int | None = None,
    db: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    command: str = "",
    only: str = "",
) -> BenchResult:
    """Run the three parts within `minutes` and write the report into `out` (see the module docstring).

    `smoke` runs tiny problems through the dry run (no GPU); `budget` is the configs per quick tune (default 8,
    1 for `smoke`); `db` the tuning database (default out/tuning.db); `only` runs the tune cases whose name
    contains it."""
    out = Path(out)
    _check_out(out)  # a wrong folder is refused before torch loads (seconds)
    if db is not None:  # the run writes these: a database there was written over by its own report
        own = {(out / name).resolve() for name in (REPORT_NAME, CSV_NAME, EXPORT_NAME, LOG_NAME, LOCK_NAME)}
        if Path(db).resolve() in own:
            raise KtError(
                f"db: {str(db)!r} is a file the report in --out writes; give the database another name"
            )
    cases = [case.name for case in tune_cases(smoke)]
    if not any(only in name for name in cases):  # a typo would run no quick tune, and say so only at the end
        raise KtError(f"only: {only!r} is in no quick-tune case's name; the cases: {', '.join(cases)}")
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            raise KtError(
                "bench: no CUDA GPU here; `kt bench --smoke --out DIR` runs every part on tiny shapes through the "
                "dry run (nothing is timed)"
            )
    global WRITTEN
    WRITTEN = None
    made = not out.exists()
    make_folder(out, "out")  # refused (a file in its path) before torch loads
    # the run's stamp (torch's import, git: most of the start-up) before the lock: a signal here left a folder
    # holding only the lock, and kt said its report held the parts that finished; a folder made for it goes
    try:
        context = run_context(smoke, command)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    lock = _lock_out(out)
    try:
        return _run(out, minutes, smoke, budget, db, workers, progress, context, only)
    finally:
        lock.close()  # the lock goes with its descriptor


# The report this process's last run wrote (kt's CLI says where an interrupted run's report is only when one is)
WRITTEN: Path | None = None


def _lock_out(out: Path):
    """The open lock file of `out`, held (flock) while this run writes there: two runs into one folder garbled
    bench.log and left one run's report under the other's, both saying nothing."""
    import fcntl
    import os

    handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the run: the lock is its descriptor)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise KtError(
            f"out: another kt bench (pid {holder}) is writing its report to {out}; wait for it to end, or "
            "choose another directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class _BenchLog(logging.FileHandler):
    """bench.log, which says once on the terminal that it cannot be written (a full disk) and then goes quiet:
    logging printed a traceback for every record after the first failed."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            import sys

            error = sys.exc_info()[1]
            print(
                f"kt: warning: {self.baseFilename} cannot be written ({one_line(error)}); the run goes on without it",
                file=sys.stderr,
            )


def _run(out, minutes, smoke, budget, db, workers, progress, context, only) -> BenchResult:
    from kt.autotune.progress import BenchProgress

    handler = _BenchLog(out / LOG_NAME, mode="w")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("kt").addHandler(handler)  # kt's warnings and this module's lines (it propagates)
    log.setLevel(logging.INFO)
    result = BenchResult(out, context=context)
    clock = _Clock(minutes * 60.0)
    settings = _Settings(
        smoke=smoke,
        backend="dryrun" if smoke else "cuda",
        db=Path(db) if db else out / "tuning.db",
        workers=workers,
        budget=budget or (1 if smoke else 8),
    )
    reporter = BenchProgress(progress, smoke, clock.end)
    parts = (("smoke", _smoke_part), ("tunes", _tune_part), ("collect", _collect_part))
    try:
        # inside: a Ctrl-C as torch and Triton load (seconds) wrote no report, and the message said it had
        settings.runner = _runner(settings)
        with settings.runner:  # one set of workers for the whole run: each start costs seconds
            for part, run in parts:
                result.parts[part] = _run_part(part, run, clock, settings, result, reporter, only)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM in kt's CLI: the report says so, and what never ran
        stopped = (part for part, info in result.parts.items() if info["status"] == "interrupted")
        # none: it came between parts, as the workers started or stopped
        result.interrupted = next(stopped, "the workers' start or shutdown")
        for part, _ in parts:
            result.parts.setdefault(
                part, {"seconds": 0.0, "status": "not run", "note": "the run was stopped"}
            )
        never = [part for part, info in result.parts.items() if info["status"] == "not run"]
        _say(settings, f"interrupted during {result.interrupted}; never ran: {', '.join(never) or 'none'}")
        raise
    except Exception as exc:  # the workers did not start (the parts record their own failures): the report
        # said "parts: " over empty tables
        for part, _ in parts:
            result.parts.setdefault(
                part, {"seconds": 0.0, "status": "not run", "note": f"the workers failed: {one_line(exc)}"}
            )
        raise
    finally:
        reporter.stop()
        _write_outputs(result, settings)
        logging.getLogger("kt").removeHandler(handler)
        handler.close()
    return result


def _run_part(part: str, run, clock: _Clock, settings, result: BenchResult, reporter, only: str) -> dict:
    """Run one part within its share of the time left; a part that fails is recorded, never raised."""
    deadline = clock.part_deadline(part)
    started = time.monotonic()
    before = len(result.rows)
    try:
        items = run(settings, deadline, result, reporter, only)
        status = "done" if time.monotonic() <= deadline + 1.0 else "over its share"
        note = counted(items, "item")
        # a part whose share ran out before some of its items started is cut, not done (its rows say which)
        cut = sum(str(row.get("status", "")).startswith("not reached") for row in result.rows[before:])
        if cut:
            status, note = "cut short", f"{counted(items, 'item')}, {cut} not reached: its time share ran out"
    except KeyboardInterrupt:
        seconds = round(time.monotonic() - started, 1)
        note = f"stopped after {counted(len(result.rows) - before, 'row')}"
        result.parts[part] = {"seconds": seconds, "status": "interrupted", "note": note}
        _say(settings, f"part {part}: interrupted in {seconds:.0f} s ({note})")
        raise
    except Exception as exc:  # the other parts still run
        status, note = "failed", one_line(exc)
        log.error("part %s failed: %s", part, note, exc_info=True)  # the traceback to bench.log only
    clock.done.add(part)
    seconds = round(time.monotonic() - started, 1)
    _say(settings, f"part {part}: {status} in {seconds:.0f} s ({note})")
    return {"seconds": seconds, "status": status, "note": note}


@dataclass
class _Settings:
    smoke: bool
    backend: str
    db: Path
    workers: int | None
    budget: int
    runner: Any = None  # the run's runner, its workers shared by every part; its timing set per use

    def timing(self, **changes):
        """The runner's timing for the next use: kt's defaults with `changes` (a dry run keeps its own)."""
        from kt.autotune.timing import DEFAULT_TIMING, DRY_RUN_TIMING

        self.runner.timing = DRY_RUN_TIMING if self.smoke else replace(DEFAULT_TIMING, **changes)


def _runner(settings: _Settings):
    import kt
    from kt.autotune.runners import make_runner

    # one GPU, cuda:0: on a machine of several the pool would time kt's kernel and PyTorch's side by side on
    # two cards, where the report says same GPU
    gpus = [0] if settings.backend == "cuda" else None
    return make_runner(
        settings.backend, kt.resolve_profile("auto"), gpus=gpus, workers=settings.workers, timeout_s=120.0
    )


def _say(settings: _Settings, message: str) -> None:
    log.info(f"{DRY}: {message}" if settings.smoke else message)


def _bench_folder(out: Path) -> bool:
    """Whether `out` holds a kt bench report, by what its files say (a user's own report.md or bench.log, by
    name alone, was written over): a report.md of kt bench, or, a run killed before its report, a bench.log of
    kt's lines (or empty)."""
    report, logged = out / REPORT_NAME, out / LOG_NAME
    if report.is_file():
        return _first_line(report).startswith("# kt bench")
    if logged.is_file():
        first = _first_line(logged)
        return (
            not first or re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} kt[\w.]* [A-Z]+ ", first) is not None
        )
    return False


def _first_line(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(256).decode("utf-8", "replace").split("\n", 1)[0]
    except OSError:
        return ""


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise KtError(f"out: {out} exists and is a file; give a directory for the report")
    if (
        out.is_dir()
        and any(out.iterdir())
        and not _bench_folder(out)
        and [path.name for path in out.iterdir()] != [LOCK_NAME]  # a run killed as it began
    ):
        raise KtError(f"out: {out} holds files that are not a kt bench report; choose another directory")
    gpu_run = _gpu_run(out / CSV_NAME)
    if gpu_run is not None:  # a dry run (--smoke) wrote over a GPU run's report, without a word
        raise KtError(
            f"out: {out} holds the report of a GPU run ({gpu_run}), which kt bench never writes over; choose "
            "another directory"
        )


def _gpu_run(path: Path) -> str | None:
    """The device and start of the GPU run whose results.csv `path` is, or None (none there, or a dry run's)."""
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("gpu_run") == "True":
                    return f"{row.get('device') or '?'}, {row.get('started_at') or row.get('date') or '?'}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return None  # unreadable: a report being made, or damaged; it is no GPU run kt can tell
    return None


def _commit(package: Path | None = None) -> str | None:
    """The git commit kt runs from (with "+changes" where tracked files differ from it), or None outside a
    checkout of kt: every run recorded kt_version 0.1.0, so a report could not be tied to the code that made it.
    $KT_COMMIT, where it is a commit's hex (and "+changes"), says it instead: a lent GPU machine runs a copy of
    the working tree without .git, whose command names the commit (benchmarks/gpu_session.sh).
    `package`: kt's folder (this file's). An installed kt inside a user's own repository (a .venv in the
    project) is no checkout of kt: its package must be the checkout's top-level `kt`, tracked there (the user's
    commit was recorded as kt's)."""
    import subprocess

    given = os.environ.get("KT_COMMIT", "").strip()
    if re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", given):  # a copy without .git: a lent GPU machine's
        return given
    here = str((package or Path(__file__).parent).resolve())
    try:
        head, top = (
            subprocess.run(
                ["git", "-C", here, "rev-parse", *args], capture_output=True, text=True, timeout=10
            )
            for args in (["--short=12", "HEAD"], ["--show-toplevel"])
        )
        if head.returncode != 0 or top.returncode != 0:
            return None
        commit, top = head.stdout.strip(), top.stdout.strip()
        tracked = subprocess.run(
            ["git", "-C", here, "ls-files", "--error-unmatch", "__init__.py"], capture_output=True, timeout=10
        )
        if Path(top).resolve() / "kt" != Path(here) or tracked.returncode != 0:
            return None
        changed = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed.stdout.strip() else "")


def run_context(smoke: bool, command: str) -> dict[str, Any]:
    """The stamp of the run: the device (named without a CUDA context here), driver, clocks, versions, date."""
    from kt.autotune.runners import DRY_RUN_DEVICE
    from kt.autotune.versions import software_versions

    context: dict[str, Any] = {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or "kt bench",
        "gpu_run": not smoke,
        **{f"{key}_version": value for key, value in software_versions().items()},
        "kt_commit": _commit(),
    }
    if smoke:
        context.update(device=DRY_RUN_DEVICE, driver=None, max_sm_clock_mhz=None, power_limit_w=None)
    else:
        from kt.autotune.gpuinfo import visible_gpu

        gpu = visible_gpu()
        context.update(
            device=gpu.name,
            driver=gpu.driver or None,
            max_sm_clock_mhz=gpu.max_sm_clock_mhz,
            power_limit_w=gpu.power_limit_w,
        )
    return context


# -- part 1: every family and dtype, once ---------------------------------------------------------------------


def _smoke_part(settings: _Settings, deadline: float, result: BenchResult, reporter, only: str) -> int:
    import kt
    from kt.api import distinct_tiles
    from kt.autotune.database import Database
    from kt.autotune.tune import (
        PyTorchPath,
        generated_candidate,
        measurement_row,
        pytorch_candidate,
        row_key,
    )
    from kt.codegen import family_for
    from kt.ir import op_from_spec

    candidates, specs, next_configs = [], {}, {}
    for data in smoke_specs(settings.smoke):
        spec = kt.parse_spec(data)
        (node,) = op_from_spec(spec).kernel_graph().kernels
        plan = kt.plan(spec, budget=1, measures_time=not settings.smoke)
        first, *others = distinct_tiles(plan, SMOKE_TRIES)  # a group_m twin of a refused build spills too
        candidates += [
            generated_candidate(node.problem, first, name=spec.name),
            pytorch_candidate(node.problem, name=spec.name),
        ]
        specs[node.problem.key()] = spec
        next_configs[node.problem.key()] = others
    settings.timing(target_ms=50.0, min_runs=5, energy_s=0.0, cooldown_ms=50.0)
    runner, profile = settings.runner, settings.runner.profile
    reporter.part("smoke", len(candidates), deadline)
    reached, queued = set(), list(candidates)

    def retry(candidate, status: str):
        """A build legality let in but the compiler refused (a spill): the next ranked config, so that the family
        and dtype still get their float64 check. It joins the run at once: built with the first builds, measured
        in the refused one's place (until 2026-12-04 it waited for the whole first batch, and the H200's 54 s
        smoke never reached it)."""
        others = next_configs[candidate.problem.key()]
        if isinstance(candidate.config, PyTorchPath) or status != "out_of_resources" or not others:
            return None
        name = specs[candidate.problem.key()].name
        queued.append(generated_candidate(candidate.problem, others.pop(0), name=name))
        reporter.grow(1)
        return queued[-1]

    with Database(settings.db) as database:
        for item in runner.run(candidates, deadline, retry):
            problem = item.candidate.problem
            spec, pytorch = specs[problem.key()], isinstance(item.candidate.config, PyTorchPath)
            key = row_key(runner, profile, problem, pytorch)
            database.insert(measurement_row(item, spec, runner, key, family_for(problem)))
            result.rows.append(_smoke_row(spec, item.candidate, item.status, item.message, item.values))
            reached.add(id(item.candidate))
            side = "PyTorch" if pytorch else "kt"  # (each op's two lines read alike on the console)
            reporter.advance(f"{spec.op} {spec.dtype} {side}: {item.status}")
            _say(settings, f"smoke {spec.op} {spec.dtype} {side}: {item.status}")
    for candidate in queued:
        if id(candidate) not in reached:
            spec = specs[candidate.problem.key()]
            why = "the part's time share ran out first"
            result.rows.append(_smoke_row(spec, candidate, "not reached", why, {}))
    return len(reached)


def _smoke_row(spec, candidate, status: str, message: str, values: dict[str, Any]) -> dict[str, Any]:
    from kt.autotune.tune import PyTorchPath

    pytorch = isinstance(candidate.config, PyTorchPath)
    return {
        "part": "smoke",
        "case": f"{spec.op} {spec.dtype}",
        "op": spec.op,
        "dtype": spec.dtype,
        "problem": str(candidate.problem),
        "kernel": str(candidate.config) if pytorch else candidate.config.key(),
        "status": status,
        "message": message,
        "rel_err": values.get("rel_err"),
        "baseline_ms" if pytorch else "kt_ms": values.get("runtime_ms"),
        "impl": values.get("impl"),
        "timed": values.get("runtime_ms") is not None,
    }


# -- part 2: quick tunes against PyTorch ----------------------------------------------------------------------


def _tune_part(settings: _Settings, deadline: float, result: BenchResult, reporter, only: str) -> int:
    cases = [c for c in tune_cases(settings.smoke) if only in c.name]
    reporter.part("tunes", len(cases), deadline)
    done, after = 0, RETIME_S
    for position, case in enumerate(cases):
        left = deadline - time.monotonic()
        if left <= 0:
            result.rows.append(_skipped(case, "not reached: the part's time share ran out first"))
            continue
        share = left / (len(cases) - position)  # an equal share of what is left, so no case starves the rest
        started = time.monotonic()
        try:  # the tune stops in time for the timing after it (RETIME_S)
            row = _tune_case(case, settings, started + max(share - after, share / 2), result.out)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one case failing (no config passes, an error) never stops the others
            if isinstance(exc, KtError):  # kt's own word (no config passed, time ran out): one line
                log.warning("tune case %s failed: %s", case.name, one_line(exc))
            else:  # anything else is a defect: its traceback is what a report of it needs
                log.error("tune case %s failed: %s", case.name, one_line(exc), exc_info=True)
            # A case that raised failed, also when it overran its share: "not reached" is only for a case that
            # never started (the first GPU run's FFT case, three 120 s compile timeouts, was misreported so).
            over = " (past its time share)" if time.monotonic() > started + share else ""
            row = _skipped(case, f"failed{over}: {one_line(exc)}")
        row["bench_s"] = round(time.monotonic() - started, 1)
        if row.get("tune_s") is not None:  # what this case took after its tune: the next one's guess (a case
            # that timed PyTorch's path alone took about half, so not less than half the first guess)
            after = max(RETIME_S / 2, time.monotonic() - started - row["tune_s"])
        result.rows.append(row)
        done += 1
        reporter.advance(f"{case.name}: {_ratio_text(row)}")
        _say(settings, f"tune {case.name}: {_ratio_text(row)}")
    return done


def _skipped(case: Case, why: str) -> dict[str, Any]:
    return {
        "part": "tunes",
        "case": case.name,
        "op": case.spec["op"],
        "dtype": case.spec.get("dtype", "float16"),
        "status": why,
        "timed": False,
    }


def _tune_case(case: Case, settings: _Settings, deadline: float, out: Path) -> dict[str, Any]:
    import kt
    from kt.autotune.tune import PyTorchPath, generated_candidate, pytorch_candidate

    spec = kt.parse_spec({**case.spec, "name": _slug(case.name), "tune": {"budget": settings.budget}})
    started = time.monotonic()
    settings.timing(energy_s=0.0)  # the tune times runtime only; energy is for the winner, below
    tuned = kt.tune(spec, db=settings.db, progress=False, deadline=deadline, runner=settings.runner)
    tune_s = time.monotonic() - started
    tuned.save(out / "artifacts" / spec.name)
    problem = tuned.problem
    row: dict[str, Any] = {
        "part": "tunes",
        "case": case.name,
        "op": spec.op,
        "dtype": spec.dtype,
        "problem": str(problem),
        "status": "ok",
        "kernel": "pytorch" if tuned.best.pytorch else "generated",
        "kt_config": tuned.best.config.key() if tuned.best.config else None,
        "baseline_impl": tuned.baseline_impl,
        "tune_ratio": tuned.baseline_ratio,
        "tune_s": round(tune_s, 1),
        "measured": len(tuned.rows),
        "legal": len(tuned.plan.space.legal),
        "flops": problem.flops,
        "timed": tuned.measured,
    }
    # The best generated kernel and PyTorch's path again, back to back, with energy: the report's figures.
    candidates = [pytorch_candidate(problem, name=spec.name)]
    if tuned.best.config is not None:
        candidates.insert(0, generated_candidate(problem, tuned.best.config, name=spec.name))
    else:  # why the kt side has no time (the report and BENCHMARKS.md say it where the ratio goes)
        row["kt_missing"] = (
            f"none of its {len(tuned.rows)} generated configs passed"
            if tuned.rows
            else "no generated config measured in its time share"
        )
    settings.timing()
    again = {isinstance(r.candidate.config, PyTorchPath): r for r in settings.runner.run(candidates)}
    for pytorch, prefix in ((False, "kt"), (True, "baseline")):
        measured = again.get(pytorch)
        if measured is None:
            continue
        values = measured.values
        row[f"{prefix}_status"] = (
            measured.status if measured.status != "ok" else values.get("energy_status", "ok")
        )
        row[f"{prefix}_ms"] = values.get("runtime_ms")
        row[f"{prefix}_power_w"] = values.get("power_w")
        row[f"{prefix}_loop_power_w"] = values.get("loop_power_w")  # the energy loop's, flushes included
        row[f"{prefix}_energy_mj"] = values.get("energy_mj")
        row[f"{prefix}_sm_clock_mhz"] = values.get("sm_clock_mhz")
        row[f"{prefix}_rel_err"] = values.get("rel_err")
    if row.get("kt_ms") and row.get("baseline_ms"):
        row["ratio"] = row["baseline_ms"] / row["kt_ms"]
        row["kt_tflops"] = problem.flops / (row["kt_ms"] * 1e-3) / 1e12
    return row


def _retime_failed(r: dict[str, Any]) -> str | None:
    """Why the re-timing after the tune gave a side no time (a wrong result, a timeout), or None: such a row
    read "not timed", a dry run's words, with the failure in its status columns only."""
    from kt.autotune.database import STATUSES

    # a side's status is its measure's where that failed, else its energy reading's ("no energy counter" in a
    # dry run, which times nothing: every smoke row read "re-time failed")
    failed = [
        f"{side}: {r[f'{prefix}_status']}"
        for prefix, side in (("kt", "kt"), ("baseline", "PyTorch"))
        if r.get(f"{prefix}_status") in STATUSES[1:] and r.get(f"{prefix}_ms") in (None, "")
    ]
    return f"re-time failed ({'; '.join(failed)})" if failed else None


def _no_ratio(r: dict[str, Any]) -> str:
    """What a quick-tune row without a ratio shows in its place: why kt's side has no time (no generated
    config passed, or none was measured in the case's share; the re-timing failed), or that nothing was timed
    (a dry run)."""
    if r.get("kt_config") in (None, "") and r.get("kt_missing") and r.get("status") == "ok":
        return r["kt_missing"]
    if r.get("status") != "ok":
        return r.get("status") or "-"
    return _retime_failed(r) or "not timed"


def _slug(text: str) -> str:
    return "bench_" + "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _ratio_text(row: dict[str, Any]) -> str:
    if row.get("ratio"):
        won = " (PyTorch's path is the artifact)" if row.get("kernel") == "pytorch" else ""
        return f"{row['ratio']:.2f}x vs PyTorch ({row['baseline_impl']}){won}"
    if row["status"] != "ok":
        return row["status"]
    if row.get("kt_config") is None and row.get("kt_missing"):
        pytorch = f" ({_fmt(row.get('baseline_ms'), '.4f')} ms)" if row.get("baseline_ms") else ""
        return f"{row['kt_missing']}; PyTorch's path is the artifact{pytorch}"
    if failed := _retime_failed(row):
        return failed
    return f"checked, not timed ({row.get('kt_config')} and PyTorch's {row.get('baseline_impl')})"


# -- part 3: the cost model's data ----------------------------------------------------------------------------


def _collect_part(settings: _Settings, deadline: float, result: BenchResult, reporter, only: str) -> int:
    import kt

    shapes = collect_shapes(settings.smoke)
    reporter.part("collect", len(shapes), deadline)
    settings.timing(energy_s=0.0, target_ms=100.0)
    sample = 2 if settings.smoke else 24
    done = 0
    for m, n, k in shapes:
        row = {"part": "collect", "case": f"dense {m}x{n}x{k}", "op": "dense", "dtype": "float16"}
        # a shape its share never reached is recorded, so that the part reads cut short (it read "done", 0 items)
        if time.monotonic() >= deadline:
            result.rows.append(
                {**row, "status": "not reached: the part's time share ran out first", "timed": False}
            )
            continue
        spec = kt.parse_spec(
            {"op": "dense", "name": f"collect_{m}x{n}x{k}", "shape": {"m": m, "n": n, "k": k}}
        )
        try:
            session = kt.collect(
                spec,
                sample=sample,
                backend=settings.backend,
                db=settings.db,
                progress=False,
                deadline=deadline,
                baseline=False,
                runner=settings.runner,
            )
            ok = sum(r["status"] == "ok" for r in session.rows)
            status = f"{len(session.rows)} configs ({ok} ok, {session.fresh} new)"
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log.error("collect %sx%sx%s failed: %s", m, n, k, one_line(exc), exc_info=True)
            status = f"failed: {one_line(exc)}"
        result.rows.append({**row, "status": status, "timed": not settings.smoke})
        done += 1
        reporter.advance(f"dense {m}x{n}x{k}: {status}")
        _say(settings, f"collect dense {m}x{n}x{k}: {status}")
    return done


# -- the report -----------------------------------------------------------------------------------------------

CSV_NAME, REPORT_NAME, EXPORT_NAME = "results.csv", "report.md", "measurements.csv"
LOG_NAME = "bench.log"
LOCK_NAME = ".kt-bench.lock"  # held by the run writing to the folder (`_lock_out`)


def _write_outputs(result: BenchResult, settings: _Settings) -> None:
    from kt.autotune.database import Database
    from kt.autotune.figures import write_csv

    context = result.context
    rows = [{**context, **row} for row in result.rows]
    # its columns even without a row (a run stopped before its first): a file of no header was refused by
    # `kt bench --from` as no bench report's
    write_csv(result.out / CSV_NAME, rows, columns=[*context, "part", "case", "dtype"])
    if settings.db.is_file():
        with Database(settings.db, create=False, readonly=True) as database:
            database.export_csv(result.out / EXPORT_NAME, since=context["started_at"])  # this run's rows
    atomic_write_text(result.out / REPORT_NAME, render_report(result), make_parent=False)
    global WRITTEN
    WRITTEN = result.out / REPORT_NAME
    for path in result.out.iterdir():
        if path.is_file() and path.suffix != ".db" and path.stat().st_size > MAX_FILE_BYTES:
            log.warning(
                "%s is %d bytes, over the %d a report file may hold",
                path,
                path.stat().st_size,
                MAX_FILE_BYTES,
            )


def _interruption(result: BenchResult) -> list[str]:
    """The report's line saying that the run was stopped, where, and what never ran (none when it was not)."""
    if not result.interrupted:
        return []
    never = [part for part, info in result.parts.items() if info["status"] == "not run"]
    where = f"the {result.interrupted} part" if result.interrupted in result.parts else result.interrupted
    return [
        f"- **interrupted** (Ctrl-C, SIGTERM or SIGHUP) during {where}: this report holds only what finished before; "
        + (f"never ran: {', '.join(never)}" if never else "every part had started")
        + ". Rows and cases missing below were not reached, not failed."
    ]


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or value == "" else format(value, spec)


def render_report(result: BenchResult) -> str:
    c = result.context
    dry = not c["gpu_run"]
    mark = f" ({DRY})" if dry else ""
    lines = [
        f"# kt bench{mark}",
        "",
        f"- device: {c['device']}{mark}",
        f"- driver: {c.get('driver') or '-'} · max SM clock: {_fmt(c.get('max_sm_clock_mhz'), 'd')} MHz · power "
        f"limit: {_fmt(c.get('power_limit_w'), '.0f')} W (read, never changed)",
        f"- versions: kt {c['kt_version']} (commit {c.get('kt_commit') or 'unknown: not run from a git checkout'})"
        f", torch {c['torch_version']}, triton {c['triton_version']}, CUDA {c['cuda_version']}, Python "
        f"{c['python_version']}",
        f"- date: {c['date']} (started {c['started_at']}) · command: `{c['command']}`",
        "- parts: "
        + ", ".join(
            f"{p} {v['status']} in {v['seconds']:.0f} s ({v['note']})"
            if v["status"] != "not run"
            else f"{p} not run"
            for p, v in result.parts.items()
        ),
        *_interruption(result),
        "",
        "## Quick tunes against PyTorch (same run, same GPU, same timer)",
        "",
        "kt's winner and PyTorch's own path are timed back to back after the tune: L2 flushed before every run, "
        "median of CUDA-event timings, then NVML energy over (flush, call) loops with the flush's energy taken off. "
        "PyTorch's side is its own library call (cuBLAS, cuFFT, ...) with no warm-up beyond the timer's own; "
        "kt's side is the tuned kernel, its configs chosen by a short tune of the same run. What each side "
        "keeps between calls differs: kt's butterfly module builds its dense blocks once per twiddle tensor "
        "(and version) and reuses them, where the per-level loop does all of its work on every call."
        + (f" **{DRY}: no figure below is a measurement.**" if dry else ""),
        "",
        "| case | dtype | PyTorch baseline | kt ms | TFLOP/s | W | mJ/call | SM MHz | PyTorch ms | PyTorch W "
        "| baseline / kt | kernel.py runs | kt config | tuning s | measured / legal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in result.rows if r["part"] == "tunes"):
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['dtype']} | - | {r['status']}{mark} | | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['baseline_impl']} | {_fmt(r.get('kt_ms'), '.4f')} | "
            f"{_fmt(r.get('kt_tflops'), '.1f')} | {_fmt(r.get('kt_power_w'), '.0f')} | "
            f"{_fmt(r.get('kt_energy_mj'), '.3f')} | {_fmt(r.get('kt_sm_clock_mhz'), '.0f')} | "
            f"{_fmt(r.get('baseline_ms'), '.4f')} | "
            f"{_fmt(r.get('baseline_power_w'), '.0f')} | "
            f"{_fmt(r.get('ratio'), '.2f') + 'x' if r.get('ratio') else _no_ratio(r) + mark} | "
            f"{'PyTorch' if r['kernel'] == 'pytorch' else 'kt'} | {r.get('kt_config') or '-'} | "
            f"{_fmt(r.get('tune_s'), '.0f')} | {r['measured']} / {r['legal']} |"
        )
    tunes = [r for r in result.rows if r["part"] == "tunes"]
    ratios = [r["ratio"] for r in tunes if r.get("ratio")]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        # a case with no ratio (its tune or re-timing failed) cannot be the worst here: say how many there are
        untimed = len(tunes) - len(ratios)
        lines += [
            "",
            f"Worst case {min(ratios):.2f}x, best {max(ratios):.2f}x, geometric mean {geo:.2f}x over "
            f"{counted(len(ratios), 'case')} (baseline time / kt time: above 1, kt is faster)"
            + (f"; {untimed} more {'has' if untimed == 1 else 'have'} no ratio (above)." if untimed else "."),
        ]
    lines += [
        "",
        "## Smoke check: every family and dtype on a full problem against float64",
        "",
        "| op | dtype | kernel | status | rel err | ms |",
        "|---|---|---|---|---|---|",
    ]
    smoke = sorted(
        (r for r in result.rows if r["part"] == "smoke"), key=lambda r: (r["op"], r["dtype"], r["kernel"])
    )
    for r in smoke:
        ms = r.get("kt_ms") if r.get("kt_ms") is not None else r.get("baseline_ms")
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['kernel']} | {r['status']}{mark} | {_fmt(r.get('rel_err'), '.1e')} "
            f"| {_fmt(ms, '.4f') if not dry else 'not timed' + mark} |"
        )
    lines += ["", "## Cost-model data (runtime-only samples)", ""]
    for r in (r for r in result.rows if r["part"] == "collect"):
        lines.append(f"- {r['case']}: {r['status']}{mark}")
    return "\n".join(lines) + "\n"


# -- BENCHMARKS.md ------------------------------------------------------------------------------------------

BEGIN, END = "<!-- kt bench: begin -->", "<!-- kt bench: end -->"


def update_benchmarks(report_dir: str | Path, benchmarks: str | Path) -> int:
    """Merge a bench run's quick-tune rows into BENCHMARKS.md's kt bench table (a row per device and case; a new
    run of the same device replaces its rows of the cases it holds, in place, other cases' and devices' stay;
    a case the run did not reach keeps its earlier row). Refuses a dry run's report. Returns the rows
    merged."""
    report_dir, benchmarks = Path(report_dir), Path(benchmarks)
    path = report_dir / CSV_NAME
    if not path.is_file():
        raise KtError(f"update: {path} not found; run `kt bench --out {report_dir}` first")
    check_not_input(
        benchmarks, [path, report_dir / REPORT_NAME, report_dir / EXPORT_NAME], "update", "the report"
    )
    rows = _report_rows(path)
    if not rows or any(r.get("gpu_run") != "True" for r in rows):
        raise KtError(
            f"update: {path} is a dry run's report or holds no quick tune: only GPU runs go into {benchmarks}"
        )
    if not benchmarks.parent.is_dir():
        raise KtError(f"update: the folder of {str(benchmarks)!r} does not exist")
    try:
        text = benchmarks.read_bytes().decode() if benchmarks.is_file() else "# Benchmarks\n"
    except UnicodeDecodeError as exc:
        raise KtError(
            f"update: {benchmarks} is not UTF-8 text (at offset {exc.start}); give a Markdown file kt may rewrite"
        ) from None
    if text.count(BEGIN) + text.count(END) and (
        text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END)
    ):
        raise KtError(
            f"update: {str(benchmarks)!r} holds {text.count(BEGIN)} {BEGIN!r} and {text.count(END)} {END!r} "
            "markers; it needs one of each, begin first (or none: the table is then appended)"
        )
    table = _table_lines(text, benchmarks)
    held = {_row_key(line) for line in table}
    # a case the run never reached is no figure: it replaced the device's measured row of that case. Left out
    # before the dates are compared: a later run of that case alone (--only), merged first, refused the run
    # that had not reached it as older, however its other rows stood
    rows = [r for r in rows if not (_not_reached(r) and (r["device"], r["case"]) in held)]
    if not rows:
        return 0
    _check_not_older(text, rows, path, benchmarks)
    atomic_write_text(
        benchmarks,
        merge_table(text, rows[0]["device"], [_benchmarks_line(r) for r in rows]),
        make_parent=False,
    )
    return len(rows)


def _not_reached(row: dict[str, str]) -> bool:
    return (row.get("status") or "").startswith("not reached")


def _is_separator(line: str) -> bool:
    """A Markdown table's separator row (`|---|:--:|`), however written."""
    cells = _cells(line)
    return bool(cells) and all(re.fullmatch(r":?-+:?", cell) for cell in cells)


def _table_lines(text: str, benchmarks: Path | None = None) -> list[str]:
    """The data rows of the kt bench table between the markers of `text` (none without markers): its header
    and separator rows, however written, left out. With `benchmarks` (the file's name), a line there that is
    no table row is refused: a note written inside the markers was dropped without a word, and a separator
    written `| --- |` was kept as a row."""
    if BEGIN not in text or END not in text:
        return []
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip() or line in TABLE_HEAD or (line.startswith("|") and _is_separator(line)):
            continue
        if not line.startswith("| "):
            if benchmarks is not None:
                raise KtError(
                    f"update: {benchmarks}: line {number} of the kt bench table is no table row "
                    f"({line.strip()[:60]!r}); kt rewrites the lines between {BEGIN} and {END}: move it out"
                )
            continue
        if _cells(line)[0] == "device":  # a header, an older version's included
            continue
        rows.append(line)
    return rows


# the report's columns a BENCHMARKS.md row is made of: text every report has, and numbers (a column absent,
# as from a dry run's report, or a cell empty where not measured)
REPORT_TEXT = ("part", "gpu_run", "device", "date", "case", "dtype", "command")
REPORT_NUMBERS = ("kt_ms", "kt_tflops", "kt_power_w", "kt_energy_mj", "baseline_ms", "ratio", "tune_s")


def _report_rows(path: Path) -> list[dict[str, str]]:
    """The quick-tune rows of a bench report's results.csv, each checked: a damaged file (not UTF-8, cut off,
    a column missing, a figure that is not a finite number, a date that is not YYYY-MM-DD) is refused in one
    line naming the line and the column, before BENCHMARKS.md is touched."""
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise KtError(f"update: {path} is not UTF-8 text (damaged); run `kt bench` again") from None
    header = next(csv.reader([text.partition("\n")[0]]), [])
    missing = [c for c in REPORT_TEXT if c not in header]
    if missing:
        raise KtError(
            f"update: {path} has no {', '.join(missing)} column: not a kt bench report's results.csv"
        )
    rows = []
    for where, row in csv_records(text, f"update: {path}", KtError):
        if row["part"] != "tunes":
            continue
        for key in REPORT_NUMBERS:
            try:
                value = float(row[key]) if row.get(key) else 0.0
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise KtError(f"{where}: {key} is {row[key]!r}, not a finite number >= 0 (or empty)")
        if not _iso_date(row["date"]):
            raise KtError(f"{where}: date is {row['date']!r}, not YYYY-MM-DD")
        if row.get("started_at") and _started(row["started_at"]) is None:
            raise KtError(f"{where}: started_at is {row['started_at']!r}, not an ISO date and time")
        for key in REPORT_IDENTITY:  # every figure names its device, date and command
            if not row.get(key):
                raise KtError(f"{where}: {key} is empty; a figure must name its device and command")
        for key, value in row.items():  # (a quoted one is valid CSV: each merge split the table's rows)
            if value and ("\n" in value or "\r" in value):
                raise KtError(f"{where}: {key} holds a line break; each cell of a table row is one line")
        rows.append(row)
    _one_run(path, rows)
    return rows


# what makes a report one run: every row's the same (rows of two runs appended, or of another GPU, were merged
# under the first row's device)
REPORT_RUN = (
    "device",
    "started_at",
    "command",
    "kt_version",
    "kt_commit",
    "torch_version",
    "triton_version",
    "date",
)
REPORT_IDENTITY = ("device", "command", "case", "dtype")


def _one_run(path: Path, rows: list[dict[str, str]]) -> None:
    """Refuse a results.csv whose quick-tune rows are not of one run, or that holds a case twice."""
    for key in REPORT_RUN:
        values = sorted({row.get(key) or "" for row in rows})
        if len(values) > 1:
            raise KtError(
                f"update: {path} holds rows of more than one run ({key}: {', '.join(map(repr, values))}); "
                "give one run's report"
            )
    seen: set[str] = set()
    for row in rows:
        # by its name alone, as BENCHMARKS.md's table keys a device's rows: one name of two dtypes was merged
        # as two rows, the second over the first
        if row["case"] in seen:
            raise KtError(f"update: {path} holds the case {row['case']} twice; give one run's report")
        seen.add(row["case"])


def _iso_date(text: str) -> bool:
    try:
        return datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%d") == text
    except ValueError:
        return False


def _started(text: str) -> datetime | None:
    """A report's started_at (ISO 8601, UTC offset included), or None when it is not one."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _when(row: dict[str, str]) -> str:
    """A report row's date cell in BENCHMARKS.md: its start to the minute in UTC ("2026-12-04 18:27"), so that
    runs of one day keep their order; the date alone for a report that did not record its start."""
    started = _started(row.get("started_at") or "")
    if started is None or started.tzinfo is None:
        return row["date"]
    return started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _newer(cell: str, incoming: str) -> bool:
    """Whether a table row's date cell is later than an incoming row's (each a date, or a date and a UTC time
    as `_when` writes them): by time where both have one, else by date (one day's runs without a time are not
    ordered, so they merge). False for a cell that is neither."""
    if not (_iso_date(cell) or (_WHEN.fullmatch(cell) and _iso_date(cell[:10]))):
        return False
    if len(cell) > 10 and len(incoming) > 10:
        return cell > incoming  # ISO dates and times order as text
    return cell[:10] > incoming[:10]


_WHEN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def _check_not_older(text: str, rows: list[dict[str, str]], path: Path, benchmarks: Path) -> None:
    """Refuse a report older than the rows of its device and cases that BENCHMARKS.md already holds: merging
    it replaced a newer run's rows without a word (one day's runs by their start, to the minute)."""
    incoming = {(r["device"], r["case"]): _when(r) for r in rows}
    for line in _table_lines(text):
        cells = _cells(line)
        when = incoming.get(_row_key(line))
        if when is not None and _newer(cells[1], when):
            raise KtError(
                f"update: {benchmarks} holds {cells[0]}'s {cells[2]} from {cells[1]}, newer than {path}'s "
                f"{when}; merge the newest run (or remove those rows by hand to go back)"
            )


TABLE_HEAD = (
    "| device | date | case | dtype | PyTorch baseline | kt ms | TFLOP/s | W | mJ/call | PyTorch ms | baseline / kt "
    "| kernel.py runs | tuning s | command |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
)


def merge_table(text: str, device: str, lines: list[str]) -> str:
    """`text` (BENCHMARKS.md) with `lines` as `device`'s rows of the table between the kt bench markers: that
    device's earlier rows of the same cases replaced where they stand (a merge again of an earlier run moved
    them to the end), its other cases' rows (a run with --only) and other devices' kept, new cases appended;
    the markers and table appended when missing (update_benchmarks refuses malformed ones)."""
    old = _table_lines(text)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    new = {_row_key(line): line for line in lines}
    merged = [new.pop(_row_key(line), line) for line in old]
    return head + BEGIN + "\n".join(["", *TABLE_HEAD, *merged, *new.values(), ""]) + END + tail


def _cells(line: str) -> list[str]:
    """A BENCHMARKS.md table row's cells, as written: split at the pipes that end cells, not at the escaped ones
    (`\\|`) that `_benchmarks_line` writes for a pipe in a cell's text."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _row_key(line: str) -> tuple[str, str]:
    """A kt bench table row's (device, case): its first and third cells."""
    cells = _cells(line)
    return cells[0], cells[2] if len(cells) > 2 else ""


def _benchmarks_line(r: dict[str, str]) -> str:
    def num(key: str, spec: str) -> str:
        return format(float(r[key]), spec) if r.get(key) else "-"

    def text(key: str) -> str:  # a pipe ends a Markdown table cell, in a code span too (GFM)
        return (r.get(key) or "-").replace("|", "\\|")

    ratio = f"{float(r['ratio']):.2f}x" if r.get("ratio") else _no_ratio(r).replace("|", "\\|")
    runs = {"pytorch": "PyTorch", "generated": "kt"}.get(r.get("kernel") or "", "-")
    command = text("command")
    return (
        f"| {text('device')} | {_when(r)} | {text('case')} | {text('dtype')} | {text('baseline_impl')} | "
        f"{num('kt_ms', '.4f')} | {num('kt_tflops', '.1f')} | {num('kt_power_w', '.0f')} | {num('kt_energy_mj', '.3f')} | "
        f"{num('baseline_ms', '.4f')} | {ratio} | {runs} | {num('tune_s', '.0f')} | `{command}` |"
    )


__all__ = ["BenchResult", "run_bench", "update_benchmarks", "render_report", "tune_cases", "smoke_specs"]
