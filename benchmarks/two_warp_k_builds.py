"""Compile two-warp programs of the structured families (block-GEMM: Monarch, butterfly; tile-sum: block-sparse,
low-rank, sums; the block-sparse weight gradient) with K steps of 64 and 128, for sm_80 or sm_90 with Triton's
bundled ptxas (no GPU), and judge the two-warp K-step rule against them: the evidence behind
`kt.codegen.gemm.two_warp_k_reason` (a real tensor-core two-warp program spills when its accumulator and one K
step's operand registers per thread pass `TWO_WARP_K_LIMITS`, a sum's fused accumulation
`kt.codegen.tilesum.FUSED_SUM_TWO_WARP_K_LIMITS`).

A sample: for each op and dtype (float16, bfloat16 and tf32: the rule's real tensor-core dots), the configs that
every other legality rule admits (two warps, K step 64 or 128), grouped in bins of `BIN` registers of `acc +
operands` (`acc`: the family's fp32 accumulator registers per thread; `operands`: one K step's two operand tiles
per thread, `kt.codegen.gemm.k_step_registers`, 16-bit elements two to a register; binned undoubled, as the
samples below were drawn, though kt's count, `count`, doubles a block-GEMM loop's over several blocks);
`--per-bin` of each bin drawn with `--seed`, compiled by kt's compile workers and labelled as the compile stage
labels them (ok, or refused: spills). `--ops fit` are the examples' ops; `--ops held-out` and `--ops check`
other shapes, block sizes and ranks. One JSON line per build (--jsonl).

`--score FILE...` prints each bin's builds and spills, and per architecture how many clean builds kt's legality
(as it is now) refuses and how many spills it catches. `--fit FILE...` gives, for each architecture and kind of
program (a sum's fused accumulation over its terms, or one source), the highest limit of the count at or below
which no build of the files spilled (`fitted_limits`), and with `--check FILE...` how it does on other builds.
Files may be gzipped.

The limits kt has (2026-12-05, Triton 3.9; the check configs again under Triton 3.6, BENCHMARKS.md):

    python benchmarks/two_warp_k_builds.py --arch 80 --ops fit --seed 81 --per-bin 2 --jsonl fit80.jsonl
    python benchmarks/two_warp_k_builds.py --arch 90 --ops fit --seed 82 --per-bin 2 --jsonl fit90.jsonl
    python benchmarks/two_warp_k_builds.py --arch 80 --ops held-out --seed 91 --per-bin 2 --jsonl held80.jsonl
    python benchmarks/two_warp_k_builds.py --arch 90 --ops held-out --seed 92 --per-bin 2 --jsonl held90.jsonl
    python benchmarks/two_warp_k_builds.py --arch 80 --ops check --seed 101 --per-bin 2 --jsonl check80.jsonl
    python benchmarks/two_warp_k_builds.py --arch 90 --ops check --seed 102 --per-bin 2 --jsonl check90.jsonl
    python benchmarks/two_warp_k_builds.py --fit fit80.jsonl fit90.jsonl held80.jsonl held90.jsonl \
        --check check80.jsonl check90.jsonl
    python benchmarks/two_warp_k_builds.py --score check80.jsonl

The builds are in benchmarks/results/two-warp-k-2026-12-05/.

Nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import Study, load, refused_now  # noqa: E402, F401 (the tests read them here)

DTYPES = ["float16", "bfloat16", "tf32"]
BIN = 32  # registers per thread: the width of a sampling bin of `acc + operands`
OPS = {
    "fit": [
        {"op": "monarch", "shape": {"batch": 16384, "n": 4096, "nblocks": 64}},
        {"op": "monarch", "shape": {"batch": 8192, "w1": [16, 96, 64], "w2": [32, 48, 48]}},
        {"op": "butterfly", "shape": {"batch": 8192, "n": 1024}},
        {"op": "lowrank", "shape": {"batch": 8192, "dims": [4096, 64, 4096]}},
        {
            "op": "blocksparse",
            "shape": {"batch": 8192, "in": 4096, "out": 4096},
            "sparsity": {"block": [64, 64], "density": 0.1, "seed": 0},
        },
        {
            "op": "sum",
            "terms": [
                {
                    "op": "blocksparse",
                    "shape": {"batch": 4096, "in": 1024, "out": 1024},
                    "sparsity": {"block": [64, 64], "pattern": "banded", "width": 1},
                },
                {"op": "lowrank", "shape": {"batch": 4096, "dims": [1024, 32, 1024]}},
            ],
        },
    ],
    "held-out": [
        {"op": "monarch", "shape": {"batch": 4096, "n": 8192, "nblocks": 64}},
        {"op": "butterfly", "shape": {"batch": 4096, "n": 256}},
        {"op": "lowrank", "shape": {"batch": 4096, "dims": [2048, 128, 1024]}},
        {
            "op": "blocksparse",
            "shape": {"batch": 4096, "in": 2048, "out": 2048},
            "sparsity": {"block": [128, 128], "density": 0.2, "seed": 1},
        },
        {
            "op": "sum",
            "terms": [
                {
                    "op": "blocksparse",
                    "shape": {"batch": 4096, "in": 2048, "out": 2048},
                    "sparsity": {"block": [32, 32], "pattern": "banded", "width": 2},
                },
                {"op": "lowrank", "shape": {"batch": 4096, "dims": [2048, 64, 2048]}},
            ],
        },
        {
            "op": "blocksparse_grad",
            "shape": {"batch": 4096, "in": 2048, "out": 2048},
            "sparsity": {"block": [64, 64], "density": 0.2, "seed": 2},
        },
    ],
    "check": [
        {"op": "monarch", "shape": {"batch": 2048, "n": 2048, "nblocks": 16}},
        {"op": "butterfly", "shape": {"batch": 2048, "n": 512}},
        {"op": "lowrank", "shape": {"batch": 2048, "dims": [1024, 256, 512]}},
        {
            "op": "blocksparse",
            "shape": {"batch": 2048, "in": 2048, "out": 1024},
            "sparsity": {"block": [64, 128], "density": 0.3, "seed": 3},
        },
        {
            "op": "sum",
            "terms": [
                {
                    "op": "blocksparse",
                    "shape": {"batch": 2048, "in": 1024, "out": 1024},
                    "sparsity": {"block": [64, 64], "density": 0.2, "seed": 4},
                },
                {"op": "lowrank", "shape": {"batch": 2048, "dims": [1024, 128, 1024]}},
            ],
        },
        {
            "op": "blocksparse_grad",
            "shape": {"batch": 2048, "in": 1024, "out": 1024},
            "sparsity": {"block": [128, 128], "density": 0.3, "seed": 5},
        },
    ],
}


def counted(family, problem, config, profile) -> dict:
    """The rule's count of `config`: accumulator registers (the family's `resources`), one K step's operand
    registers (a fused low-rank chain's tiles are x's and W1's, block_k x rank) and its elements per thread."""
    from kt.codegen.gemm import k_step_registers, padded
    from kt.dtypes import itemsize
    from kt.ir.problems import ChainProblem

    acc = family.resources(problem, config, profile)[1]
    rows = getattr(config, "block_b", None) or config.block_m
    fused_chain = getattr(config, "fused", 0) and isinstance(problem, ChainProblem)
    cols = padded(problem.dims[1]) if fused_chain else config.block_n
    threads = config.num_warps * profile.warp_size
    operands = k_step_registers(problem.dtype, rows, cols, config.block_k, threads)
    return dict(acc=acc, operands=operands, elements=operands * 4 // itemsize(problem.dtype))


RULE_REASON = "accumulator and K-step operand registers over"  # two_warp_k_reason's count (not its fallback)


def candidates(problem, profile) -> list:
    """The configs of `problem` that the two-warp K-step count refuses or every rule admits, of two warps and
    a K step over 32 (the rule is legality's last, so every other rule admits them)."""
    from kt.codegen import family_for

    out = []
    for config, reason in family_for(problem).judged(problem, profile):
        if config.num_warps != 2 or config.block_k <= 32:
            continue
        if reason is None or reason.startswith(RULE_REASON):
            out.append(config)
    return out


def kind(row: dict) -> str:
    """A sum's fused accumulation over its terms (limits of its own), or a program over one source."""
    return "fused sum" if row["family"] == "sum" and row["config"].get("fused") else "one source"


def count(row: dict) -> int:
    """The rule's count of a build: a block-GEMM program over several blocks (GROUP over 1) counts its operand
    registers twice, as kt does (the next block's tiles are live beside them)."""
    several = "block_b" in row["config"] and row["config"].get("group", 1) > 1
    return row["acc"] + row["operands"] * (2 if several else 1)


STUDY = Study(OPS, DTYPES, BIN, candidates, counted, count, kind, before="any K step over 32")
fitted_limits = STUDY.fitted_limits


def main(argv=None) -> int:
    return STUDY.main(argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
