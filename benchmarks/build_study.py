"""What the legality build studies share (benchmarks/*_builds.py that sample configs by a register count and fit
a rule's limit to how they compile): the ops' problems, binned sampling, the compiled rows, kt's legality of a
row as it is now, and the highest clean limit of a count.

Nothing here is timed."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


def problems_of(data: dict) -> list:
    """The problems of an op's kernels (one each but where a sum's graph has several)."""
    from kt.ir.ops import op_from_spec
    from kt.spec import parse_spec

    return [node.problem for node in op_from_spec(parse_spec(data)).kernel_graph().kernels]


def profile_of(arch: int):
    """The device profile a study compiles for: the A100's for sm_80, the H100's for sm_90."""
    from kt.device import get_profile

    return get_profile("a100" if arch == 80 else "h100")


def sample(
    arch: int,
    specs: list[dict],
    per_bin: int,
    seed: int,
    candidates: Callable,
    counted: Callable,
    bin_width: int,
) -> list[dict]:
    """For each problem of `specs` (op.yaml mappings), its `candidates(problem, profile)` grouped in bins of
    `bin_width` of `counted(family, problem, config, profile)["acc"] + ["operands"]`, `per_bin` of each bin drawn
    with `seed`, compiled by kt's compile workers and labelled as the compile stage labels them
    (`kt.autotune.runners.labelled_builds`): one row each."""
    from kt.autotune.runners import labelled_builds
    from kt.autotune.tune import generated_candidate
    from kt.codegen import family_for

    profile = profile_of(arch)
    rng = random.Random(seed)
    jobs, rows = [], []
    for data in specs:
        for problem in problems_of(data):
            family = family_for(problem)
            bins = defaultdict(list)
            for config in candidates(problem, profile):
                count = counted(family, problem, config, profile)
                bins[(count["acc"] + count["operands"]) // bin_width].append((config, count))
            for _, configs in sorted(bins.items()):
                for config, count in rng.sample(configs, min(per_bin, len(configs))):
                    jobs.append((generated_candidate(problem, config), profile))
                    rows.append(
                        dict(
                            spec=data,
                            family=family.name,
                            problem=str(problem),
                            config=config.to_dict(),
                            key=config.key(),
                            dtype=problem.dtype,
                            precision=problem.precision,
                            **count,
                        )
                    )
    return labelled_builds(jobs, rows, arch)


def refused_now(row: dict) -> bool:
    """Whether kt's legality, as it is now, refuses the row's config on the row's architecture."""
    from kt.codegen import family_for
    from kt.codegen.restrict import illegal_config

    profile = profile_of(row["arch"])
    for problem in problems_of(row["spec"]):
        if str(problem) == row["problem"]:
            family = family_for(problem)
            config = family.config_type.from_dict(row["config"])
            return illegal_config(family, problem, config, profile) is not None
    raise SystemExit(f"{row['problem']}: not a problem of {row['spec']['name']} (the ops changed)")


class BuildsError(Exception):
    """A file given to --score, --fit or --check that is not JSON lines of a study's builds."""

    def __init__(self, path, why: str):
        super().__init__(f"{str(path)!r} is not a file of builds ({why})")
        self.path = path


def load(paths, fields=("status",)) -> list[dict]:
    """The builds of --jsonl files, gzipped ones too (benchmarks/results/*-k-2026-12-05/); a build that did not
    compile clean (refused: spills) is `spilled`. A file that is not JSON lines of objects with every field of
    `fields` raises BuildsError (it was a JSONDecodeError or KeyError traceback)."""
    import zlib

    rows = []
    for path in paths:
        try:
            with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as lines:
                found = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise BuildsError(path, f"a line that is not JSON: {exc.msg}") from None
        except UnicodeDecodeError:
            raise BuildsError(path, "not text") from None
        except (OSError, EOFError, zlib.error) as exc:  # a gzip cut short, or not gzip
            raise BuildsError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if not all(isinstance(row, dict) for row in found):
            raise BuildsError(path, "a line that is not a JSON object")
        missing = [field for field in fields if any(field not in row for row in found)]
        if missing:
            raise BuildsError(path, f"lines without {', '.join(missing)}")
        rows += found
    for row in rows:
        row["spilled"] = row["status"] != "ok"
    return rows


def checked_load(parser, args, fields=("status",)) -> None:
    """Every --score, --fit and --check file of `args` read once before the work, a BuildsError refused in one
    line naming its option (`parser.error`)."""
    for flag in ("--score", "--fit", "--check"):
        paths = getattr(args, flag.removeprefix("--"), None)
        try:
            load(paths or (), fields)
        except BuildsError as exc:
            parser.error(f"{flag}: {exc}")


def highest_clean_limit(rows: list[dict], count: Callable[[dict], int]) -> int:
    """The highest limit (a multiple of 8) of `count` at or below which no build of `rows` spilled: the largest
    count when none did."""
    first = min((count(r) for r in rows if r["spilled"]), default=None)
    return max(count(r) for r in rows) if first is None else 8 * ((first - 1) // 8)


def missing_files(paths) -> str | None:
    """The first of `paths` that is not a file, quoted, or None."""
    for path in paths:
        if not Path(path).is_file():
            return repr(str(path))
    return None


def dtype_kind(row: dict) -> str:
    """tf32 (four-byte operands, one to a register) or 16-bit (two to a register)."""
    return "tf32" if row["precision"] == "tf32" else "16-bit"


@dataclasses.dataclass
class Study:
    """A legality build study: the ops it draws from (`ops[name]`: op.yaml mappings without a dtype), its dtypes
    (tf32: float32 with precision tf32), the configs it draws (`candidates(problem, profile)`), its count of each
    (`counted(family, problem, config, profile)`: a dict of acc, operands, elements, binned by `bin_width` of acc
    + operands), the rule's count of a build row (`count`) and the kinds of program it fits a limit for each
    (`kind`); `before`: what kt refused before the rule counted ("" where no rule came of the study)."""

    ops: dict[str, list[dict]]
    dtypes: list[str]
    bin_width: int
    candidates: Callable
    counted: Callable
    count: Callable[[dict], int]
    kind: Callable[[dict], str]
    before: str

    def specs(self, ops: str, dtypes: list[str]) -> list[dict]:
        """op.yaml mappings of the chosen ops in each dtype."""
        out = []
        for index, base in enumerate(self.ops[ops]):
            for dtype in dtypes:
                data = {**base, "name": f"{base['op']}_{ops}_{index}", "dtype": dtype}
                if dtype == "tf32":
                    data.update(dtype="float32", precision="tf32")
                out.append(data)
        return out

    def score(self, rows: list[dict]) -> None:
        """Each bin's builds and spills, and per architecture what kt's legality now refuses of them."""
        width = self.bin_width
        bins = defaultdict(lambda: [0, 0])
        for row in rows:
            group = bins[(row["arch"], dtype_kind(row), self.count(row) // width * width)]
            group[0] += 1
            group[1] += row["spilled"]
        print("sm   dtype   count           builds  spills")
        for (arch, kind, low), (builds, spills) in sorted(bins.items()):
            print(f"{arch:<4} {kind:<7} {low:>5} to {low + width - 1:<5} {builds:>7} {spills:>7}")
        for arch in sorted({r["arch"] for r in rows}):
            mine = [r for r in rows if r["arch"] == arch]
            spills = [r for r in mine if r["spilled"]]
            caught = sum(refused_now(r) for r in spills)
            clean_refused = sum(refused_now(r) for r in mine if not r["spilled"])
            before = (
                f" (the rule before 2026-12-05, {self.before}, refused all {len(mine)})"
                if self.before
                else ""
            )
            print(
                f"sm_{arch}: {len(mine)} builds ({len({r['problem'] for r in mine})} problems), kt's legality "
                f"refuses {clean_refused} clean builds and catches {caught} of {len(spills)} spills{before}"
            )

    def fitted_limits(self, rows: list[dict]) -> dict[tuple[int, str], int]:
        """For each (architecture, kind) of `rows`, the highest limit (a multiple of 8) at or below which no
        build spilled: the largest count when none did."""
        return {
            (arch, which): highest_clean_limit(
                [r for r in rows if r["arch"] == arch and self.kind(r) == which], self.count
            )
            for arch, which in sorted({(r["arch"], self.kind(r)) for r in rows})
        }

    def fit(self, paths, check=()) -> None:
        """`fitted_limits` of the builds of `paths`, with the clean builds each refuses of them; and of `check`'s
        builds, the clean ones it refuses and the spills it lets in."""
        rows, held = load(paths), load(check) if check else []
        limits = self.fitted_limits(rows)
        width = max([10, *(len(which) for _, which in limits)])
        print(
            f"sm   {'kind':<{width}}  builds  spills  limit  clean refused  | other builds  clean refused  spills let in"
        )
        for (arch, which), limit in limits.items():
            mine = [r for r in rows if r["arch"] == arch and self.kind(r) == which]
            refused = sum(not r["spilled"] and self.count(r) > limit for r in mine)
            spills = sum(r["spilled"] for r in mine)
            line = f"{arch:<4} {which:<{width}} {len(mine):>7} {spills:>7} {limit:>6} {refused:>14}"
            other = [r for r in held if r["arch"] == arch and self.kind(r) == which]
            if other:
                clean_refused = sum(not r["spilled"] and self.count(r) > limit for r in other)
                let_in = sum(r["spilled"] and self.count(r) <= limit for r in other)
                line += f"  | {len(other):>12} {clean_refused:>14} {let_in:>14}"
            print(line)

    def main(self, argv, description: str) -> int:
        from kt.autotune.compile import target_compiler_available
        from kt.autotune.figures import check_outputs
        from kt.files import atomic_write_text

        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
        parser.add_argument("--ops", choices=sorted(self.ops), default="fit")
        parser.add_argument("--dtypes", nargs="+", choices=self.dtypes, default=self.dtypes)
        parser.add_argument("--per-bin", type=int, default=1, help="builds drawn from each bin (default 1)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--jsonl", help="write one line per build here")
        parser.add_argument(
            "--score", nargs="+", metavar="FILE", help="judge kt's legality on earlier --jsonl files"
        )
        parser.add_argument("--fit", nargs="+", metavar="FILE", help="fit the rule's limits to these")
        parser.add_argument(
            "--check", nargs="+", metavar="FILE", help="with --fit: judge its limits on these"
        )
        args = parser.parse_args(argv)
        if args.check and not args.fit:
            parser.error("--check: judges --fit's limits; give --fit FILE too")
        if args.score and args.fit:
            parser.error("--score and --fit: give one of them")
        missing = missing_files([*(args.score or args.fit or ()), *(args.check or ())])
        if missing:
            parser.error(f"{missing} not found")
        checked_load(
            parser, args, ("arch", "status", "spec", "family", "config", "acc", "operands", "precision")
        )
        if args.score:
            self.score(load(args.score))
            return 0
        if args.fit:
            self.fit(args.fit, args.check or ())
            return 0
        if not args.jsonl:
            parser.error("--jsonl: where to write the builds (or --score / --fit FILE)")
        if args.per_bin < 1:
            parser.error(f"--per-bin: {args.per_bin}; give 1 or more")
        check_outputs(parser, {"--jsonl": args.jsonl})
        if not target_compiler_available():
            parser.error("Triton's NVIDIA backend (its ptxas) is not installed here; nothing can be compiled")
        specs = self.specs(args.ops, args.dtypes)
        rows = sample(
            args.arch, specs, args.per_bin, args.seed, self.candidates, self.counted, self.bin_width
        )
        atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        self.score(load([args.jsonl]))
        return 0
