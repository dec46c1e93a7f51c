"""What every measured figure of a benchmark carries, and where it is written: the GPU, the date and the software
versions of the run, and a CSV of its rows."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kt.autotune.versions import software_versions


def command_line(script: str, argv: list[str] | None = None) -> str:
    """`python SCRIPT ARGS...`: the command that ran a benchmark, every argument it was given (`argv`, or this
    process's own) quoted as a shell needs them. Captions rebuilt from one option dropped the others
    (`--only fft` printed the whole suite's command)."""
    import shlex
    import sys

    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def budget(text: str) -> int:
    """An argparse type: a script's `--budget`, the configs kt measures per case, 1 to tune.budget's most
    (-5 passed the parser, and every case then failed its tune, leaving an empty table and exit 0)."""
    import argparse

    from kt.spec import MAX_BUDGET

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BUDGET:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_BUDGET}, got {text!r}")
    return value


def each_case(cases: Iterable[Any], bench: Callable[[Any], Any], name: Callable[[Any], str]) -> Iterator[Any]:
    """`bench(case)` for each case, going on past a case whose tune fails (its KtError on stderr, named by
    `name(case)`): one failure lost a whole GPU run, since the scripts write their CSV at the end."""
    import sys

    from kt.errors import KtError

    for case in cases:
        try:
            yield bench(case)
        except KtError as exc:
            print(f"{name(case)}: failed: {exc}", file=sys.stderr)


def run_context(device: str | None = None, command: str | None = None) -> dict[str, Any]:
    """The stamp of a run on this machine's GPU (or on `device`, named by the caller: a CPU run): its name,
    today's date (UTC), the `command` that ran it (`command_line`) and `<package>_version`s."""
    import torch

    return {
        "device": device or torch.cuda.get_device_name(),
        "date": datetime.now(timezone.utc).date().isoformat(),
        **({"command": command} if command is not None else {}),
        **{f"{key}_version": value for key, value in software_versions().items()},
    }


def rounds_ms(timed: dict[str, Any]) -> str:
    """Every round's median of a `time_cuda_each` figure, for a CSV cell (the figure is the lowest)."""
    return " ".join(f"{ms:.4f}" for ms in timed["round_ms"])


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """`rows` as a CSV at `path` (its folder made), columns in the order the rows first name them (`columns`
    where there is no row: a header alone); written beside it and renamed into place (kt.files.atomic_write,
    which leaves nothing behind when that fails), so a reader never sees half a file."""
    from kt.files import atomic_write

    fields = list(dict.fromkeys(key for row in rows for key in row)) or list(columns)

    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def check_outputs(parser, outputs: dict[str, Any], inputs: Iterable[Any] = ()) -> None:
    """A benchmark's output files, refused before its work in one line (argparse's usage error, exit 2) as kt's
    commands refuse theirs: a folder in the place, a place that takes no file, a tuning database or another
    input of the run (`inputs`) that the output would replace. `outputs` maps each option to its path (None:
    not given)."""
    from kt.errors import KtError
    from kt.files import check_not_input, check_writable

    given = [Path(i) for i in inputs if i is not None]
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            check_writable(path, option)
            check_not_input(path, given, option, "an input of this run")
        except KtError as exc:
            parser.error(str(exc))


def drop_cut_line(path: Path) -> None:
    """Cut `path` back to the end of its last whole line: a killed writer's unfinished last line goes (its run is
    redone). Ending it with a newline instead kept the fragment in the middle of the file once more lines were
    appended, which every later read refused ("line N is not JSON"), and a CSV row cut inside its last cell,
    every column still there, was read as a finished run."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        whole = data.rfind(b"\n") + 1
        if whole != len(data):
            handle.truncate(whole)
