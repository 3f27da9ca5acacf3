"""The teacher-logit cache: the teacher's next-token distributions over D, computed once and read
by every student, seed, epoch and temperature (the temperature is applied at training time).

A cache is a folder: ``spec.json`` (what it holds and for which teacher and data) and shards
``shard-00000.safetensors`` ... of ``shard_size`` examples each, written atomically, so a killed
build resumes at the first missing shard. Under ``accelerate launch`` process p computes the missing
shards i with i mod N = p, and all wait until the cache is whole. safetensors files are memory-mapped when read: a
batch reads only its own rows. Each shard holds, for every example and position t < seq_len - 1
(the distribution over token t + 1):

- full logits (``top_k`` None): ``logits`` (n, seq_len - 1, vocab), float32; exact.
- sampled (``top_k`` = k): ``top_logits`` and ``top_ids`` (n, seq_len - 1, k), float32 and
  int32; ``tail_ids``, ``tail_logits`` and ``tail_log_proposal`` (n, seq_len - 1, N): N tokens of
  the tail drawn with replacement from the teacher's tail softened at the highest temperature
  served (which covers the flatter distributions of every lower one), with their logits and log
  proposal probability; and ``log_partition`` (n, seq_len - 1, len(temperatures)), logsumexp(z / T)
  at each temperature the cache serves. From these, ``kdmem.losses.importance_sampled_teacher``
  gives an unbiased estimate of the teacher at each of those temperatures; exact when k = vocab.
  A student at another temperature is refused: the cache cannot serve it without bias.
  The tail is drawn ``tail_draws`` times over (N x draws samples, one block per draw), and
  training epoch e reads draw e mod ``tail_draws``: a student that saw one draw in every epoch
  would fit that draw's noise (measured on the default run at T = 2: validation loss 4.089 with
  one draw of 16 reused for 12 epochs, 3.970 with a fresh draw each epoch, 3.972 from full logits).

Samples are drawn from a generator seeded by the shard's index, so a cache is the same however it
is built (resumed, or split across processes).
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

from kdmem.config import PAPER_TEMPERATURES
from kdmem.data import as_tensor
from kdmem.io import atomic_path, process_state, write_json_atomic
from kdmem.losses import importance_sampled_teacher


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
    tail_samples: int = 0
    """N, tail tokens sampled per position (with ``top_k`` below the vocabulary)."""
    temperatures: tuple[float, ...] = ()
    """The temperatures a sampled cache serves (it keeps the log-partition at each)."""
    tail_draws: int = 1
    """Independent draws of the ``tail_samples``; training epoch e reads draw e mod ``tail_draws``."""

    @property
    def proposal_temperature(self) -> float:
        return max(self.temperatures, default=1.0)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.examples / self.shard_size)

    @property
    def bytes_per_token(self) -> int:
        return cache_bytes_per_token(self.vocab_size, self.top_k, self.tail_samples * self.tail_draws, len(self.temperatures))

    def check_serves(self, temperature: float) -> None:
        if self.top_k is not None and temperature not in self.temperatures:
            raise ValueError(
                f"The teacher-logit cache serves temperatures {list(self.temperatures)}, not {temperature}: a sampled cache "
                "keeps the teacher's log-partition at each temperature it serves. Build it with this temperature too."
            )


def cache_bytes_per_token(vocab_size: int, top_k: int | None, tail_samples: int, temperatures: int) -> int:
    """Bytes stored per predicted token: 4 per logit (full); or 8 per top-k entry, 12 per tail
    sample and 4 per temperature served (sampled)."""
    return 4 * vocab_size if top_k is None else 8 * top_k + 12 * tail_samples + 4 * temperatures


def _shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


def sampled_entries(logits: torch.Tensor, spec: CacheSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """(..., vocab) float32 teacher logits -> the sampled cache's tensors (see the module docstring)."""
    top_logits, top_ids = logits.topk(spec.top_k, dim=-1)
    values = {
        "top_logits": top_logits,
        "top_ids": top_ids.to(torch.int32),
        "log_partition": torch.stack([torch.logsumexp(logits / t, dim=-1) for t in spec.temperatures], dim=-1),
    }
    samples = spec.tail_samples * spec.tail_draws if spec.top_k < spec.vocab_size else 0
    if not samples:  # k = vocabulary: no tail
        empty = logits.new_zeros((*logits.shape[:-1], 0))
        return values | {"tail_ids": empty.to(torch.int32), "tail_logits": empty, "tail_log_proposal": empty}
    log_proposal = torch.log_softmax(logits.scatter(-1, top_ids, -torch.inf) / spec.proposal_temperature, dim=-1)
    tail_ids = torch.multinomial(log_proposal.reshape(-1, logits.shape[-1]).exp(), samples, replacement=True, generator=generator)
    tail_ids = tail_ids.reshape(*logits.shape[:-1], samples)
    return values | {
        "tail_ids": tail_ids.to(torch.int32),
        "tail_logits": logits.gather(-1, tail_ids),
        "tail_log_proposal": log_proposal.gather(-1, tail_ids),
    }


@torch.no_grad()
def _shard_tensors(teacher: PreTrainedModel, input_ids: torch.Tensor, spec: CacheSpec, batch_size: int, index: int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    device = teacher.device
    generator = torch.Generator(device=device).manual_seed(index)
    for start in range(0, len(input_ids), batch_size):
        logits = teacher(input_ids=input_ids[start : start + batch_size, :-1].to(device)).logits[..., : spec.vocab_size].float()
        values = {"logits": logits} if spec.top_k is None else sampled_entries(logits, spec, generator)
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
    tail_samples: int = 16,
    tail_draws: int = 1,
    temperatures: tuple[float, ...] | list[float] = PAPER_TEMPERATURES,
    shard_size: int = 1024,
    batch_size: int = 32,
) -> TeacherLogitCache:
    """Compute (or finish computing) the cache of ``teacher`` over ``sequences`` in ``root``.

    Args:
        teacher_id: what identifies the teacher; a folder holding a cache of another teacher,
            other data or other settings is refused rather than mixed.
        vocab_size: logits kept per position (default: all the teacher's); set it to the
            tokenizer's length when the embedding has padding rows.
        top_k: None keeps the full logits; k keeps the top k, ``tail_samples`` sampled tail
            tokens in each of ``tail_draws`` draws, and the log-partition at each of
            ``temperatures`` (the ones it can serve).
    """
    root = Path(root)
    vocab = vocab_size or teacher.config.vocab_size
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {vocab}, or None for full logits; got {top_k}.")
    if top_k is not None and top_k < vocab and tail_samples < 1:
        raise ValueError(f"A top-{top_k} cache of a {vocab}-token vocabulary needs tail_samples >= 1: without them the tail is lost and the target biased.")
    sampled = top_k is not None
    input_ids = as_tensor(sequences)
    spec = CacheSpec(
        teacher=teacher_id,
        examples=len(input_ids),
        seq_len=input_ids.shape[1],
        vocab_size=vocab,
        top_k=top_k,
        shard_size=shard_size,
        first_ids=tuple(sequences["example_id"].iloc[:8]),
        tail_samples=tail_samples if sampled and top_k < vocab else 0,
        tail_draws=tail_draws if sampled and top_k < vocab else 1,
        temperatures=tuple(sorted({float(t) for t in temperatures})) if sampled else (),
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
    # Shard i belongs to process i mod N whatever is on disk: a list of the missing shards, taken
    # by each process at its own moment, would differ once another process had written one.
    mine = [i for i in range(state.process_index, spec.num_shards, state.num_processes) if not _shard_path(root, i).exists()]
    for index in tqdm(mine, desc="teacher logits", unit="shard", disable=not mine or not state.is_local_main_process):
        rows = slice(index * shard_size, min((index + 1) * shard_size, spec.examples))
        tensors = _shard_tensors(teacher, input_ids[rows], spec, batch_size, index)
        with atomic_path(_shard_path(root, index)) as tmp:
            save_file(tensors, str(tmp))
    state.wait_for_everyone()
    return TeacherLogitCache(root)


def complete_teacher_cache(
    root: str | Path, sequences: pd.DataFrame, *, teacher_id: str, top_k: int | None, tail_samples: int = 16, tail_draws: int = 1,
    temperatures: tuple[float, ...] | list[float] = PAPER_TEMPERATURES,
) -> TeacherLogitCache | None:
    """The finished cache in ``root`` if it is one of ``teacher_id`` over ``sequences`` with these
    settings, else None (then ``build_teacher_cache`` finishes it, or says why it cannot), decided
    without loading the teacher."""
    spec_path = Path(root) / "spec.json"
    if not spec_path.exists():
        return None
    found = json.loads(spec_path.read_text())
    expected = {"teacher": teacher_id, "examples": len(sequences), "top_k": top_k, "first_ids": list(sequences["example_id"].iloc[:8])}
    if top_k is not None:
        expected["temperatures"] = sorted({float(t) for t in temperatures})
        if top_k < found.get("vocab_size", 0):
            expected |= {"tail_samples": tail_samples, "tail_draws": tail_draws}
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
        self.spec = CacheSpec(**values | {"first_ids": tuple(values["first_ids"]), "temperatures": tuple(values.get("temperatures", ()))})
        missing = [i for i in range(self.spec.num_shards) if not _shard_path(self.root, i).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root} is missing {len(missing)} of {self.spec.num_shards} shards; build the cache again to finish it.")
        self._files = [safe_open(str(_shard_path(self.root, i)), framework="pt") for i in range(self.spec.num_shards)]

    @property
    def names(self) -> tuple[str, ...]:
        if self.spec.top_k is None:
            return ("logits",)
        return ("top_logits", "top_ids", "tail_logits", "tail_ids", "tail_log_proposal", "log_partition")

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

    def teacher_at(self, cached: dict[str, torch.Tensor], temperature: float, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled rows (from ``rows``) -> (ids, log p_T, weights) at ``temperature`` from tail
        draw ``draw`` (mod ``tail_draws``), for ``kdmem.losses.sampled_forward_kl``."""
        self.spec.check_serves(temperature)
        column = self.spec.temperatures.index(temperature)
        start = (draw % self.spec.tail_draws) * self.spec.tail_samples
        block = slice(start, start + self.spec.tail_samples)
        return importance_sampled_teacher(
            cached["top_logits"], cached["top_ids"], cached["tail_logits"][..., block], cached["tail_ids"][..., block],
            cached["tail_log_proposal"][..., block], cached["log_partition"][..., column], temperature,
        )
