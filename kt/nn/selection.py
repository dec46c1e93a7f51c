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
3. the cost model's top-ranked legal config (`kt.build`), which is never silent: a warning says it is untuned.
   On a GPU, the best-ranked one whose build for it neither spills registers nor exceeds its shared memory, as
   a tune's compile stage holds its candidates (`kt.build(compile_check=True)`).

On CPU tensors none of that runs: a layer runs the op's PyTorch path (the module a tune times as candidate zero:
two torch.bmm for Monarch, F.linear on the BSR weight, torch.linalg.multi_dot, torch.fft.fft, the butterfly's
per-level loop), at torch's speed, with the same custom op, autograd and dtype rules. `KT_INTERPRET=1` runs kt's
generated kernels in Triton's interpreter instead (slow: what the kernel tests use), selected as above; so does a
`kt.load`ed kernel called through `Kernel.as_op()` on CPU tensors.

Each choice is logged once (logger "kt.nn"): a layer's forward op as one line (a warning when it is untuned), the
backward's kernels at DEBUG; `selections()` lists every one, and prints as a table.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import json
import logging
import numbers
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kt.autotune.database import BASELINE_KEY
from kt.errors import SpecError
from kt.kernel import Kernel
from kt.spec import MAX_DIM, OpSpec, parse_spec

log = logging.getLogger("kt.nn")  # its name says where a message comes from: messages do not repeat it
MIN_BUCKET = 16
_ARTIFACT_DIRS: list[Path] = []


INTERPRET_ENV = "KT_INTERPRET"
CPU_SOURCE = "pytorch (cpu)"
NO_PROFILE = "pytorch (no profile)"  # a GPU kt has no profile of, whose database holds no row of the op


@dataclass(frozen=True)
class Selection:
    spec: OpSpec  # the bucket's spec: what to tune to replace a fallback
    kernel: Kernel
    source: str  # "database", "artifact", "cost model", "loaded" (kernel_op), CPU_SOURCE or NO_PROFILE
    where: str  # the database file, the artifact directory, the model that ranked, or why PyTorch runs
    device: str = ""  # the tensors' device type ("cuda", "cpu")
    role: str = "forward"  # "forward", or "backward" for a product the backward pass runs

    @property
    def runs(self) -> str:
        """What runs: PyTorch's path by name, or the generated kernel's config."""
        if self.kernel.pytorch:
            return f"PyTorch's {self.kernel.module.IMPLEMENTATION}"
        return f"config {self.kernel.config.key()}"


class Selections(list):
    """`selections()`: a list of Selection that prints as a table (one row per op, bucket and device)."""

    COLUMNS = ("op", "device", "role", "source", "runs", "where")

    def rows(self) -> list[tuple[str, ...]]:
        return [(s.spec.summary(), s.device, s.role, s.source, s.runs, s.where) for s in self]

    def specs(self) -> list[OpSpec]:
        """The distinct specs of these selections (one per op and batch bucket, in order), each named after its
        shape and six hex digits of its whole signature (a dense op's layout, a block-sparse pattern, an FFT's
        input: what the shape does not show), so that the files two processes write never give two ops one
        name (tuned into one folder, the second replaced the first's artifact, which kt.nn then passed over);
        `_2`, `_3` where two would still share one. What `kt tune` takes to tune them."""
        import hashlib

        from kt.spec import default_name

        specs: dict[str, OpSpec] = {}
        names: set[str] = set()
        for s in self:
            key = json.dumps(s.spec.signature(), sort_keys=True)
            if key in specs:
                continue
            digest = hashlib.sha256(key.encode()).hexdigest()[:6]
            base = f"{default_name(s.spec.op, s.spec.shape, s.spec.dtype, s.spec.transposed)}_{digest}"
            name, number = base, 1
            while name in names:
                number += 1
                name = f"{base}_{number}"
            names.add(name)
            specs[key] = s.spec.replace(name=name)
        return list(specs.values())

    def write_yaml(self, path: str | os.PathLike) -> int:
        """Write `specs()` to `path` as one op.yaml of several YAML documents, for `kt tune PATH`; returns how
        many. Filter the list first to tune only some, e.g. `kt.nn.selection.Selections(s for s in
        kt.nn.selections() if s.source == "cost model")`."""
        from kt.files import atomic_write_text
        from kt.spec import dump_yaml

        specs = self.specs()
        if not specs:  # a filter that kept none is not a model that never ran
            why = "no kernel selected yet; run the model first" if not selections() else "this list is empty"
            raise ValueError(f"Selections.write_yaml: {why}")
        atomic_write_text(path, dump_yaml([spec.to_dict() for spec in specs]))
        return len(specs)

    def __str__(self) -> str:
        if not self:
            return "kt.nn: no kernel selected yet"
        rows = [self.COLUMNS, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# (op, bucket, device type, device index, PyTorch's path): a GPU's own choice, as each GPU model has its rows
# and its compile check (one choice for every CUDA device gave a second GPU model the first one's)
_SELECTED: dict[tuple[str, int, str, int | None, bool], Selection] = {}
# choices made before use_artifacts() added folders
_STALE: set[tuple[str, int, str, int | None, bool]] = set()
_ROLE = contextvars.ContextVar("kt_nn_role", default="forward")


def interpreting() -> bool:
    """Whether CPU tensors run kt's generated kernels in Triton's interpreter ($KT_INTERPRET=1) rather than the
    op's PyTorch path."""
    return os.environ.get(INTERPRET_ENV, "") == "1"


@contextlib.contextmanager
def backward_role() -> Iterator[None]:
    """Selections made inside are the backward pass's products (logged at DEBUG, listed with role backward)."""
    token = _ROLE.set("backward")
    try:
        yield
    finally:
        _ROLE.reset(token)


def _role() -> str:
    """The pass a selection is made for: the backward's inside `backward_role`, or wherever autograd's engine
    runs a node. A compiled model's backward graph calls the ops outside `backward_role` (it was active only
    while the graph was traced), so its selections were listed and logged as the forward's."""
    if _ROLE.get() == "backward" or torch._C._current_autograd_node() is not None:
        return "backward"
    return "forward"


@functools.lru_cache(maxsize=1024)
def parsed_op(text: str) -> dict[str, Any]:
    """An op's JSON text as a mapping, parsed once per text (every forward call names its op by text), each
    block-sparse pattern as its layout (`canonical_op_text`: torch.ops.kt.apply called with an op's own text).
    Shared: copy before changing it."""
    return json.loads(canonical_op_text(text))


@functools.lru_cache(maxsize=1024)
def canonical_op_text(text: str) -> str:
    """`kt.nn.functional.canonical_text`: an op's text with each block-sparse pattern as its block and layout."""
    try:
        op = json.loads(text)
        terms = op["terms"] if op.get("op") == "sum" else [op]
        loose = [
            i
            for i, term in enumerate(terms)
            if term.get("op") == "blocksparse" and set(term.get("sparsity", {})) != {"block", "layout"}
        ]
        if not loose or "pin" in op:
            return text
        signature = bucket_spec(op, MIN_BUCKET).signature()
        written = signature["terms"] if op["op"] == "sum" else [signature]
        for i in loose:
            terms[i]["sparsity"] = {
                "block": terms[i]["sparsity"]["block"],
                "layout": written[i]["sparsity"]["layout"],
            }
    except Exception:  # no valid op: `_checked_op` says why in op.yaml's words
        return text
    return json.dumps(op, sort_keys=True, separators=(",", ":"))


def bucket(rows: int) -> int:
    """The power of two (at least MIN_BUCKET) that `rows` rounds up to. By comparisons, not bit_length, should
    `rows` be a SymInt of torch.compile's dynamic shapes: they guard a graph on the bucket's range, bit_length
    on the exact value. Not called in traced code: even the range's guard recompiles a graph per bucket (a
    weight gradient's bucket is taken inside the op, `DEEP`)."""
    if isinstance(rows, bool) or not isinstance(rows, (numbers.Integral, torch.SymInt)):  # inf looped forever
        raise TypeError(f"bucket: rows must be an integer, got {type(rows).__name__} {rows!r}")
    if isinstance(rows, numbers.Integral) and rows < 0:
        raise ValueError(f"bucket: rows must be 0 or more, got {rows}")
    size = MIN_BUCKET
    while size < rows:
        size *= 2
    return size


def use_artifacts(*directories: str | os.PathLike) -> None:
    """Also look for tuned kernels in these directories (each holding `kt tune --out` artifacts). A directory
    that does not exist is a FileNotFoundError (a typo would otherwise leave every layer on the cost model)."""
    for directory in directories:  # a list or None gave os.fspath's TypeError, naming neither
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"kt.nn.use_artifacts: each folder must be a path (str or os.PathLike), got "
                f"{type(directory).__name__}; pass folders as separate arguments, use_artifacts(*folders)"
            )
    # absolute now: a relative folder is the caller's, not that of whatever cwd a later forward runs in
    paths = [Path(directory).absolute() for directory in directories]
    for path in paths:
        if not path.is_dir():
            what = "a file, not a folder" if path.exists() else "not there"
            raise FileNotFoundError(
                f"kt.nn.use_artifacts: {path} is {what}; give folders that `kt tune --out` wrote"
            )
    for path in paths:
        if path not in _ARTIFACT_DIRS:
            _ARTIFACT_DIRS.append(path)
    # every choice is made again on its next use, and listed by selections() until then (it was forgotten); a
    # selection under way now is made again too (`kernel_for` compares the generation: it stored its older
    # choice and cleared the mark, and the new folders were never looked at)
    _GENERATION[0] += 1
    _STALE.update(_SELECTED)


def selections() -> Selections:
    """Every kernel chosen so far in this process, with where it came from; `print(kt.nn.selections())` shows
    them as a table."""
    return Selections(_SELECTED.values())


_PINNED: dict[str, Selection] = {}
_PINNED_CPU: dict[str, Kernel] = {}
# pins whose kernel runs on CPU tensors too (`Kernel.__call__` with inputs that require grad): held weakly, as
# the kernel holds its op, so a kernel dropped is not kept for the process's life
_EXACT: weakref.WeakValueDictionary[str, Kernel] = weakref.WeakValueDictionary()
_PIN_NUMBERS = itertools.count()  # next() is atomic: two threads pinning at once get two names
# this process's pins' prefix: a program saved by torch.export carries its op's pin into another process, whose
# own counter started at 0 too, so "0:kt.build" named that process's first pinned kernel (another op's)
_PIN_PROCESS = uuid.uuid4().hex[:12]


def _new_pin_prefix() -> None:
    """A forked child's own prefix: it continued the parent's, counter and all, so both named two kernels alike."""
    global _PIN_PROCESS
    _PIN_PROCESS = uuid.uuid4().hex[:12]


os.register_at_fork(after_in_child=_new_pin_prefix)
_FOREIGN_PINS: set[str] = set()  # pins of other processes already warned about (each once)


def pin(selection: Selection, exact: bool = False) -> str:
    """A name for `selection` that an op can carry (`"pin"`) to run that kernel whatever its rows; `exact`: on CPU
    tensors too (else they run the op's PyTorch path unless $KT_INTERPRET=1), the kernel held weakly. The name
    is this process's own: no other process's pin has it."""
    name = f"{_PIN_PROCESS}.{next(_PIN_NUMBERS)}:{selection.where}"
    if exact:
        _EXACT[name] = selection.kernel
    else:
        _PINNED[name] = selection
    return name


# The key of an op's mapping that marks a call kt makes itself with index tensors it derived from the op's
# pattern (dx's transposed pattern, a weight gradient's, vmap's stacked ones): not checked against the pattern,
# which they hold by construction (kt.nn.functional._kernel_weights). Under torch.compile the graph makes them
# afresh on every call, so checking them read them back from the GPU on every compiled backward. Every other
# call's BSR weight is checked: a layer's indices under torch.compile (whose trace cannot read them), and those
# given to `apply` or `Kernel.as_op`. Not part of the op's spec (`bucket_spec` leaves it out).
TRUSTED = "kt_derived_indices"
# The key of a dense op's mapping that marks a weight gradient's product, whose K (the batch's rows) is named by
# its bucket: the op's shape.k is a placeholder, and `kt.nn.functional._run` puts the bucket of its operand's
# columns there when it runs (inside the custom op, so a graph torch.compile traces does not guard on it). Not
# part of the op's spec either.
DEEP = "kt_rows_deep"


def bucket_spec(op: dict[str, Any], rows: int, exact: bool = False, lower_k: bool = True) -> OpSpec:
    """The spec of `op` (an op.yaml mapping without its batch) for the bucket of `rows` (`exact`: for `rows`
    itself, as a FLOP count needs); where a spec cannot have that many rows (a batch over the spec's limit, or
    operands over its size limit), the largest bucket below it that one can: its kernel takes any number of
    rows, and a larger problem only fits its tiles better. A layer of nn.Linear's any rows failed past 2**24 of
    them, blamed on a spec field never written. `lower_k` False: a dense op's K is never lowered (see below), as
    an nn.Linear's in_features must not be (`kt tune --from-model` skips one past the limits)."""
    data = json.loads(json.dumps({key: value for key, value in op.items() if key not in (TRUSTED, DEEP)}))
    size = rows if exact else bucket(rows)
    # an op without its shape (or terms) is left for parse_spec to name the field
    shapes = [data.get("shape")]
    if data.get("op") == "sum" and isinstance(data.get("terms"), list):
        shapes = [term.get("shape") if isinstance(term, dict) else None for term in data["terms"]]
    data.setdefault("name", f"{data['op']}_nn")

    def at(size: int) -> OpSpec:
        for shape in shapes:
            if isinstance(shape, dict):
                shape["m" if data.get("op") == "dense" else "batch"] = size
        return parse_spec(data, check_files=False)

    def fits(size: int) -> bool:
        try:
            at(size)
        except SpecError:
            return False
        return True

    try:
        return at(size)
    except SpecError as refused:
        if not fits(MIN_BUCKET):
            # a dense weight gradient's K (`DEEP`: the rows it sums over) past what a spec holds (2**24 rows,
            # or its operands' bytes): the largest power of two that fits, as the rows are lowered below (the
            # kernel takes the tensors' own K). The backward of a forward that ran raised a SpecError
            deep = (
                lower_k
                and data.get("op") == "dense"
                and isinstance(shapes[0], dict)
                and isinstance(shapes[0].get("k"), int)
            )
            fitted = False
            while deep and not fitted and shapes[0]["k"] > MIN_BUCKET:
                shapes[0]["k"] = min(shapes[0]["k"] // 2, MAX_DIM)
                fitted = fits(MIN_BUCKET)
            if not fitted:
                raise refused from None  # refused with the fewest rows too: the rows are not what is wrong
            with contextlib.suppress(SpecError):
                return at(size)
    while size > MIN_BUCKET:
        size //= 2
        try:
            return at(size)
        except SpecError:
            continue
    return at(MIN_BUCKET)


def kernel_for(op_text: str, rows: int, device: torch.device) -> Kernel:
    """The kernel for the op `op_text` (JSON of an op.yaml mapping without its batch) at `rows` rows."""
    op = parsed_op(op_text)
    torch_path = device.type == "cpu" and not interpreting()
    if "pin" in op:  # a kernel the user loaded (kt.nn.functional.kernel_op)
        exact = _EXACT.get(op["pin"])  # read once: a weak value may go between a test and a read
        if exact is not None:
            return exact
        pinned = _PINNED.get(op["pin"])
        if pinned is not None:
            if not torch_path or pinned.kernel.pytorch:
                return pinned.kernel
            if op["pin"] not in _PINNED_CPU:
                _PINNED_CPU[op["pin"]] = _pytorch_kernel(pinned.spec)
            return _PINNED_CPU[op["pin"]]
        # a pin of another process (a program torch.export saved there), or whose kernel was dropped: the op in
        # its own words still says what to compute, so its kernel is selected as a layer's is
        _foreign_pin(op["pin"])
        from kt.nn.functional import op_text as canonical  # loaded by now: it imports this module

        op = {key: value for key, value in op.items() if key != "pin"}
        op_text = canonical(op)
    # past the rows a spec holds, one key (bucket_spec lowers every such bucket to one spec: each was selected,
    # warned about and listed again)
    key = (op_text, min(bucket(rows), MAX_DIM), device.type, device.index, torch_path)
    selected = _SELECTED.get(key)
    if selected is None or key in _STALE:
        # one thread selects, the others wait for its choice: threads making a layer's first call at once each
        # selected (on a GPU, each compile-checking the fallback's configs) and each logged it
        with _SELECTING:
            lock = _SELECTING_KEY.setdefault(key, threading.RLock())
        with lock:  # per key: a layer's compile-checked selection does not hold up other layers' first calls
            selected = _SELECTED.get(key)
            if selected is None or key in _STALE:
                generation, before = _GENERATION[0], selected
                spec = bucket_spec(op, rows)
                if torch_path:
                    selected = Selection(
                        spec,
                        _pytorch_kernel(spec),
                        CPU_SOURCE,
                        f"CPU tensors; {INTERPRET_ENV}=1 runs kt's kernels",
                    )
                else:
                    selected = _select(spec, device)
                # the device with its index: two GPUs' choices were listed and logged alike, "cuda"
                selected = replace(selected, device=str(device), role=_role())
                _SELECTED[key] = selected
                # only now: a selection that raised left the key stale, so the next call selects again (it
                # ran the choice made before the change without a word); one that use_artifacts overtook stays
                # stale
                if _GENERATION[0] == generation:
                    _STALE.discard(key)
                else:
                    _STALE.add(key)
                # said once: use_artifacts makes every choice again, and the same one's warning came again
                if before is None or (before.source, before.where, before.runs) != (
                    selected.source,
                    selected.where,
                    selected.runs,
                ):
                    _log(selected)
    return selected.kernel


_SELECTING = threading.Lock()  # guards _SELECTING_KEY
_GENERATION = [0]  # how many times use_artifacts has changed where artifacts are looked for
_SELECTING_KEY: dict[tuple, threading.RLock] = {}  # held while a key's kernel is selected (`kernel_for`)


def _selection_locks_in_child() -> None:
    """A forked child's own selection locks, all free: a child forked while another thread was selecting a
    kernel (a DataLoader worker or a fork Pool started beside a layer's first call) inherited that key's lock,
    held by a thread it does not have, and its own first call of the layer waited forever. The parent's
    selection under way is not the child's: the child selects for itself. (Taking the locks across the fork,
    as kt.codegen.emit does for its own, would make a fork wait out a selection's compile checks, and could
    deadlock with the import lock a selection takes inside.)"""
    global _SELECTING, _SELECTING_KEY
    _SELECTING, _SELECTING_KEY = threading.Lock(), {}


os.register_at_fork(after_in_child=_selection_locks_in_child)


def _foreign_pin(name: str) -> None:
    """Warn once that an op's pinned kernel is not this process's, and what runs instead."""
    if name in _FOREIGN_PINS:
        return
    _FOREIGN_PINS.add(name)
    where = name.partition(":")[2]
    log.warning(
        "an op pinned to a kernel (%s's, by as_op()) that this process does not hold (a program saved by "
        "torch.export in another process, or a kernel since dropped): its kernel is selected as a kt.nn layer's "
        "is; call as_op() on a kernel loaded here to run that one",
        where,
    )


def _log(selected: Selection) -> None:
    """One line for a forward op's choice (a warning when it is not a measured one); DEBUG for the backward's."""
    message = f"{selected.spec.summary()} on {selected.device}: {selected.source}, {selected.runs}"
    if selected.source == CPU_SOURCE and selected.role == "forward":
        log.info(
            "%s on cpu: %s (CPU tensors run the op's PyTorch path; %s=1 runs kt's kernels in Triton's interpreter)",
            selected.spec.summary(),
            selected.runs,
            INTERPRET_ENV,
        )
    elif selected.role == "backward":
        log.debug("%s (backward; %s)", message, selected.where)
    elif selected.source == "artifact" and not selected.kernel.measured:
        log.warning(
            "%s from %s; not measured: the artifact was tuned without a GPU (the cost model's pick, checked in "
            "Triton's interpreter); %s",
            message,
            selected.where,
            "tune it on this GPU with `kt tune` for a measured choice"
            if selected.device.startswith("cuda")
            else "a tune on a GPU makes a measured choice",  # (there is none here)
        )
    elif selected.source == NO_PROFILE:
        log.warning("%s; untuned: %s", message, selected.where)
    elif selected.source == "cost model":
        # the database is read for a GPU's choices only (its rows are GPU timings): on CPU tensors, artifacts
        log.warning(
            "%s; untuned: kt.nn.selections().write_yaml('ops.yaml') writes the specs for `kt tune ops.yaml` "
            "(then point %s at the result)",
            message,
            "$KT_DB or $KT_ARTIFACTS"
            if selected.device.startswith("cuda")
            else "$KT_ARTIFACTS (`kt tune --out`)",
        )
    else:
        log.info("%s (%s)", message, selected.where)


def _pytorch_kernel(spec: OpSpec) -> Kernel:
    """The op's PyTorch path (the baseline module a tune times as candidate zero), which takes any number of rows.
    Built without kt's tuner modules (scikit-learn alone takes seconds to import)."""
    from kt.codegen.baseline import baseline_kernel

    return baseline_kernel(spec, "cpu", provenance="PyTorch's own path, which kt.nn runs on CPU tensors")


def _tier(meta: dict[str, Any], gpu: str | None) -> int:
    """An artifact's rank among those of one op: 0 measured on `gpu` (this GPU), 1 measured, 2 not measured."""
    if not meta.get("measured"):
        return 2
    device = meta.get("device") if isinstance(meta.get("device"), dict) else {}
    return 0 if gpu is not None and device.get("ran_on") == gpu else 1


def _select(spec: OpSpec, device: torch.device) -> Selection:
    import kt
    from kt.codegen import config_from_dict, family_for
    from kt.ir import op_from_spec

    (node,) = op_from_spec(spec).kernel_graph().kernels
    problem, family = node.problem, family_for(node.problem)
    # the tensors' own GPU's profile (resolve_profile's auto is cuda:0's, and raised for a card without a
    # built-in profile: every layer failed there, its database rows of that very card included)
    auto = str(spec.device).lower() == "auto"
    profile = _gpu_profile(device) if device.type == "cuda" and auto else None
    if device.type == "cuda":
        # the profile names the module's device only: a row's config and PyTorch's path need none of its limits
        label = profile or (_label_profile(torch.cuda.get_device_name(device)) if auto else spec.device)
        row = _best_row(problem, family, torch.cuda.get_device_name(device))
        if row is not None and row["config_key"] == BASELINE_KEY:  # no generated kernel beat PyTorch's path
            return Selection(spec, kt.build(spec, config=BASELINE_KEY, device=label), "database", row["db"])
        if row is not None:  # measured on this card: it runs here, whatever a profile's legality says
            config = config_from_dict(family.name, row["config"])
            return Selection(spec, kt.build(spec, config=config, device=label), "database", row["db"])
    from kt.autotune.artifact import kept_artifact

    wanted = json.loads(json.dumps(problem.to_dict()))  # as meta.json holds it (tuples become lists)
    stale: list[Path] = []  # artifacts of this problem tuned under another template version
    found: list[tuple[int, int, Path]] = []  # (tier, order, folder) of each artifact of this problem
    near: list[tuple[Path, dict]] = []  # artifacts of this op at another row count or layout: said, not run
    here = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    for directory in _artifact_dirs():
        metas = _artifact_metas(directory)
        if not metas and directory not in _MISSING_DIRS:
            _MISSING_DIRS.add(directory)
            log.warning("%s holds no artifact (no <name>/meta.json); nothing is looked up there", directory)
        for meta_path in metas:
            if kept_artifact(meta_path.parent) or meta_path.parent.name.startswith("."):
                named = meta_path.parent == directory  # the folder given is itself the kept artifact
                if named and kept_artifact(directory) and directory not in _MISSING_DIRS:
                    _MISSING_DIRS.add(directory)
                    log.warning(
                        "%s is the artifact kt kept when a later tune replaced it (%s); kt.nn uses no kept "
                        "artifact: copy it to another folder to run it",
                        directory,
                        directory.with_name(directory.name.removesuffix(".prev")),
                    )
                continue  # the artifact a later tune replaced (kt tune keeps it), or a save's staging folder
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError, RecursionError):  # not UTF-8 (a ValueError) failed every forward
                meta = None
            if not isinstance(meta, dict):
                if meta_path not in _MISSING_DIRS:
                    _MISSING_DIRS.add(meta_path)
                    log.warning("%s is not a kt artifact's meta.json (a JSON object); skipped", meta_path)
                continue
            if meta.get("family") != family.name or meta.get("problem") != wanted:
                if meta.get("family") == family.name and isinstance(meta.get("problem"), dict):
                    have, looked_up = _rows_out(meta["problem"]), _rows_out(wanted)
                    differ = sorted(k for k in {*looked_up, *have} if have.get(k) != looked_up.get(k))
                    if differ and set(differ) <= NEAR:  # another row count or layout of this op
                        near.append((meta_path, {k: (have.get(k), looked_up.get(k)) for k in differ}))
                continue
            if meta.get("family_version") != family.version:  # its config may be illegal, or not best, now
                stale.append(meta_path)
                continue
            found.append((_tier(meta, here), len(found), meta_path))
    # measured on this GPU first, then measured on another, then checked only (a tune without a GPU), each in
    # the order of the folders and names: the first by name was taken, a laptop's unmeasured artifact over a
    # measured one beside it (one op tuned twice under two names)
    ranked = [meta_path for _, _, meta_path in sorted(found)]
    refused: set[Path] = set()
    for meta_path in ranked:
        try:
            selected = Selection(spec, kt.load(meta_path.parent), "artifact", str(meta_path.parent))
        except kt.ArtifactError as exc:  # an edited kernel.py, a damaged config: the others may do
            refused.add(meta_path)
            if meta_path not in _MISSING_DIRS:
                _MISSING_DIRS.add(meta_path)
                log.warning("%s; skipped", str(exc).split("; re-run")[0])
            continue
        others = [str(p.parent) for p in ranked if p != meta_path and p not in refused]  # (refused: not one)
        if others:
            log.info(
                "%s: %d artifacts hold this op; %s runs (also: %s)",
                spec.summary(),
                len(others) + 1,
                meta_path.parent,
                ", ".join(others),
            )
        return selected
    for meta_path, held in near:  # the artifact the user pointed to, passed over without a word before
        if meta_path not in _MISSING_DIRS:
            _MISSING_DIRS.add(meta_path)
            log.warning(
                "%s holds this op with %s, where this layer looks up %s (kt.nn looks up the rows' bucket and "
                "its own layouts: tune the op `kt.nn.selections().write_yaml` writes); skipped",
                meta_path.parent,
                ", ".join(f"{k}={have}" for k, (have, _) in held.items()),
                ", ".join(f"{k}={wants}" for k, (_, wants) in held.items()),
            )
    for meta_path in stale:  # the layer's own artifacts, passed over without a word before
        if meta_path not in _MISSING_DIRS:
            _MISSING_DIRS.add(meta_path)
            log.warning(
                "%s was tuned for this layer under another version of kt's %s kernel template; skipped "
                "(run `kt tune` on its op again to use a tuned kernel)",
                meta_path.parent,
                family.name,
            )
    if (
        device.type == "cuda" and auto and profile is None
    ):  # nothing to rank configs for, nor to check them by
        name = torch.cuda.get_device_name(device)
        kernel = kt.build(spec, config=BASELINE_KEY, device=_label_profile(name))
        return Selection(
            spec,
            kernel,
            NO_PROFILE,
            f"no device profile for {name}, so the cost model has nothing to rank configs for; a tune with "
            "`kt tune --device gpu.json` (kt calibrate) puts this card's rows in the database, which layers run",
        )
    # on a GPU, the best-ranked config that builds for it without spilling registers (legality admits a few
    # that spill, which a tune's compile stage refuses); the interpreter has no registers to spill
    target = profile or kt.resolve_profile(spec.device)
    kernel = kt.build(spec, compile_check=device.type == "cuda", device=target)
    where = f"ranked for {target.name}"
    refused = kernel.meta.get("refused", [])
    if refused and refused[0][0] == kernel.config.key():  # none built clean: the first-ranked runs
        where += f"; none of the {len(refused)} best-ranked configs built clean ({refused[0][1]})"
    elif refused:
        where += (
            f"; {len(refused)} better-ranked config{'s' if len(refused) != 1 else ''} refused when compiled "
            f"({refused[0][0]}: {refused[0][1]})"
        )
    return Selection(spec, kernel, "cost model", where)


# problem fields in which an artifact of a layer's op may differ from what the layer looks up and still be that
# op: its rows (a GEMM's m or batch, a structured family's rows, a sum's its terms') and the operands' layouts
NEAR = {"m", "batch", "rows", "a_layout", "b_layout"}


def _rows_out(problem: dict) -> dict:
    """A problem's fields with a sum's rows, which its terms hold, as its own `rows` (an artifact of a sum at
    another row count differed only in `terms`, and was passed over without a word)."""
    terms = problem.get("terms")
    if not isinstance(terms, list) or not all(isinstance(t, dict) for t in terms):
        return problem
    rows = {t.get("rows") for t in terms}
    if len(rows) != 1:
        return problem
    return {
        **problem,
        "rows": rows.pop(),
        "terms": [{k: v for k, v in t.items() if k != "rows"} for t in terms],
    }


def _gpu_profile(device: torch.device):
    """The profile of the GPU `device` names (kt.api.gpu_profile), or None for a card kt has none of."""
    from kt.api import gpu_profile

    return gpu_profile(torch.cuda.get_device_name(device))


@functools.cache
def _label_profile(gpu_name: str):
    """A profile that only names a card without one in a module kt.nn builds from a database row (`on gpu`): a
    row's config and PyTorch's path need no limits of it."""
    from kt.device import get_profile

    return replace(
        get_profile("h100"), name="gpu", gpu_name=gpu_name, source="kt.nn: a card without a profile"
    )


def _artifact_dirs() -> list[Path]:
    value = os.environ.get("KT_ARTIFACTS", "")
    if value not in _ENV_DIRS:  # relative folders from where the process was when it first read the value, as
        # use_artifacts makes its own absolute: a chdir made later layers look for them elsewhere, and skip them
        _ENV_DIRS[value] = [Path(os.path.abspath(p)) for p in value.split(os.pathsep) if p]
    extra = _ENV_DIRS[value]
    for path in extra:
        if not path.is_dir() and path not in _MISSING_DIRS:
            _MISSING_DIRS.add(path)
            log.warning("$KT_ARTIFACTS names %s, which is not a folder; it is skipped", path)
    for path in _ARTIFACT_DIRS:
        if not path.is_dir() and path not in _MISSING_DIRS:
            _MISSING_DIRS.add(path)
            log.warning("%s (kt.nn.use_artifacts) is no longer a folder; it is skipped", path)
    return [d for d in [*_ARTIFACT_DIRS, *extra] if d.is_dir()]


def _artifact_metas(folder: Path) -> list[Path]:
    """The meta.json of each artifact in `folder` (`kt tune --out`), or of `folder` itself when it is one (the
    path `kt tune` prints)."""
    own = folder / "meta.json"
    return [own] if own.is_file() else sorted(folder.glob("*/meta.json"))


_MISSING_DIRS: set[Path] = set()  # folders and meta.json files already warned about (each once)
_UNREADABLE: set[tuple[Path, str]] = set()  # tuning databases (and why) already warned about
_ENV_DIRS: dict[str, list[Path]] = {}  # $KT_ARTIFACTS's value -> its folders, made absolute when first read
_ENV_DB: dict[str, Path] = {}  # a relative $KT_DB -> its file, made absolute when first read


def _best_row(problem, family, gpu: str) -> dict[str, Any] | None:
    """The fastest passing GPU row of `problem` on `gpu` under this Triton: a generated kernel of the current
    template, or PyTorch's own path timed as a tune's candidate zero."""
    from kt.autotune.database import Database, default_path
    from kt.autotune.versions import software_versions
    from kt.codegen.baseline import baseline_version
    from kt.errors import DatabaseError

    path = default_path()
    # a relative $KT_DB from where the process first read it, as $KT_ARTIFACTS: after a chdir (Hydra's) every
    # layer warned that it was not there and ran untuned
    if not path.is_absolute():
        path = _ENV_DB.setdefault(str(path), Path(os.path.abspath(path)))
    if not path.is_file():
        if os.environ.get("KT_DB") and path not in _MISSING_DIRS:  # a typo would leave every layer untuned
            _MISSING_DIRS.add(path)
            what = "a folder" if path.is_dir() else "not there"
            log.warning("$KT_DB names %s, which is %s; no tuning database is read", path, what)
        return None
    triton = software_versions()["triton"]  # part of a row's identity: another Triton compiles other code
    try:
        with Database(path, readonly=True) as db:
            rows = db.find(
                problem_key=problem.key(), status="ok", runner="cuda", device=gpu, triton_version=triton
            )
    except (DatabaseError, sqlite3.Error) as exc:  # damaged pages fail the query, not the open (a traceback)
        message = str(exc) if isinstance(exc, DatabaseError) else f"{path}: {exc}"
        if (path, message) not in _UNREADABLE:  # once, not once per layer, bucket and backward product
            _UNREADABLE.add((path, message))
            log.warning("cannot read the tuning database: %s", message)
        return None
    current = {family.version, baseline_version()}
    rows = [r for r in rows if r.get("runtime_ms") and r["family_version"] in current]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["runtime_ms"])
    return {**best, "db": str(path)}
