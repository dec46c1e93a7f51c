"""Every GPU of a machine: one GPU worker per GPU, each seeing its own (issue 18).

No GPU here: the GPUs come from a stand-in NVML library (the functions kt calls, answering for a machine of
four cards), and the pool's per-worker environments are checked in real worker processes."""

import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import kt
from kt.autotune import gpuinfo
from kt.autotune.pool import Task, WorkerPool, slot_envs
from kt.errors import DeviceError


class FourGpuNvml:
    """NVML of a machine with four GPUs (handles are (tag, index)); `names` sets each one's model."""

    def __init__(self, names, memory=None):
        self.names, self.memory = names, memory

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetName(self, handle):
        return self.names[handle[1]]

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle[1]}0000000-aaaa"

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return 9, 0

    def nvmlSystemGetDriverVersion(self):
        return "580.00"

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        raise RuntimeError("not reported")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        raise RuntimeError("not reported")

    def nvmlDeviceGetMemoryInfo(self, handle):
        if self.memory is None:
            raise RuntimeError("not reported")
        return SimpleNamespace(total=self.memory, free=self.memory, used=0)

    NVML_CLOCK_SM = 1


H100 = "NVIDIA H100 80GB HBM3"
PCIE = "NVIDIA H100 PCIe"


@pytest.fixture
def machine(monkeypatch):
    """Point kt's NVML lookups at a stand-in machine; returns a setter for its GPUs' models."""
    real = gpuinfo._from_nvml

    def use(names, visible=None, order="PCI_BUS_ID", memory=None):
        fake = FourGpuNvml(names, memory)
        monkeypatch.setattr(gpuinfo, "_from_nvml", lambda nvml=None, *args: real(fake, *args))
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible or ",".join(str(i) for i in range(len(names))))
        monkeypatch.setenv("CUDA_DEVICE_ORDER", order)

    monkeypatch.setattr(gpuinfo, "_from_subprocess", _no_probe)
    return use


def _no_probe(visible=None):
    raise AssertionError(f"asked torch in a subprocess about GPU {visible}")


def test_every_visible_gpu_of_gpu_0s_model_gets_a_worker_by_default(machine):
    machine([H100, H100, PCIE, H100])
    slots = gpuinfo.machine_gpus()
    assert [(s.index, s.visible, s.info.name) for s in slots] == [
        (0, "0", H100),
        (1, "1", H100),
        (3, "3", H100),
    ]
    assert slots[2].info.uuid == "GPU-30000000-aaaa"


def test_gpus_are_numbered_after_cuda_visible_devices(machine):
    """--gpus 1 under CUDA_VISIBLE_DEVICES=2,3 is the machine's GPU 3: its worker is shown that one alone."""
    machine([H100, H100, H100, H100], visible="2,3")
    (slot,) = gpuinfo.machine_gpus([1])
    assert (slot.index, slot.visible, slot.info.uuid) == (1, "3", "GPU-30000000-aaaa")
    with pytest.raises(DeviceError, match=r"^gpus: GPU 2 is not visible here; allowed: 0 to 1"):
        gpuinfo.machine_gpus([2])


def test_gpus_of_two_models_are_refused_with_each_named(machine):
    machine([H100, PCIE])
    with pytest.raises(DeviceError, match=r"^gpus: GPUs 0 \(NVIDIA H100 80GB HBM3\), 1 \(NVIDIA H100 PCIe\)"):
        gpuinfo.machine_gpus([0, 1])
    assert [s.index for s in gpuinfo.machine_gpus([1])] == [1]


@pytest.mark.parametrize("visible", ["0,0", "1,0,01", "GPU-1,GPU-1", "-1"])
def test_a_gpu_given_twice_in_cuda_visible_devices_shows_none(machine, visible):
    """As torch reads the variable, an entry given twice shows no GPU: kt planned two workers on one GPU, and
    with none visible the cuda runner took GPU 0 of none (an IndexError)."""
    from kt.autotune.runners import CudaRunner

    machine([H100, H100], visible=visible)
    assert gpuinfo.visible_entries() == []
    with pytest.raises(
        DeviceError, match=rf"^device: no GPU is visible here \(CUDA_VISIBLE_DEVICES='{visible}'"
    ):
        CudaRunner(kt.resolve_profile("h100"))
    machine([H100, H100], visible="1,0")
    assert gpuinfo.visible_entries() == ["1", "0"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("0,x", "is not allowed"),
        ("0,0", "names a GPU twice"),
        ("", "is not allowed"),
        ("-1", "is not allowed"),
    ],
)
def test_the_gpus_option_takes_all_or_indices(text, message):
    assert gpuinfo.parse_gpus("all") is None and gpuinfo.parse_gpus(" 2, 0") == [2, 0]
    with pytest.raises(DeviceError, match=message):
        gpuinfo.parse_gpus(text)


def test_the_cuda_runner_starts_one_measuring_worker_per_gpu_each_seeing_its_own(machine):
    from kt.autotune.runners import CudaRunner

    machine([H100, H100, H100, H100], visible="1,3,0")
    runner = CudaRunner(kt.resolve_profile("h100"), gpus=[2, 0], workers=3)
    assert (runner.device, runner.arch) == (H100, 90)
    workers, envs = runner.groups()["measure"]
    assert workers == 2
    assert [(e["CUDA_VISIBLE_DEVICES"], e["KT_GPU_INDEX"]) for e in envs] == [("0", "2"), ("1", "0")]
    assert all(e["KT_WORKER_GPU"] == "1" and e["TRITON_INTERPRET"] == "0" for e in envs)
    assert runner.groups()["compile"][0] == 3


def test_a_pool_gives_each_worker_of_a_group_its_own_environment_and_any_free_one_takes_a_task():
    envs = [
        {"CUDA_VISIBLE_DEVICES": "5", "KT_GPU_INDEX": "0"},
        {"CUDA_VISIBLE_DEVICES": "7", "KT_GPU_INDEX": "1"},
    ]
    with WorkerPool({"measure": (2, envs)}, timeout_s=120) as pool:
        seen = [o.values for o in pool.run([Task(i, "describe", {}, "measure") for i in range(6)])]
    assert {(v["cuda_visible_devices"], v["gpu_index"]) for v in seen} == {("5", "0"), ("7", "1")}
    assert len({v["pid"] for v in seen}) == 2
    with pytest.raises(ValueError, match="2 workers but 1 environments"):
        slot_envs("measure", 2, envs[:1])


def test_gpus_needs_the_cuda_backend_and_bad_values_exit_2_in_one_line(tmp_path):
    from kt.cli import main

    spec = tmp_path / "op.yaml"
    spec.write_text("name: d\nop: dense\nshape: {m: 64, n: 64, k: 64}\n")
    for args, message in (
        (["--gpus", "0,a"], "--gpus: '0,a' is not allowed; give all, or GPU indices such as 0,1,3"),
        (["--gpus", "0", "--backend", "interpret"], "--gpus needs --backend cuda"),
        (["--gpus", "all", "--backend", "interpret"], "--gpus needs --backend cuda"),  # all was dropped
        (["--gpus", "all", "--ray", "local"], "--gpus: with --ray, Ray chooses each GPU actor's GPU"),
        (["--gpus", "\u00b2"], "--gpus: '\u00b2' is not allowed"),  # a digit to str.isdigit, not to int()
        # nan passed click's ranges (every comparison with it is false): the pool then waited on no timeout
        (["--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a number in the range"),
        (["--cooldown-ms", "nan"], "Invalid value for '--cooldown-ms': 'nan' is not a number"),
        (["--power-cap", "nan"], "Invalid value for '--power-cap': 'nan' is not a number"),
    ):
        result = CliRunner().invoke(main, ["tune", str(spec), "--out", str(tmp_path / "a"), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    result = CliRunner().invoke(
        main, ["collect", str(spec), "--all", "--gpus", "all", "--backend", "interpret"]
    )
    assert result.exit_code == 2 and "--gpus needs --backend cuda" in result.output, result.output


def test_under_ray_a_gpu_of_another_model_stops_the_tune_with_both_named():
    from kt.autotune.runners import Candidate, Result, same_gpu_model
    from kt.codegen import GemmConfig
    from kt.ir import GemmProblem

    def measured(name, uuid="GPU-1"):
        candidate = Candidate(GemmProblem(16, 16, 16), GemmConfig(16, 16, 16), "unused.py")
        return Result(candidate, "ok", {"gpu_name": name, "gpu_uuid": uuid})

    model = None
    for result in (
        measured("NVIDIA H100 80GB HBM3"),
        measured(None),
        measured("NVIDIA H100 80GB HBM3", "GPU-2"),
    ):
        model = same_gpu_model(model, result)
    assert model == "NVIDIA H100 80GB HBM3"
    with pytest.raises(
        DeviceError, match="GPU-7 is a NVIDIA A100-SXM4-80GB, earlier measurements ran on a NVIDIA H100"
    ):
        same_gpu_model(model, measured("NVIDIA A100-SXM4-80GB", "GPU-7"))


def test_an_op_whose_operands_exceed_a_gpus_memory_is_refused_before_anything_runs(machine, tmp_path):
    """Such an op passed the spec (up to 128 GiB), then every candidate was compiled and failed its check as
    out_of_resources. Now a GPU tune refuses it at once: no worker started, no database written. A GPU whose
    memory NVML does not report, and GPUs under Ray (the cluster's, not this machine's), refuse nothing."""
    from kt.autotune.runners import CudaRunner
    from kt.ir import GemmProblem
    from kt.ir.problems import operand_bytes

    machine([H100, H100], memory=1 << 30)
    spec = {"name": "d", "op": "dense", "shape": {"m": 16384, "n": 16384, "k": 16384}}
    assert operand_bytes(GemmProblem(16384, 16384, 16384)) == 3 << 29  # A, B and C in fp16: 1.5 GiB
    runner = CudaRunner(kt.resolve_profile("h100"), gpus=[1], workers=1)
    assert runner.gpus[0].info.memory_bytes == 1 << 30
    with pytest.raises(DeviceError) as refused:
        kt.tune(spec, runner=runner, db=tmp_path / "t.db", progress=False)
    assert str(refused.value) == (
        "shape: the op's inputs, weights and output take 1.5 GiB, more than the 1.0 GiB of GPU 1 "
        "(NVIDIA H100 80GB HBM3), before any workspace or check; give a smaller shape"
    )
    assert runner.pool is None and not (tmp_path / "t.db").exists()
    runner.refuse_unfit(GemmProblem(16384, 16384, 8192))  # 1.0 GiB: it fits
    runner.ray = "auto"
    runner.refuse_unfit(GemmProblem(16384, 16384, 16384))
    machine([H100])  # no memory reported
    CudaRunner(kt.resolve_profile("h100"), workers=1).refuse_unfit(GemmProblem(16384, 16384, 16384))


def test_cuda_visible_devices_ends_at_its_first_entry_cuda_cannot_read(machine):
    """CUDA shows the GPUs listed before an entry that is no index or UUID: `1,-1` is one GPU. kt planned two
    workers, the second shown `-1` (no GPU at all) and labelled as NVML's GPU 0."""
    machine([H100, H100, H100, H100], visible="1,-1,2")
    assert [(s.index, s.visible, s.info.uuid) for s in gpuinfo.machine_gpus()] == [
        (0, "1", "GPU-10000000-aaaa")
    ]
    with pytest.raises(DeviceError, match=r"^gpus: GPU 1 is not visible here; allowed: 0 to 0"):
        gpuinfo.machine_gpus([1])
    assert gpuinfo._from_nvml(FourGpuNvml([H100, H100]), "-1") is None  # not NVML's first GPU


def test_a_board_in_mig_mode_is_named_by_torch_and_an_index_past_the_machines_gpus_ends_the_list(monkeypatch):
    """A MIG container sets no CUDA_VISIBLE_DEVICES: NVML showed the whole board, which was taken for CUDA's
    device (its exact profile, 80 GiB where the slice has 10) without asking torch; and `0,7` on a machine of
    one GPU kept 7, which CUDA drops (its list ends at an index the machine has not), and the tune stopped."""

    class MigNvml(FourGpuNvml):
        def nvmlDeviceGetMigMode(self, handle):
            return 1, 1

    for entry in (None, "0", "GPU-00000000-aaaa"):
        assert gpuinfo._from_nvml(MigNvml([H100]), entry) is None, entry
    assert gpuinfo._from_nvml(FourGpuNvml([H100]), "0").name == H100  # no MIG mode: NVML names it
    monkeypatch.setitem(sys.modules, "pynvml", FourGpuNvml([H100]))
    cases = (("0,7", ["0"]), ("7", []), ("0,-1,7", ["0"]), ("GPU-0,0", ["GPU-0", "0"]), ("0,\u00b2", ["0"]))
    for visible, entries in cases:  # '²' is str.isdigit(), and int() raised on it
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpuinfo.visible_entries() == entries, visible
