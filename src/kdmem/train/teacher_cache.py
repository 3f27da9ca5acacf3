"""The teacher-logit cache: the teacher's next-token distributions over D, computed once and read
by every student, seed, epoch and temperature (the temperature is applied at training time).

A cache is a folder: ``spec.json`` (what it holds and for which teacher and data) and shards
``shard-00000.safetensors`` ... of ``shard_size`` examples each, written atomically, so a killed
build resumes at the first missing shard. Under ``accelerate launch`` each process computes every
N-th missing shard, and all wait until the cache is whole. safetensors files are memory-mapped when read: a
batch reads only its own rows. Each shard holds, for every example and position t < seq_len - 1
(the distribution over token t + 1):

- full logits (``top_k`` None): ``logits`` (n, seq_len - 1, vocab), float32; exact.
- top-k (``top_k`` = k): ``top_logits`` and ``top_ids`` (n, seq_len - 1, k), float32 and int32, and
  ``logsumexp`` (n, seq_len - 1), the log-sum-exp of all the logits at T = 1. The loss treats
  the tail as uniform (``kdmem.losses.topk_forward_kl``); exact when k = vocab.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdmem.data import as_tensor
from kdmem.io import atomic_path, process_state, write_json_atomic


@dataclass(frozen=True)
class CacheSpec:
    teacher: str
    """What identifies the teacher by content (``kdmem run``: its stage fingerprint), never by a
    path that another working directory spells differently; a cache of another teacher is refused."""
    examples: int
    seq_len: int
    vocab_size: int
    top_k: int | None
    shard_size: int
    first_ids: tuple[str, ...]
    """The first example ids of D, a cheap check that the cache belongs to this D."""

    @property
    def num_shards(self) -> int:
        return math.ceil(self.examples / self.shard_size)

    @property
    def bytes_per_token(self) -> int:
        """Bytes stored per predicted token: 4 per logit (full), or 8 per top-k entry plus 4."""
        return 4 * self.vocab_size if self.top_k is None else 8 * self.top_k + 4


def _shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


@torch.no_grad()
def _shard_tensors(teacher: PreTrainedModel, input_ids: torch.Tensor, spec: CacheSpec, batch_size: int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    device = teacher.device
    for start in range(0, len(input_ids), batch_size):
        logits = teacher(input_ids=input_ids[start : start + batch_size, :-1].to(device)).logits[..., : spec.vocab_size].float()
        if spec.top_k is None:
            values = {"logits": logits}
        else:
            top_logits, top_ids = logits.topk(spec.top_k, dim=-1)
            values = {"top_logits": top_logits, "top_ids": top_ids.to(torch.int32), "logsumexp": torch.logsumexp(logits, dim=-1)}
        for name, value in values.items():
            parts.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values).contiguous() for name, values in parts.items()}


def build_teacher_cache(
    teacher: PreTrainedModel,
    sequences: pd.DataFrame,
    root: str | Path,
    *,
    teacher_id: str,
    vocab_size: int | None = None,
    top_k: int | None = 64,
    shard_size: int = 1024,
    batch_size: int = 32,
) -> TeacherLogitCache:
    """Compute (or finish computing) the cache of ``teacher`` over ``sequences`` in ``root``.

    Args:
        teacher_id: what identifies the teacher; a folder holding a cache of another teacher,
            other data or other settings is refused rather than mixed.
        vocab_size: logits kept per position (default: all the teacher's); set it to the
            tokenizer's length when the embedding has padding rows.
        top_k: None keeps the full logits; k keeps the top k and the log-sum-exp.
    """
    root = Path(root)
    vocab = vocab_size or teacher.config.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {vocab}, or None for full logits; got {top_k}.")
    input_ids = as_tensor(sequences)
    spec = CacheSpec(
        teacher=teacher_id,
        examples=len(input_ids),
        seq_len=input_ids.shape[1],
        vocab_size=vocab,
        top_k=top_k,
        shard_size=shard_size,
        first_ids=tuple(sequences["example_id"].iloc[:8]),
    )
    spec_path = root / "spec.json"
    expected = json.loads(json.dumps(asdict(spec)))  # as JSON reads it back: tuples become lists
    state = process_state()
    with state.main_process_first():  # the main process writes the spec; the others then check it
        if spec_path.exists():
            found = json.loads(spec_path.read_text())
            if found != expected:
                differs = sorted(k for k in found if found[k] != expected.get(k))
                raise ValueError(f"{root} holds a teacher-logit cache with other {', '.join(differs)}; delete it or choose another folder.")
        else:
            write_json_atomic(spec_path, asdict(spec))
    teacher.eval()
    missing = [i for i in range(spec.num_shards) if not _shard_path(root, i).exists()]
    mine = missing[state.process_index :: state.num_processes]
    for index in tqdm(mine, desc="teacher logits", unit="shard", disable=not mine or not state.is_local_main_process):
        rows = slice(index * shard_size, min((index + 1) * shard_size, spec.examples))
        tensors = _shard_tensors(teacher, input_ids[rows], spec, batch_size)
        with atomic_path(_shard_path(root, index)) as tmp:
            save_file(tensors, str(tmp))
    state.wait_for_everyone()
    return TeacherLogitCache(root)


def complete_teacher_cache(root: str | Path, sequences: pd.DataFrame, *, teacher_id: str, top_k: int | None) -> TeacherLogitCache | None:
    """The finished cache in ``root`` if it is one of ``teacher_id`` over ``sequences`` with
    ``top_k``, else None (then ``build_teacher_cache`` finishes it, or says why it cannot),
    decided without loading the teacher."""
    spec_path = Path(root) / "spec.json"
    if not spec_path.exists():
        return None
    found = json.loads(spec_path.read_text())
    expected = {"teacher": teacher_id, "examples": len(sequences), "top_k": top_k, "first_ids": list(sequences["example_id"].iloc[:8])}
    if any(found.get(key) != value for key, value in expected.items()):
        return None
    if any(not _shard_path(Path(root), i).exists() for i in range(math.ceil(found["examples"] / found["shard_size"]))):
        return None
    return TeacherLogitCache(root)


class TeacherLogitCache:
    """Read side of a finished cache: the teacher's tensors for any rows of D."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        values = json.loads((self.root / "spec.json").read_text())
        self.spec = CacheSpec(**values | {"first_ids": tuple(values["first_ids"])})
        missing = [i for i in range(self.spec.num_shards) if not _shard_path(self.root, i).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root} is missing {len(missing)} of {self.spec.num_shards} shards; build the cache again to finish it.")
        self._files = [safe_open(str(_shard_path(self.root, i)), framework="pt") for i in range(self.spec.num_shards)]

    @property
    def names(self) -> tuple[str, ...]:
        return ("logits",) if self.spec.top_k is None else ("top_logits", "top_ids", "logsumexp")

    def rows(self, indices: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """The cached tensors of D's rows ``indices``, stacked in that order."""
        size = self.spec.shard_size
        picked: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        for index in torch.as_tensor(indices).tolist():
            if not 0 <= index < self.spec.examples:
                raise IndexError(f"row {index} is outside the cache's {self.spec.examples} examples.")
            file, row = self._files[index // size], index % size
            for name in self.names:
                picked[name].append(file.get_slice(name)[row : row + 1])
        return {name: torch.cat(values) for name, values in picked.items()}
