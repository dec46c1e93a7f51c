"""Which GPU kt would measure on, learned without a CUDA context in kt's own process.

A GPU in exclusive-process compute mode takes one CUDA context at a time, and kt's GPU worker needs it. So the
parent process asks NVML (which creates no context) for the name and compute capability of the GPU that torch
will call cuda:0, and only when NVML cannot say for sure asks a short-lived subprocess, whose context is gone
before the GPU worker starts.

torch numbers GPUs after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, NVML by PCI bus: a UUID in
CUDA_VISIBLE_DEVICES is matched exactly, an index only where the two orders agree (CUDA_DEVICE_ORDER=PCI_BUS_ID)
or where every GPU of the machine is the same model.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from kt.errors import DeviceError, option


@dataclass(frozen=True)
class GpuInfo:
    name: str  # as the driver names it, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: int  # 10 * major + minor
    uuid: str = ""
    driver: str = ""
    max_sm_clock_mhz: int | None = None
    power_limit_w: float | None = None
    source: str = "nvml"  # nvml | subprocess
    memory_bytes: int | None = None  # the GPU's total memory, as NVML or torch reports it


_PROBE = """
import json, torch
p = torch.cuda.get_device_properties(0)
print(json.dumps({"name": p.name, "compute_capability": 10 * p.major + p.minor, "uuid": str(p.uuid),
                  "memory_bytes": p.total_memory}))
"""


@functools.lru_cache(maxsize=1)
def visible_gpu() -> GpuInfo:
    """The GPU that torch calls cuda:0 in a fresh process, without creating a CUDA context here."""
    info = _from_nvml()
    return info if info is not None else _from_subprocess()


@dataclass(frozen=True)
class GpuSlot:
    """One GPU a measuring worker runs on: its index in kt's own numbering (torch's cuda:N here), the
    CUDA_VISIBLE_DEVICES entry that shows the worker this GPU alone, and what it is."""

    index: int
    visible: str
    info: GpuInfo


def visible_entries() -> list[str]:
    """The machine's GPUs as CUDA_VISIBLE_DEVICES entries in torch's order: the variable's own entries when it
    is set, else one index per GPU NVML counts (["0"] when NVML cannot count them)."""
    entries = _cuda_visible_devices()
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # no NVML: cuda:0 alone
        count = None
    if entries is None:
        return [str(i) for i in range(max(1, count or 1))]
    if count:
        # as CUDA reads the list, it also ends at an index the machine has not (`0,7` on one GPU: GPU 0)
        ending = next((i for i, e in enumerate(entries) if e.isdigit() and int(e) >= count), len(entries))
        entries = entries[:ending]
    return entries


def parse_gpus(text: str) -> list[int] | None:
    """`--gpus`: "all" (None: every visible GPU of cuda:0's model) or comma-separated indices in kt's
    numbering (torch's cuda:N, after CUDA_VISIBLE_DEVICES)."""
    if text.strip() == "all":
        return None
    items = [item.strip() for item in text.split(",")]
    if not items or not all(item.isascii() and item.isdigit() for item in items):
        raise DeviceError(f"--gpus: {text!r} is not allowed; give all, or GPU indices such as 0,1,3")
    indices = [int(item) for item in items]
    if len(set(indices)) != len(indices):
        raise DeviceError(f"--gpus: {text!r} names a GPU twice")
    return indices


def machine_gpus(indices: list[int] | None = None, nvml=None) -> list[GpuSlot]:
    """The GPUs to measure on, one GPU worker each: `indices` (kt's numbering), or every visible GPU of the
    model torch calls cuda:0. Every one must be the same model (one tune has one device profile, and the model
    refits on all of their rows); naming GPUs of two models is a DeviceError."""
    entries = visible_entries()
    if not entries:  # torch sees no GPU either: CudaRunner took GPU 0 of none (an IndexError)
        raise DeviceError(
            f"device: no GPU is visible here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}: an empty list, an entry given twice, or none "
            "that is a GPU index or UUID)"
        )
    chosen = range(len(entries)) if indices is None else indices
    for index in chosen:
        if index >= len(entries):
            raise DeviceError(
                f"{option('gpus')}: GPU {index} is not visible here; allowed: 0 to {len(entries) - 1}"
                + (" (after CUDA_VISIBLE_DEVICES)" if "CUDA_VISIBLE_DEVICES" in os.environ else "")
            )
    slots = []
    for index in chosen:
        info = _from_nvml(nvml, entries[index]) or _from_subprocess(entries[index])
        slots.append(GpuSlot(index, entries[index], info))
    if indices is None:  # every visible GPU of cuda:0's model
        return [slot for slot in slots if slot.info.name == slots[0].info.name]
    models = {slot.info.name for slot in slots}
    if len(models) > 1:
        named = ", ".join(f"{slot.index} ({slot.info.name})" for slot in slots)
        raise DeviceError(f"{option('gpus')}: GPUs {named} are not one model; give GPUs of one model")
    return slots


def _cuda_visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES's entries (indices, GPU- or MIG- UUIDs), or None when it is unset. As CUDA reads it,
    the list ends before its first entry that is none of those (`1,-1` shows one GPU: two workers were
    planned, the second on no GPU), and an entry given twice shows none (`0,0`, as torch reads it: two workers
    were planned on one GPU)."""
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return None
    entries = []
    for entry in os.environ["CUDA_VISIBLE_DEVICES"].split(","):
        entry = entry.strip()
        if not ((entry.isascii() and entry.isdigit()) or entry.startswith(("GPU-", "MIG-"))):  # '²' isdigit()
            break
        if entry in entries or (entry.isdigit() and int(entry) in map(_index, entries)):  # `0,00` too
            return []
        entries.append(entry)
    return entries


def _index(entry: str) -> int | None:
    return int(entry) if entry.isdigit() else None


def _visible_entry() -> str | None:
    """The first entry of CUDA_VISIBLE_DEVICES, or None when it is unset or empty."""
    entries = _cuda_visible_devices()
    return entries[0] if entries else None


_CUDA_0 = object()  # _from_nvml's default entry: whatever torch calls cuda:0


def mig_enabled(nvml, handle) -> bool:
    """Whether MIG mode is on for the board `handle` (False where NVML cannot say: no MIG on that card)."""
    try:
        return bool(nvml.nvmlDeviceGetMigMode(handle)[0])
    except Exception:
        return False


def _from_nvml(nvml=None, entry: str | None | object = _CUDA_0) -> GpuInfo | None:
    """The GPU from NVML, or None when NVML is missing or cannot tell which device it is: torch's cuda:0, or the
    one a CUDA_VISIBLE_DEVICES `entry` (an index in CUDA's order, or a UUID) names."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        if not handles:
            return None
        if entry is _CUDA_0:
            entry = _visible_entry()
        handle = None
        if entry is not None and entry.startswith("GPU-"):
            handle = next((h for h in handles if _text(nvml.nvmlDeviceGetUUID(h)).startswith(entry)), None)
        elif entry is not None and entry.startswith("MIG-"):
            return None  # a MIG slice: its profile is not the whole GPU's; ask torch
        else:
            if entry is not None and not entry.isdigit():
                return None  # no GPU CUDA would show (it was NVML's first)
            index = int(entry) if entry is not None else 0
            names = {_text(nvml.nvmlDeviceGetName(h)) for h in handles}
            same_order = os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
            if index < len(handles) and (same_order or len(names) == 1):
                handle = handles[index]
        if handle is None or mig_enabled(nvml, handle):
            # a board in MIG mode: CUDA's device is a slice of it (a MIG container sets no CUDA_VISIBLE_DEVICES),
            # whose memory and profile are not the board's; torch names it
            return None
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuInfo(
            _text(nvml.nvmlDeviceGetName(handle)),
            10 * major + minor,
            _text(nvml.nvmlDeviceGetUUID(handle)),
            _text(nvml.nvmlSystemGetDriverVersion()),
            _optional(lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))),
            _optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
            memory_bytes=_optional(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total)),
        )
    except Exception:  # no NVML library, no driver, no permission: ask torch in a subprocess
        return None


def _from_subprocess(visible: str | None = None) -> GpuInfo:
    """torch's cuda:0 in a short-lived process (its CUDA context gone before any worker starts); with
    `visible`, the GPU that CUDA_VISIBLE_DEVICES entry names."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible} if visible is not None else None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"device: cannot ask torch which GPU this is ({exc})") from None
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-1:])
        raise DeviceError(f"device: torch cannot open the GPU: {tail}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return GpuInfo(
        data["name"],
        data["compute_capability"],
        data["uuid"],
        source="subprocess",
        memory_bytes=data.get("memory_bytes"),
    )


def _optional(read):
    try:
        return read()
    except Exception:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
