"""What runs inside a worker process: check, compile-for-target and measure tasks.

A handler returns (status, values, message, fatal). Exceptions become statuses here: the compiler's errors are
`compile_error`, resource limits `out_of_resources`, anything else `crash`; `fatal` asks the pool for a fresh
process (after a CUDA error the context is unusable). Runtimes and power come only from `timing`, on a GPU.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from kt.errors import one_line

Reply = tuple[str, dict[str, Any], str, bool]
PRELOAD = ("torch", "triton", "kt.autotune.checking")  # what every task needs (the zygote imports them too)


def serve(conn_in, conn_out) -> None:
    """Say ready, then serve tasks until told to stop (None), the parent goes away, or a task leaves the process
    unusable."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the kt process's handler: the pool stops us so
    # a closed terminal is the kt process's to handle: it stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        conn_out.send(("ready", _warm_up()))
    except (BrokenPipeError, OSError):
        return
    while True:
        try:
            task = conn_in.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        reply = run_task(task.kind, task.payload)
        try:
            conn_out.send(reply)
        except (BrokenPipeError, OSError):
            return
        if reply[3]:
            return


def _warm_up() -> dict[str, Any]:
    """Import what every task needs (torch, Triton, kt's checker) before saying ready, and in a GPU worker
    (KT_WORKER_GPU=1) create its CUDA context: the pool starts a task's clock only then, so a slow start on a
    loaded machine is never taken for a slow candidate. A CPU worker takes torch's threads from WORKER_THREADS_ENV
    (forked from the zygote, its OpenMP read OMP_NUM_THREADS long before: set here, not through it)."""
    import importlib

    for name in PRELOAD:  # imported now so that their start-up is not charged to the first task
        importlib.import_module(name)
    import torch

    from kt.cpus import WORKER_THREADS_ENV

    if os.environ.get("KT_WORKER_GPU") == "1" and torch.cuda.is_available():
        torch.cuda.init()
    elif os.environ.get(WORKER_THREADS_ENV) and not os.environ.get("OMP_NUM_THREADS"):  # (the user's, if set)
        # scikit-learn's threadpoolctl: numpy's BLAS (the interpreter's dots) too, which torch's setting leaves
        from threadpoolctl import threadpool_limits

        threads = int(os.environ[WORKER_THREADS_ENV])
        threadpool_limits(threads)
        torch.set_num_threads(threads)
    return {"pid": os.getpid()}


def main(argv: list[str]) -> None:
    """`python -m kt.autotune.worker READ_FD WRITE_FD PARENT_PID`, started by kt.autotune.pool."""
    from multiprocessing.connection import Connection

    _die_with_parent(int(argv[2]))
    serve(Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False))


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a killed kt (a hung kernel would otherwise run forever)."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def run_task(kind: str, payload: dict[str, Any]) -> Reply:
    try:
        return HANDLERS[kind](payload)
    except BaseException as exc:  # noqa: BLE001 - every failure of a candidate becomes its record
        status, fatal = _classify(exc)
        return status, {}, one_line(exc, 500), fatal


def _load(payload: dict[str, Any], interpret: bool):
    from kt.codegen.emit import import_kernel_file

    path, source = Path(payload["source_path"]), payload.get("source")
    tries = 0
    while True:
        if source is not None and not path.exists():  # the cache's kernels/ deleted under a running tune
            from kt.files import atomic_write_text

            atomic_write_text(path, source)
        try:
            return import_kernel_file(path, interpret=interpret)
        except SyntaxError as exc:
            raise _Compile(exc) from exc
        except FileNotFoundError:  # gone again between the write and the import
            tries += 1
            if source is None or tries == 3:
                raise


def _problem(payload: dict[str, Any]):
    from kt.ir.problems import problem_from_dict

    return problem_from_dict(payload["family"], payload["problem"])


def _check(payload: dict[str, Any]) -> Reply:
    """Correctness in Triton's interpreter (device cpu) on each of the payload's reduced problems."""
    from kt.autotune.checking import check_kernel
    from kt.ir.problems import problem_from_dict

    device = payload["device"]
    module = _load(payload, interpret=device == "cpu")
    errors = []
    for data in payload["problems"]:
        problem = problem_from_dict(payload["family"], data)
        result = check_kernel(module, problem, payload["seed"], device)
        if not result.ok:
            return "wrong_result", {"rel_err": result.rel_err}, f"{problem}: {result.message}", False
        errors.append(result.rel_err)
    return "ok", {"rel_err": max(errors)}, "", False


def _compile(payload: dict[str, Any]) -> Reply:
    """Compile for the target GPU architecture (no GPU needed) and hold the build to the device: shared memory
    within its limit, no register spills (read by Triton's cuobjdump: without it the task fails, as no spill
    could be seen). Records the evidence (shared memory, registers, spills, MMA kind, whether each launch has a
    matrix product, TMA) and, with `ptx_dir`, writes each launch's PTX there, numbered in the order the kernel
    launches them (launch0_<kernel>.ptx, ...). A module with no Triton kernel (PyTorch's own path, candidate
    zero) has nothing to compile."""
    from kt.autotune.compile import compile_for_target, meta_args

    module = _load(payload, interpret=False)
    builds = compile_for_target(module, meta_args(_problem(payload)), payload["arch"])
    if not builds:
        return "ok", {}, "", False
    if payload.get("ptx_dir"):
        from pathlib import Path

        from kt.files import atomic_write_text

        for index, build in enumerate(builds):
            atomic_write_text(Path(payload["ptx_dir"]) / f"launch{index}_{build.kernel}.ptx", build.ptx)
    values = evidence(builds)
    refused = build_refusal(builds, payload["smem_limit"])
    return ("out_of_resources", values, refused, False) if refused else ("ok", values, "", False)


def build_refusal(builds, smem_limit: int) -> str | None:
    """Why a candidate's builds (compile_for_target) cannot run well on a device of `smem_limit` bytes of
    shared memory per block, or None: more shared memory than that, or a launch that spills registers."""
    smem = max((b.shared_bytes for b in builds), default=0)
    if smem > smem_limit:
        return f"needs {smem} bytes of shared memory, the device has {smem_limit}"
    spilling = [
        b
        for b in builds
        if b.local_bytes and ((b.registers or 0) >= MAX_REGISTERS or b.local_bytes > MAX_LOCAL_BYTES)
    ]
    if spilling:
        worst = max(spilling, key=lambda b: b.local_bytes)
        where = (
            f"at all {MAX_REGISTERS} registers"
            if (worst.registers or 0) >= MAX_REGISTERS
            else f"at {worst.registers} registers, over the {MAX_LOCAL_BYTES} bytes a few kept values take"
        )
        return (
            f"spills registers: {worst.local_bytes} bytes of local memory per thread {where} ({worst.kernel})"
        )
    return None


# A launch that holds all 255 registers a thread may have and still keeps values in local memory spills under
# pressure (in its loop, as the sm_90 builds of batched dots with 128 accumulator registers showed). A few bytes
# of stack below that (8 to 32 in about 280 sampled sm_80 and sm_90 builds), as ptxas keeps for a value or two
# outside the loop, are recorded, not refused. Far more local memory at fewer registers is a spill all the same:
# fused float32 Monarch b16n16k16 w2 builds at n=512 kept 10 KB per thread at 32 registers (ptxas: 24 KB of
# spill stores), an sm_80 FFT build 7 KB at 32.
MAX_REGISTERS = 255
MAX_LOCAL_BYTES = 256


def evidence(builds) -> dict[str, Any]:
    """A candidate's compiled-code columns from its launches' builds (the worst launch for each resource)."""
    registers = [b.registers for b in builds if b.registers is not None]
    local = [b.local_bytes for b in builds if b.local_bytes is not None]
    kinds = {b.mma_kind for b in builds}
    return {
        "smem_bytes": max(b.shared_bytes for b in builds),
        "uses_wgmma": any(b.uses_wgmma for b in builds),
        "mma_sync": max(b.mma_sync for b in builds),
        "mma_kind": "+".join(k for k in ("wgmma", "mma.sync", "none") if k in kinds),
        "tma": int(any(b.tma for b in builds)),
        "registers": max(registers) if registers else None,
        "local_bytes": max(local) if local else None,
        "launch_evidence": [
            {
                "kernel": b.kernel,
                "mma": b.mma_kind,
                "dot": b.dots,
                "tma": b.tma,
                "registers": b.registers,
                "local_bytes": b.local_bytes,
                "smem_bytes": b.shared_bytes,
            }
            for b in builds
        ],
    }


_METERS: dict[str, Any] = {}  # device -> its energy meter, probed once per worker


def _meter(device: str):
    """The energy meter of `device`, probed on first use: NVML on a GPU; on the CPU (the dry run) none, with the
    reason recorded in the row as a GPU's unreadable counter would be."""
    if device not in _METERS:
        from kt.autotune.timing import Nvml

        if device == "cuda":
            import torch

            _METERS[device] = Nvml.for_torch_device(torch.cuda.current_device())
        else:
            _METERS[device] = _NoMeter("no energy counter: a dry run in Triton's interpreter on the CPU")
    return _METERS[device]


class _NoMeter:
    handle = None

    def __init__(self, reason: str):
        self.reason = reason


def _measure(payload: dict[str, Any]) -> Reply:
    """Check correctness on the full problem, then time the call and read its energy.

    On a GPU (device cuda) with CUDA events and NVML. The dry run (device cpu) takes every step of the same
    path in Triton's interpreter, with the wall-clock timer in place of CUDA events and no energy counter:
    its figures are named wall_*, never runtime_ms (kt.autotune.timing)."""
    import time

    from kt.autotune.checking import check_kernel
    from kt.autotune.timing import TimingSettings, energy_cuda, time_cuda, time_wall

    device = payload.get("device", "cuda")
    module, problem = _load(payload, interpret=device == "cpu"), _problem(payload)
    result = check_kernel(module, problem, payload["seed"], device)
    values: dict[str, Any] = {"rel_err": result.rel_err, "gpu_name": _device_name(device), **_gpu_id(device)}
    if not result.ok:
        return "wrong_result", values, result.message, False
    args = problem.random_args(payload["seed"] + 1, device)
    out = problem.out_type().empty(device)  # the family's output type: an fp32 FFT writes complex64
    if hasattr(module, "implementation"):  # PyTorch's own path: say which of its routes ran
        values["impl"] = module.implementation(*args)

    def call():
        return module.kernel(*args, out=out)

    settings = TimingSettings(**payload.get("timing", {}))
    values["timing_regime"] = settings.regime
    values["cooldown_ms"] = settings.cooldown_ms
    time.sleep(settings.cooldown_ms / 1e3)  # every candidate starts from about the same thermal state
    values.update(time_wall(call, settings) if device == "cpu" else time_cuda(call, settings))
    if (
        settings.energy_s > 0 or device == "cpu"
    ):  # the dry run takes the no-counter path of every GPU without one
        values.update(energy_cuda(call, values.get("runtime_ms"), _meter(device), settings))
    else:
        values["energy_status"] = "not measured (energy_s = 0)"
    return "ok", values, "", False


def _gpu_id(device: str) -> dict[str, Any]:
    """Which GPU this worker measures on: its index in the tune's numbering (the runner's KT_GPU_INDEX) and its
    UUID; nothing for the dry run."""
    if device != "cuda":
        return {}
    import torch

    index = os.environ.get("KT_GPU_INDEX")
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "")
    return {
        "gpu_index": int(index) if index is not None else None,
        "gpu_uuid": f"GPU-{uuid}" if uuid else None,
    }


def _device_name(device: str) -> str:
    import torch

    from kt.autotune.runners import INTERPRETER_DEVICE

    return torch.cuda.get_device_name() if device == "cuda" else INTERPRETER_DEVICE


def _describe(payload: dict[str, Any]) -> Reply:
    """What this worker sees of its environment: its process, the GPUs CUDA shows it and its index in the
    tune's numbering (a pool gives each GPU worker its own; tests check that it did). Creates no CUDA context."""
    return (
        "ok",
        {
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_index": os.environ.get("KT_GPU_INDEX"),
        },
        "",
        False,
    )


HANDLERS = {"check": _check, "compile": _compile, "measure": _measure, "describe": _describe}


class _Compile(Exception):
    """A kernel module that does not even import."""


def _classify(exc: BaseException) -> tuple[str, bool]:
    import sys

    if isinstance(exc, _Compile):
        return "compile_error", False
    triton_errors = sys.modules.get("triton.runtime.errors")
    compiler_errors = sys.modules.get("triton.compiler.errors")
    if triton_errors and isinstance(exc, triton_errors.OutOfResources):
        return "out_of_resources", False
    if triton_errors and isinstance(exc, triton_errors.PTXASError):
        return "compile_error", False
    if compiler_errors and isinstance(exc, compiler_errors.CompilationError):
        return "compile_error", False
    if triton_errors and isinstance(exc, triton_errors.InterpreterError):
        return "compile_error", False  # the interpreter's version of a kernel the compiler would reject
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out_of_resources", False
    on_gpu = torch is not None and torch.cuda.is_initialized()
    return "crash", on_gpu  # after an unknown failure on the GPU, trust no context


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
