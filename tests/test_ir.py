"""The IR: factors' dense forms and transposes, linear maps, the dense op and its kernel graph."""

import pytest
import torch

from kt.ir import Dense, DenseOp, LinearMap, op_from_spec
from kt.ir.factors import BlockDiag, Diag, Perm
from kt.ir.graph import KernelGraph, KernelNode
from kt.ir.problems import GemmProblem, TensorType
from kt.ir.structured import dft_matrix
from kt.spec import parse_spec


def test_dense_factor_in_out_storage_is_the_transposed_matrix():
    w = torch.randn(5, 3, dtype=torch.float64)  # (in, out)
    factor = Dense(in_features=5, out_features=3, weight="w", storage="in_out")
    assert torch.equal(factor.to_dense({"w": w}), w.t())
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(LinearMap((factor,)).apply_dense(x, {"w": w}), x @ w)


def test_transpose_is_the_adjoint_and_reuses_the_same_weight():
    w = torch.randn(6, 4, dtype=torch.float64)
    factor = Dense(in_features=6, out_features=4, weight="w", storage="in_out")
    flipped = factor.transpose()
    assert (flipped.in_features, flipped.out_features, flipped.weight) == (4, 6, "w")
    assert torch.equal(flipped.to_dense({"w": w}), factor.to_dense({"w": w}).t())
    assert flipped.transpose() == factor


def test_linear_map_product_applies_factors_in_order():
    w1, w2 = torch.randn(8, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    first = Dense(in_features=8, out_features=5, weight="w1", storage="in_out")
    second = Dense(in_features=5, out_features=3, weight="w2", storage="out_in")
    chain = LinearMap((first, second))
    weights = {"w1": w1, "w2": w2}
    x = torch.randn(7, 8, dtype=torch.float64)
    assert torch.allclose(chain.apply_dense(x, weights), x @ w1 @ w2.t())
    assert torch.allclose(chain.transpose().to_dense(weights), chain.to_dense(weights).t())
    assert chain.weight_names() == ("w1", "w2")
    assert str(chain) == "Dense[w2ᵀ](3<-5) · Dense[w1](5<-8)"


def test_linear_map_refuses_factors_that_do_not_chain():
    import pytest

    with pytest.raises(ValueError, match="gives 5 features but"):
        LinearMap((Dense(in_features=8, out_features=5), Dense(in_features=4, out_features=3)))


def test_dense_op_reference_equals_its_dense_matrix_with_batch_and_layouts():
    spec = parse_spec(
        {
            "op": "dense",
            "dtype": "float32",
            "shape": {"m": 9, "n": 7, "k": 5, "batch": 3},
            "layout": {"a": "col", "b": "col"},
        }
    )
    op = op_from_spec(spec)
    assert isinstance(op, DenseOp)
    x, b = op.random_args(seed=4)
    assert x.shape == (3, 9, 5) and b.shape == (3, 5, 7)
    assert x.stride()[-2:] == (1, 9) and b.stride()[-2:] == (1, 5), "col layout is a transposed view"
    via_ir = op.linear_map.apply_dense(x.double(), {"b": b.double()})
    assert torch.allclose(via_ir, op.problem.reference(x, b))
    assert torch.allclose(op.reference(x, b).double(), via_ir, rtol=1e-5, atol=1e-5)


def test_random_args_are_fresh_per_seed_and_never_zero():
    op = op_from_spec(parse_spec({"op": "dense", "shape": {"m": 4, "n": 4, "k": 4}}))
    a0, _ = op.random_args(seed=0)
    a1, _ = op.random_args(seed=1)
    assert not torch.equal(a0, a1) and (a0 != 0).any()
    assert torch.equal(op.random_args(seed=0)[0], a0)


def test_kernel_graph_prints_like_a_jaxpr():
    op = op_from_spec(
        parse_spec(
            {"op": "dense", "dtype": "bfloat16", "shape": {"m": 2, "n": 3, "k": 4}, "layout": {"b": "col"}}
        )
    )
    graph = op.kernel_graph()
    assert len(graph) == 1 and graph.kernels[0].family == "gemm"
    assert str(graph) == (
        "{ lambda a:bf16[2,4] b:bf16[4,3] col-major .\n"
        "    y:bf16[2,3] = gemm[m=2 n=3 k=4 bf16 a:row b:col] a b\n"
        "  in (y) }"
    )


def test_kernel_graph_refuses_a_tensor_nothing_produces_and_an_output_no_kernel_makes():
    """A kernel that reads a tensor which is neither a graph input nor an earlier kernel's output, or a graph
    output no kernel writes, is a broken op: it must be refused where the graph is built, naming the tensor."""
    inputs = {"x": TensorType((2, 4), "float16"), "b": TensorType((4, 3), "float16")}
    gemm = GemmProblem(2, 3, 4)
    with pytest.raises(ValueError, match="kernel mm reads 'w', which nothing produces"):
        KernelGraph(inputs, [KernelNode("mm", gemm, ("x", "w"), "y")], ("y",))
    with pytest.raises(ValueError, match=r"graph outputs \['z'\] are produced by no kernel"):
        KernelGraph(inputs, [KernelNode("mm", gemm, ("x", "b"), "y")], ("y", "z"))
    assert len(KernelGraph(inputs, [KernelNode("mm", gemm, ("x", "b"), "y")], ("y",))) == 1


@pytest.mark.parametrize("op", ["monarch", "butterfly"])
def test_kt_shows_a_transposed_op_transposed_in_its_first_line(op):
    """`transposed: true` (y = x @ M) showed as `y = monarch(x w1 w2)`, the kernel graph below as `monarchᵀ[...]`."""
    shape = {"batch": 8, "n": 64, "nblocks": 4} if op == "monarch" else {"batch": 8, "n": 64}
    for transposed, mark in ((True, "ᵀ"), (False, "")):
        spec = parse_spec({"op": op, "dtype": "float16", "shape": shape, "transposed": transposed})
        assert op_from_spec(spec).describe().startswith(f"y:f16[8,64] = {op}{mark}(x:f16[8,64] ")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Perm(-2, -3), "Perm rows=-2: must be a positive integer"),
        (lambda: BlockDiag(2, -1, 3), "BlockDiag out_blk=-1: must be a positive integer"),
        (lambda: Diag(0), "Diag n=0: must be a positive integer"),
        (lambda: Dense(0, 4), "Dense in_features=0: must be a positive integer"),
        (lambda: Dense(3, 4, batch=0), "Dense batch=0: must be a positive integer"),
        (lambda: Dense(3, 4, storage="rows"), "Dense storage='rows'; allowed: out_in, in_out"),
        (lambda: Perm(2.5, 2), "Perm rows=2.5: must be a positive integer"),
        (lambda: dft_matrix(0), "dft_matrix n=0: must be a positive integer"),
    ],
)
def test_a_factor_of_no_size_is_refused_where_it_is_made(make, message):
    """Perm(-2, -3), BlockDiag(2, -1, 3), Diag(0) and Dense(0, 0) were made, and failed later in torch
    ("invalid shape dimension -2"); dft_matrix(0) divided by zero."""
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value) == message


def test_a_factor_takes_numpy_integers():
    import numpy as np

    assert Perm(np.int64(2), np.int64(3)).in_features == 6
