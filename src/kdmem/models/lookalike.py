"""Look-alikes: a real model's architecture, config and tokenizer conventions at a tiny width and
depth, with random weights. ``kdmem run --rehearse`` runs a config on them.

A look-alike is made from ``config.json`` and the tokenizer files alone (of a hub model, a local
folder, or one of kdmem's offline fixtures in ``lookalikes/``), never from weights. It keeps
everything that decides whether code breaks at the real model's shapes: the architecture class,
the vocabulary size (embedding rows, which can exceed the tokenizer's length), tied or untied
embeddings, positional settings and special-token ids; only width and depth shrink.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from tokenizers import AddedToken, ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from kdmem.config import TinySizeConfig
from kdmem.io import atomic_dir, cache_dir, settings_hash
from kdmem.models.loading import LOAD_ERRORS, ModelError

LEARNED_TOKENS = 8192
"""Tokens a look-alike tokenizer learns from the public corpus; the rest of its length is filler."""

TEACHER_SIZE = TinySizeConfig(layers=2, hidden=64, heads=4)
STUDENT_SIZE = TinySizeConfig(layers=2, hidden=32, heads=2)
CROSS_SCALE_SIZE = TinySizeConfig(layers=1, hidden=32, heads=2)


def offline_fixture(name: str) -> Path | None:
    """kdmem's recorded ``config.json`` and tokenizer spec of ``name`` (a paper model), if it has one."""
    folder = resources.files("kdmem") / "models" / "lookalikes" / name
    return Path(str(folder)) if (folder / "config.json").is_file() else None


def offline_fixture_names() -> list[str]:
    root = Path(str(resources.files("kdmem") / "models" / "lookalikes"))
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/config.json"))


def lookalike_tokenizer(spec: dict) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the real tokenizer's length and special-token ids (``tokenizer_spec.json``).

    Learned tokens come first, then unused fillers (``<lookalike-unused-N>``, which no merge can
    produce: ``<`` is its own pre-token), with each special token at its real id.
    """
    from kdmem.data import python_docs

    if spec.get("add_bos_token"):
        raise ValueError("look-alike tokenizers that prepend a BOS are not supported yet")
    length, specials = spec["length"], spec["special_tokens"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        python_docs("public"), vocab_size=min(LEARNED_TOKENS, length - len(specials)), show_progress=False
    )
    learned = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    special_ids = set(specials.values())
    free_ids = [i for i in range(length) if i not in special_ids]
    fillers = [f"<lookalike-unused-{i}>" for i in range(len(free_ids) - len(learned))]
    vocab = dict(zip([token for token, _ in learned] + fillers, free_ids, strict=True)) | specials
    merges = [
        tuple(pair.split(" ")) if isinstance(pair, str) else tuple(pair)
        for pair in json.loads(bpe.to_str())["model"]["merges"]
    ]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    roles = {role: spec[role] for role in ("bos_token", "eos_token", "unk_token", "pad_token") if spec.get(role)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    assert len(tokenizer) == length, (len(tokenizer), length)
    return tokenizer


def materialized_fixture(name: str) -> Path:
    """A folder with the fixture's ``config.json`` and its tokenizer files, built once and cached;
    loadable with ``AutoConfig`` and ``AutoTokenizer`` like a hub model without weights."""
    fixture = offline_fixture(name)
    if fixture is None:
        raise ValueError(f"kdmem has no offline look-alike of {name}; it has {', '.join(offline_fixture_names())}.")
    files = {f: (fixture / f).read_text(encoding="utf-8") for f in ("config.json", "tokenizer_spec.json")}
    key = settings_hash([files, LEARNED_TOKENS])
    folder = cache_dir() / "lookalikes" / f"{name.replace('/', '--')}-{key}"
    if not (folder / "tokenizer.json").exists():
        with atomic_dir(folder) as tmp:
            for file, text in files.items():
                (tmp / file).write_text(text, encoding="utf-8")
            lookalike_tokenizer(json.loads(files["tokenizer_spec.json"])).save_pretrained(tmp)
    return folder


SHRUNK_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_window_layers",
)


def shrunk_sizes(config, size: TinySizeConfig) -> dict:
    """Overrides that bring ``config`` to ``size``'s width and depth, keeping its ratios
    (grouped-query heads, MLP width) and its per-layer settings' pattern."""
    real = {key: getattr(config, key) for key in SHRUNK_KEYS if getattr(config, key, None) is not None}
    sizes = {"hidden_size": size.hidden, "num_hidden_layers": size.layers, "num_attention_heads": size.heads}
    if "num_key_value_heads" in real:
        sizes["num_key_value_heads"] = max(1, size.heads * real["num_key_value_heads"] // real["num_attention_heads"])
    if "intermediate_size" in real:
        sizes["intermediate_size"] = size.hidden * real["intermediate_size"] // real["hidden_size"]
    if "head_dim" in real:
        sizes["head_dim"] = size.hidden // size.heads
    if "max_window_layers" in real:
        sizes["max_window_layers"] = size.layers
    if isinstance(getattr(config, "layer_types", None), list):
        sizes["layer_types"] = config.layer_types[: size.layers]
    return sizes


def build_lookalike(
    source: str, folder: Path, size: TinySizeConfig, *, revision=None, trust_remote_code=False, seed=0
) -> dict:
    """Write a look-alike of ``source`` (a hub name or a folder with config.json and tokenizer
    files) into ``folder``: safetensors random weights at ``size``, the real tokenizer. Returns
    what was kept and what shrank."""
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        real_config = AutoConfig.from_pretrained(source, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except LOAD_ERRORS as error:
        reason = " ".join(str(error).split()).rstrip(".")[:400]
        raise ModelError(
            f"No look-alike can be made of {source}: its config.json and tokenizer could not be read "
            f"({type(error).__name__}: {reason}). Give a folder holding them as `save_pretrained` writes them "
            "(no weights are needed), or a hub name."
        ) from None
    sizes = shrunk_sizes(real_config, size)
    config = AutoConfig.from_pretrained(source, **options, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32)
    info = {
        "source": source,
        "architecture": type(model).__name__,
        "vocab_size": config.vocab_size,
        "tokenizer_length": len(tokenizer),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "special_token_ids": {role: getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad", "unk")},
        "real_sizes": {key: getattr(real_config, key) for key in sizes if key != "layer_types"},
        "lookalike_sizes": {key: value for key, value in sizes.items() if key != "layer_types"},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "kdmem_lookalike.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info
