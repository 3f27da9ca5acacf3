"""Memorization: which training examples a model reproduces verbatim."""

from kdmem.memorization.dynamics import MemorizationTracker
from kdmem.memorization.extraction import TokenChecks, decisive_min_gap, extract_memorized, greedy_matched_tokens, leading_matches

__all__ = ["MemorizationTracker", "TokenChecks", "decisive_min_gap", "extract_memorized", "greedy_matched_tokens", "leading_matches"]
