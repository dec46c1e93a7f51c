"""Compile the FFT's complex launches of one block per program (GROUP 1) with K steps of 64 and 128, for sm_80 or
sm_90 with Triton's bundled ptxas (no GPU), and see whether a count of registers tells the builds that spill:
the evidence that the tf32 ones are left to the compile stage (BENCHMARKS.md, "Sampled legal block-GEMM configs").

A sample: for each op and dtype (float16, and float32 with tf32: the FFT's tensor-core dots), the configs of
four or eight warps (two-warp complex programs keep K steps of 32) that every legality rule admits or the 16-bit
deep-K rule (`COMPLEX_DEEP_K_REGS`) refuses, grouped in bins of `BIN` registers of `acc + operands` (`acc`: the
launch's fp32 accumulator registers per thread, real and imaginary; `operands`: one K step's operand registers
per thread, real and imaginary planes); `--per-bin` of each bin drawn with `--seed`, compiled by kt's compile
workers and labelled as the compile stage labels them (ok, or refused: spills). `--ops fit` are the examples'
n = 4096 (real and complex input); `--ops held-out` and `--ops check` other sizes. One JSON line per build
(--jsonl). `--score FILE...` prints each bin's builds and spills and what kt's legality refuses of them;
`--fit FILE...` the highest count at or below which no build spilled, per architecture and kind of dot.

The tf32 sample of BENCHMARKS.md (2026-12-06, Triton 3.9; the builds are in
benchmarks/results/complex-deep-k-2026-12-06/):

    python benchmarks/complex_deep_k_builds.py --arch 90 --dtypes tf32 --ops fit --seed 190 --jsonl fit90.jsonl
    python benchmarks/complex_deep_k_builds.py --arch 80 --dtypes tf32 --ops fit --seed 180 --jsonl fit80.jsonl
    python benchmarks/complex_deep_k_builds.py --fit fit80.jsonl fit90.jsonl

Nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import Study, dtype_kind, load, refused_now  # noqa: E402, F401 (the tests read them here)
from complex_group_k_builds import OPS, counted  # noqa: E402 (the same ops, and the same count of a config)

DTYPES = ["float16", "tf32"]
BIN = 16  # registers per thread: the width of a sampling bin of `acc + operands`
RULE_REASONS = ("accumulator and operand tiles over",)  # the 16-bit rule's reason (`illegal_reason`)


def candidates(problem, profile) -> list:
    """The configs of `problem` in one block with a K step over 32 and four or eight warps that every rule
    admits or the 16-bit deep-K rule refuses."""
    from kt.codegen import family_for

    return [
        config
        for config, reason in family_for(problem).judged(problem, profile)
        if config.group == 1
        and config.block_k > 32
        and config.num_warps >= 4
        and not config.fused
        and (reason is None or reason.startswith(RULE_REASONS))
    ]


def count(row: dict) -> int:
    """The count of a build: the accumulator and one K step's operand registers."""
    return row["acc"] + row["operands"]


STUDY = Study(OPS, DTYPES, BIN, candidates, counted, count, dtype_kind, before="")


def main(argv=None) -> int:
    return STUDY.main(argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
