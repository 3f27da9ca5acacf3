"""Cross-model comparison: two runs (two sizes, or two model families) on the same text.

Memorized sets are compared by example. Runs share examples when they share a tokenizer (the ids
come from the tokens) or when both are document-aligned (``data.packing: documents``, the ids
come from the documents); the paper's cross-family comparison needs the latter. Otherwise each
run packs text into its own windows, so examples are matched by decoded text and almost never
align; the result says so. zlib entropy is compared on the shared examples, each run's own text
of it (a sequence of ``seq_len`` tokens covers more or less text under each tokenizer): measured
on both runs' data, never re-tokenized from one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdmem.analysis.overlaps import memorized_ids, pairwise_overlap
from kdmem.config import load_config
from kdmem.data import read_sequences, zlib_entropy
from kdmem.layout import RunLayout
from kdmem.models import load_tokenizer


def compare_runs(
    run_a: str | Path, run_b: str | Path, models: tuple[str, ...] = ("teacher", "baseline", "soft", "hard")
) -> dict:
    """Overlap of each model's memorized set between two runs, and the Pearson correlation of the
    two runs' zlib entropy over the examples they share."""
    a, b = RunLayout(Path(run_a)), RunLayout(Path(run_b))
    tokenizer_a, tokenizer_b = load_tokenizer(str(a.model("teacher"))), load_tokenizer(str(b.model("teacher")))
    train_a, train_b = read_sequences(a.data("train")), read_sequences(b.data("train"))
    same_tokenizer = tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
    aligned = all(load_config(run.config).data.packing == "documents" for run in (a, b))
    matched_by = "example id" if same_tokenizer or aligned else "decoded text"

    def keys(train: pd.DataFrame, tokenizer) -> dict[str, str]:
        # example id -> what identifies the example across the two runs
        if matched_by == "example id":
            return dict(zip(train["example_id"], train["example_id"], strict=True))
        return {
            i: tokenizer.decode(ids.tolist()) for i, ids in zip(train["example_id"], train["input_ids"], strict=True)
        }

    keys_a, keys_b = keys(train_a, tokenizer_a), keys(train_b, tokenizer_b)
    overlaps = {}
    for name in models:
        if a.memorization(name).exists() and b.memorization(name).exists():
            set_a = {keys_a[i] for i in memorized_ids(pd.read_parquet(a.memorization(name)))}
            set_b = {keys_b[i] for i in memorized_ids(pd.read_parquet(b.memorization(name)))}
            overlaps[name] = pairwise_overlap(set_a, set_b)
    zlib = {}
    for train, tokenizer, key_of, side in ((train_a, tokenizer_a, keys_a, 0), (train_b, tokenizer_b, keys_b, 1)):
        for name, ids in zip(train["example_id"], train["input_ids"], strict=True):
            zlib.setdefault(key_of[name], [None, None])[side] = zlib_entropy(tokenizer.decode(ids.tolist()))
    pairs = np.array([values for values in zlib.values() if None not in values], dtype=float).reshape(-1, 2)
    result = {
        "same_tokenizer": same_tokenizer,
        "document_aligned": aligned,
        "matched_by": matched_by,
        "shared_examples": len(pairs),
        "overlap": overlaps,
        "zlib_pearson": float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) if len(pairs) >= 3 else None,
    }
    if not same_tokenizer and not aligned:
        result["note"] = (
            "the runs use different tokenizers and pack text into their own windows, so their examples rarely align; "
            "run both with data.packing=documents to compare families example by example"
        )
    return result


def compare_many(runs: list[str | Path]) -> dict:
    """Each run's headline numbers, and ``compare_runs`` for every pair of runs (in the given order)."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two run folders.")
    headline = {}
    for run in runs:
        summary_path = RunLayout(Path(run)).summary
        if not summary_path.exists():
            raise FileNotFoundError(f"{run} holds no finished run (no summary.json); run `kdmem run` first.")
        headline[str(run)] = json.loads(summary_path.read_text())["models"]
    pairs = [{"a": str(a), "b": str(b)} | compare_runs(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    return {"runs": headline, "pairs": pairs}
