"""Forward + backward of each kt.nn layer against nn.Linear and against the reference implementation a user would
write without kt, on the same device in the same run, with the same timer.

On the GPU (`--device cuda`, the default), each layer is fp16, batch 8192, 4096 features unless said, timed with
kt's CUDA timer. On the CPU (`--device cpu`), each layer is float32, batch 64, 512 features, timed by the wall
clock (median of 30 steps after 3 warm-up steps): there kt.nn runs the op's PyTorch path (kt.nn.selection), and
the figure to read is how close a kt.nn layer comes to the plain formula (the issue-17 goal: within 3x). For each
layer: kt's layer, an nn.Linear of the same size, and the
plain-torch formula of the structure (two matmuls, two torch.bmm, the per-level butterfly loop, torch.fft.fft, F.linear with
a BSR weight where PyTorch can differentiate it), each run as `y = f(x); y.backward(dy)`. With `--budget N` every
kernel the layer runs (forward and backward, as `kt.nn.selections()` lists them after one warm-up step) is
tuned first with `kt.tune` into the tuning database the layers read (`--db`, default kt's); with `--budget 0`
the layers run the cost model's picks. Each layer's output is compared with the plain-torch formula's on the same
inputs (`rel_err` in the CSV) before anything is timed; a layer past its dtype's tolerance is named on stderr
and the run exits 1.

    python benchmarks/nn_layers.py --budget 32 --csv benchmarks/results/nn_h100.csv
    python benchmarks/nn_layers.py --device cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kt.autotune.figures import check_outputs

SIZES = {"cuda": (8192, 4096, torch.float16), "cpu": (64, 512, torch.float32)}  # batch, features, dtype


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]  # the kt layer (on the GPU, fp16)
    baseline: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]  # the plain-torch formula
    baseline_name: str
    complex_input: bool = False


def _linear(layer):
    return lambda x: nn.functional.linear(x, layer.weight, layer.bias)


def _lowrank(layer):
    return lambda x: x @ layer.factors[0] @ layer.factors[1] + layer.bias


def _monarch(layer):
    from kt.ir.structured import monarch_reference

    return lambda x: monarch_reference(x, layer.w1, layer.w2) + layer.bias


def _butterfly(layer):
    from kt.ir.structured import butterfly_reference

    return lambda x: butterfly_reference(x, layer.twiddles) + layer.bias


def _bsr(layer):
    return lambda x: nn.functional.linear(x, layer.weight_bsr(), layer.bias)


def _bsr_dense(layer):
    """The CPU user's formula: torch 2.13 cannot run F.linear on a BSR weight there, so its dense form (made in
    each step, so that the gradient reaches the stored blocks)."""
    return lambda x: nn.functional.linear(x, layer.weight_bsr().to_dense(), layer.bias)


def _fft(layer):
    return lambda x: torch.fft.fft(x)


def cases(device: str = "cuda") -> list[Case]:
    import kt.nn

    _, features, dtype = SIZES[device]
    blocks, butterfly = (64, 1024) if device == "cuda" else (8, 512)

    def on(factory):
        return lambda: factory().to(device=device)

    return [
        Case("dense", on(lambda: kt.nn.DenseLinear(features, features, dtype=dtype)), _linear, "F.linear"),
        Case(
            "lowrank r=64",
            on(lambda: kt.nn.LowRankLinear(features, features, 64, dtype=dtype)),
            _lowrank,
            "two matmuls",
        ),
        Case(
            "blocksparse 64x64 10%",
            on(lambda: kt.nn.BlockSparseLinear(features, features, (64, 64), density=0.1, dtype=dtype)),
            _bsr if device == "cuda" else _bsr_dense,
            "F.linear with the BSR weight" if device == "cuda" else "F.linear with W.to_dense()",
        ),
        Case(
            f"monarch {blocks} blocks",
            on(lambda: kt.nn.MonarchLinear(features, features, blocks, dtype=dtype)),
            _monarch,
            "two torch.bmm",
        ),
        Case(
            f"butterfly n={butterfly}",
            on(lambda: kt.nn.ButterflyLinear(butterfly, dtype=dtype)),
            _butterfly,
            "per-level loop",
        ),
        Case(
            f"fft n={features} fp32",
            on(lambda: kt.nn.FFT(features)),
            _fft,
            "torch.fft.fft",
            complex_input=True,
        ),
    ]


def _inputs(case: Case, layer: nn.Module, device: str) -> torch.Tensor:
    batch, _, dtype = SIZES[device]
    features = getattr(layer, "in_features", None) or layer.n
    if case.complex_input:
        return torch.randn(batch, features, dtype=torch.complex64, device=device)
    return torch.randn(batch, features, dtype=dtype, device=device)


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    """ms per call: kt's CUDA timer on the GPU, the wall clock's median on the CPU (no figure of one is ever
    compared with the other)."""
    from kt.autotune.timing import TimingSettings, time_cuda, time_wall

    if device == "cuda":
        return lambda fn: time_cuda(fn)["runtime_ms"]
    settings = TimingSettings(min_runs=30)

    def wall(fn):
        for _ in range(2):  # warm-up beyond time_wall's one
            fn()
        return time_wall(fn, settings)["wall_ms"]

    return wall


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else platform's), its cores and torch's threads."""
    import platform

    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _step(f, x, dy) -> Callable[[], None]:
    def run():
        f(x).backward(dy)

    return run


def _tune_selected(budget: int) -> tuple[int, float]:
    """Tune every kernel the layers selected from the cost model; returns (kernels tuned, seconds)."""
    import kt
    import kt.nn
    from kt.nn import selection

    started, tuned = time.perf_counter(), 0
    for chosen in kt.nn.selections():
        if chosen.source == "cost model":
            kt.tune(chosen.spec, budget=budget)
            tuned += 1
    selection._SELECTED.clear()
    return tuned, time.perf_counter() - started


def bench(case: Case, budget: int, device: str = "cuda") -> dict:
    from kt.autotune.checking import relative_error
    from kt.dtypes import tolerance

    time_ms = _timer(device)
    torch.manual_seed(0)
    layer = case.make()
    x = _inputs(case, layer, device).requires_grad_()
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)  # the warm-up step selects every kernel the layer runs
    tuned, tune_s = _tune_selected(budget) if budget else (0, 0.0)
    baseline = case.baseline(layer)
    row = {
        "layer": case.name,
        "baseline": case.baseline_name,
        "kernels_tuned": tuned,
        "tune_s": round(tune_s, 1),
    }
    with torch.no_grad():
        reference = baseline(x.detach())
        row["rel_err"] = relative_error(layer(x.detach()), reference)
    real = x.real if x.is_complex() else x
    row["tolerance"] = tolerance(str(real.dtype).removeprefix("torch."), reduction=real.shape[-1])
    row["kt_ms"] = time_ms(_step(layer, x, dy))
    if case.complex_input:
        row["linear_ms"] = None  # an FFT has no nn.Linear of the same type
    else:
        dense = nn.Linear(x.shape[-1], y.shape[-1], device=device, dtype=x.dtype)
        row["linear_ms"] = time_ms(_step(dense, x, dy))
    try:
        row["baseline_ms"] = time_ms(_step(baseline, x, dy))
    except (RuntimeError, NotImplementedError) as exc:  # e.g. no backward for a sparse weight in PyTorch
        row["baseline_ms"] = None
        row["baseline_error"] = str(exc).splitlines()[0][:200]
    row["vs_linear"] = row["linear_ms"] / row["kt_ms"] if row["linear_ms"] else None
    row["vs_baseline"] = row["baseline_ms"] / row["kt_ms"] if row["baseline_ms"] else None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the layers whose name contains this text")
    parser.add_argument("--budget", type=int, default=32, help="configs to measure per kernel (0: no tuning)")
    parser.add_argument("--db", default=None, help="tuning database the layers read and the tunes write")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--list", action="store_true", help="print the layers it would run and exit")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda: fp16 layers, kt's CUDA timer; cpu: float32 layers at batch 64, 512 features, wall clock",
    )
    args = parser.parse_args(argv)
    check_outputs(parser, {"--csv": args.csv}, [args.db])
    if args.budget < 0:
        parser.error("--budget must be 0 or more")
    if args.device == "cpu" and args.budget:
        args.budget = 0  # nothing to tune: CPU tensors run the op's PyTorch path
    chosen = [c for c in cases(args.device) if args.only in c.name]
    if not chosen:
        parser.error(f"--only {args.only!r} matches no layer")
    if args.list:
        for case in chosen:
            print(f"{case.name}: against nn.Linear and {case.baseline_name}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "nn_layers: needs a CUDA GPU; this machine has none (--device cpu times the CPU path)",
            file=sys.stderr,
        )
        return 2
    if args.db:
        os.environ["KT_DB"] = str(Path(args.db).absolute())
    from kt.autotune.figures import command_line, run_context, write_csv

    context = run_context(
        _cpu_name() if args.device == "cpu" else None, command_line("benchmarks/nn_layers.py", argv)
    )
    rows = [{**context, **bench(case, args.budget, args.device)} for case in chosen]
    if args.csv:
        write_csv(args.csv, rows)
    print(f"\n{context['device']}, {context['date']}, `{context['command']}`\n")
    print("| layer (fwd+bwd) | kt ms | nn.Linear ms | linear / kt | baseline | baseline ms | baseline / kt |")
    print("|---|---|---|---|---|---|---|")

    def show(value, pattern):
        return pattern.format(value) if value is not None else "-"

    for r in rows:
        print(
            f"| {r['layer']} | {r['kt_ms']:.3f} | {show(r['linear_ms'], '{:.3f}')} | "
            f"{show(r['vs_linear'], '{:.2f}x')} | {r['baseline']} | {show(r['baseline_ms'], '{:.3f}')} | "
            f"{show(r['vs_baseline'], '{:.2f}x')} |"
        )
    # a layer whose output is not the formula's was timed and tabled like any other, its error in the CSV alone
    wrong = [r for r in rows if not r["rel_err"] <= r["tolerance"]]
    for r in wrong:
        print(
            f"nn_layers: {r['layer']}: kt's output is off the formula's by a relative error of {r['rel_err']:.2e}, "
            f"over the {r['tolerance']:.0e} a correct kernel stays under: its times above are of a wrong result",
            file=sys.stderr,
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
