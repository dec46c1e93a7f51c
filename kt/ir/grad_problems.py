"""Problems of backward passes: the weight gradient of a block-sparse layer, restricted to its stored blocks.

For y = F.linear(x, W) with W (out, in) a torch sparse BSR tensor in blocks (bo, bi), the gradient of a loss L
with respect to W is dy.T @ x (dy = dL/dy); only the stored blocks of W are parameters, so only their gradient
is wanted, and never as a dense (out, in) matrix. Stored block n at block-row r and block-column c gets

    grad[n] = dy[:, r*bo:(r+1)*bo].T @ x[:, c*bi:(c+1)*bi]        (bo, bi), summed over every row of the batch

so `torch.sparse_bsr_tensor(w.crow_indices(), w.col_indices(), grad, w.shape)` is dL/dW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kt.dtypes import SHORT_NAMES, torch_dtype
from kt.ir.problems import BlockSparseProblem, StructuredProblem, TensorType


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
        return int(self.mask().sum())

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

    def reference(self, dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The dense gradient dy.T @ x in float64, cut into (bo, bi) blocks, the stored ones gathered in w's
        order."""
        bo, bi = self.block
        out, inp = w.shape
        dense = dy.reshape(-1, out).double().T @ x.reshape(-1, inp).double()
        blocks = dense.reshape(out // bo, bo, inp // bi, bi).transpose(1, 2)  # (block-row, block-col, bo, bi)
        crow, col = w.crow_indices().long(), w.col_indices().long()
        block_rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())
        return blocks[block_rows, col]

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
