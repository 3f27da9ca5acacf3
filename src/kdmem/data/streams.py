"""Pre-training streams: sources already tokenized into training sequences, in training order.

A pre-training pilot reads a slice of the very stream a model was pre-trained on, by sequence
position: Pythia's pre-shuffled deduplicated Pile is a Megatron ``MMapIndexedDataset`` (a
``document.bin`` of token ids and its ``document.idx``), sequence ``i`` of which was the
``i mod 1024``-th sequence of the batch of step ``i // 1024``. ``read_token_stream`` reads any
range of it through a memory map, without reading what comes before. Parquet or JSON-lines files
with an ``input_ids`` column are streams too (``datasets`` reads them, skipping to the range).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kdmem.data.sources import DataError

MMAP_MAGIC = b"MMIDIDX\x00\x00"
"""The first bytes of a Megatron / GPT-NeoX ``.idx`` file (version 1)."""
MMAP_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}


def mmap_prefix(source: str) -> Path | None:
    """The path prefix of a ``.bin``/``.idx`` pair named by ``source`` (the prefix, or either file), if one exists."""
    path = Path(source).expanduser()
    prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
    return prefix if prefix.with_suffix(".idx").is_file() and prefix.with_suffix(".bin").is_file() else None


class MMapStream:
    """The sequences of a Megatron ``MMapIndexedDataset`` (format version 1): ``len``, and
    ``rows(start, stop, seq_len)``, each sequence's first ``seq_len`` tokens."""

    def __init__(self, prefix: Path):
        index = prefix.with_suffix(".idx")
        with index.open("rb") as handle:
            header = handle.read(9 + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[:9] != MMAP_MAGIC:
            raise DataError(
                f"{index} is not a Megatron MMapIndexedDataset index (it does not start with {MMAP_MAGIC!r}). "
                "Point data.source at the prefix of a .bin/.idx pair written by Megatron or GPT-NeoX's preprocessing."
            )
        (version,) = struct.unpack("<Q", header[9:17])
        code = header[17]
        if version != 1 or code not in MMAP_DTYPES:
            raise DataError(f"{index}: index version {version} with dtype code {code} is not supported (version 1).")
        self.dtype = np.dtype(MMAP_DTYPES[code])
        (self.count,) = struct.unpack("<Q", header[18:26])
        buffer = np.memmap(index, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(buffer, dtype=np.int32, count=self.count, offset=34)
        self.pointers = np.frombuffer(buffer, dtype=np.int64, count=self.count, offset=34 + self.sizes.nbytes)
        self.tokens = np.memmap(prefix.with_suffix(".bin"), mode="r", dtype=self.dtype)
        self.source = str(prefix)

    def __len__(self) -> int:
        return self.count

    def rows(self, start: int, stop: int, seq_len: int) -> list[np.ndarray]:
        short = np.flatnonzero(self.sizes[start:stop] < seq_len)
        if len(short):
            position = start + int(short[0])
            raise DataError(
                f"{self.source}: sequence {position} holds {int(self.sizes[position])} tokens, fewer than "
                f"data.seq_len = {seq_len}. Lower data.seq_len."
            )
        offsets = self.pointers[start:stop] // self.dtype.itemsize
        return [np.asarray(self.tokens[o : o + seq_len], dtype=np.int32) for o in offsets]


def write_mmap_stream(prefix: Path, sequences) -> None:
    """Write ``sequences`` (lists of token ids) as a ``.bin``/``.idx`` pair in uint16, as Pythia's
    Pile is stored: what the tests and a small local stream use."""
    arrays = [np.asarray(ids, dtype=np.uint16) for ids in sequences]
    sizes = np.array([len(a) for a in arrays], dtype=np.int32)
    pointers = np.zeros(len(arrays), dtype=np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * 2, out=pointers[1:])
    prefix.with_suffix(".bin").write_bytes(b"".join(a.tobytes() for a in arrays))
    with prefix.with_suffix(".idx").open("wb") as handle:
        handle.write(MMAP_MAGIC + struct.pack("<Q", 1) + struct.pack("<B", 8))
        handle.write(struct.pack("<Q", len(arrays)) + struct.pack("<Q", len(arrays) + 1))
        handle.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(arrays) + 1, dtype=np.int64).tobytes())


def _token_records(cfg, start: int, stop: int):
    """Records ``start`` to ``stop`` of a tokenized source that is no ``.bin``/``.idx`` pair: Parquet or JSON lines
    (a file or folder) or a hub dataset, with an ``input_ids`` column."""
    import itertools

    import datasets

    from kdmem.data.sources import READ_ERRORS, _local_files, is_local, unreadable_data

    try:
        if is_local(cfg.source):
            builder, files = _local_files(Path(cfg.source).expanduser())
            records = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        else:
            records = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split, streaming=True)
        columns = records.column_names
        if columns is not None and "input_ids" not in columns:
            raise DataError(
                f"{cfg.source} has no input_ids column (its columns are {columns}); data.packing=tokens reads "
                "token ids from one. Use data.packing=concatenate for text."
            )
        yield from (row["input_ids"] for row in itertools.islice(records, start, stop))
    except READ_ERRORS as error:
        raise unreadable_data(cfg.source, error) from None


def stream_rows(cfg, tokenizer, start: int, stop: int) -> list[np.ndarray]:
    """Sequences ``start`` to ``stop - 1`` of ``cfg.source``'s stream, in order, ``cfg.seq_len``
    tokens each; fewer where the stream ends first. A tokenized source (``packing: tokens``) gives
    each record's first ``seq_len`` tokens; text is packed or cut as ``cfg.packing`` says, from the
    source's first document, every sequence counted (no dedupe)."""
    import itertools

    from kdmem.data.sequences import iter_packed
    from kdmem.data.sources import load_documents

    if cfg.packing == "tokens":
        prefix = mmap_prefix(cfg.source)
        if prefix is not None:
            stream = MMapStream(prefix)
            return stream.rows(min(start, len(stream)), min(stop, len(stream)), cfg.seq_len)
        rows = []
        for position, ids in enumerate(_token_records(cfg, start, stop), start):
            if len(ids) < cfg.seq_len:
                raise DataError(
                    f"{cfg.source}: sequence {position} holds {len(ids)} tokens, fewer than data.seq_len = "
                    f"{cfg.seq_len}. Lower data.seq_len."
                )
            rows.append(np.asarray(ids[: cfg.seq_len], dtype=np.int32))
        return rows
    packed = iter_packed(load_documents(cfg), tokenizer, cfg.seq_len, False, None, cfg.source, cfg.packing)
    return [ids for _, ids in itertools.islice(packed, start, stop)]


def stream_length(cfg) -> int | None:
    """Sequences in a ``.bin``/``.idx`` stream, read from its index alone; None for other sources."""
    prefix = mmap_prefix(cfg.source) if cfg.packing == "tokens" else None
    return None if prefix is None else len(MMapStream(prefix))
