"""Timing and energy of a kernel: the only place kt produces a runtime or a power figure (on a CUDA GPU).

Runtime and energy are measured under one regime, named in every row (`timing_regime`):

- `l2_flushed` (the default): every call starts with L2 holding none of its data. Runtime: warm-up, then many
  runs each preceded by an L2 flush (writing a buffer larger than L2), each timed with CUDA events; the median
  is the figure, min / p20 / p80 the spread. Before each run's start event the GPU holds until the host has
  queued the whole call (`queue_hold`), so a run times the GPU's work, not the host's launches (since
  2026-12-04; before, a call whose launches took the host longer than the flush was timed with its gaps).
  Energy: NVML's total-energy counter (millijoules since driver load) read around a loop of (flush, call)
  pairs and around a loop of flushes alone, half the energy time each; a call's energy is the difference per
  call, so the flush's own energy is not charged to the kernel.
  `loop_power_w` is the (flush, call) loop's own average power, the flushes' included.
- `l2_warm`: back-to-back calls, nothing flushed, for both.

Each loop is replayed from a CUDA graph when the kernel can be captured (no launch gaps between calls); when
capture fails, a Python loop runs instead and the row says so (`cuda_graph` 0). Before a candidate is timed
the GPU idles for `cooldown_ms`, so every candidate starts from about the same thermal state.

NVML is probed once per worker (`Nvml`). A GPU whose energy counter cannot be read (a vGPU, a MIG slice,
permissions, an old driver) still gets its runtime: the row carries no energy and says why in
`energy_status`.

`time_wall` is the stand-in timer of the dry run (`kt tune --backend dryrun`, `kt bench --smoke`): the GPU's
measure path run on the CPU in Triton's interpreter. Its figures are wall-clock milliseconds of the interpreter,
named `wall_*`, never `runtime_ms`: nothing stores or reports them as measurements.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kt.autotune.gpuinfo import mig_enabled as _mig_enabled
from kt.errors import one_line

FLUSH_BYTES = 256 * 1024 * 1024  # over 4x the L2 of an H100 (50 MB) or H200 (60 MB)
REGIMES = ("l2_flushed", "l2_warm")
# The idle gap before each candidate. A 64-candidate tune then idles 13 s of its ~2 minutes on the GPU
# (64 x (check + 0.3 s timed + 1 s energy)): enough for the board to shed the last candidate's heat spike.
DEFAULT_COOLDOWN_MS = 200.0
CUDA_TIMER = "cuda_events"
WALL_TIMER = "wall_clock_interpreter"


@dataclass(frozen=True)
class TimingSettings:
    target_ms: float = 300.0  # total time of the timed runs
    min_runs: int = 10
    max_runs: int = 1000
    warmup_ms: float = 30.0
    energy_s: float = 1.0  # length of the energy loops together; 0 skips energy
    flush_bytes: int = FLUSH_BYTES
    regime: str = "l2_flushed"  # l2_flushed | l2_warm: the same for runtime and energy
    cooldown_ms: float = DEFAULT_COOLDOWN_MS  # idle before the candidate is timed

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(
                f"timing regime: {self.regime!r} is not supported; allowed: {', '.join(REGIMES)}"
            )
        for name in ("target_ms", "warmup_ms", "energy_s", "cooldown_ms"):
            value = getattr(self, name)
            # NaN passed `< 0`: each candidate slept NaN seconds and was recorded a crash
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"timing: {name} must be a finite number >= 0, got {value!r}")
        least = 1 if self.regime == "l2_flushed" else 0  # 0 flushed nothing, and its rows said l2_flushed
        if (
            isinstance(self.flush_bytes, bool)
            or not isinstance(self.flush_bytes, int)
            or self.flush_bytes < least
        ):
            raise ValueError(
                f"timing: flush_bytes must be an integer >= {least} in regime {self.regime}, got "
                f"{self.flush_bytes!r}"
            )
        if not (
            isinstance(self.min_runs, int)
            and isinstance(self.max_runs, int)
            and 1 <= self.min_runs <= self.max_runs
        ):
            # max_runs 0 timed nothing, then failed indexing an empty list
            raise ValueError(
                f"timing: min_runs and max_runs must be integers with 1 <= min_runs <= max_runs, got "
                f"{self.min_runs!r} and {self.max_runs!r}"
            )

    @property
    def flushed(self) -> bool:
        return self.regime == "l2_flushed"


DEFAULT_TIMING = TimingSettings()
# The dry run times one call after one warm-up: enough to run every line of the measure path on the CPU.
DRY_RUN_TIMING = TimingSettings(
    target_ms=0.0, min_runs=1, max_runs=1, warmup_ms=0.0, energy_s=0.0, cooldown_ms=0.0
)


def time_cuda(fn: Callable[[], object], settings: TimingSettings = DEFAULT_TIMING) -> dict[str, Any]:
    """Median runtime of `fn` in ms over many runs (L2 flushed before each under `l2_flushed`), with min, p20,
    p80 and the run count. Each run is the GPU's work for one call, queued whole before it starts: the GPU
    holds (`torch.cuda._sleep`) while the host queues the start event, the call's launches and the end event,
    so the host's launch time is not in the figure, as under a CUDA graph (`queue_hold`)."""
    import torch

    flush = torch.empty(settings.flush_bytes, dtype=torch.int8, device="cuda") if settings.flushed else None

    def prepare():
        if flush is not None:
            flush.zero_()

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    queue_s = 0.0  # the longest the host took to queue one call
    start.record()
    for _ in range(5):
        prepare()
        began = time.perf_counter()
        fn()
        queue_s = max(queue_s, time.perf_counter() - began)
    end.record()
    torch.cuda.synchronize()
    estimate = max(
        start.elapsed_time(end) / 5, 1e-3
    )  # flush included: it bounds how many runs fit the target
    for _ in range(max(1, int(settings.warmup_ms / estimate))):
        fn()
    hold = queue_hold(queue_s)
    runs = int(min(settings.max_runs, max(settings.min_runs, settings.target_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        prepare()
        torch.cuda._sleep(hold)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return {**_summary([s.elapsed_time(e) for s, e in zip(starts, ends)], "runtime"), "timer": CUDA_TIMER}


def time_cuda_each(
    runs: dict[str, Callable[[], object]], settings: TimingSettings = DEFAULT_TIMING, rounds: int = 2
) -> dict[str, dict[str, Any]]:
    """Each of `runs` (a name: a call) timed by `time_cuda`, side by side as a comparison needs: each timing
    after the GPU idled `settings.cooldown_ms`, as the worker path idles before every candidate, in `rounds`
    rounds, the given order then reversed, so no side is always the first timed after a tune's heat or always
    the one timed right after another. A side's figure is its round with the lowest median; `round_ms` lists
    every round's median. The standalone benchmark scripts time their two sides with it (until 2026-12-04 they
    timed kt first, right after its tune, and the baseline right after kt, with no idle)."""
    names = list(runs)
    timed: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(max(1, rounds)):
        for name in names if index % 2 == 0 else reversed(names):
            time.sleep(settings.cooldown_ms / 1e3)
            timed[name].append(time_cuda(runs[name], settings))
    return {
        name: {**min(each, key=lambda t: t["runtime_ms"]), "round_ms": [t["runtime_ms"] for t in each]}
        for name, each in timed.items()
    }


# the hold lasts QUEUE_MARGIN times the host's longest queueing of one call, plus QUEUE_EXTRA_S
QUEUE_MARGIN = 2.0
QUEUE_EXTRA_S = 20e-6
QUEUE_MAX_S = 0.05  # a call that takes the host longer synchronizes inside it: holding longer gains nothing
_CYCLES_PER_S: dict[int, float] = {}


def queue_hold(queue_s: float) -> int:
    """GPU clock cycles of `torch.cuda._sleep` that outlast the host's queueing of one call (`queue_s` seconds,
    the longest of the first calls), with a margin for a slower queueing or a faster clock.

    Without it, a run's events also timed the host's launches whenever they took longer than the flush before
    them (about 55 us for 256 MB on an H200): on the 2026-12-04 H200 run's skinny m=16 problem, the split-K
    configs (a kernel, a sum and a copy) spread 30% to 350% from min to p80, its two classic single-launch
    configs 2% and 5%. The cycles per second are measured once per device (a sleep timed by events)."""
    import torch

    device = torch.cuda.current_device()
    if device not in _CYCLES_PER_S:
        cycles = 1_000_000
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)  # once to start the GPU's clock up
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        _CYCLES_PER_S[device] = cycles / max(start.elapsed_time(end) / 1000.0, 1e-6)
    return int(_CYCLES_PER_S[device] * (QUEUE_MARGIN * min(queue_s, QUEUE_MAX_S) + QUEUE_EXTRA_S))


def time_wall(fn: Callable[[], object], settings: TimingSettings = DRY_RUN_TIMING) -> dict[str, Any]:
    """The dry run's timer: wall-clock ms of `fn` on the CPU (one warm-up, then `min_runs` calls), named
    `wall_*` so that no figure of it is ever taken for a GPU runtime."""
    fn()
    times = []
    for _ in range(max(1, settings.min_runs)):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return {"wall_ms": statistics.median(times), "wall_runs": len(times), "timer": WALL_TIMER}


def _summary(times_ms: list[float], prefix: str) -> dict[str, Any]:
    times = sorted(times_ms)
    # 20th .. 80th percentiles within the data: the default (exclusive) method extrapolates past it under 4 runs
    # (p20 0.98 ms of runs 1.0, 1.1 and 1.2 ms)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return {
        f"{prefix}_ms": statistics.median(times),
        f"{prefix}_min_ms": times[0],
        f"{prefix}_p20_ms": q[0],
        f"{prefix}_p80_ms": q[3],
        "runs": len(times),
    }


class Nvml:
    """NVML for one GPU, probed once: `reason` says why its energy cannot be read (no NVML, no matching device,
    or a counter that refuses to be read, as on a vGPU or a MIG slice), else it is empty.

    `uuid` is the GPU's as torch reports it (matched against NVML's, since the two number devices differently);
    None takes NVML's only device. `nvml` is the pynvml module (a test passes another NVML library).
    """

    def __init__(self, uuid: str | None = None, nvml=None):
        self.handle, self.reason = None, ""
        self.board = None  # the matched device's handle, whether or not its energy counter reads
        try:
            if nvml is None:
                import pynvml as nvml
            self.pynvml = nvml
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            for i in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                if uuid and uuid.lower() in _text(nvml.nvmlDeviceGetUUID(handle)).lower():
                    self.handle = handle
            if self.handle is None and count == 1:
                only = nvml.nvmlDeviceGetHandleByIndex(0)
                if uuid and _mig_enabled(nvml, only):  # a MIG slice's UUID is none of NVML's devices'
                    self.reason = (
                        f"the GPU (UUID {uuid}) is a MIG slice: NVML's only energy counter is the whole "
                        "board's, other slices' work included"
                    )
                    return
                self.handle = only
            if self.handle is None:
                self.reason = f"no NVML device matches the GPU (UUID {uuid})"
                return
            self.board = self.handle
        except Exception as exc:  # NVML missing, old driver, or no permission: time without energy
            self.handle, self.reason = None, f"NVML unavailable: {one_line(exc)}"
            return
        try:  # a handle whose energy counter cannot be read: find out now, not in every candidate
            self.energy_mj()
        except Exception as exc:
            self.handle, self.reason = None, f"NVML energy counter not readable: {one_line(exc)}"

    @classmethod
    def for_torch_device(cls, index: int = 0) -> Nvml:
        """The NVML of the GPU torch calls cuda:`index`."""
        import torch

        return cls(str(torch.cuda.get_device_properties(index).uuid))

    def is_nvml_error(self, exc: BaseException) -> bool:
        error = getattr(getattr(self, "pynvml", None), "NVMLError", None)
        return error is not None and isinstance(exc, error)

    def energy_mj(self) -> int:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def sm_clock_mhz(self) -> int:
        return self.pynvml.nvmlDeviceGetClockInfo(self.handle, self.pynvml.NVML_CLOCK_SM)

    def temperature_c(self) -> int:
        return self.pynvml.nvmlDeviceGetTemperature(self.handle, self.pynvml.NVML_TEMPERATURE_GPU)

    def power_limit_w(self) -> float:
        """The enforced power limit in W (read, never changed), or 0.0 when NVML cannot say (no matching
        device, or a MIG slice, whose board's limit is not its own). Read from the device's handle even where
        its energy counter is not readable (a vGPU): the limit is."""
        if self.board is None:
            return 0.0
        try:
            return self.pynvml.nvmlDeviceGetEnforcedPowerLimit(self.board) / 1000.0
        except Exception as exc:
            if self.is_nvml_error(exc):
                return 0.0
            raise

    def driver_version(self) -> str:
        return _text(self.pynvml.nvmlSystemGetDriverVersion())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _replayer(step: Callable[[], None], reps: int) -> tuple[Callable[[], None], int, bool]:
    """(run, calls per run, graph used): a CUDA graph replaying `step` `reps` times, or, when the step cannot
    be captured, the step itself run from Python once per run."""
    import torch

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                step()
        return graph.replay, reps, True
    except Exception:
        torch.cuda.synchronize()
        return step, 1, False


def _loop_energy(
    meter, step: Callable[[], None], step_ms: float, seconds: float, during: Callable[[], None] | None = None
) -> tuple[float, float, int, bool]:
    """(joules, seconds, calls, graph used) of `step` repeated for about `seconds`, from the energy counter.
    `during()` runs once the loop is queued and before it ends: while the GPU runs it (its clock, say)."""
    import torch

    reps = max(1, min(2000, int(10.0 / max(step_ms, 1e-3))))  # one replay is about 10 ms of work
    replay, per_replay, graph = _replayer(step, reps)
    replays = max(1, int(seconds * 1000.0 / (step_ms * per_replay)))
    torch.cuda.synchronize()
    e0, t0 = meter.energy_mj(), time.perf_counter()
    for _ in range(replays):
        replay()
    if during is not None:  # queued in microseconds from CUDA graphs: wait until the loop is about half run
        time.sleep(max(0.0, replays * per_replay * step_ms / 2000.0 - (time.perf_counter() - t0)))
        during()
    torch.cuda.synchronize()
    e1, t1 = meter.energy_mj(), time.perf_counter()
    return (e1 - e0) / 1000.0, t1 - t0, replays * per_replay, graph


def energy_cuda(
    fn: Callable[[], object], runtime_ms: float, meter: Nvml, settings: TimingSettings = DEFAULT_TIMING
) -> dict[str, Any]:
    """Average power and energy per call of `fn`, under the settings' regime, with SM clock and temperature;
    `energy_status` says why a figure is missing (the runtime is never lost over an energy reading)."""
    import torch

    if meter.handle is None:
        return {"energy_status": meter.reason or "no energy counter"}
    flush = torch.empty(settings.flush_bytes, dtype=torch.int8, device="cuda") if settings.flushed else None
    state: dict[str, Any] = {}

    def read_state() -> None:  # while the kernel's loop runs: not the flush loop's (or an idle card's) clock
        # each a side reading: NVML refusing one (NotSupported on some boards) left the loop unsynchronized and
        # cost the energy figure the counter had read
        for name, read in (("sm_clock_mhz", meter.sm_clock_mhz), ("temperature_c", meter.temperature_c)):
            try:
                state[name] = read()
            except Exception as exc:
                if not meter.is_nvml_error(exc):
                    raise

    try:
        if flush is None:
            joules, seconds, calls, graph = _loop_energy(meter, fn, runtime_ms, settings.energy_s, read_state)
            flush_joules = flush_ms = 0.0
            loop_joules = joules
        else:
            flush_ms = _flush_ms(flush)
            pair_j, pair_s, calls, graph = _loop_energy(
                meter,
                lambda: (flush.zero_(), fn()),
                runtime_ms + flush_ms,
                settings.energy_s / 2,
                read_state,
            )
            only_j, _, flushes, flush_graph = _loop_energy(
                meter, flush.zero_, flush_ms, settings.energy_s / 2
            )
            graph = graph and flush_graph
            flush_joules = only_j / flushes
            joules, seconds = pair_j - flush_joules * calls, pair_s
            loop_joules = pair_j
        values: dict[str, Any] = {"cuda_graph": int(graph), "energy_loop_s": seconds}
        if joules <= 0:  # the counter did not move, or the flush's energy swamped the kernel's
            return {**values, "energy_status": "no energy figure: the counter moved too little over the loop"}
        energy_mj = joules * 1000.0 / calls
        # a call's time in the loop: a second of back-to-back calls can run slower than the timed ones (the
        # power cap's clocks), and the timed runtime then overstated the power (831 W on a 700 W H200)
        loop_ms = seconds * 1000.0 / calls - flush_ms
        values.update(
            energy_mj=energy_mj,
            power_w=energy_mj / max(runtime_ms, loop_ms),  # mJ per ms: the average power while it runs
            # the whole loop's average, flushes and all: what the card's power limit governs. The kernel's own
            # figure above can pass the limit (836 W on a 700 W H200, 2026-12-04) while the loop stays under it:
            # the limit holds an average over many calls, and the flushes between them draw less
            loop_power_w=loop_joules / seconds if seconds > 0 else None,
            **state,
            energy_status="ok",
        )
        if flush is not None:
            values["flush_energy_mj"] = flush_joules * 1000.0
        return values
    except Exception as exc:  # NVML refusing mid-run costs the energy figure, not the runtime
        if not meter.is_nvml_error(exc):
            raise
        return {"energy_status": f"energy reading failed: {one_line(exc)}"}


def _flush_ms(flush) -> float:
    """How long one flush takes (ms), from CUDA events over a few of them."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush.zero_()
    start.record()
    for _ in range(5):
        flush.zero_()
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end) / 5, 1e-3)
