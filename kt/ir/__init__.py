"""kt's IR: factors, linear maps, ops built from specs, kernel-level problems and the kernel graph."""

from kt.ir.factors import BlockDiag, ButterflyFactor, ButterflyGroup, Dense, Diag, Factor, Perm, realify
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.linear_map import LinearMap, SumMap
from kt.ir.monarch import bit_reversal, butterfly_dft_twiddles
from kt.ir.ops import DenseOp, op_from_spec
from kt.ir.problems import GemmProblem, TensorType, problem_from_dict
from kt.ir.projections import project_butterfly, prune_blocks, truncated_svd
from kt.ir.sparse import BSR, ChainOrder, ChainStep, chain_map, chain_order
from kt.ir.structured import (
    butterfly_map,
    butterfly_reference,
    dft_matrix,
    fft_map,
    fft_weights,
    monarch_map,
    monarch_reference,
    monarch_square_map,
)

__all__ = [
    "BSR",
    "ChainOrder",
    "ChainStep",
    "BlockDiag",
    "ButterflyFactor",
    "ButterflyGroup",
    "Dense",
    "DenseOp",
    "Diag",
    "Factor",
    "GemmProblem",
    "KernelGraph",
    "KernelNode",
    "LinearMap",
    "Perm",
    "SumMap",
    "TensorType",
    "bit_reversal",
    "butterfly_dft_twiddles",
    "butterfly_map",
    "butterfly_reference",
    "chain_map",
    "chain_order",
    "dft_matrix",
    "fft_map",
    "fft_weights",
    "monarch_map",
    "monarch_reference",
    "monarch_square_map",
    "op_from_spec",
    "problem_from_dict",
    "project_butterfly",
    "prune_blocks",
    "realify",
    "truncated_svd",
]
