"""Compile tensor-core programs of four and eight warps whose fp32 accumulator holds 64 or 128 registers per
thread, for sm_80 or sm_90 with Triton's bundled ptxas (no GPU), and judge kt's deep-K rule against them: the
evidence behind `kt.codegen.gemm.deep_k_reason` (an mma.sync program with its accumulator at the limit, 128,
spills when one K step's A and B tiles exceed `DEEP_K_ELEMENTS` elements per thread).

A sample: for each op and dtype, the configs that every other legality rule admits (no TMA, four or eight
warps, 64 or more accumulator registers), one of each group_m twin, grouped by (accumulator registers, warps,
A and B tile elements per thread in a K step); `--per-group` of each group drawn with `--seed`, compiled by kt's
compile workers and labelled as the compile stage labels them (ok, or refused: spills). `--ops fit` are dense
GEMMs at three aligned shapes; `--ops held-out` two other dense shapes and the tile-sum families' GEMMs
(block-sparse with 128 x 128 blocks, low-rank), which the rule covers too. One JSON line per build (--jsonl).

`--score FILE...` prints each group's builds and spills, and how many clean builds kt's legality (as it is now,
under the Triton installed: the rule holds from Triton 3.8, `DEEP_K_TRITON`) refuses and how many spills it
catches.

    python benchmarks/deep_k_builds.py --arch 80 --ops fit --seed 1 --jsonl /tmp/deepk80.jsonl
    python benchmarks/deep_k_builds.py --arch 80 --ops held-out --seed 2 --jsonl /tmp/deepk80h.jsonl
    python benchmarks/deep_k_builds.py --score /tmp/deepk80.jsonl /tmp/deepk80h.jsonl

(2026-12-03: fit seed 1, held-out seed 2, Triton 3.9; the held-out sample under Triton 3.6 in a second
environment; 2026-12-06: the fit sample under Triton 3.8.0 (Python 3.10) and 3.7.1 (Python 3.13) too, each in
an environment of its own.)

Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import checked_load  # noqa: E402

DTYPES = ["float16", "bfloat16", "tf32"]
DENSE = {
    "fit": [(4096, 4096, 4096), (1024, 1024, 1024), (16384, 1024, 4096)],
    "held-out": [(3072, 1536, 2560), (768, 4096, 1024)],
}  # (M, N, K)
HELD_OUT_FAMILIES = [
    {
        "op": "blocksparse",
        "shape": {"batch": 4096, "in": 4096, "out": 4096},
        "sparsity": {"block": [128, 128], "density": 0.1, "seed": 0},
    },
    {"op": "lowrank", "shape": {"batch": 8192, "dims": [4096, 64, 4096]}},
]


def specs(ops, dtypes: list[str]) -> list[dict]:
    """op.yaml mappings of the chosen ops (fit, held-out, or one dense (M, N, K)) in each dtype (tf32: float32
    with precision tf32)."""
    shapes = DENSE.get(ops, [ops])
    bases = [
        {"op": "dense", "name": f"dense_m{m}_n{n}_k{k}", "shape": {"m": m, "n": n, "k": k}}
        for m, n, k in shapes
    ]
    if ops == "held-out":
        bases += [{**base, "name": base["op"]} for base in HELD_OUT_FAMILIES]
    out = []
    for base in bases:
        for dtype in dtypes:
            data = {**base, "dtype": dtype}
            if dtype == "tf32":
                data.update(dtype="float32", precision="tf32")
            out.append(data)
    return out


def problem_of(data: dict):
    from kt.ir.ops import op_from_spec
    from kt.spec import parse_spec

    (node,) = op_from_spec(parse_spec(data)).kernel_graph().kernels
    return node.problem


def accumulator(family, problem, config, profile) -> int:
    """The fp32 accumulator registers per thread legality counts for `config` (the family's `resources`)."""
    return family.resources(problem, config, profile)[1]


def candidates(problem, profile, accs=(64, 128), warps=(4, 8)) -> list:
    """The configs of `problem` every legality rule but the deep-K rule (`deep_k_spills`: as under Triton 3.9,
    whatever is installed, so that each Triton builds the same sample) admits, not TMA, not fused (a fused
    low-rank chain holds two accumulators), of `warps` warps and `accs` accumulator registers per thread; one of
    each group_m twin."""
    from kt.codegen import family_for
    from kt.codegen.gemm import deep_k_spills

    family = family_for(problem)
    seen, out = set(), []
    for config, reason in family.judged(problem, profile):
        if getattr(config, "tma", 0) or getattr(config, "fused", 0) or config.num_warps not in warps:
            continue
        acc = accumulator(family, problem, config, profile)
        if acc not in accs or reason not in (None, deep_k_spills(problem, config, profile, acc)):
            continue
        tile = tuple((k, v) for k, v in config.to_dict().items() if k != "group_m")
        if tile not in seen:
            seen.add(tile)
            out.append(config)
    return out


def sample(
    arch: int, ops, dtypes: list[str], per_group: int, seed: int, accs=(64, 128), warps=(4, 8)
) -> list[dict]:
    from kt.autotune.runners import labelled_builds
    from kt.autotune.tune import generated_candidate
    from kt.codegen import family_for
    from kt.codegen.gemm import stage_elements, wgmma_build
    from kt.device import get_profile

    profile = get_profile("a100" if arch == 80 else "h100")
    rng = random.Random(seed)
    jobs, rows = [], []
    for data in specs(ops, dtypes):
        problem = problem_of(data)
        family = family_for(problem)
        groups = defaultdict(list)
        for config in candidates(problem, profile, accs, warps):
            acc = accumulator(family, problem, config, profile)
            per_thread = stage_elements(config, profile.warp_size)
            groups[(acc, config.num_warps, per_thread)].append(config)
        for (acc, num_warps, per_thread), configs in sorted(groups.items()):
            for config in rng.sample(configs, min(per_group, len(configs))):
                jobs.append((generated_candidate(problem, config), profile))
                rows.append(
                    dict(
                        spec=data,
                        config=config.to_dict(),
                        key=config.key(),
                        acc=acc,
                        warps=num_warps,
                        per_thread=per_thread,
                        wgmma=wgmma_build(problem, config, profile),
                    )
                )
    return labelled_builds(jobs, rows, arch)


def refused_now(row: dict) -> bool:
    """Whether kt's legality, as it is now under the Triton installed, refuses the row's config on the row's
    architecture."""
    from kt.codegen import family_for
    from kt.codegen.restrict import illegal_config
    from kt.device import get_profile

    problem = problem_of(row["spec"])
    family = family_for(problem)
    config = family.config_type.from_dict(row["config"])
    profile = get_profile("a100" if row["arch"] == 80 else "h100")
    return illegal_config(family, problem, config, profile) is not None


FIELDS = ("arch", "status", "spec", "config", "acc", "warps", "per_thread", "wgmma")  # what --score reads


def load(paths) -> list[dict]:
    """The builds of --jsonl files, gzipped ones too (build_study.load: a build that did not compile clean is
    `spilled`; a file that is not JSON lines of builds with every field of FIELDS raises BuildsError)."""
    from build_study import load as load_builds

    return load_builds(paths, FIELDS)


def score(rows: list[dict]) -> None:
    """Each group's builds and spills, and per architecture what kt's legality now refuses of them."""
    groups = defaultdict(lambda: [0, 0])
    for row in rows:
        group = groups[(row["arch"], row["acc"], row["warps"], row["per_thread"], row["wgmma"])]
        group[0] += 1
        group[1] += row["status"] != "ok"
    print("sm   acc warps  A+B elements/thread  mma       builds  spills")
    for (arch, acc, warps, per_thread, wgmma), (builds, spills) in sorted(groups.items()):
        mma = "wgmma" if wgmma else "mma.sync"
        print(f"{arch:<4} {acc:>3} {warps:>5} {per_thread:>19}  {mma:<8} {builds:>8} {spills:>7}")
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch]
        spills = [r for r in mine if r["status"] != "ok"]
        caught = sum(refused_now(r) for r in spills)
        clean_refused = sum(refused_now(r) for r in mine if r["status"] == "ok")
        print(
            f"sm_{arch}: {len(mine)} builds ({len({json.dumps(r['spec']) for r in mine})} ops), kt's legality "
            f"refuses {clean_refused} clean builds and catches {caught} of {len(spills)} spills"
        )


def ops_of(text: str):
    if text in DENSE:
        return text
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; give fit, held-out or MxNxK (e.g. 1024x1024x1024)")
    return shape


def main(argv=None) -> int:
    from kt.autotune.compile import target_compiler_available
    from kt.autotune.figures import check_outputs
    from kt.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=80)
    parser.add_argument(
        "--ops", type=ops_of, default="fit", help="fit, held-out, or one dense GEMM's MxNxK (default fit)"
    )
    parser.add_argument("--acc", type=int, nargs="+", choices=(64, 128), default=[64, 128])
    parser.add_argument("--warps", type=int, nargs="+", choices=(4, 8), default=[4, 8])
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--per-group", type=int, default=3, help="builds drawn from each group (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", help="write one line per build here")
    parser.add_argument(
        "--score", nargs="+", metavar="FILE", help="judge kt's legality on earlier --jsonl files"
    )
    args = parser.parse_args(argv)
    if args.score:
        missing = [path for path in args.score if not os.path.isfile(path)]
        if missing:
            parser.error(f"--score: {missing[0]!r} not found")
        checked_load(parser, args, FIELDS)
        score(load(args.score))
        return 0
    if args.per_group < 1:
        parser.error(f"--per-group: {args.per_group}; give 1 or more")
    check_outputs(parser, {"--jsonl": args.jsonl})
    if not target_compiler_available():
        parser.error("Triton's NVIDIA backend (its ptxas) is not installed here; nothing can be compiled")
    rows = sample(args.arch, args.ops, args.dtypes, args.per_group, args.seed, args.acc, args.warps)
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    score(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
