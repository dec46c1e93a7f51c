"""Training data for the cost model: measured rows of a tuning database or of a `kt export` CSV, as records.

A record is the cost model's plain dict (problem numbers plus config, see kt.costmodel.features) with the
measurement (`runtime_ms`, `power_w`), `group`, the problem it measured, and `shape`, its sizes (the unit held out
in evaluation). Only rows a GPU timed and that passed the correctness check are training data.

Data is only read: a database is opened read-only (never created or migrated). Every row is checked on the way in
(`check_row`), and a malformed one is a DatabaseError on one line that names the file, the CSV line or database
row id, the column and what it may hold.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from kt.autotune.database import (
    BASELINE_KEY,
    COLUMN_NAMES,
    COLUMNS,
    KEY_COLUMNS,
    STATUSES,
    Database,
    decode_row,
    export_text,
    named,
)
from kt.axes import BLOCK_GEMM_FIELDS, FLAG_AXES
from kt.codegen import FAMILIES
from kt.codegen.blockgemm import STRUCTURE_AXES
from kt.codegen.gemm import STRUCTURE_AXES as GEMM_STRUCTURE_AXES
from kt.codegen.tilesum import STRUCTURE_AXES as TILE_STRUCTURE_AXES
from kt.costmodel.features import CONFIG_KEYS
from kt.dtypes import DTYPES
from kt.errors import DatabaseError
from kt.files import DATA_HINT, csv_records, existing_file, is_sqlite
from kt.ir.problems import PROBLEMS, SUM_TERMS, problem_from_dict
from kt.spec import FFT_INPUTS, LAYOUTS, MAX_BATCH, MAX_CHAIN, MAX_DIM, PRECISIONS

LIST_FIELDS = {"w1": (3, 3), "w2": (3, 3), "block": (2, 2), "dims": (3, MAX_CHAIN + 1)}  # problem lists

NUMERIC_COLUMNS = frozenset(["id", *(name for name, kind in COLUMNS if kind.startswith(("REAL", "INTEGER")))])
TEXT_COLUMNS = ("runner", "device", "target", "status", "config_key")  # each must be non-empty text
RUNNERS = ("cuda", "interpret", "dryrun")  # kt.autotune.runners' names (a caller's own Runner has another)
MAX_CONFIG_VALUE = 1 << 20
# (column, what a value must be, test): the measurement columns the cost model and `kt inspect` read
MEASUREMENT_CHECKS = (
    ("runtime_ms", "a finite number of milliseconds > 0", lambda v: v > 0),
    ("power_w", "a finite number of watts >= 0", lambda v: v >= 0),
    ("predicted_ms", "a finite number of milliseconds > 0", lambda v: v > 0),
    # the spread a tune records beside the median, and the energy an energy or edp objective ranks by
    # (>= 0: a log that rounds its repeats may hold a 0 beside a positive median)
    ("runtime_min_ms", "a finite number of milliseconds >= 0", lambda v: v >= 0),
    ("runtime_p20_ms", "a finite number of milliseconds >= 0", lambda v: v >= 0),
    ("runtime_p80_ms", "a finite number of milliseconds >= 0", lambda v: v >= 0),
    ("energy_mj", "a finite number of millijoules >= 0", lambda v: v >= 0),
    ("runs", "an integer >= 1", lambda v: isinstance(v, int) and v >= 1),
)


def untimed(rows: Iterable[dict[str, Any]]) -> str:
    """How many of `rows` were checked without a GPU, by runner, in words ("30 from Triton's interpreter, 30
    from the dry run (--backend dryrun)"); "" when none: why a file of them holds nothing to fit or replay."""
    runners = Counter(r.get("runner") for r in rows)
    return ", ".join(
        f"{runners[name]} from {what}"
        for name, what in (
            ("interpret", "Triton's interpreter"),
            ("dryrun", "the dry run (--backend dryrun)"),
        )
        if runners[name]
    )


def read_rows(source: str | os.PathLike, field: str = "data") -> list[dict[str, Any]]:
    """Every row of a tuning database (.db, SQLite, opened read-only) or of a CSV written by `kt export`, each
    checked (`check_row`): a malformed one is a DatabaseError naming `field` (the option or argument that gave
    the file), the file, its row id or line, and the column."""
    path = existing_file(source, field, DATA_HINT, DatabaseError)
    if path.suffix.lower() != ".csv" or is_sqlite(path):  # a database named .csv (kt before it refused one)
        return find_rows(path, field=field)
    return _csv_rows(path, field)


def find_rows(path: str | os.PathLike, field: str = "data", **where: Any) -> list[dict[str, Any]]:
    """The rows of the database at `path` whose columns equal `where`, read without writing the file (it is
    opened read-only, never created or migrated), each checked (`check_row`); errors name `field`."""
    with named(field), Database(path, create=False, readonly=True) as database:
        rows = database.find(numbers=False, **where)  # check_row below names the allowed range too
    for row in rows:
        check_row(row, f"{field}: {str(path)!r} row id {row.get('id')}")
    return rows


def _csv_rows(path: Path, field: str) -> list[dict[str, Any]]:
    """The rows of a `kt export` CSV. A row with fewer or more cells than the header, or a last row without its
    line break (`kt export` ends every row with one), is a cut-off or damaged file: refused, not read as a row
    whose missing cells are empty."""
    rows, seen, keys = [], {}, {}
    for where, raw in csv_records(export_text(path, field), f"{field}: {str(path)!r}", DatabaseError):
        row = {k: _cell(k, v) for k, v in raw.items() if k in COLUMN_NAMES or k == "id"}
        try:
            row = decode_row(row)
        except ValueError as exc:
            raise DatabaseError(f"{where}: {exc}") from None
        check_row(row, where)
        # a database holds each row once: two exports joined by hand weighed their rows twice in a fit, and a
        # config's two copies filled two of an evaluation's top five
        if row.get("id") is not None:
            if row["id"] in seen:
                line, index = seen[row["id"]]
                if rows[index] == row:
                    raise DatabaseError(
                        f"{where}: id {row['id']} again (line {line} has it); a kt export CSV holds each row once: "
                        "keep one copy"
                    )
                # another row of that id: exports of two databases joined (each numbers its rows from 1), where
                # "keep one copy" would drop a measurement
                raise DatabaseError(
                    f"{where}: id {row['id']} again, on another row than line {line}'s; exports of two databases "
                    "joined? give each row its own id (renumber the id column, or leave its cells empty)"
                )
            seen[row["id"]] = where.rpartition(" ")[2], len(rows)
        # without ids (`kt import inductor` writes none), a row given twice (two imports joined) was read twice:
        # a database holds one row per measurement key, and so does a CSV read as one
        key = tuple(row.get(column) for column in KEY_COLUMNS)
        if key in keys:
            line, index = keys[key]
            other = {k: v for k, v in rows[index].items() if k != "id"}
            if other == {k: v for k, v in row.items() if k != "id"}:
                raise DatabaseError(
                    f"{where}: the row of line {line} again; a CSV holds each row once: keep one copy"
                )
            raise DatabaseError(
                f"{where}: the measurement key of line {line} ({', '.join(KEY_COLUMNS)}) on another row; a "
                "database holds one row per key: keep one of the two"
            )
        keys[key] = where.rpartition(" ")[2], len(rows)
        rows.append(row)
    return rows


def _cell(column: str, text: str | None) -> Any:
    """A CSV cell as stored: None when empty, a number in a numeric column when it parses as one, else text
    (which `check_row` refuses where a number belongs)."""
    if text is None or text == "":
        return None
    if column not in NUMERIC_COLUMNS:
        return text
    # int() and float() read "1_0" as 10, " 1" as 1 and full-width digits as digits: no number kt writes has one
    if "_" in text or not text.isascii() or text != text.strip():
        return text
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as the error shows it: JSON's names for JSON's types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _check_int(value: Any, name: str, low: int, high: int, where: str, column: str) -> None:
    if not (_is_number(value) and isinstance(value, int) and low <= value <= high):
        raise DatabaseError(
            f"{where}: column {column}: {name} is {_show(value)}; allowed: an integer from {low} to {high}"
        )


def _check_choice(value: Any, name: str, allowed: tuple[str, ...], where: str, column: str) -> None:
    if value not in allowed or not isinstance(value, str):
        raise DatabaseError(
            f"{where}: column {column}: {name} is {_show(value)}; allowed: {', '.join(allowed)}"
        )


def _check_problem(family: str, problem: Any, where: str) -> None:
    fields = PROBLEMS[family].__dataclass_fields__
    names = list(fields)
    if not isinstance(problem, dict):
        raise DatabaseError(
            f"{where}: column problem is {_show(problem)}; allowed: a JSON object with {', '.join(names)}"
        )
    unknown = sorted(set(problem) - set(names))
    if unknown:
        raise DatabaseError(
            f"{where}: column problem: unknown key {unknown[0]!r}; allowed: {', '.join(names)}"
        )
    required = [name for name, f in fields.items() if f.default is MISSING]
    missing = [key for key in required if key not in problem]
    if missing:
        raise DatabaseError(
            f"{where}: column problem lacks {', '.join(missing)}; a {family} problem needs {', '.join(required)}"
        )
    for key in required:
        value = problem[key]
        if key in LIST_FIELDS:
            low, high = LIST_FIELDS[key]
            if not isinstance(value, list) or not low <= len(value) <= high:
                count = f"{low}" if low == high else f"{low} to {high}"
                raise DatabaseError(
                    f"{where}: column problem: {key} is {_show(value)}; allowed: a list of {count} integers"
                )
            for i, dim in enumerate(value):
                _check_int(dim, f"{key}[{i}]", 1, MAX_DIM, where, "problem")
        elif key == "layout":
            if not isinstance(value, str) or not value:
                raise DatabaseError(f"{where}: column problem: layout is {_show(value)}; allowed: hex text")
        elif key == "terms":
            if not isinstance(value, list) or not value:
                raise DatabaseError(
                    f"{where}: column problem: terms is {_show(value)}; allowed: a list of term objects"
                )
            for i, term in enumerate(value):
                term_family = term.get("family") if isinstance(term, dict) else None
                if term_family not in SUM_TERMS:
                    raise DatabaseError(
                        f"{where}: column problem: terms[{i}].family is {_show(term_family)}; "
                        f"allowed: {', '.join(SUM_TERMS)}"
                    )
                _check_problem(
                    term_family, {k: v for k, v in term.items() if k != "family"}, f"{where}: terms[{i}]"
                )
        else:
            _check_int(value, key, 1, MAX_DIM, where, "problem")
    if problem.get("batch") is not None:
        _check_int(problem["batch"], "batch", 1, MAX_BATCH, where, "problem")
    _check_choice(problem.get("dtype", "float16"), "dtype", DTYPES, where, "problem")
    _check_choice(problem.get("precision", "ieee"), "precision", PRECISIONS, where, "problem")
    for key in ("a_layout", "b_layout"):
        _check_choice(problem.get(key, "row"), key, LAYOUTS, where, "problem")
    _check_choice(problem.get("input", "complex"), "input", FFT_INPUTS, where, "problem")
    if not isinstance(problem.get("transposed", False), bool):  # monarch and butterfly problems only
        raise DatabaseError(
            f"{where}: column problem: transposed is {_show(problem['transposed'])}; allowed: true, false"
        )


def _check_config(family: str, config: Any, where: str) -> None:
    keys = CONFIG_KEYS if family == "gemm" else tuple(FAMILIES[family].config_type.__dataclass_fields__)
    if not isinstance(config, dict):
        raise DatabaseError(
            f"{where}: column config is {_show(config)}; allowed: a JSON object with {', '.join(keys)}"
        )
    # flags written only when set: the TMA kernel's (0, 1 or 2: its subtiled epilogue) and feature-major ends
    if family == "gemm":
        optional = {"tma": max(GEMM_STRUCTURE_AXES["tma"])}
    else:
        optional = {key: max(BLOCK_GEMM_FIELDS[key]) for key in FLAG_AXES if key in keys}
    unknown = sorted(set(config) - set(keys) - set(optional))
    if unknown:
        raise DatabaseError(f"{where}: column config: unknown key {unknown[0]!r}; allowed: {', '.join(keys)}")
    missing = [key for key in keys if key not in config and key not in optional]
    if missing:
        raise DatabaseError(
            f"{where}: column config lacks {', '.join(missing)}; a config needs {', '.join(keys)}"
        )
    for key in keys:
        if key in optional:
            continue
        low = (
            0 if key in STRUCTURE_AXES + TILE_STRUCTURE_AXES else 1
        )  # a structure choice the family does not use is 0
        _check_int(config[key], key, low, MAX_CONFIG_VALUE, where, "config")
        if (key.startswith("block_") or key == "num_warps") and config[key] & (config[key] - 1):
            # no kernel runs one: tl.arange takes power-of-two ranges, Triton power-of-two warp counts (the
            # Inductor importer refuses such a choice for the same reason)
            raise DatabaseError(
                f"{where}: column config: {key} is {config[key]}; allowed: a power of two from 1 to "
                f"{MAX_CONFIG_VALUE}"
            )
    for key, top in optional.items():
        if key in config:
            _check_int(config[key], key, 0, top, where, "config")


def check_row(row: dict[str, Any], where: str) -> None:
    """Refuse, with a DatabaseError that starts with `where` (the file and its line or row id) and names the
    column, a row whose family, problem or config the cost model cannot read, whose identifying text is
    missing, or whose runtime, power or prediction is not a finite number in range."""
    for column in TEXT_COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value:
            raise DatabaseError(f"{where}: column {column} is {_show(value)}; allowed: non-empty text")
    # "CUDA": a GPU's row silently left out of every fit and replay. Other names pass: a Runner of the
    # caller's own (kt.tune(runner=...)) names its rows, which nothing reading GPU rows takes
    if row["runner"] not in RUNNERS and row["runner"].strip().lower() in RUNNERS:
        raise DatabaseError(
            f"{where}: column runner is {_show(row['runner'])}; kt's runners are {', '.join(RUNNERS)}"
        )
    if row["status"] not in STATUSES:  # an unknown status was a row silently left out of every fit
        raise DatabaseError(
            f"{where}: column status is {_show(row['status'])}; allowed: {', '.join(STATUSES)}"
        )
    family = row.get("family")
    if family not in PROBLEMS or not isinstance(family, str):
        raise DatabaseError(f"{where}: column family is {_show(family)}; allowed: {', '.join(PROBLEMS)}")
    _check_problem(family, row.get("problem"), where)
    if row.get("config_key") == BASELINE_KEY:  # candidate zero, PyTorch's own path: it has no config
        if row.get("config") != {}:
            raise DatabaseError(
                f"{where}: column config is {_show(row.get('config'))}; allowed: {{}} (PyTorch's path)"
            )
    else:
        _check_config(family, row.get("config"), where)
    for column, allowed, in_range in MEASUREMENT_CHECKS:
        value = row.get(column)
        if value is None:
            continue
        if not (_is_number(value) and math.isfinite(value) and in_range(value)):
            raise DatabaseError(f"{where}: column {column} is {_show(value)}; allowed: {allowed}")
    if row["runner"] == "cuda" and row["status"] == "ok" and row.get("runtime_ms") is None:
        # a GPU times every config it passes: kt replay took this one for a failure (its optimum lost), and
        # every fit left it out, without a word, where a 0 was refused
        raise DatabaseError(
            f"{where}: column runtime_ms is null in a passing GPU row; allowed: a finite number of milliseconds > 0"
        )


def is_measured(row: dict[str, Any]) -> bool:
    """A generated kernel's row that a GPU timed and that passed the check: cost-model training data (PyTorch's
    own path, candidate zero, is no config of any family)."""
    return (
        row["runner"] == "cuda"
        and row["status"] == "ok"
        and row.get("runtime_ms") is not None
        and row["config_key"] != BASELINE_KEY
    )


def to_record(row: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """The cost-model record of one measured row, checked first (`check_row`; `where` names the row in the
    error, by default its id)."""
    return {
        **row["config"],
        # after the config: a structured family's config has a `group` field of its own (blocks per program),
        # which overwrote the record's group (its problem) and mixed problems in the ranking metrics
        **baseline_record(row, where),
        "power_w": row.get("power_w"),
        "config_key": row["config_key"],
    }


def shape_key(problem) -> str:
    """What evaluation holds out together: the problem's family and sizes, whatever its dtype and layouts."""
    from kt.costmodel.evaluate import shape_of

    record = problem.to_record()
    if "m" in record:  # a GEMM
        return shape_of(record)
    # a structured op's sizes (a whole op's row; the forests learn only GEMM launches)
    sizes = " ".join(
        f"{k}={v}" for k, v in record.items() if k not in ("family", "dtype", "precision", "itemsize")
    )
    return f"{record['family']} {sizes}"


def is_baseline(row: dict[str, Any]) -> bool:
    """A row of PyTorch's own path (candidate zero; cuBLAS for a dense GEMM) that a GPU timed and that passed."""
    return (
        row["runner"] == "cuda"
        and row["status"] == "ok"
        and row.get("runtime_ms") is not None
        and row["config_key"] == BASELINE_KEY
    )


def baseline_record(row: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """The record of one timed row, checked first (`check_row`): the problem's numbers, the runtime, its group,
    shape and GPU, without the config (all a baseline row of PyTorch's path has; `to_record` adds a config's)."""
    where = where or f"data: row id {row.get('id')}"
    check_row(row, where)
    if row.get("runtime_ms") is None:
        raise DatabaseError(
            f"{where}: column runtime_ms is null; allowed: a finite number of milliseconds > 0"
        )
    problem = problem_from_dict(row["family"], row["problem"])
    return {
        **problem.to_record(),
        "runtime_ms": row["runtime_ms"],
        "group": problem.key(),
        "shape": shape_key(problem),
        "device": row["device"],
    }


def _gemm_rows(
    source: str | os.PathLike, target: str | None, device: str | None, keep
) -> list[dict[str, Any]]:
    """The GEMM rows of `source` that `keep` accepts, for the profile key `target` and the GPU named `device`
    when given; refuses data that mixes GPUs (one model is one device's)."""
    rows = [
        r
        for r in read_rows(source)
        if keep(r)
        and r["family"] == "gemm"
        and (target is None or r["target"] == target)
        and (device is None or r["device"] == device)
    ]
    gpus = Counter(r["device"] for r in rows)
    if len(gpus) > 1:
        listing = ", ".join(f"{name!r} ({n} rows)" for name, n in gpus.most_common())
        raise DatabaseError(
            f"data: {str(source)!r} holds measurements from several GPUs: {listing}; pick one with --gpu"
        )
    # a warm L2's times are another quantity than a flushed one's (the tune loop refuses to mix them in one
    # problem): a model fitted on both learnt their mixture without a word. A row without one is l2_flushed's.
    regimes = Counter(r.get("timing_regime") or "l2_flushed" for r in rows if r.get("runtime_ms") is not None)
    if len(regimes) > 1:
        listing = ", ".join(f"{name} ({n} rows)" for name, n in regimes.most_common())
        raise DatabaseError(
            f"data: {str(source)!r} holds times of several timing regimes: {listing}; a model learns one: give "
            "data of one regime (`kt export` it to CSV and keep one regime's rows)"
        )
    return rows


def measured_records(
    source: str | os.PathLike, target: str | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """The GPU-timed, passing rows of `source` as records; only those for the profile key `target` and the GPU
    named `device` when given. Refuses data that mixes GPUs (one model is one device's).

    Only GEMM rows: the models learn single GEMM launches, and a structured op's row times a whole chain of
    them (its launches are predicted as GEMMs and summed, kt.costmodel.staged)."""
    return [to_record(r) for r in _gemm_rows(source, target, device, is_measured)]


def baseline_records(
    source: str | os.PathLike, target: str | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """The GPU-timed baseline rows of dense GEMMs in `source` (cuBLAS through torch.matmul) as records, filtered
    as measured_records filters: what the baseline forest learns from."""
    return [baseline_record(r) for r in _gemm_rows(source, target, device, is_baseline)]
