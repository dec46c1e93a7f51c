"""Compile unaligned 16-bit GEMM builds for sm_80 or sm_90 with Triton's bundled ptxas (no GPU) and judge the
16-bit unaligned rule of legality against them: the evidence behind `kt.codegen.gemm.unaligned_reason`.

A sample: for each shape (float16, rows not 16-element aligned), the configs that every other legality rule
admits (four and eight warps, no TMA) whose unweighted count `acc + BM*BK/threads (A unaligned) + BK*BN/threads
(B unaligned)` lies between 96 and 400 (two-warp ones with `--two-warps`), `--per-shape` of them drawn with `--seed`; each is compiled by kt's
compile workers and labelled as the compile stage labels it (ok, or refused: spills, shared memory). One JSON
line per build goes to --jsonl, with the Triton version.

`--dtype float32 --arch 80` samples the float32 (ieee) configs that the sm_80 FMA rule alone refuses
(`fma_unaligned_spills`: judged as under Triton 3.9 whatever is installed, so that each Triton builds the same
sample). `--dtype tf32` samples float32 problems with `precision: tf32` as float16 ones are sampled: the
evidence behind the tf32 count (`TF32_UNALIGNED_WEIGHTS`).

`--score FILE...` prints, for the rule kt has now (under the Triton installed) and, for float16 builds, the
unweighted count (limits 144 on sm_80, 192 on sm_90; for tf32 builds, the float16 rule's weights and limits),
how many clean builds each refuses and how many spills it catches; `--fit FILE...` lists weightings of the
tiles, one for every architecture in the files, each with the lowest limit per architecture that refuses no clean
build of them, fewest spills missed first, and with `--check FILE...` how each does on other builds (held-out
shapes).

    python benchmarks/unaligned_builds.py --arch 80 --seed 21 --jsonl /tmp/fit80.jsonl
    python benchmarks/unaligned_builds.py --arch 80 --seed 31 --shapes held-out --jsonl /tmp/held80.jsonl
    python benchmarks/unaligned_builds.py --fit /tmp/fit80.jsonl --check /tmp/held80.jsonl
    python benchmarks/unaligned_builds.py --score /tmp/held80.jsonl

Two-warp programs, which have weights and a limit of their own: `--two-warps --per-shape 20`, fit on seeds 61
(sm_80) and 62 (sm_90), checked on seeds 71 and 72 with `--shapes held-out` (2026-12-05, Triton 3.9; the
held-out seeds under Triton 3.6 too).

(2026-12-03, Triton 3.9: fit on seeds 21 (sm_80) and 22 (sm_90), checked on seeds 31 and 32 with
`--shapes held-out`, 45 builds per shape; Triton 3.6 in a second environment, seed 31 for both. The FMA rule:
`--dtype float32 --arch 80 --seed 5 --per-shape 10` under each Triton, and on 2026-12-06 under Triton 3.8.0
(Python 3.10) and 3.7.1 (Python 3.13), each in an environment of its own. tf32, Triton 3.9: `--dtype tf32`, fit
on seeds 41 (sm_80) and 42 (sm_90), checked on seeds 51 and 52 with `--shapes held-out`.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_study import checked_load  # noqa: E402

FIT_SHAPES = [
    (4096, 4104, 4096),
    (256, 4100, 1000),
    (1000, 999, 77),
    (4096, 4096, 4100),
    (512, 1030, 2050),
    (2048, 2056, 2048),
    (384, 1000, 3000),
]  # (M, N, K)
HELD_OUT_SHAPES = [
    (768, 1032, 1000),
    (3000, 2000, 1000),
    (128, 8200, 520),
    (1536, 3080, 777),
    (640, 1000, 1000),
    (2048, 4100, 2048),
    (1024, 1024, 1030),
]
OLD_LIMITS = {80: 144, 90: 192}  # the unweighted count's limits (the rule before 2026-12-03)


def sample(
    arch: int, seed: int, per_shape: int, shapes, dtype: str = "float16", two_warps: bool = False
) -> list[dict]:
    """`per_shape` builds of each shape's configs (module docstring), compiled and labelled; `dtype` float16,
    float32 (the FMA rule's configs) or tf32 (float32 operands, precision tf32); `two_warps`: two-warp programs
    (whose rule has weights of its own) in place of four- and eight-warp ones."""
    from kt.autotune.runners import labelled_builds
    from kt.autotune.tune import generated_candidate
    from kt.codegen import gemm
    from kt.device import A100, H100

    device = A100 if arch == 80 else H100
    rng = random.Random(seed)
    jobs, rows = [], []
    for m, n, k in shapes:
        problem = problem_of([m, n, k], dtype)
        admitted = []
        for config in fma_refused(problem, device) if dtype == "float32" else gemm.GemmFamily().all_configs():
            if (
                config.tma
                or (config.num_warps == 2) != two_warps
                or not admitted_besides(gemm.unaligned_reason, problem, config, device)
            ):
                continue  # refused by another rule
            tiles = dict(zip(("acc", "a_tile", "b_tile"), gemm.unaligned_tiles(problem, config, 32)))
            if dtype == "float32" or 96 <= sum(tiles.values()) <= 400:
                admitted.append((config, tiles))
        for config, tiles in rng.sample(admitted, min(per_shape, len(admitted))):
            jobs.append((generated_candidate(problem, config), device))
            rows.append(
                dict(
                    shape=[m, n, k],
                    dtype=problem.dtype,
                    precision=problem.precision,
                    config=config.to_dict(),
                    key=config.key(),
                    **tiles,
                )
            )
    return labelled_builds(jobs, rows, arch)


def problem_of(shape, dtype: str, precision: str = "ieee"):
    """The GemmProblem of a sampled shape: `dtype` tf32 is float32 with precision tf32."""
    from kt.ir import GemmProblem

    if dtype == "tf32":
        dtype, precision = "float32", "tf32"
    return GemmProblem(*shape, dtype=dtype, precision=precision)


def admitted_besides(rule, problem, config, device) -> bool:
    """Whether every legality rule but `rule` and the deep-K rule (`deep_k_spills`, which came after these
    samples were first drawn; judged as under Triton 3.9 whatever is installed) admits `config`: it is legal, or
    refused by one of those two."""
    from kt.codegen.gemm import accumulator_registers, deep_k_spills, illegal_reason

    acc = accumulator_registers(config, device.warp_size)
    allowed = (None, rule(problem, config, device), deep_k_spills(problem, config, device, acc))
    return illegal_reason(problem, config, device) in allowed


def fma_refused(problem, device) -> list:
    """The configs of a float32 (ieee) problem that the sm_80 FMA rule alone refuses, judged as under the
    Triton the rule holds for whatever Triton is installed (`fma_unaligned_spills`): the same sample under each."""
    from kt.codegen.gemm import GemmFamily, fma_unaligned_spills

    return [
        config
        for config in GemmFamily().all_configs()
        if fma_unaligned_spills(problem, config, device)
        and admitted_besides(fma_unaligned_spills, problem, config, device)
    ]


FIELDS = ("arch", "status", "shape", "config", "acc", "a_tile", "b_tile")  # what --score and --fit read


def load(paths) -> list[dict]:
    """The builds of --jsonl files, gzipped ones too (build_study.load: a build that did not compile clean is
    `spilled`; a file that is not JSON lines of builds with every field of FIELDS raises BuildsError)."""
    from build_study import load as load_builds

    return load_builds(paths, FIELDS)


def weighted(wa: float, wb: float, limit: float):
    """The rule `acc + wa * a_tile + wb * b_tile > limit` on a sampled build."""
    return lambda r: r["acc"] + wa * r["a_tile"] + wb * r["b_tile"] > limit


def judged(rows, refuses) -> tuple[int, int, int]:
    """(clean builds refused, spills caught, spills) of a rule `refuses(row)`."""
    clean_refused = sum(not r["spilled"] and refuses(r) for r in rows)
    caught = sum(r["spilled"] and refuses(r) for r in rows)
    return clean_refused, caught, sum(r["spilled"] for r in rows)


def score(paths) -> None:
    from kt.codegen import GemmConfig
    from kt.codegen.gemm import UNALIGNED_LIMITS, UNALIGNED_WEIGHTS, illegal_reason
    from kt.device import A100, H100

    devices = {80: A100, 90: H100}

    def now(r):
        problem = problem_of(r["shape"], r.get("dtype", "float16"), r.get("precision", "ieee"))
        config = GemmConfig(**r["config"])
        return illegal_reason(problem, config, devices[r["arch"]]) is not None

    def before(r):
        return r["acc"] + r["a_tile"] + r["b_tile"] > OLD_LIMITS[r["arch"]]

    def as_16_bit(r):
        return weighted(*UNALIGNED_WEIGHTS, UNALIGNED_LIMITS[r["arch"]])(r)

    for path in paths:
        rows = load([path])
        kinds = {(r.get("dtype", "float16"), r.get("precision", "ieee")) for r in rows}
        rules = [("kt's rule", now)]
        if all(r["config"].get("num_warps") == 2 for r in rows):  # --two-warps
            rules.append(
                ("the two-warp rule before 2026-12-05 (weights 1 and 1 over 224)", weighted(1, 1, 224))
            )
        elif kinds == {("float16", "ieee")}:
            rules.append(("unweighted count", before))
        elif kinds == {("float32", "tf32")}:
            rules.append(("float16's weighted count", as_16_bit))
        for name, rule in rules:
            clean_refused, caught, spills = judged(rows, rule)
            print(
                f"{path}: {len(rows)} builds, {name}: {clean_refused} clean builds refused, "
                f"{caught} of {spills} spills caught"
            )


WEIGHTS = (0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4)  # the weights `--fit` tries for A's and B's elements


def fit(paths, check=(), top: int = 8) -> None:
    """Weightings of the unaligned tiles, one for every architecture in the files, each with the lowest limit
    per architecture (a multiple of 8, at least 96) that refuses no clean build of `paths`; fewest spills
    missed first, each judged with its limits on the builds of `check` too, when given."""
    rows, held = load(paths), load(check) if check else []
    archs = sorted({r["arch"] for r in rows})
    found = []
    for wa, wb in itertools.product(WEIGHTS, WEIGHTS):
        limits, missed = {}, 0
        for arch in archs:
            mine = [r for r in rows if r["arch"] == arch]
            clean = [r["acc"] + wa * r["a_tile"] + wb * r["b_tile"] for r in mine if not r["spilled"]]
            limits[arch] = max(96, 8 * math.ceil(max(clean, default=0) / 8))
            _, caught, spills = judged(mine, weighted(wa, wb, limits[arch]))
            missed += spills - caught
        found.append((missed, wa, wb, limits))
    print(
        f"{len(rows)} builds, {sum(r['spilled'] for r in rows)} spills; the lowest limits that refuse no clean "
        "build:"
    )
    for missed, wa, wb, limits in sorted(found, key=lambda f: f[0])[:top]:
        bounds = ", ".join(f"{limit} (sm_{arch})" for arch, limit in limits.items())
        line = f"  acc + {wa} * a_tile + {wb} * b_tile > {bounds}: {missed} spills missed"
        for arch, limit in limits.items():
            mine = [r for r in held if r["arch"] == arch]
            if mine:
                clean_refused, caught, spills = judged(mine, weighted(wa, wb, limit))
                line += (
                    f"; sm_{arch}'s {len(mine)} other builds: {clean_refused} clean refused, "
                    f"{caught} of {spills} spills caught"
                )
        print(line)


def shape_list(text: str):
    """'fit', 'held-out', or shapes 'MxNxK,...'."""
    if text in ("fit", "held-out"):
        return FIT_SHAPES if text == "fit" else HELD_OUT_SHAPES
    try:
        shapes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: give fit, held-out or MxNxK[,MxNxK...]")
    return shapes


def main(argv=None) -> int:
    from kt.autotune.figures import check_outputs
    from kt.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--per-shape", type=int, default=45)
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32", "tf32"),
        default="float16",
        help="float32: the sm_80 FMA rule's configs; tf32: float32 operands, precision tf32",
    )
    parser.add_argument(
        "--two-warps",
        action="store_true",
        help="sample two-warp programs, which have a rule of their own (TWO_WARP_UNALIGNED_WEIGHTS, _LIMIT)",
    )
    parser.add_argument("--shapes", type=shape_list, default="fit", help="fit, held-out or MxNxK[,MxNxK...]")
    parser.add_argument("--jsonl", help="write the sampled builds here")
    parser.add_argument("--score", nargs="+", metavar="FILE")
    parser.add_argument("--fit", nargs="+", metavar="FILE")
    parser.add_argument(
        "--check", nargs="+", metavar="FILE", help="with --fit: judge its weightings on these"
    )
    args = parser.parse_args(argv)
    if args.check and not args.fit:
        parser.error("--check: judges --fit's weightings; give --fit FILE too")
    for path in [*(args.score or args.fit or ()), *(args.check or ())]:
        if not Path(path).is_file():
            parser.error(f"{path!r} not found")
    checked_load(parser, args, FIELDS)  # each file read before the work
    if args.score:
        score(args.score)
    elif args.fit:
        fit(args.fit, args.check or ())
    else:
        if not args.jsonl:
            parser.error("--jsonl: where to write the builds (or --score / --fit FILE)")
        if args.dtype == "float32" and args.arch != 80:
            parser.error("--dtype float32: the FMA rule is sm_80's; give --arch 80")
        if args.per_shape < 1:
            parser.error(f"--per-shape: {args.per_shape}; give 1 or more")
        check_outputs(parser, {"--jsonl": args.jsonl})
        rows = sample(args.arch, args.seed, args.per_shape, args.shapes, args.dtype, args.two_warps)
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        print(f"{len(rows)} builds, {sum(r['status'] != 'ok' for r in rows)} refused: {args.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
