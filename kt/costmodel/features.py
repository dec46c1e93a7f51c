"""Features of a candidate: what the cost model sees of a (problem, config, device) record.

A record is a plain dict: the problem's numbers (`GemmProblem.to_record()`: family, m, n, k, batch, dtype,
precision, itemsize, a_col, b_col) plus the config's (block_m, block_n, block_k, group_m, num_warps, num_stages,
split_k). One optional key: `out_read` (1 when the epilogue reads the output too, as `C = A @ B + beta * C` does).
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
| tail_fill | the last wave's fill, waves / ceil(waves): 1.0 when every wave is full |
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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kt.costmodel.roofline import columns, gemm_terms, out_read, roofline_terms, tensor_cores
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
        "log2_m": np.log2(col["m"]),
        "log2_n": np.log2(col["n"]),
        "log2_k": np.log2(col["k"]),
        "log2_batch": np.log2(col["batch"]),
        "log2_flops": np.log2(roof["flops"]),
        "log2_bytes": np.log2(roof["bytes"]),
        "log2_intensity": np.log2(roof["flops"] / roof["bytes"]),
        "log2_roofline_s": np.log2(roof_s),
        "compute_bound": (roof["t_compute"] >= roof["t_memory"]).astype(np.float64),
        "log2_balance": np.log2(roof["t_compute"] / roof["t_memory"]),
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
        "itemsize": col["itemsize"],
        "tensor_cores": tensor_cores(records).astype(np.float64),
        "a_col": col["a_col"],
        "b_col": col["b_col"],
        "out_read": out_read(records),
    }
    return np.column_stack([values[name] for name in FEATURE_NAMES])


def bound_by(records: Sequence[dict[str, Any]], device: DeviceProfile) -> list[str]:
    """Which resource the analytic model says limits each record: math, smem, l2 or dram."""
    if len(records) == 0:
        return []
    terms = gemm_terms(records, device)
    names = ("math", "smem", "l2", "dram")
    stacked = np.column_stack([terms[f"t_{n}_s"] for n in names])
    return [names[i] for i in stacked.argmax(axis=1)]
