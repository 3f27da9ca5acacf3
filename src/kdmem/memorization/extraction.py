"""Discoverable memorization: does greedy decoding from a prefix reproduce the true suffix exactly?

Greedy decoding emits, at each step, the argmax of the next-token distribution given everything
before it. While its output still equals the true suffix, that context is exactly the true
sequence, so the greedy path reproduces the first j suffix tokens if and only if, under teacher
forcing on the true sequence, the argmax at each of those j positions is the true next token.
Forward passes over the true tokens therefore give the verdict, with no decoding loop.

Early exit: most examples fail within the first few suffix tokens, and greedy decoding cannot
recover after a mismatch. So every example first gets the prefix plus ``first_stage_tokens``
suffix tokens; only the examples still matching continue, from the saved KV cache, over the rest
of the suffix. The cost approaches one forward pass over the prefixes.

Exactness: a teacher-forced forward pass and step-by-step decoding compute the same logits up to
floating-point noise, which can only change a verdict where two logits nearly tie. ``min_margin``
is the smallest gap between the top two logits at the positions that decide the verdict (every
matched suffix position, and the first mismatched one); examples below ``margin_tolerance`` are
decided again by real greedy ``generate``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate.utils import find_executable_batch_size
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdmem.data import as_tensor
from kdmem.train.hard import greedy_continuations


@dataclass
class TokenChecks:
    """Per suffix position: whether the argmax is the true token, and the top-1 minus top-2 logit gap."""

    correct: torch.Tensor  # (batch, n) bool
    gap: torch.Tensor  # (batch, n) float32

    @classmethod
    def of(cls, logits: torch.Tensor, targets: torch.Tensor) -> "TokenChecks":
        top = logits.float().topk(2, dim=-1)
        return cls(top.indices[..., 0] == targets, top.values[..., 0] - top.values[..., 1])


def leading_matches(correct: torch.Tensor) -> torch.Tensor:
    """(batch, n) bool -> (batch,) how many positions match before the first mismatch."""
    return correct.long().cumprod(dim=1).sum(dim=1)


def decisive_min_gap(checks: TokenChecks, matched: torch.Tensor) -> torch.Tensor:
    """Smallest gap over the matched positions plus the first mismatched one (if any)."""
    positions = torch.arange(checks.gap.shape[1], device=checks.gap.device)
    decisive = positions[None, :] <= matched[:, None]
    return torch.where(decisive, checks.gap, torch.inf).min(dim=1).values


@torch.no_grad()
def _staged_checks(model: PreTrainedModel, batch: torch.Tensor, prefix_len: int, suffix_len: int, first_stage_tokens: int) -> TokenChecks:
    """Checks of every suffix position an example reaches before its first mismatch.

    Positions after an example's first mismatch are left unchecked (False), which changes neither
    its matched count nor its decisive gap.
    """
    first = min(first_stage_tokens, suffix_len)
    output = model(input_ids=batch[:, : prefix_len + first - 1], use_cache=first < suffix_len)
    stage_one = TokenChecks.of(output.logits[:, prefix_len - 1 :], batch[:, prefix_len : prefix_len + first])
    size = (batch.shape[0], suffix_len)
    correct = torch.zeros(size, dtype=torch.bool, device=batch.device)
    gap = torch.full(size, torch.inf, device=batch.device)
    correct[:, :first], gap[:, :first] = stage_one.correct, stage_one.gap
    alive = stage_one.correct.all(dim=1).nonzero().squeeze(1)
    if first < suffix_len and len(alive):
        # transformers renamed past_key_values to cache (5.x); accept either spelling.
        cache = output.cache if "cache" in output else output.past_key_values
        cache.batch_select_indices(alive)
        cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        rest = model(input_ids=batch[alive, prefix_len + first - 1 : prefix_len + suffix_len - 1], **{cache_argument: cache})
        stage_two = TokenChecks.of(rest.logits, batch[alive, prefix_len + first : prefix_len + suffix_len])
        correct[alive, first:], gap[alive, first:] = stage_two.correct, stage_two.gap
    return TokenChecks(correct, gap)


@torch.no_grad()
def _full_pass(model: PreTrainedModel, batch: torch.Tensor, prefix_len: int, suffix_len: int, prefix_lens: tuple[int, ...]) -> tuple[TokenChecks, dict]:
    """One forward pass over whole sequences: the suffix checks, plus the ``--full`` fields."""
    logits = model(input_ids=batch[:, :-1]).logits  # position t predicts token t + 1
    targets = batch[:, 1:]
    all_checks = TokenChecks.of(logits, targets)
    span = slice(prefix_len - 1, prefix_len + suffix_len - 1)
    suffix_nll = F.cross_entropy(logits[:, span].float().transpose(1, 2), targets[:, span], reduction="none")
    fields = {
        "suffix_token_accuracy": all_checks.correct[:, span].float().mean(dim=1),
        "suffix_loss": suffix_nll.mean(dim=1),
    }
    for length in prefix_lens:
        fields[f"memorized_p{length}"] = all_checks.correct[:, length - 1 : length + suffix_len - 1].all(dim=1)
    return TokenChecks(all_checks.correct[:, span], all_checks.gap[:, span]), fields


def extract_memorized(
    model: PreTrainedModel,
    sequences: pd.DataFrame,
    prefix_len: int = 50,
    suffix_len: int = 50,
    batch_size: int | None = 64,
    *,
    full: bool = False,
    prefix_lens: tuple[int, ...] | list[int] = (),
    first_stage_tokens: int = 4,
    margin_tolerance: float = 1e-3,
    recheck: bool = True,
    desc: str = "extract",
) -> pd.DataFrame:
    """Discoverable memorization of every sequence, with greedy decoding's exact verdicts.

    Args:
        sequences: a frame with ``example_id`` and ``input_ids`` (all of one length).
        batch_size: sequences per forward pass; None finds the largest that fits in memory
            (recorded in the result's ``attrs["batch_size"]``).
        full: one full forward pass per example instead of early exit, adding
            ``suffix_token_accuracy`` (share of suffix positions whose argmax is the true token),
            ``suffix_loss`` (mean cross-entropy over the suffix, nats) and, for each length P in
            ``prefix_lens``, ``memorized_pP`` (a P-token prefix reproduces the next ``suffix_len``).
        margin_tolerance: examples whose ``min_margin`` is below it are rechecked with ``generate``.

    Returns:
        One row per example: ``example_id``, ``memorized``, ``matched_tokens`` (leading suffix
        tokens greedy decoding reproduces), ``min_margin`` (logits), ``rechecked``, and the
        ``full`` fields.
    """
    input_ids = as_tensor(sequences)
    length = input_ids.shape[1] if len(input_ids) else 0
    if len(input_ids) and length < prefix_len + suffix_len:
        raise ValueError(
            f"Sequences have {length} tokens, fewer than prefix_len + suffix_len = {prefix_len + suffix_len}. "
            "Lower the prefix or suffix length, or use longer sequences."
        )
    prefix_lens = tuple(sorted(set(prefix_lens)))
    if prefix_lens and not full:
        raise ValueError("prefix_lens needs full=True: the curve comes from the full forward pass.")
    for p in prefix_lens:
        if p < 1 or p + suffix_len > length:
            raise ValueError(f"Prefix length {p} plus suffix_len {suffix_len} does not fit sequences of {length} tokens.")

    model.eval()

    def verdict_columns(batch_size: int) -> dict[str, torch.Tensor]:
        columns: dict[str, list[torch.Tensor]] = {}
        progress = tqdm(total=len(input_ids), desc=desc, unit="ex")
        for start in range(0, len(input_ids), batch_size):
            batch = input_ids[start : start + batch_size].to(model.device)
            if full:
                checks, fields = _full_pass(model, batch, prefix_len, suffix_len, prefix_lens)
            else:
                checks, fields = _staged_checks(model, batch, prefix_len, suffix_len, first_stage_tokens), {}
            matched = leading_matches(checks.correct)
            fields = {"matched_tokens": matched, "min_margin": decisive_min_gap(checks, matched), **fields}
            for name, value in fields.items():
                columns.setdefault(name, []).append(value.cpu())
            progress.update(len(batch))
        progress.close()
        if not columns:
            return {"matched_tokens": torch.zeros(0, dtype=torch.long), "min_margin": torch.zeros(0)}
        return {name: torch.cat(parts) for name, parts in columns.items()}

    if batch_size is None:
        values, batch_size = largest_fitting_batch(verdict_columns, starting_batch_size(model))
    else:
        values = verdict_columns(batch_size)
    matched = values.pop("matched_tokens")
    rechecked = torch.zeros(len(matched), dtype=torch.bool)
    if recheck:
        rechecked = values["min_margin"] < margin_tolerance
        if rechecked.any():
            matched = matched.clone()
            matched[rechecked] = greedy_matched_tokens(model, input_ids[rechecked], prefix_len, suffix_len, batch_size)
    frame = pd.DataFrame(
        {
            "example_id": sequences["example_id"].to_numpy(),
            "memorized": (matched == suffix_len).numpy(),
            "matched_tokens": matched.numpy().astype("int32"),
            "min_margin": values.pop("min_margin").numpy(),
            "rechecked": rechecked.numpy(),
        }
    )
    for name, value in values.items():
        frame[name] = value.numpy()
    frame.attrs["batch_size"] = batch_size
    return frame


def starting_batch_size(model: PreTrainedModel) -> int:
    """Where the search for the largest batch starts: wide on accelerators; on CPU larger batches
    buy no speed, so the search starts at a size that is already efficient there."""
    return 1024 if model.device.type != "cpu" else 64


def largest_fitting_batch(work, starting: int):
    """Run ``work(batch_size)`` with the largest batch size that fits in memory, halving from
    ``starting`` on every out-of-memory error (accelerate's search); return (result, batch size)."""
    size = starting

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    @find_executable_batch_size(starting_batch_size=starting, reduce_batch_size_fn=halve)
    def attempt(batch_size):
        return work(batch_size), batch_size

    return attempt()


def greedy_matched_tokens(model: PreTrainedModel, input_ids: torch.Tensor, prefix_len: int, suffix_len: int, batch_size: int = 64) -> torch.Tensor:
    """The slow, obvious way: decode ``suffix_len`` tokens greedily and count the leading matches."""
    generated = greedy_continuations(model, input_ids[:, : prefix_len + suffix_len], prefix_len, prefix_len + suffix_len, batch_size, desc="recheck")
    return leading_matches(generated[:, prefix_len:] == input_ids[:, prefix_len : prefix_len + suffix_len])
