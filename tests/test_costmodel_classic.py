"""The classic Triton analytic model on hand-computed cases, and the most-common-best floor on hand-built records.

Every number here is an input or a hand computation from the model's formula: none is a GPU measurement. The
runtime_ms values of the floor's records are made-up test inputs.
"""

import dataclasses
import math

import numpy as np
import pytest

from kt.codegen import FAMILIES, GemmConfig
from kt.costmodel.classic import ClassicTritonModel, MostCommonBestModel, classic_terms, config_of
from kt.device import H100
from kt.errors import ModelError
from kt.ir import GemmProblem

# A made-up profile with round numbers, so the hand computations stay readable: 64 SMs (256 sub-cores),
# 1 TB/s DRAM (so 4 TB/s L2), 100 TFLOP/s fp16.
TOY = dataclasses.replace(
    H100,
    name="toy",
    sm_count=64,
    dram_bandwidth=1e12,
    peak_flops={"float16": 1e14, "bfloat16": 1e14, "tf32": 5e13, "float32": 1e13},
)


def rec(m, n, k, bm, bn, bk=32, warps=4, split=1, batch=1, dtype="float16", stages=3, group_m=8):
    return {
        "family": "gemm",
        "m": m,
        "n": n,
        "k": k,
        "batch": batch,
        "dtype": dtype,
        "precision": "tf32" if dtype == "float32" else "ieee",
        "itemsize": 4 if dtype == "float32" else 2,
        "a_col": 0,
        "b_col": 0,
        "block_m": bm,
        "block_n": bn,
        "block_k": bk,
        "group_m": group_m,
        "num_warps": warps,
        "num_stages": stages,
        "split_k": split,
    }


def terms(*records, device=TOY):
    return classic_terms(list(records), device)


def test_compute_dominates_a_large_square_gemm_on_a_slow_core():
    t = terms(rec(4096, 4096, 4096, 128, 128))
    # 32 x 32 tiles = 1024 CTAs, 4096 warps >= 256 sub-cores: the full 1e14 FLOP/s.
    compute = 2 * 4096**3 / 1e14
    # Each operand 4096 * 4096 * 2 bytes, re-read by the 31 other tiles of the other dimension.
    op = 4096 * 4096 * 2
    load = 2 * op * (1 + 0.2 * 31) / 1e12 + 2 * op * 0.8 * 31 / 4e12
    store = op / (0.6 * 1e12)
    assert t["t_compute_s"][0] == pytest.approx(compute)
    assert t["t_load_s"][0] == pytest.approx(load)
    assert t["t_store_s"][0] == pytest.approx(store)
    assert compute > load
    assert t["predicted_s"][0] == pytest.approx(compute + store)


def test_loads_dominate_a_skinny_gemm():
    t = terms(rec(16, 4096, 4096, 16, 64))
    # 1 x 64 tiles = 64 CTAs = one per SM: full DRAM bandwidth, and 256 warps fill the 256 sub-cores.
    compute = 2 * 16 * 4096 * 4096 / 1e14
    a, b = 16 * 4096 * 2, 4096 * 4096 * 2
    load = (a * (1 + 0.2 * 63) + b) / 1e12 + a * 0.8 * 63 / 4e12
    store = 16 * 4096 * 2 / 0.6e12
    assert t["ctas"][0] == 64
    assert t["dram_bw"][0] == pytest.approx(1e12)
    assert t["t_compute_s"][0] == pytest.approx(compute)
    assert t["t_load_s"][0] == pytest.approx(load)
    assert load > compute
    assert t["predicted_s"][0] == pytest.approx(load + store)


def test_split_k_adds_reduction_and_zeroing_to_the_store():
    t = terms(rec(1024, 1024, 4096, 64, 64), rec(1024, 1024, 4096, 64, 64, split=4))
    one, four = t["predicted_s"]
    # 256 CTAs and 1024 CTAs both saturate compute and bandwidth: only the store differs.
    assert t["t_compute_s"][0] == pytest.approx(t["t_compute_s"][1])
    assert t["t_load_s"][0] == pytest.approx(t["t_load_s"][1])
    c_bytes = 1024 * 1024 * 2
    assert t["t_store_s"][0] == pytest.approx(c_bytes / 0.6e12)
    assert t["t_store_s"][1] == pytest.approx((4 + 1) * c_bytes / 0.6e12)
    assert four - one == pytest.approx(4 * c_bytes / 0.6e12)


def test_more_ctas_speed_up_compute_until_the_sub_cores_are_full():
    t = terms(
        rec(1024, 1024, 1024, 256, 256),  # 16 CTAs x 4 warps = 64 of 256 sub-cores
        rec(1024, 1024, 1024, 128, 128),  # 64 CTAs x 4 warps = 256: full
        rec(1024, 1024, 1024, 64, 64),  # 256 CTAs: still full, no faster
        rec(1024, 1024, 1024, 128, 128, warps=2),  # 64 CTAs x 2 warps = 128: half
        rec(1024, 1024, 1024, 128, 128, warps=8),  # warps beyond 4 add nothing
    )["t_compute_s"]
    full = 2 * 1024**3 / 1e14
    assert t == pytest.approx([4 * full, full, full, 2 * full, full])


def test_fewer_than_32_ctas_reduce_dram_bandwidth():
    ctas = [8, 32, 48, 64, 200]
    bw = terms(*[rec(64 * c, 64, 1024, 64, 64) for c in ctas])["dram_bw"]
    # 95% of it ramps in up to 32 CTAs, the last 5% from 32 to 64 (the SM count).
    expected = [0.95 * 8 / 32, 0.95, 0.95 + 0.05 * 16 / 32, 1.0, 1.0]
    assert bw == pytest.approx([e * 1e12 for e in expected])


def test_few_ctas_slow_the_same_bytes_down():
    # A single tile: 1 CTA gets 0.95 / 32 of DRAM bandwidth for its loads and its store.
    t = terms(rec(64, 64, 4096, 64, 64))
    bw = 0.95 / 32 * 1e12
    bytes_ab = 2 * 64 * 4096 * 2
    assert t["t_load_s"][0] == pytest.approx(bytes_ab / bw)
    assert t["t_store_s"][0] == pytest.approx(64 * 64 * 2 / (0.6 * bw))


def test_small_problems_are_raised_to_the_block_and_to_16():
    t = terms(rec(10, 20, 8, 64, 32))
    assert t["flops"][0] == 2 * 64 * 32 * 16


def test_batch_multiplies_work_and_ctas():
    one, two = terms(rec(1024, 1024, 1024, 64, 64), rec(1024, 1024, 1024, 64, 64, batch=2))["predicted_s"]
    # 256 CTAs already saturate everything, so twice the work takes twice the time.
    assert two == pytest.approx(2 * one)
    small = terms(rec(64, 64, 1024, 64, 64, batch=8))
    assert small["ctas"][0] == 8


def test_stages_and_group_m_are_not_modelled():
    base = rec(2048, 2048, 2048, 128, 64)
    variants = [base, {**base, "num_stages": 5}, {**base, "group_m": 1}, {**base, "block_k": 128}]
    predicted = ClassicTritonModel(TOY).predict(variants).runtime_s
    assert np.all(predicted == predicted[0])


@pytest.mark.parametrize("config", [(128, 128, 4, 1), (16, 64, 2, 1), (64, 256, 8, 4), (256, 16, 4, 16)])
def test_time_never_falls_as_k_grows(config):
    bm, bn, warps, split = config
    ks = [1, 16, 17, 100, 1024, 4096, 65536]
    t = ClassicTritonModel(TOY).predict([rec(777, 3000, k, bm, bn, warps=warps, split=split) for k in ks])
    assert np.all(np.diff(t.runtime_s) >= 0)


def test_a_faster_device_never_predicts_slower():
    records = [rec(m, 4096, 4096, 64, 128, split=s) for m in (16, 256, 4096) for s in (1, 4)]
    base = ClassicTritonModel(TOY).predict(records).runtime_s
    more_bw = ClassicTritonModel(dataclasses.replace(TOY, dram_bandwidth=2e12)).predict(records).runtime_s
    more_flops = dataclasses.replace(TOY, peak_flops={**TOY.peak_flops, "float16": 2e14})
    assert np.all(more_bw <= base) and np.any(more_bw < base)
    assert np.all(ClassicTritonModel(more_flops).predict(records).runtime_s <= base)


def test_bandwidth_never_falls_with_more_ctas():
    bw = terms(*[rec(64 * c, 64, 256, 64, 64) for c in range(1, 200)])["dram_bw"]
    assert np.all(np.diff(bw) >= 0)
    assert bw[-1] == pytest.approx(TOY.dram_bandwidth)


def test_vectorised_equals_one_by_one():
    records = []
    for problem in (GemmProblem(1000, 3000, 512), GemmProblem(64, 64, 65536), GemmProblem(4096, 128, 4096)):
        legal = FAMILIES["gemm"].space(problem, H100).legal
        records += [{**problem.to_record(), **c.to_dict()} for c in legal[:: max(1, len(legal) // 40)]]
    records += [rec(300, 500, 700, 64, 32, dtype="float32", batch=3, split=2)]
    model = ClassicTritonModel(H100)
    together = model.predict(records).runtime_s
    alone = np.array([model.predict([r]).runtime_s[0] for r in records])
    assert len(records) > 60
    np.testing.assert_allclose(together, alone, rtol=1e-12)


def test_interface_matches_the_analytic_model():
    model = ClassicTritonModel(H100)
    assert model.name == "classic-triton" and model.predicts_power is False
    problem = GemmProblem(2048, 2048, 2048)
    prediction = model.predict([{**problem.to_record(), **GemmConfig(128, 128, 64).to_dict()}])
    assert prediction.power_w is None
    assert prediction.runtime_spread[0] == 0
    assert 0 < prediction.runtime_s[0] < 1e-2 and math.isfinite(prediction.runtime_s[0])
    assert len(model.predict([])) == 0


# -- most-common-best ---------------------------------------------------------------------------------------

A = rec(1, 1, 1, 128, 128)
B = rec(1, 1, 1, 64, 64)
C = rec(1, 1, 1, 32, 32)
D = rec(1, 1, 1, 16, 16)


def measured(config, group, runtime_ms):
    return {**config, "group": group, "runtime_ms": runtime_ms}


# Made-up runtimes (test inputs, not measurements): A is fastest in g1 and g2, B in g3, C and D never.
TRAIN = [
    measured(A, "g1", 1.0),
    measured(B, "g1", 2.0),
    measured(C, "g1", 3.0),
    measured(A, "g2", 5.0),
    measured(B, "g2", 6.0),
    measured(D, "g2", 9.0),
    measured(A, "g3", 4.0),
    measured(B, "g3", 3.5),
    measured(C, "g3", None),  # a failed run: skipped
    measured(C, "g4", float("nan")),  # a group with no valid run: no winner
]


def test_most_common_best_orders_by_wins():
    model = MostCommonBestModel().fit(TRAIN)
    assert model.groups == 3
    score = model.predict([C, B, A, D]).runtime_s
    order = list(np.argsort(score))
    assert order[:2] == [2, 1], "A (2 wins) first, then B (1 win)"
    assert set(order[2:]) == {0, 3}, "configs never fastest come last"
    assert np.all(np.diff(np.sort(score)) > 0), "no ties: a fixed order breaks them"


def test_most_common_best_is_deterministic_and_ties_break_by_config():
    model = MostCommonBestModel().fit(TRAIN)
    first = model.predict([D, C, A, C]).runtime_s
    again = MostCommonBestModel().fit(list(reversed(TRAIN))).predict([D, C, A, C]).runtime_s
    np.testing.assert_array_equal(first, again)
    assert first[1] == first[3], "one config, one score"
    # C and D both never won: the smaller config tuple (D's 16-blocks) comes first.
    assert first[2] < first[0] < first[1]


def test_most_common_best_breaks_equal_fastest_runs_by_config():
    model = MostCommonBestModel().fit([measured(A, "g", 1.0), measured(B, "g", 1.0)])
    assert model.wins == {config_of(B): 1}, "B's tuple (64, ...) is smaller than A's (128, ...)"


def test_most_common_best_needs_fitting_and_describes_itself():
    model = MostCommonBestModel()
    assert "not fitted" in model.describe()
    with pytest.raises(ModelError):
        model.predict([A])
    model.fit(TRAIN)
    text = model.describe()
    assert "3 groups" in text and "2 configs" in text and "x2" in text
    assert model.name == "most-common-best" and model.predicts_power is False
    assert len(model.predict([])) == 0
