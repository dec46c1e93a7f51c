"""kt trims the Triton compile cache its workers fill (`<kt cache>/triton`): every kernel a tune compiles left an
entry of hundreds of KB there for good, GBs after a `kt collect --all`. And the kernels it generates
(`<kt cache>/kernels`): about 15 KB each, with their bytecode, kept for good."""

import os
import subprocess
import sys
import time

import pytest

from kt.errors import KtError
from kt.files import (
    TRIMMED,
    TRITON_CACHE_GRACE_S,
    kernel_cache_limit,
    trim_kernel_cache,
    trim_triton_cache,
    triton_cache_limit,
)

MB = 1 << 20


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """kt's own Triton cache folder (the suite sets TRITON_CACHE_DIR, which kt never trims)."""
    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "kt"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("KT_TRITON_CACHE_MB", raising=False)
    monkeypatch.delenv("KT_KERNEL_CACHE_MB", raising=False)
    root = tmp_path / "kt" / "triton"
    root.mkdir(parents=True)
    return root


def entry(root, name, size, age_s):
    """An entry folder as Triton writes one (its files, then the folder's time, its last write), `age_s` old."""
    folder = root / name
    folder.mkdir()
    (folder / "k.cubin").write_bytes(b"\0" * (size - 100))
    (folder / "k.json").write_bytes(b"{" * 100)
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


def test_the_least_recently_written_entries_go_until_the_cache_is_under_its_limit(cache):
    hour = TRITON_CACHE_GRACE_S
    oldest, old, newer = (
        entry(cache, n, 2 * MB, a) for n, a in [("A", 5 * hour), ("B", 3 * hour), ("C", 2 * hour)]
    )
    running = entry(cache, "D", 2 * MB, hour / 2)  # a running tune's: kept over the limit
    (cache / "loose").write_bytes(b"\0" * MB)  # no entry of Triton's: left
    assert trim_triton_cache(5 * MB) == 2 * 2 * MB
    assert not oldest.exists() and not old.exists() and newer.exists() and running.exists()
    assert (cache / "loose").exists() and (cache / TRIMMED).exists()
    # once an hour at most: a second trim within it scans nothing
    assert trim_triton_cache(1) == 0 and newer.exists()
    # over an hour on: trimmed again, the least recently written first
    later = time.time() + hour * 1.25
    assert trim_triton_cache(5 * MB // 2, now=later) == 2 * MB and not newer.exists() and running.exists()


def test_a_cache_under_its_limit_or_the_users_own_is_left_whole(cache, tmp_path, monkeypatch):
    kept = entry(cache, "A", 2 * MB, 10 * TRITON_CACHE_GRACE_S)
    assert trim_triton_cache(3 * MB) == 0 and kept.exists()
    (cache / TRIMMED).unlink()
    assert trim_triton_cache(None) == 0 and kept.exists()  # KT_TRITON_CACHE_MB=unlimited
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))  # the user's: theirs to keep
    assert trim_triton_cache(1) == 0 and kept.exists()
    monkeypatch.delenv("TRITON_CACHE_DIR")
    monkeypatch.setenv("KT_CACHE_DIR", str(tmp_path / "elsewhere"))  # no Triton cache yet: nothing to do
    assert trim_triton_cache(1) == 0


SETTINGS = [("KT_TRITON_CACHE_MB", triton_cache_limit, 4096), ("KT_KERNEL_CACHE_MB", kernel_cache_limit, 512)]


@pytest.mark.parametrize("setting, limit_of, default", SETTINGS)
@pytest.mark.parametrize(
    "value, limit",
    [(None, "default"), ("", "default"), ("100", 100 * MB), (" 7 ", 7 * MB), ("Unlimited", None)],
)
def test_the_cache_sizes_are_sizes_in_mb_or_unlimited(setting, limit_of, default, value, limit, monkeypatch):
    monkeypatch.delenv("KT_TRITON_CACHE_MB", raising=False)
    monkeypatch.delenv("KT_KERNEL_CACHE_MB", raising=False)
    if value is not None:
        monkeypatch.setenv(setting, value)
    assert limit_of() == (default * MB if limit == "default" else limit)


@pytest.mark.parametrize("setting, limit_of, default", SETTINGS)
@pytest.mark.parametrize("value", ["0", "-5", "1.5", "2GB", "none", "²"])  # '²' isdigit(), and int() raised
def test_a_cache_size_that_is_no_size_is_named(setting, limit_of, default, value, monkeypatch):
    monkeypatch.setenv(setting, value)
    with pytest.raises(
        KtError, match=rf"^{setting}: '{value}' is no size; give .* \(default {default}\), or 'unlimited'$"
    ):
        limit_of()


def kernel(root, name, size, age_s, compiled=()):
    """A generated kernel as kt writes one, `k_<name>.py`, with the bytecode of each Python tag in `compiled`
    in `__pycache__`, all last written `age_s` ago."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"k_{name}.py"]
    paths[0].write_bytes(b"#" * size)
    for tag in compiled:
        (root / "__pycache__").mkdir(exist_ok=True)
        paths.append(root / "__pycache__" / f"k_{name}.{tag}.pyc")
        paths[-1].write_bytes(b"\0" * 1000)
    then = time.time() - age_s
    for path in paths:
        os.utime(path, (then, then))
    return paths


def test_the_least_recently_used_kernels_go_with_their_bytecode_until_the_folder_is_under_its_limit(cache):
    hour = TRITON_CACHE_GRACE_S
    root = cache.parent / "kernels"
    oldest = kernel(root, "a", MB, 5 * hour, ["cpython-311", "cpython-312"])
    newer = kernel(root, "b", MB, 3 * hour, ["cpython-311"])
    running = kernel(root, "c", MB, hour / 2)  # used in the last hour: kept over the limit
    orphan = root / "__pycache__" / "k_d.cpython-311.pyc"  # its module gone: the bytecode goes alone
    orphan.write_bytes(b"\0" * MB)
    os.utime(orphan, (time.time() - 9 * hour,) * 2)
    (root / "notes.py").write_bytes(b"#" * MB)  # no kernel of kt's: left
    assert trim_kernel_cache(1) == MB + (MB + 2000) + (MB + 1000)  # the oldest first, over the limit
    assert not any(p.exists() for p in [orphan, *oldest, *newer]) and (root / TRIMMED).exists()
    assert all(p.exists() for p in [*running, root / "notes.py"])  # in use, and not kt's
    assert trim_kernel_cache(1) == 0  # once an hour at most
    later = time.time() + 2 * hour
    assert trim_kernel_cache(None, now=later) == 0 and running[0].exists()  # KT_KERNEL_CACHE_MB=unlimited
    assert trim_kernel_cache(3 * MB, now=later) == 0 and running[0].exists()  # under its limit
    (root / TRIMMED).unlink()
    assert trim_kernel_cache(1, now=later) == MB and not running[0].exists()


def test_a_kernel_handed_out_is_used_again_and_a_trimmed_one_is_written_again(cache):
    """write_source refreshes a module's time (the trim goes by it) and writes one the trim removed."""
    from kt.codegen.emit import load_source, write_source

    source = "VALUE = 41 + 1\n"
    path = write_source(source)
    then = time.time() - 5 * TRITON_CACHE_GRACE_S
    os.utime(path, (then, then))
    assert write_source(source) == path and path.stat().st_mtime > then + TRITON_CACHE_GRACE_S
    os.utime(path, (then, then))
    assert trim_kernel_cache(1) == len(source) and not path.exists()
    assert load_source(source).VALUE == 42 and path.read_text() == source


def test_kts_workers_compile_into_the_cache_it_trims_and_a_pool_trims_it_as_it_starts(cache, monkeypatch):
    """The workers' compiles are entry folders in `<kt cache>/triton` (Triton's layout, which the trim reads);
    a new pool removes the old ones beyond KT_TRITON_CACHE_MB, and a worker compiles again after them."""
    import kt
    from kt.autotune.runners import compile_builds, compile_pool
    from kt.autotune.tune import generated_candidate

    monkeypatch.setenv("KT_TRITON_CACHE_MB", "1")
    monkeypatch.setenv("KT_KERNEL_CACHE_MB", "1")
    stale = entry(cache, "STALE", 2 * MB, 10 * TRITON_CACHE_GRACE_S)
    stale_kernels = kernel(
        cache.parent / "kernels", "stale", 2 * MB, 10 * TRITON_CACHE_GRACE_S, ["cpython-311"]
    )
    plan = kt.plan(
        {"name": "tiny", "op": "dense", "dtype": "float16", "shape": {"m": 24, "n": 40, "k": 32}}, budget=1
    )
    jobs = [(generated_candidate(plan.problem, plan.config(plan.ranked[0])), plan.space.device)]
    with compile_pool(workers=1) as pool:
        assert not stale.exists() and not any(p.exists() for p in stale_kernels)
        (built,) = compile_builds(jobs, pool)
    assert built.status == "ok", built.message
    compiled = [p for p in cache.iterdir() if p.is_dir()]
    assert compiled and all(any(f.suffix == ".cubin" for f in p.iterdir()) for p in compiled)
    then = time.time() - 2 * TRITON_CACHE_GRACE_S
    for folder in compiled:  # its compiles, hours on, beside another tune's running now
        os.utime(folder, (then, then))
    running = entry(cache, "RUNNING", 2 * MB, 0)
    (cache / TRIMMED).unlink()
    with compile_pool(workers=1) as pool:
        assert not any(p.exists() for p in compiled) and running.exists()
        (again,) = compile_builds(jobs, pool)
    assert again.status == "ok", again.message


@pytest.mark.parametrize("setting", ["KT_TRITON_CACHE_MB", "KT_KERNEL_CACHE_MB"])
def test_a_cache_size_that_is_no_size_is_refused_before_a_tune(setting, tmp_path):
    spec = tmp_path / "op.yaml"
    spec.write_text("op: dense\nname: s\nshape: {m: 16, n: 16, k: 16}\n")
    env = {**os.environ, setting: "2GB", "KT_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-m", "kt.cli", "tune", str(spec), "--out", str(tmp_path / "art"), "--budget", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith(f"kt: error: {setting}: '2GB' is no size")
    assert len(done.stderr.splitlines()) == 1 and not (tmp_path / "art").exists(), done.stderr


def test_a_kernel_used_by_another_process_during_a_trim_is_kept(cache, monkeypatch):
    """The trim read every entry's time once, then removed the old ones: a module another process took in
    between (write_source refreshes its time) was removed under it. Each entry's time is read again as it goes."""
    import kt.files as files
    from kt.codegen.emit import import_kernel_file, write_source

    source = "VALUE = 42\n"
    path = write_source(source)
    then = time.time() - 3 * TRITON_CACHE_GRACE_S
    os.utime(path, (then, then))
    scan = files._kernel_entries

    def racing(listing):
        entries = scan(listing)
        write_source(source)  # another process takes the kernel mid-trim
        return entries

    monkeypatch.setattr(files, "_kernel_entries", racing)
    assert trim_kernel_cache(1) == 0 and import_kernel_file(path).VALUE == 42


def test_a_cache_folder_no_home_can_expand_is_an_oserror_kt_load_falls_back_from_and_a_tune_names(
    tmp_path, monkeypatch
):
    """'~nosuchuser/kt' (or no home folder at all, a container's uid without a passwd entry) raised a
    RuntimeError: kt.load blamed the artifact's kernel.py and said to re-run `kt tune`."""
    from kt.codegen.emit import load_source
    from kt.errors import KtError
    from kt.files import check_cache_dir

    monkeypatch.setenv("KT_CACHE_DIR", "~no-such-user-of-kt/kt")
    assert load_source("VALUE = 43\n").VALUE == 43  # from this process's temporary folder
    with pytest.raises(KtError, match=r"^KT_CACHE_DIR: Could not determine home directory"):
        check_cache_dir()
