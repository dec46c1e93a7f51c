"""Calibration: measure a GPU's real ceilings once and store them as a device profile.

Limits (SMs, shared memory, registers, L2) are read from the driver (resident blocks per SM, which it does not
report, are the compute capability's); the two ceilings the roofline needs are measured: copy bandwidth (a
large device-to-device copy, bytes read plus bytes written) and matrix throughput (torch.matmul, i.e. cuBLAS,
on large random operands) per math path. The power limit is read, never changed (0, not known, where NVML
cannot say).
"""

from __future__ import annotations

import statistics
from datetime import date

import torch

from kt.device import CAPABILITIES, MAX_BLOCKS_PER_SM, DeviceProfile, match_gpu
from kt.errors import DeviceError, one_line

COPY_BYTES = 1 << 30
MATMUL_SIZE = 8192


def _median_ms(fn, runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(COPY_BYTES // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    return 2 * COPY_BYTES / (ms / 1e3)


def matmul_flops(dtype: torch.dtype, tf32: bool = False, size: int = MATMUL_SIZE) -> float:
    """FLOP/s of torch.matmul (cuBLAS) on random square operands."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        ms = _median_ms(lambda: torch.matmul(a, b), runs=10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * size**3 / (ms / 1e3)


def _power_limit_w() -> float:
    """The enforced power limit in W (read, never changed), or 0.0 when NVML cannot say (a profile's "not
    known", never a datasheet's figure: a card may be capped below it)."""
    from kt.autotune.timing import Nvml

    return Nvml.for_torch_device(torch.cuda.current_device()).power_limit_w()  # matched by UUID, not index


def calibrate(name: str | None = None) -> DeviceProfile:
    """Measure the current GPU. `name` defaults to the matching built-in's (h100, h200) or 'gpu'."""
    if not torch.cuda.is_available():
        raise DeviceError("calibrate measures a GPU and this machine has none")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    capability = 10 * props.major + props.minor
    if capability not in CAPABILITIES:  # refused before minutes of measuring
        raise DeviceError(
            f"calibrate: {props.name} is sm_{capability}; kt knows "
            f"{', '.join(f'sm_{c}' for c in CAPABILITIES)} (Ampere, Ada, Hopper), whose MMA its legality and "
            "cost model read"
        )
    builtin = match_gpu(props.name)
    fallback = builtin.to_dict() if builtin else {}

    def read(attribute: str, key: str):
        value = getattr(props, attribute, None)
        if value is None and key not in fallback:
            raise DeviceError(f"calibrate: torch reports no {attribute} for {props.name}")
        return value if value is not None else fallback[key]

    smem_block = getattr(props, "shared_memory_per_block_optin", None)
    if smem_block is None:
        from triton.runtime import driver

        smem_block = driver.active.utils.get_device_properties(torch.cuda.current_device())["max_shared_mem"]
    try:  # 2 GiB of copy and three 8192^2 operands: a shared or small card may not hold them
        peaks = {
            "float16": matmul_flops(torch.float16),
            "bfloat16": matmul_flops(torch.bfloat16),
            "tf32": matmul_flops(torch.float32, tf32=True),
            "float32": matmul_flops(torch.float32, tf32=False, size=4096),
        }
        bandwidth = copy_bandwidth()
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; a busy exclusive-process card another
        raise DeviceError(f"calibrate: measuring {props.name} failed: {one_line(exc)}") from None
    return DeviceProfile(
        name=name or (builtin.name if builtin else "gpu"),
        gpu_name=props.name,
        sm_count=props.multi_processor_count,
        smem_per_block=int(smem_block),
        smem_per_sm=int(read("shared_memory_per_multiprocessor", "smem_per_sm")),
        regs_per_sm=int(read("regs_per_multiprocessor", "regs_per_sm")),
        max_regs_per_thread=int(fallback.get("max_regs_per_thread", 255)),
        max_threads_per_sm=int(read("max_threads_per_multi_processor", "max_threads_per_sm")),
        max_blocks_per_sm=MAX_BLOCKS_PER_SM[capability],  # the driver does not report it
        l2_bytes=int(read("L2_cache_size", "l2_bytes")),
        dram_bandwidth=bandwidth,
        peak_flops=peaks,
        tdp_w=_power_limit_w(),
        compute_capability=capability,
        warp_size=int(getattr(props, "warp_size", 32)),
        source=f"calibrated on {date.today().isoformat()} with `kt calibrate` (torch {torch.__version__})",
    )
