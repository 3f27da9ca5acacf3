"""Reporting: the headline table, the key findings, and the HTML and Markdown report of a run."""

from kdmem.report.findings import key_findings
from kdmem.report.headline import headline_table, reduction_vs_baseline
from kdmem.report.html import write_report

__all__ = ["headline_table", "key_findings", "reduction_vs_baseline", "write_report"]
