"""Kernel: a generated kernel module made callable, with what it was built for."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


class Kernel:
    """`kernel(*args, out=None)` runs the generated Triton kernel (PyTorch's own path where `.pytorch`); `.source`
    is the module a person can read.

    Without `out`, where an input requires grad (grad mode on) or under torch.compile, the call goes through a
    `torch.ops.kt.apply` op as `as_op()`'s does, but one that runs this kernel as its forward on CPU tensors too,
    so the result is differentiable; else it is the module's `kernel`, which records no graph."""

    def __init__(
        self, module: ModuleType, spec, config, meta: dict[str, Any] | None = None, path: Path | None = None
    ):
        self.module, self.spec, self.config = module, spec, config
        self.meta = meta or {}
        self.path = path
        # the text the module was imported from, read now: its file may be an artifact's kernel.py (a read-only
        # kernel cache) that a later tune replaces, and a pickle carries this text
        self._source = Path(module.__file__).read_text()
        self._op = None  # as_op's function for calls whose inputs require grad (`__call__`), made once
        self._signature = None  # the module kernel's, to put inputs given by name in their places

    def __call__(self, *args, **kwargs):
        if not self.pytorch and any(getattr(t, "is_meta", False) for t in (*args, *kwargs.values())):
            # PyTorch's path gives shapes on meta tensors; a Triton kernel reads memory they do not have (the
            # interpreter failed deep inside Triton: "Cannot copy out of meta tensor; no data!")
            raise ValueError(
                "kernel: a meta tensor holds no data for a Triton kernel to read; kernel.as_op() gives the output's "
                "shape on meta tensors (as kt.nn layers do)"
            )
        if torch.compiler.is_compiling() and kwargs.get("out") is not None:
            # written in place: no op of torch's to trace
            return _outside_graph(_eager)(self.module.kernel, *args, **kwargs)
        if (
            kwargs.get("out") is None
            and (
                torch.compiler.is_compiling()  # traced into Triton's interpreter on the CPU: KeyError(torch.uint64)
                or (
                    torch.is_grad_enabled()
                    and any(
                        isinstance(t, torch.Tensor) and t.requires_grad for t in (*args, *kwargs.values())
                    )
                )
            )
        ):
            # as a PyTorch op: the result is differentiable (the module's kernel records no graph: the weights'
            # gradients lacked its part, silently). This kernel runs the forward, on CPU tensors too. A call
            # with out= writes it and records no graph, as the module's kernel does. Inputs given by name are
            # put in their places (a wrong call is the kernel's own TypeError)
            if self._op is None:  # made once: a training loop calls this every step
                # under torch.compile on a first call there: dynamo cannot trace the op text's json.dumps
                made = _outside_graph(_made_op) if torch.compiler.is_compiling() else _made_op
                self._signature, self._op = made(self)
            signature = self._signature
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:  # a wrong call: the kernel's own error, in its words
                return self.module.kernel(*args, **kwargs)
            inputs = []
            for name, value in bound.arguments.items():  # in the signature's order; `out` is keyword-only
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    inputs += value
                elif kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                    inputs.append(value)
            return self._op(*inputs)
        return self.module.kernel(*args, **kwargs)

    def launch(self, *args, **kwargs):
        """The generated module's `kernel`, as is: no autograd graph, whatever the inputs (kt.nn's ops call it)."""
        return self.module.kernel(*args, **kwargs)

    def as_op(self):
        """This kernel as `f(x, *weights)` through the custom op `torch.ops.kt.apply`: differentiable, and one
        node under torch.compile(fullgraph=True) and torch.export (kt.nn.functional.kernel_op)."""
        from kt.nn.functional import kernel_op

        return kernel_op(self)

    def __reduce__(self):
        # a module cannot be pickled (copy.deepcopy of a model holding a kernel, torch.save of it failed with
        # "cannot pickle 'module' object"): the kernel is imported again from its source, as kt.load does
        return _rebuild, (self.source, self.spec, self.config, self.meta, self.path)

    def __deepcopy__(self, memo) -> Kernel:
        # nothing in it changes once made: a deep copy of a model shares its kernels, as it shares torch ops
        return self

    @property
    def source(self) -> str:
        return self._source

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


def _made_op(kernel: Kernel):
    """The module kernel's signature, and the kernel as a PyTorch op (kt.nn.functional.kernel_op)."""
    from kt.nn.functional import kernel_op

    return inspect.signature(kernel.module.kernel), kernel_op(kernel, exact=True)


def _eager(kernel, *args, **kwargs):
    return kernel(*args, **kwargs)


_OUTSIDE: dict[Any, Any] = {}


def _outside_graph(function):
    """`function` as torch.compile runs it: outside its graph, as it is (a graph break). Wrapped on first use,
    under torch.compile: torch.compiler.disable imports torch._dynamo, which `import kt.nn` leaves out."""
    wrapped = _OUTSIDE.get(function)
    if wrapped is None:
        wrapped = _OUTSIDE[function] = torch.compiler.disable(function)
    return wrapped


def _rebuild(source: str, spec, config, meta: dict[str, Any], path: Path | None) -> Kernel:
    """A pickled Kernel: its module imported from `source` through kt's kernel cache (`load_source`, which takes
    a temporary folder where the cache cannot be written: a read-only home)."""
    from kt.codegen.emit import load_source

    return Kernel(load_source(source), spec, config, meta, path)
