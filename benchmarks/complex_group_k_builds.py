"""Compile the FFT's complex launches that take several blocks in one program (GROUP over 1) with K steps of 64
and 128, for sm_80 or sm_90 with Triton's bundled ptxas (no GPU), and judge kt's rule for them against the
builds: the evidence behind `kt.codegen.blockgemm.complex_several_k_reason`.

A sample: for each op and dtype (float16, and float32 with tf32: the FFT's tensor-core dots), the configs of
four or eight warps (two-warp complex programs keep K steps of 32) that every other legality rule admits, grouped
in bins of `BIN` registers of `acc + operands` (`acc`: the launch's fp32 accumulator registers per thread, real
and imaginary; `operands`: one K step's operand tiles per thread, real and imaginary planes, doubled as the next
block's are live beside them: `count`); `--per-bin` of each bin drawn with `--seed`, compiled by kt's compile
workers and labelled as the compile stage labels them (ok, or refused: spills). `--ops fit` are the examples'
n = 4096 (real and complex input); `--ops held-out` and `--ops check` other sizes, so other four-step splits.
One JSON line per build (--jsonl).

`--score FILE...` prints each bin's builds and spills, and per architecture how many clean builds kt's legality
(as it is now) refuses and how many spills it catches. `--fit FILE...` gives, for each architecture and kind of
dot (16-bit or tf32), the highest limit of the count at or below which no build of the files spilled
(`fitted_limits`), and with `--check FILE...` how it does on other builds. Files may be gzipped.

Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import highest_clean_limit, load, missing_files, refused_now, sample  # noqa: E402

DTYPES = ["float16", "tf32"]
BIN = 16  # registers per thread: the width of a sampling bin of `acc + operands`
OPS = {
    "fit": [
        {"op": "fft", "shape": {"batch": 49152, "n": 4096}, "input": "real"},
        {"op": "fft", "shape": {"batch": 49152, "n": 4096}, "input": "complex"},
    ],
    "held-out": [
        {"op": "fft", "shape": {"batch": 16384, "n": 1024}, "input": "complex"},
        {"op": "fft", "shape": {"batch": 4096, "n": 16384}, "input": "real"},
    ],
    "check": [
        {"op": "fft", "shape": {"batch": 8192, "n": 2048}, "input": "real"},
        {"op": "fft", "shape": {"batch": 4096, "n": 8192}, "input": "complex"},
    ],
}
# the rule's reasons: its count (now), and its refusal of every such K step (before 2026-12-05)
RULE_REASONS = (
    "accumulator and K-step operand registers over",
    "K step over 32 for complex dots over several",
)


def specs(ops: str, dtypes: list[str]) -> list[dict]:
    """op.yaml mappings of the chosen ops in each dtype (tf32: float32 with precision tf32)."""
    out = []
    for index, base in enumerate(OPS[ops]):
        for dtype in dtypes:
            data = {**base, "name": f"fft_{ops}_{index}", "dtype": dtype}
            if dtype == "tf32":
                data.update(dtype="float32", precision="tf32")
            out.append(data)
    return out


def counted(family, problem, config, profile) -> dict:
    """The rule's count of `config`: accumulator registers (the family's `resources`, both planes), one K step's
    operand registers of both planes (undoubled) and its operand elements per thread."""
    from kt.codegen.gemm import k_step_registers
    from kt.dtypes import itemsize

    acc = family.resources(problem, config, profile)[1]
    threads = config.num_warps * profile.warp_size
    operands = 2 * k_step_registers(problem.dtype, config.block_b, config.block_n, config.block_k, threads)
    return dict(acc=acc, operands=operands, elements=operands * 4 // itemsize(problem.dtype))


def candidates(problem, profile) -> list:
    """The configs of `problem` that the rule refuses or every rule admits, over several blocks with a K step
    over 32 (the rule is the block-GEMM legality's last, so every other rule admits them)."""
    from kt.codegen import family_for

    return [
        config
        for config, reason in family_for(problem).judged(problem, profile)
        if config.group > 1 and config.block_k > 32 and (reason is None or reason.startswith(RULE_REASONS))
    ]


def kind(row: dict) -> str:
    return "tf32" if row["precision"] == "tf32" else "16-bit"


def count(row: dict) -> int:
    """The rule's count of a build: the accumulator and twice one K step's operand registers."""
    return row["acc"] + 2 * row["operands"]


def score(rows: list[dict]) -> None:
    """Each bin's builds and spills, and per architecture what kt's legality now refuses of them."""
    bins = defaultdict(lambda: [0, 0])
    for row in rows:
        group = bins[(row["arch"], kind(row), count(row) // BIN * BIN)]
        group[0] += 1
        group[1] += row["spilled"]
    print("sm   dtype   count           builds  spills")
    for (arch, which, low), (builds, spills) in sorted(bins.items()):
        print(f"{arch:<4} {which:<7} {low:>5} to {low + BIN - 1:<5} {builds:>7} {spills:>7}")
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch]
        spills = [r for r in mine if r["spilled"]]
        caught = sum(refused_now(r) for r in spills)
        clean_refused = sum(refused_now(r) for r in mine if not r["spilled"])
        print(
            f"sm_{arch}: {len(mine)} builds ({len({r['problem'] for r in mine})} problems), kt's legality refuses "
            f"{clean_refused} clean builds and catches {caught} of {len(spills)} spills (the rule before "
            f"2026-12-05, any K step over 32, refused all {len(mine)})"
        )


def fitted_limits(rows: list[dict]) -> dict[tuple[int, str], int]:
    """For each (architecture, kind) of `rows`, the highest limit (a multiple of 8) at or below which no build
    spilled: the largest count when none did."""
    return {
        (arch, which): highest_clean_limit([r for r in rows if r["arch"] == arch and kind(r) == which], count)
        for arch, which in sorted({(r["arch"], kind(r)) for r in rows})
    }


def fit(paths, check=()) -> None:
    """`fitted_limits` of the builds of `paths`, with the clean builds each refuses of them; and of `check`'s
    builds, the clean ones it refuses and the spills it lets in."""
    rows, held = load(paths), load(check) if check else []
    print("sm   kind     builds  spills  limit  clean refused  | other builds  clean refused  spills let in")
    for (arch, which), limit in fitted_limits(rows).items():
        mine = [r for r in rows if r["arch"] == arch and kind(r) == which]
        refused = sum(not r["spilled"] and count(r) > limit for r in mine)
        line = f"{arch:<4} {which:<7} {len(mine):>7} {sum(r['spilled'] for r in mine):>7} {limit:>6} {refused:>14}"
        other = [r for r in held if r["arch"] == arch and kind(r) == which]
        if other:
            clean_refused = sum(not r["spilled"] and count(r) > limit for r in other)
            let_in = sum(r["spilled"] and count(r) <= limit for r in other)
            line += f"  | {len(other):>12} {clean_refused:>14} {let_in:>14}"
        print(line)


def main(argv=None) -> int:
    from kt.autotune.compile import target_compiler_available
    from kt.autotune.figures import check_outputs
    from kt.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--ops", choices=sorted(OPS), default="fit")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--per-bin", type=int, default=1, help="builds drawn from each bin (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", help="write one line per build here")
    parser.add_argument(
        "--score", nargs="+", metavar="FILE", help="judge kt's legality on earlier --jsonl files"
    )
    parser.add_argument("--fit", nargs="+", metavar="FILE", help="fit the rule's limits to these")
    parser.add_argument("--check", nargs="+", metavar="FILE", help="with --fit: judge its limits on these")
    args = parser.parse_args(argv)
    if args.check and not args.fit:
        parser.error("--check: judges --fit's limits; give --fit FILE too")
    if args.score and args.fit:
        parser.error("--score and --fit: give one of them")
    missing = missing_files([*(args.score or args.fit or ()), *(args.check or ())])
    if missing:
        parser.error(f"{missing} not found")
    if args.score:
        score(load(args.score))
        return 0
    if args.fit:
        fit(args.fit, args.check or ())
        return 0
    if not args.jsonl:
        parser.error("--jsonl: where to write the builds (or --score / --fit FILE)")
    if args.per_bin < 1:
        parser.error(f"--per-bin: {args.per_bin}; give 1 or more")
    check_outputs(parser, {"--jsonl": args.jsonl})
    if not target_compiler_available():
        parser.error("Triton's NVIDIA backend (its ptxas) is not installed here; nothing can be compiled")
    rows = sample(args.arch, specs(args.ops, args.dtypes), args.per_bin, args.seed, candidates, counted, BIN)
    atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    score(load([args.jsonl]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
