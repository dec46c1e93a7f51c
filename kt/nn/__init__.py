"""PyTorch layers whose matmuls are kt kernels: drop-in for nn.Linear, differentiable through the IR's transposes,
`torch.compile(fullgraph=True)`- and `torch.export`-friendly (one custom op, `torch.ops.kt.apply`)."""

from kt.nn.functional import apply
from kt.nn.layers import (
    FFT,
    BlockSparseLinear,
    ButterflyLinear,
    DenseLinear,
    LowRankLinear,
    MonarchLinear,
    Pointwise,
    Sum,
    load_patterns,
)
from kt.nn.portable import decompose, decompositions
from kt.nn.selection import bucket, selections, use_artifacts
from kt.nn.structurize import structurize, structurize_as

__all__ = [
    "FFT",
    "BlockSparseLinear",
    "ButterflyLinear",
    "DenseLinear",
    "LowRankLinear",
    "MonarchLinear",
    "Pointwise",
    "Sum",
    "apply",
    "bucket",
    "decompose",
    "decompositions",
    "load_patterns",
    "selections",
    "structurize",
    "structurize_as",
    "use_artifacts",
]
