"""The cost models a tune ranks with, scored on kt's own GPU measurements (its generated GEMM kernels).

The published cost-model figures (BENCHMARKS.md, "Cost model: ranking Triton matmul configs") are measured on
PyTorch Inductor's logs: Inductor's template, Inductor's timer, configs that never split K and always launch in
groups of 8. A tune ranks kt's own kernels, with kt's timer, over a space where most configs split K or launch
otherwise. This script scores the models on the only rows of kt's kernels measured on a GPU: the `measurements.csv`
of each GPU session under benchmarks/results/ (the GEMM rows; structured ops time whole ops). Nothing is fitted
here: the shipped forest is scored as a tune uses it (the H100's file standing in for an H200, with the H200's
roofline), beside the analytic model, with the forest's bias by split_k (geometric mean of predicted / measured).

    python benchmarks/costmodel_kt_rows.py [--data benchmarks/results/h200-2026-11-30/measurements.csv]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "benchmarks" / "results" / "h200-2026-11-30" / "measurements.csv"


def score(data: Path) -> tuple[list[str], dict]:
    """The table's lines for `data`, and the figures (per model: metrics and bias by split_k)."""
    from kt.autotune.dataset import measured_records, read_rows
    from kt.costmodel.evaluate import Report, pick_ratios
    from kt.costmodel.forest import ForestModel
    from kt.costmodel.models import shipped_model_path
    from kt.costmodel.roofline import AnalyticModel
    from kt.device import get_profile

    targets = sorted({r["target"] for r in read_rows(data) if r.get("runner") == "cuda"})
    lines, figures = [], {}
    for target in targets:
        profile = get_profile(target)
        records = [r for r in measured_records(data, target=target) if r["family"] == "gemm"]
        if not records:
            continue
        measured = np.array([r["runtime_ms"] for r in records])
        groups = [r["group"] for r in records]
        splits = np.array([int(r["split_k"]) for r in records])
        models = {"analytic": AnalyticModel(profile)}
        shipped = shipped_model_path(profile)
        if shipped is not None:
            models["shipped forest"] = ForestModel.load(shipped, profile, stand_in=True)
        lines.append(
            f"{target}: {len(records)} GEMM rows of {len(set(groups))} problems "
            f"({', '.join(f'split_k {s}: {int((splits == s).sum())}' for s in sorted(set(splits)))})"
        )
        lines.append("")
        lines.append(
            "| model | MAPE | Spearman within problem | top-1 | top-1, worst problem | predicted / measured, "
            "by split_k (geometric mean) |"
        )
        lines.append("|---|---|---|---|---|---|")
        predictions = {name: model.predict(records).runtime_s * 1e3 for name, model in models.items()}
        if (
            "shipped forest" in models
        ):  # tried and not adopted (BENCHMARKS.md): split-K costed by the analytic model
            one = [{**r, "split_k": 1} for r in records]
            analytic = models["analytic"]
            ratio = predictions["analytic"] / (analytic.predict(one).runtime_s * 1e3)
            predictions["forest at split 1 x analytic split-K ratio"] = (
                models["shipped forest"].predict(one).runtime_s * 1e3 * ratio
            )
        for name, predicted in predictions.items():
            model = models.get(name)
            report = Report(measured, predicted, groups)
            m = {**report.metrics, "top1_worst": min(pick_ratios(measured, predicted, groups))}
            bias = {
                int(s): float(np.exp(np.mean(np.log(predicted[splits == s] / measured[splits == s]))))
                for s in sorted(set(splits))
            }
            figures[(target, name)] = {**m, "bias": bias}
            label = f"{name} ({model.describe()})" if hasattr(model, "describe") else name
            lines.append(
                f"| {label} | {m['runtime_mape']:.1f}% | {m['spearman_within_problem']:.3f} | "
                f"{m['top1_score']:.3f} | {m['top1_worst']:.3f} | "
                + ", ".join(f"{s}: {b:.2f}" for s, b in bias.items())
                + " |"
            )
        lines.append("")
    return lines, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT, help="a measurements.csv of a GPU session")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"costmodel_kt_rows: --data: {args.data} is not a file", file=sys.stderr)
        return 2
    from kt.errors import DatabaseError

    started = time.perf_counter()
    try:
        lines, _ = score(args.data)
    except DatabaseError as exc:  # not a tuning database or a `kt export` CSV: one line, not a traceback
        parser.error(f"--data: {str(exc).removeprefix('data: ')}")
    print("\n".join(lines))
    print(f"scored {args.data} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
