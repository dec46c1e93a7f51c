"""The cost model's features on hand-computed cases: counts, bytes, waves and limits of a tiled GEMM on the H100."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

import kt.costmodel.features as features_module
from kt.costmodel.features import FEATURE_NAMES, bound_by, features, problem_features
from kt.costmodel.roofline import gemm_terms, roofline_time
from kt.device import H100


def record(m=256, n=256, k=256, dtype="float16", **config):
    problem = {
        "family": "gemm",
        "m": m,
        "n": n,
        "k": k,
        "batch": 1,
        "dtype": dtype,
        "precision": "ieee",
        "itemsize": {"float16": 2, "bfloat16": 2, "float32": 4}[dtype],
        "a_col": 0,
        "b_col": 0,
    }
    tile = {
        "block_m": 128,
        "block_n": 128,
        "block_k": 32,
        "group_m": 8,
        "num_warps": 4,
        "num_stages": 3,
        "split_k": 1,
    }
    return {**problem, **tile, **config}


def named(rows):
    """The feature matrix as {name: column}."""
    x = features(rows, H100)
    assert x.shape == (len(rows), len(FEATURE_NAMES))
    return {name: x[:, i] for i, name in enumerate(FEATURE_NAMES)}


def test_a_small_square_fp16_gemm_has_the_hand_computed_features():
    f = {name: column[0] for name, column in named([record()]).items()}
    flops = 2 * 256**3
    nbytes = 3 * 256 * 256 * 2  # A and B read once, C written once, 2 bytes each
    t_math, t_memory = flops / 989.4e12, nbytes / 3.35e12
    assert f["log2_flops"] == pytest.approx(25)
    assert f["log2_bytes"] == pytest.approx(math.log2(nbytes))
    assert f["log2_intensity"] == pytest.approx(math.log2(256 / 3))  # 85.3 FLOP/byte, under the H100's ridge
    assert f["compute_bound"] == 0
    assert f["log2_roofline_s"] == pytest.approx(math.log2(t_memory))
    assert f["log2_balance"] == pytest.approx(math.log2(t_math / t_memory))
    assert (f["log2_tiles_m"], f["log2_tiles_n"], f["log2_k_steps"]) == (1, 1, 3)  # 2 x 2 tiles, 8 K steps
    assert f["log2_programs"] == 2
    # Blocks per SM: 48 KiB of shared memory allows 4, 128 threads allow 16, but 128 accumulators per thread
    # need 1.25 * 128 + 40 = 200 registers, and 65536 / (200 * 128) allows only 2.
    assert f["smem_kib"] == 48  # 3 stages * (128 + 128) rows * 32 K * 2 bytes
    assert f["acc_regs"] == 128
    assert f["blocks_per_sm"] == 2
    assert f["waves"] == pytest.approx(4 / (132 * 2))
    assert f["tail_fill"] == pytest.approx(4 / (132 * 2))  # the only wave is the tail, 4 of 264 slots
    assert f["occupancy"] == pytest.approx(2 * 4 / 64)  # 8 warps resident of 64
    assert f["padding_waste"] == 0
    assert (f["tensor_cores"], f["itemsize"], f["a_col"], f["out_read"]) == (1, 2, 0, 0)
    assert (f["block_m"], f["block_k"], f["num_warps"], f["num_stages"]) == (128, 32, 4, 3)


def test_a_ragged_batched_transposed_gemm_has_the_hand_computed_features():
    """Every other case is square, unbatched and row-major with K a multiple of block_k: a feature reading M for
    N, the row-major stride for a column-major operand, or a tile's other side would pass them."""
    odd = record(m=100, n=3000, k=77, batch=4, a_col=1, b_col=1, block_m=64, block_n=128, block_k=32)
    f, g = ({name: column[i] for name, column in named([odd, record()]).items()} for i in (0, 1))
    assert f["log2_tiles_m"] == 1 and f["log2_tiles_n"] == pytest.approx(math.log2(24))  # 2 and 24 tiles
    assert f["log2_batch"] == 2
    # leading strides in bytes: A column-major is M (200: 8), B column-major is K (154: 2); row-major K, N (512)
    assert (f["a_align"], f["b_align"], g["a_align"], g["b_align"]) == (8, 2, 16, 16)
    # a tile row along the contiguous side: A^T block_m, B^T block_k; row-major A block_k, B block_n (2 bytes)
    assert (f["a_load_bytes"], f["b_load_bytes"], g["a_load_bytes"], g["b_load_bytes"]) == (128, 64, 64, 256)
    assert f["k_tail"] == pytest.approx(13 / 32) and g["k_tail"] == 1  # 77 = 2 * 32 + 13
    terms = gemm_terms([odd], H100)
    expected = math.log2(terms["predicted_s"][0] / roofline_time([odd], H100)[0])
    assert f["log2_analytic"] == pytest.approx(expected)


def test_shared_memory_bounds_the_blocks_per_sm_and_wgmma_needs_64_rows_and_whole_warpgroups():
    # 4 stages of a 64x64 A tile and a 64x64 B tile in fp16: 64 KiB, three of them in the H100's 228 KiB
    f = named([record(block_m=64, block_n=64, block_k=64, num_stages=4)])
    assert f["blocks_per_sm"][0] == 3
    f = named([record(block_m=64, num_warps=4), record(block_m=32, num_warps=4), record(num_warps=2)])
    assert list(f["mma_kind"]) == [2, 1, 1]  # wgmma, then mma.sync for 32 rows and for half a warpgroup


@pytest.mark.shipped_models
@pytest.mark.parametrize("name", ["h100", "a100"])
def test_the_shipped_forests_reproduce_their_saved_predictions_from_these_features(name):
    """A shipped forest was fitted on the features as they were; a change to what a feature computes (its name
    unchanged) would feed it values it never saw, and every ranking would quietly go wrong. Each file keeps a
    few records and its predictions for them: the features computed now must reproduce them."""
    from kt.costmodel.forest import ForestModel

    model = ForestModel.load(Path(features_module.__file__).parent / "models" / f"{name}.skops")
    check = model.self_check
    assert len(check["records"]) >= 4
    runtime = model.runtime_forest.predict(features(check["records"], model.device))
    assert np.allclose(runtime, check["runtime"], rtol=0, atol=1e-9)
    baseline = model.baseline_forest.predict(problem_features(check["records"], model.device))
    assert np.allclose(baseline, check["baseline"], rtol=0, atol=1e-9)


def test_a_ragged_shape_wastes_the_padded_part_of_its_last_tile():
    f = named([record(m=100, n=64, k=64, block_m=64, block_n=64, block_k=32)])
    assert f["log2_tiles_m"][0] == 1  # 100 rows take 2 tiles of 64
    assert f["padding_waste"][0] == pytest.approx(1 - 100 / 128)


def test_a_large_square_gemm_is_compute_bound_and_fills_whole_waves():
    f = named([record(m=4096, n=4096, k=4096, block_m=128, block_n=256, block_k=64, num_warps=8)])
    assert f["compute_bound"][0] == 1 and f["log2_balance"][0] > 0
    assert f["log2_roofline_s"][0] == pytest.approx(math.log2(2 * 4096**3 / 989.4e12))
    assert f["log2_programs"][0] == pytest.approx(math.log2(32 * 16))
    assert f["waves"][0] > 1 and 0 < f["tail_fill"][0] <= 1


def test_split_k_divides_the_k_steps_and_multiplies_the_programs():
    whole, split = (record(m=128, n=128, k=4096, block_k=64, split_k=s) for s in (1, 4))
    f = named([whole, split])
    assert list(f["log2_k_steps"]) == [6, 4]  # 64 K steps, or 16 per split
    assert list(f["log2_programs"]) == [0, 2]


def test_out_read_adds_the_outputs_bytes():
    f = named([record(m=256, n=512, k=128), record(m=256, n=512, k=128, out_read=1)])
    plain, reread = 2 ** f["log2_bytes"]
    assert reread - plain == pytest.approx(256 * 512 * 2)
    assert list(f["out_read"]) == [0, 1]


def test_only_tensor_core_math_is_marked_as_such():
    tf32 = {**record(dtype="float32"), "precision": "tf32"}
    f = named([record(dtype="float32"), tf32, record(dtype="bfloat16")])
    assert list(f["tensor_cores"]) == [0, 1, 1]


def test_a_record_missing_a_key_is_refused_naming_the_key():
    broken = record()
    del broken["block_k"]
    with pytest.raises(ValueError, match=r"record 1 lacks block_k"):
        features([record(), broken], H100)


def test_an_unknown_family_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"family 'conv' is unknown; allowed: gemm"):
        features([{**record(), "family": "conv"}], H100)


def test_no_records_give_an_empty_matrix_with_every_column():
    assert features([], H100).shape == (0, len(FEATURE_NAMES))
    assert bound_by([], H100) == []


def test_every_feature_is_finite_and_documented():
    rows = [
        record(),
        record(m=100, n=3000, k=77, block_m=64, split_k=2),
        record(m=1, n=1, k=1, dtype="float32"),
    ]
    assert np.all(np.isfinite(features(rows, H100)))
    documented = set()
    for line in features_module.__doc__.splitlines():
        cells = re.match(r"\| ([^|]+) \|", line)
        if cells:
            documented.update(name.strip() for name in cells.group(1).split(","))
    assert set(FEATURE_NAMES) <= documented, sorted(set(FEATURE_NAMES) - documented)
