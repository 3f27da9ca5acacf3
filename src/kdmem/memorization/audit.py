"""``kdmem extract``: audit one model on one data source and write a Parquet table of verdicts."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from accelerate import PartialState

from kdmem.config import DataConfig
from kdmem.data import count_sequences, read_sequence_rows, sequence_file
from kdmem.io import atomic_path, write_json_atomic, write_parquet_atomic
from kdmem.memorization.extraction import extract_memorized
from kdmem.models import load_model, load_tokenizer


@dataclass
class AuditConfig:
    model: str
    data: DataConfig
    prefix_len: int = 50
    suffix_len: int = 50
    batch_size: int | None = None
    """Sequences per forward pass; None: the largest that fits in memory."""
    full: bool = False
    prefix_lens: list[int] = field(default_factory=list)
    margin_tolerance: float = 1e-3
    trust_remote_code: bool = False
    shard_size: int = 10_000
    """Examples per output shard: the unit of resumption and of work per process."""


def audit(cfg: AuditConfig, output: str | Path | None = None) -> pd.DataFrame:
    """Extraction verdicts of ``cfg.model`` on every sequence of ``cfg.data``; written to ``output`` if given.

    With an output, sequences are audited in shards of ``cfg.shard_size``, each written
    atomically under ``OUTPUT.shards/`` as it finishes, so a rerun after a crash resumes at the
    first missing shard. Under ``accelerate launch`` each process takes every N-th shard; the main
    process merges them, in order, into ``output`` (whose Parquet metadata, key ``kdmem``, records
    the settings) and removes the shards.
    """
    state = PartialState()
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    with state.main_process_first():  # one process tokenizes a text source into the cache
        source = sequence_file(cfg.data, tokenizer)
    total = count_sequences(source, cfg.data.num_examples)
    model = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, device=state.device)
    batch_size = cfg.batch_size

    def verdicts_of(start: int, stop: int, desc: str) -> pd.DataFrame:
        nonlocal batch_size
        verdicts = extract_memorized(
            model,
            read_sequence_rows(source, start, stop),
            cfg.prefix_len,
            cfg.suffix_len,
            batch_size,
            full=cfg.full,
            prefix_lens=cfg.prefix_lens,
            margin_tolerance=cfg.margin_tolerance,
            desc=desc,
        )
        batch_size = verdicts.attrs["batch_size"]  # found once, kept for later shards
        return verdicts

    if output is None:
        return verdicts_of(0, total, "extract")
    output = Path(output)
    shards = output.with_name(output.name + ".shards")
    settings = dataclasses.asdict(cfg) | {"examples": total}
    settings.pop("batch_size")  # the batch size changes no verdict, so a resumed run may change it
    _claim_shard_folder(shards, settings, state)
    count = max(1, math.ceil(total / cfg.shard_size))
    for index in range(state.process_index, count, state.num_processes):
        path = shards / f"shard-{index:05d}.parquet"
        if not path.exists():
            start = index * cfg.shard_size
            verdicts = verdicts_of(start, min(start + cfg.shard_size, total), f"extract shard {index + 1}/{count}")
            write_parquet_atomic(path, verdicts)
    state.wait_for_everyone()
    if state.is_main_process:
        verdicts = pd.concat([pd.read_parquet(shards / f"shard-{i:05d}.parquet") for i in range(count)], ignore_index=True)
        table = pa.Table.from_pandas(verdicts, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), "kdmem": json.dumps(settings)})
        with atomic_path(output) as tmp:
            pq.write_table(table, tmp)
        shutil.rmtree(shards)
    state.wait_for_everyone()
    return pd.read_parquet(output)


def _claim_shard_folder(shards: Path, settings: dict, state: PartialState) -> None:
    """Resume only shards written with the same settings; refuse to mix verdicts of two audits."""
    marker = shards / "settings.json"
    if state.is_main_process:
        if marker.exists():
            previous = json.loads(marker.read_text())
            if previous != json.loads(json.dumps(settings)):
                changed = sorted(k for k in settings if previous.get(k) != settings[k])
                raise ValueError(
                    f"{shards} holds shards of an unfinished audit with other settings ({', '.join(changed)}). "
                    "Rerun with the same settings to resume it, or delete that folder to start over."
                )
        else:
            shards.mkdir(parents=True, exist_ok=True)
            write_json_atomic(marker, settings)
    state.wait_for_everyone()


def one_line_summary(verdicts: pd.DataFrame) -> str:
    memorized, total = int(verdicts["memorized"].sum()), len(verdicts)
    rate = memorized / total if total else 0.0
    return f"memorized {memorized} of {total} ({rate:.2%}); {int(verdicts['rechecked'].sum())} rechecked with generate"
