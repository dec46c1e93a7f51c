"""Collect the dense GEMM sweeps the cost model trains on: many shapes, fp16 and bf16, into one tuning database.

For each (shape, dtype) of the suite below it runs `kt collect` (every legal config with --all, or a random
sample of them), then exports the GPU-measured rows to a CSV for `data/` (device, date and software versions on
every row). It resumes: a second run measures only what the database lacks. Meant for a GPU machine; with
`--backend interpret` it only checks configs on the CPU (no timings), to try the script out.

    python benchmarks/collect_dense.py --sample 120 --db sweeps.db --export data/dense_h100.csv

GPU time per config is the compile (in parallel) plus about target_ms of timed runs plus energy_s of energy
loop; --target-ms and --energy-s trade precision for sweep size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import kt
from kt.autotune.database import Database
from kt.autotune.figures import check_outputs
from kt.autotune.timing import DEFAULT_TIMING, TimingSettings
from kt.errors import KtError

# Squares, skinny (few rows or columns: decode-like and GEMV-like), deep K, odd sizes that leave ragged tiles,
# and batched products: 24 shapes, each in fp16 and bf16.
SHAPES: list[tuple[int, int, int, int | None]] = [
    (256, 256, 256, None),
    (512, 512, 512, None),
    (1024, 1024, 1024, None),
    (2048, 2048, 2048, None),
    (4096, 4096, 4096, None),
    (8192, 8192, 8192, None),
    (16, 4096, 4096, None),
    (64, 8192, 4096, None),
    (128, 12288, 4096, None),
    (4096, 64, 4096, None),
    (8192, 128, 1024, None),
    (32, 1024, 8192, None),
    (64, 64, 65536, None),
    (256, 256, 32768, None),
    (4096, 4096, 256, None),
    (8192, 2048, 128, None),
    (1000, 1000, 1000, None),
    (4097, 4095, 4099, None),
    (777, 1333, 555, None),
    (3000, 5000, 700, None),
    (129, 257, 4099, None),
    (1024, 1024, 1024, 8),
    (512, 2048, 256, 32),
    (197, 768, 3072, 16),
]
DTYPES = ("float16", "bfloat16")


def spec_for(m: int, n: int, k: int, batch: int | None, dtype: str):
    shape = {"m": m, "n": n, "k": k} | ({"batch": batch} if batch else {})
    name = f"sweep_{m}x{n}x{k}" + (f"x{batch}" if batch else "") + f"_{dtype}"
    return kt.parse_spec({"op": "dense", "name": name, "dtype": dtype, "shape": shape})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--all", action="store_true", help="every legal config of each shape (hours per shape)")
    how.add_argument("--sample", type=int, help="this many random legal configs per shape and dtype")
    parser.add_argument("--db", type=Path, required=True, help="tuning database to fill (resumable)")
    parser.add_argument("--export", type=Path, default=None, help="CSV of the GPU-measured rows, for data/")
    parser.add_argument("--backend", choices=["auto", "cuda", "interpret"], default="auto")
    parser.add_argument("--device", default=None, help="target device profile (default: the GPU present)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N shapes of the suite")
    parser.add_argument(
        "--dtypes", default=",".join(DTYPES), help=f"comma-separated, from {', '.join(DTYPES)}"
    )
    parser.add_argument(
        "--target-ms",
        type=float,
        default=None,
        help=f"milliseconds of timed runs per config (default {DEFAULT_TIMING.target_ms}; not used by --backend "
        "interpret)",
    )
    parser.add_argument(
        "--energy-s",
        type=float,
        default=None,
        help=f"seconds of energy loops per config (0: none; default {DEFAULT_TIMING.energy_s}; not used by "
        "--backend interpret)",
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one config may take")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--export": args.export}, [args.db])
    dtypes = args.dtypes.split(",")
    if bad := [d for d in dtypes if d not in DTYPES]:  # one message named both flags, whichever was wrong
        parser.error(f"--dtypes: {', '.join(map(repr, bad))} is not allowed; allowed: {', '.join(DTYPES)}")
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample: {args.sample}; give 1 or more")
    given = [
        flag
        for flag, value in (("--target-ms", args.target_ms), ("--energy-s", args.energy_s))
        if value is not None
    ]
    target_ms = DEFAULT_TIMING.target_ms if args.target_ms is None else args.target_ms
    energy_s = DEFAULT_TIMING.energy_s if args.energy_s is None else args.energy_s
    if not target_ms > 0 or not energy_s >= 0:  # nan fails both
        parser.error("--target-ms must be > 0 and --energy-s >= 0")
    if args.limit is not None and args.limit < 1:  # a negative slice ran all but the last shapes
        parser.error(f"--limit: {args.limit} shapes; give 1 or more")
    if not 0 < args.timeout <= 86400:
        parser.error(f"--timeout: {args.timeout} s; give a number of seconds from 1 to 86400")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: {args.workers}; give 1 or more")
    if args.backend == "interpret":  # the interpreter checks configs and times nothing: no timing to pass
        timed = {}
        if given:
            print(
                f"collect_dense: {' and '.join(given)} not used by the interpret backend: nothing is timed "
                "without a GPU",
                file=sys.stderr,
            )
    else:
        timed = {"timing": TimingSettings(target_ms=target_ms, energy_s=energy_s)}
    suite = [(shape, dtype) for shape in SHAPES[: args.limit] for dtype in dtypes]
    started = time.monotonic()
    try:
        for i, ((m, n, k, batch), dtype) in enumerate(suite, start=1):
            spec = spec_for(m, n, k, batch, dtype)
            session = kt.collect(
                spec,
                sample=args.sample,
                backend=args.backend,
                db=args.db,
                device=args.device,
                workers=args.workers,
                progress=False,
                timeout_s=args.timeout,
                **timed,
            )
            ok = sum(r["status"] == "ok" for r in session.rows)
            print(
                f"[{i}/{len(suite)}] {spec.name}: {len(session.rows)} configs ({session.fresh} new, {ok} ok) "
                f"on {session.runner.device} · {time.monotonic() - started:.0f} s",
                flush=True,
            )
        if args.export is not None:
            with Database(args.db, create=False, readonly=True) as database:
                count = database.export_csv(args.export, runner="cuda")
            print(f"{count} GPU-measured rows -> {args.export}")
    except KtError as exc:
        print(f"collect_dense: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
