"""The teacher cache: what a soft student needs of the teacher's next-token distributions over D,
computed once and read by every student, seed, epoch and temperature (the temperature is
applied at training time).

A cache is a folder: ``spec.json`` (what it holds and for which teacher and data) and shards
``shard-00000.safetensors`` ... of ``shard_size`` examples each, written atomically, so a killed
build resumes at the first missing shard. Under ``accelerate launch`` process p computes the missing
shards i with i mod N = p, and all wait until the cache is whole. safetensors files are memory-mapped when read: a
batch reads only its own rows. Each shard holds, for every example and position t < seq_len - 1
(the distribution over token t + 1):

- ``hidden`` (the default): ``hidden`` (n, seq_len - 1, hidden_size), the input of the teacher's
  output layer, in the teacher's dtype; the output layer itself (its first ``vocab_size`` rows)
  is kept once, in ``head.safetensors``. A student recomputes the teacher's logits from them, so
  the target is the teacher's own at every temperature and for every loss kind, for the
  hidden size instead of the vocabulary per token (Pythia-12B: 5,120 against 50,304) and one
  matrix product per step (2 x hidden x vocab FLOPs per token, 2% of the 12B teacher's forward).
  The build checks every shard's first batch against the teacher's logits, so a model that
  transforms its logits after the output layer (soft-capping, scaling) is refused, not mis-cached.
- ``logits``: ``logits`` (n, seq_len - 1, vocab), float32; exact, 4 bytes per vocabulary entry.
- ``sampled`` (top ``top_k`` = k): ``top_logits`` and ``top_ids`` (n, seq_len - 1, k), float32 and
  int32; ``tail_ids``, ``tail_logits`` and ``tail_log_proposal`` (n, seq_len - 1, N): N tokens of
  the tail drawn with replacement from the teacher's tail softened at the highest temperature
  served (which covers the flatter distributions of every lower one), with their logits and log
  proposal probability; and ``log_partition`` (n, seq_len - 1, len(temperatures)), logsumexp(z / T)
  at each temperature the cache serves. From these, ``kdmem.losses.importance_sampled_teacher``
  gives an unbiased estimate of the teacher at each of those temperatures; exact when k = vocab.
  A student at another temperature is refused: the cache cannot serve it without bias.
  Unbiased is not exact: where most of the mass is in the tail (78% and 86% of the default
  run's teacher at T = 3 and 4), 16 samples a token cost the student validation loss (+0.05 and
  +0.17). The tail is drawn ``tail_draws`` times over (N x draws samples, one block per draw),
  and training epoch e reads draw e mod ``tail_draws``: a student that saw one draw in every epoch
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

from kdmem.config import CACHE_KINDS, PAPER_TEMPERATURES
from kdmem.data import as_tensor
from kdmem.errors import ConfigError, ModelError
from kdmem.io import atomic_path, claim_folder, process_state
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
    kind: str = "sampled"
    """What a token keeps: ``hidden``, ``logits`` or ``sampled`` (see the module docstring)."""
    hidden_size: int = 0
    hidden_dtype: str = ""
    """Of a ``hidden`` cache: the teacher's hidden size and the dtype its states are kept in."""

    @property
    def proposal_temperature(self) -> float:
        return max(self.temperatures, default=1.0)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.examples / self.shard_size)

    @property
    def bytes_per_token(self) -> int:
        hidden_bytes = getattr(torch, self.hidden_dtype).itemsize if self.hidden_dtype else 0
        return cache_bytes_per_token(
            self.kind,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            hidden_bytes=hidden_bytes,
            top_k=self.top_k or 0,
            tail_samples=self.tail_samples * self.tail_draws,
            temperatures=len(self.temperatures),
        )

    def check_serves(self, temperature: float) -> None:
        if self.kind == "sampled" and temperature not in self.temperatures:
            raise ValueError(
                f"The teacher-logit cache serves temperatures {list(self.temperatures)}, not {temperature}: a "
                "sampled cache keeps the teacher's log-partition at each temperature it serves. Build it with this "
                "temperature too."
            )


def cache_bytes_per_token(
    kind: str,
    *,
    vocab_size: int = 0,
    hidden_size: int = 0,
    hidden_bytes: int = 4,
    top_k: int = 0,
    tail_samples: int = 0,
    temperatures: int = 0,
) -> int:
    """Bytes stored per predicted token: the hidden state (``hidden``); 4 per logit (``logits``);
    or 8 per top-k entry, 12 per tail sample and 4 per temperature served (``sampled``). A
    ``hidden`` cache also keeps the output layer once (vocabulary x hidden size)."""
    if kind == "hidden":
        return hidden_size * hidden_bytes
    return 4 * vocab_size if kind == "logits" else 8 * top_k + 12 * tail_samples + 4 * temperatures


def _shard_path(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.safetensors"


HEAD_FILE = "head.safetensors"


def output_head(teacher: PreTrainedModel, vocab_size: int) -> dict[str, torch.Tensor]:
    """The teacher's output layer over the first ``vocab_size`` entries: ``weight`` (and ``bias``)."""
    layer = teacher.get_output_embeddings()
    if not isinstance(layer, torch.nn.Linear):
        raise ModelError(
            f"{type(teacher).__name__} has no linear output layer to cache hidden states for; "
            "set soft.cache_kind=logits."
        )
    head = {"weight": layer.weight.detach()[:vocab_size].contiguous()}
    if layer.bias is not None:
        head["bias"] = layer.bias.detach()[:vocab_size].contiguous()
    return head


def _hidden_and_logits(teacher: PreTrainedModel, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the teacher's output layer, and its logits."""
    captured = []
    hook = teacher.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0])
    )
    try:
        logits = teacher(input_ids=input_ids).logits
    finally:
        hook.remove()
    return captured[0], logits


def logits_from_hidden(hidden: torch.Tensor, head: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's logits from cached hidden states, as its output layer computes them."""
    return torch.nn.functional.linear(hidden.to(head["weight"].dtype), head["weight"], head.get("bias"))


def _check_head(logits: torch.Tensor, recomputed: torch.Tensor, model: str) -> None:
    """Recomputed logits must be the model's own up to rounding: two units in the last place of
    the largest logit in the model's dtype."""
    largest = logits.float().abs().max().clamp_min(1.0)
    tolerance = 2 * torch.finfo(logits.dtype).eps * largest
    gap = (recomputed.float() - logits.float()).abs().max()
    if gap > tolerance:
        raise ModelError(
            f"{model}'s logits are not its output layer applied to the last hidden state (they differ by up to "
            f"{gap.item():.3g}, rounding allows {tolerance.item():.3g}): the model transforms them further "
            "(soft-capping, scaling), which a hidden-state cache would lose. Set soft.cache_kind=logits (exact) "
            "or sampled."
        )


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
    tail_ids = torch.multinomial(
        log_proposal.reshape(-1, logits.shape[-1]).exp(), samples, replacement=True, generator=generator
    )
    tail_ids = tail_ids.reshape(*logits.shape[:-1], samples)
    return values | {
        "tail_ids": tail_ids.to(torch.int32),
        "tail_logits": logits.gather(-1, tail_ids),
        "tail_log_proposal": log_proposal.gather(-1, tail_ids),
    }


@torch.no_grad()
def _shard_tensors(
    teacher: PreTrainedModel, input_ids: torch.Tensor, spec: CacheSpec, batch_size: int, index: int, head: dict | None
) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    device = teacher.device
    generator = torch.Generator(device=device).manual_seed(index)
    for start in range(0, len(input_ids), batch_size):
        batch = input_ids[start : start + batch_size, :-1].to(device)
        if spec.kind == "hidden":
            hidden, logits = _hidden_and_logits(teacher, batch)
            if start == 0:  # every shard's first batch: the recomputed logits are the teacher's
                _check_head(logits[..., : spec.vocab_size], logits_from_hidden(hidden, head), type(teacher).__name__)
            values = {"hidden": hidden.to(getattr(torch, spec.hidden_dtype))}
        else:
            logits = teacher(input_ids=batch).logits[..., : spec.vocab_size].float()
            values = {"logits": logits} if spec.kind == "logits" else sampled_entries(logits, spec, generator)
        for name, value in values.items():
            parts.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values).contiguous() for name, values in parts.items()}


def build_teacher_cache(
    teacher: PreTrainedModel,
    sequences: pd.DataFrame,
    root: str | Path,
    *,
    teacher_id: str,
    kind: str = "hidden",
    vocab_size: int | None = None,
    top_k: int = 64,
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
        kind: ``hidden`` (exact, the hidden size per token), ``logits`` (exact, the vocabulary per
            token) or ``sampled`` (unbiased for forward KL at ``temperatures``): see the module docstring.
        vocab_size: logits kept per position (default: all the teacher's); set it to the
            shared vocabulary when the student's embedding is smaller.
        top_k, tail_samples, tail_draws, temperatures: of a ``sampled`` cache, the top k logits,
            ``tail_samples`` sampled tail tokens in each of ``tail_draws`` draws, and the
            log-partition at each of ``temperatures`` (the ones it can serve).
    """
    root = Path(root)
    if kind not in CACHE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CACHE_KINDS)}, not {kind!r}.")
    vocab = vocab_size or teacher.config.get_text_config().vocab_size
    sampled = kind == "sampled"
    if sampled and not 1 <= top_k <= vocab:
        raise ConfigError(
            f"top_k must be between 1 and the vocabulary size {vocab}; got {top_k}. Lower soft.cache_top_k, "
            "or cache every logit exactly with soft.cache_kind=logits."
        )
    if sampled and top_k < vocab and tail_samples < 1:
        raise ConfigError(
            f"A top-{top_k} cache of a {vocab}-token vocabulary needs tail_samples >= 1: without them the tail is "
            "lost and the target biased. Raise soft.cache_tail_samples."
        )
    head = output_head(teacher, vocab) if kind == "hidden" else None
    input_ids = as_tensor(sequences)
    spec = CacheSpec(
        teacher=teacher_id,
        examples=len(input_ids),
        seq_len=input_ids.shape[1],
        vocab_size=vocab,
        top_k=top_k if sampled else None,
        shard_size=shard_size,
        first_ids=tuple(sequences["example_id"].iloc[:8]),
        tail_samples=tail_samples if sampled and top_k < vocab else 0,
        tail_draws=tail_draws if sampled and top_k < vocab else 1,
        temperatures=tuple(sorted({float(t) for t in temperatures})) if sampled else (),
        kind=kind,
        hidden_size=0 if head is None else head["weight"].shape[1],
        hidden_dtype="" if head is None else str(head["weight"].dtype).removeprefix("torch."),
    )
    spec_path = root / "spec.json"
    state = process_state()
    with state.main_process_first():  # the main process writes the spec; the others then check it
        if head is not None and not spec_path.exists():  # the head first: a spec means the head is whole
            with atomic_path(root / HEAD_FILE) as tmp:
                save_file({name: value.cpu() for name, value in head.items()}, str(tmp))
        claim_folder(spec_path, asdict(spec), holds="a teacher cache", fix="delete it or choose another folder.")
    teacher.eval()
    # Shard i belongs to process i mod N whatever is on disk: a list of the missing shards, taken
    # by each process at its own moment, would differ once another process had written one.
    mine = [
        i
        for i in range(state.process_index, spec.num_shards, state.num_processes)
        if not _shard_path(root, i).exists()
    ]
    for index in tqdm(mine, desc="teacher logits", unit="shard", disable=not mine or not state.is_local_main_process):
        rows = slice(index * shard_size, min((index + 1) * shard_size, spec.examples))
        tensors = _shard_tensors(teacher, input_ids[rows], spec, batch_size, index, head)
        with atomic_path(_shard_path(root, index)) as tmp:
            save_file(tensors, str(tmp))
    state.wait_for_everyone()
    return TeacherLogitCache(root)


def complete_teacher_cache(
    root: str | Path,
    sequences: pd.DataFrame,
    *,
    teacher_id: str,
    kind: str = "hidden",
    top_k: int = 64,
    tail_samples: int = 16,
    tail_draws: int = 1,
    temperatures: tuple[float, ...] | list[float] = PAPER_TEMPERATURES,
) -> TeacherLogitCache | None:
    """The finished cache in ``root`` if it is one of ``teacher_id`` over ``sequences`` with these
    settings, else None (then ``build_teacher_cache`` finishes it, or says why it cannot), decided
    without loading the teacher."""
    spec_path = Path(root) / "spec.json"
    if not spec_path.exists():
        return None
    found = json.loads(spec_path.read_text())
    expected = {
        "teacher": teacher_id,
        "examples": len(sequences),
        "kind": kind,
        "first_ids": list(sequences["example_id"].iloc[:8]),
    }
    if kind == "sampled":
        expected["top_k"] = top_k
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
        self.spec = CacheSpec(
            **values | {"first_ids": tuple(values["first_ids"]), "temperatures": tuple(values.get("temperatures", ()))}
        )
        missing = [i for i in range(self.spec.num_shards) if not _shard_path(self.root, i).exists()]
        if missing:
            raise FileNotFoundError(
                f"{self.root} is missing {len(missing)} of {self.spec.num_shards} shards; build the cache again to "
                "finish it."
            )
        self._files = [safe_open(str(_shard_path(self.root, i)), framework="pt") for i in range(self.spec.num_shards)]
        self._heads: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def names(self) -> tuple[str, ...]:
        if self.spec.kind != "sampled":
            return (self.spec.kind,)
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

    def logits(self, cached: dict[str, torch.Tensor]) -> torch.Tensor:
        """Exact rows (from ``rows`` of a ``hidden`` or ``logits`` cache) -> the teacher's logits
        (..., vocab_size), on the rows' device."""
        if self.spec.kind == "logits":
            return cached["logits"]
        if self.spec.kind != "hidden":
            raise ValueError("A sampled cache keeps no logits; read it with teacher_at.")
        device = cached["hidden"].device
        if device not in self._heads:  # read once, moved once per device
            with safe_open(str(self.root / HEAD_FILE), framework="pt") as file:
                self._heads[device] = {name: file.get_tensor(name).to(device) for name in file.keys()}
        return logits_from_hidden(cached["hidden"], self._heads[device])

    def teacher_at(
        self, cached: dict[str, torch.Tensor], temperature: float, draw: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled rows (from ``rows``) -> (ids, log p_T, weights) at ``temperature`` from tail
        draw ``draw`` (mod ``tail_draws``), for ``kdmem.losses.sampled_forward_kl``."""
        self.spec.check_serves(temperature)
        column = self.spec.temperatures.index(temperature)
        start = (draw % self.spec.tail_draws) * self.spec.tail_samples
        block = slice(start, start + self.spec.tail_samples)
        return importance_sampled_teacher(
            cached["top_logits"],
            cached["top_ids"],
            cached["tail_logits"][..., block],
            cached["tail_ids"][..., block],
            cached["tail_log_proposal"][..., block],
            cached["log_partition"][..., column],
            temperature,
        )
