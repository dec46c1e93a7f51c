"""Fit the cost models kt ships (`kt/costmodel/models/h100.skops`, `a100.skops`) on real GPU measurements.

Source: PyTorch Inductor's max-autotune logs of its Triton `mm` template and cuBLAS (`../shared/data/autoheuristic`,
from the public repository AlnisM/autoheuristic-datasets; the logs state no license and stay outside kt: only the
fitted forests ship, with their source named in the file). Every H100 (A100) row of the shared files trains the H100
(A100) model: the runtime forest on the Triton configs, the baseline forest on cuBLAS (`extern_mm`).

Hyperparameters under the size cap (`--cap-mib`, 20): `min_samples_leaf` is chosen by a 3-fold cross-validation
over whole shapes (score: squared error of log runtime); then as many trees as fit under the cap (at most
`--max-trees`): a random forest only gains from more trees, so the cap sets their number. Bytes per node are
measured on a small fit, and the saved file is checked against the cap. `max_features` is 0.5.

The evaluation figures stored in each file: for the H100, those of benchmarks/costmodel_h100.py (`--figures`, its
`--json` output: shapes held out, hyperparameters chosen inside the training folds); for the A100, the 3-fold
cross-validation of the chosen leaf size (chosen on those same folds, so slightly optimistic; the file says so).

    python benchmarks/ship_costmodels.py --data ../shared/data/autoheuristic --figures h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kt.autotune.inductor import ORIGIN
from kt.costmodel.evaluate import assign_folds
from kt.costmodel.forest import ForestModel
from kt.costmodel.models import MODELS_DIR
from kt.device import A100, H100

sys.path.insert(0, str(Path(__file__).resolve().parent))
from costmodel_h100 import DATA, load, metrics, runtimes  # noqa: E402

FILES = {"h100": ("h100_mm", "h100_timm_train_mm"), "a100": ("a100_mm", "a100_timm_train_mm")}
PROFILES = {"h100": H100, "a100": A100}
LEAVES = (3, 8, 20)
CV_TREES = 30
MAX_FEATURES = 0.5


def node_bytes(model: ForestModel, path: Path) -> float:
    """Bytes of the saved file per tree node (runtime and baseline forests together)."""
    model.save(path)
    nodes = sum(
        t.tree_.node_count for f in (model.runtime_forest, model.baseline_forest) for t in f.estimators_
    )
    return path.stat().st_size / nodes


def cross_validate(records: list[dict], device, leaf: int, seed: int) -> np.ndarray:
    fold_of = assign_folds({r["shape"] for r in records}, 3, seed)
    fold = np.array([fold_of[r["shape"]] for r in records])
    pred = np.zeros(len(records))
    for f in range(3):
        held = np.flatnonzero(fold == f)
        model = ForestModel(device, CV_TREES, leaf, MAX_FEATURES, seed)
        model.fit([records[i] for i in np.flatnonzero(fold != f)])
        pred[held] = model.predict([records[i] for i in held]).runtime_s * 1e3
    return pred


def ship(key: str, args) -> Path:
    device = PROFILES[key]
    names = FILES[key]
    t0 = time.monotonic()
    records, baseline = load([args.data / f"{name}.txt.gz" for name in names])
    shapes = len({r["shape"] for r in records})
    print(
        f"{key}: {len(records)} timed configs, {len(baseline)} cuBLAS rows, {shapes} shapes ({time.monotonic() - t0:.0f} s)"
    )
    truth = np.log(runtimes(records))
    scores, preds = {}, {}
    for leaf in LEAVES:
        preds[leaf] = cross_validate(records, device, leaf, args.seed)
        scores[leaf] = float(np.mean((np.log(preds[leaf]) - truth) ** 2))
        print(f"  leaf {leaf}: 3-fold log-MSE {scores[leaf]:.4f}", flush=True)
    leaf = min(scores, key=scores.get)
    probe = ForestModel(device, 4, leaf, MAX_FEATURES, args.seed).fit(records, baseline=baseline)
    tmp = args.out / f".{key}.probe.skops"
    per_node = node_bytes(probe, tmp)
    tmp.unlink()
    nodes_per_tree = (
        sum(t.tree_.node_count for f in (probe.runtime_forest, probe.baseline_forest) for t in f.estimators_)
        / 4
    )
    cap = args.cap_mib * 2**20 * 0.9  # a margin for trees that grow larger than the probe's
    trees = int(min(args.max_trees, cap // (per_node * nodes_per_tree)))
    print(
        f"  chose leaf {leaf}; {per_node:.1f} bytes per node, {nodes_per_tree:.0f} nodes per tree -> {trees} trees"
    )
    origin = f"PyTorch Inductor max-autotune logs ({ORIGIN}: {', '.join(n + '.txt.gz' for n in names)})"
    model = ForestModel(device, trees, leaf, MAX_FEATURES, args.seed).fit(
        records, source=origin, baseline=baseline
    )
    if key == "h100" and args.figures:
        figures = json.loads(args.figures.read_text())
        evaluation = {
            "how": "benchmarks/costmodel_h100.py: h100_mm held out by shape in 5 folds, trained on the other folds "
            "plus h100_timm_train_mm, hyperparameters chosen inside the training folds",
            **{k: round(float(v), 4) for k, v in figures["results"]["kt forest"].items()},
            **{f"cublas_{k}": round(float(v), 4) for k, v in figures["results"]["cublas forest"].items()},
        }
    else:
        m = metrics(runtimes(records), preds[leaf], [r["group"] for r in records])
        evaluation = {
            "how": f"3-fold cross-validation over whole shapes with {CV_TREES} trees; the leaf size was chosen on "
            "these same folds (slightly optimistic)",
            **{k: round(float(v), 4) for k, v in m.items()},
        }
    model.trained["origin"] = origin
    model.trained["evaluation"] = evaluation
    model.trained["hyperparameters"] = {
        "how": f"min_samples_leaf by 3-fold CV over shapes among {list(LEAVES)}; trees: as many as fit under "
        f"{args.cap_mib} MiB (at most {args.max_trees})",
        "cv_log_mse": {str(k): round(v, 5) for k, v in scores.items()},
    }
    path = model.save(args.out / f"{key}.skops")
    size = path.stat().st_size / 2**20
    print(f"  wrote {path} ({size:.1f} MiB, {trees} trees, leaf {leaf}); {model.describe()}")
    if size > args.cap_mib:
        raise SystemExit(f"{path} is {size:.1f} MiB, over the {args.cap_mib} MiB cap")
    t1 = time.monotonic()
    ForestModel.load(path, device)
    print(f"  loads in {time.monotonic() - t1:.2f} s")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--figures", type=Path, default=None, help="costmodel_h100.py --json output")
    parser.add_argument("--only", choices=sorted(FILES), default=None)
    parser.add_argument("--cap-mib", type=float, default=20.0)
    parser.add_argument("--max-trees", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key in [args.only] if args.only else sorted(FILES, reverse=True):
        ship(key, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
