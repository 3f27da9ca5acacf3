"""The embedded corpus ``builtin:python-docs``: real English prose that ships with CPython.

Two sources, both present in every CPython install, so nothing is downloaded: the documentation
topics of ``pydoc_data.topics`` (the language reference behind ``help()``) and the docstrings of
the standard library's modules, classes and functions, read with ``ast`` (nothing is imported).

Each document goes, by a hash of its text, to one of two disjoint parts: ``public`` (tokenizer
training and pre-training of the embedded bases, like a web crawl a base model saw) and
``private`` (the fine-tuning set D and its validation split). No document is in both, so a
base model starts with no knowledge of D, as a Pythia checkpoint does of a private set.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

from kdmem.io import cache_dir, write_text_atomic

PRIVATE_SHARE = 0.3
"""Share of documents in the private part; the rest is public."""
MIN_DOCSTRING_CHARS = 100
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo"}


def _topics() -> list[str]:
    import pydoc_data.topics

    return [text for _, text in sorted(pydoc_data.topics.topics.items())]


def _docstrings(root: Path) -> list[str]:
    texts = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(folder, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                        texts.append(doc)
    return texts


def _is_private(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < PRIVATE_SHARE * 2**32


def python_docs(part: str = "private") -> list[str]:
    """The documents of one part (``"private"`` or ``"public"``), deduplicated, in a fixed order."""
    if part not in ("private", "public"):
        raise ValueError(f"part must be 'private' or 'public', got {part!r}")
    version = f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    cached = cache_dir() / "builtin" / f"python-docs-{version}.json"
    if cached.exists():
        documents = json.loads(cached.read_text(encoding="utf-8"))
    else:
        seen = set()
        documents = []
        for text in _topics() + _docstrings(Path(sysconfig.get_paths()["stdlib"])):
            text = text.strip()
            if text and text not in seen:
                seen.add(text)
                documents.append(text)
        write_text_atomic(cached, json.dumps(documents))
    want_private = part == "private"
    return [text for text in documents if _is_private(text) == want_private]
