"""Cross-model comparison: two runs (two sizes, or two model families) on the same text.

Memorized sets are compared by example; runs that share a tokenizer share example ids, runs that
do not are matched by the decoded text of each sequence. zlib entropy depends on tokenization,
since a sequence of ``seq_len`` tokens covers more or less text under each tokenizer; the paper
finds that families share almost no memorized examples while their zlib estimates correlate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdmem.analysis.overlaps import memorized_ids, pairwise_overlap
from kdmem.data import read_sequences, zlib_entropy
from kdmem.layout import RunLayout
from kdmem.models import load_tokenizer


def zlib_under_tokenizers(texts: list[str], tokenizers: list, seq_len: int) -> np.ndarray:
    """(len(tokenizers), len(texts)): zlib entropy of the text each tokenizer's first ``seq_len``
    tokens of every text cover."""
    return np.array(
        [[zlib_entropy(tok.decode(tok(text, add_special_tokens=False)["input_ids"][:seq_len])) for text in texts] for tok in tokenizers],
        dtype=float,
    )


def compare_runs(run_a: str | Path, run_b: str | Path, models: tuple[str, ...] = ("teacher", "baseline", "soft", "hard")) -> dict:
    """Overlap of each model's memorized set between two runs, and the Pearson correlation of zlib
    entropy of run A's training text under both runs' tokenizers."""
    a, b = RunLayout(Path(run_a)), RunLayout(Path(run_b))
    tokenizer_a, tokenizer_b = load_tokenizer(str(a.model("teacher"))), load_tokenizer(str(b.model("teacher")))
    train_a, train_b = read_sequences(a.data("train")), read_sequences(b.data("train"))
    same_tokenizer = tokenizer_a.get_vocab() == tokenizer_b.get_vocab()

    def keys(train: pd.DataFrame, tokenizer) -> dict[str, str]:
        # example id -> what identifies the example across the two runs
        if same_tokenizer:
            return dict(zip(train["example_id"], train["example_id"]))
        return {i: tokenizer.decode(ids.tolist()) for i, ids in zip(train["example_id"], train["input_ids"])}

    keys_a, keys_b = keys(train_a, tokenizer_a), keys(train_b, tokenizer_b)
    overlaps = {}
    for name in models:
        if a.memorization(name).exists() and b.memorization(name).exists():
            set_a = {keys_a[i] for i in memorized_ids(pd.read_parquet(a.memorization(name)))}
            set_b = {keys_b[i] for i in memorized_ids(pd.read_parquet(b.memorization(name)))}
            overlaps[name] = pairwise_overlap(set_a, set_b)
    texts = [tokenizer_a.decode(ids.tolist()) for ids in train_a["input_ids"]]
    zlib = zlib_under_tokenizers(texts, [tokenizer_a, tokenizer_b], len(train_a["input_ids"].iloc[0]))
    return {
        "same_tokenizer": same_tokenizer,
        "shared_examples": len(set(keys_a.values()) & set(keys_b.values())),
        "overlap": overlaps,
        "zlib_pearson": float(np.corrcoef(zlib[0], zlib[1])[0, 1]),
    }


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
    pairs = [
        {"a": str(a), "b": str(b)} | compare_runs(a, b)
        for i, a in enumerate(runs)
        for b in runs[i + 1 :]
    ]
    return {"runs": headline, "pairs": pairs}
