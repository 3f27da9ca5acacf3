"""Distillation losses: pure functions of two sets of logits.

Every divergence compares the teacher's and the student's next-token distributions after
softening both by a temperature T, p = softmax(z / T), and is multiplied by T^2 so that gradient
magnitudes stay comparable across temperatures (Hinton et al. 2015; the paper's soft KD):

    forward_kl   T^2 * sum_v p_t(v) * (log p_t(v) - log p_s(v))        KL(teacher || student)
    reverse_kl   T^2 * sum_v p_s(v) * (log p_s(v) - log p_t(v))        KL(student || teacher)
    jsd          T^2 * (beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)),  m = beta p_t + (1 - beta) p_s
    tvd          T^2 * 0.5 * sum_v |p_t(v) - p_s(v)|

Logits are upcast to float32 one chunk of tokens at a time, and each chunk is recomputed during
the backward pass instead of being kept, so a float32 copy of the full (batch, seq, vocab) tensors
never exists, for either model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")


def _per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float, jsd_beta: float) -> torch.Tensor:
    """(n, vocab) logits of any float dtype -> (n,) float32 divergences, T^2 included."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":
        value = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif kind == "reverse_kl":
        value = (log_s.exp() * (log_s - log_t)).sum(-1)
    elif kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_t + math.log(jsd_beta), log_s + math.log(1 - jsd_beta)]), dim=0)
        value = jsd_beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1 - jsd_beta) * (log_s.exp() * (log_s - log_m)).sum(-1)
    else:  # tvd
        value = 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)
    return value * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward_kl",
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
    *,
    jsd_beta: float = 0.5,
    reduction: str = "mean",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Divergence between teacher and student next-token distributions, averaged over tokens.

    Args:
        student_logits: (..., vocab), any float dtype; gradients flow into it.
        teacher_logits: (..., vocab), same shape; treated as a constant target.
        kind: one of ``forward_kl`` (the paper's), ``reverse_kl``, ``jsd``, ``tvd``.
        temperature: T > 0; both distributions are softmax(logits / T) and the loss is scaled by T^2.
        mask: (...) bool or 0/1, which token positions count; all of them when None.
        jsd_beta: the mixture weight of the teacher in ``jsd``, strictly between 0 and 1.
        reduction: ``mean`` over counted tokens, ``sum`` over them, or ``none`` for a (...) tensor
            (zero where masked).
        chunk_size: tokens upcast to float32 at a time.

    Returns:
        A float32 scalar (``mean``, ``sum``) or a (...) float32 tensor (``none``).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown distillation loss kind {kind!r}; use one of {', '.join(KINDS)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if kind == "jsd" and not 0 < jsd_beta < 1:
        raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {jsd_beta}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            f"shape; the vocabulary sizes are {student_logits.shape[-1]} (student) and {teacher_logits.shape[-1]} (teacher)."
        )
    leading = student_logits.shape[:-1]
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
    teacher_flat = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    weights = None if mask is None else mask.reshape(-1).to(torch.float32)
    if weights is not None and weights.numel() != student_flat.shape[0]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(leading)}.")

    recompute = torch.is_grad_enabled() and student_flat.requires_grad
    pieces = []
    for start in range(0, student_flat.shape[0], chunk_size):
        s, t = student_flat[start : start + chunk_size], teacher_flat[start : start + chunk_size]
        if recompute:
            piece = checkpoint(_per_token, s, t, kind, temperature, jsd_beta, use_reentrant=False)
        else:
            piece = _per_token(s, t, kind, temperature, jsd_beta)
        pieces.append(piece)
    per_token = torch.cat(pieces) if pieces else student_flat.new_zeros(0, dtype=torch.float32)
    if weights is not None:
        per_token = per_token * weights
    if reduction == "none":
        return per_token.reshape(leading)
    total = per_token.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = weights.sum() if weights is not None else torch.tensor(float(per_token.numel()))
        return total / count.clamp_min(1.0)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
