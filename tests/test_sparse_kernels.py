"""Block-sparse, low-rank chain and sum ops end to end: the tile-sum kernels in Triton's CPU interpreter against
float64 references (and PyTorch's own BSR matmul), their argument handling, sampled legal configs through
check_kernel, op.yaml validation of sparsity patterns and terms, and `kt tune` / `predict` / `show` on the CPU."""

import random
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_poisoned, unused_in_source

import kt
from kt.autotune.checking import check_kernel, relative_error
from kt.codegen import family_for, load_source
from kt.codegen.tilesum import TileConfig
from kt.errors import SpecError
from kt.ir.problems import BlockSparseProblem, ChainProblem, SumProblem
from kt.ir.sparse import chain_order
from kt.sparsity import block_norms, hex_to_mask, mask_to_hex, prune_mask
from kt.spec import load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DTYPES = ["float16", "bfloat16", "float32"]

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state:UserWarning")


def cfg(block_m=16, block_n=16, block_k=16, group_m=1, split=1, fused=0):
    return TileConfig(block_m, block_n, block_k, group_m, num_warps=4, num_stages=2, split=split, fused=fused)


_MODULES = {}


def module_for(problem, config):
    """The generated module of (problem, config), imported for the interpreter (cached: rendering and importing
    cost more than a small run)."""
    key = (problem.key(), config)
    if key not in _MODULES:
        _MODULES[key] = load_source(family_for(problem).render(problem, config), interpret=True)
    return _MODULES[key]


def mask_of(grid, kind, seed=0):
    """A block mask of `grid`: random (about 40%, block-row 1 empty), single, full or one_row (every block-row
    but one empty)."""
    rows, cols = grid
    if kind == "random":
        mask = np.random.default_rng(seed).random(grid) < 0.4
        mask[0, seed % cols] = True  # at least one block
        if rows > 1:
            mask[1] = False
        return mask
    mask = np.zeros(grid, dtype=bool)
    if kind == "single":
        mask[rows // 2, cols - 1] = True
    elif kind == "full":
        mask[:] = True
    elif kind == "one_row":
        mask[rows - 1] = np.arange(cols) % 2 == 0
    else:
        raise AssertionError(kind)
    return mask


def bsp(rows, out, inp, block, mask, dtype="float32"):
    mask = np.asarray(mask, dtype=bool)
    assert mask.shape == (out // block[0], inp // block[1])
    return BlockSparseProblem(rows, inp, out, tuple(block), mask_to_hex(mask), dtype)


def empty_columns(problem: BlockSparseProblem) -> torch.Tensor:
    """The output columns of `problem`'s empty block-rows, as a boolean (out,) vector."""
    empty = ~problem.mask().any(axis=1)
    return torch.from_numpy(np.repeat(empty, problem.block[0]))


# -- block-sparse kernels --------------------------------------------------------------------------------------

BSR_CASES = [
    # rows, out, in, block, pattern: rows never a multiple of a tile; blocks square, tall, wide, tiny, odd
    (37, 96, 64, (16, 16), "random"),
    (37, 96, 64, (32, 16), "random"),
    (21, 64, 96, (16, 48), "random"),
    (37, 40, 32, (8, 8), "random"),
    (19, 24, 96, (4, 24), "random"),
    (37, 64, 64, (16, 16), "single"),
    (37, 64, 48, (16, 16), "full"),
    (33, 96, 64, (32, 16), "one_row"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BSR_CASES, ids=lambda c: f"{c[1]}x{c[2]}-{c[3][0]}x{c[3][1]}-{c[4]}")
def test_blocksparse_matches_f_linear_with_the_dense_weight(case, dtype):
    rows, out, inp, block, kind = case
    problem = bsp(rows, out, inp, block, mask_of((out // block[0], inp // block[1]), kind, seed=rows), dtype)
    module = module_for(problem, cfg())
    x, w = problem.random_args(seed=2)
    assert w.layout == torch.sparse_bsr and tuple(w.values().shape[1:]) == block
    y = run_poisoned(module, problem, (x, w))
    ref = F.linear(x.double(), w.to_dense().double())
    assert relative_error(y, ref) < problem.tolerance()
    assert (y[:, empty_columns(problem)] == 0).all()
    if block[0] == block[1]:
        # PyTorch's own BSR matmul runs on the CPU (MKL) only for float32/float64 and square blocks: compare with
        # it in float64 (the same rounded operands), and natively for float32
        torch_bsr = F.linear(x.double(), w.to(torch.float64))
        assert torch_bsr.shape == y.shape and relative_error(y, torch_bsr) < problem.tolerance()
        if dtype == "float32":
            assert relative_error(y, F.linear(x, w)) < problem.tolerance()


BSR_CONFIGS = [
    cfg(),
    cfg(split=2),
    cfg(split=4),  # more splits than most block-rows have steps
    cfg(group_m=2),
    cfg(block_m=32, group_m=4, split=3),
    cfg(block_n=32, block_k=32),  # tiles larger than a 16-wide block: masked
    cfg(block_n=64, block_k=64, split=2),
    cfg(block_m=64, block_n=16, block_k=32),
]


@pytest.mark.parametrize("config", BSR_CONFIGS, ids=lambda c: c.key())
@pytest.mark.parametrize(
    "rows, out, inp, block",
    [(45, 96, 96, (32, 16)), (37, 40, 48, (8, 24)), (21, 48, 96, (16, 48))],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_blocksparse_configs_compute_the_same_thing(rows, out, inp, block, config):
    problem = bsp(rows, out, inp, block, mask_of((out // block[0], inp // block[1]), "random", seed=3))
    x, w = problem.random_args(seed=4)
    y = run_poisoned(module_for(problem, config), problem, (x, w))
    assert relative_error(y, problem.reference(x, w)) < problem.tolerance()
    assert (y[:, empty_columns(problem)] == 0).all()


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("kind", ["random", "one_row"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_empty_block_rows_write_exact_zeros_into_a_poisoned_out(kind, split, dtype):
    problem = bsp(29, 128, 64, (16, 16), mask_of((8, 4), kind, seed=5), dtype)
    empty = empty_columns(problem)
    assert empty.any() and not empty.all()
    module = module_for(problem, cfg(block_n=16, block_k=16, split=split))
    x, w = problem.random_args(seed=6)
    y = run_poisoned(module, problem, (x, w))
    assert (y[:, empty] == 0).all()  # exactly zero, not merely small
    assert relative_error(y, problem.reference(x, w)) < problem.tolerance()
    fresh = module.kernel(x, w)  # a fresh (torch.empty) output too
    assert (fresh[:, empty] == 0).all() and torch.equal(fresh, y)


def test_blocksparse_kernel_works_for_any_weight_in_its_block_size():
    problem = bsp(13, 64, 48, (16, 16), mask_of((4, 3), "random"))
    module = module_for(problem, cfg(split=2))
    other = bsp(13, 32, 160, (16, 16), mask_of((2, 10), "random", seed=7))  # another shape and pattern
    x, w = other.random_args(seed=8)
    y = module.kernel(x, w)
    assert y.shape == (13, 32)
    assert relative_error(y, other.reference(x, w)) < other.tolerance()
    dense = torch.randn(64, 48)
    dense[16:32] = 0  # to_sparse_bsr drops zero blocks: block-row 1 is stored empty
    w = dense.to_sparse_bsr((16, 16))
    x = torch.randn(7, 48)
    y = module.kernel(x, w)
    assert relative_error(y, F.linear(x.double(), dense.double())) < 1e-5 and (y[:, 16:32] == 0).all()


def test_blocksparse_kernel_refuses_wrong_weights_in_one_line():
    problem = bsp(9, 64, 48, (16, 16), mask_of((4, 3), "full"))
    module = module_for(problem, cfg())
    x, w = problem.random_args(seed=1)
    dense = w.to_dense()
    cases = [
        ((x, dense.to_sparse_bsr((32, 16))), ValueError, r"blocks \(16, 16\)"),
        ((x, dense.to_sparse_bsr((16, 8))), ValueError, r"blocks \(16, 16\)"),
        ((x, dense), TypeError, "sparse BSR"),
        ((x, dense.to_sparse_csr()), TypeError, "sparse BSR"),
        # a TypeError with the cast, as every other tensor's dtype (a ValueError without it)
        (
            (x, w.to(torch.float64)),
            TypeError,
            r"^kernel: w.dtype is torch.float64, but this kernel was built for torch.float32; pass w.to\(torch.float32\)$",
        ),
        ((x.half(), w), TypeError, "float32"),
        ((x[:, :32], w), ValueError, "48 features"),
        ((x, "w"), TypeError, "sparse BSR"),
    ]
    # torch builds a BSR tensor whose parts disagree unless asked to check: a block too few in values was read
    # past its end, a block too many ignored (shapes compared only: no sync)
    crow, col, values = w.crow_indices(), w.col_indices(), w.values()
    parts = [
        (crow, col, values[:-1], "11 blocks in values, 12 col_indices"),
        (crow, col, torch.cat([values, values[:1]]), "13 blocks in values, 12 col_indices"),
        (
            crow[:-1],
            col,
            values,
            r"12 blocks in values, 12 col_indices, crow_indices of \(4,\) \(needs \(5,\)\)",
        ),
    ]
    for c, i, v, words in parts:
        bad = torch.sparse_bsr_tensor(c, i, v, (64, 48), check_invariants=False)
        cases.append(((x, bad), ValueError, "kernel: w's parts disagree: " + words))
    for args, kind, words in cases:
        with pytest.raises(kind, match=words) as info:
            module.kernel(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="out must be"):
        module.kernel(x, w, out=torch.empty(9, 63))
    pytorch_path = kt.build(
        {
            "op": "blocksparse",
            "dtype": "float32",
            "shape": {"batch": 9, "in": 48, "out": 64},
            "sparsity": {"block": [16, 16], "density": 1.0},
        },
        config="pytorch",
    )
    for args, kind, words in cases[-len(parts) :]:  # PyTorch's path checks the same
        with pytest.raises(kind, match=words):
            pytorch_path(*args)


# -- low-rank chains -------------------------------------------------------------------------------------------


def chain_steps(rows, dims):
    return tuple((tuple(left), tuple(right)) for left, right, _ in chain_order((rows, *dims)).steps())


@pytest.mark.parametrize(
    "rows, dims",
    [(23, (24, 7, 33)), (37, (50, 3, 61, 17)), (19, (8, 40, 12)), (21, (20, 33, 5, 40)), (200, (4, 300, 4))],
    ids=str,
)
@pytest.mark.parametrize("config", [cfg(), cfg(block_m=32, group_m=2, split=2)], ids=lambda c: c.key())
def test_lowrank_unfused_follows_the_matrix_chain_order(rows, dims, config):
    problem = ChainProblem(rows, dims, "float32")
    module = module_for(problem, config)
    assert chain_steps(rows, dims) == module.STEPS
    args = problem.random_args(seed=9)
    y = run_poisoned(module, problem, args)
    assert relative_error(y, problem.reference(*args)) < problem.tolerance()


def test_the_chain_order_multiplies_the_factors_first_when_that_is_cheaper():
    steps = chain_steps(200, (4, 300, 4))
    assert steps == ((("m", 1), ("m", 2)), (("m", 0), ("s", 0)))  # x @ (f1 @ f2)
    assert chain_steps(200, (24, 7, 33))[0] == (("m", 0), ("m", 1))  # (x @ f1) @ f2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(24, 7, 33), (50, 3, 61, 17)], ids=str)
def test_lowrank_every_dtype(dims, dtype):
    problem = ChainProblem(29, dims, dtype)
    args = problem.random_args(seed=10)
    y = run_poisoned(module_for(problem, cfg()), problem, args)
    assert relative_error(y, problem.reference(*args)) < problem.tolerance()


@pytest.mark.parametrize(
    "rows, dims, config",
    [
        (23, (24, 7, 33), cfg()),
        (37, (40, 17, 70), cfg(block_k=32)),  # rank 17: padded to 32 on chip
        (37, (40, 17, 70), cfg(block_n=16, split=2)),  # column splits
        (37, (40, 17, 70), cfg(block_m=32, block_n=16, split=5)),  # one column tile per split
        (19, (8, 40, 12), cfg()),  # rank above both dims
        (50, (64, 100, 48), cfg(block_k=32, block_n=32, split=2)),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lowrank_fused_keeps_x_f1_on_chip(rows, dims, config, dtype):
    problem = ChainProblem(rows, dims, dtype)
    assert problem.structures() == ({"fused": 0}, {"fused": 1})
    fused = TileConfig(**{**config.to_dict(), "fused": 1})
    module = module_for(problem, fused)
    assert module.FUSED == 1 and not hasattr(module, "STEPS")
    args = problem.random_args(seed=11)
    y = run_poisoned(module, problem, args)
    assert relative_error(y, problem.reference(*args)) < problem.tolerance()


def test_only_two_factor_chains_of_small_rank_offer_the_fused_kernel():
    assert ChainProblem(8, (16, 8, 16, 8)).structures() == ({"fused": 0},)
    assert ChainProblem(8, (16, 257, 16)).structures() == ({"fused": 0},)
    assert ChainProblem(8, (16, 256, 16)).structures() == ({"fused": 0}, {"fused": 1})


# -- sums ------------------------------------------------------------------------------------------------------


def with_dtype(problem, dtype: str):
    """`problem` (a sum: and its terms) in `dtype`."""
    if isinstance(problem, SumProblem):
        return replace(problem, terms=tuple(replace(t, dtype=dtype) for t in problem.terms), dtype=dtype)
    return replace(problem, dtype=dtype)


def sum_of(*terms, dtype="float32"):
    return with_dtype(SumProblem(tuple(terms)), dtype)


BSR_TERM = bsp(37, 64, 48, (16, 16), mask_of((4, 3), "random", seed=1))
SUMS = {
    "bsr+lowrank": sum_of(BSR_TERM, ChainProblem(37, (48, 7, 64))),
    "bsr+bsr": sum_of(BSR_TERM, bsp(37, 64, 48, (16, 8), mask_of((4, 6), "random", seed=2))),
    "bsr+lowrank3": sum_of(BSR_TERM, ChainProblem(37, (48, 5, 20, 64))),
    "lowrank+lowrank": sum_of(ChainProblem(37, (48, 3, 64)), ChainProblem(37, (48, 30, 9, 64))),
    "one_row+lowrank": sum_of(
        bsp(37, 64, 48, (16, 16), mask_of((4, 3), "one_row")), ChainProblem(37, (48, 9, 64))
    ),
    # the chain program multiplies f1 @ f2 first (8*16*(100+300) < 100*300*(8+16) multiplications)
    "bsr+factors_first": sum_of(
        bsp(100, 16, 8, (8, 8), mask_of((2, 1), "one_row")), ChainProblem(100, (8, 300, 16))
    ),
    # block heights 16 and 32: one accumulation cannot tile both
    "heights": sum_of(
        BSR_TERM, bsp(37, 64, 48, (32, 16), mask_of((2, 3), "random", seed=3)), ChainProblem(37, (48, 4, 64))
    ),
}


@pytest.mark.parametrize("config", [cfg(), cfg(block_m=32, group_m=2, split=2)], ids=lambda c: c.key())
@pytest.mark.parametrize("fused", [0, 1])
@pytest.mark.parametrize("name", list(SUMS))
def test_sum_fused_and_unfused_match_the_terms_sum(name, fused, config):
    problem = SUMS[name]
    if fused and {"fused": 1} not in problem.structures():
        assert name == "heights"
        assert problem.structures() == ({"fused": 0},)
        return
    module = module_for(problem, TileConfig(**{**config.to_dict(), "fused": fused}))
    for i, term in enumerate(problem.terms):
        if isinstance(term, ChainProblem) and not fused:  # each chain term in its matrix-chain order
            assert getattr(module, f"STEPS{i}") == chain_steps(term.rows, term.dims)
    args = problem.random_args(seed=12)
    y = run_poisoned(module, problem, args)
    ref = problem.reference(*args)
    assert relative_error(y, ref) < problem.tolerance()
    parts = problem.split_weights(args[1:])
    dense = sum(  # each term in plain torch, from the dense weights
        F.linear(args[0].double(), w[0].to_dense().double())
        if isinstance(term, BlockSparseProblem)
        else torch.linalg.multi_dot([args[0].double(), *(f.double() for f in w)])
        for term, w in zip(problem.terms, parts)
    )
    assert relative_error(y, dense) < problem.tolerance()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fused", [0, 1])
def test_sum_in_half_precision_with_an_empty_block_row(dtype, fused):
    problem = with_dtype(SUMS["one_row+lowrank"], dtype)
    module = module_for(problem, cfg(fused=fused, split=2))
    args = problem.random_args(seed=13)
    y = run_poisoned(module, problem, args)
    assert relative_error(y, problem.reference(*args)) < problem.tolerance()
    # the block-sparse term alone: zero weights for the low-rank term leave exact zeros in its empty block-rows
    zeros = (args[0], args[1], torch.zeros_like(args[2]), args[3])
    y = run_poisoned(module, problem, zeros)
    assert (y[:, empty_columns(problem.terms[0])] == 0).all()


@pytest.mark.parametrize(
    "problem, config",
    [
        (bsp(37, 64, 48, (16, 16), mask_of((4, 3), "random", seed=1)), cfg()),
        (ChainProblem(37, (40, 17, 70)), cfg(split=2)),
        (ChainProblem(37, (40, 17, 70)), cfg(fused=1)),
        (SUMS["bsr+lowrank"], cfg(fused=1)),
        (SUMS["bsr+lowrank"], cfg()),
        (SUMS["lowrank+lowrank"], cfg(fused=1)),
        (SUMS["bsr+bsr"], cfg(fused=1)),
    ],
    ids=str,
)
def test_a_generated_module_holds_only_what_its_launches_use(problem, config):
    """A low-rank module carried the BSR helpers (`_bsr_args`, `_check_bsr`), a fused one the tile launcher it never
    calls, a block-sparse one `_dense_args`; and without the fused low-rank kernel three blank lines followed the
    last tile kernel: what `ruff check` flags in a kernel.py a user opens."""
    assert unused_in_source(family_for(problem).render(problem, config)) == []


# -- strides, views, leading dims, aliasing --------------------------------------------------------------------

VIEW_PROBLEMS = {
    "blocksparse": (bsp(20, 48, 64, (16, 32), mask_of((3, 2), "random", seed=4)), cfg(split=2)),
    "lowrank": (ChainProblem(20, (64, 5, 48), "float32"), cfg()),
    "lowrank-fused": (ChainProblem(20, (64, 5, 48), "float32"), cfg(fused=1)),
    "sum-fused": (
        sum_of(bsp(20, 48, 64, (16, 16), mask_of((3, 4), "random")), ChainProblem(20, (64, 6, 48))),
        cfg(fused=1),
    ),
}


@pytest.mark.parametrize("name", list(VIEW_PROBLEMS))
def test_kernels_take_strided_views_leading_dims_and_aliased_out(name):
    problem, config = VIEW_PROBLEMS[name]
    module = module_for(problem, config)
    x, *weights = problem.random_args(seed=14)
    rows, inp = x.shape
    ref = problem.reference(x, *weights)
    out_features = ref.shape[1]
    tol = problem.tolerance()

    def check(y, expected=ref):
        assert relative_error(y.reshape(expected.shape), expected) < tol

    wide = torch.full((rows, inp + 11), float("nan"))
    wide[:, 3 : 3 + inp] = x
    check(module.kernel(wide[:, 3 : 3 + inp], *weights))  # a column slice
    check(module.kernel(x.t().contiguous().t(), *weights))  # a transposed view (column-major)
    y = module.kernel(x.view(4, 5, inp), *weights)  # 3-D x
    assert y.shape == (4, 5, out_features)
    check(y)
    permuted = x.view(5, 4, inp).transpose(0, 1)  # 3-D x whose leading dims do not flatten as a view
    y = module.kernel(permuted, *weights)
    check(y, problem.reference(permuted.reshape(rows, inp), *weights))
    big = torch.full((rows, 2 * out_features + 5), float("nan"))
    out = big[:, 5 : 5 + 2 * out_features : 2]  # a strided slice of a bigger tensor
    assert module.kernel(x, *weights, out=out) is out
    check(out)
    assert torch.isnan(big[:, :5]).all() and torch.isnan(big[:, 6::2]).all()  # nothing else written
    column_major = torch.full((out_features, rows), float("nan")).t()
    assert module.kernel(x, *weights, out=column_major) is column_major
    check(column_major)
    expanded = x[:1].expand(rows, inp)  # every row the same, stride 0
    check(module.kernel(expanded, *weights), problem.reference(expanded.contiguous(), *weights))
    out3 = torch.full((5, 4, out_features), float("nan")).transpose(0, 1)  # a 3-D out no view can flatten
    assert module.kernel(x.view(4, 5, inp), *weights, out=out3) is out3
    check(out3)
    one = module.kernel(x[3], *weights)  # 1-D x: one row
    assert one.shape == (out_features,)
    check(one, ref[3])
    assert module.kernel(x[:0], *weights).shape == (0, out_features)  # no rows
    shared = torch.empty((rows, max(inp, out_features)))
    shared[:, :inp] = x
    alias_x, alias_out = shared[:, :inp], shared[:, :out_features]  # out overlaps x
    assert module.kernel(alias_x, *weights, out=alias_out) is alias_out
    check(alias_out)


def test_factors_may_be_strided_views_too():
    problem = ChainProblem(11, (40, 17, 24), "float32")
    x, f1, f2 = problem.random_args(seed=15)
    f1t = f1.t().contiguous().t()  # column-major
    f2s = torch.cat([f2, torch.full_like(f2, float("nan"))], dim=1)[:, :24]  # a column slice
    for fused in (0, 1):
        y = module_for(problem, cfg(fused=fused)).kernel(x, f1t, f2s)
        assert relative_error(y, problem.reference(x, f1, f2)) < problem.tolerance()
    bsr = bsp(11, 48, 40, (16, 8), mask_of((3, 5), "random"))
    x, w = bsr.random_args(seed=16)
    strided_values = bsr.bsr(w.values().transpose(1, 2).contiguous().transpose(1, 2))
    assert not strided_values.values().is_contiguous()
    crow, col = w.crow_indices().int(), w.col_indices().int()
    int32 = torch.sparse_bsr_tensor(crow, col, w.values(), size=w.shape, check_invariants=True)
    module = module_for(bsr, cfg())
    for weight in (strided_values, int32):
        assert relative_error(module.kernel(x, weight), bsr.reference(x, w)) < bsr.tolerance()


# -- sampled legal configs of each family's space, through check_kernel ------------------------------------------

SAMPLED_SPECS = {
    "blocksparse": {
        "op": "blocksparse",
        "dtype": "float16",
        "shape": {"batch": 300, "in": 128, "out": 96},
        "sparsity": {"block": [32, 16], "density": 0.3, "seed": 1},
    },
    "blocksparse-banded": {
        "op": "blocksparse",
        "dtype": "bfloat16",
        "shape": {"batch": 300, "in": 96, "out": 128},
        "sparsity": {"block": [16, 48], "pattern": "banded", "width": 0},
    },
    "lowrank": {"op": "lowrank", "dtype": "float16", "shape": {"batch": 300, "dims": [64, 24, 80]}},
    "sum": {
        "op": "sum",
        "dtype": "float32",
        "terms": [
            {
                "op": "blocksparse",
                "shape": {"batch": 300, "in": 64, "out": 96},
                "sparsity": {"block": [32, 32], "density": 0.5, "seed": 2},
            },
            {"op": "lowrank", "shape": {"batch": 300, "dims": [64, 12, 96]}},
        ],
    },
}


@pytest.mark.parametrize("name", list(SAMPLED_SPECS))
def test_check_kernel_passes_for_sampled_legal_configs_of_every_structure_choice(name):
    space = kt.space(SAMPLED_SPECS[name])
    problem, family = space.problem, family_for(space.problem)
    by_structure = {}
    for config in space.legal:
        by_structure.setdefault(config.fused, []).append(config)
    assert sorted(by_structure) == [s["fused"] for s in problem.structures()]
    rng = random.Random(0)
    for configs in by_structure.values():
        for config in rng.sample(configs, min(4, len(configs))):
            module = load_source(family.render(problem, config), interpret=True)
            for small in family.check_problems(problem, config):
                result = check_kernel(module, small, seed=1, device="cpu")
                assert result.ok, (str(small), config.key(), result.message)


def test_check_problems_crop_a_pattern_and_keep_an_empty_block_row():
    from kt.codegen.tilesum import crop_blocksparse

    mask = np.zeros((8, 10), dtype=bool)
    mask[2, [1, 3, 5, 7, 9]] = True
    mask[6, 0] = True
    problem = bsp(500, 8 * 16, 10 * 16, (16, 16), mask, "float16")
    small = crop_blocksparse(problem)
    assert small.block == (16, 16) and small.grid[0] == 3 and small.grid[1] <= 4
    assert (~small.mask().any(axis=1)).any() and small.nnz >= 1
    (checked,) = family_for(problem).check_problems(problem, cfg(block_m=64))
    assert checked.rows == 64 + 32 + 1
    assert check_kernel(module_for(checked, cfg(block_m=64)), checked, seed=0, device="cpu").ok
    # the empty block-row is picked where the first rows and the fullest hold blocks (above, the first row is
    # the empty one, so a crop taking the first rows after the fullest kept it by chance)
    mask = np.zeros((8, 10), dtype=bool)
    mask[[0, 1, 3, 4, 5, 7], 0] = True
    mask[2, [1, 3, 5, 7, 9]] = True
    small = crop_blocksparse(bsp(500, 8 * 16, 10 * 16, (16, 16), mask, "float16"))
    assert small.grid[0] == 3 and (~small.mask().any(axis=1)).sum() == 1 and small.nnz >= 2


def test_build_refuses_a_fused_sum_the_problem_does_not_offer():
    spec = {
        "op": "sum",
        "dtype": "float32",
        "terms": [
            {
                "op": "blocksparse",
                "shape": {"batch": 20, "in": 48, "out": 64},
                "sparsity": {"block": [16, 16], "density": 0.5},
            },
            {
                "op": "blocksparse",
                "shape": {"batch": 20, "in": 48, "out": 64},
                "sparsity": {"block": [32, 16], "density": 0.5},
            },
        ],
    }
    assert kt.space(spec).problem.structures() == ({"fused": 0},)
    fused = {"block_m": 16, "block_n": 16, "block_k": 16, "fused": 1}
    with pytest.raises(
        kt.SpecError, match=r"^config: structure fused=1 is not offered .*; allowed: fused=0$"
    ):
        kt.build(spec, config=fused)


def test_build_refuses_a_fused_chain_over_the_rank_limit():
    spec = {"op": "lowrank", "dtype": "float32", "shape": {"batch": 20, "dims": [16, 400, 16]}}
    assert kt.space(spec).problem.structures() == ({"fused": 0},)
    with pytest.raises(kt.SpecError, match="structure fused=1 is not offered"):
        kt.build(spec, config={"block_m": 16, "block_n": 16, "block_k": 16, "fused": 1})


# -- op.yaml: sparsity patterns, chains, terms ---------------------------------------------------------------------

LINEAR = {"batch": 8, "in": 64, "out": 96}  # a block grid of (6, 4) in 16x16 blocks


def blocksparse_spec(sparsity, **more):
    return {"op": "blocksparse", "shape": dict(LINEAR), "sparsity": sparsity, **more}


BSR_TERM_SPEC = {"op": "blocksparse", "shape": LINEAR, "sparsity": {"block": [16, 16], "density": 0.5}}
LOWRANK_TERM_SPEC = {"op": "lowrank", "shape": {"batch": 8, "dims": [64, 4, 96]}}


def write_files(directory: Path) -> None:
    """The mask and prune files the spec cases below name (relative to op.yaml's directory)."""
    np.save(directory / "wrong_shape.npy", np.ones((4, 4), dtype=bool))
    np.save(directory / "twos.npy", np.full((6, 4), 2))
    np.save(directory / "halves.npy", np.full((6, 4), 0.5))
    one_half = np.eye(6, 4)  # a float64 0/1 mask is taken: the one 0.5 is what is wrong, not the dtype
    one_half[4, 2] = 0.5
    np.save(directory / "one_half.npy", one_half)
    (directory / "folder.npy").mkdir(exist_ok=True)
    np.save(directory / "zeros.npy", np.zeros((6, 4), dtype=bool))
    torch.save(torch.randn(10, 10), directory / "wrong_shape.pt")
    torch.save({"w": torch.randn(96, 64)}, directory / "dict.pt")
    nan = torch.randn(96, 64)
    nan[3, 5] = float("nan")
    torch.save(nan, directory / "nan.pt")
    torch.save(torch.randn(96, 64), directory / "weight.pt")
    # a traceback each (Tensor.item() on meta; isfinite on float8), and the sparse ones refused naming only
    # the dtype and shape they had right, after torch's "Sparse BSR tensor support is in beta" warning
    torch.save(torch.empty(96, 64, device="meta"), directory / "meta.pt")
    torch.save(torch.randn(96, 64).to(torch.float8_e4m3fn), directory / "float8.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.randn(96, 64).to_sparse_bsr((16, 16)), directory / "bsr.pt")


SPEC_ERRORS = [
    (blocksparse_spec({"block": [16, 24], "density": 0.5}), "sparsity.block[1]", "must divide in=64"),
    (blocksparse_spec({"block": [20, 16], "density": 0.5}), "sparsity.block[0]", "must divide out=96"),
    (blocksparse_spec({"block": [16], "density": 0.5}), "sparsity.block", "two integers"),
    (blocksparse_spec({"density": 0.5}), "sparsity.block", "is required"),
    (blocksparse_spec({"block": [16, 16], "density": 0}), "sparsity.density", "in (0, 1]"),
    (blocksparse_spec({"block": [16, 16], "density": 1.5}), "sparsity.density", "in (0, 1]"),
    (blocksparse_spec({"block": [16, 16], "density": "x"}), "sparsity.density", "got 'x'"),
    (blocksparse_spec({"block": [16, 16], "density": True}), "sparsity.density", "in (0, 1]"),
    (blocksparse_spec({"block": [16, 16]}), "sparsity", "needs a pattern"),
    (blocksparse_spec(None), "sparsity", "is required"),
    (
        blocksparse_spec({"block": [16, 16], "pattern": "diagonal", "mask": "m.npy"}),
        "sparsity.mask",
        "one pattern",
    ),
    (
        blocksparse_spec({"block": [16, 16], "mask": "m.npy", "prune": "w.pt"}),
        "sparsity.prune",
        "one pattern",
    ),
    (
        blocksparse_spec({"block": [16, 16], "pattern": "diagonal", "seed": 3}),
        "sparsity.seed",
        "random (density) patterns only (this one is given by pattern)",
    ),
    (
        blocksparse_spec({"block": [16, 16], "pattern": "diagonal", "density": 0.5}),
        "sparsity.density",
        "random (density) and pruned (prune) patterns only (this one is given by pattern)",
    ),
    (blocksparse_spec({"block": [16, 16], "pattern": "diag"}), "sparsity.pattern", "did you mean 'diagonal'"),
    (blocksparse_spec({"block": [16, 16], "pattern": "diagonal", "width": 1}), "sparsity.width", "banded"),
    (blocksparse_spec({"block": [16, 16], "density": 0.5, "seed": -1}), "sparsity.seed", "from 0"),
    (blocksparse_spec({"block": [16, 16], "density": 0.5, "colour": 1}), "sparsity.colour", "unknown key"),
    (blocksparse_spec({"block": [16, 16], "mask": "wrong_shape.npy"}), "sparsity.mask", "block grid"),
    (blocksparse_spec({"block": [16, 16], "mask": "twos.npy"}), "sparsity.mask", "0/1 values"),
    (
        blocksparse_spec({"block": [16, 16], "mask": "halves.npy"}),
        "sparsity.mask",
        "0/1 values, got 0.5 at (0, 0)",
    ),
    (
        blocksparse_spec({"block": [16, 16], "mask": "one_half.npy"}),
        "sparsity.mask",
        "0/1 values, got 0.5 at (4, 2) (1 such value)",
    ),
    (
        blocksparse_spec({"block": [16, 16], "mask": "folder.npy"}),
        "sparsity.mask",
        "is a folder; give the mask",
    ),
    (blocksparse_spec({"block": [16, 16], "mask": "zeros.npy"}), "sparsity", "no non-zero block"),
    (blocksparse_spec({"block": [16, 16], "mask": "missing.npy"}), "sparsity.mask", "not found"),
    (blocksparse_spec({"block": [16, 16], "mask": "mask.txt"}), "sparsity.mask", ".npy file"),
    (
        blocksparse_spec({"block": [16, 16], "prune": "wrong_shape.pt", "density": 0.5}),
        "sparsity.prune",
        "(96, 64)",
    ),
    (
        blocksparse_spec({"block": [16, 16], "prune": "dict.pt", "density": 0.5}),
        "sparsity.prune",
        "one tensor",
    ),
    (blocksparse_spec({"block": [16, 16], "prune": "nan.pt", "density": 0.5}), "sparsity.prune", "NaN"),
    (
        blocksparse_spec({"block": [16, 16], "prune": "meta.pt", "density": 0.5}),
        "sparsity.prune",
        "a meta tensor",
    ),
    (
        blocksparse_spec({"block": [16, 16], "prune": "float8.pt", "density": 0.5}),
        "sparsity.prune",
        "torch.float8_e4m3fn tensor of shape (96, 64); expected a dense tensor of shape (out, in) = (96, 64), of "
        "float16, bfloat16, float32 or float64",
    ),
    (
        blocksparse_spec({"block": [16, 16], "prune": "bsr.pt", "density": 0.5}),
        "sparsity.prune",
        "holds a sparse_bsr tensor; expected a dense one: save W.to_dense()",
    ),
    (
        blocksparse_spec({"block": [16, 16], "prune": "missing.pt", "density": 0.5}),
        "sparsity.prune",
        "not found",
    ),
    (blocksparse_spec({"block": [16, 16], "prune": "weight.pt"}), "sparsity.density", "required with prune"),
    ({"op": "lowrank", "shape": {"batch": 8, "dims": [64, 96]}}, "shape.dims", "3 to 9 integers"),
    ({"op": "lowrank", "shape": {"batch": 8, "dims": 64}}, "shape.dims", "3 to 9 integers"),
    ({"op": "lowrank", "shape": {"batch": 8, "dims": [64, 0, 96]}}, "shape.dims[1]", "from 1"),
    (
        {"op": "lowrank", "shape": {"batch": 8, "dims": [64, 4, 96]}, "sparsity": {}},
        "sparsity",
        "applies to blocksparse, blocksparse_grad ops only (op is lowrank)",
    ),
    ({"op": "sum", "terms": [BSR_TERM_SPEC]}, "terms", "2 to 8 terms"),
    ({"op": "sum", "terms": BSR_TERM_SPEC}, "terms", "2 to 8 terms"),
    ({"op": "sum"}, "terms", "2 to 8 terms"),
    (
        {
            "op": "sum",
            "terms": [BSR_TERM_SPEC, {**LOWRANK_TERM_SPEC, "shape": {"batch": 8, "dims": [64, 4, 95]}}],
        },
        "terms[1].shape",
        "out is 95 but terms[0] has 96",
    ),
    (
        {
            "op": "sum",
            "terms": [BSR_TERM_SPEC, {**LOWRANK_TERM_SPEC, "shape": {"batch": 8, "dims": [63, 4, 96]}}],
        },
        "terms[1].shape",
        "in is 63",
    ),
    (
        {
            "op": "sum",
            "terms": [BSR_TERM_SPEC, {**LOWRANK_TERM_SPEC, "shape": {"batch": 9, "dims": [64, 4, 96]}}],
        },
        "terms[1].shape",
        "batch is 9",
    ),
    (
        {"op": "sum", "terms": [BSR_TERM_SPEC, {"op": "dense"}]},
        "terms[1].op",
        "allowed: blocksparse, lowrank",
    ),
    ({"op": "sum", "terms": [BSR_TERM_SPEC, {"op": "sum"}]}, "terms[1].op", "allowed: blocksparse, lowrank"),
    (
        {"op": "sum", "terms": [BSR_TERM_SPEC, {**LOWRANK_TERM_SPEC, "dtype": "float32"}]},
        "terms[1].dtype",
        "unknown",
    ),
    (
        {
            "op": "sum",
            "terms": [BSR_TERM_SPEC, {**BSR_TERM_SPEC, "sparsity": {"block": [16, 16], "density": 0}}],
        },
        "terms[1].sparsity.density",
        "in (0, 1]",
    ),
    (
        {"op": "sum", "terms": [BSR_TERM_SPEC, LOWRANK_TERM_SPEC], "shape": LINEAR},
        "shape",
        "ops only (op is sum)",
    ),
]


@pytest.mark.parametrize("data, field, words", SPEC_ERRORS, ids=lambda v: v if isinstance(v, str) else "")
def test_spec_errors_name_the_field_in_one_line(tmp_path, data, field, words):
    write_files(tmp_path)
    with pytest.raises(SpecError) as info, warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings are kt's to keep from the user
        parse_spec(data, source=str(tmp_path / "op.yaml"))
    assert info.value.field == field, str(info.value)
    assert words in info.value.reason
    assert "\n" not in str(info.value)


def test_an_artifacts_spec_keeps_its_layout_when_its_mask_file_changed_since_the_tune(tmp_path):
    """A spec read back from an artifact (files not checked) named the mask file it was tuned from: once that file
    was edited, kt.load called the intact meta.json "damaged ... does not match the pattern that mask gives;
    remove it"; once it was moved, it loaded. The stored layout is what the kernel was built for, either way."""
    mask = np.eye(4, dtype=np.int64)
    np.save(tmp_path / "mask.npy", mask)
    data = {
        "op": "blocksparse",
        "shape": {"batch": 8, "in": 64, "out": 64},
        "sparsity": {"block": [16, 16], "mask": "mask.npy"},
    }
    tuned = parse_spec(data, source=str(tmp_path / "op.yaml"))
    stored = {
        **data,
        "sparsity": {**data["sparsity"], "mask": tuned.sparsity.mask, "layout": tuned.sparsity.layout},
    }
    np.save(tmp_path / "mask.npy", np.ones((4, 4), dtype=np.int64))  # edited since
    assert parse_spec(stored, check_files=False).sparsity.layout == tuned.sparsity.layout
    with pytest.raises(SpecError, match="sparsity.layout: does not match the pattern that mask gives"):
        parse_spec(stored)  # an op.yaml whose file and layout disagree is still refused


def test_mask_and_prune_files_are_read_relative_to_the_op_yaml(tmp_path):
    mask = np.zeros((6, 4), dtype=np.int8)  # 0/1 integers are a mask too
    mask[[0, 2, 5], [1, 3, 0]] = 1
    np.save(tmp_path / "mask.npy", mask)
    weight = torch.randn(96, 64)
    weight[32:48, 16:32] *= 100  # block (2, 1) is the largest by far
    torch.save(weight, tmp_path / "weight.pt")
    (tmp_path / "mask.yaml").write_text(
        "op: blocksparse\nshape: {batch: 8, in: 64, out: 96}\nsparsity: {block: [16, 16], mask: mask.npy}\n"
    )
    (tmp_path / "prune.yaml").write_text(
        "op: blocksparse\nshape: {batch: 8, in: 64, out: 96}\n"
        "sparsity: {block: [16, 16], prune: weight.pt, density: 0.25}\n"
    )
    by_mask = load_spec(tmp_path / "mask.yaml")
    assert by_mask.sparsity.mask == str(tmp_path / "mask.npy")
    assert (hex_to_mask(by_mask.sparsity.layout, (6, 4)) == mask.astype(bool)).all()
    pruned = load_spec(tmp_path / "prune.yaml")
    kept = hex_to_mask(pruned.sparsity.layout, (6, 4))
    assert kept.sum() == 6 and kept[2, 1]  # a quarter of 24 blocks, the largest among them
    norms = block_norms(weight, (16, 16)).numpy()
    assert norms[kept].min() >= norms[~kept].max()  # the largest-norm blocks
    assert (kept == prune_mask(weight, (16, 16), 0.25)).all()
    for spec in (by_mask, pruned):
        assert parse_spec(spec.to_dict()) == spec  # the absolute path and the layout travel together
    # a spec read back where the file is gone keeps its stored layout (an artifact from another machine)
    data = pruned.to_dict()
    (tmp_path / "weight.pt").unlink()
    assert parse_spec(data, check_files=False).sparsity.layout == pruned.sparsity.layout
    with pytest.raises(SpecError, match="not found"):
        parse_spec(data)
    (tmp_path / "weight.pt").mkdir()  # or a folder in its place: the layout still, the folder named otherwise
    assert parse_spec(data, check_files=False).sparsity.layout == pruned.sparsity.layout
    with pytest.raises(SpecError, match=r"weight.pt' is a folder; give the weight \(.pt\) file in it"):
        parse_spec(data)


def test_a_mask_file_that_is_no_npy_array_says_so(tmp_path):
    """A text file named .npy was "pickled (object) data" (np.load's guess for a file without .npy's header),
    and an .npz archive (np.savez) gave a dict where kt read an array."""
    (tmp_path / "text.npy").write_text("hello\n")
    np.savez(tmp_path / "arch.npz", mask=np.ones((6, 4), dtype=bool))
    (tmp_path / "arch.npz").rename(tmp_path / "arch.npy")  # an archive by its content, an .npy by its name
    for name in ("text.npy", "arch.npy"):
        (tmp_path / "m.yaml").write_text(
            f"op: blocksparse\nshape: {{batch: 8, in: 64, out: 96}}\nsparsity: {{block: [16, 16], mask: {name}}}\n"
        )
        with pytest.raises(SpecError, match=rf"sparsity.mask: .*{name}' is not a .npy file \(np.save"):
            load_spec(tmp_path / "m.yaml")


@pytest.mark.parametrize(
    "data",
    [
        blocksparse_spec({"block": [16, 32], "density": 0.3, "seed": 5}, dtype="bfloat16"),
        blocksparse_spec({"block": [32, 16], "pattern": "banded", "width": 1}),
        blocksparse_spec({"block": [16, 16], "pattern": "diagonal"}, precision="tf32", dtype="float32"),
        {"op": "lowrank", "shape": {"batch": 8, "dims": [64, 3, 17, 96]}, "tune": {"budget": 5}},
        {"op": "sum", "dtype": "float32", "terms": [BSR_TERM_SPEC, LOWRANK_TERM_SPEC], "name": "s"},
        {
            "op": "sum",
            "terms": [
                LOWRANK_TERM_SPEC,
                BSR_TERM_SPEC,
                {**BSR_TERM_SPEC, "sparsity": {"block": [32, 8], "pattern": "diagonal"}},
            ],
        },
    ],
    ids=["bsr-random", "bsr-banded", "bsr-tf32", "lowrank", "sum", "sum3"],
)
def test_specs_round_trip_through_to_dict(data):
    spec = parse_spec(data)
    assert parse_spec(spec.to_dict()) == spec
    assert parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    if spec.op == "sum":
        assert all(term.dtype == spec.dtype for term in spec.terms)
        assert "shape" not in spec.to_dict()


# -- the CLI and the tuner on the CPU ----------------------------------------------------------------------------


def tolerance_of(spec) -> float:
    from kt.ir import op_from_spec

    return op_from_spec(spec).problem.tolerance()


def invoke(*args):
    from click.testing import CliRunner

    from kt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_kt_tune_on_a_bad_sparse_spec_exits_2_with_one_line_and_no_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "op: sum\nterms:\n"
        "  - {op: blocksparse, shape: {batch: 8, in: 64, out: 96}, sparsity: {block: [16, 16], mask: gone.npy}}\n"
        "  - {op: lowrank, shape: {batch: 8, dims: [64, 4, 96]}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "tune", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("kt: error: ")
    assert "terms[0].sparsity.mask: file" in done.stderr and "gone.npy' not found" in done.stderr
    for content, words in [
        (
            "op: blocksparse\nshape: {batch: 8, in: 64, out: 96}\nsparsity: {block: [16, 16], density: 1.5}\n",
            "sparsity.density",
        ),
        ("op: lowrank\nshape: {batch: 8, dims: [64, 96]}\n", "shape.dims"),
        ("op: sum\nterms: [{op: lowrank, shape: {batch: 8, dims: [64, 4, 96]}}]\n", "terms: must be a list"),
    ]:
        bad.write_text(content)
        result = invoke("tune", bad)
        assert result.exit_code == 2 and words in result.output and result.output.count("\n") == 1, (
            result.output
        )


# each example's `kt tune` on the CPU: tests/test_examples.py


def test_a_small_sum_with_different_block_heights_tunes_unfused(tmp_path):
    (tmp_path / "op.yaml").write_text(
        "op: sum\nname: heights\ndtype: bfloat16\nterms:\n"
        "  - {op: blocksparse, shape: {batch: 40, in: 64, out: 96}, sparsity: {block: [16, 16], density: 0.4}}\n"
        "  - {op: blocksparse, shape: {batch: 40, in: 64, out: 96}, sparsity: {block: [32, 64], pattern: diagonal}}\n"
        "  - {op: lowrank, shape: {batch: 40, dims: [64, 5, 7, 96]}}\n"
    )
    shown = invoke("show", tmp_path / "op.yaml")
    assert shown.exit_code == 0, shown.output
    assert "fused=0: term 0: x @ W0.T (non-zero blocks)" in shown.output and "fused=1" not in shown.output
    options = [
        "--budget",
        1,
        "--workers",
        1,
        "--backend",
        "interpret",
        "--db",
        tmp_path / "t.db",
        "--out",
        tmp_path,
    ]
    result = invoke("tune", tmp_path / "op.yaml", *options)
    assert result.exit_code == 0, result.output
    kernel = kt.load(tmp_path / "heights")
    assert kernel.config.fused == 0
    args = kt.random_args(kernel.spec, seed=2, device="cpu")
    ref = kt.reference(kernel.spec)(*(a.to(torch.float64) for a in args))
    assert relative_error(kernel(*args), ref) < tolerance_of(kernel.spec)


@pytest.mark.parametrize("example", ["blocksparse", "lowrank", "sum"])
def test_plan_ranks_every_legal_config_with_staged_records(example):
    plan = kt.plan(EXAMPLES / f"{example}.yaml", budget=4)
    legal = plan.space.legal
    assert sorted(plan.ranked) == list(range(len(legal))) and len(plan.chosen) == 4
    assert np.isfinite(plan.predicted_s).all() and (plan.predicted_s > 0).all()
    problem = plan.problem
    structures = {c.fused for c in legal}
    assert structures == {s["fused"] for s in problem.structures()}
    assert structures == ({0} if example == "blocksparse" else {0, 1})
    for index in (plan.ranked[0], plan.ranked[-1]):
        record, config = plan.records[index], plan.config(index)
        assert record["family"] == example and record["block_m"] == config.block_m
        texts = family_for(problem).launch_texts(problem, config.structure())
        assert len(record["stages"]) == len(texts) >= 1
        assert all(stage["family"] == "gemm" and stage["m"] == problem.rows for stage in record["stages"])
    predicted = invoke("predict", EXAMPLES / f"{example}.yaml", "--top", 3, "--budget", 2)
    assert predicted.exit_code == 0, predicted.output
    assert f"best 3 of {len(legal)} by predicted time" in predicted.output
    assert plan.config(plan.ranked[0]).key() in predicted.output


@pytest.mark.parametrize("example", ["blocksparse", "sum"])
def test_a_block_sparse_launch_reads_all_of_x_that_its_blocks_meet_in_its_roofline(example):
    """A block-sparse launch is the GEMM of its blocks' mean depth (410 columns at 10% of 4096): its roofline
    counted x as 410 columns, and `kt predict` printed 0.0278 ms (math-bound) for examples/blocksparse.yaml,
    below the 0.0411 ms it takes to read x, the stored blocks and y once at the H100's DRAM bandwidth."""
    from kt.costmodel.staged import roofline_and_bound
    from kt.ir.problems import BlockSparseProblem

    plan = kt.plan(EXAMPLES / f"{example}.yaml", budget=1)
    problem = plan.problem
    terms = problem.terms if example == "sum" else (problem,)
    for record in plan.records[:3]:
        launches = [s for s in record["stages"] if "a_cols" in s]
        bsr = [t for t in terms if isinstance(t, BlockSparseProblem)]
        assert len(launches) == (len(bsr) if record["fused"] == 0 else 0)
        for stage, term in zip(launches, bsr):
            assert stage["a_cols"] == term.block[1] * int(term.mask().any(axis=0).sum()) > stage["k"]
    if example == "blocksparse":
        size = 2  # float16
        floor = (problem.rows * problem.in_features + problem.nnz * 64 * 64 + problem.rows * 4096) * size
        seconds, _ = roofline_and_bound(plan.records[:1], plan.space.device)
        assert seconds[0] == pytest.approx(floor / plan.space.device.dram_bandwidth)  # memory-bound


@pytest.mark.parametrize(
    "in_features,bi,empty,expected", [(4096, 4, 7, 16), (4100, 4, 7, 8), (4104, 12, 0, 16)]
)
def test_a_block_sparse_launchs_a_alignment_is_that_of_x_s_own_rows(in_features, bi, empty, expected):
    """The kernel reads x with its own row stride, in_features: the feature took the columns its blocks meet
    (`a_cols`), so with a block-column empty and blocks 4 wide a 16-byte aligned x read as 8-byte aligned (4092
    columns), and a misaligned one (4100 columns of which 4096 met) as aligned."""
    from kt.costmodel.features import FEATURE_NAMES, features

    grid = (64 // 32, in_features // bi)
    mask = np.ones(grid, dtype=bool)
    mask[:, empty] = False
    problem = BlockSparseProblem(48, in_features, 64, (32, bi), mask_to_hex(mask))
    config = TileConfig(
        block_m=64, block_n=64, block_k=64, group_m=1, num_warps=4, num_stages=3, split=1, fused=0
    )
    (stage,) = family_for(problem).records(problem, [config])[0]["stages"]
    assert stage["a_cols"] == in_features - bi and stage["a_ld"] == in_features
    assert features([stage], kt.resolve_profile("h100"))[0, FEATURE_NAMES.index("a_align")] == expected


def test_block_sparse_kernels_take_a_w_of_no_rows_or_columns_and_strided_index_views():
    """The block-sparse kernel takes any W in its block size, and its gradient any W's: one of no rows or no
    columns raised torch's "cannot reshape tensor of 0 elements into shape [-1, 0]"; index tensors that are
    strided views (torch builds such a BSR tensor unless asked to check invariants) were read at unit stride,
    the entries between taken for indices (NaN, 1e33, reads past x)."""
    from kt.codegen.bsrgrad import BsrGradConfig
    from kt.ir.problems import BsrGradProblem

    mask = np.ones((3, 4), dtype=bool)
    problem = BlockSparseProblem(13, 64, 48, (16, 16), mask_to_hex(mask), "float32")
    forward = load_source(
        family_for(problem).render(problem, TileConfig(16, 16, 16, 1, 4, 2, 1, 0)), interpret=True
    )
    gradient_problem = BsrGradProblem(13, 64, 48, (16, 16), mask_to_hex(mask), "float32")
    gradient = load_source(
        family_for(gradient_problem).render(gradient_problem, BsrGradConfig(16, 16, 16, 4, 2, 1)),
        interpret=True,
    )
    x = torch.randn(13, 64)
    assert forward.kernel(x, torch.zeros(0, 64).to_sparse_bsr((16, 16))).shape == (13, 0)
    torch.testing.assert_close(
        forward.kernel(torch.randn(13, 0), torch.zeros(32, 0).to_sparse_bsr((16, 16))), torch.zeros(13, 32)
    )
    assert gradient.kernel(torch.randn(13, 0), x, torch.zeros(0, 64).to_sparse_bsr((16, 16))).shape == (
        0,
        16,
        16,
    )
    assert gradient.kernel(
        torch.randn(13, 48), torch.randn(13, 0), torch.zeros(48, 0).to_sparse_bsr((16, 16))
    ).shape == (
        0,
        16,
        16,
    )
    torch.manual_seed(0)
    w = torch.randn(48, 64).to_sparse_bsr((16, 16))
    crow, col, values = w.crow_indices(), w.col_indices(), w.values()

    def strided(t):  # the same values at stride 2, other numbers between
        return torch.stack([t, torch.full_like(t, 1000)], 1).reshape(-1)[::2]

    loose = torch.sparse_bsr_tensor(strided(crow), strided(col), values, w.shape)
    assert not loose.col_indices().is_contiguous() and torch.equal(loose.col_indices(), col)
    torch.testing.assert_close(forward.kernel(x, loose), F.linear(x, w.to_dense()), rtol=1e-5, atol=1e-5)
    dy = torch.randn(13, 48)
    torch.testing.assert_close(gradient.kernel(dy, x, loose), gradient.kernel(dy, x, w), rtol=1e-5, atol=1e-5)


def test_kt_show_lists_the_launches_of_each_structure_choice():
    expected = {
        "blocksparse": ["fused=0: x @ W.T (non-zero blocks): (8192 x 410) @ (410 x 4096)"],
        "lowrank": [
            "fused=0: s0 = x @ f1: (8192 x 4096) @ (4096 x 64) ; y = s0 @ f2: (8192 x 64) @ (64 x 4096)",
            "fused=1: one kernel: t = x @ f1, kept on chip: (8192 x 4096) @ (4096 x 64)",
        ],
        "sum": [
            "fused=0: term 0: x @ W0.T (non-zero blocks)",
            "fused=1: term 1: u1 = x @ f1: (4096 x 1024) @ (1024 x 32) ; y = sum of terms (one accumulation)",
        ],
    }
    for example, lines in expected.items():
        shown = invoke("show", EXAMPLES / f"{example}.yaml")
        assert shown.exit_code == 0, shown.output
        for line in lines:
            assert line in shown.output, (example, shown.output)


def test_an_artifact_of_mask_and_prune_patterns_loads_where_the_files_are_gone(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    mask = np.zeros((6, 4), dtype=bool)
    mask[[0, 3, 5], [1, 2, 0]] = True
    np.save(specs / "mask.npy", mask)
    torch.save(torch.randn(96, 64), specs / "weight.pt")
    (specs / "op.yaml").write_text(
        "op: sum\nname: patterns\ndtype: float16\nterms:\n"
        "  - {op: blocksparse, shape: {batch: 30, in: 64, out: 96}, sparsity: {block: [16, 16], mask: mask.npy}}\n"
        "  - {op: blocksparse, shape: {batch: 30, in: 64, out: 96},"
        " sparsity: {block: [16, 32], prune: weight.pt, density: 0.3}}\n"
        "  - {op: lowrank, shape: {batch: 30, dims: [64, 3, 96]}}\n"
    )
    spec = load_spec(specs / "op.yaml")
    options = ["--budget", 1, "--workers", 1, "--backend", "interpret", "--db", tmp_path / "t.db"]
    result = invoke("tune", specs / "op.yaml", *options, "--out", tmp_path / "art")
    assert result.exit_code == 0, result.output
    (specs / "mask.npy").unlink()
    (specs / "weight.pt").unlink()
    kernel = kt.load(tmp_path / "art" / "patterns")
    assert kernel.spec == spec  # the stored layouts stand in for the files
    assert (hex_to_mask(kernel.spec.terms[0].sparsity.layout, (6, 4)) == mask).all()
    args = kt.random_args(kernel.spec, seed=3, device="cpu")
    ref = kt.reference(kernel.spec)(*(a.to(torch.float64) for a in args))
    assert relative_error(kernel(*args), ref) < tolerance_of(kernel.spec)


def test_no_legal_block_sparse_config_launches_more_programs_than_cudas_grid_x_axis_takes():
    """A block-sparse layer of 1x16 blocks, 2**20 rows and 32,768 outputs: 27 of 135 legal configs launched 2**31
    programs (a row tile times out // 1 block-rows times one column tile each), one more than CUDA's gridDim.x
    allows. The grid is worked out as the generated module's `_launch` makes it."""
    from kt.codegen.tilesum import MAX_GRID_X

    rows, out = 1_048_576, 32_768
    spec = parse_spec(
        {"op": "blocksparse", "dtype": "float16", "shape": {"batch": rows, "in": 16, "out": out},
         "sparsity": {"block": [1, 16], "density": 1.0}}
    )  # fmt: skip
    space = kt.space(spec)
    assert space.dropped[f"a launch grid over CUDA's {MAX_GRID_X} programs on its x axis"] == 27
    assert space.legal
    for config in space.legal:
        assert -(-rows // config.block_m) * out * -(-1 // config.block_n) <= MAX_GRID_X


def test_splits_are_bounded_by_the_fullest_block_rows_steps_not_the_blocks_mean(tmp_path):
    """Only block-row 0 of a 4x4 grid stored: its run is 4 steps at block_k 16, the blocks' mean depth one. Split
    4 was refused as "more splits than steps" on a pattern it evens out; it runs, and split 5 is refused."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[0] = True
    np.save(tmp_path / "row0.npy", mask)
    spec = parse_spec(
        {"op": "blocksparse", "dtype": "float32", "shape": {"batch": 5, "in": 64, "out": 64},
         "sparsity": {"block": [16, 16], "mask": "row0.npy"}},
        source=str(tmp_path / "op.yaml"),
    )  # fmt: skip
    space = kt.space(spec)
    family = family_for(space.problem)
    config = TileConfig(16, 16, 16, 1, 4, 2, 4, 0)
    assert family.illegal_reason(space.problem, config, space.device) is None
    assert (
        family.illegal_reason(space.problem, replace(config, split=5), space.device)
        == "more splits than steps"
    )
    kernel = kt.build(spec, {"block_m": 16, "block_n": 16, "block_k": 16, "split": 4})
    x, weight = kt.random_args(spec, seed=3)
    assert relative_error(kernel(x, weight), F.linear(x.double(), weight.to_dense().double())) < 1e-5


def test_a_bfloat16_result_is_rounded_to_nearest_as_the_gpu_rounds_it():
    """Triton's interpreter cut float32 to bfloat16 toward zero: twice the error of the exact result rounded
    (and of torch's bfloat16 F.linear), nearly every |y| at most the exact one's. kt's interpreter patch rounds
    to nearest even, as the GPU's cvt.rn does."""
    spec = parse_spec(
        {"op": "blocksparse", "dtype": "bfloat16", "shape": {"batch": 13, "in": 128, "out": 32},
         "sparsity": {"block": [16, 32], "density": 1}}
    )  # fmt: skip
    kernel = kt.build(spec, {"block_m": 16, "block_n": 16, "block_k": 16})
    torch.manual_seed(0)
    weight, x = torch.randn(32, 128).bfloat16(), torch.randn(13, 128).bfloat16()
    y = kernel(x, weight.to_sparse_bsr((16, 32))).double()
    exact = F.linear(x.double(), weight.double())
    assert (y == exact.bfloat16().double()).double().mean() > 0.95
    assert relative_error(y, exact) <= 1.05 * relative_error(exact.bfloat16().double(), exact)


def test_a_space_decodes_its_block_layout_once_not_once_per_config(monkeypatch):
    """Legality and the cost records asked each of a block-sparse space's 8,640 configs for the pattern's
    stored blocks and used columns, and each answer decoded the hex layout again: 11,017 decodes for a 64x64
    grid, and `kt space` on a 32768-square W in 16x16 blocks (a 2048x2048 grid) took 53 s, 50 of them decoding,
    on a 2-core machine; a 4096x4096 grid ran past 5 minutes. The counts are worked out once per layout."""
    import kt.sparsity

    decoded = []
    real = kt.sparsity.hex_to_mask

    def counting(text, grid):
        decoded.append(grid)
        return real(text, grid)

    spec = parse_spec(  # a seed no other test draws: its layout is decoded here first
        {"op": "blocksparse", "dtype": "float16", "shape": {"batch": 64, "in": 1024, "out": 1024},
         "sparsity": {"block": [16, 16], "density": 0.5, "seed": 1206}}
    )  # fmt: skip
    monkeypatch.setattr(kt.sparsity, "hex_to_mask", counting)
    space = kt.space(spec)
    assert len(space.legal) + sum(space.dropped.values()) == 8640
    assert len(decoded) <= 2, len(decoded)
    assert space.problem.nnz == int(real(space.problem.layout, (64, 64)).sum()) == 2048


def test_a_space_works_out_each_chains_program_once_not_once_per_config(monkeypatch):
    """The launches of a low-rank chain depend on its shape alone, and legality and the cost records asked for
    them for each config of the space, each time solving the matrix-chain order again: `kt predict` on a sum of
    eight terms (five chains, 11,616 legal configs) ran 209,290 chain orders, 18-20 s on a 2-core machine, and
    7.4-8.4 s once each chain's program is worked out once."""
    import kt.codegen.tilesum

    solved = []
    real = kt.codegen.tilesum.chain_order

    def counting(dims):
        solved.append(tuple(dims))
        return real(dims)

    spec = parse_spec(  # shapes no other test uses: their programs are worked out here first
        {"op": "sum", "dtype": "float16",
         "terms": [{"op": "lowrank", "shape": {"batch": 72, "dims": [1040, 24, 40, 1040]}},
                   {"op": "lowrank", "shape": {"batch": 72, "dims": [1040, 56, 1040]}}]}
    )  # fmt: skip
    monkeypatch.setattr(kt.codegen.tilesum, "chain_order", counting)
    space = kt.space(spec)
    assert len(space.legal) > 100
    assert len(solved) <= 4, len(solved)
    assert set(solved) <= {(72, 1040, 24, 40, 1040), (72, 1040, 56, 1040), (72, 1040, 24, 40), (72, 1040, 56)}
