"""Kernel-level problems: what one kernel of the graph computes, with its own inputs and reference.

A problem is the contract between the IR and a codegen family: the family emits code for it, the runners feed
it `random_args` and compare against `reference` (float64 torch, independent of any kernel).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kt.dtypes import SHORT_NAMES, itemsize, torch_dtype


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str
    layout: str = "row"  # row: last dim contiguous; col: the last two dims stored transposed

    def empty(self, device: str | torch.device = "meta") -> torch.Tensor:
        """An uninitialised tensor of this type and layout (on "meta" by default: shapes and strides only)."""
        shape = list(self.shape)
        if self.layout == "col":
            shape[-2], shape[-1] = shape[-1], shape[-2]
        x = torch.empty(shape, device=device, dtype=torch_dtype(self.dtype))
        return x.transpose(-1, -2) if self.layout == "col" else x

    def __str__(self) -> str:
        mark = "ᵀ" if self.layout == "col" else ""
        return f"{SHORT_NAMES[self.dtype]}[{','.join(map(str, self.shape))}]{mark}"


def random_tensor(t: TensorType, generator: torch.Generator, device: str | torch.device) -> torch.Tensor:
    """Standard-normal values in `t`'s layout: a `col` tensor is a transposed view of a contiguous one."""
    shape = list(t.shape)
    if t.layout == "col":
        shape[-2], shape[-1] = shape[-1], shape[-2]
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(torch_dtype(t.dtype))
    return x.transpose(-1, -2) if t.layout == "col" else x


def make_generator(seed: int, device: str | torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class GemmProblem:
    """C (M, N) = A (M, K) @ B (K, N) with fp32 accumulation; `batch` stacks independent products."""

    m: int
    n: int
    k: int
    batch: int | None = None
    dtype: str = "float16"
    precision: str = "ieee"  # float32 operands only: ieee or tf32
    a_layout: str = "row"
    b_layout: str = "row"

    family = "gemm"

    @property
    def batch_size(self) -> int:
        return self.batch or 1

    def arg_types(self) -> tuple[TensorType, TensorType]:
        lead = (self.batch,) if self.batch else ()
        return (
            TensorType((*lead, self.m, self.k), self.dtype, self.a_layout),
            TensorType((*lead, self.k, self.n), self.dtype, self.b_layout),
        )

    def out_type(self) -> TensorType:
        lead = (self.batch,) if self.batch else ()
        return TensorType((*lead, self.m, self.n), self.dtype)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        generator = make_generator(seed, device)
        return tuple(random_tensor(t, generator, device) for t in self.arg_types())

    def reference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """float64 torch.matmul: the independent answer every GEMM kernel is checked against."""
        return torch.matmul(a.double(), b.double())

    @property
    def flops(self) -> int:
        return 2 * self.batch_size * self.m * self.n * self.k

    @property
    def min_bytes(self) -> int:
        """Each operand read once and the output written once."""
        return self.batch_size * (self.m * self.k + self.k * self.n + self.m * self.n) * itemsize(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmProblem:
        return cls(**data)

    def key(self) -> str:
        """Canonical text that names this problem in the tuning database."""
        return json.dumps({"family": self.family, **self.to_dict()}, sort_keys=True, separators=(",", ":"))

    def to_record(self) -> dict[str, Any]:
        """The plain record the cost model reads: no codegen internals, only the problem's numbers."""
        return {
            "family": self.family,
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "batch": self.batch_size,
            "dtype": self.dtype,
            "precision": self.precision,
            "itemsize": itemsize(self.dtype),
            "a_col": int(self.a_layout == "col"),
            "b_col": int(self.b_layout == "col"),
        }

    def __str__(self) -> str:
        batch = f" batch={self.batch}" if self.batch else ""
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return (
            f"gemm[m={self.m} n={self.n} k={self.k}{batch} {SHORT_NAMES[self.dtype]}{prec} "
            f"a:{self.a_layout} b:{self.b_layout}]"
        )


PROBLEMS = {GemmProblem.family: GemmProblem}


def problem_from_dict(family: str, data: dict[str, Any]) -> GemmProblem:
    return PROBLEMS[family].from_dict(data)
