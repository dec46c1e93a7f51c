"""Structurize a small MLP with kt layers, train it a few steps, and compare it with the dense model.

    python examples/structurize_mlp.py            # on the GPU if there is one, else on the CPU
    python examples/structurize_mlp.py --steps 50 --width 512
    KT_INTERPRET=1 python examples/structurize_mlp.py   # CPU: kt's kernels in Triton's interpreter (slow)

The MLP's hidden layers become a low-rank, a block-sparse and a Monarch layer (`kt.nn.structurize` with
`from_dense` projections of the dense layers' weights); the task is to regress a fixed random "teacher" MLP.
On a GPU, kt picks each layer's kernel for its batch bucket from the tuning database or artifacts, else from the
cost model, and logs which (run `kt tune` on the specs `kt.nn.selections()` lists to replace a fallback). On CPU
tensors the layers run each op's PyTorch path (two torch.bmm for the Monarch layer, F.linear on the block-sparse
weight, torch.linalg.multi_dot), with kt's autograd, unless KT_INTERPRET=1 asks for kt's kernels.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from torch import nn


def mlp(width: int, depth: int, features: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(features, width), nn.GELU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, features))
    return nn.Sequential(*layers)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structurized(width: int, features: int, device: str = "cpu") -> tuple[nn.Module, list[str]]:
    """The student MLP with three hidden layers made structured (low-rank, block-sparse, Monarch)."""
    import kt.nn

    student = mlp(width, 3, features).to(device)
    replaced = kt.nn.structurize(
        student,
        {
            "2": lambda linear: kt.nn.LowRankLinear.from_dense(linear, rank=max(1, width // 8)),
            "4": lambda linear: kt.nn.BlockSparseLinear.from_dense(linear, block=(16, 16), density=0.25),
            "6": lambda linear: kt.nn.MonarchLinear.from_dense(linear, nblocks=4),
        },
    )
    return student, replaced


def example_model() -> tuple[nn.Module, torch.Tensor]:
    """The structurized MLP and an input batch, for `kt tune --from-model examples/structurize_mlp.py:example_model`
    (which tunes every op it runs: the dense layers and the three structured ones)."""
    torch.manual_seed(0)
    model, _ = structurized(64, 32)
    return model, torch.randn(48, 32)


def student_and_teacher(
    width: int, features: int, device: str = "cpu"
) -> tuple[nn.Module, list[str], nn.Module]:
    """The student first, from seed 0 as `example_model` makes it, so that at the default sizes its ops (the
    block-sparse layer's pattern included) are the ones `kt tune --from-model ...:example_model` tuned (the
    teacher drawn first gave the student other blocks, whose artifact was never found); then the teacher."""
    torch.manual_seed(0)
    student, replaced = structurized(width, features, device)
    torch.manual_seed(1)
    teacher = mlp(width, 3, features).to(device)
    return student, replaced, teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    import kt.nn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    student, replaced, teacher = student_and_teacher(args.width, args.features, device)
    dense_count = parameters(mlp(args.width, 3, args.features))
    print(f"structurized {replaced}: {parameters(student)} parameters against {dense_count} dense")
    optimizer = torch.optim.Adam(student.parameters(), lr=args.lr)
    for step in range(args.steps):
        started = time.perf_counter()
        x = torch.randn(args.batch, args.features, device=device)
        with torch.no_grad():
            target = teacher(x)
        loss = nn.functional.mse_loss(student(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step:3d}  loss {loss.item():.5f}  ({(time.perf_counter() - started) * 1e3:.1f} ms)")
    print("kernels:")
    print(kt.nn.selections())


if __name__ == "__main__":
    main()
