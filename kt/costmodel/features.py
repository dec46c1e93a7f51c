"""Features of a candidate: what the cost model sees of a (problem, config, device) record.

A record is a plain dict: the problem's numbers (`GemmProblem.to_record()`: family, m, n, k, batch, dtype,
precision, itemsize, a_col, b_col) plus the config's (block_m, block_n, block_k, group_m, num_warps, num_stages,
split_k). Optional keys: `out_read` (1 when the epilogue reads the output too, as `C = A @ B + beta * C` does; no
kernel kt generates does), `a_cols` (the columns of A read from DRAM, where not k) and `a_ld` (A's row stride in
elements, where not `a_cols`: a block-sparse launch reads x's rows of in_features).
Nothing here knows codegen: the features are the physics of a tiled GEMM on the device profile.

`features(records, device)` returns one row per record with the columns `FEATURE_NAMES`:

| feature | meaning |
|---|---|
| log2_m, log2_n, log2_k, log2_batch | the problem's size |
| log2_flops | 2 * batch * m * n * k |
| log2_bytes | the least DRAM traffic: each operand read once, the output written once (and read, with out_read) |
| log2_intensity | FLOPs per byte of that traffic |
| log2_roofline_s | max(FLOPs / peak, bytes / DRAM bandwidth): the time no kernel can beat |
| compute_bound | 1 when the roofline's math term is the larger, else 0 |
| log2_balance | log2(math time / memory time) of the roofline: how far from the ridge point |
| log2_tiles_m, log2_tiles_n | output tiles along M and N |
| log2_k_steps | K steps each program takes (after split-K) |
| log2_programs | programs launched: tiles_m * tiles_n * split_k * batch |
| waves | programs over (SMs x programs resident per SM) |
| tail_fill | the waves' mean fill, waves / ceil(waves) (not the last wave's alone): 1.0 when every wave is full |
| padding_waste | the share of computed FLOPs that fall outside the problem (ragged tiles, split-K padding) |
| smem_kib | shared memory per program: stages * (block_m + block_n) * block_k * itemsize |
| blocks_per_sm | programs resident per SM, the least of the shared-memory, thread, register and block limits |
| occupancy | resident warps over the SM's maximum |
| acc_regs | fp32 accumulator registers per thread |
| log2_t_math, log2_t_smem, log2_t_l2, log2_t_dram | the analytic model's resource times over the roofline |
| log2_analytic | the analytic model's whole prediction over the roofline |
| block_m, block_n, block_k, group_m, num_warps, num_stages, split_k | the raw config |
| family | the op family's code (FAMILY_CODES) |
| itemsize, tensor_cores | operand bytes; 1 when the math runs on tensor cores |
| a_col, b_col, out_read | operand layouts (1 = stored transposed) and whether the output is also read |
| a_load_bytes, b_load_bytes | bytes of a tile row along each operand's contiguous dimension (how wide its loads can be) |
| a_align, b_align | the largest power of two (at most 16) dividing each operand's leading stride in bytes: 16 allows 128-bit loads |
| k_tail | the share of the last K step that is inside the problem (1.0 when K is a multiple of block_k) |
| mma_kind | 2: the tile can run Hopper's warpgroup MMA (sm_90, block_m >= 64, whole warpgroups); 1: mma.sync; 0: no tensor cores |
| sm_count, log2_peak_tflops | the device's SMs and its peak for the dtype: what lets one forest learn from several GPUs |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kt.costmodel.roofline import (
    columns,
    gemm_terms,
    out_read,
    roofline_terms,
    tensor_cores,
    wgmma_tile,
)
from kt.device import DeviceProfile

FAMILY_CODES = {"gemm": 0}
CONFIG_KEYS = ("block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages", "split_k")
PROBLEM_KEYS = ("family", "m", "n", "k", "batch", "dtype", "precision", "itemsize", "a_col", "b_col")

FEATURE_NAMES: tuple[str, ...] = (
    "log2_m",
    "log2_n",
    "log2_k",
    "log2_batch",
    "log2_flops",
    "log2_bytes",
    "log2_intensity",
    "log2_roofline_s",
    "compute_bound",
    "log2_balance",
    "log2_tiles_m",
    "log2_tiles_n",
    "log2_k_steps",
    "log2_programs",
    "waves",
    "tail_fill",
    "padding_waste",
    "smem_kib",
    "blocks_per_sm",
    "occupancy",
    "acc_regs",
    "log2_t_math",
    "log2_t_smem",
    "log2_t_l2",
    "log2_t_dram",
    "log2_analytic",
    *CONFIG_KEYS,
    "family",
    "itemsize",
    "tensor_cores",
    "a_col",
    "b_col",
    "out_read",
    "a_load_bytes",
    "b_load_bytes",
    "a_align",
    "b_align",
    "k_tail",
    "mma_kind",
    "sm_count",
    "log2_peak_tflops",
)


# What the baseline forest (the PyTorch path's own time: cuBLAS for a dense GEMM) sees: the problem, no config.
PROBLEM_FEATURE_NAMES: tuple[str, ...] = (
    "log2_m",
    "log2_n",
    "log2_k",
    "log2_batch",
    "log2_flops",
    "log2_bytes",
    "log2_intensity",
    "log2_roofline_s",
    "compute_bound",
    "log2_balance",
    "itemsize",
    "tensor_cores",
    "a_col",
    "b_col",
    "out_read",
    "a_align",
    "b_align",
    "sm_count",
    "log2_peak_tflops",
)


def column(records: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> np.ndarray:
    """`key` of every record as float64 (times `scale`), NaN where a record lacks it or holds None."""
    return np.array([np.nan if r.get(key) is None else r[key] * scale for r in records], dtype=np.float64)


def check_records(records: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError naming the first missing key or unknown family."""
    for i, record in enumerate(records):
        missing = [key for key in PROBLEM_KEYS + CONFIG_KEYS if key not in record]
        if missing:
            raise ValueError(f"record {i} lacks {', '.join(missing)}")
        if record["family"] not in FAMILY_CODES:
            raise ValueError(
                f"record {i}: family {record['family']!r} is unknown; allowed: {', '.join(FAMILY_CODES)}"
            )


def _problem_values(
    records: Sequence[dict[str, Any]],
    device: DeviceProfile,
    col: dict[str, np.ndarray],
    roof: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The features of the problem alone (PROBLEM_FEATURE_NAMES), shared by both feature sets."""
    a_col, b_col, eb = col["a_col"] > 0, col["b_col"] > 0, col["itemsize"]
    return {
        "log2_m": np.log2(col["m"]),
        "log2_n": np.log2(col["n"]),
        "log2_k": np.log2(col["k"]),
        "log2_batch": np.log2(col["batch"]),
        "log2_flops": np.log2(roof["flops"]),
        "log2_bytes": np.log2(roof["bytes"]),
        "log2_intensity": np.log2(roof["flops"] / roof["bytes"]),
        "log2_roofline_s": np.log2(np.maximum(roof["t_compute"], roof["t_memory"])),
        "compute_bound": (roof["t_compute"] >= roof["t_memory"]).astype(np.float64),
        "log2_balance": np.log2(roof["t_compute"] / roof["t_memory"]),
        "itemsize": eb,
        "tensor_cores": tensor_cores(records).astype(np.float64),
        "a_col": col["a_col"],
        "b_col": col["b_col"],
        "out_read": out_read(records),
        # A (m x k) is contiguous along k, or along m when stored transposed; B (k x n) along n, or along k.
        # A leading stride that is a multiple of 16 bytes lets the loads vectorise. A row-major A's stride is the
        # optional `a_ld`, else the columns it holds (`a_cols`): a block-sparse launch's k is its blocks' mean
        # depth (410 of 4096 columns at 10% density read as a misaligned x), and it reads x's own rows, of
        # in_features, not the columns its blocks meet (`a_cols`, 4092 of 4096 read as 8-byte aligned)
        "a_align": _pow2_divisor(np.where(a_col, col["m"], _a_stride(records)) * eb),
        "b_align": _pow2_divisor(np.where(b_col, col["k"], col["n"]) * eb),
        "sm_count": np.full(len(records), float(device.sm_count)),
        "log2_peak_tflops": np.log2(roof["flops"] / roof["t_compute"] / 1e12),
    }


def features(records: Sequence[dict[str, Any]], device: DeviceProfile) -> np.ndarray:
    """The (len(records), len(FEATURE_NAMES)) float64 feature matrix of `records` on `device`."""
    if len(records) == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    check_records(records)
    roof = roofline_terms(records, device)
    roof_s = np.maximum(roof["t_compute"], roof["t_memory"])
    terms = gemm_terms(records, device)
    col = columns(records, CONFIG_KEYS + ("m", "n", "k", "batch", "itemsize", "a_col", "b_col"))
    threads = col["num_warps"] * device.warp_size
    max_warps = device.max_threads_per_sm / device.warp_size
    values = {
        **_problem_values(records, device, col, roof),
        "log2_tiles_m": np.log2(terms["tiles_m"]),
        "log2_tiles_n": np.log2(terms["tiles_n"]),
        "log2_k_steps": np.log2(terms["k_steps"]),
        "log2_programs": np.log2(terms["programs"]),
        "waves": terms["waves"],
        "tail_fill": terms["tail_fill"],
        "padding_waste": terms["padding_waste"],
        "smem_kib": terms["smem_bytes"] / 1024,
        "blocks_per_sm": terms["blocks_per_sm"],
        "occupancy": np.minimum(1.0, terms["blocks_per_sm"] * threads / device.warp_size / max_warps),
        "acc_regs": terms["acc_regs"],
        "log2_t_math": np.log2(terms["t_math_s"] / roof_s),
        "log2_t_smem": np.log2(terms["t_smem_s"] / roof_s),
        "log2_t_l2": np.log2(terms["t_l2_s"] / roof_s),
        "log2_t_dram": np.log2(terms["t_dram_s"] / roof_s),
        "log2_analytic": np.log2(terms["predicted_s"] / roof_s),
        **{k: col[k] for k in CONFIG_KEYS},
        "family": np.array([FAMILY_CODES[r["family"]] for r in records], dtype=np.float64),
        # bytes of a tile row along each operand's contiguous dimension: how wide its loads can be
        "a_load_bytes": np.where(col["a_col"] > 0, col["block_m"], col["block_k"]) * col["itemsize"],
        "b_load_bytes": np.where(col["b_col"] > 0, col["block_k"], col["block_n"]) * col["itemsize"],
        "k_tail": (col["k"] - (np.ceil(col["k"] / col["block_k"]) - 1) * col["block_k"]) / col["block_k"],
        "mma_kind": mma_kind(records, col, device),
    }
    return np.column_stack([values[name] for name in FEATURE_NAMES])


def _a_stride(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """A row-major A's row stride in elements: the optional `a_ld` key, else the columns A holds."""
    return np.array([r.get("a_ld", r.get("a_cols", r["k"])) for r in records], dtype=np.float64)


def _pow2_divisor(values: np.ndarray, cap: int = 16) -> np.ndarray:
    """The largest power of two up to `cap` that divides each (integer-valued) entry."""
    ints = values.astype(np.int64)
    return np.minimum(ints & -ints, cap).astype(np.float64)


def mma_kind(
    records: Sequence[dict[str, Any]], col: dict[str, np.ndarray], device: DeviceProfile
) -> np.ndarray:
    """2 where a tile can run Hopper's warpgroup MMA, 1 where tensor cores run mma.sync, 0 without tensor
    cores (float32 with precision ieee)."""
    wgmma = (device.compute_capability >= 90) & wgmma_tile(records, col["block_m"], col["num_warps"])
    return np.where(tensor_cores(records), np.where(wgmma, 2.0, 1.0), 0.0)


def problem_features(records: Sequence[dict[str, Any]], device: DeviceProfile) -> np.ndarray:
    """The (len(records), len(PROBLEM_FEATURE_NAMES)) features of the problems alone (no config keys needed)."""
    if len(records) == 0:
        return np.zeros((0, len(PROBLEM_FEATURE_NAMES)))
    for i, record in enumerate(records):
        missing = [key for key in PROBLEM_KEYS if key not in record]
        if missing:
            raise ValueError(f"record {i} lacks {', '.join(missing)}")
    col = columns(records, ("m", "n", "k", "batch", "itemsize", "a_col", "b_col"))
    values = _problem_values(records, device, col, roofline_terms(records, device))
    return np.column_stack([values[name] for name in PROBLEM_FEATURE_NAMES])


def bound_by(records: Sequence[dict[str, Any]], device: DeviceProfile) -> list[str]:
    """Which resource the analytic model says limits each record: math, smem, l2 or dram."""
    if len(records) == 0:
        return []
    terms = gemm_terms(records, device)
    names = ("math", "smem", "l2", "dram")
    stacked = np.column_stack([terms[f"t_{n}_s"] for n in names])
    return [names[i] for i in stacked.argmax(axis=1)]
