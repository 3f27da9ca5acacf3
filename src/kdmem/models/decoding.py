"""Greedy decoding: the one model operation that hard distillation (the teacher's continuation of
every training prefix) and memorization (the slow, obvious verdict) share.

Every decode is plain greedy, whatever the checkpoint's ``generation_config.json`` says.
``generate`` fills each setting of the config it is given that still has its default value from the
model's own generation config, so an instruct checkpoint's ``do_sample: true``,
``repetition_penalty: 1.05`` or ``eos_token_id`` would otherwise change the path silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel


def greedy_config(new_tokens: int, pad_token_id: int | None, suppressed: list[int] | None = None) -> GenerationConfig:
    """Greedy decoding of exactly ``new_tokens`` tokens, never emitting the ``suppressed`` ids.

    ``eos_token_id`` is cleared so that decoding neither stops at end-of-text nor suppresses it;
    ``min_new_tokens`` would suppress it and so change the greedy path.
    """
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=pad_token_id if pad_token_id is not None else 0,
        bos_token_id=None,
        suppress_tokens=suppressed or None,
    )


@contextlib.contextmanager
def plain_generation_defaults(model: PreTrainedModel) -> Iterator[None]:
    """Give ``model`` library-default generation settings while decoding, so that nothing from its
    checkpoint's generation config (sampling, penalties, end-of-text) reaches ``generate``."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=None)
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def greedy_continuations(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    prefix_len: int,
    total_len: int,
    batch_size: int = 64,
    desc: str = "generate",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """(N, total_len) ids: each row's first ``prefix_len`` tokens, then the model's greedy continuation.

    Batched with the KV cache; every prefix has the same length, so nothing is padded. With
    ``vocab_size``, the argmax is taken over the first ``vocab_size`` ids only: a teacher whose
    embedding matrix has more rows than its student's (Pythia-12B 50,688, Pythia-1.4B 50,304)
    must not write ids the student has no embedding for into the hard-KD data.
    """
    model.eval()
    rows = model.config.get_text_config().vocab_size
    suppressed = list(range(vocab_size, rows)) if vocab_size is not None and vocab_size < rows else None
    config = greedy_config(total_len - prefix_len, model.config.pad_token_id, suppressed)
    device = model.device
    outputs = []
    with plain_generation_defaults(model):
        for start in tqdm(range(0, input_ids.shape[0], batch_size), desc=desc, unit="batch"):
            prefix = input_ids[start : start + batch_size, :prefix_len].to(device)
            generated = model.generate(prefix, attention_mask=torch.ones_like(prefix), generation_config=config)
            outputs.append(generated.cpu())
    return torch.cat(outputs) if outputs else input_ids.new_zeros((0, total_len))
