"""From documents to D: split by document, tokenize, pack into fixed-length sequences (or cut one
per document), name each one, cache.

The held-out split is made on documents, before packing, by a hash of each document's text: no
document feeds both D and validation, so membership inference scores real non-members and
validation loss does not favour the models that memorize.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdmem.data.sources import READ_ERRORS, DataError, load_documents, source_fingerprint, unreadable_data
from kdmem.io import atomic_dir, atomic_path, cache_dir, write_parquet_atomic

if TYPE_CHECKING:  # annotations only: kdmem.config imports kdmem.train.teacher_cache, which imports this module
    from kdmem.config import DataConfig

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 1000
"""Documents per ``datasets.map`` batch; packing drops each batch's last partial sequence."""

ROW_GROUP_SIZE = 10_000
"""Sequences per Parquet row group: the unit a reader of a large sequence file loads at a time."""


@dataclass
class SequenceSplits:
    """D and its held-out validation split, each a frame of ``example_id`` and ``input_ids``."""

    train: pd.DataFrame
    validation: pd.DataFrame


def example_id(input_ids) -> str:
    """A stable name for a sequence, derived from its tokens alone (16 hex digits of SHA-256)."""
    return hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def document_id(text: str) -> str:
    """A stable name for a document's example (``packing: documents``), from its text alone: the
    same under every tokenizer (16 hex digits of SHA-256)."""
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def held_out(text: str, share: float, seed: int) -> bool:
    """Whether a document goes to validation: a hash of the seed and its text below ``share``."""
    return int(hashlib.sha256(f"{seed}\x00{text}".encode()).hexdigest()[:8], 16) < share * 0x100000000


def zlib_entropy(text: str) -> int:
    """Bytes of the UTF-8 text after ``zlib.compress`` (default level): the paper's "zlib entropy",
    low for repetitive, predictable text."""
    return len(zlib.compress(text.encode("utf-8")))


def tokenizer_fingerprint(tokenizer) -> str:
    if tokenizer is None:  # a tokenized source (packing: tokens) read without one
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}|eos={tokenizer.eos_token_id}".encode()).hexdigest()[:16]


@dataclass
class PackingStats:
    """What packing read and what it could not use: the numbers an error about short texts needs."""

    documents: int = 0
    tokens: int = 0
    """Tokens read, end-of-text separators included."""
    dropped_tokens: int = 0
    """Tokens at the end of a batch of documents that did not fill a whole sequence."""
    short_documents: int = 0
    """Documents shorter than a sequence (``packing: documents``), dropped."""

    def describe(self, seq_len: int) -> str:
        short = (
            f"; {self.short_documents:,} documents were shorter than {seq_len} tokens and were dropped"
            if self.short_documents
            else ""
        )
        return (
            f"read {self.documents:,} documents ({self.tokens:,} tokens with separators); "
            f"{self.dropped_tokens:,} tokens did not fill a sequence of {seq_len} tokens and were dropped{short}"
        )


def _packer(tokenizer, seq_len: int, stats: PackingStats):
    eos = tokenizer.eos_token_id

    def pack(batch):
        encoded = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        for ids in encoded:
            stream.extend(ids)
            if eos is not None:
                stream.append(eos)
        usable = len(stream) - len(stream) % seq_len
        stats.documents += len(encoded)
        stats.tokens += len(stream)
        stats.dropped_tokens += len(stream) - usable
        return {"input_ids": [stream[i : i + seq_len] for i in range(0, usable, seq_len)]}

    return pack


def _cutter(tokenizer, seq_len: int, stats: PackingStats):
    """One example per document: its first ``seq_len`` tokens, as the tokenizer starts a text."""

    def cut(batch):
        encoded = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
        kept = [(text, ids[:seq_len]) for text, ids in zip(batch["text"], encoded, strict=True) if len(ids) >= seq_len]
        stats.documents += len(encoded)
        stats.tokens += sum(map(len, encoded))
        stats.dropped_tokens += sum(len(ids) - seq_len for ids in encoded if len(ids) >= seq_len)
        stats.short_documents += len(encoded) - len(kept)
        return {"example_id": [document_id(text) for text, _ in kept], "input_ids": [ids for _, ids in kept]}

    return cut


def iter_packed(
    documents,
    tokenizer,
    seq_len: int,
    dedupe: bool = True,
    stats: PackingStats | None = None,
    source: str = "the source",
    packing: str = "concatenate",
) -> Iterator[tuple[str, np.ndarray]]:
    """(example_id, int32 tokens) of each sequence, in order: tokenized in batches
    (``datasets.map``), then concatenated with end-of-text between documents and cut into
    ``seq_len`` (``packing`` ``concatenate``), or cut to each document's first ``seq_len``
    (``documents``). ``stats`` (if given) counts what was read and dropped."""
    if isinstance(documents, datasets.Dataset):
        documents = documents.to_iterable_dataset()
    make = _cutter if packing == "documents" else _packer
    packed = documents.map(
        make(tokenizer, seq_len, stats or PackingStats()),
        batched=True,
        batch_size=TOKENIZE_BATCH,
        remove_columns=["text"],
    )
    seen = set()
    rows = iter(packed)
    while True:
        try:  # a streamed file is parsed here, as it is read
            row = next(rows)
        except StopIteration:
            return
        except READ_ERRORS as error:
            raise unreadable_data(source, error) from None
        name = row["example_id"] if packing == "documents" else example_id(row["input_ids"])
        if dedupe and name in seen:
            continue
        seen.add(name)
        yield name, np.asarray(row["input_ids"], dtype=np.int32)


def pack_sequences(
    documents,
    tokenizer,
    seq_len: int,
    limit: int | None = None,
    dedupe: bool = True,
    stats: PackingStats | None = None,
    source: str = "the source",
    packing: str = "concatenate",
) -> pd.DataFrame:
    """The first ``limit`` sequences (``iter_packed``) as a frame of ``example_id`` and
    ``input_ids``; a streamed hub dataset is read only as far as needed."""
    rows = list(itertools.islice(iter_packed(documents, tokenizer, seq_len, dedupe, stats, source, packing), limit))
    return pd.DataFrame({"example_id": [name for name, _ in rows], "input_ids": [ids for _, ids in rows]})


def stream_sequences(cfg: DataConfig, tokenizer) -> Path:
    """All of ``cfg.source``'s packed sequences (at most ``cfg.num_examples``), in source order, in a
    cached Parquet file written one row group at a time: memory stays bounded by a row group (and
    the set of seen ids, for ``dedupe``) whatever the size of the source. For audits, which need
    no held-out split."""
    path = (
        cache_dir()
        / "data"
        / f"{_cache_key(dataclasses.replace(cfg, validation_examples=0), tokenizer)}-stream.parquet"
    )
    if path.exists():
        return path
    stats = PackingStats()
    packed = itertools.islice(
        iter_packed(load_documents(cfg), tokenizer, cfg.seq_len, cfg.dedupe, stats, cfg.source, cfg.packing),
        cfg.num_examples,
    )
    schema = pa.schema([("example_id", pa.string()), ("input_ids", pa.list_(pa.int32()))])
    written = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        while chunk := list(itertools.islice(packed, ROW_GROUP_SIZE)):
            names, rows = zip(*chunk, strict=True)
            writer.write_table(pa.table({"example_id": list(names), "input_ids": list(rows)}, schema=schema))
            written += len(chunk)
        if not written:
            raise DataError(
                f"{cfg.source} yields no sequence of {cfg.seq_len} tokens: {stats.describe(cfg.seq_len)}. "
                "Use more or longer texts, or lower the sequence length."
            )
    if stats.dropped_tokens:
        logger.info("%s: %d sequences; %s", cfg.source, written, stats.describe(cfg.seq_len))
    return path


def _cache_key(cfg: DataConfig, tokenizer) -> str:
    key = dataclasses.asdict(cfg) | {"source": source_fingerprint(cfg), "tokenizer": tokenizer_fingerprint(tokenizer)}
    key.pop("streaming")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _cache_folder(cfg: DataConfig, tokenizer) -> Path:
    return cache_dir() / "data" / _cache_key(cfg, tokenizer)


HELD_OUT_SHARE_OF_ALL = 0.1
"""The share of documents held out when D keeps every sequence (``num_examples`` None)."""


def prepare_sequences(cfg: DataConfig, tokenizer) -> SequenceSplits:
    """D and validation for a data config and tokenizer; cached on disk by source, tokenizer and shape.

    With ``cfg.sequence_range``, D is that slice of the source's stream (``_slice_of_stream``).
    Else documents are held out by ``held_out`` in the share validation needs of D and validation
    together; each side is packed on its own, D in the source's order, and validation sequences
    whose tokens also occur in D are dropped."""
    folder = _cache_folder(cfg, tokenizer)
    if (folder / "train.parquet").exists():
        return SequenceSplits(read_sequences(folder / "train.parquet"), read_sequences(folder / "validation.parquet"))
    splits = _slice_of_stream(cfg, tokenizer) if cfg.sequence_range else _split_by_document(cfg, tokenizer)
    with atomic_dir(folder) as tmp:
        write_sequences(tmp / "train.parquet", splits.train)
        write_sequences(tmp / "validation.parquet", splits.validation)
    return splits


def _slice_of_stream(cfg: DataConfig, tokenizer) -> SequenceSplits:
    """D as the sequences ``cfg.sequence_range`` of the source's stream, named by position
    (``seq-117760000``), and validation as the ``validation_examples`` right after it, less any
    that repeat a sequence of D: a pre-training slice and what comes after it."""
    from kdmem.data.streams import stream_length, stream_rows

    start, end = cfg.sequence_range
    needed = end + 2 * cfg.validation_examples  # a few more, in case some repeat a sequence of D
    known = stream_length(cfg)
    rows = stream_rows(cfg, tokenizer, start, needed)
    available = known if known is not None else start + len(rows)
    if available < end + cfg.validation_examples:
        raise DataError(
            f"data.sequence_range = [{start}, {end}] is outside {cfg.source}: its stream holds {available:,} "
            f"sequences of {cfg.seq_len} tokens, and the range with data.validation_examples = "
            f"{cfg.validation_examples} after it needs {end + cfg.validation_examples:,}. Give a range inside the "
            "stream (and room for the validation sequences after it)."
        )
    names = [f"seq-{position}" for position in range(start, start + len(rows))]
    frame = pd.DataFrame({"example_id": names, "input_ids": rows})
    tokens = frame["input_ids"].map(example_id)  # what a repeat is: the same tokens
    in_range = frame.index < end - start
    train, after = frame[in_range], frame[~in_range]
    if cfg.dedupe:
        train = train[~tokens[in_range].duplicated()]
    in_train = set(tokens[train.index])
    validation = after[~tokens[~in_range].isin(in_train)].iloc[: cfg.validation_examples]
    if len(validation) < cfg.validation_examples:
        raise DataError(
            f"{cfg.source}: only {len(validation)} of the sequences after data.sequence_range differ from every "
            f"sequence of D, but data.validation_examples = {cfg.validation_examples} are needed. Lower it."
        )
    return SequenceSplits(train.reset_index(drop=True), validation.reset_index(drop=True))


def _split_by_document(cfg: DataConfig, tokenizer) -> SequenceSplits:
    """D and validation from documents held out by ``held_out``: see ``prepare_sequences``."""
    total = None if cfg.num_examples is None else cfg.num_examples + cfg.validation_examples
    share = cfg.validation_examples / total if total else HELD_OUT_SHARE_OF_ALL if cfg.validation_examples else 0.0
    documents = load_documents(cfg)
    if isinstance(documents, datasets.Dataset):  # filtered lazily, with nothing written to the datasets cache
        documents = documents.to_iterable_dataset()

    def side(validation: bool, limit: int | None, stats: PackingStats) -> pd.DataFrame:
        chosen = documents.filter(
            lambda batch: [held_out(text, share, cfg.seed) == validation for text in batch["text"]], batched=True
        )
        return pack_sequences(
            chosen,
            tokenizer,
            cfg.seq_len,
            limit=limit,
            dedupe=cfg.dedupe,
            stats=stats,
            source=cfg.source,
            packing=cfg.packing,
        )

    stats = PackingStats()
    train = side(False, cfg.num_examples, stats)
    if len(train) == 0:
        raise DataError(
            f"{cfg.source} yields no sequence of {cfg.seq_len} tokens: {stats.describe(cfg.seq_len)}. "
            "Use more or longer texts, or lower data.seq_len."
        )
    if stats.dropped_tokens or stats.short_documents:
        logger.info("%s: %d sequences in D; %s", cfg.source, len(train), stats.describe(cfg.seq_len))
    if cfg.num_examples is not None and len(train) < cfg.num_examples:
        raise DataError(
            f"{cfg.source} yields only {len(train)} distinct sequences of {cfg.seq_len} tokens for D from the "
            f"documents not held out for validation, but data.num_examples={cfg.num_examples} are needed. Lower "
            "data.num_examples, or use a larger source."
        )
    validation = pd.DataFrame({"example_id": [], "input_ids": []})
    if cfg.validation_examples:
        # a few more than asked for, in case some repeat a sequence of D and are dropped
        validation = side(True, cfg.validation_examples * 2, PackingStats())
        validation = validation[~validation["example_id"].isin(set(train["example_id"]))].iloc[
            : cfg.validation_examples
        ]
        if len(validation) < cfg.validation_examples:
            raise DataError(
                f"{cfg.source} yields only {len(validation)} validation sequences of {cfg.seq_len} tokens from the "
                f"{share:.1%} of its documents held out (by document, so that none feeds both D and validation), but "
                f"data.validation_examples={cfg.validation_examples} are needed. Lower data.validation_examples, "
                "or use a larger source."
            )
    return SequenceSplits(train.reset_index(drop=True), validation.reset_index(drop=True))


def sequence_file(cfg: DataConfig, tokenizer) -> Path:
    """A Parquet file of sequences to audit: ``cfg.source`` itself when it is a Parquet file with an
    ``input_ids`` column (such as a run's ``data/train.parquet``), else the source's sequences
    packed into the cache by ``stream_sequences``."""
    path = Path(cfg.source).expanduser()
    if path.suffix == ".parquet" and path.is_file():
        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as error:
            raise unreadable_data(cfg.source, error) from None
        if "input_ids" in metadata.schema.to_arrow_schema().names:
            if not metadata.num_rows:
                raise DataError(
                    f"{path} holds no sequences (its input_ids column has no rows); give a file with some."
                )
            return path
    return stream_sequences(cfg, tokenizer)


def count_sequences(path: Path, limit: int | None = None) -> int:
    rows = pq.ParquetFile(path).metadata.num_rows
    return rows if limit is None else min(rows, limit)


def read_sequence_rows(path: Path, start: int, stop: int) -> pd.DataFrame:
    """Rows ``start`` to ``stop`` of a sequence file, reading only the row groups that hold them, so
    a file of any size is audited with bounded memory. A file without ``example_id`` gets ids
    derived from the tokens."""
    file = pq.ParquetFile(path)
    first_row, groups, offset = 0, [], None
    for index in range(file.num_row_groups):
        rows = file.metadata.row_group(index).num_rows
        if first_row < stop and first_row + rows > start:
            groups.append(index)
            offset = first_row if offset is None else offset
        first_row += rows
    columns = [c for c in ("example_id", "input_ids") if c in file.schema_arrow.names]
    if not groups:
        return pd.DataFrame({"example_id": [], "input_ids": []})
    frame = file.read_row_groups(groups, columns=columns).slice(start - offset, stop - start).to_pandas()
    try:
        frame["input_ids"] = [np.asarray(ids, dtype=np.int32) for ids in frame["input_ids"]]
    except (TypeError, ValueError) as error:  # strings, nested lists, nulls
        raise DataError(
            f"{path}: input_ids must hold one list of integer token ids per row ({error}). Write the token ids "
            "as lists of integers, or give the text instead and let kdmem tokenize it."
        ) from None
    if "example_id" not in frame.columns:
        frame["example_id"] = [example_id(ids) for ids in frame["input_ids"]]
    if frame["input_ids"].map(len).nunique() > 1:
        raise DataError(
            f"{path}: the input_ids rows differ in length; every sequence must have the same number of tokens."
        )
    return frame[["example_id", "input_ids"]].reset_index(drop=True)


def load_sequences(cfg: DataConfig, tokenizer) -> pd.DataFrame:
    """Every sequence to audit (at most ``cfg.num_examples``), in memory; see ``sequence_file``."""
    path = sequence_file(cfg, tokenizer)
    return read_sequence_rows(path, 0, count_sequences(path, cfg.num_examples))


def write_sequences(path: Path, frame: pd.DataFrame) -> None:
    write_parquet_atomic(path, frame[["example_id", "input_ids"]], row_group_size=ROW_GROUP_SIZE)


def read_sequences(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame["input_ids"] = [np.asarray(ids, dtype=np.int32) for ids in frame["input_ids"]]
    return frame


def as_tensor(frame: pd.DataFrame) -> torch.Tensor:
    """(num_examples, seq_len) int64 token ids."""
    return torch.from_numpy(np.stack(frame["input_ids"].to_numpy()).astype(np.int64))


def as_training_dataset(frame: pd.DataFrame) -> datasets.Dataset:
    """A ``datasets.Dataset`` of ``input_ids`` that ``transformers.Trainer`` can batch."""
    dataset = datasets.Dataset.from_dict({"input_ids": [ids.tolist() for ids in frame["input_ids"]]})
    return dataset.with_format("torch")
