"""Time chosen configs of the structured kernels and PyTorch's path in one GPU run: the probe that checks a
kernel change on the cases the last `kt bench` showed slow (no tune, no cost model: the configs are named).

Each config is rendered, compiled, checked against float64 and timed by kt's CUDA runner (its workers compile in
parallel; the GPU times one candidate at a time, L2 flushed before every run, median of CUDA-event timings,
runtime only). PyTorch's own path is candidate zero of each problem. Prints a markdown table (ms, ratio to
PyTorch, the compile-and-check wall time) and writes every row to --csv with the device, date and versions.

    python benchmarks/structured_probe.py --csv benchmarks/results/h200-2026-11-30/probe.csv
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import kt
from kt.autotune.figures import check_outputs, command_line, run_context, write_csv
from kt.autotune.runners import DRY_RUN_DEVICE, make_runner
from kt.autotune.timing import DEFAULT_TIMING, DRY_RUN_TIMING
from kt.autotune.tune import PyTorchPath, generated_candidate, pytorch_candidate
from kt.codegen.blockgemm import BlockGemmConfig, illegal_reason, stages_for
from kt.ir.problems import FFTProblem, MonarchProblem


def cfg(key: str) -> BlockGemmConfig:
    """'b128n64k64g1w8s3' (optionally '-s64' for an FFT split, '-l5' for butterfly levels, '-fm' for
    feature-major ends) as a config."""
    main, *parts = key.split("-")
    values = dict(zip("bnkgws", (int(v) for v in re.findall(r"\d+", main))))
    extra = {"ends": 1} if "fm" in parts else {}
    extra.update({"split" if p[0] == "s" else "levels": int(p[1:]) for p in parts if p[0] in "sl"})
    return BlockGemmConfig(
        values["b"], values["n"], values["k"], values["g"], values["w"], values["s"], **extra
    )


CASES = {
    "monarch n=4096 nb=64": (
        MonarchProblem(16384, (64, 64, 64), (64, 64, 64)),
        [
            "b128n64k64g2w4s2",  # the 2026-11-30 bench's winner (6.93 ms as a 3D dot; its tile now runs the loop
            # over blocks, illegal: 64 accumulator registers over several blocks)
            "b128n64k64g1w4s3",
            "b128n64k64g1w8s3",
            "b64n64k64g1w4s3",
            "b16n64k64g16w4s2",
            "b32n64k32g16w8s3",
            "b16n64k32g16w8s3",
            "b32n64k64g8w8s2",
            "b64n64k64g8w8s2",  # kt predict's first with 2D dots and the sector floor (spills: now illegal)
            "b64n32k64g8w8s3",  # kt predict's first once spilling configs left the space
            "b128n64k64g8w8s3",  # kt show's choice once several blocks per program run 2D dots (wgmma)
        ],
    ),
    "fft fp16 n=4096": (
        FFTProblem(16384, 4096, "float16"),
        [
            "b256n64k32g1w8s4-s64",  # one of the bench's three 120 s compile timeouts
            "b128n64k32g1w4s3-s64",
            "b64n64k64g1w4s3-s64",
            "b16n64k32g16w8s3-s64",
            "b32n64k32g8w8s3-s64",
            "b32n64k64g4w4s3-s64",  # kt predict's first after the feature-major intermediates (spills)
            "b32n32k64g4w4s2-s64",  # kt predict's first once spilling configs left the space
            "b64n32k64g4w4s3-s32",  # kt predict's first before them
            "b32n32k32g8w8s3-s32",
            "b128n32k32g8w8s4-s128",  # kt show's choice for examples/fft_half.yaml (real input), on wgmma
        ],
    ),
    "fft fp16 n=1024 rows=1000": (
        FFTProblem(1000, 1024, "float16"),
        ["b128n32k32g1w4s4-s32", "b64n32k32g1w4s3-s32", "b16n32k32g16w4s3-s32", "b32n32k32g8w8s3-s32"],
    ),
}


def _print(case: str, rows: list[dict]) -> None:
    print(
        f"\n| {case}: config | legal now | status | ms | PyTorch ms / kt ms | build+check s |\n"
        "|---|---|---|---|---|---|"
    )
    for row in rows:
        ms = f"{row['runtime_ms']:.4f}" if row.get("runtime_ms") else "-"
        ratio = f"{row['ratio']:.2f}x" if row.get("ratio") else "-"
        wall = f"{row['wall_s']:.1f}" if row.get("wall_s") is not None else "-"
        print(
            f"| {row['config']} | {row['legal']} | {row.get('status', '-')} | {ms} | {ratio} | {wall} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: 24 rows each through the dry run (checks, times nothing)",
    )
    args = parser.parse_args(argv)
    if not any(args.only in name for name in CASES):
        parser.error(f"--only {args.only!r} matches no case (cases: {', '.join(CASES)})")
    check_outputs(parser, {"--csv": args.csv}, [])
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "structured_probe: needs a CUDA GPU; this machine has none (--smoke runs it through the dry run)",
            file=sys.stderr,
        )
        return 2
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: {args.workers} is not a worker count; give 1 or more")
    profile = kt.resolve_profile("h100" if args.smoke else "auto")
    if args.smoke:
        context = {"device": DRY_RUN_DEVICE, "date": "-", "torch_version": "-", "triton_version": "-"}
    else:
        context = run_context()
    context["command"] = command_line("benchmarks/structured_probe.py", argv)
    rows = []
    backend = "dryrun" if args.smoke else "cuda"
    with make_runner(backend, profile, workers=args.workers, timeout_s=240.0) as runner:
        runner.timing = DRY_RUN_TIMING if args.smoke else replace(DEFAULT_TIMING, energy_s=0.0)
        for name, (problem, keys) in CASES.items():
            if args.only not in name:
                continue
            if args.smoke:
                problem = replace(problem, rows=24)
            candidates = [pytorch_candidate(problem, name="probe")]
            for key in keys:
                config = cfg(key)
                why = illegal_reason(problem, config, profile, stages_for(problem, config))
                candidates.append(generated_candidate(problem, config, name="probe"))
                rows.append({"case": name, "config": key, "legal": why or "yes"})
            started = time.monotonic()
            results = list(runner.run(candidates))  # a generator: each result as it is known
            print(f"{name}: {len(candidates)} candidates in {time.monotonic() - started:.0f} s", flush=True)
            base = next((r for r in results if isinstance(r.candidate.config, PyTorchPath)), None)
            base_ms = base.values.get("runtime_ms") if base is not None and base.status == "ok" else None
            rows.append(
                {
                    "case": name,
                    "config": "pytorch",
                    "legal": "yes",
                    "status": base.status if base else "-",
                    "runtime_ms": base_ms,
                }
            )
            for r in results:
                if isinstance(r.candidate.config, PyTorchPath):
                    continue
                row = next(x for x in rows if x["case"] == name and x["config"] == r.candidate.config.key())
                ms = r.values.get("runtime_ms") if r.status == "ok" else None
                row.update(
                    status=r.status if r.status == "ok" else f"{r.status}: {r.message}"[:120],
                    runtime_ms=ms,
                    rel_err=r.values.get("rel_err"),
                    wall_s=round(r.wall_s, 2),
                    ratio=base_ms / ms if ms and base_ms else None,
                )
            _print(name, [row for row in rows if row["case"] == name])  # each case as it ends
            if args.csv:
                write_csv(args.csv, [{**context, **row} for row in rows])
    print(
        f"\n{context['device']} · {context['date']} · torch {context.get('torch_version')} · "
        f"triton {context.get('triton_version')} · {context['command']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
