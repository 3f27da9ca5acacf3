"""``kdmem run CONFIG --rehearse``: the whole pipeline of CONFIG on shrunken look-alikes of its
models, in minutes on a CPU, so that a paper-scale run cannot die hours in on a shape,
vocabulary, tokenizer or dtype bug.

What is kept from CONFIG: the models' architectures, vocabulary sizes, tie settings, positional
settings, special tokens and tokenizers (``kdmem.models.lookalike``); the data source and its
``seq_len``, packing, prefix and suffix lengths; dtypes (``training.bf16``,
``inference_dtype``); seeds, temperatures, the teacher cache, filtering, canaries. What shrinks:
width and depth (random weights), D to 64 training and 16 validation sequences, every training
stage to one epoch of micro-batches of at most 4. Look-alikes are built once into the model
cache (``KDMEM_CACHE``). The rehearsal writes to its own folder
(default ``runs/NAME-rehearsal``), checks the outputs every stage should have written, and
prints what it checked.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import pandas as pd

from kdmem.analysis.filtering import MIN_MEMORIZED_TO_FILTER
from kdmem.config import ExperimentConfig, TinySizeConfig
from kdmem.data.sources import is_local
from kdmem.errors import RehearsalError
from kdmem.io import cache_dir, settings_hash, write_json_atomic
from kdmem.layout import RunLayout, model_names
from kdmem.models.lookalike import (
    CROSS_SCALE_SIZE,
    STUDENT_SIZE,
    TEACHER_SIZE,
    build_lookalike,
    materialized_fixture,
    offline_fixture,
)
from kdmem.plan import hub_reachable
from kdmem.utility import PAPER_TASKS

logger = logging.getLogger(__name__)

TRAIN_EXAMPLES, VALIDATION_EXAMPLES = 64, 16
MAX_BATCH = 4
"""Micro-batch cap: logits of 4 x 256 tokens over Qwen3's 151,936 entries are 0.6 GB in float32."""


def _is_hub_name(name: str) -> bool:
    return not name.startswith("builtin:") and not is_local(name)


OFFLINE_FIXTURE = (
    "kdmem's offline look-alike (the real config.json as recorded, a locally trained tokenizer with the real length "
    "and special-token ids)"
)


def lookalike_source(name: str, lookalikes: Path | None, online: bool) -> tuple[str, str]:
    """Where the look-alike of ``name`` reads its config.json and tokenizer: (path or name, how found)."""
    if lookalikes is not None and (lookalikes / name / "config.json").is_file():
        return str(lookalikes / name), f"{lookalikes / name}"
    if not _is_hub_name(name):
        return name, "the local folder"
    if online:
        return name, "the Hugging Face Hub (config.json and tokenizer only)"
    if offline_fixture(name) is not None:
        return str(materialized_fixture(name)), OFFLINE_FIXTURE
    raise RehearsalError(
        f"The Hugging Face Hub is unreachable, so the rehearsal cannot read the config.json and tokenizer of {name}. "
        f"Point --lookalikes at a folder holding {name}/config.json and its tokenizer files (as `save_pretrained` "
        "writes them; no weights are needed), or set the model to such a folder "
        "(teacher.model=PATH or student.model=PATH)."
    )


def _shrink_training(training) -> None:
    training.epochs = 1.0
    training.batch_size = min(training.batch_size, MAX_BATCH)
    training.logging_steps = 1
    training.report_to = "none"  # a rehearsal logs nowhere the real run's dashboards would show


def rehearsal_config(
    config: ExperimentConfig,
    lookalikes: str | Path | None = None,
    examples: tuple[int, int] = (TRAIN_EXAMPLES, VALIDATION_EXAMPLES),
) -> tuple[ExperimentConfig, dict]:
    """CONFIG with look-alike models (built once into the model cache) and the shrunken budget:
    ``examples`` training and validation sequences; and what each look-alike kept."""
    lookalikes = Path(lookalikes).expanduser() if lookalikes else None
    names = [config.teacher.model, config.student.model, config.data.source]
    names += [config.cross_scale.model] if config.cross_scale.model else []
    online = hub_reachable() if any(_is_hub_name(name) for name in names) else True
    if _is_hub_name(config.data.source) and not online:
        raise RehearsalError(
            f"The Hugging Face Hub is unreachable, so the rehearsal cannot read a slice of {config.data.source}. "
            "Point data.source at a local copy (a .parquet, .jsonl or .txt file or folder), or rehearse the shapes "
            "on the embedded text: kdmem run CONFIG --rehearse data.source=builtin:python-docs"
        )
    rehearsal = copy.deepcopy(config)
    rehearsal.name = f"{config.name}-rehearsal"
    found = {}
    roles = [("teacher", rehearsal.teacher, TEACHER_SIZE, 0), ("student", rehearsal.student, STUDENT_SIZE, 1)]
    if rehearsal.cross_scale.model:
        roles.append(("cross_scale", rehearsal.cross_scale, CROSS_SCALE_SIZE, 2))
    if rehearsal.baseline.model:  # a given checkpoint of the student's family
        roles.append(("baseline", rehearsal.baseline, STUDENT_SIZE, 3))
    for role, spec, size, seed in roles:
        if spec.model.startswith("builtin:"):  # already tiny, built and pre-trained locally
            found[role] = {"source": spec.model, "found_in": "the embedded family"}
            continue
        source, where = lookalike_source(spec.model, lookalikes, online)
        revisions = [spec.revision]
        if role == "teacher" and not config.teacher.fine_tune and config.membership.reference:
            revisions.append(config.student.revision)  # a given teacher's reference: itself where the student starts
        if spec.revision is None:
            folder = _lookalike_folder(role, source, None, size, seed)
            info = _built_lookalike(role, spec, source, where, folder, size, None, seed)
        else:  # one look-alike per revision, each in its subfolder, as a folder of checkpoints is laid out
            folder = _lookalike_folder(role, source, "revisions", size, seed)
            built = {
                revision: _built_lookalike(role, spec, source, where, folder / revision, size, revision, seed + 10 * i)
                for i, revision in enumerate(dict.fromkeys(revisions))
            }
            info = built[spec.revision]
        found[role] = info | {"model": spec.model, "revision": spec.revision, "found_in": where}
        spec.model = str(folder)  # a revision, if any, is now its subfolder
    from_fixtures = [info["model"] for info in found.values() if info["found_in"] == OFFLINE_FIXTURE]
    if from_fixtures:
        logger.warning(
            "The Hugging Face Hub is unreachable: the look-alikes of %s are made from kdmem's offline fixtures "
            "(src/kdmem/models/lookalikes). Pass --lookalikes DIR to use your own copies of their config.json "
            "and tokenizer files.",
            " and ".join(from_fixtures),
        )
    data = rehearsal.data
    if data.sequence_range:  # the range's first sequences
        data.sequence_range = [data.sequence_range[0], data.sequence_range[0] + min(data.size, examples[0])]
    else:
        data.num_examples = examples[0] if data.num_examples is None else min(data.num_examples, examples[0])
    data.validation_examples = min(data.validation_examples, examples[1])
    if _is_hub_name(data.source):
        data.streaming = True  # read the slice, not the whole dataset
    for training in (
        rehearsal.teacher.training,
        rehearsal.student.training,
        rehearsal.soft.training,
        rehearsal.hard.training,
        rehearsal.cross_scale.training,
    ):
        _shrink_training(training)
    ext = rehearsal.extraction
    ext.approximate_sample = min(ext.approximate_sample, 4)
    ext.track_every_epochs = 1 if ext.track_every_epochs else 0
    ext.track_examples = min(ext.track_examples or 4, 4)
    rehearsal.hard.generation_batch_size = min(rehearsal.hard.generation_batch_size, 16)
    rehearsal.canaries.num_candidates = min(rehearsal.canaries.num_candidates, 64)
    # The hub's utility tasks stand in as kdmem's local tasks of the same kinds: no download.
    rehearsal.utility.tasks = list(dict.fromkeys(PAPER_TASKS.get(task, task) for task in rehearsal.utility.tasks))
    rehearsal.utility.limit = min(rehearsal.utility.limit or examples[1], examples[1])
    if rehearsal.filtering.enabled:  # random look-alikes memorize nothing; let a stand-in exercise the stages
        rehearsal.filtering.stand_in_examples = max(MIN_MEMORIZED_TO_FILTER, rehearsal.data.num_examples // 8)
    rehearsal.validate()
    return rehearsal, found


def _built_lookalike(
    role: str, spec, source: str, where: str, folder: Path, size: TinySizeConfig, revision: str | None, seed: int
) -> dict:
    """The look-alike of ``spec`` (at ``revision``) in ``folder``, built there on first use; what it kept."""
    info_path = folder / "kdmem_lookalike.json"
    if not info_path.exists():
        logger.info("[rehearsal] %s look-alike of %s (revision %s) from %s", role, spec.model, revision, where)
        build_lookalike(source, folder, size, revision=revision, trust_remote_code=spec.trust_remote_code, seed=seed)
    return json.loads(info_path.read_text())


def _lookalike_folder(role: str, source: str, revision: str | None, size: TinySizeConfig, seed: int) -> Path:
    """One folder per source, size and seed, so a look-alike made from other files is never reused,
    and one that is the same is built once for every rehearsal folder."""
    files = {
        name: (Path(source) / name).read_text()
        for name in ("config.json", "tokenizer_config.json")
        if (Path(source) / name).is_file()
    }
    key = settings_hash([source, revision, files, size.__dict__, seed])
    return cache_dir() / "lookalikes" / f"{role}-{key}"


def check_outputs(config: ExperimentConfig, root: Path) -> list[str]:
    """What every stage of the rehearsed run should have written, checked; raises on the first gap."""
    layout = RunLayout(root)
    checked = []

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise RehearsalError(f"The rehearsal ran to its end, but {what} does not hold; see {root}.")
        checked.append(what)

    train = pd.read_parquet(layout.data("train"))
    require(
        len(train) == config.data.size and all(len(ids) == config.data.seq_len for ids in train["input_ids"]),
        f"D holds {config.data.size} sequences of {config.data.seq_len} tokens",
    )
    summary = json.loads(layout.summary.read_text())
    for name in model_names(config):
        if name not in summary["models"]:  # only the filtered student may be missing, when filtering was skipped
            require(
                "skipped" in json.loads(layout.filtering.read_text()),
                f"{name} is trained and evaluated, or its filtering says why not",
            )
            continue
        verdicts = pd.read_parquet(layout.memorization(name))
        require(
            len(verdicts) == len(train) and all(f"memorized_p{p}" in verdicts for p in config.extraction.prefix_lens),
            f"{name}: {'given' if name in summary.get('given_models', []) else 'trained'}, and every example of D "
            "has a verdict (prefix curve "
            f"{config.extraction.prefix_lens or 'off'})",
        )
    if config.soft.teacher_cache:
        spec = json.loads((layout.teacher_cache("train") / "spec.json").read_text())
        require(spec.get("kind") == config.soft.cache_kind, f"teacher cache of kind {config.soft.cache_kind}")
    hard = pd.read_parquet(layout.data("hard"))
    require(len(hard) >= len(train), "hard-KD data: a teacher continuation of every training row")
    features = pd.read_parquet(layout.features)
    require(
        len(features) == len(train) and features["teacher_baseline_kl"].notna().all(),
        "features: teacher-baseline KL (over the shared vocabulary) of every example",
    )
    if config.utility.tasks:
        rows = [row for row in summary["models"].values() if "utility" in row]
        require(
            len(rows) == len(summary["models"]) and all(set(config.utility.tasks) <= set(r["utility"]) for r in rows),
            f"utility: every model evaluated by lm-eval on {', '.join(config.utility.tasks)}",
        )
    analysis = json.loads(layout.analysis.read_text())
    require(bool(analysis), "analysis.json written")
    require(
        layout.report_html.stat().st_size > 0 and layout.report_markdown.exists(), "report.html and report.md written"
    )
    return checked


def rehearse(
    config: ExperimentConfig,
    output: str | Path | None = None,
    *,
    lookalikes: str | Path | None = None,
    examples: tuple[int, int] = (TRAIN_EXAMPLES, VALIDATION_EXAMPLES),
) -> dict:
    """Rehearse ``config`` into ``output`` (default ``runs/NAME-rehearsal``); return what was checked.

    ``lookalikes``: a folder of ``ORG/NAME/`` with config.json and tokenizer files, read first.
    ``examples``: training and validation sequences of D.

    Raises ``RehearsalError`` naming the stage that failed; the folder keeps what the stages
    before it wrote, and a rerun continues from there.
    """
    from kdmem.pipeline import run

    root = Path(output) if output else Path("runs") / f"{config.name}-rehearsal"
    marker = root / "rehearsal.json"
    if (root / "config.yaml").exists() and not marker.exists():
        raise RehearsalError(
            f"{root} holds a run that is not a rehearsal; a rehearsal never writes into a real run's folder. "
            "Use another --output."
        )
    started = time.perf_counter()
    rehearsal, lookalike_models = rehearsal_config(config, lookalikes, examples)
    write_json_atomic(marker, {"config": config.name, "status": "running", "lookalikes": lookalike_models})
    try:
        run(rehearsal, root / "run", overwrite=True)
    except Exception as error:
        notes = [note for note in getattr(error, "__notes__", []) if note.startswith("kdmem stage: ")]
        where = notes[0].removeprefix("kdmem stage: ") if notes else "setup"
        logger.error("[rehearsal] %s failed in stage %s", config.name, where, exc_info=error)
        write_json_atomic(
            marker,
            {
                "config": config.name,
                "status": "failed",
                "stage": where,
                "error": f"{type(error).__name__}: {error}",
                "lookalikes": lookalike_models,
            },
        )
        reason = " ".join(str(error).split())[:600]
        raise RehearsalError(
            f"The rehearsal of {config.name} failed in stage {where} after {time.perf_counter() - started:.0f} s: "
            f"{type(error).__name__}: {reason}. A run of the real models reaches the same code after every stage "
            f"before it. Output so far: {root / 'run'}"
        ) from error
    checked = check_outputs(rehearsal, root / "run")
    result = {
        "config": config.name,
        "status": "passed",
        "seconds": round(time.perf_counter() - started, 1),
        "output": str(root / "run"),
        "lookalikes": lookalike_models,
        "checked": checked,
        "stage_seconds": json.loads((root / "run" / "run.json").read_text()).get("stage_seconds", {}),
    }
    write_json_atomic(marker, result)
    return result


def format_rehearsal(result: dict) -> str:
    lines = [f"rehearsal of {result['config']} passed in {result['seconds']:.0f} s; output: {result['output']}"]
    for role, info in result["lookalikes"].items():
        if "vocab_size" in info:
            lines.append(
                f"{role}: {info['architecture']} look-alike of {info['model']} from {info['found_in']}: "
                f"vocabulary {info['vocab_size']:,} (tokenizer {info['tokenizer_length']:,}), "
                f"{'tied' if info['tie_word_embeddings'] else 'untied'}, special ids {info['special_token_ids']}, "
                f"sizes {info['lookalike_sizes']} (real {info['real_sizes']})"
            )
        else:
            lines.append(f"{role}: {info['source']} ({info['found_in']})")
    lines += [f"checked: {what}" for what in result["checked"]]
    return "\n".join(lines)
