"""kt's search against the field, on real brute-forced GPU search spaces.

Every valid configuration of each space was timed on a real GPU (Kernel Tuner cache files, ../shared/data/
kerneltuner: CLBlast's GEMM on an RTX 3090 and an RTX 2080 Ti, a 2-D convolution on an A100 and an MI250X). With
the whole space known, every strategy is replayed exactly as if on the GPU: it asks for a configuration and gets
its measured time; a configuration that failed on the GPU is a spent evaluation that returned a failure. Every
strategy gets the same budget of evaluations (distinct valid points; invalid combinations and revisits are free,
Kernel Tuner's own accounting). A run's score is optimum time / best time found within the budget.

Strategies:
- `kt guided`: kt's search (kt.autotune.search.GuidedSearch with its defaults, the rounds `kt tune` runs) with
  a forest on the space's own parameters (kt.costmodel.paramforest), refitted after every round; no prior
  knowledge of the space or the kernel.
- `kt random`: a uniform sample.
- `forest loop (issue 15)`: the reference loop the issue describes (a 50-tree forest on the raw parameters, 10
  random starts, rounds of 10: half the best predictions, half the best lower bounds mean - std).
- Kernel Tuner 1.5's strategies in its simulation mode, Optuna's TPE and SMAC3's random forest
  (benchmarks/tuners.py, which says how each is driven). The genetic algorithm runs with maxiter 10,000 so that it
  spends the whole budget (with its default 90 generations it stops at 420 of 898); simulated and dual annealing
  run with their defaults and may stop before the budget (the `evals` column says how many they spent).

The decision time is each strategy's own wall time per evaluation (model fits, sampling, Kernel Tuner's
bookkeeping), with nothing measured. Results are appended to `--csv` as they come; rerunning with the same CSV
skips what is there (a stopped run resumes). `--verdicts` prints, per space and budget, kt guided against the
strategy with the best mean among the others, with the difference's 95% interval: twenty runs per cell leave a
mean uncertain by +-0.02-0.05 on these spaces, so a cell's "best mean" alone can be seed luck. `--overall`
prints, per strategy and budget, its mean over the spaces, its worst space and on how many it has the best mean.
`--against OLD.csv` prints kt guided against kt guided in OLD.csv (the search before a change), paired on space,
budget and seed.

    pip install -e ".[bench]"
    python benchmarks/search_vs_tuners.py --csv benchmarks/results/search_vs_tuners.csv --markdown

Held-out spaces (HELD_OUT, never used to choose kt's settings), from a checkout of benchmark_hub:

    git clone https://github.com/AutoTuningAssociation/benchmark_hub /tmp/hub  # commit 8eeb99e
    python benchmarks/search_vs_tuners.py --held-out /tmp/hub --budgets 25,100 \
        --csv benchmarks/results/search_held_out.csv --markdown
    python benchmarks/search_vs_tuners.py --held-out /tmp/hub --later --budgets 25,100 \
        --csv benchmarks/results/search_later_held_out.csv --markdown
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from kt.autotune.figures import check_outputs, drop_cut_line
from kt.autotune.replay import replay_space
from kt.autotune.spaces import TuningSpace, load_kernel_tuner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tuners  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kerneltuner"
SPACES = ("gemm_RTX_3090", "gemm_RTX_2080_Ti", "convolution_A100", "convolution_MI250X")
# Spaces the guided search's settings were never tuned on (--held-out HUB): Kernel Tuner cache files of the
# public repository AutoTuningAssociation/benchmark_hub (MIT, commit 8eeb99e), read from a checkout of it; three
# other kernels (dedispersion, point-in-polygon) and the GEMM and convolutions on GPUs not in SPACES.
HELD_OUT = {
    "gemm_RTX_Titan": "currently_unused/cachefiles/KernelTuner data/gemm/RTX_Titan.json.gz",
    "convolution_W7800": "cachefiles/convolution_milo/W7800.json.gz",
    "convolution_RTX_3090": "currently_unused/cachefiles/convolution/RTX_3090.json.gz",
    "dedispersion_W6600": "cachefiles/dedispersion_milo/W6600.json.gz",
    "pnpoly_RTX_3090": "currently_unused/cachefiles/pnpoly/RTX_3090.json.gz",
}
# Later held-out spaces (--held-out HUB --later), from the same checkout. The first thirteen were opened on
# 2026-11-29/30 only to judge variants of the guided search against its shipped settings (every variant was
# rejected, so the settings never changed after they were opened); the last three were first opened for this
# comparison.
LATER_HELD_OUT = {
    "dedispersion_A4000": "cachefiles/dedispersion_milo/A4000.json.gz",
    "dedispersion_MI250X": "cachefiles/dedispersion_milo/MI250X.json.gz",
    "convolution_W6600": "cachefiles/convolution_milo/W6600.json.gz",
    "convolution_A6000": "cachefiles/convolution_milo/A6000.json.gz",
    "pnpoly_RTX_Titan": "currently_unused/cachefiles/KernelTuner data/pnpoly/RTX_Titan.json.gz",
    "gemm_RTX_3060_laptop": "currently_unused/cachefiles/KernelTuner data/gemm/RTX_3060_laptop.json.gz",
    "dedispersion_W7800": "cachefiles/dedispersion_milo/W7800.json.gz",
    "dedispersion_A6000": "cachefiles/dedispersion_milo/A6000.json.gz",
    "dedispersion_A100": "cachefiles/dedispersion_milo/A100.json.gz",
    "convolution_A4000": "cachefiles/convolution_milo/A4000.json.gz",
    "convolution_RTX_Titan": "currently_unused/cachefiles/KernelTuner data/convolution/RTX_Titan.json.gz",
    "pnpoly_RTX_2080_Ti": "currently_unused/cachefiles/KernelTuner data/pnpoly/RTX_2080_Ti.json.gz",
    "convolution_RTX_3060_laptop": "currently_unused/cachefiles/KernelTuner data/convolution/RTX_3060_laptop.json.gz",
    "convolution_RTX_2080_Ti": "currently_unused/cachefiles/convolution/RTX_2080_Ti.json.gz",
    "pnpoly_RTX_3060_laptop": "currently_unused/cachefiles/KernelTuner data/pnpoly/RTX_3060_laptop.json.gz",
    "convolution_MI50": "currently_unused/cachefiles/KernelTuner data/convolution_milo/mi50.json.gz",
}
KT = ("kt guided", "kt random", "forest loop (issue 15)")
COLUMNS = ["space", "strategy", "budget_label", "budget", "repeat", "score", "evals", "seconds"]
SLOW = ("smac:rf", "kerneltuner:bayes_opt", "optuna:tpe")  # minutes per run at thousands of evaluations
KERNEL_TUNER_OPTIONS = {"kerneltuner:genetic_algorithm": {"maxiter": 10_000}}


def reference_loop(space: TuningSpace, budget: int, seed: int) -> list[float | None]:
    """The issue's 15-line loop: a 50-tree forest on the raw parameter values, 10 random starts, then rounds of
    10: the 5 best predicted and the 5 best lower bounds (mean - std over trees) among the rest."""
    rng = np.random.default_rng(seed)
    x = np.array([[float(v) for v in p] for p in space.points])
    seen = [int(i) for i in rng.choice(len(space), min(10, budget), replace=False)]
    while len(seen) < budget:
        ran = [i for i in seen if np.isfinite(space.objective[i])]
        forest = RandomForestRegressor(50, random_state=seed + len(seen), n_jobs=2)
        forest.fit(x[ran], space.objective[ran])
        trees = np.stack([tree.predict(x) for tree in forest.estimators_])
        mean, std = trees.mean(0), trees.std(0)
        todo = np.setdiff1d(np.arange(len(space)), seen)
        best = [int(i) for i in todo[np.argsort(mean[todo], kind="stable")][:5]]
        rest = np.setdiff1d(todo, best)
        bound = [int(i) for i in rest[np.argsort((mean - std)[rest], kind="stable")][:5]]
        seen += (best + bound)[: budget - len(seen)]
    return [float(space.objective[i]) if np.isfinite(space.objective[i]) else None for i in seen]


def run_one(
    space: TuningSpace, strategy: str, budget: int, seed: int, features, features_s: float = 0.0
) -> tuple[list, float]:
    """One run's values and its decision time. kt's encoded parameters (`features`, made once per space in
    `features_s`) count in every kt run, as Kernel Tuner's own space building counts in each of its runs."""
    started = time.perf_counter()
    if strategy in ("kt guided", "kt random"):
        trace = replay_space(space, strategy.split()[1], budget, seed, features=features)
        return trace.values, time.perf_counter() - started + features_s
    if strategy == KT[2]:
        values = reference_loop(space, budget, seed)
        return values, time.perf_counter() - started
    return tuners.run_external(space, strategy, budget, seed, options=KERNEL_TUNER_OPTIONS.get(strategy))


def budget_of(label: str, size: int) -> int:
    return max(1, math.ceil(float(label[:-1]) / 100 * size)) if label.endswith("%") else int(label)


def check_budgets(parser, text: str) -> list[str]:
    """--budgets: each a count of evaluations or a percentage of the space (kt replay's rule), else one line."""
    from kt.autotune.spaces import parse_budget
    from kt.errors import KtError

    labels = [label.strip() for label in text.split(",")]
    for label in labels:
        try:
            parse_budget(label)
        except KtError as exc:
            parser.error(f"--budgets: {exc}")
    return list(dict.fromkeys(labels))  # a label given twice would run (and count) every repeat twice


def read_done(
    path: Path | None, flag: str = "--csv", parser: argparse.ArgumentParser | None = None
) -> list[dict]:
    """The runs of an earlier --csv (a rerun skips them) or of `flag`'s file; a row cut short (a run killed
    mid-write) is left out, and a file that is not this script's CSV is refused in one line naming `flag`
    (through `parser`'s error, exit 2, when given)."""

    def refuse(why: str):
        message = f"{flag}: {path} is not this script's CSV ({why})"
        if parser is not None:
            parser.error(message)
        sys.exit(f"search_vs_tuners: error: {message}")

    if path is None or not path.is_file() or path.stat().st_size == 0:  # (a run killed before its header)
        return []
    try:
        with path.open(newline="") as handle:
            text = handle.read()
        # a last row without its line break was cut short (inside its last cell, every column there: it was read
        # as a finished run, its time cut), and an --against file is read as it is
        text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if text and reader.fieldnames != COLUMNS:
            refuse(f"columns {COLUMNS}")
        return [row for row in reader if all(row.get(column) not in (None, "") for column in COLUMNS)]
    except (UnicodeDecodeError, csv.Error) as exc:
        refuse(str(exc))


def cells(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The runs grouped by (space, strategy, budget label)."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["space"], row["strategy"], row["budget_label"])].append(row)
    return groups


def summarise(rows: list[dict]) -> dict:
    """(space, strategy, budget label) -> (mean, p10, worst, mean evals, ms per evaluation, repeats)."""
    table = {}
    for key, group in cells(rows).items():
        scores = np.array([float(r["score"]) for r in group])
        evals = sum(int(r["evals"]) for r in group)
        seconds = sum(float(r["seconds"]) for r in group)
        table[key] = (
            float(scores.mean()),
            float(np.percentile(scores, 10)),
            float(scores.min()),
            evals / len(group),
            1e3 * seconds / max(1, evals),
            len(group),
        )
    return table


def best_mean(table: dict, space: str, label: str) -> float | None:
    """The best mean of any strategy on `space` at budget `label` (None: nothing ran there)."""
    return max((e[0] for (sp, _, b), e in table.items() if sp == space and b == label), default=None)


def is_best(mean: float, best: float | None) -> bool:
    """A mean within 0.0005 of the best counts as the best (the tables print three decimals)."""
    return best is not None and mean >= best - 5e-4


def markdown(rows: list[dict], budgets: list[str]) -> str:
    """One table per space: each budget's mean / p10 / worst score and mean evaluations spent (bold: the best
    mean at that budget), and the strategy's decision time per evaluation at each budget."""
    table = summarise(rows)
    most = max(e[5] for e in table.values())
    lines = []
    for space in dict.fromkeys(r["space"] for r in rows):
        sizes = {r["budget_label"]: r["budget"] for r in rows if r["space"] == space}
        head = " | ".join(f"{b} ({sizes.get(b, '?')})" for b in budgets)
        lines += [
            f"**{space}**: mean / p10 / worst score (evaluations spent, runs if not {most})",
            "",
            f"| strategy | {head} | ms per evaluation |",
            "|---|" + "---|" * (len(budgets) + 1),
        ]
        strategies = dict.fromkeys(r["strategy"] for r in rows if r["space"] == space)
        best = {b: best_mean(table, space, b) for b in budgets}
        for strategy in strategies:
            cells, ms = [], []
            for b in budgets:
                entry = table.get((space, strategy, b))
                if entry is None:
                    cells.append("not run")
                    ms.append("-")
                    continue
                mean, p10, worst, evals, per_eval, repeats = entry
                mark = "**" if is_best(mean, best[b]) else ""
                notes = [f"{evals:.0f} evals"] if round(evals) != int(sizes[b]) else []
                notes += [f"{repeats} runs"] if repeats != most else []
                note = f" ({', '.join(notes)})" if notes else ""
                cells.append(f"{mark}{mean:.3f}{mark} / {p10:.3f} / {worst:.3f}{note}")
                ms.append(f"{per_eval:.1f}")
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {' / '.join(ms)} |")
        lines.append("")
    return "\n".join(lines)


def overall(rows: list[dict], budgets: list[str]) -> str:
    """Per strategy and budget, across the spaces: the mean of its cell means, its worst cell mean (and the
    space), and in how many spaces its mean is the best (ties within 0.0005 count for each). A strategy that did
    not run on every space says on how many it did."""
    table = summarise(rows)
    spaces = list(dict.fromkeys(r["space"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    lines = [
        "| strategy | budget | mean over spaces | worst space | best mean in |",
        "|---|---|---|---|---|",
    ]
    for label in budgets:
        best = {sp: best_mean(table, sp, label) for sp in spaces}
        for strategy in strategies:
            means = {sp: table[(sp, strategy, label)][0] for sp in spaces if (sp, strategy, label) in table}
            if not means:
                continue
            worst = min(means, key=means.get)
            wins = sum(is_best(means[sp], best[sp]) for sp in means)
            ran = f" (of {len(means)} run)" if len(means) != len(spaces) else ""
            lines.append(
                f"| {strategy} | {label} | {np.mean(list(means.values())):.3f} | {means[worst]:.3f} ({worst}) | "
                f"{wins} of {len(spaces)} spaces{ran} |"
            )
    return "\n".join(lines)


def verdicts(rows: list[dict], budgets: list[str], ours: str = KT[0]) -> str:
    """Per space and budget: `ours` against the strategy with the best mean among the others, with the
    difference's 95% interval (normal approximation, unpaired: two strategies' runs share no random draws), and
    whether that interval says ahead, behind or level. Twenty runs per cell move a mean by +-0.02-0.05 on these
    spaces; this table says which differences more runs would not undo."""
    groups = {key: [float(r["score"]) for r in group] for key, group in cells(rows).items()}
    lines = [
        f"| space | budget | {ours} | best other | other's mean | difference, 95% interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    counts = defaultdict(int)
    for space in dict.fromkeys(r["space"] for r in rows):
        for label in budgets:
            mine = np.array(groups.get((space, ours, label), []))
            others = {
                s: np.array(v) for (sp, s, b), v in groups.items() if sp == space and b == label and s != ours
            }
            if len(mine) < 2 or not others:
                continue
            rival = max(others, key=lambda s: others[s].mean())
            theirs = others[rival]
            diff = mine.mean() - theirs.mean()
            se = math.sqrt(
                mine.var(ddof=1) / len(mine) + (theirs.var(ddof=1) / len(theirs) if len(theirs) > 1 else 0)
            )
            low, high = diff - 1.96 * se, diff + 1.96 * se
            verdict = "ahead" if low > 0 else "behind" if high < 0 else "level"
            counts[verdict] += 1
            lines.append(
                f"| {space} | {label} | {mine.mean():.3f} ({len(mine)} runs) | {rival} | "
                f"{theirs.mean():.3f} ({len(theirs)} runs) | {diff:+.3f} [{low:+.3f}, {high:+.3f}] | {verdict} |"
            )
    lines.append("")
    lines.append(", ".join(f"{k}: {counts[k]}" for k in ("ahead", "level", "behind")))
    return "\n".join(lines)


def paired(rows: list[dict], before: list[dict], budgets: list[str], ours: str = KT[0]) -> str:
    """`ours` in `rows` against `ours` in `before` (the same search before a change, another CSV), paired on
    space, budget and seed: a change's effect without the seeds' luck, which dominates an unpaired difference.
    Per budget, the mean difference over every common run with its standard error (markdown), and per space."""
    then = {
        (r["space"], r["budget_label"], int(r["repeat"])): float(r["score"])
        for r in before
        if r["strategy"] == ours
    }
    lines = [
        "| budget | runs | after | before | paired difference +- s.e. | per space |",
        "|---|---|---|---|---|---|",
    ]
    for label in budgets:
        pairs = defaultdict(list)
        for r in rows:
            key = (r["space"], label, int(r["repeat"]))
            if r["strategy"] == ours and r["budget_label"] == label and key in then:
                pairs[r["space"]].append((float(r["score"]), then[key]))
        every = np.array([pair for space in pairs.values() for pair in space])
        if len(every) < 2:
            continue
        diff = every[:, 0] - every[:, 1]
        per_space = ", ".join(f"{space} {np.mean([a - b for a, b in v]):+.3f}" for space, v in pairs.items())
        lines.append(
            f"| {label} | {len(diff)} | {every[:, 0].mean():.3f} | {every[:, 1].mean():.3f} | "
            f"{diff.mean():+.3f} +- {diff.std(ddof=1) / math.sqrt(len(diff)):.3f} | {per_space} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of Kernel Tuner cache files")
    parser.add_argument(
        "--spaces", default=None, help="comma-separated file stems (default: the four shared)"
    )
    parser.add_argument(
        "--held-out",
        type=Path,
        default=None,
        metavar="HUB",
        help="replay the held-out spaces (HELD_OUT) from HUB, a checkout of AutoTuningAssociation/benchmark_hub",
    )
    parser.add_argument(
        "--later", action="store_true", help="with --held-out: the later held-out spaces (LATER_HELD_OUT)"
    )
    parser.add_argument("--budgets", default="25,100,5%", help="evaluations, or a percentage of the space")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="runs of each strategy per space and budget (default 20; 0: run nothing, tabulate --csv)",
    )
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=5,
        help=f"repeats (0 or more) for {SLOW[0]} (26 s per run at 100 evaluations here) and for "
        f"{', '.join(SLOW[1:])} at budgets over 200 (a minute per run)",
    )
    parser.add_argument("--strategies", default=None, help="comma-separated subset (default: all available)")
    parser.add_argument(
        "--skip-slow-above",
        type=int,
        default=300,
        help=f"skip {SLOW[0]} above this many evaluations (11 min per run at 898 here)",
    )
    parser.add_argument(
        "--csv", type=Path, default=None, help="append each run here; reruns skip what it holds"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument(
        "--verdicts",
        action="store_true",
        help="print kt guided against the best other strategy per cell, with 95%% intervals (markdown)",
    )
    parser.add_argument(
        "--overall",
        action="store_true",
        help="print each strategy's mean over the spaces, its worst space and its count of best means (markdown)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="CSV",
        help="print kt guided against kt guided in CSV (before a change), paired on space, budget and seed",
    )
    args = parser.parse_args(argv)
    for flag, value, zero in (
        ("--repeats", args.repeats, "run nothing, tabulate --csv"),
        ("--slow-repeats", args.slow_repeats, "run none of the slow strategies"),
    ):
        if value < 0:  # range() of a negative count ran nothing and exited 0
            parser.error(f"{flag}: {value}; give 0 ({zero}) or more")
    if args.against is not None and not args.against.is_file():
        parser.error(f"--against: {args.against} is not a file")
    hub = LATER_HELD_OUT if args.later else HELD_OUT
    if args.later and args.held_out is None:
        parser.error("--later needs --held-out HUB")
    if args.held_out is not None and args.spaces:
        unknown = [stem for stem in args.spaces.split(",") if stem not in hub]
        if unknown:
            parser.error(f"--spaces: {', '.join(unknown)} not among {', '.join(hub)}")

    strategies = list(KT) + list(tuners.available())
    if args.strategies:
        strategies = list(dict.fromkeys(s for s in args.strategies.split(",") if s))
        unknown = [s for s in strategies if s not in KT and s not in tuners.EXTERNAL]
        if unknown:
            parser.error(
                f"--strategies: {', '.join(unknown)} unknown; allowed: {', '.join([*KT, *tuners.EXTERNAL])}"
            )
    budgets = check_budgets(parser, args.budgets)
    check_outputs(parser, {"--csv": args.csv}, [args.against])
    before = read_done(args.against, "--against", parser) if args.against is not None else None
    if args.csv is not None:  # a row a killed run cut short goes first (its run is redone)
        drop_cut_line(args.csv)
    done = read_done(args.csv, "--csv", parser)
    have = {(r["space"], r["strategy"], r["budget_label"], int(r["repeat"])) for r in done}
    rows = list(done)
    handle = writer = None
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not args.csv.is_file() or args.csv.stat().st_size == 0
        handle = args.csv.open("a", newline="")
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:  # written out at once: a run killed before its first row (minutes) left an empty file, which
            writer.writeheader()  # every later run refused as not this script's CSV
            handle.flush()
    try:
        paths = (
            {}  # --repeats 0 runs nothing: no space is loaded (it needed the spaces, or the hub, to tabulate)
            if args.repeats == 0
            else {stem: args.held_out / hub[stem] for stem in (args.spaces or ",".join(hub)).split(",")}
            if args.held_out is not None
            else {
                stem: args.data / f"{stem}.json.gz" for stem in (args.spaces or ",".join(SPACES)).split(",")
            }
        )
        if paths and not any(path.is_file() for path in paths.values()):  # it exited 0 having done nothing
            sys.exit(f"search_vs_tuners: error: no space found: {', '.join(map(str, paths.values()))}")
        for stem, path in paths.items():
            if not path.is_file():
                print(f"skip {stem}: {path} not found", file=sys.stderr)
                continue
            space = load_kernel_tuner(path)
            encoded = time.perf_counter()
            features = space.features()
            features_s = time.perf_counter() - encoded
            for label in budgets:
                budget = budget_of(label, len(space))
                for strategy in strategies:
                    repeats = args.repeats
                    if strategy == KT[2] and budget > 200:
                        continue  # 50-tree fits over the whole space every 10 evaluations: a minute per run
                    if (strategy in SLOW and budget > 200) or strategy == SLOW[0]:
                        repeats = min(repeats, args.slow_repeats)
                        if strategy == SLOW[0] and budget > args.skip_slow_above:
                            continue
                    started = time.monotonic()
                    for repeat in range(repeats):
                        if (stem, strategy, label, repeat) in have:
                            continue
                        values, seconds = run_one(space, strategy, budget, repeat, features, features_s)
                        found = [v for v in values[:budget] if v is not None]
                        row = {
                            "space": stem,
                            "strategy": strategy,
                            "budget_label": label,
                            "budget": budget,
                            "repeat": repeat,
                            "score": space.score(min(found) if found else None),
                            "evals": len(values[:budget]),
                            "seconds": seconds,
                        }
                        rows.append(row)
                        if writer is not None:
                            writer.writerow(row)
                            handle.flush()
                    entry = summarise(
                        [
                            r
                            for r in rows
                            if r["space"] == stem and r["strategy"] == strategy and r["budget_label"] == label
                        ]
                    ).get((stem, strategy, label))
                    if entry:
                        print(
                            f"{stem:20s} {label:>4s} {strategy:34s} mean {entry[0]:.3f} p10 {entry[1]:.3f} "
                            f"worst {entry[2]:.3f} evals {entry[3]:.0f} {entry[4]:.1f} ms/eval "
                            f"({time.monotonic() - started:.0f} s)",
                            flush=True,
                        )
    finally:
        if handle is not None:
            handle.close()
    if (args.markdown or args.verdicts or args.overall) and not rows:  # max() of nothing: a traceback
        parser.error(f"--csv: {args.csv} holds no runs to tabulate" if args.csv else "no runs to tabulate")
    if args.markdown:
        print(markdown(rows, budgets))
    if args.verdicts:
        print(verdicts(rows, budgets))
    if args.overall:
        print(overall(rows, budgets))
    if args.against is not None:
        print(paired(rows, before, budgets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
