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
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.tree import DecisionTreeRegressor

from kt.costmodel.features import FEATURE_NAMES, column, features
from kt.costmodel.prediction import Prediction
from kt.costmodel.roofline import roofline_time
from kt.device import DeviceProfile
from kt.errors import ModelError

FORMAT = "kt-costmodel"
FORMAT_VERSION = 1
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
MIN_ROWS = 4  # fewer measured rows than this fit no forest
MODEL_SUFFIX = ".skops"
PAYLOAD_KEYS = (
    "device",
    "device_key",
    "features",
    "versions",
    "params",
    "trained",
    "runtime_forest",
    "power_forest",
)


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

    `min_samples_leaf` defaults to 3: on GPPerf's measurements (benchmarks/gpperf_costmodel.py) it scores within
    0.01 R2 of 1, and its files are several times smaller.
    """

    name = "forest"

    def __init__(
        self,
        device: DeviceProfile,
        n_estimators: int = 200,
        min_samples_leaf: int = 3,
        max_features: float = 0.5,
        seed: int = 0,
        n_jobs: int | None = None,
    ):
        self.device = device
        self.params = {
            "n_estimators": n_estimators,
            "min_samples_leaf": min_samples_leaf,
            "max_features": max_features,
            "random_state": seed,
        }
        self.n_jobs = n_jobs if n_jobs is not None else min(4, os.cpu_count() or 1)
        self.runtime_forest: RandomForestRegressor | None = None
        self.power_forest: RandomForestRegressor | None = None
        self.trained: dict[str, Any] = {}
        self.versions = library_versions()

    @property
    def fitted(self) -> bool:
        return self.runtime_forest is not None

    @property
    def predicts_power(self) -> bool:
        return self.power_forest is not None

    def _forest(self) -> RandomForestRegressor:
        return RandomForestRegressor(**self.params, n_jobs=self.n_jobs)

    def fit(self, records: Sequence[dict[str, Any]], source: str | None = None) -> ForestModel:
        runtime = np.array([_number(r.get("runtime_ms")) for r in records], dtype=np.float64)
        good = np.isfinite(runtime) & (runtime > 0)
        if not np.all(good):
            bad = int(np.argmin(good))
            raise ValueError(
                f"record {bad}: runtime_ms must be a positive number, got {records[bad].get('runtime_ms')!r}"
            )
        if len(records) < MIN_ROWS:
            raise ValueError(f"the forest needs at least {MIN_ROWS} measured records, got {len(records)}")
        x = features(records, self.device)
        target = np.log(runtime * 1e-3 / roofline_time(records, self.device))
        self.runtime_forest = self._forest().fit(x, target)
        power = column(records, "power_w")
        has_power = np.isfinite(power) & (power > 0)
        self.power_forest = (
            self._forest().fit(x[has_power], power[has_power]) if has_power.sum() >= MIN_ROWS else None
        )
        self.trained = {
            "rows": len(records),
            "power_rows": int(has_power.sum()),
            "shapes": len({r.get("group") for r in records}) if all("group" in r for r in records) else None,
            "families": sorted({r["family"] for r in records}),
            "dtypes": sorted({r["dtype"] for r in records}),
            "shape_keys": shape_keys(records),
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
        }
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
        if self.power_forest is not None:
            per_tree_power = per_tree(self.power_forest, x)
            power, spread = per_tree_power.mean(axis=0), per_tree_power.std(axis=0)
        return Prediction(runtime, trees.std(axis=0), power, spread)

    def feature_importances(self) -> dict[str, dict[str, float]]:
        """Impurity importances of each feature, per forest (runtime, and power when fitted), largest first."""
        self._require_fitted()
        out = {}
        for label, forest in (("runtime", self.runtime_forest), ("power", self.power_forest)):
            if forest is not None:
                pairs = sorted(zip(FEATURE_NAMES, forest.feature_importances_), key=lambda p: -p[1])
                out[label] = {name: float(value) for name, value in pairs}
        return out

    def describe(self) -> str:
        t = self.trained
        shapes = f", {t['shapes']} shape{'s' if t['shapes'] != 1 else ''}" if t.get("shapes") else ""
        power = f", power from {t['power_rows']} rows" if self.predicts_power else ", no power"
        return f"forest for {self.device.key}: {t.get('rows', 0)} rows{shapes}{power}"

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to `path` (a .skops file) atomically: the old file or the new one, never half."""
        import skops.io

        self._require_fitted()
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
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        data = skops.io.dumps(payload, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a model is as readable as any new file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: DeviceProfile | None = None) -> ForestModel:
        """Load a model file; with `device`, refuse one fitted for another device profile."""
        import skops.io

        path = Path(path)
        where = f"model: {str(path)!r}"
        if path.is_dir():
            raise ModelError(f"{where} is a directory; give a model file written by `kt costmodel fit`")
        if not path.is_file():
            raise ModelError(f"{where} not found")
        data = path.read_bytes()
        if not data:
            raise ModelError(f"{where} is empty (0 bytes); give a model file written by `kt costmodel fit`")
        try:
            untrusted = set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES)
        except Exception as exc:  # noqa: BLE001 - anything skops cannot parse is not a model file
            raise ModelError(f"{where} is not a skops file ({type(exc).__name__}: {exc})") from None
        if untrusted:
            raise ModelError(f"{where} holds types kt does not load: {', '.join(sorted(untrusted))}")
        try:
            payload = skops.io.loads(data, trusted=TRUSTED_TYPES)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
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
        for lib in ("scikit-learn", "numpy"):
            theirs = payload["versions"].get(lib, "?")
            if _minor(theirs) != _minor(here[lib]):
                raise ModelError(
                    f"{where} was fitted with {lib} {theirs}, this setup has {here[lib]}; refit it with "
                    "`kt costmodel fit` (tree files do not carry across versions)"
                )
        try:
            profile = DeviceProfile.from_dict(payload["device"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{where} has a malformed device profile ({exc})") from None
        if profile.key != payload["device_key"]:
            raise ModelError(
                f"{where} is malformed (its device profile's key is {profile.key}, its device_key "
                f"{payload['device_key']}); refit it with `kt costmodel fit`"
            )
        if device is not None and device.key != payload["device_key"]:
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
        model.trained, model.versions = payload["trained"], payload["versions"]
        for forest in (model.runtime_forest, model.power_forest):
            if forest is not None:
                _check_forest(forest, where)
        return model


def shape_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The held-out units (`shape`, else `group`) of `records`, as sorted text: what a model file lists as
    trained on, and what kt.costmodel.evaluate.holdout_key gives (as text) for a record."""
    keys = {record.get("shape", record.get("group")) for record in records}
    return sorted(str(key) for key in keys if key is not None)


def _number(value: Any) -> float:
    """`value` as a float, NaN when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return np.nan
    return float(value)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def per_tree(forest: RandomForestRegressor, x: np.ndarray) -> np.ndarray:
    """(trees, rows) predictions: their mean is the forest's prediction, their spread its uncertainty."""
    return np.stack([tree.predict(x) for tree in forest.estimators_])


def _check_forest(forest: Any, where: str) -> None:
    """Refuse a forest whose trees index outside themselves or the feature list, or loop.

    scikit-learn numbers a node after its parent, so every child index is larger than its parent's; a file
    where one is not could send predict round a cycle forever.
    """
    if not isinstance(forest, RandomForestRegressor) or not getattr(forest, "estimators_", None):
        raise ModelError(f"{where} does not hold a fitted random forest")
    if getattr(forest, "n_outputs_", None) != 1:
        raise ModelError(
            f"{where} holds a forest with {getattr(forest, 'n_outputs_', '?')} outputs; kt's have 1"
        )
    if forest.n_features_in_ != len(FEATURE_NAMES):
        raise ModelError(
            f"{where} expects {forest.n_features_in_} features, kt computes {len(FEATURE_NAMES)}"
        )
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
            or np.any(t.feature[~leaf] >= len(FEATURE_NAMES))
        ):
            raise ModelError(f"{where} holds a tree with node or feature indices out of range")
