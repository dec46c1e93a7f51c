"""How long kt takes to make a problem's search space (the legality of every config) on the CPU: the space of
each example's op (examples/*.yaml) on the H100 and A100 profiles, made afresh each time (the process's cache of
spaces emptied first), the median of `--repeats` makes after one warm-up (imports, the GEMM family's shared
configs). It is the cost `kt tune`, `kt space`, `kt predict` and kt.nn pay once per new problem in a process.

    python benchmarks/space_time.py
    python benchmarks/space_time.py --repeats 5 --only dense butterfly
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("h100", "a100")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_space(spec: Path, device: str, repeats: int) -> tuple[float, int, int]:
    """The median seconds of `repeats` fresh makes of `spec`'s space on `device`, and its legal and total counts."""
    import kt
    from kt.codegen import gemm

    times = []
    for _ in range(repeats):
        with gemm._SPACES_LOCK:
            gemm._SPACES.clear()
        started = time.perf_counter()
        space = kt.space(str(spec), device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(space.legal), space.total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh makes per example and device (default 3)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="these examples only (their file names' stems)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: give 1 or more")
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    if args.only:
        unknown = sorted(set(args.only) - {s.stem for s in specs})
        if unknown:
            parser.error(
                f"--only: no example {', '.join(unknown)}; allowed: {', '.join(s.stem for s in specs)}"
            )
        specs = [s for s in specs if s.stem in args.only]
    time_space(specs[0], DEVICES[0], 1)  # warm-up: imports and the shared configs
    rows = []
    print(f"{'example':<16} {'device':<6} {'legal':>7} {'of':>7} {'seconds':>8}")
    for spec in specs:
        for device in DEVICES:
            seconds, legal, total = time_space(spec, device, args.repeats)
            rows.append(
                {"example": spec.stem, "device": device, "legal": legal, "total": total, "s": seconds}
            )
            print(f"{spec.stem:<16} {device:<6} {legal:>7} {total:>7} {seconds:>8.3f}")
    worst = max(rows, key=lambda r: r["s"])
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(
        f"worst: {worst['example']} on {worst['device']}, {worst['s']:.3f} s (median of {args.repeats}; "
        f"{cpu_name()}, {day})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
