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
