"""Pre-training the embedded tiny bases on the public part of the builtin corpus, once, cached.

They stand in for Pythia checkpoints: pretrained on public text that shares no document with the
private set D, then fine-tuned or distilled on D by the pipeline like any hub model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from transformers import set_seed

from kdmem.config import EmbeddedModelsConfig
from kdmem.data import pack_sequences, python_docs
from kdmem.io import atomic_dir, cache_dir
from kdmem.models import build_model, train_tokenizer
from kdmem.train.trainers import fine_tune

logger = logging.getLogger(__name__)
BUILTIN_MODELS = ("builtin:tiny-teacher", "builtin:tiny-student")


def embedded_bases(cfg: EmbeddedModelsConfig) -> dict[str, Path]:
    """``{"teacher": path, "student": path}`` of the pretrained tiny bases, built on first use."""
    public = python_docs("public")
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + hashlib.sha256("\x00".join(public).encode()).hexdigest()
    folder = cache_dir() / "models" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    paths = {role: folder / role for role in ("teacher", "student")}
    if all((path / "model.safetensors").exists() for path in paths.values()):
        return paths
    logger.info("Building the embedded tiny models in %s (once; later runs reuse them).", folder)
    with atomic_dir(folder) as tmp:
        tokenizer = train_tokenizer(public, cfg.vocab_size)
        import datasets

        corpus = pack_sequences(
            datasets.Dataset.from_dict({"text": public}), tokenizer, cfg.seq_len, limit=cfg.pretrain_tokens // cfg.seq_len
        )
        for role, size in (("teacher", cfg.teacher), ("student", cfg.student)):
            set_seed(cfg.seed)
            model = build_model(size, len(tokenizer), cfg.seq_len, tokenizer)
            model = fine_tune(model, corpus, cfg.pretraining, tmp / f".work-{role}", cfg.seed)
            model.save_pretrained(tmp / role)
            tokenizer.save_pretrained(tmp / role)
            (tmp / role / "kdmem_pretraining.json").write_text(
                json.dumps({"sequences": len(corpus), "seq_len": cfg.seq_len, "config": dataclasses.asdict(cfg)}, indent=2)
            )
    return paths


def resolve_model_name(name: str, cfg: EmbeddedModelsConfig) -> str:
    """A loadable name or path: ``builtin:tiny-*`` becomes the cached embedded base's folder."""
    if not name.startswith("builtin:"):
        return name
    if name not in BUILTIN_MODELS:
        raise ValueError(f"Unknown builtin model {name!r}; use {' or '.join(BUILTIN_MODELS)}.")
    return str(embedded_bases(cfg)[name.removeprefix("builtin:tiny-")])
