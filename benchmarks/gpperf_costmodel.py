"""kt's learned cost model on measurements nobody on this project made: GPPerf's CUTLASS SGEMM on an RTX 4070.

GPPerf (github.com/pavlyhalim/GPPerf, the code of "Understanding GEMM Performance and Energy on NVIDIA Ada
Lovelace") profiled CUTLASS SGEMM over 36 (M, N, K) shapes. Its flat CSV has 16,128 rows; most of its config
columns are labels that changed nothing: every row ran `cutlass_simt_sgemm_128x128_8x2_{layout}_align1`, and only
the layout letters in `kernel` and beta != 0 change the runtime (see the data's README). This script maps each row
to a kt record and measures how well kt's ForestModel predicts the runtimes of whole shapes it never saw.

What this file can show: regression across shapes (one kernel, many shapes). What it cannot: how well the model
ranks configs within a shape, which is the cost model's real job in a tune, because every row of a shape ran the
same kernel; so Spearman within problem, top-1 and top-5 are not reported here.

The forest's hyperparameters are chosen inside the training folds, never on the shapes reported (nested
cross-validation): in each outer fold of whole shapes held out, min_samples_leaf and max_features are chosen by an
inner cross-validation over whole shapes of the training folds only (score: mean squared error of log runtime,
which is the forest's target log(measured / roofline) shifted by a constant per row; the inner forests have fewer
trees to keep the run short), then a forest with kt's default tree count and the chosen values is fitted on all
the training folds and predicts the held-out shapes. kt's defaults are also scored, for comparison only: they were
chosen earlier on this same set, so their figure is optimistic. The data is read where it lies and never copied
into this repository (it has no license).

    python benchmarks/gpperf_costmodel.py --csv /work/shared/data/gpperf/cutlass_results_flat.csv

The last line holds the nested figures: R2, R2 on log runtime, mean and median APE, the worst held-out shape's
mean APE, rows, shapes, folds, and the (min_samples_leaf, max_features) each outer fold chose.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from kt.costmodel.evaluate import Report, ape, assign_folds, cross_validate, holdout_key, targets
from kt.costmodel.forest import ForestModel
from kt.device import DeviceProfile

_KIB, _MIB = 1024, 1024 * 1024

# NVIDIA GeForce RTX 4070 (AD104, compute capability 8.9), datasheet figures, not measured: 46 SMs, 5888 FP32
# lanes at 2475 MHz boost = 29.15 TFLOP/s fp32 without tensor cores; fourth-generation tensor cores, dense, with
# fp32 accumulation (what kt's kernels use; GeForce Ada runs it at half the fp16-accumulate rate): 58.3 TFLOP/s
# fp16 and bf16, 29.15 TFLOP/s tf32; 12 GB GDDR6X at 21 Gbps on 192 bits = 504.2 GB/s; 36 MiB L2; per SM 100 KiB
# shared memory (99 KiB per block), 65536 registers, 1536 threads, 24 blocks; 255 registers per thread; 200 W.
RTX4070 = DeviceProfile(
    name="rtx4070",
    gpu_name="NVIDIA GeForce RTX 4070",
    sm_count=46,
    smem_per_block=99 * _KIB,
    smem_per_sm=100 * _KIB,
    regs_per_sm=65536,
    max_regs_per_thread=255,
    max_threads_per_sm=1536,
    max_blocks_per_sm=24,
    l2_bytes=36 * _MIB,
    dram_bandwidth=504.2e9,
    peak_flops={"float16": 58.3e12, "bfloat16": 58.3e12, "tf32": 29.15e12, "float32": 29.15e12},
    tdp_w=200.0,
    compute_capability=89,
)

# The one kernel every row ran. Its name reads: SIMT (no tensor cores) fp32 GEMM, 128x128 threadblock tile, K
# step 8, 2 pipeline stages, then the layouts of A and B, then the alignment in elements.
KERNEL = re.compile(r"cutlass_simt_sgemm_128x128_8x2_([nt])([nt])_align1")
# That kernel as a kt config: 128x128 tiles, K step 8, 2 stages, 256 threads = 8 warps; CUTLASS visits tiles
# without kt's GROUP_M row grouping and never splits K.
CONFIG = {
    "block_m": 128,
    "block_n": 128,
    "block_k": 8,
    "group_m": 1,
    "num_warps": 8,
    "num_stages": 2,
    "split_k": 1,
}
# CUTLASS names a layout by BLAS's convention: `n` (not transposed) is column-major, `t` (transposed) row-major
# (cutlass_library/library.py: ShortLayoutTypeNames = {ColumnMajor: 'n', RowMajor: 't'}); the name's two letters
# are A's then B's (GemmOperation.layout_name). kt's a_col/b_col = 1 is an operand stored column-major, so `n`
# maps to 1. C is column-major in CUTLASS's SIMT instances and row-major in kt; every row shares that difference.
COLUMN_MAJOR = {"n": 1, "t": 0}
# Power readings under this are the idle card (README), not a GEMM.
MIN_POWER_W = 35.0
COLUMNS = {"M", "N", "K", "kernel", "beta", "runtime_ms", "power_w"}
# The paper's pipeline with whole shapes held out, as the data's README reproduces it.
PAPER = "runtime R2 0.35, mean APE 98.7%, median APE 52.7%"
TARGET_R2, TARGET_MAPE = 0.85, 20.0
# The hyperparameter grid the inner cross-validation chooses from.
LEAF_GRID = (1, 2, 3, 5, 10, 20)
FEATURES_GRID = (0.33, 0.5, 1.0)


class DataError(Exception):
    """The --csv file is not GPPerf's cutlass_results_flat.csv."""


def read_records(path: Path) -> list[dict]:
    """kt records of every row: the problem, the kernel's config, the measurement and its shape as `group`."""
    if not path.is_file():
        raise DataError(f"{str(path)!r} not found")
    records = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = COLUMNS - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{str(path)!r} is not GPPerf's cutlass_results_flat.csv (no {', '.join(sorted(missing))} column)"
            )
        for line, row in enumerate(reader, start=2):
            kernel = KERNEL.fullmatch(row["kernel"])
            if kernel is None:
                raise DataError(
                    f"{str(path)!r} line {line}: kernel {row['kernel']!r} is not {KERNEL.pattern}"
                )
            try:
                m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
                runtime_ms, beta = float(row["runtime_ms"]), float(row["beta"])
                power_w = float(row["power_w"]) if row["power_w"] else None
            except ValueError as exc:
                raise DataError(f"{str(path)!r} line {line}: {exc}") from None
            records.append(
                {
                    "family": "gemm",
                    "m": m,
                    "n": n,
                    "k": k,
                    "batch": 1,
                    "dtype": "float32",
                    "precision": "ieee",
                    "itemsize": 4,
                    "a_col": COLUMN_MAJOR[kernel.group(1)],
                    "b_col": COLUMN_MAJOR[kernel.group(2)],
                    "out_read": int(beta != 0),  # D = alpha * A @ B + beta * C reads C only when beta != 0
                    **CONFIG,
                    "runtime_ms": runtime_ms,
                    "power_w": power_w if power_w is not None and power_w >= MIN_POWER_W else None,
                    "group": (m, n, k),
                }
            )
    if not records:
        raise DataError(f"{str(path)!r} has no rows")
    return records


def log_squared_errors(model: ForestModel, records: list[dict]) -> np.ndarray:
    """Squared errors of log runtime of `model` on measured `records` (the forest's own target, up to a shift)."""
    predicted_ms = model.predict(records).runtime_s * 1e3
    measured_ms = np.array([r["runtime_ms"] for r in records], dtype=np.float64)
    return (np.log(predicted_ms) - np.log(measured_ms)) ** 2


def choose_params(
    records: list[dict],
    device: DeviceProfile,
    folds: int,
    seed: int,
    trees: int,
    grid: list[tuple[int, float]],
) -> tuple[tuple[int, float], dict[tuple[int, float], float]]:
    """The (min_samples_leaf, max_features) of `grid` with the least mean squared error of log runtime over an
    inner cross-validation of whole shapes of `records` (the training folds only), and every pair's score.
    Ties go to the pair listed first."""
    held = [holdout_key(r) for r in records]
    fold_of = assign_folds(set(held), folds, seed)
    fold = np.array([fold_of[h] for h in held])
    splits = [
        ([records[i] for i in np.flatnonzero(fold != f)], [records[i] for i in np.flatnonzero(fold == f)])
        for f in range(max(fold_of.values()) + 1)
    ]
    scores = {}
    for leaf, features in grid:
        errors = [
            log_squared_errors(
                ForestModel(
                    device, n_estimators=trees, min_samples_leaf=leaf, max_features=features, seed=seed
                ).fit(train),
                test,
            )
            for train, test in splits
        ]
        scores[(leaf, features)] = float(np.concatenate(errors).mean())
    best = min(grid, key=lambda pair: scores[pair])  # min keeps the first of equal scores
    return best, scores


def nested_cross_validate(
    records: list[dict],
    device: DeviceProfile,
    folds: int = 6,
    seed: int = 0,
    inner_folds: int = 5,
    inner_trees: int = 50,
    grid: list[tuple[int, float]] | None = None,
    progress=None,
) -> tuple[Report, list[dict]]:
    """Whole shapes held out as `cross_validate` deals them (same folds for the same seed), with the forest's
    hyperparameters chosen in each outer fold by `choose_params` on that fold's training shapes only. Returns the
    report over every row (each predicted by a forest that never saw its shape, tuned without it) and, per outer
    fold, the pair it chose, the inner scores and the fold's own metrics."""
    grid = grid or [(leaf, features) for leaf in LEAF_GRID for features in FEATURES_GRID]
    runtime, power, groups = targets(records)
    held = [holdout_key(r) for r in records]
    fold_of = assign_folds(set(held), folds, seed)
    fold = np.array([fold_of[h] for h in held])
    predicted = np.zeros(len(records))
    predicted_power = np.full(len(records), np.nan)
    chosen = []
    for f in range(max(fold_of.values()) + 1):
        started = time.monotonic()
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        train_records = [records[i] for i in train]
        (leaf, features), scores = choose_params(train_records, device, inner_folds, seed, inner_trees, grid)
        model = ForestModel(device, min_samples_leaf=leaf, max_features=features, seed=seed).fit(
            train_records
        )
        prediction = model.predict([records[i] for i in test])
        predicted[test] = prediction.runtime_s * 1e3
        if prediction.power_w is not None:
            predicted_power[test] = prediction.power_w
        fold_report = Report(runtime[test], predicted[test], [groups[i] for i in test])
        chosen.append(
            {
                "fold": f,
                "shapes": len({held[i] for i in test}),
                "rows": len(test),
                "min_samples_leaf": leaf,
                "max_features": features,
                "scores": scores,
                "metrics": fold_report.metrics,
                "log_mse": float(np.mean((np.log(predicted[test]) - np.log(runtime[test])) ** 2)),
                "seconds": time.monotonic() - started,
            }
        )
        if progress is not None:
            progress(chosen[-1])
    report = Report(runtime, predicted, groups, power, predicted_power, folds=len(chosen))
    return report, chosen


def shape_mape(report: Report) -> dict:
    """Each held-out shape's mean APE."""
    errors = ape(report.runtime_ms, report.predicted_ms)
    rows = defaultdict(list)
    for i, g in enumerate(report.groups):
        rows[g].append(errors[i])
    return {g: float(np.mean(e)) for g, e in rows.items()}


def worst_shapes(report, records: list[dict], count: int = 3) -> list[str]:
    """The shapes with the largest share of the squared error, with what was measured and predicted."""
    t, p = report.runtime_ms, report.predicted_ms
    total = np.sum((t - t.mean()) ** 2)
    rows = defaultdict(list)
    for i, g in enumerate(report.groups):
        rows[g].append(i)
    share = {g: np.sum((t[i] - p[i]) ** 2) / total for g, i in rows.items()}
    lines = []
    for g in sorted(share, key=share.get, reverse=True)[:count]:
        i = rows[g]
        busy = sum(records[j]["power_w"] is not None for j in i)
        lines.append(
            f"  {'x'.join(map(str, g))}: {100 * share[g]:.1f}% of the variance; measured median "
            f"{np.median(t[i]):.2f} ms, predicted median {np.median(p[i]):.2f} ms; {busy} of {len(i)} rows read "
            f">= {MIN_POWER_W:.0f} W after the profiler exited"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True, help="GPPerf's cutlass_results_flat.csv")
    parser.add_argument(
        "--folds", type=int, default=6, help="outer folds of whole (M, N, K) shapes (default 6)"
    )
    parser.add_argument(
        "--inner-folds",
        type=int,
        default=5,
        help="inner folds of whole shapes that choose the hyperparameters",
    )
    parser.add_argument(
        "--inner-trees",
        type=int,
        default=50,
        help="trees of each inner forest (default 50, to keep the run short)",
    )
    parser.add_argument("--seed", type=int, default=0, help="deals shapes to folds and seeds the forests")
    args = parser.parse_args()
    if args.folds < 2 or args.inner_folds < 2 or args.inner_trees < 1:
        print(
            f"gpperf_costmodel: --folds and --inner-folds must be at least 2 and --inner-trees at least 1, got "
            f"{args.folds}, {args.inner_folds}, {args.inner_trees}",
            file=sys.stderr,
        )
        return 2
    try:
        records = read_records(args.csv)
    except (DataError, OSError, UnicodeDecodeError) as exc:
        print(f"gpperf_costmodel: {exc}", file=sys.stderr)
        return 2

    shapes = len({r["group"] for r in records})
    power_rows = sum(r["power_w"] is not None for r in records)
    defaults = ForestModel(RTX4070).params
    print(f"GPPerf CUTLASS SGEMM on an RTX 4070 ({args.csv.name}): {len(records)} rows, {shapes} shapes")
    print(
        "every row: cutlass_simt_sgemm_128x128_8x2_{nn,nt,tn,tt}_align1 -> kt config 128x128 tiles, K step 8, "
        "8 warps, 2 stages; layouts from the kernel name, out_read from beta != 0"
    )
    print(
        "what this file measures: regression across shapes (one kernel per shape). Not the ranking of configs "
        "within a shape (the cost model's job in a tune): within a shape only the layout and beta vary, so "
        "Spearman within problem, top-1 and top-5 are not reported"
    )
    print(
        f"nested cross-validation, seed {args.seed}: {args.folds} outer folds of whole shapes held out; in each, "
        f"min_samples_leaf in {LEAF_GRID} x max_features in {FEATURES_GRID} chosen by {args.inner_folds}-fold "
        f"cross-validation over whole shapes of the training folds only ({args.inner_trees} trees each, least "
        f"mean squared error of log runtime), then {defaults['n_estimators']} trees with the chosen values fitted "
        f"on all the training folds"
    )

    def progress(fold):
        m = fold["metrics"]
        print(
            f"  outer fold {fold['fold']}: {fold['shapes']} shapes held out ({fold['rows']} rows), chose "
            f"min_samples_leaf {fold['min_samples_leaf']}, max_features {fold['max_features']} (inner log MSE "
            f"{fold['scores'][(fold['min_samples_leaf'], fold['max_features'])]:.5f}; kt's defaults "
            f"{fold['scores'].get((defaults['min_samples_leaf'], defaults['max_features']), float('nan')):.5f}); "
            f"held out: R2 {m['runtime_r2']:.3f}, log MSE {fold['log_mse']:.5f}, mean APE "
            f"{m['runtime_mape']:.1f}%, median APE {m['runtime_median_ape']:.1f}% ({fold['seconds']:.0f} s)",
            flush=True,
        )

    started = time.monotonic()
    report, chosen = nested_cross_validate(
        records,
        RTX4070,
        folds=args.folds,
        seed=args.seed,
        inner_folds=args.inner_folds,
        inner_trees=args.inner_trees,
        progress=progress,
    )
    elapsed = time.monotonic() - started
    m = report.metrics
    per_shape = shape_mape(report)
    worst_shape = max(per_shape, key=per_shape.get)
    worst_fold = min(chosen, key=lambda fold: fold["metrics"]["runtime_r2"])
    print(f"nested cross-validation: {elapsed:.1f} s")
    print(
        f"runtime, every row predicted by a forest tuned and fitted without its shape: R2 {m['runtime_r2']:.3f}, "
        f"R2 on log runtime {m['runtime_log_r2']:.3f}, mean APE {m['runtime_mape']:.1f}%, median APE "
        f"{m['runtime_median_ape']:.1f}%"
    )
    print(
        f"worst case: shape {'x'.join(map(str, worst_shape))} mean APE {per_shape[worst_shape]:.1f}%; outer fold "
        f"{worst_fold['fold']} R2 {worst_fold['metrics']['runtime_r2']:.3f}, mean APE "
        f"{max(fold['metrics']['runtime_mape'] for fold in chosen):.1f}% in the worst fold"
    )
    print("shapes with the largest squared errors:")
    for line in worst_shapes(report, records):
        print(line)

    measured_power = np.array([np.nan if r["power_w"] is None else r["power_w"] for r in records])
    have = np.isfinite(measured_power)
    constant = np.median(ape(measured_power[have], np.full(have.sum(), np.median(measured_power[have]))))
    if "power_median_ape" in m:
        print(
            f"power ({m['power_rows']} rows with a reading >= {MIN_POWER_W:.0f} W; the power forest takes the "
            f"runtime's chosen values): median APE {m['power_median_ape']:.1f}% (predicting their median for all: "
            f"{constant:.1f}%)"
        )
    else:
        print(f"power: no forest (only {power_rows} rows with a reading >= {MIN_POWER_W:.0f} W)")
    print(
        "  nvidia-smi read these after the profiler exited, not while the kernel ran: the power figure is of "
        "little worth"
    )

    started = time.monotonic()
    fixed = cross_validate(records, RTX4070, folds=args.folds, seed=args.seed).metrics
    print(
        f"for comparison only, kt's defaults (min_samples_leaf {defaults['min_samples_leaf']}, max_features "
        f"{defaults['max_features']}), chosen earlier by scoring on this same set, so optimistic: R2 "
        f"{fixed['runtime_r2']:.3f}, R2 on log runtime {fixed['runtime_log_r2']:.3f}, mean APE "
        f"{fixed['runtime_mape']:.1f}%, median APE {fixed['runtime_median_ape']:.1f}% ({time.monotonic() - started:.1f} s)"
    )
    met = m["runtime_r2"] >= TARGET_R2 and m["runtime_mape"] <= TARGET_MAPE
    print(f"the paper's pipeline with shapes held out (README): {PAPER}")
    print(
        f"target: R2 >= {TARGET_R2} and mean APE <= {TARGET_MAPE:.0f}% (nested figures): {'met' if met else 'NOT met'}"
    )
    picks = ", ".join(f"({fold['min_samples_leaf']}, {fold['max_features']})" for fold in chosen)
    print(
        f"R2 {m['runtime_r2']:.3f} | log R2 {m['runtime_log_r2']:.3f} | mean APE {m['runtime_mape']:.1f}% | "
        f"median APE {m['runtime_median_ape']:.1f}% | worst shape mean APE {per_shape[worst_shape]:.1f}% | "
        f"rows {m['rows']} | shapes {m['shapes']} | folds {report.folds} | (min_samples_leaf, max_features) per "
        f"fold {picks}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
