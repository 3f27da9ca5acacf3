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
matched suffix position, and the first mismatched one). An example is decided again by real
greedy ``generate`` when, at any decisive position, the gap is below ``margin_tolerance`` or below
``RECHECK_ULPS`` units in the last place of the top logit in the logits' own dtype. The noise
scales with that unit: bfloat16 logits between 16 and 32 move in steps of 0.125, and prefill and
decode logits differ by up to two such steps, so a fixed tolerance that suits float32 misses most
of bfloat16's near ties. The prefix-length curve's ``memorized_pP`` verdicts are rechecked alike.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate.utils import find_executable_batch_size
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdmem.data import DataError, as_tensor
from kdmem.models.decoding import greedy_continuations

RECHECK_ULPS = 4
"""Near-tie threshold in units in the last place of the top logit: two steps of prefill/decode
noise on either of the two top logits."""


def logit_spacing(top: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The gap between ``top`` (float32 values of ``dtype`` logits) and the next number ``dtype`` represents."""
    exponent = torch.floor(torch.log2(top.abs().clamp_min(torch.finfo(dtype).tiny)))
    return torch.exp2(exponent) * torch.finfo(dtype).eps


@dataclass
class TokenChecks:
    """Per suffix position: whether the argmax is the true token, the top-1 minus top-2 logit gap,
    and whether that gap is a near tie that float noise could flip."""

    correct: torch.Tensor  # (batch, n) bool
    gap: torch.Tensor  # (batch, n) float32
    near_tie: torch.Tensor  # (batch, n) bool

    @classmethod
    def of(cls, logits: torch.Tensor, targets: torch.Tensor, margin_tolerance: float) -> TokenChecks:
        top = logits.topk(2, dim=-1)  # in the logits' dtype: exact, and no float32 copy of every logit
        values = top.values.float()
        gap = values[..., 0] - values[..., 1]
        tolerance = torch.clamp(RECHECK_ULPS * logit_spacing(values[..., 0], logits.dtype), min=margin_tolerance)
        return cls(top.indices[..., 0] == targets, gap, gap < tolerance)

    def __getitem__(self, index) -> TokenChecks:
        return TokenChecks(self.correct[index], self.gap[index], self.near_tie[index])


def leading_matches(correct: torch.Tensor) -> torch.Tensor:
    """(batch, n) bool -> (batch,) how many positions match before the first mismatch."""
    return correct.long().cumprod(dim=1).sum(dim=1)


def decisive(checks: TokenChecks, matched: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the matched positions plus the first mismatched one (if any): the smallest gap, and
    whether any of them is a near tie."""
    positions = torch.arange(checks.gap.shape[1], device=checks.gap.device)
    deciding = positions[None, :] <= matched[:, None]
    return torch.where(deciding, checks.gap, torch.inf).min(dim=1).values, (deciding & checks.near_tie).any(dim=1)


@torch.no_grad()
def _staged_checks(
    model: PreTrainedModel,
    batch: torch.Tensor,
    prefix_len: int,
    suffix_len: int,
    first_stage_tokens: int,
    margin_tolerance: float,
) -> TokenChecks:
    """Checks of every suffix position an example reaches before its first mismatch.

    Positions after an example's first mismatch are left unchecked (False), which changes neither
    its matched count nor its decisive gap.
    """
    first = min(first_stage_tokens, suffix_len)
    output = model(input_ids=batch[:, : prefix_len + first - 1], use_cache=first < suffix_len)
    stage_one = TokenChecks.of(
        output.logits[:, prefix_len - 1 :], batch[:, prefix_len : prefix_len + first], margin_tolerance
    )
    size = (batch.shape[0], suffix_len)
    correct = torch.zeros(size, dtype=torch.bool, device=batch.device)
    gap = torch.full(size, torch.inf, device=batch.device)
    near_tie = torch.zeros(size, dtype=torch.bool, device=batch.device)
    correct[:, :first], gap[:, :first], near_tie[:, :first] = stage_one.correct, stage_one.gap, stage_one.near_tie
    alive = stage_one.correct.all(dim=1).nonzero().squeeze(1)
    if first < suffix_len and len(alive):
        # transformers renamed past_key_values to cache (5.x); accept either spelling.
        cache = output.cache if "cache" in output else output.past_key_values
        cache.batch_select_indices(alive)
        cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        rest = model(
            input_ids=batch[alive, prefix_len + first - 1 : prefix_len + suffix_len - 1], **{cache_argument: cache}
        )
        stage_two = TokenChecks.of(
            rest.logits, batch[alive, prefix_len + first : prefix_len + suffix_len], margin_tolerance
        )
        correct[alive, first:], gap[alive, first:], near_tie[alive, first:] = (
            stage_two.correct,
            stage_two.gap,
            stage_two.near_tie,
        )
    return TokenChecks(correct, gap, near_tie)


@torch.no_grad()
def _full_pass(
    model: PreTrainedModel,
    batch: torch.Tensor,
    prefix_len: int,
    suffix_len: int,
    prefix_lens: tuple[int, ...],
    margin_tolerance: float,
) -> tuple[TokenChecks, dict]:
    """One forward pass over whole sequences: the suffix checks, plus the ``--full`` fields (for
    each prefix length P, ``matched_pP`` and ``near_tie_pP``, which become ``memorized_pP``)."""
    logits = model(input_ids=batch[:, :-1]).logits  # position t predicts token t + 1
    targets = batch[:, 1:]
    all_checks = TokenChecks.of(logits, targets, margin_tolerance)
    span = slice(prefix_len - 1, prefix_len + suffix_len - 1)
    suffix_nll = F.cross_entropy(logits[:, span].float().transpose(1, 2), targets[:, span], reduction="none")
    fields = {
        "suffix_token_accuracy": all_checks.correct[:, span].float().mean(dim=1),
        "suffix_loss": suffix_nll.mean(dim=1),
    }
    for length in prefix_lens:
        window = all_checks[:, length - 1 : length + suffix_len - 1]
        fields[f"matched_p{length}"] = leading_matches(window.correct)
        fields[f"near_tie_p{length}"] = decisive(window, fields[f"matched_p{length}"])[1]
    return all_checks[:, span], fields


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
        margin_tolerance: examples with a decisive gap below it, or below ``RECHECK_ULPS`` units in
            the last place of the top logit, are rechecked with ``generate``.

    Returns:
        One row per example: ``example_id``, ``memorized``, ``matched_tokens`` (leading suffix
        tokens greedy decoding reproduces), ``min_margin`` (logits), ``rechecked``, and the
        ``full`` fields. ``attrs`` records ``batch_size``, ``rechecked_examples`` (all prefix
        lengths) and ``recheck_seconds``.
    """
    input_ids = as_tensor(sequences)
    length = input_ids.shape[1] if len(input_ids) else 0
    if len(input_ids) and length < prefix_len + suffix_len:
        raise DataError(
            f"Sequences have {length} tokens, fewer than prefix_len + suffix_len = {prefix_len + suffix_len}. "
            "Lower the prefix or suffix length (--prefix-len, --suffix-len), or audit longer sequences."
        )
    prefix_lens = tuple(sorted(set(prefix_lens)))
    if prefix_lens and not full:
        raise ValueError("prefix_lens needs full=True: the curve comes from the full forward pass.")
    for p in prefix_lens:
        if p < 1 or p + suffix_len > length:
            raise DataError(
                f"Prefix length {p} plus suffix_len {suffix_len} does not fit sequences of {length} tokens; "
                "drop it from --prefix-lens, or audit longer sequences."
            )

    model.eval()

    def verdict_columns(batch_size: int) -> dict[str, torch.Tensor]:
        columns: dict[str, list[torch.Tensor]] = {}
        progress = tqdm(total=len(input_ids), desc=desc, unit="ex")
        for start in range(0, len(input_ids), batch_size):
            batch = input_ids[start : start + batch_size].to(model.device)
            if full:
                checks, fields = _full_pass(model, batch, prefix_len, suffix_len, prefix_lens, margin_tolerance)
            else:
                checks, fields = (
                    _staged_checks(model, batch, prefix_len, suffix_len, first_stage_tokens, margin_tolerance),
                    {},
                )
            matched = leading_matches(checks.correct)
            min_margin, near_tie = decisive(checks, matched)
            fields = {"matched_tokens": matched, "min_margin": min_margin, "near_tie": near_tie, **fields}
            for name, value in fields.items():
                columns.setdefault(name, []).append(value.cpu())
            progress.update(len(batch))
        progress.close()
        if not columns:
            return {"matched_tokens": torch.zeros(0, dtype=torch.long), "min_margin": torch.zeros(0)}
        return {name: torch.cat(parts) for name, parts in columns.items()}

    if batch_size is None:
        values, batch_size = largest_fitting_batch(verdict_columns, starting_batch_size(model, length))
    else:
        values = verdict_columns(batch_size)
    started, rechecked_examples = time.perf_counter(), 0

    def decide(matched: torch.Tensor, near_tie: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal rechecked_examples
        rechecked = near_tie if recheck else torch.zeros_like(near_tie)
        if rechecked.any():
            matched = matched.clone()
            matched[rechecked] = greedy_matched_tokens(model, input_ids[rechecked], prefix, suffix_len, batch_size)
            rechecked_examples += int(rechecked.sum())
        return matched, rechecked

    matched, rechecked = decide(values.pop("matched_tokens"), values.pop("near_tie"), prefix_len)
    for length in prefix_lens:
        values[f"memorized_p{length}"] = (
            decide(values.pop(f"matched_p{length}"), values.pop(f"near_tie_p{length}"), length)[0] == suffix_len
        )
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
    frame.attrs.update(
        batch_size=batch_size, rechecked_examples=rechecked_examples, recheck_seconds=time.perf_counter() - started
    )
    return frame


CPU_LOGIT_BYTES = 1 << 30
"""On CPU, the starting batch keeps one batch's float32 logits under this (1 GiB): running out of
host memory kills the process instead of raising an error the search could catch."""


def starting_batch_size(model: PreTrainedModel, length: int) -> int:
    """Where the search for the largest batch starts: wide on accelerators; on CPU larger batches
    buy no speed, so the search starts at a size that is already efficient there (64), smaller
    where a batch's logits over a large vocabulary would not fit (16 at Pythia's 50,688 x 256
    tokens, 4 at Qwen3's 151,936)."""
    if model.device.type != "cpu":
        return 1024
    per_sequence = max(1, length * model.config.get_text_config().vocab_size * 4)
    fitting = max(1, CPU_LOGIT_BYTES // per_sequence)
    return min(64, 1 << (fitting.bit_length() - 1))


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


def greedy_matched_tokens(
    model: PreTrainedModel, input_ids: torch.Tensor, prefix_len: int, suffix_len: int, batch_size: int = 64
) -> torch.Tensor:
    """The slow, obvious way: decode ``suffix_len`` tokens greedily and count the leading matches."""
    generated = greedy_continuations(
        model, input_ids[:, : prefix_len + suffix_len], prefix_len, prefix_len + suffix_len, batch_size, desc="recheck"
    )
    return leading_matches(generated[:, prefix_len:] == input_ids[:, prefix_len : prefix_len + suffix_len])
