"""Codegen: kernel families (templates, search spaces with hardware legality) and source emission."""

from kt.codegen.emit import import_kernel_file, load_source, write_source
from kt.codegen.gemm import FAMILIES, GemmConfig, GemmFamily, SearchSpace, family_for, illegal_reason

__all__ = [
    "FAMILIES",
    "GemmConfig",
    "GemmFamily",
    "SearchSpace",
    "family_for",
    "illegal_reason",
    "import_kernel_file",
    "load_source",
    "write_source",
]
