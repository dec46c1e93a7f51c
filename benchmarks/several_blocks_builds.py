"""Compile the block-GEMM families' tensor-core launches that take several blocks in one program (GROUP over 1)
with more than 32 accumulator registers per thread, for sm_80 or sm_90 with Triton's bundled ptxas (no GPU), and
judge kt's rule for them against the builds: the evidence behind `kt.codegen.blockgemm.several_blocks_reason`.

A sample: for each op (Monarch, butterfly, the FFT on real and complex input) and dtype (float16, and float32
with tf32: tensor-core dots; float32 FMA dots keep 32), the configs that every other legality rule admits,
grouped in bins of `BIN` registers of `acc + operands` (`acc`: the launch's fp32 accumulator registers per
thread, both planes where complex; `operands`: one K step's operand registers per thread, both planes where
complex, undoubled; the rule's count, `count`, doubles them, the next block's tiles being live beside them);
`--per-bin` of each bin drawn with `--seed`, compiled by kt's compile workers and labelled as the compile stage
labels them (ok, or refused: spills). `--ops fit` are the examples' shapes; `--ops held-out` and `--ops check`
other sizes and block counts. One JSON line per build (--jsonl).

`--score FILE...` prints each bin's builds and spills, and per architecture how many clean builds kt's legality
(as it is now) refuses and how many spills it catches. `--fit FILE...` gives, for each architecture and kind of
dot (real or complex; 16-bit or tf32), the highest limit of the count at or below which no build of the files
spilled (`fitted_limits`), and with `--check FILE...` how it does on other builds. Files may be gzipped.

The limits kt has (2026-12-05, Triton 3.9; the check configs again under Triton 3.6, BENCHMARKS.md):

    python benchmarks/several_blocks_builds.py --arch 90 --ops fit --seed 190 --per-bin 2 --jsonl fit90.jsonl
    python benchmarks/several_blocks_builds.py --arch 80 --ops fit --seed 180 --per-bin 2 --jsonl fit80.jsonl
    python benchmarks/several_blocks_builds.py --arch 90 --ops held-out --seed 290 --per-bin 2 --jsonl held90.jsonl
    python benchmarks/several_blocks_builds.py --arch 80 --ops held-out --seed 280 --per-bin 2 --jsonl held80.jsonl
    python benchmarks/several_blocks_builds.py --arch 90 --ops check --seed 390 --per-bin 2 --jsonl check90.jsonl
    python benchmarks/several_blocks_builds.py --arch 80 --ops check --seed 380 --per-bin 2 --jsonl check80.jsonl
    python benchmarks/several_blocks_builds.py --fit fit80.jsonl fit90.jsonl held80.jsonl held90.jsonl \
        --check check80.jsonl check90.jsonl
    python benchmarks/several_blocks_builds.py --score check90.jsonl

The builds are in benchmarks/results/several-blocks-2026-12-05/.

Nothing here is timed.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import Study, dtype_kind, load, problems_of, refused_now  # noqa: E402, F401 (the tests read them)

DTYPES = ["float16", "tf32"]
BIN = 16  # registers per thread: the width of a sampling bin of `acc + operands` (undoubled)
OPS = {
    "fit": [
        {"op": "monarch", "shape": {"batch": 16384, "n": 4096, "nblocks": 64}},
        {"op": "monarch", "shape": {"batch": 8192, "w1": [16, 96, 64], "w2": [32, 48, 48]}},
        {"op": "butterfly", "shape": {"batch": 8192, "n": 1024}},
        {"op": "fft", "shape": {"batch": 49152, "n": 4096}, "input": "real"},
        {"op": "fft", "shape": {"batch": 49152, "n": 4096}, "input": "complex"},
    ],
    "held-out": [
        {"op": "monarch", "shape": {"batch": 4096, "n": 8192, "nblocks": 64}},
        {"op": "butterfly", "shape": {"batch": 4096, "n": 256}},
        {"op": "fft", "shape": {"batch": 16384, "n": 1024}, "input": "complex"},
        {"op": "fft", "shape": {"batch": 4096, "n": 16384}, "input": "real"},
    ],
    "check": [
        {"op": "monarch", "shape": {"batch": 2048, "n": 2048, "nblocks": 16}},
        {"op": "butterfly", "shape": {"batch": 2048, "n": 512}},
        {"op": "fft", "shape": {"batch": 8192, "n": 2048}, "input": "real"},
        {"op": "fft", "shape": {"batch": 4096, "n": 8192}, "input": "complex"},
    ],
}
# the rule's reason (its count); before it, kt refused any such accumulator over 32 first
RULE_REASON = "accumulator and twice its K-step operand registers over"


def counted(family, problem, config, profile) -> dict:
    """The rule's count of `config`: accumulator registers (the family's `resources`, both planes where complex),
    one K step's operand registers (both planes where complex, undoubled) and its operand elements per thread."""
    from kt.codegen.blockgemm import k_step_operands
    from kt.dtypes import itemsize

    acc = family.resources(problem, config, profile)[1]
    operands = k_step_operands(problem, config, config.num_warps * profile.warp_size)
    return dict(acc=acc, operands=operands, elements=operands * 4 // itemsize(problem.dtype))


def candidates(problem, profile) -> list:
    """The configs of `problem` over several blocks with an accumulator over 32 registers per thread that the
    rule refuses or every rule admits (the rule is the block-GEMM legality's last)."""
    from kt.codegen import family_for
    from kt.codegen.blockgemm import SEVERAL_BLOCKS_FREE_ACC

    family = family_for(problem)
    return [
        config
        for config, reason in family.judged(problem, profile)
        if config.group > 1
        and not config.fused
        and family.resources(problem, config, profile)[1] > SEVERAL_BLOCKS_FREE_ACC
        and (reason is None or reason.startswith(RULE_REASON))
    ]


def count(row: dict) -> int:
    """The rule's count of a build: the accumulator and twice one K step's operand registers."""
    return row["acc"] + 2 * row["operands"]


def kind(row: dict) -> str:
    """What the rule has a limit for: real or complex dots (the FFT's), 16-bit or tf32 operands, and whether x or
    y moves through a strided end map (`strided`)."""
    ends = "strided" if strided(row) else "contiguous"
    return f"{'complex' if row['family'] == 'fft' else 'real'} {dtype_kind(row)} {ends}"


@functools.cache
def _strided(spec: str, problem: str, config: str) -> bool:
    from kt.codegen import family_for
    from kt.codegen.blockgemm import stages_for, strided_launch

    for found in problems_of(json.loads(spec)):
        if str(found) == problem:
            chosen = family_for(found).config_type.from_dict(json.loads(config))
            return strided_launch(chosen, stages_for(found, chosen))
    raise SystemExit(f"{problem}: not a problem of {json.loads(spec)['name']} (the ops changed)")


def strided(row: dict) -> bool:
    """Whether the build's launches move x or y through a strided end map (no feature-major ends)."""
    return _strided(json.dumps(row["spec"], sort_keys=True), row["problem"], json.dumps(row["config"]))


STUDY = Study(OPS, DTYPES, BIN, candidates, counted, count, kind, before="any accumulator over 32")
fitted_limits = STUDY.fitted_limits


def main(argv=None) -> int:
    return STUDY.main(argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
