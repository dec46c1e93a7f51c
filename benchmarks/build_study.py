"""What the legality build studies share (benchmarks/*_builds.py that sample configs by a register count and fit
a rule's limit to how they compile): the ops' problems, binned sampling, the compiled rows, kt's legality of a
row as it is now, and the highest clean limit of a count.

Nothing here is timed."""

from __future__ import annotations

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


def load(paths) -> list[dict]:
    """The builds of --jsonl files, gzipped ones too (benchmarks/results/*-k-2026-12-05/); a build that did not
    compile clean (refused: spills) is `spilled`."""
    rows = []
    for path in paths:
        with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as lines:
            rows += [json.loads(line) for line in lines]
    for row in rows:
        row["spilled"] = row["status"] != "ok"
    return rows


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
