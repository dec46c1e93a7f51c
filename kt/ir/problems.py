"""Kernel-level problems: what one kernel of the graph computes, with its own inputs and reference.

A problem is the contract between the IR and a codegen family: the family emits code for it, the runners feed
it `random_args` and compare against `reference` (float64 torch, independent of any kernel).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kt.dtypes import SHORT_NAMES, itemsize, tolerance, torch_dtype


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

    def tolerance(self) -> float:
        """The relative error a correct kernel stays under (one rounding of the output)."""
        return tolerance(self.dtype, self.precision)

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


class StructuredProblem:
    """What the structured families share: `rows` rows of x through a map of block factors (kt.ir.lowering).

    `structures()` lists the structure choices (the search space's structural axis) and `linear_map(choice)` the
    factors each choice runs; the kernel's output never depends on the choice, only its speed does.
    """

    family = ""
    rows: int
    dtype: str
    precision: str

    @property
    def batch_size(self) -> int:
        return 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        for name in ("w1", "w2"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    def key(self) -> str:
        return json.dumps({"family": self.family, **self.to_dict()}, sort_keys=True, separators=(",", ":"))

    def weights_dict(self, weights: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return dict(zip(self.weight_names, weights))

    def to_record(self) -> dict[str, Any]:
        """The problem's numbers for the cost model; the stages of each config are added by the family."""
        return {
            "family": self.family,
            "rows": self.rows,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "dtype": self.dtype,
            "precision": self.precision,
            "itemsize": itemsize(self.dtype),
        }

    def tolerance(self) -> float:
        """Each stage rounds its output to the dtype: the error budget grows with the deepest chain of stages."""
        return tolerance(self.dtype, self.precision) * math.sqrt(self.max_roundings)

    def _generator(self, seed: int, device) -> torch.Generator:
        return make_generator(seed, device)


@dataclass(frozen=True)
class MonarchProblem(StructuredProblem):
    """y (rows, l*s) = Monarch(w1 (k, q, p), w2 (l, s, r)) x (rows, k*p), the convention of ARCHITECTURE.md."""

    rows: int
    w1: tuple[int, int, int]
    w2: tuple[int, int, int]
    dtype: str = "float16"
    precision: str = "ieee"

    family = "monarch"
    weight_names = ("w1", "w2")
    max_roundings = 2

    @property
    def in_features(self) -> int:
        return self.w1[0] * self.w1[2]

    @property
    def out_features(self) -> int:
        return self.w2[0] * self.w2[1]

    def arg_types(self) -> tuple[TensorType, ...]:
        return (
            TensorType((self.rows, self.in_features), self.dtype),
            TensorType(self.w1, self.dtype),
            TensorType(self.w2, self.dtype),
        )

    def out_type(self) -> TensorType:
        return TensorType((self.rows, self.out_features), self.dtype)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal; each weight scaled by 1/sqrt(its block's inputs), so y stays of order 1."""
        generator = self._generator(seed, device)
        x, w1, w2 = (torch.randn(t.shape, generator=generator, device=device) for t in self.arg_types())
        w1, w2 = w1 / math.sqrt(self.w1[2]), w2 / math.sqrt(self.w2[2])
        return tuple(t.to(torch_dtype(self.dtype)) for t in (x, w1, w2))

    def reference(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """The two-torch.bmm formula of the convention, in float64."""
        from kt.ir.structured import monarch_reference

        return monarch_reference(x.double(), w1.double(), w2.double())

    def structures(self) -> tuple[dict[str, int], ...]:
        return ({"fused": 0}, {"fused": 1})

    def linear_map(self, structure: dict[str, int] | None = None):
        from kt.ir.structured import monarch_map

        return monarch_map(*self.w1, *self.w2)

    @property
    def flops(self) -> int:
        (k, q, p), (l, s, r) = self.w1, self.w2  # noqa: E741
        return 2 * self.rows * (k * q * p + l * s * r)

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return (
            f"monarch[rows={self.rows} w1={'x'.join(map(str, self.w1))} w2={'x'.join(map(str, self.w2))} "
            f"{SHORT_NAMES[self.dtype]}{prec}]"
        )


@dataclass(frozen=True)
class ButterflyProblem(StructuredProblem):
    """y = B_{L-1} ... B_0 x over n = 2**L features, twiddles (L, n/2, 2, 2) (ARCHITECTURE.md)."""

    rows: int
    n: int
    dtype: str = "float16"
    precision: str = "ieee"

    family = "butterfly"
    weight_names = ("twiddles",)
    MAX_LEVELS_PER_STAGE = 8  # blocks of up to 256 x 256

    @property
    def levels(self) -> int:
        return self.n.bit_length() - 1

    @property
    def max_roundings(self) -> int:
        return self.levels

    in_features = out_features = property(lambda self: self.n)

    def arg_types(self) -> tuple[TensorType, ...]:
        return (
            TensorType((self.rows, self.n), self.dtype),
            TensorType((self.levels, self.n // 2, 2, 2), self.dtype),
        )

    def out_type(self) -> TensorType:
        return TensorType((self.rows, self.n), self.dtype)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal, twiddles of variance 1/2 (each 2x2 keeps a vector's expected norm)."""
        generator = self._generator(seed, device)
        x, twiddles = (torch.randn(t.shape, generator=generator, device=device) for t in self.arg_types())
        return x.to(torch_dtype(self.dtype)), (twiddles / math.sqrt(2)).to(torch_dtype(self.dtype))

    def reference(self, x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
        """The per-level torch loop of the convention, in float64."""
        from kt.ir.structured import butterfly_reference

        return butterfly_reference(x.double(), twiddles.double())

    def structures(self) -> tuple[dict[str, int], ...]:
        return tuple({"levels": v} for v in range(1, min(self.levels, self.MAX_LEVELS_PER_STAGE) + 1))

    def linear_map(self, structure: dict[str, int]):
        from kt.ir.lowering import group_butterfly
        from kt.ir.structured import butterfly_map

        return group_butterfly(butterfly_map(self.n), structure["levels"])

    @property
    def flops(self) -> int:
        return 6 * self.rows * self.n * self.levels // 2  # 4 multiplies and 2 adds per pair and level

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return f"butterfly[rows={self.rows} n={self.n} {SHORT_NAMES[self.dtype]}{prec}]"


@dataclass(frozen=True)
class FFTProblem(StructuredProblem):
    """y = torch.fft.fft(x) over n features, by the four-step split n = n1 * n2 (a structure choice).

    float32: x complex64 (or float32 for real input), y complex64. float16: torch has no usable complex half,
    so complex tensors are planar, (2, rows, n) with real parts in [0] and imaginary parts in [1].
    """

    rows: int
    n: int
    dtype: str = "float32"
    input: str = "complex"
    precision: str = "ieee"

    family = "fft"
    weight_names = ()
    max_roundings = 4  # the stored intermediate, the output, and the DFT matrices of both stages
    MAX_BLOCK = 1024  # DFT blocks larger than this do more work than any split saves

    in_features = out_features = property(lambda self: self.n)

    def _complex_type(self) -> TensorType:
        if self.dtype == "float32":
            return TensorType((self.rows, self.n), "complex64")
        return TensorType((2, self.rows, self.n), self.dtype)

    def arg_types(self) -> tuple[TensorType, ...]:
        if self.input == "real":
            return (TensorType((self.rows, self.n), self.dtype),)
        return (self._complex_type(),)

    def out_type(self) -> TensorType:
        return self._complex_type()

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        generator = self._generator(seed, device)
        (t,) = self.arg_types()
        return (torch.randn(t.shape, generator=generator, device=device, dtype=torch_dtype(t.dtype)),)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """torch.fft.fft in complex128, in the kernel's output format."""
        if self.dtype == "float32" or self.input == "real":
            z = x.to(torch.complex128)
        else:
            z = torch.complex(x[0].double(), x[1].double())
        y = torch.fft.fft(z)
        return y if self.dtype == "float32" else torch.stack([y.real, y.imag])

    def splits(self) -> list[int]:
        """The n1 of each four-step split n = n1 * n2 with both blocks at most MAX_BLOCK (else the direct DFT)."""
        found = [
            n1
            for n1 in range(2, self.n // 2 + 1)
            if self.n % n1 == 0 and n1 <= self.MAX_BLOCK and self.n // n1 <= self.MAX_BLOCK
        ]
        return found or [self.n]

    def structures(self) -> tuple[dict[str, int], ...]:
        return tuple({"split": n1} for n1 in self.splits())

    def linear_map(self, structure: dict[str, int]):
        from kt.ir.structured import fft_map

        n1 = structure["split"]
        return fft_map(self.n, n1, self.n // n1)

    @property
    def flops(self) -> int:
        """Of the nominal radix-2 FFT, 5 n log2 n per row (the convention FFT benchmarks use)."""
        return int(5 * self.rows * self.n * math.log2(self.n))

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return f"fft[rows={self.rows} n={self.n} {SHORT_NAMES[self.dtype]}{prec} {self.input}]"


PROBLEMS = {
    GemmProblem.family: GemmProblem,
    MonarchProblem.family: MonarchProblem,
    ButterflyProblem.family: ButterflyProblem,
    FFTProblem.family: FFTProblem,
}
Problem = GemmProblem | MonarchProblem | ButterflyProblem | FFTProblem


def problem_from_dict(family: str, data: dict[str, Any]) -> Problem:
    return PROBLEMS[family].from_dict(data)
