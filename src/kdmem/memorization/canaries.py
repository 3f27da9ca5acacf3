"""Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets planted in the training data.

A canary is a random key of ``prefix_len`` tokens followed by a random secret filling the rest of
the sequence. It is added to what training sees, ``repeats`` times, but never to D, the audited set,
so the audit of D is unchanged and the canaries measure memorization on their own terms.

Because a secret is uniformly random, a model that has not seen it can only rank it among other
random secrets by chance. Exposure measures how far training moved it up that ranking: the true
secret is scored against ``num_candidates`` random alternatives appended to the same key, and

    exposure = log2(num_candidates + 1) - log2(rank)   (bits)

where rank 1 means no candidate is more likely than the true secret. Exposure is 0 at the worst
rank, log2(e) = 1.44 bits on average for a secret the model has not seen (its rank is then
uniform), and log2(num_candidates + 1) at the top, the most a candidate set of that size can show.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from kdmem.config import CanaryConfig, ConfigError
from kdmem.data import as_tensor
from kdmem.memorization.extraction import extract_memorized


def _canary_tokens(vocab_size: int, excluded_token_ids=()) -> np.ndarray:
    """The token ids keys and secrets are drawn from, uniformly: the vocabulary minus special tokens."""
    return np.setdiff1d(np.arange(vocab_size), np.asarray(excluded_token_ids, dtype=np.int64))


def make_canaries(
    cfg: CanaryConfig, vocab_size: int, seq_len: int, prefix_len: int, excluded_token_ids=()
) -> pd.DataFrame:
    """One canary per entry of ``cfg.repeats``, drawn from ``numpy.random.default_rng(cfg.seed)``.

    Returns:
        ``canary_id`` (``canary-00``, ...), ``repeats`` and ``input_ids`` (np.int32, ``seq_len``
        tokens: a ``prefix_len``-token key, then the secret), one row per canary.
    """
    if not 1 <= prefix_len < seq_len:
        raise ValueError(f"prefix_len = {prefix_len} must be between 1 and seq_len - 1 = {seq_len - 1}.")
    tokens = _canary_tokens(vocab_size, excluded_token_ids)
    if len(cfg.repeats) > len(tokens) ** prefix_len:
        raise ConfigError(
            f"{len(cfg.repeats)} canaries (canaries.repeats) cannot have distinct keys of {prefix_len} tokens "
            f"(extraction.prefix_len) from {len(tokens)} token ids; plant fewer canaries or lengthen the key."
        )
    rng = np.random.default_rng(cfg.seed)
    rows, keys = [], set()
    for _ in cfg.repeats:
        ids = rng.choice(tokens, seq_len)
        # Two canaries sharing a key would compete for one continuation; draw again (rarely needed).
        while ids[:prefix_len].tobytes() in keys:
            ids[:prefix_len] = rng.choice(tokens, prefix_len)
        keys.add(ids[:prefix_len].tobytes())
        rows.append(ids.astype(np.int32))
    width = max(2, len(str(len(rows) - 1)))
    return pd.DataFrame(
        {
            "canary_id": [f"canary-{i:0{width}d}" for i in range(len(rows))],
            "repeats": np.asarray(cfg.repeats, dtype=np.int64),
            "input_ids": rows,
        }
    )


def inject_canaries(train: pd.DataFrame, canaries: pd.DataFrame, seed: int) -> pd.DataFrame:
    """What training sees: ``train`` plus ``repeats`` copies of each canary (``example_id`` = its
    ``canary_id``), rows shuffled by ``numpy.random.default_rng(seed)``. D itself stays without canaries."""
    if len(train) and len(canaries) and len(canaries["input_ids"].iloc[0]) != len(train["input_ids"].iloc[0]):
        raise ValueError("Canaries must have as many tokens as the training sequences.")
    copies = canaries.loc[canaries.index.repeat(canaries["repeats"])]
    added = pd.DataFrame({"example_id": copies["canary_id"].to_numpy(), "input_ids": copies["input_ids"].to_numpy()})
    frame = pd.concat([train[["example_id", "input_ids"]], added], ignore_index=True)
    return frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)


@torch.no_grad()
def secret_log_likelihood(
    model: PreTrainedModel, key_and_secrets: torch.Tensor, prefix_len: int, batch_size: int = 64
) -> torch.Tensor:
    """(N,) float32: total log-probability (nats) of tokens ``prefix_len`` onwards of each (N, T)
    sequence, each token given all tokens before it (teacher forcing)."""
    model.eval()
    totals = [torch.zeros(0)]
    for batch in key_and_secrets.split(batch_size):
        batch = batch.to(model.device)
        logits = model(input_ids=batch[:, :-1]).logits[:, prefix_len - 1 :]  # position t predicts token t + 1
        nll = F.cross_entropy(logits.float().transpose(1, 2), batch[:, prefix_len:], reduction="none")
        totals.append(-nll.sum(dim=1).cpu())
    return torch.cat(totals)


def candidate_secrets(
    canaries: pd.DataFrame, prefix_len: int, num_candidates: int, vocab_size: int, excluded_token_ids=(), seed: int = 0
) -> np.ndarray:
    """(num_canaries, num_candidates, seq_len - prefix_len) int64: random secrets drawn as
    ``make_canaries`` drew the true ones (pass its ``vocab_size`` and ``excluded_token_ids``),
    deterministic from ``seed``, each different from its canary's true secret."""
    tokens = _canary_tokens(vocab_size, excluded_token_ids)
    # A stream of its own: from the seed that made the canaries, the candidates would replay the
    # canaries' own tokens, and a candidate repeating the key scores high on any model.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    secrets = as_tensor(canaries).numpy()[:, prefix_len:]
    candidates = rng.choice(tokens, (len(secrets), num_candidates, secrets.shape[1]))
    while (same := (candidates == secrets[:, None]).all(axis=2)).any():
        candidates[same] = rng.choice(tokens, (int(same.sum()), secrets.shape[1]))
    return candidates


def canary_exposure(
    model: PreTrainedModel,
    canaries: pd.DataFrame,
    prefix_len: int,
    suffix_len: int,
    *,
    vocab_size: int,
    excluded_token_ids=(),
    num_candidates: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Exposure and extractability of each canary of ``make_canaries``.

    Each true secret is ranked by ``secret_log_likelihood`` against the ``candidate_secrets`` after
    the same key (``vocab_size`` and ``excluded_token_ids`` must be those the canaries were made with).

    Returns:
        One row per canary: ``canary_id``, ``repeats``, ``rank`` (1 + the candidates strictly more
        likely than the true secret), ``exposure`` (bits, log2(num_candidates + 1) - log2(rank),
        from 0 to log2(num_candidates + 1)), ``extractable`` (greedy decoding from the key
        reproduces the next ``suffix_len`` tokens exactly; see ``extract_memorized``) and
        ``matched_tokens`` (leading suffix tokens it reproduces).
    """
    true_ids = as_tensor(canaries)  # (C, T)
    candidates = torch.from_numpy(
        candidate_secrets(canaries, prefix_len, num_candidates, vocab_size, excluded_token_ids, seed)
    )
    keys = true_ids[:, None, :prefix_len].expand(-1, num_candidates, -1)
    # Per canary: its true sequence, then its key followed by each candidate.
    scored = torch.cat([true_ids[:, None], torch.cat([keys, candidates], dim=2)], dim=1)  # (C, 1 + K, T)
    log_likelihood = secret_log_likelihood(model, scored.flatten(0, 1), prefix_len, batch_size).view(len(true_ids), -1)
    rank = 1 + (log_likelihood[:, 1:] > log_likelihood[:, :1]).sum(dim=1).numpy()
    frame = pd.DataFrame({"example_id": canaries["canary_id"], "input_ids": canaries["input_ids"]})
    verdicts = extract_memorized(model, frame, prefix_len, suffix_len, batch_size, desc="canaries")
    return pd.DataFrame(
        {
            "canary_id": canaries["canary_id"].to_numpy(),
            "repeats": canaries["repeats"].to_numpy(),
            "rank": rank,
            "exposure": math.log2(num_candidates + 1) - np.log2(rank),
            "extractable": verdicts["memorized"].to_numpy(),
            "matched_tokens": verdicts["matched_tokens"].to_numpy(),
        }
    )
