"""Swap a model's nn.Linear layers for structured kt layers, by rules on their names."""

from __future__ import annotations

import fnmatch
import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kt.errors import shown
from kt.nn.layers import (
    CONVOLUTIONS,
    OTHER_NAMES,
    Pointwise,
    _KtLinear,
    _not_pointwise,
    as_linear,
    conv1d,
    conv1d_subclass,
    convolution_subclassed,
    own_names,
    pointwise,
    unparametrized,
)

Factory = Callable[[nn.Linear], nn.Module]
Rules = Mapping[str, Factory] | Callable[[str, nn.Linear], nn.Module | None]


def _check_factory(pattern: str, factory: object) -> None:
    """Refuse a rule's factory that is no function of an nn.Linear, before any layer is made: a kt layer's
    class (`{"*": DenseLinear}` called `DenseLinear(linear)`: "missing 1 required positional argument:
    'out_features'") or a layer already made (called on the nn.Linear as its input)."""
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        made = "a function that makes the layer from the nn.Linear"
        params = inspect.signature(factory.from_dense).parameters if hasattr(factory, "from_dense") else {}
        # a kt layer's from_dense (Pointwise's takes a convolution, which structurize wraps itself)
        if list(params)[:1] == ["linear"]:
            given = ", ".join(f"{n}=..." for n, p in list(params.items())[1:] if p.default is p.empty)
            made = f"{factory.__name__}.from_dense" + (
                f" with its parameters, e.g. lambda l: {factory.__name__}.from_dense(l, {given})"
                if given
                else ""
            )
        raise TypeError(
            f"structurize: the rule for {pattern!r} is the class {factory.__name__}; a rule's factory takes "
            f"the nn.Linear and returns its layer: give {made}"
        )
    if isinstance(factory, nn.Module) or not callable(factory):
        raise TypeError(
            f"structurize: the rule for {pattern!r} is {'the layer' if isinstance(factory, nn.Module) else 'a'} "
            f"{type(factory).__name__}, not a factory: give a function that takes the nn.Linear and returns its "
            "layer (e.g. kt.nn.DenseLinear.from_dense, or lambda l: LowRankLinear.from_dense(l, rank=32))"
        )


def _check_rule_function(rules: Callable) -> None:
    """Refuse a function rule that cannot take (name, linear): a factory of the nn.Linear alone
    (`structurize(model, DenseLinear.from_dense)`: "from_dense() takes 2 positional arguments but 3 were given")
    or a layer's class, which would be called as DenseLinear(name, linear)."""
    one = "for one factory over every layer give {'*': factory}"
    if (isinstance(rules, type) and issubclass(rules, nn.Module)) or isinstance(rules, nn.Module):
        raise TypeError(
            f"structurize: rules is the {'class' if isinstance(rules, type) else 'layer'} "
            f"{getattr(rules, '__name__', type(rules).__name__)}, not a function of (name, linear) or a mapping "
            f"of name patterns to factories; {one} (e.g. {{'*': kt.nn.DenseLinear.from_dense}})"
        )
    try:
        inspect.signature(rules).bind("name", "linear")
    except TypeError:
        raise TypeError(
            f"structurize: rules is a function that cannot take (name, linear): a function rule is called with "
            f"each layer's name and nn.Linear and returns its layer or None; {one}"
        ) from None
    except ValueError:  # no signature to read (a builtin): its call says
        pass


def structurize(model: nn.Module, rules: Rules) -> list[str]:
    """Replace, in place, each `nn.Linear` of `model` that a rule matches; returns the replaced layers' names.

    `rules` maps glob patterns on a layer's qualified name (as `model.named_modules()` gives it, e.g.
    `"blocks.*.mlp.fc1"`, `"*"`) to a factory `linear -> layer` (e.g. `lambda l: LowRankLinear.from_dense(l,
    rank=32)`); the first pattern that matches wins, and a pattern that matches no nn.Linear is an error (a typo
    would otherwise replace nothing, silently). Or `rules` is a function `(name, linear) -> layer or None`. A
    factory's layer must be an nn.Module whose in_features and out_features attributes are the linear's. Every
    layer is made and checked before any is swapped in: on an error the model is left as it was. A factory that
    is a layer's class (`DenseLinear` for `DenseLinear.from_dense`) or no function, and a function rule that
    cannot take (name, linear), are refused first, naming what to give.

    Only modules of type nn.Linear itself are replaced, and Hugging Face transformers' Conv1D (GPT-2's
    projections: an nn.Linear's math with the weight transposed), whose rule is given the nn.Linear it computes
    (`kt.nn.layers.as_linear`), each also under torch.nn.utils.parametrize (its ParametrizedLinear computes
    nn.Linear's math on the weight its parametrizations compute: the new layer is made from that weight, with
    a warning that they are gone). A torch Conv1d, Conv2d or Conv3d of kernel 1, no padding and one group (a
    CNN's pointwise convolution, any stride) is a matmul over its channels: its rule is given the nn.Linear it
    computes (`as_linear`), and the layer made goes in as a `kt.nn.Pointwise` around it (its state under
    `layer.`); a pattern that matches only other convolutions says why they are none. Another subclass of
    nn.Linear (an adapter's) may compute something else, and a pattern that matches only such a module says
    so. A model that
    is itself an nn.Linear is refused (it cannot be replaced in place).

    An nn.Linear held under several names (`model.b = model.a`) is replaced under all of them by one layer,
    made by the rule of the first of its names (in `named_modules()` order) that a rule matches, so they stay
    one layer; all those names are returned. Two nn.Linear modules that share a weight tensor (a tied head) are
    two layers: each new layer is made from its own (`from_dense` copies), so they are no longer tied.

    A new layer takes the replaced one's mode (`model.eval()` stays in force) and freezing: a frozen weight
    freezes the layer's weights, a frozen bias its bias. Hooks registered on an nn.Linear stay on it and are
    no longer called: a warning names each such layer (register them again on the new one).
    """
    if not isinstance(model, nn.Module):  # a state_dict or a tensor failed on named_modules' AttributeError
        raise TypeError(f"structurize: model must be an nn.Module, got {type(model).__name__}")
    model = uncompiled(model)
    why = scripted(model)
    if why:  # its layers are no nn.Linear: "it has no nn.Linear"
        raise TypeError(f"structurize: {why}")
    # its name is "", which "*" matches: setattr(model, "", layer) added one (a root Conv1D or 1x1 convolution
    # too: reported replaced, its forward still the dense one)
    if isinstance(model, nn.Linear) or conv1d(model) or pointwise(model):
        kind = "an nn.Linear" if isinstance(model, nn.Linear) else f"a {type(model).__name__}"
        raise ValueError(
            f"structurize: the model is itself {kind}, which cannot be replaced in place; make the layer "
            "directly (e.g. LowRankLinear.from_dense(linear, rank=...)), or wrap it (nn.Sequential(linear))"
        )
    aliases: dict[int, list[str]] = {}  # every name of each nn.Linear
    linears: dict[int, nn.Linear] = {}
    subclassed: dict[str, str] = {}  # name -> class of each nn.Linear subclass (left alone)
    convolutions: dict[str, str] = {}  # name -> why, of each convolution that is no matmul (a pattern's miss)
    made: dict[str, str] = {}  # name -> what, of each kt.nn layer (a pattern's miss too)
    for name, module in model.named_modules(remove_duplicate=False):
        cls = unparametrized(module)
        if cls is nn.Linear or conv1d(module) or pointwise(module):
            aliases.setdefault(id(module), []).append(name)
            linears[id(module)] = module
        elif isinstance(module, nn.Linear):
            subclassed[name] = _left_alone(module)  # its forward may differ (an adapter's)
        elif conv1d_subclass(module):  # was left alone without a word, and a pattern of it "matched nothing"
            subclassed[name] = (
                f"is a {type(module).__name__}: a subclass of transformers' Conv1D, whose forward may differ, "
                "which structurize leaves alone"
            )
        elif base := convolution_subclassed(module):
            # a 1x1 convolution of a subclass (timm's StdConv2d standardizes its weight): named where matched
            if _lazy(module):  # (it was called a subclass whose forward may differ)
                subclassed[name] = (
                    f"is an nn.{type(module).__name__} not run yet, with no weight to build from; run the model "
                    f"once (its first forward makes it an nn.{base}), then structurize"
                )
            elif not _not_pointwise(module):
                subclassed[name] = (
                    f"is a {type(module).__name__}: a subclass of {base}, whose forward may differ (timm's "
                    "StdConv2d standardizes its weight), which structurize leaves alone"
                )
        elif cls in CONVOLUTIONS:
            convolutions[name] = (
                f"is a {cls.__name__} of {_not_pointwise(module)}: no matmul over its channels"
            )
        elif isinstance(module, (_KtLinear, Pointwise)):  # structurize run twice (a notebook cell) said only
            # "it has no nn.Linear"
            made[name] = f"is already a kt.nn.{type(module).__name__}"
    if isinstance(rules, Mapping):
        patterns = list(rules.items())
        for pattern, factory in patterns:
            if not isinstance(pattern, str):
                raise TypeError(
                    f"structurize: a rule's pattern must be a str (a glob over module names such as "
                    f"'blocks.*.mlp.fc1'), got {type(pattern).__name__} {pattern!r}"
                )
            _check_factory(pattern, factory)
        names = [name for names in aliases.values() for name in names]
        for pattern, _ in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                listing = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                others = [
                    f"{n!r} {why}"
                    for n, why in [*subclassed.items(), *convolutions.items(), *made.items()]
                    if fnmatch.fnmatchcase(n, pattern)
                ]
                skipped = f" ({'; '.join(others[:3])})" if others else ""
                kinds = "nn.Linear layers" + (
                    " and 1x1 convolutions" if any(map(pointwise, linears.values())) else ""
                )
                raise ValueError(
                    f"structurize: the pattern {pattern!r} matches no nn.Linear of the model{skipped}; "
                    + (
                        f"its {kinds}: {listing}"
                        if names
                        else "it has no nn.Linear" + (" or 1x1 convolution" if convolutions else "")
                    )
                )

        def rule_of(name: str) -> tuple[str, Factory] | None:
            return next(((p, f) for p, f in patterns if fnmatch.fnmatchcase(name, p)), None)

        # a pattern every layer of which an earlier pattern takes first does nothing: said, as a pattern that
        # matches nothing is refused ({"*": ..., "0": ...} made layer 0 by "*" without a word)
        winners = {rule[0] for rule in map(rule_of, names) if rule is not None}
        early_said = []
        for pattern in (p for p, _ in patterns if p not in winners):
            earlier = dict.fromkeys(rule_of(n)[0] for n in names if fnmatch.fnmatchcase(n, pattern))
            early_said.append(
                f"structurize: the rule {pattern!r} is not used: every layer it matches is matched first by an "
                f"earlier pattern ({', '.join(map(repr, earlier))}); the first pattern that matches a name makes "
                "its layer"
            )

        def choose(name: str, linear: nn.Linear):
            rule = rule_of(name)
            return None if rule is None else rule[1](linear)

    elif callable(rules):
        _check_rule_function(rules)
        choose, rule_of, early_said = rules, None, []
    else:
        raise TypeError(
            f"structurize: rules must be a mapping of name patterns to factories or a function, got {type(rules).__name__}"
        )
    chosen, said = [], list(early_said)  # warnings said once every layer is made (none where a rule fails)
    for key, module in linears.items():
        _fresh_weight(module)
        # what the rules read: an nn.Linear (a view of a Conv1D's or a 1x1 convolution's weight)
        linear = as_linear(module) if conv1d(module) or pointwise(module) else module
        for name in aliases[key]:
            try:
                layer = choose(name, linear)
            except (ValueError, TypeError) as exc:  # a factory's refusal, named by the layer it was making
                if hasattr(module, "_hf_hook"):  # (on its meta weight, say): why is the hook
                    raise ValueError(_dispatched(name)) from None
                raise type(exc)(f"structurize: the rule for {name!r}: {exc}") from None
            if layer is not None:
                break
        else:
            continue
        if hasattr(module, "_hf_hook"):
            raise ValueError(_dispatched(name))
        if "forward" in vars(module):
            said.append(
                f"structurize: {name!r} has its forward replaced on the module itself, which stays on the "
                "replaced nn.Linear and is no longer called; replace the new layer's forward likewise if it must be"
            )
        if rule_of is not None:
            said += _unused_rules(aliases[key], name, rule_of)
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"structurize: the rule for {name!r} returned a {type(layer).__name__}, not an nn.Module "
                "(or None to keep the layer)"
            )
        if not (hasattr(layer, "in_features") and hasattr(layer, "out_features")):  # was "maps ? -> ?"
            raise ValueError(
                f"structurize: the layer made for {name!r} ({type(layer).__name__}) has no in_features and "
                f"out_features attributes, which structurize checks it by; set them ({name!r} maps "
                f"{linear.in_features} -> {linear.out_features})"
            )
        if layer.in_features != linear.in_features or layer.out_features != linear.out_features:
            raise ValueError(
                f"structurize: the layer made for {name!r} maps {layer.in_features} -> "
                f"{layer.out_features} features; {name!r} maps {linear.in_features} -> {linear.out_features}"
            )
        if pointwise(module):  # the layer computes the convolution over its channels
            layer = Pointwise(layer, dims=len(module.kernel_size), stride=tuple(module.stride))
        chosen.append((key, layer))
    if isinstance(rules, Mapping):
        said = _left_alone_said(subclassed, [p for p, _ in rules.items()]) + said
    for text in said:
        warnings.warn(text, stacklevel=2)
    holders: dict[int, list[str]] = {}  # every name of each parameter: a weight tied to another module's
    for name, param in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(param), []).append(name)
    replaced = []
    for key, layer in chosen:
        module = linears[key]
        # its weight, or what prune, spectral_norm or a parametrization computes it from (`weight` is then a
        # fresh tensor, held by nobody: a tied weight_orig was untied without a word)
        names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
        own = {f"{alias}.{n}" if alias else n for alias in aliases[key] for n in names}
        # the bias too: BERT's MLM decoder shares cls.predictions.bias, which was left behind, stale, unsaid
        for tensor in ("weight", "bias"):
            held = getattr(module, tensor, None)
            watched = [
                *([held] if isinstance(held, torch.Tensor) else []),
                *(t for c in _computed(module) if c.tensor == tensor for t in c.sources),
            ]
            tied = list(dict.fromkeys(n for p in watched for n in holders.get(id(p), []) if n not in own))
            if tied:  # (an embedding shared with an output head, say): the new layer has weights of its own
                untie = _untie_config(model, linears[key]) if tensor == "weight" else ""
                warnings.warn(
                    f"structurize: the {tensor} of {aliases[key][0]!r} is also {', '.join(map(repr, tied))}; the "
                    f"new layer holds its own, so the two are no longer tied{untie}",
                    stacklevel=2,
                )
        _carry_state(linears[key], layer, aliases[key][0])
        for alias in aliases[key]:
            parent_name, _, child = alias.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer)
            replaced.append(alias)
            encoder_linear = isinstance(parent, nn.TransformerEncoderLayer) and child in (
                "linear1",
                "linear2",
            )
            if (
                encoder_linear and parent.activation_relu_or_gelu
            ):  # (once: its linear2 may follow its linear1)
                _off_fast_path(model, parent, parent_name)
            if conv1d(linears[key]) and getattr(parent, "fan_in_fan_out", None) is True:
                _fan_in_fan_out_off(parent, alias)
    return replaced


def _untie_config(model: nn.Module, linear: nn.Module) -> str:
    """Where `linear` is a transformers model's output embeddings tied by its config to the input embeddings,
    the config says they are not (what the warning adds, else ""): its tie_weights (which
    resize_token_embeddings calls) set the embedding's weight on the new layer, a stray parameter there, and a
    kt output layer then kept its size while the embedding grew."""
    config = getattr(model, "config", None)
    outputs = getattr(model, "get_output_embeddings", None)
    if getattr(config, "tie_word_embeddings", False) is not True or not callable(outputs):
        return ""
    try:
        if outputs() is not linear:
            return ""
    except Exception:  # noqa: BLE001 - a model's own accessor may fail; then nothing is known of the tie
        return ""
    config.tie_word_embeddings = False
    return (
        "; model.config.tie_word_embeddings is now False, so that transformers does not tie them again (its "
        "tie_weights would hang the embedding's weight on the new layer)"
    )


def structurize_as(
    model: nn.Module, state_dict: Mapping[str, Any], dense: str | Sequence[str] = ()
) -> list[str]:
    """Replace each nn.Linear (or Conv1D) of `model` that `state_dict` holds as a kt layer by a layer of that
    kind and shape, so that `model.load_state_dict(state_dict)` then loads it: a structurized model's
    checkpoint (`save_pretrained`, `torch.save(model.state_dict())`) into the model built afresh, without
    the rules, ranks and densities that made it, and without running from_dense on the dense weights.
    Returns the replaced layers' names (as `structurize`, whose handling of shared layers, mode and freezing
    applies). What each layer is, is read from the state_dict's keys and shapes under its name:
    `factors.N` a LowRankLinear, `values` with `crow_indices` and `col_indices` a BlockSparseLinear of that
    pattern, `w1` and `w2` a MonarchLinear, `twiddles` a ButterflyLinear, `terms.N.*` a Sum of those (under a
    1x1 convolution's name, those of its `kt.nn.Pointwise`, under `layer.`, a `layer.weight` a DenseLinear's). A layer
    whose state is a `weight` stays as it is (an nn.Linear's and a DenseLinear's states are alike), unless its
    name matches a glob pattern of `dense` (a DenseLinear then), or it is a transformers Conv1D, which stores
    its weight (in, out), and the weight is (out, in), a DenseLinear's. A square Conv1D's weight has one shape
    either way: name DenseLinear ones in `dense` (else the weight is read as the Conv1D's, transposed). The
    new layers take the replaced layer's device and dtype (a model on the meta device gets meta layers: load
    with assign=True); their weights are drawn, for load_state_dict to overwrite."""
    if not isinstance(model, nn.Module):  # None or a tensor failed on `_modules`, an AttributeError
        raise TypeError(f"structurize_as: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"structurize_as: state_dict must be a mapping of names to tensors (a state_dict, or safetensors' "
            f"load_file), got {type(state_dict).__name__}"
        )
    patterns = (
        (dense,) if isinstance(dense, str) else tuple(dense) if isinstance(dense, (list, tuple)) else None
    )
    if patterns is None or not all(isinstance(p, str) for p in patterns):  # 3 or None: tuple()'s TypeError
        raise TypeError(
            f"structurize_as: dense must be a glob pattern or a sequence of them, got {shown(dense)}"
        )
    model, state_dict = uncompiled(model), own_names(state_dict)  # a compiled model's state: `_orig_mod.` off
    layers = [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if unparametrized(module) is nn.Linear
        or conv1d(module)
        or pointwise(module)
        or type(module).__module__.startswith("kt.nn")  # made already (structurize_as run twice)
    ]
    for pattern in patterns:  # a typo read a square DenseLinear's weight as a Conv1D's, transposed, unsaid
        if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
            listing = ", ".join(layers[:8]) + (f", ... ({len(layers)} in all)" if len(layers) > 8 else "")
            raise ValueError(
                f"structurize_as: the dense pattern {pattern!r} matches no nn.Linear, Conv1D or 1x1 convolution "
                f"of the model; its layers: {listing or 'none'}"
            )

    def rule(name: str, linear: nn.Linear) -> nn.Module | None:
        prefix = f"{name}." if name else ""
        module = model.get_submodule(name)
        convolution = pointwise(module)
        # a Pointwise's state is its layer's, under `layer.` (the convolution's own weight is 4-D)
        prefix += "layer." if convolution else ""
        try:
            layer = _layer_of_state(state_dict, prefix, linear, bias=True)
            weight = state_dict.get(prefix + "weight")
            named = convolution or any(fnmatch.fnmatchcase(name, p) for p in patterns)
            transposed = (
                conv1d(module)
                and isinstance(weight, torch.Tensor)
                and tuple(weight.shape)
                == (linear.out_features, linear.in_features)
                != (linear.in_features, linear.out_features)
            )  # a Conv1D's weight is (in, out): one of (out, in) is a DenseLinear's, made from it
            if layer is None and isinstance(weight, torch.Tensor) and (named or transposed):
                from kt.nn.layers import DenseLinear

                layer = DenseLinear(
                    linear.in_features, linear.out_features, isinstance(state_dict.get(prefix + "bias"), torch.Tensor),
                    device=linear.weight.device, dtype=linear.weight.dtype,
                )  # fmt: skip
        except (TypeError, ValueError) as exc:  # past structurize's wrapping, which names a rule
            raise _StateError(f"structurize_as: {name!r}: {_own_words(exc)}") from None
        for leaf, tensor in [] if layer is None else [*layer.named_parameters(), *layer.named_buffers()]:
            theirs = state_dict.get(prefix + leaf)
            if isinstance(theirs, torch.Tensor) and theirs.shape != tensor.shape:
                raise _StateError(
                    f"structurize_as: {name!r}: the state_dict's {prefix + leaf} is {tuple(theirs.shape)}, where "
                    f"a {type(layer).__name__} of its {linear.in_features} -> {linear.out_features} features "
                    f"has {tuple(tensor.shape)}"
                )
        return layer

    _check_holders(model, state_dict)
    try:
        return structurize(model, rule)
    except _StateError as exc:
        raise ValueError(str(exc)) from None


# the names under which a kt layer keeps its state (a Pointwise's `layer.` is followed through)
_KT_LEAVES = {"factors", "values", "crow_indices", "col_indices", "w1", "w2", "twiddles", "terms"}


def _check_holders(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """A ValueError where the state_dict holds a kt layer's tensors under a name that is no module of `model`:
    structurize_as replaced nothing there, without a word, and load_state_dict then listed every key as missing
    or unexpected. transformers' save_pretrained writes some models' weights under their checkpoints' older
    names (SegFormer's, under transformers 5, which renames them as from_pretrained loads)."""
    modules = dict(
        model.named_modules(remove_duplicate=False)
    )  # a layer held under two names: state under both
    lost = []
    for key in state_dict:
        parts = key.split(".") if isinstance(key, str) else []
        at = next((i for i, part in enumerate(parts) if part in _KT_LEAVES), None)
        if at is None:
            continue
        path = parts[:at]
        if path and path[-1] == "layer" and pointwise(modules.get(".".join(path[:-1]))):
            path = path[:-1]  # a Pointwise's layer, where the model holds the 1x1 convolution
        if ".".join(path) not in modules:
            lost.append((key, ".".join(path)))
    if lost:
        key, path = lost[0]
        raise ValueError(
            f"structurize_as: the state_dict holds a kt layer's tensors under {path!r} ({key!r}"
            + (f", and {len(lost) - 1} more keys" if len(lost) > 1 else "")
            + f"), which is no module of the model; {OTHER_NAMES}, and give structurize_as that"
        )


class _StateError(Exception):
    """structurize_as's refusal of a layer's state, which structurize passes on unwrapped."""


def _own_words(exc: BaseException) -> str:
    """A layer's error without its own name (`BlockSparseLinear.load_pattern: ...`)."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and " " not in head else text


def _layer_of_state(
    state_dict: Mapping[str, Any], prefix: str, linear: nn.Linear, bias: bool
) -> nn.Module | None:
    """The kt layer `state_dict` holds under `prefix` for an nn.Linear of `linear`'s features, device and dtype;
    None where it holds none (a weight: an nn.Linear's or a DenseLinear's state)."""
    from kt.nn.layers import BlockSparseLinear, ButterflyLinear, LowRankLinear, MonarchLinear, Sum

    def get(leaf: str) -> Any:
        return state_dict.get(prefix + leaf)

    where = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    shape = (linear.in_features, linear.out_features)
    has_bias = bias and isinstance(get("bias"), torch.Tensor)
    if isinstance(get("values"), torch.Tensor):
        values, crow, col = get("values"), get("crow_indices"), get("col_indices")
        block = tuple(values.shape[1:])
        if values.dim() != 3 or not isinstance(crow, torch.Tensor) or not isinstance(col, torch.Tensor):
            raise ValueError(
                "a block-sparse layer's state is values (nnz, bo, bi), crow_indices and col_indices"
            )
        layer = BlockSparseLinear(*shape, block, density=1.0, bias=has_bias, **where)
        layer.load_pattern(crow, col)
        return layer
    if isinstance(get("factors.0"), torch.Tensor):
        factors = []
        while isinstance(get(f"factors.{len(factors)}"), torch.Tensor):
            factors.append(get(f"factors.{len(factors)}"))
        if any(f.dim() != 2 for f in factors):
            raise ValueError(
                "a low-rank layer's state is factors.0, factors.1, ..., each 2-D, got "
                + ", ".join(f"factors.{i} {tuple(f.shape)}" for i, f in enumerate(factors))
            )
        ranks = tuple(int(f.shape[1]) for f in factors[:-1])
        return LowRankLinear(*shape, ranks, bias=has_bias, **where)
    if isinstance(get("w1"), torch.Tensor):
        w1, w2 = get("w1"), get("w2")
        if w1.dim() != 3 or not isinstance(w2, torch.Tensor) or w2.dim() != 3:  # an IndexError on a 0-d w1
            raise ValueError(
                f"a Monarch layer's state is w1 (k, p, p) and w2 (k, s, p), got w1 {tuple(w1.shape)} and w2 "
                f"{tuple(w2.shape) if isinstance(w2, torch.Tensor) else type(w2).__name__}"
            )
        return MonarchLinear(*shape, int(w1.shape[0]), bias=has_bias, **where)
    if isinstance(get("twiddles"), torch.Tensor):
        return ButterflyLinear(*shape, bias=has_bias, **where)
    if any(isinstance(k, str) and k.startswith(prefix + "terms.0.") for k in state_dict):
        terms = []
        while any(isinstance(k, str) and k.startswith(f"{prefix}terms.{len(terms)}.") for k in state_dict):
            term = _layer_of_state(state_dict, f"{prefix}terms.{len(terms)}.", linear, bias=False)
            if term is None:
                raise ValueError(f"its terms.{len(terms)} is no kt layer kt can read")
            terms.append(term)
        return Sum(*terms, bias=has_bias)
    return None


def _fan_in_fan_out_off(parent: nn.Module, name: str) -> None:
    """A Conv1D's holder that says its weight is stored (in, out): PEFT's LoRA layer over GPT-2's Conv1D has
    `fan_in_fan_out = True`, by which merge_and_unload transposes the adapter's delta before adding it to its
    base layer's weight. The new layer stores (out, in), as nn.Linear does: the merge added a transposed delta
    (an error for a layer that is not square, and a wrong model without a word for one that is). The holder
    is told, as PEFT itself tells a LoRA layer over an nn.Linear (its forward does not read the flag)."""
    parent.fan_in_fan_out = False
    warnings.warn(
        f"structurize: {name!r} was a Conv1D held by a {type(parent).__name__} with fan_in_fan_out=True (PEFT's "
        "LoRA layer); it is now False, as for an nn.Linear: the new layer stores its weight (out, in)",
        stacklevel=3,
    )


def _off_fast_path(model: nn.Module, layer: nn.TransformerEncoderLayer, name: str) -> None:
    """Switch off PyTorch's fused inference path for an encoder layer whose linear1 or linear2 kt replaced. In
    eval mode that path reads linear1.weight and linear2.weight itself, never calling the layers: a structured
    layer without a `weight` was an AttributeError at the first inference, and a DenseLinear was passed over
    without a word. Its check `activation_relu_or_gelu` is the layer's own switch (the activation itself is
    `layer.activation`); an nn.TransformerEncoder holding the layer no longer packs its input as a nested
    tensor, which the path alone reads (`use_nested_tensor`)."""
    layer.activation_relu_or_gelu = False
    for encoder in model.modules():
        if isinstance(encoder, nn.TransformerEncoder) and any(m is layer for m in encoder.layers):
            encoder.use_nested_tensor = False
    logging.getLogger("kt.nn").info(
        "structurize: %s is an nn.TransformerEncoderLayer: its fused inference path, which reads linear1 and "
        "linear2's weights itself, is switched off so that kt's layers run (with a src_key_padding_mask, the "
        "outputs at padded positions are then computed like the others, where that path gave zeros)",
        name or "the model",
    )


def _carry_state(linear: nn.Linear, layer: nn.Module, name: str) -> None:
    """What `linear` held beyond its tensors that its replacement `layer` must keep: its mode, its frozen
    parameters (a frozen model came back trainable); its hooks are named (they cannot move with it)."""
    layer.train(linear.training)
    computed = {c.tensor: c for c in _computed(linear)}

    def trains(tensor: str) -> bool:
        # a computed weight (with no grad after a forward under torch.no_grad()): the parameters it is computed
        # from say whether it trains
        c = computed.get(tensor)
        return getattr(linear, tensor).requires_grad if c is None else any(t.requires_grad for t in c.sources)

    for param_name, param in layer.named_parameters():
        is_bias = param_name.rpartition(".")[2] == "bias" and linear.bias is not None
        if not trains("bias" if is_bias else "weight"):
            param.requires_grad_(False)
    for c in computed.values():
        # its hook computes the tensor from others at each call: the new layer was made from them as they are
        # (`_fresh_weight`) and holds it as plain weights
        warnings.warn(f"structurize: {name!r} {c.said}", stacklevel=3)
    pre_hooks = {
        key: hook
        for key, hook in linear._forward_pre_hooks.items()
        if not any(hook is c.hook for c in computed.values())
    }
    hooks = [
        kind
        for kind, table in (
            ("forward", linear._forward_hooks),
            ("forward pre-", pre_hooks),
            ("backward", linear._backward_hooks),
            ("backward pre-", linear._backward_pre_hooks),
        )
        if table
    ]
    if hooks:
        warnings.warn(
            f"structurize: {name!r} has {' and '.join(hooks)} hooks, which stay on the replaced nn.Linear "
            "and are no longer called; register them on the new layer",
            stacklevel=3,
        )


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that torch.compile wrapped, or `model`: under the wrapper (an OptimizedModule) every name
    begins with `_orig_mod.`, which no rule's pattern has ("matches no nn.Linear of the model"). A layer
    replaced in it recompiles the wrapper at its next call (its guards see the new module)."""
    while "_orig_mod" in model._modules:
        from torch._dynamo.eval_frame import OptimizedModule

        if not isinstance(model, OptimizedModule):
            break
        model = model._orig_mod
    return model


def _dispatched(name: str) -> str:
    """Why a layer under one of accelerate's hooks (a model loaded with `device_map=`, or given to
    `cpu_offload` or `dispatch_model`) is not replaced: the hook, set on the module's forward, moves its
    weight in at each call (an offloaded one is on the meta device between calls), and a new layer would have
    neither the hook nor the weight."""
    return (
        f"structurize: {name!r} is under an accelerate hook (a model loaded with device_map=, or given to "
        "cpu_offload or dispatch_model), which places its weight at each call; structurize the model before "
        "dispatching it (load it without device_map, structurize, then dispatch)"
    )


def scripted(model: nn.Module) -> str | None:
    """Why a model with a TorchScript module in it (torch.jit.script or trace) cannot be read, or None: its
    layers are no longer nn.Linear modules, and it takes no forward hooks."""
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"the model's {name!r} is" if name else "the model is"
            return (
                f"{where} a TorchScript module ({type(module).__name__}, from torch.jit.script or torch.jit.trace), "
                "whose layers are no longer nn.Linear modules; give the eager nn.Module it was made from"
            )
    return None


@dataclass
class _Computed:
    """A tensor of an nn.Linear that a torch.nn.utils hook computes from other parameters at each forward."""

    hook: Any  # the forward pre-hook; None for parametrize
    tensor: str  # "weight" or "bias"
    sources: list[torch.Tensor]  # the parameters it is computed from
    compute: Callable[[], torch.Tensor] | None  # None: parametrize's, computed where read
    said: str  # the warning's words: what the new layer holds instead


def _computed(linear: nn.Linear) -> list[_Computed]:
    """The tensors of `linear` computed from other parameters: by weight_norm's, spectral_norm's and prune's
    forward pre-hooks, or where they are read, by torch.nn.utils.parametrize's parametrizations (its
    parametrizations.weight_norm, orthogonal, spectral_norm, a user's own)."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = []
    for hook in linear._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            found.append(
                _Computed(
                    hook,
                    hook.name,
                    [getattr(linear, f"{hook.name}_g"), getattr(linear, f"{hook.name}_v")],
                    functools.partial(hook.compute_weight, linear),
                    "was under torch.nn.utils.weight_norm; the new layer was made from its weight "
                    "(weight_g * weight_v / ||weight_v||) and trains it directly, without the norm split",
                )
            )
        elif isinstance(hook, SpectralNorm):
            found.append(
                _Computed(
                    hook,
                    hook.name,
                    [getattr(linear, f"{hook.name}_orig")],
                    functools.partial(hook.compute_weight, linear, do_power_iteration=False),
                    "was under torch.nn.utils.spectral_norm; the new layer was made from its weight (weight_orig "
                    "/ sigma, its spectral norm as last estimated) and trains it directly, without the norm",
                )
            )
        elif isinstance(hook, BasePruningMethod):  # a PruningContainer too (pruned more than once)
            tensor = hook._tensor_name
            found.append(
                _Computed(
                    hook,
                    tensor,
                    [getattr(linear, f"{tensor}_orig")],
                    functools.partial(hook.apply_mask, linear),
                    f"was pruned by torch.nn.utils.prune; the new layer was made from its masked {tensor} "
                    f"({tensor}_orig * {tensor}_mask) and trains it without the mask: pruned entries no longer "
                    "stay zero",
                )
            )
    for tensor, chain in getattr(linear, "parametrizations", {}).items():
        kinds = ", ".join(type(p).__name__.lstrip("_") for p in chain)
        found.append(
            _Computed(
                None,
                tensor,
                list(chain.parameters()),  # the original(s), and a parametrization's own parameters
                None,  # computed afresh at each read: never stale
                f"was under torch.nn.utils.parametrize ({kinds}); the new layer was made from the {tensor} "
                + (
                    "it computes and trains it directly, without it"
                    if len(chain) == 1
                    else "they compute and trains it directly, without them"
                ),
            )
        )
    return found


def _fresh_weight(linear: nn.Linear) -> None:
    """The tensors of a layer under weight_norm, spectral_norm or prune computed from their parameters as they
    are now: the hook computes them at each forward only, so the new layer was made from the last forward's
    (stale after an optimizer step), and frozen after one under torch.no_grad()."""
    for c in _computed(linear):
        # a parametrized tensor is computed where it is read (and a setattr would run its right_inverse)
        if c.compute is not None:
            with torch.no_grad():
                setattr(linear, c.tensor, c.compute())


def _left_alone_said(subclassed: dict[str, str], patterns: list[str]) -> list[str]:
    """A warning naming the nn.Linear subclasses a rule's pattern matched and structurize left alone (a "*"
    left an attention's out_proj, or a weight-normed layer, dense without a word)."""
    matched = [
        f"{name!r} {why}"
        for name, why in subclassed.items()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    ]
    if not matched:
        return []
    more = f" (and {len(matched) - 3} more)" if len(matched) > 3 else ""
    return [f"structurize: left alone, though a rule's pattern matches: {'; '.join(matched[:3])}{more}"]


def _unused_rules(names: list[str], maker: str, rule_of: Callable) -> list[str]:
    """A warning where an nn.Linear held under several names was made by the rule of `maker` (the first of its
    names whose rule made a layer) and later names match rules of other patterns, which are not used."""
    pattern = rule_of(maker)[0]
    later = names[names.index(maker) + 1 :]
    others = [(n, rule_of(n)[0]) for n in later if rule_of(n) is not None and rule_of(n)[0] != pattern]
    if not others:
        return []
    unused = ", ".join(f"{p!r} (for {n!r})" for n, p in others)
    rule, verb = ("rules", "are") if len(others) > 1 else ("rule", "is")
    return [
        f"structurize: {maker!r} and {', '.join(repr(n) for n, _ in others)} are one layer; it is made by the rule "
        f"{pattern!r} for {maker!r}, and the {rule} {unused} {verb} not used"
    ]


def _lazy(module: nn.Module) -> bool:
    """Whether `module` is a lazy module (nn.LazyLinear, nn.LazyConv2d, ...) not run yet."""
    from torch.nn.modules.lazy import LazyModuleMixin

    return isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()


def _left_alone(module: nn.Linear) -> str:
    """Why structurize leaves an nn.Linear subclass alone, and what to do instead."""
    if _lazy(module):
        return (
            "is an nn.LazyLinear not run yet, with no weight to build from; run the model once (its first "
            "forward makes it an nn.Linear), then structurize"
        )
    if type(module).__name__ == "NonDynamicallyQuantizableLinear":
        return (
            "is an nn.MultiheadAttention's out_proj, whose weight the attention reads itself without calling it "
            "(as it does its packed in_proj_weight), so a layer put in its place would never run"
        )
    return (
        f"is a {type(module).__name__}: a subclass of nn.Linear, whose forward may differ, which structurize "
        "leaves alone; make its layer with from_dense yourself"
    )
