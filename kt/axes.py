"""The axes of each kernel family's search space, as plain data: the codegen families take theirs from here,
and op.yaml's `tune.space` and `tune.configs` are checked against them while the spec is read, before torch or a
model loads.

A family's axes are its schedule's (tile sizes, warps, pipeline depth, split) with the values it enumerates,
plus the op's structure choice (`tma` for a GEMM; `fused`, `levels` or `split` for the structured ops), whose
values depend on the problem (a butterfly's levels per stage, the FFT's splits) and are checked once the
problem is built (kt.codegen.restrict).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from kt.errors import SpecError, key_text, shown

GEMM_AXES: dict[str, tuple[int, ...]] = {
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (16, 32, 64, 128, 256),
    "block_k": (16, 32, 64, 128),
    "group_m": (1, 4, 8),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4, 5),
    "split_k": (1, 2, 4, 8, 16),
}
# The GEMM kernel's structure choice: 1 is the persistent TMA kernel, 2 the same storing its C tile in two halves
# (half the staged tile in shared memory), each offered for every config without split-K
GEMM_STRUCTURE_AXES: dict[str, tuple[int, ...]] = {"tma": (0, 1, 2)}

BLOCK_GEMM_AXES: dict[str, tuple[int, ...]] = {  # Monarch, butterfly, FFT (kt.codegen.blockgemm)
    "block_b": (16, 32, 64, 128, 256),
    "block_n": (16, 32, 64, 128),
    "block_k": (16, 32, 64, 128),
    "group": (1, 2, 4, 8, 16),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4),
}

TILE_AXES: dict[str, tuple[int, ...]] = {  # block-sparse, low-rank chains, sums (kt.codegen.tilesum)
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (16, 32, 64, 128),
    "block_k": (16, 32, 64, 128),
    "group_m": (1, 4, 8),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4),
    "split": (1, 2, 4, 8),
}

BSR_GRAD_AXES: dict[str, tuple[int, ...]] = {  # the block-sparse weight's gradient (kt.codegen.bsrgrad)
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (16, 32, 64, 128, 256),
    "block_k": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4, 5),
    "split": (1, 2, 4, 8, 16),
}

# op (op.yaml's `op`) -> (its kernel family, the family's schedule axes, the name of its structure axis if any)
OP_AXES: dict[str, tuple[str, dict[str, tuple[int, ...]], str | None]] = {
    "dense": ("gemm", GEMM_AXES, "tma"),
    "monarch": ("monarch", BLOCK_GEMM_AXES, "fused"),
    "butterfly": ("butterfly", BLOCK_GEMM_AXES, "levels"),
    "fft": ("fft", BLOCK_GEMM_AXES, "split"),
    "blocksparse": ("blocksparse", TILE_AXES, "fused"),
    "lowrank": ("lowrank", TILE_AXES, "fused"),
    "sum": ("sum", TILE_AXES, "fused"),
    "blocksparse_grad": ("bsr_grad", BSR_GRAD_AXES, None),
}


# Each config's fields in order, with the values each may take (None: any non-negative integer; the problem
# says which structure values it offers), as the configs' from_dict checks them
GEMM_FIELDS: dict[str, tuple[int, ...] | None] = {**GEMM_AXES, **GEMM_STRUCTURE_AXES}
BLOCK_GEMM_FIELDS: dict[str, tuple[int, ...] | None] = {
    **BLOCK_GEMM_AXES,
    "fused": None,
    "levels": None,
    "split": None,
    "ends": (0, 1),
}
TILE_FIELDS: dict[str, tuple[int, ...] | None] = {**TILE_AXES, "fused": (0, 1)}
# config fields beside a family's axes and structure choice that `tune.space` may name (kt.codegen.blockgemm)
FLAG_AXES = ("ends",)
# family -> its config's fields; the first REQUIRED fields (the tile) have no default
CONFIG_FIELDS: dict[str, dict[str, tuple[int, ...] | None]] = {
    "gemm": GEMM_FIELDS,
    "monarch": BLOCK_GEMM_FIELDS,
    "butterfly": BLOCK_GEMM_FIELDS,
    "fft": BLOCK_GEMM_FIELDS,
    "blocksparse": TILE_FIELDS,
    "lowrank": TILE_FIELDS,
    "sum": TILE_FIELDS,
    "bsr_grad": dict(BSR_GRAD_AXES),
}
REQUIRED = 3


def check_fields(fields: dict[str, tuple[int, ...] | None], data: dict) -> None:
    """A config's mapping against its fields: an unknown key or a value off its field's values is a one-line
    ValueError (`config: unknown key ...`, `config.<field>: ...`)."""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"config: unknown key {shown(unknown[0])}; allowed: {', '.join(fields)}")
    for name, value in data.items():
        allowed = fields[name]
        # 16.0 and True would pass `in allowed`; numpy's integers are integers
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"config.{name}: must be an integer, got {shown(value)}")
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"config.{name}: {shown(value)} is not allowed; allowed: {', '.join(map(str, allowed))}"
            )
        if allowed is None and value < 0:
            raise ValueError(f"config.{name}: must be a non-negative integer, got {shown(value)}")


def missing_fields(family: str, names: list[str], data: dict) -> str | None:
    """What a listed config of `family` (fields `names`) lacks, in words; None when it has every required one."""
    missing = [name for name in names[:REQUIRED] if name not in data]
    return f"missing {', '.join(missing)} (a {family} config has {', '.join(names)})" if missing else None


def check_op_configs(op: str, configs: Sequence[tuple[tuple[str, int], ...]], first: int = 0) -> None:
    """A spec's `tune.configs` checked against `op`'s family as far as the op alone tells: every field named,
    the required ones given, the schedule values on their axes; whether the problem offers a structure value and
    whether a config can run wait for the problem (kt.codegen.restrict). `first`: the index of configs[0] in
    the spec's list, for the messages."""
    family = OP_AXES[op][0]
    fields = CONFIG_FIELDS[family]
    for i, pairs in enumerate(configs, start=first):
        data = dict(pairs)
        try:
            check_fields(fields, data)
        except ValueError as exc:
            reason = str(exc).removeprefix("config: ").removeprefix("config.")
            raise SpecError(f"tune.configs[{i}]", reason) from None
        if missing := missing_fields(family, list(fields), data):
            raise SpecError(f"tune.configs[{i}]", missing)


def check_axis(family: str, axes: dict[str, tuple[int, ...] | None], axis: str, values) -> None:
    """`tune.space.<axis>: values` against a family's `axes` (name -> values, None where the values are not
    known yet): a SpecError naming the field and what is allowed."""
    path = f"tune.space.{key_text(axis)}"
    if axis not in axes:
        raise SpecError(path, f"the {family} family has no axis {shown(axis)}; allowed: {', '.join(axes)}")
    allowed = axes[axis]
    for value in values if allowed is not None else ():
        if value not in allowed:
            raise SpecError(
                path, f"{shown(value)} is not a value of this axis; allowed: {', '.join(map(str, allowed))}"
            )


def check_op_space(op: str, space: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
    """A spec's `tune.space` checked against `op`'s family as far as the op alone tells: every axis name, and
    the values its config's fields take (CONFIG_FIELDS); the values a problem offers wait for the problem."""
    family, axes, structure = OP_AXES[op]
    fields = CONFIG_FIELDS[family]
    flags = [flag for flag in FLAG_AXES if flag in fields]  # a block-GEMM family's feature-major ends
    known = {axis: fields[axis] for axis in (*axes, *([structure] if structure else []), *flags)}
    for axis, values in space:
        check_axis(family, known, axis, values)
