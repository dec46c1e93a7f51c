"""Ops: what a spec asks for, as a linear map of factors, its arguments, a torch reference and a kernel graph.

dense:  y = x @ B, x (M, K) or (batch, M, K), B (K, N) or (batch, K, N). As a linear map on the rows of x this
is the single factor Dense(out=N, in=K) whose (out, in) matrix is B.T, held in B's (in, out) storage.
monarch, butterfly, fft: the structured maps of kt.ir.structured, `kernel(x, *weights)` with the weights in
the documented layout (monarch: w1 (k, q, p), w2 (l, s, r); butterfly: twiddles (log2 n, n/2, 2, 2); fft: none).
Each lowers to one kernel of its block-GEMM family, whose structure choice picks the factors it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from kt.ir.factors import Dense
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.linear_map import LinearMap, SumMap
from kt.ir.problems import (
    BlockSparseProblem,
    BsrGradProblem,
    ButterflyProblem,
    ChainProblem,
    FFTProblem,
    GemmProblem,
    MonarchProblem,
    StructuredProblem,
    SumProblem,
    TensorType,
)
from kt.ir.structured import butterfly_reference, check_monarch, monarch_reference
from kt.spec import OpSpec


@dataclass(frozen=True)
class KernelOp(ABC):
    """An op that is one kernel-level problem: its arguments, kernel graph and `kt show` text come from it."""

    name: str
    problem: GemmProblem | StructuredProblem

    input_name = "x"
    weight_names = ()  # the weights' argument names, after x

    @property
    @abstractmethod
    def linear_map(self) -> LinearMap:
        """The op as factors applied to the rows of x."""

    def map_text(self) -> tuple[str, str]:
        """(heading, formula) of what the op computes, for `kt show`."""
        m = self.linear_map
        # a sum in brackets: "A + B · C · x" read as x applied to the last term alone
        text = f"({m})" if isinstance(m, SumMap) else str(m)
        return (
            f"linear map ({m.in_features} -> {m.out_features}), factors applied right to left",
            f"y = {text} · {self.input_name}",
        )

    def arg_types(self) -> dict[str, TensorType]:
        return dict(zip((self.input_name, *self.weight_names), self.problem.arg_types()))

    def random_args(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.problem.random_args(seed, device)

    def random_weights(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        return self.random_args(seed, device)[1:]

    def kernel_graph(self) -> KernelGraph:
        node = KernelNode("k0", self.problem, inputs=tuple(self.arg_types()), output="y")
        return KernelGraph(self.arg_types(), [node], outputs=("y",))


class DenseOp(KernelOp):
    input_name = "a"  # as the kernel names it (kernel(a, b)): `kt show` said x, and kernel(x=...) failed
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

    @staticmethod
    def reference(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """What a user would write in plain torch."""
        return torch.matmul(x, b)

    def describe(self) -> str:
        a, b = self.arg_types().values()
        y = self.problem.out_type()
        return f"y:{y} = a:{a} @ b:{b}"


class StructuredOp(KernelOp):
    """An op that is one structured problem: its weights and factors come from the problem."""

    @property
    def weight_names(self) -> tuple[str, ...]:
        return self.problem.weight_names

    @property
    def linear_map(self) -> LinearMap:
        """The op's factors (for the butterfly and the FFT, those of the first structure choice: every choice has
        the same dense form)."""
        return self.problem.linear_map(self.problem.structures()[0])

    def describe(self) -> str:
        args = " ".join(f"{name}:{t}" for name, t in self.arg_types().items())
        # `transposed: true` (y = x @ M) marked as the kernel graph's line marks it
        mark = "ᵀ" if getattr(self.problem, "transposed", False) else ""
        return f"y:{self.problem.out_type()} = {self.problem.family}{mark}({args})"


class MonarchOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> MonarchOp:
        s = spec.shape
        problem = MonarchProblem(s.batch, s.w1, s.w2, spec.dtype, spec.precision, spec.transposed)
        return cls(spec.name, problem)

    def reference(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """The Monarch paper's two-torch.bmm formula; transposed, its four steps undone in reverse order."""
        if self.problem.transposed:
            return self.transposed_reference(x, w1, w2)
        return monarch_reference(x, w1, w2)

    @staticmethod
    def transposed_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """y = x @ M for the forward Monarch's (out, in) matrix M, any leading dims: x (..., l*s) -> (..., k*p).

        Each forward step transposed, last first: 4. view x as (B, s, l) and transpose to (B, l, s);
        3. v[b, j, :] = w2[j].T @ z[b, j, :], giving (B, l, r); 2. transpose to (B, r, l) and flatten to (B, k*q);
        1. y[b, i*p:(i+1)*p] = w1[i].T @ u[b, i*q:(i+1)*q].
        """
        check_monarch(x, w1, w2, transposed=True)
        k, q, p = w1.shape
        l, s, r = w2.shape  # noqa: E741
        lead = x.shape[:-1]
        batch = x.reshape(-1, l * s).shape[0]
        z = x.reshape(batch, s, l).transpose(1, 2)  # (B, l, s)
        v = torch.bmm(z.transpose(0, 1), w2)  # (l, B, r): v[j, b, t] = sum_c z[b, j, c] w2[j, c, t]
        u = v.permute(1, 2, 0).reshape(batch, k, q)  # u[b, t*l + j] = v[j, b, t]
        y = torch.bmm(u.transpose(0, 1), w1)  # (k, B, p): y[i, b, e] = sum_a u[b, i, a] w1[i, a, e]
        return y.transpose(0, 1).reshape(*lead, k * p)


class ButterflyOp(StructuredOp):
    @classmethod
    def from_spec(cls, spec: OpSpec) -> ButterflyOp:
        s = spec.shape
        return cls(spec.name, ButterflyProblem(s.batch, s.n, spec.dtype, spec.precision, spec.transposed))

    def reference(self, x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
        """A per-factor torch loop (one level of 2x2 twiddles at a time); transposed, the levels last to first,
        each 2x2 transposed."""
        if self.problem.transposed:
            return self.transposed_reference(x, twiddles)
        return butterfly_reference(x, twiddles)

    @staticmethod
    def transposed_reference(x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
        """y = x @ B for the forward butterfly's matrix B = B_{L-1} ... B_0, i.e. B_0^T ... B_{L-1}^T applied to
        each row: level L-1 first, each pair mapped by its 2x2 twiddle transposed."""
        from kt.ir.structured import check_twiddles

        n = x.shape[-1]
        lead = x.shape[:-1]
        y = x.reshape(-1, n)
        for f in reversed(range(check_twiddles(n, twiddles))):
            s = 1 << f
            pairs = y.reshape(-1, n // (2 * s), 2, s)  # [b, g, half, j]
            t = twiddles[f].reshape(n // (2 * s), s, 2, 2)  # [g, j, out, in] of the forward level
            top, bottom = pairs[:, :, 0, :], pairs[:, :, 1, :]
            new_top = t[..., 0, 0] * top + t[..., 1, 0] * bottom
            new_bottom = t[..., 0, 1] * top + t[..., 1, 1] * bottom
            y = torch.stack([new_top, new_bottom], dim=2).reshape(-1, n)
        return y.reshape(*lead, n)


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


class BlockSparseGradOp(StructuredOp):
    """The weight gradient of a block-sparse layer on W's stored blocks: kernel(dy, x, w) -> (nnz, bo, bi)."""

    input_name = "dy"

    @classmethod
    def from_spec(cls, spec: OpSpec) -> BlockSparseGradOp:
        s, sparsity = spec.shape, spec.sparsity
        problem = BsrGradProblem(
            s.batch,
            s.in_features,
            s.out_features,
            sparsity.block,
            sparsity.layout,
            spec.dtype,
            spec.precision,
        )
        return cls(spec.name, problem)

    @property
    def linear_map(self) -> LinearMap:
        """None: the gradient is bilinear in (dy, x), not a linear map of one input (so `hasattr` is False)."""
        raise AttributeError(
            f"{self.name}: a blocksparse_grad op is the weight gradient dy.T @ x on W's blocks, bilinear in "
            "(dy, x): it has no linear map (its reference is `reference(dy, x, w)`)"
        )

    def map_text(self) -> tuple[str, str]:
        p = self.problem
        return (
            f"weight gradient of y = F.linear(x, W), W ({p.out_features}, {p.in_features}) in BSR",
            f"grad[n] = dy[:, block-row of n].T @ x[:, block-column of n] for the {p.nnz} stored blocks n of W",
        )

    @staticmethod
    def reference(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """What autograd of F.linear(x, W_dense) gives W_dense, cut into blocks, the stored ones in w's order."""
        bo, bi = w.values().shape[1:]
        out, inp = w.shape
        dense = dy.reshape(-1, out).T @ x.reshape(-1, inp)
        blocks = dense.reshape(out // bo, bo, inp // bi, bi).transpose(1, 2)
        crow, col = w.crow_indices(), w.col_indices()
        block_rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())
        return blocks[block_rows, col]


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


Op = DenseOp | MonarchOp | ButterflyOp | FFTOp | BlockSparseOp | LowRankOp | SumOp | BlockSparseGradOp
OP_TYPES = {
    "dense": DenseOp,
    "monarch": MonarchOp,
    "butterfly": ButterflyOp,
    "fft": FFTOp,
    "blocksparse": BlockSparseOp,
    "lowrank": LowRankOp,
    "sum": SumOp,
    "blocksparse_grad": BlockSparseGradOp,
}


def op_from_spec(spec: OpSpec) -> Op:
    return OP_TYPES[spec.op].from_spec(spec)
