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

``topk_forward_kl`` is forward KL against a teacher known only by its top-k logits and the
log-sum-exp of all its logits (what the teacher-logit cache keeps). The tail, the V - k tokens
outside the top k, is taken as *uniform*: its total probability at T = 1 is exact
(1 - the top-k mass) and is spread evenly over the tail tokens, which fixes every tail logit,
so the teacher's distribution at any temperature follows. The approximation error shrinks as k
grows and vanishes at k = V.
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
    chunk_size: int = 256,
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
    teacher_flat = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    return _reduce(_per_token, student_logits, [teacher_flat], (kind, temperature, jsd_beta), mask, reduction, chunk_size)


def _reduce(per_token_fn, student_logits: torch.Tensor, teacher_flat: list[torch.Tensor], options: tuple, mask, reduction: str, chunk_size: int) -> torch.Tensor:
    """``per_token_fn(student rows, *teacher rows, *options)`` one chunk of tokens at a time
    (recomputed in the backward pass), masked and reduced."""
    leading = student_logits.shape[:-1]
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
    weights = None if mask is None else mask.reshape(-1).to(torch.float32)
    if weights is not None and weights.numel() != student_flat.shape[0]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(leading)}.")

    recompute = torch.is_grad_enabled() and student_flat.requires_grad
    pieces = []
    for start in range(0, student_flat.shape[0], chunk_size):
        chunk = [student_flat[start : start + chunk_size], *(t[start : start + chunk_size] for t in teacher_flat)]
        if recompute:
            piece = checkpoint(per_token_fn, *chunk, *options, use_reentrant=False)
        else:
            piece = per_token_fn(*chunk, *options)
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


def _per_token_topk(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor, logsumexp: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, vocab) student logits, (n, k) teacher top-k logits and ids, (n,) teacher log-sum-exp at
    T = 1 -> (n,) forward KL at ``temperature`` with a uniform tail, T^2 included."""
    vocab, k = student_logits.shape[-1], top_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    top = top_logits.float()
    tail_size = vocab - k
    # The tail's share at T = 1, spread evenly: each tail token gets logit lse + log(tail / (V - k)).
    top_mass = torch.exp(top - logsumexp.float()[:, None]).sum(-1)
    tail_mass = (1 - top_mass).clamp_min(0)
    scaled_top = top / temperature
    if tail_size:
        tail_logit = (logsumexp.float() + torch.log(tail_mass) - math.log(tail_size)) / temperature  # -inf where no tail mass
        log_norm = torch.logsumexp(torch.cat([scaled_top, (tail_logit + math.log(tail_size))[:, None]], dim=-1), dim=-1)
    else:
        log_norm = torch.logsumexp(scaled_top, dim=-1)
    log_t_top = scaled_top - log_norm[:, None]
    value = (log_t_top.exp() * (log_t_top - log_s.gather(-1, top_ids.long()))).sum(-1)
    if tail_size:
        log_t_tail = tail_logit - log_norm  # each tail token's log-probability
        tail_log_s = log_s.sum(-1) - log_s.gather(-1, top_ids.long()).sum(-1)  # sum over the tail of log p_s
        tail_term = log_t_tail.exp() * (tail_size * log_t_tail - tail_log_s)
        value = value + torch.where(tail_mass > 0, tail_term, torch.zeros_like(tail_term))
    return value * temperature**2


def topk_forward_kl(
    student_logits: torch.Tensor,
    top_logits: torch.Tensor,
    top_ids: torch.Tensor,
    logsumexp: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    chunk_size: int = 256,
) -> torch.Tensor:
    """T^2 KL(teacher || student) with the teacher given by its top-k logits (..., k), their token
    ids (..., k) and the log-sum-exp of all its logits at T = 1 (...); the tail is uniform (see
    the module docstring). Equal to ``distillation_loss(kind="forward_kl")`` when k = vocab."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if top_logits.shape != top_ids.shape or top_logits.shape[:-1] != student_logits.shape[:-1] or logsumexp.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"Shapes do not match: student logits {tuple(student_logits.shape)}, top-k logits {tuple(top_logits.shape)}, "
            f"ids {tuple(top_ids.shape)}, log-sum-exp {tuple(logsumexp.shape)}."
        )
    if top_logits.shape[-1] > student_logits.shape[-1]:
        raise ValueError(f"k = {top_logits.shape[-1]} is larger than the student's vocabulary ({student_logits.shape[-1]}).")
    k = top_logits.shape[-1]
    teacher = [top_logits.detach().reshape(-1, k), top_ids.reshape(-1, k), logsumexp.detach().reshape(-1)]
    return _reduce(_per_token_topk, student_logits, teacher, (temperature,), mask, reduction, chunk_size)
