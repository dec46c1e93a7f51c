"""The dtype table: the one place that maps kt's dtype names to torch dtypes and sizes."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}

SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "complex64": "c64"}

# Tensor dtypes that kernels read or write but that are not an op's dtype (an fp32 FFT's complex input and output).
TENSOR_DTYPES: dict[str, torch.dtype] = {**DTYPES, "complex64": torch.complex64}

# Relative Frobenius error allowed against a float64 reference, per operand dtype. Rounding of the output alone
# is 2**-11 (fp16), 2**-8 (bf16) and 2**-24 (fp32) per element; tf32 operands keep a 10-bit mantissa.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "tf32": 4e-3}


def torch_dtype(name: str) -> torch.dtype:
    return TENSOR_DTYPES[name]


def itemsize(name: str) -> int:
    return TENSOR_DTYPES[name].itemsize


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise KeyError(f"{dtype} is not one of kt's dtypes ({', '.join(DTYPES)})")


def tolerance(dtype: str, precision: str = "ieee") -> float:
    """The relative error a correct kernel stays under for operands of `dtype` (and fp32 `precision`)."""
    if dtype == "float32" and precision == "tf32":
        return TOLERANCE["tf32"]
    return TOLERANCE[dtype]
