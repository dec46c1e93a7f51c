"""The search loop and its strategies, on an abstract cost over candidate indices.

The costs here are plain numbers a strategy must minimise (a fixed vector), not runtimes: the loop never knows
what it minimises, so these tests check only what it measures, when it stops, and that it refits.
"""

import numpy as np
import pytest

from kt.autotune.search import (
    ExhaustiveSearch,
    GuidedSearch,
    RandomSearch,
    SearchState,
    TopSearch,
    expected_improvement,
    make_strategy,
    run_search,
)
from kt.costmodel.prediction import Prediction

N = 200
COST = np.random.default_rng(0).permutation(np.arange(1.0, N + 1))  # the best (1.0) hides at a random index


class Oracle:
    """A model that starts wrong (it believes the reverse of the truth) and learns each measured value."""

    def __init__(self, spread: float = 0.0):
        self.belief = (N + 1.0) - COST
        self.spread = np.full(N, spread)
        self.refits = 0
        self.measured: dict[int, float | None] = {}

    def predict(self):
        return Prediction(self.belief.copy(), self.spread.copy()), f"oracle after {self.refits} refits"

    def measure(self, batch):
        values = {i: float(COST[i]) for i in batch}
        self.measured.update(values)
        return values

    def refit(self):
        """What a refitted model learns here: the true order (as a forest would, given enough data)."""
        self.refits += 1
        self.belief = COST.copy()
        return True


def search(strategy, budget, seed=0, known=None, oracle=None):
    oracle = oracle or Oracle()
    trace = run_search(
        strategy, oracle.predict, oracle.measure, budget, seed, refit=oracle.refit, known=known
    )
    return trace, oracle


@pytest.mark.parametrize("strategy", [GuidedSearch(), TopSearch(), RandomSearch(), ExhaustiveSearch()])
def test_a_search_spends_at_most_its_budget_and_measures_nothing_twice(strategy):
    trace, oracle = search(strategy, budget=40)
    assert len(trace.measured) == len(set(trace.measured))
    assert len(trace.measured) <= 40
    assert set(trace.measured) == set(oracle.measured)
    if strategy.name != "guided":
        assert len(trace.measured) == 40 and set(trace.rounds) == {0}, "one-shot strategies fill one round"


def test_an_index_a_strategy_proposes_twice_in_one_round_is_measured_and_recorded_once():
    """Both copies went into the trace (and a replay's CSV), past the budget: 6 evaluations for a budget of 5.
    (benchmarks/search_variants.py judges strategy variants through this loop.)"""

    class Twice(TopSearch):
        def propose(self, state):
            first = super().propose(state)
            return [first[0], *first]

    trace, oracle = search(Twice(), budget=5)
    assert len(trace.measured) == 5 == len(set(trace.measured)) == len(oracle.measured)


def test_known_values_count_against_the_budget_and_are_never_measured_again():
    known = {int(i): float(COST[i]) for i in np.argsort(-COST)[:10]}  # the ten worst, measured before
    trace, _ = search(TopSearch(), budget=25, known=known)
    assert len(trace.measured) == 15 and not set(trace.measured) & set(known)
    trace, _ = search(TopSearch(), budget=10, known=known)
    assert trace.measured == [], "the budget was spent by earlier runs"


def test_guided_search_refits_between_rounds_and_finds_what_a_wrong_first_model_hides():
    trace, oracle = search(GuidedSearch(), budget=40)
    assert trace.rounds.count(0) == 8 and trace.rounds.count(1) == 2, "a first round of 8, then small rounds"
    assert oracle.refits >= 1 and len(set(trace.rounds)) >= 2
    assert trace.models[0] == "oracle after 0 refits" and trace.models[1] == "oracle after 1 refits"
    assert trace.best_after(len(trace.measured)) == 1.0, "after a refit, the next round goes to the true best"
    top, _ = search(TopSearch(), budget=40)
    assert top.best_after(40) > 100, "without refitting, the wrong model's picks are all bad"


def test_guided_search_stops_when_the_best_stops_improving_and_nothing_promises_better():
    class Flat(Oracle):
        """After a refit it believes no unmeasured candidate can beat what was measured."""

        def refit(self):
            self.refits += 1
            self.belief = np.full(N, 10.0 * N)
            return True

    trace, oracle = search(GuidedSearch(patience=2), budget=200, oracle=Flat())
    # a first round of 10, rounds of 5; it stops once the best has not improved for a quarter of the budget (50)
    assert len(trace.measured) < 200, "it stopped before the budget ran out"
    improved = [n for n in range(1, len(trace.values)) if min(trace.values[: n + 1]) < min(trace.values[:n])]
    assert len(trace.measured) - max(improved, default=0) >= 50
    # a model that learned the truth stops once the best is measured, with budget left
    trace, _ = search(GuidedSearch(patience=2), budget=60, oracle=Oracle())
    assert trace.best_after(len(trace.measured)) == 1.0 and len(trace.measured) < 60

    class Hopeful(Oracle):
        """Always believes the unmeasured candidates beat every measured one."""

        def refit(self):
            self.refits += 1
            self.belief = np.full(N, 0.5)
            return True

    trace, _ = search(GuidedSearch(patience=2), budget=60, oracle=Hopeful())
    assert len(trace.measured) == 60, "no early stop while the model expects an improvement"


def test_guided_search_without_a_model_starts_with_a_random_sample():
    oracle = Oracle()
    trace = run_search(GuidedSearch(), lambda: (None, "none"), oracle.measure, 100, seed=4, size=N)
    assert trace.rounds.count(0) == 10 and len(trace.measured) == 100 == len(set(trace.measured))
    again = run_search(GuidedSearch(), lambda: (None, "none"), Oracle().measure, 100, seed=4, size=N)
    assert again.measured[:10] == trace.measured[:10], "the start follows the seed"
    with pytest.raises(ValueError, match="needs the number of candidates"):
        run_search(GuidedSearch(), lambda: (None, "none"), oracle.measure, 10)


def test_guided_exploration_prefers_uncertain_candidates_when_the_model_has_spread():
    oracle = Oracle(spread=0.0)
    oracle.spread[:] = 0.01
    uncertain = int(np.argsort(oracle.belief)[150])  # ranked far down, but very unsure
    oracle.spread[uncertain] = 3.0
    prediction, _ = oracle.predict()
    measured = {int(np.argsort(oracle.belief)[0]): float(oracle.belief.min())}
    state = SearchState(
        prediction.runtime_s, prediction.runtime_spread, np.argsort(prediction.runtime_s), measured, 64, 1, 0
    )
    picks = GuidedSearch(round_size=16, explore=0.25).propose(state)
    assert len(picks) == 16 and uncertain in picks[12:]


def test_guided_search_skips_candidates_the_model_expects_to_fail():
    prediction, _ = Oracle(spread=0.1).predict()
    order = np.argsort(prediction.runtime_s)
    fail = np.zeros(N)
    fail[order[:5]] = 0.9  # the five best predicted are likely to fail
    measured = {int(order[-1]): float(prediction.runtime_s[order[-1]])}
    state = SearchState(prediction.runtime_s, prediction.runtime_spread, order, measured, 64, 1, 0, fail=fail)
    picks = GuidedSearch(round_size=8).propose(state)
    assert len(picks) == 8 and not set(picks) & {int(i) for i in order[:5]}


def test_random_search_follows_its_seed_and_exhaustive_takes_everything():
    a, _ = search(RandomSearch(), budget=20, seed=1)
    b, _ = search(RandomSearch(), budget=20, seed=2)
    assert a.measured != b.measured
    c, _ = search(ExhaustiveSearch(), budget=N)
    assert sorted(c.measured) == list(range(N))


def test_a_random_search_resumed_or_given_more_budget_goes_on_with_its_sample():
    """Only the unmeasured candidates were shuffled: a tune stopped after 3 of 6 and run again, or run with
    budget 2 and then 4, drew another sample than one run of budget 6 (or 4) with the same seed."""
    whole, _ = search(RandomSearch(), budget=12, seed=3)
    first, _ = search(RandomSearch(), budget=5, seed=3)
    assert first.measured == whole.measured[:5]
    known = {int(i): 1.0 for i in first.measured}  # a rerun: those rows are in the database
    rest, _ = search(RandomSearch(), budget=12, seed=3, known=known)
    assert first.measured + rest.measured == whole.measured


def test_an_unknown_strategy_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: guided, top, random, exhaustive"):
        make_strategy("annealing")


def test_each_search_gets_its_own_copy_of_a_strategy_object():
    """A guided search keeps its history and budget on itself: tunes at once given one object shared them."""
    given = GuidedSearch(explore=0.25)
    first, second = make_strategy(given), make_strategy(given)
    assert first is not given and second is not first and first.explore == given.explore == 0.25
    a, _ = search(first, budget=40, seed=1)
    b, _ = search(second, budget=20, seed=1)
    assert first._budget == 40 and second._budget == 20 and given._budget == 0 and given._best_history == []


def test_guided_search_polishes_the_best_measured_among_its_neighbours():
    # candidates on a line: neighbours differ in one "parameter" (their position, one step apart)
    prediction, _ = Oracle(spread=0.1).predict()
    order = np.argsort(prediction.runtime_s)
    best = int(order[-1])  # measured, and the best so far, although the model ranks it last
    measured = {best: 0.5}
    position = np.arange(N)

    def distance(i):
        return np.minimum(np.abs(position - position[i]), 2)

    state = SearchState(
        prediction.runtime_s, prediction.runtime_spread, order, measured, 64, 1, 0, distance=distance
    )
    picks = GuidedSearch(round_size=4).propose(state)
    assert len(picks) == 4 and {best - 1, best + 1} & set(picks[:1]), "one pick next to the best measured"
    assert picks[1] == int(order[0]), "the rest of the exploiting picks are the model's best"
    without = GuidedSearch(round_size=4, local=0).propose(state)
    assert not {best - 1, best + 1} & set(without[:2])


def test_predictions_of_another_quantity_than_the_measurements_rank_alone_and_never_stop_the_search():
    """An energy search ranked by a model that predicts only time: expected improvement over the best measured
    (in mJ) would compare joules with seconds, so it is the prediction's own ranking, and cannot stop."""
    measured = {int(i): float(COST[i]) for i in range(20)}
    state = SearchState(COST.copy(), np.full(N, 0.1), np.argsort(COST), measured, 50, 5, 0, comparable=False)
    candidates = np.arange(20, N)
    ei = expected_improvement(state, candidates)
    assert np.array_equal(np.argsort(-ei, kind="stable"), np.argsort(COST[candidates], kind="stable"))
    strategy = GuidedSearch(patience=1)
    strategy._size, strategy._budget, strategy._best_history = 2, 70, [1.0] * 10  # long stalled
    assert len(strategy.propose(state)) == 2, "no stop on an improvement it cannot compute"


def test_a_replay_of_a_kt_sweep_compares_predictions_and_measurements_in_the_same_units(monkeypatch):
    """kt replay of a recorded kt sweep (the H200 run's measured rows, in the repository): the sweep answers in
    ms, so the model's predictions reach the search in ms too (they were in s: 1000x apart)."""
    from pathlib import Path

    import kt.autotune.search as search_module
    from kt.autotune.dataset import read_rows
    from kt.autotune.replay import replay, sweeps_from_rows
    from kt.device import get_profile

    csv = Path(__file__).parents[1] / "benchmarks/results/h200-2026-11-30/measurements.csv"
    sweep = next(s for s in sweeps_from_rows(read_rows(csv), min_configs=20) if "4096x4096x4096" in s.shape)
    seen = []
    real = search_module.expected_improvement

    def spy(state, candidates):
        if state.best is not None:
            seen.append(
                np.median([state.objective[i] / v for i, v in state.measured.items() if v is not None])
            )
        return real(state, candidates)

    monkeypatch.setattr(search_module, "expected_improvement", spy)
    replay(sweep, "guided", get_profile("h200"), 16, seed=0)
    assert seen and all(0.1 < ratio < 10 for ratio in seen), seen


def test_a_power_cap_ranks_configs_over_it_last_and_edp_doubles_the_runtime_spread():
    """Predicted over the cap, the faster config goes behind the slower one under it; an EDP's uncertainty
    counts the runtime's twice (runtime squared), plus the power's."""
    predicted = Prediction(np.array([1.0, 2.0]), np.array([0.1, 0.1]), np.array([400.0, 200.0]), np.zeros(2))
    assert list(np.argsort(predicted.objective("time"))) == [0, 1]
    assert list(np.argsort(predicted.objective("time", power_cap_w=300))) == [1, 0]
    assert list(np.argsort(predicted.objective("energy", power_cap_w=500))) == [0, 1]
    assert predicted.spread("edp") == pytest.approx([0.2, 0.2])
    # an edp under the cap a million times the one over it still ranks first (a fixed 1e6 factor did not)
    spread = Prediction(
        np.array([1e-3, 1.5, 2e-3]), np.zeros(3), np.array([400.0, 300.0, 500.0]), np.zeros(3)
    )
    assert list(np.argsort(spread.objective("edp", power_cap_w=350))) == [1, 0, 2]
    assert list(np.argsort(spread.objective("edp", power_cap_w=1))) == [0, 2, 1]
    assert predicted.spread("energy") == pytest.approx([0.1, 0.1])


def test_of_candidates_that_run_one_program_the_best_ranked_is_proposed_and_none_once_one_ran():
    """SearchState.alias (a GEMM's group_m where it orders no tiles): one candidate per class, in model order,
    and no class of which a member was measured (a row of an earlier tune)."""
    alias = np.array([0, 0, 1, 2, 1, 3])
    order = np.array([1, 0, 4, 2, 3, 5])
    state = SearchState(np.ones(6), np.zeros(6), order, {}, 6, 0, 0, alias=alias)
    assert state.unmeasured() == [1, 4, 3, 5]
    state.measured = {2: 1.0}  # class 1, through its second-ranked member
    assert state.unmeasured() == [1, 3, 5]
    cost = np.array([3.0, 3.0, 1.0, 2.0, 1.0, 4.0])
    trace = run_search(
        ExhaustiveSearch(),
        lambda: (Prediction(cost.copy(), np.zeros(6)), "m"),
        lambda batch: {i: float(cost[i]) for i in batch},
        budget=6,
        alias=alias,
    )
    # one of each class, the first in model order (by cost, ties stable): 2 (not 4), 3, 0 (not 1), 5
    assert trace.measured == [2, 3, 0, 5]


def test_a_guided_first_round_takes_one_candidate_per_tile_and_later_rounds_any():
    """SearchState.variant (a GEMM's tile: configs differing only in group_m and TMA, which the starting models
    cannot rank): an 8-config tune on the H200 (2026-12-04) measured 3 group_m x 3 TMA variants of one tile.
    Round 0 takes the best of each tile first, exploit and explore alike; a later round may take a variant."""
    variant = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5])  # ten candidates of six tiles
    objective = np.arange(1.0, 11.0)  # the model ranks them in index order
    spread = np.full(10, 0.1)
    first = SearchState(objective, spread, np.arange(10), {}, 8, 0, 0, variant=variant)
    picks = GuidedSearch(initial=4, explore=0.5, local=0).propose(first)
    assert len(picks) == 4 and len({variant[i] for i in picks}) == 4, picks
    assert picks[:2] == [0, 3], "exploit: the best of the two best tiles"
    without = GuidedSearch(initial=4, explore=0.5, local=0).propose(
        SearchState(objective, spread, np.arange(10), {}, 8, 0, 0)
    )
    assert len({variant[i] for i in without}) < 4, "without variant the same search repeats tiles"
    resumed = SearchState(objective, spread, np.arange(10), {0: 1.0}, 8, 0, 0, variant=variant)
    picks = GuidedSearch(initial=4, explore=0.5, local=0).propose(resumed)
    assert {variant[i] for i in picks} == {1, 2, 3, 4}, "a resumed tune's measured tile has its config"
    later = SearchState(objective, spread, np.arange(10), {0: 1.0, 3: 4.0}, 8, 1, 0, variant=variant)
    strategy = GuidedSearch(initial=4, round_size=2, explore=0.0, local=0)
    strategy.propose(first)  # sizes the rounds
    assert strategy.propose(later)[0] == 1, "round 1: the model's next best, a variant of a measured tile"


def test_the_polish_tries_the_best_tiles_other_variants_before_its_other_neighbours():
    """The polish (`local`) takes the model's best among the incumbent's neighbours: a variant the model ranks
    below them (a structured op's feature-major ends, priced by their copies) was never measured, though the
    model cannot rank variants. The incumbent's own tile now goes first."""
    variant = np.array([0, 1, 2, 3, 0, 4])  # candidate 4: candidate 0's other variant, ranked below 1, 2, 3
    objective = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    spread = np.zeros(6)
    distance = lambda i: np.array([0 if j == i else 1 for j in range(6)])  # noqa: E731  every other config near
    first = SearchState(objective, spread, np.arange(6), {}, 6, 0, 0, distance=distance, variant=variant)
    strategy = GuidedSearch(initial=2, round_size=2, explore=0.0, local=1)
    assert strategy.propose(first) == [0, 1]
    later = SearchState(
        objective, spread, np.arange(6), {0: 1.0, 1: 2.0}, 4, 1, 0, distance=distance, variant=variant
    )
    assert strategy.propose(later) == [4, 2], (
        "round 1's polish: the incumbent's variant, then the model's next"
    )
    plain = SearchState(objective, spread, np.arange(6), {0: 1.0, 1: 2.0}, 4, 1, 0, distance=distance)
    assert strategy.propose(plain) == [2, 3], "without variants the polish follows the model"


def test_the_planned_first_round_of_a_gpu_tune_covers_distinct_gemm_tiles():
    """kt.plan with a GPU's strategy (guided) for a dense 4096^3 float16 GEMM on the H100: the shipped forest
    ranks group_m and TMA variants of two tiles first; the first round of 8 holds 8 tiles."""
    import kt
    from kt.codegen import FAMILIES

    spec = kt.parse_spec({"op": "dense", "shape": {"m": 4096, "n": 4096, "k": 4096}, "dtype": "float16"})
    plan = kt.plan(spec, budget=8, device="h100", measures_time=True)
    tile = FAMILIES["gemm"].tile_of
    assert plan.strategy == "guided" and len(plan.chosen) == 8
    assert len({tile(plan.problem, plan.config(i)) for i in plan.chosen}) == 8
    assert len({tile(plan.problem, plan.config(i)) for i in plan.ranked[:8]}) < 8


@pytest.mark.parametrize("op", ["blocksparse", "lowrank"])
def test_the_planned_first_round_of_a_gpu_tune_covers_distinct_tilesum_tiles(op):
    """The H200's quick tunes (2026-12-04) measured group_m twins: the block-sparse first round of 8 held 3
    tiles (m256n64k32 w8 s4 as g8, g1 and g4 among them), the low-rank one 5. The block-sparse, low-rank and sum
    family now has `tile_of` as the GEMM's, so the first round holds 8 tiles."""
    import kt
    from kt.bench import tune_cases
    from kt.codegen import family_for

    (case,) = [c for c in tune_cases(False) if c.spec["op"] == op]
    plan = kt.plan(kt.parse_spec({**case.spec, "name": "x"}), budget=8, device="h200", measures_time=True)
    tile = family_for(plan.problem).tile_of
    assert plan.strategy == "guided" and len(plan.chosen) == 8
    assert len({tile(plan.problem, plan.config(i)) for i in plan.chosen}) == 8
