"""Compile the configs kt's cost model ranks first, for the A100 (sm_80) and the H100 (sm_90), with Triton's
bundled ptxas (no GPU): how often the first-ranked build is one the compile stage refuses (it spills registers
or outgrows shared memory), and how many builds kt.nn's untuned fallback (`kt.build(compile_check=True)`)
spends before one builds clean.

The ops: dense GEMMs in float16, bfloat16, float32 and tf32 at six shapes (three whose rows are not 16-element
aligned), and each structured example (examples/*.yaml) in those dtypes where it offers them. For each op and
device the ranked configs are compiled as the fallback compiles them (`kt.api.distinct_tiles`: a group_m twin
of a compiled config is passed over) until one builds clean, at most `kt.api.COMPILE_TRIES`; with `--top N`,
the N best-ranked of every op, to count the refused builds among them. Prints one row per (op, device) and a
summary per device; `--jsonl` keeps every build.

    python benchmarks/first_builds.py --jsonl /tmp/first.jsonl
    python benchmarks/first_builds.py --ops dense-unaligned --dtypes float16 bfloat16 --top 12

Nothing here is timed. The model is kt's default for each device (the shipped forests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DENSE_SHAPES = [
    (4096, 4096, 4096),
    (1024, 1024, 1024),
    (16384, 1024, 4096),
    (256, 4100, 1000),
    (2048, 2056, 2048),
    (4096, 4104, 4100),
]  # (M, N, K), A and B row-major: the last three have N or K (B's or A's rows) not a multiple of 16
EXAMPLES = ["blocksparse", "butterfly", "fft", "lowrank", "monarch", "monarch_rect", "sum"]
DTYPES = ["float16", "bfloat16", "float32", "tf32"]
DEVICES = {"a100": 80, "h100": 90}


def specs(ops: str, dtypes: list[str], shapes=None) -> list[dict]:
    """op.yaml mappings of the chosen ops in each dtype (tf32: float32 with precision tf32), those an op does
    not offer left out; `shapes` (M, N, K) in place of DENSE_SHAPES for the dense ops."""
    from kt.errors import SpecError
    from kt.spec import parse_spec

    bases = []
    if ops in ("all", "dense", "dense-unaligned"):
        dense = shapes or (DENSE_SHAPES[3:] if ops == "dense-unaligned" else DENSE_SHAPES)
        for m, n, k in dense:
            bases.append({"op": "dense", "name": f"dense_m{m}_n{n}_k{k}", "shape": {"m": m, "n": n, "k": k}})
    if ops in ("all", "examples"):
        for name in EXAMPLES:
            base = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
            base.pop("tune", None)
            bases.append({**base, "name": name})
    out = []
    for base in bases:
        for dtype in dtypes:
            data = {**base, "dtype": dtype}
            if dtype in ("float32", "tf32"):
                data.update(dtype="float32", precision=dtype.replace("float32", "ieee"))
            try:
                parse_spec(data)
            except SpecError:
                continue  # the op does not offer this dtype
            out.append(data)
    return out


def first_builds(specs_: list[dict], devices: list[str], top: int | None) -> list[dict]:
    """Every (op, device) pair's builds in rank order: until one builds clean (at most COMPILE_TRIES), or the
    `top` best-ranked. Compiled in kt's compile workers, a round at a time: each pair's next config."""
    import triton

    import kt
    from kt.api import COMPILE_TRIES, distinct_tiles
    from kt.autotune.runners import compile_builds, compile_pool
    from kt.autotune.tune import generated_candidate

    pairs = []
    for data in specs_:
        for device in devices:
            plan = kt.plan(data, budget=1, device=device)
            configs = distinct_tiles(plan, top or COMPILE_TRIES)
            pairs.append(dict(spec=data, device=device, plan=plan, configs=configs, builds=[]))
    total = sum(len(p["configs"]) for p in pairs) if top else len(pairs)
    print(f"{len(pairs)} (op, device) pairs, {total}+ builds (Triton {triton.__version__})", file=sys.stderr)
    with compile_pool() as pool:  # kept across the rounds
        while True:  # a round: each waiting pair's next config
            waiting = [
                p
                for p in pairs
                if len(p["builds"]) < len(p["configs"])
                and (top or not any(b["status"] == "ok" for b in p["builds"]))
            ]
            if not waiting:
                break
            jobs = []
            for pair in waiting:
                plan, config = pair["plan"], pair["configs"][len(pair["builds"])]
                jobs.append(
                    (generated_candidate(plan.problem, config, name=pair["spec"]["name"]), plan.space.device)
                )
            for pair, outcome in zip(waiting, compile_builds(jobs, pool)):
                values = outcome.values or {}
                pair["builds"].append(
                    dict(
                        key=pair["configs"][len(pair["builds"])].key(),
                        status=outcome.status,
                        message=None if outcome.status == "ok" else outcome.message,
                        registers=values.get("registers"),
                        local=values.get("local_bytes"),
                    )
                )
    rows = []
    for pair in pairs:
        data = pair["spec"]
        dtype = "tf32" if data.get("precision") == "tf32" else data["dtype"]
        rows.append(
            dict(
                op=data["name"],
                dtype=dtype,
                device=pair["device"],
                arch=DEVICES[pair["device"]],
                triton=triton.__version__,
                model=str(pair["plan"].model),
                builds=pair["builds"],
            )
        )
    return rows


def report(rows: list[dict], top: int | None) -> None:
    from kt.api import COMPILE_TRIES

    print(f"{'op':<22} {'dtype':<9} {'device':<6} {'first-ranked':<24} {'status':<18} builds  refused")
    for row in rows:
        first = row["builds"][0]
        status = (
            "clean"
            if first["status"] == "ok"
            else f"spills {first['local']} B"
            if first["local"]
            else first["status"]
        )
        clean = next((i for i, b in enumerate(row["builds"]) if b["status"] == "ok"), None)
        until = str(clean + 1) if clean is not None else f"none of {len(row['builds'])}"
        refused = sum(b["status"] != "ok" for b in row["builds"])
        print(
            f"{row['op']:<22} {row['dtype']:<9} {row['device']:<6} {first['key']:<24} {status:<18} "
            f"{until:<7} {refused}"
        )
    for device in DEVICES:
        mine = [r for r in rows if r["device"] == device]
        if not mine:
            continue
        refused_first = [r for r in mine if r["builds"][0]["status"] != "ok"]
        none = [r for r in mine if all(b["status"] != "ok" for b in r["builds"])]
        line = (
            f"{device}: {len(mine)} ops, first-ranked refused in {len(refused_first)}, no clean build in the "
            f"first {top or COMPILE_TRIES} in {len(none)}"
        )
        if top:
            refused = sum(b["status"] != "ok" for r in mine for b in r["builds"])
            line += f", {refused} of {sum(len(r['builds']) for r in mine)} builds refused"
        print(line)


def main(argv=None) -> int:
    from stage_builds import shape_of  # beside this script

    from kt.autotune.compile import target_compiler_available
    from kt.autotune.figures import check_outputs
    from kt.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", choices=("all", "dense", "dense-unaligned", "examples"), default="all")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES)
    parser.add_argument("--devices", nargs="+", choices=sorted(DEVICES), default=sorted(DEVICES))
    parser.add_argument(
        "--top", type=int, help="compile the N best-ranked of every op (default: until one builds)"
    )
    parser.add_argument("--jsonl", help="write every (op, device) pair's builds here")
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=shape_of,
        metavar="MxNxK",
        help="the dense ops' shapes (default: the six in DENSE_SHAPES)",
    )
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error(f"--top: {args.top}; give 1 or more")
    check_outputs(parser, {"--jsonl": args.jsonl})
    if not target_compiler_available():
        parser.error("Triton's NVIDIA backend (its ptxas) is not installed here; nothing can be compiled")
    rows = first_builds(specs(args.ops, args.dtypes, args.shapes), args.devices, args.top)
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    report(rows, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
