"""Compile the FFT's complex launches that take several blocks in one program (GROUP over 1) with K steps of 64
and 128, for sm_80 or sm_90 with Triton's bundled ptxas (no GPU), and judge kt's rule for them against the
builds: the evidence behind `kt.codegen.blockgemm.complex_several_k_reason`.

A sample: for each op and dtype (float16, and float32 with tf32: the FFT's tensor-core dots), the configs of
four or eight warps (two-warp complex programs keep K steps of 32) that every other legality rule admits, grouped
in bins of `BIN` registers of `acc + operands` (`acc`: the launch's fp32 accumulator registers per thread, real
and imaginary; `operands`: one K step's operand registers per thread, real and imaginary planes, undoubled; the
rule's count, `count`, doubles them, the next block's tiles being live beside them); `--per-bin` of each bin drawn with `--seed`, compiled by kt's compile
workers and labelled as the compile stage labels them (ok, or refused: spills). `--ops fit` are the examples'
n = 4096 (real and complex input); `--ops held-out` and `--ops check` other sizes, so other four-step splits.
One JSON line per build (--jsonl).

`--score FILE...` prints each bin's builds and spills, and per architecture how many clean builds kt's legality
(as it is now) refuses and how many spills it catches. `--fit FILE...` gives, for each architecture and kind of
dot (16-bit or tf32), the highest limit of the count at or below which no build of the files spilled
(`fitted_limits`), and with `--check FILE...` how it does on other builds. Files may be gzipped.

The limits kt has (2026-12-05, Triton 3.9; the check configs again under Triton 3.6, BENCHMARKS.md):

    python benchmarks/complex_group_k_builds.py --arch 90 --ops fit --seed 190 --per-bin 2 --jsonl fit90.jsonl
    python benchmarks/complex_group_k_builds.py --arch 80 --ops fit --seed 180 --per-bin 2 --jsonl fit80.jsonl
    python benchmarks/complex_group_k_builds.py --arch 90 --ops held-out --seed 290 --per-bin 2 --jsonl held90.jsonl
    python benchmarks/complex_group_k_builds.py --arch 80 --ops held-out --seed 280 --per-bin 2 --jsonl held80.jsonl
    python benchmarks/complex_group_k_builds.py --arch 90 --ops check --seed 390 --per-bin 2 --jsonl check90.jsonl
    python benchmarks/complex_group_k_builds.py --arch 80 --ops check --seed 380 --per-bin 2 --jsonl check80.jsonl
    python benchmarks/complex_group_k_builds.py --fit fit80.jsonl fit90.jsonl held80.jsonl held90.jsonl \
        --check check80.jsonl check90.jsonl
    python benchmarks/complex_group_k_builds.py --score check90.jsonl

The builds are in benchmarks/results/complex-group-k-2026-12-05/.

Nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import Study, dtype_kind, load, refused_now  # noqa: E402, F401 (the tests read them here)

DTYPES = ["float16", "tf32"]
BIN = 16  # registers per thread: the width of a sampling bin of `acc + operands` (undoubled)
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


def count(row: dict) -> int:
    """The rule's count of a build: the accumulator and twice one K step's operand registers."""
    return row["acc"] + 2 * row["operands"]


STUDY = Study(OPS, DTYPES, BIN, candidates, counted, count, dtype_kind, before="any K step over 32")
fitted_limits = STUDY.fitted_limits


def main(argv=None) -> int:
    return STUDY.main(argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
