"""op.yaml: the schema of an op description and its validation.

Validation works on plain mappings and reports the first problem as one line naming the dotted field path and
what is allowed, the way scikit-learn names a bad argument: `shape.m: must be an integer from 1 to 16777216, got
-3`. An OpSpec is only ever built by `parse_spec`, so every OpSpec in the program is valid; one made otherwise
(`dataclasses.replace`, `OpSpec(...)`) lacks parse_spec's mark and is parsed again by `kt.api.as_spec`, which
every API call goes through.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kt.axes import check_op_configs, check_op_space
from kt.device import BUILTIN
from kt.dtypes import DTYPES, itemsize
from kt.errors import SpecError, key_text, on_command_line, shown

OPS = ("dense", "monarch", "butterfly", "fft", "blocksparse", "lowrank", "sum", "blocksparse_grad")
SUM_TERMS = ("blocksparse", "lowrank")  # the ops a sum's terms may be
TRANSPOSABLE = ("monarch", "butterfly")  # the ops that take `transposed: true` (dx = M^T dy of a backward)
FFT_INPUTS = ("complex", "real")
FFT_DTYPES = ("float32", "float16")
OBJECTIVES = ("time", "energy", "edp")
LAYOUTS = ("row", "col")
PRECISIONS = ("ieee", "tf32")
BUILTIN_DEVICES = ("auto", *BUILTIN)

MAX_DIM = 1 << 24  # 16M rows or columns
MAX_BATCH = 65535  # the CUDA grid's limit on its third axis
# 128 GiB over all operands, whatever the device: a GPU tune also refuses an op whose operands exceed that GPU's
# memory (CudaRunner.refuse_unfit)
MAX_OPERAND_BYTES = 1 << 37
MAX_BUDGET = 100_000
MAX_NAME = 100
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class DenseShape:
    """C (M, N) = A (M, K) @ B (K, N), optionally a batch of them."""

    m: int
    n: int
    k: int
    batch: int | None = None


@dataclass(frozen=True)
class MonarchShape:
    """x (batch, k*p) -> y (batch, l*s) through w1 (k, q, p) and w2 (l, s, r), with l*r = k*q
    (docs/architecture.md)."""

    batch: int
    w1: tuple[int, int, int]  # (k, q, p)
    w2: tuple[int, int, int]  # (l, s, r)

    @property
    def in_features(self) -> int:
        return self.w1[0] * self.w1[2]

    @property
    def out_features(self) -> int:
        return self.w2[0] * self.w2[1]


@dataclass(frozen=True)
class VectorShape:
    """`batch` rows of `n` features: the butterfly's and the FFT's shape."""

    batch: int
    n: int


@dataclass(frozen=True)
class LinearShape:
    """`batch` rows of `in_features` mapped to `out_features`: the block-sparse op's and a sum's shape."""

    batch: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ChainShape:
    """y = x @ F1 @ ... @ Fk with Fi (dims[i-1], dims[i]): `batch` rows of dims[0] features to dims[-1]."""

    batch: int
    dims: tuple[int, ...]

    @property
    def in_features(self) -> int:
        return self.dims[0]

    @property
    def out_features(self) -> int:
        return self.dims[-1]


Shape = DenseShape | MonarchShape | VectorShape | LinearShape | ChainShape


@dataclass(frozen=True)
class Sparsity:
    """Which (bo, bi) blocks of the block-sparse weight W (out, in) are non-zero.

    The pattern comes from exactly one source: `density` and `seed` (blocks chosen at random), `pattern`
    (diagonal, or banded with `width` blocks each side), `mask` (a .npy file of the block grid) or `prune` (a .pt
    file holding a dense (out, in) tensor whose `density` largest blocks by norm are kept). `layout` is the
    resulting mask as hex text (kt.sparsity), computed when the spec is read; it is what kernels are tuned for.
    """

    block: tuple[int, int]
    layout: str
    density: float | None = None
    seed: int | None = None
    pattern: str | None = None
    width: int | None = None
    mask: str | None = None
    prune: str | None = None

    def grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        return out_features // self.block[0], in_features // self.block[1]

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if value is not None}
        data["block"] = list(self.block)
        return data


@dataclass(frozen=True)
class Layout:
    """How each operand is stored: `row` is row-major, `col` is stored transposed (a column-major view)."""

    a: str = "row"
    b: str = "row"


@dataclass(frozen=True)
class TuneOptions:
    budget: int = 64  # configs to measure (or, without a GPU, to check in the interpreter)
    objective: str = "time"  # time | energy | edp
    seed: int = 0
    power_cap_w: float | None = None  # the best must draw no more than this (measured board power)
    # the user's search space (kt.codegen.restrict checks names and values against the op's family):
    space: tuple[tuple[str, tuple[int, ...]], ...] = ()  # axis -> the values to keep
    configs: tuple[tuple[tuple[str, int], ...], ...] = ()  # exactly these configs, as (field, value) pairs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # (a mapping set in code, dataclasses.replace(tune, space={...}), as written: it was a bare ValueError)
        pairs = self.space.items() if isinstance(self.space, Mapping) else self.space
        data["space"] = {axis: list(values) for axis, values in pairs}
        data["configs"] = [dict(config) for config in self.configs]
        for key in ("space", "configs"):
            if not data[key]:  # written only when set, so older artifacts' specs keep their keys
                del data[key]
        return data


PARSED = "_kt_parsed"  # set on an OpSpec that parse_spec made (not a field: equality is the fields')


@dataclass(frozen=True)
class OpSpec:
    op: str
    name: str
    dtype: str
    shape: Shape
    layout: Layout = Layout()
    precision: str = "ieee"  # float32 only: ieee (exact fp32 products) or tf32 (tensor cores)
    device: str = "auto"  # auto | a built-in profile (kt.device.BUILTIN) | path to a calibrated profile JSON
    tune: TuneOptions = TuneOptions()
    source: str | None = field(default=None, compare=False)  # the file it was read from
    input: str | None = None  # fft only: complex | real
    sparsity: Sparsity | None = None  # blocksparse only
    terms: tuple[OpSpec, ...] | None = None  # sum only: the terms, each a blocksparse or lowrank spec
    transposed: bool = False  # monarch, butterfly: y = x @ M, the forward op's transpose on the same weights

    @property
    def in_features(self) -> int:
        s = self.shape
        if self.transposed:
            return s.out_features if isinstance(s, MonarchShape) else s.n
        return s.k if isinstance(s, DenseShape) else s.n if isinstance(s, VectorShape) else s.in_features

    @property
    def out_features(self) -> int:
        s = self.shape
        if self.transposed:
            return s.in_features if isinstance(s, MonarchShape) else s.n
        return s.n if isinstance(s, (DenseShape, VectorShape)) else s.out_features

    def to_dict(self) -> dict[str, Any]:
        """The spec as op.yaml would hold it (round-trips through `parse_spec`)."""
        data = asdict(self)
        data.pop("source")
        if data["shape"].get("batch", 0) is None:
            del data["shape"]["batch"]
        if self.op != "dense":
            del data["layout"]
        for key in ("input", "sparsity", "terms"):
            if data[key] is None:
                del data[key]
        if not self.transposed:  # written only when set, so forward specs keep their keys
            del data["transposed"]
        data["tune"] = self.tune.to_dict()
        if isinstance(self.shape, MonarchShape):
            data["shape"] = {"batch": self.shape.batch, "w1": list(self.shape.w1), "w2": list(self.shape.w2)}
        elif isinstance(self.shape, ChainShape):
            data["shape"] = {"batch": self.shape.batch, "dims": list(self.shape.dims)}
        elif isinstance(self.shape, LinearShape):
            data["shape"] = {"batch": self.shape.batch, "in": self.in_features, "out": self.out_features}
        if self.sparsity is not None:
            data["sparsity"] = self.sparsity.to_dict()
        if self.terms is not None:
            data["terms"] = [term.term_dict() for term in self.terms]
            del data["shape"]  # a sum's shape is its terms'
        return data

    def term_dict(self) -> dict[str, Any]:
        """This spec as a term of a sum: only what the term itself says."""
        data = self.to_dict()
        return {key: data[key] for key in ("op", "shape", "sparsity") if key in data}

    def summary(self) -> str:
        """One line saying what the op computes."""
        s = self.shape
        if isinstance(s, DenseShape):
            batch = f" x batch {s.batch}" if s.batch else ""
            return f"{self.op} {s.m}x{s.n}x{s.k}{batch} {self.dtype} (a: {self.layout.a}, b: {self.layout.b})"
        if isinstance(s, MonarchShape):
            w1, w2 = "x".join(map(str, s.w1)), "x".join(map(str, s.w2))
            op = "monarch transposed" if self.transposed else "monarch"
            features = f"{self.in_features} -> {self.out_features}"
            return f"{op} {s.batch} rows, {features} (w1 {w1}, w2 {w2}) {self.dtype}"
        if self.op in ("blocksparse", "blocksparse_grad"):
            from kt.sparsity import describe, hex_to_mask

            mask = hex_to_mask(self.sparsity.layout, self.sparsity.grid(s.out_features, s.in_features))
            block = "x".join(map(str, self.sparsity.block))
            return (
                f"{self.op} {s.batch} rows, {s.in_features} -> {s.out_features}, {block} blocks, "
                f"{describe(mask)} {self.dtype}"
            )
        if self.op == "lowrank":
            return f"lowrank {s.batch} rows, {' -> '.join(map(str, s.dims))} {self.dtype}"
        if self.op == "sum":
            parts = " + ".join(
                f"{term.op} ({term.summary().split(', ', 1)[1].rsplit(' ', 1)[0]})" for term in self.terms
            )
            return f"sum {s.batch} rows, {s.in_features} -> {s.out_features}: {parts} {self.dtype}"
        kind = f", {self.input} input" if self.op == "fft" else ""
        op = f"{self.op} transposed" if self.transposed else self.op
        return f"{op} {s.batch} rows x n={s.n} {self.dtype}{kind}"

    def signature(self) -> dict[str, Any]:
        """What the op computes, without its name or how to tune it: equal signatures mean the same math."""
        data = self.to_dict()
        for key in ("name", "device", "tune"):
            data.pop(key)
        return data

    def replace(self, **changes: Any) -> OpSpec:
        """A copy with top-level fields changed, validated like a file would be. A name kt made for the op (none
        was given) is made again for the new one (it kept the old shape's: `dense_16x16x16_float16` for a
        48x32x16 float32 op, in its kernel's repr, its rows and its artifact)."""
        data = self.to_dict()
        if "name" not in changes and self.name == default_name(
            self.op, self.shape, self.dtype, self.transposed
        ):
            data.pop("name")
        return parse_spec({**data, **changes}, source=self.source)


def load_spec(path: str | os.PathLike) -> OpSpec:
    """Read and validate an op.yaml file that describes one op (`load_specs` reads a file of several)."""
    specs = load_specs(path)
    if len(specs) > 1:
        raise SpecError(
            "",
            f"describes {len(specs)} ops (a list of shapes or batches, or several YAML documents): "
            + (
                "this command takes one; give each op a file of its own (`kt tune` takes them all)"
                if on_command_line()
                else "kt.load_spec reads one; kt.load_specs reads them all"
            ),
            source=str(path),
        )
    return specs[0]


class _NameTaken(SpecError):
    """A name two ops of one file share: refused as the second is built, not after the whole file."""


def load_specs(path: str | os.PathLike) -> list[OpSpec]:
    """Read and validate an op.yaml file: one spec per YAML document, per shape of a `shape` list and per value
    of a batch list (`batch: [16, 32, 64]`, a dense op's `m`), in file order. Each gets its own name: the
    given one with the shape's index or the batch value appended (`_0`, `_b64`), else the default name. A name
    taken twice is refused as the second op is built: a file of 20 large block-sparse ops under one default
    name was built whole, a second each, before the second was refused."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise SpecError(
            "", f"expected the path of an op.yaml (a str or os.PathLike), got {type(path).__name__}"
        )
    if "\n" in str(path) and not os.path.lexists(path):  # a file's name may hold one (it was refused as text)
        raise SpecError(
            "",
            "expected the path of an op.yaml, got text of several lines (write YAML text to a file, or pass "
            "kt.parse_spec a mapping)",
        )
    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError("", "file not found" if not path.exists() else "is not a file", source=str(path))
        documents = list(yaml.load_all(path.read_text(encoding="utf-8-sig"), Loader=_StrictLoader))
    except OSError as exc:
        raise SpecError("", f"cannot be read ({exc.strerror})", source=str(path)) from None
    except RecursionError:
        raise SpecError("", "is nested too deeply to be an op description", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "'\\t'" in problem:  # PyYAML's "found character '\t' that cannot start any token"
            problem += " (YAML indents with spaces, not tabs)"
        raise SpecError("", f"not valid YAML{where}: {problem}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError("", f"is not UTF-8 text (byte {exc.start} is not)", source=str(path)) from None
    numbered = [(number, d) for number, d in enumerate(documents) if d is not None]  # a file's own numbers
    documents = [d for _, d in numbered]
    if not documents:
        raise SpecError("", "is empty; expected a mapping with at least `op` and `shape`", source=str(path))
    specs: list[OpSpec] = []
    names: dict[str, int] = {}
    given = [d.get("name") for d in documents if isinstance(d, Mapping) and isinstance(d.get("name"), str)]

    def added(spec: OpSpec) -> None:
        index = len(specs)
        if spec.name in names:
            # a name the file never wrote: the default made from op, shape and dtype, the same for both
            made = not any(spec.name.startswith(name) for name in given)
            raise _NameTaken(
                "name",
                f"ops {names[spec.name] + 1} and {index + 1} of the file are both named {spec.name!r}"
                f"{' (the name kt gives an op that has none)' if made else ''}; each needs its own name (its "
                "artifact's folder)",
                source=str(path),
            )
        names[spec.name] = index
        specs.append(spec)

    for number, document in numbered:
        try:
            parse_specs(document, source=str(path), _added=added)
        except _NameTaken:
            raise
        except SpecError as exc:
            if len(documents) == 1:
                raise
            field = f"document {number + 1}" + (f": {exc.field}" if exc.field else "")
            raise SpecError(field, exc.reason, exc.source) from None
    return specs


def parse_specs(
    data: Any,
    source: str | None = None,
    check_files: bool = True,
    _added: Callable[[OpSpec], None] | None = None,
) -> list[OpSpec]:
    """`parse_spec` for a mapping whose `shape` may be a list of shapes, or whose batch (a dense op's `m`) may
    be a list of values: one spec each (see `load_specs` for their names). `_added(spec)` is called as each is
    built (`load_specs` checks its name there)."""
    added = _added or (lambda spec: None)
    if not isinstance(data, Mapping) or "shape" not in data or data.get("op") == "sum":
        # an op without a shape (a sum) is refused as one: its variants named `shape.batch[0]`, no field of it
        spec = parse_spec(data, source, check_files)
        added(spec)
        return [spec]
    shape = data["shape"]
    if isinstance(shape, list):
        if not shape:
            raise SpecError("shape", "is an empty list; give a shape, or a list of them", source)
        variants = [("shape", f"shape[{i}]", {**data, "shape": one}, f"_{i}") for i, one in enumerate(shape)]
    else:
        axis = "m" if data.get("op") == "dense" else "batch"
        values = shape.get(axis) if isinstance(shape, Mapping) else None
        if not isinstance(values, list):
            spec = parse_spec(data, source, check_files)
            added(spec)
            return [spec]
        if not values:
            raise SpecError(f"shape.{axis}", "is an empty list; give a size, or a list of them", source)
        tag = "m" if axis == "m" else "b"
        variants = [  # a value that is not an integer fails validation: its text (any size) is never built
            (f"shape.{axis}", f"shape.{axis}[{i}]", {**data, "shape": {**shape, axis: v}}, suffix)
            for i, v in enumerate(values)
            for suffix in [f"_{tag}{v}" if isinstance(v, int) and 0 < v <= MAX_DIM else ""]
        ]
    specs = []
    name = data.get("name")
    if name is not None:
        try:
            _check_name(name)  # as written: the suffix kt appends was quoted with it ('g g_m4')
        except SpecError as exc:
            raise SpecError(exc.field, exc.reason, source) from None
    for prefix, indexed, variant, suffix in variants:
        if isinstance(name, str):
            variant = {**variant, "name": f"{name}{suffix}"}
        try:
            spec = parse_spec(variant, source, check_files)
        except SpecError as exc:  # name the list entry: shape[1].n, shape.batch[2]
            if (  # a name that is no text is refused as one op's is (fullmatch of an int: a TypeError)
                exc.field == "name"
                and isinstance(name, str)
                and NAME_PATTERN.fullmatch(name)
                and len(name + suffix) > MAX_NAME
            ):
                raise SpecError(
                    "name",
                    f"{shown(name)} and the {suffix!r} kt appends for {indexed} pass {MAX_NAME} characters; "
                    f"shorten the name to {MAX_NAME - len(suffix)} or fewer",
                    source,
                ) from None
            field = exc.field
            if field == prefix or field.startswith(prefix + "."):
                field = indexed + field[len(prefix) :]
            elif field == "shape" and prefix != "shape":  # the operands of this batch: too large
                field = indexed
            raise SpecError(field, exc.reason, exc.source) from None
        specs.append(spec)
        added(spec)
    return specs


def parse_spec(data: Any, source: str | None = None, check_files: bool = True) -> OpSpec:
    """Validate a mapping (as read from op.yaml) and build the OpSpec.

    `check_files=False` accepts a device profile path that does not exist here (a spec read back from an
    artifact made on another machine); everything else is validated as usual.
    """
    check_files = check_bool(check_files, "check_files")  # "no" was true
    if source is not None and not isinstance(source, str):  # it hid the spec's own error behind a TypeError
        raise SpecError(
            "source", f"must be text (where the spec came from) or None, got {type(source).__name__}"
        )
    try:
        return _parse(data, source, check_files)
    except SpecError as exc:
        if exc.source is None and source is not None:
            raise SpecError(exc.field, exc.reason, source) from None
        raise


COMMON_KEYS = ("op", "name", "dtype", "shape", "precision", "device", "tune")
TOP_KEYS = (*COMMON_KEYS, "layout", "input", "sparsity", "terms", "transposed")  # with some ops' own


def _top_keys(op: str) -> tuple[str, ...]:
    """The top-level keys an op of kind `op` takes."""
    allowed = COMMON_KEYS
    allowed += {
        "dense": ("layout",),
        "fft": ("input",),
        "blocksparse": ("sparsity",),
        "blocksparse_grad": ("sparsity",),
        "sum": ("terms",),
    }.get(op, ())
    if op in TRANSPOSABLE:
        allowed += ("transposed",)
    if op == "sum":
        allowed = tuple(key for key in allowed if key != "shape")
    return allowed


def _check_name(name: Any) -> None:
    """An op's name is 1-100 letters, digits, _ . or -, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        # a name YAML read as a number or a boolean (4096, 2024_01 as 202401, false): quoting keeps its text
        quote = (
            '; a name is text: in YAML, quote it as you wrote it (name: "..."), in Python pass a str'
            if isinstance(name, (bool, int, float))
            else ""
        )
        raise SpecError(
            "name",
            f"must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit (no spaces or "
            f"'/'), got {_kind(name)}{quote}",
        )


def _parse(data: Any, source: str | None, check_files: bool = True) -> OpSpec:
    if not isinstance(data, Mapping):
        raise SpecError("", f"the top level must be a mapping, got {_kind(data)}")
    if "op" not in data:  # a misspelt `op` (Op, ops) is named as an unknown key, with the fix
        _keys(data, "", allowed=TOP_KEYS)
    op = _choice(data.get("op"), "op", OPS, required=True)
    allowed = _top_keys(op)
    for key in data:  # a key of other ops: "unknown key" read as a typo (sparsity: on a dense op)
        if key in TOP_KEYS and key not in allowed:
            owners = [other for other in OPS if key in _top_keys(other)]
            raise SpecError(
                key, f"applies to {', '.join(owners)} ops only (op is {op}); allowed: {', '.join(allowed)}"
            )
    _keys(data, "", allowed=allowed)
    dtype = _choice(data.get("dtype", "float16"), "dtype", FFT_DTYPES if op == "fft" else DTYPES)
    precision = _choice(data.get("precision", "ieee"), "precision", PRECISIONS)
    if precision != "ieee" and dtype != "float32":
        raise SpecError("precision", f"applies to float32 only (dtype is {dtype}); remove it or use ieee")
    sparsity = terms = None
    if op == "sum":
        terms = _terms(data.get("terms"), "terms", dtype, precision, source, check_files)
        shape = LinearShape(terms[0].shape.batch, terms[0].in_features, terms[0].out_features)
    else:
        shape = SHAPE_PARSERS[op](data.get("shape"), "shape")
    if op in ("blocksparse", "blocksparse_grad"):
        sparsity = _sparsity(data.get("sparsity"), "sparsity", shape, source, check_files)
    layout = _layout(data.get("layout", {}), "layout")
    fft_input = _choice(data.get("input", "complex"), "input", FFT_INPUTS) if op == "fft" else None
    transposed = data.get("transposed", False)
    if not isinstance(transposed, bool):
        raise SpecError("transposed", f"must be true or false, got {_kind(transposed)}")
    name = data.get("name")
    if name is None:
        name = default_name(op, shape, dtype, transposed)
    else:
        _check_name(name)
    if name.endswith(".prev"):
        raise SpecError(
            "name",
            f"{name!r} ends in '.prev', the folder where kt keeps the artifact that a new {name[:-5]!r} "
            "replaces; choose another name",
        )
    device = _device(data.get("device", "auto"), source, check_files)
    tune = _tune(data.get("tune", {}), "tune", op)
    _check_memory(shape, dtype, sparsity, terms)
    fields = (op, name, dtype, shape, layout, precision, device, tune, source, fft_input, sparsity, terms)
    spec = OpSpec(*fields, transposed=transposed)
    object.__setattr__(spec, PARSED, True)  # (`kt.api.as_spec` checks an OpSpec made otherwise)
    return spec


def default_name(op: str, shape: Shape, dtype: str, transposed: bool = False) -> str:
    if transposed:  # the forward op's name and _T
        return f"{default_name(op, shape, dtype)}_T"
    if isinstance(shape, ChainShape):
        return f"{op}_{'-'.join(map(str, shape.dims))}_b{shape.batch}_{dtype}"
    if isinstance(shape, LinearShape):
        return f"{op}_{shape.in_features}x{shape.out_features}_b{shape.batch}_{dtype}"
    if isinstance(shape, MonarchShape):
        dims = f"{'x'.join(map(str, shape.w1))}_{'x'.join(map(str, shape.w2))}_b{shape.batch}"
        return f"{op}_{dims}_{dtype}"
    if isinstance(shape, VectorShape):
        return f"{op}_{shape.n}_b{shape.batch}_{dtype}"
    batch = f"_b{shape.batch}" if shape.batch else ""
    return f"{op}_{shape.m}x{shape.n}x{shape.k}{batch}_{dtype}"


def _dense_shape(value: Any, path: str) -> DenseShape:
    if value is None:
        raise SpecError(path, "is required: a mapping {m: M, n: N, k: K} with optional batch")
    _mapping(value, path)
    _keys(value, path, allowed=("m", "n", "k", "batch"), required=("m", "n", "k"))
    dims = {key: _int(value[key], f"{path}.{key}", 1, MAX_DIM) for key in ("m", "n", "k")}
    batch = value.get("batch")
    if batch is not None:
        batch = _int(batch, f"{path}.batch", 1, MAX_BATCH)
    return DenseShape(batch=batch, **dims)


def _monarch_shape(value: Any, path: str) -> MonarchShape:
    """The square shorthand {batch, n, nblocks} or the general form {batch, w1: [k, q, p], w2: [l, s, r]}."""
    if value is None:
        raise SpecError(
            path, "is required: {batch: B, n: N, nblocks: K} or {batch: B, w1: [k, q, p], w2: [l, s, r]}"
        )
    _mapping(value, path)
    if "n" in value or "nblocks" in value:
        _keys(value, path, allowed=("batch", "n", "nblocks"), required=("batch", "n", "nblocks"))
        n = _int(value["n"], f"{path}.n", 1, MAX_DIM)
        nblocks = _int(value["nblocks"], f"{path}.nblocks", 1, n)
        if n % nblocks:
            # a prime n has no divisor from 2 up: 1 and n itself
            divisors = [d for d in range(2, min(n, 4096) + 1) if n % d == 0][:8] or [1, n]
            raise SpecError(
                f"{path}.nblocks", f"must divide n={n}, got {nblocks} (e.g. {', '.join(map(str, divisors))})"
            )
        b = n // nblocks
        w1, w2 = (nblocks, b, b), (nblocks, b, b)
    else:
        _keys(value, path, allowed=("batch", "w1", "w2"), required=("batch", "w1", "w2"))
        w1 = _triple(value["w1"], f"{path}.w1", "[k, q, p]")
        w2 = _triple(value["w2"], f"{path}.w2", "[l, s, r]")
        k, q, _ = w1
        l, _, r = w2  # noqa: E741
        if k * q != l * r:
            raise SpecError(
                f"{path}.w2",
                f"needs l*r = k*q = {k * q} (w1 gives k*q features), got l*r = {l}*{r} = {l * r}",
            )
    batch = _int(value["batch"], f"{path}.batch", 1, MAX_DIM)
    shape = MonarchShape(batch, w1, w2)
    for name, features in (("in", shape.in_features), ("out", shape.out_features), ("k*q", w1[0] * w1[1])):
        if features > MAX_DIM:
            raise SpecError(path, f"{name} = {features} features is over the limit of {MAX_DIM}")
    return shape


def _triple(value: Any, path: str, names: str) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise SpecError(path, f"must be a list of three integers {names}, got {_kind(value)}")
    return tuple(_int(v, f"{path}[{i}]", 1, MAX_DIM) for i, v in enumerate(value))


def _vector_shape(value: Any, path: str, power_of_two: bool, most: int = MAX_DIM) -> VectorShape:
    if value is None:
        raise SpecError(path, "is required: a mapping {batch: B, n: N}")
    _mapping(value, path)
    _keys(value, path, allowed=("batch", "n"), required=("batch", "n"))
    batch = _int(value["batch"], f"{path}.batch", 1, MAX_DIM)
    n = _int(value["n"], f"{path}.n", 2, most)
    if power_of_two and n & (n - 1):
        below = 1 << (n.bit_length() - 1)
        raise SpecError(
            f"{path}.n",
            f"must be a power of two (2, 4, ..., {MAX_DIM}), got {n} (try {below} or {2 * below})",
        )
    return VectorShape(batch, n)


FFT_MAX_BLOCK = (
    1024  # the largest DFT block of a four-step split (kt.ir.problems.FFTProblem.MAX_BLOCK is this)
)
FFT_MAX_DIRECT = 4096  # an n without such a split runs as one n x n DFT: 128 MiB of complex64 planes at most


def _fft_shape(value: Any, path: str) -> VectorShape:
    """An FFT's shape: n = n1 * n2 with both at most FFT_MAX_BLOCK (two DFT stages), or up to FFT_MAX_DIRECT
    (one DFT). Any other n fell back to one n x n DFT whose matrix no GPU holds (32 TiB at n = 2**21)."""
    shape = _vector_shape(value, path, power_of_two=False, most=FFT_MAX_BLOCK**2)
    n = shape.n
    if n > FFT_MAX_DIRECT and not any(
        n % n1 == 0 and n // n1 <= FFT_MAX_BLOCK for n1 in range(-(-n // FFT_MAX_BLOCK), FFT_MAX_BLOCK + 1)
    ):
        raise SpecError(
            f"{path}.n",
            f"{n} is not a product n1 * n2 of two sizes up to {FFT_MAX_BLOCK} (kt's FFT is two DFT stages, or one "
            f"n x n DFT up to n = {FFT_MAX_DIRECT}); allowed: such a product (at most {FFT_MAX_BLOCK**2}), e.g. "
            f"{min(FFT_MAX_BLOCK**2, 1 << (n - 1).bit_length())}, or n up to {FFT_MAX_DIRECT}",
        )
    return shape


def _linear_shape(value: Any, path: str) -> LinearShape:
    if value is None:
        raise SpecError(path, "is required: a mapping {batch: B, in: IN, out: OUT}")
    _mapping(value, path)
    _keys(value, path, allowed=("batch", "in", "out"), required=("batch", "in", "out"))
    return LinearShape(
        _int(value["batch"], f"{path}.batch", 1, MAX_DIM),
        _int(value["in"], f"{path}.in", 1, MAX_DIM),
        _int(value["out"], f"{path}.out", 1, MAX_DIM),
    )


MAX_CHAIN = 8  # factors in a low-rank chain


def _chain_shape(value: Any, path: str) -> ChainShape:
    if value is None:
        raise SpecError(
            path, "is required: a mapping {batch: B, dims: [d0, d1, ..., dk]} (factors (d0, d1), ...)"
        )
    _mapping(value, path)
    _keys(value, path, allowed=("batch", "dims"), required=("batch", "dims"))
    dims = value["dims"]
    if not isinstance(dims, (list, tuple)) or not 3 <= len(dims) <= MAX_CHAIN + 1:
        raise SpecError(
            f"{path}.dims",
            f"must be a list of 3 to {MAX_CHAIN + 1} integers [d0, d1, ..., dk] (2 to {MAX_CHAIN} factors), "
            f"got {_kind(dims)}",
        )
    dims = tuple(_int(d, f"{path}.dims[{i}]", 1, MAX_DIM) for i, d in enumerate(dims))
    return ChainShape(_int(value["batch"], f"{path}.batch", 1, MAX_DIM), dims)


SOURCES = ("density", "pattern", "mask", "prune")  # where a block pattern comes from
# blocks in a pattern's grid: its mask is a boolean per block, and its layout (hex, a bit per block) travels in
# every problem key, database row and artifact (2**24 blocks: a 16 MiB mask, 4 MiB of hex)
MAX_BLOCK_GRID = 2**24


def _sparsity(
    value: Any, path: str, shape: LinearShape, source: str | None, check_files: bool = True
) -> Sparsity:
    """The block pattern of a blocksparse op, validated against its shape, with its mask computed."""
    from kt import sparsity as patterns

    if value is None:
        raise SpecError(
            path,
            "is required: {block: [bo, bi]} with one of density (and seed), pattern, mask, prune or layout",
        )
    _mapping(value, path)
    _keys(value, path, allowed=("block", "density", "seed", "pattern", "width", "mask", "prune", "layout"))
    if "block" not in value:
        raise SpecError(
            f"{path}.block", "is required: [bo, bi], the rows and columns of one block of W (out, in)"
        )
    block = value["block"]
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        raise SpecError(f"{path}.block", f"must be a list of two integers [bo, bi], got {_kind(block)}")
    block = tuple(_int(b, f"{path}.block[{i}]", 1, MAX_DIM) for i, b in enumerate(block))
    for index, (size, dim, name) in enumerate(
        ((block[0], shape.out_features, "out"), (block[1], shape.in_features, "in"))
    ):
        if dim % size:
            divisors = [d for d in (8, 16, 32, 64, 128, 256) if dim % d == 0]
            hint = f" (e.g. {', '.join(map(str, divisors))})" if divisors else ""
            raise SpecError(f"{path}.block[{index}]", f"must divide {name}={dim}, got {size}{hint}")
    grid = (shape.out_features // block[0], shape.in_features // block[1])
    if (
        grid[0] * grid[1] > MAX_BLOCK_GRID
    ):  # before the mask is made (1x1 blocks of a 2**24-square W: 256 TiB)
        raise SpecError(
            f"{path}.block",
            f"{list(block)} cuts W ({shape.out_features}, {shape.in_features}) into {grid[0]} x {grid[1]} = "
            f"{grid[0] * grid[1]:,} blocks; kt allows at most {MAX_BLOCK_GRID:,} (2**24): give larger blocks",
        )
    given = [key for key in ("pattern", "mask", "prune") if key in value]
    if len(given) > 1:
        raise SpecError(f"{path}.{given[1]}", f"give one pattern source, not both {given[0]} and {given[1]}")
    if not given and "density" not in value and "layout" not in value:
        raise SpecError(path, "needs a pattern: one of density (and seed), pattern, mask, prune or layout")
    kind = given[0] if given else "density" if "density" in value else "layout"
    for key, given_by, applies in (
        ("seed", "density", "random (density) patterns"),
        ("width", "pattern", "the banded pattern"),
    ):
        if key in value and kind != given_by:
            raise SpecError(f"{path}.{key}", f"applies to {applies} only (this one is given by {kind})")
    if "density" in value and kind not in ("density", "prune"):
        raise SpecError(
            f"{path}.density",
            f"applies to random (density) and pruned (prune) patterns only (this one is given by {kind})",
        )
    density = seed = pattern = width = mask_file = prune_file = None
    if kind in ("density", "prune"):
        if "density" not in value:
            raise SpecError(
                f"{path}.density", "is required with prune: the fraction of blocks to keep, in (0, 1]"
            )
        density = value["density"]
        if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
            raise SpecError(f"{path}.density", f"must be a number in (0, 1], got {_kind(density)}")
        density = float(density)
    mask = None
    layout_only = False
    if kind == "density":
        seed = _int(value.get("seed", 0), f"{path}.seed", 0, 2**32 - 1)
        mask = patterns.random_mask(grid, density, seed)
    elif kind == "layout":  # the mask itself, as kt writes it (kt.sparsity.mask_to_hex)
        layout_only = True
    elif kind == "pattern":
        pattern = _choice(value["pattern"], f"{path}.pattern", patterns.PATTERNS)
        if pattern == "banded":
            width = _int(value.get("width", 1), f"{path}.width", 0, max(grid))
        elif "width" in value:
            raise SpecError(f"{path}.width", "applies to the banded pattern only")
        mask = patterns.banded_mask(grid, width or 0)
    else:
        file_path = _data_file(
            value[kind], f"{path}.{kind}", (".npy",) if kind == "mask" else (".pt",), source
        )
        if kind == "mask":
            mask_file = file_path
        else:
            prune_file = file_path
        if not check_files and "layout" in value:
            # a spec read back from an artifact: its layout is the pattern its kernel was built for, whether the
            # file is gone or was changed since (an edited mask.npy called the intact meta.json "damaged")
            layout_only = True
        elif (found := _there(file_path, f"{path}.{kind}")) == "file":
            if kind == "mask":
                mask = _read_mask(file_path, f"{path}.mask", grid)
            else:
                weight = _read_weight(file_path, f"{path}.prune", (shape.out_features, shape.in_features))
                mask = patterns.prune_mask(weight, block, density)
        elif found == "folder":
            what = "mask (.npy)" if kind == "mask" else "weight (.pt)"
            raise SpecError(f"{path}.{kind}", f"{file_path!r} is a folder; give the {what} file in it")
        else:
            raise SpecError(f"{path}.{kind}", f"file {file_path!r} not found")
    if "layout" in value:
        try:
            stored = patterns.hex_to_mask(value["layout"], grid) if isinstance(value["layout"], str) else None
        except ValueError as exc:
            raise SpecError(f"{path}.layout", f"{exc} (the hex mask kt writes)") from None
        if stored is None:
            raise SpecError(
                f"{path}.layout", f"must be hex text (the mask kt writes), got {_kind(value['layout'])}"
            )
        if layout_only:
            mask = stored
        elif not (stored == mask).all():
            raise SpecError(f"{path}.layout", f"does not match the pattern that {kind} gives; remove it")
    if not mask.any():
        raise SpecError(path, f"the pattern has no non-zero block ({kind}); keep at least one")
    return Sparsity(block, patterns.mask_to_hex(mask), density, seed, pattern, width, mask_file, prune_file)


def _data_file(value: Any, path: str, suffixes: tuple[str, ...], source: str | None) -> str:
    if not isinstance(value, str) or not value.endswith(suffixes):
        raise SpecError(path, f"must be the path of a {' or '.join(suffixes)} file, got {_kind(value)}")
    file_path = Path(value)
    if not file_path.is_absolute() and source is not None:
        file_path = Path(source).parent / file_path  # relative to the op.yaml, like a device profile
    return str(file_path.absolute())


def _read_mask(file_path: str, path: str, grid: tuple[int, int]):
    import numpy as np

    try:
        with open(file_path, "rb") as file:
            header = file.read(6)
    except OSError as exc:
        raise SpecError(path, f"{file_path!r} is not a readable .npy array ({_first_line(exc)})") from None
    # np.load takes a file without .npy's header for a pickle ("contains pickled (object) data"), and an .npz
    # archive for a dict of arrays
    if header != b"\x93NUMPY":
        raise SpecError(path, f"{file_path!r} is not a .npy file (np.save(path, mask) writes one)")
    try:
        mask = np.load(file_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SpecError(path, f"{file_path!r} is not a readable .npy array ({_first_line(exc)})") from None
    if mask.shape != grid:
        raise SpecError(
            path, f"{file_path!r} holds a {mask.shape} array; the block grid (out/bo, in/bi) is {grid}"
        )
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number):
            raise SpecError(path, f"{file_path!r} must hold booleans or 0/1 values, got {mask.dtype} values")
        other = ~np.isin(mask, (0, 1))
        if other.any():  # the value, not the dtype, is what is wrong (a float64 0/1 mask is taken)
            where = tuple(int(i) for i in np.argwhere(other)[0])
            count = int(other.sum())
            raise SpecError(
                path,
                f"{file_path!r} must hold booleans or 0/1 values, got {mask[where].item()!r} at {where} "
                f"({count} such value{'s' if count != 1 else ''})",
            )
    return mask.astype(bool)


def _read_weight(file_path: str, path: str, shape: tuple[int, int]):
    import torch

    try:
        with (
            warnings.catch_warnings()
        ):  # "Sparse BSR tensor support is in beta" for a sparse tensor, refused below
            warnings.simplefilter("ignore", UserWarning)
            weight = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a file that is not a tensor
        if "Weights only load failed" in str(exc):  # a pickle of objects weights_only=True will not run
            reason = "holds objects other than tensors; save the weight alone with torch.save(W, path)"
        else:
            reason = "is not a file written by torch.save"
        raise SpecError(path, f"{file_path!r} {reason}") from None
    if not isinstance(weight, torch.Tensor):
        raise SpecError(path, f"{file_path!r} must hold one tensor (out, in), got {type(weight).__name__}")
    floating = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # float8's isfinite raised
    if weight.is_meta:  # Tensor.item() cannot be called on meta tensors
        raise SpecError(
            path, f"{file_path!r} holds a meta tensor, which has no values; save the weight itself"
        )
    if weight.layout != torch.strided:  # refused naming only a dtype and shape that were right
        layout = str(weight.layout).removeprefix("torch.")
        raise SpecError(
            path, f"{file_path!r} holds a {layout} tensor; expected a dense one: save W.to_dense()"
        )
    if tuple(weight.shape) != shape or weight.dtype not in floating:
        raise SpecError(
            path,
            f"{file_path!r} holds a {weight.dtype} tensor of shape {tuple(weight.shape)}; "
            f"expected a dense tensor of shape (out, in) = {shape}, of float16, bfloat16, float32 or float64",
        )
    if not torch.isfinite(weight).all():
        raise SpecError(path, f"{file_path!r} holds NaN or infinite values")
    return weight


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


MAX_TERMS = 8


def _terms(
    value: Any, path: str, dtype: str, precision: Any, source: str | None, check_files: bool
) -> tuple[OpSpec, ...]:
    """A sum's terms: blocksparse or lowrank specs with the same batch, in and out, in the sum's dtype."""
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= MAX_TERMS:
        got = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else _kind(value)
        raise SpecError(
            path,
            f"must be a list of 2 to {MAX_TERMS} terms, each {{op: {' | '.join(SUM_TERMS)}, shape: ...}}, "
            f"got {got}",
        )
    terms = []
    for index, term in enumerate(value):
        where = f"{path}[{index}]"
        _mapping(term, where)
        if "op" not in term:
            _keys(term, where, allowed=("op", "shape", "sparsity"))
        op = _choice(term.get("op"), f"{where}.op", SUM_TERMS, required=True)
        _keys(term, where, allowed=("op", "shape", "sparsity") if op == "blocksparse" else ("op", "shape"))
        try:
            spec = _parse({**term, "dtype": dtype, "precision": precision}, source, check_files)
        except SpecError as exc:
            raise SpecError(f"{where}.{exc.field}" if exc.field else where, exc.reason) from None
        if terms:
            first = terms[0]
            for name, mine, theirs in (
                ("batch", spec.shape.batch, first.shape.batch),
                ("in", spec.in_features, first.in_features),
                ("out", spec.out_features, first.out_features),
            ):
                if mine != theirs:
                    raise SpecError(
                        f"{where}.shape",
                        f"{name} is {mine} but terms[0] has {theirs}; every term needs the same",
                    )
        terms.append(spec)
    return tuple(terms)


SHAPE_PARSERS = {
    "dense": _dense_shape,
    "monarch": _monarch_shape,
    "butterfly": lambda value, path: _vector_shape(value, path, power_of_two=True),
    "fft": lambda value, path: _fft_shape(value, path),
    "blocksparse": _linear_shape,
    "blocksparse_grad": _linear_shape,
    "lowrank": _chain_shape,
}


def _layout(value: Any, path: str) -> Layout:
    _mapping(value, path)
    _keys(value, path, allowed=("a", "b"))
    return Layout(**{key: _choice(value[key], f"{path}.{key}", LAYOUTS) for key in value})


MAX_TUNE_CONFIGS = 10_000


def _tune(value: Any, path: str, op: str) -> TuneOptions:
    _mapping(value, path)
    _keys(value, path, allowed=("budget", "objective", "seed", "power_cap_w", "space", "configs"))
    options = {}
    if value.get("space") is not None and value.get("configs") is not None:
        raise SpecError(path, "give space (axes to restrict) or configs (exactly these), not both")
    # each axis and config checked against the op's family as it is read (names, required fields, schedule
    # values: no torch or model needed): a YAML alias of one bad config repeated 10,000 times was converted
    # whole first, seconds and hundreds of MB before its first name was refused
    if value.get("space") is not None:
        options["space"] = _tune_space(value["space"], f"{path}.space", op)
    if value.get("configs") is not None:
        options["configs"] = _tune_configs(value["configs"], f"{path}.configs", op)
    if "budget" in value:
        options["budget"] = _int(value["budget"], f"{path}.budget", 1, MAX_BUDGET)
    if "objective" in value:
        options["objective"] = _choice(value["objective"], f"{path}.objective", OBJECTIVES)
    if "seed" in value:
        options["seed"] = check_seed(value["seed"], f"{path}.seed")
    if value.get("power_cap_w") is not None:
        options["power_cap_w"] = power_cap(value["power_cap_w"], f"{path}.power_cap_w")
    return TuneOptions(**options)


def _tune_space(value: Any, path: str, op: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """axis -> a non-empty list of integers (or one integer); the names and values are then the op's family's to
    check (kt.axes, then kt.codegen.restrict for values that depend on the problem)."""
    _mapping(value, path)
    if not value:
        raise SpecError(path, "must name at least one axis, e.g. {block_m: [64, 128]}")
    axes = []
    for axis, values in value.items():
        where = f"{path}.{key_text(axis)}"
        if not isinstance(axis, str) or not axis:
            got = "an empty name" if axis == "" else _kind(axis)
            raise SpecError(path, f"axis names must be non-empty strings, got {got}")
        # one integer, numpy's too (as `_int` takes it in a list and in a shape)
        values = [values] if isinstance(values, numbers.Integral) and not isinstance(values, bool) else values
        if not isinstance(values, list) or not values:
            raise SpecError(where, f"must be a non-empty list of integers, got {_kind(values)}")
        check_op_space(op, ((axis, ()),))  # the axis's name first, then the values against its own (kt.axes)
        kept = tuple(dict.fromkeys(_int(v, f"{where}[{i}]", None, None) for i, v in enumerate(values)))
        check_op_space(op, ((axis, kept),))
        axes.append((axis, kept))
    return tuple(axes)


def _tune_configs(value: Any, path: str, op: str) -> tuple[tuple[tuple[str, int], ...], ...]:
    """A non-empty list of configs, each a mapping of field -> integer; the fields are then the op's family's to
    check (kt.axes, then kt.codegen.restrict for the problem's structure values and legality)."""
    if not isinstance(value, list) or not value:
        raise SpecError(
            path, f"must be a non-empty list of configs (mappings of field: integer), got {_kind(value)}"
        )
    if len(value) > MAX_TUNE_CONFIGS:
        raise SpecError(path, f"at most {MAX_TUNE_CONFIGS} configs, got {len(value)}")
    configs = []
    for i, config in enumerate(value):
        where = f"{path}[{i}]"
        _mapping(config, where)
        if not config:
            raise SpecError(
                where, "must name the config's fields, e.g. {block_m: 128, block_n: 128, block_k: 64}"
            )
        # any integer: the field's name is checked first, then the value against its own (kt.axes)
        configs.append(
            tuple((str(key), _int(v, f"{where}.{key_text(key)}", None, None)) for key, v in config.items())
        )
        check_op_configs(op, configs[-1:], first=i)
    return tuple(configs)


def check_int(value: Any, path: str, low: int, high: int) -> int:
    """An integer option from `low` to `high` (numpy's integers too, never a bool), as op.yaml's are checked."""
    return _int(value, path, low, high)


def check_seed(value: Any, path: str = "seed") -> int:
    """A random seed, as op.yaml's `tune.seed` takes it: an integer from 0 to 2**32 - 1."""
    return _int(value, path, 0, 2**32 - 1)


def check_bool(value: Any, path: str) -> bool:
    """A yes/no option: True or False (numpy's too), never a value taken by its truthiness ("no" is true)."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise SpecError(path, f"must be True or False, got {_kind(value)}")
    return bool(value)


def check_seconds(value: Any, path: str, high: float = 86400.0) -> float:
    """A number of seconds in (0, high]: not nan (a nan timeout made the worker pool busy-wait), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= high:
        raise SpecError(path, f"must be a number of seconds in (0, {high:g}], got {_kind(value)}")
    return float(value)


def power_cap(value: Any, path: str = "tune.power_cap_w") -> float:
    """A power cap in watts: a number from 1 to 2000."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 1 <= value <= 2000:
        raise SpecError(path, f"must be a number of watts from 1 to 2000, got {_kind(value)}")
    return float(value)


def _device(value: Any, source: str | None, check_files: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(
            "device",
            f"must be one of {', '.join(BUILTIN_DEVICES)} or a profile .json path, got {_kind(value)}",
        )
    if value.lower() in BUILTIN_DEVICES:
        return value.lower()
    path = Path(value)
    if not path.is_absolute() and source is not None:
        path = Path(source).parent / path  # relative to the op.yaml, as a reader of the file expects
    path = path.absolute()  # so the spec means the same file from any directory (artifacts store it)
    # A profile file not named .json is taken as `--device` takes it (an artifact's spec stores its absolute path)
    named = _is_file(path) if check_files else Path(value).is_absolute()
    if not value.endswith(".json") and not named:
        raise SpecError(
            "device",
            f"unknown device {shown(value)}; allowed: {', '.join(BUILTIN_DEVICES)} or a profile .json",
        )
    # (an artifact's spec names a file of the machine that tuned it: not looked at)
    found = _there(path, "device", "profile file", value) if check_files else "file"
    if found == "folder":
        raise SpecError(
            "device", f"profile file {str(path)!r} is a folder; give the profile .json file in it"
        )
    if found is None:
        raise SpecError(
            "device", f"profile file {str(path)!r} not found (make one with `kt calibrate --out`)"
        )
    return str(path)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name past the file system's limit: refused as an unknown device
        return False


def _check_memory(
    shape: Shape, dtype: str, sparsity: Sparsity | None = None, terms: tuple[OpSpec, ...] | None = None
) -> None:
    if terms is not None:  # x, y and an fp32 accumulator, plus each term's weights and intermediates
        elements = 3 * shape.batch * (shape.in_features + shape.out_features)
        elements += sum(_elements(term.shape, term.sparsity) for term in terms)
    else:
        elements = _elements(shape, sparsity)
    total = elements * itemsize(dtype)
    if total > MAX_OPERAND_BYTES:
        raise SpecError(
            "shape" if terms is None else "terms",  # a sum has no shape of its own to write
            f"the operands need {total / 2**30:.1f} GiB; kt allows at most {MAX_OPERAND_BYTES / 2**30:.0f} GiB",
        )


def _elements(shape: Shape, sparsity: Sparsity | None) -> int:
    if isinstance(shape, ChainShape):
        dims = shape.dims
        weights = sum(a * b for a, b in zip(dims, dims[1:]))
        return shape.batch * (dims[0] + dims[-1] + 2 * max(dims[1:-1])) + weights
    if isinstance(shape, LinearShape):
        nnz = bin(int(sparsity.layout, 16)).count("1") if sparsity.layout else 0
        return (
            shape.batch * (shape.in_features + shape.out_features)
            + nnz * sparsity.block[0] * sparsity.block[1]
        )
    if isinstance(shape, DenseShape):
        elements = (shape.batch or 1) * (shape.m * shape.k + shape.k * shape.n + shape.m * shape.n)
    elif isinstance(shape, MonarchShape):
        (k, q, p), (l, s, r) = shape.w1, shape.w2  # noqa: E741
        elements = shape.batch * (k * p + k * q + l * s) + k * q * p + l * s * r
    else:  # input, output and one intermediate, real and imaginary parts
        elements = 6 * shape.batch * shape.n
    return elements


# -- small validators, each raising one SpecError that names the field -------------------------------------------


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{shown(value)} ({type(value).__name__})"


def _mapping(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {_kind(value)}")


def _keys(value: Mapping, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    for key in value:
        if key not in allowed:
            hint = []
            if isinstance(
                key, str
            ):  # the same key in other case or with spaces (Op, "op "), else a close one
                hint = [a for a in allowed if a == key.strip().lower()] or difflib.get_close_matches(
                    key, allowed, n=1
                )
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            key = key_text(key)
            field_path = f"{path}.{key}" if path else key
            raise SpecError(field_path, f"unknown key{suggestion}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise SpecError(f"{path}.{key}" if path else key, "is required")


def _int(value: Any, path: str, low: int | None, high: int | None) -> int:
    """An integer from `low` to `high`, or any integer where both are None (a value that the field's own
    check then places: a tune.space axis's or a config field's allowed values)."""
    # numbers.Integral: numpy's integers too (a shape computed with numpy); never a bool
    ranged = "" if low is None else f" from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if (
            real
            and math.isfinite(value)
            and float(value).is_integer()
            and (low is None or low <= value <= high)
        ):
            if low is None and int(value).bit_length() > 64:  # the hint's value was then refused too
                raise SpecError(path, f"{shown(value)} is larger than any value it takes")
            raise SpecError(path, f"must be an integer (write {int(value)}, not {value!r})")
        raise SpecError(path, f"must be an integer{ranged}, got {_kind(value)}")
    value = int(value)
    if low is None and value.bit_length() > 64:  # its text (as part of a config's key) is past Python's limit
        raise SpecError(path, f"{shown(value)} is larger than any value it takes")
    if low is not None and not low <= value <= high:
        raise SpecError(path, f"must be an integer from {low} to {high}, got {shown(value)}")
    return value


def _there(path: str | Path, field: str, what: str = "file", given: str | None = None) -> str | None:
    """What a file the spec names is: "file", "folder" or None (nothing there). A name past the file system's
    limit is refused naming `field`, quoting `given` (what the user wrote) or the path: pathlib raised "File
    name too long" with the whole path and no field."""
    try:
        return "file" if Path(path).is_file() else "folder" if Path(path).is_dir() else None
    except OSError as exc:
        raise SpecError(
            field, f"{shown(path if given is None else given)} is no {what} ({exc.strerror})"
        ) from None


def _choice(value: Any, path: str, allowed: tuple[str, ...], required: bool = False) -> str:
    if value is None and required:
        raise SpecError(path, f"is required; allowed: {', '.join(allowed)}")
    if not isinstance(value, str) or value not in allowed:
        hint = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(path, f"{_kind(value)} is not supported{suggestion}; allowed: {', '.join(allowed)}")
    return value


# a digit after 0o and 0x (0x_ read as an integer, then int() failed with a traceback): without one it is text
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o_*[0-7][0-7_]*|0x_*[0-9a-fA-F][0-9a-fA-F_]*)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
MAX_DIGITS = 40  # an integer written with more (2**128 has 39 decimal digits) is refused as it is read
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")  # YAML 1.2's: yes, no, on and off are text
_INT_TAG, _FLOAT_TAG, _BOOL_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
_TIME_TAG = "tag:yaml.org,2002:timestamp"


def _yaml_12_numbers(cls) -> None:
    """Give a loader or dumper class YAML 1.2's numbers and booleans in place of PyYAML's YAML 1.1 ones: 5e-1 and
    1e3 are numbers (1.1 reads them as text), 1:00 is text (1.1: 60 in base 60), 0o17 is octal. A decimal with a
    leading zero (0100: octal 64 in 1.1, 100 in 1.2) is refused as ambiguous. Underscores (1_024) stay. Only
    true and false are booleans: yes, no, on and off are text (`transposed: yes` was read as true, and
    `name: no` refused as a boolean). Dates are text too (YAML 1.2 has no timestamps: `name: 2024-01-01` was
    refused as a date)."""
    cls.yaml_implicit_resolvers = {
        first: [
            (tag, regexp)
            for tag, regexp in resolvers
            if tag not in (_INT_TAG, _FLOAT_TAG, _BOOL_TAG, _TIME_TAG)
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    cls.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
    cls.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))  # before floats: _FLOAT matches 64 too
    cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+.0123456789"))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (plain YAML keeps the last one silently) or a key that is a
    list or mapping, and reads numbers as YAML 1.2 does (`_yaml_12_numbers`). Merge keys (`<<: *base`) work;
    a key given beside them overrides the merged one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, got {type(key).__name__}", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # SafeLoader's: expands the merge keys first

    def construct_object(self, node, deep=False):
        """A value an explicit tag cannot make (`!!float ""`, `!!timestamp x`, `!!bool maybe`) is a YAML error
        at its place: PyYAML's constructors raise ValueError, IndexError, AttributeError or KeyError there, which
        came out as tracebacks."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError):
            tag = node.tag.rsplit(":", 1)[-1]
            what = shown(node.value) if isinstance(node, yaml.ScalarNode) else f"this {node.id}"
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} cannot be read as !!{tag}", node.start_mark
            ) from None

    def construct_yaml_int(self, node):
        scalar = self.construct_scalar(node)
        if not _INT.match(scalar):  # an explicit !!int of any text: `!!int "0b101"`, `!!int "0x_"`
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown(scalar)} is not an integer (!!int)", node.start_mark
            )
        text = scalar.replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > MAX_DIGITS:  # past Python's 4,300 digits, int() and repr() raise ValueError
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number of {len(digits):,} digits is larger than any field takes",
                node.start_mark,
            )
        if digits.startswith(("0x", "0o")):
            return int(text, 0)
        if len(digits) > 1 and digits.startswith("0"):
            octal = set(digits) <= set("01234567")  # 09: YAML 1.1 reads it as text
            also = f", or 0o{digits.lstrip('0') or '0'} for octal" if octal else ""
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{text} has a leading zero, which YAML 1.1 reads as {'octal' if octal else 'text'} and YAML 1.2 "
                "as decimal; write "
                f'{int(text, 10)}{also}, or "{text}" (quoted) for text such as a name',
                node.start_mark,
            )
        return int(text, 10)


_yaml_12_numbers(_StrictLoader)
_StrictLoader.add_constructor(_INT_TAG, _StrictLoader.construct_yaml_int)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string a reader of either YAML would take for something else: a number or a
    boolean to `_StrictLoader` (YAML 1.2: a name such as 1e3) or to PyYAML's own YAML 1.1 reader, which an older
    kt and other tools use (yes, on, 0x_ and 1:00 were written bare once the dumper resolved as 1.2 alone)."""


for _tag, _regexp, _first in (
    (_BOOL_TAG, _BOOL, "tTfF"),
    (_INT_TAG, _INT, "-+0123456789"),
    (_FLOAT_TAG, _FLOAT, "-+.0123456789"),
):
    _Dumper.add_implicit_resolver(_tag, _regexp, list(_first))  # beside SafeDumper's YAML 1.1 resolvers


def dump_yaml(documents: list[Any]) -> str:
    """YAML documents that `load_specs` reads back as they were (see `_Dumper`)."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)
