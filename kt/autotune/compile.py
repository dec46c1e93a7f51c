"""Compile a generated kernel for a GPU target without a GPU, to learn what it really needs.

The kernel module's wrapper is run once on "meta" tensors with its Triton kernels swapped for recorders, so
the launch arguments are exactly those a real call passes. They are specialised as Triton does at launch
(pointers and integers divisible by 16 marked so, integers equal to 1 made constants), and the kernel is
compiled for the target's architecture with the ptxas Triton runs for it (bundled with Triton), its registers
and spills read with Triton's cuobjdump. That catches what the interpreter cannot: code the GPU compiler
rejects, shared memory over the device's limit, and register spills.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from kt.codegen.compat import triton_interpret

_POINTER_TYPES = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.int32: "*i32",
    torch.int64: "*i64",
    torch.int8: "*i8",
}


_MMA_SYNC = re.compile(r"\bmma\.sync\.")
_WGMMA = re.compile(r"\bwgmma\.mma_async\.")
_TMA = re.compile(r"\bcp\.async\.bulk\.tensor\.")
_DOT = re.compile(r"\btt\.dot(_scaled)?\b")  # a matrix product in Triton's IR, whatever it compiles to
_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)")


@dataclass(frozen=True)
class TargetBuild:
    """What the compiler made of one launch: its shared memory, its MMA instructions, whether it moves tiles
    with the tensor memory accelerator (TMA), whether it has a matrix product at all (`dots`: a tl.dot in its
    Triton IR; a transpose has none), and its registers per thread and its stack and local memory per thread
    (where ptxas puts register spills; 0 when none), read by Triton's cuobjdump."""

    kernel: str
    shared_bytes: int
    uses_wgmma: bool
    mma_sync: int = 0  # mma.sync instructions in the PTX (per warp, per pass of the unrolled code)
    wgmma: int = 0  # wgmma.mma_async instructions in the PTX
    tma: bool = False
    dots: bool | None = None  # None: Triton kept no IR to read it from
    registers: int | None = None
    local_bytes: int | None = None
    ptx: str = field(default="", repr=False, compare=False)

    @property
    def mma_kind(self) -> str:
        return "wgmma" if self.uses_wgmma else "mma.sync" if self.mma_sync else "none"


def resource_usage(cubin: bytes) -> dict[str, tuple[int, int, int]]:
    """{function: (registers, stack bytes, local bytes) per thread} of a cubin, read by the cuobjdump that
    Triton ships beside its ptxas. Raises when there is none, or it cannot read the cubin: a build whose
    registers and spills are unknown must not pass for one that does not spill."""
    import subprocess
    import tempfile

    path = tool_path("cuobjdump")
    if path is None:
        raise RuntimeError(CUOBJDUMP_MISSING)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        done = subprocess.run(
            [path, "--dump-resource-usage", handle.name], capture_output=True, text=True, timeout=120
        )
    if done.returncode != 0:
        raise RuntimeError(f"{path} could not read the build's registers and spills: {done.stderr.strip()}")
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _USAGE.finditer(done.stdout)}


class _Recorder:
    """Stands in for a Triton kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it,
    in `launches`, a list the recorders of one module share, so that it keeps the order of the calls."""

    def __init__(self, name: str, jit_function, launches: list):
        self.name, self.jit_function, self.launches = name, jit_function, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.name, self.jit_function.fn, args, kwargs))

        return launch


def _triton_kernels(module: ModuleType) -> dict:
    from triton.runtime import JITFunction
    from triton.runtime.interpreter import InterpretedFunction

    return {
        name: obj for name, obj in vars(module).items() if isinstance(obj, (JITFunction, InterpretedFunction))
    }


def capture_launches(module: ModuleType, args: tuple, kwargs: dict | None = None) -> list[tuple]:
    """[(name, python function, args, kwargs)] for every Triton launch `module.kernel(*args)` makes, in the
    order it makes them (a transposed Monarch's transpose first, then its stages)."""
    originals = _triton_kernels(module)
    launches: list[tuple] = []
    try:
        for name, fn in originals.items():
            setattr(module, name, _Recorder(name, fn, launches))
        module.kernel(*args, **(kwargs or {}))
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
    return launches


def _specialise(jit_function, args: tuple, kwargs: dict):
    """Triton's launch-time specialisation of a kernel's arguments: (signature, constexprs, attrs, options)."""
    fn = jit_function.fn
    kwargs = dict(kwargs)
    options = {
        key: kwargs.pop(key) for key in ("num_warps", "num_stages", "enable_fp_fusion") if key in kwargs
    }
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    constexpr_names = {p.name for p in jit_function.params if p.is_constexpr}
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, value) in enumerate(bound.items()):
        divisible = False
        if name in constexpr_names:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name], divisible = (
                _POINTER_TYPES[value.dtype],
                True,
            )  # torch allocations are 256-byte aligned
        elif isinstance(value, bool):
            signature[name] = "u1"  # what Triton's own launch calls a bool
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                divisible = value % 16 == 0
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"cannot specialise argument {name}={value!r} of {fn.__name__}")
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def compile_for_target(
    module: ModuleType, args: tuple, arch: int, kwargs: dict | None = None
) -> list[TargetBuild]:
    """Compile every kernel `module.kernel(*args, **kwargs)` launches for CUDA compute capability `arch` (90 =
    Hopper); none for a module without Triton kernels."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime import JITFunction

    builds = []
    if not _triton_kernels(module):  # PyTorch's own path (candidate zero): nothing of kt's to compile
        return builds
    if tool_path("cuobjdump") is None:  # before the compile: its registers and spills could not be read
        raise RuntimeError(CUOBJDUMP_MISSING)
    launches = capture_launches(module, args, kwargs)
    with triton_interpret(False):  # Triton consults it while compiling too
        for name, fn, launch_args, launch_kwargs in launches:
            jit_function = JITFunction(fn)
            signature, constexprs, attrs, options = _specialise(jit_function, launch_args, launch_kwargs)
            source = ASTSource(jit_function, signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
            ptx, ttir = compiled.asm.get("ptx", ""), compiled.asm.get("ttir", "")
            usage = resource_usage(compiled.asm["cubin"]).get(compiled.metadata.name)
            if usage is None:
                raise RuntimeError(f"cuobjdump reported no registers or spills for {compiled.metadata.name}")
            builds.append(
                TargetBuild(
                    name,
                    int(compiled.metadata.shared),
                    uses_wgmma=bool(_WGMMA.search(ptx)),
                    mma_sync=len(_MMA_SYNC.findall(ptx)),
                    wgmma=len(_WGMMA.findall(ptx)),
                    tma=bool(_TMA.search(ptx)),
                    dots=bool(_DOT.search(ttir)) if ttir else None,
                    registers=usage[0],
                    local_bytes=usage[1] + usage[2],  # spills land in the stack frame
                    ptx=ptx,
                )
            )
    return builds


CUOBJDUMP_MISSING = "Triton's cuobjdump, which reads a build's registers and spills, is not installed here"
# the ptxas programs Triton's NVIDIA backend runs, by name: `ptxas`, and `ptxas-blackwell` (Triton 3.6 for
# sm_100 and later, Triton 3.9 from sm_90 on; see `ptxas_names`)
PTXAS_NAMES = ("ptxas", "ptxas-blackwell")


def _triton_dirs() -> list[Path]:
    """The folders of the installed triton package, found without importing it (kt's own process does not:
    its workers compile)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _runnable(path: str | os.PathLike) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _variables(binary: str) -> list[str]:
    """The variables that name `binary` to Triton: TRITON_PTXAS_BLACKWELL_PATH, and the TRITON_PTXAS-BLACKWELL_PATH
    Triton's knobs read before they turned the dash into an underscore."""
    return list(
        dict.fromkeys([f"TRITON_{binary.upper().replace('-', '_')}_PATH", f"TRITON_{binary.upper()}_PATH"])
    )


def tool_path(binary: str) -> str | None:
    """Where Triton finds one of its NVIDIA tools (ptxas, ptxas-blackwell, cuobjdump), as its knobs do:
    the program TRITON_<BINARY>_PATH names (ptxas-blackwell: TRITON_PTXAS_BLACKWELL_PATH), else, as Triton falls
    back when that names nothing it can run, the one bundled in triton/backends/nvidia/bin. cuobjdump, which
    kt runs itself, may also come from PATH. None where there is none."""
    import shutil

    for variable in _variables(binary):
        named = os.environ.get(variable)
        if named and _runnable(named):
            return named
    for folder in _triton_dirs():
        bundled = folder / "backends" / "nvidia" / "bin" / binary
        if _runnable(bundled):
            return str(bundled)
    return shutil.which(binary) if binary == "cuobjdump" else None


def ptxas_names() -> tuple[str, ...]:
    """The ptxas programs the installed Triton's NVIDIA backend may run: `ptxas`, and `ptxas-blackwell` where
    its compiler names one. Both are required where both are named: which architectures get which changed
    between releases (Triton 3.6 runs ptxas-blackwell from sm_100 on, 3.9 from sm_90 on), and a Triton wheel
    ships both. Read from the backend's source, without importing Triton; both where it cannot be read."""
    for folder in _triton_dirs():
        try:
            text = (folder / "backends" / "nvidia" / "compiler.py").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        return PTXAS_NAMES if re.search(r"ptxas[_-]blackwell", text) else ("ptxas",)
    return PTXAS_NAMES


def target_compiler_missing() -> str | None:
    """Why kernels cannot be compiled here for a GPU target and held to the device as the compile stage holds
    them, or None when they can: Triton with its NVIDIA backend, the ptxas programs it runs, and the cuobjdump
    that reads a build's registers and spills (without it a spilling build would pass). Found without
    importing Triton."""
    dirs = _triton_dirs()
    if not dirs:
        return "Triton is not installed here"
    if not any((d / "backends" / "nvidia").is_dir() for d in dirs):
        return "Triton's NVIDIA backend is not installed here"
    for name in ptxas_names():
        if tool_path(name) is None:
            named = "".join(
                f" ({variable} names no program: {os.environ[variable]})"
                for variable in _variables(name)
                if os.environ.get(variable)
            )
            return f"Triton's {name}, which builds GPU code, is not installed here{named}"
    if tool_path("cuobjdump") is None:
        return CUOBJDUMP_MISSING
    return None


def target_compiler_available() -> bool:
    """Whether kernels can be compiled here for a GPU target: `target_compiler_missing` finds nothing missing."""
    return target_compiler_missing() is None


def meta_args(problem) -> tuple[torch.Tensor, ...]:
    """Shape-and-stride-only stand-ins for a problem's arguments (no memory, any size)."""
    return problem.meta_args()
