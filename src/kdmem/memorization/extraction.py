"""Discoverable memorization: does greedy decoding from a prefix reproduce the true suffix exactly?

Greedy decoding emits, at each step, the argmax of the next-token distribution given everything
before it. While its output still equals the true suffix, that context is exactly the true
sequence, so the greedy path reproduces the first j suffix tokens if and only if, under teacher
forcing on the true sequence, the argmax at each of those j positions is the true next token.
One forward pass over prefix + suffix therefore gives the verdict, with no decoding loop.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdmem.data import as_tensor


def matched_suffix_tokens(logits: torch.Tensor, input_ids: torch.Tensor, prefix_len: int, suffix_len: int) -> torch.Tensor:
    """How many leading suffix tokens greedy decoding reproduces, from teacher-forced logits.

    Args:
        logits: (batch, >= prefix_len + suffix_len - 1, vocab) logits of the true sequence.
        input_ids: (batch, >= prefix_len + suffix_len) true tokens.
    Returns:
        (batch,) int64 in [0, suffix_len]; ``suffix_len`` means memorized.
    """
    predicted = logits[:, prefix_len - 1 : prefix_len + suffix_len - 1].argmax(-1)
    correct = predicted == input_ids[:, prefix_len : prefix_len + suffix_len]
    return correct.long().cumprod(dim=1).sum(dim=1)


@torch.no_grad()
def extract_memorized(
    model: PreTrainedModel,
    sequences: pd.DataFrame,
    prefix_len: int = 50,
    suffix_len: int = 50,
    batch_size: int = 64,
    desc: str = "extract",
) -> pd.DataFrame:
    """Per example: ``example_id``, ``matched_tokens`` and ``memorized`` (all ``suffix_len`` reproduced)."""
    input_ids = as_tensor(sequences)
    if input_ids.shape[1] < prefix_len + suffix_len:
        raise ValueError(
            f"Sequences have {input_ids.shape[1]} tokens, fewer than prefix_len + suffix_len = {prefix_len + suffix_len}."
        )
    model.eval()
    matched = []
    for start in tqdm(range(0, len(input_ids), batch_size), desc=desc, unit="batch"):
        batch = input_ids[start : start + batch_size, : prefix_len + suffix_len].to(model.device)
        logits = model(input_ids=batch[:, :-1]).logits
        matched.append(matched_suffix_tokens(logits, batch, prefix_len, suffix_len).cpu())
    matched_tokens = torch.cat(matched) if matched else torch.zeros(0, dtype=torch.long)
    return pd.DataFrame(
        {
            "example_id": sequences["example_id"].to_numpy(),
            "matched_tokens": matched_tokens.numpy().astype("int32"),
            "memorized": (matched_tokens == suffix_len).numpy(),
        }
    )
