"""The machinery of ``kdmem run``'s stage graph: what kind of stage an action makes
(``stage_action``), a stage, its fingerprint, its marker, and the one loop that runs a graph
(``execute``). The graph itself, the paper's recipe, is ``kdmem.pipeline.stage_graph``.

A stage's ``action`` is called with exactly its ``settings`` (and its ``speed`` settings, which
change how fast a result comes, never the result) as keyword arguments, plus the run context.
Its fingerprint hashes those settings and the fingerprints of the stages it ``needs``, so what a
stage reads and what decides whether its output is current are one and the same. Changing the
soft student's learning rate changes the fingerprints of the soft student and of everything
that reads it, and nothing upstream: the teacher and the baseline are kept.

Each finished stage leaves one marker, ``OUT/stages/NAME.json``, written last: its fingerprint,
settings, upstream fingerprints, seconds, versions and git revision, and whatever the action
reported (a batch size found, why it was skipped). A stage whose marker holds its fingerprint
(and whose main output is there) is done; one whose marker holds another is stale: ``execute``
refuses to run, or with ``overwrite`` removes its outputs and recomputes it (and, their
fingerprints having changed too, everything downstream).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdmem.config import ConfigError
from kdmem.io import jsonable, settings_hash, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    """What a stage's compute depends on; None where unknown."""

    teacher: float | None
    student: float | None
    """Parameter counts."""
    tokens: float | None
    """Tokens of D."""
    head: float | None = None
    """Teacher hidden size x shared vocabulary: the output layer a hidden-state cache recomputes."""
    held_out_tokens: float | None = None
    """Tokens of the held-out (validation) sequences."""
    cross_scale: float | None = None
    """Parameters of the cross-scale model (``cross_scale.model``), if any."""

    @property
    def scored_tokens(self) -> float | None:
        """Tokens of D and of the held-out sequences: what membership inference scores."""
        return None if self.tokens is None or self.held_out_tokens is None else self.tokens + self.held_out_tokens


def per_token(tokens: float | None, *terms: tuple[float, float | None]) -> float | None:
    """tokens x sum of factor x size; None when any size is unknown."""
    if tokens is None or any(size is None for _, size in terms):
        return None
    return tokens * sum(factor * size for factor, size in terms)


@dataclass(frozen=True)
class StageKind:
    """What every stage of one action is, whatever its settings: declared where the action is
    defined (``@stage_action``), so that the recipe only says which stages exist, in what order,
    with which settings."""

    outputs: Callable[[Any, dict[str, Any]], tuple[Path, ...]]
    """``outputs(layout, settings)``: what the action writes, the main output first."""
    distributed: bool = False
    """Run on every process (a ``Trainer`` run, or work split across processes); else the main
    process runs it while the others wait."""
    speed: bool = False
    """Takes the run's speed settings (``batch_size``), which change how fast, never what."""
    flops: Callable[..., float | None] | None = None
    """``flops(sizes, config=, settings=)``: what ``--dry-run`` estimates the stage computes (2N
    FLOPs a token for a forward pass, 6N for a training step); None: negligible."""
    rebuilt_freely: bool = False
    """Recomputed without ``overwrite`` when stale: cheap, and reads every other stage (summary,
    analysis, report)."""


def stage_action(**kind: Any) -> Callable[[Callable], Callable]:
    """Mark a function as a stage action: ``kind`` (``StageKind``'s fields) goes on it as
    ``action.stage_kind``; the function itself is returned unchanged."""

    def mark(action: Callable) -> Callable:
        action.stage_kind = StageKind(**kind)
        return action

    return mark


@dataclass(frozen=True)
class Stage:
    name: str
    action: Callable[..., dict | None]
    """``action(context, **settings, **speed)``; returns what the marker should also record, or None."""
    settings: dict[str, Any]
    needs: tuple[str, ...] = ()
    """The stages whose outputs the action reads."""
    outputs: tuple[Path, ...] = ()
    """What the action writes (removed when the stage is stale and recomputed)."""
    distributed: bool = False
    """Run on every process (a ``Trainer`` run, or work split across processes); else the main
    process runs it while the others wait."""
    speed: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments that change how fast, never what: not fingerprinted."""
    flops: Callable[[Sizes], float | None] | None = None
    """What ``--dry-run`` estimates the stage computes, from the run's ``Sizes`` (None: negligible)."""
    rebuilt_freely: bool = False
    """Recomputed without ``overwrite`` when stale: cheap, and reads every other stage (summary,
    analysis, report)."""


def fingerprints(graph: list[Stage]) -> dict[str, str]:
    """Stage name -> its fingerprint; a stage's needs come before it in the graph."""
    prints: dict[str, str] = {}
    for stage in graph:
        missing = [name for name in stage.needs if name not in prints]
        if missing:
            raise ValueError(f"stage {stage.name} needs {', '.join(missing)}, which no earlier stage of the graph is")
        prints[stage.name] = settings_hash(
            {"settings": stage.settings, "upstream": [prints[name] for name in stage.needs]}
        )
    return prints


def marker_path(root: Path, name: str) -> Path:
    return Path(root) / "stages" / f"{name.replace(':', '.')}.json"


def read_marker(root: Path, name: str) -> dict | None:
    path = marker_path(root, name)
    return json.loads(path.read_text()) if path.exists() else None


def check_markers(graph: list[Stage], root: Path, overwrite: bool) -> None:
    """Refuse a folder whose finished stages this graph would compute otherwise, unless
    ``overwrite``: then remove just those stages' outputs and markers."""
    prints = fingerprints(graph)
    markers = {stage.name: read_marker(root, stage.name) for stage in graph}
    stale = [
        stage for stage in graph if markers[stage.name] and markers[stage.name]["fingerprint"] != prints[stage.name]
    ]
    if any(not stage.rebuilt_freely for stage in stale) and not overwrite:
        kept = sorted(name for name, marker in markers.items() if marker and marker["fingerprint"] == prints[name])
        raise ConfigError(
            f"{root} holds a run with a different config, which changes the finished stages "
            f"{', '.join(s.name for s in stale if not s.rebuilt_freely)} "
            f"(kept as they are: {', '.join(kept) or 'none'}). Pass --overwrite to recompute just those stages, "
            "or use another --output."
        )
    for stage in stale:
        logger.info("config changed: recomputing %s", stage.name)
        for path in stage.outputs:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        marker_path(root, stage.name).unlink()


def is_done(stage: Stage, marker: dict | None, fingerprint: str) -> bool:
    """Its marker holds its fingerprint, and its main output (the first) is there, unless it was
    skipped: an output deleted by hand is made again."""
    if not marker or marker["fingerprint"] != fingerprint:
        return False
    return "skipped" in marker or not stage.outputs or stage.outputs[0].exists()


def execute(graph: list[Stage], context, versions: dict, provenance: Callable[[], dict]) -> None:
    """Run every stage of ``graph`` that is not done, in order. ``context`` (with ``state`` and
    ``layout``) goes to each action; each marker records ``versions`` (``versions`` and
    ``git_revision``), and after each stage the main process writes ``provenance()`` (versions,
    hardware, stage seconds)."""
    state, root = context.state, context.layout.root
    prints = fingerprints(graph)
    for stage in graph:
        state.wait_for_everyone()
        with contextlib.nullcontext() if stage.distributed else state.main_process_first():
            if is_done(stage, read_marker(root, stage.name), prints[stage.name]):
                if state.is_main_process:
                    logger.info("[%s] done already", stage.name)
                continue
            if not (stage.distributed or state.is_main_process):
                raise RuntimeError(f"stage {stage.name} finished on the main process without writing its marker")
            logger.info("[%s] running", stage.name)
            start = time.perf_counter()
            try:
                reported = stage.action(context, **stage.settings, **stage.speed) or {}
            except Exception as error:  # the rehearsal and the logs name the stage that failed
                if hasattr(error, "add_note"):  # Python 3.11+
                    error.add_note(f"kdmem stage: {stage.name}")
                raise
            if stage.distributed:
                state.wait_for_everyone()
            if state.is_main_process:
                write_json_atomic(
                    marker_path(root, stage.name),
                    {
                        "stage": stage.name,
                        "fingerprint": prints[stage.name],
                        "settings": jsonable(stage.settings),
                        "upstream": {name: prints[name] for name in stage.needs},
                        "seconds": round(time.perf_counter() - start, 2),
                        "versions": versions["versions"],
                        "git_revision": versions["git_revision"],
                        **reported,
                    },
                )
                write_json_atomic(context.layout.provenance, provenance())
    state.wait_for_everyone()


def stage_seconds(root: Path, names: list[str]) -> dict[str, float]:
    """Wall seconds of every finished stage of ``names``, from its marker (kept across reruns)."""
    return {name: marker["seconds"] for name in names if (marker := read_marker(root, name))}
