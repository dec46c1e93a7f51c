"""kt's cost models against the classic ones on real H100 measurements of Triton matmul configs, held out by shape.

Data: PyTorch Inductor's max-autotune logs (`../shared/data/autoheuristic`, from AlnisM/autoheuristic-datasets;
read its README): every config of Inductor's Triton `mm` template (the same kernel structure as kt's dense
template) timed on each problem, with cuBLAS beside it. kt measured none of it; the files stay outside kt.

Scored on `h100_mm.txt.gz` (322 problems, 82 shapes over fp16/bf16/fp32 and four layouts) in 5 folds of whole
shapes: every problem of a shape, whatever its dtype and layout, is held out together. Each fold's training set is
the other folds' shapes plus every row of `h100_timm_train_mm.txt.gz` (912 timm training problems; no shape in
common with h100_mm, which the script checks). Side by side, all scored on the same held-out rows:

- kt forest: `ForestModel` with `min_samples_leaf` and `max_features` chosen by a 3-fold cross-validation over
  whole shapes *inside each training set* (score: squared error of log runtime), never on the held-out fold;
- plain forest: a random forest (scikit-learn's defaults, as many trees) on the raw sizes, tiles, dtype and
  layouts plus log2(M * N * K), predicting log runtime (what anyone would try first), trained on the same rows, and again on the h100_mm training folds alone (the timm rows' huge
  M and fp16-only problems throw raw sizes off);
- kt analytic: `AnalyticModel`, the device profile alone;
- classic Triton: `ClassicTritonModel`, the `estimate_matmul_time` model Triton shipped until 3.0, re-derived;
- most common best: always rank configs by how often they were the fastest in training (a floor).

Metrics per model: MAPE and median APE of runtime, Spearman within a problem (mean over problems of the rank
correlation among its ~29 configs), top-1 (geometric mean over problems of best measured time / measured time of
the model's pick), its worst problem, and top-5 recall. The baseline forest (cuBLAS's time from the problem alone)
is scored on the held-out problems too, with how often it calls the winner (kt's predicted best vs cuBLAS) right.

Transfer (`--transfer`): fit on every A100 row plus 0, 10 and 50 H100 shapes drawn at random (from h100_mm), and
score on the other h100_mm shapes; the same H100 shapes alone for comparison. Hyperparameters there are fixed in
advance (min_samples_leaf 3, max_features 0.5), not chosen on any of this data.

    python benchmarks/costmodel_h100.py --data ../shared/data/autoheuristic [--transfer] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from kt.autotune.dataset import baseline_record, is_baseline, is_measured, to_record
from kt.autotune.figures import check_outputs, command_line
from kt.autotune.inductor import read_logs
from kt.autotune.versions import software_versions
from kt.costmodel.classic import ClassicTritonModel, MostCommonBestModel
from kt.costmodel.evaluate import ape, assign_folds, pick_ratios, spearman_within, top1_score, topk_recall
from kt.costmodel.forest import ForestModel
from kt.costmodel.roofline import AnalyticModel
from kt.device import A100, H100
from kt.files import atomic_write_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "autoheuristic"
LEAVES = (1, 3, 8)
MAX_FEATURES = (0.33, 0.66, 1.0)
INNER_FOLDS = 3
INNER_TREES = 40
FIXED = {"min_samples_leaf": 3, "max_features": 0.5}  # the transfer curve's, set before looking at this data
RAW = (
    "m",
    "n",
    "k",
    "block_m",
    "block_n",
    "block_k",
    "num_stages",
    "num_warps",
    "itemsize",
    "a_col",
    "b_col",
)


def load(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(config records, cuBLAS records) of the logs at `paths`, through `kt import inductor`'s reader."""
    rows = read_logs(paths).rows()
    measured = [to_record(r, "inductor") for r in rows if is_measured(r)]
    baseline = [baseline_record(r, "inductor") for r in rows if is_baseline(r)]
    return measured, baseline


def metrics(true: np.ndarray, pred: np.ndarray, groups: list) -> dict[str, float]:
    errors = ape(true, pred)
    index = defaultdict(list)
    for i, g in enumerate(groups):
        index[g].append(i)
    picks = pick_ratios(true, pred, groups)
    return {
        "mape": float(errors.mean()),
        "median_ape": float(np.median(errors)),
        "spearman": spearman_within(true, pred, groups),
        "top1": top1_score(true, pred, groups),
        "top1_worst": float(min(picks)),
        "top5": topk_recall(true, pred, groups, 5),
        "problems": len(index),
    }


def runtimes(records: list[dict]) -> np.ndarray:
    return np.array([r["runtime_ms"] for r in records])


def raw_features(records: list[dict]) -> np.ndarray:
    """log2 sizes and tiles, stages, warps, bytes per element, layouts, tf32, and log2(M * N * K): without the
    last, a forest on raw sizes cannot tell a held-out shape's scale (its MAPE is then in the hundreds)."""
    cols = [[float(r[k]) for k in RAW] + [float(r.get("precision") == "tf32")] for r in records]
    x = np.array(cols)
    x[:, :6] = np.log2(x[:, :6])
    return np.column_stack([x, x[:, 0] + x[:, 1] + x[:, 2]])


def plain_forest(train: list[dict], test: list[dict], trees: int, seed: int) -> np.ndarray:
    forest = RandomForestRegressor(trees, random_state=seed, n_jobs=-1)
    forest.fit(raw_features(train), np.log(runtimes(train)))
    return np.exp(forest.predict(raw_features(test)))


def choose_params(train: list[dict], seed: int) -> dict:
    """min_samples_leaf and max_features by cross-validation over whole shapes within `train` only."""
    fold_of = assign_folds({r["shape"] for r in train}, INNER_FOLDS, seed + 1)
    fold = np.array([fold_of[r["shape"]] for r in train])
    truth = np.log(runtimes(train))
    scores = {}
    for leaf in LEAVES:
        for mf in MAX_FEATURES:
            err = 0.0
            for f in range(INNER_FOLDS):
                fit = [train[i] for i in np.flatnonzero(fold != f)]
                held = np.flatnonzero(fold == f)
                model = ForestModel(H100, INNER_TREES, leaf, mf, seed).fit(fit)
                err += float(
                    np.sum(
                        (np.log(model.predict([train[i] for i in held]).runtime_s * 1e3) - truth[held]) ** 2
                    )
                )
            scores[(leaf, mf)] = err / len(train)
    leaf, mf = min(scores, key=scores.get)
    return {"min_samples_leaf": leaf, "max_features": mf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the autoheuristic folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trees", type=int, default=100, help="trees of each model the figures come from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", action="store_true", help="also the A100 -> H100 transfer curve")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args(argv)
    if args.folds < 2 or args.trees < 1:  # 0 folds divided by zero, -1 printed a table of nan
        parser.error(f"--folds must be 2 or more and --trees 1 or more (got {args.folds} and {args.trees})")
    check_outputs(parser, {"--json": args.json}, [])
    files = {
        name: args.data / f"{name}.txt.gz"
        for name in ("h100_mm", "h100_timm_train_mm", "a100_mm", "a100_timm_train_mm")
    }
    missing = [
        str(p) for name, p in files.items() if not p.is_file() and (args.transfer or name.startswith("h100"))
    ]
    if missing:
        print(
            f"data not found: {', '.join(missing)} (see ../shared/data/autoheuristic/README.md)",
            file=sys.stderr,
        )
        return 2
    start = time.monotonic()
    scored, scored_base = load([files["h100_mm"]])
    extra, extra_base = load([files["h100_timm_train_mm"]])
    common = {r["shape"] for r in scored} & {r["shape"] for r in extra}
    if common:
        print(f"h100_mm and h100_timm share {len(common)} shapes; refusing to score", file=sys.stderr)
        return 1
    print(
        f"H100: {len(scored)} timed configs of {len({r['group'] for r in scored})} problems "
        f"({len({r['shape'] for r in scored})} shapes) scored; {len(extra)} timm rows of "
        f"{len({r['group'] for r in extra})} problems in every training set (loaded in {time.monotonic() - start:.0f} s)",
        flush=True,
    )
    fold_of = assign_folds({r["shape"] for r in scored}, args.folds, args.seed)
    fold = np.array([fold_of[r["shape"]] for r in scored])
    base_fold = np.array([fold_of.get(r["shape"], -1) for r in scored_base])
    names = (
        "kt forest",
        "plain forest",
        "plain forest, h100_mm only",
        "kt analytic",
        "classic Triton",
        "most common best",
    )
    pred = {name: np.zeros(len(scored)) for name in names}
    base_pred = np.full(len(scored_base), np.nan)
    chosen = []
    for f in range(args.folds):
        t0 = time.monotonic()
        train = [scored[i] for i in np.flatnonzero(fold != f)] + extra
        test_i = np.flatnonzero(fold == f)
        test = [scored[i] for i in test_i]
        params = choose_params(train, args.seed)
        chosen.append(params)
        base_train = [scored_base[i] for i in np.flatnonzero(base_fold != f)] + extra_base
        forest = ForestModel(H100, args.trees, seed=args.seed, **params).fit(train, baseline=base_train)
        pred["kt forest"][test_i] = forest.predict(test).runtime_s * 1e3
        pred["plain forest"][test_i] = plain_forest(train, test, args.trees, args.seed)
        alone = [scored[i] for i in np.flatnonzero(fold != f)]
        pred["plain forest, h100_mm only"][test_i] = plain_forest(alone, test, args.trees, args.seed)
        pred["kt analytic"][test_i] = AnalyticModel(H100).predict(test).runtime_s * 1e3
        pred["classic Triton"][test_i] = ClassicTritonModel(H100).predict(test).runtime_s * 1e3
        pred["most common best"][test_i] = MostCommonBestModel().fit(train).predict(test).runtime_s * 1e3
        held_base = np.flatnonzero(base_fold == f)
        base_pred[held_base] = forest.predict_baseline([scored_base[i] for i in held_base]).runtime_s * 1e3
        print(f"fold {f + 1}/{args.folds}: chose {params}, {time.monotonic() - t0:.0f} s", flush=True)

    true, groups = runtimes(scored), [r["group"] for r in scored]
    results = {name: metrics(true, pred[name], groups) for name in names}
    print()
    print(
        "| model | MAPE | median APE | Spearman within problem | top-1 (geo. mean) | top-1 worst problem | top-5 recall |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        m = results[name]
        mape = "-" if name == "most common best" else f"{m['mape']:.1f}%"
        median = "-" if name == "most common best" else f"{m['median_ape']:.1f}%"
        print(
            f"| {name} | {mape} | {median} | {m['spearman']:.3f} | {m['top1']:.4f} | {m['top1_worst']:.3f} | "
            f"{m['top5']:.2f} |"
        )
    print(f"({results['kt forest']['problems']} problems; hyperparameters chosen per fold: {chosen})")

    # the baseline forest: cuBLAS's time, and whether kt's predicted best beats it
    cublas = runtimes(scored_base)
    keep = np.isfinite(base_pred)
    errors = ape(cublas[keep], base_pred[keep])
    best_measured, best_predicted = {}, {}
    for i, r in enumerate(scored):
        g = r["group"]
        best_measured[g] = min(best_measured.get(g, np.inf), true[i])
        if pred["kt forest"][i] < best_predicted.get(g, (np.inf, 0))[0]:
            best_predicted[g] = (pred["kt forest"][i], true[i])
    calls = []
    for i in np.flatnonzero(keep):
        g = scored_base[i]["group"]
        if g in best_predicted:
            predicted_win = base_pred[i] > best_predicted[g][0]
            measured_win = cublas[i] > best_predicted[g][1]  # the pick, as measured, against cuBLAS
            calls.append(predicted_win == measured_win)
    results["cublas forest"] = {
        "mape": float(errors.mean()),
        "median_ape": float(np.median(errors)),
        "worst_ape": float(errors.max()),
        "problems": int(keep.sum()),
        "winner_called_right": float(np.mean(calls)),
    }
    c = results["cublas forest"]
    print(
        f"\ncuBLAS forest (held out the same way): MAPE {c['mape']:.1f}%, median APE {c['median_ape']:.1f}%, "
        f"worst {c['worst_ape']:.0f}% over {c['problems']} problems; it calls whether kt's predicted best beats "
        f"cuBLAS right on {100 * c['winner_called_right']:.0f}% of them"
    )

    if args.transfer:
        results["transfer"] = transfer(scored, files, args)
    print(f"\ntotal {time.monotonic() - start:.0f} s")
    if args.json:
        # what made the figures, for the file that stores them (ship_costmodels.py named 5 folds and 100 trees
        # whatever they were)
        settings = {
            "folds": args.folds,
            "trees": args.trees,
            "seed": args.seed,
            "command": command_line("benchmarks/costmodel_h100.py", argv),
            "date": datetime.now(timezone.utc).date().isoformat(),
            "kt_version": software_versions()["kt"],
        }
        figures = {"settings": settings, "chosen": chosen, "results": results}
        atomic_write_text(args.json, json.dumps(figures, indent=1, default=str) + "\n")
    return 0


def transfer(scored: list[dict], files: dict[str, Path], args) -> list[dict]:
    """Fit on the A100 rows plus n H100 shapes, score on the other H100 shapes; also the H100 shapes alone."""
    t0 = time.monotonic()
    a100, _ = load([files["a100_mm"], files["a100_timm_train_mm"]])
    print(
        f"\nA100: {len(a100)} timed configs of {len({r['group'] for r in a100})} problems ({time.monotonic() - t0:.0f} s)"
    )
    shapes = sorted({r["shape"] for r in scored})
    order = [shapes[i] for i in np.random.default_rng(args.seed).permutation(len(shapes))]
    rows = []
    print(
        "| H100 shapes in training | A100 + H100: MAPE | Spearman | top-1 | H100 alone: MAPE | Spearman | top-1 | scored problems |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in (0, 10, 50):
        seen = set(order[:n])
        train = [r for r in scored if r["shape"] in seen]
        test = [r for r in scored if r["shape"] not in seen]
        true, groups = runtimes(test), [r["group"] for r in test]
        both = ForestModel(H100, args.trees, seed=args.seed, **FIXED).fit(train, others=[(A100, a100)])
        m_both = metrics(true, both.predict(test).runtime_s * 1e3, groups)
        m_alone = None
        if n:
            alone = ForestModel(H100, args.trees, seed=args.seed, **FIXED).fit(train)
            m_alone = metrics(true, alone.predict(test).runtime_s * 1e3, groups)
        alone_cells = (
            f"{m_alone['mape']:.1f}% | {m_alone['spearman']:.3f} | {m_alone['top1']:.4f}"
            if m_alone
            else "- | - | -"
        )
        print(
            f"| {n} | {m_both['mape']:.1f}% | {m_both['spearman']:.3f} | {m_both['top1']:.4f} | {alone_cells} | "
            f"{m_both['problems']} |",
            flush=True,
        )
        rows.append({"h100_shapes": n, "with_a100": m_both, "h100_alone": m_alone})
    return rows


if __name__ == "__main__":
    sys.exit(main())
