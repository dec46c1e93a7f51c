"""Kernel-level problems: what one kernel of the graph computes, with its own inputs and reference.

A problem is the contract between the IR and a codegen family: the family emits code for it, the runners feed
it `random_args` and compare against `reference` (float64 torch, independent of any kernel).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from kt.dtypes import SHORT_NAMES, itemsize, tolerance, torch_dtype
from kt.spec import FFT_MAX_BLOCK, FFT_MAX_DIRECT


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str
    layout: str = "row"  # row: last dim contiguous; col: the last two dims stored transposed; bsr: sparse BSR

    def empty(self, device: str | torch.device = "meta") -> torch.Tensor:
        """An uninitialised tensor of this type and layout (on "meta" by default: shapes and strides only)."""
        shape = list(self.shape)
        if self.layout == "col":
            shape[-2], shape[-1] = shape[-1], shape[-2]
        x = torch.empty(shape, device=device, dtype=torch_dtype(self.dtype))
        return x.transpose(-1, -2) if self.layout == "col" else x

    def __str__(self) -> str:
        # a storage order, not a transpose: "x:f16[5,3]ᵀ @ b:f16[3,7]ᵀ" read as maths did not fit (the shape is
        # the logical one either way)
        mark = {"col": " col-major", "bsr": " bsr"}.get(self.layout, "")
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


def operand_bytes(problem) -> int:
    """Bytes of `problem`'s arguments and output as a kernel call holds them (a BSR weight: its values and
    indices): what must be in the device's memory at once, before any workspace of the kernel or its check."""
    return sum(_nbytes(t) for t in (*problem.meta_args(), problem.out_type().empty("meta")))


def _nbytes(t: torch.Tensor) -> int:
    if t.layout == torch.sparse_bsr:
        return sum(_nbytes(part) for part in (t.crow_indices(), t.col_indices(), t.values()))
    return t.numel() * t.element_size()


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

    def meta_args(self) -> tuple[torch.Tensor, ...]:
        """Shape-and-stride-only stand-ins for the arguments (no memory, any size)."""
        return tuple(t.empty("meta") for t in self.arg_types())

    def reference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """float64 torch.matmul: the independent answer every GEMM kernel is checked against."""
        return torch.matmul(a.double(), b.double())

    def row_dims(self) -> tuple[tuple[int | None, ...], int]:
        """Which dim of each argument, and of the output, holds the rows whose outputs are independent (None:
        every row reads all of it), so that `reference` of a run of rows is that run of its rows (the check
        compares a few at a time): A's and the output's M."""
        return (-2, None), -2

    def tolerance(self) -> float:
        """The relative error a correct kernel stays under (one rounding of the output; in float32, the
        accumulation over k: kt.dtypes.FP32_SUM)."""
        return tolerance(self.dtype, self.precision, self.k)

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
        """The fields; `transposed` only when set (a forward problem keeps the key it always had)."""
        data = asdict(self)
        if data.get("transposed") is False:
            del data["transposed"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def meta_args(self) -> tuple[torch.Tensor, ...]:
        """Shape-and-stride-only stand-ins for the arguments (no memory, any size)."""
        return tuple(t.empty("meta") for t in self.arg_types())

    def with_rows(self, rows: int):
        """The same map applied to `rows` rows of x (the interpreter checks a few rows of a large problem)."""
        return replace(self, rows=rows)

    def row_dims(self) -> tuple[tuple[int | None, ...], int] | None:
        """Which dim of each argument, and of the output, holds the rows whose outputs are independent (None:
        every row reads all of it), so that `reference` of a run of rows is that run of its rows (the check
        compares a few at a time): x's first, the weights none."""
        return (0, *(None for _ in self.arg_types()[1:])), 0

    def key(self) -> str:
        """Canonical text that names this problem in the tuning database: its fields, a block-sparse layout
        longer than 71 characters named by its SHA-256 (`kt.keys.layout_digest`)."""
        from kt.keys import problem_key

        return problem_key({"family": self.family, **self.to_dict()})

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

    @property
    def reduction(self) -> int:
        """The most products any one stage sums for one output element (a float32 tolerance grows with it:
        kt.dtypes.FP32_SUM): at most the input's width, unless a family knows better."""
        return self.in_features

    def tolerance(self) -> float:
        """Each stage rounds its output to the dtype: the error budget grows with the deepest chain of stages
        (and, in float32, with the longest sum, `reduction`)."""
        return tolerance(self.dtype, self.precision, self.reduction) * math.sqrt(self.max_roundings)

    def _generator(self, seed: int, device) -> torch.Generator:
        return make_generator(seed, device)


def _times_map(x: torch.Tensor, linear_map, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """x @ M for the (out, in) matrix M = F_{L-1} ... F_0 of a map's factors: the transposed map's reference.

    Evaluated as x @ F_{L-1} @ ... @ F_0, each product from the factor's own definition (a block-diagonal's
    blocks, a permutation's source index, a butterfly level's pairs), never through `transpose()` or the
    lowering, and without forming an n x n matrix, so it stays cheap for large n.
    """
    from kt.ir.factors import BlockDiag, ButterflyFactor, Perm

    y = x.reshape(-1, x.shape[-1])
    for factor in reversed(linear_map.factors):
        if isinstance(factor, BlockDiag):  # (y @ BlockDiag)[i*in_blk + e] = sum_a y[i*out_blk + a] W[i, a, e]
            blocks = factor.blocks(weights).to(y.dtype)
            y = torch.einsum("bga,gae->bge", y.view(-1, factor.nblocks, factor.out_blk), blocks).flatten(1)
        elif isinstance(factor, Perm):  # P[r, source[r]] = 1, so (y @ P)[source[r]] = y[r]
            out = torch.empty_like(y)
            out[:, factor.source_index().to(y.device)] = y
            y = out
        elif isinstance(factor, ButterflyFactor):  # B[a, a], B[a, b], B[b, a], B[b, b] = t00, t01, t10, t11
            t = weights[factor.weight][factor.level].to(y.dtype)
            if factor.transposed:
                t = t.transpose(-1, -2)
            a, b = (index.to(y.device) for index in factor.pairs())
            out = torch.empty_like(y)
            out[:, a] = y[:, a] * t[:, 0, 0] + y[:, b] * t[:, 1, 0]
            out[:, b] = y[:, a] * t[:, 0, 1] + y[:, b] * t[:, 1, 1]
            y = out
        else:
            y = y @ factor.to_dense(weights).to(y.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


@dataclass(frozen=True)
class MonarchProblem(StructuredProblem):
    """y (rows, l*s) = Monarch(w1 (k, q, p), w2 (l, s, r)) x (rows, k*p) (docs/architecture.md).

    `transposed`: y (rows, k*p) = x (rows, l*s) @ M for the forward map's (out, in) matrix M, on the same
    weights (what the backward pass applies to dy)."""

    rows: int
    w1: tuple[int, int, int]
    w2: tuple[int, int, int]
    dtype: str = "float16"
    precision: str = "ieee"
    transposed: bool = False

    family = "monarch"
    weight_names = ("w1", "w2")
    max_roundings = 2

    @property
    def in_features(self) -> int:
        return self.w2[0] * self.w2[1] if self.transposed else self.w1[0] * self.w1[2]

    @property
    def reduction(self) -> int:
        """A block's inputs, forward or transposed."""
        return max(*self.w1[1:], *self.w2[1:])

    @property
    def out_features(self) -> int:
        return self.w1[0] * self.w1[2] if self.transposed else self.w2[0] * self.w2[1]

    def arg_types(self) -> tuple[TensorType, ...]:
        return (
            TensorType((self.rows, self.in_features), self.dtype),
            TensorType(self.w1, self.dtype),
            TensorType(self.w2, self.dtype),
        )

    def out_type(self) -> TensorType:
        return TensorType((self.rows, self.out_features), self.dtype)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal; each weight scaled by 1/sqrt(its block's inputs), so y stays of order 1 (the
        transposed map's blocks take q and s inputs)."""
        generator = self._generator(seed, device)
        x, w1, w2 = (torch.randn(t.shape, generator=generator, device=device) for t in self.arg_types())
        fan_in = (self.w1[1], self.w2[1]) if self.transposed else (self.w1[2], self.w2[2])
        w1, w2 = w1 / math.sqrt(fan_in[0]), w2 / math.sqrt(fan_in[1])
        return tuple(t.to(torch_dtype(self.dtype)) for t in (x, w1, w2))

    def reference(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """The two-torch.bmm formula of the convention, in float64; transposed, x @ M with M the dense form of
        the forward map's factors (`_times_map`)."""
        from kt.ir.structured import check_monarch, monarch_map, monarch_reference

        if self.transposed:
            check_monarch(x, w1, w2, transposed=True)
            weights = {"w1": w1.double(), "w2": w2.double()}
            return _times_map(x.double(), monarch_map(*self.w1, *self.w2), weights)
        return monarch_reference(x.double(), w1.double(), w2.double())

    def structures(self) -> tuple[dict[str, int], ...]:
        """Two launches, and one fused kernel for the forward map (its register tensors need power-of-two
        sizes, and its dots blocks of at least 16): the fused form is offered only where it can run."""
        if self.transposed or not self.fusable():
            return ({"fused": 0},)
        return ({"fused": 0}, {"fused": 1})

    def fusable(self) -> bool:
        """Whether the fused kernel's shape rule holds: power-of-two blocks, p, q, r and s of at least 16."""
        (k, q, p), (l, s, r) = self.w1, self.w2  # noqa: E741
        return all(v & (v - 1) == 0 for v in (k, q, p, l, s, r)) and min(p, q, r, s) >= 16

    def linear_map(self, structure: dict[str, int] | None = None):
        from kt.ir.structured import monarch_map

        forward = monarch_map(*self.w1, *self.w2)
        return forward.transpose() if self.transposed else forward

    @property
    def flops(self) -> int:
        (k, q, p), (l, s, r) = self.w1, self.w2  # noqa: E741
        return 2 * self.rows * (k * q * p + l * s * r)

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        mark = "ᵀ" if self.transposed else ""
        return (
            f"monarch{mark}[rows={self.rows} w1={'x'.join(map(str, self.w1))} w2={'x'.join(map(str, self.w2))} "
            f"{SHORT_NAMES[self.dtype]}{prec}]"
        )


@dataclass(frozen=True)
class ButterflyProblem(StructuredProblem):
    """y = B_{L-1} ... B_0 x over n = 2**L features, twiddles (L, n/2, 2, 2) (docs/architecture.md).

    `transposed`: y = x @ B for that map's (n, n) matrix B, on the same twiddles (the backward pass's map)."""

    rows: int
    n: int
    dtype: str = "float16"
    precision: str = "ieee"
    transposed: bool = False

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

    @property
    def reduction(self) -> int:
        """A stage multiplies out at most MAX_LEVELS_PER_STAGE levels: blocks of 2**levels inputs."""
        return 2 ** min(self.levels, self.MAX_LEVELS_PER_STAGE)

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
        """The per-level torch loop of the convention, in float64; transposed, x @ B level by level from the
        forward map's factors (`_times_map`)."""
        from kt.ir.structured import butterfly_map, butterfly_reference, check_twiddles

        if self.transposed:
            check_twiddles(x.shape[-1], twiddles)  # as the forward reference checks them
            return _times_map(x.double(), butterfly_map(self.n), {"twiddles": twiddles.double()})
        return butterfly_reference(x.double(), twiddles.double())

    def structures(self) -> tuple[dict[str, int], ...]:
        return tuple({"levels": v} for v in range(1, min(self.levels, self.MAX_LEVELS_PER_STAGE) + 1))

    def linear_map(self, structure: dict[str, int]):
        from kt.ir.lowering import group_butterfly
        from kt.ir.structured import butterfly_map

        forward = group_butterfly(butterfly_map(self.n), structure["levels"])
        return forward.transpose() if self.transposed else forward

    @property
    def flops(self) -> int:
        return 6 * self.rows * self.n * self.levels // 2  # 4 multiplies and 2 adds per pair and level

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        mark = "ᵀ" if self.transposed else ""
        return f"butterfly{mark}[rows={self.rows} n={self.n} {SHORT_NAMES[self.dtype]}{prec}]"


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
    MAX_BLOCK = (
        FFT_MAX_BLOCK  # DFT blocks larger than this do more work than any split saves (op.yaml checks n)
    )

    in_features = out_features = property(lambda self: self.n)

    @property
    def reduction(self) -> int:
        """A DFT block's inputs in real form (two per complex one): n where it may run as one direct DFT
        (FFT_MAX_DIRECT), else at most MAX_BLOCK."""
        return 2 * (self.n if self.n <= FFT_MAX_DIRECT else self.MAX_BLOCK)

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

    def row_dims(self) -> tuple[tuple[int | None, ...], int]:
        """x's and y's rows: the middle dim of a planar (2, rows, n) tensor."""
        planar = self.dtype != "float32"
        return (1 if planar and self.input == "complex" else 0,), 1 if planar else 0

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


# How much of a block-sparse weight's float64 dense form a reference holds at once. The whole of it is often far
# larger than the op: 65536 x 65536 is 32 GiB in float64 where 5% of its 16x16 blocks in fp16 are 0.4 GiB, and
# at kt's limit of 2**24 blocks of 32x32 the dense form (128 GiB) outgrows every GPU's memory, so the full-problem
# check of every candidate would fail.
REFERENCE_SLAB_BYTES = 1 << 28


def _block_row_slabs(w: torch.Tensor, width: int):
    """(first block-row, end block-row, first stored block, end stored block) of consecutive runs of the BSR
    weight `w`'s block-rows, each run's dense float64 form (block-rows x bo x `width`) at most
    REFERENCE_SLAB_BYTES, and at least one block-row."""
    bo = w.values().shape[-2]
    crow = w.crow_indices().cpu().tolist()
    step = max(1, REFERENCE_SLAB_BYTES // (bo * width * 8))
    for r0 in range(0, len(crow) - 1, step):
        r1 = min(len(crow) - 1, r0 + step)
        yield r0, r1, crow[r0], crow[r1]


@dataclass(frozen=True)
class BlockSparseProblem(StructuredProblem):
    """y (rows, out) = F.linear(x (rows, in), W) for W (out, in) given as a torch sparse BSR tensor with blocks
    `block` = (bo, bi) whose non-zero pattern is `layout` (hex of the block mask, kt.sparsity)."""

    rows: int
    in_features: int
    out_features: int
    block: tuple[int, int]
    layout: str
    dtype: str = "float16"
    precision: str = "ieee"

    family = "blocksparse"
    weight_names = ("w",)
    max_roundings = 1

    @property
    def grid(self) -> tuple[int, int]:
        return self.out_features // self.block[0], self.in_features // self.block[1]

    def mask(self):
        from kt.sparsity import hex_to_mask

        return hex_to_mask(self.layout, self.grid)

    @property
    def nnz(self) -> int:
        from kt.sparsity import layout_counts

        return layout_counts(self.layout, self.grid)[0]

    @property
    def reduction(self) -> int:
        """The inputs of the fullest block-row: its stored blocks' columns."""
        from kt.sparsity import layout_counts

        return layout_counts(self.layout, self.grid)[1] * self.block[1]

    def arg_types(self) -> tuple[TensorType, ...]:
        return (
            TensorType((self.rows, self.in_features), self.dtype),
            TensorType((self.out_features, self.in_features), self.dtype, "bsr"),
        )

    def out_type(self) -> TensorType:
        return TensorType((self.rows, self.out_features), self.dtype)

    def bsr(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse BSR weight with this pattern and `values` (nnz, bo, bi), on values' device."""
        from kt.sparsity import bsr_indices, bsr_tensor

        crow, col = bsr_indices(self.mask())
        size = (self.out_features, self.in_features)
        return bsr_tensor(crow, col, values, size, check=values.device.type != "meta")

    def meta_args(self) -> tuple[torch.Tensor, ...]:
        values = torch.empty((self.nnz, *self.block), dtype=torch_dtype(self.dtype), device="meta")
        return (self.arg_types()[0].empty("meta"), self.bsr(values))

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal; the blocks' values scaled by 1/sqrt(the inputs a full block-row sums), so y stays
        of order 1."""
        generator = self._generator(seed, device)
        mask = self.mask()
        x = torch.randn((self.rows, self.in_features), generator=generator, device=device)
        values = torch.randn((int(mask.sum()), *self.block), generator=generator, device=device)
        per_row = max(1.0, float(mask.sum(axis=1).max()))
        values = values / math.sqrt(per_row * self.block[1])
        dtype = torch_dtype(self.dtype)
        return x.to(dtype), self.bsr(values.to(dtype))

    def reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """F.linear with W's dense form, in float64: a few block-rows of W at a time (`_block_row_slabs`), each
        run's dense form by torch's own `to_dense` of the BSR tensor that holds just those block-rows."""
        from kt.sparsity import bsr_tensor

        x64 = x.double()
        y = x64.new_empty((*x.shape[:-1], self.out_features))
        bo = self.block[0]
        crow, col, values = w.crow_indices(), w.col_indices(), w.values()
        for r0, r1, lo, hi in _block_row_slabs(w, self.in_features):
            rows = bsr_tensor(
                crow[r0 : r1 + 1] - lo, col[lo:hi], values[lo:hi], ((r1 - r0) * bo, self.in_features)
            )
            y[..., r0 * bo : r1 * bo] = torch.nn.functional.linear(x64, rows.to_dense().double())
        return y

    def structures(self) -> tuple[dict[str, int], ...]:
        return ({"fused": 0},)

    def linear_map(self, structure: dict[str, int] | None = None):
        from kt.ir.linear_map import LinearMap
        from kt.ir.sparse import BSR

        return LinearMap((BSR(self.out_features, self.in_features, self.block, self.layout, weight="w"),))

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.nnz * self.block[0] * self.block[1]

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return (
            f"blocksparse[rows={self.rows} {self.in_features}->{self.out_features} "
            f"block={self.block[0]}x{self.block[1]} nnz={self.nnz}/{self.grid[0] * self.grid[1]} "
            f"{SHORT_NAMES[self.dtype]}{prec}]"
        )


@dataclass(frozen=True)
class ChainProblem(StructuredProblem):
    """y = x @ F1 @ ... @ Fk with Fi (dims[i-1], dims[i]): a low-rank chain, multiplied in the order of the
    matrix-chain program (kt.ir.sparse.chain_order) or, for two factors, by one fused kernel (a structure
    choice) that keeps x @ F1 on chip."""

    rows: int
    dims: tuple[int, ...]
    dtype: str = "float16"
    precision: str = "ieee"

    family = "lowrank"
    MAX_FUSED_RANK = 256  # the fused kernel holds a (rows, rank) slab of x @ F1 in registers

    @property
    def in_features(self) -> int:
        return self.dims[0]

    @property
    def reduction(self) -> int:
        """Each product's inner dim."""
        return max(self.dims[:-1])

    @property
    def out_features(self) -> int:
        return self.dims[-1]

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(f"f{i}" for i in range(1, len(self.dims)))

    @property
    def max_roundings(self) -> int:
        return len(self.dims) - 1  # each product rounds its result

    def arg_types(self) -> tuple[TensorType, ...]:
        factors = (TensorType((a, b), self.dtype) for a, b in zip(self.dims, self.dims[1:]))
        return (TensorType((self.rows, self.dims[0]), self.dtype), *factors)

    def out_type(self) -> TensorType:
        return TensorType((self.rows, self.dims[-1]), self.dtype)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal; each factor scaled by 1/sqrt(its rows), so every product stays of order 1."""
        generator = self._generator(seed, device)
        args = [torch.randn(t.shape, generator=generator, device=device) for t in self.arg_types()]
        args[1:] = [f / math.sqrt(f.shape[0]) for f in args[1:]]
        return tuple(t.to(torch_dtype(self.dtype)) for t in args)

    def reference(self, x: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
        """x @ F1 @ ... left to right, in float64."""
        y = x.double()
        for factor in factors:
            y = y @ factor.double()
        return y

    def order(self):
        """The matrix-chain program's order for x (rows, d0) @ F1 @ ... (kt.ir.sparse.chain_order)."""
        from kt.ir.sparse import chain_order

        return chain_order((self.rows, *self.dims))

    def fusable(self) -> bool:
        return len(self.dims) == 3 and self.dims[1] <= self.MAX_FUSED_RANK

    def structures(self) -> tuple[dict[str, int], ...]:
        return ({"fused": 0}, {"fused": 1}) if self.fusable() else ({"fused": 0},)

    def linear_map(self, structure: dict[str, int] | None = None):
        from kt.ir.sparse import chain_map

        return chain_map(self.dims)

    @property
    def flops(self) -> int:
        return 2 * self.order().cost

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return f"lowrank[rows={self.rows} {'->'.join(map(str, self.dims))} {SHORT_NAMES[self.dtype]}{prec}]"


SUM_TERMS = {BlockSparseProblem.family: BlockSparseProblem, ChainProblem.family: ChainProblem}


@dataclass(frozen=True)
class SumProblem(StructuredProblem):
    """y = term_0(x) + term_1(x) + ...: block-sparse and low-rank terms with the same rows, in and out.

    Unfused, each term runs its own launches into an fp32 slice of a workspace that is summed once; fused (a
    structure choice, when every block-sparse term has the same block height), the low-rank terms' leading
    products run first and one kernel accumulates every term into each output tile."""

    terms: tuple[BlockSparseProblem | ChainProblem, ...]
    dtype: str = "float16"
    precision: str = "ieee"

    family = "sum"

    @property
    def rows(self) -> int:
        return self.terms[0].rows

    @property
    def in_features(self) -> int:
        return self.terms[0].in_features

    @property
    def reduction(self) -> int:
        return max(term.reduction for term in self.terms)

    @property
    def out_features(self) -> int:
        return self.terms[0].out_features

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(f"t{i}_{name}" for i, term in enumerate(self.terms) for name in term.weight_names)

    @property
    def max_roundings(self) -> int:
        return max(term.max_roundings for term in self.terms) + 1

    def to_dict(self) -> dict[str, Any]:
        terms = [{"family": term.family, **term.to_dict()} for term in self.terms]
        return {"terms": terms, "dtype": self.dtype, "precision": self.precision}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SumProblem:
        data = dict(data)
        terms = []
        for term in data.pop("terms"):
            term = dict(term)
            terms.append(SUM_TERMS[term.pop("family")].from_dict(term))
        return cls(terms=tuple(terms), **data)

    def with_rows(self, rows: int) -> SumProblem:
        return replace(self, terms=tuple(term.with_rows(rows) for term in self.terms))

    def arg_types(self) -> tuple[TensorType, ...]:
        return (self.terms[0].arg_types()[0], *(t for term in self.terms for t in term.arg_types()[1:]))

    def out_type(self) -> TensorType:
        return self.terms[0].out_type()

    def meta_args(self) -> tuple[torch.Tensor, ...]:
        return (self.terms[0].meta_args()[0], *(t for term in self.terms for t in term.meta_args()[1:]))

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x, then each term's weights (term i's drawn from seed + 1 + i)."""
        x = self.terms[0].random_args(seed, device)[0]
        weights = [w for i, term in enumerate(self.terms) for w in term.random_args(seed + 1 + i, device)[1:]]
        return (x, *weights)

    def split_weights(self, weights) -> list[tuple]:
        """The flat weight list cut into each term's weights."""
        parts, at = [], 0
        for term in self.terms:
            count = len(term.weight_names)
            parts.append(tuple(weights[at : at + count]))
            at += count
        return parts

    def reference(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """The sum of the terms' float64 references."""
        parts = self.split_weights(weights)
        return sum(term.reference(x, *w) for term, w in zip(self.terms, parts))

    def fusable(self) -> bool:
        heights = {term.block[0] for term in self.terms if isinstance(term, BlockSparseProblem)}
        return len(heights) <= 1

    def structures(self) -> tuple[dict[str, int], ...]:
        return ({"fused": 0}, {"fused": 1}) if self.fusable() else ({"fused": 0},)

    def linear_map(self, structure: dict[str, int] | None = None):
        from kt.ir.linear_map import SumMap

        maps = []
        for i, term in enumerate(self.terms):
            lm = term.linear_map()
            renamed = tuple(_renamed(f, f"t{i}_") for f in lm.factors)
            maps.append(type(lm)(renamed))
        return SumMap(tuple(maps))

    @property
    def flops(self) -> int:
        return sum(term.flops for term in self.terms)

    def __str__(self) -> str:
        return f"sum[{' + '.join(map(str, self.terms))}]"


@dataclass(frozen=True)
class BsrGradProblem(StructuredProblem):
    """grad (nnz, bo, bi) = the stored blocks of dy (rows, out).T @ x (rows, in), for the forward weight W (out,
    in) in blocks `block` = (bo, bi) whose non-zero pattern is `layout` (hex of the block mask, kt.sparsity).

    Arguments (dy, x, w): w is the forward BSR weight; its crow/col indices give the pattern and the order of
    the output blocks, its values are never read."""

    rows: int
    in_features: int
    out_features: int
    block: tuple[int, int]
    layout: str
    dtype: str = "float16"
    precision: str = "ieee"

    family = "bsr_grad"
    weight_names = ("x", "w")  # the first argument, dy, is the op's input
    max_roundings = 1  # the sum over rows stays in fp32; the output is rounded once

    def forward(self) -> BlockSparseProblem:
        """The forward problem y = F.linear(x, W) whose weight gradient this is."""
        return BlockSparseProblem(
            self.rows,
            self.in_features,
            self.out_features,
            self.block,
            self.layout,
            self.dtype,
            self.precision,
        )

    @property
    def grid(self) -> tuple[int, int]:
        return self.out_features // self.block[0], self.in_features // self.block[1]

    def mask(self):
        return self.forward().mask()

    @property
    def nnz(self) -> int:
        from kt.sparsity import layout_counts

        return layout_counts(self.layout, self.grid)[0]

    @property
    def reduction(self) -> int:
        """Every gradient element sums over the rows."""
        return self.rows

    def arg_types(self) -> tuple[TensorType, ...]:
        return (
            TensorType((self.rows, self.out_features), self.dtype),
            TensorType((self.rows, self.in_features), self.dtype),
            TensorType((self.out_features, self.in_features), self.dtype, "bsr"),
        )

    def out_type(self) -> TensorType:
        return TensorType((self.nnz, *self.block), self.dtype)

    def bsr(self, values: torch.Tensor) -> torch.Tensor:
        """A sparse BSR tensor with this pattern and `values` (nnz, bo, bi): the forward weight, or (given the
        kernel's output) the gradient dL/dW."""
        return self.forward().bsr(values)

    def meta_args(self) -> tuple[torch.Tensor, ...]:
        values = torch.empty((self.nnz, *self.block), dtype=torch_dtype(self.dtype), device="meta")
        dy, x, _ = self.arg_types()
        return dy.empty("meta"), x.empty("meta"), self.bsr(values)

    def random_args(self, seed: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """x standard normal, dy standard normal over sqrt(rows) (so each gradient element, a sum over rows,
        stays of order 1), and a forward weight with the pattern (values as BlockSparseProblem draws them)."""
        generator = self._generator(seed, device)
        dy = torch.randn((self.rows, self.out_features), generator=generator, device=device)
        x = torch.randn((self.rows, self.in_features), generator=generator, device=device)
        values = torch.randn((self.nnz, *self.block), generator=generator, device=device)
        per_row = max(1.0, float(self.mask().sum(axis=1).max()))
        values = values / math.sqrt(per_row * self.block[1])
        dtype = torch_dtype(self.dtype)
        dy = dy / math.sqrt(max(1, self.rows))
        return dy.to(dtype), x.to(dtype), self.bsr(values.to(dtype))

    def row_dims(self) -> None:
        """None: every output element sums over all rows (the reference works a few block-rows at a time)."""
        return None

    def reference(self, dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The dense gradient dy.T @ x in float64, cut into (bo, bi) blocks, the stored ones gathered in w's
        order; a few block-rows of it at a time (`_block_row_slabs`: the whole dense gradient is W's size)."""
        bo, bi = self.block
        out, inp = w.shape
        dy64, x64 = dy.reshape(-1, out).double(), x.reshape(-1, inp).double()
        crow, col = w.crow_indices().long(), w.col_indices().long()
        grad = dy64.new_empty((len(col), bo, bi))
        for r0, r1, lo, hi in _block_row_slabs(w, inp):
            dense = dy64[:, r0 * bo : r1 * bo].T @ x64  # (run's rows, in)
            # (block-row, block-col, bo, bi)
            blocks = dense.reshape(r1 - r0, bo, inp // bi, bi).transpose(1, 2)
            block_rows = torch.repeat_interleave(
                torch.arange(r1 - r0, device=crow.device), crow[r0 : r1 + 1].diff()
            )
            grad[lo:hi] = blocks[block_rows, col[lo:hi]]
        return grad

    def structures(self) -> tuple[dict[str, int], ...]:
        return ({},)  # one form: no structure choice

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.nnz * self.block[0] * self.block[1]

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "bo": self.block[0], "bi": self.block[1], "nnz": self.nnz}

    def __str__(self) -> str:
        prec = f" {self.precision}" if self.dtype == "float32" else ""
        return (
            f"bsr_grad[rows={self.rows} {self.in_features}->{self.out_features} "
            f"block={self.block[0]}x{self.block[1]} nnz={self.nnz}/{self.grid[0] * self.grid[1]} "
            f"{SHORT_NAMES[self.dtype]}{prec}]"
        )


def _renamed(factor, prefix: str):
    """A factor reading its weight under `prefix` + its name (a sum's weights are named per term)."""
    return replace(factor, weight=prefix + factor.weight)


PROBLEMS = {
    GemmProblem.family: GemmProblem,
    MonarchProblem.family: MonarchProblem,
    ButterflyProblem.family: ButterflyProblem,
    FFTProblem.family: FFTProblem,
    BlockSparseProblem.family: BlockSparseProblem,
    ChainProblem.family: ChainProblem,
    SumProblem.family: SumProblem,
    BsrGradProblem.family: BsrGradProblem,
}
Problem = (
    GemmProblem
    | MonarchProblem
    | ButterflyProblem
    | FFTProblem
    | BlockSparseProblem
    | ChainProblem
    | SumProblem
    | BsrGradProblem
)


def problem_from_dict(family: str, data: dict[str, Any]) -> Problem:
    return PROBLEMS[family].from_dict(data)
