"""kt from several threads at once: importing one kernel, running interpreted kernels, loading an artifact while
`kt tune` replaces it. Each failure here was seen by a user's script first (a layer's first forward from a thread
pool, a server reloading artifacts)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import kt
from kt.autotune import artifact
from kt.autotune.artifact import save_artifact
from kt.codegen import load_source
from kt.codegen.compat import triton_interpret


def test_threads_importing_one_kernel_all_get_it_whole():
    """The module was in sys.modules before its code ran: a second thread got it without `kernel` (7 of 15
    runs of eight threads on a layer's first forward: AttributeError ... no attribute 'IMPLEMENTATION')."""
    source = f"# {uuid.uuid4()}\nimport time\ntime.sleep(0.3)\nkernel = 'whole'\n"  # a new module each run
    start = threading.Barrier(6)

    def load(_):
        start.wait()
        return getattr(load_source(source, interpret=False), "kernel", "half made")

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(load, range(6))) == ["whole"] * 6


def test_switching_the_interpreter_from_two_threads_leaves_the_environment_as_it_was(monkeypatch):
    """Each switch saved what it saw and put it back: a switch that began inside another's restored the other's
    TRITON_INTERPRET=1 after it, for the rest of the process (kernels imported later ran interpreted)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    first_in = threading.Event()

    def first():
        with triton_interpret(True):
            first_in.set()
            time.sleep(0.3)

    def second():
        first_in.wait()
        with triton_interpret(True):
            time.sleep(0.5)  # outlasts the first

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "TRITON_INTERPRET" not in os.environ


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.parametrize("held", ["launch", "import"])
def test_a_fork_while_another_thread_runs_an_interpreted_kernel_gives_a_child_that_can_run_one(
    held, monkeypatch
):
    """A DataLoader worker forked while another thread ran an interpreted kernel inherited INTERPRETER_LOCK held
    by a thread it does not have (and TRITON_INTERPRET as the launch set it): its first kernel waited forever
    (4 of 4 runs). The fork now waits for the launch (or the kernel import) to end."""
    from kt.codegen import emit
    from kt.codegen.compat import INTERPRETER_LOCK

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inside, done = threading.Event(), threading.Event()

    def busy():  # the two locks as a launch (triton_interpret) and a kernel import hold them
        with triton_interpret(True) if held == "launch" else emit._IMPORT_LOCK:
            inside.set()
            time.sleep(0.5)
        done.set()

    thread = threading.Thread(target=busy)
    thread.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:  # the child: both locks free, the environment as it was before the launch
        free = all(lock.acquire(timeout=5) for lock in (emit._IMPORT_LOCK, INTERPRETER_LOCK))
        os._exit(0 if free and "TRITON_INTERPRET" not in os.environ else 1)
    assert done.is_set(), "the fork did not wait for the other thread to let go"
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_sharing_an_interpreted_kernel_get_the_single_thread_results(monkeypatch):
    """Triton's interpreter keeps global state: threads at once failed inside it ('Did you forget to add
    @triton.jit ?', 'x >= grid_dim[0]')."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = kt.parse_spec({"op": "dense", "shape": {"m": 24, "n": 40, "k": 32}, "dtype": "float32"})
    kernel = kt.build(spec, {"block_m": 16, "block_n": 16, "block_k": 16})
    shapes = [(24 + 8 * i, 32) for i in range(6)]  # other grids per thread
    args = [(torch.randn(m, k), torch.randn(k, 40)) for m, k in shapes]
    alone = [kernel(a, b) for a, b in args]
    start = threading.Barrier(len(args))

    def run(i):
        start.wait()
        return [kernel(*args[i]) for _ in range(2)]

    with ThreadPoolExecutor(len(args)) as pool:
        together = list(pool.map(run, range(len(args))))
    for i, results in enumerate(together):
        for result in results:
            assert torch.equal(result, alone[i])
    assert "TRITON_INTERPRET" not in os.environ


def _tuned(tmp_path, block_m):
    spec = kt.parse_spec(
        {
            "name": "same",
            "op": "dense",
            "dtype": "float16",
            "shape": {"m": 24, "n": 40, "k": 32},
            "tune": {"configs": [{"block_m": block_m, "block_n": 16, "block_k": 16}]},
        }
    )
    return kt.tune(spec, backend="interpret", db=tmp_path / "t.db", progress=False, baseline=False, workers=1)


def test_an_artifact_replaced_while_it_loads_loads_as_one_version(tmp_path, monkeypatch):
    """meta.json, then kernel.py, then kernel.py again were read by path: a replace between the reads gave a
    false 'does not match the checksum' (412 of 2,270 loads beside a replacing loop), or a Kernel whose config
    was one version's and whose module the other's (258)."""
    target, other = tmp_path / "art" / "same", tmp_path / "art" / "other"
    save_artifact(_tuned(tmp_path, 16), target)
    save_artifact(_tuned(tmp_path, 32), other)
    real_loads = json.loads
    swapped = []

    def swap_then_parse(text, *args, **kwargs):  # the other version arrives just after meta.json was read
        if not swapped:
            artifact._exchange(target, other)
            swapped.append(True)
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(artifact.json, "loads", swap_then_parse)
    loaded = kt.load(target)
    assert swapped
    assert loaded.config.block_m == loaded.module.BLOCK_M == 16  # the version opened, whole
    monkeypatch.setattr(artifact.json, "loads", real_loads)
    again = kt.load(target)  # the folder there now holds the other version
    assert again.config.block_m == again.module.BLOCK_M == 32


def test_an_artifact_saved_again_while_it_loads_loads(tmp_path, monkeypatch):
    """A save of the same artifact removes the old folder right after the exchange: a loader that had opened
    it found its files gone ("has no meta.json; it was not written by `kt tune`", 74 of 20,373 loads beside a
    saving loop)."""
    target = tmp_path / "art" / "same"
    result = _tuned(tmp_path, 16)
    save_artifact(result, target)
    real_open = os.open
    saved = []

    def open_then_save(
        path, flags, *args, **kwargs
    ):  # the save lands just after the loader opened the folder
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_DIRECTORY and not saved:
            saved.append(True)
            save_artifact(result, target)
        return fd

    monkeypatch.setattr(artifact.os, "open", open_then_save)
    loaded = kt.load(target)
    assert saved and loaded.config.block_m == loaded.module.BLOCK_M == 16


def test_the_kept_previous_artifact_is_whole_at_every_moment_of_a_save(tmp_path, monkeypatch):
    """The save removed the older `<name>.prev` in place before renaming the replaced artifact there: a kill -9
    during the removal (1 of 14 racing kills) left a `.prev` without its files, which every later save refused
    as "a folder kt did not keep there". A dead save's hidden staging folders are removed by the next save."""
    target = tmp_path / "art" / "same"
    previous = artifact.previous_path(target)
    save_artifact(_tuned(tmp_path, 16), target)
    save_artifact(_tuned(tmp_path, 32), target)  # 16's artifact kept as .prev
    dead = target.with_name(".same.tmp-killed")  # what a killed save leaves
    dead.mkdir()
    (dead / "meta.json").write_text("{}")
    real_rmtree = artifact.shutil.rmtree
    removed = []

    def check_then_remove(path, *args, **kwargs):
        removed.append(Path(path).name)
        assert Path(path) != previous, "the kept artifact was removed in place"
        assert artifact.kept_artifact(previous) and (previous / "kernel.py").is_file()
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(artifact.shutil, "rmtree", check_then_remove)
    save_artifact(_tuned(tmp_path, 16), target)  # 32's artifact replaces 16's as .prev
    assert removed and kt.load(previous).config.block_m == 32 and kt.load(target).config.block_m == 16
    assert sorted(p.name for p in target.parent.iterdir()) == ["same", "same.prev"]


def test_two_saves_of_a_new_artifact_at_once_both_land(tmp_path, monkeypatch):
    """Both saw no artifact there and renamed their staging folder onto the name: the second failed with
    "OSError: [Errno 39] Directory not empty" (2 of 200 racing pairs), and wrote nothing."""
    target = tmp_path / "art" / "same"
    ours, theirs = _tuned(tmp_path, 16), _tuned(tmp_path, 32)
    real_replace = os.replace
    raced = []

    def the_other_save_first(src, dst, *args, **kwargs):
        if not raced and Path(dst) == target:
            raced.append(True)
            save_artifact(theirs, target)  # lands between our check and our rename
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(artifact.os, "replace", the_other_save_first)
    path, report = artifact.save_artifact_report(ours, target)
    assert (
        raced and path == target and report.startswith("replaced the artifact there (spec and config differ)")
    )
    assert kt.load(target).config.block_m == 16
    assert kt.load(tmp_path / "art" / "same.prev").config.block_m == 32
    assert sorted(p.name for p in target.parent.iterdir()) == ["same", "same.prev"]


@pytest.mark.parametrize("name", ["kernel.py", "meta.json"])
def test_an_artifact_missing_a_file_is_named(tmp_path, name):
    target = tmp_path / "art" / "same"
    save_artifact(_tuned(tmp_path, 16), target)
    (target / name).unlink()
    # its other file is kt's: "it was not written by `kt tune`" was not true of it
    with pytest.raises(kt.ArtifactError, match=f"has no {name}; a copy or a removal cut it short; re-run"):
        kt.load(target)


_FIRST_USE = """
import sys, threading
import kt

dense = {"op": "dense", "dtype": "float32", "shape": {"m": 16, "n": 16, "k": 16}}
config = {"block_m": 16, "block_n": 16, "block_k": 16, "num_warps": 4, "num_stages": 2}
lowrank = {"op": "lowrank", "dtype": "float32", "shape": {"batch": 16, "dims": [16, 16, 16]}}
start, errors = threading.Barrier(2), []

def run(work):
    try:
        start.wait()
        work()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")

threads = [
    threading.Thread(target=run, args=(lambda: kt.build(dense, config),)),  # imports a kernel: triton.language
    threading.Thread(target=run, args=(lambda: kt.build(lowrank),)),  # ranked: triton_version, import triton
]
[t.start() for t in threads]
[t.join() for t in threads]
kernel = kt.build(dense, config)
kernel(*kt.random_args(dense))
print("errors:", errors)
"""


def test_two_threads_first_importing_triton_at_once_both_get_it_whole(tmp_path):
    """One thread's first kernel import (`import triton.language`) beside another's first `import triton`
    (triton_version, as a build's ranking asks it): each got a partially initialized module, and every later
    kernel call in the process failed on "module 'triton' has no attribute 'runtime'" (4 of 4 runs). A fresh
    process each time: this one imported Triton long ago."""
    import subprocess
    import sys

    env = {**os.environ, "KT_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _FIRST_USE], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "errors: []", done.stdout
