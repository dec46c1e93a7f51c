"""An analytic runtime model for GEMM configs, from the device profile alone (no measurements).

It ranks candidates until the learned cost model replaces it, and its terms become that model's features.
Every term is a time a resource needs, on the padded problem the tiles actually compute:

- tensor-core math: padded FLOPs at the peak rate, derated for tiles too small for Hopper's warpgroup MMA;
- shared-memory feed: each K step moves (BM + BN) * BK operands into shared memory for 2 * BM * BN * BK FLOPs
  (the L2 term's bytes, at 128 B per clock per SM at the H100's clock for every profile: above the L2 term's
  bandwidth on every profile kt ships, so it never bounds; its feature is the L2 one's less a constant per
  device, kept for the forests fitted with it);
- L2 traffic: every program streams its A rows and B columns, at 4x the DRAM bandwidth (which gives the H200
  43% more than the H100, whose L2 it shares);
- DRAM traffic: each operand once, plus split-K partial sums written and read back (the wrapper's final sum
  of them, another fp32 output written and read, and its launch are not counted);
- quantisation: programs run in waves over the SMs, and the last wave may be nearly empty (this scales
  whichever resource bounds the kernel);
- fixed costs: a launch, and each wave's pipeline fill and epilogue.

Records are plain dicts (problem numbers plus config), so this module knows nothing of codegen.
Its output is a prediction, never a measurement: kt never stores or reports it as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kt.costmodel.prediction import Prediction
from kt.device import DeviceProfile

LAUNCH_S = 4e-6  # one kernel launch on the GPU's timeline
WAVE_S = 1.5e-6  # pipeline fill plus epilogue of one wave of programs
SMEM_BYTES_PER_CLOCK = 128  # per SM
SM_CLOCK_HZ = 1.755e9  # H100 SXM boost clock under load
L2_OVER_DRAM = 4.0  # L2 bandwidth as a multiple of DRAM bandwidth: cuBLAS-class 4096^3 fp16 needs over 8 TB/s
K_STEP_OVERHEAD = (
    8  # each K step costs about as much as this many extra K of math (barriers, address updates)
)


def columns(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """name -> float64 array of that key over the records."""
    return {name: np.array([r[name] for r in records], dtype=np.float64) for name in names}


def out_read(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """1.0 where the epilogue also reads the output (the optional `out_read` key), else 0.0. No kernel kt
    generates reads its output: the key is absent from kt's own rows, and the feature 0 on them."""
    return np.array([r.get("out_read", 0) for r in records], dtype=np.float64)


def a_columns(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The columns of A each row reads from DRAM: the optional `a_cols` key, else k. A block-sparse launch
    sums over its blocks' mean depth (k) but reads every column of x that a stored block meets: at 10% density
    its x is 1/density times the k columns' bytes, and a roofline of k columns lay below the DRAM floor."""
    return np.array([r.get("a_cols", r["k"]) for r in records], dtype=np.float64)


def tensor_cores(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """True where the math runs on tensor cores: every dtype but float32, which needs precision tf32."""
    return np.array([r["dtype"] != "float32" or r["precision"] == "tf32" for r in records])


def roofline_terms(records: Sequence[dict[str, Any]], device: DeviceProfile) -> dict[str, np.ndarray]:
    """FLOPs, the least DRAM bytes, and the roofline's math and memory times (seconds) per record.

    The least bytes: each operand read once (A's `a_columns`) and the output written once (and read too when
    the record's optional `out_read` is 1, as in C = A @ B + beta * C).
    """
    c = columns(records, ("m", "n", "k", "batch", "itemsize"))
    reads_out = out_read(records)
    flops = 2 * c["batch"] * c["m"] * c["n"] * c["k"]
    a_bytes = c["m"] * a_columns(records)
    nbytes = c["batch"] * (a_bytes + c["k"] * c["n"] + (1 + reads_out) * c["m"] * c["n"]) * c["itemsize"]
    peak = np.array([device.peak(r["dtype"], r["precision"]) for r in records])
    return {
        "flops": flops,
        "bytes": nbytes,
        "t_compute": flops / peak,
        "t_memory": nbytes / device.dram_bandwidth,
    }


def roofline_time(records: Sequence[dict[str, Any]], device: DeviceProfile) -> np.ndarray:
    """The roofline: max(FLOPs / peak, least bytes / DRAM bandwidth), in seconds."""
    terms = roofline_terms(records, device)
    return np.maximum(terms["t_compute"], terms["t_memory"])


def wgmma_tile(records: Sequence[dict[str, Any]], block_m: np.ndarray, num_warps: np.ndarray) -> np.ndarray:
    """Where a tile can run Hopper's warpgroup MMA: 64 rows or more, whole warpgroups, and a 2D dot (a record
    with `mma: "sync"` is the fused Monarch's batched 3D dot, which Triton lowers to mma.sync everywhere)."""
    return (block_m >= 64) & (num_warps % 4 == 0) & np.array([r.get("mma") != "sync" for r in records])


def wgmma_reason(record: dict[str, Any], device: DeviceProfile) -> str | None:
    """Why one launch's record cannot run Hopper's warpgroup MMA on `device`, or None when it can (the
    scalar twin of `wgmma_tile`, for `kt show --ptx`'s table)."""
    if not tensor_cores([record])[0]:
        return "float32 with ieee precision: no tensor cores"
    if device.compute_capability < 90:
        return f"sm_{device.compute_capability} has no wgmma (mma.sync is its tensor-core MMA)"
    if record.get("mma") == "sync":
        return "batched 3D dots (the fused Monarch), which Triton lowers to mma.sync"
    if record["block_m"] < 64:
        return f"a tile of {record['block_m']} rows (wgmma needs 64)"
    if record["num_warps"] % 4:
        return f"{record['num_warps']} warps (wgmma needs whole warpgroups of 4)"
    return None


def launch_wgmma_reasons(record: dict[str, Any], device: DeviceProfile) -> list[str | None]:
    """`wgmma_reason` for each launch of a config's record (its `stages`, or the record itself)."""
    return [wgmma_reason(r, device) for r in record.get("stages") or [record]]


def expected_mma(record: dict[str, Any], device: DeviceProfile) -> tuple[str, str | None]:
    """The MMA a config's launches get on `device` as the model sees them: (wgmma | mma.sync | none, the first
    launch's reason for not using wgmma, or None)."""
    why = next((r for r in launch_wgmma_reasons(record, device) if r), None)
    if why is None:
        return "wgmma", None
    return ("mma.sync" if tensor_cores([record])[0] else "none"), why


def gemm_terms(records: Sequence[dict[str, Any]], device: DeviceProfile) -> dict[str, np.ndarray]:
    """The model's named terms per record (seconds, counts or fractions), for ranking and as features."""
    c = columns(
        records,
        (
            "m",
            "n",
            "k",
            "batch",
            "itemsize",
            "block_m",
            "block_n",
            "block_k",
            "group_m",
            "num_warps",
            "num_stages",
            "split_k",
        ),
    )
    m, n, k, batch, eb = c["m"], c["n"], c["k"], c["batch"], c["itemsize"]
    bm, bn, bk, warps, stages, split = (
        c[x] for x in ("block_m", "block_n", "block_k", "num_warps", "num_stages", "split_k")
    )
    tiles_m, tiles_n = np.ceil(m / bm), np.ceil(n / bn)
    k_per_split = np.ceil(np.ceil(k / bk) / split) * bk
    programs = tiles_m * tiles_n * split * batch
    padded_flops = 2 * batch * (tiles_m * bm) * (tiles_n * bn) * (k_per_split * split)
    flops = 2 * batch * m * n * k

    threads = warps * device.warp_size
    smem = stages * (bm + bn) * bk * eb
    acc_regs = bm * bn / threads
    regs = np.minimum(device.max_regs_per_thread, 1.25 * acc_regs + 40)
    per_sm = np.minimum.reduce(
        [
            np.full_like(m, device.max_blocks_per_sm),
            np.floor(device.smem_per_sm / smem),
            np.floor(device.max_threads_per_sm / threads),
            np.floor(device.regs_per_sm / (regs * threads)),
        ]
    )
    per_sm = np.maximum(per_sm, 1)
    slots = device.sm_count * per_sm
    waves = programs / slots
    tail_fill = waves / np.ceil(waves)  # the waves' mean fill: 1.0 when every wave is full

    peak = np.array([device.peak(r["dtype"], r["precision"]) for r in records])
    on_tensor_cores = tensor_cores(records)
    # Hopper's warpgroup MMA needs 64 rows and whole warpgroups; smaller tiles fall back to mma.sync. Before
    # Hopper every tile runs mma.sync, and the datasheet peak is mma.sync's.
    wgmma = wgmma_tile(records, bm, warps)
    hopper = device.compute_capability >= 90
    mma_eff = np.where(on_tensor_cores & ~wgmma & hopper, 0.6, 1.0)
    # Too few warps per SM leave the math units waiting on memory latency.
    active_warps = per_sm * warps
    mma_eff = mma_eff * np.minimum(1.0, 0.55 + 0.45 * active_warps / 8)
    # Shallow pipelines expose load latency; short K steps pay the loop's fixed cost more often.
    mma_eff = mma_eff * np.where(stages >= 3, 1.0, 0.85) * bk / (bk + K_STEP_OVERHEAD)
    t_math = padded_flops / (peak * mma_eff)

    intensity = 2 * bm * bn / ((bm + bn) * eb)  # FLOPs per byte staged through shared memory
    smem_bw = SMEM_BYTES_PER_CLOCK * SM_CLOCK_HZ * device.sm_count
    t_smem = padded_flops / intensity / smem_bw

    l2_bytes = programs * (bm + bn) * k_per_split * eb
    t_l2 = l2_bytes / (L2_OVER_DRAM * device.dram_bandwidth)

    operand_bytes = batch * (m * a_columns(records) + k * n) * eb
    # Without grouping, a B tile is evicted before the next row of tiles reuses it once operands outgrow L2.
    reuse_penalty = np.where((c["group_m"] == 1) & (operand_bytes > device.l2_bytes), 1.3, 1.0)
    out_bytes = (1 + out_read(records)) * batch * m * n * eb
    partial_bytes = np.where(split > 1, 2 * split * batch * m * n * 4, 0.0)
    t_dram = (operand_bytes * reuse_penalty + out_bytes + partial_bytes) / device.dram_bandwidth

    # The terms above assume work spread over every SM. Programs run in waves: fewer programs than slots use
    # only part of the chip, and a partly filled last wave takes as long as a full one.
    busy_sms = np.minimum(programs, device.sm_count) / device.sm_count
    chip_share = np.where(waves < 1, busy_sms, tail_fill)
    bound = np.maximum.reduce([t_math, t_smem, t_l2, t_dram]) / chip_share

    fixed = LAUNCH_S + np.ceil(waves) * WAVE_S + np.where(split > 1, LAUNCH_S, 0.0)
    predicted = bound + fixed
    return {
        "predicted_s": predicted,
        "roofline_s": roofline_time(records, device),
        "t_math_s": t_math,
        "t_smem_s": t_smem,
        "t_l2_s": t_l2,
        "t_dram_s": t_dram,
        "flops": flops,
        "padding_waste": 1 - flops / padded_flops,
        "tiles_m": tiles_m,
        "tiles_n": tiles_n,
        "k_steps": k_per_split / bk,  # K steps each program takes
        "programs": programs,
        "waves": waves,
        "tail_fill": tail_fill,
        "blocks_per_sm": per_sm,
        "smem_bytes": smem,
        "acc_regs": acc_regs,
    }


def preference(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """Tie-break among equal predictions: distance from the conventional choice (lower is preferred).

    3-4 stages, GROUP_M 8, and the larger K step; used only to order configs the model cannot tell apart.
    """
    c = columns(records, ("num_stages", "group_m", "block_k", "num_warps"))
    return np.abs(c["num_stages"] - 3.5) + (c["group_m"] != 8) + 1.0 / c["block_k"] + 0.1 / c["num_warps"]


def rank(records: Sequence[dict[str, Any]], predicted: np.ndarray) -> np.ndarray:
    """Indices of `records` from best to worst predicted, ties (within 0.1%) broken by `preference`."""
    if len(records) == 0:
        return np.zeros(0, dtype=int)
    bucket = np.round(np.log(np.maximum(predicted, 1e-12)) / np.log1p(1e-3))
    return np.lexsort((preference(records), bucket))


class AnalyticModel:
    """Predicts GEMM runtime from the device profile alone: `predict(records)` -> Prediction (no power, and no
    uncertainty: its spread is zero)."""

    name = "analytic"
    predicts_power = False

    def __init__(self, device: DeviceProfile):
        self.device = device

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        runtime = gemm_terms(records, self.device)["predicted_s"] if records else np.zeros(0)
        return Prediction(runtime, np.zeros_like(runtime))
