"""The search space in the user's hands: op.yaml's `tune.space` (keep these values of these axes) and
`tune.configs` (exactly these configs, as `triton.autotune(configs=...)` takes them), checked against the
problem's family and its legal space.

Names and values are checked against the family: an axis the family does not have, or a value off its axis, is
one SpecError naming the field and what is allowed. A restriction that leaves no legal config says which values
of each axis are legal for this problem. A listed config that cannot run is refused with the legality rule it
breaks (as `kt space` would drop it): the user asked for it, so it is not skipped silently.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from kt.axes import check_axis, missing_fields
from kt.errors import SpecError

OUTSIDE_SPACE = "outside tune.space"
NOT_LISTED = "not in tune.configs"


def structure_axes(problem) -> dict[str, tuple[int, ...]]:
    """The structure choices a problem offers, as axes (fused, levels, split ...); none for a GEMM."""
    offered = problem.structures() if hasattr(problem, "structures") else ()
    axes: dict[str, list[int]] = {}
    for structure in offered:
        for key, value in structure.items():
            axes.setdefault(key, [])
            if value not in axes[key]:
                axes[key].append(value)
    return {key: tuple(values) for key, values in axes.items()}


def user_axes(family, problem) -> dict[str, tuple[int, ...]]:
    """Every axis `tune.space` may name for `problem`, with its values (a GEMM's `tma` among them)."""
    return {**family.axes, **getattr(family, "structure_axes", {}), **structure_axes(problem)}


def restrict(space, family, problem, device, spec) -> Any:
    """`space` (a SearchSpace) restricted by `spec.tune` (an OpSpec's options); the same space when they say
    nothing. The dropped counts gain the configs the user's restriction left out. Errors name the spec's file."""
    tune = spec.tune
    try:
        if tune.configs:
            return _listed(space, family, problem, device, tune.configs)
        if tune.space:
            return _within(space, family, problem, tune.space)
    except SpecError as exc:
        raise SpecError(exc.field, exc.reason, spec.source) from None
    return space


def _within(space, family, problem, wanted: tuple[tuple[str, tuple[int, ...]], ...]):
    axes = user_axes(family, problem)
    # the spec checked what the op alone tells (kt.axes); now the values the problem offers
    for axis, values in wanted:
        check_axis(family.name, axes, axis, values)
    keep = dict(wanted)
    kept = tuple(c for c in space.legal if all(getattr(c, axis) in values for axis, values in keep.items()))
    if not kept:
        legal = {axis: sorted({getattr(c, axis) for c in space.legal}) for axis in keep}
        listing = "; ".join(f"{axis} {', '.join(map(str, values))}" for axis, values in legal.items())
        # every value of each axis (one legal value of an axis said so of `tma: [0, 1]` where only tma 0 is)
        alone = all(set(values) <= set(legal[axis]) for axis, values in keep.items())
        # each value asked for is legal somewhere, but not together: say so (the listing blamed no value)
        why = "; the values asked for are each legal, but no legal config has them together" if alone else ""
        raise SpecError(
            "tune.space",
            f"leaves none of the {len(space.legal)} legal configs for {problem}{why}; legal values: {listing}",
        )
    return replace(space, legal=kept, dropped={**space.dropped, OUTSIDE_SPACE: len(space.legal) - len(kept)})


def missing_structure(family, problem, data: dict) -> str | None:
    """What a config written by hand (`data`) lacks of `problem`'s structure choice, in words, where the field's
    default is no value the problem offers (an FFT's split, a butterfly's levels); None otherwise. Left out, the
    default 0 was refused as "structure split=0 is not offered", a value the user never wrote."""
    offered = getattr(problem, "structures", lambda: ())()
    defaults = {f.name: f.default for f in fields(family.config_type)}
    for key in offered[0] if offered else ():
        if key not in data and all(choice[key] != defaults.get(key) for choice in offered):
            values = ", ".join(str(v) for v in sorted({choice[key] for choice in offered}))
            return f"missing {key} (allowed for {problem}: {values})"
    return None


def _listed(space, family, problem, device, listed: tuple[tuple[tuple[str, int], ...], ...]):
    # by the config itself, not its key: a key leaves fields out (a block-GEMM config's is `-fused` for any
    # fused value, without levels or split), and `fused: 2` was taken for the legal fused=1 config in its place
    legal = set(space.legal)
    names = [f.name for f in fields(family.config_type)]
    chosen: dict[Any, Any] = {}
    for i, pairs in enumerate(listed):
        path = f"tune.configs[{i}]"
        data = dict(pairs)
        if missing := missing_structure(family, problem, data):
            raise SpecError(path, missing)
        try:
            config = family.config_type.from_dict(data)
        except ValueError as exc:
            raise SpecError(path, str(exc).removeprefix("config: ").removeprefix("config.")) from None
        except TypeError:  # a field without a default left out
            raise SpecError(path, missing_fields(family.name, names, data)) from None
        if config not in legal:
            raise SpecError(
                path,
                # by its key, as kt space and kt predict name it (its str listed every field of every family)
                f"{config.key()} cannot run {problem} on {device.name}: "
                f"{why_illegal(family, problem, config, device)}",
            )
        chosen.setdefault(config, config)
    return replace(
        space, legal=tuple(chosen.values()), dropped={**space.dropped, NOT_LISTED: len(legal) - len(chosen)}
    )


def why_illegal(family, problem, config, device) -> str:
    """The legality rule `config` breaks for `problem` on `device` (as the space's judge words it)."""
    return illegal_config(family, problem, config, device) or "not in the legal space"


def illegal_config(family, problem, config, device) -> str | None:
    """Why the space of `problem` on `device` leaves `config` out (the space's judge's words), or None."""
    if hasattr(family, "judge"):
        try:
            family.check_structure(problem, config)
        except ValueError as exc:
            return str(exc).removeprefix("config: ")
        structure = {key: getattr(config, key) for key in structure_axes(problem)}
        return family.judge(problem, structure, device)(config)
    from kt.codegen.gemm import illegal_reason

    return illegal_reason(problem, config, device)
