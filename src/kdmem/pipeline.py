"""``kdmem run``: the paper's pipeline as a graph of stages, declared once in ``stage_graph``:

    data -> teacher -> [teacher cache] -> per seed: baseline, soft student, hard student
         -> the temperature sweep -> per model: extraction, validation loss, membership
            inference, canary exposure -> features -> filtering -> the filtered student
         -> summary -> analysis -> report

Each stage's action below is called with exactly the settings ``stage_graph`` gives it (see
``kdmem.stages``), plus a ``RunContext``: the run folder, the processes, and cached loads of what
earlier stages wrote. What a stage of an action is (its outputs, whether every process runs it,
its compute for ``--dry-run``) is declared on the action by ``@stage_action``. Every output is
written under a temporary name and renamed when whole, and each stage's marker is written last,
so a killed run leaves no half-written file and a rerun on the same folder continues where it
stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kdmem.analysis.analyze import analyze, model_feature_table
from kdmem.analysis.compare import compare_runs
from kdmem.analysis.filtering import MIN_MEMORIZED_TO_FILTER, flag_examples, stand_in_memorized
from kdmem.analysis.overlaps import memorized_ids
from kdmem.config import (
    PILOT_REVISIONS,
    BaselineConfig,
    CanaryConfig,
    ConfigError,
    EmbeddedModelsConfig,
    ExperimentConfig,
    ExtractionConfig,
    ModelConfig,
    SoftDistillConfig,
    config_from_dict,
    save_config,
    second_family_config,
)
from kdmem.data import as_tensor, prepare_sequences, read_sequences, write_documents, write_sequences
from kdmem.io import jsonable, process_state, split_across_processes, write_json_atomic, write_parquet_atomic
from kdmem.layout import CROSS_SCALE, RunLayout, filtered_name, model_names, seed_suffix, temperature_sweep
from kdmem.memorization import MemorizationTracker, approximate_summary, measure_memorization, sample_positions
from kdmem.memorization.canaries import canary_exposure, inject_canaries, make_canaries
from kdmem.memorization.membership import membership_metrics, read_membership_metrics, split_scores, write_membership
from kdmem.models import check_same_vocabulary, load_model, load_tokenizer
from kdmem.models.decoding import greedy_continuations
from kdmem.models.loading import model_vocab_size
from kdmem.report import headline_table, write_report
from kdmem.stages import (
    Sizes,
    Stage,
    check_markers,
    execute,
    fingerprints,
    per_token,
    read_marker,
    stage_action,
    stage_seconds,
)
from kdmem.train import distill, fine_tune, resolve_model_name, validation_loss
from kdmem.train.teacher_cache import TeacherLogitCache, build_teacher_cache, complete_teacher_cache
from kdmem.utility import (
    LOCAL_TASKS,
    check_tasks,
    evaluate_utility,
    lm_eval_version,
    task_tokens,
    write_local_documents,
    write_utility,
)

logger = logging.getLogger(__name__)

FIRST_SEED_MODELS = ("teacher", "baseline", "soft", "hard")
"""The models features are computed under (the first seed's)."""


@dataclass
class RunContext:
    """What every stage may use besides its settings: the run folder, the processes, and cached
    loads of the bases and of what earlier stages wrote."""

    layout: RunLayout
    state: Any
    embedded: EmbeddedModelsConfig
    """How builtin bases are built (hashed into the data stage, and so into every stage)."""
    tokenizer_spec: dict
    """The teacher base, whose tokenizer is the run's (hashed into the data stage)."""
    canary_seed: int
    """How canary copies are shuffled into the training rows (hashed into the data stage)."""
    run_name: str = ""
    teacher_id: str = ""
    """What identifies the teacher to its cache: the teacher stage's fingerprint."""
    _loaded: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def _cached(self, key, load):
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def base(self, spec: dict) -> str:
        """A model spec's base: hub names pass through; builtin names are built (once, cached) here."""
        key = ("base", spec["model"], json.dumps(spec.get("pilot_chunk"), sort_keys=True))
        resolve = functools.partial(resolve_model_name, spec["model"], self.embedded, spec["revision"])
        return self._cached(key, lambda: resolve(spec.get("pilot_chunk")))

    def load_base(self, spec: dict, dtype: str | None = None):
        return load_model(
            self.base(spec),
            revision=spec["revision"],
            trust_remote_code=spec["trust_remote_code"],
            device=self.state.device,
            dtype=dtype,
        )

    def tokenizer(self, spec: dict | None = None):
        spec = spec or self.tokenizer_spec
        return self._cached(
            ("tokenizer", spec["model"]),
            lambda: load_tokenizer(
                self.base(spec), revision=spec["revision"], trust_remote_code=spec["trust_remote_code"]
            ),
        )

    def sequences(self, split: str) -> pd.DataFrame:
        return self._cached(("rows", split), lambda: read_sequences(self.layout.data(split)))

    def canaries(self) -> pd.DataFrame | None:
        path = self.layout.data("canaries")
        return self._cached("canaries", lambda: pd.read_parquet(path) if path.exists() else None)

    def flagged(self) -> set[str] | None:
        """The example ids the filtering removed, or None when it was skipped."""
        flagging = json.loads(self.layout.filtering.read_text())
        return None if "skipped" in flagging else set(flagging["removed_ids"])

    def training_rows(self, without_flagged: bool = False) -> pd.DataFrame:
        """What training sees: D (less the flagged examples), plus each canary's copies (D stays the audited set)."""
        rows = self.sequences("train")
        if without_flagged:
            rows = rows[~rows["example_id"].isin(self.flagged())]
        canaries = self.canaries()
        return rows if canaries is None else inject_canaries(rows, canaries, self.canary_seed)

    def shared_vocabulary(self, teacher, student: dict) -> int:
        """The ids both models can read: the smaller of the teacher's and the student's embedding rows."""
        return min(
            teacher.config.get_text_config().vocab_size, model_vocab_size(self.base(student), model_from_spec(student))
        )

    def teacher(self, dtype: str):
        return self._cached(
            ("teacher", dtype),
            lambda: load_model(str(self.layout.model("teacher")), device=self.state.device, dtype=dtype),
        )

    def trained_model(self, name: str, dtype: str):
        """A model this run trained, for the stages that score it. Only the last one loaded is
        kept (besides the teacher): a model's scoring stages follow one another."""
        if name == "teacher":
            return self.teacher(dtype)
        key = ("trained", name, dtype)
        if key not in self._loaded:
            self.release_models(("trained",))
        return self._cached(
            key, lambda: load_model(str(self.layout.model(name)), device=self.state.device, dtype=dtype)
        )

    def release_models(self, kinds: tuple[str, ...] = ("teacher", "trained")) -> None:
        for key in [key for key in self._loaded if isinstance(key, tuple) and key[0] in kinds]:
            del self._loaded[key]


def _remove_leftovers(root: Path) -> None:
    """Temporary files and folders of a killed run (``*.tmp``, ``*.saving``): never results, since
    outputs are renamed into place only when whole."""
    for path in sorted(root.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        if path.name.endswith((".tmp", ".saving")):
            logger.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _saving_dir(path: Path) -> Path:
    """Where a training stage's ``Trainer.save_model`` writes before the folder is published. Every
    process must name the same folder (FSDP gathers the weights to the main process there)."""
    return path.parent / f".{path.name}.saving"


def _publish_model(tokenizer, path: Path, info: dict, work_dir: Path) -> None:
    """Main process: complete the saved weights in ``_saving_dir(path)`` and rename them onto ``path``."""
    saved = _saving_dir(path)
    (saved / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing here ever loads it
    tokenizer.save_pretrained(saved)
    write_json_atomic(saved / "kdmem_stage.json", info)
    if path.exists():
        shutil.rmtree(path)
    os.replace(saved, path)
    # The Trainer's checkpoints only serve to resume this stage, which is now done.
    shutil.rmtree(work_dir, ignore_errors=True)


def _git_revision() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    """What a result was computed with; the same for every stage of one ``kdmem run``."""
    import accelerate
    import datasets
    import transformers

    import kdmem

    return {
        "kdmem": kdmem.__version__,
        "git_revision": _git_revision(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
        },
    }


def _provenance(versions: dict, seeds: list[int], seconds: dict[str, float]) -> dict:
    return versions | {
        "hardware": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "processes": process_state().num_processes,
        },
        "seeds": seeds,
        "stage_seconds": seconds,
    }


# --- The stages' actions, in the order of the recipe -------------------------------------------
# Each action's compute, for --dry-run: 2N FLOPs a token for a forward pass, 6N for a training
# step, N the parameters of the model that runs.


def _parameters(sizes: Sizes, name: str) -> float | None:
    return {"teacher": sizes.teacher, CROSS_SCALE: sizes.cross_scale}.get(name, sizes.student)


def _model_outputs(layout: RunLayout, settings: dict) -> tuple[Path, ...]:
    return (layout.model(settings["name"]), layout.work(settings["name"]))


@stage_action(
    outputs=lambda layout, settings: (layout.data("train"), layout.data("validation"), layout.data("canaries"))
)
def prepare_data(
    ctx: RunContext, *, data, tokenizer: dict, canary_repeats: list[int], canary_seed: int, canary_key_length: int
) -> None:
    """D and validation (and the canaries, whose keys are their first ``canary_key_length`` tokens)."""
    tokens = ctx.tokenizer(tokenizer)
    splits = prepare_sequences(data, tokens)
    write_sequences(ctx.layout.data("validation"), splits.validation)
    if canary_repeats:
        canaries = make_canaries(
            CanaryConfig(repeats=canary_repeats, seed=canary_seed),
            len(tokens),
            data.seq_len,
            canary_key_length,
            tokens.all_special_ids,
        )
        write_parquet_atomic(ctx.layout.data("canaries"), canaries)
    write_sequences(ctx.layout.data("train"), splits.train)
    logger.info(
        "D: %d training and %d validation sequences of %d tokens",
        len(splits.train),
        len(splits.validation),
        data.seq_len,
    )


def _make_trackers(
    ctx: RunContext, name: str, tracking: dict | None, batch_size: int | None
) -> list[MemorizationTracker]:
    if not tracking:
        return []
    train = ctx.sequences("train")
    sample = train if tracking["examples"] is None else train.iloc[: tracking["examples"]]
    return [
        MemorizationTracker(
            sample, tracking["prefix_len"], tracking["suffix_len"], tracking["every_epochs"], batch_size, name
        )
    ]


def _prepare_to_train(ctx: RunContext, name: str) -> Path:
    """Free the last model scored for the one trained, and clear what a run killed while saving
    left; return where every process's ``Trainer`` saves model ``name``."""
    ctx.release_models(("trained",))
    if ctx.main:
        shutil.rmtree(_saving_dir(ctx.layout.model(name)), ignore_errors=True)
    return _saving_dir(ctx.layout.model(name))


def _publish_trained(ctx: RunContext, name: str, kind: str, seed: int, base: dict, callbacks) -> None:
    """Main process: publish model ``name``, saved by every process, with what made it."""
    if ctx.main:
        history = callbacks[0].history if callbacks else []
        info = {"stage": kind, "seed": seed, "base": ctx.base(base), "memorization_over_training": history}
        _publish_model(ctx.tokenizer(), ctx.layout.model(name), info, ctx.layout.work(name))


def _cross_entropy_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    return per_token(sizes.tokens, (6 * settings["training"].epochs, _parameters(sizes, settings["name"])))


@stage_action(outputs=_model_outputs, distributed=True, speed=True, flops=_cross_entropy_flops)
def train_with_cross_entropy(
    ctx: RunContext,
    *,
    name: str,
    kind: str,
    base: dict,
    training,
    seed: int,
    rows: str,
    tracking: dict | None,
    batch_size: int | None = None,
) -> dict | None:
    """The teacher, a baseline or a hard student: next-token cross-entropy on ``rows`` (``train``:
    D and canaries; ``hard``: the teacher's continuations; ``hard-kept``: those of the examples
    the filtering kept)."""
    if rows == "hard-kept":
        if ctx.flagged() is None:
            return {"skipped": "the filtering was skipped (filtering.json says why)"}
        data = ctx.sequences("hard")
        data = data[~data["example_id"].isin(ctx.flagged())]
    else:
        data = ctx.training_rows() if rows == "train" else ctx.sequences(rows)
    callbacks = _make_trackers(ctx, name, tracking, batch_size)
    save_to = _prepare_to_train(ctx, name)
    fine_tune(ctx.load_base(base), data, training, ctx.layout.work(name), seed, callbacks, save_to=save_to)
    _publish_trained(ctx, name, kind, seed, base, callbacks)
    return None


@stage_action(outputs=_model_outputs)
def adopt_checkpoint(ctx: RunContext, *, name: str, kind: str, base: dict) -> None:
    """A model trained by nobody, the pre-training pilot's teacher or baseline: checkpoint ``base``
    as given, saved into the run as model ``name`` (safetensors, in its own dtype) so that every
    scoring stage reads it as it reads a trained one. The main process runs it."""
    saving = _prepare_to_train(ctx, name)
    model = ctx.load_base(base, dtype="auto")
    model.save_pretrained(saving)
    del model
    info = {"stage": kind, "given": True, "seed": None, "base": ctx.base(base), "memorization_over_training": []}
    _publish_model(ctx.tokenizer(), ctx.layout.model(name), info, ctx.layout.work(name))


def _teacher_forward_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    return per_token(sizes.tokens, (2, sizes.teacher))


@stage_action(
    outputs=lambda layout, settings: (layout.teacher_cache(settings["rows"]),),
    distributed=True,
    speed=True,
    flops=_teacher_forward_flops,
)
def build_cache(
    ctx: RunContext,
    *,
    rows: str,
    student: dict,
    kind: str,
    top_k: int,
    tail_samples: int,
    tail_draws: int,
    temperatures: list[float],
    dtype: str,
    batch_size: int | None = None,
) -> dict | None:
    """The teacher cache over ``rows`` (``train``, or ``kept``: the examples the filtering kept),
    read by every soft student of those rows."""
    kept = rows == "kept"
    if kept and ctx.flagged() is None:
        return {"skipped": "the filtering was skipped (filtering.json says why)"}
    data = ctx.training_rows(without_flagged=kept)
    root = ctx.layout.teacher_cache(rows)
    settings = {
        "kind": kind,
        "top_k": top_k,
        "tail_samples": tail_samples,
        "tail_draws": tail_draws,
        "temperatures": temperatures,
    }
    if complete_teacher_cache(root, data, teacher_id=ctx.teacher_id, **settings) is None:
        teacher = ctx.teacher(dtype)  # only now: a complete cache never loads the teacher
        build_teacher_cache(
            teacher,
            data,
            root,
            teacher_id=ctx.teacher_id,
            vocab_size=ctx.shared_vocabulary(teacher, student),
            batch_size=batch_size or 32,
            **settings,
        )
    return None


def _soft_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    """The student's steps, and the teacher's forward passes (live) or output layer (a
    hidden-state cache, which recomputes the teacher's logits)."""
    epochs = settings["training"].epochs
    if not settings["cached"]:
        return per_token(sizes.tokens, (6 * epochs, sizes.student), (2 * epochs, sizes.teacher))
    recomputed = config.soft.cache_kind == "hidden" and sizes.head is not None
    return per_token(sizes.tokens, (6 * epochs, sizes.student), *([(2 * epochs, sizes.head)] if recomputed else []))


@stage_action(outputs=_model_outputs, distributed=True, speed=True, flops=_soft_flops)
def distill_softly(
    ctx: RunContext,
    *,
    name: str,
    student: dict,
    kind: str,
    temperature: float,
    jsd_beta: float,
    ce_weight: float,
    training,
    seed: int,
    rows: str,
    cached: bool,
    teacher_dtype: str,
    tracking: dict | None,
    batch_size: int | None = None,
) -> dict | None:
    """A soft student: the divergence from the teacher's softened distributions over ``rows``
    (``train``, or ``kept``), read from the teacher cache when ``cached``, else from the teacher."""
    kept = rows == "kept"
    if kept and ctx.flagged() is None:
        return {"skipped": "the filtering was skipped (filtering.json says why)"}
    data = ctx.training_rows(without_flagged=kept)
    soft = SoftDistillConfig(
        kind=kind, temperature=temperature, jsd_beta=jsd_beta, ce_weight=ce_weight, training=training
    )
    cache = TeacherLogitCache(ctx.layout.teacher_cache(rows)) if cached else None
    teacher = None if cached else ctx.teacher(teacher_dtype)
    callbacks = _make_trackers(ctx, name, tracking, batch_size)
    save_to = _prepare_to_train(ctx, name)
    work = ctx.layout.work(name)
    distill(ctx.load_base(student), teacher, data, soft, work, seed, callbacks, cache=cache, save_to=save_to)
    _publish_trained(ctx, name, "soft", seed, student, callbacks)
    return {"temperature": temperature}


@stage_action(outputs=lambda layout, settings: (layout.data("hard"),), distributed=True, flops=_teacher_forward_flops)
def generate_hard_data(
    ctx: RunContext, *, prefix_len: int, seq_len: int, student: dict, dtype: str, generation_batch_size: int
) -> None:
    """The teacher's greedy continuation of every training row, for the hard students. The
    teacher writes only ids the student can read (the smaller embedding matrix)."""
    teacher = ctx.teacher(dtype)
    shared_vocabulary = ctx.shared_vocabulary(teacher, student)

    def generate(share: pd.DataFrame, offset: int) -> pd.DataFrame:
        generated = greedy_continuations(
            teacher,
            as_tensor(share),
            prefix_len,
            seq_len,
            generation_batch_size,
            desc="hard data",
            vocab_size=shared_vocabulary,
        )
        return pd.DataFrame(
            {"example_id": share["example_id"].to_numpy(), "input_ids": list(generated.numpy().astype("int32"))}
        )

    hard = split_across_processes(ctx.training_rows(), generate, ctx.layout.work("parts-hard-data"), ctx.state)
    if ctx.main:
        write_sequences(ctx.layout.data("hard"), hard)


def _skip_reason(ctx: RunContext, name: str) -> dict | None:
    """Why model ``name``'s scoring is skipped (it was not trained), or None."""
    marker = read_marker(ctx.layout.root, name)
    return {"skipped": f"{name} was not trained: {marker['skipped']}"} if marker and "skipped" in marker else None


def _scoring_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    return per_token(sizes.tokens, (2, _parameters(sizes, settings["name"])))


@stage_action(
    outputs=lambda layout, settings: (layout.memorization(settings["name"]),),
    distributed=True,
    speed=True,
    flops=_scoring_flops,
)
def extract(ctx: RunContext, *, name: str, extraction: dict, dtype: str, batch_size: int | None = None) -> dict:
    """Discoverable memorization of every example of D under model ``name`` (exact, and
    approximate on a sample): ``memorization/NAME.parquet``."""
    if skipped := _skip_reason(ctx, name):
        return skipped
    ext = ExtractionConfig(**extraction, batch_size=batch_size)
    model = ctx.trained_model(name, dtype)
    train = ctx.sequences("train")
    sample = sample_positions(len(train), ext.approximate_sample, ext.seed)

    def share_verdicts(share: pd.DataFrame, offset: int) -> pd.DataFrame:
        positions = [p - offset for p in sample if offset <= p < offset + len(share)]
        return measure_memorization(model, share, ext, positions, desc=f"extract {name}")

    verdicts = split_across_processes(train, share_verdicts, ctx.layout.work(f"parts-extract-{name}"), ctx.state)
    if ctx.main:
        write_parquet_atomic(ctx.layout.memorization(name), verdicts)
    return {"batch_size": verdicts.attrs["batch_size"]}  # what scoring the model batches by


def _scoring_batch(ctx: RunContext, name: str, batch_size: int | None) -> int:
    """The configured batch size, else the one the model's extraction found to fit: a speed
    setting, so read from its marker but never fingerprinted."""
    return batch_size or read_marker(ctx.layout.root, f"extract:{name}")["batch_size"]


def _validation_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    return per_token(sizes.held_out_tokens, (2, _parameters(sizes, settings["name"])))


@stage_action(
    outputs=lambda layout, settings: (layout.validation(settings["name"]),),
    distributed=True,
    speed=True,
    flops=_validation_flops,
)
def score_validation(ctx: RunContext, *, name: str, dtype: str, batch_size: int | None = None) -> dict | None:
    """Model ``name``'s loss on the held-out sequences: ``validation/NAME.json``. ``Trainer.evaluate``
    splits them across the processes."""
    if skipped := _skip_reason(ctx, name):
        return skipped
    loss = validation_loss(
        ctx.trained_model(name, dtype), ctx.sequences("validation"), batch_size=_scoring_batch(ctx, name, batch_size)
    )
    if ctx.main:
        write_json_atomic(ctx.layout.validation(name), {"val_loss": loss, "val_ppl": math.exp(loss)})
    return None


def _membership_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    """D and the held-out sequences under the model and, with a reference, its base."""
    passes = 1 + settings["reference"]
    return per_token(sizes.scored_tokens, (2 * passes, _parameters(sizes, settings["name"])))


@stage_action(
    outputs=lambda layout, settings: (layout.membership(settings["name"]),),
    distributed=True,
    speed=True,
    flops=_membership_flops,
)
def score_membership(
    ctx: RunContext, *, name: str, base: dict, min_k: float, reference: bool, dtype: str, batch_size: int | None = None
) -> dict | None:
    """Membership inference on model ``name``: every score of D (members) and of the held-out
    sequences (non-members), and how well each separates them: ``membership/NAME.parquet``.
    Each process scores its share; the main one writes."""
    if skipped := _skip_reason(ctx, name):
        return skipped
    model, batch_size = ctx.trained_model(name, dtype), _scoring_batch(ctx, name, batch_size)
    against = ctx.load_base(base, dtype) if reference else None
    train, validation = ctx.sequences("train"), ctx.sequences("validation")
    both = pd.concat([train.assign(split="train"), validation.assign(split="validation")], ignore_index=True)

    def share_scores(share: pd.DataFrame, offset: int) -> pd.DataFrame:
        return split_scores(model, share, ctx.tokenizer(), against, batch_size, min_k)

    scores = split_across_processes(both, share_scores, ctx.layout.work(f"parts-membership-{name}"), ctx.state)
    if ctx.main:
        metrics = membership_metrics(scores[scores["split"] == "train"], scores[scores["split"] == "validation"])
        write_membership(ctx.layout.membership(name), scores, metrics, min_k)
    return None


@stage_action(outputs=lambda layout, settings: (layout.canaries(settings["name"]),), speed=True)
def score_canaries(
    ctx: RunContext,
    *,
    name: str,
    num_candidates: int,
    seed: int,
    prefix_len: int,
    suffix_len: int,
    dtype: str,
    batch_size: int | None = None,
) -> dict | None:
    """The exposure of each canary's secret under model ``name``, and whether its key extracts
    it: ``canaries/NAME.parquet``."""
    if skipped := _skip_reason(ctx, name):
        return skipped
    tokenizer = ctx.tokenizer()
    exposure = canary_exposure(
        ctx.trained_model(name, dtype),
        ctx.canaries(),
        prefix_len,
        suffix_len,
        vocab_size=len(tokenizer),
        excluded_token_ids=tokenizer.all_special_ids,
        num_candidates=num_candidates,
        seed=seed,
        batch_size=_scoring_batch(ctx, name, batch_size),
    )
    write_parquet_atomic(ctx.layout.canaries(name), exposure)
    return None


@stage_action(outputs=lambda layout, settings: (layout.utility_documents,))
def write_utility_documents(ctx: RunContext, *, tasks: list[str], definitions: dict[str, str], lm_eval: str) -> dict:
    """kdmem's own utility tasks among ``tasks`` (their YAML in ``definitions``), written from the
    held-out sequences, decoded: ``utility/tasks/TASK.jsonl``."""
    tokenizer = ctx.tokenizer()
    validation = ctx.sequences("validation")["input_ids"]
    texts = [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in validation]
    return {"documents": write_local_documents(texts, ctx.layout.utility_documents, tasks)}


def _utility_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    """A forward pass over each task's requests (``kdmem.utility.task_tokens``)."""
    tokens = [task_tokens(task, config, settings["limit"]) for task in settings["tasks"]]
    return None if None in tokens else per_token(sum(tokens), (2, _parameters(sizes, settings["name"])))


@stage_action(
    outputs=lambda layout, settings: (
        layout.utility(settings["name"]),
        layout.utility(settings["name"]).with_suffix(".parquet"),
    ),
    flops=_utility_flops,
)
def evaluate_downstream(
    ctx: RunContext,
    *,
    name: str,
    tasks: list[str],
    limit: int | None,
    batch_size: int,
    bootstrap_iters: int,
    dtype: str,
) -> dict | None:
    """Model ``name`` on the utility tasks, by lm-eval's ``simple_evaluate``: ``utility/NAME.json``
    (lm-eval's results) and ``utility/NAME.parquet`` (per sample). The main process runs it."""
    if skipped := _skip_reason(ctx, name):
        return skipped
    work = ctx.layout.work(f"utility-{name}")
    results = evaluate_utility(
        ctx.trained_model(name, dtype),
        ctx.tokenizer(),
        tasks,
        ctx.layout.utility_documents,
        work,
        limit=limit,
        batch_size=batch_size,
        bootstrap_iters=bootstrap_iters,
    )
    write_utility(ctx.layout.utility(name), results)
    shutil.rmtree(work, ignore_errors=True)
    return None


def _summary_row(
    layout: RunLayout, name: str, prefix_lens: list[int], membership: bool, canaries: bool, utility: bool
) -> dict:
    """Model ``name``'s row of the summary, from what its scoring stages wrote."""
    verdicts = pd.read_parquet(layout.memorization(name))
    memorized = int(verdicts["memorized"].sum())
    row = {
        "memorized": memorized,
        "examples": len(verdicts),
        "rate": memorized / len(verdicts),
        **json.loads(layout.validation(name).read_text()),
        "rechecked": int(verdicts["rechecked"].sum()),
        **{f"rate_p{length}": float(verdicts[f"memorized_p{length}"].mean()) for length in prefix_lens},
        **approximate_summary(verdicts),
    }
    if membership:
        row["membership"] = read_membership_metrics(layout.membership(name))
    if utility:
        row["utility"] = json.loads(layout.utility(name).read_text())["metrics"]
    if canaries:
        row["canaries"] = pd.read_parquet(layout.canaries(name))[
            ["canary_id", "repeats", "exposure", "extractable"]
        ].to_dict("records")
    return row


def _features_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    """The first seed's four models: the teacher and three of the student's size."""
    return per_token(sizes.tokens, (2, sizes.teacher), (6, sizes.student))


@stage_action(outputs=lambda layout, settings: (layout.features,), distributed=True, speed=True, flops=_features_flops)
def compute_features(
    ctx: RunContext, *, last_k: int, suffix_span: list[int], dtype: str, batch_size: int | None = None
) -> None:
    """``features.parquet``: per example of D, what the first seed's models make of it (zlib,
    perplexities, the teacher-baseline KL, entropies over the spans)."""
    model_feature_table(
        ctx.layout,
        ctx.sequences("train"),
        ctx.state,
        dtype=dtype,
        batch_size=batch_size,
        last_k=last_k,
        suffix_span=tuple(suffix_span),
    )


@stage_action(outputs=lambda layout, settings: (layout.filtering,))
def flag_for_filtering(ctx: RunContext, *, student: str, students: list[str], filtering, seed: int) -> None:
    """``filtering.json``: the examples the predictor flags as what ``student`` memorizes (the
    union over its seeds' models ``students``), to be removed before it is distilled again."""
    features = pd.read_parquet(ctx.layout.features)
    target = set().union(*(memorized_ids(pd.read_parquet(ctx.layout.memorization(name))) for name in students))
    stand_in = {}
    if len(target) < MIN_MEMORIZED_TO_FILTER and filtering.stand_in_examples:
        target = stand_in_memorized(pd.read_parquet(ctx.layout.memorization(students[0])), filtering.stand_in_examples)
        stand_in = {
            "stand_in": f"a rehearsal: the {len(target)} examples the {student} student came closest to "
            "reproducing stand in for its memorized set"
        }
    try:
        removed, info = flag_examples(
            features, features["example_id"].isin(target).to_numpy(), filtering.target_recall, seed
        )
        info |= stand_in
    except ValueError as error:
        # What the students memorized decides this, not the config alone: the run goes on,
        # and the report says why there is no filtered student.
        info, removed = {"skipped": f"{error}; or set filtering.student to the other student"}, set()
        logger.warning("filtering of the %s student skipped: %s", student, info["skipped"])
    write_json_atomic(ctx.layout.filtering, info | {"removed_ids": sorted(removed)})


def _second_family_flops(sizes: Sizes, *, config, settings: dict) -> float | None:
    """The second family's whole graph, at this family's sizes: an estimate."""
    costs = [stage.flops(sizes) if stage.flops else 0.0 for stage in stage_graph(second_family_config(config))]
    return None if None in costs else sum(costs)


# Its main output is its summary: a stale second family is rerun in place, and reuses what its own
# markers say is current.
@stage_action(
    outputs=lambda layout, settings: (layout.second_family / "summary.json",),
    distributed=True,
    flops=_second_family_flops,
)
def run_second_family(ctx: RunContext, *, config: dict) -> None:
    """The second family's whole run (``config``, from ``second_family_config``) in its own folder,
    with its own stage markers: a killed run resumes inside it too. Its stage is only ever run when
    new or stale (and a stale one only with ``--overwrite``), so the inner run may recompute."""
    run(config_from_dict(config | {"name": f"{ctx.run_name}-second-family"}), ctx.layout.second_family, overwrite=True)


@stage_action(outputs=lambda layout, settings: (layout.cross_family,))
def compare_families(ctx: RunContext) -> None:
    """``cross_family.json``: this run's models against the second family's (``kdmem compare``)."""
    write_json_atomic(ctx.layout.cross_family, compare_runs(ctx.layout.root, ctx.layout.second_family))


@stage_action(outputs=lambda layout, settings: (layout.summary,), rebuilt_freely=True)
def summarize(
    ctx: RunContext,
    *,
    models: list[str],
    prefix_len: int,
    suffix_len: int,
    prefix_lens: list[int],
    seq_len: int,
    membership: bool,
    canaries: bool,
    utility: bool,
    graph_names: list[str],
) -> None:
    """``summary.json``: every trained model's row (what its scoring stages measured), its
    memorization over training, the models trained by nobody (``given_models``: the pre-training
    pilot's teacher and baseline), the stage times."""
    layout = ctx.layout
    trained = [name for name in models if "skipped" not in read_marker(layout.root, name)]
    rows = {name: _summary_row(layout, name, prefix_lens, membership, canaries, utility) for name in trained}
    made = {name: json.loads(layout.model_done(name).read_text()) for name in trained}
    summary = {
        "name": ctx.run_name,
        "models": rows,
        "extraction": {"prefix_len": prefix_len, "suffix_len": suffix_len},
        "memorization_over_training": {name: made[name]["memorization_over_training"] for name in trained},
        "given_models": [name for name in trained if made[name].get("given")],
        "data": {
            "train_examples": len(ctx.sequences("train")),
            "validation_examples": len(ctx.sequences("validation")),
            "seq_len": seq_len,
        },
        "stage_seconds": stage_seconds(layout.root, graph_names),
    }
    if layout.work_root.exists() and not any(layout.work_root.iterdir()):
        layout.work_root.rmdir()
    write_json_atomic(layout.summary, summary)


@stage_action(
    outputs=lambda layout, settings: (layout.analysis, layout.figures, layout.categories), rebuilt_freely=True
)
def run_analysis(ctx: RunContext) -> None:
    """``analysis.json``, ``categories.parquet`` and the figures: every analysis of the paper on
    the finished run."""
    analyze(ctx.layout.root)


@stage_action(outputs=lambda layout, settings: (layout.report_html, layout.report_markdown), rebuilt_freely=True)
def render_report(ctx: RunContext) -> None:
    """``report.html`` and ``report.md``."""
    write_report(ctx.layout.root)


SCORING_ACTIONS = (extract, score_validation, score_membership, score_canaries, evaluate_downstream)
"""What a trained model's scoring stages run; the summary reads them all."""


# --- The recipe ----------------------------------------------------------------------------------


def model_spec(model: ModelConfig | BaselineConfig, config: ExperimentConfig) -> dict:
    """What a stage reads of a model section to load its base (``model_from_spec`` inverts it). An
    embedded base at a pilot revision (``k``, ``k+1``) also names what its checkpoints are
    pre-trained through: D's chunk of the stream, and how (``embedded.pilot_training``)."""
    spec = {"model": model.model, "revision": model.revision, "trust_remote_code": model.trust_remote_code}
    if model.model.startswith("builtin:") and model.revision in PILOT_REVISIONS:
        chunk = {key: value for key, value in dataclasses.asdict(config.data).items() if key in PILOT_CHUNK_KEYS}
        spec |= {"pilot_chunk": chunk, "pilot_training": dataclasses.asdict(config.embedded.pilot_training)}
    return spec


PILOT_CHUNK_KEYS = ("source", "subset", "split", "text_field", "seq_len", "packing", "sequence_range")
"""What names D's chunk of the stream (``data.sequence_range`` and how the stream is read)."""


def model_from_spec(spec: dict) -> ModelConfig:
    """The ``ModelConfig`` of a model spec, as the loading helpers take it (``model_spec`` inverted)."""
    return ModelConfig(model=spec["model"], revision=spec["revision"], trust_remote_code=spec["trust_remote_code"])


def run_context(config: ExperimentConfig, layout: RunLayout, graph: list[Stage] | None = None) -> RunContext:
    """The context the stages of ``config`` (its ``graph``, if built already) run in, over the
    run folder ``layout``."""
    graph = graph or stage_graph(config, layout)
    # The cache knows its teacher by the teacher stage's fingerprint (its settings and data), not
    # by a path, which changes with the working directory or an --output spelled another way.
    teacher_id = f"kdmem teacher stage {fingerprints(graph)['teacher']}"
    return RunContext(
        layout,
        process_state(),
        config.embedded,
        model_spec(config.teacher, config),
        config.canaries.seed,
        run_name=config.name,
        teacher_id=teacher_id,
    )


class Recipe:
    """A stage graph being built: ``add`` appends one stage of an action, whose kind (outputs,
    processes, compute) the action declares with ``@stage_action``; the ``add_*`` helpers add the
    stages the recipe repeats, from the run's config."""

    def __init__(self, config: ExperimentConfig, layout: RunLayout):
        self.config, self.layout = config, layout
        self.stages: list[Stage] = []
        self.teacher, self.student = model_spec(config.teacher, config), model_spec(config.student, config)
        self.baseline = model_spec(config.baseline, config) if config.baseline.model else None
        # What membership's reference scores the teacher against: the base it was fine-tuned from;
        # a given teacher's own checkpoint where the student starts (the pilot's step k).
        self.teacher_reference = self.teacher
        if not config.teacher.fine_tune:
            self.teacher_reference = model_spec(
                dataclasses.replace(config.teacher, revision=config.student.revision), config
            )
        self.cross_scale = None
        if config.cross_scale.model:
            self.cross_scale = model_spec(config.cross_scale, config)
            if config.cross_scale.model == "builtin:tiny-small":  # the size it is built at
                self.cross_scale["embedded_size"] = dataclasses.asdict(config.embedded.small)
        ext = config.extraction
        self.speed = {"batch_size": ext.batch_size}
        # Memorization over training is part of a training stage's output: what it measures shapes it.
        self.tracking = None
        if ext.track_every_epochs:
            self.tracking = {
                "every_epochs": ext.track_every_epochs,
                "examples": ext.track_examples,
                "prefix_len": ext.prefix_len,
                "suffix_len": ext.suffix_len,
            }

    def add(self, name: str, action, settings: dict, needs: tuple[str, ...] = ()) -> str:
        """Append stage ``name``: ``action`` run with ``settings`` once the stages ``needs`` are done."""
        kind = action.stage_kind
        self.stages.append(
            Stage(
                name,
                action,
                settings,
                tuple(needs),
                kind.outputs(self.layout, settings),
                distributed=kind.distributed,
                speed=self.speed if kind.speed else {},
                flops=functools.partial(kind.flops, config=self.config, settings=settings) if kind.flops else None,
                rebuilt_freely=kind.rebuilt_freely,
            )
        )
        return name

    def add_training_stage(self, name: str, kind: str, base: dict, training, seed: int, rows: str, needs) -> str:
        """The teacher, a baseline or a hard student (``kind``): cross-entropy on ``rows``."""
        settings = {"name": name, "kind": kind, "base": base, "training": training, "seed": seed, "rows": rows}
        return self.add(name, train_with_cross_entropy, settings | {"tracking": self.tracking}, needs)

    def add_soft_student(self, name: str, temperature: float, seed: int, rows: str, needs, tracked=True) -> str:
        """A soft student at ``temperature`` on ``rows``; ``tracked``: audited while it trains."""
        soft = self.config.soft
        settings = {
            "name": name,
            "student": self.student,
            "kind": soft.kind,
            "temperature": temperature,
            "jsd_beta": soft.jsd_beta,
            "ce_weight": soft.ce_weight,
            "training": soft.training,
            "seed": seed,
            "rows": rows,
            "cached": soft.teacher_cache,
            "teacher_dtype": self.config.inference_dtype,
            "tracking": self.tracking if tracked else None,
        }
        return self.add(name, distill_softly, settings, needs)

    def add_teacher_cache(self, rows: str, needs) -> str:
        """The teacher's cache over ``rows``, which the soft students of those rows read."""
        soft = self.config.soft
        settings = {
            "rows": rows,
            "student": self.student,
            "kind": soft.cache_kind,
            "dtype": self.config.inference_dtype,
        }
        settings |= {"top_k": 0, "tail_samples": 0, "tail_draws": 1, "temperatures": []}
        if soft.cache_kind == "sampled":  # its samples, and the temperatures it serves
            settings |= {
                "top_k": soft.cache_top_k,
                "tail_samples": soft.cache_tail_samples,
                "tail_draws": soft.cache_draws,
                "temperatures": list(soft.cache_temperatures),
            }
        return self.add(f"cache:{rows}", build_cache, settings, needs)

    def add_utility_documents(self, tasks: list[str]) -> str:
        """The documents of kdmem's own utility tasks, from the held-out sequences; the stage's
        settings hold every task's definition and lm-eval's version, which the scores depend on."""
        definitions = {task: LOCAL_TASKS.get(task, "lm-eval's own") for task in tasks}
        settings = {"tasks": tasks, "definitions": definitions, "lm_eval": lm_eval_version()}
        return self.add("utility", write_utility_documents, settings, ("data",))

    def add_scoring_stages(self, name: str) -> None:
        """Model ``name``'s scoring stages: each reads the model and its own settings only, so a
        scoring setting (membership.min_k) rescores that and nothing else."""
        config, dtype, needs = self.config, self.config.inference_dtype, (name, "data")
        speed_only = ("batch_size", "track_every_epochs", "track_examples")
        verdicts = {k: v for k, v in dataclasses.asdict(config.extraction).items() if k not in speed_only}
        self.add(f"extract:{name}", extract, {"name": name, "extraction": verdicts, "dtype": dtype}, needs)
        self.add(f"validation:{name}", score_validation, {"name": name, "dtype": dtype}, needs)
        if config.membership.enabled:
            base = {"teacher": self.teacher_reference, CROSS_SCALE: self.cross_scale}.get(name, self.student)
            membership = {"min_k": config.membership.min_k, "reference": config.membership.reference}
            self.add(
                f"membership:{name}",
                score_membership,
                {"name": name, "base": base, **membership, "dtype": dtype},
                needs,
            )
        if config.canaries.repeats:
            canaries = {"num_candidates": config.canaries.num_candidates, "seed": config.canaries.seed}
            spans = {"prefix_len": config.extraction.prefix_len, "suffix_len": config.extraction.suffix_len}
            self.add(f"canaries:{name}", score_canaries, {"name": name, **canaries, **spans, "dtype": dtype}, needs)
        if config.utility.tasks:
            utility = dataclasses.asdict(config.utility)
            self.add(
                f"utility:{name}", evaluate_downstream, {"name": name, **utility, "dtype": dtype}, (name, "utility")
            )

    def add_reading_stages(self) -> None:
        """The summary of every scoring stage so far, the analysis and the report."""
        config, ext = self.config, self.config.extraction
        settings = {
            "models": model_names(config),
            "prefix_len": ext.prefix_len,
            "suffix_len": ext.suffix_len,
            "prefix_lens": ext.prefix_lens,
            "seq_len": config.data.seq_len,
            "membership": config.membership.enabled,
            "canaries": bool(config.canaries.repeats),
            "utility": bool(config.utility.tasks),
            "graph_names": [stage.name for stage in self.stages],
        }
        scored = [stage.name for stage in self.stages if stage.action in SCORING_ACTIONS]
        self.add("summary", summarize, settings, scored)
        optional = [name for name in ("filtering", "cross_family") if any(s.name == name for s in self.stages)]
        self.add("analysis", run_analysis, {}, ("summary", "features", *optional))
        self.add("report", render_report, {}, ("analysis",))


def _shared_embedded_settings(config: ExperimentConfig) -> dict:
    """The embedded family's settings, which every stage reads through the data's tokenizer, less
    the third base's size (``embedded.small``) and the pilot's pre-training (``pilot_training``):
    only the models that need them read them, and their specs name them, so that a finished run
    stays current when they change."""
    return {key: value for key, value in jsonable(config.embedded).items() if key not in ("small", "pilot_training")}


def stage_graph(config: ExperimentConfig, layout: RunLayout | None = None) -> list[Stage]:
    """Every stage of ``kdmem run`` for ``config``, in order: the one place that loops over seeds,
    temperatures and the filtering. Nothing is loaded; ``--dry-run`` plans from it."""
    recipe = Recipe(config, layout or RunLayout(Path("runs") / config.name))
    ext, first_seed, dtype = config.extraction, config.seeds[0], config.inference_dtype
    teacher, student = recipe.teacher, recipe.student
    # Data: D, validation and canaries, tokenized by the teacher base's tokenizer.
    data = {
        "data": config.data,
        "tokenizer": teacher | {"embedded": _shared_embedded_settings(config)},
        "canary_repeats": config.canaries.repeats,
        "canary_seed": config.canaries.seed,
        "canary_key_length": ext.prefix_len if config.canaries.repeats else 0,
    }
    recipe.add("data", prepare_data, data)
    if config.teacher.fine_tune:
        recipe.add_training_stage(
            "teacher", "teacher", teacher, config.teacher.training, first_seed, "train", ("data",)
        )
    else:  # the pre-training pilot's: a checkpoint that saw D in pre-training, trained by nobody
        recipe.add("teacher", adopt_checkpoint, {"name": "teacher", "kind": "teacher", "base": teacher}, ("data",))
    # The soft students read the teacher through its cache, when there is one.
    soft_source = recipe.add_teacher_cache("train", ("teacher",)) if config.soft.teacher_cache else "teacher"
    hard = {"prefix_len": config.hard.prefix_len, "seq_len": config.data.seq_len, "student": student, "dtype": dtype}
    recipe.add(
        "hard_data",
        generate_hard_data,
        hard | {"generation_batch_size": config.hard.generation_batch_size},
        ("teacher",),
    )
    # Per seed: the baseline (cross-entropy, the student's size), the soft and the hard student.
    for seed in config.seeds:
        suffix = seed_suffix(seed, config)
        if recipe.baseline:  # a given checkpoint (one seed: the config says so)
            given = {"name": "baseline", "kind": "baseline", "base": recipe.baseline}
            recipe.add("baseline", adopt_checkpoint, given, ("data",))
        else:
            recipe.add_training_stage(
                "baseline" + suffix, "baseline", student, config.student.training, seed, "train", ("data",)
            )
        recipe.add_soft_student("soft" + suffix, config.soft.temperature, seed, "train", (soft_source,))
        recipe.add_training_stage("hard" + suffix, "hard", student, config.hard.training, seed, "hard", ("hard_data",))
    # The temperature sweep: one more soft student per temperature (first seed, not tracked).
    for temperature, name in temperature_sweep(config).items():
        if name != "soft":
            recipe.add_soft_student(name, temperature, first_seed, "train", (soft_source,), tracked=False)
    # Cross-scale: another size of the student's family, fine-tuned on D like the baseline.
    if recipe.cross_scale:
        cross_scale = config.cross_scale
        recipe.add_training_stage(
            CROSS_SCALE, "cross-scale", recipe.cross_scale, cross_scale.training, first_seed, "train", ("data",)
        )
    # Downstream utility: kdmem's own tasks are written from the held-out sequences once.
    if config.utility.tasks:
        recipe.add_utility_documents(config.utility.tasks)
    # Every trained model: extraction, then scoring (the filtered student's once it exists).
    filtered = filtered_name(config)
    for name in model_names(config):
        if name != filtered or not config.filtering.enabled:
            recipe.add_scoring_stages(name)
    features = {"last_k": ext.suffix_len, "suffix_span": [ext.prefix_len, ext.suffix_len], "dtype": dtype}
    recipe.add("features", compute_features, features, (*FIRST_SEED_MODELS, "data"))
    # Filtering: remove what the predictor flags, distill the student again (first seed).
    if config.filtering.enabled:
        kind = config.filtering.student
        students = [kind + seed_suffix(seed, config) for seed in config.seeds]
        flagging = {"student": kind, "students": students, "filtering": config.filtering, "seed": first_seed}
        recipe.add("filtering", flag_for_filtering, flagging, ("features", *(f"extract:{s}" for s in students)))
        if kind == "soft":
            source = (
                recipe.add_teacher_cache("kept", ("teacher", "filtering")) if config.soft.teacher_cache else "teacher"
            )
            recipe.add_soft_student(filtered, config.soft.temperature, first_seed, "kept", ("filtering", source))
        else:  # the teacher's continuations of the kept examples (and of the canaries' copies)
            needs = ("filtering", "hard_data")
            recipe.add_training_stage(filtered, "hard", student, config.hard.training, first_seed, "hard-kept", needs)
        recipe.add_scoring_stages(filtered)
    # The second family: the same documents and recipe under another family, then the two compared.
    if config.second_family.enabled:
        family = jsonable(second_family_config(config))  # as a fingerprint holds it
        recipe.add("second_family", run_second_family, {"config": {k: v for k, v in family.items() if k != "name"}})
        compared = ("second_family", *(f"extract:{name}" for name in FIRST_SEED_MODELS))
        recipe.add("cross_family", compare_families, {}, compared)
    recipe.add_reading_stages()
    return recipe.stages


def run(
    config: ExperimentConfig, output: str | Path | None = None, *, overwrite: bool = False, documents=None
) -> dict:
    """Run (or finish) the experiment in ``output`` (default ``runs/NAME``); return the summary.

    ``documents``, in memory (a ``datasets.Dataset``, a pandas DataFrame with a
    ``data.text_field`` column, or a list of strings), replace ``data.source``: they are written
    to ``OUT/source/documents-HASH.parquet``, which the run's config then names.

    Under ``accelerate launch`` with N processes, training stages are one ``Trainer`` run across
    all of them (DDP, FSDP or DeepSpeed, as accelerate is configured); extraction, membership,
    features, the teacher cache and the hard-KD generation split D between the processes; the
    rest (data preparation, filtering, summary, analysis, report) runs on the main process while
    the others wait. Only the main process writes.
    """
    config.validate()
    check_tasks(config.utility.tasks)
    state = process_state()
    layout = RunLayout(Path(output) if output else Path("runs") / config.name)
    if documents is not None:
        with state.main_process_first():  # the main process writes the file; the others find it
            source = write_documents(documents, layout.root / "source", config.data.text_field)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=str(source.resolve())))
    graph = stage_graph(config, layout)
    earlier_kdmem = layout.config.exists() and not (layout.root / "stages").exists()
    state.wait_for_everyone()  # every process has looked before the main one writes
    with state.main_process_first():  # the main process checks (or clears) the folder first
        if earlier_kdmem and not overwrite:
            raise ConfigError(
                f"{layout.root} holds a run of an earlier kdmem (no stages/ markers). Use another --output, "
                "or pass --overwrite to discard it."
            )
        if earlier_kdmem and state.is_main_process:
            shutil.rmtree(layout.root)
        check_markers(graph, layout.root, overwrite and state.is_main_process)
        if state.is_main_process:
            (layout.root / "stages").mkdir(
                parents=True, exist_ok=True
            )  # before the config: a folder of this kdmem from its start
            _remove_leftovers(layout.root)
            save_config(config, layout.config)
    context = run_context(config, layout, graph)
    check_same_vocabulary(context.tokenizer(), context.tokenizer(model_spec(config.student, config)))
    for role in ("cross_scale", "baseline"):
        if getattr(config, role).model:
            check_same_vocabulary(
                context.tokenizer(), context.tokenizer(model_spec(getattr(config, role), config)), role
            )
    versions = _versions()
    names = [stage.name for stage in graph]
    execute(graph, context, versions, lambda: _provenance(versions, config.seeds, stage_seconds(layout.root, names)))
    context.release_models()
    summary = json.loads(layout.summary.read_text())
    if state.is_main_process:
        logger.info("\n%s", headline_table(summary))
        logger.info("report: %s", layout.report_html)
    return summary
