"""Factors: the building blocks of a structured linear map.

A factor is a linear map R^in -> R^out applied to the rows of x, so `y = x @ M.T` where `M = factor.to_dense()`
has shape (out, in) (or (batch, out, in) when each batch entry has its own weights). Every factor has a dense
form to check kernels against and a transpose, so the backward pass of any op is again an op of this IR.
Factors describe the math only; how it is scheduled (tiles, stages) lives in codegen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Factor(ABC):
    in_features: int
    out_features: int

    @abstractmethod
    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (out, in) matrix, or (batch, out, in) for batched weights."""

    @abstractmethod
    def transpose(self) -> Factor:
        """The factor of the transposed map (what the backward pass applies to dy)."""

    def weight_names(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Dense(Factor):
    """A dense matrix held in the weight tensor `weight`.

    `storage` says how that tensor is laid out: "in_out" is (in, out), the `y = x @ W` convention of a GEMM's B;
    "out_in" is (out, in), the `y = x @ W.T` convention of `nn.Linear`. Transposing swaps in/out and storage, so
    the same tensor serves the transposed map with no copy.
    """

    weight: str = "w"
    storage: str = "in_out"
    batch: int | None = None

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = weights[self.weight]
        expected = (
            (self.in_features, self.out_features)
            if self.storage == "in_out"
            else (self.out_features, self.in_features)
        )
        if self.batch is not None:
            expected = (self.batch, *expected)
        if tuple(w.shape) != expected:
            raise ValueError(f"weight {self.weight!r} has shape {tuple(w.shape)}, expected {expected}")
        return w.transpose(-1, -2) if self.storage == "in_out" else w

    def transpose(self) -> Dense:
        flipped = "out_in" if self.storage == "in_out" else "in_out"
        return replace(self, in_features=self.out_features, out_features=self.in_features, storage=flipped)

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        batch = f"{self.batch}x" if self.batch else ""
        mark = "" if self.storage == "in_out" else "ᵀ"
        return f"Dense[{self.weight}{mark}]({batch}{self.out_features}<-{self.in_features})"
