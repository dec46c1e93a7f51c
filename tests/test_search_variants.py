"""benchmarks/search_variants.py: variants of the guided search replayed paired against the shipped one.

What is checked: `base` is exactly `kt replay`'s guided search (same scores, seed for seed); the wider polish
reaches a two-parameter neighbour when it should and only then; the spread start's first points differ in every
parameter while they can; the feature variant adds one column per pair of numeric parameters; the clipped forest
learns nothing slower than its quantile; a forest variant is the one `replay_space` refits (one per round, seeded
by the points measured); the Parzen pick recombines the best points' values on the rounds its rule names; the
iso-product polish reaches a point two parameters away when it keeps their product, and no other; once
stalled, every pick is an exploring one; rows
append and a rerun skips them, a line cut short is redone; the paired table pairs on space, budget and seed; bad
arguments are one clear error. Real spaces (../shared/data/kerneltuner) where present, else those tests skip;
small budgets keep each within seconds.
"""

import numpy as np
import pytest
from conftest import benchmark_module

from kt.autotune.replay import replay_space
from kt.autotune.search import GuidedSearch, SearchState, expected_improvement
from kt.autotune.spaces import load_kernel_tuner

variants = benchmark_module("search_variants")

CONVOLUTION = variants.DATA / "convolution_A100.json.gz"
needs_data = pytest.mark.skipif(
    not CONVOLUTION.is_file(), reason=f"Kernel Tuner spaces not found at {variants.DATA}"
)


def grid_state(measured: dict[int, float], objective: np.ndarray, round_: int) -> SearchState:
    """A 5 x 5 grid of two parameters; distance = how many of the two differ."""
    a, b = np.divmod(np.arange(25), 5)

    def distance(i):
        return (a != a[i]).astype(int) + (b != b[i]).astype(int)

    order = np.argsort(objective, kind="stable")
    return SearchState(objective, np.full(25, 0.1), order, measured, 64, round_, 0, distance=distance)


def test_the_wider_polish_reaches_two_parameters_only_when_its_rule_says():
    # the best measured is (0, 0); the model's best overall is (4, 4), two parameters away; its one-parameter
    # neighbours are all measured except (0, 1), which the model expects to be worse than the best measured
    objective = np.full(25, 2.0)
    objective[24] = 0.1
    measured = {0: 1.0, **{i: 3.0 for i in (2, 3, 4, 5, 10, 15, 20)}}
    assert GuidedSearch().propose(grid_state(measured, objective, 1))[0] == 1, "the shipped polish: radius 1"
    assert variants.WiderPolish("dry").propose(grid_state(measured, objective, 1))[0] == 24
    objective[1] = 0.5  # now a one-parameter neighbour is predicted to beat the best: the polish stays near
    state = grid_state(measured, objective, 1)
    assert variants.WiderPolish("dry").propose(state)[0] == 1
    assert variants.WiderPolish("even").propose(state) == GuidedSearch().propose(state), "odd round: radius 1"
    with pytest.raises(ValueError, match="allowed: even, stalled, dry"):
        variants.WiderPolish("always")


@needs_data
def test_base_is_kt_replays_guided_search_and_rows_append_and_resume(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    args = ["--jsonl", str(out), "--spaces", "convolution_A100", "--budgets", "12", "--seeds", "0-1"]
    assert variants.main([*args, "--variants", "base,radius2-even", "--jobs", "1"]) == 0
    rows = variants.read(out)
    assert len(rows) == 4
    space = load_kernel_tuner(CONVOLUTION)
    for row in rows:
        if row["variant"] == "base":
            trace = replay_space(space, "guided", 12, row["seed"])
            assert row["score"] == space.score(trace.best_after(12))
        assert row["evals"] == 12 and 0 < row["score"] <= 1
    with out.open("a") as handle:
        handle.write('{"space": "convolution_A100", "varia')  # a crash mid-line
    assert variants.main([*args, "--variants", "base", "--compare", "--jobs", "1"]) == 0
    assert len(variants.read(out)) == 4, "a rerun skips what it holds and ignores the cut line"
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| radius2-even | 12 | 2 | ")
    # a run that appends after the cut line drops it: ended with a newline, the fragment stayed in the middle of
    # the file and every later read refused it ("line 5 is not JSON")
    more = ["--jsonl", str(out), "--spaces", "convolution_A100", "--budgets", "12", "--seeds", "0-2"]
    assert variants.main([*more, "--variants", "base", "--jobs", "1"]) == 0
    assert len(variants.read(out)) == 5 and all(line.endswith("}") for line in out.read_text().splitlines())


@needs_data
def test_pair_products_add_one_log_column_per_pair_of_numeric_parameters():
    space = load_kernel_tuner(CONVOLUTION)
    x = variants.pair_products(space)
    base = space.features()
    extra = x.shape[1] - base.shape[1]
    assert np.array_equal(x[:, : base.shape[1]], base)
    numeric = round((1 + np.sqrt(1 + 8 * extra)) / 2)
    assert numeric * (numeric - 1) // 2 == extra and numeric >= 2


def test_compare_pairs_on_space_budget_and_seed():
    def row(space, variant, budget, seed, score):
        return {"space": space, "variant": variant, "budget": budget, "seed": seed, "score": score}

    rows = [row("a", "base", 25, s, 0.5) for s in range(3)] + [row("a", "v", 25, s, 0.6) for s in range(3)]
    rows += [row("b", "base", 25, 0, 0.9), row("b", "v", 25, 0, 0.7), row("b", "v", 25, 5, 1.0)]
    lines = variants.compare(rows).splitlines()
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    diffs = np.array([0.1, 0.1, 0.1, -0.2])
    assert cells[:3] == ["v", "25", "4"]
    assert cells[3] == f"{diffs.mean():+.4f} +- {diffs.std(ddof=1) / 2:.4f}"
    assert cells[4] == "a +0.100, b -0.200"


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    for bad, says in [
        (["--variants", "nope"], "--variants: nope unknown; allowed: base,"),
        (["--seeds", "9-3"], "--seeds: '9-3' is not a seed or a range"),
        (["--spaces", "gemm_X"], "--spaces: gemm_X not among"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            variants.main(["--jsonl", str(tmp_path / "r.jsonl"), *bad])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_the_spread_start_picks_points_that_differ_in_every_parameter_while_it_can():
    a, b, c = np.unravel_index(np.arange(64), (4, 4, 4))  # three parameters of four values each

    def distance(i):
        return (a != a[i]).astype(int) + (b != b[i]).astype(int) + (c != c[i]).astype(int)

    def state(seed):
        return SearchState(
            np.ones(64), np.zeros(64), np.arange(64), {}, 25, 0, seed, informed=False, distance=distance
        )

    picks = variants.SpreadStart().propose(state(3))
    assert len(picks) == 8 == len(set(picks)), "the random start's size: 8 at a budget of 25"
    first = picks[:4]
    assert all(distance(i)[j] == 3 for i in first for j in first if i != j), first
    assert variants.SpreadStart().propose(state(3)) == picks, "the same seed, the same start"
    plain = GuidedSearch().propose(state(3))
    assert len(plain) == 8 and plain != picks


def test_the_clipped_forest_sees_every_slow_point_as_equally_slow():
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    objective = np.exp(4 * x[:, 0])  # slow where the first column is large
    objective[3] = np.nan  # failed: stays a failure, not clipped
    forest = variants.ClippedForest(0.5, seed=0).fit(x, objective)
    assert forest.rows == 39 and forest.failed_rows == 1
    limit = np.nanquantile(objective, 0.5)
    slow = x[np.nan_to_num(objective) > 2 * limit]
    predicted = forest.predict(slow).runtime_s
    assert (predicted <= limit * (1 + 1e-9)).all(), "nothing is learned as slower than the median"
    assert np.median(predicted) > 0.9 * limit
    plain = variants.ParamForest(seed=0).fit(x, objective).predict(slow).runtime_s
    assert (plain > 1.5 * limit).all()


@needs_data
def test_a_model_variant_replays_through_the_forest_it_names():
    space = load_kernel_tuner(CONVOLUTION)
    seeds = []

    def recorded(seed):
        seeds.append(seed)
        return variants.ExtraForest(seed=seed)

    trace = replay_space(space, "guided", 14, 2, model=recorded)
    assert len(trace.measured) == 14 and trace.models[-1].startswith("parameter forest on")
    assert seeds == [2 + n for n in (8, 10, 12, 14)], "one forest per refit, seeded by the points measured"
    assert isinstance(variants.VARIANTS["extra-trees"][2](0).regressor(), variants.ExtraTreesRegressor)


def test_the_parzen_pick_recombines_the_values_of_the_best_points():
    # the two best measured are (0, 1) and (1, 0); nine slow ones fill a, b in 2-4. The good density favours
    # a and b in {0, 1}, the bad one the rest: the exploring pick is (0, 0) or (1, 1), never measured, while
    # the model (flat but for one point) would exploit elsewhere
    a, b = np.divmod(np.arange(25), 5)
    measured = {1: 1.0, 5: 1.1, **{int(i): 5.0 for i in np.flatnonzero((a >= 2) & (b >= 2))}}
    objective = np.full(25, 2.0)
    objective[24] = 0.5
    search = variants.ParzenExplore("odd")
    search.codes = np.stack([a, b], axis=1)
    picks = search.propose(grid_state(measured, objective, 1))
    assert len(picks) == 2 and picks[-1] in (0, 6) and not set(picks) & set(measured)
    plain = GuidedSearch().propose(grid_state(measured, objective, 1))
    assert picks[:-1] == plain[:-1], "the exploiting picks are the shipped search's"
    state = grid_state(measured, objective, 2)
    assert search.propose(state) == GuidedSearch().propose(state), "even round: expected improvement"
    with pytest.raises(ValueError, match="allowed: odd, stalled"):
        variants.ParzenExplore("always")


def test_the_iso_product_polish_swaps_two_factors_of_a_product_in_one_move():
    # a 5 x 5 grid of block and tile sizes 1..16 and a flag (0/1: not positive, never part of a swap); the best
    # measured is block 4, tile 2; the model's best of its one-parameter neighbours is (8, 2), but the model
    # prefers (2, 4), which keeps the product 8 and is two parameters away
    sizes = [1, 2, 4, 8, 16]
    points = [(a, b, f) for a in sizes for b in sizes for f in (0, 1)]
    space = variants.TuningSpace("grid", {"block": sizes, "tile": sizes, "flag": [0, 1]}, points, np.ones(50))
    index = {p: i for i, p in enumerate(points)}
    objective = np.full(50, 2.0)
    objective[index[(2, 4, 0)]] = 0.5
    objective[index[(8, 2, 0)]] = 1.5
    objective[index[(16, 16, 1)]] = 0.1  # the model's best overall: the other exploiting pick
    measured = {index[(4, 2, 0)]: 1.0, index[(1, 1, 0)]: 3.0}

    def state():
        order = np.argsort(objective, kind="stable")
        return SearchState(objective, np.full(50, 0.1), order, measured, 64, 1, 0, distance=space.distance)

    assert GuidedSearch().propose(state())[0] == index[(8, 2, 0)], "the shipped polish: radius 1"
    search = variants.IsoProductPolish()
    search.bind(space)
    assert search.logs.shape == (50, 2), "block and tile; the flag has a 0"
    assert search.propose(state())[0] == index[(2, 4, 0)]
    objective[index[(2, 4, 0)]] = 2.0  # (2, 8) changes the product: still not a neighbour, so back to (8, 2)
    objective[index[(2, 8, 0)]] = 0.5
    assert search.propose(state())[0] == index[(8, 2, 0)]


def test_once_stalled_every_pick_is_an_exploring_one():
    # the best measured is (0, 1); the model's best is (4, 4). Not stalled: the shipped search's round (a
    # polish next to (0, 1), then the largest expected improvement); stalled: only the largest improvements
    measured = {1: 1.0, 12: 3.0}
    objective = np.full(25, 2.0)
    objective[24] = 0.5
    objective[18] = 1.2
    state = grid_state(measured, objective, 1)
    search = variants.ExploreStalled()
    assert search.propose(state) == GuidedSearch().propose(state), "not stalled: the shipped round"
    search._best_history = [1.0] * 12  # no gain over more than a quarter of the budget
    todo = np.array(state.unmeasured())
    ei = expected_improvement(state, todo)
    assert search.propose(state) == [24, 18] == [int(todo[j]) for j in np.argsort(-ei, kind="stable")[:2]]
    assert 18 not in GuidedSearch().propose(state)
