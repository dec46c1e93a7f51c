"""Two ranks on the CPU (gloo) training a model of kt.nn layers for STEPS steps under DDP, DDP under
torch.compile or FSDP2's fully_shard (MODE ddp, ddp-compiled, fsdp); rank 0 saves the trained parameters. Run
by tests/test_nn_distributed.py as `python distributed_worker.py MODES PORT OUT` (MODES: a comma-separated
list, run one after the other by the same two ranks, each into OUT/MODE.pt); `model()`, `batch()` and `loss()`
are that test's reference too."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kt.nn as knn

WORLD = 2
STEPS = 2
LR = 0.1


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        knn.LowRankLinear(32, 48, rank=8),
        torch.nn.ReLU(),
        knn.BlockSparseLinear(48, 32, block=(16, 16), mask=[[1, 0, 1], [0, 1, 1]]),
        knn.MonarchLinear(32, 32, nblocks=4),
        knn.ButterflyLinear(32),
        knn.Sum(
            knn.BlockSparseLinear(32, 32, block=(16, 16), mask=[[0, 1], [1, 1]], bias=False),
            knn.LowRankLinear(32, 32, rank=4, bias=False),
        ),
        knn.DenseLinear(32, 16),
    )


def batch(step: int, rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(5, 32, generator=generator)


def loss(y: torch.Tensor) -> torch.Tensor:
    return y.square().sum()


def _train(mode: str, rank: int) -> dict[str, torch.Tensor]:
    net = model()
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(net)
    elif mode == "ddp-compiled":  # TorchDynamo's DDPOptimizer splits the graph at DDP's gradient buckets
        wrapped = torch.compile(torch.nn.parallel.DistributedDataParallel(net))
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in net:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        wrapped = fully_shard(net)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=LR)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss(wrapped(batch(step, rank))).backward()
        optimizer.step()
    state = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in wrapped.named_parameters()
    }
    # every collective done and its work released before the next mode (or the group) goes: a gloo thread
    # that freed a work object during the interpreter's exit aborted the process (1 run in 8)
    dist.barrier()
    del wrapped, net, optimizer
    return state


def _run(rank: int, modes: str, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    if sys.platform.startswith(
        "linux"
    ):  # gloo's own connections on the loopback too, whatever the hostname is
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    for mode in modes.split(","):  # each mode on a model of its own, in one process group
        state = _train(mode, rank)
        if rank == 0:
            torch.save(state, os.path.join(out, f"{mode}.pt"))
        del state
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=tuple(sys.argv[1:4]), nprocs=WORLD)
