"""op.yaml: the schema of an op description and its validation.

Validation works on plain mappings and reports the first problem as one line naming the dotted field path and
what is allowed, the way scikit-learn names a bad argument: `shape.m: must be an integer from 1 to 16777216, got
-3`. An OpSpec is only ever built by `parse_spec`, so every OpSpec in the program is valid.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kt.dtypes import DTYPES, itemsize
from kt.errors import SpecError

OPS = ("dense", "monarch", "butterfly", "fft")
FFT_INPUTS = ("complex", "real")
FFT_DTYPES = ("float32", "float16")
OBJECTIVES = ("time", "energy", "edp")
LAYOUTS = ("row", "col")
PRECISIONS = ("ieee", "tf32")
BUILTIN_DEVICES = ("auto", "h100", "h200")

MAX_DIM = 1 << 24  # 16M rows or columns
MAX_BATCH = 65535  # the CUDA grid's limit on its third axis
MAX_OPERAND_BYTES = 1 << 37  # 128 GiB over all operands: more than any supported GPU holds
MAX_BUDGET = 100_000
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
    """x (batch, k*p) -> y (batch, l*s) through w1 (k, q, p) and w2 (l, s, r), with l*r = k*q (ARCHITECTURE.md)."""

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


Shape = DenseShape | MonarchShape | VectorShape


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


@dataclass(frozen=True)
class OpSpec:
    op: str
    name: str
    dtype: str
    shape: Shape
    layout: Layout = Layout()
    precision: str = "ieee"  # float32 only: ieee (exact fp32 products) or tf32 (tensor cores)
    device: str = "auto"  # auto | h100 | h200 | path to a calibrated profile JSON
    tune: TuneOptions = TuneOptions()
    source: str | None = field(default=None, compare=False)  # the file it was read from
    input: str | None = None  # fft only: complex | real

    @property
    def in_features(self) -> int:
        s = self.shape
        return s.k if isinstance(s, DenseShape) else s.in_features if isinstance(s, MonarchShape) else s.n

    @property
    def out_features(self) -> int:
        s = self.shape
        return s.n if isinstance(s, DenseShape) else s.out_features if isinstance(s, MonarchShape) else s.n

    def to_dict(self) -> dict[str, Any]:
        """The spec as op.yaml would hold it (round-trips through `parse_spec`)."""
        data = asdict(self)
        data.pop("source")
        if data["shape"].get("batch", 0) is None:
            del data["shape"]["batch"]
        if self.op != "dense":
            del data["layout"]
        if data["input"] is None:
            del data["input"]
        if isinstance(self.shape, MonarchShape):
            data["shape"] = {"batch": self.shape.batch, "w1": list(self.shape.w1), "w2": list(self.shape.w2)}
        return data

    def summary(self) -> str:
        """One line saying what the op computes."""
        s = self.shape
        if isinstance(s, DenseShape):
            batch = f" x batch {s.batch}" if s.batch else ""
            return f"{self.op} {s.m}x{s.n}x{s.k}{batch} {self.dtype} (a: {self.layout.a}, b: {self.layout.b})"
        if isinstance(s, MonarchShape):
            w1, w2 = "x".join(map(str, s.w1)), "x".join(map(str, s.w2))
            return (
                f"monarch {s.batch} rows, {s.in_features} -> {s.out_features} (w1 {w1}, w2 {w2}) {self.dtype}"
            )
        kind = f", {self.input} input" if self.op == "fft" else ""
        return f"{self.op} {s.batch} rows x n={s.n} {self.dtype}{kind}"

    def signature(self) -> dict[str, Any]:
        """What the op computes, without its name or how to tune it: equal signatures mean the same math."""
        data = self.to_dict()
        for key in ("name", "device", "tune"):
            data.pop(key)
        return data

    def replace(self, **changes: Any) -> OpSpec:
        """A copy with top-level fields changed, validated like a file would be."""
        return parse_spec({**self.to_dict(), **changes}, source=self.source)


def load_spec(path: str | os.PathLike) -> OpSpec:
    """Read and validate an op.yaml file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("", "file not found" if not path.exists() else "is not a file", source=str(path))
    try:
        documents = list(yaml.load_all(path.read_text(), Loader=_StrictLoader))
    except OSError as exc:
        raise SpecError("", f"cannot be read ({exc.strerror})", source=str(path)) from None
    except RecursionError:
        raise SpecError("", "is nested too deeply to be an op description", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("", f"not valid YAML{where}: {problem}", source=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError("", "not a text file", source=str(path)) from None
    documents = [d for d in documents if d is not None]
    if not documents:
        raise SpecError("", "is empty; expected a mapping with at least `op` and `shape`", source=str(path))
    if len(documents) > 1:
        raise SpecError(
            "", f"holds {len(documents)} YAML documents; kt reads one op per file", source=str(path)
        )
    return parse_spec(documents[0], source=str(path))


def parse_spec(data: Any, source: str | None = None, check_files: bool = True) -> OpSpec:
    """Validate a mapping (as read from op.yaml) and build the OpSpec.

    `check_files=False` accepts a device profile path that does not exist here (a spec read back from an
    artifact made on another machine); everything else is validated as usual.
    """
    try:
        return _parse(data, source, check_files)
    except SpecError as exc:
        if exc.source is None and source is not None:
            raise SpecError(exc.field, exc.reason, source) from None
        raise


def _parse(data: Any, source: str | None, check_files: bool = True) -> OpSpec:
    if not isinstance(data, Mapping):
        raise SpecError("", f"the top level must be a mapping, got {_kind(data)}")
    op = _choice(data.get("op"), "op", OPS, required=True)
    allowed = ("op", "name", "dtype", "shape", "precision", "device", "tune")
    allowed += ("layout",) if op == "dense" else ("input",) if op == "fft" else ()
    _keys(data, "", allowed=allowed)
    dtype = _choice(data.get("dtype", "float16"), "dtype", FFT_DTYPES if op == "fft" else tuple(DTYPES))
    shape = SHAPE_PARSERS[op](data.get("shape"), "shape")
    layout = _layout(data.get("layout", {}), "layout")
    fft_input = _choice(data.get("input", "complex"), "input", FFT_INPUTS) if op == "fft" else None
    precision = _choice(data.get("precision", "ieee"), "precision", PRECISIONS)
    if precision != "ieee" and dtype != "float32":
        raise SpecError("precision", f"applies to float32 only (dtype is {dtype}); remove it or use ieee")
    name = data.get("name")
    if name is None:
        name = default_name(op, shape, dtype)
    elif not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            "name", f"must be 1-100 letters, digits, '_', '.' or '-' (no spaces or '/'), got {name!r}"
        )
    device = _device(data.get("device", "auto"), source, check_files)
    tune = _tune(data.get("tune", {}), "tune")
    _check_memory(shape, dtype)
    return OpSpec(op, name, dtype, shape, layout, precision, device, tune, source, fft_input)


def default_name(op: str, shape: Shape, dtype: str) -> str:
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
            divisors = [d for d in range(2, min(n, 4096) + 1) if n % d == 0][:8]
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


def _vector_shape(value: Any, path: str, power_of_two: bool) -> VectorShape:
    if value is None:
        raise SpecError(path, "is required: a mapping {batch: B, n: N}")
    _mapping(value, path)
    _keys(value, path, allowed=("batch", "n"), required=("batch", "n"))
    batch = _int(value["batch"], f"{path}.batch", 1, MAX_DIM)
    n = _int(value["n"], f"{path}.n", 2, MAX_DIM)
    if power_of_two and n & (n - 1):
        below = 1 << (n.bit_length() - 1)
        raise SpecError(
            f"{path}.n",
            f"must be a power of two (2, 4, ..., {MAX_DIM}), got {n} (try {below} or {2 * below})",
        )
    return VectorShape(batch, n)


SHAPE_PARSERS = {
    "dense": _dense_shape,
    "monarch": _monarch_shape,
    "butterfly": lambda value, path: _vector_shape(value, path, power_of_two=True),
    "fft": lambda value, path: _vector_shape(value, path, power_of_two=False),
}


def _layout(value: Any, path: str) -> Layout:
    _mapping(value, path)
    _keys(value, path, allowed=("a", "b"))
    return Layout(**{key: _choice(value[key], f"{path}.{key}", LAYOUTS) for key in value})


def _tune(value: Any, path: str) -> TuneOptions:
    _mapping(value, path)
    _keys(value, path, allowed=("budget", "objective", "seed", "power_cap_w"))
    options = {}
    if "budget" in value:
        options["budget"] = _int(value["budget"], f"{path}.budget", 1, MAX_BUDGET)
    if "objective" in value:
        options["objective"] = _choice(value["objective"], f"{path}.objective", OBJECTIVES)
    if "seed" in value:
        options["seed"] = _int(value["seed"], f"{path}.seed", 0, 2**32 - 1)
    if value.get("power_cap_w") is not None:
        options["power_cap_w"] = power_cap(value["power_cap_w"], f"{path}.power_cap_w")
    return TuneOptions(**options)


def power_cap(value: Any, path: str = "tune.power_cap_w") -> float:
    """A power cap in watts: a number from 1 to 2000."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 2000:
        raise SpecError(path, f"must be a number of watts from 1 to 2000, got {value!r}")
    return float(value)


def _device(value: Any, source: str | None, check_files: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(
            "device", f"must be one of {', '.join(BUILTIN_DEVICES)} or a profile .json path, got {value!r}"
        )
    if value.lower() in BUILTIN_DEVICES:
        return value.lower()
    if not value.endswith(".json"):
        raise SpecError(
            "device", f"unknown device {value!r}; allowed: {', '.join(BUILTIN_DEVICES)} or a profile .json"
        )
    path = Path(value)
    if not path.is_absolute() and source is not None:
        path = Path(source).parent / path  # relative to the op.yaml, as a reader of the file expects
    path = path.absolute()  # so the spec means the same file from any directory (artifacts store it)
    if check_files and not path.is_file():
        raise SpecError(
            "device", f"profile file {str(path)!r} not found (make one with `kt calibrate --out`)"
        )
    return str(path)


def _check_memory(shape: Shape, dtype: str) -> None:
    if isinstance(shape, DenseShape):
        elements = (shape.batch or 1) * (shape.m * shape.k + shape.k * shape.n + shape.m * shape.n)
    elif isinstance(shape, MonarchShape):
        (k, q, p), (l, s, r) = shape.w1, shape.w2  # noqa: E741
        elements = shape.batch * (k * p + k * q + l * s) + k * q * p + l * s * r
    else:  # input, output and one intermediate, real and imaginary parts
        elements = 6 * shape.batch * shape.n
    total = elements * itemsize(dtype)
    if total > MAX_OPERAND_BYTES:
        raise SpecError(
            "shape",
            f"the operands need {total / 2**30:.1f} GiB; kt allows at most {MAX_OPERAND_BYTES / 2**30:.0f} GiB",
        )


# -- small validators, each raising one SpecError that names the field -------------------------------------------


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{value!r} ({type(value).__name__})"


def _mapping(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {_kind(value)}")


def _keys(value: Mapping, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    for key in value:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            field_path = f"{path}.{key}" if path else str(key)
            raise SpecError(field_path, f"unknown key{suggestion}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise SpecError(f"{path}.{key}" if path else key, "is required")


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            raise SpecError(path, f"must be an integer (write {int(value)}, not {value!r})")
        raise SpecError(path, f"must be an integer from {low} to {high}, got {_kind(value)}")
    if not low <= value <= high:
        raise SpecError(path, f"must be an integer from {low} to {high}, got {value}")
    return value


def _choice(value: Any, path: str, allowed: tuple[str, ...], required: bool = False) -> str:
    if value is None and required:
        raise SpecError(path, f"is required; allowed: {', '.join(allowed)}")
    if not isinstance(value, str) or value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(path, f"{_kind(value)} is not supported{suggestion}; allowed: {', '.join(allowed)}")
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (plain YAML keeps the last one silently) or a key that is a
    list or mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, got {type(key).__name__}", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
