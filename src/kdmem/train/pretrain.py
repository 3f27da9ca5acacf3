"""Pre-training the embedded tiny bases on the public part of the builtin corpus, once, cached.

They stand in for Pythia checkpoints: pretrained on public text that shares no document with the
private set D, then fine-tuned or distilled on D by the pipeline like any hub model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
from transformers import PreTrainedTokenizerFast, set_seed

from kdmem.config import PILOT_REVISIONS
from kdmem.data import pack_sequences, python_docs
from kdmem.errors import ModelError
from kdmem.io import atomic_dir, cache_dir, settings_hash
from kdmem.models import build_model, load_model, train_tokenizer
from kdmem.train.trainers import fine_tune

if TYPE_CHECKING:  # annotations only: kdmem.config imports kdmem.train.teacher_cache, which imports this module
    from kdmem.config import EmbeddedModelsConfig

logger = logging.getLogger(__name__)
BUILTIN_MODELS = ("builtin:tiny-teacher", "builtin:tiny-student", "builtin:tiny-small")
ROLES = ("teacher", "student")
"""The bases every embedded run needs; ``small`` is built only when asked for (``cross_scale``)."""


def _key(*parts) -> str:
    return settings_hash(parts)


def _embedded_tokenizer(cfg: EmbeddedModelsConfig, public: list[str]) -> tuple[Path, str]:
    key = _key(cfg.vocab_size, hashlib.sha256("\x00".join(public).encode()).hexdigest())
    folder = cache_dir() / "models" / f"tiny-tokenizer-{key}"
    if not (folder / "tokenizer.json").exists():
        with atomic_dir(folder) as tmp:
            train_tokenizer(public, cfg.vocab_size).save_pretrained(tmp)
    return folder, key


def embedded_bases(cfg: EmbeddedModelsConfig, roles: tuple[str, ...] = ROLES) -> dict[str, Path]:
    """``{role: path}`` of the pretrained tiny bases of ``roles`` (``teacher``, ``student``,
    ``small``), each built on first use.

    Each base is cached under a key of everything that shapes it (tokenizer, size, pre-training),
    so changing the student's size rebuilds the student alone.
    """
    public = python_docs("public")
    tokenizer_path, tokenizer_key = _embedded_tokenizer(cfg, public)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_path)
    corpus = None
    paths = {}
    for role in roles:
        size = getattr(cfg, role)
        recipe = (
            tokenizer_key,
            dataclasses.asdict(size),
            cfg.seq_len,
            cfg.pretrain_tokens,
            dataclasses.asdict(cfg.pretraining),
            cfg.seed,
        )
        folder = cache_dir() / "models" / f"tiny-{role}-{_key(*recipe)}"
        paths[role] = folder
        if (folder / "model.safetensors").exists():
            continue
        logger.info("Pre-training the embedded %s base into %s (once; later runs reuse it).", role, folder)
        if corpus is None:
            corpus = pack_sequences(
                datasets.Dataset.from_dict({"text": public}),
                tokenizer,
                cfg.seq_len,
                limit=cfg.pretrain_tokens // cfg.seq_len,
            )
        with atomic_dir(folder) as tmp:
            set_seed(cfg.seed)
            model = build_model(size, len(tokenizer), cfg.seq_len, tokenizer)
            model = fine_tune(model, corpus, cfg.pretraining, tmp / ".work", cfg.seed)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "kdmem_pretraining.json").write_text(
                json.dumps({"role": role, "sequences": len(corpus), "config": dataclasses.asdict(cfg)}, indent=2)
            )
            shutil.rmtree(tmp / ".work", ignore_errors=True)
    return paths


def pilot_checkpoints(cfg: EmbeddedModelsConfig, role: str, chunk: dict) -> Path:
    """A folder of the embedded ``role`` base's checkpoints at steps k and k + 1, as Pythia's are
    laid out (``FOLDER/k``, ``FOLDER/k+1``), built on first use.

    k is the base as its pre-training left it. Pre-training then goes on, as Pythia's went on from
    step 115,000 to 116,000: one pass over the next chunk of the stream, ``chunk`` (a data section
    whose ``sequence_range`` is the run's D; every sequence, duplicates included, as pre-training
    reads a stream), at ``cfg.pilot_training``'s constant learning rate, the late pre-training
    rate; that is k + 1. The pilot's student starts from the small base at k; its teacher and
    baseline are bases at k + 1, which saw D once, in pre-training."""
    from kdmem.config import DataConfig  # a function-local import: kdmem.config imports this package
    from kdmem.data import prepare_sequences

    base = embedded_bases(cfg, (role,))[role]
    recipe = (base.name, chunk, dataclasses.asdict(cfg.pilot_training), cfg.seed)
    folder = cache_dir() / "models" / f"tiny-{role}-pilot-{_key(*recipe)}"
    if (folder / "k+1" / "model.safetensors").exists():
        return folder
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
    data = DataConfig(**chunk, num_examples=None, validation_examples=0, dedupe=False)
    stream = prepare_sequences(data, tokenizer).train
    logger.info("Pre-training the embedded %s base on, from step k through %d sequences (once).", role, len(stream))
    with atomic_dir(folder) as tmp:
        shutil.copytree(base, tmp / "k")
        set_seed(cfg.seed)
        model = fine_tune(load_model(str(base), device="cpu"), stream, cfg.pilot_training, tmp / ".work", cfg.seed)
        model.save_pretrained(tmp / "k+1")
        tokenizer.save_pretrained(tmp / "k+1")
        info = {"role": role, "from": "k", "sequences": len(stream), "chunk": chunk}
        (tmp / "k+1" / "kdmem_pretraining.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(tmp / ".work", ignore_errors=True)
    return folder


def resolve_model_name(
    name: str, cfg: EmbeddedModelsConfig, revision: str | None = None, chunk: dict | None = None
) -> str:
    """A loadable name or path: ``builtin:tiny-*`` becomes the cached embedded base's folder, or at
    a pilot revision (``k``, ``k+1``) the folder of its checkpoints over ``chunk``."""
    if not name.startswith("builtin:"):
        return name
    if name not in BUILTIN_MODELS:
        raise ModelError(
            f"Unknown builtin model {name!r}; use {' or '.join(BUILTIN_MODELS)}, a hub name or a "
            "save_pretrained folder."
        )
    role = name.removeprefix("builtin:tiny-")
    if revision in PILOT_REVISIONS:
        return str(pilot_checkpoints(cfg, role, chunk))
    return str(embedded_bases(cfg, (role,))[role])
