"""Search strategies and the search loop: which candidates to measure, in rounds, within a budget.

Every strategy answers one question, `propose(state)`: given the model's current predictions and what has been
measured so far, which candidates to measure next (an empty list ends the search). `run_search` drives any
strategy the same way, with the measuring and the refitting passed in, so `kt tune` on a GPU and `kt replay`
(which answers from a space measured whole: kt.autotune.replay) run the very same loop, and the strategies can
be compared on real measurements:

- `guided` (the default): model-guided rounds. Without any model yet (a foreign space, nothing measured) it
  starts with a small random sample (with a model from the start, as in `kt tune`, that first round is the
  model's picks instead); then each round measures a few candidates, half the best predicted
  (exploit) and half those with the largest expected improvement over the best measured (explore: the trees'
  spread says where the model may be wrong), skipping candidates the model expects to fail. Where the
  candidates have parameters (a replayed space, or the config fields of a tune: `distance` says how many
  parameters two points differ in), half the exploiting picks are the model's best among the neighbours of the best measured (one
  parameter changed): a polish that finds the optimum next to a near-best the model cannot tell apart; the model is
  refitted on everything measured and the rest ranked again. Rounds are small (a refit after every two or
  three measurements at small budgets, growing with the budget), which is what wins at 25-100 evaluations on
  brute-forced spaces (BENCHMARKS.md, "Search strategies against the field"). It stops when the budget is
  spent, or when the best has not improved for `patience` rounds and a quarter of the budget, and the model
  expects no candidate left to beat it by more than 0.01%.
- `random`: a uniform sample of the legal space, the baseline that search efficiency is judged against.
- `top`: the model's best candidates, no refitting (the search without a GPU).
- `exhaustive`: every candidate (for `kt collect --all`).

Without a GPU nothing is timed, so there is nothing to refit on: the first round takes the whole budget.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from scipy.special import ndtr

from kt.costmodel.prediction import Prediction
from kt.errors import shown

FAILING = (
    0.5  # a candidate the model gives this chance of failing or more is not proposed while others remain
)
STOP_GAIN = 1e-4  # stop early only when no candidate is expected to beat the best by more than this fraction


@dataclass
class SearchState:
    """What a strategy sees: predictions for every candidate and the measured values so far."""

    objective: np.ndarray  # predicted objective per candidate (lower is better)
    spread: np.ndarray  # relative uncertainty of that prediction (0 when the model has none)
    order: np.ndarray  # candidate indices, best predicted first (ties broken by preference)
    measured: dict[int, float | None]  # index -> measured objective, None when it failed or has no value
    budget_left: int
    round: int
    seed: int
    informed: bool = True  # False: no model yet (objective and order carry no information)
    fail: np.ndarray | None = None  # the model's chance that each candidate fails (None: not modelled)
    # distance(i): how many parameters every candidate differs from candidate i in (None: no structure known)
    distance: Callable[[int], np.ndarray] | None = None
    # False: the predictions are of another quantity than the measured values (a tune for energy ranked by a
    # model that predicts no power): expected improvement then ranks by the prediction alone, and never stops
    comparable: bool = True
    # alias[i]: the class of candidate i, candidates of one class being the same program (a GEMM's group_m
    # where it orders no tiles): one of each is measured (None: every candidate is its own)
    alias: np.ndarray | None = None
    # variant[i]: the tile of candidate i, candidates of one tile differing only in what the starting model
    # cannot rank (a GEMM's group_m and TMA, a block-GEMM's GROUP and feature-major ends): a model-guided first
    # round takes one of each, and the polish tries the best measured tile's others first (None: no tiles)
    variant: np.ndarray | None = None
    # False: the search may not end before its budget is spent (a listed tune.configs is measured whole)
    stop: bool = True

    def unmeasured(self) -> list[int]:
        """The candidates not measured yet, in model order: of candidates of one class (`alias`), the first
        in model order, and none of a class with a measured member."""
        measured = np.fromiter(self.measured, dtype=np.int64, count=len(self.measured))
        todo = self.order[~np.isin(self.order, measured)].astype(np.int64)
        if self.alias is not None and len(todo):
            todo = first_of_each(todo, self.alias)
            todo = todo[~np.isin(self.alias[todo], self.alias[measured])]
        return todo.tolist()

    @property
    def best(self) -> float | None:
        values = [v for v in self.measured.values() if v is not None]
        return min(values) if values else None


def first_of_each(order: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The candidates of `order` that come first of their class (`alias[i]`: candidate i's class), in order."""
    first = np.zeros(len(order), dtype=bool)
    first[np.unique(alias[order], return_index=True)[1]] = True
    return order[first]


def one_per_tile(order: list[int], tiles: np.ndarray, taken: set[int]) -> list[int]:
    """`order` with the first candidate of each tile (`tiles[i]`) not in `taken` moved to the front, the rest
    after them, each part in its order."""
    first, rest = [], []
    for i in order:
        tile = int(tiles[i])
        if tile in taken:
            rest.append(i)
        else:
            taken.add(tile)
            first.append(i)
    return first + rest


class SearchStrategy(ABC):
    name: str
    description: str  # what it measures, for progress lines
    adaptive = False  # True: the loop refits the model between rounds
    ranked = True  # False: its picks are a uniform sample whatever the model predicts (a replay fits none)
    # False: it spends the budget it is given, which a tune otherwise sizes by the predicted gap to PyTorch's
    # path (`size_budget`): a random sample and an exhaustive sweep, kt collect's, are not the model's to cut
    sized = True

    @abstractmethod
    def propose(self, state: SearchState) -> list[int]:
        """Indices to measure next, at most `state.budget_left`, none already measured; [] to stop."""


def expected_improvement(state: SearchState, candidates: np.ndarray) -> np.ndarray:
    """Expected improvement of log(objective) over the best measured, per candidate, with the prediction's
    spread as a normal's standard deviation (0 spread: the plain predicted improvement). Times the chance the
    candidate runs at all, when failures are modelled. The predictions and the measured values must be in the
    same units (run_search's `objective`)."""
    best = state.best if state.comparable else None
    mu = np.log(np.maximum(state.objective[candidates], 1e-300))
    if best is None:
        return -mu  # nothing ran yet: the best predicted
    sigma = state.spread[candidates]
    gain = math.log(best) - mu
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, gain / sigma, 0.0)
        ei = np.where(
            sigma > 0,
            gain * ndtr(z) + sigma * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
            np.maximum(gain, 0),
        )
    if state.fail is not None:
        ei = ei * (1 - state.fail[candidates])
    return ei


class GuidedSearch(SearchStrategy):
    """Model-guided rounds: a random start when there is no model, then small rounds of the best predicted
    (exploit) and the largest expected improvement (explore), refitting after each."""

    name = "guided"
    description = "rounds ranked by the cost model, refitted on each round's measurements"
    adaptive = True

    def __init__(
        self,
        initial: int | None = None,
        round_size: int | None = None,
        explore: float = 0.5,
        min_round: int = 2,
        rounds_per_budget: int = 40,
        patience: int = 3,
        local: int = 1,
    ):
        if not 0 <= explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {explore}")
        self.initial, self.round_size, self.explore = initial, round_size, explore
        self.min_round, self.rounds_per_budget, self.patience = min_round, rounds_per_budget, patience
        self.local = local
        self._size = self._initial = self._budget = 0
        self._best_history: list[float | None] = []

    def plan(self, budget: int) -> tuple[int, int]:
        """(random start, round size) for a search of `budget` measurements: a start of a tenth of the budget
        (8 to 10) and rounds of a 40th (at least `min_round`), unless set."""
        initial = self.initial if self.initial is not None else min(10, max(8, budget // 10))
        size = self.round_size or max(self.min_round, math.ceil(budget / self.rounds_per_budget))
        return initial, size

    def propose(self, state: SearchState) -> list[int]:
        if state.round == 0 or not self._size:
            self._best_history = []
            self._budget = state.budget_left + len(state.measured)
            self._initial, self._size = self.plan(self._budget)
        if not state.informed:  # no model yet (or nothing ran to fit one on): a random sample
            todo = state.unmeasured()
            rng = np.random.default_rng(state.seed if state.round == 0 else [state.seed, state.round])
            n = min(self._initial, state.budget_left, len(todo))
            return [todo[i] for i in sorted(rng.choice(len(todo), size=n, replace=False))]
        todo = np.array(state.unmeasured(), dtype=np.int64)
        # a model from the start (kt's prior) picks the first round at the random start's size
        size = min(self._initial if state.round == 0 else self._size, state.budget_left, len(todo))
        if size <= 0:
            return []
        ei = expected_improvement(state, todo)
        self._best_history.append(state.best)
        if state.stop and state.comparable and self._stalled() and float(ei.max(initial=0.0)) < STOP_GAIN:
            return []
        n_explore = int(size * self.explore) if size >= 2 else 0
        runs = np.ones(len(todo), dtype=bool) if state.fail is None else state.fail[todo] < FAILING
        if not runs.any():
            runs[:] = True
        likely = todo[runs]  # in model order
        tiles = state.variant if state.round == 0 else None
        if tiles is not None:
            # One config per tile first: the model ranks a tile's variants (a GEMM's group_m and TMA) side by
            # side, and an 8-config tune on the H200 (2026-12-04) spent all 8 on one tile's 3 group_m x 3 TMA
            # variants.
            # The polish of later rounds (`local`) tries the best tile's other variants.
            # (a resumed tune's rows count: their tiles have one)
            seen = {int(tiles[i]) for i in state.measured}
            likely = np.array(one_per_tile([int(i) for i in likely], tiles, set(seen)), dtype=np.int64)
        n_exploit = size - n_explore
        exploit: list[int] = []
        if self.local and state.distance is not None and state.best is not None:
            # half the exploiting picks (every other round when there is one) polish the best measured: the
            # model's best among the configs that differ from it in at most `local` parameters
            n_local = n_exploit // 2 + (n_exploit % 2 if state.round % 2 else 0)
            incumbent = min((i for i, v in state.measured.items() if v is not None), key=state.measured.get)
            near = likely[state.distance(incumbent)[likely] <= self.local]
            if state.variant is not None:  # the best tile's other variants first: the model cannot rank them
                same = state.variant[near] == state.variant[incumbent]
                near = np.concatenate([near[same], near[~same]])
            exploit = [int(i) for i in near[:n_local]]
        taken = set(exploit)
        exploit += islice((int(i) for i in likely if int(i) not in taken), n_exploit - len(exploit))
        if n_explore == 0:
            return exploit
        chosen = set(exploit)
        if state.spread[todo].any():
            candidates = np.argsort(-ei, kind="stable")
        else:
            # A model with no uncertainty (the analytic one) cannot say where it may be wrong: explore at
            # random, so the forest refitted after this round sees more than the model's own favourites.
            candidates = np.random.default_rng(state.seed + state.round).permutation(len(todo))
        fresh = [int(todo[j]) for j in candidates if int(todo[j]) not in chosen]
        if tiles is not None:
            fresh = one_per_tile(fresh, tiles, seen | {int(tiles[i]) for i in exploit})
        return exploit + fresh[:n_explore]

    def _stalled(self) -> bool:
        """True when the best measured has not improved by 0.5% over the last `patience` rounds, nor over the
        last quarter of the budget's evaluations."""
        history = self._best_history
        rounds = max(self.patience, math.ceil(self._budget / 4 / self._size))
        if len(history) <= rounds or history[-1] is None:
            return False
        before = history[-1 - rounds]
        return before is not None and history[-1] > before * (1 - 0.005)


class OneShotSearch(SearchStrategy):
    """Fills the whole budget in one round."""

    def propose(self, state: SearchState) -> list[int]:
        if state.round > 0:
            return []
        return self.pick(state.unmeasured(), state)[: state.budget_left]

    def pick(self, todo: list[int], state: SearchState) -> list[int]:
        return todo


class TopSearch(OneShotSearch):
    """The model's best `budget` candidates, with no refitting (the search without a GPU)."""

    name = "top"
    description = "the cost model's best candidates"


class RandomSearch(OneShotSearch):
    """A uniform random sample of the legal space: what search efficiency is judged against."""

    name = "random"
    description = "a random sample"
    ranked = False
    sized = False

    def pick(self, todo, state):
        """The sample a fresh search of this seed draws, less what is measured: a rerun after a stop, or with a
        larger budget, goes on with that sample (shuffling only what was left drew another one). Candidates
        are shuffled in model order, one per class, as on a fresh start: a model whose order moved (refitted
        on a GPU's rows before the rerun) moves the sample too."""
        everything = np.asarray(state.order, dtype=np.int64)
        if state.alias is not None and len(everything):
            everything = first_of_each(everything, state.alias)
        wanted = set(todo)
        shuffled = everything[np.random.default_rng(state.seed).permutation(len(everything))]
        return [int(i) for i in shuffled if int(i) in wanted]


class ExhaustiveSearch(OneShotSearch):
    """Every candidate, best predicted first (for `kt collect --all`)."""

    name = "exhaustive"
    description = "legal configs in the model's order, group_m twins included"
    sized = False

    def propose(self, state):
        return state.unmeasured() if state.round == 0 else []


STRATEGIES: dict[str, type[SearchStrategy]] = {
    s.name: s for s in (GuidedSearch, TopSearch, RandomSearch, ExhaustiveSearch)
}


def make_strategy(strategy: str | SearchStrategy) -> SearchStrategy:
    """A new strategy of that name, or a copy of the one given: a strategy keeps its search's state on itself
    (the guided one's best-so-far history and budget), and the ops of `kt.tune([...], strategy=s)` tuned at
    once shared one object, resetting each other's history and round sizes."""
    if isinstance(strategy, SearchStrategy):
        return copy.deepcopy(strategy)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:  # a list: "unhashable type: 'list'"
        raise ValueError(f"strategy: {shown(strategy)} is not supported; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]()


@dataclass
class SearchTrace:
    """What a search did: every measured index in order, the round of each, and the models that ranked."""

    measured: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # the model that ranked each round
    first_proposal: list[int] = field(default_factory=list)
    stopped_early: bool = False  # the strategy proposed nothing more with budget left (guided's early stop)

    def best_after(self, n: int) -> float | None:
        """The best measured value among the first `n` measurements (None when none passed)."""
        values = [v for v in self.values[:n] if v is not None]
        return min(values) if values else None


def run_search(
    strategy: SearchStrategy,
    predict: Callable[[], tuple[Prediction | None, str]],
    measure: Callable[[list[int]], dict[int, float | None]],
    budget: int,
    seed: int = 0,
    refit: Callable[[], bool] | None = None,
    known: dict[int, float | None] | None = None,
    objective: Callable[[Prediction], np.ndarray] | None = None,
    order: Callable[[np.ndarray], np.ndarray] | None = None,
    spread: Callable[[Prediction], np.ndarray] | None = None,
    out_of_time: Callable[[], bool] | None = None,
    size: int | None = None,
    distance: Callable[[int], np.ndarray] | None = None,
    comparable: Callable[[Prediction], bool] | None = None,
    alias: np.ndarray | None = None,
    variant: np.ndarray | None = None,
    stop: bool = True,
) -> SearchTrace:
    """Run `strategy` over the candidates `predict` covers until it stops or `budget` measurements are spent.

    `predict()` returns the current model's Prediction for every candidate and the model's name, or (None,
    name) while there is no model at all (then `size` gives the number of candidates);
    `measure(indices)` measures them and returns index -> objective value (None when failed);
    `refit()` (adaptive strategies only) refits the model on what has been measured, True when it did;
    `known` holds values measured before (a resumed tune): they count against the budget and are never
    measured again. `objective` maps a Prediction to the values to minimise, in the units `measure` answers in
    (default: runtime in seconds; `comparable(prediction)` False: not comparable at all), `order` turns
    those values into a best-first ordering (default: argsort), `spread` gives the objective's relative
    uncertainty (default: the runtime's). `out_of_time()` true ends the search before its next round (a
    time-boxed run); `measure` may then leave indices out of its answer, and those count as not measured.
    `alias` (SearchState.alias): candidates of one class are one program, measured once; `variant`
    (SearchState.variant): a guided first round takes one config per tile; `stop` False: no early stop
    (SearchState.stop).
    """
    objective = objective or (lambda p: p.runtime_s)
    spread = spread or (lambda p: p.runtime_spread)
    order = order or (lambda v: np.argsort(v, kind="stable"))
    measured = dict(known or {})
    trace = SearchTrace()
    round_ = 0
    while True:
        prediction, model_name = predict()
        if prediction is None:
            if size is None:
                raise ValueError("run_search: a search with no model needs the number of candidates (size)")
            state = SearchState(
                np.ones(size),
                np.zeros(size),
                np.arange(size),
                measured,
                budget - len(measured),
                round_,
                seed,
                informed=False,
                distance=distance,
                alias=alias,
                variant=variant,
                stop=stop,
            )
        else:
            values = objective(prediction)
            state = SearchState(
                values,
                spread(prediction),
                order(values),
                measured,
                budget - len(measured),
                round_,
                seed,
                fail=prediction.fail_prob,
                distance=distance,
                comparable=comparable is None or comparable(prediction),
                alias=alias,
                variant=variant,
                stop=stop,
            )
        if state.budget_left <= 0 or (out_of_time is not None and out_of_time()):
            break
        batch = strategy.propose(state)
        if round_ == 0:
            trace.first_proposal = list(batch)
        # an index proposed twice in one round is measured once (both were recorded, past the budget)
        batch = list(dict.fromkeys(i for i in batch if i not in measured))[: state.budget_left]
        if not batch:
            trace.stopped_early = True
            break
        results = measure(batch)
        for index in batch:
            if index not in results:  # not run: the time box closed first
                continue
            measured[index] = results.get(index)
            trace.measured.append(index)
            trace.values.append(results.get(index))
            trace.rounds.append(round_)
        trace.models.append(model_name)
        round_ += 1
        if not strategy.adaptive:
            continue
        if refit is not None:
            refit()
    return trace
