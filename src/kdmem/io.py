"""Atomic writes and the on-disk cache: an output either exists whole or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState


def cache_dir() -> Path:
    """``$KDMEM_CACHE``, else ``~/.cache/kdmem``: where built models and tokenized data are kept."""
    root = os.environ.get("KDMEM_CACHE") or Path.home() / ".cache" / "kdmem"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _process_umask()
"""mkstemp and mkdtemp make private (0600, 0700) files and folders; outputs get the permissions
any other program's would (0644 and 0755 under the usual umask 022)."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces ``path`` only once the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_parquet_atomic(path: Path, frame: pd.DataFrame, **options) -> None:
    """``options`` go to ``DataFrame.to_parquet`` (e.g. ``row_group_size``)."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, **options)


PROCESS_GROUP_TIMEOUT = timedelta(hours=3)
"""How long a process waits at a barrier. Some stages (tokenizing D, the analysis) run on the
main process alone while the others wait; at 1M sequences that takes longer than torch's default."""


def _default(item: dataclasses.Field) -> Any:
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def jsonable(value: Any) -> Any:
    """Settings as JSON: dataclasses as dicts (less their ``later_fields`` at their defaults, so
    that a field added to a config leaves the fingerprints of finished runs as they were), tuples
    as lists, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        later = getattr(type(value), "later_fields", ())
        return {
            item.name: jsonable(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.name in later and getattr(value, item.name) == _default(item))
        }
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_hash(value: Any) -> str:
    """16 hex digits of sha256 over ``value`` as sorted JSON: the one hash of settings in kdmem
    (stage fingerprints, and the keys of cached bases and look-alikes)."""
    return hashlib.sha256(json.dumps(jsonable(value), sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_folder(marker: Path, settings: Any, *, holds: str, fix: str) -> bool:
    """Claim ``marker``'s folder for ``settings``: write them to ``marker`` (True), find the same
    ones there (False), or refuse a folder that holds other ones, naming the keys that differ,
    so that two runs' partial results are never mixed (``ConfigError``: the settings asked for
    are the user's). Call it on the main process."""
    expected = json.loads(json.dumps(jsonable(settings), default=str))
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != expected:
            from kdmem.config import ConfigError  # not at the top: kdmem.config imports what imports kdmem.io

            differs = sorted(key for key in found.keys() | expected.keys() if found.get(key) != expected.get(key))
            raise ConfigError(f"{marker.parent} holds {holds} with other {', '.join(differs)}; {fix}")
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, expected)
    return True


def process_state() -> PartialState:
    """This process's place among those ``accelerate launch`` started. Without a GPU, accelerate
    joins the processes (gloo) only when asked for the CPU; otherwise each would believe it is alone."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def split_across_processes(
    rows: pd.DataFrame, compute: Callable[[pd.DataFrame, int], pd.DataFrame], parts: Path, state: PartialState | None
) -> pd.DataFrame:
    """``compute(share, offset)`` on each process's contiguous share of ``rows`` (``offset``: the
    share's first position in ``rows``); every process gets back all results, in row order.

    Under several processes the shares meet through Parquet files in ``parts`` (removed after),
    so nothing is pickled between processes. The result keeps this process's ``attrs``. Without
    a ``state`` this process computes everything.
    """
    if state is None or state.num_processes == 1:
        return compute(rows, 0)
    bounds = np.linspace(0, len(rows), state.num_processes + 1).astype(int)
    start, stop = bounds[state.process_index], bounds[state.process_index + 1]
    mine = compute(rows.iloc[start:stop], int(start))
    write_parquet_atomic(parts / f"part-{state.process_index:04d}.parquet", mine)
    state.wait_for_everyone()
    result = pd.concat(
        [pd.read_parquet(parts / f"part-{i:04d}.parquet") for i in range(state.num_processes)], ignore_index=True
    )
    result.attrs = dict(mine.attrs)
    state.wait_for_everyone()  # all have read the parts before they go
    if state.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
    return result
