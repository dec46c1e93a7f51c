"""`kt calibrate` without a GPU: the CUDA measurements are replaced (they need a GPU: tests/test_gpu.py runs
them), and what calibrate makes of the driver's and NVML's answers is checked."""

import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from kt.autotune import calibrate as calibration
from kt.autotune.timing import Nvml
from kt.device import CAPABILITIES, MAX_BLOCKS_PER_SM, load_profile
from kt.errors import DeviceError
from tests.test_measure_path import VgpuNvml


class BoardNvml(VgpuNvml):
    """tests/test_measure_path.py's vGPU NVML (its energy counter refuses), whose power limit reads, or (with
    `limit_mw` None) refuses too; `energy`: a counter that reads."""

    def __init__(self, limit_mw=300_000, energy=False):
        self.limit_mw, self.energy = limit_mw, energy

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy:
            raise self.NVMLError_NotSupported()
        return 1000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        if self.limit_mw is None:
            raise self.NVMLError_NotSupported()
        return self.limit_mw


def test_the_power_limit_is_read_where_the_energy_counter_is_not():
    """A vGPU capped at 300 W: its energy counter refuses, its limit reads. The limit was lost with the
    counter, and calibrate wrote the datasheet's 700 W of an H100 SXM into a profile called calibrated."""
    nvml = Nvml("GPU-0000", BoardNvml())
    assert nvml.handle is None and "energy counter not readable" in nvml.reason
    assert nvml.power_limit_w() == 300.0
    assert Nvml("GPU-0000", BoardNvml(limit_mw=None)).power_limit_w() == 0.0  # not known
    assert Nvml("GPU-9999", BoardNvml()).power_limit_w() == 300.0  # NVML's only GPU
    assert Nvml("GPU-0000", BoardNvml(energy=True)).power_limit_w() == 300.0


@pytest.fixture
def card(monkeypatch):
    """A stand-in GPU for calibrate: `use(name, major, minor)`; the measurements return fixed ceilings (no
    figure of them is checked, only what calibrate does around them)."""

    def use(name, major, minor, fail=None, limit=0.0):
        props = SimpleNamespace(
            name=name,
            major=major,
            minor=minor,
            multi_processor_count=128,
            shared_memory_per_block_optin=99 * 1024,
            shared_memory_per_multiprocessor=100 * 1024,
            regs_per_multiprocessor=65536,
            max_threads_per_multi_processor=1536,
            L2_cache_size=72 * 2**20,
            warp_size=32,
        )
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)

        def matmul(*args, **kwargs):
            if fail is not None:
                raise fail
            return 1e14

        monkeypatch.setattr(calibration, "matmul_flops", matmul)
        monkeypatch.setattr(calibration, "copy_bandwidth", lambda: 1e12)
        monkeypatch.setattr(calibration, "_power_limit_w", lambda: limit)

    return use


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_resident_blocks_per_sm_are_the_compute_capabilitys(card, capability):
    """The driver does not report them; calibrate wrote 32 for every card without a built-in profile, where
    an sm_86 card holds 16 and an sm_89 one 24 (the cost model's occupancy bound)."""
    card("NVIDIA Some Card", capability // 10, capability % 10)
    profile = calibration.calibrate()
    assert profile.max_blocks_per_sm == MAX_BLOCKS_PER_SM[capability]
    assert MAX_BLOCKS_PER_SM == {80: 32, 86: 16, 87: 16, 89: 24, 90: 32}


def test_a_power_limit_nvml_cannot_give_is_not_known_not_the_datasheets(card):
    card("NVIDIA H100 80GB HBM3", 9, 0)
    assert calibration.calibrate().tdp_w == 0.0  # the built-in H100's datasheet says 700
    card("NVIDIA H100 80GB HBM3", 9, 0, limit=350.0)
    assert calibration.calibrate().tdp_w == 350.0


def test_a_cuda_failure_while_measuring_is_one_line(card, tmp_path):
    from kt.cli import main

    card(
        "NVIDIA H100 80GB HBM3",
        9,
        0,
        fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB"),
    )
    with pytest.raises(
        DeviceError,
        match=r"^calibrate: measuring NVIDIA H100 80GB HBM3 failed: OutOfMemoryError: CUDA out of memory",
    ):
        calibration.calibrate()
    done = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path / "gpu.json")])
    assert done.exit_code == 2 and done.output.startswith("kt: error: calibrate: measuring"), done.output
    assert done.output.count("\n") == 1 and not (tmp_path / "gpu.json").exists()


def test_a_profile_the_driver_made_unloadable_is_one_line(card, tmp_path):
    """A figure from the driver that a profile does not allow: save_profile refuses it, and that was a
    ProfileError's traceback, exit 1."""
    from kt.cli import main

    card("NVIDIA H100 80GB HBM3", 9, 0, limit=0.5)
    done = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path / "gpu.json")])
    assert done.exit_code == 2, done.output
    assert done.output.startswith("kt: error: calibrate: ") and "tdp_w must be a number" in done.output
    assert done.output.count("\n") == 1 and not (tmp_path / "gpu.json").exists()


def test_calibrate_writes_only_a_json_profile(card, tmp_path):
    """`--out op.yaml` replaced the spec with a profile, as kt's other outputs are refused for."""
    from kt.cli import main

    card("NVIDIA H100 80GB HBM3", 9, 0, limit=700.0)
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\n")
    done = CliRunner().invoke(main, ["calibrate", "--out", str(spec)])
    assert done.exit_code == 2 and "out: " in done.output and "must end in .json" in done.output, done.output
    assert spec.read_text() == "op: dense\n"
    done = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path / "gpu.json")])
    assert done.exit_code == 0, done.output
    profile = load_profile(tmp_path / "gpu.json")
    assert (profile.name, profile.tdp_w, profile.max_blocks_per_sm) == ("h100", 700.0, 32)
    assert json.loads((tmp_path / "gpu.json").read_text())["source"].startswith("calibrated on ")
