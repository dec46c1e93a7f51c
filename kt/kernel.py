"""Kernel: a generated kernel module made callable, with what it was built for."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any


class Kernel:
    """`kernel(*args, out=None)` runs the generated Triton kernel; `.source` is the module a person can read."""

    def __init__(
        self, module: ModuleType, spec, config, meta: dict[str, Any] | None = None, path: Path | None = None
    ):
        self.module, self.spec, self.config = module, spec, config
        self.meta = meta or {}
        self.path = path

    def __call__(self, *args, **kwargs):
        if not self.pytorch and any(getattr(t, "is_meta", False) for t in (*args, *kwargs.values())):
            # PyTorch's path gives shapes on meta tensors; a Triton kernel reads memory they do not have (the
            # interpreter failed deep inside Triton: "Cannot copy out of meta tensor; no data!")
            raise ValueError(
                "kernel: a meta tensor holds no data for a Triton kernel to read; kernel.as_op() gives the output's "
                "shape on meta tensors (as kt.nn layers do)"
            )
        return self.module.kernel(*args, **kwargs)

    def as_op(self):
        """This kernel as `f(x, *weights)` through the custom op `torch.ops.kt.apply`: differentiable, and one
        node under torch.compile(fullgraph=True) and torch.export (kt.nn.functional.kernel_op)."""
        from kt.nn.functional import kernel_op

        return kernel_op(self)

    @property
    def source(self) -> str:
        return Path(self.module.__file__).read_text()

    @property
    def measured(self) -> bool:
        return bool(self.meta.get("measured", False))

    @property
    def pytorch(self) -> bool:
        """True when this is PyTorch's own path (no generated kernel beat it, or built with "pytorch")."""
        return self.meta.get("kernel") == "pytorch"

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        what = f"PyTorch: {self.module.IMPLEMENTATION}" if self.pytorch else self.config.key()
        return f"Kernel({self.spec.name}: {self.spec.op} {self.spec.dtype}, {what}{where})"
