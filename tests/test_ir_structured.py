"""Structured IR: BlockDiag, Perm, Diag and butterfly factors; Monarch, butterfly and FFT maps against independent
torch references; Monarch projection; the butterfly twiddles that compute the DFT."""

import re

import pytest
import torch
from conftest import assert_close, randn

import kt
from kt.ir import (
    BlockDiag,
    ButterflyFactor,
    Dense,
    Diag,
    LinearMap,
    Perm,
    bit_reversal,
    butterfly_dft_twiddles,
    butterfly_map,
    butterfly_reference,
    dft_matrix,
    fft_map,
    fft_weights,
    monarch_map,
    monarch_reference,
    monarch_square_map,
    realify,
)
from kt.ir.factors import ButterflyGroup
from kt.ir.monarch import project

F64, C128 = torch.float64, torch.complex128


# Monarch shapes (k, q, p, l, s, r): rectangular blocks, in != out, q < l and q > l, and the square case.
MONARCH_SHAPES = [
    (3, 5, 4, 5, 7, 3),
    (2, 6, 3, 3, 5, 4),
    (4, 2, 3, 2, 5, 4),
    (2, 3, 5, 6, 2, 1),
    (4, 4, 4, 4, 4, 4),
]


def monarch_weights(k, q, p, l, s, r, seed, dtype=F64):  # noqa: E741
    return {"w1": randn(k, q, p, seed=seed, dtype=dtype), "w2": randn(l, s, r, seed=seed + 1, dtype=dtype)}


# ---- factors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, C128])
def test_block_diag_dense_form_places_each_block_on_the_diagonal(dtype):
    w = randn(3, 2, 4, seed=0, dtype=dtype)
    factor = BlockDiag(3, 2, 4, weight="w")
    assert (factor.in_features, factor.out_features) == (12, 6)
    expected = torch.zeros(6, 12, dtype=dtype)
    for i in range(3):
        expected[2 * i : 2 * i + 2, 4 * i : 4 * i + 4] = w[i]
    dense = factor.to_dense({"w": w})
    assert dense.dtype == dtype and torch.equal(dense, expected)
    x = randn(5, 12, seed=1, dtype=dtype)
    by_block = torch.cat([x[:, 4 * i : 4 * i + 4] @ w[i].T for i in range(3)], dim=1)
    assert_close(x @ dense.T, by_block)


@pytest.mark.parametrize("dtype", [F64, C128])
def test_block_diag_transpose_swaps_storage_and_reuses_the_same_tensor(dtype):
    w = randn(3, 2, 4, seed=2, dtype=dtype)
    factor = BlockDiag(3, 2, 4, weight="w")
    flipped = factor.transpose()
    assert (flipped.in_blk, flipped.out_blk, flipped.storage) == (2, 4, "in_out")
    assert (flipped.in_features, flipped.out_features) == (6, 12)
    assert torch.equal(flipped.to_dense({"w": w}), factor.to_dense({"w": w}).T)  # plain, not conjugate
    assert flipped.transpose() == factor


def test_block_diag_names_the_bad_shape_and_storage():
    with pytest.raises(ValueError, match=r"'w1' has shape \(3, 4, 2\), expected \(3, 2, 4\)"):
        BlockDiag(3, 2, 4, weight="w1").to_dense({"w1": randn(3, 4, 2, seed=0)})
    with pytest.raises(ValueError, match="storage='rows'; allowed: out_in, in_out"):
        BlockDiag(3, 2, 4, storage="rows")


@pytest.mark.parametrize("rows, cols", [(2, 3), (4, 4), (5, 2), (1, 7)])
def test_perm_is_view_transpose_flatten_and_its_transpose_is_its_inverse(rows, cols):
    x = randn(rows * cols, seed=3)
    factor = Perm(rows, cols)
    dense = factor.to_dense({})
    assert torch.equal(dense @ x, x.view(rows, cols).T.flatten())
    n = rows * cols
    assert all(dense[c * rows + r, r * cols + c] == 1 for r in range(rows) for c in range(cols))
    assert factor.transpose() == Perm(cols, rows)
    assert torch.equal(factor.transpose().to_dense({}), dense.T)
    assert torch.equal(dense.T @ dense, torch.eye(n, dtype=F64))


def test_perm_takes_the_dtype_of_the_weights_it_sits_between():
    assert Perm(2, 3).to_dense({"d": randn(6, seed=0, dtype=C128)}).dtype == C128
    assert Perm(2, 3).to_dense({}).dtype == F64


@pytest.mark.parametrize("dtype", [F64, C128])
def test_diag_scales_elementwise_and_is_its_own_transpose(dtype):
    d = randn(6, seed=4, dtype=dtype)
    factor = Diag(6, weight="d")
    x = randn(3, 6, seed=5, dtype=dtype)
    assert_close(x @ factor.to_dense({"d": d}).T, x * d)
    assert factor.transpose() == factor
    assert torch.equal(factor.transpose().to_dense({"d": d}), factor.to_dense({"d": d}).T)


@pytest.mark.parametrize("dtype", [F64, C128])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_butterfly_factor_mixes_pairs_at_stride_two_to_the_level(level, dtype):
    n, s = 8, 1 << level
    twiddles = randn(3, 4, 2, 2, seed=6, dtype=dtype)
    factor = ButterflyFactor(n, level)
    expected = torch.zeros(n, n, dtype=dtype)
    for g in range(n // (2 * s)):
        for j in range(s):
            a, b = 2 * s * g + j, 2 * s * g + s + j
            expected[[[a], [b]], [a, b]] = twiddles[level, g * s + j]
    assert torch.equal(factor.to_dense({"twiddles": twiddles}), expected)
    flipped = factor.transpose()
    assert torch.equal(flipped.to_dense({"twiddles": twiddles}), expected.T)
    assert flipped.transpose() == factor


def test_realify_acts_on_planar_real_and_imaginary_parts():
    m = randn(3, 5, seed=7, dtype=C128)
    x = randn(4, 5, seed=8, dtype=C128)
    y = x @ m.T
    planar = torch.cat([x.real, x.imag], dim=-1) @ realify(m).T
    assert realify(m).shape == (6, 10) and realify(m).dtype == F64
    assert_close(planar, torch.cat([y.real, y.imag], dim=-1))


def test_factors_print_readably():
    chain = LinearMap(
        (BlockDiag(4, 2, 3, weight="w1"), Perm(2, 4), Diag(8, weight="t"), ButterflyFactor(8, 1))
    )
    assert str(chain) == "Butterfly[twiddles:1](8) · Diag[t](8) · Perm(2x4) · BlockDiag[w1](4x 2<-3)"
    assert str(BlockDiag(4, 2, 3).transpose()) == "BlockDiag[wᵀ](4x 3<-2)"


# ---- Monarch ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", MONARCH_SHAPES)
def test_monarch_map_matches_the_two_bmm_reference_for_rectangular_blocks(shape):
    k, q, p, l, s, r = shape  # noqa: E741
    weights = monarch_weights(*shape, seed=10)
    op = monarch_map(*shape)
    assert (op.in_features, op.out_features) == (k * p, l * s)
    x = randn(2, 3, k * p, seed=11)  # leading batch dims
    reference = monarch_reference(x, weights["w1"], weights["w2"])
    assert reference.shape == (2, 3, l * s)
    assert_close(op.apply_dense(x, weights), reference)


def test_monarch_reference_accepts_non_contiguous_x():
    weights = monarch_weights(3, 5, 4, 5, 7, 3, seed=12)
    x = randn(12, 9, seed=13).T  # (9, 12), strides (1, 9)
    assert not x.is_contiguous()
    expected = monarch_map(3, 5, 4, 5, 7, 3).apply_dense(x.contiguous(), weights)
    assert_close(monarch_reference(x, weights["w1"], weights["w2"]), expected)


def test_square_monarch_is_p_l_p_r():
    m = 4
    op = monarch_square_map(m * m, m)
    weights = monarch_weights(m, m, m, m, m, m, seed=14)
    perm = Perm(m, m).to_dense({})
    left = BlockDiag(m, m, m, weight="w2").to_dense(weights)
    right = BlockDiag(m, m, m, weight="w1").to_dense(weights)
    assert_close(op.to_dense(weights), perm @ left @ perm.T @ right)


@pytest.mark.parametrize("shape", MONARCH_SHAPES)
def test_monarch_transpose_is_the_dense_transpose(shape):
    weights = monarch_weights(*shape, seed=15)
    op = monarch_map(*shape)
    assert_close(op.transpose().to_dense(weights), op.to_dense(weights).T)


def test_monarch_refuses_widths_that_do_not_chain():
    with pytest.raises(ValueError, match="k\\*q=15 but w2 .* takes l\\*r=12"):
        monarch_map(3, 5, 4, 4, 7, 3)


# ---- butterfly --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 8, 32])
@pytest.mark.parametrize("dtype", [F64, C128])
def test_butterfly_map_matches_the_per_factor_loop(n, dtype):
    twiddles = randn(n.bit_length() - 1, n // 2, 2, 2, seed=20, dtype=dtype)
    op = butterfly_map(n)
    x = randn(5, n, seed=21, dtype=dtype)
    assert_close(op.apply_dense(x, {"twiddles": twiddles}), butterfly_reference(x, twiddles))
    assert_close(op.transpose().to_dense({"twiddles": twiddles}), op.to_dense({"twiddles": twiddles}).T)
    assert op.weight_names() == ("twiddles",)


def test_butterfly_refuses_n_not_a_power_of_two():
    with pytest.raises(ValueError, match="n=12: must be a power of two"):
        butterfly_map(12)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_butterfly_dft_twiddles_compute_the_dft_of_bit_reversed_input(n):
    twiddles = butterfly_dft_twiddles(n)
    x = randn(3, n, seed=22, dtype=C128)
    assert_close(butterfly_reference(x, twiddles), torch.fft.fft(x[..., bit_reversal(n)]))
    dense = butterfly_map(n).to_dense({"twiddles": twiddles})
    assert_close(dense, dft_matrix(n)[:, bit_reversal(n)])


def test_bit_reversal_reverses_bits_and_is_an_involution():
    idx = bit_reversal(8)
    assert idx.tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    assert torch.equal(idx[idx], torch.arange(8))


# ---- FFT --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, n1, n2", [(8, 2, 4), (8, 4, 2), (12, 3, 4), (16, 4, 4), (30, 5, 6), (64, 16, 4)])
def test_fft_map_dense_is_the_dft_matrix(n, n1, n2):
    op = fft_map(n, n1, n2)
    weights = fft_weights(n, n1, n2)
    eye = torch.eye(n, dtype=C128)
    assert_close(op.to_dense(weights), torch.fft.fft(eye, dim=0))
    x = randn(4, n, seed=30, dtype=C128)
    assert_close(op.apply_dense(x, weights), torch.fft.fft(x))
    assert_close(op.transpose().to_dense(weights), op.to_dense(weights).T)


def test_fft_weights_have_the_documented_shapes():
    weights = fft_weights(12, 3, 4)
    assert {name: tuple(w.shape) for name, w in weights.items()} == {
        "dft1": (4, 3, 3),
        "twiddle": (12,),
        "dft2": (3, 4, 4),
    }
    assert all(w.dtype == C128 for w in weights.values())
    assert fft_map(12, 3, 4).weight_names() == ("dft1", "twiddle", "dft2")


def test_fft_refuses_a_split_that_does_not_multiply_to_n():
    with pytest.raises(ValueError, match="n1=3 x n2=5 = 15 does not equal n=16"):
        fft_map(16, 3, 5)


# ---- projection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", MONARCH_SHAPES)
@pytest.mark.parametrize("dtype", [F64, C128])
def test_projection_round_trips_a_monarch_matrix(shape, dtype):
    k, q, p, l, s, r = shape  # noqa: E741
    op = monarch_map(*shape)
    monarch = op.to_dense(monarch_weights(*shape, seed=40, dtype=dtype))
    w1, w2 = project(monarch, k, l, q)
    assert w1.shape == (k, q, p) and w2.shape == (l, s, r) and w1.dtype == dtype
    assert_close(op.to_dense({"w1": w1, "w2": w2}), monarch)


@pytest.mark.parametrize("shape", [(3, 5, 4, 5, 7, 3), (4, 4, 4, 4, 4, 4)])
def test_projection_is_closer_than_the_monarch_it_was_perturbed_from(shape):
    k, q, p, l, s, r = shape  # noqa: E741
    op = monarch_map(*shape)
    monarch = op.to_dense(monarch_weights(*shape, seed=41))
    noise = 0.1 * randn(l * s, k * p, seed=42)
    w1, w2 = project(monarch + noise, k, l, q)
    error = (op.to_dense({"w1": w1, "w2": w2}) - (monarch + noise)).norm()
    assert error <= noise.norm()  # the unperturbed Monarch is one candidate


def test_projection_of_a_dense_matrix_beats_perturbed_factors_and_zero():
    k, q, p, l, s, r = 4, 4, 4, 4, 4, 4  # noqa: E741
    op = monarch_map(k, q, p, l, s, r)
    dense = randn(16, 16, seed=43)
    w1, w2 = project(dense, k, l)
    error = (op.to_dense({"w1": w1, "w2": w2}) - dense).norm()
    assert error < dense.norm()
    for seed in range(5):  # locally optimal: any nudge of the factors is worse
        nudged = {
            "w1": w1 + 1e-3 * randn(*w1.shape, seed=50 + seed),
            "w2": w2 + 1e-3 * randn(*w2.shape, seed=60 + seed),
        }
        assert (op.to_dense(nudged) - dense).norm() > error


def test_projection_names_the_bad_block_counts():
    with pytest.raises(ValueError, match="in=10 is not a multiple of k=4"):
        project(randn(8, 10, seed=0), 4, 2)


def test_butterfly_factor_and_group_refuse_levels_past_log2_n():
    """n=8 has levels 0..2: a level 3 (stride 8, pairs past the end) or a group running past level 2 must be
    refused where it is built, not fail later with an index error or a block of the wrong features."""
    with pytest.raises(ValueError, match="level=3: allowed 0..2"):
        ButterflyFactor(8, 3)
    with pytest.raises(ValueError, match="levels 2..3: n=8 has 0..2"):
        ButterflyGroup(8, 2, 2)
    with pytest.raises(ValueError, match="levels 0..3: n=8 has 0..2"):
        ButterflyGroup(8, 0, 4)
    assert ButterflyGroup(8, 0, 3).nblocks == 1 and ButterflyGroup(8, 2, 1).positions().shape == (4, 2)


def test_a_butterfly_groups_index_map_read_off_its_definition_is_the_one_fitted_to_its_table():
    """Lowering reads a butterfly group's load and store map off the group (`_group_map`) instead of fitting
    it to a table of every feature: fitting 24 levels' groups over n = 2**24 took 40 of `kt space`'s 43 s. The
    map must be the very one `IndexMap.fit` gives (the rendered kernels and the cost model's records read its
    fields), for every group of every n up to 2**12, transposed or not; and a lowered butterfly map must still
    be the dense map it lowers."""
    from kt.ir.lowering import IndexMap, _group_map, group_butterfly, lower

    groups = 0
    for bits in range(1, 13):
        for levels in range(1, bits + 1):
            for first in range(bits - levels + 1):
                for transposed in (False, True):
                    group = ButterflyGroup(1 << bits, first, levels, transposed=transposed)
                    assert _group_map(group) == IndexMap.fit(group.positions()), group
                    groups += 1
    assert groups == 2 * sum(bits * (bits + 1) // 2 for bits in range(1, 13))
    n, levels = 64, 4
    op = butterfly_map(n)
    grouped = group_butterfly(op, levels)
    weights = {"twiddles": randn(6, n // 2, 2, 2, seed=1)}
    x = randn(3, n, seed=2)
    y = x
    for stage in lower(grouped):
        y = stage.apply(y, weights)
    assert_close(y, x @ op.to_dense(weights).T, 1e-12)


def test_wrong_twiddles_and_sizes_are_one_valueerror_on_every_path():
    """The transposed butterfly references took two levels of twiddles for n=8 as a shorter butterfly (and
    ignored a fourth), where the forward one refused them; a float n and a zero block count were Python's
    TypeError, AttributeError or ZeroDivisionError."""
    from kt.ir.factors import ButterflyFactor, ButterflyGroup
    from kt.ir.monarch import project
    from kt.ir.problems import ButterflyProblem
    from kt.ir.structured import monarch_square_map

    x = torch.randn(3, 8)
    transposed = kt.parse_spec(
        {
            "op": "butterfly",
            "name": "bt",
            "dtype": "float32",
            "shape": {"batch": 3, "n": 8},
            "transposed": True,
        }
    )
    for levels in (2, 4):
        twiddles = torch.randn(levels, 4, 2, 2)
        for reference in (
            kt.reference(transposed),
            ButterflyProblem(3, 8, "float32", "ieee", True).reference,
        ):
            with pytest.raises(
                ValueError, match=rf"^butterfly: twiddles have shape \({levels}, 4, 2, 2\), expected"
            ):
                reference(x, twiddles)
    for call, words in [
        (lambda: ButterflyFactor(8.0, 0), "ButterflyFactor n=8.0: must be a positive integer"),
        (lambda: ButterflyGroup(8.0, 0, 1), "ButterflyGroup n=8.0: must be a positive integer"),
        (lambda: monarch_square_map(6, 0), "monarch: n=6 and nblocks=0 must be positive integers"),
        (lambda: project(torch.randn(4, 4), 0, 2), "project: k=0 must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(words)}$"):
            call()


def test_the_ir_helpers_take_what_their_neighbours_take():
    """An audit of the IR's helpers: project_butterfly cast a complex W to float64 (a DFT butterfly came back
    1.0 off, with torch's "casting complex values" warning only); prune_blocks refused numpy's 0.5 as out of
    (0, 1], which BlockSparseLinear and op.yaml take; Monarch's project ran the SVD in W's dtype, which torch has
    none of in float16; a Diag after a butterfly group lowered with its diagonal in BlockDiag order (3 to 5 off)."""
    import warnings

    import numpy as np

    from kt.ir.factors import Diag
    from kt.ir.linear_map import LinearMap
    from kt.ir.lowering import LoweringError, lower
    from kt.ir.monarch import butterfly_dft_twiddles
    from kt.ir.projections import project_butterfly, prune_blocks
    from kt.ir.structured import butterfly_map, monarch_map

    dft = butterfly_map(8).to_dense({"twiddles": butterfly_dft_twiddles(8)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no complex value cast away
        twiddles = project_butterfly(dft)
    assert twiddles.dtype == torch.complex128
    assert (butterfly_map(8).to_dense({"twiddles": twiddles}) - dft).abs().max() < 1e-12
    weight = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    for density in (np.float32(0.5), torch.tensor(0.5)):
        assert prune_blocks(weight, (2, 3), density).values().shape[0] == 4
    square = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    w1, w2 = project(square.half(), 2, 2)
    assert w1.dtype == w2.dtype == torch.float16
    d1, d2 = project(square.half().double(), 2, 2)
    monarch = monarch_map(2, 4, 4, 2, 4, 4)
    half = monarch.to_dense({"w1": w1.double(), "w2": w2.double()})
    assert (half - monarch.to_dense({"w1": d1, "w2": d2})).abs().max() < 1e-2
    with pytest.raises(LoweringError, match="after a butterfly group"):
        lower(LinearMap((ButterflyGroup(8, 1, 1), Diag(8, "d"))))


def test_the_slow_references_of_a_real_input_fft_compute_in_complex_and_butterflies_take_numpy_sizes():
    """`Stage.apply` cast the DFT weights to a real x's dtype (imaginary parts dropped: 4.55 off torch.fft.fft)
    and `LinearMap.apply_dense` raised torch's dtype mismatch; a butterfly factor, group or map of a numpy
    integer size was an AttributeError (bit_length), and a float level was taken."""
    import numpy as np

    from kt.ir.factors import ButterflyFactor
    from kt.ir.lowering import apply_stages, lower
    from kt.ir.structured import butterfly_map, fft_map, fft_weights

    weights, fft, x = fft_weights(12, 3, 4), fft_map(12, 3, 4), torch.randn(2, 12, dtype=torch.float64)
    expected = torch.fft.fft(x)
    torch.testing.assert_close(apply_stages(lower(fft), x, weights), expected)
    torch.testing.assert_close(fft.apply_dense(x, weights), expected)
    assert ButterflyFactor(np.int64(8), np.int64(1)) == ButterflyFactor(8, 1)
    assert ButterflyGroup(np.int64(8), 0, 2).n == 8 and butterfly_map(np.int64(8)) == butterfly_map(8)
    for bad in (lambda: ButterflyFactor(8, 1.0), lambda: ButterflyGroup(8, True, 1)):
        with pytest.raises(ValueError, match="must be an integer"):
            bad()


def test_a_map_of_a_dense_and_structured_factors_has_a_dense_form_in_any_weight_dtype():
    """A Dense factor keeps its weight's dtype where a structured one's dense form is float64: a map of both in
    float32 raised torch's dtype mismatch in to_dense and apply_dense, "the slow, obviously right reference"."""
    weights = {"w": randn(2, 3, 3, seed=1).float(), "dw": randn(6, 6, seed=2).float()}
    mixed = LinearMap((BlockDiag(2, 3, 3), Perm(2, 3), Dense(6, 6, weight="dw")))
    exact = mixed.to_dense({k: v.double() for k, v in weights.items()})
    assert_close(mixed.to_dense(weights), exact)
    x = randn(4, 6, seed=3).float()
    assert_close(mixed.apply_dense(x, weights), x.double() @ exact.T)


def test_the_fft_weights_take_numpy_integers_as_the_fft_map_does():
    """fft_map(6, np.int64(2), np.int64(3)) built, and fft_weights of the same split said "n=2 must be a
    positive integer"; dft_matrix(True) was a 1x1 DFT."""
    import numpy as np

    split = (6, np.int64(2), np.int64(3))
    assert_close(fft_map(*split).to_dense(fft_weights(*split)), dft_matrix(6))
    with pytest.raises(ValueError, match="dft_matrix n=True: must be a positive integer"):
        dft_matrix(True)


def test_a_monarch_reference_of_the_wrong_shapes_names_them():
    """A wrong width, or w1 given as (k, p, q), raised torch's reshape error about an inner shape."""
    w1, w2 = randn(3, 4, 5, seed=1), randn(2, 7, 6, seed=2)
    with pytest.raises(
        ValueError, match=r"^monarch: x has shape \(4, 16\); w1 \(3, 4, 5\) and w2 \(2, 7, 6\) take 15"
    ):
        monarch_reference(randn(4, 16, seed=3), w1, w2)
    with pytest.raises(
        ValueError, match=r"^monarch: w2 \(2, 7, 6\) takes l\*r = 12 features; w1 \(3, 5, 4\) gives"
    ):
        monarch_reference(randn(4, 15, seed=3), w1.transpose(1, 2), w2)
