"""The ops a model runs that kt can tune: every nn.Linear (or transformers Conv1D, GPT-2's: an nn.Linear with
its weight transposed, read as that nn.Linear; or a 1x1 convolution, whose positions are its rows: the
nn.Linear `as_linear` reads) and kt.nn layer it calls on an example input, as
op.yaml specs at the batch bucket kt.nn selects kernels by (`kt tune --from-model`, issue 18).

The model runs once under `torch.no_grad()` with forward hooks on every module; a module's input (positional,
or the `input=` / `x=` keyword) gives its rows (all leading dims), rounded up to their bucket
(kt.nn.selection.bucket), and its dtype is the weight's, or autocast's where autocast runs the layer in another.
Only forward ops are found: a training model's backward kernels (a Monarch's transpose, the weight gradients)
are what `kt.nn.selections().write_yaml()` adds after a training step. An nn.Linear becomes a dense op with
its weight as B stored transposed (`layout: {a: row, b: col}`, what `F.linear` multiplies by), a kt.nn layer its
own op. torch runs an nn.Linear, so its artifact serves a kt.nn.DenseLinear made from it (the CLI says so).
Ops with equal math (the same op, shape and bucket: a repeated block, say) are tuned once, under the first
module's name. A module kt cannot tune (an nn.Linear in float64, say) is listed with why.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kt.dtypes import DTYPES, dtype_name
from kt.errors import KtError, SpecError, one_line
from kt.spec import OpSpec


@dataclass
class ModelOps:
    """What `model_ops` found: the specs to tune, each with the modules that run it, and what it skipped."""

    specs: list[OpSpec] = field(default_factory=list)
    modules: dict[str, list[str]] = field(default_factory=dict)  # spec name -> the module paths that run it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (module path, why)
    # the plain nn.Linear (and transformers Conv1D) modules among those tuned: torch runs them, so kt.nn never
    # reads their artifacts until they are kt.nn.DenseLinear layers
    plain: list[str] = field(default_factory=list)
    conv1d: list[str] = field(default_factory=list)  # those of them that are transformers Conv1D modules
    pointwise: list[str] = field(default_factory=list)  # those of them that are 1x1 convolutions
    # those of them that are subclasses of nn.Linear with a forward of their own (an adapter's; a parametrize'd
    # layer's ParametrizedLinear is not one: structurize replaces it), which kt.nn.structurize leaves alone: a
    # DenseLinear is made from them by hand
    subclassed: list[str] = field(default_factory=list)


def model_ops(
    model: nn.Module, *args: Any, name_prefix: str = "", extra_rows: tuple[int, ...] = (), **kwargs: Any
) -> ModelOps:
    """Run `model(*args, **kwargs)` once and collect the ops kt can tune (see the module's docstring); each op's
    name is `name_prefix` (the factory's name, so that two models tuned into one folder keep their artifacts
    apart), the module's path and the bucket. Each op is also listed at the buckets of `extra_rows` (row counts
    the example does not run: a generation's decode steps, one row per sequence)."""
    from kt.nn.functional import _row_count
    from kt.nn.layers import (
        FFT,
        _KtLinear,
        _not_pointwise,
        as_linear,
        autocast_dtype,
        conv1d,
        conv1d_subclass,
        convolution_subclassed,
        pointwise,
        unparametrized,
    )
    from kt.nn.selection import bucket_spec, parsed_op

    found = ModelOps()
    by_signature: dict[str, str] = {}

    def skip(path: str, why: str) -> None:
        """A module listed as skipped once for each reason, however often it is called (a layer called three
        times was "3 skipped")."""
        if (path or "(model)", why) not in found.skipped:
            found.skipped.append((path or "(model)", why))

    def record(path: str, module: nn.Module, inputs: tuple, keywords: dict, output: Any) -> None:
        # a layer called as layer(x=...) or linear(input=...) was missed: its positional inputs are empty
        # (layer(x=t, input=None), which the layer takes, was missed too)
        x = inputs[0] if inputs else keywords.get("input")
        if x is None:
            x = keywords.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return
        kind = None  # the list of a 1x1 convolution's or a Conv1D's paths, where it is one
        if isinstance(module, (_KtLinear, FFT)):
            op = dict(parsed_op(module.op_text))
            if isinstance(module, _KtLinear) and (autocast := autocast_dtype(x)) is not None:
                op["dtype"] = dtype_name(autocast)  # the dtype the layer runs in under torch.autocast
            # a DenseLinear multiplies x's rows (all leading dims) as one matrix; _row_count reads a dense op's
            # x as that matrix (its M is shape[-2]), which a 3-D input's batch of rows is not
            rows = math.prod(x.shape[:-1]) if op["op"] == "dense" else _row_count(op, x)
        elif conv1d_subclass(module):  # left alone by structurize: listed as skipped, not passed over unsaid
            skip(
                path,
                f"a {type(module).__name__}: a subclass of transformers' Conv1D, whose forward may differ",
            )
            return
        # a 1x1 convolution of a subclass (timm's StdConv2d): left alone by structurize, listed here
        elif (base := convolution_subclassed(module)) and not _not_pointwise(module):
            skip(path, f"a {type(module).__name__}: a subclass of torch's {base}, whose forward may differ")
            return
        elif isinstance(module, nn.Linear) or conv1d(module) or pointwise(module):
            positions = None
            # where a 1x1 convolution or a Conv1D is tuned, its kind is noted (with the plain layers, below):
            # one skipped here made the note say "nn.Linear or 1x1 convolution layer" of no convolution tuned
            kind = found.pointwise if pointwise(module) else found.conv1d if conv1d(module) else None
            if pointwise(module):  # a 1x1 convolution: its (strided) positions are the rows
                if not isinstance(output, torch.Tensor) or not module.out_channels:
                    return
                positions = output.numel() // module.out_channels
                module = as_linear(module)
            elif conv1d(module):  # transformers' Conv1D: an nn.Linear with its weight transposed
                module = as_linear(module)
            if not module.in_features or not module.out_features:
                skip(
                    path,
                    f"no features ({module.in_features} in, {module.out_features} out): no kernel to tune",
                )
                return
            weight_dtype = (
                autocast_dtype(x) or module.weight.dtype
            )  # F.linear runs in autocast's dtype under it
            try:
                dtype = dtype_name(weight_dtype)
            except KeyError:
                skip(path, f"{weight_dtype} is not a kt dtype ({', '.join(DTYPES)})")
                return
            # the weight F.linear multiplies, not the in/out_features attributes (stale where a weight was swapped)
            out_features, in_features = module.weight.shape
            op = {
                "op": "dense",
                "dtype": dtype,
                "shape": {"n": out_features, "k": in_features},
                "layout": {"a": "row", "b": "col"},
            }
            # numel // in_features counted no rows when in_features is 0
            rows = math.prod(x.shape[:-1]) if positions is None else positions
        else:
            return
        if rows == 0:
            skip(path, "its example input has no rows (an empty batch)")
            return
        try:
            # checked once here (`add` makes it again per bucket); an nn.Linear's K is its in_features, which
            # bucket_spec must not lower as it does a weight gradient's (16x1x8388608 for 2**24 + 1 features)
            bucket_spec({**op, "name": "op"}, rows, lower_k=False)
        except SpecError as exc:  # past kt's limits (2**24 features or rows): the model ran; skip this op
            skip(path, f"beyond kt's limits: {exc}")
            return
        if kind is not None and (path or "(model)") not in kind:
            kind.append(path or "(model)")
        if not isinstance(module, (_KtLinear, FFT)) and (path or "(model)") not in found.plain:
            found.plain.append(path or "(model)")  # once, though it is called twice
            if unparametrized(module) is not nn.Linear:
                found.subclassed.append(path or "(model)")
        for count in (rows, *extra_rows):  # a bucket the example reaches, or a row count asked for
            add(path, op, count)

    def add(path: str, op: dict[str, Any], rows: int) -> None:
        """The spec of `op` at the bucket of `rows`, named after `path`; once for ops of equal math."""
        spec = bucket_spec({**op, "name": "op"}, rows, lower_k=False)
        signature = json.dumps(spec.signature(), sort_keys=True)
        # six hex digits of the whole op, as `selections().specs()` names them: two models whose factories
        # share a name (the README's example_model) tuned into one folder replaced each other's artifacts
        digest = hashlib.sha256(signature.encode()).hexdigest()[:6]
        # the spec's own rows: past a spec's limits bucket_spec takes a smaller bucket (b33554432 named a spec of
        # 2**24 rows)
        spec_rows = spec.shape.m if spec.op == "dense" else spec.shape.batch
        name = _name(name_prefix, path, spec_rows, digest)
        spec = bucket_spec({**op, "name": name}, rows, lower_k=False)
        if signature in by_signature:
            paths = found.modules[by_signature[signature]]
            if (
                path or "(model)"
            ) not in paths:  # another module with the same math (a module called twice: once)
                paths.append(path or "(model)")
            return
        taken, count = name, 1
        while taken in found.modules:  # another op's name ("a b" and "a_b" both give a_b; cut long paths)
            count += 1
            taken = _name(name_prefix, path, spec_rows, digest, count)
        if taken != name:
            spec = bucket_spec({**op, "name": taken}, rows, lower_k=False)
        by_signature[signature] = spec.name
        found.modules[spec.name] = [path or "(model)"]
        found.specs.append(spec)

    from kt.nn.structurize import scripted, uncompiled

    model = uncompiled(model)  # its ops named by the user's module paths, not `_orig_mod.` ones
    why = scripted(model)  # no hooks, and no nn.Linear: a traceback, or "runs no nn.Linear"
    if why:
        raise KtError(f"--from-model: {why}")
    handles = [
        module.register_forward_hook(lambda m, i, k, o, path=path: record(path, m, i, k, o), with_kwargs=True)
        for path, module in model.named_modules()
    ]
    # a norm layer in training mode updates its running statistics from the example: put back after the run
    # (eval() instead would take other paths, nn.TransformerEncoderLayer's fast one past its nn.Linear layers)
    norms = [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        and module.training
        and module.track_running_stats
    ]
    # a lazy norm not run yet has no statistics to keep (cloning its buffers raised, a traceback): it is reset
    # after the run instead, as it was made
    lazy = [
        m for m in norms if any(nn.parameter.is_lazy(b) for b in m.buffers(recurse=False) if b is not None)
    ]
    # every buffer the run may update is put back, not only the norms' statistics: a spectral_norm's power
    # iteration (its _u and _v) advanced on each forward in training mode, as a model's own counters or caches may
    # (a buffer the run replaced by another tensor is put back too)
    statistics = [
        (module, name, buffer, buffer.clone())
        for module in model.modules()
        if module not in lazy
        for name, buffer in module.named_buffers(recurse=False)
        if not nn.parameter.is_lazy(buffer)
    ]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except (
        Exception,
        SystemExit,
    ) as exc:  # the user's model on the user's input: one line, as any bad input is
        raise KtError(
            f"--from-model: the model failed on its example input: {one_line(exc)}{_raised_at(exc)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, name, buffer, kept in statistics:
                module._buffers[name] = buffer
                if buffer.shape == kept.shape:
                    buffer.copy_(kept)
                else:  # resized in place (a cache grown by the run)
                    buffer.set_(kept)
            for module in lazy:
                if not any(nn.parameter.is_lazy(b) for b in module.buffers(recurse=False) if b is not None):
                    module.reset_running_stats()
    return found


def _raised_at(exc: BaseException) -> str:
    """Where `exc` was raised, for the one line that reports a model's failure: ` (at file.py:LINE: code)`, the
    file named from its package on (an AttributeError with no message said nothing else)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    parts = Path(last.filename).parts
    shown = "/".join(parts[-2:]) if len(parts) > 1 else last.filename
    code = f": {' '.join(last.line.split())[:120]}" if last.line else ""
    return f" (at {shown}:{last.lineno}{code})"


def _name(prefix: str, path: str, rows: int, digest: str, count: int = 1) -> str:
    """An artifact name for the module at `path` (dots kept) after `prefix`, its bucket and `digest` (and
    `-count` for the count-th op of that name): letters, digits, _ . - only, 100 at most (the path is cut,
    never the ends)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(p for p in (prefix, path) if p)) or "model"
    if not base[0].isalnum():
        base = f"m{base}"
    tail = f"_b{rows}_{digest}" + (f"-{count}" if count > 1 else "")
    return f"{base[: 100 - len(tail)]}{tail}"


def load_factory(target: str) -> tuple[nn.Module, tuple, dict]:
    """`path/to/file.py:name` or `package.module:name`: call `name()`, which returns the model and an example
    input (a tensor, or a tuple of positional args, optionally followed by a dict of keyword args; a mapping
    that is no dict, a tokenizer's BatchEncoding say, is read as keyword args too)."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise KtError(f"--from-model: {target!r} must be MODULE:FACTORY or path/to/file.py:FACTORY")
    if not where.endswith(".py") and ("/" in where or os.sep in where):
        # a folder, or a file of another kind, was read as a module name ("cannot import '/tmp/models'")
        raise _not_a_module(where)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise KtError(f"--from-model: {where!r} not found")
        # as `python file.py` runs it: its folder first on sys.path, so it imports the modules beside it
        _importable(str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(f"kt_model_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            with _said() as said:
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a syntax error, an import that fails, argparse: one line
            raise KtError(f"--from-model: {where!r} failed to load: {_why(exc, said)}") from None
    else:
        _importable(os.getcwd())  # as `python -m` runs a module: the current folder first on sys.path
        try:
            with _said() as said:
                module = importlib.import_module(where)
        except ImportError as exc:
            if Path(where).is_file():  # a file of another kind, read as a module name
                raise _not_a_module(where) from None
            raise KtError(f"--from-model: cannot import {where!r} ({exc})") from None
        except (Exception, SystemExit) as exc:
            raise KtError(f"--from-model: {where!r} failed to load: {_why(exc, said)}") from None
    missing = object()
    factory = getattr(module, attr, missing)
    if factory is missing:
        names = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == module.__name__
        )
        listing = (
            f"; its functions: {', '.join(names[:10])}" + (", ..." if len(names) > 10 else "")
            if names
            else ""
        )
        raise KtError(f"--from-model: {where!r} has no function {attr!r}{listing}")
    if not callable(factory):
        raise KtError(
            f"--from-model: {attr!r} in {where!r} is not callable ({type(factory).__name__}); FACTORY must be a "
            "function that returns (model, example_input)"
        )
    try:
        made = factory()
    except (Exception, SystemExit) as exc:
        raise KtError(f"--from-model: {attr}() raised {_why(exc)}") from None
    if not isinstance(made, tuple) or len(made) != 2 or not isinstance(made[0], nn.Module):
        got = (
            f"({', '.join(type(item).__name__ for item in made)})"
            if isinstance(made, tuple)
            else type(made).__name__
        )
        raise KtError(
            f"--from-model: {attr}() must return (model, example_input), model an nn.Module; got {got}"
        )
    model, example = made
    args = example if isinstance(example, tuple) else (example,)
    kwargs: dict = {}
    if args and isinstance(args[-1], Mapping):  # a BatchEncoding is a UserDict: it was passed as input_ids
        args, kwargs = args[:-1], dict(args[-1])
    return model, args, kwargs


def _not_a_module(where: str) -> KtError:
    """The error for a --from-model target that names a path but no .py file."""
    what = (
        "is a folder"
        if Path(where).is_dir()
        else "is not a .py file"
        if Path(where).exists()
        else "not found"
    )
    return KtError(f"--from-model: {where!r} {what}; give path/to/file.py:FACTORY or package.module:FACTORY")


def _importable(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _why(exc: BaseException, said: io.StringIO | None = None) -> str:
    """`one_line`, and for a SystemExit (argparse at a script's top level, sys.exit) what it exited with and the
    last line it wrote to stderr."""
    if isinstance(exc, SystemExit):
        last = [line for line in (said.getvalue() if said is not None else "").splitlines() if line.strip()]
        words = f" ({last[-1].strip()})" if last else ""
        return f"SystemExit({exc.code!r}): it exited (argparse reading kt's command line, or sys.exit){words}"
    return one_line(exc)


@contextlib.contextmanager
def _said() -> Iterator[io.StringIO]:
    """The model file's stderr while it loads, kept: written out as it was when it loads, and only its last line
    in kt's one-line error when it exits (argparse printed its usage and an error under kt's name first)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            yield said
    except SystemExit:
        raise
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise
    else:
        sys.stderr.write(said.getvalue())
