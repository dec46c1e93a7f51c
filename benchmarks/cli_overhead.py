"""How long kt makes a user wait on the CPU: start-up of the CLI and of `import kt`, and the README's `kt tune`.

Each row runs a fresh process (wall clock, the median of `--repeats` runs; the warm `--budget 1` tune at most 3,
and the two cold tunes and the 64-config warm tune one run each). The tunes write into a new database
and artifact folder each time, so every config is checked again, and run with a new kt cache folder ("cold": a
new user's first tune, which compiles every config for sm_90 and reads the shipped cost model with skops) and
then with that folder again ("warm": Triton's compile cache and kt's model cache filled).

    python benchmarks/cli_overhead.py
    python benchmarks/cli_overhead.py --repeats 3 --skip-full    # without the 64-config tune
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KT = [sys.executable, "-m", "kt.cli"]


def wall(command: list[str], env: dict[str, str] | None = None, expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"cli_overhead: {' '.join(command)} exited {done.returncode}: {done.stderr[-500:]}")
    return elapsed


def median(command: list[str], repeats: int, **kwargs) -> float:
    return statistics.median(wall(command, **kwargs) for _ in range(repeats))


def tune(budget: int | None, repeats: int, cache: str) -> float:
    """`kt tune examples/dense.yaml` with kt's cache folder at `cache`, each run with a new database."""
    env = {**os.environ, "KT_CACHE_DIR": cache}
    env.pop("TRITON_CACHE_DIR", None)
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            extra = ["--budget", str(budget)] if budget else []
            command = [*KT, "tune", "examples/dense.yaml", "--out", f"{work}/art", "--db", f"{work}/t.db"]
            times.append(wall([*command, "--quiet", *extra], env=env))
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="runs per row (the warm --budget 1 tune: 3 at most; the cold tunes and the 64-config warm tune: one)",
    )
    parser.add_argument("--skip-full", action="store_true", help="leave out the 64-config tune")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    python = [sys.executable, "-c"]
    torch_s = median([*python, "import torch"], args.repeats)
    rows = [
        ("`python -c 'import torch'`", torch_s, ""),
        ("`import torch, kt`", median([*python, "import torch, kt"], args.repeats), "beyond torch"),
        (
            "`import torch, kt.api` (the whole API)",
            median([*python, "import torch, kt.api"], args.repeats),
            "beyond torch",
        ),
        ("`kt --help`", median([*KT, "--help"], args.repeats), ""),
        ("`kt show` (a usage error, exit 2)", median([*KT, "show"], args.repeats, expect=2), ""),
    ]
    # cold: a new kt cache folder (a new user's first tune: no compiled kernels, no loaded cost model); warm: the
    # same folder again (what every later tune of these configs finds)
    with tempfile.TemporaryDirectory() as cold:
        rows.append(("`kt tune examples/dense.yaml --budget 1`, cold cache", tune(1, 1, cold), ""))
        rows.append(("the same, warm cache", tune(1, min(3, args.repeats), cold), ""))
    if not args.skip_full:
        with tempfile.TemporaryDirectory() as cold:
            rows.append(("`kt tune examples/dense.yaml` (64 configs), cold cache", tune(None, 1, cold), ""))
            rows.append(("the same, warm cache", tune(None, 1, cold), ""))
    from kt.autotune.figures import command_line  # every option given (--repeats was dropped)

    print(f"\n{cpu_name()}, Python {sys.version.split()[0]}, {datetime.now(timezone.utc).date().isoformat()}, "
          f"`{command_line('benchmarks/cli_overhead.py', argv)}`\n")  # fmt: skip
    print("| what | wall s | beyond `import torch` s |")
    print("|---|---|---|")
    for what, seconds, note in rows:
        beyond = f"{seconds - torch_s:.2f}" if note else "-"
        print(f"| {what} | {seconds:.2f} | {beyond} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
