"""The analytic model: its roofline on hand-computed numbers, and a ranking that is sane on known shapes."""

import math
from dataclasses import replace

import numpy as np
import pytest

from kt.codegen import FAMILIES, GemmConfig
from kt.costmodel import AnalyticModel, gemm_terms, rank, roofline_time
from kt.device import H100
from kt.ir import GemmProblem


def record(problem, config):
    return {**problem.to_record(), **config.to_dict()}


def test_roofline_of_a_square_fp16_gemm_is_compute_bound():
    problem = GemmProblem(4096, 4096, 4096)
    (t,) = roofline_time([record(problem, GemmConfig(128, 128, 64))], H100)
    assert t == pytest.approx(2 * 4096**3 / 989.4e12)


def test_roofline_of_a_skinny_gemm_is_memory_bound():
    problem = GemmProblem(16, 4096, 4096)
    (t,) = roofline_time([record(problem, GemmConfig(16, 128, 64))], H100)
    nbytes = (16 * 4096 + 4096 * 4096 + 16 * 4096) * 2
    assert t == pytest.approx(nbytes / 3.35e12)


def test_terms_count_programs_waves_and_padding():
    problem = GemmProblem(1000, 1000, 64)
    terms = gemm_terms([record(problem, GemmConfig(128, 128, 64, num_warps=8, num_stages=3))], H100)
    assert terms["programs"][0] == 8 * 8
    assert terms["padding_waste"][0] == pytest.approx(1 - 1000 * 1000 / (1024 * 1024))
    assert terms["waves"][0] == pytest.approx(64 / (132 * terms["blocks_per_sm"][0]))


def test_dram_traffic_of_split_k_and_grouping_and_the_k_steps_of_a_split():
    """Split-K's partial sums cost DRAM only when K is split; ungrouped tiles re-read A and B from DRAM (the
    model's 1.3x on both operands); each split runs ceil(steps / split) K steps."""
    one = GemmConfig(128, 128, 32)
    small = gemm_terms([record(GemmProblem(256, 256, 256), one)], H100)
    assert small["t_dram_s"][0] == pytest.approx(3 * 256 * 256 * 2 / H100.dram_bandwidth)
    big = GemmProblem(8192, 8192, 8192)
    grouped = gemm_terms([record(big, replace(one, group_m=g)) for g in (1, 8)], H100)["t_dram_s"]
    assert grouped[0] / grouped[1] == pytest.approx((1.3 * 2 + 1) / 3)
    split = gemm_terms([record(GemmProblem(256, 256, 4096), GemmConfig(128, 128, 64, split_k=3))], H100)
    assert split["k_steps"][0] == 22  # 64 steps over 3 splits


def test_equal_predictions_are_broken_in_favour_of_group_m_8():
    configs = [GemmConfig(128, 128, 32, group_m=4), GemmConfig(128, 128, 32, group_m=8)]
    rows = [record(GemmProblem(4096, 4096, 4096), c) for c in configs]
    assert list(rank(rows, np.array([1.0, 1.0]))) == [1, 0]


def test_wave_quantisation_penalises_a_nearly_empty_last_wave():
    config = GemmConfig(128, 128, 64, num_warps=8, num_stages=3)
    slots = 132 * int(gemm_terms([record(GemmProblem(128, 128, 4096), config)], H100)["blocks_per_sm"][0])
    full = GemmProblem(128 * slots, 128, 4096)
    spill = GemmProblem(128 * (slots + 1), 128, 4096)
    t_full, t_spill = AnalyticModel(H100).predict([record(full, config), record(spill, config)]).runtime_s
    assert t_spill > 1.5 * t_full, "one extra program costs nearly a whole wave"


def test_ranking_puts_large_warpgroup_tiles_first_for_4096_cubed():
    problem = GemmProblem(4096, 4096, 4096)
    space = FAMILIES["gemm"].space(problem, H100)
    records = [record(problem, c) for c in space.legal]
    predicted = AnalyticModel(H100).predict(records).runtime_s
    assert np.all(predicted > 0) and np.all(np.isfinite(predicted))
    order = rank(records, predicted)
    top = space.legal[order[0]]
    assert top.block_m >= 128 and top.block_n >= 128 and top.num_warps == 8 and top.split_k == 1
    assert math.isclose(predicted[order[0]], predicted.min())


def test_split_k_is_preferred_when_m_and_n_are_too_small_to_fill_the_gpu():
    problem = GemmProblem(64, 64, 65536)
    space = FAMILIES["gemm"].space(problem, H100)
    records = [record(problem, c) for c in space.legal]
    top = space.legal[rank(records, AnalyticModel(H100).predict(records).runtime_s)[0]]
    assert top.split_k > 1


def test_a_batched_3d_dot_is_predicted_at_mma_sync_speed_and_featured_so():
    """A fused Monarch launch is a 3D tl.dot: mma.sync even on Hopper."""
    from kt.costmodel.features import FEATURE_NAMES, features

    plain = record(GemmProblem(8192, 8192, 8192), GemmConfig(128, 128, 64, num_warps=8, num_stages=3))
    batched = {**plain, "mma": "sync"}
    terms = gemm_terms([plain, batched], H100)
    assert terms["t_math_s"][1] > 1.5 * terms["t_math_s"][0]
    kind = features([plain, batched], H100)[:, FEATURE_NAMES.index("mma_kind")]
    assert kind.tolist() == [2.0, 1.0]


def test_every_launch_off_wgmma_says_why():
    """`kt show --ptx` names why a launch runs mma.sync or no tensor cores, from the launch's record."""
    from kt.codegen.blockgemm import BlockGemmConfig
    from kt.costmodel.roofline import wgmma_reason
    from kt.device import get_profile
    from kt.ir.problems import MonarchProblem

    plain = record(GemmProblem(8192, 8192, 8192), GemmConfig(128, 128, 64, num_warps=8, num_stages=3))
    assert wgmma_reason(plain, H100) is None
    assert wgmma_reason({**plain, "block_m": 32}, H100) == "a tile of 32 rows (wgmma needs 64)"
    assert "warpgroups" in wgmma_reason({**plain, "num_warps": 2}, H100)
    assert "no tensor cores" in wgmma_reason({**plain, "dtype": "float32", "precision": "ieee"}, H100)
    assert "sm_80" in wgmma_reason(plain, get_profile("a100"))
    monarch = MonarchProblem(16384, (64, 64, 64), (64, 64, 64))
    family = FAMILIES["monarch"]
    (grouped,) = family.records(monarch, [BlockGemmConfig(64, 64, 64, 8, 4, 3)])
    assert [wgmma_reason(r, H100) for r in grouped["stages"]] == [None, None]  # several blocks, 2D dots
    (fused,) = family.records(
        MonarchProblem(4096, (16, 64, 64), (64, 16, 16)), [BlockGemmConfig(64, 16, 16, 1, 4, 2, fused=1)]
    )
    assert all("fused Monarch" in wgmma_reason(r, H100) for r in fused["stages"])


def test_a_fused_configs_roofline_is_one_kernels_traffic_as_its_prediction_takes_it():
    """`kt predict`'s roofline column summed a fused Monarch's two modelled launches, counting the intermediate
    it keeps on chip twice (4.40e-5 ms, not 2.45e-5 ms for x, w1, w2 and y once on an H100)."""
    import kt
    from kt.costmodel.staged import roofline_and_bound

    plan = kt.plan({"op": "monarch", "dtype": "float16", "shape": {"batch": 64, "n": 256, "nblocks": 16}})
    fused = next(i for i in plan.ranked if plan.config(i).fused)
    unfused = next(i for i in plan.ranked if not plan.config(i).fused)
    (fused_s, unfused_s), _ = roofline_and_bound([plan.records[fused], plan.records[unfused]], H100)
    x = y = 64 * 256 * 2
    weights = 2 * 16 * 16 * 16 * 2
    assert fused_s == pytest.approx((x + weights + y) / H100.dram_bandwidth, rel=1e-9)
    assert unfused_s == pytest.approx((x + weights + y + 2 * x) / H100.dram_bandwidth, rel=1e-9)


def test_a_sums_rooflines_lie_above_its_dram_floor_fused_or_not():
    """A fused sum's roofline was 0.00316 ms on an H100, below x and y's own 0.00501 ms: its accumulation read
    x as k columns, and the partial outputs the separate launches write were taken off it, which its launches
    never had. Now the separate launches carry that round trip (at split 1: with more splits the launches'
    own split round trip stands for it, `test_a_sums_separate_launches_carry_their_output_traffic_once`)."""
    from pathlib import Path

    import kt
    from kt.costmodel.staged import roofline_and_bound

    spec = kt.load_spec(Path(__file__).resolve().parents[1] / "examples" / "sum.yaml")
    plan = kt.plan(spec, model="analytic")
    roofline, _ = roofline_and_bound(plan.records, H100)
    floor = (4096 * 1024 * 2 * 2) / H100.dram_bandwidth  # x read and y written once, fp16
    assert roofline.min() >= floor, (roofline.min(), floor)
    partials = 2 * 4 * 2 * 4096 * 1024  # two terms' fp32 outputs, written and read back
    for record, seconds in zip(plan.records, roofline):
        if not record["fused"] and record["split_k"] == 1:
            assert seconds >= floor + partials / H100.dram_bandwidth


@pytest.mark.parametrize("split", [1, 2, 4])
def test_a_sums_separate_launches_carry_their_output_traffic_once(split):
    """examples/sum.yaml unfused: each term's last launch writes SPLIT fp32 slices, read back by the final sum,
    whose fp32 result is written and read before y is written once. With SPLIT > 1 the launches' records
    already carry the split's fp32 round trip (`partial_bytes`), and `copy_bytes` charged it again: 75 MB
    too much at split 2 (+22.5 us on an H100, against a best unfused prediction of 49.6 us)."""
    from pathlib import Path

    import kt
    from kt.codegen import family_for

    spec = kt.load_spec(Path(__file__).resolve().parents[1] / "examples" / "sum.yaml")
    space = kt.space(spec, device="h100")
    problem = space.problem
    config = next(c for c in space.legal if not c.fused and c.split == split)
    (record,) = family_for(problem).records(problem, [config])
    cells, size, terms = problem.rows * problem.out_features, 2, len(problem.terms)
    lasts = [s for s in record["stages"] if (s["m"], s["n"]) == (problem.rows, problem.out_features)]
    assert len(lasts) == terms, record["stages"]
    charged = record["copy_bytes"] + sum(
        s["m"] * s["n"] * s["itemsize"] + (2 * s["split_k"] * s["m"] * s["n"] * 4 if s["split_k"] > 1 else 0)
        for s in lasts
    )
    moved = terms * split * cells * 4 * 2 + cells * (4 + 4 + size)  # the slices; the sum's fp32 result; y
    assert charged == moved, (charged, moved)


def test_a_block_sparse_launchs_x_is_aligned_by_the_columns_it_holds_not_its_mean_depth():
    """examples/blocksparse.yaml's launch sums over 410 columns (its blocks' mean depth) of an x 4096 wide:
    the forest read x's rows as 4 bytes aligned, where 4096 fp16 columns are 16."""
    from pathlib import Path

    import kt
    from kt.costmodel.features import FEATURE_NAMES, features

    example = Path(__file__).resolve().parents[1] / "examples" / "blocksparse.yaml"
    plan = kt.plan(kt.load_spec(example), device="h100")
    (stage,) = plan.records[plan.ranked[0]]["stages"]
    assert (stage["k"], stage["a_cols"]) == (410, 4096), stage
    assert features([stage], H100)[0, FEATURE_NAMES.index("a_align")] == 16
