"""kt's tuned dense GEMM against torch.matmul (cuBLAS): same GPU, same run, same timer.

For each shape and dtype: tune with kt (its wall time and configs measured are part of the result), then time
kt's best kernel and torch.matmul side by side with kt's CUDA timer (L2 flushed before every run, median of
many CUDA-event timings; `time_cuda_each`: the GPU idles before each side, as before every candidate of a
tune, and each side is timed twice, first and second in turn, its lower median the figure) and NVML energy,
after checking kt's output against torch's. Prints a markdown table for BENCHMARKS.md and writes every figure
to --csv with the device, date and software versions.

    python benchmarks/dense_vs_cublas.py --budget 64 --csv benchmarks/results/dense_h100.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

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
from kt.autotune.timing import DEFAULT_TIMING, Nvml, energy_cuda, time_cuda_each
from kt.dtypes import DTYPES, tolerance

SHAPES = [
    "4096x4096x4096",
    "8192x8192x8192",
    "1024x1024x1024",
    "4097x4095x4099",
    "16x4096x4096",
    "128x12288x4096",
    "4096x4096x256",
    "64x64x65536",
]


def tflops(m: int, n: int, k: int, ms: float) -> float:
    return 2 * m * n * k / (ms * 1e-3) / 1e12


def bench_case(m: int, n: int, k: int, dtype: str, budget: int, db: str | None, nvml: Nvml) -> dict | None:
    """Tune one shape with kt, then time kt's best and torch.matmul side by side."""
    spec = kt.parse_spec(
        {
            "op": "dense",
            "name": f"bench_{m}x{n}x{k}_{dtype}",
            "dtype": dtype,
            "shape": {"m": m, "n": n, "k": k},
            "tune": {"budget": budget},
        }
    )
    started = time.monotonic()
    result = kt.tune(spec, db=db, progress=False)
    tune_s = time.monotonic() - started
    # no generated config passed and PyTorch's path did: what kt gives is that path (kt.build(spec, None)
    # would have built the cost model's untuned first choice)
    config = result.best.config if result.best.config is not None else "pytorch"
    kernel = kt.build(spec, config)
    a, b = kt.random_args(spec, seed=123, device="cuda")
    ours = torch.empty(m, n, dtype=a.dtype, device="cuda")
    theirs = torch.empty(m, n, dtype=a.dtype, device="cuda")

    def run_kt():
        return kernel(a, b, out=ours)

    def run_cublas():
        return torch.matmul(a, b, out=theirs)

    run_kt()
    err = relative_error(ours, torch.matmul(a.double(), b.double()))
    if err > tolerance(dtype):
        print(
            f"{m}x{n}x{k} {dtype}: kt's result is wrong (relative error {err:.2e}); skipped", file=sys.stderr
        )
        return None
    timed = time_cuda_each({"kt": run_kt, "cublas": run_cublas})  # an idle before each, the order alternated
    kt_time, cublas_time = timed["kt"], timed["cublas"]
    time.sleep(DEFAULT_TIMING.cooldown_ms / 1e3)
    kt_energy = energy_cuda(run_kt, kt_time["runtime_ms"], nvml)
    time.sleep(DEFAULT_TIMING.cooldown_ms / 1e3)
    cublas_energy = energy_cuda(run_cublas, cublas_time["runtime_ms"], nvml)
    return {
        "shape": f"{m}x{n}x{k}",
        "dtype": dtype,
        "kt_ms": kt_time["runtime_ms"],
        "kt_tflops": tflops(m, n, k, kt_time["runtime_ms"]),
        "cublas_ms": cublas_time["runtime_ms"],
        "cublas_tflops": tflops(m, n, k, cublas_time["runtime_ms"]),
        "ratio": cublas_time["runtime_ms"] / kt_time["runtime_ms"],
        "kt_rounds_ms": rounds_ms(kt_time),  # each round's median; the figure is the lowest
        "cublas_rounds_ms": rounds_ms(cublas_time),
        "kt_power_w": kt_energy.get("power_w"),
        "cublas_power_w": cublas_energy.get("power_w"),
        "kt_config": config if isinstance(config, str) else config.key(),
        "tune_s": tune_s,
        "measured": len(result.rows),
        "newly_measured": result.newly_measured,  # a rerun on the same --db resumes: tune_s is this run's
        "legal": len(result.plan.space.legal),
        "kt_rel_err": err,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated MxNxK")
    parser.add_argument(
        "--dtypes", default="float16,bfloat16", help=f"comma-separated, of {', '.join(DTYPES)}"
    )
    parser.add_argument("--budget", type=budget, default=64, help="configs kt measures per shape and dtype")
    parser.add_argument("--db", default=None, help="tuning database (default: kt's)")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    check_outputs(parser, {"--csv": args.csv}, [args.db])
    # read before the GPU is asked for: a bad entry crashed mid-run, its earlier shapes' figures lost
    shapes = [_shape(parser, text) for text in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    if bad := [d for d in dtypes if d not in DTYPES]:
        parser.error(f"--dtypes: {', '.join(map(repr, bad))} is not allowed; allowed: {', '.join(DTYPES)}")
    if not torch.cuda.is_available():
        print("dense_vs_cublas: needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    nvml = Nvml.for_torch_device(torch.cuda.current_device())
    context = run_context(command=command_line("benchmarks/dense_vs_cublas.py", argv))
    rows = []
    cases = [(shape, dtype) for dtype in dtypes for shape in shapes]

    def bench(case):
        (m, n, k), dtype = case
        return bench_case(m, n, k, dtype, args.budget, args.db, nvml)

    for row in each_case(cases, bench, lambda case: f"{'x'.join(map(str, case[0]))} {case[1]}"):
        if row is not None:
            rows.append({**context, **row})
            print(
                f"{row['shape']} {row['dtype']}: kt {row['kt_tflops']:.0f} TFLOP/s, cuBLAS "
                f"{row['cublas_tflops']:.0f} TFLOP/s, ratio {row['ratio']:.2f}x",
                file=sys.stderr,
            )
    if args.csv and rows:
        write_csv(args.csv, rows)
    print(f"\n{context['device']}, {context['date']}, `{context['command']}`\n")
    print(
        "| shape (MxNxK) | dtype | kt TFLOP/s | cuBLAS TFLOP/s | kt / cuBLAS | kt W | cuBLAS W | tuning s | "
        "measured / legal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        watts = ["-" if w is None else f"{w:.0f}" for w in (r["kt_power_w"], r["cublas_power_w"])]
        print(
            f"| {r['shape']} | {r['dtype']} | {r['kt_tflops']:.0f} | {r['cublas_tflops']:.0f} | {r['ratio']:.2f}x | "
            f"{watts[0]} | {watts[1]} | {r['tune_s']:.0f} | {r['measured']} ({r['newly_measured']} new) / {r['legal']} |"
        )
    if rows:
        worst = min(rows, key=lambda r: r["ratio"])
        print(
            f"\nWorst case: {worst['ratio']:.2f}x ({worst['shape']} {worst['dtype']}), over {len(rows)} shapes"
        )
    return 0 if rows else 1  # every case failed (each said why above)


def _shape(parser: argparse.ArgumentParser, text: str) -> tuple[int, int, int]:
    """One --shapes entry, MxNxK, or the parser's one-line error."""
    sizes = text.strip().lower().split("x")
    if len(sizes) != 3 or not all(size.isdigit() and int(size) > 0 for size in sizes):
        parser.error(
            f"--shapes: {text!r} is not allowed; give MxNxK, three positive integers, e.g. 4096x4096x4096"
        )
    return tuple(map(int, sizes))


if __name__ == "__main__":
    sys.exit(main())
