"""Variants of kt's guided search, replayed paired against the shipped search on seeds the reports do not use.

How a change to the search is judged (issue 15; BENCHMARKS.md, "Variants rejected before the reporting seeds"):

1. choose: replay the variant and the shipped search (`base`) on the four shared spaces with seeds 100-119;
2. check: replay both on the 21 held-out spaces (`--held-out HUB`) with seeds 400-409;
3. only a variant that gains in both is rerun on the seeds the tables report (0-59 with
   `benchmarks/search_vs_tuners.py`, then `--against` the committed rows) before it changes the search.

Each run is paired with `base`'s run of the same space, budget and seed, which removes part of the seeds' luck
(large on the convolution spaces): a pair shares its random start and diverges after the first refit, so on
the MI250X convolution, where `base`'s seeds 100-119 run below its 60-seed mean, step 1 flatters every variant
(BENCHMARKS.md). Step 1 is a screen; steps 2 and 3 decide. Every run goes through
kt.autotune.replay.replay_space, the loop `kt replay` and `kt tune` run; a variant is a GuidedSearch subclass
(one with a `bind(space)` method is shown the space's parameters first), a change of the forest's feature
columns, or another forest.

    python benchmarks/search_variants.py --variants base,radius2-even --seeds 100-119 --jsonl runs.jsonl
    python benchmarks/search_variants.py --held-out /tmp/hub --variants base,radius2-even --seeds 400-409 \\
        --budgets 100 --jsonl runs.jsonl
    python benchmarks/search_variants.py --jsonl runs.jsonl --compare     # the paired table of what it holds

Rows append to the JSON-lines file as they finish (a rerun skips the runs it holds). Nothing here is a timing
of kt's: the scores are replays of the spaces' own GPU measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor

from kt.autotune.figures import check_outputs, drop_cut_line
from kt.autotune.replay import parameter_forest, replay_space
from kt.autotune.search import FAILING, GuidedSearch, SearchState
from kt.autotune.spaces import TuningSpace, _numeric, encode, load_kernel_tuner, varying
from kt.costmodel.paramforest import ParamForest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_vs_tuners import DATA, HELD_OUT, LATER_HELD_OUT, SPACES  # noqa: E402


def numeric_columns(space: TuningSpace, positive: bool = False) -> list[np.ndarray]:
    """Each point's value of every varying parameter whose values are all numeric (and all above 0 where
    `positive`), one float array per parameter in the space's order: what pair_products and the iso-product
    polish build their columns from."""
    moving = set(varying(space.params, space.points))
    return [
        np.array([p[j] for p in space.points], dtype=np.float64)
        for j, name in enumerate(space.params)
        if name in moving and all(_numeric(v) and (v > 0 or not positive) for v in space.params[name])
    ]


class WiderPolish(GuidedSearch):
    """The polish (the exploiting picks among the best measured's neighbours) may change two parameters,
    not one: on even rounds (`even`), once the search has stalled (`stalled`), or when no unmeasured
    one-parameter neighbour is predicted to beat the best measured (`dry`)."""

    def __init__(self, when: str):
        super().__init__()
        if when not in ("even", "stalled", "dry"):
            raise ValueError(f"when: {when!r}; allowed: even, stalled, dry")
        self.when = when

    def propose(self, state: SearchState) -> list[int]:
        self.local = 2 if state.informed and state.best is not None and self._wider(state) else 1
        return super().propose(state)

    def _wider(self, state: SearchState) -> bool:
        if self.when == "even":
            return state.round % 2 == 0
        if self.when == "stalled":
            return bool(self._size) and self._stalled()
        if state.distance is None:
            return False
        incumbent = min((i for i, v in state.measured.items() if v is not None), key=state.measured.get)
        near = np.flatnonzero(state.distance(incumbent) == 1)
        near = np.array([i for i in near if int(i) not in state.measured], dtype=np.int64)
        if state.fail is not None and len(near):
            near = near[state.fail[near] < FAILING]
        return not len(near) or float(state.objective[near].min()) >= state.best


class SpreadStart(GuidedSearch):
    """The random start spread out: of a random pool of 20 candidates per start point, the points chosen one by
    one to differ from those already chosen in as many parameters as possible (max-min distance), instead of a
    plain random sample; a space-filling start, as Latin hypercubes give a Bayesian optimizer."""

    def propose(self, state: SearchState) -> list[int]:
        picks = super().propose(state)
        if state.informed or state.round != 0 or state.distance is None or len(picks) < 2:
            return picks
        todo = np.array(state.unmeasured(), dtype=np.int64)
        rng = np.random.default_rng([state.seed, 1])
        pool = rng.choice(todo, size=min(len(todo), 20 * len(picks)), replace=False)
        chosen = [int(pool[0])]
        nearest = state.distance(chosen[0])[pool].astype(np.float64)
        while len(chosen) < len(picks):
            k = int(np.argmax(nearest))  # ties: the pool's random order
            chosen.append(int(pool[k]))
            nearest = np.minimum(nearest, state.distance(chosen[-1])[pool])
        return chosen


class ParzenExplore(GuidedSearch):
    """The exploring picks come from a tree-structured Parzen estimator, Optuna's TPE, instead of the forest's
    expected improvement: on odd rounds (`odd`) or once the search has stalled (`stalled`). The points
    measured are split into the best `gamma(n)` (Optuna's: a tenth, at most 25) and the rest; each parameter
    gets a categorical density of its values in either group (a uniform prior of weight 1). 24 unmeasured
    candidates are drawn with chance proportional to the good density, and the one with the largest ratio of
    good to bad density is measured. The densities treat the parameters as independent: they recombine the
    values of the best points where the forest keeps to the basin it has mapped (a run that stays on one
    configuration three parameters away from the optimum's)."""

    def __init__(self, when: str, draws: int = 24):
        super().__init__()
        if when not in ("odd", "stalled"):
            raise ValueError(f"when: {when!r}; allowed: odd, stalled")
        self.when, self.draws = when, draws
        self.codes: np.ndarray | None = None

    def bind(self, space: TuningSpace) -> None:
        """Each point's parameter values as small integers (one column per varying parameter)."""
        encoded = encode(space.params, space.points)
        self.codes = np.stack([np.unique(c, return_inverse=True)[1] for c in encoded.T], axis=1)

    def propose(self, state: SearchState) -> list[int]:
        picks = super().propose(state)
        if self.codes is None or not state.informed or not picks or state.round == 0:
            return picks
        if self.when == "odd" and state.round % 2 == 0:
            return picks
        if self.when == "stalled" and not self._stalled():
            return picks
        size = min(self._size, state.budget_left, len(state.unmeasured()))
        n_explore = int(size * self.explore) if size >= 2 else 0
        if n_explore == 0:
            return picks
        exploit = picks[: len(picks) - n_explore]
        return exploit + self.parzen(state, set(exploit), n_explore)

    def parzen(self, state: SearchState, taken: set[int], n: int) -> list[int]:
        ran = sorted((v, i) for i, v in state.measured.items() if v is not None)
        good_n = min(25, math.ceil(0.1 * len(ran)))
        good = np.array([i for _, i in ran[:good_n]], dtype=np.int64)
        failed = [i for i, v in state.measured.items() if v is None]
        bad = np.array([i for _, i in ran[good_n:]] + failed, dtype=np.int64)
        todo = np.array([i for i in state.unmeasured() if i not in taken], dtype=np.int64)
        if state.fail is not None and (state.fail[todo] < FAILING).any():
            todo = todo[state.fail[todo] < FAILING]  # as the forest's picks: not one it expects to fail
        log_good = np.zeros(len(todo))
        log_bad = np.zeros(len(todo))
        for j in range(self.codes.shape[1]):
            k = int(self.codes[:, j].max()) + 1
            for group, total in ((good, log_good), (bad, log_bad)):
                counts = np.bincount(self.codes[group, j], minlength=k) + 1.0 / k
                total += np.log(counts / counts.sum())[self.codes[todo, j]]
        rng = np.random.default_rng([state.seed, state.round, 7])
        chosen: list[int] = []
        weight = np.exp(log_good - log_good.max())
        ratio = log_good - log_bad
        for _ in range(min(n, len(todo))):
            draws = rng.choice(len(todo), size=self.draws, p=weight / weight.sum())
            best = int(draws[np.argmax(ratio[draws])])
            chosen.append(int(todo[best]))
            weight[best] = 0.0
            if not weight.any():
                break
        return chosen


class IsoProductPolish(GuidedSearch):
    """The polish (the exploiting picks among the best measured's neighbours) also counts as a neighbour a point
    that changes two positive numeric parameters in opposite directions by the same factor, their product kept
    (a block of 4 x 2 threads' rows against one of 2 x 4, a work-group's tile against its threads' tile): a move
    a one-parameter polish cannot make, since each single step changes the product. The reason to try it: on
    the W7800 and MI250X convolutions the runs that end at 0.82 or 0.67 sit on `block_size_y` 4, `tile_size_y`
    2 while the optimum has 2 and 4."""

    def __init__(self):
        super().__init__()
        self.logs: np.ndarray | None = None

    def bind(self, space: TuningSpace) -> None:
        """log2 of every positive numeric parameter that varies (one column each; others are left out)."""
        columns = [np.log2(values) for values in numeric_columns(space, positive=True)]
        self.logs = np.stack(columns, axis=1) if len(columns) >= 2 else None

    def propose(self, state: SearchState) -> list[int]:
        if self.logs is None or state.distance is None:
            return super().propose(state)
        plain, logs = state.distance, self.logs

        def distance(index: int) -> np.ndarray:
            d = plain(index)
            step = logs - logs[index]
            moved = np.count_nonzero(step, axis=1)
            iso = (d == 2) & (moved == 2) & (np.abs(step.sum(axis=1)) < 1e-9)
            return np.where(iso, 1, d)

        return super().propose(dataclasses.replace(state, distance=distance))


class ExploreStalled(GuidedSearch):
    """Once the search has stalled (no 0.5% gain over a quarter of the budget), every pick of a round is an
    exploring one (the largest expected improvement) instead of half: the exploiting picks have stopped
    finding anything, and on the convolutions the runs that end low spend their last 50 evaluations polishing
    one basin."""

    def propose(self, state: SearchState) -> list[int]:
        self.explore = 1.0 if state.informed and self._size and self._stalled() else 0.5
        return super().propose(state)


def pair_products(space: TuningSpace) -> np.ndarray:
    """kt's feature columns plus, for every two numeric parameters, log2 of the product of their values (a
    block's threads, a thread's tile): a tree reads a product off one column instead of a staircase of cuts."""
    logs = [np.log2(1 + np.abs(values)) for values in numeric_columns(space)]
    pairs = [logs[a] + logs[b] for a in range(len(logs)) for b in range(a + 1, len(logs))]
    return np.hstack([space.features()] + ([np.stack(pairs, axis=1)] if pairs else []))


class ClippedForest(ParamForest):
    """The forest learns log(objective) clipped from above at the `quantile` of the points measured so far:
    every slow point looks equally slow, so the trees spend their cuts on telling the fast ones apart (on the
    MI250X convolution 98% of the space is over twice as slow as the optimum)."""

    def __init__(self, quantile: float, seed: int):
        super().__init__(seed=seed)
        self.quantile = quantile

    def fit(self, x, objective, offset=None):
        objective = np.asarray(objective, dtype=np.float64)
        ran = np.isfinite(objective) & (objective > 0)
        if ran.any():
            objective = np.where(
                ran, np.minimum(objective, np.quantile(objective[ran], self.quantile)), objective
            )
        return super().fit(x, objective, offset)


class ExtraForest(ParamForest):
    """Extremely randomized trees (random cut points, no bootstrap) instead of a random forest: a smoother
    surface and a spread that comes from the cuts, as scikit-optimize's ET surrogate."""

    regressor = ExtraTreesRegressor


Model = Callable[[int], ParamForest]  # seed -> an unfitted forest
# name -> (the strategy, the feature columns (None: kt's own), the forest (None: kt's own))
VARIANTS: dict[
    str, tuple[Callable[[], GuidedSearch], Callable[[TuningSpace], np.ndarray] | None, Model | None]
] = {
    "base": (GuidedSearch, None, None),
    "radius2-even": (lambda: WiderPolish("even"), None, None),
    "radius2-stalled": (lambda: WiderPolish("stalled"), None, None),
    "radius2-dry": (lambda: WiderPolish("dry"), None, None),
    "pair-products": (GuidedSearch, pair_products, None),
    "spread-start": (SpreadStart, None, None),
    "clip-median": (GuidedSearch, None, lambda seed: ClippedForest(0.5, seed)),
    "clip-q75": (GuidedSearch, None, lambda seed: ClippedForest(0.75, seed)),
    "extra-trees": (GuidedSearch, None, lambda seed: ExtraForest(seed=seed)),
    "trees96": (GuidedSearch, None, lambda seed: ParamForest(n_estimators=96, seed=seed)),
    "all-features": (GuidedSearch, None, lambda seed: ParamForest(max_features=1.0, seed=seed)),
    "parzen-odd": (lambda: ParzenExplore("odd"), None, None),
    "parzen-stalled": (lambda: ParzenExplore("stalled"), None, None),
    "iso-product": (IsoProductPolish, None, None),
    "explore-stalled": (ExploreStalled, None, None),
}

# per worker process: each space read once, and its feature columns computed once per feature function
_spaces: dict[str, tuple[TuningSpace, dict[Callable, np.ndarray]]] = {}


def _space(path: str) -> tuple[TuningSpace, dict[Callable, np.ndarray]]:
    if path not in _spaces:
        _spaces[path] = (load_kernel_tuner(Path(path)), {})
    return _spaces[path]


def run(job: tuple[str, str, str, int, int]) -> dict:
    """One replay: (space name, its file, variant, budget, seed) -> the row written."""
    name, path, variant, budget, seed = job
    space, columns = _space(path)
    strategy, features, model = VARIANTS[variant]
    features = features or TuningSpace.features
    if features not in columns:
        columns[features] = features(space)
    started = time.perf_counter()
    forest = model or parameter_forest
    search = strategy()
    if hasattr(search, "bind"):
        search.bind(space)
    trace = replay_space(space, search, budget, seed, features=columns[features], model=forest)
    return {
        "space": name,
        "variant": variant,
        "budget": budget,
        "seed": seed,
        "score": space.score(trace.best_after(budget)),
        "evals": len(trace.measured),
        "seconds": time.perf_counter() - started,
    }


def seeds_of(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
        raise ValueError(f"--seeds: {text!r} is not a seed or a range such as 100-119")
    return list(range(int(lo), int(hi or lo) + 1))


FIELDS = ("space", "variant", "budget", "seed", "score")  # what a run's line holds (and --compare reads)


def read(path: Path, parser: argparse.ArgumentParser | None = None) -> list[dict]:
    """The runs of a --jsonl file (none where it does not exist); its last line cut short by a crash is skipped,
    and a file that is not this script's JSON lines is refused in one line (through `parser`'s error, exit 2)."""

    def refuse(why: str):
        message = f"--jsonl: {path} is not this script's JSON lines ({why})"
        if parser is not None:
            parser.error(message)
        sys.exit(f"search_variants: error: {message}")

    if not path.is_file():
        return []
    rows = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        refuse("not text")
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, cut short by a crash: that run is simply redone
                continue
            refuse(f"line {number} is not JSON")
        if not isinstance(row, dict) or any(field not in row for field in FIELDS):
            refuse(
                f"a line without {', '.join(f for f in FIELDS if not isinstance(row, dict) or f not in row)}"
            )
        rows.append(row)
    return rows


def compare(rows: list[dict], base: str = "base") -> str:
    """Each variant against `base`, paired on space, budget and seed: mean difference +- its standard error,
    and the mean difference per space (markdown)."""
    score = {(r["space"], r["variant"], r["budget"], r["seed"]): r["score"] for r in rows}
    lines = [
        "| variant | budget | pairs | paired difference +- s.e. | per space |",
        "|---|---|---|---|---|",
    ]
    for variant in sorted({r["variant"] for r in rows} - {base}):
        for budget in sorted({r["budget"] for r in rows if r["variant"] == variant}):
            per_space = defaultdict(list)
            for (space, v, b, seed), value in score.items():
                if v == variant and b == budget and (space, base, b, seed) in score:
                    per_space[space].append(value - score[(space, base, b, seed)])
            diffs = np.array([d for values in per_space.values() for d in values])
            if not len(diffs):
                continue
            error = diffs.std(ddof=1) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            spaces = ", ".join(f"{s} {np.mean(d):+.3f}" for s, d in sorted(per_space.items()))
            lines.append(
                f"| {variant} | {budget} | {len(diffs)} | {diffs.mean():+.4f} +- {error:.4f} | {spaces} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jsonl", type=Path, required=True, help="append each run here; reruns skip its runs"
    )
    parser.add_argument("--variants", default="", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the shared Kernel Tuner caches")
    parser.add_argument("--held-out", type=Path, default=None, metavar="HUB", help="the 21 held-out spaces")
    parser.add_argument("--spaces", default=None, help="comma-separated names (default: all of the set)")
    parser.add_argument("--budgets", default="25,100")
    parser.add_argument("--seeds", default="100-119", help="a seed or a range (100-119: choosing)")
    parser.add_argument("--jobs", type=int, default=2, help="replays run side by side")
    parser.add_argument("--compare", action="store_true", help="print every variant against base, paired")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} unknown; allowed: {', '.join(VARIANTS)}")
    try:
        seeds = seeds_of(args.seeds)
        budgets = [int(b) for b in args.budgets.split(",") if b]
    except ValueError as error:
        parser.error(str(error).split(": invalid literal")[0])
    if not budgets or min(budgets) < 1:  # -5 was run, and stored as a score of 0
        parser.error(f"--budgets: {args.budgets!r}; give counts of evaluations of 1 or more")
    if args.jobs < 1:  # -4 ran as 1
        parser.error(f"--jobs: {args.jobs}; give 1 or more")
    check_outputs(parser, {"--jsonl": args.jsonl})
    if args.held_out is not None:
        known = {**HELD_OUT, **LATER_HELD_OUT}
        paths = {name: args.held_out / rel for name, rel in known.items()}
    else:
        paths = {name: args.data / f"{name}.json.gz" for name in SPACES}
    if args.spaces:
        wrong = [s for s in args.spaces.split(",") if s not in paths]
        if wrong:
            parser.error(f"--spaces: {', '.join(wrong)} not among {', '.join(paths)}")
        paths = {s: paths[s] for s in args.spaces.split(",")}
    if not variants and not args.compare:
        parser.error(f"give --variants (of: {', '.join(VARIANTS)}) or --compare")
    missing = [name for name, path in paths.items() if not path.is_file()]
    if variants and len(missing) == len(paths):  # nothing to run: say so, not exit 0 having done nothing
        parser.error(f"no space found: {', '.join(str(paths[name]) for name in missing)}")
    for name in missing:
        print(f"skip {name}: {paths[name]} not found", file=sys.stderr)
    if variants:  # a run appends: a line a killed run cut short goes first (its run is redone)
        drop_cut_line(args.jsonl)
    done = {(r["space"], r["variant"], r["budget"], r["seed"]) for r in read(args.jsonl, parser)}
    jobs = [
        (name, str(path), variant, budget, seed)
        for name, path in paths.items()
        if name not in missing
        for budget in budgets
        for variant in variants
        for seed in seeds
        if (name, variant, budget, seed) not in done
    ]
    if jobs:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with Pool(args.jobs) as pool, args.jsonl.open("a") as handle:
            for i, row in enumerate(pool.imap_unordered(run, jobs), 1):
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                print(
                    f"[{i}/{len(jobs)}] {row['space']} {row['variant']} budget {row['budget']} seed "
                    f"{row['seed']}: {row['score']:.3f}",
                    file=sys.stderr,
                )
    if args.compare:
        runs = read(args.jsonl, parser)
        if not runs:  # a mistyped path printed an empty table, exit 0
            parser.error(
                f"--compare: {args.jsonl} holds no runs" + ("" if args.jsonl.is_file() else " (not found)")
            )
        print(compare(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
