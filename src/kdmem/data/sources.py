"""Where text comes from: the builtin corpus, local files, or a Hugging Face dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets

from kdmem.config import DataConfig
from kdmem.data.builtin import python_docs

BUILTIN_SOURCES = {"builtin:python-docs": "private", "builtin:python-docs-public": "public"}
_LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Data that cannot be used; the message names the problem and the fix."""


def _local_files(path: Path) -> tuple[str, list[str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_FORMATS and p.is_file())
        if not files:
            raise DataError(f"Folder {path} has no .txt, .jsonl or .parquet files.")
    else:
        files = [path]
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise DataError(f"{path} mixes file types {sorted(suffixes)}; put one kind of file in a folder.")
    suffix = suffixes.pop()
    if suffix not in _LOCAL_FORMATS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .txt, .jsonl or .parquet.")
    return _LOCAL_FORMATS[suffix], [str(p) for p in files]


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
        builder, files = _local_files(path)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        documents = datasets.load_dataset(builder, data_files=files, split="train", streaming=cfg.streaming, **kwargs)
    else:
        documents = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split, streaming=cfg.streaming)
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
