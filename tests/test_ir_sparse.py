"""Block-sparse and low-rank IR: the BSR factor against torch's own BSR tensors, the matrix-chain order against
brute force and against the products torch.linalg.multi_dot actually runs, chain maps, sums of maps, and the
projections of a dense weight (block pruning, truncated SVD)."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor, assert_close, randn
from torch.utils._python_dispatch import TorchDispatchMode

from kt.ir import (
    BSR,
    Dense,
    LinearMap,
    SumMap,
    chain_map,
    chain_order,
    prune_blocks,
    truncated_svd,
)
from kt.sparsity import block_count, bsr_indices, layout_mask, mask_to_hex, prune_mask

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")

F32, F64 = torch.float32, torch.float64


def masked_dense(weight, mask, block):
    """The dense weight with the blocks outside `mask` zeroed."""
    bo, bi = block
    full = torch.from_numpy(np.kron(mask, np.ones((bo, bi), dtype=bool)))
    return torch.where(full, weight, torch.zeros((), dtype=weight.dtype))


def bsr_from_mask(weight, mask, block):
    """A BSR tensor storing exactly the blocks of `mask` (zero-valued ones too), built independently of kt."""
    bo, bi = block
    out, inp = weight.shape
    crow, cols = bsr_indices(mask)
    rows = np.repeat(np.arange(mask.shape[0]), mask.sum(axis=1))
    values = torch.stack(
        [weight[r * bo : (r + 1) * bo, c * bi : (c + 1) * bi] for r, c in zip(rows, cols.tolist())]
    )
    return torch.sparse_bsr_tensor(
        crow, cols, values.reshape(-1, bo, bi), size=(out, inp), check_invariants=True
    )


# ---- BSR --------------------------------------------------------------------------------------------------------


def _mask(kind, grid, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random(grid) < 0.4
    if kind == "empty_rows":
        mask = rng.random(grid) < 0.6
        mask[0] = mask[2] = False
        mask[1, 0] = True
        return mask
    if kind == "full":
        return np.ones(grid, dtype=bool)
    if kind == "single":
        mask = np.zeros(grid, dtype=bool)
        mask[grid[0] - 1, 1] = True
        return mask
    raise AssertionError(kind)


BSR_CASES = [
    # (out, in, block, mask kind)
    (8, 12, (2, 2), "random"),  # square blocks
    (12, 8, (3, 2), "random"),  # non-square blocks
    (10, 12, (2, 4), "empty_rows"),
    (16, 8, (4, 4), "empty_rows"),
    (6, 9, (2, 3), "full"),  # density 1.0
    (8, 12, (4, 3), "single"),
]


@pytest.mark.parametrize("out, inp, block, kind", BSR_CASES)
def test_bsr_dense_form_equals_torch_to_dense(out, inp, block, kind):
    bo, bi = block
    mask = _mask(kind, (out // bo, inp // bi), seed=out * inp)
    dense = masked_dense(randn(out, inp, seed=3), mask, block)
    w = dense.to_sparse_bsr(block)
    assert np.array_equal(layout_mask(w), mask)  # random values: torch stores exactly the unmasked blocks
    factor = BSR(out, inp, block, mask_to_hex(mask))
    assert (factor.in_features, factor.out_features) == (inp, out)
    assert factor.nnz == mask.sum() and np.array_equal(factor.mask(), mask)
    result = factor.to_dense({"w": w})
    assert result.dtype == F64 and torch.equal(result, w.to_dense())
    x = randn(5, inp, seed=4)
    assert_close(LinearMap((factor,)).apply_dense(x, {"w": w}), F.linear(x, dense))
    if bo == bi:  # torch's CPU BSR matmul takes square blocks only
        assert_close(LinearMap((factor,)).apply_dense(x, {"w": w}), F.linear(x, w))


def test_bsr_keeps_zero_valued_blocks_and_promotes_to_float64():
    mask = np.array([[True, False, True], [False, True, False]])
    weight = randn(4, 6, seed=5, dtype=F32)
    weight[0:2, 4:6] = 0  # a stored block that is all zeros
    w = bsr_from_mask(weight, mask, (2, 2))
    factor = BSR.from_mask(mask, (2, 2), weight="w")
    assert (factor.out, factor.inp, factor.nnz) == (4, 6, 3)
    result = factor.to_dense({"w": w})
    assert result.dtype == F64 and torch.equal(result, masked_dense(weight, mask, (2, 2)).double())
    # the same values with the zero block dropped are a different layout
    with pytest.raises(ValueError, match="stores 2 blocks in a pattern other than the factor's layout"):
        factor.to_dense({"w": masked_dense(weight, mask, (2, 2)).to_sparse_bsr((2, 2))})


def test_bsr_transpose_swaps_features_and_transposes_the_dense_form():
    mask = _mask("empty_rows", (5, 3), seed=6)
    dense = masked_dense(randn(10, 12, seed=7), mask, (2, 4))
    w = {"w": dense.to_sparse_bsr((2, 4))}
    factor = BSR(10, 12, (2, 4), mask_to_hex(mask))
    flipped = factor.transpose()
    assert flipped.transposed and (flipped.in_features, flipped.out_features) == (10, 12)
    assert torch.equal(flipped.to_dense(w), factor.to_dense(w).mT)
    assert flipped.transpose() == factor
    assert LinearMap((factor,)).transpose().to_dense(w).shape == (12, 10)
    nnz = int(mask.sum())
    assert str(factor) == f"BSR[w](10<-12, 2x4 blocks, {nnz}/15)"
    assert str(flipped) == f"BSR[wᵀ](12<-10, 2x4 blocks, {nnz}/15)"
    assert factor.weight_names() == ("w",)


def test_bsr_layout_is_normalised_so_equal_patterns_compare_equal():
    mask = np.eye(4, dtype=bool)
    lower = BSR(8, 8, (2, 2), mask_to_hex(mask))
    upper = BSR(8, 8, [2, 2], mask_to_hex(mask).upper())
    assert lower == upper and hash(lower) == hash(upper) and upper.block == (2, 2)


def test_bsr_rejects_weights_that_do_not_match_the_factor():
    mask = np.array([[True, False], [True, True]])
    factor = BSR.from_mask(mask, (2, 2))
    dense = masked_dense(randn(4, 4, seed=8), mask, (2, 2))
    with pytest.raises(ValueError, match=r"'w' has layout torch.strided, expected torch.sparse_bsr"):
        factor.to_dense({"w": dense})
    with pytest.raises(ValueError, match=r"'w' has layout torch.sparse_csr, expected torch.sparse_bsr"):
        factor.to_dense({"w": dense.to_sparse_csr()})
    with pytest.raises(ValueError, match=r"'w' has blocksize \(1, 2\), expected \(2, 2\)"):
        factor.to_dense({"w": dense.to_sparse_bsr((1, 2))})
    with pytest.raises(ValueError, match=r"'w' has shape \(4, 6\), expected \(4, 4\)"):
        factor.to_dense({"w": torch.zeros(4, 6).to_sparse_bsr((2, 2))})
    other = masked_dense(randn(4, 4, seed=9), np.array([[True, True], [False, True]]), (2, 2))
    with pytest.raises(
        ValueError, match=r"stores 3 blocks in a pattern other .* \(3 blocks; 2 grid positions"
    ):
        factor.to_dense({"w": other.to_sparse_bsr((2, 2))})


@pytest.mark.parametrize(
    "crow, col",
    [
        ([0, 1, 3], [1, 0, -1]),  # -1 used to mark the last block-column and pass
        ([0, 1, 3], [1, 0, 2]),  # past the 2 block-columns: numpy's IndexError
        ([0, 1, 4], [1, 0, 1]),  # offsets past the 3 columns
        ([0, 2, 1], [0, 1, 1]),  # decreasing: numpy's "repeats may not contain negative values"
    ],
    ids=["negative_col", "col_past_grid", "crow_past_cols", "crow_decreasing"],
)
def test_bsr_rejects_a_weight_whose_indices_are_no_pattern_of_its_grid(crow, col):
    factor = BSR.from_mask(np.array([[False, True], [True, True]]), (2, 2))
    w = torch.sparse_bsr_tensor(
        torch.tensor(crow), torch.tensor(col), torch.ones(len(col), 2, 2), (4, 4), check_invariants=False
    )
    with pytest.raises(
        ValueError, match=r"^weight 'w': not the BSR indices of a pattern of a 2x2 block grid"
    ):
        factor.check_weight(w)


@pytest.mark.parametrize("block", [(0, 4), (8, 4, 1), 4, (8.0, 4)])
def test_bsr_from_mask_names_a_bad_block(block):
    # the shape it computes from the block used to be blamed, or the tuple unpacking failed
    with pytest.raises(ValueError, match=r"^BSR block=.*: must be two positive integers \(bo, bi\)$"):
        BSR.from_mask(np.ones((2, 3), dtype=bool), block)


def test_bsr_layout_that_is_not_text_is_named():
    with pytest.raises(ValueError, match=r"^BSR layout 'None' must be hex text, got NoneType$"):
        BSR(8, 8, (2, 2), None)


def test_bsr_rejects_bad_construction():
    with pytest.raises(ValueError, match=r"BSR block 3x2 does not divide the weight shape \(8, 8\)"):
        BSR(8, 8, (3, 2), "ff")
    with pytest.raises(ValueError, match=r"BSR block=\(2, 0\): must be two positive integers"):
        BSR(8, 8, (2, 0), "ff")
    with pytest.raises(ValueError, match=r"BSR shape \(0, 8\): both must be positive integers"):
        BSR(0, 8, (2, 2), "ff")
    with pytest.raises(ValueError, match="BSR layout 'zz' is not hex text"):
        BSR(8, 8, (2, 2), "zz")
    with pytest.raises(ValueError, match="BSR layout 'ff' holds 1 bytes; a 4x4 block grid needs 2"):
        BSR(8, 8, (2, 2), "ff")
    with pytest.raises(ValueError, match="has bits set past the end of the block grid"):
        BSR(4, 6, (2, 2), "ff")  # a 2x3 grid has 6 bits


@pytest.mark.parametrize("slab", [1 << 40, 4096, 1], ids=["whole", "a_few_block_rows", "one_block_row"])
@pytest.mark.parametrize("kind", ["random", "empty_rows", "single"])
def test_blocksparse_references_by_block_rows_equal_the_dense_formulas(monkeypatch, kind, slab):
    """The forward and weight-gradient references work a few block-rows of W at a time: the same figures as
    the formulas on W's whole dense form, whatever the runs (one, a few block-rows, one each; empty ones)."""
    import kt.ir.problems as problems

    monkeypatch.setattr(problems, "REFERENCE_SLAB_BYTES", slab)
    out, inp, block = 48, 40, (4, 8)
    layout = mask_to_hex(_mask(kind, (out // block[0], inp // block[1]), seed=5))
    forward = problems.BlockSparseProblem(7, inp, out, block, layout, "float32")
    x, w = forward.random_args(seed=1)
    for xs in (x, x[::2], x[3]):  # strided rows, one row as a vector
        expected = F.linear(xs.double(), w.to_dense().double())
        assert torch.allclose(forward.reference(xs, w), expected, rtol=1e-12, atol=1e-12)
    grad = problems.BsrGradProblem(7, inp, out, block, layout, "float32")
    dy, x, w = grad.random_args(seed=2)
    dense = (dy.double().T @ x.double()).reshape(out // block[0], block[0], inp // block[1], block[1])
    rows = torch.repeat_interleave(torch.arange(out // block[0]), w.crow_indices().diff())
    expected = dense.transpose(1, 2)[rows, w.col_indices()]
    assert torch.allclose(grad.reference(dy, x, w), expected, rtol=1e-12, atol=1e-12)


def test_blocksparse_references_never_hold_the_whole_dense_weight(monkeypatch):
    """A wide pattern's dense form is far larger than the op (65536 x 65536 in float64 is 32 GiB): the forward
    and gradient references hold at most REFERENCE_SLAB_BYTES of it at once. Here W is 512 x 512 and a run
    64 KiB (2 block-rows of 8 x 512 float64 elements): no tensor but the gradient's own output (W's stored
    blocks) holds more than such a run, nor comes near W's 262,144 elements."""
    import kt.ir.problems as problems

    monkeypatch.setattr(problems, "REFERENCE_SLAB_BYTES", 1 << 16)
    n, block = 512, (8, 8)
    layout = mask_to_hex(_mask("random", (n // 8, n // 8), seed=0))
    forward = problems.BlockSparseProblem(5, n, n, block, layout, "float16")
    grad = problems.BsrGradProblem(5, n, n, block, layout, "float16")
    for problem in (forward, grad):
        args = problem.random_args(seed=0)
        with LargestTensor() as largest:
            problem.reference(*args)
        nnz_elements = problem.nnz * 64  # the gradient's output, W's stored blocks
        assert largest.numel <= max(2 * 8 * n, nnz_elements), (problem, largest.numel)
        assert largest.numel < n * n // 2


# ---- matrix chains ----------------------------------------------------------------------------------------------


def all_trees(i, j):
    if i == j:
        yield i
        return
    for k in range(i, j):
        for left in all_trees(i, k):
            for right in all_trees(k + 1, j):
                yield (left, right)


def tree_cost(tree, dims):
    """(rows, cols, scalar multiplications) of a parenthesisation."""
    if isinstance(tree, int):
        return dims[tree], dims[tree + 1], 0
    r1, c1, k1 = tree_cost(tree[0], dims)
    r2, c2, k2 = tree_cost(tree[1], dims)
    assert c1 == r2
    return r1, c2, k1 + k2 + r1 * c1 * c2


def random_dims(rng, length, high):
    return tuple(rng.randint(1, high) for _ in range(length))


def test_chain_order_is_minimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        dims = random_dims(rng, rng.randint(2, 7), rng.choice([3, 8, 40]))
        order = chain_order(dims)
        costs = [tree_cost(t, dims)[2] for t in all_trees(0, len(dims) - 2)]
        assert order.cost == min(costs) == tree_cost(order.tree, dims)[2], dims


def test_chain_order_small_chains():
    one = chain_order((3, 5))
    assert (one.cost, one.tree, one.steps()) == (0, 0, [])
    two = chain_order([3, 5, 7])
    assert (two.cost, two.tree) == (105, (0, 1))
    assert two.steps() == [(("m", 0), ("m", 1), (3, 7))]
    # (10x100)(100x5)(5x50): the textbook example, 7500 multiplications left to right
    three = chain_order((10, 100, 5, 50))
    assert (three.cost, three.tree) == (7500, ((0, 1), 2))
    assert three.steps() == [(("m", 0), ("m", 1), (10, 5)), (("s", 0), ("m", 2), (10, 50))]
    right = chain_order((50, 5, 100, 10))
    assert (right.cost, right.tree) == (7500, (0, (1, 2)))
    assert right.steps() == [(("m", 1), ("m", 2), (5, 10)), (("m", 0), ("s", 0), (50, 10))]


def test_chain_order_rejects_bad_dims():
    with pytest.raises(ValueError, match=r"chain_order dims=\(4,\): need at least two dims"):
        chain_order([4])
    with pytest.raises(
        ValueError, match=r"chain_order dims=\(4, 0, 2\): every dim must be a positive integer"
    ):
        chain_order([4, 0, 2])


class MatmulTrace(TorchDispatchMode):
    """Records every aten.mm as (left, right, shape), naming operands like ChainOrder.steps does."""

    def __init__(self, matrices):
        super().__init__()
        self.names = {m.data_ptr(): ("m", i) for i, m in enumerate(matrices)}
        self.steps = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.mm.default:
            left, right = (self.names.get(a.data_ptr(), "?") for a in args[:2])
            self.steps.append((left, right, tuple(out.shape)))
            self.names[out.data_ptr()] = ("s", len(self.steps) - 1)
        return out


def multi_dot_steps(dims):
    matrices = [torch.ones(dims[i], dims[i + 1], dtype=F64) for i in range(len(dims) - 1)]
    with MatmulTrace(matrices) as trace:
        torch.linalg.multi_dot(matrices)
    return trace.steps


TIES = [(2, 2, 2, 2), (2, 2, 2, 2, 2), (3, 3, 3, 3, 3, 3), (1, 2, 1, 2, 1), (2, 1, 2, 1, 2, 1), (1, 1, 1, 1)]


def test_chain_order_matches_the_products_multi_dot_runs():
    rng = random.Random(1)
    cases = list(TIES) + [random_dims(rng, rng.randint(3, 6), rng.choice([2, 3, 9])) for _ in range(400)]
    ties = 0
    for dims in cases:
        order = chain_order(dims)
        costs = [tree_cost(t, dims)[2] for t in all_trees(0, len(dims) - 2)]
        ties += costs.count(order.cost) > 1
        assert [tuple(s) for s in order.steps()] == multi_dot_steps(dims), dims
    assert ties > 50  # the tie-break is what this test is about


# ---- chain maps and sums ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(6,), (6, 4), (6, 2, 5), (7, 3, 4, 2, 8)])
def test_chain_map_is_x_times_the_factors(dims):
    dims = (5,) + tuple(dims)
    chain = chain_map(dims)
    names = [f"f{i + 1}" for i in range(len(dims) - 1)]
    weights = {n: randn(dims[i], dims[i + 1], seed=10 + i) for i, n in enumerate(names)}
    assert chain.weight_names() == tuple(names)
    assert (chain.in_features, chain.out_features) == (dims[0], dims[-1])
    assert all(isinstance(f, Dense) and f.storage == "in_out" for f in chain.factors)
    product = torch.linalg.multi_dot([weights[n] for n in names]) if len(names) > 1 else weights[names[0]]
    assert_close(chain.to_dense(weights), product.T)
    x = randn(3, dims[0], seed=20)
    assert_close(chain.apply_dense(x, weights), x @ product)
    assert_close(
        chain.transpose().apply_dense(randn(3, dims[-1], seed=21), weights),
        randn(3, dims[-1], seed=21) @ product.T,
    )


def test_chain_map_names_and_errors():
    chain = chain_map((4, 2, 6), names=("u", "v"))
    assert chain.weight_names() == ("u", "v") and str(chain) == "Dense[v](6<-2) · Dense[u](2<-4)"
    with pytest.raises(ValueError, match="chain_map names: got 1 for a chain of 2 factors"):
        chain_map((4, 2, 6), names=["u"])
    with pytest.raises(ValueError, match=r"chain_map names \['u', 'u'\]: must be distinct"):
        chain_map((4, 2, 6), names=["u", "u"])
    with pytest.raises(ValueError, match="chain_map dims=.*need at least two dims"):
        chain_map((4,))


def sparse_plus_low_rank():
    mask = _mask("empty_rows", (4, 3), seed=30)
    sparse = LinearMap((BSR.from_mask(mask, (2, 4), weight="s"),))
    low_rank = chain_map((12, 3, 8), names=("a", "b"))
    weights = {
        "s": masked_dense(randn(8, 12, seed=31), mask, (2, 4)).to_sparse_bsr((2, 4)),
        "a": randn(12, 3, seed=32),
        "b": randn(3, 8, seed=33),
    }
    return SumMap((sparse, low_rank)), weights


def test_sum_map_dense_form_is_the_sum_of_its_terms():
    total, weights = sparse_plus_low_rank()
    assert (total.in_features, total.out_features) == (12, 8)
    assert total.weight_names() == ("s", "a", "b")
    expected = weights["s"].to_dense() + (weights["a"] @ weights["b"]).T
    assert_close(total.to_dense(weights), expected)
    x = randn(5, 12, seed=34)
    assert_close(
        total.apply_dense(x, weights), F.linear(x, weights["s"].to_dense()) + x @ weights["a"] @ weights["b"]
    )
    flipped = total.transpose()
    assert isinstance(flipped, SumMap) and (flipped.in_features, flipped.out_features) == (8, 12)
    assert_close(flipped.to_dense(weights), expected.T)
    assert str(total) == " + ".join(str(t) for t in total.terms) and " + " in str(total)


def test_sum_map_rejects_bad_terms():
    total, _ = sparse_plus_low_rank()
    sparse, low_rank = total.terms
    with pytest.raises(ValueError, match="a SumMap needs at least two terms, got 1"):
        SumMap((sparse,))
    with pytest.raises(
        ValueError, match=r"SumMap term 1 \(.*\) maps 12 -> 7 features but term 0 maps 12 -> 8"
    ):
        SumMap((sparse, chain_map((12, 3, 7), names=("a", "b"))))
    with pytest.raises(ValueError, match="SumMap weight 'a' appears in terms 1 and 2"):
        SumMap((sparse, low_rank, low_rank))
    with pytest.raises(ValueError, match="SumMap term 1 is a BSR, expected a LinearMap"):
        SumMap((sparse, sparse.factors[0]))


# ---- projections ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, block, density",
    [((16, 24), (4, 4), 0.25), ((12, 16), (3, 4), 0.5), ((8, 8), (2, 2), 1.0), ((8, 12), (4, 4), 0.01)],
)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_prune_blocks_keeps_the_largest_blocks(shape, block, density, dtype):
    weight = randn(*shape, seed=40, dtype=dtype)
    bo, bi = block
    grid = (shape[0] // bo, shape[1] // bi)
    pruned = prune_blocks(weight, block, density)
    assert pruned.layout == torch.sparse_bsr and pruned.dtype == dtype and pruned.shape == shape
    assert tuple(pruned.values().shape[-2:]) == block
    # independently: the block_count(density) blocks of largest norm
    norms = {
        (r, c): weight[r * bo : (r + 1) * bo, c * bi : (c + 1) * bi].double().norm().item()
        for r, c in np.ndindex(grid)
    }
    keep = sorted(norms, key=norms.get, reverse=True)[: block_count(density, grid)]
    mask = np.zeros(grid, dtype=bool)
    mask[tuple(np.array(keep).T)] = True
    assert np.array_equal(layout_mask(pruned), mask)
    assert min(norms[k] for k in keep) >= max([norms[k] for k in norms if k not in keep], default=0)
    masked = masked_dense(weight, mask, block)
    assert torch.equal(pruned.to_dense(), masked)
    x = randn(5, shape[1], seed=41, dtype=dtype)
    if bo == bi:  # torch's CPU BSR matmul takes square blocks only
        assert_close(F.linear(x, pruned), F.linear(x, masked), tol=1e-5 if dtype == F32 else 1e-12)
    assert_close(BSR.from_mask(mask, block).to_dense({"w": pruned}), masked.double())


def test_prune_blocks_stores_kept_zero_blocks():
    weight = randn(8, 8, seed=42)
    weight[:4] = 0  # the top block-row is all zeros, and density 1.0 keeps it
    pruned = prune_blocks(weight, (4, 4), 1.0)
    assert pruned.values().shape == (4, 4, 4) and layout_mask(pruned).all()
    assert np.array_equal(layout_mask(prune_blocks(weight, (4, 4), 0.5)), prune_mask(weight, (4, 4), 0.5))


def test_prune_blocks_rejects_bad_arguments():
    weight = randn(8, 12, seed=43)
    with pytest.raises(ValueError, match=r"prune_blocks: weight has shape \(96,\), expected 2-D"):
        prune_blocks(weight.flatten(), (2, 2), 0.5)
    with pytest.raises(
        ValueError, match="prune_blocks: weight has dtype torch.int64, expected a floating dtype"
    ):
        prune_blocks(torch.ones(8, 12, dtype=torch.int64), (2, 2), 0.5)
    with pytest.raises(
        ValueError, match="prune_blocks: weight has layout torch.sparse_bsr, expected a dense"
    ):
        prune_blocks(weight.to_sparse_bsr((2, 2)), (2, 2), 0.5)
    with pytest.raises(
        ValueError, match=r"prune_blocks: block 3x3 does not divide the weight shape \(8, 12\)"
    ):
        prune_blocks(weight, (3, 3), 0.5)
    with pytest.raises(ValueError, match=r"prune_blocks: block=\(2,\) must be two positive integers"):
        prune_blocks(weight, (2,), 0.5)
    for density in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"prune_blocks: density=.* must be in \(0, 1\]"):
            prune_blocks(weight, (2, 2), density)


@pytest.mark.parametrize("shape", [(12, 8), (7, 10)])
def test_truncated_svd_meets_the_eckart_young_bound(shape):
    weight = randn(*shape, seed=50)
    s = torch.linalg.svdvals(weight)
    x = randn(4, shape[1], seed=51)
    for rank in range(1, min(shape) + 1):
        f1, f2 = truncated_svd(weight, rank)
        assert f1.shape == (shape[1], rank) and f2.shape == (rank, shape[0])
        err = weight - (f1 @ f2).T
        frobenius = s[rank:].pow(2).sum().sqrt().item()
        spectral = s[rank].item() if rank < min(shape) else 0.0
        assert abs(torch.linalg.matrix_norm(err, "fro").item() - frobenius) <= 1e-10 * s[0]
        assert abs(torch.linalg.matrix_norm(err, 2).item() - spectral) <= 1e-10 * s[0]
        # the factors share the singular values evenly
        assert_close(f1.norm(dim=0), f2.norm(dim=1))
    f1, f2 = truncated_svd(weight, min(shape))
    assert_close((f1 @ f2).T, weight, tol=1e-12)
    assert_close(x @ f1 @ f2, F.linear(x, weight), tol=1e-12)


def test_truncated_svd_keeps_the_dtype_and_rejects_bad_ranks():
    weight = randn(6, 4, seed=52, dtype=F32)
    f1, f2 = truncated_svd(weight, 2)
    assert f1.dtype == f2.dtype == F32
    reference = truncated_svd(weight.double(), 2)
    assert_close(f1.double(), reference[0], tol=1e-5)
    assert_close(f2.double(), reference[1], tol=1e-5)
    for rank in (0, 5, -1, 2.0, True):
        with pytest.raises(
            ValueError, match=rf"truncated_svd: rank={rank!r} must be an integer in 1..4 for a 6x4"
        ):
            truncated_svd(weight, rank)
    with pytest.raises(ValueError, match=r"truncated_svd: weight has shape \(2, 6, 4\), expected 2-D"):
        truncated_svd(weight.expand(2, 6, 4), 2)
    with pytest.raises(
        ValueError, match="truncated_svd: weight has dtype torch.int32, expected a floating dtype"
    ):
        truncated_svd(torch.ones(6, 4, dtype=torch.int32), 2)


def test_pruned_plus_low_rank_residual_is_a_sum_map():
    """The use the pieces are for: W ~ prune(W) + low-rank(W - prune(W)), checked through SumMap."""
    weight = randn(8, 12, seed=60)
    pruned = prune_blocks(weight, (2, 4), 0.5)
    residual = weight - pruned.to_dense()
    f1, f2 = truncated_svd(residual, 2)
    mask = layout_mask(pruned)
    total = SumMap(
        (LinearMap((BSR.from_mask(mask, (2, 4), weight="s"),)), chain_map((12, 2, 8), names=("a", "b")))
    )
    weights = {"s": pruned, "a": f1, "b": f2}
    err = total.to_dense(weights) - weight
    s = torch.linalg.svdvals(residual)
    assert abs(torch.linalg.matrix_norm(err, "fro").item() - s[2:].pow(2).sum().sqrt().item()) < 1e-10
    assert total.weight_names() == ("s", "a", "b")


def test_a_blocksparse_grad_op_says_it_has_no_linear_map():
    """`linear_map` was an AttributeError naming its problem's missing attribute, not why the op has none."""
    import kt
    from kt.ir import op_from_spec

    spec = kt.parse_spec(
        {
            "op": "blocksparse_grad",
            "dtype": "float32",
            "shape": {"batch": 5, "in": 12, "out": 8},
            "sparsity": {"block": [4, 3], "density": 0.5, "seed": 1},
        }
    )
    with pytest.raises(AttributeError, match="bilinear in \\(dy, x\\): it has no linear map"):
        _ = op_from_spec(spec).linear_map
