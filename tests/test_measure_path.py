"""The GPU's measure path, run on the CPU: the worker's measure step for every family and dtype (the interpreter as
the device, the wall-clock timer in place of CUDA events), the dry-run runner's rows, crashes and timeouts there,
and the bugs a first GPU run would have hit (each test here failed on the code before its fix)."""

import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import kt_cli

import kt
from kt.autotune import worker
from kt.autotune.database import Database
from kt.autotune.pool import Task, WorkerPool
from kt.autotune.runners import DRY_RUN_DEVICE, Candidate, DryRunner, Stage
from kt.autotune.timing import DRY_RUN_TIMING, WALL_TIMER, Nvml
from kt.codegen import FAMILIES, write_source
from kt.device import H100
from kt.ir import op_from_spec

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's dry run of the measure path")


def small_specs() -> dict[str, dict]:
    """One small op of every family (tiny enough for full problems in the interpreter)."""
    bsr = {"block": [8, 8], "density": 0.5, "seed": 1}
    return {
        "dense": {"op": "dense", "shape": {"m": 20, "n": 24, "k": 19}},
        "monarch": {"op": "monarch", "shape": {"batch": 9, "n": 64, "nblocks": 4}},
        "butterfly": {"op": "butterfly", "shape": {"batch": 9, "n": 16}},
        "fft": {"op": "fft", "shape": {"batch": 6, "n": 16}},
        "blocksparse": {"op": "blocksparse", "shape": {"batch": 9, "in": 32, "out": 24}, "sparsity": bsr},
        "lowrank": {"op": "lowrank", "shape": {"batch": 9, "dims": [24, 5, 16]}},
        "sum": {
            "op": "sum",
            "terms": [
                {"op": "blocksparse", "shape": {"batch": 9, "in": 32, "out": 24}, "sparsity": bsr},
                {"op": "lowrank", "shape": {"batch": 9, "dims": [32, 4, 24]}},
            ],
        },
        "blocksparse_grad": {
            "op": "blocksparse_grad",
            "shape": {"batch": 9, "in": 32, "out": 24},
            "sparsity": bsr,
        },
    }


CASES = [
    (name, dtype)
    for name in small_specs()
    for dtype in ("float16", "bfloat16", "float32")
    if not (name == "fft" and dtype == "bfloat16")  # the FFT takes float16 and float32 only
]


def measure_payload(spec: dict, dtype: str, pytorch: bool = False) -> dict:
    """The payload the dry run's measure stage sends for the model's top config (or PyTorch's path)."""
    spec = kt.parse_spec({**spec, "dtype": dtype})
    (node,) = op_from_spec(spec).kernel_graph().kernels
    problem = node.problem
    if pytorch:
        from kt.codegen.baseline import render_baseline

        source = render_baseline(problem)
    else:
        plan = kt.plan(spec, budget=1, measures_time=False)
        source = FAMILIES[problem.family].render(problem, plan.config(plan.ranked[0]))
    return {
        "family": problem.family,
        "source_path": str(write_source(source)),
        "problem": problem.to_dict(),
        "seed": 0,
        "timing": DRY_RUN_TIMING.__dict__,
        "device": "cpu",
    }


@pytest.mark.parametrize("name,dtype", CASES)
def test_the_measure_step_checks_and_times_every_family_and_dtype_in_the_interpreter(name, dtype):
    """The measure handler itself (not a copy): inputs and the output from the family's types (an fp32 FFT
    writes complex64), the full-problem check, the timer, the energy columns."""
    status, values, message, fatal = worker.run_task("measure", measure_payload(small_specs()[name], dtype))
    assert (status, message, fatal) == ("ok", "", False)
    assert values["rel_err"] is not None and values["timer"] == WALL_TIMER and values["wall_ms"] > 0
    assert "runtime_ms" not in values and "power_w" not in values, "the wall clock never gives a runtime"
    assert values["energy_status"].startswith("no energy counter") and values["timing_regime"] == "l2_flushed"


@pytest.mark.parametrize("name", list(small_specs()))
def test_pytorchs_own_path_goes_through_the_same_measure_step(name):
    status, values, message, _ = worker.run_task(
        "measure", measure_payload(small_specs()[name], "float32", pytorch=True)
    )
    assert status == "ok", message
    assert values["impl"] and values["timer"] == WALL_TIMER


def test_a_dry_run_tune_writes_marked_rows_without_runtimes_and_an_unmeasured_artifact(tmp_path):
    spec = {"op": "fft", "name": "dry_fft", "dtype": "float32", "shape": {"batch": 6, "n": 16}}
    result = kt.tune(spec, budget=2, backend="dryrun", db=tmp_path / "t.db", progress=False, workers=2)
    assert result.runner == "dryrun" and not result.measured and result.ran_on.startswith(DRY_RUN_DEVICE)
    assert [r["status"] for r in result.rows] == ["ok", "ok"]
    with Database(tmp_path / "t.db", readonly=True) as db:
        rows = db.find()
    assert len(rows) == 3  # two configs and candidate zero
    for row in rows:
        assert row["runner"] == "dryrun" and row["timer"] == WALL_TIMER and row["runtime_ms"] is None
        assert row["power_w"] is None and row["energy_status"].startswith("no energy counter")
        assert row["rel_err"] < 1e-4 and row["checked_problems"] is None  # the full problem was checked
    assert result.baseline["config_key"] == "pytorch" and result.baseline["impl"] == "torch.fft.fft"
    assert any("on the full problem through the GPU's measure path" in note for note in result.notes)
    meta = kt.load(result.save(tmp_path / "a")).meta
    assert meta["measured"] is False and meta["kernel"] == "generated"
    assert meta["baseline"]["timed"] is False and meta["baseline"]["ratio"] is None


SEGFAULT = textwrap.dedent("""
    import os, signal

    def kernel(x, out=None):
        print("about to die")
        os.kill(os.getpid(), signal.SIGSEGV)
""")
HANG = textwrap.dedent("""
    import time

    def kernel(x, out=None):
        time.sleep(3600)
""")


def test_crashes_and_hangs_in_the_measure_step_cost_one_row_each():
    spec = kt.parse_spec({"op": "fft", "dtype": "float32", "shape": {"batch": 4, "n": 16}})
    (node,) = op_from_spec(spec).kernel_graph().kernels
    problem = node.problem
    config = FAMILIES["fft"].space(problem, H100).legal[0]
    good = FAMILIES["fft"].render(problem, config)
    candidates = [Candidate(problem, config, str(write_source(source))) for source in (SEGFAULT, HANG, good)]
    # the measure step alone: the good candidate's sm_90 compile is seconds of real work, and took over 6 s in
    # a full suite on a loaded 2-core machine (tests/test_compile_target.py tests that step)
    runner = DryRunner(H100, workers=1, timeout_s=6, compile_target=False)
    assert runner.stages == [Stage("measure", "measure")] and runner.device == DRY_RUN_DEVICE
    results = {id(r.candidate): r for r in runner.run(candidates)}
    statuses = [results[id(c)].status for c in candidates]
    assert statuses == ["crash", "timeout", "ok"], [results[id(c)].message for c in candidates]
    assert "SIGSEGV" in results[id(candidates[0])].message


def test_a_tasks_timeout_clock_starts_when_its_worker_is_ready(tmp_path):
    """A worker whose start-up is slow (a loaded machine: here a sitecustomize that sleeps before Python runs
    anything) must not time out a task that itself takes a moment."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(6)\n")
    env = {"PYTHONPATH": str(tmp_path), "TRITON_INTERPRET": "1"}
    payload = measure_payload(small_specs()["dense"], "float32")
    with WorkerPool({"slow": (1, env)}, timeout_s=5) as pool:
        (outcome,) = pool.run([Task(0, "measure", payload, "slow")])
    assert outcome.status == "ok", outcome.message
    assert pool.slots[0].info["pid"] > 0


class VgpuNvml:
    """An NVML library as a vGPU or a MIG slice presents one: devices with handles whose energy counter raises
    NVML's NotSupported (a test stand-in for the library, never for a reading: it returns no figures)."""

    from pynvml import NVMLError, NVMLError_NotSupported  # noqa: F401 - the real exception types

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-0000"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        raise self.NVMLError_NotSupported()


def test_an_energy_counter_that_cannot_be_read_is_found_once_and_said_not_raised():
    meter = Nvml("GPU-0000", nvml=VgpuNvml())
    assert meter.handle is None and meter.reason.startswith("NVML energy counter not readable")
    assert meter.is_nvml_error(VgpuNvml.NVMLError_NotSupported())
    here = Nvml("GPU-0000")  # the real pynvml on a machine without a driver
    assert here.handle is None and here.reason.startswith("NVML unavailable")


class MigNvml(VgpuNvml):
    """One board in MIG mode, whose counter must not be read: the GPU torch names is a slice of it."""

    def nvmlDeviceGetMigMode(self, handle):
        return (1, 1)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        raise AssertionError("the board's counter was taken for a MIG slice's")


def test_a_mig_slice_gets_no_energy_figure_from_the_whole_boards_counter():
    """A MIG slice's UUID matches none of NVML's devices; with one board, its counter (every slice's work) was
    taken for the slice's."""
    meter = Nvml("MIG-1234", nvml=MigNvml())
    assert meter.handle is None and "MIG slice" in meter.reason, meter.reason


def test_the_parent_names_the_gpu_through_nvml_and_never_opens_cuda(monkeypatch):
    """A GPU in exclusive-process mode takes one context: the tune's own process must not create one."""
    from kt.autotune import gpuinfo
    from kt.autotune.runners import make_runner

    def no_context(*args, **kwargs):
        raise AssertionError("the parent process asked CUDA for the device (a context would be created)")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_context)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_context)
    monkeypatch.setattr(torch.cuda, "get_device_capability", no_context)
    gpuinfo.visible_gpu.cache_clear()
    monkeypatch.setattr(gpuinfo, "_from_nvml", lambda *args: gpuinfo.GpuInfo("NVIDIA H200", 90))
    try:
        assert kt.resolve_profile("auto").name == "h200"
        runner = make_runner("cuda", kt.resolve_profile("auto"))
        assert (runner.device, runner.arch) == ("NVIDIA H200", 90)
    finally:
        gpuinfo.visible_gpu.cache_clear()


class TwoGpuNvml(VgpuNvml):
    """An NVML library of a machine with two GPU models (for the index-mapping rules; it reports no figures)."""

    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetName(self, handle):
        return self.names[handle[1]]

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle[1]}abc"

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return 9, 0

    def nvmlSystemGetDriverVersion(self):
        return "580.00"


@pytest.mark.parametrize(
    "visible,order,expected",
    [
        ("GPU-1abc", None, "NVIDIA H100 PCIe"),  # a UUID is exact
        ("1", "PCI_BUS_ID", "NVIDIA H100 PCIe"),  # an index where CUDA and NVML agree on the order
        ("1", None, None),  # CUDA's fastest-first order may differ from NVML's: ask torch instead
        ("MIG-123", None, None),  # a MIG slice is not the whole GPU
    ],
)
def test_nvml_names_torchs_gpu_only_when_it_can_tell_which_it_is(monkeypatch, visible, order, expected):
    from kt.autotune import gpuinfo

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if order:
        monkeypatch.setenv("CUDA_DEVICE_ORDER", order)
    else:
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    info = gpuinfo._from_nvml(TwoGpuNvml())
    assert (info.name if info else None) == expected


def test_loading_a_kernel_for_the_interpreter_leaves_the_process_as_it_was():
    """In a pytest run on a GPU machine, one test loading an interpreted kernel used to switch every later kernel
    of the process (the GPU tests' too) to the interpreter."""
    script = textwrap.dedent("""
        import os
        os.environ.pop("TRITON_INTERPRET", None)
        import torch
        import kt
        from kt.codegen import FAMILIES, GemmConfig, import_kernel_file, write_source
        from kt.ir import GemmProblem
        problem = GemmProblem(20, 24, 19, dtype="float32")
        path = write_source(FAMILIES["gemm"].render(problem, GemmConfig(16, 16, 16, num_warps=4, num_stages=2)))
        module = import_kernel_file(path, interpret=True)
        assert "TRITON_INTERPRET" not in os.environ, "left the interpreter on for the whole process"
        a, b = problem.random_args(0)
        c = module.kernel(a, b)  # it still runs in the interpreter, with the variable off outside it
        assert "TRITON_INTERPRET" not in os.environ
        print(float((c.double() - a.double() @ b.double()).norm() / (a.double() @ b.double()).norm()))
        compiled = import_kernel_file(path, interpret=False)  # what a GPU test would load next
        import triton
        assert isinstance(compiled.gemm_kernel, triton.runtime.JITFunction)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    import sqlite3

    from kt.autotune.database import COLUMNS, SCHEMA_VERSION

    path = tmp_path / "old.db"
    old = [
        (n, k)
        for n, k in COLUMNS
        if n
        not in {
            "timer",
            "timing_regime",
            "energy_status",
            "cuda_graph",
            "flush_energy_mj",
            "cooldown_ms",
            "impl",
            "registers",
            "local_bytes",
            "mma_kind",
            "tma",
            "gpu_index",
            "gpu_uuid",
            "loop_power_w",
        }
    ]
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TABLE measurements (id INTEGER PRIMARY KEY, {', '.join(f'{n} {k}' for n, k in old)})"
    )
    conn.execute(
        "INSERT INTO measurements (runner, device, target, family, family_version, problem_key, config_key, "
        "created_at, problem, config, status, triton_version) VALUES "
        "('interpret', 'cpu', 'h100', 'gemm', 'v', 'p', 'c', 'now', '{}', '{}', 'ok', '3.9.0')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Database(path) as db:
        (row,) = db.find()
        assert row["config_key"] == "c" and row["timer"] is None and row["mma_kind"] is None
        assert row["gpu_index"] is None and row["gpu_uuid"] is None and row["loop_power_w"] is None
        version = db.conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 6


def test_the_cooldown_is_recorded_in_each_row(tmp_path):
    spec = {"op": "dense", "name": "cool", "dtype": "float32", "shape": {"m": 20, "n": 24, "k": 19}}
    from kt.autotune.timing import TimingSettings

    kt.tune(
        spec,
        budget=1,
        backend="dryrun",
        db=tmp_path / "t.db",
        progress=False,
        workers=1,
        timing=TimingSettings(cooldown_ms=7.0),
    )
    with Database(tmp_path / "t.db", readonly=True) as db:
        assert {row["cooldown_ms"] for row in db.find()} == {7.0}


def test_a_dry_run_refuses_an_op_whose_operands_exceed_this_machines_memory(tmp_path):
    """The dry run checks the full problem on the CPU: an op past the machine's memory (within the spec's 128 GiB)
    had every candidate's worker killed. It is refused before any worker starts: one line, exit 2, no database."""
    from click.testing import CliRunner

    from kt.autotune.runners import physical_memory
    from kt.cli import main

    memory = physical_memory()
    if memory is None or memory >= 96 << 30:
        pytest.skip("the machine's memory is unknown or holds the 96 GiB op")
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: big\nshape: {m: 131072, n: 131072, k: 131072}\n")
    args = [
        "tune",
        str(spec),
        "--backend",
        "dryrun",
        "--db",
        str(tmp_path / "t.db"),
        "--out",
        str(tmp_path / "a"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.endswith(
        f"shape: the op's inputs, weights and output take 96.0 GiB, more than the {memory / 2**30:.1f} GiB of "
        "this machine's memory (the dry run checks the full problem on the CPU), before any workspace or check; "
        "give a smaller shape"
    ), result.output
    assert "Traceback" not in result.output and not (tmp_path / "t.db").exists()


def test_the_cli_offers_the_dry_run_and_says_what_pytorch_did(tmp_path):
    spec = Path(tmp_path / "op.yaml")
    spec.write_text("op: lowrank\nname: lr\ndtype: float32\nshape: {batch: 9, dims: [24, 5, 16]}\n")
    args = ["tune", str(spec), "--budget", "1", "--backend", "dryrun", "--db", str(tmp_path / "t.db")]
    args += ["--out", str(tmp_path / "art"), "--quiet", "--workers", "1"]
    done = kt_cli(*args)  # in this process: a new Python spends 2-3 s importing torch again
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.endswith("PyTorch (torch.linalg.multi_dot): checked, not timed (no GPU)"), last


def test_the_sm_clock_and_temperature_are_read_while_the_kernels_energy_loop_runs(monkeypatch):
    """A row's sm_clock_mhz and temperature_c were read after the flush-only loop (or an idle card), so every
    H200 row said the maximum clock: they are read once the kernel's loop is queued, before it is waited for.
    The order of calls is what is checked (no GPU here): the meter's counter never moves, so no figure comes
    out, and the clock is read all the same."""
    from kt.autotune import timing

    calls = []

    class Meter:
        handle, reason = object(), ""

        def energy_mj(self):
            calls.append("counter")
            return 0

        def sm_clock_mhz(self):
            calls.append("clock")

        def temperature_c(self):
            calls.append("temperature")

        def is_nvml_error(self, exc):
            return False

    def no_graph():
        raise RuntimeError("no CUDA graph here")

    monkeypatch.setattr(torch.cuda, "Stream", no_graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    settings = timing.TimingSettings(regime="l2_warm", energy_s=0.01)
    values = timing.energy_cuda(lambda: calls.append("kernel"), 1.0, Meter(), settings)
    assert "counter moved too little" in values["energy_status"]
    last_kernel = max(i for i, call in enumerate(calls) if call == "kernel")
    assert calls[last_kernel + 1 : last_kernel + 4] == ["clock", "temperature", "sync"], calls


def test_a_clock_nvml_refuses_costs_the_row_its_clock_not_its_energy(monkeypatch):
    """NVML refusing the SM clock mid-loop (NotSupported on some boards) dropped the energy figure the counter
    had read, and left the loop unwaited for. No GPU: the stand-in counter's readings are inputs."""
    from kt.autotune import timing

    class NotSupported(Exception):
        pass

    class Meter:
        handle, reason, counter = object(), "", 0

        def energy_mj(self):
            self.counter += 5000
            return self.counter

        def sm_clock_mhz(self):
            raise NotSupported("Not Supported")

        def temperature_c(self):
            return 41

        def is_nvml_error(self, exc):
            return isinstance(exc, NotSupported)

    def no_graph():
        raise RuntimeError("no CUDA graph here")

    monkeypatch.setattr(torch.cuda, "Stream", no_graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    settings = timing.TimingSettings(regime="l2_warm", energy_s=0.01)
    values = timing.energy_cuda(lambda: None, 1.0, Meter(), settings)
    assert values["energy_status"] == "ok" and values["energy_mj"] > 0, values
    assert values["temperature_c"] == 41 and "sm_clock_mhz" not in values


def test_the_timing_summary_is_the_median_min_and_20th_80th_percentiles_of_the_runs():
    """time_cuda's row figures come from _summary, checked elsewhere only on a GPU (and there only for their
    order): a p20 taken from the 40th percentile, a min from the unsorted list, or a mean for the median
    would pass that order check on most runs and go into every row. The numbers are a plain list handed to the
    statistics function, not measurements."""
    from kt.autotune import timing

    values = [9.0, 1.0, 7.0, 3.0, 5.0, 2.0, 8.0, 4.0, 6.0, 100.0]
    q = statistics.quantiles(
        sorted(values), n=5, method="inclusive"
    )  # as kt import inductor's, within the data
    summary = timing._summary(values, "runtime")
    assert summary == {
        "runtime_ms": 5.5,
        "runtime_min_ms": 1.0,
        "runtime_p20_ms": q[0],
        "runtime_p80_ms": q[3],
        "runs": 10,
    }
    assert q[0] < q[1] and q[2] < q[3], "the percentiles asked for are distinct ones"
    # two or three runs (TimingSettings allows max_runs 2): the percentiles lie within them (the exclusive
    # method extrapolated: p20 0.98 and p80 1.22 of runs 1.0, 1.1 and 1.2)
    for runs in ([1.0, 1.2], [1.0, 1.1, 1.2]):
        few = timing._summary(runs, "runtime")
        assert min(runs) <= few["runtime_p20_ms"] <= few["runtime_p80_ms"] <= max(runs), few
    # one run: every figure is that run
    assert timing._summary([2.5], "energy") == {
        "energy_ms": 2.5,
        "energy_min_ms": 2.5,
        "energy_p20_ms": 2.5,
        "energy_p80_ms": 2.5,
        "runs": 1,
    }


def test_timing_settings_refuse_a_negative_energy_time_and_an_unknown_regime():
    """A negative energy_s made the energy loops run once each (max(1, ...)) and report a figure from a single
    replay; an unknown regime was timed as l2_warm."""
    from kt.autotune.timing import TimingSettings

    with pytest.raises(ValueError, match=r"timing: energy_s must be a finite number >= 0, got -1.0"):
        TimingSettings(energy_s=-1.0)
    with pytest.raises(ValueError, match=r"timing: cooldown_ms must be a finite number >= 0, got -1.0"):
        TimingSettings(cooldown_ms=-1.0)
    # NaN passed `< 0` (each candidate then slept NaN seconds and was recorded a crash), inf slept for ever,
    # and the other figures were not checked
    for name, value in [
        ("cooldown_ms", float("nan")),
        ("cooldown_ms", float("inf")),
        ("energy_s", float("nan")),
        ("target_ms", float("nan")),
        ("warmup_ms", float("inf")),
        ("warmup_ms", "30"),
    ]:
        with pytest.raises(ValueError, match=f"timing: {name} must be a finite number >= 0, got {value!r}"):
            TimingSettings(**{name: value})
    with pytest.raises(ValueError, match="flush_bytes must be an integer >= 1 in regime l2_flushed, got 0"):
        TimingSettings(flush_bytes=0)  # flushed nothing, and its rows said l2_flushed
    assert TimingSettings(regime="l2_warm", flush_bytes=0).flush_bytes == 0
    with pytest.raises(ValueError, match="timing regime: 'l2_cold' is not supported"):
        TimingSettings(regime="l2_cold")
    assert TimingSettings(energy_s=0.0, cooldown_ms=0.0).energy_s == 0.0


def test_the_wall_clock_timer_calls_the_function_min_runs_times_after_one_warm_up():
    """time_wall ran a single call whatever min_runs asked, so a dry run with more runs reported one."""
    from kt.autotune import timing
    from kt.autotune.timing import TimingSettings

    calls = []
    values = timing.time_wall(lambda: calls.append(1), TimingSettings(min_runs=4, energy_s=0.0))
    assert len(calls) == 1 + 4 and values["wall_runs"] == 4
    assert values["timer"] == WALL_TIMER and "runtime_ms" not in values


def test_an_nvml_of_several_gpus_none_of_them_torchs_gives_no_energy_counter():
    """With several GPUs and a UUID matching none of them, NVML's first device was taken for torch's GPU, and
    its energy counter (another card's work) for the kernel's."""
    meter = Nvml("GPU-ffff", nvml=TwoGpuNvml())
    assert meter.handle is None and meter.reason.startswith("no NVML device matches the GPU (UUID GPU-ffff)")


def test_the_tunes_seed_reaches_the_measuring_and_the_checking_workers():
    """The seed (kt tune's tune.seed) draws a worker's random inputs: a measure payload that carried 0 instead
    checked every tune on the same inputs whatever seed it was given."""
    from kt.autotune.runners import InterpretRunner
    from kt.ir import GemmProblem

    problem = GemmProblem(40, 30, 20)
    config = FAMILIES["gemm"].space(problem, H100).legal[0]
    candidate = Candidate(problem, config, "unused.py")
    measuring = DryRunner(H100, workers=1, seed=7, compile_target=False)
    assert measuring.payload(Stage("measure", "measure"), candidate)["seed"] == 7
    checking = InterpretRunner(H100, workers=1, seed=7, compile_target=False)
    assert checking.payload(Stage("interpret", "check"), candidate)["seed"] == 7


def test_a_side_by_side_timing_idles_before_each_side_and_alternates_their_order(monkeypatch):
    """The standalone benchmark scripts timed kt right after its tune and the baseline right after kt, with no
    idle between, where a tune idles `cooldown_ms` before every candidate. `time_cuda_each` idles before each
    timing and reverses the order in the second round. A stand-in for time_cuda records what it was asked (no
    GPU here; its figures are set numbers, not runtimes) and time.sleep records the idles."""
    from kt.autotune import timing

    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(("idle", s)))
    called = []
    runs = {name: (lambda name=name: called.append(name)) for name in ("kt", "torch", "other")}
    # what the stand-in gives each side's rounds, in order: kt's second round, torch's first, other's first
    # are the lower ones
    figures = {"kt": iter([3.0, 2.0]), "torch": iter([4.0, 5.0]), "other": iter([6.0, 7.0])}

    def stand_in(fn, settings):
        fn()
        events.append(("timed", settings.cooldown_ms))
        return {"runtime_ms": next(figures[called[-1]]), "timer": "stand-in"}

    monkeypatch.setattr(timing, "time_cuda", stand_in)
    settings = timing.TimingSettings(cooldown_ms=150.0)
    result = timing.time_cuda_each(runs, settings)
    assert called == ["kt", "torch", "other", "other", "torch", "kt"]
    assert events[0::2] == [("idle", 0.15)] * 6 and events[1::2] == [("timed", 150.0)] * 6
    assert {name: figures["round_ms"] for name, figures in result.items()} == {
        "kt": [3.0, 2.0], "torch": [4.0, 5.0], "other": [6.0, 7.0]
    }  # fmt: skip
    assert [result[name]["runtime_ms"] for name in runs] == [2.0, 4.0, 6.0]  # the lower of its rounds
    figures["kt"] = iter([1.0])
    assert timing.time_cuda_each({"kt": runs["kt"]}, settings, rounds=1)["kt"]["round_ms"] == [1.0]


def test_each_timed_run_holds_the_gpu_until_the_host_has_queued_the_whole_call(monkeypatch):
    """A run's CUDA events timed the host's launches too whenever queueing them took longer than the flush
    before them: the H200's split-K configs (kernel, sum, copy) of a skinny problem spread 30% to 350% from min
    to p80, its classic single-launch ones 2% and 5%.
    Each run now queues a GPU hold (`torch.cuda._sleep`) before its start event, longer than the host's
    longest queueing of one call. The order of calls is what is checked (no GPU here); the stand-in events
    return no time, so no figure comes out."""
    from kt.autotune import timing

    calls = []

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            calls.append("event")

        def elapsed_time(self, other):
            return 0.0

    def kernel():
        time.sleep(0.004)  # the host's queueing of a call of several launches
        calls.append("kernel")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: calls.append(("hold", cycles)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setitem(timing._CYCLES_PER_S, 0, 1e9)  # a 1 GHz clock, as if measured
    settings = timing.TimingSettings(
        target_ms=0.0, min_runs=3, max_runs=3, warmup_ms=0.0, energy_s=0.0, regime="l2_warm", cooldown_ms=0.0
    )
    values = timing.time_cuda(kernel, settings)
    assert values["runs"] == 3 and values["timer"] == "cuda_events"
    timed = calls[next(i for i, call in enumerate(calls) if isinstance(call, tuple)) :]
    holds = [c for c in timed if isinstance(c, tuple)]
    assert timed == [holds[0], "event", "kernel", "event"] * 3, calls
    # the hold covers twice the longest queueing seen (4 ms or more) and the margin, at 1e9 cycles per second
    assert holds[0][1] >= 1e9 * (2 * 0.004 + timing.QUEUE_EXTRA_S)
    # a call that synchronizes inside (seconds on the host) is held no more than QUEUE_MAX_S twice over
    assert timing.queue_hold(3.0) == int(1e9 * (2 * timing.QUEUE_MAX_S + timing.QUEUE_EXTRA_S))


def test_the_dry_run_keeps_the_regime_and_compile_target_it_is_given():
    """The dry run replaced the caller's timing settings with its own, keeping the cooldown: a tune asked for an
    L2-warm regime recorded l2_flushed on every row, and compile_target=False (which DryRunner honours) was
    dropped."""
    from kt.autotune.runners import _make_runner
    from kt.autotune.timing import TimingSettings
    from kt.device import get_profile

    runner = _make_runner(
        "dryrun",
        get_profile("h100"),
        timing=TimingSettings(regime="l2_warm", cooldown_ms=5),
        compile_target=False,
    )
    assert runner.timing.regime == "l2_warm" and runner.timing.cooldown_ms == 5
    assert runner.timing.max_runs == DRY_RUN_TIMING.max_runs and not runner.compiles
