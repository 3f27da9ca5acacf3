"""Where text comes from: the builtin corpus, local files, a folder written by ``save_to_disk``,
or a Hugging Face dataset."""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import pandas as pd
import pyarrow as pa

from kdmem.data.builtin import python_docs
from kdmem.errors import DataError
from kdmem.io import write_parquet_atomic

if TYPE_CHECKING:  # annotations only: kdmem.config imports kdmem.train.teacher_cache, which imports this module
    from kdmem.config import DataConfig

BUILTIN_SOURCES = {"builtin:python-docs": "private", "builtin:python-docs-public": "public"}
logger = logging.getLogger(__name__)
_LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _check_utf8(path: Path) -> None:
    """Text and JSON lines must be UTF-8; say where the first bad byte is, instead of letting the
    loader fail later without naming the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                position = offset + error.start
                raise DataError(
                    f"{path} is not UTF-8: byte 0x{chunk[error.start]:02x} at offset {position} cannot be decoded. "
                    f"Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name}`) or remove the bad bytes."
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not UTF-8: it ends inside a multi-byte character. Convert the file to UTF-8."
        ) from None


SAVED_DATASET_FILES = ("state.json", "dataset_info.json")
"""What ``datasets.Dataset.save_to_disk`` writes beside its Arrow files."""
SAVED_DATASET_DICT_FILE = "dataset_dict.json"
"""What ``datasets.DatasetDict.save_to_disk`` writes beside one folder per split."""


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``save_to_disk``, of a ``Dataset`` or a ``DatasetDict``."""
    return path.is_dir() and (
        (path / SAVED_DATASET_DICT_FILE).is_file() or all((path / name).is_file() for name in SAVED_DATASET_FILES)
    )


def _saved_dataset(path: Path, split: str) -> datasets.Dataset:
    """The dataset ``save_to_disk`` wrote to ``path`` (``load_from_disk``); of a ``DatasetDict``, its ``split``."""
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, *READ_ERRORS) as error:
        raise unreadable_data(str(path), error) from None
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(
                f"{path} is a DatasetDict with splits {', '.join(saved)}, not {split!r}. "
                "Set data.split to one of them."
            )
        saved = saved[split]
    return saved


def _found(path: Path, shown: int = 8) -> str:
    """What a folder holds, for an error message: its first few entries and how many there are."""
    entries = sorted(str(p.relative_to(path)) + ("/" if p.is_dir() else "") for p in path.rglob("*"))
    if not entries:
        return "nothing (it is empty)"
    more = f", ... ({len(entries)} entries)" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def _local_files(path: Path) -> tuple[str, list[str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_FORMATS and p.is_file())
        if not files:
            raise DataError(
                f"{path} is neither a dataset saved with save_to_disk (it has no {SAVED_DATASET_DICT_FILE}, nor "
                f"{' and '.join(SAVED_DATASET_FILES)}) nor a folder of .txt, .jsonl or .parquet files; it holds "
                f"{_found(path)}. Point data.source at one of those."
            )
    else:
        files = [path]
    unreadable = [p for p in files if not os.access(p, os.R_OK)]
    if unreadable:
        raise DataError(f"{unreadable[0]} cannot be read (permission denied). Check the file's permissions.")
    empty = [p for p in files if p.stat().st_size == 0]
    files = [p for p in files if p.stat().st_size > 0]
    if not files:
        raise DataError(f"{path} is empty: there is no text to train on or audit. Check data.source.")
    if empty:
        logger.warning("skipping %d empty file(s) under %s, e.g. %s", len(empty), path, empty[0])
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise DataError(f"{path} mixes file types {sorted(suffixes)}; put one kind of file in a folder.")
    suffix = suffixes.pop()
    if suffix not in _LOCAL_FORMATS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .txt, .jsonl or .parquet.")
    if _LOCAL_FORMATS[suffix] != "parquet":
        for file in files:
            _check_utf8(file)
    return _LOCAL_FORMATS[suffix], [str(p) for p in files]


def unreadable_data(source: str, error: BaseException) -> DataError:
    """A loader's failure deep inside ``datasets`` or ``pyarrow``, as an error naming the source
    and the innermost cause."""
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    reason = f"{type(cause).__name__}: {str(cause).rstrip('.')}" if str(cause) else type(cause).__name__
    return DataError(
        f"Cannot read {source}: {reason}. Check that every file is valid for its type "
        "(.txt: UTF-8 text; .jsonl: one JSON object per line; .parquet: a Parquet file)."
    )


READ_ERRORS = (
    datasets.exceptions.DatasetGenerationError,
    pa.ArrowException,
    json.JSONDecodeError,
    StopIteration,
    UnicodeDecodeError,
)
"""What ``datasets`` raises on a file it cannot parse."""


def is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def load_documents(cfg: DataConfig) -> datasets.IterableDataset | datasets.Dataset:
    """Documents with one column, ``text``, in the source's own order."""
    if cfg.source.startswith("builtin:"):
        if cfg.source not in BUILTIN_SOURCES:
            raise DataError(f"Unknown builtin corpus {cfg.source!r}; use one of {', '.join(BUILTIN_SOURCES)}.")
        return datasets.Dataset.from_dict({"text": python_docs(BUILTIN_SOURCES[cfg.source])})
    if is_local(cfg.source):
        path = Path(cfg.source).expanduser()
        if not path.exists():
            raise DataError(f"Data path {path} does not exist. Check data.source.")
        if is_saved_dataset(path):
            documents = _saved_dataset(path, cfg.split)
            documents = documents.to_iterable_dataset() if cfg.streaming else documents
        else:
            builder, files = _local_files(path)
            kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
            try:
                documents = datasets.load_dataset(
                    builder, data_files=files, split="train", streaming=cfg.streaming, **kwargs
                )
            except READ_ERRORS as error:
                raise unreadable_data(cfg.source, error) from None
    else:
        try:
            documents = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split, streaming=cfg.streaming)
        except ValueError as error:  # datasets' word for a config name or split the dataset does not have
            raise DataError(
                f"Cannot load the hub dataset {cfg.source} with data.subset={cfg.subset!r} and "
                f"data.split={cfg.split!r}: {' '.join(str(error).split())[:400]} Set data.subset and data.split "
                "to ones the dataset has."
            ) from None
    columns = documents.column_names
    if columns is not None and cfg.text_field not in columns:
        raise DataError(
            f"{cfg.source} has no text field {cfg.text_field!r}; its columns are {columns}. "
            f"Set data.text_field to the column that holds the text."
        )
    if cfg.text_field != "text":
        documents = documents.rename_column(cfg.text_field, "text")
    return documents.select_columns(["text"])


def source_fingerprint(cfg: DataConfig) -> str:
    """What identifies the source's content: its name, or for local files their sizes and times."""
    parts: dict = {"source": cfg.source, "subset": cfg.subset, "split": cfg.split, "text_field": cfg.text_field}
    if cfg.source.startswith("builtin:"):
        parts["documents"] = hashlib.sha256("\x00".join(load_documents(cfg)["text"]).encode()).hexdigest()
    elif is_local(cfg.source):
        path = Path(cfg.source).expanduser()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def write_documents(documents, folder: str | Path, text_field: str = "text") -> Path:
    """In-memory documents (a ``datasets.Dataset``, a pandas DataFrame with a ``text_field``
    column, or a list of strings) as a Parquet file under ``folder``, named by its content, for
    ``data.source``: a run's config then names a file it can be rerun from, and the same
    documents make the same file (and so the same stage fingerprints)."""
    if isinstance(documents, (datasets.Dataset, pd.DataFrame)):
        columns = list(documents.column_names if isinstance(documents, datasets.Dataset) else documents.columns)
        if text_field not in columns:
            raise DataError(
                f"The documents have no text field {text_field!r}; their columns are {columns}. Set data.text_field "
                "to the column that holds the text."
            )
        texts = list(documents[text_field])
    elif isinstance(documents, (list, tuple)):
        texts = list(documents)
    else:
        raise DataError(
            f"Documents of type {type(documents).__name__} cannot be read: give a datasets.Dataset, a pandas "
            "DataFrame with a text column, a list of strings, or a data.source path or dataset name."
        )
    if not texts:
        raise DataError("The documents are empty: there is no text to train on or audit.")
    wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if wrong is not None:
        raise DataError(
            f"Document {wrong} is a {type(texts[wrong]).__name__}, not a string: every document must be text."
        )
    key = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    path = Path(folder) / f"documents-{key}.parquet"
    if not path.exists():
        write_parquet_atomic(path, pd.DataFrame({text_field: texts}))
    return path
