"""Ops: what a spec asks for, as a linear map of factors, its arguments, a torch reference and a kernel graph.

dense:  y = x @ B, x (M, K) or (batch, M, K), B (K, N) or (batch, K, N). As a linear map on the rows of x this
is the single factor Dense(out=N, in=K) whose (out, in) matrix is B.T, held in B's (in, out) storage.
monarch, butterfly, fft: the structured maps of kt.ir.structured, `kernel(x, *weights)` with the weights in
the documented layout (monarch: w1 (k, q, p), w2 (l, s, r); butterfly: twiddles (log2 n, n/2, 2, 2); fft: none).
Each lowers to one kernel of its block-GEMM family, whose structure choice picks the factors it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kt.ir.factors import Dense
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.linear_map import LinearMap
from kt.ir.problems import (
    BlockSparseProblem,
    ButterflyProblem,
    ChainProblem,
    FFTProblem,
    GemmProblem,
    MonarchProblem,
    StructuredProblem,
    SumProblem,
    TensorType,
)
from kt.ir.structured import butterfly_reference, monarch_reference
from kt.spec import OpSpec


@dataclass(frozen=True)
class DenseOp:
    name: str
    problem: GemmProblem

    input_name = "x"
    weight_names = ("b",)

    @classmethod
    def from_spec(cls, spec: OpSpec) -> DenseOp:
        s = spec.shape
        problem = GemmProblem(
            m=s.m,
            n=s.n,
            k=s.k,
            batch=s.batch,
            dtype=spec.dtype,
            precision=spec.precision,
            a_layout=spec.layout.a,
            b_layout=spec.layout.b,
        )
        return cls(spec.name, problem)

    @property
    def linear_map(self) -> LinearMap:
        p = self.problem
        return LinearMap(
            (Dense(in_features=p.k, out_features=p.n, weight="b", storage="in_out", batch=p.batch),)
        )

    def arg_types(self) -> dict[str, TensorType]:
        a, b = self.problem.arg_types()
        return {self.input_name: a, "b": b}

    def random_args(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.problem.random_args(seed, device)

    def random_weights(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.random_args(seed, device)[1:]

    @staticmethod
    def reference(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """What a user would write in plain torch."""
        return torch.matmul(x, b)

    def kernel_graph(self) -> KernelGraph:
        node = KernelNode("k0", self.problem, inputs=(self.input_name, "b"), output="y")
        return KernelGraph(self.arg_types(), [node], outputs=("y",))

    def describe(self) -> str:
        x, b = self.arg_types().values()
        y = self.problem.out_type()
        return f"y:{y} = x:{x} @ b:{b}"


@dataclass(frozen=True)
class StructuredOp:
    """An op that is one structured problem: the arguments, reference and kernel graph come from it."""

    name: str
    problem: StructuredProblem

    input_name = "x"

    @property
    def weight_names(self) -> tuple[str, ...]:
        return self.problem.weight_names

    @property
    def linear_map(self) -> LinearMap:
        """The op's factors (for the butterfly and the FFT, those of the first structure choice: every choice has
        the same dense form)."""
        return self.problem.linear_map(self.problem.structures()[0])

    def arg_types(self) -> dict[str, TensorType]:
        return dict(zip((self.input_name, *self.weight_names), self.problem.arg_types()))

    def random_args(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.problem.random_args(seed, device)

    def random_weights(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.random_args(seed, device)[1:]

    def kernel_graph(self) -> KernelGraph:
        node = KernelNode("k0", self.problem, inputs=tuple(self.arg_types()), output="y")
        return KernelGraph(self.arg_types(), [node], outputs=("y",))

    def describe(self) -> str:
        args = " ".join(f"{name}:{t}" for name, t in self.arg_types().items())
        return f"y:{self.problem.out_type()} = {self.problem.family}({args})"


class MonarchOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> MonarchOp:
        s = spec.shape
        return cls(spec.name, MonarchProblem(s.batch, s.w1, s.w2, spec.dtype, spec.precision))

    @staticmethod
    def reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """The Monarch paper's two-torch.bmm formula."""
        return monarch_reference(x, w1, w2)


class ButterflyOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> ButterflyOp:
        return cls(spec.name, ButterflyProblem(spec.shape.batch, spec.shape.n, spec.dtype, spec.precision))

    @staticmethod
    def reference(x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
        """A per-factor torch loop (one level of 2x2 twiddles at a time)."""
        return butterfly_reference(x, twiddles)


class FFTOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> FFTOp:
        problem = FFTProblem(spec.shape.batch, spec.shape.n, spec.dtype, spec.input, spec.precision)
        return cls(spec.name, problem)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """torch.fft.fft; for float16 the planar (2, ..., n) format of kt's kernel, computed in complex64."""
        if self.problem.dtype == "float32":
            return torch.fft.fft(x)
        z = x.float() if self.problem.input == "real" else torch.complex(x[0].float(), x[1].float())
        y = torch.fft.fft(z)
        return torch.stack([y.real, y.imag]).to(x.dtype)


def _blocksparse_problem(spec: OpSpec) -> BlockSparseProblem:
    s, sparsity = spec.shape, spec.sparsity
    return BlockSparseProblem(
        s.batch, s.in_features, s.out_features, sparsity.block, sparsity.layout, spec.dtype, spec.precision
    )


def _chain_problem(spec: OpSpec) -> ChainProblem:
    return ChainProblem(spec.shape.batch, spec.shape.dims, spec.dtype, spec.precision)


class BlockSparseOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> BlockSparseOp:
        return cls(spec.name, _blocksparse_problem(spec))

    @staticmethod
    def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """F.linear with the BSR weight's dense form (what a user would write without a sparse kernel)."""
        return torch.nn.functional.linear(x, w.to_dense())


class LowRankOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> LowRankOp:
        return cls(spec.name, _chain_problem(spec))

    @staticmethod
    def reference(x: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
        """torch.linalg.multi_dot([x, f1, f2, ...]) over the last dim of x (any leading dims)."""
        lead = x.shape[:-1]
        y = torch.linalg.multi_dot([x.reshape(-1, x.shape[-1]), *factors])
        return y.reshape(*lead, y.shape[-1])


class SumOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> SumOp:
        terms = tuple(
            _blocksparse_problem(term) if term.op == "blocksparse" else _chain_problem(term)
            for term in spec.terms
        )
        return cls(spec.name, SumProblem(terms, spec.dtype, spec.precision))

    def reference(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """The sum of each term's plain-torch form."""
        parts = self.problem.split_weights(weights)
        refs = {"blocksparse": BlockSparseOp.reference, "lowrank": LowRankOp.reference}
        return sum(refs[term.family](x, *w) for term, w in zip(self.problem.terms, parts))


Op = DenseOp | MonarchOp | ButterflyOp | FFTOp | BlockSparseOp | LowRankOp | SumOp
OP_TYPES = {
    "dense": DenseOp,
    "monarch": MonarchOp,
    "butterfly": ButterflyOp,
    "fft": FFTOp,
    "blocksparse": BlockSparseOp,
    "lowrank": LowRankOp,
    "sum": SumOp,
}


def op_from_spec(spec: OpSpec) -> Op:
    return OP_TYPES[spec.op].from_spec(spec)
