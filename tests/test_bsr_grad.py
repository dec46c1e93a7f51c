"""The weight gradient of a block-sparse layer (bsr_grad) in Triton's CPU interpreter: against the float64
reference and torch autograd through the dense weight, over patterns (empty block-rows, one block, full), block
shapes (non-square, under 16), ragged rows, every dtype, split rows, strided views and out, argument errors, and
sampled legal configs of the family's space through check_kernel."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_poisoned

from kt.autotune.checking import check_kernel, relative_error
from kt.autotune.compile import target_compiler_available
from kt.codegen import load_source
from kt.codegen.bsrgrad import BsrGradConfig, BsrGradFamily, crop
from kt.costmodel import AnalyticModel
from kt.costmodel.staged import predict_records
from kt.device import H100
from kt.ir.problems import BsrGradProblem
from kt.sparsity import mask_to_hex, random_mask

DTYPES = ["float16", "bfloat16", "float32"]
FAMILY = BsrGradFamily("bsr_grad")

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state:UserWarning")

_MODULES = {}


def cfg(block_m=16, block_n=16, block_k=16, split=1):
    return BsrGradConfig(block_m, block_n, block_k, num_warps=4, num_stages=2, split=split)


def module_for(problem, config):
    """The generated module of (problem, config), imported for the interpreter (cached per source)."""
    source = FAMILY.render(problem, config)
    if source not in _MODULES:
        _MODULES[source] = load_source(source, interpret=True)
    return _MODULES[source]


def mask_of(grid, kind, seed=0):
    """random (about 40%, block-row 1 empty), single, full or one_row (every block-row but the last empty)."""
    rows, cols = grid
    mask = np.zeros(grid, dtype=bool)
    if kind == "random":
        mask = np.random.default_rng(seed).random(grid) < 0.4
        mask[0, seed % cols] = True
        if rows > 1:
            mask[1] = False
    elif kind == "single":
        mask[rows // 2, cols - 1] = True
    elif kind == "full":
        mask[:] = True
    elif kind == "one_row":
        mask[rows - 1] = np.arange(cols) % 2 == 0
    return mask


def grad_problem(rows, out, inp, block, kind, dtype="float32", seed=0):
    mask = mask_of((out // block[0], inp // block[1]), kind, seed)
    return BsrGradProblem(rows, inp, out, tuple(block), mask_to_hex(mask), dtype)


def autograd_blocks(dy, x, w):
    """dL/dW by torch autograd through the dense weight (float64), the stored blocks gathered in w's order."""
    dense = w.to_dense().double().requires_grad_()
    F.linear(x.double(), dense).backward(dy.double())
    bo, bi = w.values().shape[1:]
    blocks = dense.grad.reshape(w.shape[0] // bo, bo, w.shape[1] // bi, bi).transpose(1, 2)
    rows = torch.repeat_interleave(torch.arange(len(w.crow_indices()) - 1), w.crow_indices().diff())
    return blocks[rows, w.col_indices()]


CASES = [
    # rows, out, in, block, pattern: rows never a multiple of a tile; blocks square, tall, wide, tiny, odd
    (37, 96, 64, (32, 16), "random"),
    (21, 64, 96, (16, 48), "random"),
    (37, 40, 32, (8, 8), "random"),
    (19, 24, 96, (4, 24), "random"),
    (37, 64, 64, (16, 16), "single"),
    (37, 64, 48, (16, 16), "full"),
    (33, 96, 64, (32, 16), "one_row"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}x{c[2]}-{c[3][0]}x{c[3][1]}-{c[4]}")
def test_grad_matches_the_float64_reference_and_torch_autograd(case, dtype):
    rows, out, inp, block, kind = case
    problem = grad_problem(rows, out, inp, block, kind, dtype, seed=rows)
    dy, x, w = problem.random_args(seed=2)
    grad = run_poisoned(module_for(problem, cfg()), problem, (dy, x, w))
    assert grad.shape == (problem.nnz, *block) and grad.dtype == getattr(torch, dtype)
    tol = problem.tolerance()
    assert relative_error(grad, problem.reference(dy, x, w)) < tol
    assert relative_error(grad, autograd_blocks(dy, x, w)) < tol
    # the values make dL/dW as a BSR tensor of W's pattern
    dw = torch.sparse_bsr_tensor(w.crow_indices(), w.col_indices(), grad, w.shape, check_invariants=True)
    stored = torch.from_numpy(np.kron(problem.mask(), np.ones(block)))
    expected = (dy.double().T @ x.double()) * stored
    assert relative_error(dw.to_dense(), expected) < tol


def test_the_reference_is_autograd_restricted_to_the_stored_blocks():
    problem = grad_problem(29, 96, 64, (32, 16), "random", "float32", seed=3)
    dy, x, w = problem.random_args(seed=4)
    assert torch.allclose(problem.reference(dy, x, w), autograd_blocks(dy, x, w), rtol=1e-12, atol=1e-12)


CONFIGS = [
    cfg(block_m=32, block_n=16, block_k=32),  # a tile the whole block height
    cfg(block_m=16, block_n=32, block_k=16, split=2),  # a tile wider than the block: masked columns
    cfg(block_k=16, split=4),
    cfg(block_m=32, block_n=16, block_k=64, split=3),  # a split count off the axes: still correct
]


@pytest.mark.parametrize("rows", [45, 64])  # ragged rows, and whole steps (the unmasked EVEN path for some)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.key())
def test_configs_and_splits_compute_the_same_gradient(config, rows):
    problem = grad_problem(rows, 96, 64, (32, 16), "random", "float16", seed=5)
    dy, x, w = problem.random_args(seed=6)
    grad = run_poisoned(module_for(problem, config), problem, (dy, x, w))
    assert relative_error(grad, problem.reference(dy, x, w)) < problem.tolerance()


def test_a_block_of_several_tiles_each_way_writes_each_tile_once():
    """A 32x32 block in 16x16 tiles is two tiles down and two across: a tile's row and column must both come
    from its index (every other case has one tile in a direction, where a wrong map still covers the block)."""
    problem = grad_problem(45, 96, 64, (32, 32), "random", "float32", seed=8)
    dy, x, w = problem.random_args(seed=9)
    grad = run_poisoned(module_for(problem, cfg()), problem, (dy, x, w))
    assert relative_error(grad, problem.reference(dy, x, w)) < problem.tolerance()


def test_more_splits_than_row_steps_leave_empty_runs_that_add_zero():
    problem = grad_problem(20, 64, 32, (16, 16), "random", "float32", seed=7)
    dy, x, w = problem.random_args(seed=8)
    grad = run_poisoned(module_for(problem, cfg(block_k=16, split=8)), problem, (dy, x, w))
    assert relative_error(grad, problem.reference(dy, x, w)) < problem.tolerance()


def test_zero_rows_give_zeros_and_no_blocks_give_an_empty_gradient():
    problem = grad_problem(0, 64, 32, (16, 16), "random", "float16", seed=9)
    module = module_for(problem, cfg(split=2))
    dy, x, w = problem.random_args(seed=10)
    assert dy.shape == (0, 64)
    out = run_poisoned(module, problem, (dy, x, w))
    assert (out == 0).all() and out.shape[0] == problem.nnz > 0
    assert (module.kernel(dy, x, w) == 0).all()
    empty = torch.sparse_bsr_tensor(
        torch.zeros(5, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros((0, 16, 16), dtype=torch.float16),
        size=(64, 32),
        check_invariants=True,
    )
    dy, x = torch.randn(7, 64).half(), torch.randn(7, 32).half()
    assert module.kernel(dy, x, empty).shape == (0, 16, 16)


def test_strided_views_leading_dims_and_any_out():
    problem = grad_problem(20, 96, 64, (32, 16), "random", "float32", seed=11)
    module = module_for(problem, cfg(split=2))
    dy, x, w = problem.random_args(seed=12)
    ref = problem.reference(dy, x, w)
    tol = problem.tolerance()
    nnz, bo, bi = ref.shape

    def check(grad, expected=ref):
        assert grad.shape == expected.shape and relative_error(grad, expected) < tol

    wide = torch.full((20, 64 + 11), float("nan"))
    wide[:, 3:67] = x
    check(module.kernel(dy.t().contiguous().t(), wide[:, 3:67], w))  # column-major dy, a column slice of x
    check(module.kernel(dy.view(4, 5, 96), x.view(4, 5, 64), w))  # 3-D: the sum runs over every leading dim
    permuted_dy, permuted_x = dy.view(5, 4, 96).transpose(0, 1), x.view(5, 4, 64).transpose(0, 1)
    check(module.kernel(permuted_dy, permuted_x, w))  # leading dims that flatten only with a copy
    check(module.kernel(dy[::2], x[::2], w), problem.reference(dy[::2], x[::2], w))  # every other row
    expanded = dy[:1].expand(20, 96)  # every row the same, stride 0
    check(module.kernel(expanded, x, w), problem.reference(expanded, x, w))
    check(module.kernel(dy[3], x[3], w), problem.reference(dy[3:4], x[3:4], w))  # 1-D: one row
    big = torch.full((nnz, bi, 2 * bo + 3), float("nan"))
    out = big[:, :, 3::2].transpose(1, 2)  # a strided, transposed slice of a bigger tensor
    assert module.kernel(dy, x, w, out=out) is out
    check(out)
    assert torch.isnan(big[:, :, :3]).all() and torch.isnan(big[:, :, 4::2]).all()  # nothing else written
    for split in (1, 2):  # out overlaps x: computed into a temporary first (SPLIT 1 would write into x)
        storage = torch.empty(20 * 64 + nnz * bo * bi)
        storage[: 20 * 64] = x.flatten()
        alias_x = storage[: 20 * 64].view(20, 64)
        alias_out = storage.as_strided((nnz, bo, bi), (bo * bi, bi, 1), 16)
        assert module_for(problem, cfg(split=split)).kernel(dy, alias_x, w, out=alias_out) is alias_out
        check(alias_out)


def test_any_weight_in_the_block_size_is_read_only_for_its_pattern():
    problem = grad_problem(23, 96, 64, (32, 16), "random", "float16", seed=13)
    module = module_for(problem, cfg())
    dy, x, w = problem.random_args(seed=14)
    ref = problem.reference(dy, x, w)
    crow, col = w.crow_indices(), w.col_indices()
    int32 = torch.sparse_bsr_tensor(crow.int(), col.int(), w.values(), size=w.shape, check_invariants=True)
    float32 = torch.sparse_bsr_tensor(crow, col, w.values().float(), size=w.shape, check_invariants=True)
    for weight in (int32, float32):  # int32 indices; fp32 master weights for a half-precision batch
        assert relative_error(module.kernel(dy, x, weight), ref) < problem.tolerance()
    other = grad_problem(9, 160, 32, (32, 16), "one_row", "float16", seed=15)  # another shape and pattern
    dy, x, w = other.random_args(seed=16)
    assert relative_error(module.kernel(dy, x, w), other.reference(dy, x, w)) < other.tolerance()


def test_64_bit_offsets_compute_the_same_gradient():
    problem = grad_problem(21, 96, 64, (32, 16), "random", "bfloat16", seed=17)
    module = module_for(problem, cfg(split=2))
    dy, x, w = problem.random_args(seed=18)
    module.INDEX_64_SPAN = 1  # force the int64 path, which real launches take past 2**31 elements
    try:
        grad = run_poisoned(module, problem, (dy, x, w))
    finally:
        module.INDEX_64_SPAN = 2**31
    assert relative_error(grad, problem.reference(dy, x, w)) < problem.tolerance()


def test_bad_arguments_are_refused_in_one_line():
    problem = grad_problem(8, 64, 32, (16, 16), "random", "float16", seed=19)
    module = module_for(problem, cfg())
    dy, x, w = problem.random_args(seed=20)
    nnz = problem.nnz
    cases = [
        ((dy.numpy(), x, w), {}, TypeError, "dy must be a torch.Tensor"),
        ((dy.float(), x, w), {}, TypeError, "dy.dtype is torch.float32"),
        ((dy, x.float(), w), {}, TypeError, "x.dtype is torch.float32"),
        (
            (dy, x.to(torch.complex64), w),
            {},
            TypeError,
            "takes no complex values (x.to(torch.float16) would drop",
        ),
        ((dy, x, w.to_dense()), {}, TypeError, "w must be a sparse BSR tensor"),
        ((dy, x, w.to_dense().to_sparse_bsr((8, 8))), {}, ValueError, "w must be 2-D in blocks (16, 16)"),
        ((dy[:, :48], x, w), {}, ValueError, "dy must have 64 features"),
        ((dy, x[:, :16], w), {}, ValueError, "x must have 32 features"),
        ((dy, x[:7], w), {}, ValueError, "same leading dims"),
        ((dy, x.to("meta"), w), {}, ValueError, "x is on meta"),
        ((dy, x, w), {"out": torch.empty(nnz + 1, 16, 16).half()}, ValueError, "out must be a dense"),
        ((dy, x, w), {"out": torch.empty(nnz, 16, 16)}, ValueError, "out must be a dense"),
        (
            (dy, x, w),
            {"out": torch.empty(1, 16, 16).half().expand(nnz, 16, 16)},
            ValueError,
            "overlaps itself",
        ),
        ((dy, x, w), {"out": [0]}, TypeError, "out must be a torch.Tensor"),
        (  # parts that disagree (torch builds them unless asked to check): dw was read past its end
            (dy, x, torch.sparse_bsr_tensor(w.crow_indices(), w.col_indices(), w.values()[1:], w.shape)),
            {},
            ValueError,
            f"w's parts disagree: {nnz - 1} blocks in values, {nnz} col_indices",
        ),
    ]
    for args, kwargs, error, words in cases:
        with pytest.raises(error) as info:
            module.kernel(*args, **kwargs)
        message = str(info.value)
        assert words in message and "\n" not in message, message


# -- the problem, the family's space, records and check problems ------------------------------------------------


def big_problem(dtype="float16"):
    mask = random_mask((64, 64), 0.1, seed=0)
    return BsrGradProblem(8192, 4096, 4096, (64, 64), mask_to_hex(mask), dtype)


def test_problem_round_trips_and_describes_itself():
    problem = big_problem()
    assert BsrGradProblem.from_dict(problem.to_dict()) == problem
    assert problem.nnz == 410 and problem.out_type().shape == (410, 64, 64)
    assert problem.flops == 2 * 8192 * 410 * 64 * 64
    assert str(problem) == "bsr_grad[rows=8192 4096->4096 block=64x64 nnz=410/4096 f16]"
    dy, x, w = problem.meta_args()
    assert dy.shape == (8192, 4096) and x.shape == (8192, 4096)
    assert w.layout == torch.sparse_bsr and w.values().shape == (410, 64, 64) and w.device.type == "meta"
    assert problem.structures() == ({},) and problem.with_rows(5).rows == 5
    record = problem.to_record()
    assert record["family"] == "bsr_grad" and record["nnz"] == 410 and record["rows"] == 8192


def test_the_space_of_a_large_problem_is_legal_and_ranked_by_the_cost_model():
    problem = big_problem()
    space = FAMILY.space(problem, H100)
    assert len(space) > 0 and space.total == 5 * 5 * 4 * 3 * 4 * 5
    assert all(c.block_m <= 64 and c.block_n <= 64 for c in space.legal)
    assert "tile larger than the padded problem" in space.dropped
    records = FAMILY.records(problem, space.legal)
    stage = records[0]["stages"][0]
    assert (stage["m"], stage["n"], stage["k"], stage["batch"], stage["a_col"]) == (64, 64, 8192, 410, 1)
    predicted = predict_records(AnalyticModel(H100), records).runtime_s
    assert np.isfinite(predicted).all() and (predicted > 0).all()
    smem, acc = FAMILY.resources(problem, space.legal[0], H100)
    assert 0 < smem <= H100.smem_per_block and 0 < acc <= H100.acc_regs_limit
    assert FAMILY.launch_texts(problem, {}) == [
        "grad[n] = dy[:, block-row].T @ x[:, block-col], 410 x (64 x 8192) @ (8192 x 64)"
    ]
    assert BsrGradConfig.from_dict(space.legal[0].to_dict()) == space.legal[0]
    with pytest.raises(ValueError, match="config.split: 3 is not allowed"):
        BsrGradConfig.from_dict({**space.legal[0].to_dict(), "split": 3})


def test_check_problems_crop_the_pattern_keep_an_empty_block_row_and_cut_the_rows():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2, [1, 3, 5, 7, 9]] = True
    mask[6, 0] = True
    problem = BsrGradProblem(500, 10 * 16, 8 * 32, (32, 16), mask_to_hex(mask), "float16")
    small = crop(problem)
    assert small.block == (32, 16) and small.grid[0] == 3 and small.grid[1] <= 4
    assert (~small.mask().any(axis=1)).any() and small.nnz >= 1
    (checked,) = FAMILY.check_problems(problem, cfg(block_k=32))
    assert checked.rows == 32 + 16 + 1 and checked.layout == small.layout
    ragged, whole = FAMILY.check_problems(problem.with_rows(512), cfg(block_k=32, split=2))
    assert ragged.rows == 2 * 32 + 32 + 16 + 1 and whole.rows == 4 * 32
    for small in (checked, ragged, whole):
        config = cfg(block_k=32, split=2 if small is not checked else 1)
        assert check_kernel(module_for(small, config), small, seed=0, device="cpu").ok
    # a split whose last run is empty (each takes cdiv(steps, SPLIT) steps; 8193 rows in steps of 32 over 4
    # splits leave none, 5 steps over 4 leave one): the docstring claimed one, no check problem had it
    config = cfg(block_k=32, split=4)
    ragged, empty, _ = FAMILY.check_problems(problem.with_rows(8192), config)
    steps = -(-empty.rows // 32)
    assert ragged.rows == 3 * 2 * 32 + 32 + 16 + 1 and (steps, empty.rows % 32) == (5, 17)
    assert 3 * -(-steps // 4) >= steps  # the first three runs take every step
    assert check_kernel(module_for(empty, config), empty, seed=0, device="cpu").ok


SAMPLED = {
    "f16-random": BsrGradProblem(300, 128, 96, (32, 16), mask_to_hex(random_mask((3, 8), 0.3, 1)), "float16"),
    "bf16-wide": BsrGradProblem(256, 96, 64, (16, 48), mask_to_hex(random_mask((4, 2), 0.6, 2)), "bfloat16"),
    "f32-tiny": BsrGradProblem(77, 32, 40, (8, 8), mask_to_hex(random_mask((5, 4), 0.5, 3)), "float32"),
}


@pytest.mark.parametrize("name", list(SAMPLED))
def test_check_kernel_passes_for_sampled_legal_configs(name):
    problem = SAMPLED[name]
    space = FAMILY.space(problem, H100)
    rng = random.Random(0)
    for config in rng.sample(space.legal, 5):
        module = load_source(FAMILY.render(problem, config), interpret=True)
        for small in FAMILY.check_problems(problem, config):
            result = check_kernel(module, small, seed=1, device="cpu")
            assert result.ok, (str(small), config.key(), result.message)


def test_kernels_compile_for_sm90_masked_unmasked_and_with_64_bit_offsets():
    from kt.autotune.compile import compile_for_target
    from kt.codegen.bsrgrad import resources
    from kt.codegen.emit import import_kernel_file, write_source

    if not target_compiler_available():
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    cases = [
        (8192, "float16", cfg(64, 64, 64, split=4)),  # whole steps and tiles: the unmasked path
        (8191, "bfloat16", cfg(64, 32, 32)),  # ragged rows: masked loads
        (1 << 20, "float16", cfg(64, 64, 64, split=2)),  # dy spans 2**32 elements: 64-bit offsets
        (8192, "float32", cfg(32, 32, 32)),
    ]
    # built in this process, as kt's compile check builds (a process of its own cost CI an import of kt and torch)
    family = BsrGradFamily("bsr_grad")
    layout = mask_to_hex(random_mask((64, 64), 0.1, 0))
    builds = []
    for rows, dtype, config in cases:
        problem = BsrGradProblem(rows, 4096, 4096, (64, 64), layout, dtype)
        module = import_kernel_file(
            write_source(family.render(problem, config)), interpret=False, private=True
        )
        (build,) = compile_for_target(module, problem.meta_args(), 90)
        builds.append((build.shared_bytes, resources(problem, config, H100)[0], build.uses_wgmma))
    for (used, estimated, _), case in zip(builds, cases):
        assert 0 < used <= estimated, case
    assert [wgmma for *_, wgmma in builds[:3]] == [True, True, True], "Hopper's warpgroup MMA for half types"
