"""Turning emitted source into an importable module.

Triton reads a kernel's source with `inspect`, so a kernel must live in a real file: sources are written once
into kt's cache, named by their hash, and imported from there. Whether Triton compiles for the GPU or runs its
CPU interpreter is fixed when the module is imported (at `@triton.jit`), from TRITON_INTERPRET.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import threading
from pathlib import Path
from types import ModuleType

from kt.codegen.compat import interpret_requested as _interpret_requested
from kt.files import atomic_write_text, cache_dir


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:20]


def write_source(source: str, directory: Path | None = None) -> Path:
    """The source's file in the kernel cache, written atomically if it is not there yet or holds other bytes
    than its name says, its time refreshed if it is (kt.files.trim_kernel_cache removes the least recently used
    first, none used in the last hour).

    A file there is read before it is used: named by its hash, it was taken for this source unread, so an
    edited or damaged copy ran in place of a verified artifact's kernel.py (and a truncated one was blamed on
    the artifact, which a new tune could not mend: it named the same file)."""
    path = (directory or cache_dir()) / "kernels" / f"k_{source_hash(source)}.py"
    try:
        same = path.read_bytes() == source.encode()
    except OSError:  # not there (nor, perhaps, its folder)
        same = False
    if same:
        with contextlib.suppress(OSError):  # there and not ours to touch: used as it is
            os.utime(path)
        return path
    atomic_write_text(path, source)  # creates the kernels directory
    with contextlib.suppress(OSError):  # bytecode of the bytes replaced (Python checks only time and size)
        os.unlink(importlib.util.cache_from_source(str(path)))
    return path


_IMPORT_LOCK = threading.RLock()  # one import at a time: no thread gets a module another is still running


def _locks_across_fork() -> None:
    """A fork waits for the kernel import and the interpreted launch under way in other threads, holding both
    locks across it (as `logging` does with its own), and the child starts with both free. A child forked
    mid-launch (a DataLoader worker, while another thread ran an interpreted kernel) inherited
    INTERPRETER_LOCK held by a thread it does not have, and TRITON_INTERPRET as the launch had set it: its
    first kernel waited forever. The import lock comes first, as an import takes both in that order."""
    from kt.codegen.compat import INTERPRETER_LOCK

    locks = (_IMPORT_LOCK, INTERPRETER_LOCK)

    def take() -> None:
        for lock in locks:
            lock.acquire()

    def give() -> None:  # in the child too: its one thread is the thread that forked, which holds both
        for lock in reversed(locks):
            lock.release()

    os.register_at_fork(before=take, after_in_parent=give, after_in_child=give)


_locks_across_fork()


def no_triton(what: str) -> str:
    """The one line that says `what` needs Triton where it is not installed: pip installs it on Linux only
    (kt's dependency is marked so), and kt.nn's layers run their PyTorch path on CPU tensors without it."""
    return (
        f"{what} needs Triton, which is not installed here: it runs on Linux (pip install triton); without it "
        "kt.nn's layers run their PyTorch path on CPU tensors, and kt tunes nothing"
    )


def triton_installed() -> bool:
    """Whether Triton can be imported here (not on macOS or Windows, where pip has no Triton to install)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # blocked (None in sys.modules), or a module without a spec
        return False


def interpreter_wanted() -> bool:
    """Run kernels in Triton's interpreter when asked to (TRITON_INTERPRET=1) or when there is no GPU."""
    if _interpret_requested():
        return True
    import torch

    return not torch.cuda.is_available()


def import_kernel_file(
    path: str | os.PathLike, interpret: bool | None = None, private: bool = False
) -> ModuleType:
    """Import a generated kernel module from `path`, for the GPU or (interpret=True) for Triton's interpreter.
    One module per file and mode, shared by every caller; `private`: a module of its own (compile_for_target
    swaps a module's kernels for recorders while it compiles, which a thread running the shared one would hit).

    Choosing the interpreter changes nothing for the rest of the process: TRITON_INTERPRET=1 is set only while
    the module's `@triton.jit` functions are made and while its kernels run (kt.codegen.compat), so kernels
    loaded later, or by other code, still compile for the GPU when there is one.
    """
    path = Path(path)
    source = path.read_bytes()
    plain = not re.search(rb"^import triton\b", source, re.MULTILINE)
    if plain:  # a PyTorch module (a baseline: what kt.nn runs on CPU tensors): no Triton function to switch
        interpret, importing = False, contextlib.nullcontext()  # modes for; it runs where Triton is absent
    elif not triton_installed():
        raise ImportError(no_triton(f"{path.name} (a Triton kernel)"))
    else:
        from kt.codegen.compat import import_triton

        # whole, before the interpreter's switch, so Triton's own helpers stay compiled-mode (and under the lock
        # another thread's first import of Triton takes)
        import_triton()
        if interpret is None:
            interpret = interpreter_wanted()
        if interpret:
            from kt.codegen.compat import patch_interpreter, triton_interpret

            patch_interpreter()
            importing = triton_interpret(True)
        elif _interpret_requested():
            raise ValueError("cannot import a kernel for the GPU in a process running Triton's interpreter")
        else:
            importing = contextlib.nullcontext()
    digest = hashlib.sha256(source).hexdigest()[:20]
    mode = "torch" if plain else "interp" if interpret else "cuda"
    name = f"kt_kernel_{mode}_{digest}{'_private' if private else ''}"
    # A module is in sys.modules from before its code runs (Triton's jit looks it up) until it has run: a second
    # thread importing the same kernel then got it half made (no `kernel` yet). The lock makes it wait.
    with _IMPORT_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with importing:
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module


_FALLBACK: list[Path] = []  # this process's folder for sources kt's cache cannot take (removed at exit)


def load_source(source: str, interpret: bool | None = None) -> ModuleType:
    """The module of `source`, imported from its file in kt's kernel cache; where that cannot be written (a
    read-only home or cache), from one temporary folder of this process, removed at its exit: kt.nn's layers
    and kt.build failed there with a traceback, and each unpickled kernel left a folder of its own in /tmp."""
    try:
        path = write_source(source)
    except OSError:
        if not _FALLBACK:
            import atexit
            import shutil
            import tempfile

            _FALLBACK.append(Path(tempfile.mkdtemp(prefix="kt-kernel-")))
            atexit.register(shutil.rmtree, _FALLBACK[0], True)
        path = write_source(source, _FALLBACK[0])
    try:
        return import_kernel_file(path, interpret)
    except FileNotFoundError:  # trimmed from the cache by another process between the write and the import
        return import_kernel_file(write_source(source, path.parent), interpret)
