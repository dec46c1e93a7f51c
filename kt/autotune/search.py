"""Search strategies: which candidates to measure, given the cost model's ranking and a budget.

They share one interface so they can be compared: `select(ranked, budget, seed)` takes candidate indices
ordered best-first by the model and returns the indices to measure, in the order to measure them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class SearchStrategy(ABC):
    name: str

    @abstractmethod
    def select(self, ranked: Sequence[int], budget: int, seed: int) -> list[int]:
        """Indices (a subset of `ranked`, at most `budget`) to measure."""


class RankedSearch(SearchStrategy):
    """The model's best `budget` candidates, keeping a share for random exploration of the rest.

    Exploration keeps the measured data from only ever confirming the model: it is how a wrong model finds
    out, and what the learned cost model trains on.
    """

    name = "ranked"

    def __init__(self, explore: float = 0.125):
        if not 0 <= explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {explore}")
        self.explore = explore

    def select(self, ranked, budget, seed):
        ranked = list(ranked)
        if budget >= len(ranked):
            return ranked
        n_explore = int(budget * self.explore)
        top = ranked[: budget - n_explore]
        rest = ranked[budget - n_explore :]
        rng = np.random.default_rng(seed)
        explored = sorted(rng.choice(len(rest), size=n_explore, replace=False)) if n_explore else []
        return top + [rest[i] for i in explored]


class RandomSearch(SearchStrategy):
    name = "random"

    def select(self, ranked, budget, seed):
        ranked = list(ranked)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ranked))[:budget]
        return [ranked[i] for i in order]


class ExhaustiveSearch(SearchStrategy):
    """Every candidate, best-ranked first (for `kt collect --all`)."""

    name = "exhaustive"

    def select(self, ranked, budget, seed):
        return list(ranked)


STRATEGIES = {s.name: s for s in (RankedSearch, RandomSearch, ExhaustiveSearch)}
