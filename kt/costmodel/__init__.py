"""Cost models: predict a candidate's runtime from plain records and the device profile."""

from kt.costmodel.roofline import AnalyticModel, gemm_terms, rank, roofline_time

__all__ = ["AnalyticModel", "gemm_terms", "rank", "roofline_time"]
