"""`kt inspect`: how right the cost models were about a finished tune, predicted against measured.

Two predictions are compared with what the GPU measured. The tuner's: `predicted_ms` in each database row, what
the ranking model believed when it chose the candidate. The forest's: a model file given by the user, or
forests fitted here on the other shapes of the same data, so that no inspected shape was seen in training.

Only rows a GPU timed and that passed the check are used; a tune without a GPU measured nothing and is refused.
Data files are opened read-only, and a model file is scored only on shapes it was not fitted on.
Plots are written with matplotlib's Agg canvas (no display, no pyplot state), each to a temporary file that then
replaces the old one.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kt.autotune.artifact import read_meta
from kt.autotune.database import Database, default_path
from kt.device import BUILTIN, DeviceProfile
from kt.errors import ArtifactError, DatabaseError, DeviceError, KtError, ModelError, counted, option
from kt.files import INSPECT_HINT, atomic_write, existing_path

if TYPE_CHECKING:
    from kt.costmodel.evaluate import Report

# torch (kt.ir, kt.autotune.dataset) and scikit-learn (kt.costmodel) load in the functions that use them, so
# that an artifact tuned without a GPU is refused in a fraction of a second

TOP_K = 5
PLOT_NAMES = ("predicted_vs_measured.png", "pareto.png")
MEASURE_HINT = "measure on a GPU with `kt tune OP_YAML --backend cuda` or `kt collect`"


@dataclass(eq=False)  # it holds numpy arrays (== raised)
class InspectResult:
    """What `kt inspect` found: the measured rows and how far each model's predictions were from them."""

    source: Path  # the artifact directory or the data file inspected
    db_path: Path  # where the measured rows came from
    gpu: str  # the GPU that measured them
    target: str  # the device profile key they were tuned for
    records: list[dict[str, Any]]  # measured records, with predicted_ms and created_at
    chosen: str | None = None  # the config key the artifact holds
    tuner: Report | None = None  # the stored predictions (the ranking model's, at selection time)
    tuner_model: str | None = None  # which model made them, when known (an artifact says)
    forest: Report | None = None
    forest_from: str | None = None  # where the forest's predictions come from
    forest_rows: np.ndarray | None = None  # which records the forest scored (None: all of them)
    importances: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # runtime/power -> feature -> value
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # the dataclass's own printed every record: 134 kB for 117 rows
        return (
            f"InspectResult({self.source}: {counted(len(self.records), 'measured row')} of "
            f"{counted(self.shapes, 'problem')} on {self.gpu} (target {self.target}))"
        )

    @property
    def shapes(self) -> int:
        """How many problems the rows measure (the CLI's "N problems")."""
        return len({r["group"] for r in self.records})

    @property
    def dates(self) -> tuple[str, str]:
        """The first and last day the rows were measured (UTC), or ("?", "?") when unrecorded."""
        days = sorted(str(r["created_at"])[:10] for r in self.records if r.get("created_at"))
        return (days[0], days[-1]) if days else ("?", "?")


def inspect_tune(
    path: str | os.PathLike,
    db: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    plots_dir: str | os.PathLike | None = None,
    device: str | None = None,
    gpu: str | None = None,
    seed: int = 0,
) -> InspectResult:
    """Inspect an artifact directory (its problem's rows in the tuning database) or a whole data file."""
    path = Path(path)
    if path.is_dir():
        default_plots = path
    elif path.is_file():
        if db is not None:
            raise KtError(
                f"db: {path} is already the data to inspect; {option('db')} is for an artifact directory"
            )
        # the whole file name: a database and its CSV export side by side (kt.db, kt.csv) get a folder each
        default_plots = path.parent / f"{path.name}-inspect"
    else:
        existing_path(path, "inspect", INSPECT_HINT)  # not found (a socket or a fifo is neither)
        raise KtError(f"inspect: {str(path)!r} is neither a folder nor a file; {INSPECT_HINT}")
    plots = Path(plots_dir) if plots_dir is not None else default_plots
    _check_plots(plots, plots_dir is None)
    if path.is_dir():
        result, profile, training = _artifact_rows(path, db, device, gpu)
    else:
        result, profile, training = _data_rows(path, device, gpu)
    _tuner_report(result)
    _forest_report(result, profile, training, model, seed)
    if result.tuner is None and result.forest is None:
        raise KtError(
            f"inspect: nothing to compare with the {len(result.records)} measured rows: they carry no stored "
            f"prediction and no forest is available ({'; '.join(result.notes)})"
        )
    write_plots(result, plots)
    return result


def _check_plots(directory: Path, default: bool) -> None:
    """Refuse, before the forests are fitted, a plot folder that is a file or cannot be made: the API raised
    NotADirectoryError after the work, and a default `<data>-inspect` that was a file failed the same way,
    naming neither the plots nor how to choose another folder (the CLI checked only --plots)."""
    from kt.errors import on_command_line
    from kt.files import unmakeable

    given = "--plots DIR" if on_command_line() else "plots_dir"  # the CLI's flag is --plots
    hint = f"; give {given} to plot elsewhere" if default else ""
    if directory.exists() and not directory.is_dir():
        raise KtError(f"plots: {str(directory)!r} exists and is not a folder{hint}")
    if not directory.is_dir() and (why := unmakeable(directory)):
        raise KtError(f"plots: the folder {str(directory)!r} cannot be made: {why}{hint}")


# -- the measured rows ------------------------------------------------------------------------------------


def _measured(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPU-timed, passing rows as cost-model records that keep the prediction and the date."""
    from kt.autotune.dataset import is_measured, to_record

    return [
        {
            **to_record(r),
            "config": r["config"],  # as the row holds it (an artifact's meta.json names the same mapping)
            "target": r["target"],
            "predicted_ms": r.get("predicted_ms"),
            "created_at": r.get("created_at"),
        }
        for r in rows
        if is_measured(r)
    ]


def _profile(name: str | None, explicit: bool = False) -> DeviceProfile | None:
    """The profile `name` (a built-in or a profile JSON); None when there is none, or when one read from the
    data cannot be had here (a calibrated profile's file on another machine). A name the user gave must resolve."""
    from kt.api import resolve_profile

    if isinstance(name, DeviceProfile):  # one made in code, as resolve_profile takes it
        return resolve_profile(name)
    if not name or name.lower() == "auto":  # as resolve_profile reads it ("AUTO" took h100 there)
        return None
    try:
        return resolve_profile(name)
    except DeviceError:
        if explicit:
            raise
        return None


def _artifact_rows(
    path: Path, db: str | os.PathLike | None, device: str | None, gpu: str | None = None
) -> tuple[InspectResult, DeviceProfile | None, list[dict[str, Any]]]:
    meta = read_meta(path)
    recorded = (meta.get("tuning") or {}).get("db")  # a string, checked by read_meta
    gone = ""
    if db is not None:
        db_path = Path(db)
    elif recorded and Path(recorded).is_file():
        db_path = Path(recorded)  # the database the tune wrote
    else:
        db_path = default_path()
        if recorded and Path(recorded) != db_path:
            if meta.get("measured") and not db_path.is_file():  # (not measured: said below, whatever the db)
                raise ArtifactError(
                    f"inspect: {recorded}, the database {path} was tuned into, is gone; pass the database that "
                    "holds its rows with --db"
                )
            gone = f" (the tune's own, {recorded}, is gone)"
    unmeasured = (
        f"inspect: {path} was tuned without a GPU (measured: false), so nothing was timed and there is nothing "
        f"to compare predictions with; {MEASURE_HINT}, then inspect that artifact"
    )
    if not meta.get("measured") and db is None and not _gpu_rows(db_path, meta.get("family")):
        raise ArtifactError(unmeasured)
    from kt.autotune.dataset import find_rows, is_measured, shape_key
    from kt.costmodel.evaluate import holdout_key
    from kt.ir.problems import problem_from_dict

    ran_on, target_name = meta["device"]["ran_on"], meta["device"]["target"]  # checked by read_meta
    try:
        problem = problem_from_dict(meta["family"], meta["problem"])
    except KeyError as exc:
        raise ArtifactError(f"{path / 'meta.json'} is damaged: problem: it has no {exc} field") from None
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path / 'meta.json'} is damaged: problem: {exc}") from None
    of_problem = [
        r
        for r in find_rows(db_path, "db", runner="cuda", problem_key=problem.key())  # read-only
        if not meta.get("measured") or r["device"] == ran_on
    ]
    rows = [r for r in of_problem if r["family_version"] == meta.get("family_version", r["family_version"])]
    records = _measured(rows)
    others = sorted(
        {r["family_version"] for r in of_problem if is_measured(r)} - {meta.get("family_version")}
    )
    if (
        not records and others
    ):  # "tuned without a GPU" or "no rows" misled: they are there, of other templates
        raise ArtifactError(
            f"inspect: {db_path}{gone} holds GPU-measured rows of {path}'s problem only from other versions of "
            f"kt's {meta['family']} template ({', '.join(others)}), not this artifact's "
            f"({meta.get('family_version')}): a tune with this kt measures them again"
        )
    if not records:
        raise ArtifactError(
            unmeasured
            if not meta.get("measured")
            else f"inspect: {db_path}{gone} holds no GPU-measured rows of {path}'s problem on {ran_on}; "
            "pass the database the tune wrote with --db"
        )
    given = _profile(device, explicit=True)
    # the target the tune ran for first: the spec's device is the file's, which `--device` overrides
    # by its key: a calibrated profile keeps its built-in's name (`kt calibrate` names it so) and adds a hash
    recorded = (meta.get("device") or {}).get("key")
    key = recorded or target_name
    built_in = key if key in BUILTIN else None
    profile = given or _profile(built_in) or _profile((meta.get("spec") or {}).get("device"))
    targets = {r["target"] for r in records}
    if given is not None and given.key not in targets:
        raise ArtifactError(
            f"inspect: the rows of {path}'s problem were tuned for {', '.join(sorted(targets))}, not "
            f"{given.key}; leave out --device, or give that target's profile"
        )
    fits = profile is not None and profile.key in targets
    if fits and (given is not None or recorded is None or recorded == profile.key):
        target = profile.key
    elif given is None and recorded in targets:
        # the key the artifact recorded: its own tune's rows (the spec's device, the op file's, named another
        # tune's where --device had set a calibrated profile; or no profile resolved here, and rows of two
        # targets were refused though the key named one)
        target, profile = recorded, None  # its profile is not here (the forest needs --device)
    else:
        # a calibrated target is the profile's name plus a hash of its fields (DeviceProfile.key): not another
        # built-in of that name's start (h200-nvl for h200)
        calibrated = re.compile(rf"{re.escape(target_name)}-[0-9a-f]{{8}}")
        named = sorted(t for t in targets if t == target_name or calibrated.fullmatch(t))
        if len(named) != 1:
            raise ArtifactError(
                f"inspect: {db_path} holds rows of {path}'s problem for targets {', '.join(sorted(targets))}; "
                "pick the tune's with --device"
            )
        target, profile = named[0], None
    records = [r for r in records if r["target"] == target]
    gpu = _artifact_gpu(path, db_path, records, ran_on if meta.get("measured") else None, gpu)
    records = [r for r in records if r["device"] == gpu]
    training = _measured(find_rows(db_path, "db", runner="cuda", family="gemm", device=gpu, target=target))
    training = [r for r in training if holdout_key(r) != shape_key(problem)]
    chosen = next((r["config_key"] for r in records if r["config"] == meta.get("config")), None)
    result = InspectResult(
        path, db_path, gpu, target, records, chosen, tuner_model=(meta.get("prediction") or {}).get("model")
    )
    if chosen is None:
        result.notes.append("the artifact's config has no measured row in the database")
    if meta.get("kernel") == "pytorch":  # its config is the best generated one, which "chosen" names
        result.notes.append(
            "the artifact runs PyTorch's own path, which beat every generated config; chosen is the best of them"
        )
    return result, profile, training


def _gpu_rows(db_path: Path, family: str | None) -> bool:
    """Whether the database holds any GPU-timed row of the family: one question to SQLite, before torch loads
    (an artifact tuned without a GPU usually has none to compare with)."""
    if not db_path.is_file():
        return False
    with Database(db_path, create=False, readonly=True) as database:
        return database.count(runner="cuda", family=family, status="ok") > 0


def _artifact_gpu(
    path: Path, db_path: Path, records: list[dict[str, Any]], ran_on: str | None, gpu: str | None
) -> str:
    """The GPU whose rows of the artifact's problem are inspected: `gpu` where given (it must have rows), else
    the one the tune ran on (`ran_on`, a measured tune's), else the only one with rows; the database holding
    rows from several GPUs, one must be named (the first row's stood in, whatever --gpu said)."""
    gpus = Counter(r["device"] for r in records)
    listing = _listing(gpus)
    if gpu is not None:
        if gpu not in gpus:
            raise ArtifactError(
                f"gpu: {db_path} holds no measured rows of {path}'s problem on {gpu!r}; allowed: {listing}"
            )
        return gpu
    if ran_on is not None:
        return ran_on
    if len(gpus) > 1:
        raise ArtifactError(
            f"inspect: {db_path} holds measurements of {path}'s problem from several GPUs: {listing}; pick one "
            "with --gpu"
        )
    return next(iter(gpus))


def _listing(gpus: Counter) -> str:
    """Each GPU named with its rows, most first: 'NVIDIA H100 PCIe' (3 rows), 'NVIDIA H200' (1 row)."""
    return ", ".join(f"{name!r} ({counted(n, 'row')})" for name, n in gpus.most_common())


def _data_rows(
    path: Path, device: str | None, gpu: str | None
) -> tuple[InspectResult, DeviceProfile | None, list[dict[str, Any]]]:
    from kt.autotune.dataset import read_rows, untimed

    rows = read_rows(path, "inspect")
    measured = _measured(rows)
    records = [r for r in measured if gpu is None or r["device"] == gpu]
    if not records and measured:  # --gpu named a GPU the data holds none of: it said "measure on a GPU"
        raise DatabaseError(
            f"gpu: {path} holds no GPU-measured passing rows on {gpu!r}; allowed: "
            f"{_listing(Counter(r['device'] for r in measured))}"
        )
    if not records:
        kinds = untimed(rows)
        seen = f" (its rows were checked, never timed: {kinds})" if kinds else ""
        on = f" on {gpu!r}" if gpu else ""
        raise DatabaseError(
            f"inspect: {path} holds no GPU-measured passing rows{on}{seen}, so there is nothing to compare "
            f"predictions with; {MEASURE_HINT}"
        )
    gpus = Counter(r["device"] for r in records)
    if len(gpus) > 1:
        listing = _listing(gpus)
        raise DatabaseError(
            f"inspect: {path} holds measurements from several GPUs: {listing}; pick one with --gpu"
        )
    profile = _profile(device, explicit=True)
    targets = Counter(r["target"] for r in records)
    if profile is not None:
        if profile.key not in targets:
            listing = ", ".join(f"{t} ({n} rows)" for t, n in targets.most_common())
            raise DatabaseError(f"inspect: {path} holds no rows for target {profile.key}; it holds {listing}")
        target = profile.key
    elif len(targets) > 1:
        listing = ", ".join(f"{t} ({n} rows)" for t, n in targets.most_common())
        raise DatabaseError(
            f"inspect: {path} holds rows for several targets: {listing}; pick one with --device"
        )
    else:
        (target,) = targets
        profile = _profile(target)
    records = [r for r in records if r["target"] == target]
    result = InspectResult(path, path, records[0]["device"], target, records)
    return result, profile, []


# -- predictions ------------------------------------------------------------------------------------------


def _held(records: Sequence[dict[str, Any]]) -> list[Any]:
    """Each record's shape (what evaluation holds out together), for a Report's shape count."""
    from kt.costmodel.evaluate import holdout_key

    return [holdout_key(r) for r in records]


def _configs(records: Sequence[dict[str, Any]]) -> list[Any]:
    """Each record's config, by which a Report's ranking metrics take one row per config of a problem (its
    median): `kt costmodel eval` did, `kt inspect` counted a database's repeats of a config as configs."""
    return [r.get("config_key") for r in records]


def _rows_of(records: Sequence[dict[str, Any]], ids: set[int]) -> np.ndarray:
    """Which of `records` (by identity) are among `ids`."""
    return np.array([id(r) in ids for r in records])


def _tuner_report(result: InspectResult) -> None:
    from kt.costmodel.evaluate import Report
    from kt.costmodel.evaluate import targets as measured_arrays

    stored = [r for r in result.records if r.get("predicted_ms")]
    if not stored:
        result.notes.append("no row carries the tuner's prediction (predicted_ms)")
        return
    runtime, _, groups = measured_arrays(stored)
    predicted = np.array([r["predicted_ms"] for r in stored], dtype=np.float64)
    # a database of several tunes holds a config's repeats, each with the prediction of its own tune
    result.tuner = Report(runtime, predicted, groups, held=_held(stored), configs=_configs(stored))
    if len(stored) < len(result.records):
        result.notes.append(f"{len(result.records) - len(stored)} rows carry no tuner prediction")


def _forest_report(
    result: InspectResult,
    profile: DeviceProfile | None,
    training: list[dict[str, Any]],
    model_path: str | os.PathLike | None,
    seed: int,
) -> None:
    from kt.costmodel.evaluate import Report, assign_folds, holdout_key, unseen
    from kt.costmodel.evaluate import targets as measured_arrays
    from kt.costmodel.forest import MIN_ROWS, ForestModel

    records = result.records
    gemm = np.array([r["family"] == "gemm" for r in records])
    if not gemm.any():
        families = ", ".join(sorted({r["family"] for r in records}))
        result.notes.append(
            f"no forest: the forests learn single GEMM launches, and these rows time whole {families} ops "
            "(the tuner's prediction is its launches' predictions summed)"
        )
        return
    if not gemm.all():
        result.notes.append(
            f"the forest scores the {int(gemm.sum())} GEMM rows; the {int((~gemm).sum())} rows of structured ops "
            "time whole ops (the tuner's predictions cover them)"
        )
        records = [r for r, g in zip(records, gemm) if g]
    runtime, power, groups = measured_arrays(records)
    if model_path is not None:
        model = ForestModel.load(model_path, profile, stand_in=True)  # as a tune uses it (H100 for H200)
        if model.device.key != result.target:
            raise ModelError(
                f"model: {str(model_path)!r} was fitted for device {model.device.key}, and these rows were "
                f"tuned for {result.target}; fit one for it with `kt costmodel fit --device`"
            )
        scored, dropped_rows, dropped_shapes = unseen(model, records, repr(str(model_path)))
        if not scored:
            raise ModelError(
                f"model: {str(model_path)!r}: every row's shape was in the model's training data "
                f"({counted(dropped_rows, 'row')} of {counted(dropped_shapes, 'shape')}); evaluate it on other shapes"
            )
        scored_ids = {id(r) for r in scored}
        keep = np.array([id(r) in scored_ids for r in records]) if dropped_rows else None
        if keep is not None:
            runtime, power = runtime[keep], power[keep]
            groups = [g for g, k in zip(groups, keep) if k]
        prediction = model.predict(scored)
        result.forest = Report(
            runtime,
            prediction.runtime_s * 1e3,
            groups,
            power,
            prediction.power_w,
            held=_held(scored),
            configs=_configs(scored),
        )
        result.forest.dropped_rows, result.forest.dropped_shapes = dropped_rows, dropped_shapes
        result.forest_rows = (
            _rows_of(result.records, scored_ids) if keep is not None or not gemm.all() else None
        )
        result.forest_from = f"model file {model_path} ({model.describe()})"
        if dropped_rows:
            result.notes.append(
                f"the model file was fitted on {dropped_shapes} of these shapes: their {counted(dropped_rows, 'row')} are "
                f"left out of its scores ({len(scored)} rows scored)"
            )
        result.importances = model.feature_importances()
        return
    if profile is None:
        result.notes.append(
            f"no forest: target {result.target} is not a built-in profile; pass its JSON with --device, or "
            "a model with --model"
        )
        return
    inspected = {holdout_key(r) for r in records}
    pool = records + [r for r in training if holdout_key(r) not in inspected]
    fold_of = assign_folds(inspected, 5, seed)
    folds = max(fold_of.values()) + 1
    predicted = np.full(len(records), np.nan)
    predicted_power = np.full(len(records), np.nan)
    importances: list[dict[str, dict[str, float]]] = []
    for f in range(folds):
        train = [r for r in pool if fold_of.get(holdout_key(r)) != f]
        test = [i for i, r in enumerate(records) if fold_of[holdout_key(r)] == f]
        if len(train) < MIN_ROWS:
            result.notes.append(
                f"no forest: {len(train)} measured rows of other shapes ({MIN_ROWS} needed to fit one that "
                "never saw the inspected shape); pass --model MODEL.skops"
            )
            return
        try:
            model = ForestModel(profile, seed=seed).fit(train)
        except ValueError as exc:
            raise ModelError(
                f"inspect: fitting a forest on {len(train)} rows: {' '.join(str(exc).split())}"
            ) from None
        prediction = model.predict([records[i] for i in test])
        predicted[test] = prediction.runtime_s * 1e3
        if prediction.power_w is not None:
            predicted_power[test] = prediction.power_w
        importances.append(model.feature_importances())
    result.forest = Report(
        runtime,
        predicted,
        groups,
        power,
        predicted_power,
        folds=folds if folds > 1 else None,
        held=_held(records),
        configs=_configs(records),
    )
    result.forest_rows = None if gemm.all() else gemm
    result.forest_from = (
        f"a forest fitted on {len(pool) - len(records)} rows of other shapes, this shape held out"
        if folds == 1
        else f"forests fitted in {folds} folds, each predicting shapes it never saw"
    )
    for label in ("runtime", "power"):
        per_fold = [imp[label] for imp in importances if label in imp]
        if per_fold:
            mean = {name: float(np.mean([p[name] for p in per_fold])) for name in per_fold[0]}
            result.importances[label] = dict(sorted(mean.items(), key=lambda item: -item[1]))


# -- plots ------------------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pareto_front(runtime: np.ndarray, power: np.ndarray) -> np.ndarray:
    """True where no other point is at least as fast and as frugal, and strictly better in one."""
    runtime, power = np.asarray(runtime, dtype=np.float64), np.asarray(power, dtype=np.float64)
    no_worse = (runtime[None, :] <= runtime[:, None]) & (power[None, :] <= power[:, None])
    better = (runtime[None, :] < runtime[:, None]) | (power[None, :] < power[:, None])
    return ~np.any(no_worse & better, axis=1)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    """Write the PNG next to `path`, then rename it over `path`: a reader sees the old plot or the new one."""
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120), binary=True)
    return path


def tuner_label(model: str | None) -> str:
    """The plot's legend entry for the tuner's stored predictions. The model's description runs to a line or
    more (the shipped forest's names its rows, shapes and stand-in): whole, it pushed the axes into a corner."""
    shown = textwrap.shorten(model or "ranking model", 48, placeholder=" ...")
    return f"tuner's prediction at selection\n({shown})"


def write_plots(result: InspectResult, directory: Path) -> list[Path]:
    """predicted_vs_measured.png, and pareto.png when any row has a power reading; returns their paths."""
    from kt.costmodel.evaluate import targets as measured_arrays

    first, last = result.dates
    records = result.records
    runtime, power, groups = measured_arrays(records)
    chosen = np.array([r["config_key"] == result.chosen for r in records]) if result.chosen else None
    when = (
        "no measurement dates recorded"
        if first == "?"
        else f"measured {first}"
        if first == last
        else f"measured {first} to {last}"
    )  # as the CLI says it ("measured ? to ?" where no row records its date: kt import inductor's)
    where = f"{result.gpu} (target {result.target})\n{when}"

    figure = _figure()
    ax = figure.add_subplot()
    shown = []
    series = []  # (label, marker, measured, predicted, chosen)
    if result.tuner is not None:
        label = tuner_label(result.tuner_model)
        stored = np.array([bool(r.get("predicted_ms")) for r in records])  # the rows _tuner_report kept
        picked = chosen[stored] if chosen is not None else None
        series.append((label, "o", result.tuner.runtime_ms, result.tuner.predicted_ms, picked))
    if result.forest is not None:
        scored = result.forest_rows
        picked = chosen if chosen is None or scored is None else chosen[scored]
        series.append(("forest", "s", result.forest.runtime_ms, result.forest.predicted_ms, picked))
    for label, marker, measured, predicted, _ in series:
        ax.scatter(measured, predicted, s=18, alpha=0.7, marker=marker, label=label)
        shown += [measured, predicted]
    marked = [(m[c], p[c]) for _, _, m, p, c in series if c is not None and c.any()]
    if marked:
        x, y = marked[-1]
        ax.scatter(x, y, s=140, facecolors="none", edgecolors="black", label="chosen config")
    values = np.concatenate(shown)
    low, high = values[values > 0].min() / 1.3, values.max() * 1.3
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x (exact)")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high))
    ax.set_xlabel("measured runtime (ms)")
    ax.set_ylabel("predicted runtime (ms)")
    ax.set_title(
        f"predicted vs measured: {_count(len(records), 'row')} of {_count(result.shapes, 'problem')}\n{where}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    result.plots = [_save(figure, directory / PLOT_NAMES[0])]

    has_power = np.isfinite(power) & (power > 0)
    if not has_power.any():
        # an earlier run's, of other rows, stayed beside the new plot (the artifact is the default folder)
        stale = directory / PLOT_NAMES[1]
        if stale.is_file():
            stale.unlink()
            result.notes.append(
                "no row has a power reading, so no pareto.png (an earlier one there was removed)"
            )
        else:
            result.notes.append("no row has a power reading, so no pareto.png")
        return result.plots
    figure = _figure()
    ax = figure.add_subplot()
    on_front = np.zeros(len(records), dtype=bool)
    for group in set(groups):
        rows = np.flatnonzero(np.array([g == group for g in groups]) & has_power)
        front = rows[pareto_front(runtime[rows], power[rows])]
        on_front[front] = True
        if len(front) > 1:
            order = front[np.argsort(runtime[front])]
            ax.plot(runtime[order], power[order], color="tab:red", linewidth=1, drawstyle="steps-post")
    rest = has_power & ~on_front
    if rest.any():
        ax.scatter(runtime[rest], power[rest], s=18, color="tab:grey", alpha=0.6, label="measured")
    ax.scatter(runtime[on_front], power[on_front], s=26, color="tab:red", label="Pareto front")
    if chosen is not None and (chosen & has_power).any():
        pick = chosen & has_power
        ax.scatter(
            runtime[pick], power[pick], s=220, marker="*", color="gold", edgecolors="black", label="chosen"
        )
    if np.ptp(np.log10(runtime[has_power])) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("measured runtime (ms)")
    ax.set_ylabel("measured board power (W)")
    fronts = (
        "Pareto front per problem"
        if len(set(np.array(groups, dtype=object)[has_power])) > 1
        else "Pareto front"
    )
    ax.set_title(
        f"runtime vs power, {fronts}: {_count(int(has_power.sum()), 'row')} with power\n{where}", fontsize=10
    )
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    result.plots.append(_save(figure, directory / PLOT_NAMES[1]))
    return result.plots
