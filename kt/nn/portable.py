"""kt's op in PyTorch's own operators, for programs that leave PyTorch (ONNX and other exporters).

`torch.ops.kt.apply` runs a kernel kt generated, which only a Python process with kt can run: an exporter that
writes the program for another runtime (`torch.onnx.export`, for ONNX Runtime or TensorRT) finds no translation
for it and stops. `decompose(x, weights, op)` computes the same result from operators every exporter knows, the
structure kept: a low-rank layer stays its chain of products, a Monarch layer its two batched products, a
butterfly its levels, a block-sparse layer its stored blocks (x's block columns gathered, one batched product,
added into their block rows: no dense weight is built), a sum its terms.

`decompositions()` is the table that replaces the op in an ExportedProgram:

    program = torch.export.export(model, (x,)).run_decompositions(kt.nn.decompositions())
    torch.onnx.export(program, dynamo=True).save("model.onnx")

It is not registered in PyTorch's global table (`torch._decomp`), from which `torch.onnx.export` would take it
unasked: FakeTensor prefers that table to an op's fake implementation under dynamic shapes, so torch.compile
(aot_eager, and torch.library.opcheck's dynamic test) then traced this decomposition instead of the op's fake,
and failed on the backward's block-sparse weight-gradient op, which has none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kt.nn.selection import parsed_op

# the ops `_term` writes in PyTorch operators
DECOMPOSED = ("dense", "lowrank", "blocksparse", "sum", "monarch", "butterfly", "fft")


def decompositions() -> dict[Any, Any]:
    """PyTorch's default decomposition table (`torch.export.default_decompositions()`) with kt's op added: for
    `ExportedProgram.run_decompositions`, whose program then holds core ATen operators and no kt op
    (`torch.export.export(model, args).run_decompositions(kt.nn.decompositions())`)."""
    table = torch.export.default_decompositions()
    table[torch.ops.kt.apply.default] = decompose
    return table


def decompose(x: torch.Tensor, weights: list[torch.Tensor], op: str) -> torch.Tensor:
    """What `torch.ops.kt.apply(x, weights, op)` computes, in PyTorch operators on x's dtype (a kernel's
    float16 accumulates in float32; these accumulate as the runtime's own matmul does). The operands are checked
    as the op checks them (its count, dtypes and widths, and a BSR weight's pattern where its indices hold
    values): a program given another checkpoint's block pattern lost blocks without a word, where the op
    refuses it."""
    from kt.nn.functional import TRUSTED, _check_bsr_weights, _check_operands, _readable

    spec, weights = parsed_op(op), list(weights)
    if spec["op"] not in DECOMPOSED:  # said so first, whatever its operands
        raise _undecomposed(spec["op"])
    _check_operands(op, x, weights)
    if not spec.get(TRUSTED):  # the indices' values read only where they hold some (not in a trace)
        _check_bsr_weights(dict(spec), weights, read=_readable(x, *weights))
    if "pin" in spec:  # a kernel the user loaded: its op in its own words says what it computes
        spec = {key: value for key, value in spec.items() if key != "pin"}
    return _term(spec, x, weights)


def _undecomposed(kind: str) -> ValueError:
    return ValueError(
        f"kt.nn.decompose: the {kind} op has no decomposition (ops with one: {', '.join(DECOMPOSED)})"
    )


def _term(spec: dict[str, Any], x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    kind = spec["op"]
    if kind == "dense":
        return torch.matmul(x, weights[0])
    if kind == "lowrank":
        lead, y = x.shape[:-1], x.reshape(-1, x.shape[-1])
        for factor in weights:
            y = y @ factor
        return y.reshape(*lead, y.shape[-1])
    if kind == "blocksparse":
        return _blocksparse(spec, x, weights)
    if kind == "sum":
        from kt.nn.functional import _weight_count

        parts, at = [], 0
        for term in spec["terms"]:
            count = _weight_count(term)
            parts.append(_term(term, x, weights[at : at + count]))
            at += count
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    if kind in ("monarch", "butterfly"):  # the IR's plain-torch references (kt.ir loads networkx: not before)
        from kt.ir.ops import ButterflyOp, MonarchOp
        from kt.ir.structured import butterfly_reference, monarch_reference

        if kind == "monarch":
            transposed, forward = MonarchOp.transposed_reference, monarch_reference
        else:
            transposed, forward = ButterflyOp.transposed_reference, butterfly_reference
        return (transposed if spec.get("transposed") else forward)(x, *weights)
    if kind == "fft":
        return _fft(spec, x)
    raise _undecomposed(kind)


def _blocksparse(spec: dict[str, Any], x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """y = F.linear(x, W) over W's stored blocks: x's block columns gathered for each stored block, multiplied
    by the blocks in one batched product, then each block row's products summed: gathered into a table of
    the row's blocks, padded to the fullest row's count with a zero block, and reduced. Gathers and sums, no
    scatter (ONNX Runtime's CPU ScatterND adds no float16). The indices are the weight's own, tensors of the
    program (a constant tensor made here is one torch.export's verifier refuses), which kt checks are the
    op's; the fullest row's count is the op's, from its pattern."""
    from kt.nn.functional import _pattern

    crow, col, values = weights
    sparsity, shape = spec["sparsity"], spec["shape"]
    (bo, bi), out = sparsity["block"], shape["out"]
    grid = (out // bo, shape["in"] // bi)
    widest = int(np.diff(_pattern(sparsity["layout"], grid)[0]).max())
    lead = x.shape[:-1]
    xb = x.reshape(-1, grid[1], bi)
    gathered = xb[:, col.long()].transpose(0, 1)  # (nnz, B, bi)
    # a batched MatMul over the blocks (ONNX's MatMul, which every runtime has; an einsum left an Einsum node)
    products = torch.matmul(gathered, values.transpose(1, 2)).transpose(0, 1)  # (B, nnz, bo)
    products = torch.cat([products, products.new_zeros(products.shape[0], 1, bo)], dim=1)  # block nnz: zeros
    start, count = crow[:-1].long(), (crow[1:] - crow[:-1]).long()  # each block row's first block, and count
    slot = torch.arange(widest, device=x.device)
    table = torch.where(slot[None, :] < count[:, None], start[:, None] + slot[None, :], values.shape[0])
    rows = products[:, table.reshape(-1)].reshape(products.shape[0], grid[0], widest, bo).sum(2)
    return rows.reshape(*lead, out)


def _fft(spec: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """torch.fft.fft; a float16 op's planar (2, ..., n) input or real input as its kernel takes them."""
    if spec["dtype"] == "float32":
        return torch.fft.fft(x)
    real = spec.get("input", "complex") == "real"
    y = torch.fft.fft(x.float() if real else torch.complex(x[0].float(), x[1].float()))
    return torch.stack([y.real, y.imag]).to(x.dtype)
