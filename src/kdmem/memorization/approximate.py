"""Approximate memorization: how close greedy decoding comes to the true suffix, not only whether
it reproduces it exactly (the paper's appendix check).

Exact extraction misses near-verbatim regurgitation: one changed token makes a verdict false. So a
chosen set of examples is decoded for real with greedy ``generate``, and the generated suffix is
compared with the true one by three measures, all over tokens:

- ``approx_token_match``: share of suffix positions where the generated token equals the true one;
- ``approx_edit_distance``: Levenshtein distance (insertions, deletions, substitutions) divided by
  the suffix length; 0 for an exact copy;
- ``approx_longest_common``: length of the longest common contiguous run of tokens, in tokens.
"""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd
from transformers import PreTrainedModel

from kdmem.data import as_tensor
from kdmem.models.decoding import greedy_continuations

APPROXIMATE_COLUMNS = ("approx_token_match", "approx_edit_distance", "approx_longest_common")


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token lists (unit costs)."""
    previous = list(range(len(b) + 1))
    for i, token_a in enumerate(a, start=1):
        current = [i]
        for j, token_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token_a != token_b)))
        previous = current
    return previous[-1]


def longest_common_run(a: list[int], b: list[int]) -> int:
    """Length of the longest contiguous token run that appears in both lists."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def suffix_similarity(generated: list[int], true: list[int]) -> dict[str, float]:
    """The three approximate measures of one generated suffix against the true one (same length)."""
    return {
        "approx_token_match": float(np.mean(np.asarray(generated) == np.asarray(true))),
        "approx_edit_distance": edit_distance(generated, true) / len(true),
        "approx_longest_common": float(longest_common_run(generated, true)),
    }


def sample_positions(total: int, sample: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``sample`` examples out of ``total``, the same for every shard and process."""
    return np.sort(np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False))


def approximate_memorization(
    model: PreTrainedModel, sequences: pd.DataFrame, prefix_len: int = 50, suffix_len: int = 50, batch_size: int = 64
) -> pd.DataFrame:
    """Greedy-decode ``suffix_len`` tokens from each sequence's prefix and compare with the truth.

    Returns one row per sequence: ``example_id`` and the ``APPROXIMATE_COLUMNS``.
    """
    if len(sequences) == 0:
        return pd.DataFrame(columns=["example_id", *APPROXIMATE_COLUMNS])
    input_ids = as_tensor(sequences)[:, : prefix_len + suffix_len]
    generated = greedy_continuations(
        model, input_ids, prefix_len, prefix_len + suffix_len, batch_size, desc="approximate"
    )
    rows = [
        suffix_similarity(g[prefix_len:].tolist(), t[prefix_len:].tolist())
        for g, t in zip(generated, input_ids, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=list(APPROXIMATE_COLUMNS))
    frame.insert(0, "example_id", sequences["example_id"].to_numpy())
    return frame


def add_approximate(verdicts: pd.DataFrame, positions: np.ndarray, approximate: pd.DataFrame) -> pd.DataFrame:
    """Exact verdicts with the approximate measures of the rows at ``positions`` added; NaN elsewhere."""
    verdicts = verdicts.copy()
    for column in APPROXIMATE_COLUMNS:
        values = np.full(len(verdicts), np.nan)
        values[positions] = approximate[column].to_numpy()
        verdicts[column] = values
    return verdicts


NEAR_VERBATIM_EDIT_DISTANCE = 0.1
"""A generated suffix within this normalized edit distance of the truth counts as near-verbatim."""


def approximate_summary(verdicts: pd.DataFrame) -> dict:
    """Means of the approximate measures over the checked examples, and how many were near-verbatim."""
    checked = verdicts.dropna(subset=["approx_token_match"]) if "approx_token_match" in verdicts else verdicts.iloc[:0]
    if checked.empty:
        return {}
    return {
        "approximate": {
            "examples": len(checked),
            "token_match_mean": float(checked["approx_token_match"].mean()),
            "edit_distance_mean": float(checked["approx_edit_distance"].mean()),
            "longest_common_mean": float(checked["approx_longest_common"].mean()),
            "near_verbatim": int((checked["approx_edit_distance"] <= NEAR_VERBATIM_EDIT_DISTANCE).sum()),
            "exact": int(checked["memorized"].sum()),
        }
    }
