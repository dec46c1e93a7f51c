import ast
import importlib.util
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

# One OpenMP thread per process. The suite runs one xdist worker more than the CPUs (pytest_xdist_auto_num_workers),
# and each worker's torch ops and numpy's BLAS (the interpreter's dots) spread over every core: their threads spun
# waiting for threads of other workers that were not running. On the 2-core machine (2026-12-07), test_nn_cpu,
# test_portable and test_sparse_kernels with three workers took 226 s (199 CPU-seconds) with torch's two threads
# each and 142 s (141) with one; a Monarch layer's 23 timed steps took 30 s in a full run, 0.6 s alone; the whole
# suite 706 s with one, against 844 s at 9c95bdd (other work on the machine in both runs). Set
# before torch is imported, so the processes the tests start (kt's CLI, its workers, Ray's actors) inherit it;
# a value the caller set is kept. kt's workers take a set OMP_NUM_THREADS as the user's (kt.autotune.worker):
# the test of their own share of the CPUs unsets it (test_pool).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from kt.codegen import FAMILIES, GemmConfig, load_source  # noqa: E402
from kt.ir import GemmProblem  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def kt_home(tmp_path_factory):
    """Every test run gets its own kernel cache and default database, never the user's."""
    home = tmp_path_factory.mktemp("kt-home")
    os.environ["KT_CACHE_DIR"] = str(home)
    os.environ["KT_DB"] = str(home / "tuning.db")
    (home / "no-models").mkdir()
    os.environ["KT_MODELS_DIR"] = str(home / "no-models")  # see shipped_models
    # Triton's compile cache: one for the run, shared by pytest-xdist's workers (Triton writes each entry
    # atomically, as for torch.compile's parallel workers), so a kernel two test files build compiles once;
    # never the user's ~/.triton. A worker's basetemp is a folder of the run's.
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    os.environ["TRITON_CACHE_DIR"] = str(run / "triton-cache")
    return home


@pytest.fixture(autouse=True)
def shipped_models(request, monkeypatch):
    """kt's own forests (kt/costmodel/models) rank only in tests marked `shipped_models`: everywhere else,
    fixtures of any scope included, KT_MODELS_DIR points at an empty folder (set for the session in kt_home),
    so a test of the tune loop, the CLI or kt.nn sees the analytic model it was written for (as a device without
    a shipped model does), and no test loads a 20 MiB forest it does not need."""
    if request.node.get_closest_marker("shipped_models") is not None:
        monkeypatch.delenv("KT_MODELS_DIR", raising=False)


# The README's `-n auto --dist loadfile` hands each worker whole files. pytest-xdist would hand out the files with
# the most tests first, and some of the slowest hold few tests (test_ray: 18 tests, minutes), so one worker ran a
# slow file alone at the end. The slowest files go first instead, longest first (a longest-first schedule), then
# the rest in xdist's own order. Seconds per file, summed over its tests from `--junitxml` of the whole suite at
# 2e2bc5f on the 2-core CI-like machine with three workers (2026-12-07, pytest 608 s). A stale or missing figure
# only costs speed: files not listed run after these.
SLOW_FILES = {
    "test_nn.py": 180,
    "test_ray.py": 127,
    "test_compile_target.py": 126,
    "test_portable.py": 108,
    "test_cli.py": 81,
    "test_sparse_kernels.py": 76,
    "test_examples.py": 72,
    "test_costmodel_cli.py": 72,
    "test_nn_cpu.py": 64,
    "test_bench_cli.py": 62,
    "test_frictions.py": 60,
    "test_tune.py": 60,
    "test_bench_scripts.py": 52,
    "test_tune_loop.py": 51,
    "test_structured_kernels.py": 50,
    "test_replay_spaces.py": 41,
    "test_pool.py": 33,
    "test_bench_structured.py": 29,
    "test_transposed.py": 26,
    "test_measure_path.py": 26,
}


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (`-p no:xdist`) has no such hook
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the CPUs. The suite waits much of its time (Ray's cluster, kt's worker
    processes starting, tunes stopped mid-run, the signal tests). On the 2-core CI-like machine (2026-12-06):
    two workers 922 s at 281dedd; with the space cache of the next commit three 796 s, 1,044 CPU-seconds in
    799 s (1.3 CPUs busy), and four 771 s, and two Ray tests failed, their restarted actors' checks past the
    tests' short timeouts. At 7cd6a65 (2026-12-07): three 585 s, four 595 s. With one OpenMP thread per process
    (OMP_NUM_THREADS, above), the 2-core AMD EPYC machine's suite took 706 s with three, 844 s before."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus + 1


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems gives


def _file_of(item) -> str:
    return item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _schedule_order(items):
    """Items of the SLOW_FILES first (slowest file first), then the other files by number of tests (most
    first, xdist's own rule); each file's tests keep their order."""
    count: dict[str, int] = {}
    for item in items:
        count[_file_of(item)] = count.get(_file_of(item), 0) + 1
    return sorted(
        items, key=lambda item: (-SLOW_FILES.get(_file_of(item), 0), -count[_file_of(item)], _file_of(item))
    )


def pytest_collection_modifyitems(config, items):
    items[:] = _schedule_order(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# A dense op whose tune.space holds 15 legal configs that are 7 distinct programs (group_m twins): a budget over
# them is capped, and a rerun finds nothing new to run
SEVEN_PROGRAMS = {
    "op": "dense",
    "dtype": "float16",
    "shape": {"m": 32, "n": 32, "k": 32},
    "tune": {
        "space": {
            "block_m": [16],
            "block_n": [16, 32],
            "block_k": [16],
            "num_warps": [4],
            "num_stages": [2],
            "split_k": [1],
        }  # fmt: skip
    },
}


def kernel_module(problem, config):
    """The generated module for (problem, config) of any family, imported for this machine (interpreter without a
    GPU)."""
    return load_source(FAMILIES[problem.family].render(problem, config))


def unused_in_source(source: str) -> list[str]:
    """What a reader of a generated module would strike out: an import never used, a module-level function that
    nothing calls or names (`kernel`, the module's entry point, aside), a local assigned and never read, and a
    run of more than two blank lines."""
    tree = ast.parse(source)
    loads = Counter(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
    found = ["three blank lines in a row"] if "\n\n\n\n" in source else []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [f"import {a.name}" for a in node.names if not loads[(a.asname or a.name).split(".")[0]]]
        elif isinstance(node, ast.FunctionDef) and node.name != "kernel":
            own = sum(isinstance(n, ast.Name) and n.id == node.name for n in ast.walk(node))  # its recursion
            if loads[node.name] == own:
                found.append(f"def {node.name}")
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        names = [n for n in ast.walk(function) if isinstance(n, ast.Name)]
        stored = {n.id for n in names if isinstance(n.ctx, ast.Store)}
        read = {n.id for n in names if isinstance(n.ctx, ast.Load)}
        found += [f"{function.name}: {name} is never read" for name in sorted(stored - read)]
    return found


def block_config(problem, block_b=16, block_n=16, block_k=16, group=None, num_warps=None, **structure):
    """A legal block-GEMM config (asserted): 4 warps unless given; two blocks per program unless given, one for
    the float32 FFT and where every launch is one block."""
    from kt.codegen.blockgemm import BlockGemmConfig, illegal_reason, stages_for
    from kt.device import get_profile

    if group is None:  # (one when every launch is a single block: a second would run masked)
        one = problem.family == "fft" and problem.dtype == "float32"
        probe = BlockGemmConfig(block_b, block_n, block_k, 1, num_warps or 4, 2, **structure)
        group = 1 if one or max(s.nblocks for s in stages_for(problem, probe)) == 1 else 2

    warps = num_warps or 4
    c = BlockGemmConfig(block_b, block_n, block_k, group, warps, 2, **structure)
    reason = illegal_reason(problem, c, get_profile("h100"), stages_for(problem, c))
    assert reason is None, reason
    return c


def gemm_module(problem: GemmProblem, config: GemmConfig):
    return kernel_module(problem, config)


class LargestTensor(TorchDispatchMode):
    """The most elements any dense tensor an aten op returned held (sparse results not counted), of `dtypes`
    alone where given: how much memory a computation held at once, by its largest tensor."""

    def __init__(self, dtypes: tuple[torch.dtype, ...] | None = None):
        super().__init__()
        self.dtypes, self.numel = dtypes, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            dense = isinstance(t, torch.Tensor) and t.layout == torch.strided
            if dense and (self.dtypes is None or t.dtype in self.dtypes):
                self.numel = max(self.numel, t.numel())
        return out


def randn(*shape, seed, dtype=torch.float64):
    """Standard-normal values from their own generator seeded with `seed` (CPU)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_close(actual, expected, tol=1e-10):
    """Max abs error within `tol` of the largest |expected| (at least 1)."""
    err = (actual - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    assert err <= tol * scale, f"max abs error {err:.3g} (scale {scale:.3g})"


def poisoned(shape, dtype):
    """A NaN-filled tensor: an output buffer whose unwritten elements show."""
    return torch.full(shape, float("nan"), dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)


def run_poisoned(module, problem, args):
    """The kernel's output written into a NaN-poisoned `out`, checked to be that tensor and finite."""
    out = poisoned(problem.out_type().shape, problem.dtype)
    assert module.kernel(*args, out=out) is out
    assert torch.isfinite(out).all(), "elements left unwritten"
    return out


def refitted_from(name: str, start: str = "analytic") -> bool:
    """Whether `name` is what a tune calls the model a refit made from `start` between rounds (on any device:
    the name carries no profile), with or without a power correction. The GPU test of a guided tune and its
    CPU twin both check with this."""
    pattern = rf"{re.escape(start)} corrected on \d+ measured rows(, power from \d+)?"
    return re.fullmatch(pattern, name) is not None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((out.double() - ref).norm() / ref.norm())


# -- shared by the cost-model tests ---------------------------------------------------------------------------

# GPPerf's public RTX 4070 measurements (evaluation data kept outside this repository; tests that need them skip
# where they are absent).
GPPERF = Path(os.environ.get("KT_GPPERF_DIR") or Path(__file__).resolve().parents[2] / "shared/data/gpperf")


def benchmark_module(name: str):
    """The script benchmarks/<name>.py as a module (the tests reuse its readers and device profile), loaded once
    per process: a second load would replace sys.modules[name] under a module a test file holds, and pickling its
    functions for a worker pool (search_variants.run) then fails, "not the same object"."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script is being executed
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # not a half-run module for the next test
        raise
    return module


def run_script(*args):
    """`python benchmarks/<script> args...`: its exit code, stdout and stderr (a SimpleNamespace like a
    CompletedProcess's), from its `main` in this process, with its own argv, working folder and streams (a process
    for each of the scripts' error cases cost the suite about three minutes); os.environ is as it was after it.
    An exception other than SystemExit, the traceback the script would have printed, is raised."""
    import contextlib
    import io
    from types import SimpleNamespace

    root = Path(__file__).resolve().parents[1]
    name, argv = str(args[0]), list(map(str, args[1:]))
    out, err = io.StringIO(), io.StringIO()
    saved, cwd, environ = sys.argv, Path.cwd(), dict(os.environ)
    sys.argv = [str(root / "benchmarks" / name), *argv]  # argparse names the script by it
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = benchmark_module(name.removesuffix(".py")).main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:  # a script's settings (nn_layers.py's KT_DB) stay in it, as in its own process
        sys.argv = saved
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
    stderr = err.getvalue()
    if isinstance(code, str):  # SystemExit("message"): Python prints it to stderr and exits with 1
        stderr, code = stderr + code + "\n", 1
    return SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=stderr)


def stand_in_records(shapes, configs, power_rows: int = 0) -> list[dict]:
    """H100 fp16 records, one per (shape, config), whose `runtime_ms` is the analytic model's prediction and whose
    first `power_rows` carry the datasheet's board power as `power_w`: a model's outputs and a datasheet figure
    standing in for targets in tests of the estimator's mechanics, never timings or readings, never stored.
    `configs` holds (block_m, block_n, block_k, num_warps, num_stages) tuples."""
    from kt.costmodel.roofline import gemm_terms
    from kt.device import H100

    records = []
    for m, n, k in shapes:
        for bm, bn, bk, warps, stages in configs:
            records.append(
                {
                    **GemmProblem(m, n, k).to_record(),
                    "block_m": bm,
                    "block_n": bn,
                    "block_k": bk,
                    "group_m": 8,
                    "num_warps": warps,
                    "num_stages": stages,
                    "split_k": 1,
                    "group": f"{m}x{n}x{k}",
                }
            )
    for i, (record, seconds) in enumerate(zip(records, gemm_terms(records, H100)["predicted_s"])):
        record["runtime_ms"] = float(seconds) * 1e3
        record["power_w"] = H100.tdp_w if i < power_rows else None
    return records


def run_as_user(command: list[str], timeout: int = 300):
    """`command` run where file permissions apply: as root, with the capabilities that override them dropped
    (setpriv); skipped where root has no setpriv."""
    import shutil
    import subprocess

    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions do not apply")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def kt_cli(*args, cwd=None, env=None):
    """`kt ARGS` run in this process with click's runner (a new Python would spend 2-3 s importing torch, Triton
    and kt again): its exit code, stdout and stderr. Tests of what only a real process shows (signals, exit by a
    signal, what it imports, its streams' encodings, a pipe's reader gone) start one themselves."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from kt.cli import main

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        done = CliRunner().invoke(main, list(map(str, args)), env=env)
    finally:
        os.chdir(here)
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exc_info
    assert "Traceback" not in done.stderr, done.stderr
    return SimpleNamespace(returncode=done.exit_code, stdout=done.stdout, stderr=done.stderr)


def quiet_tune_options(tmp_path) -> list:
    """A test's `kt tune` options: artifacts in tmp_path/art, the database tmp_path/t.db, no progress, one
    worker."""
    return ["--out", tmp_path / "art", "--db", tmp_path / "t.db", "--quiet", "--workers", "1"]
