"""The learned cost model: random forests that predict runtime and power, with the spread across trees.

The runtime forest learns log(measured / roofline time): the roofline carries the shape's scale, so the forest
only has to learn how far a config falls short of it, which generalises to shapes it never saw far better than
raw time does. The power forest learns average board power in watts. Uncertainty is the standard deviation of
the trees' predictions.

Model files are written with `skops.io` (zip-deflated), never pickle, and loaded trusting only scikit-learn's tree
storage, whose node indices and value arrays are then checked (skops warns that a crafted file could make predict
read out of bounds). A file records the device profile, the feature list and the software versions it was fitted
with, and refuses to load into a setup that differs in any of them. It also lists the shapes it was trained on
(`trained["shape_keys"]`), so that evaluation can leave them out.

Two more things a model may carry. Rows measured on other GPUs (`fit(..., others=[(profile, records)])`) join
the training set with their features computed on their own profile: the features are device-normalised
(roofline terms, waves over the SM count, the MMA kind, the peak), so an A100's rows teach an H100 model the
shape of the problem. And a baseline forest (`fit(..., baseline=records)`) predicts the time of PyTorch's own path
for a problem (cuBLAS for a dense GEMM) from the problem alone, so that `kt predict` can say before tuning
whether kt is likely to win.

scikit-learn does not promise that a tree file carries across its versions. A file therefore holds a self-check:
a few records and the predictions the forest made for them when it was saved. Loaded under other scikit-learn or
numpy versions than it was fitted with, the model must reproduce them exactly, or it is refused.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kt.costmodel.features import (
    CONFIG_KEYS,
    FEATURE_NAMES,
    PROBLEM_FEATURE_NAMES,
    PROBLEM_KEYS,
    column,
    features,
    problem_features,
)
from kt.costmodel.prediction import Prediction
from kt.costmodel.roofline import roofline_time
from kt.cpus import usable_cpus
from kt.device import DeviceProfile
from kt.errors import ModelError, counted
from kt.files import atomic_write, cache_dir, model_file

if TYPE_CHECKING:  # scikit-learn (a second to import) only where a forest is fitted or loaded
    from sklearn.ensemble import RandomForestRegressor

FORMAT = "kt-costmodel"
FORMAT_VERSION = 2
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
LEAF = 3  # min_samples_leaf's default (ForestModel's docstring)


def min_rows(leaf: int) -> int:
    """The fewest rows a forest of leaves of at least `leaf` rows can split: a split leaves `leaf` rows on each
    side, and a tree's bootstrap sample holds no more distinct rows than there are. On fewer every tree is one
    leaf and the forest one constant (5 rows under leaf 3: 200 trees of one node each, all 200 unsplit)."""
    return 2 * leaf


MIN_ROWS = min_rows(LEAF)  # fewer measured rows than this fit no forest (of the default leaf size)
PAYLOAD_KEYS = (
    "device",
    "device_key",
    "features",
    "versions",
    "params",
    "trained",
    "runtime_forest",
    "power_forest",
    "baseline_forest",
    "self_check",
)
SELF_CHECK_ROWS = 8
THREADS = min(4, usable_cpus())  # the most threads a forest fits or predicts on
PARALLEL_ROWS = 2048  # per_tree splits the trees over threads from this many rows
CACHED_MODELS = 6  # quick-loading model payloads kept in kt's cache (`_trim_payloads`), 60 MB each shipped
PARALLEL_FIT_ROWS = 256  # fit_jobs: below this many rows joblib's threads cost more than they save


def library_versions() -> dict[str, str]:
    from kt import __version__

    return {
        "kt": __version__,
        **{name: metadata.version(name) for name in ("scikit-learn", "numpy", "skops")},
    }


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


class ForestModel:
    """`fit(records)` on measured records, `predict(records)` -> Prediction for any records on the device.

    A measured record is a feature record (see kt.costmodel.features) plus `runtime_ms` (required, > 0) and
    `power_w` (optional; the power forest fits on the records that have it). `group` (optional) names the
    problem a record belongs to, for the training summary; `shape` (optional, else `group`) the unit evaluation
    holds out, recorded as `trained["shape_keys"]` (sorted text) so that a model is never scored on them.

    `min_samples_leaf` 3 and `max_features` 0.5 are defaults kept from when they were chosen by scoring on
    GPPerf's file, so a figure with them on that file is optimistic (BENCHMARKS.md and gpperf_costmodel.py say
    so, and report beside it the figure of values chosen inside each training fold). The benchmarks choose
    both by cross-validation inside each training fold (benchmarks/costmodel_h100.py, gpperf_costmodel.py; what
    each fold chose is in BENCHMARKS.md), and the shipped models by cross-validation under a file-size cap
    (benchmarks/ship_costmodels.py).
    """

    name = "forest"

    def __init__(
        self,
        device: DeviceProfile,
        n_estimators: int = 200,
        min_samples_leaf: int = LEAF,
        max_features: float = 0.5,
        seed: int = 0,
        n_jobs: int | None = None,
    ):
        self.device = device
        self.params = {
            "n_estimators": n_estimators,
            "min_samples_leaf": min_samples_leaf,
            "max_features": max_features,
            "random_state": seed % 2**32,  # a replay adds to the seed (seed + repeat + round): kept in range
        }
        self.n_jobs = n_jobs if n_jobs is not None else THREADS
        self.runtime_forest: RandomForestRegressor | None = None
        self.power_forest: RandomForestRegressor | None = None
        self.baseline_forest: RandomForestRegressor | None = None
        self.trained: dict[str, Any] = {}
        # set when a model fitted for one device predicts for another of its family (an H200 through the H100's
        # forest): the profile it was fitted on; `device` is then the one whose roofline it predicts with
        self.fitted_device: DeviceProfile | None = None
        self.self_check: dict[str, Any] = {}
        self.versions = library_versions()

    @property
    def fitted(self) -> bool:
        return self.runtime_forest is not None

    @property
    def predicts_power(self) -> bool:
        return self.power_forest is not None and self._power_carries()

    def _power_carries(self) -> bool:
        """Whether the power forest predicts for `device`: its own card's, or a card standing in with the same
        known board power limit. Standing in for another (the H100 SXM's forest, rows drawing up to 690 W, for
        the 350 W H100 PCIe) it predicted watts the board cannot draw, and a power cap then held every config
        over it."""
        fitted = self.fitted_device
        return fitted is None or (fitted.tdp_w > 0 and fitted.tdp_w == self.device.tdp_w)

    def _forest(self) -> RandomForestRegressor:
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(**self.params, n_jobs=1 if _daemon() else self.n_jobs)

    def fit(
        self,
        records: Sequence[dict[str, Any]],
        source: str | None = None,
        others: Sequence[tuple[DeviceProfile, Sequence[dict[str, Any]]]] = (),
        baseline: Sequence[dict[str, Any]] = (),
    ) -> ForestModel:
        """Fit on `records` measured on this model's device; `others`: (profile, records) measured on other GPUs,
        featurised on their own profile; `baseline`: problem records with the `runtime_ms` of PyTorch's own path
        on this device. Each forest needs `min_rows(min_samples_leaf)` rows (MIN_ROWS for the default leaf) to
        split at all: the power and baseline forests are left out below it, and fewer rows in all are refused."""
        sets = [(self.device, records), *others]
        for _, rows in sets:
            _check_runtimes(rows)
        total = sum(len(rows) for _, rows in sets)
        leaf = self.params["min_samples_leaf"]
        need = min_rows(leaf)
        if total < need:
            raise ValueError(
                f"the forest needs at least {need} measured records, got {total}: a tree splits only into leaves "
                f"of {leaf} rows or more, so on fewer every tree is one leaf and the forest predicts one constant"
            )
        x = np.vstack([features(rows, profile) for profile, rows in sets if rows])
        target = np.concatenate([_log_over_roofline(rows, profile) for profile, rows in sets if rows])
        self.runtime_forest = self._forest().fit(x, target)
        # power is this GPU's alone: another card draws other watts for the same work
        power = column(records, "power_w")
        has_power = np.isfinite(power) & (power > 0)
        own = x[: len(records)]
        self.power_forest = (
            self._forest().fit(own[has_power], power[has_power]) if has_power.sum() >= need else None
        )
        self.baseline_forest = None
        if baseline:
            _check_runtimes(baseline)
            if len(baseline) >= need:
                self.baseline_forest = self._forest().fit(
                    problem_features(baseline, self.device), _log_over_roofline(baseline, self.device)
                )
        self.trained = {
            "rows": len(records),
            "power_rows": int(has_power.sum()),
            "problems": len({r.get("group") for r in records})
            if all("group" in r for r in records)
            else None,
            "shapes": len(shape_keys(records)) or None,
            "families": sorted({r["family"] for r in records}),
            "dtypes": sorted({r["dtype"] for r in records}),
            # float32's precisions (tf32 runs on tensor cores, ieee does not): a forest of tf32 rows alone
            # predicted ieee ones far off without a word
            "precisions": sorted({r.get("precision") or "ieee" for r in records if r["dtype"] == "float32"}),
            "shape_keys": shape_keys([r for _, rows in sets for r in rows]),
            "other_devices": [{"device": p.key, "rows": len(rows)} for p, rows in others],
            "baseline_rows": len(baseline) if self.baseline_forest is not None else 0,
            # the values of the launch-order and split axes it saw (unseen_configs names configs beyond them)
            "config_values": {
                key: sorted({int(r[key]) for _, rows in sets for r in rows}) for key in SEEN_AXES
            },
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
        }
        self.self_check = self._self_check_rows(list(records) or [r for _, rows in others for r in rows])
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError("model: the forest is not fitted; call fit(records) or load a model file")

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        self._require_fitted()
        if len(records) == 0:
            empty = np.zeros(0)
            return Prediction(
                empty, empty, empty if self.predicts_power else None, empty if self.predicts_power else None
            )
        x = features(records, self.device)
        trees = per_tree(self.runtime_forest, x)
        roof = roofline_time(records, self.device)
        runtime = roof * np.exp(trees.mean(axis=0))
        power = spread = None
        if self.predicts_power:
            per_tree_power = per_tree(self.power_forest, x)
            power, spread = per_tree_power.mean(axis=0), per_tree_power.std(axis=0)
        return Prediction(runtime, trees.std(axis=0), power, spread)

    @property
    def predicts_baseline(self) -> bool:
        return self.baseline_forest is not None

    def predict_baseline(self, records: Sequence[dict[str, Any]]) -> Prediction:
        """The predicted time of PyTorch's own path (cuBLAS for a dense GEMM) for each problem record, with the
        spread across trees; ModelError when this model has no baseline forest."""
        self._require_fitted()
        if self.baseline_forest is None:
            raise ModelError(
                "model: this forest has no baseline forest (it was fitted without baseline rows)"
            )
        if len(records) == 0:
            return Prediction(np.zeros(0), np.zeros(0))
        trees = per_tree(self.baseline_forest, problem_features(records, self.device))
        return Prediction(roofline_time(records, self.device) * np.exp(trees.mean(axis=0)), trees.std(axis=0))

    def feature_importances(self) -> dict[str, dict[str, float]]:
        """Impurity importances of each feature, per forest (runtime, and power when fitted), largest first."""
        self._require_fitted()
        out = {}
        for label, forest in (("runtime", self.runtime_forest), ("power", self.power_forest)):
            if forest is not None:
                pairs = sorted(zip(FEATURE_NAMES, forest.feature_importances_), key=lambda p: -p[1])
                out[label] = {name: float(value) for name, value in pairs}
        return out

    def unseen(self, record: dict[str, Any] | None = None) -> str | None:
        """What of a problem (its record: family, dtype) and of the device it predicts for this forest never
        saw in training, as one line; None when it saw them all. Without a record, the device alone (`kt costmodel
        eval --model`, scoring a stand-in on another card's rows)."""
        t = self.trained
        record = record if record is not None else {}
        new = []
        if self.fitted_device is not None:
            new.append(f"device {self.device.key} (fitted for {self.fitted_device.key}, predicting with "
                       f"{self.device.key}'s own roofline)")  # fmt: skip
        families, dtypes = (t.get("families") or [], t.get("dtypes") or []) if record else ([], [])
        if families and record.get("family") not in families:
            new.append(
                f"kernel family {record.get('family')} (it learned {', '.join(families)}; a structured op is "
                "predicted launch by launch as the GEMMs it runs)"
            )
        if dtypes and record.get("dtype") not in dtypes:
            new.append(f"dtype {record.get('dtype')} (it learned {', '.join(dtypes)})")
        # (a file fitted before kt recorded them holds none: not known, not said)
        precisions = (t.get("precisions") or []) if record else []
        precision = record.get("precision") or "ieee"
        if record.get("dtype") == "float32" and precisions and precision not in precisions:
            new.append(f"float32 precision {precision} (it learned {', '.join(precisions)})")
        if not new:
            return None
        return f"the cost model never saw this {'; '.join(new)}: its predictions here are extrapolations"

    def seen_values(self) -> dict[str, list[int]]:
        """The values of SEEN_AXES in the training rows; for a file fitted before kt recorded them, those of its
        origin where that is known: PyTorch Inductor's mm template (kt's shipped files) never splits K and
        launches in groups of 8 (kt.autotune.inductor)."""
        recorded = self.trained.get("config_values")
        if isinstance(recorded, dict):
            return {key: list(recorded.get(key) or []) for key in SEEN_AXES}
        if "Inductor" in str(self.trained.get("origin") or ""):
            return {"split_k": [1], "group_m": [8]}
        return {}

    def unseen_configs(self, records: Sequence[dict[str, Any]]) -> str | None:
        """How many of `records` (candidate configs) have a split or launch order the forest never saw in
        training, as one line (its predictions for them extrapolate); None when it saw them all."""
        seen = self.seen_values()
        parts = []
        for key, values in seen.items():
            if values:
                beyond = sum(1 for r in records if int(r.get(key, values[0])) not in values)
                if beyond:
                    parts.append(f"{key} other than {', '.join(map(str, values))} ({beyond})")
        if not parts:
            return None
        return (
            f"the forest never saw {' or '.join(parts)} of these {len(records)} configs: it extrapolates "
            "there (BENCHMARKS.md, 'The shipped forest on kt's own GPU rows')"
        )

    def describe(self) -> str:
        t = self.trained
        shapes = f", {t['shapes']} shape{'s' if t['shapes'] != 1 else ''}" if t.get("shapes") else ""
        if t.get("problems") and t.get("shapes") and t["problems"] != t["shapes"]:
            shapes = f", {counted(t['problems'], 'problem')} of {counted(t['shapes'], 'shape')}"
        power = (
            f", power from {t['power_rows']} rows{_few_split(self.power_forest)}"
            if self.predicts_power
            else ", no power"
        )
        if self.power_forest is not None and not self.predicts_power:
            limits = " and ".join(
                f"{p.tdp_w:g} W" if p.tdp_w > 0 else "unknown" for p in (self.fitted_device, self.device)
            )
            power = (
                f", no power for {self.device.key} (its power forest is {self.fitted_device.key}'s: board limits "
                f"{limits})"
            )
        elif not self.predicts_power and t.get("power_rows"):
            # read, but too few to fit (the fit said nothing)
            need = min_rows(self.params["min_samples_leaf"])
            power = f", no power (read in {counted(t['power_rows'], 'row')}; a power forest needs {need})"
        elif not self.predicts_power and not t.get("origin"):
            # fitted on rows of its own (not kt's shipped files, whose logs have no power column), none with a
            # reading: `kt predict` blamed the lack of public power data
            power = ", no power (none of its rows holds a power reading)"
        others = "".join(f", plus {o['rows']} rows of {o['device']}" for o in t.get("other_devices") or ())
        where = (
            f"forest for {self.fitted_device.key} predicting {self.device.key} with its own roofline"
            if self.fitted_device is not None
            else f"forest for {self.device.key}"
        )
        return f"{where}: {t.get('rows', 0)} rows{_few_split(self.runtime_forest)}{shapes}{others}{power}"

    @property
    def origin(self) -> str | None:
        """Where the training rows came from: what kt's shipped models record of it, else the data file a
        `kt costmodel fit` read (its `source`); None for a model that records neither."""
        if self.trained.get("origin"):
            return self.trained["origin"]
        return f"the rows of {self.trained['source']}" if self.trained.get("source") else None

    def _self_check_rows(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        keep = [{k: r[k] for k in (*PROBLEM_KEYS, *CONFIG_KEYS)} for r in records[:SELF_CHECK_ROWS]]
        x = features(keep, self.device)
        check = {"records": keep, "runtime": self.runtime_forest.predict(x).tolist()}
        if self.power_forest is not None:  # (a power forest's trees went unchecked: -5 W loaded under drift)
            check["power"] = self.power_forest.predict(x).tolist()
        if self.baseline_forest is not None:
            check["baseline"] = self.baseline_forest.predict(problem_features(keep, self.device)).tolist()
        return check

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to `path` (a .skops file) atomically: the old file or the new one, never half."""
        import skops.io

        self._require_fitted()
        if (
            self.fitted_device is not None
        ):  # its file would name the borrowed card, whose features fail its check
            raise ModelError(
                f"a forest fitted for {self.fitted_device.key} and loaded to predict {self.device.key} "
                "(stand_in) is not saved again: its own file is the one to keep"
            )
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "device": self.device.to_dict(),
            "device_key": self.device.key,
            "features": list(FEATURE_NAMES),
            "versions": self.versions,
            "params": self.params,
            "trained": {k: v for k, v in self.trained.items() if v is not None},
            "runtime_forest": self.runtime_forest,
            "power_forest": self.power_forest,
            "baseline_forest": self.baseline_forest,
            "self_check": self.self_check,
        }
        data = skops.io.dumps(payload, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        atomic_write(path, lambda handle: handle.write(data), binary=True, sync=True)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: DeviceProfile | None = None, stand_in: bool = False
    ) -> ForestModel:
        """Load a model file; with `device`, refuse one fitted for another device profile, unless `stand_in`:
        then a model of the same architecture (compute capability) predicts for `device` with `device`'s own
        profile (its roofline, SMs and peaks), and says so in `describe()`."""
        path = model_file(path)
        where = f"model: {str(path)!r}"
        data = path.read_bytes()
        payload = _cached_payload(data)
        if payload is None:
            import skops.io  # a second or more to import: only for a model not in the cache

            try:
                untrusted = set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES)
            except Exception as exc:  # noqa: BLE001 - anything skops cannot parse is not a model file
                raise ModelError(f"{where} is not a skops file ({type(exc).__name__}: {exc})") from None
            if untrusted:
                raise ModelError(f"{where} holds types kt does not load: {', '.join(sorted(untrusted))}")
            try:
                with warnings.catch_warnings():
                    # scikit-learn warns of every estimator another version of it wrote ("might lead to breaking
                    # code or invalid results"): kt's self-check answers that below, by predicting the rows the
                    # file was saved with, and refuses a model that does not reproduce them
                    from sklearn.exceptions import InconsistentVersionWarning

                    warnings.simplefilter("ignore", InconsistentVersionWarning)
                    payload = skops.io.loads(data, trusted=TRUSTED_TYPES)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
            _cache_payload(data, payload)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelError(f"{where} is not a kt cost model")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{where} has format {payload.get('format_version')}, this kt reads {FORMAT_VERSION}; refit it "
                "with `kt costmodel fit`"
            )
        missing = [key for key in PAYLOAD_KEYS if key not in payload]
        if missing:
            raise ModelError(f"{where} is malformed (no {', '.join(missing)})")
        mangled = [
            key for key in ("device", "versions", "params", "trained") if not isinstance(payload[key], dict)
        ]
        if mangled:
            raise ModelError(f"{where} is malformed ({', '.join(mangled)} not a mapping)")
        not_text = [f"versions.{k}" for k, v in payload["versions"].items() if not isinstance(v, str)]
        if not isinstance(payload["device_key"], str):
            not_text.insert(0, "device_key")
        if not_text:
            raise ModelError(f"{where} is malformed ({', '.join(not_text)} not text)")
        shapes = payload["trained"].get("shape_keys", [])
        if not isinstance(shapes, list) or not all(isinstance(key, str) for key in shapes):
            raise ModelError(f"{where} is malformed (trained.shape_keys not a list of text)")
        if payload["features"] != list(FEATURE_NAMES):
            raise ModelError(
                f"{where} was fitted on other features than this kt computes; refit it with `kt costmodel fit`"
            )
        here = library_versions()
        drift = [
            f"{lib} {payload['versions'].get(lib, '?')} (this setup has {here[lib]})"
            for lib in ("scikit-learn", "numpy")
            if _minor(payload["versions"].get(lib, "?")) != _minor(here[lib])
        ]
        try:
            profile = DeviceProfile.from_dict(payload["device"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{where} has a malformed device profile ({exc})") from None
        if profile.key != payload["device_key"]:
            raise ModelError(
                f"{where} is malformed (its device profile's key is {profile.key}, its device_key "
                f"{payload['device_key']}); refit it with `kt costmodel fit`"
            )
        borrowed = device is not None and device.key != payload["device_key"]
        if borrowed and stand_in and device.compute_capability != profile.compute_capability:
            raise ModelError(
                f"{where} was fitted for {payload['device_key']} (sm_{profile.compute_capability}), which cannot "
                f"stand in for {device.key} (sm_{device.compute_capability})"
            )
        if borrowed and not stand_in:
            raise ModelError(
                f"{where} was fitted for device {payload['device_key']}, not {device.key}; fit one for "
                f"{device.key} with `kt costmodel fit --device {device.name}`"
            )
        try:
            model = cls(
                profile, **{k.replace("random_state", "seed"): v for k, v in payload["params"].items()}
            )
        except TypeError as exc:
            raise ModelError(f"{where} has malformed forest parameters ({exc})") from None
        model.runtime_forest, model.power_forest = payload["runtime_forest"], payload["power_forest"]
        model.baseline_forest = payload["baseline_forest"]
        from sklearn.ensemble import RandomForestRegressor  # loaded with the file's trees

        for forest in (model.runtime_forest, model.power_forest, model.baseline_forest):
            if isinstance(
                forest, RandomForestRegressor
            ):  # its own predict runs only the self-check's few rows
                forest.n_jobs = (
                    1  # (`per_tree` predicts the rest): no thread pool, nor joblib's daemon warning
                )
        model.trained, model.versions = payload["trained"], payload["versions"]
        model.self_check = payload["self_check"] if isinstance(payload["self_check"], dict) else {}
        for forest in (model.runtime_forest, model.power_forest):
            if forest is not None:
                _check_forest(forest, where, len(FEATURE_NAMES))
        if model.baseline_forest is not None:
            _check_forest(model.baseline_forest, where, len(PROBLEM_FEATURE_NAMES))
        # always: a file whose self-check was emptied loaded unchecked, its trees edited or not
        model._verify_self_check(where, drift)
        if borrowed:
            model.device, model.fitted_device = device, profile
        return model

    def _verify_self_check(self, where: str, drift: list[str]) -> None:
        """The forests must still predict what they predicted when saved (to the last bit that matters), else the
        file is refused: under other library versions (tree files do not always carry across), and under a kt
        whose features compute otherwise than the one that fitted it (the names alone are checked above)."""
        check = self.self_check
        fail = ModelError(
            f"{where} was fitted with {', '.join(drift)} and does not reproduce its saved predictions here; "
            "refit it with `kt costmodel fit` (tree files do not always carry across versions)"
            if drift
            else f"{where} does not reproduce its saved predictions from the features this kt computes (a kt "
            "whose features differ fitted it); refit it with `kt costmodel fit`"
        )
        try:
            records = check["records"]
            x = features(records, self.device)
            same = np.allclose(self.runtime_forest.predict(x), check["runtime"], rtol=0, atol=1e-9)
            if self.baseline_forest is not None:
                baseline = self.baseline_forest.predict(problem_features(records, self.device))
                same = same and np.allclose(baseline, check["baseline"], rtol=0, atol=1e-9)
            if self.power_forest is not None and ("power" in check or drift):  # (files before it held none)
                power = self.power_forest.predict(x)
                same = same and np.allclose(power, check["power"], rtol=0, atol=1e-9)
        except Exception:  # noqa: BLE001 - a check that cannot even run is a failed check
            raise fail from None
        if not records or not same:
            raise fail


SEEN_AXES = ("split_k", "group_m")  # config axes a training set may never vary (Inductor's: 1 and 8)


def shape_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The held-out units (`shape`, else `group`) of `records`, as sorted text: what a model file lists as
    trained on, and what kt.costmodel.evaluate.holdout_key gives (as text) for a record."""
    keys = {record.get("shape", record.get("group")) for record in records}
    return sorted(str(key) for key in keys if key is not None)


def _few_split(forest: RandomForestRegressor | None) -> str:
    """' (only N of T trees split them: ...)' when at most half of `forest`'s trees split their rows at all,
    else "". A tree of one leaf predicts one value for every config, and on a handful of rows most are: on 6 rows
    under leaf 3, 3 of 200 trees split (on 8 of GPPerf's RTX 4070 rows 81, on 12 197)."""
    trees = getattr(forest, "estimators_", None) or []
    split = sum(tree.tree_.node_count > 1 for tree in trees)
    if not trees or 2 * split > len(trees):
        return ""
    if not split:  # too few rows, or one target value for all (a power forest of one wattage)
        return f" (none of its {len(trees)} trees splits them: it predicts one value for every config)"
    return f" (only {split} of {len(trees)} trees split them: the rest predict one value for every config)"


def _number(value: Any) -> float:
    """`value` as a float, NaN when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return np.nan
    return float(value)


def fit_jobs(rows: int) -> int:
    """`n_jobs` for fitting a forest on `rows` rows: THREADS, one below PARALLEL_FIT_ROWS (48 trees
    on 100 rows fit in 65 ms on one thread and 88 ms on two, on a 2-core machine; on 400 rows, 150 and 113 ms).
    A fit's trees are the same for any `n_jobs`: each tree's seed is drawn before they are built. One in a
    daemon process too (`_daemon`)."""
    return 1 if rows < PARALLEL_FIT_ROWS or _daemon() else THREADS


def _daemon() -> bool:
    """Whether this is a daemon process (a DataLoader worker), where joblib runs one job and warns
    ("Loky-backed parallel loops cannot be called in a multiprocessing, setting n_jobs=1") to the user's
    output, once per op a worker selects a kernel for."""
    import multiprocessing

    return multiprocessing.current_process().daemon


def per_tree(forest: RandomForestRegressor, x: np.ndarray) -> np.ndarray:
    """(trees, rows) predictions: their mean is the forest's prediction, their spread its uncertainty.

    The same values as each tree's own `predict(x)`, faster: `x` becomes the trees' float32 once (the first tree
    checks it; the others skip the check that would convert it again, 48 times at 18k rows), and above
    PARALLEL_ROWS rows the trees are split over THREADS threads, which run at once because a tree's
    traversal releases the GIL (a guided search predicts every candidate after every round)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    trees = forest.estimators_
    first = trees[0].predict(x)
    threads = min(THREADS, len(trees) - 1) if len(x) >= PARALLEL_ROWS else 1
    if threads <= 1:
        return np.stack([first] + [tree.predict(x, check_input=False) for tree in trees[1:]])
    rest = trees[1:]
    bounds = np.linspace(0, len(rest), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(
            lambda span: [tree.predict(x, check_input=False) for tree in rest[span[0] : span[1]]],
            zip(bounds[:-1], bounds[1:]),
        )
        return np.stack([first] + [row for part in parts for row in part])


def _check_runtimes(records: Sequence[dict[str, Any]]) -> None:
    runtime = np.array([_number(r.get("runtime_ms")) for r in records], dtype=np.float64)
    good = np.isfinite(runtime) & (runtime > 0)
    if not np.all(good):
        bad = int(np.argmin(good))
        raise ValueError(
            f"record {bad}: runtime_ms must be a positive number, got {records[bad].get('runtime_ms')!r}"
        )


def _log_over_roofline(records: Sequence[dict[str, Any]], device: DeviceProfile) -> np.ndarray:
    """The forests' target: log(measured / roofline time on `device`)."""
    return np.log(column(records, "runtime_ms", 1e-3) / roofline_time(records, device))


def _check_forest(forest: Any, where: str, n_features: int) -> None:
    """Refuse a forest whose trees index outside themselves or the feature list, or loop.

    scikit-learn numbers a node after its parent, so every child index is larger than its parent's; a file
    where one is not could send predict round a cycle forever.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.tree import DecisionTreeRegressor

    if not isinstance(forest, RandomForestRegressor) or not getattr(forest, "estimators_", None):
        raise ModelError(f"{where} does not hold a fitted random forest")
    if getattr(forest, "n_outputs_", None) != 1:
        raise ModelError(
            f"{where} holds a forest with {getattr(forest, 'n_outputs_', '?')} outputs; kt's have 1"
        )
    if forest.n_features_in_ != n_features:
        raise ModelError(f"{where} expects {forest.n_features_in_} features, kt computes {n_features}")
    for tree in forest.estimators_:
        if not isinstance(tree, DecisionTreeRegressor):
            raise ModelError(f"{where} holds a {type(tree).__name__} where a decision tree belongs")
        t = tree.tree_
        n = t.node_count
        if getattr(tree, "n_outputs_", None) != 1 or t.n_outputs != 1 or t.value.shape != (n, 1, 1):
            raise ModelError(
                f"{where} holds a tree whose values have shape {t.value.shape}, not ({n}, 1, 1): one output "
                "per node"
            )
        left, right, node = t.children_left, t.children_right, np.arange(n)
        leaf = left == -1
        if (
            n < 1
            or np.any(right[leaf] != -1)
            or np.any(left[~leaf] <= node[~leaf])
            or np.any(right[~leaf] <= node[~leaf])
            or np.any(left >= n)
            or np.any(right >= n)
            or np.any(t.feature[~leaf] < 0)
            or np.any(t.feature[~leaf] >= n_features)
        ):
            raise ModelError(f"{where} holds a tree with node or feature indices out of range")


def _payload_cache(data: bytes) -> Path:
    """Where the payload of the model file `data` is cached: named by the file's SHA-256 and the versions the
    pickle depends on (scikit-learn, numpy, Python), so a changed file or library never reads a stale one."""
    import hashlib
    import sys

    versions = library_versions()
    tag = f"{versions['scikit-learn']}-{versions['numpy']}-py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_dir() / "models" / f"{hashlib.sha256(data).hexdigest()[:32]}-{tag}.pickle"


def _cached_payload(data: bytes) -> dict[str, Any] | None:
    """The payload skops read from `data` before (kt's own pickle of it, in kt's cache folder: 0.02 s where
    skops takes 1.5 s for a shipped forest), or None. A cache file that cannot be read is ignored."""
    import pickle

    path = _payload_cache(data)
    try:
        with open(path, "rb") as handle:
            payload = pickle.load(handle)  # noqa: S301 - written by kt, from a skops file checked as above
    except Exception:  # noqa: BLE001 - missing, partial (another process), or from another setup: read afresh
        return None
    with contextlib.suppress(OSError):  # the most recently used: the last `_trim_payloads` removes
        os.utime(path)
    return payload if isinstance(payload, dict) else None


def _cache_payload(data: bytes, payload: dict[str, Any]) -> None:
    """Keep a checked payload for the next load; a cache that cannot be written (read-only home) is skipped."""
    import pickle

    path = _payload_cache(data)
    with contextlib.suppress(OSError):
        atomic_write(path, lambda handle: pickle.dump(payload, handle, protocol=5), binary=True)
        _trim_payloads(path.parent)


def _trim_payloads(folder: Path) -> None:
    """Remove all but the CACHED_MODELS most recently used payloads in `folder`: each is tens of MB, and every
    model file fitted, and every new scikit-learn, numpy or Python, added one for good."""
    found = []
    for path in folder.glob("*.pickle"):
        with contextlib.suppress(OSError):  # removed meanwhile by another process's trim
            found.append((path.stat().st_mtime_ns, path))
    for _, path in sorted(found, reverse=True)[CACHED_MODELS:]:
        with contextlib.suppress(OSError):  # an open reader keeps its copy (POSIX) or refuses (Windows)
            path.unlink()
