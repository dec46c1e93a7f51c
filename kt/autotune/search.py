"""Search strategies and the search loop: which candidates to measure, in rounds, within a budget.

Every strategy answers one question, `propose(state)`: given the model's current predictions and what has been
measured so far, which candidates to measure next (an empty list ends the search). `run_search` drives any
strategy the same way, with the measuring and the refitting passed in, so `kt tune` on a GPU and the
search-efficiency benchmark (which answers from recorded sweeps) run the very same loop and the strategies can be
compared:

- `guided` (the default): each round measures the candidates with the best predicted objective plus a few
  whose optimistic bound (prediction shrunk by the trees' spread) beats the rest, then the model is refitted
  on everything measured and the remaining candidates are ranked again. It stops when the budget is spent or
  the best measured has not improved for `patience` rounds.
- `random`: a uniform sample of the legal space, the baseline that search efficiency is judged against.
- `exhaustive`: every candidate (for `kt collect --all`).

Without a GPU nothing is timed, so there is nothing to refit on: the first round takes the whole budget.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kt.costmodel.prediction import Prediction


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

    def unmeasured(self) -> list[int]:
        return [int(i) for i in self.order if int(i) not in self.measured]

    @property
    def best(self) -> float | None:
        values = [v for v in self.measured.values() if v is not None]
        return min(values) if values else None


class SearchStrategy(ABC):
    name: str
    description: str  # what it measures, for progress lines
    adaptive = False  # True: the loop refits the model between rounds

    @abstractmethod
    def propose(self, state: SearchState) -> list[int]:
        """Indices to measure next, at most `state.budget_left`, none already measured; [] to stop."""


class GuidedSearch(SearchStrategy):
    """Model-guided rounds: exploit the predicted best, explore the most promising uncertain candidates."""

    name = "guided"
    description = "rounds ranked by the cost model, refitted on each round's measurements"
    adaptive = True

    def __init__(self, rounds: int = 4, explore: float = 0.125, min_round: int = 4, patience: int = 2):
        if not 0 <= explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {explore}")
        self.rounds, self.explore, self.min_round, self.patience = rounds, explore, min_round, patience
        self._round_size: int | None = None
        self._best_history: list[float | None] = []

    def propose(self, state: SearchState) -> list[int]:
        if state.round == 0:
            self._round_size = max(self.min_round, math.ceil(state.budget_left / self.rounds))
            self._best_history = []
        self._best_history.append(state.best)
        if self._stalled():
            return []
        todo = state.unmeasured()
        size = min(self._round_size or state.budget_left, state.budget_left, len(todo))
        if size <= 0:
            return []
        n_explore = max(1, int(size * self.explore)) if size >= 4 and self.explore > 0 else 0
        exploit = todo[: size - n_explore]
        chosen = set(exploit)
        rest = [i for i in todo if i not in chosen]
        if not (n_explore and rest):
            return todo[:size]
        if state.spread[rest].any():
            # Optimistic bound: a prediction two spreads better. The candidates it favours most are those
            # the model is unsure of and that could still beat what it is sure of.
            optimistic = np.log(state.objective[rest]) - 2 * state.spread[rest]
            picks = sorted(np.argsort(optimistic, kind="stable")[:n_explore])
        else:
            # A model with no uncertainty (the analytic one) cannot say where it may be wrong: explore at
            # random, so the forest refitted after this round sees more than the model's own favourites.
            rng = np.random.default_rng(state.seed + state.round)
            picks = sorted(rng.choice(len(rest), size=min(n_explore, len(rest)), replace=False))
        return exploit + [rest[i] for i in picks]

    def _stalled(self) -> bool:
        """True when the best measured has not improved by 0.5% over the last `patience` rounds."""
        history = self._best_history
        if len(history) <= self.patience or history[-1] is None:
            return False
        before = history[-1 - self.patience]
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

    def pick(self, todo, state):
        rng = np.random.default_rng(state.seed)
        return [todo[i] for i in rng.permutation(len(todo))]


class ExhaustiveSearch(OneShotSearch):
    """Every candidate, best predicted first (for `kt collect --all`)."""

    name = "exhaustive"
    description = "every legal config"

    def propose(self, state):
        return state.unmeasured() if state.round == 0 else []


STRATEGIES: dict[str, type[SearchStrategy]] = {
    s.name: s for s in (GuidedSearch, TopSearch, RandomSearch, ExhaustiveSearch)
}


def make_strategy(strategy: str | SearchStrategy) -> SearchStrategy:
    if isinstance(strategy, SearchStrategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not supported; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]()


@dataclass
class SearchTrace:
    """What a search did: every measured index in order, the round of each, and the models that ranked."""

    measured: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # the model that ranked each round
    first_proposal: list[int] = field(default_factory=list)

    def best_after(self, n: int) -> float | None:
        """The best measured value among the first `n` measurements (None when none passed)."""
        values = [v for v in self.values[:n] if v is not None]
        return min(values) if values else None


def run_search(
    strategy: SearchStrategy,
    predict: Callable[[], tuple[Prediction, str]],
    measure: Callable[[list[int]], dict[int, float | None]],
    budget: int,
    seed: int = 0,
    refit: Callable[[], bool] | None = None,
    known: dict[int, float | None] | None = None,
    objective: Callable[[Prediction], np.ndarray] | None = None,
    order: Callable[[np.ndarray], np.ndarray] | None = None,
    spread: Callable[[Prediction], np.ndarray] | None = None,
    out_of_time: Callable[[], bool] | None = None,
) -> SearchTrace:
    """Run `strategy` over the candidates `predict` covers until it stops or `budget` measurements are spent.

    `predict()` returns the current model's Prediction for every candidate and the model's name;
    `measure(indices)` measures them and returns index -> objective value (None when failed);
    `refit()` (adaptive strategies only) refits the model on what has been measured, True when it did;
    `known` holds values measured before (a resumed tune): they count against the budget and are never
    measured again. `objective` maps a Prediction to the values to minimise (default: runtime), `order` turns
    those values into a best-first ordering (default: argsort), `spread` gives the objective's relative
    uncertainty (default: the runtime's). `out_of_time()` true ends the search before its next round (a
    time-boxed run); `measure` may then leave indices out of its answer, and those count as not measured.
    """
    objective = objective or (lambda p: p.runtime_s)
    spread = spread or (lambda p: p.runtime_spread)
    order = order or (lambda v: np.argsort(v, kind="stable"))
    measured = dict(known or {})
    trace = SearchTrace()
    round_ = 0
    while True:
        prediction, model_name = predict()
        values = objective(prediction)
        state = SearchState(
            values, spread(prediction), order(values), measured, budget - len(measured), round_, seed
        )
        if state.budget_left <= 0 or (out_of_time is not None and out_of_time()):
            break
        batch = strategy.propose(state)
        if round_ == 0:
            trace.first_proposal = list(batch)
        batch = [i for i in batch if i not in measured][: state.budget_left]
        if not batch:
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
