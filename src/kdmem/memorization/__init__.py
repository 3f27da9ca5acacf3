"""Memorization: which training examples a model reproduces verbatim, nearly, or betrays by membership."""

from kdmem.memorization.approximate import approximate_memorization, approximate_summary, sample_positions
from kdmem.memorization.audit import AuditConfig, measure_memorization
from kdmem.memorization.dynamics import MemorizationTracker
from kdmem.memorization.extraction import (
    TokenChecks,
    decisive,
    extract_memorized,
    greedy_matched_tokens,
    leading_matches,
)

__all__ = [
    "AuditConfig",
    "MemorizationTracker",
    "TokenChecks",
    "approximate_memorization",
    "approximate_summary",
    "decisive",
    "extract_memorized",
    "greedy_matched_tokens",
    "leading_matches",
    "measure_memorization",
    "sample_positions",
]
