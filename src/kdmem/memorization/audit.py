"""``kdmem extract``: audit one model on one data source and write a Parquet table of verdicts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdmem.config import DataConfig
from kdmem.data import load_sequences
from kdmem.io import atomic_path
from kdmem.memorization.extraction import extract_memorized
from kdmem.models import load_model, load_tokenizer


@dataclass
class AuditConfig:
    model: str
    data: DataConfig
    prefix_len: int = 50
    suffix_len: int = 50
    batch_size: int = 64
    full: bool = False
    prefix_lens: list[int] = field(default_factory=list)
    margin_tolerance: float = 1e-3
    trust_remote_code: bool = False


def audit(cfg: AuditConfig, output: str | Path | None = None) -> pd.DataFrame:
    """Extraction verdicts of ``cfg.model`` on every sequence of ``cfg.data``; written to ``output`` if given.

    The Parquet file's metadata (key ``kdmem``) records the audit's settings.
    """
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    sequences = load_sequences(cfg.data, tokenizer)
    model = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    verdicts = extract_memorized(
        model,
        sequences,
        cfg.prefix_len,
        cfg.suffix_len,
        cfg.batch_size,
        full=cfg.full,
        prefix_lens=cfg.prefix_lens,
        margin_tolerance=cfg.margin_tolerance,
    )
    if output is not None:
        table = pa.Table.from_pandas(verdicts, preserve_index=False)
        metadata = {"kdmem": json.dumps(dataclasses.asdict(cfg))}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        with atomic_path(Path(output)) as tmp:
            pq.write_table(table, tmp)
    return verdicts


def one_line_summary(verdicts: pd.DataFrame) -> str:
    memorized, total = int(verdicts["memorized"].sum()), len(verdicts)
    rate = memorized / total if total else 0.0
    return f"memorized {memorized} of {total} ({rate:.2%}); {int(verdicts['rechecked'].sum())} rechecked with generate"
