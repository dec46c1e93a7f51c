"""Which kernel a layer runs: the tuned config for its shape, else the cost model's best prediction.

A layer asks for an op (a spec with the batch left out). Batch sizes are bucketed to the next power of two (at
least 16), so a new batch size reuses the kernel of its bucket: every generated kernel takes any number of rows,
and the bucket only names the shape that was (or can be) tuned. For a bucket's spec, in order:

1. the tuning database (`$KT_DB`, else kt's default): the fastest passing row measured on this GPU with the
   current template, PyTorch's own path (a tune's candidate zero) included: when it beat every generated
   kernel, the layer calls PyTorch;
2. artifacts (`kt tune --out`) in the directories of `$KT_ARTIFACTS` (separated by os.pathsep) or given to
   `use_artifacts()`, whose problem is this bucket's (an artifact whose kernel.py calls PyTorch runs PyTorch;
   one tuned without a GPU, `measured: false`, is used with a warning);
3. the cost model's top-ranked legal config (`kt.build`), which is never silent: a warning names the spec to tune.

Each choice is logged once (logger "kt.nn") and listed by `selections()`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kt.autotune.database import BASELINE_KEY
from kt.kernel import Kernel
from kt.spec import OpSpec, parse_spec

log = logging.getLogger("kt.nn")
MIN_BUCKET = 16
_ARTIFACT_DIRS: list[Path] = []


@dataclass(frozen=True)
class Selection:
    spec: OpSpec  # the bucket's spec: what to tune to replace a fallback
    kernel: Kernel
    source: str  # "database", "artifact", "cost model" or "loaded" (kt.nn.functional.kernel_op)
    where: str  # the database file, the artifact directory, or the model that ranked


_SELECTED: dict[tuple[str, int, str], Selection] = {}


@functools.lru_cache(maxsize=1024)
def parsed_op(text: str) -> dict[str, Any]:
    """An op's JSON text as a mapping, parsed once per text (every forward call names its op by text). Shared:
    copy before changing it."""
    return json.loads(text)


def bucket(rows: int) -> int:
    """The power of two (at least MIN_BUCKET) that `rows` rounds up to."""
    return max(MIN_BUCKET, 1 << max(0, rows - 1).bit_length())


def use_artifacts(*directories: str | os.PathLike) -> None:
    """Also look for tuned kernels in these directories (each holding `kt tune --out` artifacts)."""
    for directory in directories:
        path = Path(directory)
        if path not in _ARTIFACT_DIRS:
            _ARTIFACT_DIRS.append(path)
    _SELECTED.clear()


def selections() -> list[Selection]:
    """Every kernel chosen so far in this process, with where it came from."""
    return list(_SELECTED.values())


_PINNED: dict[str, Selection] = {}


def pin(selection: Selection) -> str:
    """A name for `selection` that an op can carry (`"pin"`) to run that kernel whatever its rows."""
    name = f"{len(_PINNED)}:{selection.where}"
    _PINNED[name] = selection
    return name


def bucket_spec(op: dict[str, Any], rows: int) -> OpSpec:
    """The spec of `op` (an op.yaml mapping without its batch) for the bucket of `rows`."""
    data = json.loads(json.dumps(op))
    size = bucket(rows)
    if data["op"] == "dense":
        data["shape"]["m"] = size
    elif data["op"] == "sum":
        for term in data["terms"]:
            term["shape"]["batch"] = size
    else:
        data["shape"]["batch"] = size
    data.setdefault("name", f"{data['op']}_nn")
    return parse_spec(data, check_files=False)


def kernel_for(op_text: str, rows: int, device: torch.device) -> Kernel:
    """The kernel for the op `op_text` (JSON of an op.yaml mapping without its batch) at `rows` rows."""
    op = parsed_op(op_text)
    if "pin" in op:  # a kernel the user loaded (kt.nn.functional.kernel_op)
        return _PINNED[op["pin"]].kernel
    key = (op_text, bucket(rows), device.type)
    selected = _SELECTED.get(key)
    if selected is None:
        selected = _select(bucket_spec(op, rows), device)
        _SELECTED[key] = selected
        runs = (
            f"PyTorch's {selected.kernel.module.IMPLEMENTATION}"
            if selected.kernel.pytorch
            else f"config {selected.kernel.config.key()}"
        )
        message = f"{selected.spec.summary()}: {selected.source} ({selected.where}), {runs}"
        if selected.source == "artifact" and not selected.kernel.measured:
            log.warning(
                "%s; not measured: the artifact was tuned without a GPU (the cost model's pick, checked in "
                "Triton's interpreter); tune it on this GPU with `kt tune` for a measured choice",
                message,
            )
        elif selected.source == "cost model":
            log.warning(
                "%s; untuned: tune this shape with `kt tune` (spec: %s) and point $KT_DB or $KT_ARTIFACTS at it",
                message,
                json.dumps(selected.spec.signature(), separators=(",", ":")),
            )
        else:
            log.info(message)
    return selected.kernel


def _select(spec: OpSpec, device: torch.device) -> Selection:
    import kt
    from kt.codegen import config_from_dict, family_for
    from kt.ir import op_from_spec

    (node,) = op_from_spec(spec).kernel_graph().kernels
    problem, family = node.problem, family_for(node.problem)
    if device.type == "cuda":
        row = _best_row(problem, family, torch.cuda.get_device_name(device))
        if row is not None and row["config_key"] == BASELINE_KEY:  # no generated kernel beat PyTorch's path
            return Selection(spec, kt.build(spec, config=BASELINE_KEY), "database", row["db"])
        if row is not None:
            config = config_from_dict(family.name, row["config"])
            return Selection(spec, kt.build(spec, config=config), "database", row["db"])
    wanted = json.loads(json.dumps(problem.to_dict()))  # as meta.json holds it (tuples become lists)
    for directory in _artifact_dirs():
        for meta_path in sorted(directory.glob("*/meta.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if (
                meta.get("family") == family.name
                and meta.get("family_version") == family.version
                and meta.get("problem") == wanted
            ):
                return Selection(spec, kt.load(meta_path.parent), "artifact", str(meta_path.parent))
    kernel = kt.build(spec)
    return Selection(spec, kernel, "cost model", f"ranked for {kt.resolve_profile(spec.device).name}")


def _artifact_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("KT_ARTIFACTS", "").split(os.pathsep) if p]
    return [d for d in [*_ARTIFACT_DIRS, *extra] if d.is_dir()]


def _best_row(problem, family, gpu: str) -> dict[str, Any] | None:
    """The fastest passing GPU row of `problem` on `gpu`: a generated kernel of the current template, or PyTorch's
    own path timed as a tune's candidate zero."""
    from kt.autotune.database import Database, default_path
    from kt.codegen.baseline import baseline_version
    from kt.errors import DatabaseError

    path = default_path()
    if not path.is_file():
        return None
    try:
        with Database(path, readonly=True) as db:
            rows = db.find(problem_key=problem.key(), status="ok", runner="cuda", device=gpu)
    except DatabaseError as exc:
        log.warning("kt.nn: cannot read the tuning database: %s", exc)
        return None
    current = {family.version, baseline_version()}
    rows = [r for r in rows if r.get("runtime_ms") and r["family_version"] in current]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["runtime_ms"])
    return {**best, "db": str(path)}
