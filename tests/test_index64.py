"""Operands that span 2**31 elements or more through one large stride: every offset the kernel makes into them
must be 64-bit. The fused low-rank and fused Monarch kernels kept a factor's or `out`'s column offsets in 32
bits under INDEX_64: the offset wrapped, and the interpreter crashed (a GPU would write out of bounds). The
tensors are views of storage that is allocated but almost all untouched (virtual memory), so each test needs a
few MB. Each runs in a subprocess, so a wrapped offset fails the test rather than the test run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LOWRANK = """
import torch, kt
spec = kt.parse_spec({"op": "lowrank", "dtype": "float16", "shape": {"batch": 16, "dims": [16, 4, 48]}})
config = next(c for c in kt.space(spec).legal if getattr(c, "fused", 0))
kernel = kt.build(spec, config)
x, f1, f2 = kt.random_args(spec, seed=0)
expected = (x.double() @ f1.double()).half().double() @ f2.double()
stride = 2**26  # out's column stride: 47 * 2**26 > 2**31
out = torch.empty(47 * stride + 16, dtype=torch.float16).as_strided((16, 48), (1, stride))
out.fill_(float("nan"))
kernel(x, f1, f2, out=out)
print(((out.double() - expected).norm() / expected.norm()).item())
"""

MONARCH = """
import torch, kt
spec = kt.parse_spec({"op": "monarch", "dtype": "float16", "shape": {"batch": 16, "n": 64, "nblocks": 4}})
config = next(c for c in kt.space(spec).legal if getattr(c, "fused", 0))
kernel = kt.build(spec, config)
x, w1, w2 = kt.random_args(spec, seed=0)
expected = kt.reference(spec)(x.double(), w1.double(), w2.double())
L, S, R = w2.shape
stride = -(-2**31 // (R - 1)) + 3  # w2's last dimension's stride: (R - 1) * stride > 2**31
wide = torch.empty((R - 1) * stride + L * S, dtype=torch.float16).as_strided((L, S, R), (S, 1, stride))
wide.copy_(w2)
y = kernel(x, w1, wide)
print(((y.double() - expected).norm() / expected.norm()).item())
"""

BSR_INT32 = """
import torch, kt, torch.nn.functional as F
spec = {"op": "blocksparse", "dtype": "float16", "shape": {"batch": 16, "in": 64, "out": 32},
        "sparsity": {"block": [16, 16], "density": 1.0, "seed": 0}}
config = next(c for c in kt.space(spec).legal if c.split == 1)
kernel = kt.build(spec, config)
torch.manual_seed(0)
W, x = (torch.randn(32, 64) / 8).half(), torch.randn(16, 64).half()
w = W.to_sparse_bsr((16, 16))  # int64 indices: the offset widened; torch's own BSR in int32 is kt.nn's too
stride = 2**29  # the values' block stride: the last of 8 blocks lies 7 * 2**29 > 2**31 elements in
values = torch.empty(7 * stride + 256, dtype=torch.float16).as_strided((8, 16, 16), (stride, 16, 1))
values.copy_(w.values())
wide = torch.sparse_bsr_tensor(w.crow_indices().int(), w.col_indices().int(), values, w.shape)
expected = F.linear(x.double(), W.double())
y = kernel(x, wide)
print(((y.double() - expected).norm() / expected.norm()).item())
"""

SPLIT_WORKSPACE = """
import torch, kt
spec = {"op": "lowrank", "dtype": "float32", "shape": {"batch": 32, "dims": [128, 16, 32]}}
config = next(c for c in kt.space(spec).legal if c.split == 4 and not c.fused)
module = kt.build(spec, config).module
torch.manual_seed(0)
a, b = torch.randn(32, 128), torch.randn(128, 32)
# the (SPLIT, M, N) fp32 workspace the wrapper makes, with a split stride whose third split lies at 2**31: a
# workspace of M * N under 2**31 elements, 3 * M * N over it, wrapped in 32 bits
stride = 2**30
workspace = torch.empty(3 * stride + 32 * 32).as_strided((4, 32, 32), (stride, 32, 1))
workspace.fill_(float("nan"))
module._launch(module.dense_kernel, workspace, 32, module._dense_args(a, b), {}, [a, b])
expected = a.double() @ b.double()
print(((workspace.sum(0).double() - expected).norm() / expected.norm()).item())
"""


@pytest.mark.parametrize(
    "script",
    [LOWRANK, MONARCH, BSR_INT32, SPLIT_WORKSPACE],
    ids=["lowrank-fused-out", "monarch-fused-w2", "blocksparse-int32-values", "tile-split-workspace"],
)
def test_a_fused_kernel_reaches_an_operand_past_2_31_elements_through_a_large_stride(script, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert float(done.stdout.strip().splitlines()[-1]) < 2e-3, done.stdout
