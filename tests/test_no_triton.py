"""Where Triton is not installed (macOS, Windows: pip has no Triton for them, and kt's dependency on it is marked
Linux-only), kt.nn's layers run their PyTorch path on CPU tensors, and what needs Triton says so in one line.
Before, kt.nn's CPU path imported Triton to load its PyTorch modules (an ImportError traceback at a layer's first
call). Each case runs in a process of its own, with Triton blocked as Python blocks a module: None in
sys.modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys; sys.modules['triton'] = None\n"


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**__import__("os").environ, "KT_CACHE_DIR": str(tmp_path / "cache"), "TRITON_INTERPRET": "0"},
    )


def test_kt_nn_layers_train_on_the_cpu_without_triton(tmp_path):
    code = """
import torch
import torch.nn.functional as F
import kt.nn as knn

torch.manual_seed(0)
x = torch.randn(3, 5, 16, requires_grad=True)
low = knn.LowRankLinear(16, 24, rank=4)
y = low(x)
want = x @ low.factors[0] @ low.factors[1] + low.bias
assert (y - want).abs().max() < 1e-5, (y - want).abs().max()
dense = knn.DenseLinear(16, 24)
assert (dense(x) - F.linear(x, dense.weight, dense.bias)).abs().max() < 1e-5
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
knn.structurize(model, {
    "0": lambda l: knn.MonarchLinear.from_dense(l, nblocks=4),
    "2": lambda l: knn.Sum.from_dense(l, (8, 8), density=0.5, rank=2),
})
model.append(knn.BlockSparseLinear(16, 16, (8, 8), density=0.5))
model.append(knn.ButterflyLinear(16, 16))
loss = model(x).square().mean() + y.square().mean()
loss.backward()
assert all(p.grad is not None for p in model.parameters()) and x.grad is not None
compiled = torch.compile(model)
assert (compiled(x) - model(x)).abs().max() < 1e-4
assert sys.modules["triton"] is None  # still blocked: nothing imported it
print("ok")
"""
    done = run(code, tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_what_needs_triton_says_so_in_one_line(tmp_path):
    line = "needs Triton, which is not installed here: it runs on Linux (pip install triton)"
    main = "from kt.__main__ import main; sys.argv = ['kt'] + {args!r}; sys.exit(main())"
    # kt tune: before its model or its note; a command deep in Triton (kt space compiles its rules' kernels)
    for args, who in [
        (["tune", "examples/dense.yaml", "--budget", "2", "--db", str(tmp_path / "t.db")], "kt tune"),
        (["space", "examples/dense.yaml"], "this command"),
    ]:
        done = run(main.format(args=args), tmp_path)
        assert done.returncode == 2, done.stderr[-3000:]
        assert (
            done.stderr.strip()
            == f"kt: error: {who} {line}; without it kt.nn's layers run their PyTorch path on CPU tensors, and kt tunes nothing"
        ), done.stderr[-3000:]
        assert not (tmp_path / "t.db").exists()
    code = """
import kt
try:
    kt.tune(kt.parse_spec({"name": "d", "op": "dense", "shape": {"m": 16, "n": 16, "k": 16}}), budget=1)
except kt.KtError as exc:
    print("tune:", exc)
spec = kt.parse_spec({"name": "d", "op": "dense", "shape": {"m": 16, "n": 16, "k": 16}})
try:
    kt.build(spec, {"block_m": 16, "block_n": 16, "block_k": 16})
except ImportError as exc:
    print("build:", exc)
print(kt.build(spec, "pytorch"))  # the PyTorch path needs no Triton
"""
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.splitlines()
    assert (
        said[0]
        == f"tune: tuning {line}; without it kt.nn's layers run their PyTorch path on CPU tensors, and kt tunes nothing"
    )
    assert said[1].startswith("build: ") and said[1].endswith(
        f"(a Triton kernel) {line}; without it kt.nn's layers run their PyTorch path on CPU tensors, and kt tunes nothing"
    )
    assert "PyTorch" in said[2]
