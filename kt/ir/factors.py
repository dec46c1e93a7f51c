"""Factors: the building blocks of a structured linear map.

A factor is a linear map R^in -> R^out applied to the rows of x, so `y = x @ M.T` where `M = factor.to_dense()`
has shape (out, in) (or (batch, out, in) when each batch entry has its own weights). Every factor has a dense
form to check kernels against and a transpose, so the backward pass of any op is again an op of this IR.
Factors describe the math only; how it is scheduled (tiles, stages) lives in codegen.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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

    def __post_init__(self):
        if self.storage not in _STORAGES:
            raise ValueError(f"Dense storage={self.storage!r}; allowed: {', '.join(_STORAGES)}")
        _positive(self, in_features=self.in_features, out_features=self.out_features, batch=self.batch)

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


# Structured factors. Their dense forms come back in float64 promoted with the dtypes of all the weights passed
# (so complex128 when any is complex): a weightless Perm between complex BlockDiags is then complex too, and
# LinearMap.to_dense can multiply them.
# Transposes are plain transposes, never conjugates: `factor.transpose().to_dense(w) == factor.to_dense(w).mT`.

_STORAGES = ("out_in", "in_out")


def _dense_dtype(weights: Mapping[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    dtype, device = torch.float64, torch.device("cpu")
    tensors = [w for w in weights.values() if w.is_floating_point() or w.is_complex()]
    for w in tensors:
        dtype = torch.promote_types(dtype, w.dtype)
    if tensors:
        device = tensors[0].device
    return dtype, device


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {expected}")


def positive(value) -> bool:
    """Whether `value` is a positive integer (numpy's integers too; not a bool or a float)."""
    try:
        return not isinstance(value, bool) and operator.index(value) >= 1
    except TypeError:
        return False


def _positive(factor: Factor, **sizes: int | None) -> None:
    """Refuse a size that is no positive integer (None: not given), naming the factor and the field: Perm(-2, -3)
    was made, and failed later as torch's "invalid shape dimension -2"."""
    for name, size in sizes.items():
        if size is not None and not positive(size):
            raise ValueError(f"{type(factor).__name__} {name}={size!r}: must be a positive integer")


def _whole(factor: Factor, *names: str) -> None:
    """Each field `names` as a Python int (a numpy integer taken as one), refused when it is no integer (a float
    or a bool), naming the factor and the field."""
    for name in names:
        value = getattr(factor, name)
        try:
            if isinstance(value, bool):
                raise TypeError
            object.__setattr__(factor, name, operator.index(value))
        except TypeError:
            raise ValueError(f"{type(factor).__name__} {name}={value!r}: must be an integer") from None


def _init_features(factor: Factor, in_features: int, out_features: int) -> None:
    object.__setattr__(factor, "in_features", in_features)
    object.__setattr__(factor, "out_features", out_features)


@dataclass(frozen=True)
class BlockDiag(Factor):
    """Block-diagonal: block i maps x[i*in_blk:(i+1)*in_blk] to y[i*out_blk:(i+1)*out_blk].

    The weight tensor is (nblocks, out_blk, in_blk) for storage "out_in" (Monarch's w1 (k, q, p) is out_in with
    out_blk=q, in_blk=p) and (nblocks, in_blk, out_blk) for "in_out". As with Dense, transposing swaps the block
    sizes and the storage, so the same tensor serves the transposed map.
    """

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    nblocks: int
    out_blk: int
    in_blk: int
    weight: str = "w"
    storage: str = "out_in"

    def __post_init__(self):
        if self.storage not in _STORAGES:
            raise ValueError(f"BlockDiag storage={self.storage!r}; allowed: {', '.join(_STORAGES)}")
        _positive(self, nblocks=self.nblocks, out_blk=self.out_blk, in_blk=self.in_blk)
        _init_features(self, self.nblocks * self.in_blk, self.nblocks * self.out_blk)

    def blocks(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (nblocks, out_blk, in_blk) blocks, as views of the weight tensor."""
        w = weights[self.weight]
        if self.storage == "out_in":
            _check_shape(self.weight, w, (self.nblocks, self.out_blk, self.in_blk))
            return w
        _check_shape(self.weight, w, (self.nblocks, self.in_blk, self.out_blk))
        return w.transpose(-1, -2)

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype, _ = _dense_dtype(weights)
        return torch.block_diag(*self.blocks(weights).to(dtype))

    def transpose(self) -> BlockDiag:
        flipped = "in_out" if self.storage == "out_in" else "out_in"
        return replace(self, out_blk=self.in_blk, in_blk=self.out_blk, storage=flipped)

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        mark = "" if self.storage == "out_in" else "ᵀ"
        return f"BlockDiag[{self.weight}{mark}]({self.nblocks}x {self.out_blk}<-{self.in_blk})"


@dataclass(frozen=True)
class Perm(Factor):
    """The stride permutation "view x as (rows, cols), transpose, flatten": y[c*rows + r] = x[r*cols + c].

    In torch: `y = x.view(rows, cols).T.flatten()`. Its transpose is its inverse, Perm(cols, rows).
    """

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    rows: int
    cols: int

    def __post_init__(self):
        _positive(self, rows=self.rows, cols=self.cols)
        _init_features(self, self.rows * self.cols, self.rows * self.cols)

    def source_index(self) -> torch.Tensor:
        """idx with y = x[idx]."""
        return torch.arange(self.rows * self.cols).view(self.rows, self.cols).T.flatten()

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype, device = _dense_dtype(weights)
        n = self.rows * self.cols
        matrix = torch.zeros(n, n, dtype=dtype, device=device)
        matrix[torch.arange(n), self.source_index()] = 1
        return matrix

    def transpose(self) -> Perm:
        return Perm(self.cols, self.rows)

    def __str__(self) -> str:
        return f"Perm({self.rows}x{self.cols})"


@dataclass(frozen=True)
class Diag(Factor):
    """Elementwise scale y[i] = weight[i] * x[i] (twiddle factors, per-channel scales); real or complex."""

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    n: int
    weight: str = "d"

    def __post_init__(self):
        _positive(self, n=self.n)
        _init_features(self, self.n, self.n)

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype, _ = _dense_dtype(weights)
        w = weights[self.weight]
        _check_shape(self.weight, w, (self.n,))
        return torch.diag(w.to(dtype))

    def transpose(self) -> Diag:
        return self

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        return f"Diag[{self.weight}]({self.n})"


@dataclass(frozen=True)
class ButterflyFactor(Factor):
    """Level `level` of a butterfly on n = 2**L features, with twiddles (L, n/2, 2, 2) in `weight`.

    With stride s = 2**level, for each group g and j < s the pair (a, b) = (2*s*g + j, 2*s*g + s + j) is mapped by
    t = twiddles[level, g*s + j]: y[a] = t[0,0] x[a] + t[0,1] x[b], y[b] = t[1,0] x[a] + t[1,1] x[b].
    `transposed` reads each 2x2 as t.T, which is the transposed factor on the same tensor.
    """

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    n: int
    level: int
    weight: str = "twiddles"
    transposed: bool = False

    def __post_init__(self):
        _positive(self, n=self.n)  # 8.0 was Python's TypeError on `&`
        _whole(self, "n", "level")  # a numpy integer had no bit_length; a float level failed in to_dense
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"ButterflyFactor n={self.n}: must be a power of two >= 2")
        if not 0 <= self.level < self.n.bit_length() - 1:
            raise ValueError(f"ButterflyFactor level={self.level}: allowed 0..{self.n.bit_length() - 2}")
        _init_features(self, self.n, self.n)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (a, b) of the n/2 pairs, in twiddle order h = g*s + j."""
        s = 1 << self.level
        h = torch.arange(self.n // 2)
        a = 2 * s * (h // s) + h % s
        return a, a + s

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype, device = _dense_dtype(weights)
        twiddles = weights[self.weight]
        _check_shape(self.weight, twiddles, (self.n.bit_length() - 1, self.n // 2, 2, 2))
        t = twiddles[self.level].to(dtype)
        if self.transposed:
            t = t.transpose(-1, -2)
        a, b = self.pairs()
        matrix = torch.zeros(self.n, self.n, dtype=dtype, device=device)
        matrix[a, a], matrix[a, b] = t[:, 0, 0], t[:, 0, 1]
        matrix[b, a], matrix[b, b] = t[:, 1, 0], t[:, 1, 1]
        return matrix

    def transpose(self) -> ButterflyFactor:
        return replace(self, transposed=not self.transposed)

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        mark = "ᵀ" if self.transposed else ""
        return f"Butterfly[{self.weight}{mark}:{self.level}]({self.n})"


def realify(matrix: torch.Tensor) -> torch.Tensor:
    """The real form [[Re, -Im], [Im, Re]] of a complex (..., out, in) matrix, shape (..., 2*out, 2*in).

    It acts on planar vectors [Re x; Im x] (all real parts, then all imaginary parts) and gives [Re y; Im y]:
    how complex factors are lowered to real dots.
    """
    if matrix.is_complex():
        re, im = matrix.real, matrix.imag
    else:
        re, im = matrix, torch.zeros_like(matrix)
    top = torch.cat([re, -im], dim=-1)
    bottom = torch.cat([im, re], dim=-1)
    return torch.cat([top, bottom], dim=-2)


@dataclass(frozen=True)
class ButterflyGroup(Factor):
    """Levels first .. first+levels-1 of a butterfly multiplied out: one block-diagonal stage in a strided order.

    The levels mix only bits first .. first+levels-1 of a feature index, so they act independently on the
    n / 2**levels groups of 2**levels features that share all other bits. Group g holds the features
    `((g >> first) << (first + levels)) | (g & (2**first - 1)) | (t << first)` for t < 2**levels (`positions`).
    Fewer, larger groups mean fewer passes over memory and more FLOPs; how many levels go into a stage is a
    tuning choice. `transposed` is the transpose of the group (its levels reversed, each 2x2 transposed).
    """

    in_features: int = field(init=False)
    out_features: int = field(init=False)
    n: int
    first: int
    levels: int
    weight: str = "twiddles"
    transposed: bool = False

    def __post_init__(self):
        _positive(self, n=self.n)  # 8.0 was an AttributeError on bit_length
        _whole(self, "n", "first", "levels")  # (numpy integers: an AttributeError on bit_length)
        total = self.n.bit_length() - 1
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"ButterflyGroup n={self.n}: must be a power of two >= 2")
        if self.levels < 1 or self.first < 0 or self.first + self.levels > total:
            raise ValueError(
                f"ButterflyGroup levels {self.first}..{self.first + self.levels - 1}: n={self.n} has 0..{total - 1}"
            )
        _init_features(self, self.n, self.n)

    @property
    def nblocks(self) -> int:
        return self.n >> self.levels

    def positions(self) -> torch.Tensor:
        """(nblocks, 2**levels): the features of each group, in the order its block matrix uses."""
        g = torch.arange(self.nblocks)
        base = ((g >> self.first) << (self.first + self.levels)) | (g & ((1 << self.first) - 1))
        return base[:, None] + (torch.arange(1 << self.levels) << self.first)[None, :]

    def factors(self) -> list[ButterflyFactor]:
        """The ButterflyFactors this group multiplies out, in the order they act."""
        levels = range(self.first, self.first + self.levels)
        chain = [ButterflyFactor(self.n, f, self.weight) for f in levels]
        return [f.transpose() for f in reversed(chain)] if self.transposed else chain

    def to_dense(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        chain = self.factors()
        matrix = chain[0].to_dense(weights)
        for factor in chain[1:]:
            matrix = factor.to_dense(weights) @ matrix
        return matrix

    def blocks(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (nblocks, 2**levels, 2**levels) blocks: block g maps the features positions()[g] to themselves."""
        pos = self.positions()
        return self.to_dense(weights)[pos[:, :, None], pos[:, None, :]]

    def transpose(self) -> ButterflyGroup:
        return replace(self, transposed=not self.transposed)

    def weight_names(self) -> tuple[str, ...]:
        return (self.weight,)

    def __str__(self) -> str:
        mark = "ᵀ" if self.transposed else ""
        last = self.first + self.levels - 1
        return f"ButterflyGroup[{self.weight}{mark}:{self.first}..{last}]({self.n})"
