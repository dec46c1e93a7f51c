"""Compatibility with the Triton versions kt supports (3.6 on the GPU machines, 3.9 in CI).

Triton 3.6's CPU interpreter converts a scalar to a Python int with `int(array)` on a one-element NumPy
array, which NumPy 2.4 and later refuse ("only 0-dimensional arrays can be converted"), so every kernel with
a runtime-bounded loop fails in the interpreter (upstream issue triton-lang/triton#9171, fixed in 3.8 by
squeezing first: the 3.8.0 wheel's interpreter has it). `patch_interpreter` installs that same fix on older
Tritons, only when NumPy would refuse.
A generated kernel.py imported without kt cannot carry this patch: under the interpreter it needs Triton >= 3.8
or NumPy < 2.4 (on a GPU, where kernels are compiled, nothing is affected).

Triton also decides at import time whether `@triton.jit` makes interpreted functions: when Triton was imported
before kt chose the interpreter (kt imports it first on purpose, and torch.compile, a TorchDispatchMode and other
torch internals import it too), its own jit'd helpers (`tl.cdiv`, `tl.minimum`, ...) are compiled-mode
JITFunctions, which refuse to be called from an interpreted kernel. `patch_interpreter` then makes such a device
call run the function as the interpreter runs its own (through an InterpretedFunction), only while
TRITON_INTERPRET is on.

kt turns TRITON_INTERPRET on only while it imports a kernel module for the interpreter (`triton_interpret`) and while
an interpreted kernel runs (`patch_interpreter` wraps the interpreter's launch), and puts back what was there:
one kernel loaded for the interpreter must not make every later kernel of the process an interpreted one.

An interpreted device call (`tl.cdiv` in a kernel) patches `triton.language` for the interpreter and drops
the scope that would undo it (Triton 3.6 and 3.9 alike; a launch undoes its own patches): the process's later
GPU compiles then failed (`'block_argument' object has no attribute 'dtype'`, torch.compile's kernels
included). `patch_interpreter` undoes each device call's patches when it returns. `language_patched` tells
whether something else (a kernel interpreted in a process that had TRITON_INTERPRET set when it imported
Triton, whose helpers are then the interpreter's own) left the language patched.

Triton's interpreter keeps global state (the grid index of the program it runs, the patched language module),
and TRITON_INTERPRET is the process's: interpreted launches and the switches of TRITON_INTERPRET take one lock
(`INTERPRETER_LOCK`), so threads that share a layer run its interpreted kernels one at a time. Without it, four
threads calling one kernel failed in Triton ("Did you forget to add @triton.jit?", "x >= grid_dim[0]") and left
TRITON_INTERPRET=1 set for the rest of the process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading

_patched = False
_TRUE = frozenset(("1", "true", "on", "yes", "y"))  # what Triton's getenv_bool takes for on, in any case


def interpret_requested() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter, read as Triton reads it (`true`, `on`, `yes` as well
    as `1`): kt read `1` alone, and with `TRITON_INTERPRET=true` compiled for the GPU where Triton interpreted
    (a compile check then refused every config as "does not compile")."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE


# reentrant: a launch inside an import's switch, a switch inside a launch
INTERPRETER_LOCK = threading.RLock()


@contextlib.contextmanager
def triton_interpret(on: bool):
    """TRITON_INTERPRET set to 1 (`on`) or 0 for the duration, then as it was (Triton reads it at run time),
    holding INTERPRETER_LOCK throughout: another thread's switch would otherwise restore what it saw."""
    with INTERPRETER_LOCK:
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if on else "0"
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved


_TRITON_IMPORT = threading.Lock()


def import_triton():
    """Triton with its language and runtime, imported whole under one lock: two threads making their first kt
    call at once (one importing a kernel, whose `import triton.language` runs, one asking triton_version, whose
    `import triton` runs) each got a partially initialized module ("'triton.language' has no attribute 'core'"),
    and every later kernel call in the process failed on "module 'triton' has no attribute 'runtime'"."""
    with _TRITON_IMPORT:
        import triton
        import triton.language
        import triton.runtime  # noqa: F401 - part of the whole, as the kernels and the compiler use it
    return triton


@functools.cache
def triton_version() -> tuple[int, int]:
    """The installed Triton's (major, minor): its compiler decides which builds spill (kt.codegen.gemm)."""
    triton = import_triton()

    major, minor = re.match(r"(\d+)\.(\d+)", triton.__version__).groups()
    return int(major), int(minor)


def _needs_index_fix() -> bool:
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():  # NumPy 1.25 to 2.3 warn (a user's filter may make it an error)
            warnings.simplefilter("ignore", DeprecationWarning)
            int(np.array([1]))
    except TypeError:
        return triton_version() < (3, 8)
    return False


def patch_interpreter() -> None:
    """Make Triton's interpreter index with one-element arrays on Triton < 3.8 with NumPy >= 2.4, and run
    compiled-mode jit'd helpers called from interpreted kernels."""
    global _patched
    if _patched:
        return
    _interpret_device_calls()
    _interpret_while_running()
    _round_bfloat16()
    _patched = True
    if not _needs_index_fix():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor


def _round_bfloat16() -> None:
    """float32 -> bfloat16 in the interpreter rounds to nearest even, as the GPU's cvt.rn.bf16.f32 and torch do:
    Triton's interpreter (3.6 to 3.9) cuts the low bits off (toward zero), twice the error of a rounded result,
    and nearly every |y| at most the exact one's."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    original = getattr(builder, "cast_impl", None)
    if original is None:  # another interpreter: left as it is
        return

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return original(self, src, dst_type)
        values = np.asarray(src.data, dtype=np.float32)
        bits = values.view(np.uint32)
        rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
        quiet = ((bits >> 16) | 0x40).astype(np.uint16)  # a NaN stays a NaN (its rounding could carry to inf)
        data = np.where(np.isnan(values), quiet, rounded)
        return interpreter.TensorHandle(data.view(interpreter._get_np_dtype(dst_type)), dst_type.scalar)

    builder.cast_impl = cast_impl


def _interpret_while_running() -> None:
    """An interpreted kernel's launch runs with TRITON_INTERPRET on (Triton and `_interpret_device_calls`
    consult it at run time), whatever the process has it set to, one launch at a time (INTERPRETER_LOCK)."""
    from triton.runtime import interpreter

    original = interpreter.GridExecutor.__call__

    def call(self, *args, **kwargs):
        with triton_interpret(True):
            return original(self, *args, **kwargs)

    interpreter.GridExecutor.__call__ = call


def _interpret_device_calls() -> None:
    """A JITFunction called inside an interpreted kernel (made before TRITON_INTERPRET was set) runs as the
    interpreter runs its own jit'd functions; with the interpreter off, the call is Triton's, unchanged."""
    from triton.runtime import interpreter, jit

    original = jit.JITFunction.__call__
    interpreted: dict = {}
    patch_lang = interpreter._patch_lang
    scopes: list = []  # the language patches of the device calls running (under INTERPRETER_LOCK)
    calls = 0  # how many device calls are running: a launch's own patches are the launch's to undo

    def kept_patch_lang(fn):
        scope = patch_lang(fn)
        if calls:
            scopes.append(scope)
        return scope

    def call(self, *args, **kwargs):
        nonlocal calls
        if not interpret_requested():
            return original(self, *args, **kwargs)
        if self.fn not in interpreted:
            interpreted[self.fn] = interpreter.InterpretedFunction(self.fn)
        depth = len(scopes)
        calls += 1
        try:
            return interpreted[self.fn](*args, **kwargs)
        finally:  # InterpretedFunction drops the scope its _patch_lang returns: undone here
            calls -= 1
            while len(scopes) > depth:
                scopes.pop().restore()

    interpreter._patch_lang = kept_patch_lang
    jit.JITFunction.__call__ = call


def language_patched() -> bool:
    """Whether Triton's interpreter has left `triton.language` patched in this process (a device call kt did
    not wrap, see the module's docstring): Triton then cannot compile a kernel for a GPU here (its builtins
    call the interpreter's semantics), so kt compiles in a worker process or not at all."""
    import triton.language as tl

    return any(getattr(v, "__name__", "") == "<lambda>" for v in vars(tl.core).values()) or (
        getattr(tl.core.tensor.__add__, "__name__", "") == "<lambda>"
    )
