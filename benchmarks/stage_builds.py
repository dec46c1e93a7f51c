"""Count, and compile with Triton's bundled ptxas (no GPU), the dense GEMM configs that legality admits because
it counts shared memory as builds allocate it (`kt.codegen.gemm.built_shared_memory`: every pipeline stage
only with wgmma, `stages - 1` otherwise, at least the C tile's layout scratch) rather than every stage
(`kt.codegen.gemm.shared_memory`, the rule before 2026-12-02 and still the cost model's feature `smem_kib`).
The evidence behind docs/architecture.md's counts of them.

For each device (A100, sm_80; H100, sm_90) and dtype, at one shape (default 4096 x 4096 x 4096): how many
configs legality admits and how many of those the every-stage count refuses. With `--sample N`, N of the
latter per (device, dtype), drawn with `--seed`, are compiled by kt's compile workers and labelled as the
compile stage labels them: the shared memory each build allocates (against the device's per-block limit and
kt's bound) and its registers and local memory (a spill is refused). `--jsonl` keeps every build.

    python benchmarks/stage_builds.py
    python benchmarks/stage_builds.py --sample 30 --seed 7 --jsonl /tmp/stages.jsonl

(2026-12-03, Triton 3.9: the second command gives docs/architecture.md's and BENCHMARKS.md's figures.)

With `--family`, the block-GEMM examples instead (Monarch, butterfly, FFT; `kt.codegen.blockgemm.resources`):
the configs of each example's space legality admits whose every pipeline stage would not fit, and with
`--controls N` also N of the configs it refuses for shared memory that build with wgmma (every stage kept):

    python benchmarks/stage_builds.py --family monarch butterfly fft_half fft_tf32 --sample 12 --controls 3 --seed 7

With `--legal N`, also N of all the configs each example's space admits, to see how many build clean (a build
that spills or overflows is refused at the compile stage, before it is timed):

    python benchmarks/stage_builds.py --family monarch_tf32 monarch_rect_tf32 butterfly_tf32 fft_tf32 --legal 25 --seed 3

A build
the compile stage refuses is compiled again at the most stages the every-stage count admits, where the stage
axis has such a count, to tell a spill of the stages from a spill of the tile. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

DTYPES = ["float16", "bfloat16", "tf32", "float32"]
DEVICES = {"a100": 80, "h100": 90}
# the block-GEMM examples --family takes: (spec file, fields it overrides); fft_tf32 is examples/fft.yaml in tf32
FAMILIES = {
    "monarch": ("examples/monarch.yaml", {}),
    "butterfly": ("examples/butterfly.yaml", {}),
    "fft_half": ("examples/fft_half.yaml", {}),
    "fft": ("examples/fft.yaml", {}),
    "fft_tf32": ("examples/fft.yaml", {"precision": "tf32"}),
    "monarch_rect": ("examples/monarch_rect.yaml", {}),
    "monarch_tf32": ("examples/monarch.yaml", {"dtype": "float32", "precision": "tf32"}),
    "monarch_rect_tf32": ("examples/monarch_rect.yaml", {"dtype": "float32", "precision": "tf32"}),
    "butterfly_tf32": ("examples/butterfly.yaml", {"dtype": "float32", "precision": "tf32"}),
}


def newly_legal(shape, dtype: str, device: str) -> tuple[int, list]:
    """(how many configs legality admits for `shape` in `dtype` on `device`, those of them whose every pipeline
    stage would not fit the device's shared memory per block)."""
    from kt.codegen import gemm
    from kt.device import get_profile

    profile = get_profile(device)
    problem = problem_of(shape, dtype)
    legal = gemm.GemmFamily().space(problem, profile).legal
    return len(legal), [c for c in legal if gemm.shared_memory(problem, c) > profile.smem_per_block]


def problem_of(shape, dtype: str):
    """The GemmProblem of `shape` in `dtype` (tf32: float32 operands, precision tf32)."""
    from kt.ir import GemmProblem

    if dtype == "tf32":
        return GemmProblem(*shape, dtype="float32", precision="tf32")
    return GemmProblem(*shape, dtype=dtype)


def example_problem(name: str):
    """The structured problem of `--family` example `name` (FAMILIES), read from its spec file."""
    from pathlib import Path

    import yaml

    from kt.ir.ops import op_from_spec
    from kt.spec import parse_spec

    path, fields = FAMILIES[name]
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / path).read_text())
    return op_from_spec(parse_spec({**data, **fields})).problem


def family_compiled(
    names: list[str], devices: list[str], sample: int, controls: int, seed: int, legal_sample: int = 0
) -> list[dict]:
    """One row per (example, device): how many configs legality admits, how many of them every pipeline stage
    would not fit (`newly_legal`), and with `sample` and `controls` the sampled builds of those and of refused
    wgmma configs, each with kt's every-stage count, its stages - 1 count and its bound (`resources`); with
    `legal_sample`, that many of all the configs legality admits (do they build clean?)."""
    import triton

    from kt.codegen import blockgemm, family_for
    from kt.device import get_profile

    rows, jobs = [], []
    for name in names:
        problem = example_problem(name)
        family = family_for(problem)
        for device in devices:
            profile = get_profile(device)
            limit = profile.smem_per_block
            judged = list(family.judged(problem, profile))
            legal = [c for c, why in judged if why is None]

            def wgmma(c, problem=problem, profile=profile):
                return blockgemm.wgmma_tile(problem, c.block_b, c.num_warps, profile)

            over = [
                c for c in legal if not c.fused and blockgemm.shared_memory(problem, c, c.num_stages) > limit
            ]
            refused = [c for c, why in judged if why and why.startswith("shared memory over") and wgmma(c)]
            draw = random.Random(f"{seed}-{name}-{device}")
            drawn = [(c, "newly legal") for c in draw.sample(over, min(sample, len(over)))]
            drawn += [(c, "wgmma control") for c in draw.sample(refused, min(controls, len(refused)))]
            drawn += [(c, "legal") for c in draw.sample(legal, min(legal_sample, len(legal)))]
            builds = []
            for config, kind in drawn:
                jobs.append((problem, config, profile))
                builds.append(
                    dict(
                        key=config.key(),
                        kind=kind,
                        config=config.to_dict(),
                        wgmma=wgmma(config),
                        every_stage=None
                        if config.fused
                        else blockgemm.shared_memory(problem, config, config.num_stages),
                        stages_less_one=None
                        if config.fused
                        else blockgemm.shared_memory(problem, config, max(1, config.num_stages - 1)),
                        bound=blockgemm.resources(problem, config, profile)[0],
                    )
                )
            rows.append(
                dict(
                    example=name,
                    problem=str(problem),
                    device=device,
                    arch=profile.compute_capability,
                    smem_limit=limit,
                    legal=len(legal),
                    newly_legal=len(over),
                    newly_legal_wgmma=sum(map(wgmma, over)),
                    refused_wgmma=len(refused),
                    triton=triton.__version__,
                    builds=builds,
                )
            )
    compile_rows(rows, jobs)
    return rows


def family_report(rows: list[dict]) -> None:
    print("block-GEMM examples: configs legality admits, those whose every stage would not fit, and builds")
    for row in rows:
        print(
            f"{row['example']:<9} {row['device']:<5} {row['legal']:>6} legal, {row['newly_legal']:>5} only so "
            f"({row['newly_legal_wgmma']} wgmma); {row['refused_wgmma']} wgmma configs refused for shared memory"
        )
        legal = [b for b in row["builds"] if b["kind"] == "legal"]
        if legal:
            clean = sum(b["status"] == "ok" for b in legal)
            print(
                f"    {len(legal)} sampled legal builds: {clean} clean, {len(legal) - clean} refused at the compile"
            )
        for b in row["builds"]:
            if b["kind"] == "legal" and b["status"] == "ok":
                continue  # the clean ones of the legal sample are counted above
            built, every, less = (
                "-" if b[k] is None else b[k] for k in ("built", "every_stage", "stages_less_one")
            )
            print(
                f"    {b['kind']:<13} {b['key']:<26} {'wgmma' if b['wgmma'] else 'mma.sync/FMA':<12} "
                f"built {built:>6} / every stage {every:>6} / stages-1 {less:>6} / "
                f"bound {b['bound']:>6}; {b['status']} {b['registers']} reg {b['local']} B local, {b['mma']}"
            )
    builds = [b for row in rows for b in row["builds"]]
    newly = [b for b in builds if b["kind"] == "newly legal"]
    if newly:
        fits = sum(b["built"] is not None and b["built"] <= b["bound"] for b in newly)
        clean = sum(b["status"] == "ok" for b in newly)
        print(
            f"{len(newly)} newly legal builds: {fits} within kt's bound, {clean} clean (no spill, within the limit)"
        )


def compile_rows(rows: list[dict], jobs: list[tuple]) -> list[dict]:
    """Compile `jobs` (one per build of `rows`, in the rows' order) and write each outcome into its build; the
    builds."""
    import triton

    if jobs:
        print(f"compiling {len(jobs)} builds (Triton {triton.__version__})", file=sys.stderr)
    builds = [b for row in rows for b in row["builds"]]
    for build, outcome in zip(builds, compile_all(jobs)):
        build.update(outcome)
    return builds


def compile_all(jobs: list[tuple]) -> list[dict]:
    """Compile each (problem, config, profile) in kt's compile workers: its status as the compile stage gives it
    and its evidence (the shared memory built, registers, local memory)."""
    from kt.autotune.runners import compile_builds
    from kt.autotune.tune import generated_candidate

    outcomes = compile_builds([(generated_candidate(problem, config), p) for problem, config, p in jobs])
    return [
        dict(
            status=o.status,
            message=None if o.status == "ok" else o.message,
            built=(o.values or {}).get("smem_bytes"),
            registers=(o.values or {}).get("registers"),
            local=(o.values or {}).get("local_bytes"),
            mma=(o.values or {}).get("mma_kind"),
        )
        for o in outcomes
    ]


def fewer_stages(problem, config, profile):
    """`config` at the most pipeline stages the every-stage count admits on `profile` (a legal config of the
    stage axis), or None."""
    from dataclasses import replace

    from kt.axes import GEMM_AXES
    from kt.codegen import gemm

    for stages in sorted((s for s in GEMM_AXES["num_stages"] if s < config.num_stages), reverse=True):
        twin = replace(config, num_stages=stages)
        if gemm.shared_memory(problem, twin) <= profile.smem_per_block:
            return twin if gemm.illegal_reason(problem, twin, profile) is None else None
    return None


def compiled(shape, dtypes: list[str], devices: list[str], sample: int, seed: int) -> list[dict]:
    """One row per (device, dtype): its counts and, with `sample`, its sampled builds compiled; each build the
    compile stage refuses is compiled again at the most stages the every-stage count admits (`fewer`)."""
    import triton

    from kt.codegen import gemm
    from kt.device import get_profile

    rows, jobs = [], []
    for device in devices:
        profile = get_profile(device)
        for dtype in dtypes:
            legal, configs = newly_legal(shape, dtype, device)
            problem = problem_of(shape, dtype)
            drawn = random.Random(f"{seed}-{device}-{dtype}").sample(configs, min(sample, len(configs)))
            builds = []
            for config in drawn:
                jobs.append((problem, config, profile))
                builds.append(
                    dict(
                        key=config.key(),
                        config=config.to_dict(),
                        every_stage=gemm.shared_memory(problem, config),
                        bound=gemm.built_shared_memory(problem, config, profile),
                        wgmma=gemm.wgmma_build(problem, config, profile),
                    )
                )
            rows.append(
                dict(
                    shape=list(shape),
                    dtype=dtype,
                    device=device,
                    arch=profile.compute_capability,
                    smem_limit=profile.smem_per_block,
                    legal=legal,
                    newly_legal=len(configs),
                    triton=triton.__version__,
                    builds=builds,
                )
            )
    builds = compile_rows(rows, jobs)
    again = [
        (build, twin, job)
        for build, job in zip(builds, jobs)
        if build["status"] != "ok" and (twin := fewer_stages(*job)) is not None
    ]
    if again:
        print(f"compiling {len(again)} refused builds at fewer stages", file=sys.stderr)
    for (build, twin, _), outcome in zip(
        again, compile_all([(job[0], twin, job[2]) for _, twin, job in again])
    ):
        build["fewer"] = dict(key=twin.key(), stages=twin.num_stages, **outcome)
    return rows


def report(rows: list[dict]) -> None:
    m, n, k = rows[0]["shape"]
    print(
        f"{m} x {n} x {k} (M x N x K): the configs legality admits, and those the every-stage count refuses"
    )
    for row in rows:
        line = (
            f"{row['device']:<5} {row['dtype']:<9} {row['legal']:>6} legal, {row['newly_legal']:>5} only so"
        )
        builds = row["builds"]
        if builds:
            fits = sum(b["built"] is not None and b["built"] <= row["smem_limit"] for b in builds)
            over = sum(b["built"] is not None and b["built"] > b["bound"] for b in builds)
            refused = [b for b in builds if b["status"] != "ok"]
            line += (
                f"; {len(builds)} built: {fits} within the {row['smem_limit']} bytes, {over} over kt's bound, "
                f"{len(refused)} refused"
            )
            if refused:
                line += " (" + ", ".join(described(b) for b in refused) + ")"
        print(line)
    builds = [b for row in rows for b in row["builds"]]
    if builds:
        refused = [b for b in builds if b["status"] != "ok"]
        twins = [b["fewer"] for b in refused if "fewer" in b]
        clean = sum(twin["status"] == "ok" for twin in twins)
        over = sum(b["built"] is not None and b["built"] > b["bound"] for b in builds)
        print(
            f"{len(builds)} builds: {over} allocate more shared memory than kt's bound; {len(refused)} refused by "
            f"the compile stage; {clean} of the {len(twins)} of those at fewer stages (the most the every-stage "
            "count admits) build clean"
        )


def described(build: dict) -> str:
    """A refused build in a few words: its config, why, and how its fewer-stage twin builds."""
    why = f"{build['registers']} reg, {build['local']} B" if build["local"] else build["status"]
    fewer = build.get("fewer")
    if fewer:
        twin = "clean" if fewer["status"] == "ok" else f"{fewer['registers']} reg, {fewer['local']} B"
        why += f"; at {fewer['stages']} stages: {twin}"
    return f"{build['key']} {why}"


def shape_of(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}; give MxNxK, three positive integers (e.g. 4096x4096x4096)"
        )
    return shape


def main(argv=None) -> int:
    from kt.autotune.compile import target_compiler_available
    from kt.autotune.figures import check_outputs
    from kt.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=shape_of, default=(4096, 4096, 4096), help="MxNxK (default 4096x4096x4096)"
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--devices", nargs="+", choices=sorted(DEVICES), default=sorted(DEVICES))
    parser.add_argument("--sample", type=int, default=0, help="compile N of each (device, dtype)'s configs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", help="write each (device, dtype)'s counts and builds here")
    parser.add_argument(
        "--family",
        nargs="+",
        choices=sorted(FAMILIES),
        help="the block-GEMM examples instead of the dense GEMM",
    )
    parser.add_argument(
        "--controls", type=int, default=0, help="with --family, also compile N refused wgmma configs of each"
    )
    parser.add_argument(
        "--legal", type=int, default=0, help="with --family, also compile N of all the configs each admits"
    )
    args = parser.parse_args(argv)
    if args.sample < 0:
        parser.error(f"--sample: {args.sample}; give 0 (count only) or more")
    for option in ("controls", "legal"):
        if getattr(args, option) < 0:
            parser.error(f"--{option}: {getattr(args, option)}; give 0 (none) or more")
    if (args.controls or args.legal) and not args.family:
        parser.error("--controls and --legal sample the block-GEMM examples: give them with --family")
    check_outputs(parser, {"--jsonl": args.jsonl})
    if (args.sample or args.controls or args.legal) and not target_compiler_available():
        parser.error(
            "--sample: Triton's NVIDIA backend (its ptxas) is not installed here; nothing can be compiled"
        )
    if args.family:
        rows = family_compiled(args.family, args.devices, args.sample, args.controls, args.seed, args.legal)
    else:
        rows = compiled(args.shape, args.dtypes, args.devices, args.sample, args.seed)
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    (family_report if args.family else report)(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
