"""kt's tuned block-sparse and low-rank kernels against what a user would run today: same GPU, same run, same timer.

- block-sparse (in = out = 4096, batch 8192, fp16, 32x32 and 64x64 blocks, 5% .. 50% of them non-zero):
  kt's `kernel(x, W_bsr)` vs PyTorch's own BSR path `F.linear(x, W_bsr)` on the same BSR tensor (target: 1.3x
  at 10%) and vs dense `F.linear(x, W_bsr.to_dense())`; where PyTorch's BSR path refuses a dtype or block size,
  its row says so with the error's first line and carries no figure;
- low-rank (4096 -> r -> 4096, batch 8192, fp16, r = 16 .. 256): kt's tuned kernel, one fused launch or two as
  the tuner chose, vs two `torch.matmul` calls `(x @ f1) @ f2` (target: 1.2x at r <= 64). The best fused and the
  best two-launch configs among those the tune measured are both timed again here, so the fused-or-separate
  question is answered with this run's figures.

Each case is tuned with kt first (its wall time, configs measured and legal space are reported), then kt's
best kernel and each baseline are checked against a float64 reference before anything is timed, and timed side
by side with kt's CUDA timer (L2 flushed before every run, median of many CUDA-event timings;
`time_cuda_each`: the GPU idles before each, as before every candidate of a tune, and each is timed twice, the
order reversed the second time, its lower median the figure). Prints a markdown table for BENCHMARKS.md and
writes every figure to --csv with the device, date and software versions.

    python benchmarks/sparse_vs_torch.py --budget 64 --csv benchmarks/results/sparse_h100.csv
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import kt
from kt.autotune.checking import relative_error
from kt.autotune.figures import (
    budget,
    check_outputs,
    command_line,
    each_case,
    rounds_ms,
    run_context,
    write_csv,
)
from kt.autotune.timing import time_cuda_each
from kt.autotune.tune import objective_value
from kt.ir import op_from_spec

FEATURES = 4096
BATCH = 8192
BLOCKS = (32, 64)
DENSITIES = (0.05, 0.10, 0.25, 0.50)
RANKS = (16, 32, 64, 128, 256)
TORCH_BSR = "torch BSR F.linear"
DENSE = "dense F.linear"
TWO_MATMULS = "two torch.matmul"


@dataclass
class Case:
    name: str
    spec: dict
    # baseline name -> factory(args) returning a zero-argument callable that runs it on the same inputs
    baselines: dict[str, Callable] = field(default_factory=dict)
    # baseline name -> the ratio baseline / kt the issue asks for
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.spec["op"]


def _torch_bsr(args):
    x, w = args
    return lambda: F.linear(x, w)  # the same BSR tensor kt's kernel takes


def _dense_linear(args):
    x, w = args
    dense = w.to_dense()  # converted once, outside the timing
    return lambda: F.linear(x, dense)


def _two_matmuls(args):
    x, f1, f2 = args
    return lambda: torch.matmul(torch.matmul(x, f1), f2)


def cases() -> list[Case]:
    out = []
    for block in BLOCKS:
        for density in DENSITIES:
            out.append(
                Case(
                    f"blocksparse {block}x{block} density={density:.0%}",
                    {
                        "op": "blocksparse",
                        "dtype": "float16",
                        "shape": {"batch": BATCH, "in": FEATURES, "out": FEATURES},
                        "sparsity": {"block": [block, block], "density": density, "seed": 0},
                    },
                    {TORCH_BSR: _torch_bsr, DENSE: _dense_linear},
                    {TORCH_BSR: 1.3} if density == 0.10 else {},
                )
            )
    for rank in RANKS:
        out.append(
            Case(
                f"lowrank {FEATURES}->{rank}->{FEATURES}",
                {
                    "op": "lowrank",
                    "dtype": "float16",
                    "shape": {"batch": BATCH, "dims": [FEATURES, rank, FEATURES]},
                },
                {TWO_MATMULS: _two_matmuls},
                {TWO_MATMULS: 1.2} if rank <= 64 else {},
            )
        )
    return out


def select(all_cases: list[Case], only: str) -> list[Case]:
    """The cases whose name contains `only` (blocksparse, lowrank, or e.g. '64x64', '->64->')."""
    return [case for case in all_cases if only in case.name]


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class Checked:
    """A callable checked against the float64 reference: `run` is None when it cannot be timed (`status`)."""

    run: Callable | None
    rel_err: float | None
    status: str  # ok | unavailable: <first line of the error> | wrong: <relative error over the tolerance>


def check(make: Callable[[], Callable], expected: torch.Tensor, tolerance: float) -> Checked:
    """Build and run once, compare with `expected`; an error (PyTorch refusing a dtype or a block size) or a
    result over `tolerance` leaves nothing to time."""
    try:
        run = make()
        out = run()
    except Exception as exc:  # whatever PyTorch raises, the row records it and the run goes on
        return Checked(None, None, f"unavailable: {first_line(exc)}")
    if out.shape != expected.shape:
        return Checked(
            None, None, f"wrong: output shape {tuple(out.shape)}, expected {tuple(expected.shape)}"
        )
    err = relative_error(out, expected)
    if not err <= tolerance:
        return Checked(None, err, f"wrong: relative error {err:.2e} over the tolerance {tolerance:.1e}")
    return Checked(run, err, "ok")


def best_rows_by_structure(rows: list[dict]) -> dict[int, dict]:
    """fused (0 or 1) -> the fastest passing row of that structure among the tune's database rows."""
    best: dict[int, dict] = {}
    for row in rows:
        value = objective_value(row, "time")
        if value is None:
            continue
        fused = int(row["config"].get("fused", 0))
        if fused not in best or value < objective_value(best[fused], "time"):
            best[fused] = row
    return best


def bench_case(case: Case, budget: int, db: str | None) -> list[dict]:
    spec = kt.parse_spec({**case.spec, "tune": {"budget": budget}})
    started = time.monotonic()
    result = kt.tune(spec, db=db, progress=False)
    tune_s = time.monotonic() - started
    (node,) = op_from_spec(spec).kernel_graph().kernels
    problem = node.problem
    tolerance = problem.tolerance()
    args = kt.random_args(spec, seed=123, device="cuda")
    expected = problem.reference(*args)  # float64
    # no generated config passed and PyTorch's path did: what kt gives is that path (best.config is None)
    config = result.best.config
    common = {
        "case": case.name,
        "op": case.op,
        "dtype": spec.dtype,
        "kt_config": config.key() if config is not None else "pytorch",
        "kt_structure": ("fused" if config.fused else "two launches")
        if case.op == "lowrank" and config is not None
        else "",
        "tune_s": tune_s,
        "measured": len(result.rows),
        "newly_measured": result.newly_measured,
        "legal": len(result.plan.space.legal),
        "tolerance": tolerance,
    }
    if result.best.measured:
        kernel = kt.build(spec, config if config is not None else "pytorch")
        mine = check(lambda: lambda: kernel(*args), expected, tolerance)
    else:  # every config the tune tried failed: nothing of kt's to time
        mine = Checked(None, None, f"unavailable: the tune timed no config ({'; '.join(result.notes)})")
    theirs = {
        name: check(lambda f=factory: f(args), expected, tolerance)
        for name, factory in case.baselines.items()
    }
    runs = {"kt": mine.run} if mine.run else {}
    structures: dict[str, object] = {}
    timed_as: dict[str, str] = {}  # fused / unfused: the run whose figure is its best config's
    if case.op == "lowrank":  # the fastest fused and two-launch configs the tune measured, timed again here
        for fused, row in sorted(best_rows_by_structure(result.rows).items()):
            name = "fused" if fused else "unfused"
            structures[f"best_{name}_config"] = row["config_key"]
            if config is not None and row["config_key"] == config.key():
                timed_as[name] = "kt"
                continue
            other = kt.build(spec, row["config"])
            checked = check(lambda k=other: lambda: k(*args), expected, tolerance)
            if checked.run is None:
                structures[f"best_{name}_config"] += f" ({checked.status})"
            else:
                timed_as[name], runs[f"best {name}"] = f"best {name}", checked.run
    if "kt" in runs:  # nothing of kt's to time: the baselines are not timed either
        runs.update({f"baseline {name}": baseline.run for name, baseline in theirs.items() if baseline.run})
    timed = time_cuda_each(runs) if runs else {}
    kt_ms = timed["kt"]["runtime_ms"] if "kt" in timed else None
    for name, run in timed_as.items():
        structures[f"best_{name}_ms"] = timed[run]["runtime_ms"] if run in timed else None

    rows = []
    for name, baseline in theirs.items():
        baseline_timed = timed.get(f"baseline {name}")
        baseline_ms = baseline_timed["runtime_ms"] if baseline_timed else None
        ratio = baseline_ms / kt_ms if baseline_ms and kt_ms else None
        target = case.targets.get(name)
        rows.append(
            {
                **common,
                "baseline": name,
                "kt_ms": kt_ms,
                "baseline_ms": baseline_ms,
                "kt_rounds_ms": rounds_ms(timed["kt"]) if "kt" in timed else None,  # each round's median
                "baseline_rounds_ms": rounds_ms(baseline_timed) if baseline_timed else None,
                "ratio": ratio,
                "kt_status": mine.status,
                "kt_rel_err": mine.rel_err,
                "baseline_status": baseline.status,
                "baseline_rel_err": baseline.rel_err,
                "target_ratio": target,
                "target_met": (ratio >= target) if target and ratio else None,
                "best_fused_config": structures.get("best_fused_config"),
                "best_fused_ms": structures.get("best_fused_ms"),
                "best_unfused_config": structures.get("best_unfused_config"),
                "best_unfused_ms": structures.get("best_unfused_ms"),
            }
        )
    return rows


def _ms(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ratio(row: dict) -> str:
    if row["ratio"] is not None:
        return f"{row['ratio']:.2f}x"
    return row["baseline_status"] if row["baseline_status"] != "ok" else f"kt {row['kt_status']}"


def summary_line(row: dict) -> str:
    if row["ratio"] is None:
        return f"{row['case']} {row['dtype']}: {row['baseline']}: {_ratio(row)}"
    target = (
        f" (target {row['target_ratio']}x: {'met' if row['target_met'] else 'missed'})"
        if row["target_ratio"]
        else ""
    )
    return f"{row['case']} {row['dtype']}: {row['ratio']:.2f}x over {row['baseline']}{target}"


def print_tables(rows: list[dict], context: dict, budget: int) -> None:
    print(f"\n{context['device']}, {context['date']}, `{context['command']}`\n")
    print(
        "| op | dtype | baseline | kt ms | baseline ms | baseline / kt | kt config | tuning s | measured / legal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['dtype']} | {r['baseline']} | {_ms(r['kt_ms'])} | {_ms(r['baseline_ms'])} | "
            f"{_ratio(r)} | {r['kt_config']} | {r['tune_s']:.0f} | "
            f"{r['measured']} ({r['newly_measured']} new) / {r['legal']} |"
        )
    timed = [r for r in rows if r["ratio"] is not None]
    if timed:
        worst = min(timed, key=lambda r: r["ratio"])
        untimed = len(rows) - len(timed)
        print(
            f"\nWorst case: {worst['ratio']:.2f}x ({worst['case']} {worst['dtype']} over {worst['baseline']}), "
            f"over {len(timed)} rows"
            + (f"; {untimed} more have no ratio (a check or tune failed, above)" if untimed else "")
        )
    lowrank = {r["case"]: r for r in rows if r["op"] == "lowrank"}
    if lowrank:
        print(
            "\nLow-rank, fused or two launches (the best of each that the tune measured, timed again here):\n"
        )
        print("| op | tuner chose | best fused config | fused ms | best two-launch config | two-launch ms |")
        print("|---|---|---|---|---|---|")
        for r in lowrank.values():
            print(
                f"| {r['case']} | {r['kt_structure']} | {r['best_fused_config'] or 'none in the tune'} | "
                f"{_ms(r['best_fused_ms'])} | {r['best_unfused_config'] or 'none in the tune'} | "
                f"{_ms(r['best_unfused_ms'])} |"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="run the cases whose name contains this text: blocksparse, lowrank, '64x64', '->64->', ...",
    )
    parser.add_argument("--budget", type=budget, default=64, help="configs kt measures per case")
    parser.add_argument("--db", default=None, help="tuning database (default: kt's)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument(
        "--list", action="store_true", help="print the cases it would run and stop (no GPU needed)"
    )
    args = parser.parse_args(argv)
    check_outputs(parser, {"--csv": args.csv}, [args.db])
    args.cases = select(cases(), args.only)
    if not args.cases:
        parser.error(f"--only {args.only!r} matches no case (try blocksparse or lowrank)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for case in args.cases:
            print(
                f"{case.name}: {kt.parse_spec(case.spec).summary()}; baselines: {', '.join(case.baselines)}"
            )
        return 0
    if not torch.cuda.is_available():
        print("sparse_vs_torch: needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
    context = run_context(command=command_line("benchmarks/sparse_vs_torch.py", argv))
    rows = []
    for case_rows in each_case(args.cases, lambda c: bench_case(c, args.budget, args.db), lambda c: c.name):
        for row in case_rows:
            rows.append({**context, **row})
            print(summary_line(row), file=sys.stderr)
    if args.csv and rows:
        write_csv(args.csv, rows)
    print_tables(rows, context, args.budget)
    return 0 if rows else 1  # every case failed or was skipped (each said why above)


if __name__ == "__main__":
    sys.exit(main())
