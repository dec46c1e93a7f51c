"""Search efficiency: how close model-guided search gets to the exhaustive best after measuring a small part of
the legal space, against random search, replayed on real exhaustive sweeps.

Each sweep (every legal config of one shape, measured on a GPU by `kt collect --all`) is held out in turn and
searched the way `kt tune` searches it, with `kt replay`'s own replay of kt sweeps (kt.autotune.replay.replay,
which `kt replay DB` runs per problem): `guided` starts from a forest fitted on the sweeps
of the other shapes only (never this shape, in any dtype or layout: what kt would ship) and corrects it after
each round on what it measured; `guided-analytic` starts from the analytic model and corrects it the same way (a
tune with no model and a fresh database); `random` samples. Each "measurement" is answered from the
sweep, so the strategies are compared on the same real runtimes. What this does not cover: a tune whose database
already holds other shapes of the device, which `kt tune` also learns from. For each budget (a fraction of the shape's measured configs) the figure is the exhaustive best
runtime over the best the search found (100% = found the best), averaged over problems (a shape in one dtype
and layout: an fp16 and a bf16 sweep of one size are two) and seeds; the worst is a problem's.

    python benchmarks/search_efficiency.py --data data/dense_h100.csv --csv benchmarks/results/search_h100.csv

`--gpperf-tiled PATH` replays the public GPPerf tiled-matmul measurements instead (RTX 4070, 3-5 tile sizes per
shape: a smoke test of the method on real data, too few configs per shape for the 5% figure to mean much).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kt.autotune.dataset import read_rows
from kt.autotune.figures import check_outputs, write_csv
from kt.autotune.replay import Sweep, reached, replay, sweeps_from_rows
from kt.autotune.versions import software_versions
from kt.device import ProfileError, get_profile
from kt.errors import KtError
from kt.ir.problems import GemmProblem

STRATEGIES = ("guided", "guided-analytic", "random")
TILED_COLUMNS = ("M", "N", "K", "Tile Size", "Execution Time")  # what --gpperf-tiled reads of each row


class DataError(Exception):
    """The --gpperf-tiled file is not GPPerf's execution_times_all.csv."""


def tiled_sweeps(path: Path) -> list[Sweep]:
    """GPPerf's `execution_times_all.csv` (M,N,K,Tile Size,Execution Time in ms) as one sweep per shape.

    Its kernel is a plain shared-memory tiled SGEMM with TILE x TILE threads per block and a TILE-wide K step,
    mapped onto kt's config fields as block_m = block_n = block_k = TILE, TILE*TILE/32 warps, one stage.
    """
    shapes: dict[tuple[int, int, int], list[tuple[int, float]]] = defaultdict(list)
    name = f"{str(path)!r} is not GPPerf's execution_times_all.csv"
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in TILED_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:  # the other GPPerf CSVs raised KeyError: 'Tile Size'
                raise DataError(f"{name} (no {', '.join(missing)} column)")
            for line, row in enumerate(reader, start=2):
                try:
                    key = (int(row["M"]), int(row["N"]), int(row["K"]))
                    shapes[key].append((int(row["Tile Size"]), float(row["Execution Time"])))
                except (TypeError, ValueError) as exc:
                    raise DataError(f"{str(path)!r} line {line}: {exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{name} ({exc})") from None
    sweeps = []
    for (m, n, k), points in sorted(shapes.items()):
        problem = GemmProblem(m, n, k, dtype="float32")
        records = [
            {
                **problem.to_record(),
                "block_m": tile,
                "block_n": tile,
                "block_k": tile,
                "group_m": 1,
                "num_warps": max(1, tile * tile // 32),
                "num_stages": 1,
                "split_k": 1,
                "config_key": f"tile{tile}",
            }
            for tile, _ in points
        ]
        sweeps.append(Sweep(problem.key(), records, np.array([ms for _, ms in points])))
    return sweeps


def budgets(size: int, fractions: list[float]) -> list[int]:
    return [max(1, math.ceil(f * size)) for f in fractions]


def run(
    sweeps: list[Sweep], device, fractions: list[float], seeds: int, trees: int, progress=print
) -> list[dict]:
    results = []
    for held, sweep in enumerate(sweeps):
        # The prior never sees this shape, in any dtype or layout.
        prior = [
            r
            for other in sweeps
            if other.shape != sweep.shape
            for r in other.measured_records(range(len(other)))
        ]
        started = time.monotonic()
        for budget, fraction in zip(budgets(len(sweep), fractions), fractions):
            for strategy in STRATEGIES:
                for seed in range(seeds):
                    trace = replay(
                        sweep,
                        "guided" if strategy.startswith("guided") else strategy,
                        device,
                        budget,
                        seed,
                        prior=prior if strategy == "guided" else (),
                        n_estimators=trees,
                    )
                    results.append(
                        {
                            "shape": sweep.label,
                            "configs": len(sweep),
                            "fraction": fraction,
                            "budget": budget,
                            "strategy": strategy,
                            "seed": seed,
                            "measured": len(trace.measured),
                            "reached": reached(sweep, trace, budget),
                        }
                    )
        progress(
            f"[{held + 1}/{len(sweeps)}] {sweep.label}: {len(sweep)} configs, {time.monotonic() - started:.1f} s"
        )
    return results


def summarise(results: list[dict], fractions: list[float]) -> dict[tuple[str, float], tuple[float, float]]:
    """(strategy, fraction) -> (mean, worst) reached over shapes, each shape's value averaged over seeds."""
    per_shape: dict[tuple[str, float, str], list[float]] = defaultdict(list)
    for r in results:
        per_shape[(r["strategy"], r["fraction"], r["shape"])].append(r["reached"])
    table = {}
    for strategy in STRATEGIES:
        for fraction in fractions:
            values = [np.mean(v) for (s, f, _), v in per_shape.items() if s == strategy and f == fraction]
            table[(strategy, fraction)] = (float(np.mean(values)), float(np.min(values)))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", type=Path, help="kt tuning DB or `kt export` CSV holding exhaustive GPU sweeps"
    )
    source.add_argument("--gpperf-tiled", type=Path, help="GPPerf's execution_times_all.csv (smoke test)")
    parser.add_argument("--device", default=None, help="device profile of the sweeps (default: their target)")
    parser.add_argument("--fractions", default="0.05,0.1,0.2", help="budgets as fractions of each sweep")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy and budget")
    parser.add_argument("--trees", type=int, default=100, help="trees of each refitted forest")
    parser.add_argument("--min-configs", type=int, default=20, help="smallest sweep to use (kt data only)")
    parser.add_argument("--csv", type=Path, default=None, help="write every replayed search's figure here")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--csv": args.csv}, [args.data, args.gpperf_tiled])
    for option, value in (
        ("--seeds", args.seeds),
        ("--trees", args.trees),
        ("--min-configs", args.min_configs),
    ):
        if value < 1:
            parser.error(f"{option}: {value}; give 1 or more")
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
        if not all(0 < f <= 1 for f in fractions):
            raise ValueError
    except ValueError:
        parser.error(f"--fractions: expected comma-separated numbers in (0, 1], got {args.fractions!r}")
    try:
        if args.gpperf_tiled is not None:
            if not args.gpperf_tiled.is_file():
                parser.error(f"--gpperf-tiled: {str(args.gpperf_tiled)!r} not found")
            from gpperf_costmodel import RTX4070

            try:
                sweeps = tiled_sweeps(args.gpperf_tiled)
            except DataError as exc:
                parser.error(f"--gpperf-tiled: {exc}")
            device, gpu = RTX4070, "NVIDIA GeForce RTX 4070 (GPPerf)"
        else:
            rows = read_rows(args.data)
            sweeps = sweeps_from_rows(rows, args.min_configs)
            targets = {r["target"] for r in rows if r["runner"] == "cuda"}
            gpus = {r["device"] for r in rows if r["runner"] == "cuda"}
            if len(gpus) > 1:
                parser.error(f"--data holds sweeps from several GPUs ({', '.join(sorted(gpus))}); export one")
            if args.device is None and len(targets) > 1:
                parser.error(
                    f"--data holds sweeps for several targets ({', '.join(sorted(targets))}); pick one with --device"
                )
            name = args.device or (targets.pop() if targets else "h100")
            try:
                device = get_profile(name)
            except ProfileError as exc:
                parser.error(f"--device: {exc} (a calibrated target needs its profile JSON)")
            gpu = gpus.pop() if gpus else "?"
    except KtError as exc:
        print(f"search_efficiency: error: {exc}", file=sys.stderr)
        return 2
    if len(sweeps) < 2:
        print(
            f"search_efficiency: error: need at least 2 exhaustive sweeps (one held out, the rest train the "
            f"prior), found {len(sweeps)}; collect them on a GPU with `kt collect SPEC --all`",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    results = run(
        sweeps, device, fractions, args.seeds, args.trees, progress=lambda s: print(s, file=sys.stderr)
    )
    table = summarise(results, fractions)
    sizes = [len(s) for s in sweeps]
    print(
        f"\n{len(sweeps)} sweeps on {gpu} ({min(sizes)}-{max(sizes)} configs each), {args.seeds} seeds, "
        f"replayed in {time.monotonic() - started:.0f} s:\n"
    )
    print("| measured (of each sweep) | " + " | ".join(STRATEGIES) + " |")
    print("|---|" + "---|" * len(STRATEGIES))
    for fraction in fractions:
        cells = [
            f"{100 * table[(s, fraction)][0]:.1f}% (worst {100 * table[(s, fraction)][1]:.1f}%)"
            for s in STRATEGIES
        ]
        print(f"| {100 * fraction:g}% | " + " | ".join(cells) + " |")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        stamp = {
            "gpu": gpu,
            "date": datetime.now(timezone.utc).date().isoformat(),
            "kt": software_versions()["kt"],
        }
        # atomically (it wrote in place: a failed or killed write left a cut file where the good one was)
        write_csv(args.csv, [{**r, **stamp} for r in results])
    figures = ", ".join(
        f"{100 * f:g}%: guided {100 * table[('guided', f)][0]:.1f}% vs random {100 * table[('random', f)][0]:.1f}%"
        for f in fractions
    )
    print(
        f"search efficiency ({len(sweeps)} problems, {gpu}): share of the exhaustive best reached after measuring {figures}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
