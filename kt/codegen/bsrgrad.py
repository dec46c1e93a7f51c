"""The bsr_grad family: the weight gradient of a block-sparse layer, from one template (bsrgrad.py.j2).

One launch computes every stored block's gradient, grad[n] = dy[:, block-row].T @ x[:, block-column] summed
over the batch rows: a batch of nnz small GEMMs (bo x rows) @ (rows x bi) that share their operands' columns
block-row by block-row. Each program owns one (BLOCK_M, BLOCK_N) tile of one block and steps through the rows
BLOCK_K at a time; SPLIT programs share a tile's rows, writing fp32 partial sums into a workspace summed once
(the batch is long and the blocks few, so splitting the rows is how a small pattern fills the GPU). A config is
a schedule only: none of it changes what is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kt.axes import BSR_GRAD_AXES
from kt.codegen.family import StructuredFamily, gemm_stage
from kt.codegen.gemm import (
    accumulator_reason,
    config_from_mapping,
    k_step_registers,
    kept_stages,
    output_tile_bytes,
    padded,
    two_warp_k_reason,
    wgmma_tile,
)
from kt.device import DeviceProfile
from kt.dtypes import itemsize
from kt.ir.problems import BsrGradProblem

AXES = BSR_GRAD_AXES  # kt.axes holds every family's axes


@dataclass(frozen=True, order=True)
class BsrGradConfig:
    block_m: int  # tile over a block's rows (bo)
    block_n: int  # tile over a block's columns (bi)
    block_k: int  # batch rows per step
    num_warps: int = 4
    num_stages: int = 3
    split: int = 1  # programs sharing one tile's rows (fp32 partial sums, added once)

    def structure(self) -> dict[str, int]:
        return {}

    def key(self) -> str:
        return (
            f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}x{self.split}"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BsrGradConfig:
        return config_from_mapping(cls, data, AXES)

    def __str__(self) -> str:
        return " ".join(
            f"{k.upper() if k.startswith(('block', 'split')) else k}={v}" for k, v in self.to_dict().items()
        )


# -- legality ------------------------------------------------------------------------------------------------


def resources(problem: BsrGradProblem, config: BsrGradConfig, device: DeviceProfile) -> tuple[int, int]:
    """Shared-memory bytes (the dy and x tiles of the pipeline stages a build keeps, `kept_stages`: every one
    with wgmma, stages - 1 with mma.sync and FMA dots; or the output tile's layout conversion before its store
    when that is larger: `kt.codegen.gemm.output_tile_bytes`, fp32 for a split's partial sums) and fp32
    accumulator registers per thread of a program. Every stage counted refused 430 configs of a 4096-square W
    on the A100 whose builds fit (8 sampled sm_80 and 6 sm_90 builds, 2026-12-07, none spilled: float32 tf32
    64x64 blocks m32n64k128w4s4 counted 196608 bytes, built 147456)."""
    wgmma = wgmma_tile(problem, config.block_m, config.num_warps, device)
    stages = kept_stages(config.num_stages, wgmma)
    smem = stages * (config.block_m + config.block_n) * config.block_k * itemsize(problem.dtype)
    out = output_tile_bytes(config.block_m, config.block_n, problem.dtype, config.split > 1)
    return max(smem, out), config.block_m * config.block_n // (config.num_warps * device.warp_size)


def illegal_reason(problem: BsrGradProblem, config: BsrGradConfig, device: DeviceProfile) -> str | None:
    """Why `config` cannot (or cannot sensibly) run `problem` on `device`, or None when it can."""
    bo, bi = problem.block
    rows_per_split = -(-problem.rows // config.split)
    if (
        config.block_m > padded(bo)
        or config.block_n > padded(bi)
        or config.block_k > padded(max(1, rows_per_split))
    ):
        return "tile larger than the padded problem"
    if config.split > 1 and config.split > -(-problem.rows // config.block_k):
        return "more splits than steps"
    smem, acc = resources(problem, config, device)
    if smem > device.smem_per_block:
        return f"shared memory over {device.smem_limit_text}"
    threads = config.num_warps * device.warp_size
    operands = k_step_registers(problem.dtype, config.block_m, config.block_n, config.block_k, threads)
    return accumulator_reason(
        acc, device, problem.dtype, problem.precision, config.num_warps, config.block_k
    ) or two_warp_k_reason(problem, device, config.num_warps, config.block_k, acc, operands)


# -- the family ----------------------------------------------------------------------------------------------


def crop(problem: BsrGradProblem) -> BsrGradProblem:
    """The pattern cut to a few block-rows (an empty one when it has one) and block-columns, the block size
    kept (kt.codegen.tilesum.crop_blocksparse)."""
    from kt.codegen.tilesum import crop_blocksparse

    small = crop_blocksparse(problem.forward())
    return BsrGradProblem(
        problem.rows,
        small.in_features,
        small.out_features,
        small.block,
        small.layout,
        problem.dtype,
        problem.precision,
    )


class BsrGradFamily(StructuredFamily):
    """Kernels for dL/dW of a block-sparse layer, restricted to W's stored blocks (BsrGradProblem)."""

    template = "bsrgrad.py.j2"
    axes = AXES
    config_type = BsrGradConfig

    illegal_reason = staticmethod(illegal_reason)
    resources = staticmethod(resources)

    launch_legend = "as the GEMM it resembles, batch x (m x k) @ (k x n)"

    @staticmethod
    def _launch_text(problem: BsrGradProblem) -> str:
        bo, bi = problem.block
        r = problem.rows
        return f"grad[n] = dy[:, block-row].T @ x[:, block-col], {problem.nnz} x ({bo} x {r}) @ ({r} x {bi})"

    def launch_texts(self, problem: BsrGradProblem, structure: dict[str, int]) -> list[str]:
        return [self._launch_text(problem)]

    def check_problems(self, problem: BsrGradProblem, config: BsrGradConfig) -> list[BsrGradProblem]:
        """Problems for the interpreter: the pattern cropped (a few block-rows, an empty one when there is one);
        rows giving every split two BLOCK_K steps, the last one ragged (the masks and the split sum); where the
        split can leave its last run empty (each run takes cdiv(steps, SPLIT) steps: rows 8193 in steps of 128
        over 16 splits left 3 empty), the fewest ragged steps that do (a run that stores zeros: no check had one,
        as the docstring claimed); and when the real rows are whole steps (its launch takes the unmasked EVEN
        path when the tiles divide the block), rows of whole steps too."""
        small = crop(problem)
        bk, split = config.block_k, config.split
        found = [small.with_rows(min(problem.rows, (split - 1) * 2 * bk + bk + bk // 2 + 1))]
        # no fewer steps than splits, as a legal problem has ("more splits than steps" is refused)
        steps = next((s for s in range(split, 2 * split) if (split - 1) * -(-s // split) >= s), None)
        if steps is not None and (steps - 1) * bk + bk // 2 + 1 <= problem.rows:
            found.append(small.with_rows((steps - 1) * bk + bk // 2 + 1))
        if not problem.rows % bk:
            found.append(small.with_rows(bk * min(2 * split, problem.rows // bk)))
        return list(dict.fromkeys(found))

    def records(self, problem: BsrGradProblem, configs) -> list[dict[str, Any]]:
        """The cost model's record of each config: the problem, the config, and its one launch as `stages`, the
        batched GEMM it resembles: nnz products of dy's block columns, transposed (bo x rows, stored column-major),
        by x's (rows x bi)."""
        base = problem.to_record()
        bo, bi = problem.block
        nnz = problem.nnz
        out = []
        for config in configs:
            stage = gemm_stage(
                problem,
                bo,
                bi,
                max(1, problem.rows),
                batch=max(1, nnz),
                a_col=True,
                block_m=config.block_m,
                block_n=config.block_n,
                block_k=config.block_k,
                group_m=1,
                num_warps=config.num_warps,
                num_stages=config.num_stages,
                split_k=config.split,
            )
            out.append({**base, **config.to_dict(), "group_m": 1, "split_k": config.split, "stages": [stage]})
        return out

    def variables(self, problem: BsrGradProblem, config: BsrGradConfig) -> dict[str, Any]:
        from kt.sparsity import describe

        return {
            "block": tuple(problem.block),
            "pattern": describe(problem.mask()),
            "in_features": problem.in_features,
            "out_features": problem.out_features,
            "launch": self._launch_text(problem),
        }
