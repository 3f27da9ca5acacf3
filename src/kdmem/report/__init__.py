"""Reporting: tables and summaries of a run."""

from kdmem.report.headline import headline_table, reduction_vs_baseline

__all__ = ["headline_table", "reduction_vs_baseline"]
