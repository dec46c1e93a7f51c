"""LinearMap: a structured operator as a product of factors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kt.ir.factors import Factor


@dataclass(frozen=True)
class LinearMap:
    """`factors` in the order they act on x: y = F_{L-1} ... F_1 F_0 x, i.e. `y = x @ (F_{L-1}...F_0).T` row-wise."""

    factors: tuple[Factor, ...]

    def __post_init__(self):
        if not self.factors:
            raise ValueError("a LinearMap needs at least one factor")
        for first, second in zip(self.factors, self.factors[1:]):
            if first.out_features != second.in_features:
                raise ValueError(
                    f"{first} gives {first.out_features} features but {second} takes {second.in_features}"
                )

    @property
    def in_features(self) -> int:
        return self.factors[0].in_features

    @property
    def out_features(self) -> int:
        return self.factors[-1].out_features

    def weight_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for factor in self.factors:
            names += [n for n in factor.weight_names() if n not in names]
        return tuple(names)

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The whole map as one (out, in) matrix (batched if any factor is), in the dtype the factors' promote to: a
        Dense factor keeps its weight's dtype where a structured one's is float64 or complex128, and a map of
        both (Dense · Perm · BlockDiag in float32) raised torch's dtype mismatch."""
        matrix = self.factors[0].to_dense(weights)
        for factor in self.factors[1:]:
            step = factor.to_dense(weights)
            dtype = torch.promote_types(step.dtype, matrix.dtype)
            matrix = step.to(dtype) @ matrix.to(dtype)
        return matrix

    def apply_dense(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """y = x @ M.T through the dense matrix: the slow, obviously right reference (in the dtype both promote
        to: a real x and a complex DFT map raised torch's dtype mismatch)."""
        return _times(x, self.to_dense(weights))

    def transpose(self) -> LinearMap:
        return LinearMap(tuple(f.transpose() for f in reversed(self.factors)))

    def __str__(self) -> str:
        return " · ".join(str(f) for f in reversed(self.factors))


@dataclass(frozen=True)
class SumMap:
    """A sum of linear maps with the same shape: y = x @ (M_0 + M_1 + ...).T, e.g. a sparse plus a low-rank part.

    Every term has its own weights: a weight name may not appear in two terms.
    """

    terms: tuple[LinearMap, ...]

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if len(self.terms) < 2:
            raise ValueError(f"a SumMap needs at least two terms, got {len(self.terms)}")
        for i, term in enumerate(self.terms):
            if not isinstance(term, LinearMap):
                raise ValueError(f"SumMap term {i} is a {type(term).__name__}, expected a LinearMap")
        first = self.terms[0]
        for i, term in enumerate(self.terms[1:], start=1):
            if (term.in_features, term.out_features) != (first.in_features, first.out_features):
                raise ValueError(
                    f"SumMap term {i} ({term}) maps {term.in_features} -> {term.out_features} features but "
                    f"term 0 maps {first.in_features} -> {first.out_features}"
                )
        owner: dict[str, int] = {}
        for i, term in enumerate(self.terms):
            for name in term.weight_names():
                if name in owner:
                    raise ValueError(f"SumMap weight {name!r} appears in terms {owner[name]} and {i}")
                owner[name] = i

    @property
    def in_features(self) -> int:
        return self.terms[0].in_features

    @property
    def out_features(self) -> int:
        return self.terms[0].out_features

    def weight_names(self) -> tuple[str, ...]:
        return tuple(name for term in self.terms for name in term.weight_names())

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the terms' (out, in) matrices."""
        matrix = self.terms[0].to_dense(weights)
        for term in self.terms[1:]:
            matrix = matrix + term.to_dense(weights)
        return matrix

    def apply_dense(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """y = x @ M.T through the dense matrix: the slow, obviously right reference (in the dtype both promote
        to: a real x and a complex DFT map raised torch's dtype mismatch)."""
        return _times(x, self.to_dense(weights))

    def transpose(self) -> SumMap:
        return SumMap(tuple(term.transpose() for term in self.terms))

    def __str__(self) -> str:
        return " + ".join(str(term) for term in self.terms)


def _times(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """x @ matrix.T in the dtype both promote to."""
    dtype = torch.promote_types(x.dtype, matrix.dtype)
    return x.to(dtype) @ matrix.to(dtype).transpose(-1, -2)
