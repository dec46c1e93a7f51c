"""kt.nn layers train under DistributedDataParallel (eager and under torch.compile) and FSDP2's fully_shard as
they do alone: two ranks on the
CPU (gloo), two SGD steps, the same parameters as one process stepping on the mean of the ranks' losses. DDP
averages the gradients through its hooks on the parameters; FSDP2 shards each layer's parameters as DTensors
and swaps in gathered ones for each forward and backward, so a layer that held on to the weight tensors of
an earlier call would step with stale values (a DenseLinear that kept its list of weights did: its FSDP run's
steps were 0.28 of the largest step off; under DDP, which swaps nothing, it passed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker  # beside this file, which pytest puts on sys.path
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch built without distributed"
)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def reference() -> dict[str, torch.Tensor]:
    model = worker.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=worker.LR)
    for step in range(worker.STEPS):
        optimizer.zero_grad()
        losses = [worker.loss(model(worker.batch(step, rank))) for rank in range(worker.WORLD)]
        (sum(losses) / worker.WORLD).backward()
        optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


MODES = ["ddp", "ddp-compiled", "fsdp"]


def has_fully_shard() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def trained_by_two_ranks(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The two ranks train every mode this torch has, one after the other, in one `distributed_worker.py` run
    (each rank's process imports torch and kt once, not once a mode): the run and the folder of MODE.pt."""
    out = tmp_path_factory.mktemp("distributed")
    modes = [mode for mode in MODES if mode != "fsdp" or has_fully_shard()]
    done = subprocess.run(
        [sys.executable, str(Path(worker.__file__)), ",".join(modes), free_port(), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, out


@pytest.mark.parametrize("mode", MODES)
def test_kt_layers_train_under_ddp_and_fsdp_as_in_one_process(mode, trained_by_two_ranks):
    if mode == "fsdp" and not has_fully_shard():
        pytest.skip("FSDP2's fully_shard is in torch 2.6 and later")
    done, out = trained_by_two_ranks
    assert done.returncode == 0, done.stderr[-3000:]
    trained = torch.load(out / f"{mode}.pt")
    expected = reference()
    names = {name.removeprefix("_orig_mod.").removeprefix("module."): name for name in trained}
    assert set(names) == set(expected)
    start = dict(worker.model().named_parameters())
    for name, value in expected.items():
        step, got = value - start[name], trained[names[name]] - start[name]  # what the two steps changed
        assert step.abs().max() > 1e-3, f"{name} hardly moved"
        error = float((got - step).abs().max() / step.abs().max())
        assert error < 1e-4, f"{mode} {name}: the steps differ by {error:.1e} of the largest step"
