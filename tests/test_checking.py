"""The checker every candidate passes before it is timed (kt.autotune.checking), and atomic_write, through which
every file kt writes goes: each test here failed on a deliberately broken copy of the code it guards."""

from __future__ import annotations

import types

import pytest
import torch

from kt.autotune.checking import check_kernel, relative_error
from kt.files import atomic_write
from kt.ir import GemmProblem
from kt.ir.problems import FFTProblem


def _module(kernel):
    return types.SimpleNamespace(kernel=kernel)


def test_a_complex_output_off_only_in_its_imaginary_part_is_refused():
    """An FFT kernel returning the conjugate of the transform has the right real part: the checker must see the
    imaginary part too (a checker that compared real parts passed it)."""
    problem = FFTProblem(8, 64, "float32", "complex")

    def conjugate_fft(x, out=None):
        out.copy_(torch.fft.fft(x).conj())
        return out

    def right_fft(x, out=None):
        out.copy_(torch.fft.fft(x))
        return out

    assert check_kernel(_module(right_fft), problem, seed=0, device="cpu").ok
    result = check_kernel(_module(conjugate_fft), problem, seed=0, device="cpu")
    assert not result.ok and "relative error" in result.message
    assert result.rel_err > 1.0  # the imaginary parts' error, sqrt(2) of the norm
    y = torch.randn(4, 8, dtype=torch.complex64)
    assert relative_error(y.conj(), y) > 0.5


@pytest.mark.parametrize("leave", ["a row", "nothing"])
def test_an_output_the_kernel_leaves_unwritten_or_adds_into_is_refused(leave):
    """The output starts poisoned (NaN): a kernel that skips a row, or accumulates into `out` as if it held zeros
    (a split-K design that forgets to clear it), fails, though either would pass on a zero-filled output."""
    problem = GemmProblem(64, 48, 32)

    def partial(a, b, out=None):
        product = a.float() @ b.float()
        if leave == "a row":
            out[1:] = product[1:]
        else:
            out += product
        return out

    result = check_kernel(_module(partial), problem, seed=0, device="cpu")
    assert not result.ok and "were not written" in result.message


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_tolerance_is_the_line_between_passing_and_failing(dtype):
    """Every element off by the same relative amount: half the dtype's tolerance passes, twice it fails with the
    figure named (each existing negative case was off by far more than the tolerance)."""
    problem = GemmProblem(64, 64, 64, dtype=dtype)
    limit = problem.tolerance()

    def scaled(factor):
        def kernel(a, b, out=None):
            reference = a.double() @ b.double()
            out.copy_(reference * (1 + factor * limit))
            return out

        return _module(kernel)

    passed = check_kernel(scaled(0.5), problem, seed=0, device="cpu")
    assert passed.ok and passed.rel_err == pytest.approx(0.5 * limit, rel=0.05 if dtype == "float32" else 0.6)
    failed = check_kernel(scaled(2.0), problem, seed=0, device="cpu")
    assert not failed.ok and f"over the {dtype} tolerance" in failed.message
    assert failed.rel_err == pytest.approx(2 * limit, rel=0.3)


def test_a_float32_kernel_that_sums_a_long_k_one_product_at_a_time_passes_its_check():
    """A GPU's float32 (ieee) dot is an FMA k-loop: its sum of K products is off by about 0.32 * 2**-24 *
    sqrt(K) of its size on random inputs. At K = 2**19 that is over the 1e-5 a float32 tolerance was, so a
    correct kernel of such a problem failed its check; the tolerance now grows as
    sqrt(K) past kt.dtypes.FP32_SUM products. Here the kernel emulates that loop exactly: each product exact in
    float64, each step rounded once to float32."""
    import numpy as np

    from kt import dtypes

    k = 1 << 19
    problem = GemmProblem(8, 8, k, dtype="float32")

    def kernel(a, b, out=None):
        a64, b64 = a.double().numpy(), b.double().numpy()
        acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
        for i in range(k):
            acc = (acc + np.multiply.outer(a64[:, i], b64[i])).astype(np.float32)
        out.copy_(torch.from_numpy(acc))
        return out

    result = check_kernel(_module(kernel), problem, seed=0, device="cpu")
    assert result.ok, result.message
    assert result.rel_err > dtypes.TOLERANCE["float32"]  # the tolerance before: it failed
    assert problem.tolerance() == pytest.approx(1e-5 * (k / dtypes.FP32_SUM) ** 0.5)
    assert GemmProblem(8, 8, dtypes.FP32_SUM, dtype="float32").tolerance() == dtypes.TOLERANCE["float32"]
    assert GemmProblem(8, 8, k).tolerance() == dtypes.TOLERANCE["float16"]  # the output's rounding dominates


def test_each_familys_float32_tolerance_follows_its_longest_sum():
    """The longest sum a stage computes for one output element (`reduction`): a weight gradient's rows, the
    fullest block-row's stored inputs, a chain's inner dims, a Monarch block's inputs, a butterfly stage's
    multiplied-out levels (2**8 at most), a DFT block's real inputs; a sum's longest term. Only float32 grows."""
    import numpy as np

    from kt.ir.problems import (
        BlockSparseProblem,
        BsrGradProblem,
        ButterflyProblem,
        ChainProblem,
        MonarchProblem,
        SumProblem,
    )
    from kt.sparsity import mask_to_hex

    mask = np.zeros((4, 64), dtype=bool)
    mask[1, :40] = mask[2, 3] = True  # block-row 1 holds 40 blocks of 16 columns: 640 inputs
    layout = mask_to_hex(mask)
    sparse = BlockSparseProblem(8, 1024, 64, (16, 16), layout, "float32")
    chain = ChainProblem(8, (16384, 64, 32), "float32")
    cases = {
        BsrGradProblem(1 << 18, 1024, 64, (16, 16), layout, "float32"): 1 << 18,
        sparse: 640,
        chain: 16384,
        MonarchProblem(8, (2, 8192, 4), (4, 3, 2), "float32"): 8192,
        ButterflyProblem(8, 1 << 20, "float32"): 256,
        FFTProblem(8, 4096): 8192,
        FFTProblem(8, 1 << 16): 2048,
        SumProblem((sparse, chain), "float32"): 16384,
    }
    for problem, longest in cases.items():
        assert problem.reduction == longest, problem
        roundings = np.sqrt(problem.max_roundings)
        assert problem.tolerance() == pytest.approx(1e-5 * max(1, (longest / 4096) ** 0.5) * roundings)
    half = BsrGradProblem(1 << 18, 1024, 64, (16, 16), layout, "float16")
    assert half.tolerance() == 2e-3


def test_atomic_write_leaves_the_old_file_whole_when_the_write_fails(tmp_path):
    """Interrupted halfway (Ctrl-C, a full disk), the file keeps its old content and no temporary file stays."""
    path = tmp_path / "table.csv"
    path.write_text("old,content\n1,2\n")

    def half_then_interrupt(handle):
        handle.write("new,conte")
        handle.flush()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_interrupt)
    assert path.read_text() == "old,content\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    atomic_write(path, lambda handle: handle.write("new\n"))
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_write_removes_temporaries_that_killed_writers_of_the_file_left_an_hour_ago(tmp_path):
    """A kill -9 mid-write left `.<name>.XXXXXXXX.tmp` beside the file for good (60 MB for a model cache's
    pickle). A live writer's (fresh) and another file's are left alone."""
    import os
    import time

    path = tmp_path / "a.csv"
    stale, fresh, other = (
        tmp_path / name for name in (".a.csv.3posnqf_.tmp", ".a.csv.1lc62b2p.tmp", ".a.csv.b.x1y2z3w4.tmp")
    )
    for temporary in (stale, fresh, other):
        temporary.write_text("half")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    atomic_write(path, lambda handle: handle.write("new\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.csv", fresh.name, other.name])
    # once per folder and process: a kernel cache's thousands of files were scanned on every write
    os.utime(fresh, (hours_ago, hours_ago))
    atomic_write(path, lambda handle: handle.write("again\n"))
    assert fresh.exists()


def test_atomic_write_takes_a_name_the_file_system_takes_however_long(tmp_path):
    """Its temporary file added 14 bytes to the name: a name of 242 to 255 bytes, which the file system takes,
    failed after the work was done with "File name too long (nothing can be written in its folder)". A
    temporary file of such a name that a killed writer left is still swept."""
    import os
    import time

    path = tmp_path / ("e" * 245 + ".csv")
    (tmp_path / "probe").write_text("")
    (tmp_path / "probe").rename(path)  # a name this file system takes
    stale = tmp_path / ("." + "e" * 200 + ".3posnqf_.tmp")
    stale.write_text("half")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    atomic_write(path, lambda handle: handle.write("new\n"))
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_write_that_fails_for_want_of_space_names_the_users_file(tmp_path):
    """A full disk fails the write itself, with an OSError that names no file: `kt export`, `kt import
    inductor`, `kt costmodel fit --out` and `kt replay --csv` printed only "kt: error: No space left on
    device". The error now names the file that was being written (the old one is left whole)."""
    import errno

    path = tmp_path / "t.csv"
    path.write_text("old\n")

    def full(handle):
        handle.write("new")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a flush to a full file system raises it

    with pytest.raises(OSError) as raised:
        atomic_write(path, full)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{path}'"
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_the_checker_catches_one_wrong_element_a_norm_would_miss():
    def nearly_right(a, b, out=None):
        out.copy_(a.float() @ b.float())
        out[3, 4] += 8.0  # one element off by about 8% of the largest result: 0.14% of the norm
        return out

    problem = GemmProblem(256, 256, 512)
    result = check_kernel(_module(nearly_right), problem, seed=0, device="cpu")
    assert not result.ok and "an element is off by" in result.message
    assert result.rel_err < 2e-3, "the Frobenius error alone would have passed it"


def test_a_kernel_that_writes_a_row_past_its_output_is_refused():
    """A generated GEMM whose store mask lets row M through (`<= M`) passed its check: the extra row landed in
    memory the check did not own (in float16, heap corruption in the interpreter; on a GPU another tensor).
    The check's `out` now sits between guards, which the stray row changes."""
    import kt
    from kt.codegen import load_source

    spec = {"op": "dense", "dtype": "float32", "shape": {"m": 40, "n": 24, "k": 16}}
    kernel = kt.build(spec, {"block_m": 16, "block_n": 16, "block_k": 16}, device="h100")
    problem = GemmProblem(40, 24, 16, dtype="float32")
    assert check_kernel(kernel.module, problem, seed=0, device="cpu").ok
    mask = "mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))"
    assert kernel.source.count(mask) == 1
    stray = load_source(kernel.source.replace(mask, mask.replace("< M", "<= M")), interpret=True)
    result = check_kernel(stray, problem, seed=0, device="cpu")
    assert not result.ok and result.message.startswith("the kernel wrote 24 elements outside `out`")


def test_the_reduced_gemm_problem_gives_m_n_and_k_different_sizes_where_the_problem_allows():
    """With equal tiles M, N and K were one size (49 x 49 x 49 for 32 x 32 x 32 tiles), so a kernel masking B's
    columns by K instead of N passed its check and was 0.4 off on the tuned problem."""
    from kt.codegen import family_for
    from kt.device import get_profile

    problem = GemmProblem(1000, 900, 800, dtype="float16")  # room for a tile more in each
    family = family_for(problem)
    legal = family.space(problem, get_profile("h100")).legal
    assert any(c.block_m == c.block_n == c.block_k for c in legal[::7])
    for config in legal[::7]:
        ragged = family.check_problems(problem, config)[0]
        assert len({ragged.m, ragged.n, ragged.k}) == 3, (config.key(), ragged)
        assert ragged.m % config.block_m and ragged.n % config.block_n


@pytest.mark.parametrize("fault", ["one element", "last rows", "NaN", "none"])
def test_a_fault_in_the_last_run_of_rows_is_caught(fault, monkeypatch):
    """The check compares a run of rows at a time, and counts non-finite elements a run at a time: a fault in
    the last of them, and only there, fails as it did when the whole output was compared at once."""
    import kt.autotune.checking as checking

    problem = GemmProblem(64, 48, 32, dtype="float32")
    monkeypatch.setattr(checking, "RUN_BYTES", 16 * (32 + 48) * 8)  # 8 rows a run, 640 elements a count

    def kernel(a, b, out=None):
        out.copy_(a.double() @ b.double())
        if fault == "one element":
            out[-1, -1] += 6 * problem.tolerance() * float(out.abs().max())  # a norm would pass it
        elif fault == "last rows":
            out[-8:] *= 1 + 8 * problem.tolerance()
        elif fault == "NaN":
            out[-1, -1] = float("nan")
        return out

    result = check_kernel(_module(kernel), problem, seed=0, device="cpu")
    expected = {
        "one element": "an element is off by",
        "last rows": "relative error",
        "NaN": "1 of 3072 output elements were not written",
        "none": "",
    }[fault]
    assert result.ok == (fault == "none") and result.message.startswith(expected), result.message
    if fault == "last rows":  # 8 of 64 rows off by 8 tolerances: the norm sees sqrt(8 / 64) of it
        assert result.rel_err == pytest.approx(8 * problem.tolerance() * (8 / 64) ** 0.5, rel=0.2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_reference_that_is_not_finite_fails_the_check_whatever_the_output(bad):
    """NaN > tolerance is False: a reference with one NaN (or inf, whose difference is NaN) passed every finite
    output, zeros included, with rel_err NaN. The check fails closed: the reference is named as wrong."""

    class Broken(GemmProblem):
        def reference(self, *args):
            y = super().reference(*args)
            y[0, 0] = bad
            return y

    def zeros(a, b, out=None):
        return out.zero_()

    result = check_kernel(_module(zeros), Broken(16, 8, 4, dtype="float32"), seed=0, device="cpu")
    assert not result.ok and result.message.startswith("the reference result is not finite"), result


@pytest.mark.parametrize("write", ["zeroed a", "scaled b", "bsr values", "bsr indices"])
def test_a_kernel_that_writes_into_its_inputs_is_refused(write):
    """The reference is computed from the arguments after the call: a kernel that zeroed its input and wrote
    zeros passed with error 0, and one that halved an input after using it passed as right (the audit's
    `a.zero_()` in a generated GEMM). Each argument is fingerprinted before the call and after it."""
    import numpy as np

    from kt.ir.problems import BlockSparseProblem
    from kt.sparsity import mask_to_hex

    if write.startswith("bsr"):
        mask = np.zeros((3, 4), dtype=bool)
        mask[0, 1] = mask[2, 0] = mask[2, 3] = True
        problem = BlockSparseProblem(5, 64, 48, (16, 16), mask_to_hex(mask), "float32")

        def kernel(x, w, out=None):
            out.copy_(torch.nn.functional.linear(x.double(), w.to_dense().double()))
            if write == "bsr values":
                w.values()[-1, -1, -1] += 1.0
            else:
                w.col_indices()[0] = 0
            return out

    else:
        problem = GemmProblem(40, 24, 16, dtype="float32", b_layout="col")  # b a transposed view

        def kernel(a, b, out=None):
            if write == "zeroed a":
                a.zero_()
            out.copy_(a.double() @ b.double())
            if write == "scaled b":
                b.mul_(0.5)
            return out

    result = check_kernel(_module(kernel), problem, seed=0, device="cpu")
    assert not result.ok and result.message.startswith("the kernel wrote into its input: argument"), result
    assert ("argument 2 of 2" in result.message) == (write != "zeroed a")


def test_an_arguments_fingerprint_is_the_same_in_any_pieces_and_sees_two_elements_swapped(monkeypatch):
    """The fingerprint sums PRINT_ELEMENTS at a time, in any strides: pieces of any size give the same sums, and
    two elements swapped (whose plain sum is unchanged) change the weighted one."""
    import kt.autotune.checking as checking

    x = torch.randn(7, 5, 3).transpose(0, 2)  # no view of it is flat
    whole = checking.fingerprint(x)
    for elements in (1, 4, 5, 16, 34):
        monkeypatch.setattr(checking, "PRINT_ELEMENTS", elements)
        assert checking.fingerprint(x) == whole
        assert checking.fingerprint(torch.complex(x, -x)) == checking.fingerprint(
            torch.complex(x, -x).clone()
        )
    swapped = x.clone()
    swapped[0, 0, 0], swapped[1, 2, 3] = x[1, 2, 3], x[0, 0, 0]
    assert checking.fingerprint(swapped)[0] == whole[0] and checking.fingerprint(swapped) != whole


def test_a_replaced_file_keeps_its_owner_and_a_read_only_one_is_refused_before_the_work(tmp_path):
    """atomic_write kept a replaced file's mode but not its owner and group (a shared group-writable file came
    back the writer's); check_writable let a read-only file through, which atomic_write then refused after the
    work (a fit, an export)."""
    import os
    import sys

    from conftest import run_as_user

    from kt.files import atomic_write_text

    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    shared = tmp_path / "shared.csv"
    shared.write_text("old\n")
    os.chown(shared, 65534, 65534)
    shared.chmod(0o664)
    atomic_write_text(shared, "new\n")
    info = shared.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777, shared.read_text()) == (
        65534,
        65534,
        0o664,
        "new\n",
    )
    frozen = tmp_path / "frozen.csv"
    frozen.write_text("x\n")
    frozen.chmod(0o444)
    code = f"from kt.files import check_writable; check_writable({str(frozen)!r}, 'csv')"
    done = run_as_user([sys.executable, "-c", code])
    assert done.returncode == 1 and "KtError: csv: " in done.stderr and "the file is read-only" in done.stderr


def test_a_quoted_or_relative_xdg_cache_home_is_not_a_folder_in_the_current_one(monkeypatch, tmp_path):
    """XDG_CACHE_HOME='~/.cache' (a quoted setting) made a folder named ~ in the current folder, and a relative
    one moved kt's cache with it; the first is the home folder's, the second ignored (as the XDG spec says)."""
    from pathlib import Path

    from kt.files import cache_dir

    monkeypatch.delenv("KT_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for value, expected in (
        ("~/.cache", tmp_path / ".cache"),
        ("cache", tmp_path / ".cache"),
        ("/x", Path("/x")),
    ):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert cache_dir() == expected / "kt", value


def test_files_kt_writes_are_utf_8_whatever_the_locale(tmp_path):
    """atomic_write (every export, report and kernel source) and an artifact's files took the locale's encoding:
    `kt export` under LC_ALL=C raised UnicodeEncodeError on a non-ASCII message (under Latin-1 it wrote a file
    kt's own reader refused as not UTF-8)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from kt.files import atomic_write_text; "
        "from kt.autotune.artifact import _write; "
        "atomic_write_text(sys.argv[1], 'caf\\u00e9 \\u2192 \\u65e5'); _write(Path(sys.argv[2]), '\\u00e9')"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-c", script, str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.txt").read_bytes() == "caf\u00e9 \u2192 \u65e5".encode()
    assert (tmp_path / "b.txt").read_bytes() == "\u00e9".encode()
