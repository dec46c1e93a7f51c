"""Predictions for configs that run as several launches (the block-GEMM families' `stages`).

Each launch of a structured op is a batched GEMM (one product per block), so any GEMM cost model predicts it:
a record with `stages` is predicted launch by launch and summed. A fused kernel saves the DRAM traffic of the
intermediate it keeps on chip (`fused_bytes`), taken off the sum but never below the slowest launch alone.
Feature-major ends add their transpose launches' traffic (`copy_bytes`) at the DRAM bandwidth, as separate
launches of a sum add their fp32 partial outputs' round trip.

A launch that reads or writes through a strided map can move far more than its bytes: a program touching one
or two adjacent elements still moves whole sectors. Its `dram_bytes` (kt.codegen.blockgemm.dram_bytes) floors
the launch's time at that traffic over the DRAM bandwidth, which no GEMM model (fitted on contiguous operands)
knows about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kt.costmodel.prediction import Prediction


def is_staged(records: Sequence[dict[str, Any]]) -> bool:
    return bool(records) and "stages" in records[0]


def predict_records(model, records: Sequence[dict[str, Any]]) -> Prediction:
    """`model.predict(records)`, summing over the launches of records that have `stages`."""
    if not is_staged(records):
        return model.predict(records)
    owner = np.array([i for i, r in enumerate(records) for _ in r["stages"]])
    flat = [stage for r in records for stage in r["stages"]]
    parts = model.predict(flat)
    floor = (
        np.array([stage.get("dram_bytes", 0) for stage in flat], dtype=np.float64)
        / model.device.dram_bandwidth
    )
    if floor.any():
        parts = replace(parts, runtime_s=np.maximum(parts.runtime_s, floor))
    n = len(records)
    runtime = np.bincount(owner, parts.runtime_s, minlength=n)
    slowest = np.zeros(n)
    np.maximum.at(slowest, owner, parts.runtime_s)
    runtime = _combined(records, runtime, slowest, model.device)
    # relative spreads of the launches combine like independent errors of their times
    absolute = np.sqrt(np.bincount(owner, (parts.runtime_s * parts.runtime_spread) ** 2, minlength=n))
    spread = absolute / np.maximum(runtime, 1e-12)
    power = power_spread = None
    if parts.power_w is not None:  # the time-weighted mean draw over the launches
        weights = parts.runtime_s / np.bincount(owner, parts.runtime_s, minlength=n)[owner]
        power = np.bincount(owner, weights * parts.power_w, minlength=n)
        power_spread = np.bincount(owner, weights * parts.power_spread_w, minlength=n)
    return Prediction(runtime, spread, power, power_spread)


def _combined(
    records: Sequence[dict[str, Any]], total: np.ndarray, slowest: np.ndarray, device
) -> np.ndarray:
    """Staged records' times from their launches' sum and slowest launch: the intermediate a fused kernel keeps
    on chip (`fused_bytes`) taken off, never below the slowest launch, and feature-major ends' transposes
    (`copy_bytes`, or a sum's partial outputs) added, both at the DRAM bandwidth."""
    saved = np.array([r.get("fused_bytes", 0) for r in records], dtype=np.float64) / device.dram_bandwidth
    copies = np.array([r.get("copy_bytes", 0) for r in records], dtype=np.float64) / device.dram_bandwidth
    return np.maximum(total - saved, slowest) + copies


def roofline_and_bound(records: Sequence[dict[str, Any]], device) -> tuple[np.ndarray, list[str]]:
    """Each record's roofline time (seconds; a staged record's launches `_combined` as `predict_records` does)
    and what bounds it (for a staged record, what bounds its slowest launch)."""
    from kt.costmodel.features import bound_by
    from kt.costmodel.roofline import roofline_time

    if not is_staged(records):
        return roofline_time(records, device), bound_by(records, device)
    totals, slowest, bounds = [], [], []
    for record in records:
        stage_times = roofline_time(record["stages"], device)
        totals.append(stage_times.sum())
        slowest.append(stage_times.max())
        bounds.append(bound_by(record["stages"], device)[int(np.argmax(stage_times))])
    return _combined(records, np.array(totals), np.array(slowest), device), bounds
