"""How a benchmark result was made, for its JSON: the script's own command line and, where it reads
the output of a ``kdmem run``, the command that made that run, with paths relative to the
repository root (run both from there).

The scripts import it from ``main`` (their folder is ``sys.path[0]`` when run as
``python benchmarks/NAME.py``), so that the tests can load a script by its path without it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def relative(path: str | Path) -> str:
    """``path`` relative to the repository root when it names a place inside it (an absolute path,
    an existing one, or a new file in an existing folder); anything else (a hub name,
    ``builtin:...``, a place outside the repository) as given."""
    text = str(path)
    given = Path(text).expanduser()
    resolved = given.resolve()
    names_a_path = given.is_absolute() or resolved.exists() or ("/" in text and resolved.parent.exists())
    if names_a_path and resolved.is_relative_to(ROOT):
        return resolved.relative_to(ROOT).as_posix() or "."
    return text


def _word(word: str) -> str:
    """One command-line word, a path inside the repository rewritten relative to its root."""
    if word.startswith("-"):
        flag, equals, value = word.partition("=")
        return f"{flag}={relative(value)}" if equals else word
    return relative(word)


def command(argv: list[str] | None = None) -> str:
    """This script's command line, as run from the repository root."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["python", relative(argv[0]), *map(_word, argv[1:])])


def run_folder(path: str | Path) -> Path | None:
    """The ``kdmem run`` output folder that holds ``path`` (or is it), if any."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / "config.yaml").is_file() and (folder / "run.json").is_file():
            return folder
    return None


def run_command(folder: str | Path) -> str:
    """The ``kdmem run`` command that makes ``folder``: a preset's (none for the default experiment)
    when its resolved config is that preset's, else the folder's own resolved ``config.yaml``."""
    from kdmem.config import available_presets, config_to_dict, load_config

    out = relative(folder)
    saved = config_to_dict(load_config(Path(folder) / "config.yaml"))
    for preset in available_presets():
        if config_to_dict(load_config(preset=preset)) == saved:
            words = ["kdmem", "run"] + ([] if preset == "default" else ["--preset", preset])
            return shlex.join([*words, "--output", out])
    return shlex.join(["kdmem", "run", f"{out}/config.yaml", "--output", out])


def input_command(*paths: str | Path) -> dict[str, str]:
    """``{"input_command": ...}`` for the first of ``paths`` that lies in a run folder, else ``{}``."""
    for path in paths:
        folder = run_folder(path) if path else None
        if folder is not None:
            return {"input_command": run_command(folder)}
    return {}
