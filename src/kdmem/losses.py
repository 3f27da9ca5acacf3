"""Distillation losses: pure functions of two sets of logits.

Every divergence compares the teacher's and the student's next-token distributions after
softening both by a temperature T, p = softmax(z / T), and is multiplied by T^2 so that gradient
magnitudes stay comparable across temperatures (Hinton et al. 2015; the paper's soft KD):

    forward_kl   T^2 * sum_v p_t(v) * (log p_t(v) - log p_s(v))        KL(teacher || student)
    reverse_kl   T^2 * sum_v p_s(v) * (log p_s(v) - log p_t(v))        KL(student || teacher)
    jsd          T^2 * (beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)),  m = beta p_t + (1 - beta) p_s
    tvd          T^2 * 0.5 * sum_v |p_t(v) - p_s(v)|

The loss upcasts logits to float32 one chunk of tokens at a time, so it never makes a float32 copy
of a whole (batch, seq, vocab) tensor itself. In training, though, the student's logits reach it in
float32 whole: the student trains with float32 weights, and under ``training.bf16`` mixed precision
``transformers.Trainer`` leaves autocast to accelerate, whose ``Accelerator.prepare_model`` wraps
the student's forward in ``convert_outputs_to_fp32`` (``accelerate.utils.operations``): every
bf16 tensor the forward returns, the logits included, is upcast whole before the loss sees it (not
under DeepSpeed, which casts the model itself). A later change is to remove that conversion. The
teacher is not prepared by accelerate: its logits, live or recomputed from cached hidden states,
come in its own dtype (``inference_dtype``) and are upcast here one chunk at a time. Forward KL
(the paper's loss, and the cached teacher's) computes its gradient, T (p_s - p_t), in the same
pass and keeps it; the other kinds recompute each chunk during the backward pass.

``sampled_forward_kl`` is forward KL against a teacher known only sparsely (what the
teacher-logit cache keeps): its top-k tokens exactly, and N tokens of the tail (the V - k others)
drawn from a proposal, each weighted by p_T(v) / (N q(v)) (importance sampling; Anshumann et al.,
"Sparse Logit Sampling", ACL 2025). ``importance_sampled_teacher`` turns the cached entries into
those weights at any temperature the cache holds the log-partition of. The weights are an
unbiased estimate of the teacher's distribution at T, so the loss and its gradient
T (S p_s - p_hat) (S = the weights' sum, 1 in expectation) are unbiased too; exact at k = V. A
uniform tail, the earlier choice, is exact in mass only at T = 1 and overstates the tail at T > 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdmem.config import SOFT_KINDS


def _per_token(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float, jsd_beta: float
) -> torch.Tensor:
    """(n, vocab) logits of any float dtype -> (n,) float32 divergences, T^2 included; every kind
    but forward KL, which ``_FusedForwardKL`` computes."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "reverse_kl":
        value = (log_s.exp() * (log_s - log_t)).sum(-1)
    elif kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_t + math.log(jsd_beta), log_s + math.log(1 - jsd_beta)]), dim=0)
        value = jsd_beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1 - jsd_beta) * (
            log_s.exp() * (log_s - log_m)
        ).sum(-1)
    else:  # tvd
        value = 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)
    return value * temperature**2


def on_shared_vocabulary(*logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of several models' (..., vocab) logits over the vocabulary they share: the first
    min(vocab) entries of each. Models of one family share a tokenizer but pad their embedding
    matrices to different sizes (Pythia-12B 50,688 rows, Pythia-1.4B 50,304, for a tokenizer of
    50,277 tokens), and no token maps to the rows past the smaller matrix. Rows between the
    tokenizer's length and the smaller matrix are padding both models have; they stay in, so that
    two models' distributions are compared over the same support as the student is trained on."""
    shared = min(x.shape[-1] for x in logits)
    return tuple(x[..., :shared] for x in logits)


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
    if kind not in SOFT_KINDS:
        raise ValueError(f"Unknown distillation loss kind {kind!r}; use one of {', '.join(SOFT_KINDS)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if kind == "jsd" and not 0 < jsd_beta < 1:
        raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {jsd_beta}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            f"in shape; the vocabulary sizes are {student_logits.shape[-1]} (student) and "
            f"{teacher_logits.shape[-1]} (teacher)."
        )
    if kind == "forward_kl":
        return _forward_kl(
            student_logits, [teacher_logits.detach()], _full_target, temperature, mask, reduction, chunk_size
        )
    teacher_flat = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    return _reduce(
        _per_token, student_logits, [teacher_flat], (kind, temperature, jsd_beta), mask, reduction, chunk_size
    )


def _reduce(
    per_token_fn,
    student_logits: torch.Tensor,
    teacher_flat: list[torch.Tensor],
    options: tuple,
    mask,
    reduction: str,
    chunk_size: int,
) -> torch.Tensor:
    """``per_token_fn(student rows, *teacher rows, *options)`` one chunk of tokens at a time
    (recomputed in the backward pass), masked and reduced."""
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
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
    return _masked(per_token, student_logits.shape[:-1], mask, reduction)


def _masked(per_token: torch.Tensor, leading: torch.Size, mask, reduction: str) -> torch.Tensor:
    """(n,) per-token values -> masked and reduced as ``reduction`` says."""
    weights = None if mask is None else mask.reshape(-1).to(torch.float32)
    if weights is not None and weights.numel() != per_token.shape[0]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(leading)}.")
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


def _as_rows(x: torch.Tensor, leading: torch.Size) -> torch.Tensor:
    """View (..., L, last) as (rows, L, last): a view for 2-D and 3-D inputs, sliced or not."""
    if len(leading) == 1:
        return x.unsqueeze(0)
    return x if len(leading) == 2 else x.reshape(-1, *x.shape[len(leading) - 1 :])


def _token_chunks(rows: int, length: int, chunk_size: int):
    """Index pairs covering (rows, length) with at most about ``chunk_size`` tokens each: whole
    rows together when a row is short, else one row's positions a block at a time."""
    if length <= chunk_size:
        step = max(1, chunk_size // max(length, 1))
        for row in range(0, rows, step):
            yield slice(row, row + step), slice(None)
    else:
        for row in range(rows):
            for start in range(0, length, chunk_size):
                yield slice(row, row + 1), slice(start, start + chunk_size)


class _FusedForwardKL(torch.autograd.Function):
    """Per-token T^2 KL(p_t || p_s) over (rows, L, vocab) logits, one chunk of tokens at a time,
    with its gradient computed in the same pass: d/dz_s = T (S p_s - p_t), where S is the
    teacher's total mass (1 for an exact teacher). The backward pass only scales the stored
    gradient, which has the student logits' dtype and shape (the gradient autograd would hand
    back anyway). Inputs are read through views: a sliced (batch, seq - 1, vocab) block of the
    model's logits is never copied whole.

    ``target(*teacher chunk, temperature, vocab)`` gives the teacher at T for a chunk of tokens:
    (p_t (n, vocab), sum_v p_t log p_t (n,), S (n,) or None for 1)."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, target, temperature: float, chunk_size: int, *teacher: torch.Tensor):
        keep_grad = student.requires_grad
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device) if keep_grad else None
        values = torch.empty(student.shape[:-1], dtype=torch.float32, device=student.device)
        for index in _token_chunks(student.shape[0], student.shape[1], chunk_size):
            scaled = student[index].float()
            log_s = F.log_softmax(scaled if temperature == 1 else scaled / temperature, dim=-1)
            p_t, teacher_term, mass = target(*(t[index] for t in teacher), temperature, student.shape[-1])
            # sum_v p_t (log p_t - log p_s), as row-wise dot products: no (tokens, vocab) product is kept.
            values[index] = (teacher_term - torch.linalg.vecdot(p_t, log_s)) * temperature**2
            if keep_grad:
                p_s = log_s.exp_()
                chunk_grad = (p_s if mass is None else p_s.mul_(mass[..., None])).sub_(p_t)
                grad[index] = chunk_grad if temperature == 1 else chunk_grad.mul_(temperature)
        ctx.grad, ctx.num_teacher = grad, len(teacher)
        return values

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor):
        grad, ctx.grad = ctx.grad, None  # scaled in place: called once, no second backward
        grad.mul_(grad_values.to(grad.dtype)[..., None])
        return grad, None, None, None, *([None] * ctx.num_teacher)


def _full_target(teacher_logits: torch.Tensor, temperature: float, vocab: int):
    scaled = teacher_logits.float()
    log_t = F.log_softmax(scaled if temperature == 1 else scaled / temperature, dim=-1)
    log_t.clamp_min_(torch.finfo(torch.float32).min)  # -inf log-probabilities (p = 0) would make 0 * -inf = nan
    p_t = log_t.exp()
    return p_t, torch.linalg.vecdot(p_t, log_t), None


def _sparse_target(ids: torch.Tensor, log_probs: torch.Tensor, weights: torch.Tensor, temperature: float, vocab: int):
    """Entries (n, m): token ids, their exact log p_T, and their weights (the estimate of p_T;
    repeated ids add up)."""
    weights = weights.float()
    p_t = weights.new_zeros(*weights.shape[:-1], vocab).scatter_add_(-1, ids.long(), weights)
    return p_t, (weights * log_probs.float()).sum(-1), weights.sum(-1)


def _forward_kl(
    student_logits: torch.Tensor,
    teacher: list[torch.Tensor],
    target,
    temperature: float,
    mask,
    reduction: str,
    chunk_size: int,
):
    leading = student_logits.shape[:-1]
    if not leading:
        raise ValueError("Logits need at least one token dimension: (tokens, vocab) or (batch, seq, vocab).")
    student = _as_rows(student_logits, leading)
    if not (torch.is_grad_enabled() and student.requires_grad):
        student = student.detach()  # the Function then stores no gradient
    teacher = [_as_rows(t, leading) for t in teacher]
    per_token = _FusedForwardKL.apply(student, target, temperature, chunk_size, *teacher)
    return _masked(per_token.reshape(-1), leading, mask, reduction)


def importance_sampled_teacher(
    top_logits: torch.Tensor,
    top_ids: torch.Tensor,
    tail_logits: torch.Tensor,
    tail_ids: torch.Tensor,
    tail_log_proposal: torch.Tensor,
    log_partition: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher at ``temperature`` as weighted entries, from what the cache keeps per position:
    the top-k logits and ids (..., k); N tail tokens drawn with replacement from a proposal q over
    the tail, with their logits, ids and log q (..., N); and log Z_T = logsumexp(z / T) over the
    whole vocabulary (...) at this temperature.

    Returns (ids, log p_T, weights), each (..., k + N): a top-k entry weighs p_T(v) exactly, a tail
    sample p_T(v) / (N q(v)), so that the weights are unbiased for p_T.
    """
    samples = tail_ids.shape[-1]
    log_norm = log_partition.float()[..., None]
    top_log_probs = top_logits.float() / temperature - log_norm
    tail_log_probs = tail_logits.float() / temperature - log_norm
    weights = [top_log_probs.exp()]
    if samples:
        weights.append(torch.exp(tail_log_probs - tail_log_proposal.float()) / samples)
    return torch.cat([top_ids, tail_ids], -1), torch.cat([top_log_probs, tail_log_probs], -1), torch.cat(weights, -1)


def sampled_forward_kl(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    log_probs: torch.Tensor,
    weights: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    chunk_size: int = 256,
) -> torch.Tensor:
    """T^2 KL(teacher || student) with the teacher given sparsely (``importance_sampled_teacher``):
    ``ids`` (..., m) token ids, ``log_probs`` (..., m) their exact teacher log-probabilities at T,
    ``weights`` (..., m) the estimate of the teacher's probability of each entry. The value is
    T^2 sum_j w_j (log p_T(id_j) - log p_s(id_j)); with exact weights over every token it equals
    ``distillation_loss(kind="forward_kl")``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if not (ids.shape == log_probs.shape == weights.shape) or ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"Shapes do not match: student logits {tuple(student_logits.shape)}, ids {tuple(ids.shape)}, "
            f"log-probabilities {tuple(log_probs.shape)}, weights {tuple(weights.shape)}."
        )
    teacher = [ids, log_probs.detach(), weights.detach()]
    return _forward_kl(student_logits, teacher, _sparse_target, temperature, mask, reduction, chunk_size)
