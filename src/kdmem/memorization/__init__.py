"""Memorization: which training examples a model reproduces verbatim."""

from kdmem.memorization.extraction import extract_memorized, matched_suffix_tokens

__all__ = ["extract_memorized", "matched_suffix_tokens"]
