"""Search spaces with every point measured: what `kt replay` searches instead of a GPU.

A `TuningSpace` is an ordinary search space (named parameters, each with its values, and the set of valid
points) in which every valid point carries the objective a GPU measured for it (NaN where the point failed on
the GPU: a failed compile or launch, which still costs a search one evaluation). Two sources:

- a Kernel Tuner cache file (`.json` / `.json.gz`, Kernel Tuner's format: `tune_params`, `tune_params_keys` and a
  `cache` of records with `time`, each keyed by its values joined by "," in `tune_params_keys` order; a string in
  `time` is a failure), such as the brute-forced spaces of `../shared/data/kerneltuner`;
- a kt tuning database or CSV of a finished `kt collect --all`: one space per problem (see kt.autotune.replay).

Kernel Tuner's format is read here from its documented fields, without Kernel Tuner installed.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from kt.errors import KtError, shown
from kt.files import existing_file


class SpaceError(KtError):
    """A space file that cannot be read as a search space."""


@dataclass
class TuningSpace:
    """Named parameters, the valid points, and each point's measured objective (NaN: failed on the GPU)."""

    name: str
    params: dict[str, list[Any]]  # every parameter, in the file's order, with its values in order
    points: list[tuple[Any, ...]]  # valid points: one value per parameter, in `params` order
    objective: np.ndarray  # measured objective per point (lower is better), NaN where the point failed
    source: str = ""
    device: str = ""
    records: list[dict[str, Any]] | None = None  # kt's feature records per point, where the space is kt's
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. Kernel Tuner's problem_size, kernel_name
    config_keys: list[str] | None = None  # each point's own name in its file (a Kernel Tuner cache's key)
    _distance: Any = field(default=None, repr=False)

    def __post_init__(self):
        self.objective = np.asarray(self.objective, dtype=np.float64)
        if len(self.points) != len(self.objective):
            raise ValueError("one objective value per point")
        if not np.isfinite(self.objective).any():
            raise SpaceError(f"{self.source or self.name}: no point of the space has a measured value")

    def __len__(self) -> int:
        return len(self.points)

    @property
    def failed(self) -> np.ndarray:
        return ~np.isfinite(self.objective)

    @property
    def best(self) -> float:
        return float(np.nanmin(self.objective))

    @property
    def varying(self) -> list[str]:
        """The parameters with more than one value among the valid points (the others say nothing)."""
        return varying(self.params, self.points)

    def point(self, index: int) -> dict[str, Any]:
        return dict(zip(self.params, self.points[index]))

    def score(self, best_found: float | None) -> float:
        """optimum / best found: 1.0 found the optimum, 0.0 found nothing that ran."""
        return 0.0 if best_found is None or not math.isfinite(best_found) else self.best / best_found

    def encode(self) -> np.ndarray:
        return encode(self.params, self.points)

    def distance(self, index: int) -> np.ndarray:
        """How many parameters each point differs from point `index` in."""
        if self._distance is None:
            self._distance = distances(self.params, self.points)
        return self._distance(index)

    def features(self) -> np.ndarray:
        return features(self.params, self.points)


def varying(params: dict[str, list[Any]], points: list[tuple[Any, ...]]) -> list[str]:
    return [name for j, name in enumerate(params) if len({_hashable(p[j]) for p in points}) > 1]


def encode(params: dict[str, list[Any]], points: list[tuple[Any, ...]]) -> np.ndarray:
    """The points as a numeric matrix for a model: one column per varying parameter, a numeric parameter as its
    log2 (sign kept, so 0 stays 0) and a categorical one (any non-numeric value) as the position of its value in
    the parameter's list (trees split those positions; the order is the file's)."""
    columns = []
    moving = set(varying(params, points))
    for j, name in enumerate(params):
        if name not in moving:
            continue
        values = params[name]
        column = [p[j] for p in points]
        if all(_numeric(v) for v in values):
            x = np.array(column, dtype=np.float64)
            columns.append(np.sign(x) * np.log2(1 + np.abs(x)))
        else:
            position = {_hashable(v): i for i, v in enumerate(values)}
            columns.append(np.array([position[_hashable(v)] for v in column], dtype=np.float64))
    if not columns:
        return np.zeros((len(points), 1))
    return np.stack(columns, axis=1)


def features(params: dict[str, list[Any]], points: list[tuple[Any, ...]]) -> np.ndarray:
    """`encode()` plus two kinds of columns a tree cannot read off a parameter's own column:

    - for each integer parameter with values of several alignments, the power of two that divides each value
      (log2 of its largest power-of-two divisor): GPU kernels care about alignment (a block of 64 threads is two
      full warps, one of 48 is not);
    - for each parameter numbered 0, 1, ..., k-1 (k >= 3), one indicator column per value: such a parameter
      names methods (pnpoly's `use_method`, `between_method`), whose order means nothing, and a tree splits a
      middle method off in one cut instead of two, which counts when a few dozen points are all it has.
    """
    columns = [encode(params, points)]
    moving = set(varying(params, points))
    for j, name in enumerate(params):
        if name not in moving or not all(_integer(v) for v in params[name]):
            continue
        x = np.abs(np.array([p[j] for p in points], dtype=np.int64))
        twos = np.where(x > 0, np.log2(np.maximum(x & -x, 1)), 0.0)
        exact = np.log2(np.maximum(x, 1))
        if len(np.unique(twos)) > 1 and not np.array_equal(twos, exact):  # some values are not powers of two
            columns.append(twos[:, None])
    for j, name in enumerate(params):
        if name in moving and is_enumeration(params[name]):
            column = np.array([p[j] for p in points], dtype=np.float64)
            columns.append(np.stack([column == v for v in sorted(params[name])], axis=1).astype(np.float64))
    return np.hstack(columns)


def is_enumeration(values: list[Any]) -> bool:
    """True for the values 0, 1, ..., k-1 with k >= 3 (in any order): method numbers rather than sizes."""
    return (
        len(values) >= 3
        and all(_integer(v) for v in values)
        and sorted(int(v) for v in values) == list(range(len(values)))
    )


def config_space(configs: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[tuple[Any, ...]]]:
    """kt configs given as dicts (`Config.to_dict()`) as a space's parameters and points: one parameter per
    field, numeric values in rising order."""
    names = list(dict.fromkeys(k for c in configs for k in c))
    points = [tuple(c.get(k, 0) for k in names) for c in configs]
    params = {k: list(dict.fromkeys(p[j] for p in points)) for j, k in enumerate(names)}
    for k, values in params.items():
        if all(_numeric(v) for v in values):
            params[k] = sorted(values)
    return params, points


def config_features(configs: list[dict[str, Any]]) -> np.ndarray:
    """`features` of kt configs given as dicts: what a parameter forest learns from."""
    return features(*config_space(configs))


def distances(params: dict[str, list[Any]], points: list[tuple[Any, ...]]):
    """distance(i): how many parameters every point differs from point i in (the guided search's polish)."""
    codes = encode(params, points)
    return lambda index: (codes != codes[index]).sum(axis=1)


def _scalar(value: Any) -> bool:
    """A parameter value: a number (bool included, as Kernel Tuner writes flags) or text."""
    return isinstance(value, int | float | str)


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}" if value is not None else "null"


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    # an int as it is: float() of one past 1e308 (JSON holds any) is an OverflowError
    return _numeric(value) and (isinstance(value, int) or float(value).is_integer())


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def is_kernel_tuner_file(path: Path) -> bool:
    return path.name.lower().endswith((".json", ".json.gz"))


# ASCII digits only: int() and float() also took '1_0', '+10', '2.5e1%' and full-width digits, echoed as given
_BUDGET = re.compile(r"(?P<count>[0-9]+)|(?P<whole>[0-9]+)(?:\.(?P<part>[0-9]+))?%")


def parse_budget(text: str | int) -> tuple[int | None, Fraction | None]:
    """`--budget`: a count of evaluations (`100`) or a percentage of each space's valid points (`5%`), as an
    exact fraction: 7% of 100 points as a float, 0.07 * 100, is 7.000000000000001, which rounded up to 8."""
    text = str(text).strip()
    # at most 18 digits a side (past Python's 4,300 int() raised, and past a float's range the guided search's
    # divisions did: tracebacks); a count past any space's size is the whole space already
    match = _BUDGET.fullmatch(text) if len(text) <= 40 else None
    if match and any(len(match[name] or "") > 18 for name in ("count", "whole", "part")):
        match = None
    if match and match["count"] and int(text) >= 1:
        return int(text), None
    if match and not match["count"] and 0 < Fraction(text[:-1]) / 100 <= 1:
        return None, Fraction(text[:-1]) / 100
    raise SpaceError(
        f"budget: {shown(text)} is not a count of evaluations (an integer >= 1, of at most 18 digits) or a "
        "percentage of the space above 0% and at most 100%, such as 5%"
    )


def budget_label(text: str | int) -> int | str:
    """A valid `--budget` as kt writes it back (the last line, the trace): 25 for '025', '7.5%' for '07.50%'."""
    parse_budget(text)
    match = _BUDGET.fullmatch(str(text).strip())
    if match["count"]:
        return int(match["count"])
    part = (match["part"] or "").rstrip("0")
    return f"{int(match['whole'])}{'.' + part if part else ''}%"


SPACE_HINT = "give a Kernel Tuner cache (.json, .json.gz) or a kt tuning database (.db) or `kt export` CSV"


def check_space_file(path: Path) -> None:
    """What `kt replay` can tell of SPACE before reading it (and before loading the search's model stack): a
    path that is missing, of a kind that holds no space, or a database or CSV that is not kt's is a one-line
    error."""
    # a pipe named .json was opened and read forever
    existing_file(path, "space", SPACE_HINT, SpaceError)
    if is_kernel_tuner_file(path):
        return  # load_kernel_tuner says what is wrong with its content
    if path.suffix.lower() not in (".csv", ".db", ".sqlite", ".sqlite3"):
        raise SpaceError(
            f"space: {str(path)!r} is neither a Kernel Tuner cache (.json, .json.gz) nor a kt tuning "
            "database (.db) or `kt export` CSV"
        )
    from kt.autotune.database import check_data  # the standard library only

    check_data(path, "space")


def _named_by(part: str, spellings: dict[str, set], listed: list) -> set | None:
    """The listed values a key's part names: those spelt so, else those equal to the number it reads as ("2.0"
    named 2, and a key spelt so passed the check that a key names its own configuration); None for neither."""
    if part in spellings:
        return spellings[part]
    try:
        number = float(part)
    except ValueError:
        return None
    same = {x for x in listed if isinstance(x, (int, float)) and not isinstance(x, bool) and x == number}
    return same or None


LEGACY_FAILED_TIME = 1e20  # Kernel Tuner before 0.4.2 wrote a failed configuration's time as this (ms)


def _cache_json(text: str) -> Any:
    """A cache file's JSON; one Kernel Tuner left open (a run interrupted: it appends `"key": {...},` entries and
    closes the file as a run ends) read as Kernel Tuner reads it, its trailing comma dropped and its two objects
    closed (it was "not a Kernel Tuner cache file")."""
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError:
        stripped = text.strip()
        if len(stripped) < 2 or stripped[-2:] in ("}}", "]}") or re.sub(r"\s", "", stripped)[-2:] == "}}":
            raise
        try:
            return json.loads(stripped.removesuffix(",") + "}\n}", object_pairs_hook=_json_object)
        except json.JSONDecodeError:
            pass
        raise


def _failure(record: dict, objectives: list[str]) -> str | None:
    """The failure a cache entry records, or None: Kernel Tuner 1.4 and later write it as `__error__` (`error`
    for a while before) with no time; before that, in the objective's own field (`time`, or `GFLOP/s` for a
    cache tuned for it, with no time); before 0.4.2, as a time of 1e20."""
    for key in ("__error__", "error"):
        if isinstance(record.get(key), str):
            return record[key]
    if "time" not in record:
        return next((record[name] for name in objectives if isinstance(record.get(name), str)), None)
    if _numeric(record["time"]) and record["time"] == LEGACY_FAILED_TIME:
        return "a failure (time 1e20, as Kernel Tuner before 0.4.2 wrote one)"
    return None


def load_kernel_tuner(path: str | Path) -> TuningSpace:
    """A Kernel Tuner cache file as a TuningSpace: its valid points are the cache's keys."""
    path = existing_file(path, "space", SPACE_HINT, SpaceError)
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt") as handle:
            text = handle.read()
        data = _cache_json(text)
    except FileNotFoundError:
        raise SpaceError(f"space: {str(path)!r} not found") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as error:
        # ValueError: json's own (JSONDecodeError) and Python's past 4,300 digits in an integer (a traceback)
        raise SpaceError(f"{path}: not a Kernel Tuner cache file (JSON): {error}") from None
    except RecursionError:  # arrays or objects nested past Python's recursion limit: a traceback
        raise SpaceError(f"{path}: not a Kernel Tuner cache file (JSON nested too deeply to read)") from None
    try:  # JSON's \ud800 escapes decode to text no file can hold: `--csv` failed at the end of the replay
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as error:
        raise SpaceError(
            f"{path}: holds text that is no Unicode ({error.object[error.start : error.end]!r}, a lone surrogate)"
        ) from None
    if not isinstance(data, dict) or not {"tune_params", "cache"} <= data.keys():
        raise SpaceError(f"{path}: not a Kernel Tuner cache file: it needs the fields tune_params and cache")
    if (twice := _twice(data)) is not None:
        raise SpaceError(f"{path}: names the field {twice!r} twice; JSON keeps the last without a word")
    tune_params, cache = data["tune_params"], data["cache"]
    if not isinstance(tune_params, dict) or not all(
        isinstance(v, list) and all(_scalar(x) for x in v) for v in tune_params.values()
    ):
        raise SpaceError(f"{path}: tune_params must map each parameter's name to the list of its values")
    if (twice := _twice(tune_params)) is not None:
        raise SpaceError(f"{path}: tune_params names {twice!r} twice")
    keys = data.get("tune_params_keys") or list(tune_params)
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in tune_params for k in keys):
        raise SpaceError(f"{path}: tune_params_keys must list names of tune_params, got {keys!r}")
    twice = next((k for j, k in enumerate(keys) if k in keys[:j]), None)
    if twice is not None:  # each point held that parameter twice, and the features read the wrong columns
        raise SpaceError(f"{path}: tune_params_keys names {twice!r} twice")
    empty = [k for k in keys if not tune_params[k]]
    if empty:
        raise SpaceError(f"{path}: tune_params.{empty[0]} lists no value; each parameter needs one or more")
    for name in keys:
        whole = all(_integer(v) for v in tune_params[name])  # `features` reads these as int64
        for x in tune_params[name]:
            why = _unencodable(x, whole)
            if why:
                raise SpaceError(f"{path}: tune_params.{name} holds {shown(x)}, {why}")
    allowed = {k: set(tune_params[k]) for k in keys}
    if not isinstance(cache, dict):
        raise SpaceError(f"{path}: cache must map each configuration's key to its record, got {_kind(cache)}")
    if (twice := _twice(cache)) is not None:  # the dropped entry may have been the optimum
        raise SpaceError(
            f"{path}: cache holds the key {twice!r} twice; JSON keeps the last without a word: keep one"
        )
    objective = data.get("objective") or "time"
    # a name, or (Kernel Tuner 1.4 and later) a list of names
    objectives = [
        o for o in (objective if isinstance(objective, list) else [objective]) if isinstance(o, str)
    ]
    # Kernel Tuner keys a record by its values joined by "," in tune_params_keys order: a key that, read so, names
    # another configuration is refused (a trace names points by their keys). Without that list the order is the
    # file's own (but for one parameter), and a key that reads as no configuration is a name, kept as it is
    spelt: list[dict[str, set]] | None = None
    if data.get("tune_params_keys") or len(keys) == 1:
        spelt = [{} for _ in keys]
        for spellings, name in zip(spelt, keys):
            for x in tune_params[name]:
                spellings.setdefault(str(x), set()).add(x)
    # kt replays times, whatever the cache was tuned for: a repeat's score is optimum time / best time found
    points, values, seen = [], [], {}
    for cache_key, record in cache.items():
        if not isinstance(record, dict):
            raise SpaceError(
                f"{path}: cache entry {cache_key!r} must be a record (a mapping), got {_kind(record)}"
            )
        if (twice := _twice(record)) is not None:
            raise SpaceError(f"{path}: cache entry {cache_key!r} names {twice!r} twice")
        failure = _failure(record, objectives)
        missing = [k for k in (*keys, *(() if failure is not None else ("time",))) if k not in record]
        if missing:
            tuned = (
                f" (kt replay compares times; this cache was tuned for {', '.join(objectives) or objective!r})"
                if objectives != ["time"]
                else ""
            )
            raise SpaceError(f"{path}: cache entry {cache_key!r} lacks {', '.join(missing)}{tuned}")
        point = tuple(record[k] for k in keys)
        if not all(_scalar(x) for x in point):
            raise SpaceError(
                f"{path}: cache entry {cache_key!r}: each parameter's value must be a number or text"
            )
        for name, x in zip(keys, point):
            if x not in allowed[name]:
                listed = ", ".join(map(str, tune_params[name][:12])) + (
                    ", ..." if len(tune_params[name]) > 12 else ""
                )
                raise SpaceError(
                    f"{path}: cache entry {cache_key!r}: {name} is {x!r}, which tune_params does not list "
                    f"(allowed: {listed})"
                )
        parts = cache_key.split(",")
        if spelt is not None and len(parts) == len(keys):
            named = [
                _named_by(part, spellings, tune_params[name])
                for part, spellings, name in zip(parts, spelt, keys)
            ]
            if all(named) and not all(x in listed for x, listed in zip(point, named)):
                held = ", ".join(f"{k}={x!r}" for k, x in zip(keys, point))
                raise SpaceError(
                    f"{path}: cache entry {cache_key!r} holds {held}, whose key is "
                    f"{','.join(map(str, point))!r} (its values joined by ',' in tune_params_keys order): the key "
                    "names another configuration"
                )
        if point in seen:
            raise SpaceError(
                f"{path}: cache entries {seen[point]!r} and {cache_key!r} hold the same configuration; "
                "a space holds each once"
            )
        seen[point] = cache_key
        points.append(point)
        # (a failure's text in time is read below)
        if failure is not None and not isinstance(record.get("time"), str):
            values.append(math.nan)
            continue
        value = record["time"]
        if isinstance(value, str) and _number_text(value):  # read as a failure, its time lost
            raise SpaceError(
                f"{path}: cache entry {cache_key!r}: time is the text {value!r}; a time is a number (ms), and "
                "text the name of a failure (CompilationFailedConfig, ...)"
            )
        if isinstance(value, str):  # a configuration that failed on the GPU (CompilationFailedConfig, ...)
            values.append(math.nan)
        elif _numeric(value) and 0 < value <= sys.float_info.max:  # an int past it: float()'s OverflowError
            values.append(float(value))
        else:
            raise SpaceError(
                f"{path}: cache entry {cache_key!r}: time must be a positive number (ms) or a failure's text, "
                f"got {value!r}"
            )
    if not points:
        raise SpaceError(f"{path}: the cache holds no configuration")
    return TuningSpace(
        name=re.sub(r"\.json(\.gz)?$", "", path.name, flags=re.IGNORECASE),
        params={k: list(tune_params[k]) for k in keys},
        points=points,
        objective=np.array(values),
        source=str(path),
        device=str(data.get("device_name", "")),
        meta={k: data[k] for k in ("kernel_name", "problem_size", "objective") if k in data},
        config_keys=list(seen.values()),
    )


class _Repeated(dict):
    """A JSON object that names a key twice (`repeated`, the first such): json keeps the last without a word."""

    repeated: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object as a dict, marked where it names a key twice."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    marked = _Repeated(out)
    marked.repeated = key
    return marked


def _twice(value: Any) -> str | None:
    """The key a JSON object names twice, or None."""
    return value.repeated if isinstance(value, _Repeated) else None


def _unencodable(value: Any, whole: bool) -> str | None:
    """Why a parameter's value is none a model can read, or None: inf and nan (nan never equals itself) are
    no values to split on, and `features` reads a parameter of whole numbers alone (`whole`) as int64."""
    if not _numeric(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number: a parameter's value is a finite number or text"
    if whole and not -(2**63) <= value < 2**63:
        return "a whole number past 64 bits (kt reads whole numbers as int64): give it as text"
    if isinstance(value, int) and abs(value) > sys.float_info.max:  # among fractions: read as float64
        return "a number past float64's range (kt reads numbers as float64): give it as text"
    return None


def _number_text(text: str) -> bool:
    """Whether `text` reads as a finite number ('0.5', ' 1e3')."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
