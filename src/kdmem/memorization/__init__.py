"""Memorization: which training examples a model reproduces verbatim."""

from kdmem.memorization.extraction import TokenChecks, decisive_min_gap, extract_memorized, greedy_matched_tokens, leading_matches

__all__ = ["TokenChecks", "decisive_min_gap", "extract_memorized", "greedy_matched_tokens", "leading_matches"]
