"""Compatibility with the Triton versions kt supports (3.6 on the GPU machines, 3.9 in CI).

Triton 3.6's CPU interpreter converts a scalar to a Python int with `int(array)` on a one-element NumPy
array, which NumPy 2.4 and later refuse ("only 0-dimensional arrays can be converted"), so every kernel with
a runtime-bounded loop fails in the interpreter (upstream issue triton-lang/triton#9171, fixed in 3.9 by
squeezing first). `patch_interpreter` installs that same fix on older Tritons, only when NumPy would refuse.
A generated kernel.py imported without kt cannot carry this patch: under the interpreter it needs Triton >= 3.9
or NumPy < 2.4 (on a GPU, where kernels are compiled, nothing is affected).
"""

from __future__ import annotations

from importlib import metadata

_patched = False


def _needs_index_fix() -> bool:
    import numpy as np

    try:
        int(np.array([1]))
    except TypeError:
        major, minor = (int(x) for x in metadata.version("triton").split(".")[:2])
        return (major, minor) < (3, 9)
    return False


def patch_interpreter() -> None:
    """Make Triton's interpreter index with one-element arrays on Triton < 3.9 with NumPy >= 2.4."""
    global _patched
    if _patched or not _needs_index_fix():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    _patched = True
