"""``kdmem extract``: audit one model on one data source and write a Parquet table of verdicts."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from accelerate import PartialState
from transformers import PreTrainedModel

from kdmem.config import INFERENCE_DTYPES, DataConfig, ExtractionConfig, Section
from kdmem.data import count_sequences, read_sequence_rows, sequence_file
from kdmem.io import atomic_path, claim_folder, process_state, write_parquet_atomic
from kdmem.memorization.approximate import add_approximate, approximate_memorization, sample_positions
from kdmem.memorization.extraction import extract_memorized
from kdmem.models import load_model, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class AuditConfig(Section):
    """``kdmem extract``: one model, one data source, the extraction settings, and sharding."""

    section = "audit"

    model: str
    data: DataConfig
    extraction: ExtractionConfig = field(
        default_factory=lambda: ExtractionConfig(
            prefix_len=50, suffix_len=50, batch_size=None, full=False, prefix_lens=[], approximate_sample=0
        )
    )
    shard_size: int = 10_000
    """Examples per output shard: the unit of resumption and of work per process."""
    trust_remote_code: bool = False
    dtype: str = "float32"
    """The dtype the model is loaded and audited in (``bfloat16`` as the paper configs' ``inference_dtype``);
    near ties are rechecked in that dtype's own noise."""

    def check(self) -> None:
        if self.dtype not in INFERENCE_DTYPES:
            self.fail("dtype", f"must be one of {', '.join(INFERENCE_DTYPES)}; got {self.dtype!r}.")
        if self.shard_size < 1:
            self.fail("shard_size", f"must be at least 1, got {self.shard_size}.")
        self.extraction.check_fits(self.data.seq_len, "the sequence length (--seq-len)")


def measure_memorization(
    model: PreTrainedModel, rows: pd.DataFrame, ext: ExtractionConfig, approximate_positions=(), desc: str = "extract"
) -> pd.DataFrame:
    """Exact verdicts of every row (``extract_memorized`` with ``ext``'s settings), plus the
    approximate measures of the rows at ``approximate_positions`` and of the rows ``ext`` lists by id.
    The batch size used is in the result's ``attrs["batch_size"]``."""
    verdicts = extract_memorized(
        model,
        rows,
        ext.prefix_len,
        ext.suffix_len,
        ext.batch_size,
        full=ext.full,
        prefix_lens=ext.prefix_lens,
        first_stage_tokens=ext.first_stage_tokens,
        margin_tolerance=ext.margin_tolerance,
        desc=desc,
    )
    listed = np.flatnonzero(rows["example_id"].isin(set(ext.approximate_ids)).to_numpy())
    positions = np.union1d(np.asarray(approximate_positions, dtype=np.int64), listed)
    if ext.approximate_sample or ext.approximate_ids:
        measures = approximate_memorization(
            model, rows.iloc[positions], ext.prefix_len, ext.suffix_len, verdicts.attrs["batch_size"]
        )
        verdicts = add_approximate(verdicts, positions, measures)
    return verdicts


def audit(cfg: AuditConfig, output: str | Path | None = None) -> pd.DataFrame:
    """Extraction verdicts of ``cfg.model`` on every sequence of ``cfg.data``; written to ``output`` if given.

    With an output, sequences are audited in shards of ``cfg.shard_size``, each written
    atomically under ``OUTPUT.shards/`` as it finishes, so a rerun after a crash resumes at the
    first missing shard. Under ``accelerate launch`` each process takes every N-th shard; the main
    process merges them, in order, into ``output`` (whose Parquet metadata, key ``kdmem``, records
    the settings) and removes the shards.
    """
    state = process_state()
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    with state.main_process_first():  # one process tokenizes a text source into the cache
        source = sequence_file(cfg.data, tokenizer)
    total = count_sequences(source, cfg.data.num_examples)
    model = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype, device=state.device)
    ext = cfg.extraction
    sampled = sample_positions(total, ext.approximate_sample, ext.seed)

    def verdicts_of(start: int, stop: int, desc: str) -> pd.DataFrame:
        nonlocal ext
        in_shard = sampled[(sampled >= start) & (sampled < stop)] - start
        verdicts = measure_memorization(model, read_sequence_rows(source, start, stop), ext, in_shard, desc)
        # The batch size that fits is found once and kept for later shards.
        ext = dataclasses.replace(ext, batch_size=verdicts.attrs["batch_size"])
        return verdicts

    if output is None:
        verdicts = verdicts_of(0, total, "extract")
        _warn_about_missing_ids(verdicts, set(ext.approximate_ids))
        return verdicts
    output = Path(output)
    shards = output.with_name(output.name + ".shards")
    settings = dataclasses.asdict(cfg) | {"examples": total}
    settings["extraction"].pop("batch_size")  # it changes no verdict, so a resumed run may change it
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
        verdicts = pd.concat(
            [pd.read_parquet(shards / f"shard-{i:05d}.parquet") for i in range(count)], ignore_index=True
        )
        table = pa.Table.from_pandas(verdicts, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), "kdmem": json.dumps(settings)})
        with atomic_path(output) as tmp:
            pq.write_table(table, tmp)
        shutil.rmtree(shards)
    state.wait_for_everyone()
    verdicts = pd.read_parquet(output)
    _warn_about_missing_ids(verdicts, set(ext.approximate_ids))
    return verdicts


def _warn_about_missing_ids(verdicts: pd.DataFrame, listed: set[str]) -> None:
    missing = listed - set(verdicts["example_id"])
    if missing:
        logger.warning(
            "%d of the %d example ids listed for the approximate check are not in the data, e.g. %s",
            len(missing),
            len(listed),
            sorted(missing)[0],
        )


def _claim_shard_folder(shards: Path, settings: dict, state: PartialState) -> None:
    """Resume only shards written with the same settings; refuse to mix verdicts of two audits."""
    if state.is_main_process:
        claim_folder(
            shards / "settings.json",
            settings,
            holds="shards of an unfinished audit",
            fix="rerun with the same settings to resume it, or delete that folder to start over.",
        )
    state.wait_for_everyone()


def one_line_summary(verdicts: pd.DataFrame) -> str:
    memorized, total = int(verdicts["memorized"].sum()), len(verdicts)
    rate = memorized / total if total else 0.0
    return f"memorized {memorized} of {total} ({rate:.2%}); {int(verdicts['rechecked'].sum())} rechecked with generate"
