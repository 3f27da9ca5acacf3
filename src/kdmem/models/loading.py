"""Loading any causal LM and its tokenizer by hub name or local path, safely."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from kdmem.errors import ModelError


def _revisions(path: Path) -> list[str]:
    """A local model folder's revisions: its subfolders that hold a model (``config.json``)."""
    return sorted(child.name for child in path.iterdir() if (child / "config.json").is_file()) if path.is_dir() else []


def resolve_local(name_or_path: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(name_or_path, revision)`` as ``from_pretrained`` takes them. A hub name keeps its revision.
    A local folder's revision is its subfolder of that name (``FOLDER/step116000``, as Pythia names
    its checkpoints; kdmem's own pre-training saves its checkpoints so): that folder, and no
    revision. Raises ``ModelError`` for a folder that is no model, or that lacks the revision."""
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists()
    if not looks_local:
        return name_or_path, revision
    if not path.is_dir():
        raise ModelError(
            f"Model path {path} does not exist or is not a folder. Give a save_pretrained folder or a hub name."
        )
    found = _revisions(path)
    if revision is not None:
        if revision not in found:
            raise ModelError(
                f"{path} has no revision {revision!r}: a local model's revisions are its subfolders holding a "
                f"config.json ({', '.join(found) if found else 'it has none'}). Name one of those, or drop the "
                "revision to load the folder itself."
            )
        return str(path / revision), None
    if not (path / "config.json").exists():
        hint = f" It holds revisions {', '.join(found)}: name one with the model's revision." if found else ""
        raise ModelError(
            f"{path} is not a model folder: it has no config.json. Save a model there with "
            f"`model.save_pretrained(path)` and `tokenizer.save_pretrained(path)`, or give a hub name.{hint}"
        )
    return name_or_path, None


LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError)
"""What ``from_pretrained`` raises on a folder or config it cannot use."""


def _unusable(name_or_path: str, what: str, error: BaseException) -> ModelError:
    reason = " ".join(str(error).split()).rstrip(".")[:400]
    return ModelError(
        f"{name_or_path} could not be loaded as a {what}: {type(error).__name__}: {reason}. "
        "Give a folder written by `save_pretrained` (config.json, safetensors weights, tokenizer files) or a hub name."
    )


def load_tokenizer(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    source, revision = resolve_local(name_or_path, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as error:
        raise _unusable(name_or_path, "tokenizer", error) from None
    if tokenizer.pad_token_id is None:
        # Sequences are fixed-length, so padding only matters to batched generation; any id works.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(dtype: torch.dtype | str | None):
    """float32 by default; ``"auto"``: the dtype the checkpoint was saved in."""
    if dtype is None:
        return torch.float32
    return dtype if not isinstance(dtype, str) or dtype == "auto" else getattr(torch, dtype)


def load_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """A causal LM from safetensors weights only; no pickled checkpoint is ever loaded.

    It is placed on ``device``, by default the first GPU when there is one, else the CPU.
    """
    source, revision = resolve_local(name_or_path, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            dtype=_torch_dtype(dtype),
        )
    except LOAD_ERRORS as error:
        raise _unusable(name_or_path, "causal language model", error) from None
    return model.to(device if device is not None else default_device())


def model_vocab_size(name_or_path: str, spec=None) -> int:
    """Rows of a model's embedding matrix, from its config alone (``spec``: its revision and code setting)."""
    from transformers import AutoConfig

    source, revision = resolve_local(name_or_path, spec.revision if spec is not None else None)
    options = {"revision": revision, "trust_remote_code": spec.trust_remote_code} if spec is not None else {}
    return AutoConfig.from_pretrained(source, **options).get_text_config().vocab_size


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, student: str = "student") -> None:
    """Soft distillation compares distributions token by token, and every model reads D as the
    teacher's tokenizer cut it: the models must share a vocabulary. The message says what differs:
    tokens only one side has, or tokens with other ids; ``student`` names the other model."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    only_teacher = sorted(set(teacher_vocab) - set(student_vocab), key=teacher_vocab.get)
    only_student = sorted(set(student_vocab) - set(teacher_vocab), key=student_vocab.get)
    moved = sorted(
        (t for t in set(teacher_vocab) & set(student_vocab) if teacher_vocab[t] != student_vocab[t]),
        key=teacher_vocab.get,
    )
    differences = [f"teacher {len(teacher_vocab)} tokens, {student} {len(student_vocab)}"]
    if only_teacher:
        differences.append(
            f"{len(only_teacher)} only in the teacher's (e.g. {only_teacher[0]!r}, id "
            f"{teacher_vocab[only_teacher[0]]})"
        )
    if only_student:
        differences.append(
            f"{len(only_student)} only in the {student}'s (e.g. {only_student[0]!r}, id "
            f"{student_vocab[only_student[0]]})"
        )
    if moved:
        token = moved[0]
        differences.append(
            f"{len(moved)} with other ids (e.g. {token!r}: teacher id {teacher_vocab[token]}, {student} id "
            f"{student_vocab[token]})"
        )
    raise ModelError(
        f"Teacher and {student} vocabularies differ: {'; '.join(differences)}. kdmem needs models of one "
        "family that share a tokenizer (e.g. Pythia-12B, Pythia-1.4B and Pythia-1B)."
    )
