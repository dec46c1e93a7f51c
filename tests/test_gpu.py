"""On a CUDA GPU only (`pytest -m gpu`): native bf16 dots, real measurements, a measured tune, calibration."""

import json

import pytest
import torch
from conftest import refitted_from, rel_err

import kt
from kt.autotune.runners import Candidate, CudaRunner
from kt.codegen import FAMILIES, GemmConfig, write_source
from kt.dtypes import tolerance
from kt.ir import GemmProblem

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_native_dots_on_the_gpu_match_float64(dtype):
    problem = GemmProblem(1000, 777, 513, dtype=dtype, b_layout="col")
    for config in (
        GemmConfig(128, 128, 64, num_warps=8, num_stages=3),
        GemmConfig(64, 64, 32, num_warps=4, num_stages=4, split_k=4),
    ):
        kernel = kt.build(
            {"op": "dense", "dtype": dtype, "shape": {"m": 1000, "n": 777, "k": 513}, "layout": {"b": "col"}},
            config,
        )
        a, b = problem.random_args(seed=3, device="cuda")
        out = torch.full((1000, 777), float("nan"), dtype=a.dtype, device="cuda")
        kernel(a, b, out=out)
        assert torch.isfinite(out).all()
        assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize(
    "spec",
    [
        {"op": "dense", "shape": {"m": 300, "n": 200, "k": 100}},
        {"op": "monarch", "shape": {"batch": 70, "n": 256, "nblocks": 16}},
        {
            "op": "blocksparse",
            "shape": {"batch": 70, "in": 128, "out": 64},
            "sparsity": {"block": [16, 16], "density": 0.5},
        },
    ],
    ids=lambda spec: spec["op"],
)
def test_a_kernel_given_another_gpus_tensors_runs_there(spec):
    """Triton launches on the current device: with cuda:0 current, tensors on cuda:1 were read from device 0
    (an error, or garbage with peer access on). The generated kernel makes their GPU current for the call."""
    torch.cuda.set_device(0)
    kernel = kt.build(spec)
    args = kt.random_args(spec, seed=5, device="cuda:1")
    out = kernel(*args)
    assert out.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    same = kernel(*[a.to("cuda:0") for a in args])  # the same kernel on the current GPU: the same bits
    assert torch.isfinite(out).all() and torch.equal(out.cpu(), same.cpu())


def test_the_cuda_runner_checks_then_times_with_a_spread_and_energy():
    problem = GemmProblem(2048, 2048, 2048)
    configs = [
        GemmConfig(128, 128, 64, num_warps=8, num_stages=3),
        GemmConfig(64, 64, 32, num_warps=4, num_stages=3),
    ]
    candidates = [
        Candidate(problem, c, str(write_source(FAMILIES["gemm"].render(problem, c)))) for c in configs
    ]
    results = list(CudaRunner(kt.resolve_profile("auto"), workers=2).run(candidates))
    assert [r.status for r in results] == ["ok", "ok"], [r.message for r in results]
    for r in results:
        v = r.values
        assert (
            v["runs"] >= 10
            and 0 < v["runtime_min_ms"] <= v["runtime_p20_ms"] <= v["runtime_ms"] <= v["runtime_p80_ms"]
        )
        assert v["rel_err"] < tolerance("float16") and v["smem_bytes"] > 0
        assert v["timer"] == "cuda_events" and v["timing_regime"] == "l2_flushed" and v["cooldown_ms"] == 200
        assert v["energy_status"] == "ok" or "power_w" not in v, v["energy_status"]
        if "power_w" in v:  # NVML energy counter present
            assert 30 < v["power_w"] < 1500 and v["energy_mj"] > 0 and v["sm_clock_mhz"] > 0
            # the loop's own average, flushes included, is what the card's limit holds; the kernel's own power
            # may pass it (836 W on a 700 W H200, 2026-12-04: the flushes between the calls draw less)
            limit = _power_limit_w()
            assert 30 < v["loop_power_w"] <= (1.05 * limit if limit else 1500), (v["loop_power_w"], limit)
            assert v["cuda_graph"] in (0, 1) and v["flush_energy_mj"] > 0


def _power_limit_w() -> float | None:
    """The enforced power limit in watts of the GPU torch calls cuda:0, matched by UUID (NVML's index 0 is the
    first board on the bus, whatever CUDA_VISIBLE_DEVICES says), or None where NVML cannot say."""
    from kt.autotune.timing import Nvml

    try:
        return Nvml.for_torch_device(0).power_limit_w() or None
    except Exception:
        return None


def test_compile_workers_fork_from_the_zygote_on_a_gpu_machine_and_gpu_workers_start_fresh():
    """The zygote imports torch and Triton where a GPU is: if that initialized the CUDA driver, it would refuse to
    serve (and workers would start fresh, slower; on the H200 of 2026-12-04 it refused when the check was whether
    libcuda was loaded at all). A forked compile worker and a fresh GPU worker both answer."""
    import subprocess

    from kt.autotune.pool import Task, WorkerPool
    from kt.autotune.zygote import ForkedWorker, Zygote

    groups = {"compile": (1, {"TRITON_INTERPRET": "0"}), "measure": (1, {"KT_WORKER_GPU": "1"})}
    with WorkerPool(groups, timeout_s=120) as pool:
        compile_slot, gpu_slot = pool.slots
        assert isinstance(compile_slot.process, ForkedWorker)
        assert isinstance(gpu_slot.process, subprocess.Popen)
        outcomes = list(pool.run([Task(0, "describe", {}, "compile"), Task(1, "describe", {}, "measure")]))
    assert [o.status for o in outcomes] == ["ok", "ok"] and not Zygote._broken, Zygote._broken


def test_nvml_and_torch_in_a_subprocess_both_give_the_gpus_memory_a_tune_holds_an_op_to():
    """A GPU tune refuses an op whose operands alone exceed the GPU's memory (CudaRunner.refuse_unfit): the
    memory comes from NVML where it answers, else from torch in a short-lived process; both must report it, and
    agree with this process's torch."""
    from kt.autotune import gpuinfo

    total = torch.cuda.get_device_properties(0).total_memory
    probed = gpuinfo._from_subprocess()
    assert probed.memory_bytes == total
    nvml = gpuinfo._from_nvml()
    if nvml is not None:
        assert nvml.memory_bytes == pytest.approx(total, rel=0.05)


def test_a_gpu_tune_writes_a_measured_artifact(tmp_path):
    spec = {
        "op": "dense",
        "name": "gpu_small",
        "shape": {"m": 1024, "n": 1024, "k": 1024},
        "tune": {"budget": 4},
    }
    result = kt.tune(spec, db=tmp_path / "t.db", progress=False)
    assert result.measured and result.best.runtime_ms > 0
    meta = json.loads((result.save(tmp_path / "a") / "meta.json").read_text())
    assert meta["measured"] is True and meta["device"]["ran_on"] == torch.cuda.get_device_name()
    assert meta["runtime_stats"]["runs"] >= 10
    assert meta["baseline"]["timed"] and meta["baseline"]["ratio"] == result.baseline_ratio > 0
    assert meta["kernel"] == ("pytorch" if result.best.pytorch else "generated")


def test_a_guided_gpu_tune_refits_a_forest_between_rounds(tmp_path):
    spec = {
        "op": "dense",
        "name": "gpu_guided",
        "shape": {"m": 2048, "n": 1024, "k": 512},
        "tune": {"budget": 24},
    }
    result = kt.tune(spec, db=tmp_path / "t.db", progress=False, strategy="guided")
    rounds = set(result.trace.rounds)
    assert result.measured and len(rounds) >= 2, "a first round of 8, then small rounds"
    assert result.trace.models[0] == "analytic" and refitted_from(result.trace.models[1]), result.trace.models
    assert result.target == kt.resolve_profile("auto") and len(result.rows) <= 24
    assert result.baseline["runtime_ms"] > 0 and result.baseline_ratio > 0, "candidate zero was timed"


def test_calibration_measures_plausible_ceilings():
    from kt.autotune.calibrate import calibrate

    profile = calibrate()
    assert profile.sm_count == torch.cuda.get_device_properties(0).multi_processor_count
    assert 0.3e12 < profile.dram_bandwidth < 20e12
    assert profile.peak_flops["float16"] > profile.peak_flops["float32"] > 0


@pytest.mark.parametrize(
    "problem",
    [
        "monarch:float16",
        "monarch:bfloat16",
        "butterfly:float16",
        "fft:float16",
        "fft:float32",
    ],
)
def test_structured_kernels_on_the_gpu_match_float64_for_sampled_legal_configs(problem):
    """Native 3-D dots for every structured family: a few legal configs of each structure choice, checked with
    a poisoned output against the float64 reference on the full problem."""
    import random

    from kt.autotune.checking import check_kernel
    from kt.codegen import load_source
    from kt.device import get_profile
    from kt.ir.problems import ButterflyProblem, FFTProblem, MonarchProblem

    op, dtype = problem.split(":")
    problems = {
        "monarch": [
            MonarchProblem(1000, (16, 16, 16), (16, 16, 16), dtype),
            MonarchProblem(999, (16, 96, 64), (32, 48, 48), dtype),
        ],
        "butterfly": [ButterflyProblem(1000, 1024, dtype)],
        "fft": [FFTProblem(1000, 4096, dtype, "complex"), FFTProblem(1000, 1024, dtype, "real")],
    }[op]
    rng = random.Random(0)
    for p in problems:
        family = FAMILIES[p.family]
        legal = family.space(p, get_profile("h100")).legal
        by_structure = {}
        for config in legal:
            by_structure.setdefault(tuple(config.structure().items()), []).append(config)
        for configs in by_structure.values():
            for config in rng.sample(configs, min(2, len(configs))):
                result = check_kernel(load_source(family.render(p, config)), p, seed=1, device="cuda")
                assert result.ok, (str(p), config.key(), result.message)


@pytest.mark.parametrize(
    "name",
    [
        "gemm-bfloat16-ieee-batch",
        "gemm-float16-ieee-col",
        "monarchT-float16",
        "butterfly-float32",
        "fft-float16-real-12",
        "fft-float16-complex-16",
        "fft-float32-complex-16",
        "blocksparse-float16-2x3",
        "sum-bfloat16",
        "bsr_grad-bfloat16-2x3",
    ],
)
def test_the_check_on_the_gpu_gives_the_whole_outputs_figures_a_run_of_rows_at_a_time(name, monkeypatch):
    """On CUDA, PyTorch's own path as the kernel: the check's runs of rows (one row a run here) and a
    block-sparse reference's slabs of W (one block-row each) give the figures of one run of everything. On the
    GPU's own problems one run holds every row: only this test runs the other path there."""
    from test_baselines import CASES, baseline_module

    import kt.autotune.checking as checking
    import kt.ir.problems as problems
    from kt.autotune.checking import check_kernel

    problem = CASES[name]
    module = baseline_module(problem)
    whole = check_kernel(module, problem, 0, "cuda")
    monkeypatch.setattr(checking, "RUN_BYTES", 1)
    monkeypatch.setattr(problems, "REFERENCE_SLAB_BYTES", 1)
    runs = check_kernel(module, problem, 0, "cuda")
    assert whole.ok and runs.ok, (whole.message, runs.message)
    assert runs.rel_err == pytest.approx(whole.rel_err, rel=1e-6)


@pytest.mark.parametrize(
    "op", ["blocksparse:float16", "blocksparse:bfloat16", "lowrank:float16", "lowrank:float32", "sum:float16"]
)
def test_sparse_kernels_on_the_gpu_match_float64_for_sampled_legal_configs(op):
    """Native dots for the tile-sum families (block-sparse, low-rank chains, sums): a few legal configs of each
    structure choice, checked with a poisoned output against the float64 reference on the full problem."""
    import random

    from kt.autotune.checking import check_kernel
    from kt.codegen import family_for, load_source
    from kt.device import get_profile
    from kt.ir import op_from_spec

    name, dtype = op.split(":")

    def blocksparse(batch, inp, out, **sparsity):
        return {"op": "blocksparse", "shape": {"batch": batch, "in": inp, "out": out}, "sparsity": sparsity}

    def lowrank(batch, *dims):
        return {"op": "lowrank", "shape": {"batch": batch, "dims": list(dims)}}

    specs = {
        "blocksparse": [
            blocksparse(1000, 1024, 768, block=[64, 32], density=0.1, seed=0),
            blocksparse(999, 960, 512, block=[16, 48], pattern="banded", width=1),
            blocksparse(777, 256, 256, block=[8, 8], density=0.05, seed=1),  # blocks under a tile, empty rows
        ],
        "lowrank": [
            lowrank(1000, 1024, 64, 768),
            lowrank(999, 777, 17, 555),
            lowrank(1000, 512, 17, 300, 1000),
        ],
        "sum": [
            {
                "terms": [
                    blocksparse(1000, 1024, 1024, block=[64, 64], density=0.1),
                    lowrank(1000, 1024, 32, 1024),
                ]
            },
            {
                "terms": [
                    blocksparse(999, 512, 768, block=[64, 64], density=0.2, seed=3),
                    blocksparse(999, 512, 768, block=[32, 64], pattern="diagonal"),  # fused=0 only
                    lowrank(999, 512, 5, 77, 768),
                ]
            },
        ],
    }[name]
    rng = random.Random(0)
    for data in specs:
        spec = kt.parse_spec({**data, "op": data.get("op", "sum"), "dtype": dtype})
        problem = op_from_spec(spec).problem
        family = family_for(problem)
        by_structure = {}
        for config in family.space(problem, get_profile("h100")).legal:
            by_structure.setdefault(config.fused, []).append(config)
        assert sorted(by_structure) == [s["fused"] for s in problem.structures()]
        for configs in by_structure.values():
            for config in rng.sample(configs, min(2, len(configs))):
                result = check_kernel(
                    load_source(family.render(problem, config)), problem, seed=1, device="cuda"
                )
                assert result.ok, (str(problem), config.key(), result.message)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "blocksparse", "monarch", "butterfly", "sum"])
def test_kt_nn_layers_forward_and_backward_on_the_gpu_match_float64_autograd(kind):
    """Every kt.nn layer in fp16 on the GPU: output and every gradient against float64 autograd of the dense or
    plain-torch formula with the same weights (the kernels are the cost model's picks)."""
    import kt.nn
    from kt.ir.structured import butterfly_reference, monarch_reference

    torch.manual_seed(0)
    half = dict(dtype=torch.float16, device="cuda")
    layer = {
        "dense": lambda: kt.nn.DenseLinear(1000, 777, **half),
        "lowrank": lambda: kt.nn.LowRankLinear(1024, 768, 64, **half),
        "blocksparse": lambda: kt.nn.BlockSparseLinear(1024, 768, (64, 32), density=0.1, **half),
        "monarch": lambda: kt.nn.MonarchLinear(1024, 1024, 32, **half),
        "butterfly": lambda: kt.nn.ButterflyLinear(1024, **half),
        "sum": lambda: kt.nn.Sum(
            kt.nn.BlockSparseLinear(1024, 1024, (64, 64), density=0.1, bias=False, **half),
            kt.nn.LowRankLinear(1024, 1024, 32, bias=False, **half),
        ),
    }[kind]()
    x = torch.randn(999, layer.in_features, **half).requires_grad_()
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    params = dict(layer.named_parameters())
    ref_params = {name: p.detach().double().requires_grad_() for name, p in params.items()}
    x64 = x.detach().double().requires_grad_()

    def reference(x, p, module=layer, prefix=""):
        if isinstance(module, kt.nn.Sum):
            return sum(reference(x, p, t, f"terms.{i}.") for i, t in enumerate(module.terms)) + p["bias"]
        bias = p[prefix + "bias"] if not prefix else 0
        if isinstance(module, kt.nn.DenseLinear):
            return torch.nn.functional.linear(x, p["weight"]) + bias
        if isinstance(module, kt.nn.LowRankLinear):
            return x @ p[prefix + "factors.0"] @ p[prefix + "factors.1"] + bias
        if isinstance(module, kt.nn.BlockSparseLinear):
            values = p[prefix + "values"]
            dense = torch.zeros(
                module.out_features, module.in_features, dtype=values.dtype, device=values.device
            )
            bo, bi = module.block
            for n, (r, c) in enumerate(zip(*module.mask().nonzero())):
                dense = dense.index_put(
                    (
                        torch.arange(r * bo, (r + 1) * bo, device=dense.device)[:, None],
                        torch.arange(c * bi, (c + 1) * bi, device=dense.device)[None, :],
                    ),
                    values[n],
                )
            return torch.nn.functional.linear(x, dense) + bias
        if isinstance(module, kt.nn.MonarchLinear):
            return monarch_reference(x, p["w1"], p["w2"]) + bias
        return butterfly_reference(x, p["twiddles"]) + bias

    y64 = reference(x64, ref_params)
    y64.backward(dy.double())
    limit = 2e-2 if kind == "butterfly" else 5e-3  # ten fp16 stages for the butterfly of n = 1024
    assert rel_err(y, y64) < limit
    assert rel_err(x.grad, x64.grad) < limit
    for name, p in params.items():
        assert rel_err(p.grad, ref_params[name].grad) < limit, name


def test_kt_bench_times_a_case_against_pytorch_and_writes_its_report(tmp_path):
    """A short kt bench (one quick-tune case) on the GPU: the report's row is timed on both sides, with a ratio."""
    import csv

    from kt.bench import run_bench

    result = run_bench(tmp_path / "bench", minutes=3, budget=4, only="skinny", progress=False)
    with open(result.out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (tune,) = [r for r in rows if r["part"] == "tunes"]
    assert tune["status"] == "ok" and float(tune["kt_ms"]) > 0 and float(tune["baseline_ms"]) > 0
    assert float(tune["ratio"]) > 0 and tune["gpu_run"] == "True"
    smoke = [r for r in rows if r["part"] == "smoke" and r["status"] == "ok"]
    assert smoke and all(r["timed"] == "True" for r in smoke)
    assert "skinny" in result.report.read_text()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", ["dense", "lowrank", "monarch", "blocksparse"])
def test_kt_nn_per_sample_gradients_and_tangents_on_the_gpu_match_float64(kind, dtype):
    """torch.func.vmap(grad) and jvp over a kt.nn layer on the GPU (the batched products of its vmap rule run
    kt's generated kernels, native bf16 dots included) against the same transforms of the float64 formula."""
    import kt.nn
    from kt.ir.structured import monarch_reference

    torch.manual_seed(0)
    opts = dict(dtype=dtype, device="cuda")
    layer = {
        "dense": lambda: kt.nn.DenseLinear(1000, 777, **opts),
        "lowrank": lambda: kt.nn.LowRankLinear(1024, 768, 64, **opts),
        "monarch": lambda: kt.nn.MonarchLinear(1024, 1024, 32, **opts),
        # the 8 samples' gradient blocks in one call, their patterns on the diagonal of a larger one
        "blocksparse": lambda: kt.nn.BlockSparseLinear(1024, 768, (32, 32), density=0.25, seed=0, **opts),
    }[kind]()
    x = torch.randn(8, 33, layer.in_features, **opts)
    dy = torch.randn(8, 33, layer.out_features, **opts)
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def formula(p, x):
        if kind == "dense":
            return torch.nn.functional.linear(x, p["weight"]) + p["bias"]
        if kind == "lowrank":
            return x @ p["factors.0"] @ p["factors.1"] + p["bias"]
        if kind == "monarch":
            return monarch_reference(x, p["w1"], p["w2"]) + p["bias"]
        mask = torch.from_numpy(layer.mask()).to(x.device)
        w = (
            p["values"]
            .new_zeros(*mask.shape, *layer.block)
            .index_put(mask.nonzero(as_tuple=True), p["values"])
        )
        return torch.nn.functional.linear(x, w.transpose(1, 2).reshape(768, 1024)) + p["bias"]

    def loss(p, x, dy):
        return (torch.func.functional_call(layer, p, (x,)).float() * dy.float()).sum()

    def loss64(p, x, dy):
        return (formula(p, x) * dy).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0))
    per_sample64 = torch.func.vmap(torch.func.grad(loss64, argnums=(0, 1)), in_dims=(None, 0, 0))
    (dp, dx) = per_sample(params, x, dy)
    params64 = {n: p.double() for n, p in params.items()}
    (dp64, dx64) = per_sample64(params64, x.double(), dy.double())
    limit = 5e-3 if dtype == torch.float16 else 2e-2
    assert dx.shape == x.shape and rel_err(dx, dx64) < limit
    for name in params:
        assert dp[name].shape == (8, *params[name].shape) and rel_err(dp[name], dp64[name]) < limit, name
    # forward mode: the tangent of every parameter and of x
    tangents = ({n: torch.randn_like(p) for n, p in params.items()}, torch.randn_like(x))
    _, y_t = torch.func.jvp(lambda p, x: torch.func.functional_call(layer, p, (x,)), (params, x), tangents)
    _, y_t64 = torch.func.jvp(
        formula,
        (params64, x.double()),
        ({n: t.double() for n, t in tangents[0].items()}, tangents[1].double()),
    )
    assert rel_err(y_t, y_t64) < limit


class _BlockSparseAsOp(torch.nn.Module):
    """A block-sparse kernel from kt.build through Kernel.as_op, its BSR weight as the three parts."""

    def __init__(self, rows: int, device: str = "cuda"):
        super().__init__()
        spec = kt.parse_spec(
            {
                "name": "bsr_as_op",
                "op": "blocksparse",
                "dtype": "float16",
                "shape": {"batch": rows, "in": 1024, "out": 768},
                "sparsity": {"block": [32, 32], "density": 0.25, "seed": 0},
            }
        )
        self.op = kt.build(spec, device="h100").as_op()
        _, w = kt.random_args(spec, seed=1, device=device)
        self.register_buffer("crow", w.crow_indices())
        self.register_buffer("col", w.col_indices())
        self.values = torch.nn.Parameter(w.values())
        self.in_features, self.out_features = 1024, 768

    def forward(self, x):
        return self.op(x, self.crow, self.col, self.values)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "blocksparse", "monarch", "blocksparse-as_op"])
def test_a_kt_nn_training_step_replays_in_a_cuda_graph(kind):
    """A kt.nn layer's forward and backward captured in one CUDA graph (whole-network capture, as
    torch.compile's mode="reduce-overhead" and serving stacks use graphs) replay to eager's output and
    gradients for new inputs: nothing in a call syncs with the host, copies from it or allocates outside the
    graph's pool once the kernels are chosen (a block-sparse backward's index tensors were made in each call;
    a block-sparse Kernel.as_op read the weight's indices back to check its pattern in each call)."""
    import kt.nn

    torch.manual_seed(0)
    opts = dict(dtype=torch.float16, device="cuda")
    layer = {
        "dense": lambda: kt.nn.DenseLinear(1024, 768, **opts),
        "lowrank": lambda: kt.nn.LowRankLinear(1024, 768, 64, **opts),
        "blocksparse": lambda: kt.nn.BlockSparseLinear(1024, 768, (32, 32), density=0.25, seed=0, **opts),
        "monarch": lambda: kt.nn.MonarchLinear(1024, 1024, 32, **opts),
        "blocksparse-as_op": lambda: _BlockSparseAsOp(64),
    }[kind]()
    leaves = [torch.randn(64, layer.in_features, **opts).requires_grad_(), *layer.parameters()]
    static_x, static_dy = leaves[0], torch.randn(64, layer.out_features, **opts)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # kernels chosen and compiled before the capture, as PyTorch's docs ask
        for _ in range(3):
            for leaf in leaves:
                leaf.grad = None
            layer(static_x).backward(static_dy)
    torch.cuda.current_stream().wait_stream(side)
    for leaf in leaves:
        leaf.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
        static_y.backward(static_dy)
    for _ in range(2):
        x, dy = torch.randn_like(static_x), torch.randn_like(static_dy)
        with torch.no_grad():
            static_x.copy_(x)
            static_dy.copy_(dy)
        graph.replay()
        torch.cuda.synchronize()
        x.requires_grad_()
        y = layer(x)
        want = torch.autograd.grad(y, [x, *leaves[1:]], dy)
        assert rel_err(static_y, y) < 1e-3
        for leaf, grad in zip(leaves, want):
            assert rel_err(leaf.grad, grad) < 1e-3
