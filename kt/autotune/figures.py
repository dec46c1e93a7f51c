"""What every measured figure of a benchmark carries, and where it is written: the GPU, the date and the software
versions of the run, and a CSV of its rows."""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kt.autotune.versions import software_versions


def run_context(device: str | None = None) -> dict[str, Any]:
    """The stamp of a run on this machine's GPU (or on `device`, named by the caller: a CPU run): its name,
    today's date (UTC) and `<package>_version`s."""
    import torch

    return {
        "device": device or torch.cuda.get_device_name(),
        "date": datetime.now(timezone.utc).date().isoformat(),
        **{f"{key}_version": value for key, value in software_versions().items()},
    }


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """`rows` as a CSV at `path` (its folder made), columns in the order the rows first name them; written
    beside it and renamed into place, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
