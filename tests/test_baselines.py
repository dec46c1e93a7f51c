"""PyTorch baselines ("candidate zero", kt.codegen.baseline): for every problem type and dtype the rendered module is
checked the way the tuner checks a generated kernel (check_kernel: fresh inputs, a NaN-poisoned out, the float64
reference, the problem's tolerance); then strided inputs and out, the output without out, argument errors, the
fallbacks PyTorch's CPU build forces and what implementation() says about them, the TF32 switch, and the source
itself (torch only, compiles, says what it is)."""

import ast
import importlib.util
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor
from torch.overrides import TorchFunctionMode

import kt
from kt.autotune.checking import check_kernel, relative_error
from kt.codegen import baseline_impl, baseline_version, render_baseline, write_source
from kt.codegen.render import template_version
from kt.dtypes import torch_dtype
from kt.ir.problems import (
    BlockSparseProblem,
    BsrGradProblem,
    ButterflyProblem,
    ChainProblem,
    FFTProblem,
    GemmProblem,
    MonarchProblem,
    SumProblem,
    operand_bytes,
)
from kt.sparsity import mask_to_hex

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state:UserWarning"),
    pytest.mark.filterwarnings(
        "ignore:ComplexHalf support is experimental:UserWarning"
    ),  # the complex32 FFT try
]

DTYPES = ["float16", "bfloat16", "float32"]
ROWS = 37  # never a multiple of anything

# Block masks with an empty block-row: (4, 4) blocks of W (12, 16), (2, 3) blocks of W (8, 12), (4, 2) of W (12, 16).
MASKS = {
    (4, 4): [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]],
    (2, 3): [[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]],
    (4, 2): [[1, 0, 0, 1, 0, 0, 1, 1], [0] * 8, [0, 1, 1, 0, 0, 1, 0, 0]],
}


def features(block):
    grid = np.array(MASKS[block]).shape
    return grid[0] * block[0], grid[1] * block[1]  # (out, in)


def blocksparse(block, dtype):
    out, inp = features(block)
    return BlockSparseProblem(ROWS, inp, out, block, mask_to_hex(np.array(MASKS[block], dtype=bool)), dtype)


def bsr_grad(block, dtype):
    out, inp = features(block)
    return BsrGradProblem(ROWS, inp, out, block, mask_to_hex(np.array(MASKS[block], dtype=bool)), dtype)


def sum_of(dtype, *terms):
    return SumProblem(tuple(terms), dtype)


MONARCH = ((3, 4, 5), (2, 7, 6))  # k*q = l*r = 12, 15 features in, 14 out: nothing square

CASES = {
    **{
        f"gemm-{dtype}-{precision}{suffix}": GemmProblem(
            37, 23, 19, dtype=dtype, precision=precision, **extra
        )
        for dtype, precision in [
            ("float16", "ieee"),
            ("bfloat16", "ieee"),
            ("float32", "ieee"),
            ("float32", "tf32"),
        ]
        for suffix, extra in [
            ("", {}),
            ("-batch", {"batch": 3}),
            ("-col", {"a_layout": "col", "b_layout": "col"}),
        ]
    },
    **{
        f"monarch{'T' if t else ''}-{dtype}": MonarchProblem(ROWS, *MONARCH, dtype=dtype, transposed=t)
        for dtype in DTYPES
        for t in (False, True)
    },
    "monarch-float32-tf32": MonarchProblem(ROWS, *MONARCH, dtype="float32", precision="tf32"),
    **{
        f"butterfly{'T' if t else ''}-{dtype}": ButterflyProblem(ROWS, 16, dtype=dtype, transposed=t)
        for dtype in DTYPES
        for t in (False, True)
    },
    **{
        f"fft-{dtype}-{kind}-{n}": FFTProblem(ROWS, n, dtype=dtype, input=kind)
        for dtype in ("float32", "float16")
        for kind in ("complex", "real")
        for n in (16, 12)
    },
    **{
        f"blocksparse-{dtype}-{block[0]}x{block[1]}": blocksparse(block, dtype)
        for dtype in DTYPES
        for block in [(4, 4), (2, 3)]
    },
    **{
        f"lowrank-{dtype}-{len(dims) - 1}": ChainProblem(ROWS, dims, dtype)
        for dtype in DTYPES
        for dims in [(19, 5, 23), (19, 7, 3, 11)]
    },
    **{
        f"sum-{dtype}": sum_of(dtype, blocksparse((4, 4), dtype), ChainProblem(ROWS, (16, 5, 12), dtype))
        for dtype in DTYPES
    },
    "sum3-float32": sum_of(
        "float32",
        blocksparse((4, 4), "float32"),
        blocksparse((4, 2), "float32"),
        ChainProblem(ROWS, (16, 7, 3, 12), "float32"),
    ),
    **{
        f"bsr_grad-{dtype}-{block[0]}x{block[1]}": bsr_grad(block, dtype)
        for dtype in DTYPES
        for block in [(4, 4), (2, 3)]
    },
}
ONE_PER_FAMILY = [
    "gemm-float32-ieee-batch",
    "monarch-float32",
    "monarchT-float32",
    "butterfly-float32",
    "butterflyT-float16",
    "fft-float32-complex-16",
    "fft-float16-complex-16",
    "fft-float16-real-12",
    "blocksparse-float32-4x4",
    "blocksparse-float16-2x3",
    "lowrank-float32-3",
    "sum3-float32",
    "bsr_grad-bfloat16-2x3",
]

_MODULES = {}


def baseline_module(problem, fresh=False):
    """The rendered baseline imported from its file with importlib (it has no Triton: load_source's interpreter
    switch does not apply to it). `fresh`: a new module object, with empty fallback and dense caches."""
    source = render_baseline(problem)
    key = problem.key()
    if fresh or key not in _MODULES:
        path = write_source(source)
        name = f"kt_baseline_{path.stem}_{len(_MODULES)}" + ("_fresh" if fresh else "")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if fresh:
            return module
        _MODULES[key] = module
    return _MODULES[key]


def case_ids(names):
    return pytest.mark.parametrize("name", names)


def strided_twin(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: the last two dims stored transposed (1-D: every other element
    of a longer tensor). BSR tensors are returned as they are."""
    if t.layout != torch.strided:
        return t
    if t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        twin = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        twin = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)[..., ::2]
        twin.copy_(t)
    assert not twin.is_contiguous() and torch.equal(twin, t)
    return twin


def column_sliced(t: torch.Tensor) -> torch.Tensor:
    """The same values as every other column of a tensor twice as wide."""
    twin = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)[..., ::2]
    twin.copy_(t)
    return twin


# -- every problem type and dtype, checked like a candidate ----------------------------------------------------


@case_ids(list(CASES))
def test_baseline_passes_check_kernel(name):
    problem = CASES[name]
    module = baseline_module(problem)
    for seed in (0, 1):
        result = check_kernel(module, problem, seed, "cpu")
        assert result.ok, f"{name} seed {seed}: {result.message}"


@case_ids(ONE_PER_FAMILY)
def test_the_check_compares_a_run_of_rows_at_a_time_with_the_figures_of_the_whole(name, monkeypatch):
    """The check's float64 reference, the output in float64 and their difference took 6 to 10 times the op's
    own memory, so an op that fitted the GPU could fail its check: it now compares a run of rows at a time. One row
    a run: the same error as one run of every row, and no float64 tensor as large as the output (the
    weight gradient's rows are not independent: one run)."""
    import kt.autotune.checking as checking

    problem = CASES[name]
    module = baseline_module(problem)
    whole = check_kernel(module, problem, 0, "cpu")
    monkeypatch.setattr(checking, "RUN_BYTES", 1)
    with LargestTensor((torch.float64, torch.complex128)) as largest:
        runs = check_kernel(module, problem, 0, "cpu")
    assert whole.ok and runs.ok and runs.rel_err == pytest.approx(whole.rel_err, rel=1e-6)
    out = problem.out_type()
    if problem.row_dims() is not None:
        assert largest.numel < math.prod(out.shape), (largest.numel, out.shape)


@case_ids(list(CASES))
def test_operand_bytes_are_the_memory_of_the_arguments_and_output_a_check_allocates(name):
    """What a GPU tune refuses an op for (its operands alone over the GPU's memory) counts every tensor a call
    holds: the storages of the drawn arguments (a BSR weight's values and indices) and of the output."""
    problem = CASES[name]
    tensors = [
        *problem.random_args(0),
        torch.empty(problem.out_type().shape, dtype=torch_dtype(problem.out_type().dtype)),
    ]
    parts = [
        p
        for t in tensors
        for p in ((t.crow_indices(), t.col_indices(), t.values()) if t.layout == torch.sparse_bsr else (t,))
    ]
    assert operand_bytes(problem) == sum(p.untyped_storage().nbytes() for p in parts)


@case_ids(list(CASES))
def test_autocast_changes_nothing_as_it_changes_nothing_in_a_generated_kernel(name):
    """Under torch.autocast PyTorch's ops ran in its dtype: a float32 low-rank path refused its own out= ("dtype
    BFloat16, but got float"), a float16 butterfly failed in autocast, a float32 Monarch ran in bfloat16."""
    problem = CASES[name]
    module = baseline_module(problem)
    args = problem.random_args(3)
    plain = module.kernel(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = module.kernel(*args)
        assert torch.is_autocast_enabled("cpu"), "the caller's autocast is restored"
    assert under.dtype == plain.dtype and torch.equal(under, plain)


@case_ids(list(CASES))
def test_a_kernel_takes_its_tensors_by_keyword(name):
    """The autocast wrapper read args[0]: kernel(a=a, b=b) was an IndexError (a generated kernel takes it)."""
    import inspect

    problem = CASES[name]
    module = baseline_module(problem)
    args = problem.random_args(4)
    names = list(inspect.signature(module.kernel).parameters)
    assert torch.equal(module.kernel(**dict(zip(names, args))), module.kernel(*args))


@case_ids(list(CASES))
def test_kernel_without_out_returns_the_kernels_output_type(name):
    problem = CASES[name]
    module = baseline_module(problem)
    args = problem.random_args(5)
    y = module.kernel(*args)
    out_type = problem.out_type()
    assert tuple(y.shape) == out_type.shape and y.dtype == torch_dtype(out_type.dtype)
    assert relative_error(y, problem.reference(*args)) < problem.tolerance()
    assert baseline_impl(problem) == module.IMPLEMENTATION


def test_gemm_shares_a_2d_operand_across_the_batch():
    module = baseline_module(CASES["gemm-float32-ieee-batch"])
    a3, b3 = CASES["gemm-float32-ieee-batch"].random_args(3)
    a2, b2 = a3[0], b3[0]
    for a, b in [(a3, b2), (a2, b3)]:
        y = module.kernel(a, b)
        assert y.shape == (3, 37, 23)
        assert relative_error(y, torch.matmul(a.double(), b.double())) < 1e-5


# -- strided inputs and outputs ---------------------------------------------------------------------------------


@case_ids(ONE_PER_FAMILY)
def test_non_contiguous_inputs_give_the_same_result(name):
    problem = CASES[name]
    module = baseline_module(problem)
    args = problem.random_args(7)
    expected = module.kernel(*args)
    limit = problem.tolerance() / 8  # the same values: at most a different summation order inside torch
    transposed = module.kernel(*(strided_twin(t) for t in args))
    assert relative_error(transposed, expected) <= limit
    sliced = module.kernel(column_sliced(args[0]), *args[1:])
    assert relative_error(sliced, expected) <= limit


@case_ids(ONE_PER_FAMILY)
def test_a_strided_out_is_written_in_place(name):
    problem = CASES[name]
    module = baseline_module(problem)
    args = problem.random_args(8)
    expected = module.kernel(*args)
    shape, dtype = problem.out_type().shape, torch_dtype(problem.out_type().dtype)
    wide = torch.full((*shape[:-1], 2 * shape[-1]), float("nan"), dtype=dtype)
    out = wide[..., ::2]
    assert module.kernel(*args, out=out) is out
    assert relative_error(out, expected) <= problem.tolerance() / 8
    assert wide[..., 1::2].isnan().all(), "wrote outside `out`"
    swapped = torch.full((*shape[:-2], shape[-1], shape[-2]), float("nan"), dtype=dtype).transpose(-1, -2)
    assert module.kernel(*args, out=swapped) is swapped
    assert relative_error(swapped, expected) <= problem.tolerance() / 8


def test_an_out_overlapping_an_input_gets_the_product_of_the_inputs_before():
    """torch.matmul(out=) itself gets a partly overlapping out wrong (it reads rows it has already written)."""
    problem = GemmProblem(16, 16, 16, dtype="float32")
    module = baseline_module(problem)
    a, b = problem.random_args(9)
    storage = torch.cat([a, torch.zeros(8, 16)])
    a, out = storage[:16], storage[8:]
    expected = torch.matmul(a.double(), b.double())
    assert module.kernel(a, b, out=out) is out
    assert relative_error(out, expected) < problem.tolerance()
    # the same overlap through two storages over one buffer (numpy views): told apart by their first byte, it
    # was written while it was read (26 off); the generated kernels' modules share the check
    memory = np.zeros(24 * 16, dtype=np.float32)
    a, out = torch.from_numpy(memory[: 16 * 16]).view(16, 16), torch.from_numpy(memory[8 * 16 :]).view(16, 16)
    a.copy_(problem.random_args(9)[0])
    assert a.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
    expected = torch.matmul(a.double(), b.double())
    assert module.kernel(a, b, out=out) is out
    assert relative_error(out, expected) < problem.tolerance()
    beside = torch.from_numpy(memory[16 * 16 :])  # bytes next to a's, not among them: not taken for shared
    assert not module._shares_memory(beside, a) and module._shares_memory(out, a)


def test_gemm_writes_a_batch_with_a_shared_operand_into_any_out():
    """torch.matmul(out=) refuses an out that its (batch * M, N) fold cannot view: such an out gets a copy."""
    problem = CASES["gemm-float32-ieee-batch"]
    module = baseline_module(problem)
    a, b = problem.random_args(10)
    expected = torch.matmul(a.double(), b[0].double())
    swapped = torch.full((3, 23, 37), float("nan")).transpose(1, 2)
    every_other = torch.full((6, 37, 23), float("nan"))[::2]
    for out in (swapped, every_other):
        assert module.kernel(a, b[0], out=out) is out
        assert relative_error(out, expected) < problem.tolerance()


# -- argument errors --------------------------------------------------------------------------------------------


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@case_ids(ONE_PER_FAMILY)
def test_a_wrong_dtype_is_a_one_line_error(name):
    problem = CASES[name]
    module = baseline_module(problem)
    args = list(problem.random_args(0))
    # the first argument, and the last one where it is a weight whose values are read (bsr_grad reads only w's
    # pattern, so any dtype of w is right)
    for index in [0, len(args) - 1] if len(args) > 1 and problem.family != "bsr_grad" else [0]:
        wrong = torch.complex128 if args[index].is_complex() else torch.float64
        changed = [t.to(wrong) if i == index else t for i, t in enumerate(args)]
        with pytest.raises(TypeError) as error:
            module.kernel(*changed)
        assert f".dtype is {wrong}, but this kernel was built for" in one_line(error)


@pytest.mark.parametrize(
    "name, change, words",
    [
        ("monarch-float32", lambda x, w1, w2: (x, w1, w2[:, :, :-1]), "w2 must have shape (2, 7, 6)"),
        ("monarch-float32", lambda x, w1, w2: (x[:, :-1], w1, w2), "15 features"),
        ("blocksparse-float32-4x4", lambda x, w: (x, w.to_dense()), "sparse BSR"),
        ("blocksparse-float32-4x4", lambda x, w: (x, w.to_dense().to_sparse_bsr((2, 2))), "in blocks (4, 4)"),
        (  # a batched weight: its blocks were said to be (stored blocks, 4), from values' shape past the batch
            "blocksparse-float32-4x4",
            lambda x, w: (x, torch.stack([w.to_dense()] * 2).to_sparse_bsr((4, 4))),
            "got (2, 12, 16) in blocks (4, 4)",
        ),
        ("lowrank-float32-2", lambda x, f1, f2: (x, f1), "missing"),
        ("bsr_grad-float32-4x4", lambda dy, x, w: (dy[:-1], x, w), "same leading dims"),
        ("gemm-float16-ieee", lambda a, b: (a, b[:-1]), "inner dimensions differ"),
    ],
)
def test_wrong_shapes_layouts_and_counts_are_one_line_errors(name, change, words):
    problem = CASES[name]
    module = baseline_module(problem)
    with pytest.raises((TypeError, ValueError)) as error:
        module.kernel(*change(*problem.random_args(0)))
    assert words in one_line(error)


# -- what runs: PyTorch's CPU fallbacks and implementation() ----------------------------------------------------


def torch_bsr_refusal(x, w) -> str | None:
    """The first line of the error PyTorch's own F.linear(x, W_bsr) raises here, or None when it runs."""
    try:
        F.linear(x, w)
    except (RuntimeError, NotImplementedError) as error:
        return str(error).strip().splitlines()[0]
    return None


@case_ids([name for name in CASES if name.startswith("blocksparse")])
def test_blocksparse_implementation_says_what_pytorch_does_here(name):
    problem = CASES[name]
    module = baseline_module(problem)
    x, w = problem.random_args(0)
    refusal = torch_bsr_refusal(x, w)
    said = module.implementation(x, w)
    if refusal is None:
        assert said == "torch BSR F.linear" == module.IMPLEMENTATION
    else:
        bo, bi = problem.block
        assert said == (
            f"dense F.linear (torch BSR F.linear refuses {problem.dtype} in {bo}x{bi} blocks on cpu: {refusal})"
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_blocksparse_on_cpu_falls_back_to_the_dense_form(dtype):
    module = baseline_module(CASES[f"blocksparse-{dtype}-4x4"], fresh=True)
    x, w = CASES[f"blocksparse-{dtype}-4x4"].random_args(0)
    said = module.implementation(x, w)
    assert said.startswith(f"dense F.linear (torch BSR F.linear refuses {dtype} in 4x4 blocks on cpu: ")
    assert "\n" not in said and said.endswith(")")


def test_a_refusal_is_decided_once_and_a_weight_written_through_its_tensors_is_read_again(monkeypatch):
    """torch's BSR path is tried once per (device, dtype, block). The dense form is made on each call: a BSR
    tensor made from tensors shares their memory but not their version counters, and a cache of its dense form
    keyed by them gave the old weight's result after an optimizer's step wrote the values (3.44 off where the
    generated kernel was right)."""
    problem = CASES["blocksparse-float16-4x4"]
    module = baseline_module(problem, fresh=True)
    tries = []

    def linear(*args):
        tries.append(args)
        return F.linear(*args)

    monkeypatch.setattr(module, "F", types.SimpleNamespace(linear=linear))
    x, w0 = problem.random_args(0)
    values = w0.values().clone()
    w = torch.sparse_bsr_tensor(w0.crow_indices(), w0.col_indices(), values, w0.shape)
    first = module.kernel(x, w)
    assert len(tries) == 1 and list(module._REFUSED) == [(x.device, torch.float16, (4, 4))]
    again = module.kernel(x, w)
    assert len(tries) == 1, "tried torch's BSR path again after it refused"
    assert torch.equal(again, first)
    values.mul_(2)  # written through the tensor the weight was made from: w's own counters do not move
    assert torch.equal(module.kernel(x, w), 2 * first)
    w.values().mul_(0.5)
    assert torch.equal(module.kernel(x, w), first)


def test_inference_tensors_are_taken_as_a_generated_kernel_takes_them():
    """An `out` made under torch.inference_mode() was refused by every baseline ("Inplace update to inference
    tensor outside InferenceMode"), and a BSR weight made there by the dense fallback, where the generated
    kernels take both."""
    gemm = CASES["gemm-float32-ieee"]
    module = baseline_module(gemm)
    a, b = gemm.random_args(0)
    with torch.inference_mode():
        out = torch.full((37, 23), float("nan"))
    assert module.kernel(a, b, out=out) is out
    torch.testing.assert_close(out, a @ b)
    sparse = CASES["blocksparse-float16-4x4"]
    module = baseline_module(sparse, fresh=True)
    x, w = sparse.random_args(0)
    with torch.inference_mode():
        frozen = torch.sparse_bsr_tensor(
            w.crow_indices().clone(), w.col_indices().clone(), w.values().clone(), w.shape
        )
        out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float16)
    assert torch.equal(module.kernel(x, frozen), module.kernel(x, w))
    assert torch.equal(module.kernel(x, frozen, out=out), module.kernel(x, w))


def test_implementation_checks_its_arguments_and_leaves_no_refusal_behind():
    """implementation() ran torch's BSR F.linear itself, outside the kernel's autocast guard and checks: under
    a bfloat16 autocast it recorded a refusal of float32 square blocks for good (kernel() then took the dense
    path), and float64 x recorded one too instead of the kernel's one-line TypeError."""
    problem = CASES["blocksparse-float32-4x4"]
    module = baseline_module(problem, fresh=True)
    x, w = problem.random_args(0)
    if torch_bsr_refusal(x, w) is not None:
        pytest.skip("this torch build refuses float32 BSR F.linear on the CPU")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.implementation(x, w) == "torch BSR F.linear"
    with pytest.raises(
        TypeError, match=r"^kernel: x\.dtype is torch\.float64, but this kernel was built for"
    ):
        module.implementation(x.double(), w)
    assert module._REFUSED == {} and module.implementation(x, w) == "torch BSR F.linear"


def test_a_forked_child_runs_float32_matmuls_while_its_parent_held_the_precision_lock():
    """The TF32 lock is the process's: a fork while another thread was inside a float32 matmul left the child's
    lock held for good, and its first float32 call hung. A child gets a free lock of its own."""
    import os
    import signal
    import threading

    module = baseline_module(CASES["gemm-float32-ieee"])
    lock = vars(torch.backends.cuda)["_kt_fp32_precision_lock"]
    a, b = CASES["gemm-float32-ieee"].random_args(0)
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: its kernel must return before the alarm
        signal.alarm(10)
        try:
            module.kernel(a, b)
        finally:
            os._exit(0 if vars(torch.backends.cuda)["_kt_fp32_precision_lock"] is not lock else 3)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_float32_square_blocks_run_torchs_bsr_path(monkeypatch):
    problem = CASES["blocksparse-float32-4x4"]
    module = baseline_module(problem, fresh=True)
    x, w = problem.random_args(0)
    if torch_bsr_refusal(x, w) is not None:
        pytest.skip("this torch build refuses float32 BSR F.linear on the CPU")
    monkeypatch.setattr(module, "_dense", lambda w: pytest.fail("took the dense fallback"))
    assert relative_error(module.kernel(x, w), problem.reference(x, w)) < problem.tolerance()
    assert module._REFUSED == {}


@case_ids([name for name in CASES if name.startswith("fft")])
def test_fft_of_no_rows_is_empty(name):
    """torch.fft.fft on an empty batch is an MKL error on the CPU; the half module also took that for a complex32
    refusal and kept it for the device."""
    problem = CASES[name]
    module = baseline_module(problem)
    x = problem.random_args(0)[0]
    empty = x[:, :0] if x.dim() == 3 else x[:0]  # planar (2, rows, N), else (rows, N)
    shape = (*problem.out_type().shape[:-2], 0, problem.out_type().shape[-1])
    y = module.kernel(empty)
    assert tuple(y.shape) == shape and y.dtype == torch_dtype(problem.out_type().dtype)
    out = torch.empty(shape, dtype=y.dtype)
    assert module.kernel(empty, out=out) is out
    assert "Inconsistent configuration" not in str(getattr(module, "_REFUSED", {}))


def test_a_half_fft_prints_no_complex_half_warning_of_torchs():
    """A float16 FFT on the CPU printed torch's "ComplexHalf support is experimental" (once a process, pointing
    at the generated file), though the FFT then ran in complex64. In a fresh process: torch warns only once."""
    import subprocess
    import sys

    code = (
        "import warnings, torch, kt\n"
        "warnings.simplefilter('error')\n"
        "spec = {'op': 'fft', 'dtype': 'float16', 'shape': {'batch': 3, 'n': 16}}\n"
        "kernel = kt.build(spec, 'pytorch', device='h100')\n"
        "x = torch.randn(2, 3, 16).half()\n"
        "y = kernel(x)\n"
        "z = torch.fft.fft(torch.complex(x[0].double(), x[1].double()))\n"
        "got = torch.complex(y[0].double(), y[1].double())\n"
        "print(float((got - z).norm() / z.norm()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-2


def test_half_fft_says_which_complex_dtype_ran():
    x = CASES["fft-float16-complex-16"].random_args(0)[0]
    said = baseline_module(CASES["fft-float16-complex-16"]).implementation(x)
    try:
        torch.fft.fft(torch.complex(x[0], x[1]))
        assert said == "torch.fft.fft"
    except RuntimeError as error:  # the CPU has no half-precision FFT
        refusal = str(error).strip().splitlines()[0]
        assert said == f"torch.fft.fft in complex64 (torch.fft.fft refuses complex32 on cpu: {refusal})"
    x = CASES["fft-float16-real-12"].random_args(0)[0]
    said = baseline_module(CASES["fft-float16-real-12"]).implementation(x)
    assert said == "torch.fft.fft in complex64 (complex32 FFTs need a power-of-two N, and N = 12)"
    x = CASES["fft-float32-real-12"].random_args(0)[0]
    assert baseline_module(CASES["fft-float32-real-12"]).implementation(x) == "torch.fft.fft"


def test_sum_implementation_names_each_terms_path():
    problem = CASES["sum-float16"]
    args = problem.random_args(0)
    said = baseline_module(problem).implementation(*args)
    assert said.startswith(
        "sum of the terms' PyTorch paths: term 0 dense F.linear (torch BSR F.linear refuses float16"
    )
    assert said.endswith("; term 1 torch.linalg.multi_dot")
    problem = CASES["sum3-float32"]
    args = problem.random_args(0)
    refusals = [torch_bsr_refusal(args[0], w) for w in args[1:3]]
    said = baseline_module(problem).implementation(*args)
    if refusals == [None, None]:
        assert said == "sum of the terms' PyTorch paths"
    else:
        assert said.startswith("sum of the terms' PyTorch paths: term 0 ")
        assert ("term 1 dense F.linear" in said) == (refusals[1] is not None)


@case_ids([name for name in ONE_PER_FAMILY if not name.startswith(("blocksparse", "sum", "fft-float16"))])
def test_implementation_is_the_short_name_without_a_fallback(name):
    problem = CASES[name]
    module = baseline_module(problem)
    assert module.implementation(*problem.random_args(0)) == module.IMPLEMENTATION == baseline_impl(problem)


def test_each_familys_implementation_name():
    names = {problem.family: baseline_impl(problem) for problem in CASES.values()}
    assert names == {
        "gemm": "torch.matmul",
        "monarch": "two torch.bmm",
        "butterfly": "per-level torch loop",
        "fft": "torch.fft.fft",
        "blocksparse": "torch BSR F.linear",
        "lowrank": "torch.linalg.multi_dot",
        "sum": "sum of the terms' PyTorch paths",
        "bsr_grad": "dense dy.T @ x, stored blocks gathered",
    }
    with pytest.raises(ValueError, match="no PyTorch baseline for object"):
        render_baseline(object())


# -- TF32 for float32 matmuls -----------------------------------------------------------------------------------


@pytest.fixture
def restore_fp32_precision():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    yield matmul
    matmul.fp32_precision = saved


class MatmulPrecision(TorchFunctionMode):
    """Records torch.backends.cuda.matmul.fp32_precision whenever torch.matmul runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.matmul:
            self.seen.append(torch.backends.cuda.matmul.fp32_precision)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision, other", [("tf32", "ieee"), ("ieee", "tf32"), ("tf32", "none")])
def test_fp32_gemm_sets_tf32_for_the_call_and_restores_the_callers_setting(
    precision, other, restore_fp32_precision
):
    problem = CASES[f"gemm-float32-{precision}"]
    module = baseline_module(problem)
    args = problem.random_args(0)
    restore_fp32_precision.fp32_precision = other
    with MatmulPrecision() as mode:
        module.kernel(*args)
    assert mode.seen == [precision]
    assert restore_fp32_precision.fp32_precision == other
    with pytest.raises(RuntimeError, match="inside"), module._fp32_matmuls(precision):
        raise RuntimeError("inside")
    assert restore_fp32_precision.fp32_precision == other


def test_half_modules_leave_tf32_alone():
    source = render_baseline(CASES["gemm-float16-ieee"])
    assert "fp32_precision" not in source and "PRECISION" not in source


# -- the source -------------------------------------------------------------------------------------------------


@case_ids(list(CASES))
def test_source_imports_only_torch_and_the_standard_library(name):
    problem = CASES[name]
    source = render_baseline(problem, name="candidate_zero", provenance="timed against 12 kt candidates")
    assert "import kt" not in source and "from kt" not in source
    tree = ast.parse(source)
    compile(tree, f"{name}.py", "exec")
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"torch", "contextlib", "functools", "os", "threading", "warnings"}
    doc = ast.get_docstring(tree)
    assert doc.startswith("PyTorch baseline candidate_zero: ")
    assert "PyTorch's own path, not a kt kernel" in doc
    assert f"For {problem} on h100: timed against 12 kt candidates." in doc
    assert f"Implementation: {baseline_impl(problem)}." in doc
    assert f"template baseline {baseline_version()}" in doc
    assert f'IMPLEMENTATION = "{baseline_impl(problem)}"' in source
    assert "\n\n\n\n" not in source and not source.startswith("\n")


def test_baseline_version_is_the_templates():
    assert baseline_version() == template_version("baseline.py.j2")
    assert len(baseline_version()) == 12 and int(baseline_version(), 16) >= 0


def test_float32_calls_in_two_threads_each_run_at_their_own_precision_and_restore_the_callers(monkeypatch):
    """The precision is the process's setting: a tf32 call and an ieee one at once ran the first's matmuls at
    the second's precision, and the last to finish restored the other's setting, not the caller's."""
    import threading
    import time

    spec = {"op": "dense", "name": "p", "dtype": "float32", "shape": {"m": 3, "n": 2, "k": 4}}
    kernels = {p: kt.build({**spec, "precision": p}, "pytorch") for p in ("tf32", "ieee")}
    matmul, seen = torch.matmul, {}

    def slow(a, b, **kw):  # records the precision each call's product runs at, before and after a pause
        name = threading.current_thread().name
        seen.setdefault(name, []).append(torch.backends.cuda.matmul.fp32_precision)
        time.sleep(0.2)
        seen[name].append(torch.backends.cuda.matmul.fp32_precision)
        return matmul(a, b, **kw)

    monkeypatch.setattr(torch, "matmul", slow)
    before = torch.backends.cuda.matmul.fp32_precision
    a, b = kt.random_args(spec)
    threads = [threading.Thread(target=kernels[p], args=(a, b), name=p) for p in ("tf32", "ieee")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert seen == {"tf32": ["tf32", "tf32"], "ieee": ["ieee", "ieee"]}, seen
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_implementation_of_an_input_without_rows_says_nothing_runs():
    """kernel() of an fp16 FFT without rows returns its empty output; implementation() ran the FFT, which MKL
    refuses for an empty batch (a RuntimeError)."""
    spec = {"op": "fft", "name": "f", "dtype": "float16", "input": "real", "shape": {"batch": 4, "n": 16}}
    kernel = kt.build(spec, "pytorch")
    x = torch.zeros(0, 16, dtype=torch.float16)
    assert kernel.module.kernel(x).shape == (2, 0, 16)
    assert kernel.module.implementation(x) == "torch.fft.fft (no rows: nothing runs)"


def test_a_gpu_out_of_memory_is_no_refusal_of_the_complex32_fft(monkeypatch):
    """The half FFT remembers torch's refusal of complex32 per device; an out-of-memory error is the GPU's state
    at the time, not that verdict (as the block-sparse fallback already took it): raised, nothing remembered."""
    problem = CASES["fft-float16-complex-16"]
    module = baseline_module(problem, fresh=True)
    x = problem.random_args(0)[0]

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(module.torch.fft, "fft", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        module.kernel(x)
    assert module._REFUSED == {}
