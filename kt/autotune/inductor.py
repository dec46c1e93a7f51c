"""PyTorch Inductor's autoheuristic `mm` logs as kt measurement rows: `kt import inductor FILE... --out NAME.csv`.

Inductor's `max-autotune` times its Triton `mm` template over a fixed list of configs, plus cuBLAS (`extern_mm`),
on every matmul it meets, and its autoheuristic logs keep every timing. Those are real GPU measurements of the
same kernel structure as kt's GEMM template (pointer-based tiles, GROUP_M 8, no split-K), so the cost model can
learn from them. The output is a CSV that `kt.autotune.dataset.read_rows` reads exactly like a `kt export`, so
`kt costmodel fit/eval --data NAME.csv` take it unchanged.

A log is one JSON header line (`device_capa`, `shared_memory`), the CSV header `COLUMNS`, then one line per
timing. One output row per (GPU, problem, choice), with every repeat kept in the extra column `repeats_ms`
(`;`-joined as logged, `inf` included) and the origin and file names in `source` (the reader ignores both):

- The problem is kt's `GemmProblem`. Inductor's order is m, k, n: A (m x k) has strides (mat1_stride_0,
  mat1_stride_1), B (k x n) (mat2_stride_0, mat2_stride_1). An operand is `row` when its column stride is 1,
  `col` when its row stride is 1; a leading dimension wider than the matrix (a slice of a wider tensor, as in
  the timm logs) is read as the same layout, since kt's problems carry no leading dimension (the summary counts
  those lines); a problem logged both padded and not becomes one problem, its configs' repeats pooled into one
  median (h100_timm_train_mm's 25088x80x240 with A's leading dimension 80 and 160: 913 logged, 912 read).
  An operand with a size-1 dimension is a vector, one contiguous run whatever its other stride,
  so it is `row`: Inductor logged some such vectors under several strides, and their timings agree within
  noise. Any other strides (a broadcast, a strided slice) are an error naming the line.
- The config is kt's `GemmConfig` with Inductor's blocks, stages and warps, GROUP_M 8 and split-K 1 (Inductor's
  list has 1 warp and 1 stage, which kt's own search space does not). A block or warp count that is not a power
  of two (BLOCK-M=48) is no config Triton runs, so its line is malformed, like a block of 0.
- `extern_mm` is the problem's baseline row, like a tune's candidate zero (`BASELINE_KEY`, config `{}`).
- runtime_ms is the median of the finite repeats, with their min, 20th and 80th percentiles, and `runs`
  counts them; each repeat is already one Inductor benchmark (itself many launches). A choice whose every
  repeat is `inf` is a `crash` row with no runtime. A choice with some finite and some `inf` repeats keeps the
  finite ones and stays `ok` (none of the four public files has one).
- status `ok` means Inductor timed it; Inductor does not check results, so `rel_err` is empty. The log does
  not record when, or with which torch, Triton or CUDA, it was measured, nor the GPU's exact variant, so
  those columns say so or stay empty, and `family_version` names Inductor's template, not a kt template hash.
- Several FILEs are read as one log: the same (GPU, problem, choice) in two files is one row with the repeats
  of both; the GPU comes from each file's header, so rows of different GPUs never merge. Blank lines are
  skipped (a100_mm has one).
- One measurement counts once. An autotune run is a problem's consecutive lines, each choice once (Inductor
  times every choice of a problem, then the next problem or the same one again). A run of two or more lines that
  repeats one already read, in this file or an earlier one, every choice and timing to the digit, is that
  measurement logged again, and its lines are left out (the summary counts them): an overlapping copy (an older
  copy of a log Inductor appends to, read beside the newer one, counted its repeats twice), and Inductor's own
  repeats (h100_timm_train_mm logs 4,770 of its 5,687 runs again, each of their 14 to 30 timings the same to
  the digit, which no second benchmark gives: `runs` said about 6 where one run was measured; no median moves).
  A file's last run waits until every file is read: one that is the leading part of a run read (an older copy
  taken while Inductor was writing that run, line by line) counts once too. A single line is no fingerprint,
  so a run of one always counts: two runs can time a config alike to the digit (569 finite lines of h100_mm
  appear more than once, none in a repeated run); so an older copy cut right after a run's first line counts
  that one timing twice. The same file given twice, or under another name, is refused outright.

Any malformed line is one DatabaseError naming the file and line, and no output is written; the CSV is written
beside its path and renamed into place.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
import math
import os
import re
import statistics
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kt.autotune.database import BASELINE_KEY, COLUMN_NAMES
from kt.autotune.dataset import MAX_CONFIG_VALUE, check_row
from kt.codegen.gemm import GemmConfig
from kt.device import BUILTIN
from kt.errors import DatabaseError, counted
from kt.files import atomic_write, check_not_input, check_writable
from kt.ir.problems import GemmProblem
from kt.spec import MAX_DIM

# The public logs PyTorch's learned mm heuristic was fitted on (github.com/AlnisM/autoheuristic-datasets)
ORIGIN = "autoheuristic-datasets@3ed2bc4"
COLUMNS = (
    "m",
    "k",
    "n",
    "mat1_dtype",
    "mat2_dtype",
    "mat1_stride_0",
    "mat1_stride_1",
    "mat2_stride_0",
    "mat2_stride_1",
    "mat1_iscontig",
    "mat2_iscontig",
    "using_tf32",
    "choice",
    "feedback",
)
PROBLEM_FIELDS = len(COLUMNS) - 2  # everything before choice and feedback names the problem
EXTRA_COLUMNS = ("repeats_ms", "source")  # written after kt's columns; read_rows ignores them
# device_capa -> (kt's device profile key, the GPU as the log can name it: the variant is not recorded)
GPUS = {
    (9, 0): ("h100", "NVIDIA H100 (autoheuristic log; variant not recorded)"),
    (8, 0): ("a100", "NVIDIA A100 (autoheuristic log; variant not recorded)"),
}
DTYPES = {"torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32"}
TF32 = {"True": "tf32", "False": "ieee"}  # fp32 only; other dtypes log not_float_32
NOT_FP32 = "not_float_32"
EXTERN = "extern_mm"
CHOICE = re.compile(  # ASCII digits: a regex \d took an Arabic-Indic 2 for num_warps=2
    # at most 18 digits each: past Python's 4,300 int() raised (a traceback); the checks below name the range
    r"type=triton_BLOCK-M=([0-9]{1,18})_BLOCK-K=([0-9]{1,18})_BLOCK-N=([0-9]{1,18})_numstages=([0-9]{1,18})"
    r"_numwarps=([0-9]{1,18})"
)
CHOICE_FORM = f"{EXTERN} or type=triton_BLOCK-M=.._BLOCK-K=.._BLOCK-N=.._numstages=.._numwarps=.."
GROUP_M, SPLIT_K = 8, 1  # Inductor's mm template: grouped launch order, no split-K
# The choice's fields Triton takes only as powers of two, and why (triton/language/semantic.py: "arange's range
# must be a power of 2"; backends/nvidia/compiler.py: "num_warps must be a power of 2"); any stage count runs
_TILE = "the template's tl.arange over a block takes only a power-of-two range"
POWERS_OF_TWO = {
    "BLOCK-M": _TILE,
    "BLOCK-K": _TILE,
    "BLOCK-N": _TILE,
    "numwarps": "Triton takes no other warp count",
}
FAILED = "Inductor logged inf (the config failed to run)"
TIMER = "inductor_benchmarker"
TRITON_VERSION = "unknown (inductor log)"  # part of a row's identity: the log does not record it
TEMPLATE_VERSION = "inductor mm template (autoheuristic log)"
EXTERN_VERSION = "inductor extern_mm (autoheuristic log)"
EXTERN_IMPL = "cublas (extern_mm)"
PROGRESS_ROWS = 16384  # lines between progress calls

Progress = Callable[[int, int], None]  # (bytes read, bytes in all files)


@dataclass(frozen=True)
class LoggedProblem:
    """One logged problem as kt names it, worked out once however many lines time it."""

    problem: GemmProblem
    key: str  # problem_key
    fields: dict[str, Any]  # the problem column
    padded: bool  # an operand's leading dimension is wider than the operand


@dataclass(frozen=True)
class LoggedChoice:
    """One logged choice as kt names it: a Triton config, or cuBLAS (config None, key BASELINE_KEY)."""

    config: GemmConfig | None
    key: str  # config_key
    fields: dict[str, int]  # the config column ({} for cuBLAS)


@dataclass
class Measurement:
    """Every logged timing of one choice on one problem on one GPU."""

    target: str
    device: str
    problem: LoggedProblem
    choice: LoggedChoice
    first: str  # the file and line it first appeared on, for errors
    times: list[str] = field(default_factory=list)  # as logged, inf included
    files: dict[str, None] = field(default_factory=dict)  # file names, in order


@dataclass
class Log:
    """What `read_logs` found: the measurements and what the summary counts."""

    measurements: dict[tuple[str, str, str], Measurement]
    files: list[Path]
    lines: int = 0  # timing lines read (blank lines not counted)
    padded: int = 0  # lines with an operand whose leading dimension is wider than it
    runs: set[bytes] = field(default_factory=set)  # a digest of each autotune run of two or more lines read
    prefixes: set[bytes] = field(default_factory=set)  # and of every leading part of two or more of its lines
    tails: list = field(default_factory=list)  # each file's last run, added once every file is read
    repeated_runs: int = 0  # runs that repeated one already read, to the digit: counted once
    repeated_lines: int = 0  # their lines

    def rows(self, origin: str = ORIGIN) -> list[dict[str, Any]]:
        """One kt row per measurement (kt's columns, then EXTRA_COLUMNS); the first row of every problem and of
        every config goes through read_rows's own check, so the CSV is one that kt reads."""
        rows, checked = [], set()
        for m in self.measurements.values():
            row = to_row(m, origin)
            # every problem and every config through kt's own check; the timings are finite > 0 by parsing
            if m.problem.key not in checked or m.choice.key not in checked:
                check_row(row, f"inductor: {m.first}")
                checked.update((m.problem.key, m.choice.key))
            rows.append(row)
        return rows


def read_logs(paths: Sequence[str | os.PathLike], progress: Progress | None = None) -> Log:
    """Parse the Inductor logs at `paths` (gzip or plain text) into measurements; a DatabaseError naming the
    file and line at the first malformed one. `progress(done, total)` is called now and then with bytes read."""
    files = [Path(p) for p in paths]
    if not files:
        raise DatabaseError("inductor: no FILE given; give one or more Inductor autoheuristic logs")
    seen: dict[Path, Path] = {}
    for path in files:
        if path.is_dir():
            raise DatabaseError(f"inductor: {str(path)!r} is a directory; give an Inductor autoheuristic log")
        if not path.is_file():
            raise DatabaseError(f"inductor: {str(path)!r} not found")
        if path.resolve() in seen:
            raise DatabaseError(
                f"inductor: {str(path)!r} is given twice (as {str(seen[path.resolve()])!r}); its repeats would "
                "count twice"
            )
        seen[path.resolve()] = path
    copies: dict[str, Path] = {}
    for path in files:  # a copy under another name (a download kept twice) counted every repeat twice too
        digest = _digest(path)
        if digest in copies:
            raise DatabaseError(
                f"inductor: {str(path)!r} holds the same log as {str(copies[digest])!r}; its repeats would "
                "count twice, so give one of them"
            )
        copies[digest] = path
    log = Log({}, files)
    total, done = sum(p.stat().st_size for p in files), 0
    for path in files:
        _read_file(path, log, progress, done, total)
        done += path.stat().st_size
    _close_tails(log)
    if progress is not None:
        progress(total, total)
    return log


def _fingerprints(device: str, key: tuple[str, ...], run: list) -> tuple[bytes, list[bytes]]:
    """A run's digest (its GPU, problem, and every choice and timing in order), and that of each leading part
    of two or more of its lines, the whole included."""
    digest = hashlib.blake2b("\n".join([device, *key]).encode(), digest_size=16)
    prefixes = []
    for i, (_, _, logged, feedback, _) in enumerate(run, 1):
        digest.update(f"\n{logged},{feedback}".encode())
        if i >= 2:
            prefixes.append(digest.copy().digest())
    return prefixes[-1], prefixes


def _close_tails(log: Log) -> None:
    """Each file's last run, once every file is read, longest first: one that is a leading part of a run read
    (or the whole of one) is an older copy's run cut off where Inductor was writing it, counted once (a copy
    taken mid-run counted the timings it held twice, beside the newer copy's whole run)."""
    for length, fingerprint, prefixes, add in sorted(log.tails, key=lambda tail: -tail[0]):
        if fingerprint in log.prefixes:
            log.repeated_runs += 1
            log.repeated_lines += length
            continue
        log.runs.add(fingerprint)
        log.prefixes.update(prefixes)
        add()
    log.tails.clear()


def _digest(path: Path) -> str:
    """SHA-256 of the log's text: a gzip file's once decompressed, so that a log and its .gz are one log (each
    of their repeats counted twice); a damaged gzip's own bytes (the reader names the damage)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(2) == b"\x1f\x8b":
                try:
                    return _hash(gzip.GzipFile(fileobj=handle, mode="rb"), handle)
                except (OSError, EOFError, zlib.error):
                    pass
            return _hash(handle, handle)
    except OSError as exc:
        raise DatabaseError(f"inductor: {str(path)!r} cannot be read ({exc.strerror or exc})") from None


def _hash(stream: IO[bytes], handle: IO[bytes]) -> str:
    """SHA-256 of what `stream` reads from `handle`'s start."""
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path, log: Log, progress: Progress | None, done: int, total: int) -> None:
    name = str(path)
    line = 1
    with open(path, "rb") as raw:
        zipped = raw.read(2) == b"\x1f\x8b" or path.suffix.lower() == ".gz"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if zipped else raw

        def decoded():
            """The file's lines, each decoded alone: a byte that is not UTF-8 is named by its own line (a text
            reader decoded ahead in chunks, and named a line before it, "near line 957" for line 1001)."""
            for number, data in enumerate(stream, 1):
                try:
                    yield data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatabaseError(
                        f"inductor: {name!r} line {number}: not UTF-8 text (byte {data[exc.start]:#04x} at "
                        f"column {exc.start + 1}); an Inductor log is UTF-8: copy the log again"
                    ) from None

        text = decoded()
        # lines read so far (the JSON header is line 1): csv's own count named the line before a row it could
        # not read (a lone CR on line 40 was "near line 39")
        consumed = [1]
        try:
            target, device = _header(next(text, ""), name)
            ended = [True]  # whether the last line read ended with its line break

            def text_lines():
                for read in text:
                    ended[0] = read.endswith(("\n", "\r"))
                    consumed[0] += 1
                    yield read

            reader = csv.reader(text_lines())
            line = 2
            header = next(reader, None)
            if header is None or tuple(header) != COLUMNS:
                shown = ",".join(header) if header else "nothing"
                raise DatabaseError(
                    f"inductor: {name!r} line 2: the CSV header is {shown[:200]!r}; allowed: {','.join(COLUMNS)}"
                )
            problems: dict[tuple[str, ...], LoggedProblem] = {}
            choices: dict[str, LoggedChoice] = {}
            measurements, file_name, width = log.measurements, path.name, len(COLUMNS)
            lines = padded = 0
            # the autotune run being read: a problem's consecutive lines, each choice once (see the docstring)
            run: list[tuple[LoggedProblem, LoggedChoice, str, str, int]] = []
            run_key: tuple[str, ...] = ()
            run_choices: set[str] = set()

            def add(timed: list[tuple[LoggedProblem, LoggedChoice, str, str, int]]) -> None:
                for problem, choice, _, feedback, at in timed:
                    ident = (device, problem.key, choice.key)
                    m = measurements.get(ident)
                    if m is None:
                        m = measurements[ident] = Measurement(
                            target, device, problem, choice, f"{name!r} line {at}"
                        )
                    m.times.append(feedback)
                    m.files[file_name] = None

            def close_run(key: tuple[str, ...], last: bool = False) -> None:
                """Add the run's timings to their measurements, unless it repeats a run already read. A file's
                `last` run may be cut short (a copy taken while Inductor appended to the log): it waits for
                every file to be read (`_close_tails`)."""
                if len(run) >= 2:
                    fingerprint, prefixes = _fingerprints(device, key, run)
                    if fingerprint in log.runs:
                        log.repeated_runs += 1
                        log.repeated_lines += len(run)
                        run.clear()
                        return
                    if last:
                        log.tails.append((len(run), fingerprint, prefixes, functools.partial(add, list(run))))
                        run.clear()
                        return
                    log.runs.add(fingerprint)
                    log.prefixes.update(prefixes)
                add(run)
                run.clear()

            for cells in reader:
                if not cells:
                    continue
                line = reader.line_num + 1  # the JSON header was read before the reader started
                if len(cells) != width:
                    raise DatabaseError(
                        f"inductor: {name!r} line {line}: {len(cells)} columns; allowed: {width} "
                        f"({','.join(COLUMNS)})"
                    )
                key = tuple(cells[:PROBLEM_FIELDS])
                problem = problems.get(key)
                if problem is None:
                    problem = problems[key] = _problem(key, f"{name!r} line {line}")
                logged = cells[PROBLEM_FIELDS]
                choice = choices.get(logged)
                if choice is None:
                    choice = choices[logged] = _choice(logged, f"{name!r} line {line}")
                feedback = cells[-1]
                if feedback != "inf":
                    _check_feedback(feedback, f"{name!r} line {line}")
                if key != run_key or logged in run_choices:  # another problem, or this one timed again
                    close_run(run_key)
                    run_key, run_choices = key, set()
                run_choices.add(logged)
                run.append((problem, choice, logged, feedback, line))
                lines += 1
                padded += problem.padded
                if progress is not None and lines % PROGRESS_ROWS == 0:
                    progress(done + raw.tell(), total)
            if lines and not ended[0]:  # a copy cut off mid-row: its last timing cut too (10.269 read as 1)
                raise DatabaseError(
                    f"inductor: {name!r} line {line}: the file ends without a line break, so its last row may be "
                    "cut off (Inductor ends every row with one); copy the log again, or end the line if the row "
                    "is whole"
                )
            close_run(run_key, last=True)
            log.lines += lines
            log.padded += padded
        except DatabaseError:
            damage = _gzip_damage(stream) if zipped else None
            if damage is not None:  # bytes damaged mid-file decompress into rows that look malformed
                raise DatabaseError(
                    f"inductor: {name!r} is damaged ({damage}), so its rows from about line {line} on are not "
                    "what Inductor wrote; copy the log again"
                ) from None
            raise
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
            # gzip's errors (not gzip, truncated) and text that is not UTF-8: where the reading stopped
            reason = str(exc) or type(exc).__name__
            near = consumed[0] if isinstance(exc, csv.Error) else line
            raise DatabaseError(f"inductor: {name!r} near line {near}: cannot read it ({reason})") from None


def _gzip_damage(stream: gzip.GzipFile) -> str | None:
    """What is wrong with the rest of a gzip stream (its checksum, a cut-off end), read to its end; None when
    it is whole."""
    try:
        while stream.read(1 << 20):
            pass
    except (OSError, EOFError, zlib.error) as exc:
        return str(exc) or type(exc).__name__
    return None


def _header(text: str, name: str) -> tuple[str, str]:
    """(profile key, GPU name) from the log's first line, its JSON header."""
    where = f"inductor: {name!r} line 1"
    if not text.strip():
        raise DatabaseError(f"{where}: empty; an Inductor autoheuristic log starts with a JSON header line")
    try:
        header = json.loads(text)
    except json.JSONDecodeError:
        raise DatabaseError(
            f"{where}: not the JSON header an Inductor autoheuristic log starts with (it reads {text[:60]!r})"
        ) from None
    if not isinstance(header, dict):
        raise DatabaseError(f"{where}: the header is not a JSON object; allowed: an object with device_capa")
    if header.get("name", "mm") != "mm":
        raise DatabaseError(f"{where}: the log is of {header['name']!r}; allowed: mm")
    capability = header.get("device_capa")
    if not (
        isinstance(capability, list)
        and len(capability) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in capability)
    ):
        raise DatabaseError(
            f"{where}: device_capa is {json.dumps(capability)}; allowed: [major, minor], e.g. [9, 0]"
        )
    gpu = GPUS.get(tuple(capability))
    if gpu is None:
        known = ", ".join(f"{list(cap)} ({key})" for cap, (key, _) in GPUS.items())
        raise DatabaseError(f"{where}: device_capa {capability} has no kt device profile; allowed: {known}")
    key, gpu_name = gpu
    return BUILTIN[key].key, gpu_name  # the target as a tune for that profile names it


def _problem(cells: tuple[str, ...], where: str) -> LoggedProblem:
    """kt's problem for one line's problem columns."""
    m, k, n = (_int(cells[i], COLUMNS[i], 1, MAX_DIM, where) for i in range(3))
    strides = [_int(cells[i], COLUMNS[i], 0, 1 << 62, where) for i in range(5, 9)]
    dtypes = [cells[3], cells[4]]
    for column, value in zip(COLUMNS[3:5], dtypes):
        if value not in DTYPES:
            raise DatabaseError(
                f"inductor: {where}: column {column} is {value!r}; allowed: {', '.join(DTYPES)}"
            )
    if dtypes[0] != dtypes[1]:
        raise DatabaseError(
            f"inductor: {where}: mat1_dtype {dtypes[0]} and mat2_dtype {dtypes[1]} differ; kt's GEMM takes one "
            "dtype for both operands"
        )
    for column, value in zip(COLUMNS[9:11], cells[9:11]):
        if value not in ("True", "False"):
            raise DatabaseError(f"inductor: {where}: column {column} is {value!r}; allowed: True, False")
    dtype = DTYPES[dtypes[0]]
    tf32 = cells[11]
    allowed = tuple(TF32) if dtype == "float32" else (NOT_FP32,)
    if tf32 not in allowed:
        raise DatabaseError(
            f"inductor: {where}: column using_tf32 is {tf32!r} for {dtypes[0]}; allowed: {', '.join(allowed)}"
        )
    a_layout, a_padded = _layout(m, k, strides[0], strides[1], "mat1", where)
    b_layout, b_padded = _layout(k, n, strides[2], strides[3], "mat2", where)
    problem = GemmProblem(
        m=m,
        n=n,
        k=k,
        dtype=dtype,
        precision=TF32.get(tf32, "ieee"),
        a_layout=a_layout,
        b_layout=b_layout,
    )
    return LoggedProblem(problem, problem.key(), problem.to_dict(), a_padded or b_padded)


def _layout(rows: int, cols: int, stride_0: int, stride_1: int, operand: str, where: str) -> tuple[str, bool]:
    """kt's layout of a rows x cols operand with these strides, and whether its leading dimension is padded."""
    if rows == 1 or cols == 1:  # a vector: contiguous when its one real dimension has stride 1
        if (rows == 1 or stride_0 == 1) and (cols == 1 or stride_1 == 1):
            return "row", False
    elif stride_1 == 1 and stride_0 >= cols:
        return "row", stride_0 > cols
    elif stride_0 == 1 and stride_1 >= rows:
        return "col", stride_1 > rows
    raise DatabaseError(
        f"inductor: {where}: {operand} ({rows} x {cols}) has strides ({stride_0}, {stride_1}), neither row- nor "
        f"column-major (a broadcast or strided view); allowed: ({cols}, 1) or wider for row, (1, {rows}) or "
        "wider for col"
    )


def _choice(choice: str, where: str) -> LoggedChoice:
    """kt's config of a logged choice."""
    if choice == EXTERN:
        return LoggedChoice(None, BASELINE_KEY, {})
    match = CHOICE.fullmatch(choice)
    if match is None:
        raise DatabaseError(f"inductor: {where}: column choice is {choice[:120]!r}; allowed: {CHOICE_FORM}")
    block_m, block_k, block_n, stages, warps = (int(v) for v in match.groups())
    for name, value in (
        ("BLOCK-M", block_m),
        ("BLOCK-K", block_k),
        ("BLOCK-N", block_n),
        ("numstages", stages),
        ("numwarps", warps),
    ):
        if name in POWERS_OF_TWO and (not 1 <= value <= MAX_CONFIG_VALUE or value & (value - 1)):
            raise DatabaseError(
                f"inductor: {where}: column choice: {name} is {value}; allowed: a power of two from 1 to "
                f"{MAX_CONFIG_VALUE} ({POWERS_OF_TWO[name]})"
            )
        if not 1 <= value <= MAX_CONFIG_VALUE:
            raise DatabaseError(
                f"inductor: {where}: column choice: {name} is {value}; allowed: an integer from 1 to "
                f"{MAX_CONFIG_VALUE}"
            )
    config = GemmConfig(
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        group_m=GROUP_M,
        num_warps=warps,
        num_stages=stages,
        split_k=SPLIT_K,
    )
    return LoggedChoice(config, config.key(), config.to_dict())


def _int(text: str, column: str, low: int, high: int, where: str) -> int:
    # as Inductor writes them: int() also took "1_152", " 1152" and other scripts' digits
    value = int(text) if re.fullmatch(r"-?[0-9]{1,18}", text) else None  # (past 4,300 digits int() raised)
    if value is None or not low <= value <= high:
        raise DatabaseError(
            f"inductor: {where}: column {column} is {text[:40]!r}; allowed: an integer from {low} to {high}"
        )
    return value


def _check_feedback(text: str, where: str) -> None:
    # as Inductor writes a float: float() also took "7_470" (7470 ms) and " 0.5"
    value = float(text) if re.fullmatch(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?", text) else math.nan
    if not (math.isfinite(value) and value > 0):
        raise DatabaseError(
            f"inductor: {where}: column feedback is {text[:40]!r}; allowed: milliseconds > 0, or inf (failed)"
        )


def runtime_summary(times_ms: list[float]) -> dict[str, Any]:
    """The runtime columns of a row from its finite repeats: median, min, 20th and 80th percentiles, count.

    The percentiles interpolate between repeats (`inclusive`), so they stay within min and max for the one to
    fifteen repeats a log holds; kt's timer takes 10 or more runs, where its `exclusive` ones are as good."""
    times = sorted(times_ms)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return {
        "runtime_ms": statistics.median(times),
        "runtime_min_ms": times[0],
        "runtime_p20_ms": q[0],
        "runtime_p80_ms": q[3],
        "runs": len(times),
    }


def to_row(m: Measurement, origin: str = ORIGIN) -> dict[str, Any]:
    """The kt row of one measurement: kt's columns (JSON ones as dicts, empty ones None) and EXTRA_COLUMNS."""
    baseline = m.choice.config is None
    finite = [float(t) for t in m.times if t != "inf"]
    row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    row.update(
        runner="cuda",
        device=m.device,
        target=m.target,
        family="gemm",
        family_version=EXTERN_VERSION if baseline else TEMPLATE_VERSION,
        problem_key=m.problem.key,
        config_key=m.choice.key,
        op="dense",
        dtype=m.problem.problem.dtype,
        problem=m.problem.fields,  # shared by the problem's rows: each is encoded once
        config=m.choice.fields,
        status="ok" if finite else "crash",
        message=None if finite else FAILED,
        timer=TIMER,
        gpu_name=m.device,
        impl=EXTERN_IMPL if baseline else None,
        triton_version=TRITON_VERSION,
    )
    if finite:
        row.update(runtime_summary(finite))
    row["repeats_ms"] = ";".join(m.times)
    row["source"] = f"{origin} {';'.join(m.files)}"
    return row


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """`rows` as a CSV at `path` (kt's columns then EXTRA_COLUMNS; JSON columns as JSON text, as `kt export`
    writes them), written beside it and renamed into place: a reader never sees half a file, and a failed
    import leaves none."""
    names = [*COLUMN_NAMES, *EXTRA_COLUMNS]
    json_columns = [names.index("problem"), names.index("config")]
    encoded: dict[int, str] = {}  # id of a JSON column's dict -> its text: rows share their problem's dict

    def cells(row: dict[str, Any]) -> list[Any]:
        values = [row.get(name) for name in names]
        for i in json_columns:
            text = encoded.get(id(values[i]))
            if text is None:
                text = encoded[id(values[i])] = json.dumps(values[i], sort_keys=True)
            values[i] = text
        return values

    def write(handle: IO[str]) -> None:  # atomic_write opens text with newline="", as csv wants
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(map(cells, rows))

    atomic_write(path, write)


@dataclass
class Summary:
    """What one import read and wrote, for its one-line report."""

    lines: int
    files: int
    rows: int
    problems: int
    configs: int
    failed: int
    baseline: int
    devices: dict[str, str]  # GPU name -> profile key
    padded: int
    out: Path
    repeated_runs: int = 0
    repeated_lines: int = 0

    def __str__(self) -> str:
        gpus = ", ".join(f"{name} (target {key})" for name, key in self.devices.items())
        padded = (
            f"; {self.padded} lines had an operand with a padded leading dimension, read as row/col"
            if self.padded
            else ""
        )
        if self.repeated_runs:
            padded += (
                f"; {counted(self.repeated_lines, 'timing line')} of {counted(self.repeated_runs, 'autotune run')} "
                "repeat a run already read, every choice and timing to the digit: counted once"
            )
        return (
            f"read {counted(self.lines, 'timing line')} of {counted(self.files, 'file')}: "
            f"{counted(self.problems, 'problem')}, {counted(self.configs, 'Triton config')}, {self.failed} failed, "
            f"{counted(self.baseline, 'cuBLAS baseline row')}, on {gpus}{padded} -> {counted(self.rows, 'row')} in "
            f"{self.out}"
        )


def import_inductor(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    origin: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Convert Inductor autoheuristic `mm` logs into a CSV that `kt costmodel fit/eval --data` read; `origin`
    (default ORIGIN) names where the logs came from in every row's `source`. Nothing is written when any line
    is malformed (a DatabaseError naming the file and line)."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise DatabaseError(
            f"out: {str(out)!r} must end in .csv; kt reads any other file as a tuning database"
        )
    if out.is_dir():
        raise DatabaseError(f"out: {str(out)!r} is a directory; give a file such as inductor.csv")
    check_writable(out, "out")  # a place that takes no file, before the logs are read
    check_not_input(out, paths, "out", "one of the logs")
    origin = ORIGIN if origin is None else origin  # an empty one is refused below, not replaced
    if not origin.strip() or "\n" in origin:
        raise DatabaseError(f"origin: {origin!r}; allowed: one line of text, e.g. {ORIGIN}")
    log = read_logs(paths, progress)
    if not log.measurements:
        raise DatabaseError(
            f"inductor: {', '.join(repr(str(p)) for p in log.files)} "
            f"{'holds' if len(log.files) == 1 else 'hold'} no timing lines; nothing to write"
        )
    rows = log.rows(origin)
    write_rows(out, rows)
    return Summary(
        lines=log.lines,
        files=len(log.files),
        rows=len(rows),
        problems=len({(r["device"], r["problem_key"]) for r in rows}),
        configs=len({r["config_key"] for r in rows if r["config_key"] != BASELINE_KEY}),
        failed=sum(r["status"] != "ok" for r in rows),
        baseline=sum(r["config_key"] == BASELINE_KEY for r in rows),
        devices={r["device"]: r["target"] for r in rows},
        padded=log.padded,
        out=out,
        repeated_runs=log.repeated_runs,
        repeated_lines=log.repeated_lines,
    )
