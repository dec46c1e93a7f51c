"""Transposed Monarch and butterfly (the backward pass's dx = M^T dy) as first-class kt ops: op.yaml, the problems,
the lowering of the transposed maps, the block-GEMM kernels in the interpreter (against x @ M with M the forward
op's float64 dense matrix and against torch.autograd's vjp of the forward reference), the space, `kt tune`."""

import pytest
import torch
from conftest import block_config, kernel_module

import kt
import kt.nn
from kt.autotune.checking import check_kernel, relative_error
from kt.codegen import FAMILIES, BlockGemmConfig
from kt.device import get_profile
from kt.errors import DatabaseError, SpecError
from kt.ir import BlockDiag, LinearMap, Perm, butterfly_map, monarch_map, op_from_spec
from kt.ir.lowering import LoweringError, apply_stages, lower
from kt.ir.ops import ButterflyOp, MonarchOp
from kt.ir.problems import ButterflyProblem, MonarchProblem, problem_from_dict
from kt.ir.structured import butterfly_reference, monarch_reference
from kt.spec import parse_spec

H100 = get_profile("h100")
RECT = {"batch": 9, "w1": [4, 6, 3], "w2": [8, 5, 3]}  # p != q, r != s, in (12) != out (40)


config = block_config


def forward_dense(problem, weights):
    """The forward op's (out, in) matrix in float64, from the IR's factors."""
    if isinstance(problem, MonarchProblem):
        w1, w2 = (w.double() for w in weights)
        return monarch_map(*problem.w1, *problem.w2).to_dense({"w1": w1, "w2": w2})
    return butterfly_map(problem.n).to_dense({"twiddles": weights[0].double()})


def forward_vjp(problem, x, weights):
    """dy @ M through torch.autograd: the vector-Jacobian product of the forward reference at dy = x."""
    weights = tuple(w.double() for w in weights)
    if isinstance(problem, MonarchProblem):
        k, _, p = problem.w1
        primal = torch.zeros(x.shape[0], k * p, dtype=torch.float64)
        _, vjp = torch.autograd.functional.vjp(lambda v: monarch_reference(v, *weights), primal, x.double())
    else:
        primal = torch.zeros(x.shape[0], problem.n, dtype=torch.float64)
        _, vjp = torch.autograd.functional.vjp(lambda v: butterfly_reference(v, *weights), primal, x.double())
    return vjp


def assert_matches_forward_transpose(problem, y, args):
    x, weights = args[0], args[1:]
    limit = problem.tolerance()
    assert relative_error(y, x.double() @ forward_dense(problem, weights)) < limit
    assert relative_error(y, forward_vjp(problem, x, weights)) < limit


# -- op.yaml --------------------------------------------------------------------------------------------------


def test_transposed_monarch_spec_swaps_features_and_round_trips():
    spec = parse_spec({"op": "monarch", "transposed": True, "shape": RECT})
    forward = parse_spec({"op": "monarch", "shape": RECT})
    assert spec.transposed and not forward.transposed
    assert (spec.in_features, spec.out_features) == (40, 12)
    assert (forward.in_features, forward.out_features) == (12, 40)
    assert spec.name == forward.name + "_T" and spec.name.endswith("_T")
    assert spec.summary().startswith("monarch transposed 9 rows, 40 -> 12")
    data = spec.to_dict()
    assert data["transposed"] is True and "transposed" not in forward.to_dict()
    assert parse_spec(data) == spec
    assert spec.signature() != forward.signature()
    assert spec.replace(shape={**RECT, "batch": 3}).transposed
    assert parse_spec({"op": "monarch", "transposed": False, "shape": RECT}) == forward


def test_transposed_butterfly_spec():
    spec = parse_spec({"op": "butterfly", "transposed": True, "shape": {"batch": 4, "n": 64}})
    assert (spec.in_features, spec.out_features) == (64, 64)
    assert spec.name == "butterfly_64_b4_float16_T"
    assert spec.summary() == "butterfly transposed 4 rows x n=64 float16"
    assert parse_spec(spec.to_dict()) == spec
    x, twiddles = kt.random_args(spec, seed=0, device="cpu")
    assert x.shape == (4, 64) and twiddles.shape == (6, 32, 2, 2)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"op": "dense", "shape": {"m": 8, "n": 8, "k": 8}, "transposed": True}, "ops only (op is dense)"),
        ({"op": "fft", "shape": {"batch": 8, "n": 64}, "transposed": True}, "ops only (op is fft)"),
        (
            {"op": "lowrank", "shape": {"batch": 8, "dims": [16, 4, 16]}, "transposed": False},
            "ops only (op is lowrank)",
        ),
        ({"op": "monarch", "shape": RECT, "transposed": "yes"}, "must be true or false, got 'yes' (str)"),
        ({"op": "monarch", "shape": RECT, "transposed": 1}, "must be true or false"),
        ({"op": "butterfly", "shape": {"batch": 8, "n": 64}, "transposed": None}, "must be true or false"),
    ],
)
def test_transposed_spec_errors_name_the_field(data, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.field == "transposed" and words in info.value.reason
    assert "\n" not in str(info.value)


# -- problems -------------------------------------------------------------------------------------------------


def test_problems_carry_transposed_and_old_rows_still_load():
    forward = MonarchProblem(8, (4, 6, 3), (8, 5, 3))
    transposed = MonarchProblem(8, (4, 6, 3), (8, 5, 3), transposed=True)
    assert "transposed" not in forward.to_dict() and '"transposed"' not in forward.key()  # keys unchanged
    assert transposed.to_dict()["transposed"] is True and transposed.key() != forward.key()
    old_row = {"rows": 8, "w1": [4, 6, 3], "w2": [8, 5, 3], "dtype": "float16", "precision": "ieee"}
    assert problem_from_dict("monarch", old_row) == forward
    assert problem_from_dict("monarch", transposed.to_dict()) == transposed
    assert problem_from_dict("butterfly", {"rows": 3, "n": 16}) == ButterflyProblem(3, 16)
    bt = ButterflyProblem(3, 16, transposed=True)
    assert problem_from_dict("butterfly", bt.to_dict()) == bt
    assert [t.shape for t in transposed.arg_types()] == [(8, 40), (4, 6, 3), (8, 5, 3)]
    assert transposed.out_type().shape == (8, 12) and transposed.with_rows(3).transposed
    assert transposed.structures() == ({"fused": 0},)  # the fused kernel runs the forward map only
    assert str(transposed).startswith("monarchᵀ[") and str(bt).startswith("butterflyᵀ[")
    assert transposed.linear_map() == forward.linear_map().transpose()
    assert bt.linear_map({"levels": 2}) == ButterflyProblem(3, 16).linear_map({"levels": 2}).transpose()


def test_database_rows_refuse_a_transposed_that_is_not_a_bool():
    from kt.autotune.dataset import _check_problem

    good = MonarchProblem(8, (4, 6, 3), (8, 5, 3), transposed=True).to_dict()
    _check_problem("monarch", {**good, "w1": [4, 6, 3], "w2": [8, 5, 3]}, "row 1")
    with pytest.raises(DatabaseError, match="transposed is 'yes'.*true, false"):
        _check_problem("monarch", {**good, "w1": [4, 6, 3], "w2": [8, 5, 3], "transposed": "yes"}, "row 1")
    with pytest.raises(DatabaseError, match="unknown key 'transposed'"):
        _check_problem("fft", {"rows": 3, "n": 16, "transposed": True}, "row 2")


@pytest.mark.parametrize(
    "problem",
    [
        MonarchProblem(7, (3, 10, 7), (5, 4, 6), "float32", transposed=True),
        ButterflyProblem(7, 64, "float32", transposed=True),
    ],
    ids=str,
)
def test_float64_references_agree(problem):
    args = tuple(a.double() for a in problem.random_args(0))
    expected = args[0] @ forward_dense(problem, args[1:])
    torch.testing.assert_close(problem.reference(*args), expected)
    torch.testing.assert_close(forward_vjp(problem, args[0], args[1:]), expected)
    op = MonarchOp if isinstance(problem, MonarchProblem) else ButterflyOp
    # the plain-torch form kt.reference gives
    torch.testing.assert_close(op.transposed_reference(*args), expected)
    lead = op.transposed_reference(args[0].view(7, 1, -1), *args[1:])
    torch.testing.assert_close(lead.view(7, -1), expected)


# -- lowering -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims", [(4, 6, 3, 8, 5, 3), (2, 8, 5, 4, 7, 4), (4, 4, 4, 4, 4, 4), (3, 10, 7, 5, 4, 6)]
)
def test_transposed_monarch_lowers_to_two_stages_on_the_same_weights(dims):
    forward = monarch_map(*dims)
    stages = lower(forward.transpose())
    assert [s.factor.weight for s in stages] == ["w2", "w1"]
    assert all(s.factor.storage == "in_out" and s.diag is None for s in stages)
    k, q, p, l, s, r = dims  # noqa: E741
    w = {"w1": torch.randn(k, q, p, dtype=torch.float64), "w2": torch.randn(l, s, r, dtype=torch.float64)}
    x = torch.randn(5, l * s, dtype=torch.float64)
    torch.testing.assert_close(apply_stages(stages, x, w), x @ forward.to_dense(w))
    if q % l:  # the middle Perm is no strided load map here: it went into the first stage's stores
        assert stages[0].out_map.elem != 1


def test_a_permutation_strided_on_neither_side_is_refused():
    with pytest.raises(LoweringError, match="neither on the next one's loads"):
        lower(LinearMap((BlockDiag(1, 6, 1), Perm(2, 3), BlockDiag(2, 2, 3))))


# -- kernels in the interpreter -------------------------------------------------------------------------------

MONARCHS = [
    MonarchProblem(37, (4, 6, 3), (8, 5, 3), "float32", transposed=True),
    MonarchProblem(19, (2, 8, 5), (4, 7, 4), "float16", transposed=True),
    MonarchProblem(21, (4, 16, 8), (8, 4, 8), "bfloat16", transposed=True),
]


@pytest.mark.parametrize("problem", MONARCHS, ids=str)
def test_transposed_monarch_kernel_is_x_at_the_forward_matrix(problem):
    c = config(problem)
    module = kernel_module(problem, c)
    assert module.TRANSPOSED is True
    assert problem.in_features == module.IN_FEATURES
    result = check_kernel(module, problem, seed=3, device="cpu")  # poisoned out, float64 reference
    assert result.ok, result.message
    args = problem.random_args(4)
    y = module.kernel(*args)
    assert y.shape == (problem.rows, problem.out_features) and y.dtype == args[0].dtype
    assert_matches_forward_transpose(problem, y, args)
    spec = {
        "op": "monarch",
        "transposed": True,
        "dtype": problem.dtype,
        "shape": {"batch": problem.rows, "w1": list(problem.w1), "w2": list(problem.w2)},
    }
    reference = kt.reference(spec)
    assert relative_error(y, reference(*(a.double() for a in args))) < problem.tolerance()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("levels", [1, 2, 3, 5])
def test_transposed_butterfly_kernel_for_each_grouping(dtype, levels):
    problem = ButterflyProblem(23, 32, dtype, transposed=True)
    module = kernel_module(problem, config(problem, levels=levels))
    result = check_kernel(module, problem, seed=5, device="cpu")
    assert result.ok, result.message
    args = problem.random_args(6)
    assert_matches_forward_transpose(problem, module.kernel(*args), args)


def test_forward_and_transposed_modules_share_the_block_cache_safely():
    forward = ButterflyProblem(9, 16, "float32")
    transposed = ButterflyProblem(9, 16, "float32", transposed=True)
    x, twiddles = transposed.random_args(1)
    y = kernel_module(transposed, config(transposed, levels=4)).kernel(x, twiddles)
    module = kernel_module(forward, config(forward, levels=4))
    z = module.kernel(x, twiddles)  # the same twiddle tensor, now forward: blocks built again, not reused
    assert relative_error(z, forward.reference(x, twiddles)) < forward.tolerance()
    assert relative_error(y, transposed.reference(x, twiddles)) < transposed.tolerance()
    # a module's cache keys on the flag too
    blocks = module.butterfly_blocks(twiddles, 0, 4, False)
    torch.testing.assert_close(module.butterfly_blocks(twiddles, 0, 4, True), blocks.transpose(1, 2))


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_a_fused_optimizers_step_rebuilds_the_cached_butterfly_blocks(optimizer):
    """torch's fused optimizers write the twiddles in place without advancing their version counter: blocks
    cached by it alone were stale after the step (SGD: relative error 0.84 against the stepped twiddles)."""
    problem = ButterflyProblem(9, 16, "float32")
    module = kernel_module(problem, config(problem, levels=4))
    x, twiddles = problem.random_args(1)
    twiddles = torch.nn.Parameter(twiddles)
    step = getattr(torch.optim, optimizer)([twiddles], lr=0.05, fused=True)
    before = module.kernel(x, twiddles)
    blocks = module.butterfly_blocks(twiddles, 0, 4)
    assert module.butterfly_blocks(twiddles, 0, 4) is blocks  # cached while nothing changes
    twiddles.grad = torch.randn_like(twiddles)
    version = twiddles._version
    step.step()
    assert twiddles._version == version, (
        "torch's fused step advances the version counter now: the test is moot"
    )
    assert module.butterfly_blocks(twiddles, 0, 4) is not blocks
    after = module.kernel(x, twiddles)
    assert relative_error(after, problem.reference(x, twiddles.detach())) < problem.tolerance()
    assert relative_error(after, before) > 1e-3


def test_transposed_monarch_takes_strided_views_leading_dims_and_out():
    problem = MonarchProblem(10, (4, 6, 3), (8, 5, 3), "float32", transposed=True)
    module = kernel_module(problem, config(problem, group=1))
    x, w1, w2 = problem.random_args(1)
    ref = problem.reference(x, w1, w2)
    wide = torch.stack([x, torch.full_like(x, float("nan"))], dim=-1)[..., 0]
    assert relative_error(module.kernel(wide, w1, w2), ref) < 1e-5
    w2t = w2.transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous view of the same weight
    y = module.kernel(x.view(2, 5, 40), w1, w2t)
    assert y.shape == (2, 5, 12) and relative_error(y.view(10, 12), ref) < 1e-5
    out = torch.full((10, 24), float("nan"))[:, ::2]
    assert module.kernel(x, w1, w2, out=out) is out and relative_error(out, ref) < 1e-5
    with pytest.raises(ValueError, match="40 features"):
        module.kernel(torch.randn(10, 12), w1, w2)


# -- the family -----------------------------------------------------------------------------------------------


def test_space_records_and_render_for_transposed_problems():
    family = FAMILIES["monarch"]
    problem = MonarchProblem(4096, (16, 16, 16), (16, 16, 16), "float16", transposed=True)
    legal = family.space(problem, H100).legal
    assert legal and not any(c.fused for c in legal)
    records = family.records(problem, legal[:3])
    assert all(len(r["stages"]) == 2 for r in records)
    assert records[0]["in_features"] == 256 and "fused_bytes" not in records[0]
    with pytest.raises(ValueError, match="structure fused=1 is not offered"):
        family.render(problem, BlockGemmConfig(16, 16, 16, 1, 4, 2, fused=1))
    texts = family.launch_texts(problem, {"fused": 0})
    assert texts[0].startswith("stage[BlockDiag[w2ᵀ]")
    butterfly = ButterflyProblem(1024, 256, "float16", transposed=True)
    space = FAMILIES["butterfly"].space(butterfly, H100)
    assert {c.levels for c in space.legal} == set(range(1, 9))
    assert FAMILIES["butterfly"].records(butterfly, space.legal[:2])[0]["stages"]


def test_kt_build_and_reference_for_a_transposed_spec():
    spec = {"op": "butterfly", "transposed": True, "dtype": "float32", "shape": {"batch": 6, "n": 16}}
    kernel = kt.build(spec)
    x, twiddles = kt.random_args(spec, seed=2, device="cpu")
    y = kernel(x, twiddles)
    assert relative_error(y, kt.reference(spec)(x, twiddles)) < 1e-5
    assert op_from_spec(kt.as_spec(spec)).problem.transposed


# -- kt tune ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "op: monarch\ntransposed: true\ndtype: float32\nshape: {batch: 20, w1: [4, 6, 3], w2: [8, 5, 3]}\n",
        "op: butterfly\ntransposed: true\nshape: {batch: 20, n: 32}\n",
    ],
    ids=["monarch", "butterfly"],
)
def test_kt_tune_a_transposed_op_on_cpu(text, tmp_path):
    from click.testing import CliRunner

    from kt.cli import main

    path = tmp_path / "op.yaml"
    path.write_text(text)
    args = ["tune", str(path), "--budget", "1", "--backend", "interpret", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "art")])
    assert result.exit_code == 0, result.output
    assert "transposed" in result.output and "measured: false" in result.output
    (artifact,) = (tmp_path / "art").iterdir()
    assert artifact.name.endswith("_T")
    kernel = kt.load(artifact)
    assert kernel.spec.transposed
    spec = kernel.spec.replace(shape={**kernel.spec.to_dict()["shape"], "batch": 5})
    args = kt.random_args(spec, seed=1, device="cpu")
    y = kernel(*args)
    problem = op_from_spec(spec).problem
    assert_matches_forward_transpose(problem, y, args)


# -- autograd of the transposed ops (the gradients of a backward's dx, and a gradient penalty) -----------------


TRANSPOSED_GRAD_SPECS = [
    {"op": "monarch", "shape": {"batch": 7, "w1": [4, 4, 4], "w2": [4, 4, 4]}},
    {"op": "monarch", "shape": {"batch": 7, "w1": [4, 4, 4], "w2": [4, 6, 4]}},  # 16 -> 24: x has 24
    {"op": "monarch", "shape": RECT},
    {"op": "butterfly", "shape": {"batch": 7, "n": 16}},
]


def grads_against_float64(function, reference, leaves, dy):
    """The relative errors of `function`'s gradients of sum(dy * y) in every leaf against `reference`'s in
    float64 (fresh leaves: a strided x stays strided)."""
    ours = torch.autograd.grad(function(*leaves), leaves, dy)
    exact = [t.detach().double().requires_grad_() for t in leaves]
    expected = torch.autograd.grad(reference(*exact), exact, dy.double())
    return [relative_error(g, e) for g, e in zip(ours, expected)]


@pytest.mark.parametrize("data", TRANSPOSED_GRAD_SPECS, ids=lambda d: f"{d['op']}-{d['shape']}")
@pytest.mark.parametrize("interpret", [False, True], ids=["pytorch", "interpret"])
def test_a_transposed_kernel_as_op_differentiates_as_its_float64_reference(monkeypatch, data, interpret):
    """The gradients were the forward op's formulas on a transposed op: wrong by 140-190% (relative), and an
    error for 16 -> 24. A transposed op's dx is the forward op on dy, its weights' gradients the forward's with x
    and dy exchanged."""
    spec = parse_spec({**data, "dtype": "float32", "transposed": True})
    if interpret:
        monkeypatch.setenv("KT_INTERPRET", "1")
    op = kt.build(spec, None if interpret else "pytorch").as_op()
    x, *weights = kt.random_args(spec, seed=5, device="cpu")
    x = x.t().contiguous().t()  # a column-major view
    leaves = [t.detach().requires_grad_() for t in (x, *weights)]
    dy = torch.randn(x.shape[0], spec.out_features, generator=torch.Generator().manual_seed(6))
    errors = grads_against_float64(op, kt.reference(spec), leaves, dy)
    assert max(errors) < 1e-5, errors


@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (lambda: kt.nn.MonarchLinear(16, 24, nblocks=4), monarch_reference),
        (lambda: kt.nn.MonarchLinear(18, 12, nblocks=3), monarch_reference),
        (lambda: kt.nn.ButterflyLinear(16), butterfly_reference),
    ],
    ids=["monarch-16-24", "monarch-18-12", "butterfly-16"],
)
def test_a_gradient_penalty_through_monarch_and_butterfly_layers_is_right(make, reference):
    """d |dL/dx|^2 / dW differentiates the layer's backward, whose dx is the transposed op: its weights'
    gradients were wrong (relative error 0.9-1.4) or failed (`shape ... is invalid`)."""
    torch.manual_seed(0)
    layer = make()
    weights = [p for name, p in layer.named_parameters() if name != "bias"]
    x = torch.randn(5, layer.in_features)

    def penalty(forward, x, weights):  # |d sum(y^2) / dx|^2, differentiable in the weights
        x = x.detach().requires_grad_()
        (gx,) = torch.autograd.grad(forward(x).square().sum(), x, create_graph=True)
        return gx.square().sum()

    ours = torch.autograd.grad(penalty(layer, x, weights), weights)
    exact = [w.detach().double().requires_grad_() for w in weights]
    bias = layer.bias.detach().double()
    expected = torch.autograd.grad(penalty(lambda x: reference(x, *exact) + bias, x.double(), exact), exact)
    errors = [relative_error(g, e) for g, e in zip(ours, expected)]
    assert max(errors) < 1e-5, errors
