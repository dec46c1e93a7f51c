"""kt's tuned Monarch, butterfly and FFT kernels against what a user would run today: same GPU, same run, same timer.

- Monarch (n=4096, 64 blocks, batch 16384, fp16) vs the two-torch.bmm reference and vs dense F.linear of the same
  size (target: 1.5x over two-bmm);
- butterfly (n = 1024 .. 8192, batch 8192, fp16) vs a per-factor torch loop and vs a two-bmm Monarch of the
  same n;
- FFT (n = 1024 .. 16384, batch 49152) vs torch.fft.fft in the same precision (fp16: complex32 input, which
  cuFFT supports for powers of two; target: faster than torch.fft in fp16).

Each case is tuned with kt first (its wall time and configs measured are reported), then kt's best kernel and
each baseline are checked against a float64 reference and timed side by side with kt's CUDA timer (L2 flushed
before every run, median of many CUDA-event timings; `time_cuda_each`: the GPU idles before each, as before
every candidate of a tune, and each is timed twice, the order reversed the second time, its lower median the
figure). Prints a markdown table for BENCHMARKS.md and writes every figure to --csv with the device, date and
software versions.

kt's butterfly kernel multiplies the twiddles out into dense blocks (`butterfly_blocks` in the generated module)
and caches them per twiddle tensor and its version counter, so back-to-back calls on the same twiddles (as the
timer makes them) pay for the blocks once; the per-factor torch loop has no such cache and applies the twiddles
on every call. In training the twiddles change every optimizer step, so the blocks are rebuilt every call. Each
butterfly case is therefore timed twice: `kt_ms` with the blocks cached (as the tune measured it) and
`kt_uncached_ms` with the module's block cache cleared before every call (`uncached`), which rebuilds the blocks
inside the timed region as a training step does.

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


# baselines of another op on the same input (their own random weights): a reference, not the same result, so
# no relative error against the op's
_dense_linear.other_op = True


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


_monarch_same_n.other_op = True


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


def uncached(kernel, args) -> Callable[[], torch.Tensor]:
    """A call of `kernel` that rebuilds whatever the module caches per weight tensor on every call (the
    butterfly's dense blocks, `_BLOCKS_CACHE`), as when the weights change every step; a plain call for modules
    with no such cache."""
    cache = getattr(kernel.module, "_BLOCKS_CACHE", None)
    if cache is None:
        return lambda: kernel(*args)

    def run():
        cache.clear()
        return kernel(*args)

    return run


def kt_runs(spec, kernel, args) -> dict[str, Callable[[], torch.Tensor]]:
    """What is timed of kt's kernel: "kt" (back-to-back calls on the same weights, caches warm), and for the
    butterfly also "kt uncached" (its blocks rebuilt before every call)."""
    runs = {"kt": lambda: kernel(*args)}
    if spec.op == "butterfly":
        runs["kt uncached"] = uncached(kernel, args)
    return runs


def bench_case(case: Case, budget: int, db: str | None) -> list[dict]:
    spec = kt.parse_spec({**case.spec, "tune": {"budget": budget}})
    started = time.monotonic()
    result = kt.tune(spec, db=db, progress=False)
    tune_s = time.monotonic() - started
    # no generated config passed, and PyTorch's path did: what kt gives is that path (kt.build(spec, None)
    # would have built the cost model's untuned first choice)
    config = result.best.config if result.best.config is not None else "pytorch"
    kernel = kt.build(spec, config)
    args = kt.random_args(spec, seed=123, device="cuda")
    (node,) = op_from_spec(spec).kernel_graph().kernels
    expected = node.problem.reference(*args)  # float64 (complex128 for the FFT)
    runs = kt_runs(spec, kernel, args)
    err = max(relative_error(run(), expected) for run in runs.values())
    if err > node.problem.tolerance():
        print(
            f"{case.name} {spec.dtype}: kt's result is wrong (relative error {err:.2e}); skipped",
            file=sys.stderr,
        )
        return []
    baselines = {name: factory(args) for name, factory in case.baselines.items()}
    timed = time_cuda_each({**runs, **{f"baseline {name}": run for name, run in baselines.items()}})
    kt_time = timed["kt"]
    kt_uncached = timed["kt uncached"]["runtime_ms"] if "kt uncached" in runs else None
    rows = []
    for name, factory in case.baselines.items():
        run, baseline = baselines[name], timed[f"baseline {name}"]
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
                "kt_rounds_ms": rounds_ms(kt_time),  # each round's median; the figure is the lowest
                "baseline_rounds_ms": rounds_ms(baseline),
                "kt_uncached_ms": kt_uncached,
                "ratio_uncached": baseline["runtime_ms"] / kt_uncached if kt_uncached is not None else None,
                "kt_config": config if isinstance(config, str) else config.key(),
                "kt_rel_err": err,
                "baseline_rel_err": relative_error(theirs, expected)
                if theirs.shape == expected.shape and not getattr(factory, "other_op", False)
                else None,
                "tune_s": tune_s,
                "measured": len(result.rows),
                "newly_measured": result.newly_measured,  # a rerun on the same --db resumes: tune_s is this run's
                "legal": len(result.plan.space.legal),
                "target": case.target,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--budget", type=budget, default=64, help="configs kt measures per case")
    parser.add_argument("--db", default=None, help="tuning database (default: kt's)")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    check_outputs(parser, {"--csv": args.csv}, [args.db])
    chosen = [case for case in cases() if args.only in case.name]
    if not chosen:  # an empty table and exit 0
        parser.error(
            f"--only {args.only!r} matches no case (names: {', '.join(dict.fromkeys(c.name for c in cases()))})"
        )
    if not torch.cuda.is_available():
        print("structured_vs_torch: needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    context = run_context(command=command_line("benchmarks/structured_vs_torch.py", argv))
    rows = []
    for case_rows in each_case(chosen, lambda c: bench_case(c, args.budget, args.db), lambda c: c.name):
        for row in case_rows:
            rows.append({**context, **row})
            print(
                f"{row['case']} {row['dtype']}: {row['ratio']:.2f}x over {row['baseline']}", file=sys.stderr
            )
    if args.csv and rows:
        write_csv(args.csv, rows)
    print(f"\n{context['device']}, {context['date']}, `{context['command']}`\n")
    print(
        "| op | dtype | baseline | kt ms | kt ms, blocks rebuilt every call | baseline ms | baseline / kt | "
        "baseline / kt, blocks rebuilt | kt config | tuning s | measured / legal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        uncached_ms = "-" if r["kt_uncached_ms"] is None else f"{r['kt_uncached_ms']:.4f}"
        uncached_ratio = "-" if r["ratio_uncached"] is None else f"{r['ratio_uncached']:.2f}x"
        print(
            f"| {r['case']} | {r['dtype']} | {r['baseline']} | {r['kt_ms']:.4f} | {uncached_ms} | "
            f"{r['baseline_ms']:.4f} | {r['ratio']:.2f}x | {uncached_ratio} | {r['kt_config']} | "
            f"{r['tune_s']:.0f} | {r['measured']} ({r['newly_measured']} new) / {r['legal']} |"
        )
    if rows:
        worst = min(rows, key=lambda r: r["ratio"])
        print(f"\nWorst case: {worst['ratio']:.2f}x ({worst['case']} {worst['dtype']} over {worst['baseline']}), "
              f"over {len(rows)} rows")  # fmt: skip
    return 0 if rows else 1  # every case failed or was skipped (each said why above)


if __name__ == "__main__":
    sys.exit(main())
