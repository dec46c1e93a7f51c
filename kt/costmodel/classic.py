"""Two reference models to measure kt's own against: Triton's classic analytic matmul model, and a floor.

`ClassicTritonModel` re-derives the model that Triton shipped until 3.0 as `estimate_matmul_time` in
`triton/ops/matmul_perf_model.py` (what its `early_config_prune` and many autotuners ranked matmul configs by).
It is written from that model's description, not from its code. What the original modelled, per launch:

- compute: the launch's CTAs (tiles_m * tiles_n * split_k) each bring up to 4 warps; the tensor-core throughput
  they can use is the dtype's peak times min(those warps, 4 sub-cores per SM * SMs) / (4 * SMs), and the math
  takes 2 * M * N * K FLOPs at that rate;
- loads: DRAM bandwidth ramps with the CTAs in flight (95% of it at 32 CTAs, the last 5% reached at one CTA per
  SM); L2 bandwidth is a fixed multiple of it; A is read from DRAM once plus a fifth of its re-reads by the other
  column-tiles, the other four fifths hit L2 (B likewise over row-tiles); the time is DRAM bytes over DRAM
  bandwidth plus L2 bytes over L2 bandwidth;
- store: C is written at 60% of that (ramped) DRAM bandwidth; with split-K every split adds its partial sums
  into C (split_k times the bytes) after C has been zeroed;
- total: max(compute, loads) + store. Compute and loads overlap perfectly; the store does not overlap either.

What it leaves out, as the original did: pipeline stages (num_stages has no effect), warps beyond 4 per CTA (8
warps predict the same as 4), group_m (L2 reuse is the fixed 80% whatever the launch order), wave quantisation,
shared-memory traffic, launch overhead, operand layouts and an epilogue that reads C (`out_read`).

Where kt's version differs from the original, on purpose:

- units: the original mixed binary and decimal prefixes (GiB of FLOPs over TFLOP/s, MiB over GB/s), which
  skews compute against memory by about 2.4%; kt uses SI units throughout;
- peaks come from kt's DeviceProfile (`device.peak(dtype, precision)`, `device.dram_bandwidth`): the original
  read the SM clock and memory clock from the driver at run time. Float32 without tf32 gets the profile's FMA
  peak (the original took that path only before Ampere);
- the bandwidth ramp's last 5% ends at the profile's SM count; the original hard-coded 108 (an A100's SMs);
- zeroing C before a split-K reduction costs the output's itemsize per element (the original: 2 bytes);
- M and N are raised to their block sizes, as in the original, and M, N and K to at least 16 (kt's addition:
  the smallest tensor-core step; the original left K alone). These clamped sizes serve every term;
- batch > 1 multiplies the CTAs, the FLOPs and every byte count by batch (the original had no batch).

`MostCommonBestModel` is a floor that knows nothing of the hardware: it ranks configs by how often each was the
fastest across the problems it was fitted on.

Both models' outputs are predictions, never measurements: kt never stores or reports them as measured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from kt.costmodel.features import CONFIG_KEYS
from kt.costmodel.prediction import Prediction
from kt.costmodel.roofline import columns
from kt.device import DeviceProfile
from kt.errors import ModelError

# The original's constants.
SUBCORES_PER_SM = 4  # tensor-core sub-cores (warp schedulers) per SM, "on recent GPUs"
WARPS_PER_CTA_USED = 4  # a CTA keeps at most this many warps busy on the tensor cores; more warps add nothing
SATURATING_CTAS = 32  # CTAs in flight that reach most of the DRAM bandwidth
SATURATED_BW_SHARE = (
    0.95  # the share of DRAM bandwidth reached at SATURATING_CTAS; the rest by one CTA per SM
)
L2_OVER_DRAM = 4.0  # L2 bandwidth as a multiple of the (ramped) DRAM bandwidth: the original's rough guess
L2_REREAD_SHARE = (
    0.8  # the share of an operand's re-reads (by the other tiles) that hit L2; the rest go to DRAM
)
STORE_BW_SHARE = 0.6  # stores (and split-K reductions, and zeroing C) run at this share of the DRAM bandwidth

# kt's own constant.
MIN_DIM = 16  # M, N and K are raised to at least this (one tensor-core step); M and N to their blocks as well


def classic_terms(records: Sequence[dict[str, Any]], device: DeviceProfile) -> dict[str, np.ndarray]:
    """The classic model's pieces per record: times in seconds, bandwidths in bytes/s, FLOP/s, counts."""
    c = columns(
        records,
        ("m", "n", "k", "batch", "itemsize", "block_m", "block_n", "num_warps", "split_k"),
    )
    batch, eb, split = c["batch"], c["itemsize"], c["split_k"]
    bm, bn = c["block_m"], c["block_n"]
    tiles_m, tiles_n = np.ceil(c["m"] / bm), np.ceil(c["n"] / bn)
    ctas = tiles_m * tiles_n * split * batch
    # A problem smaller than one tile still computes and moves whole tiles.
    m = np.maximum.reduce([c["m"], bm, np.full_like(bm, MIN_DIM)])
    n = np.maximum.reduce([c["n"], bn, np.full_like(bn, MIN_DIM)])
    k = np.maximum(c["k"], MIN_DIM)

    # Compute: each CTA occupies at most 4 sub-cores; the chip has 4 per SM.
    subcores = SUBCORES_PER_SM * device.sm_count
    busy_warps = ctas * np.minimum(c["num_warps"], WARPS_PER_CTA_USED)
    peak = np.array([device.peak(r["dtype"], r["precision"]) for r in records], dtype=np.float64)
    throughput = np.minimum(busy_warps, subcores) / subcores * peak
    flops = 2 * batch * m * n * k
    t_compute = flops / throughput

    # Loads: bandwidth ramps with the CTAs in flight, steeply up to 32, then slowly up to one per SM.
    steep = np.minimum(1.0, ctas / SATURATING_CTAS)
    slow = np.clip((ctas - SATURATING_CTAS) / max(device.sm_count - SATURATING_CTAS, 1), 0.0, 1.0)
    dram_bw = device.dram_bandwidth * (SATURATED_BW_SHARE * steep + (1 - SATURATED_BW_SHARE) * slow)
    l2_bw = L2_OVER_DRAM * dram_bw
    a_bytes = batch * m * k * eb
    b_bytes = batch * n * k * eb
    a_rereads = tiles_n - 1  # every other column of tiles reads A's rows again
    b_rereads = tiles_m - 1  # every other row of tiles reads B's columns again
    dram_bytes = a_bytes * (1 + (1 - L2_REREAD_SHARE) * a_rereads) + b_bytes * (
        1 + (1 - L2_REREAD_SHARE) * b_rereads
    )
    l2_bytes = L2_REREAD_SHARE * (a_bytes * a_rereads + b_bytes * b_rereads)
    t_load = dram_bytes / dram_bw + l2_bytes / l2_bw

    # Store: C once, or each split's partial sums into a zeroed C.
    store_bw = STORE_BW_SHARE * dram_bw
    c_bytes = batch * m * n * eb
    store_bytes = c_bytes * split + np.where(split > 1, c_bytes, 0.0)
    t_store = store_bytes / store_bw

    return {
        "predicted_s": np.maximum(t_compute, t_load) + t_store,
        "t_compute_s": t_compute,
        "t_load_s": t_load,
        "t_store_s": t_store,
        "ctas": ctas,
        "throughput_flops": throughput,
        "dram_bw": dram_bw,
        "l2_bw": l2_bw,
        "dram_bytes": dram_bytes,
        "l2_bytes": l2_bytes,
        "store_bytes": store_bytes,
        "flops": flops,
    }


class ClassicTritonModel:
    """Triton's classic analytic matmul model (re-derived): `predict(records)` -> Prediction in seconds, no
    power, zero spread. See the module docstring for the formula and what it leaves out."""

    name = "classic-triton"
    predicts_power = False

    def __init__(self, device: DeviceProfile):
        self.device = device

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        runtime = classic_terms(records, self.device)["predicted_s"] if len(records) else np.zeros(0)
        return Prediction(runtime, np.zeros_like(runtime))


def config_of(record: dict[str, Any]) -> tuple[int, ...]:
    """The record's config as the tuple of CONFIG_KEYS."""
    return tuple(int(record[key]) for key in CONFIG_KEYS)


class MostCommonBestModel:
    """A floor with no hardware knowledge: configs ranked by how many problems each was the fastest in.

    `fit(records)` takes measured records (`runtime_ms` and `group`, the problem key) and counts, per config
    (the tuple of CONFIG_KEYS), the groups it was fastest in; among equal fastest runtimes the smallest tuple
    wins. Records without a positive, finite runtime_ms are skipped.

    `predict(records)` returns a Prediction whose `runtime_s` is NOT a time: it is a rank score that orders the
    configs in the call by (most wins first, then the config tuple ascending), so results are deterministic and
    configs never fastest in training come last. Each distinct config gets exp(0.002 * position), position
    0, 1, ... in that order (steps of 0.2%, wider than the 0.1% within which `kt.costmodel.rank` calls a tie).
    Scores depend on which configs the call holds; only the order within a call means anything. Its MAPE
    (or any error in seconds) is therefore meaningless; only its ranking metrics (top-1, top-k recall,
    Spearman within groups) are.
    """

    name = "most-common-best"
    predicts_power = False

    def __init__(self, device: DeviceProfile | None = None):
        self.device = device  # unused: kept for the same constructor as the other models
        self.wins: Counter[tuple[int, ...]] | None = None
        self.groups = 0

    @property
    def fitted(self) -> bool:
        return self.wins is not None

    def fit(self, records: Sequence[dict[str, Any]]) -> MostCommonBestModel:
        best: dict[Any, tuple[float, tuple[int, ...]]] = {}
        for record in records:
            runtime = record.get("runtime_ms")
            if runtime is None or not np.isfinite(runtime) or runtime <= 0:
                continue
            candidate = (float(runtime), config_of(record))
            group = record["group"]
            if group not in best or candidate < best[group]:
                best[group] = candidate
        self.wins = Counter(config for _, config in best.values())
        self.groups = len(best)
        return self

    def predict(self, records: Sequence[dict[str, Any]]) -> Prediction:
        if self.wins is None:
            raise ModelError("model: most-common-best is not fitted; call fit(records) first")
        configs = [config_of(r) for r in records]
        order = sorted(set(configs), key=lambda config: (-self.wins[config], config))
        position = {config: i for i, config in enumerate(order)}
        score = np.exp(0.002 * np.array([position[config] for config in configs], dtype=np.float64))
        return Prediction(score, np.zeros_like(score))

    def describe(self) -> str:
        if self.wins is None:
            return "most-common-best: not fitted"
        top = ", ".join(
            f"{'/'.join(map(str, config))} x{count}"
            for config, count in sorted(self.wins.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        )
        return (
            f"most-common-best: {self.groups} groups, {len(self.wins)} configs fastest somewhere"
            f"{'; top ' + top if top else ''} (config = {'/'.join(CONFIG_KEYS)}); scores rank, not seconds"
        )
