"""Stage 3: scores and quantizer errors turned into cost tables, and models profiled for hardware models."""

from mpsearch.pricing.tables import build_cost_table, cost_table_from_groups, cost_table_from_space

__all__ = ["build_cost_table", "cost_table_from_groups", "cost_table_from_space"]
