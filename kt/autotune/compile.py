"""Compile a generated kernel for a GPU target without a GPU, to learn what it really needs.

The kernel module's wrapper is run once on "meta" tensors with its Triton kernels swapped for recorders, so
the launch arguments are exactly those a real call passes. They are specialised as Triton does at launch
(pointers and integers divisible by 16 marked so, integers equal to 1 made constants), and the kernel is
compiled for the target's architecture with the bundled ptxas. That catches what the interpreter cannot: code
the GPU compiler rejects, and shared memory over the device's limit.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
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
_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)")


@dataclass(frozen=True)
class TargetBuild:
    """What the compiler made of one launch: its shared memory, its MMA instructions, whether it moves tiles
    with the tensor memory accelerator (TMA), and, when Triton's cuobjdump is at hand, its registers per thread
    and its stack and local memory per thread (where ptxas puts register spills; 0 when none)."""

    kernel: str
    shared_bytes: int
    uses_wgmma: bool
    mma_sync: int = 0  # mma.sync instructions in the PTX (per warp, per pass of the unrolled code)
    wgmma: int = 0  # wgmma.mma_async instructions in the PTX
    tma: bool = False
    registers: int | None = None
    local_bytes: int | None = None
    ptx: str = field(default="", repr=False, compare=False)

    @property
    def mma_kind(self) -> str:
        return "wgmma" if self.uses_wgmma else "mma.sync" if self.mma_sync else "none"


def resource_usage(cubin: bytes) -> dict[str, tuple[int, int, int]]:
    """{function: (registers, stack bytes, local bytes) per thread} of a cubin, read by the cuobjdump that
    Triton ships beside its ptxas ({} when there is none)."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = str(tool) if tool.is_file() else shutil.which("cuobjdump")
    if path is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        done = subprocess.run(
            [path, "--dump-resource-usage", handle.name], capture_output=True, text=True, timeout=120
        )
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _USAGE.finditer(done.stdout)}


class _Recorder:
    """Stands in for a Triton kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, name: str, jit_function):
        self.name, self.jit_function, self.launches = name, jit_function, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))

        return launch


def _triton_kernels(module: ModuleType) -> dict:
    from triton.runtime import JITFunction
    from triton.runtime.interpreter import InterpretedFunction

    return {
        name: obj for name, obj in vars(module).items() if isinstance(obj, (JITFunction, InterpretedFunction))
    }


def capture_launches(module: ModuleType, args: tuple, kwargs: dict | None = None) -> list[tuple]:
    """[(name, python function, args, kwargs)] for every Triton launch `module.kernel(*args)` makes."""
    originals = _triton_kernels(module)
    recorders = {name: _Recorder(name, fn) for name, fn in originals.items()}
    try:
        for name, recorder in recorders.items():
            setattr(module, name, recorder)
        module.kernel(*args, **(kwargs or {}))
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
    return [(r.name, r.jit_function.fn, a, k) for r in recorders.values() for a, k in r.launches]


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
    launches = capture_launches(module, args, kwargs)
    with triton_interpret(False):  # Triton consults it while compiling too
        for name, fn, launch_args, launch_kwargs in launches:
            jit_function = JITFunction(fn)
            signature, constexprs, attrs, options = _specialise(jit_function, launch_args, launch_kwargs)
            source = ASTSource(jit_function, signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
            ptx = compiled.asm.get("ptx", "")
            usage = resource_usage(compiled.asm["cubin"]).get(compiled.metadata.name)
            builds.append(
                TargetBuild(
                    name,
                    int(compiled.metadata.shared),
                    uses_wgmma=bool(_WGMMA.search(ptx)),
                    mma_sync=len(_MMA_SYNC.findall(ptx)),
                    wgmma=len(_WGMMA.findall(ptx)),
                    tma=bool(_TMA.search(ptx)),
                    registers=usage[0] if usage else None,
                    local_bytes=usage[1] + usage[2] if usage else None,  # spills land in the stack frame
                    ptx=ptx,
                )
            )
    return builds


def target_compiler_available() -> bool:
    """Whether Triton's NVIDIA backend and its ptxas are installed (found without importing Triton)."""
    import importlib.util
    from pathlib import Path

    if os.environ.get("TRITON_PTXAS_PATH"):
        return Path(os.environ["TRITON_PTXAS_PATH"]).is_file()
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        (Path(p) / "backends" / "nvidia" / "bin" / "ptxas").is_file() for p in spec.submodule_search_locations
    )


def meta_args(problem) -> tuple[torch.Tensor, ...]:
    """Shape-and-stride-only stand-ins for a problem's arguments (no memory, any size)."""
    return problem.meta_args()
