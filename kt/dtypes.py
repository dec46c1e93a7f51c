"""The dtype table: the one place that maps kt's dtype names to torch dtypes and sizes.

Names and sizes need no torch, so reading and checking an op's spec (and the CLI's one-line error for a bad one)
does not pay for importing it; the torch dtypes load on first use.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# An op's dtypes, in the order errors list them.
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")

SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "complex64": "c64"}

# Bytes per element of every tensor dtype kernels read or write: an op's dtypes and those that are not an op's
# dtype (an fp32 FFT's complex input and output).
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "complex64": 8}

# Relative Frobenius error allowed against a float64 reference, per operand dtype. Rounding of the output alone
# is 2**-11 (fp16), 2**-8 (bf16) and 2**-24 (fp32) per element; tf32 operands keep a 10-bit mantissa.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "tf32": 4e-3}
# float32 (ieee) alone: its output rounds at 2**-24, so the fp32 accumulation dominates, and a sum of K products
# accumulated one after the other (a GPU's FMA k-loop) is off by about 0.32 * 2**-24 * sqrt(K) of its size on
# random inputs (an exact FMA emulation: 4.7e-6 at K = 65536, 9.4e-6 at 262144, 2.0e-5 at 2**20). The tolerance
# holds 1e-5 up to sums of this many products and grows as sqrt(K) beyond, about 8 times that error throughout.
FP32_SUM = 4096


def torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in ITEMSIZE:
        raise KeyError(name)
    return getattr(torch, name)


def itemsize(name: str) -> int:
    return ITEMSIZE[name]


def dtype_name(dtype: torch.dtype) -> str:
    import torch

    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else None
    if name not in DTYPES:
        raise KeyError(f"{dtype} is not one of kt's dtypes ({', '.join(DTYPES)})")
    return name


def tolerance(dtype: str, precision: str = "ieee", reduction: int = 1) -> float:
    """The relative error a correct kernel stays under for operands of `dtype` (and fp32 `precision`) whose
    longest sum is of `reduction` products (float32 ieee alone depends on it: FP32_SUM)."""
    if dtype == "float32" and precision == "tf32":
        return TOLERANCE["tf32"]
    if dtype == "float32":
        return TOLERANCE[dtype] * max(1.0, math.sqrt(reduction / FP32_SUM))
    return TOLERANCE[dtype]
