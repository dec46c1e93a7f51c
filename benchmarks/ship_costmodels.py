"""Fit the cost models kt ships (`kt/costmodel/models/h100.skops`, `a100.skops`) on real GPU measurements.

Source: PyTorch Inductor's max-autotune logs of its Triton `mm` template and cuBLAS (`../shared/data/autoheuristic`,
from the public repository AlnisM/autoheuristic-datasets; the logs state no license and stay outside kt: only the
fitted forests ship, with their source named in the file). Every H100 (A100) row of the shared files trains the H100
(A100) model: the runtime forest on the Triton configs, the baseline forest on cuBLAS (`extern_mm`).

Hyperparameters under the size cap (`--cap-mib`, 20): for each `min_samples_leaf` and `max_features` of a small
grid, the number of trees is as many as fit under the cap (at most `--max-trees`; bytes per tree measured on a
small fit of all the rows), and the combination is chosen by a 3-fold cross-validation over whole shapes at that
number of trees (score: squared error of log runtime). Smaller leaves make better trees but fewer fit: the
cross-validation decides. The saved file is checked against the cap.

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
LEAVES = (1, 3, 8)
MAX_FEATURES = (0.66, 1.0)


def tree_bytes(
    records: list[dict], baseline: list[dict], device, leaf: int, mf: float, seed: int, out: Path
) -> float:
    """Bytes one tree (with its share of the baseline forest) takes in a saved file: a 4-tree fit on every row."""
    probe = ForestModel(device, 4, leaf, mf, seed).fit(records, baseline=baseline)
    path = probe.save(out / f".probe-{leaf}-{mf}.skops")
    size = path.stat().st_size
    path.unlink()
    return size / 4


def cross_validate(records: list[dict], device, trees: int, leaf: int, mf: float, seed: int) -> np.ndarray:
    fold_of = assign_folds({r["shape"] for r in records}, 3, seed)
    fold = np.array([fold_of[r["shape"]] for r in records])
    pred = np.zeros(len(records))
    for f in range(3):
        held = np.flatnonzero(fold == f)
        model = ForestModel(device, trees, leaf, mf, seed)
        model.fit([records[i] for i in np.flatnonzero(fold != f)])
        pred[held] = model.predict([records[i] for i in held]).runtime_s * 1e3
    return pred


def held_out_h100(
    records: list[dict],
    names,
    trees: int,
    leaf: int,
    mf: float,
    args,
    folds: int = 5,
    fold_seed: int | None = None,
) -> dict:
    """The shipped configuration scored as benchmarks/costmodel_h100.py scores kt's forest: h100_mm's shapes
    held out in `folds` folds (the same folds: its --folds and --seed), trained on the other folds and every
    h100_timm row."""
    scored = [r for r in records if r["source_file"] == f"{names[0]}.txt.gz"]
    extra = [r for r in records if r["source_file"] != f"{names[0]}.txt.gz"]
    fold_of = assign_folds({r["shape"] for r in scored}, folds, args.seed if fold_seed is None else fold_seed)
    fold = np.array([fold_of[r["shape"]] for r in scored])
    pred = np.zeros(len(scored))
    for f in range(folds):
        held = np.flatnonzero(fold == f)
        model = ForestModel(PROFILES["h100"], trees, leaf, mf, args.seed)
        model.fit([scored[i] for i in np.flatnonzero(fold != f)] + extra)
        pred[held] = model.predict([scored[i] for i in held]).runtime_s * 1e3
    return metrics(runtimes(scored), pred, [r["group"] for r in scored])


def ship(key: str, args) -> Path:
    device = PROFILES[key]
    names = FILES[key]
    t0 = time.monotonic()
    records, baseline = [], []
    for name in names:
        rows, base = load([args.data / f"{name}.txt.gz"])
        records += [{**r, "source_file": f"{name}.txt.gz"} for r in rows]
        baseline += base
    shapes = len({r["shape"] for r in records})
    print(
        f"{key}: {len(records)} timed configs, {len(baseline)} cuBLAS rows, {shapes} shapes "
        f"({time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    truth = np.log(runtimes(records))
    cap = args.cap_mib * 2**20 * 0.95  # a margin: trees on all rows grow a little larger than the probe's
    scores, preds, sizes = {}, {}, {}
    for leaf in LEAVES:
        for mf in MAX_FEATURES:
            per_tree = tree_bytes(records, baseline, device, leaf, mf, args.seed, args.out)
            trees = int(min(args.max_trees, cap // per_tree))
            if trees < 4:
                print(f"  leaf {leaf}, max_features {mf}: only {trees} trees fit; skipped", flush=True)
                continue
            t1 = time.monotonic()
            pred = cross_validate(records, device, trees, leaf, mf, args.seed)
            scores[(leaf, mf)] = float(np.mean((np.log(pred) - truth) ** 2))
            preds[(leaf, mf)], sizes[(leaf, mf)] = pred, trees
            print(
                f"  leaf {leaf}, max_features {mf}: {trees} trees fit ({per_tree / 2**20:.2f} MiB each), 3-fold "
                f"log-MSE {scores[(leaf, mf)]:.4f} ({time.monotonic() - t1:.0f} s)",
                flush=True,
            )
    if not scores:  # min() of an empty grid was a traceback after the probe fits
        from kt.errors import KtError

        raise KtError(
            f"--cap-mib {args.cap_mib:g} / --max-trees {args.max_trees}: no combination of the grid fits 4 trees "
            "(see the lines above); give a larger --cap-mib or --max-trees"
        )
    leaf, mf = min(scores, key=scores.get)
    trees = sizes[(leaf, mf)]
    origin = f"PyTorch Inductor max-autotune logs ({ORIGIN}: {', '.join(n + '.txt.gz' for n in names)})"
    model = ForestModel(device, trees, leaf, mf, args.seed).fit(records, source=origin, baseline=baseline)
    if key == "h100" and args.figures:
        figures = args.figures_read
        made = figures.get("settings")  # what costmodel_h100.py ran with (absent from files before it said)
        ran = (
            f"in {made['folds']} folds, trained on the other folds plus h100_timm_train_mm, {made['trees']} trees, "
            f"seed {made['seed']}, hyperparameters chosen inside the training folds ({made['date']}, kt "
            f"{made['kt_version']}: `{made['command']}`)"
            if made
            else "trained on the other folds plus h100_timm_train_mm, hyperparameters chosen inside the training "
            "folds (its folds, trees and seed are not recorded in the figures file)"
        )
        evaluation = {
            "how": f"benchmarks/costmodel_h100.py: h100_mm held out by shape {ran}",
            **{k: round(float(v), 4) for k, v in figures["results"]["kt forest"].items()},
            **{f"cublas_{k}": round(float(v), 4) for k, v in figures["results"]["cublas forest"].items()},
        }
        folds = made["folds"] if made else 5
        shipped = held_out_h100(records, names, trees, leaf, mf, args, folds, made["seed"] if made else None)
        evaluation["shipped_configuration"] = {
            "how": f"the same {folds} folds with this file's {trees} trees, leaf {leaf}, max_features {mf} (chosen "
            "under the size cap on every row, so slightly optimistic)",
            **{k: round(float(v), 4) for k, v in shipped.items()},
        }
        print(f"  held out as in costmodel_h100.py with the shipped configuration: {shipped}", flush=True)
    else:
        m = metrics(runtimes(records), preds[(leaf, mf)], [r["group"] for r in records])
        evaluation = {
            "how": f"3-fold cross-validation over whole shapes with {trees} trees; the hyperparameters were chosen "
            "on these same folds (slightly optimistic)",
            **{k: round(float(v), 4) for k, v in m.items()},
        }
    model.trained["origin"] = origin
    model.trained["evaluation"] = evaluation
    model.trained["hyperparameters"] = {
        "how": f"min_samples_leaf in {list(LEAVES)} and max_features in {list(MAX_FEATURES)} by 3-fold CV over "
        f"shapes, each with as many trees as fit under {args.cap_mib} MiB (at most {args.max_trees})",
        "cv_log_mse": {
            f"leaf {k[0]}, max_features {k[1]}, {sizes[k]} trees": round(v, 5) for k, v in scores.items()
        },
    }
    path = model.save(args.out / f"{key}.skops")
    size = path.stat().st_size / 2**20
    print(
        f"  wrote {path} ({size:.1f} MiB, {trees} trees, leaf {leaf}, max_features {mf}); {model.describe()}"
    )
    if size > args.cap_mib:
        path.unlink()
        raise SystemExit(f"{path} was {size:.1f} MiB, over the {args.cap_mib} MiB cap; removed")
    t1 = time.monotonic()
    ForestModel.load(path, device)
    print(f"  loads in {time.monotonic() - t1:.2f} s", flush=True)
    return path


def read_figures(parser, path: Path) -> dict:
    """costmodel_h100.py's --json output, checked before the fits (a missing or malformed file was a traceback
    after minutes of them)."""
    try:
        figures = json.loads(path.read_text())
        results = figures["results"]
        for name in ("kt forest", "cublas forest"):
            {k: float(v) for k, v in results[name].items()}
    except OSError as exc:
        parser.error(f"--figures: {str(path)!r} cannot be read ({exc.strerror or exc})")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        parser.error(f"--figures: {str(path)!r} is not JSON ({exc})")
    except (KeyError, TypeError, AttributeError, ValueError):
        parser.error(
            f"--figures: {str(path)!r} is not costmodel_h100.py's --json output (no results of 'kt forest' and "
            "'cublas forest' with numeric figures)"
        )
    made = figures.get("settings")
    if made is not None and not (isinstance(made, dict) and set(SETTINGS) <= set(made)):
        parser.error(f"--figures: {str(path)!r}: settings must hold {', '.join(SETTINGS)}")
    return figures


SETTINGS = (
    "folds",
    "trees",
    "seed",
    "command",
    "date",
    "kt_version",
)  # what costmodel_h100.py's --json records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--out",
        type=Path,
        default=MODELS_DIR,
        help="folder to write h100.skops and a100.skops to (default: the shipped models folder, "
        "kt/costmodel/models/, whose files it overwrites)",
    )
    parser.add_argument("--figures", type=Path, default=None, help="costmodel_h100.py --json output")
    parser.add_argument("--only", choices=sorted(FILES), default=None)
    parser.add_argument(
        "--cap-mib", type=float, default=20.0, help="size cap of each file in MiB (default 20)"
    )
    parser.add_argument(
        "--max-trees", type=int, default=100, help="most trees per forest, 4 or more (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.cap_mib > 0:  # nan fails too
        parser.error(f"--cap-mib: {args.cap_mib}; give a size in MiB above 0")
    if args.max_trees < 4:  # a fit of fewer trees is skipped: every one was, then min() of nothing
        parser.error(f"--max-trees: {args.max_trees}; give 4 or more")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {str(args.out)!r} is not a folder")
    args.figures_read = read_figures(parser, args.figures) if args.figures is not None else None
    from kt.errors import KtError

    try:
        for key in [args.only] if args.only else sorted(FILES, reverse=True):
            ship(key, args)
    except KtError as exc:  # a missing or malformed log, a model that cannot be written: one line
        parser.exit(2, f"ship_costmodels: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
