"""Per-example features: what an example looks like to each model, and how compressible its text is.

All model features come from one teacher-forced forward pass per model over each sequence:

- ``NAME_loss``: mean next-token negative log-likelihood over the sequence (nats);
  ``NAME_ppl`` = exp(``NAME_loss``);
- ``NAME_log_prob``: the sequence log-probability, the sum of its next-token log-probabilities (nats);
- ``NAME_entropy_last_k``: mean entropy (nats) of the next-token distribution over the last K
  predicted positions (the paper's "last 50 tokens"), the mechanism analysis's measure of confidence;
- ``NAME_entropy_suffix``: the same over the positions that predict the suffix extraction judges
  (tokens prefix_len + 1 to prefix_len + suffix_len). The two spans are one at the default (64
  tokens, 32/32) and apart at the paper's 256 tokens with a 50/50 split (tokens 207-256 vs 51-100);
- ``teacher_baseline_kl``: mean over positions of KL(teacher || baseline) between their
  next-token distributions (nats), how differently the two models see the example; over the
  vocabulary the two share (``kdmem.losses.on_shared_vocabulary``), since one family pads its
  embedding matrices to different sizes.

``zlib_entropy`` is the compressed byte length of the decoded text (the paper's measure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdmem.data import as_tensor, zlib_entropy
from kdmem.losses import on_shared_vocabulary


def _token_statistics(
    logits: torch.Tensor, targets: torch.Tensor, last_k: int, suffix: slice
) -> dict[str, torch.Tensor]:
    """(batch, positions, vocab) logits predicting (batch, positions) targets -> per-row statistics;
    ``suffix`` indexes the positions that predict the extraction suffix."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return {
        "loss": -token_log_probs.mean(dim=1),
        "log_prob": token_log_probs.sum(dim=1),
        "entropy_last_k": entropy[:, -last_k:].mean(dim=1),
        "entropy_suffix": entropy[:, suffix].mean(dim=1),
    }


@torch.no_grad()
def model_features(
    models: dict[str, PreTrainedModel],
    sequences: pd.DataFrame,
    tokenizer,
    last_k: int = 50,
    suffix_span: tuple[int, int] = (50, 50),
    batch_size: int | None = 32,
    kl_pair: tuple[str, str] | None = ("teacher", "baseline"),
) -> pd.DataFrame:
    """One row per sequence: ``example_id``, ``zlib_entropy``, the per-model features named above for
    every model in ``models`` (keys become name prefixes), and ``teacher_baseline_kl`` when both
    models of ``kl_pair`` are given. ``suffix_span`` is (prefix_len, suffix_len) of extraction. Models must
    share the tokenizer; their vocabularies may be padded apart.

    Statistics are computed on the models' device and only the two logit tensors of ``kl_pair``
    are held at once. ``batch_size`` None finds the largest that fits (as extraction does)."""
    from kdmem.memorization.extraction import largest_fitting_batch, starting_batch_size

    input_ids = as_tensor(sequences)
    prefix_len, suffix_len = suffix_span
    suffix = slice(prefix_len - 1, prefix_len + suffix_len - 1)  # position t predicts token t + 1
    for model in models.values():
        model.eval()

    def feature_columns(batch_size: int) -> dict[str, list[torch.Tensor]]:
        columns: dict[str, list[torch.Tensor]] = {}
        for start in tqdm(range(0, len(input_ids), batch_size), desc="features", unit="batch"):
            batch = input_ids[start : start + batch_size]
            kept = {}
            for name, model in models.items():
                logits = model(input_ids=batch[:, :-1].to(model.device)).logits
                for stat, value in _token_statistics(logits, batch[:, 1:].to(logits.device), last_k, suffix).items():
                    columns.setdefault(f"{name}_{stat}", []).append(value.cpu())
                if kl_pair and name in kl_pair:
                    kept[name] = logits
                del logits
            if kl_pair and set(kl_pair) <= set(kept):
                teacher, other = on_shared_vocabulary(kept[kl_pair[0]], kept[kl_pair[1]].to(kept[kl_pair[0]].device))
                p_log, q_log = F.log_softmax(teacher.float(), dim=-1), F.log_softmax(other.float(), dim=-1)
                kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1).mean(dim=1)
                columns.setdefault(f"{kl_pair[0]}_{kl_pair[1]}_kl", []).append(kl.cpu())
            kept.clear()
        return columns

    if batch_size is None:
        # up to about eight float32 copies of a batch's logits are alive at once (two models' logits,
        # log-softmax and products), so the search starts at an eighth of extraction's batch
        first = next(iter(models.values()))
        columns, _ = largest_fitting_batch(
            feature_columns, max(1, starting_batch_size(first, input_ids.shape[1]) // 8)
        )
    else:
        columns = feature_columns(batch_size)
    frame = pd.DataFrame({"example_id": sequences["example_id"].to_numpy()})
    frame["zlib_entropy"] = [zlib_entropy(tokenizer.decode(ids.tolist())) for ids in sequences["input_ids"]]
    for name, parts in columns.items():
        frame[name] = torch.cat(parts).numpy()
    for name in models:
        frame[f"{name}_ppl"] = np.exp(frame[f"{name}_loss"])
    return frame
