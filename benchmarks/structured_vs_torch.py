"""kt's tuned Monarch, butterfly and FFT kernels against what a user would run today: same GPU, same run, same timer.

- Monarch (n=4096, 64 blocks, batch 16384, fp16) vs the two-torch.bmm reference and vs dense F.linear of the same
  size (target: 1.5x over two-bmm);
- butterfly (n = 1024 .. 8192, batch 8192, fp16) vs a per-factor torch loop and vs a two-bmm Monarch of the
  same n;
- FFT (n = 1024 .. 16384, batch 49152) vs torch.fft.fft in the same precision (fp16: complex32 input, which
  cuFFT supports for powers of two; target: faster than torch.fft in fp16).

Each case is tuned with kt first (its wall time and configs measured are reported), then kt's best kernel and
each baseline are checked against a float64 reference and timed back to back with kt's CUDA timer (L2 flushed
before every run, median of many CUDA-event timings). Prints a markdown table for BENCHMARKS.md and writes every
figure to --csv with the device, date and software versions.

    python benchmarks/structured_vs_torch.py --budget 64 --csv benchmarks/results/structured_h100.csv
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import kt
from kt.autotune.checking import relative_error
from kt.autotune.figures import run_context, write_csv
from kt.autotune.timing import time_cuda
from kt.ir import op_from_spec
from kt.ir.structured import butterfly_reference, monarch_reference


@dataclass
class Case:
    name: str
    spec: dict
    # baseline name -> factory(args) returning a zero-argument callable that runs it on the same inputs
    baselines: dict[str, Callable] = field(default_factory=dict)
    target: str = ""


def monarch_blocks(n: int) -> int:
    """The nblocks of a square Monarch on n features closest to sqrt(n) (its FLOP-optimal choice)."""
    return 1 << (int(math.log2(n)) // 2)


def _two_bmm(args):
    x, w1, w2 = args
    return lambda: monarch_reference(x, w1, w2)


def _dense_linear(args):
    x = args[0]
    n = x.shape[-1]
    weight = torch.randn(n, n, dtype=x.dtype, device=x.device) / math.sqrt(n)
    return lambda: F.linear(x, weight)


def _butterfly_loop(args):
    x, twiddles = args
    return lambda: butterfly_reference(x, twiddles)


def _monarch_same_n(args):
    x = args[0]
    n = x.shape[-1]
    blocks = monarch_blocks(n)
    b = n // blocks
    w1 = torch.randn(blocks, b, b, dtype=x.dtype, device=x.device) / math.sqrt(b)
    w2 = torch.randn(blocks, b, b, dtype=x.dtype, device=x.device) / math.sqrt(b)
    return lambda: monarch_reference(x, w1, w2)


def _torch_fft(dtype: str):
    def factory(args):
        (x,) = args
        if dtype == "float32":
            return lambda: torch.fft.fft(x)
        z = torch.complex(x[0].float(), x[1].float()).to(torch.complex32)  # what a user would hand torch
        return lambda: torch.fft.fft(z)

    return factory


def cases() -> list[Case]:
    out = [
        Case(
            "monarch n=4096 nblocks=64",
            {"op": "monarch", "dtype": "float16", "shape": {"batch": 16384, "n": 4096, "nblocks": 64}},
            {"two torch.bmm": _two_bmm, "dense F.linear": _dense_linear},
            target="1.5x over two torch.bmm",
        )
    ]
    for n in (1024, 2048, 4096, 8192):
        out.append(
            Case(
                f"butterfly n={n}",
                {"op": "butterfly", "dtype": "float16", "shape": {"batch": 8192, "n": n}},
                {
                    "per-factor torch loop": _butterfly_loop,
                    f"Monarch (two bmm, {monarch_blocks(n)} blocks)": _monarch_same_n,
                },
            )
        )
    for dtype in ("float16", "float32"):
        for n in (1024, 4096, 16384):
            out.append(
                Case(
                    f"fft n={n}",
                    {"op": "fft", "dtype": dtype, "input": "complex", "shape": {"batch": 49152, "n": n}},
                    {"torch.fft.fft": _torch_fft(dtype)},
                    target="faster than torch.fft" if dtype == "float16" else "",
                )
            )
    return out


def bench_case(case: Case, budget: int, db: str | None) -> list[dict]:
    spec = kt.parse_spec({**case.spec, "tune": {"budget": budget}})
    started = time.monotonic()
    result = kt.tune(spec, db=db, progress=False)
    tune_s = time.monotonic() - started
    kernel = kt.build(spec, result.best.config)
    args = kt.random_args(spec, seed=123, device="cuda")
    (node,) = op_from_spec(spec).kernel_graph().kernels
    expected = node.problem.reference(*args)  # float64 (complex128 for the FFT)
    err = relative_error(kernel(*args), expected)
    kt_time = time_cuda(lambda: kernel(*args))
    rows = []
    for name, factory in case.baselines.items():
        run = factory(args)
        baseline = time_cuda(run)
        theirs = run()
        if theirs.is_complex() and not expected.is_complex():  # kt's fp16 FFT output is planar
            theirs = torch.stack([theirs.real, theirs.imag])
        rows.append(
            {
                "case": case.name,
                "dtype": spec.dtype,
                "baseline": name,
                "kt_ms": kt_time["runtime_ms"],
                "baseline_ms": baseline["runtime_ms"],
                "ratio": baseline["runtime_ms"] / kt_time["runtime_ms"],
                "kt_config": result.best.config.key(),
                "kt_rel_err": err,
                "baseline_rel_err": relative_error(theirs, expected)
                if theirs.shape == expected.shape
                else None,
                "tune_s": tune_s,
                "measured": len(result.rows),
                "legal": len(result.plan.space.legal),
                "target": case.target,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--db", default=None, help="tuning database (default: kt's)")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("structured_vs_torch: needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    context = run_context()
    rows = []
    for case in cases():
        if args.only not in case.name:
            continue
        for row in bench_case(case, args.budget, args.db):
            rows.append({**context, **row})
            print(
                f"{row['case']} {row['dtype']}: {row['ratio']:.2f}x over {row['baseline']}", file=sys.stderr
            )
    if args.csv and rows:
        write_csv(args.csv, rows)
    print(
        f"\n{context['device']}, {context['date']}, `python benchmarks/structured_vs_torch.py --budget {args.budget}`\n"
    )
    print(
        "| op | dtype | baseline | kt ms | baseline ms | baseline / kt | kt config | tuning s | measured / legal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['dtype']} | {r['baseline']} | {r['kt_ms']:.4f} | {r['baseline_ms']:.4f} | "
            f"{r['ratio']:.2f}x | {r['kt_config']} | {r['tune_s']:.0f} | {r['measured']} / {r['legal']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
