"""Codegen: kernel families (templates, search spaces with hardware legality) and source emission."""

from kt.codegen.baseline import baseline_impl, baseline_version, render_baseline
from kt.codegen.blockgemm import BlockGemmConfig, BlockGemmFamily
from kt.codegen.bsrgrad import BsrGradConfig, BsrGradFamily
from kt.codegen.emit import import_kernel_file, load_source, write_source
from kt.codegen.gemm import GemmConfig, GemmFamily, SearchSpace, illegal_reason
from kt.codegen.tilesum import TileConfig, TileSumFamily

FAMILIES = {
    "gemm": GemmFamily(),
    "monarch": BlockGemmFamily("monarch"),
    "butterfly": BlockGemmFamily("butterfly"),
    "fft": BlockGemmFamily("fft"),
    "blocksparse": TileSumFamily("blocksparse"),
    "lowrank": TileSumFamily("lowrank"),
    "sum": TileSumFamily("sum"),
    "bsr_grad": BsrGradFamily("bsr_grad"),
}
Config = GemmConfig | BlockGemmConfig | TileConfig | BsrGradConfig


def family_for(problem) -> GemmFamily | BlockGemmFamily:
    """The kernel family that generates code for `problem` (its `family` names it)."""
    return FAMILIES[problem.family]


def config_from_dict(family: str, data: dict) -> Config:
    """A config of `family` from its dict (as stored in the database and artifacts); ValueError when bad."""
    return FAMILIES[family].config_type.from_dict(data)


__all__ = [
    "FAMILIES",
    "BlockGemmConfig",
    "BlockGemmFamily",
    "BsrGradConfig",
    "BsrGradFamily",
    "Config",
    "GemmConfig",
    "GemmFamily",
    "SearchSpace",
    "TileConfig",
    "TileSumFamily",
    "baseline_impl",
    "baseline_version",
    "config_from_dict",
    "family_for",
    "illegal_reason",
    "import_kernel_file",
    "load_source",
    "render_baseline",
    "write_source",
]
