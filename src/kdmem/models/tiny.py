"""The embedded tiny family: a byte-level BPE tokenizer and GPT-NeoX (Pythia-architecture) bases.

Only construction lives here; pre-training the bases on the public corpus is a training stage
(``kdmem.train.pretrain``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import ByteLevelBPETokenizer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

if TYPE_CHECKING:  # annotations only: kdmem.config imports kdmem.train.teacher_cache, which imports this module
    from kdmem.config import TinySizeConfig


END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, as Pythia's tokenizer, with ``<|endoftext|>`` as id 0 (end, padding, unknown)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
    )


def build_model(size: TinySizeConfig, vocab_size: int, max_positions: int, tokenizer) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.hidden,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoXForCausalLM(config)
