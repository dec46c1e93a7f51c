"""Training data for the cost model: measured rows of a tuning database or of a `kt export` CSV, as records.

A record is the cost model's plain dict (problem numbers plus config, see kt.costmodel.features) with the
measurement (`runtime_ms`, `power_w`) and `group`, the problem it measured (the unit held out in evaluation).
Only rows a GPU timed and that passed the correctness check are training data.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any

from kt.autotune.database import COLUMN_NAMES, Database, decode_row
from kt.errors import DatabaseError
from kt.ir.problems import problem_from_dict


def read_rows(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a tuning database (.db, SQLite) or of a CSV written by `kt export`."""
    path = Path(source)
    if not path.is_file():
        raise DatabaseError(f"data: {str(path)!r} not found")
    if path.suffix.lower() != ".csv":
        with Database(path, create=False) as database:
            return database.find()
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"runner", "device", "target", "family", "problem", "config", "status"} - set(
            reader.fieldnames or []
        )
        if missing:
            raise DatabaseError(
                f"data: {str(path)!r} is not a `kt export` CSV (no {', '.join(sorted(missing))} column)"
            )
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k: _number(v) for k, v in raw.items() if k in COLUMN_NAMES or k == "id"}
            try:
                rows.append(decode_row(row))
            except ValueError as exc:
                raise DatabaseError(f"data: {str(path)!r} line {line}: {exc}") from None
        return rows


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def to_record(row: dict[str, Any]) -> dict[str, Any]:
    """The cost-model record of one measured row."""
    problem = problem_from_dict(row["family"], row["problem"])
    return {
        **problem.to_record(),
        **row["config"],
        "runtime_ms": row["runtime_ms"],
        "power_w": row.get("power_w"),
        "group": problem.key(),
        "shape": shape_key(problem),
        "config_key": row["config_key"],
        "device": row["device"],
    }


def shape_key(problem) -> str:
    """What evaluation holds out together: the problem's family and sizes, whatever its dtype and layouts."""
    batch = f"x{problem.batch}" if problem.batch else ""
    return f"{problem.family} {problem.m}x{problem.n}x{problem.k}{batch}"


def measured_records(
    source: str | os.PathLike, target: str | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """The GPU-timed, passing rows of `source` as records; only those for the profile key `target` and the GPU
    named `device` when given. Refuses data that mixes GPUs (one model is one device's)."""
    rows = [
        r
        for r in read_rows(source)
        if r["runner"] == "cuda"
        and r["status"] == "ok"
        and r.get("runtime_ms")
        and (target is None or r["target"] == target)
        and (device is None or r["device"] == device)
    ]
    gpus = Counter(r["device"] for r in rows)
    if len(gpus) > 1:
        listing = ", ".join(f"{name!r} ({n} rows)" for name, n in gpus.most_common())
        raise DatabaseError(
            f"data: {str(source)!r} holds measurements from several GPUs: {listing}; pick one with --gpu"
        )
    return [to_record(r) for r in rows]
