"""Membership inference: from one model's scores alone, can an attacker tell D's examples from held-out ones?

Every score is computed per sequence from one teacher-forced forward pass over all T - 1 predicted
tokens. Training examples (members) and validation examples (non-members) are scored alike; the
area under the ROC curve and the true-positive rate at 1% false positives then say how well each
score separates them. ``SCORES`` names each score with its exact formula, the side members lie on
and its source; it travels, with the metrics, in the metadata of the Parquet file.

"zlib" scores differ across the literature: log-perplexity over zlib bytes (Carlini et al. 2021's
code, used here), total NLL over zlib bits, and zlib over perplexity (the inverse, higher means
member). kdmem uses exactly the first; compare with other papers only after converting.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from transformers import PreTrainedModel

from kdmem.data import as_tensor, zlib_entropy
from kdmem.io import atomic_path

LOWER, HIGHER = "lower means member", "higher means member"

SCORES: dict[str, dict[str, str]] = {
    "loss": {
        "formula": "mean over the T-1 predicted tokens of -log p(x_t | x_<t), nats",
        "direction": LOWER,
        "source": "Yeom et al. 2018, Privacy Risk in Machine Learning",
    },
    "zlib_ratio": {
        "formula": "loss / zlib_entropy(tokenizer.decode(input_ids)), "
        "where zlib_entropy = len(zlib.compress(text.encode('utf-8'))) bytes",
        "direction": LOWER,
        "source": "Carlini et al. 2021, Extracting Training Data from Large Language Models "
        "(zlib comparison; log-perplexity over zlib bytes, as in their code)",
    },
    "min_k_prob": {
        "formula": "mean of the lowest max(1, floor(k * (T-1))) token log-probabilities log p(x_t | x_<t), nats; "
        "k = 0.2 unless stated",
        "direction": HIGHER,
        "source": "Shi et al. 2024, Detecting Pretraining Data from Large Language Models (Min-K% Prob)",
    },
    "reference_ratio": {
        "formula": "loss / reference_loss, the model's log-perplexity over a reference model's "
        "(kdmem: the base before fine-tuning); NaN without a reference",
        "direction": LOWER,
        "source": "Carlini et al. 2021, Extracting Training Data from Large Language Models "
        "(comparison to other models)",
    },
}
"""Every membership score: ``formula``, ``direction`` (the side of the score where members lie) and ``source``."""

__all__ = [
    "SCORES",
    "audit_membership",
    "membership_metrics",
    "membership_scores",
    "membership_table",
    "token_log_probs",
    "write_membership",
    "zlib_entropy",
]


@torch.no_grad()
def token_log_probs(model: PreTrainedModel, input_ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, T) token ids -> (N, T-1) float32 log p(x_t | x_<t) of each true next token, on the CPU.

    Computed on the model's device; the log-softmax runs in float32 so half-precision models lose
    no resolution on the tiny probabilities that decide the scores.
    """
    model.eval()
    parts = []
    for start in range(0, len(input_ids), batch_size):
        batch = input_ids[start : start + batch_size].to(model.device)
        logits = model(input_ids=batch[:, :-1]).logits  # position t predicts token t + 1
        log_probs = F.log_softmax(logits.float(), dim=-1)
        parts.append(log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1).cpu())
    return torch.cat(parts)


def membership_scores(
    model: PreTrainedModel,
    sequences: pd.DataFrame,
    tokenizer,
    reference: PreTrainedModel | None = None,
    batch_size: int = 64,
    min_k: float = 0.2,
) -> pd.DataFrame:
    """One row per sequence: ``example_id`` and every score of ``SCORES``.

    Args:
        sequences: a frame with ``example_id`` and ``input_ids`` (all of one length T >= 2).
        tokenizer: decodes ``input_ids`` into the text whose zlib entropy ``zlib_ratio`` divides by.
        reference: the model ``reference_ratio`` compares against (same tokenizer); None gives NaN.
        min_k: the share k of tokens Min-K% Prob averages, in (0, 1].
    """
    if not 0 < min_k <= 1:
        raise ValueError(f"min_k is a share of the tokens, in (0, 1]; got {min_k}.")
    input_ids = as_tensor(sequences)
    log_probs = token_log_probs(model, input_ids, batch_size)
    loss = -log_probs.mean(dim=1).numpy()
    lowest = max(1, int(min_k * log_probs.shape[1]))  # floor, as in Shi et al.'s code
    zlib_bytes = np.array(
        [zlib_entropy(tokenizer.decode(ids.tolist())) for ids in sequences["input_ids"]], dtype=np.float64
    )
    if reference is None:
        reference_ratio = np.full(len(loss), np.nan)
    else:
        reference_ratio = loss / -token_log_probs(reference, input_ids, batch_size).mean(dim=1).numpy()
    return pd.DataFrame(
        {
            "example_id": sequences["example_id"].to_numpy(),
            "loss": loss,
            "zlib_ratio": loss / zlib_bytes,
            "min_k_prob": log_probs.sort(dim=1).values[:, :lowest].mean(dim=1).numpy(),
            "reference_ratio": reference_ratio,
        }
    )


def membership_metrics(members: pd.DataFrame, non_members: pd.DataFrame) -> dict:
    """How well each score separates members from non-members.

    Returns ``{"members": count, "non_members": count, SCORE: {"auc", "tpr_at_1pct_fpr"}, ...}`` for
    every score of ``SCORES`` present in both frames and not all NaN. Scores are oriented so that
    higher means member before the ROC curve is drawn, so 0.5 is chance whatever the direction.
    TPR at 1% FPR is the largest TPR among ROC points whose FPR is at most 0.01.
    """
    if members.empty or non_members.empty:
        raise ValueError(
            f"Membership metrics need members and non-members; got {len(members)} and {len(non_members)}."
        )
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    metrics: dict = {"members": len(members), "non_members": len(non_members)}
    for name, score in SCORES.items():
        if name not in members or name not in non_members:
            continue
        values = np.r_[members[name].to_numpy(float), non_members[name].to_numpy(float)]
        if np.isnan(values).all():
            continue
        oriented = -values if score["direction"] == LOWER else values
        fpr, tpr, _ = roc_curve(labels, oriented, drop_intermediate=False)
        metrics[name] = {
            "auc": float(roc_auc_score(labels, oriented)),
            "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
        }
    return metrics


def split_scores(
    model: PreTrainedModel,
    sequences: pd.DataFrame,
    tokenizer,
    reference: PreTrainedModel | None = None,
    batch_size: int = 64,
    min_k: float = 0.2,
) -> pd.DataFrame:
    """``membership_scores`` of sequences that carry a ``split`` column ("train" or
    "validation"), which passes through: ``example_id``, ``split`` and every score."""
    columns = ["example_id", "split", *SCORES]
    if sequences.empty:
        return pd.DataFrame(columns=columns)
    scores = membership_scores(model, sequences, tokenizer, reference, batch_size, min_k)
    return scores.assign(split=sequences["split"].to_numpy())[columns]


def audit_membership(
    model: PreTrainedModel,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    tokenizer,
    reference: PreTrainedModel | None = None,
    batch_size: int = 64,
    min_k: float = 0.2,
) -> tuple[pd.DataFrame, dict]:
    """Scores of the training (member) and validation (non-member) sequences in one frame, with a
    ``split`` column of "train" or "validation", and their ``membership_metrics``."""
    labelled = pd.concat([train.assign(split="train"), validation.assign(split="validation")], ignore_index=True)
    frame = split_scores(model, labelled, tokenizer, reference, batch_size, min_k)
    return frame, membership_metrics(frame[frame["split"] == "train"], frame[frame["split"] == "validation"])


def membership_table(frame: pd.DataFrame, metrics: dict, min_k: float = 0.2) -> pa.Table:
    """The scores as an Arrow table whose schema metadata, key ``kdmem``, holds JSON
    ``{"scores": SCORES, "min_k": k, "metrics": metrics}``, so the formulas travel with the Parquet file."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    recorded = json.dumps({"scores": SCORES, "min_k": min_k, "metrics": metrics})
    return table.replace_schema_metadata({**(table.schema.metadata or {}), "kdmem": recorded})


def write_membership(path, frame: pd.DataFrame, metrics: dict, min_k: float = 0.2) -> None:
    """Write ``membership_table`` atomically to ``path`` (Parquet)."""
    with atomic_path(path) as tmp:
        pq.write_table(membership_table(frame, metrics, min_k), tmp)


def read_membership_metrics(path) -> dict:
    """The ``membership_metrics`` a Parquet file of ``write_membership`` records, without reading its scores."""
    return json.loads(pq.read_schema(path).metadata[b"kdmem"])["metrics"]
