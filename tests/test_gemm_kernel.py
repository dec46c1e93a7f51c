"""The generated GEMM kernel against float64 torch.matmul, in Triton's interpreter (or on the GPU when present)."""

import threading

import pytest
import torch
from conftest import DEVICE, gemm_module, rel_err

from kt.codegen import GemmConfig
from kt.dtypes import tolerance
from kt.ir import GemmProblem

SMALL = GemmConfig(block_m=32, block_n=32, block_k=32, group_m=4, num_warps=4, num_stages=3, split_k=1)
SPLIT = GemmConfig(block_m=16, block_n=32, block_k=16, group_m=8, num_warps=2, num_stages=2, split_k=4)
DTYPES = ["float16", "bfloat16", "float32"]


def randn(*shape, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, generator=g, device=DEVICE).to(getattr(torch, dtype))


def poisoned(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=getattr(torch, dtype), device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
# (64, 64, 40): M and N fill whole tiles, K does not (the unmasked EVEN path must not take it)
@pytest.mark.parametrize(
    "m,n,k", [(1, 1, 1), (17, 100, 129), (100, 17, 1), (129, 65, 33), (64, 64, 64), (64, 64, 40)]
)
def test_gemm_matches_float64_matmul_for_odd_sizes(dtype, m, n, k):
    module = gemm_module(GemmProblem(m, n, k, dtype=dtype), SMALL)
    a, b = randn(m, k, dtype=dtype, seed=m), randn(k, n, dtype=dtype, seed=n + 1)
    out = poisoned(m, n, dtype=dtype)
    assert module.kernel(a, b, out=out) is out
    assert torch.isfinite(out).all(), "every output element must be written"
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_sums_every_slice_of_k(dtype):
    m, n, k = 33, 47, 200  # K is not a multiple of BLOCK_K * SPLIT_K
    module = gemm_module(GemmProblem(m, n, k, dtype=dtype), SPLIT)
    a, b = randn(m, k, dtype=dtype, seed=1), randn(k, n, dtype=dtype, seed=2)
    out = poisoned(m, n, dtype=dtype)
    module.kernel(a, b, out=out)
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.parametrize("a_layout,b_layout", [("row", "col"), ("col", "row"), ("col", "col")])
def test_transposed_views_need_no_copy(a_layout, b_layout):
    m, n, k = 70, 45, 90
    a = (
        randn(k, m, dtype="float16", seed=3).t()
        if a_layout == "col"
        else randn(m, k, dtype="float16", seed=3)
    )
    b = (
        randn(n, k, dtype="float16", seed=4).t()
        if b_layout == "col"
        else randn(k, n, dtype="float16", seed=4)
    )
    assert not (a.is_contiguous() and b.is_contiguous())
    module = gemm_module(GemmProblem(m, n, k, a_layout=a_layout, b_layout=b_layout), SMALL)
    assert rel_err(module.kernel(a, b), a.double() @ b.double()) < tolerance("float16")


def test_sliced_inputs_with_gaps_between_rows():
    base_a = randn(150, 200, dtype="float32", seed=5)
    base_b = randn(300, 90, dtype="float32", seed=6)
    a = base_a[3:120:2, 5:160]  # row stride 400, offset start
    b = base_b[10:165, ::3]  # column stride 3
    module = gemm_module(GemmProblem(a.shape[0], b.shape[1], a.shape[1], dtype="float32"), SPLIT)
    assert rel_err(module.kernel(a, b), a.double() @ b.double()) < tolerance("float32")


def test_strided_out_is_written_in_place():
    a, b = randn(40, 24, dtype="float16", seed=7), randn(24, 36, dtype="float16", seed=8)
    big = poisoned(36, 80, dtype="float16")
    out = big[:, 3:43].t()  # (40, 36) view with strides (1, 80)
    module = gemm_module(GemmProblem(40, 36, 24), SMALL)
    module.kernel(a, b, out=out)
    assert rel_err(out, a.double() @ b.double()) < tolerance("float16")
    assert torch.isnan(big[:, :3]).all() and torch.isnan(big[:, 43:]).all(), (
        "nothing outside `out` is touched"
    )


@pytest.mark.parametrize("config", [SMALL, SPLIT], ids=["split1", "split4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_products_match_bmm(config, dtype):
    z, m, n, k = 3, 37, 29, 51
    a, b = randn(z, m, k, dtype=dtype, seed=9), randn(z, k, n, dtype=dtype, seed=10)
    out = poisoned(z, m, n, dtype=dtype)
    module = gemm_module(GemmProblem(m, n, k, batch=z, dtype=dtype), config)
    module.kernel(a, b, out=out)
    assert rel_err(out, torch.bmm(a.double(), b.double())) < tolerance(dtype)


def test_a_two_dimensional_operand_is_shared_across_the_batch():
    a, b = randn(4, 20, 30, dtype="float16", seed=11), randn(30, 25, dtype="float16", seed=12)
    module = gemm_module(GemmProblem(20, 25, 30, batch=4), SMALL)
    assert rel_err(module.kernel(a, b), torch.matmul(a.double(), b.double())) < tolerance("float16")
    a2, b2 = randn(20, 30, dtype="float16", seed=13), randn(4, 30, 25, dtype="float16", seed=14)
    assert rel_err(module.kernel(a2, b2), torch.matmul(a2.double(), b2.double())) < tolerance("float16")


def test_64_bit_offsets_give_the_same_result():
    a, b = randn(50, 70, dtype="float16", seed=15), randn(70, 40, dtype="float16", seed=16)
    module = gemm_module(GemmProblem(50, 40, 70), SPLIT)
    expected = module.kernel(a, b)
    module.INDEX_64_SPAN = 1  # force the int64 path, which real launches take past 2**31 elements
    try:
        assert torch.equal(module.kernel(a, b), expected)
    finally:
        module.INDEX_64_SPAN = 2**31


def test_empty_dimensions_give_empty_or_zero_results():
    module = gemm_module(GemmProblem(4, 4, 4), SMALL)
    assert module.kernel(
        randn(0, 5, dtype="float16", seed=1), randn(5, 3, dtype="float16", seed=2)
    ).shape == (0, 3)
    zero_k = module.kernel(
        torch.empty(3, 0, dtype=torch.float16, device=DEVICE),
        torch.empty(0, 2, dtype=torch.float16, device=DEVICE),
    )
    assert zero_k.shape == (3, 2) and (zero_k == 0).all()


@pytest.mark.parametrize(
    "a,b,error,match",
    [
        (
            lambda: randn(4, 5, dtype="float32", seed=1),
            lambda: randn(5, 3, dtype="float16", seed=1),
            TypeError,
            r"a\.dtype is torch\.float32, but this kernel was built for torch\.float16",
        ),
        (
            lambda: randn(4, 5, dtype="float16", seed=1),
            lambda: randn(6, 3, dtype="float16", seed=1),
            ValueError,
            "inner dimensions differ",
        ),
        (
            lambda: randn(2, 2, 4, 5, dtype="float16", seed=1),
            lambda: randn(5, 3, dtype="float16", seed=1),
            ValueError,
            "must be 2-D or 3-D",
        ),
        (
            lambda: randn(2, 4, 5, dtype="float16", seed=1),
            lambda: randn(3, 5, 3, dtype="float16", seed=1),
            ValueError,
            "batch sizes differ",
        ),
        (lambda: [[1.0]], lambda: randn(5, 3, dtype="float16", seed=1), TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_arguments_get_one_clear_error(a, b, error, match):
    module = gemm_module(GemmProblem(4, 3, 5), SMALL)
    with pytest.raises(error, match=match):
        module.kernel(a(), b())


def test_wrong_out_is_refused():
    module = gemm_module(GemmProblem(4, 3, 5), SMALL)
    a, b = randn(4, 5, dtype="float16", seed=1), randn(5, 3, dtype="float16", seed=2)
    with pytest.raises(ValueError, match=r"out must be a torch.float16 tensor of shape \(4, 3\)"):
        module.kernel(a, b, out=torch.empty(3, 4, dtype=torch.float16, device=DEVICE))


def test_offsets_past_two_to_the_31_elements_do_not_wrap():
    """A column-major A whose columns are 2**25 elements apart: one K step of 64 moves 2**31 elements."""
    stride, m, n, k = 2**25, 16, 24, 136
    try:  # a 9 GiB span; only the pages the test touches are ever backed by memory
        storage = torch.empty((k - 1) * stride + m, dtype=torch.float16, device=DEVICE)
    except RuntimeError:
        pytest.skip("cannot reserve 9 GiB of address space here")
    a = storage.as_strided((m, k), (1, stride))
    a.copy_(randn(m, k, dtype="float16", seed=17))
    b = randn(k, n, dtype="float16", seed=18)
    module = gemm_module(
        GemmProblem(m, n, k, a_layout="col"),
        GemmConfig(16, 16, 64, group_m=1, num_warps=2, num_stages=2, split_k=2),
    )
    assert rel_err(module.kernel(a, b), a.double() @ b.double()) < tolerance("float16")


def test_out_may_alias_an_input_and_an_expanded_out_is_refused():
    a, b = randn(64, 64, dtype="float16", seed=19), randn(64, 64, dtype="float16", seed=20)
    expected = a.double() @ b.double()
    module = gemm_module(GemmProblem(64, 64, 64), SMALL)
    assert module.kernel(a, b, out=a) is a
    assert rel_err(a, expected) < tolerance("float16")
    a = randn(64, 64, dtype="float16", seed=19)
    assert module.kernel(a, b, out=b) is b  # B too (a guard that only looked at A passed this)
    assert rel_err(b, expected) < tolerance("float16")
    b = randn(64, 64, dtype="float16", seed=20)
    with pytest.raises(ValueError, match="out overlaps itself"):
        module.kernel(b, b, out=torch.zeros(1, 64, dtype=torch.float16, device=DEVICE).expand(64, 64))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path: the CPU without a GPU")
def test_interpreted_kernels_run_when_triton_was_imported_before_kt():
    """torch internals (torch.compile, a TorchDispatchMode) import Triton before kt chooses the interpreter; its
    jit'd helpers (tl.cdiv, ...) are then compiled-mode functions, and a kernel calling them must still run."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os
        os.environ.pop("TRITON_INTERPRET", None)
        import triton  # first, as torch.compile would
        import kt
        spec = {"op": "lowrank", "dtype": "float32", "shape": {"batch": 5, "dims": [24, 7, 33]}}
        x, f1, f2 = kt.random_args(spec, seed=0, device="cpu")
        y = kt.build(spec, config={"block_m": 16, "block_n": 16, "block_k": 16})(x, f1, f2)
        ref = x.double() @ f1.double() @ f2.double()
        print(float((y.double() - ref).norm() / ref.norm()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


TMA = GemmConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=4, num_stages=3, tma=1)


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.t().contiguous().t() if layout == "col" else t


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "a_layout,b_layout", [("row", "row"), ("row", "col"), ("col", "row"), ("col", "col")]
)
@pytest.mark.parametrize("m,n,k", [(88, 72, 104), (8, 8, 8), (96, 64, 200)])
def test_the_tma_kernel_matches_float64_matmul_in_every_layout(dtype, a_layout, b_layout, m, n, k):
    """The persistent TMA kernel (more tiles than programs, so each program loops) on aligned rows: edges of
    M, N and K ragged against the 32 tiles, both operand layouts read through their own descriptors."""
    module = gemm_module(GemmProblem(m, n, k, dtype=dtype, a_layout=a_layout, b_layout=b_layout), TMA)
    a = _laid_out(randn(m, k, dtype=dtype, seed=m), a_layout)
    b = _laid_out(randn(k, n, dtype=dtype, seed=n + 1), b_layout)
    assert module.uses_tma(a, b)
    out = poisoned(m, n, dtype=dtype)
    assert module.kernel(a, b, out=out) is out
    assert torch.isfinite(out).all(), "every output element must be written"
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("a_layout,b_layout", [("row", "col"), ("col", "row")])
def test_the_tma_kernel_with_a_subtiled_epilogue_writes_both_halves_of_each_tile(dtype, a_layout, b_layout):
    """tma 2 stores each C tile as two (BLOCK_M, BLOCK_N / 2) halves: N ragged inside the second half of the last
    column of tiles, so a swapped or dropped half shows as wrong or poisoned elements."""
    config = GemmConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=4, num_stages=3, tma=2)
    m, n, k = 72, 88, 96
    module = gemm_module(GemmProblem(m, n, k, dtype=dtype, a_layout=a_layout, b_layout=b_layout), config)
    assert module.CONFIG["tma"] == 2
    a = _laid_out(randn(m, k, dtype=dtype, seed=7), a_layout)
    b = _laid_out(randn(k, n, dtype=dtype, seed=8), b_layout)
    assert module.uses_tma(a, b)
    out = poisoned(m, n, dtype=dtype)
    module.kernel(a, b, out=out)
    assert torch.isfinite(out).all(), "every output element must be written"
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


def test_a_call_aligned_where_the_tuned_problem_was_not_runs_with_the_stages_that_fit(monkeypatch):
    """A 16-bit operand whose rows are not 16-element aligned is loaded into one shared-memory buffer, and its
    config is judged legal with that; Triton builds a program per call's alignment, so the same kernel.py called
    with aligned rows kept a buffer per stage and could not launch (sm_90: 245,760 bytes of 232,448 for
    m128n256k64 s5 at N=1024, tuned at N=1000). Such a call now runs with the most stages that fit; at the tuned
    problem's own alignment the error is raised as it is. A stand-in launcher raises Triton's OutOfResources
    where an aligned build would not fit (the interpreter has no shared memory)."""
    from triton.runtime.errors import OutOfResources

    config = GemmConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=4, num_stages=3)
    module = gemm_module(GemmProblem(40, 24, 32, dtype="float16"), config)  # B's rows of 24: unaligned
    assert (module.A_UNALIGNED, module.B_UNALIGNED) == (False, True)
    real, tried = module.gemm_kernel, []

    class OverTheLimit:
        def __init__(self, aligned_too: bool):
            self.aligned_too = aligned_too

        def __getitem__(self, grid):
            def launch(*args, num_stages, **meta):
                tried.append(num_stages)
                aligned = args[1].stride(-2) % 16 == 0
                if num_stages > 1 and (aligned or self.aligned_too):
                    raise OutOfResources(245760, 232448, "shared memory")
                return real[grid](*args, num_stages=num_stages, **meta)

            return launch

    monkeypatch.setattr(module, "_FITTED_STAGES", {})
    monkeypatch.setattr(module, "gemm_kernel", OverTheLimit(aligned_too=False))
    a, b = randn(40, 32, dtype="float16", seed=1), randn(32, 48, dtype="float16", seed=2)  # rows of 48
    for calls in ([3, 2, 1], [1]):  # the stages that fit are remembered
        tried.clear()
        out = module.kernel(a, b, out=poisoned(40, 48, dtype="float16"))
        assert tried == calls and rel_err(out, a.double() @ b.double()) < tolerance("float16")
    b24 = randn(32, 24, dtype="float16", seed=3)
    tried.clear()
    module.kernel(a, b24)  # the tuned alignment: its own stages
    assert tried == [3]
    monkeypatch.setattr(module, "gemm_kernel", OverTheLimit(aligned_too=True))
    with pytest.raises(OutOfResources):
        module.kernel(a, b24)  # what was judged legal and measured does not fit: raised as it is


def test_an_out_overlapping_an_input_through_another_storage_gets_the_product_of_the_inputs_before():
    """Two storages over one buffer (numpy views of one array) were told apart by their first byte: an out
    overlapping A that way was written while A was read."""
    import numpy as np

    config = GemmConfig(block_m=16, block_n=16, block_k=16, group_m=1, num_warps=4, num_stages=2)
    module = gemm_module(GemmProblem(32, 16, 16, dtype="float32"), config)
    memory = np.zeros(48 * 16, dtype=np.float32)
    a, out = (
        torch.from_numpy(memory[: 32 * 16]).view(32, 16),
        torch.from_numpy(memory[16 * 16 :]).view(32, 16),
    )
    a.copy_(randn(32, 16, dtype="float32", seed=1))
    b = randn(16, 16, dtype="float32", seed=2)
    expected = a.double() @ b.double()
    assert module.kernel(a, b, out=out) is out
    assert rel_err(out, expected) < tolerance("float32")


def test_the_tma_kernels_allocator_is_set_for_each_thread_that_launches_it():
    """Triton keeps its allocator in a context variable, one per thread: the module set it once per process, so
    a TMA launch from any thread after the first (kt.nn layers called in threads, nn.DataParallel) raised
    "no allocator was set". Each thread here starts with a fresh context, as on the GPU."""
    allocation = pytest.importorskip("triton.runtime._allocation")  # where Triton 3.6 to 3.9 keep it
    module = gemm_module(GemmProblem(48, 40, 128, dtype="float16"), TMA)
    seen = []

    def launch_setup():
        module._set_allocator()
        seen.append(allocation._allocator.get())

    for _ in range(2):
        thread = threading.Thread(target=launch_setup)
        thread.start()
        thread.join()
    assert len(seen) == 2 and not any(isinstance(a, allocation.NullAllocator) for a in seen), seen


@pytest.mark.parametrize(
    "view",
    [
        lambda a, b: (a[:, 1:], b[1:]),  # a base 2 bytes past a 16-byte boundary
        lambda a, b: (a[:, ::2], b[::2]),  # no unit stride
        lambda a, b: (a[:, :63].contiguous(), b[:63].contiguous()),  # rows of 63 elements: 126 bytes
        lambda a, b: (a.unsqueeze(0).expand(2, -1, -1), b),  # a batch
    ],
)
def test_a_call_tma_cannot_take_runs_the_classic_kernel_and_is_still_right(view):
    module = gemm_module(GemmProblem(48, 40, 128, dtype="float16"), TMA)
    a, b = view(randn(48, 128, dtype="float16", seed=3), randn(128, 40, dtype="float16", seed=4))
    assert not module.uses_tma(a, b)
    assert rel_err(module.kernel(a, b), a.double() @ b.double()) < tolerance("float16")
    out = torch.empty(48, 80, dtype=torch.float16, device=DEVICE)[:, ::2]  # an out TMA cannot write
    a2, b2 = randn(48, 128, dtype="float16", seed=5), randn(128, 40, dtype="float16", seed=6)
    assert not module.uses_tma(a2, b2, out)
    assert rel_err(module.kernel(a2, b2, out=out), a2.double() @ b2.double()) < tolerance("float16")


def test_uses_tma_without_an_out_asks_whether_the_new_outputs_rows_are_aligned():
    """With N = 17 in fp16 the new output's rows are 34 bytes: the classic kernel runs, and uses_tma(a, b)
    said True."""
    module = gemm_module(GemmProblem(48, 17, 128, dtype="float16", b_layout="col"), TMA)
    a = randn(48, 128, dtype="float16", seed=3)
    b = randn(17, 128, dtype="float16", seed=4).t()  # B column-major, its rows of 128 aligned
    assert not module.uses_tma(a, b)
    assert rel_err(module.kernel(a, b), a.double() @ b.double()) < tolerance("float16")


def test_the_tma_kernel_of_a_float32_problem_multiplies_at_its_precision():
    """The TMA kernel's dot named no precision, so Triton's tf32 default ran a float32 ieee problem's products
    (a config object passed to kt.build is checked on its axes, not by legality, which keeps TMA from float32)."""
    from kt.codegen import FAMILIES

    for precision in ("ieee", "tf32"):
        source = FAMILIES["gemm"].render(GemmProblem(64, 64, 64, dtype="float32", precision=precision), TMA)
        dots = [line for line in source.splitlines() if "tl.dot(" in line]
        assert len(dots) == 2 and all(f'input_precision="{precision}"' in line for line in dots), dots


@pytest.mark.parametrize("split_k, k", [(1, 64), (1, 0), (2, 64)])
def test_an_out_made_in_inference_mode_is_written_whatever_the_config(split_k, k):
    """A split's sum, K = 0's zero fill and an aliased out's copy are torch writes, which torch refuses into an
    inference tensor outside inference mode: whether such an out was taken hung on the config and the shape."""
    config = GemmConfig(16, 16, 16, group_m=1, num_warps=4, num_stages=2, split_k=split_k)
    module = gemm_module(GemmProblem(33, 17, 64, dtype="float32"), config)
    a, b = randn(33, k, dtype="float32", seed=1), randn(k, 17, dtype="float32", seed=2)
    with torch.inference_mode():
        out = torch.full((33, 17), float("nan"), device=DEVICE)
    assert module.kernel(a, b, out=out) is out
    assert rel_err(out, a.double() @ b.double()) < 1e-5 if k else not out.abs().sum()


def test_an_out_whose_strides_interleave_without_sharing_memory_is_written():
    """Strides (2, 3) over a (3, 2) out reach offsets 0, 2, 3, 4, 5 and 7, no two alike: refused as overlapping
    itself (torch.matmul takes it); checked exactly now where the quick test cannot tell. Strides that do
    share an offset are still refused."""
    module = gemm_module(
        GemmProblem(3, 2, 16, dtype="float32"), GemmConfig(16, 16, 16, group_m=1, num_warps=4)
    )
    a, b = randn(3, 16, dtype="float32", seed=1), randn(16, 2, dtype="float32", seed=2)
    storage = torch.full((16,), float("nan"), device=DEVICE)
    out = storage.as_strided((3, 2), (2, 3))
    assert module.kernel(a, b, out=out) is out
    assert rel_err(out, a.double() @ b.double()) < 1e-5 and storage.isnan().sum() == 10
    for shared in [
        storage.as_strided((3, 2), (2, 4)),
        storage.as_strided((3, 2), (1, 1)),
    ]:  # 4 twice; 1 twice
        with pytest.raises(ValueError, match="out overlaps itself"):
            module.kernel(a, b, out=shared)
