"""Timing and energy of a kernel on a CUDA GPU: the only place kt produces a runtime or a power figure.

Runtime: warm-up, then many runs each preceded by an L2 flush (writing a buffer larger than L2), each timed
with CUDA events; the median is the figure, min / p20 / p80 the spread. Energy: NVML's total-energy counter
(millijoules since driver load) read around a back-to-back loop of about a second, replayed from a CUDA graph
so that launch overhead does not leave the GPU idle; SM clock and temperature are read at the end of it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

FLUSH_BYTES = 256 * 1024 * 1024  # over 4x the L2 of an H100 (50 MB) or H200 (60 MB)


@dataclass(frozen=True)
class TimingSettings:
    target_ms: float = 300.0  # total time of the timed runs
    min_runs: int = 10
    max_runs: int = 1000
    warmup_ms: float = 30.0
    energy_s: float = 1.0  # length of the energy loop; 0 skips energy
    flush_bytes: int = FLUSH_BYTES


DEFAULT_TIMING = TimingSettings()


def time_cuda(fn: Callable[[], object], settings: TimingSettings = DEFAULT_TIMING) -> dict[str, float]:
    """Median runtime of `fn` in ms over many L2-flushed runs, with min, p20, p80 and the run count."""
    flush = torch.empty(settings.flush_bytes, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(
        start.elapsed_time(end) / 5, 1e-3
    )  # flush included: it bounds how many runs fit the target
    for _ in range(max(1, int(settings.warmup_ms / estimate))):
        fn()
    runs = int(min(settings.max_runs, max(settings.min_runs, settings.target_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    q = statistics.quantiles(times, n=5)  # the 20th, 40th, 60th and 80th percentiles
    return {
        "runtime_ms": statistics.median(times),
        "runtime_min_ms": times[0],
        "runtime_p20_ms": q[0],
        "runtime_p80_ms": q[3],
        "runs": runs,
    }


class Nvml:
    """The NVML handle of the GPU torch calls cuda:`index` (matched by UUID), or unavailable with a reason."""

    def __init__(self, index: int = 0):
        self.handle, self.reason = None, ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                nvml_uuid = pynvml.nvmlDeviceGetUUID(handle)
                nvml_uuid = nvml_uuid.decode() if isinstance(nvml_uuid, bytes) else nvml_uuid
                if uuid.lower() in nvml_uuid.lower():
                    self.handle = handle
            if self.handle is None and pynvml.nvmlDeviceGetCount() == 1:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            if self.handle is None:
                self.reason = f"no NVML device matches torch's cuda:{index} (UUID {uuid})"
        except Exception as exc:  # NVML missing, old driver, or no permission: time without energy
            self.reason = f"NVML unavailable: {exc}"

    def energy_mj(self) -> int:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def sm_clock_mhz(self) -> int:
        return self.pynvml.nvmlDeviceGetClockInfo(self.handle, self.pynvml.NVML_CLOCK_SM)

    def temperature_c(self) -> int:
        return self.pynvml.nvmlDeviceGetTemperature(self.handle, self.pynvml.NVML_TEMPERATURE_GPU)

    def driver_version(self) -> str:
        version = self.pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version


def _graph_of(fn: Callable[[], object], reps: int) -> Callable[[], None] | None:
    """A CUDA graph replaying `fn` `reps` times, or None when the kernel cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        return graph.replay
    except Exception:
        return None


def energy_cuda(fn: Callable[[], object], runtime_ms: float, nvml: Nvml, seconds: float) -> dict[str, float]:
    """Average power and energy per call of `fn` over a loop of about `seconds`, from NVML's energy counter."""
    if nvml.handle is None:
        return {}
    reps = max(1, min(2000, int(10.0 / max(runtime_ms, 1e-3))))  # one replay is about 10 ms of work
    replay = _graph_of(fn, reps)
    if replay is None:
        reps, replay = 1, fn
    steps = max(1, int(seconds * 1000.0 / (runtime_ms * reps)))
    torch.cuda.synchronize()
    e0, t0 = nvml.energy_mj(), time.perf_counter()
    for _ in range(steps):
        replay()
    torch.cuda.synchronize()
    e1, t1 = nvml.energy_mj(), time.perf_counter()
    calls, joules = steps * reps, (e1 - e0) / 1000.0
    if joules <= 0:  # the counter did not move over the loop: report no energy rather than a zero
        return {}
    return {
        "power_w": joules / (t1 - t0),
        "energy_mj": (e1 - e0) / calls,
        "energy_loop_s": t1 - t0,
        "sm_clock_mhz": nvml.sm_clock_mhz(),
        "temperature_c": nvml.temperature_c(),
    }
