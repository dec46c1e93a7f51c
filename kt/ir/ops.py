"""Ops: what a spec asks for, as a linear map of factors, its arguments, a torch reference and a kernel graph.

dense:  y = x @ B, x (M, K) or (batch, M, K), B (K, N) or (batch, K, N). As a linear map on the rows of x this
is the single factor Dense(out=N, in=K) whose (out, in) matrix is B.T, held in B's (in, out) storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kt.ir.factors import Dense
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.linear_map import LinearMap
from kt.ir.problems import GemmProblem, TensorType
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


OP_TYPES = {"dense": DenseOp}


def op_from_spec(spec: OpSpec) -> DenseOp:
    return OP_TYPES[spec.op].from_spec(spec)
