"""kt's IR: factors, linear maps, ops built from specs, kernel-level problems and the kernel graph."""

from kt.ir.factors import Dense, Factor
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.linear_map import LinearMap
from kt.ir.ops import DenseOp, op_from_spec
from kt.ir.problems import GemmProblem, TensorType, problem_from_dict

__all__ = [
    "Dense",
    "DenseOp",
    "Factor",
    "GemmProblem",
    "KernelGraph",
    "KernelNode",
    "LinearMap",
    "TensorType",
    "op_from_spec",
    "problem_from_dict",
]
