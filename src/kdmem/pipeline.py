"""``kdmem run``: the paper's pipeline, stage by stage, skipping every stage whose output exists.

    bases -> data -> teacher -> baseline -> soft student -> hard data -> hard student
          -> evaluation (validation loss, memorization) -> summary and headline table

Every output is written under a temporary name and renamed when whole, so a killed run leaves
no half-written file and a rerun on the same folder continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from kdmem.config import ConfigError, ExperimentConfig, config_to_dict, load_config, save_config
from kdmem.data import as_tensor, prepare_sequences, read_sequences, write_sequences
from kdmem.analysis.analyze import analyze, memorized_over_seeds, model_feature_table
from kdmem.analysis.filtering import MIN_MEMORIZED_TO_FILTER, flag_examples, stand_in_memorized
from kdmem.io import process_state, split_across_processes, write_json_atomic, write_parquet_atomic
from kdmem.layout import RunLayout, filtered_name, model_names, seed_suffix, temperature_sweep
from kdmem.memorization import MemorizationTracker, approximate_summary, measure_memorization, sample_positions
from kdmem.memorization.canaries import canary_exposure, inject_canaries, make_canaries
from kdmem.memorization.membership import membership_metrics, split_scores, write_membership
from kdmem.models import check_same_vocabulary, load_model, load_tokenizer
from kdmem.models.loading import model_vocab_size
from kdmem.report import headline_table, write_report
from kdmem.stages import derived_outputs, stage_fingerprints, stage_outputs
from kdmem.models.decoding import greedy_continuations
from kdmem.train import distill, fine_tune, resolve_model_name, validation_loss
from kdmem.train.teacher_cache import TeacherLogitCache, build_teacher_cache, complete_teacher_cache

logger = logging.getLogger(__name__)


@dataclass
class StageClock:
    """Wall time of every stage, kept across reruns (a skipped stage keeps its first time)."""

    path: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.path.exists():
            self.seconds = json.loads(self.path.read_text()).get("stage_seconds", {})

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(seconds, 2)


def _check_output(layout: RunLayout, config: ExperimentConfig, overwrite: bool) -> None:
    """A folder that holds a run of another config: keep every stage the change leaves alone.

    Stages whose settings (or whose inputs) changed would hold stale outputs. When any of them
    has finished, the run is refused unless ``overwrite``, which removes just those stages. A
    change that only adds stages (a sweep temperature, filtering) goes ahead without it. The
    summary, analysis and report are rebuilt either way.
    """
    if not layout.config.exists():
        return
    previous_values = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
    if previous_values == config_to_dict(config):
        return
    try:
        previous = stage_fingerprints(load_config(layout.config))
    except (ConfigError, TypeError, ValueError):  # written by another kdmem version
        previous = None
    if previous is None:
        if not overwrite:
            raise ConfigError(
                f"{layout.root} holds a run whose config this kdmem cannot read. Use another --output, or pass "
                "--overwrite to discard that run."
            )
        shutil.rmtree(layout.root)
        return
    current = stage_fingerprints(config)
    changed = sorted(stage for stage in set(previous) | set(current) if previous.get(stage) != current.get(stage))
    stale = [stage for stage in changed if any(path.exists() for path in stage_outputs(layout, stage))]
    if stale and not overwrite:
        kept = sorted(stage for stage in previous if stage not in changed)
        raise ConfigError(
            f"{layout.root} holds a run with a different config, which changes the finished stages {', '.join(stale)} "
            f"(kept as they are: {', '.join(kept) or 'none'}). Pass --overwrite to recompute just those stages, "
            "or use another --output."
        )
    for stage in stale:
        logger.info("config changed: recomputing %s", stage)
        for path in stage_outputs(layout, stage):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for path in derived_outputs(layout):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


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


def _provenance(config: ExperimentConfig, clock: StageClock) -> dict:
    import accelerate
    import datasets
    import transformers

    import kdmem

    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {
        "kdmem": kdmem.__version__,
        "git_revision": revision,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "accelerate": accelerate.__version__,
        },
        "hardware": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "processes": process_state().num_processes,
        },
        "seeds": config.seeds,
        "stage_seconds": clock.seconds,
    }


def evaluate_model(
    name: str,
    base: str,
    layout: RunLayout,
    config: ExperimentConfig,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    tokenizer,
    canaries: pd.DataFrame | None,
    state=None,
) -> dict:
    """Everything kdmem measures of one trained model; its row of the summary.

    Writes ``memorization/NAME.parquet`` (exact and approximate extraction on D),
    ``membership/NAME.parquet`` (scores on D and validation) and ``canaries/NAME.parquet``.
    Given the ``state`` of several processes, each scores its share of D and the main process
    writes; without one, this process does it all.
    """
    main = state is None or state.is_main_process
    device = state.device if state else None
    ext = config.extraction
    model = load_model(str(layout.model(name)), device=device, dtype=config.inference_dtype)
    sample = sample_positions(len(train), ext.approximate_sample, ext.seed)

    def extract(share: pd.DataFrame, offset: int) -> pd.DataFrame:
        positions = [p - offset for p in sample if offset <= p < offset + len(share)]
        return measure_memorization(model, share, ext, positions, desc=f"extract {name}")

    verdicts = split_across_processes(train, extract, layout.work(f"parts-extract-{name}"), state)
    if main:
        write_parquet_atomic(layout.memorization(name), verdicts)
    batch_size = verdicts.attrs["batch_size"]
    loss = validation_loss(model, validation, batch_size=batch_size)
    memorized = int(verdicts["memorized"].sum())
    row = {
        "memorized": memorized,
        "examples": len(verdicts),
        "rate": memorized / len(verdicts),
        "val_loss": loss,
        "val_ppl": math.exp(loss),
        "rechecked": int(verdicts["rechecked"].sum()),
        **{f"rate_p{length}": float(verdicts[f"memorized_p{length}"].mean()) for length in ext.prefix_lens},
        **approximate_summary(verdicts),
    }
    if config.membership.enabled:
        spec = config.teacher if name == "teacher" else config.student  # the base's own revision and code setting
        reference = (
            load_model(base, revision=spec.revision, trust_remote_code=spec.trust_remote_code, device=device, dtype=config.inference_dtype)
            if config.membership.reference
            else None
        )
        both = pd.concat([train.assign(split="train"), validation.assign(split="validation")], ignore_index=True)

        def score(share: pd.DataFrame, offset: int) -> pd.DataFrame:
            return split_scores(model, share, tokenizer, reference, batch_size, config.membership.min_k)

        scores = split_across_processes(both, score, layout.work(f"parts-membership-{name}"), state)
        metrics = membership_metrics(scores[scores["split"] == "train"], scores[scores["split"] == "validation"])
        if main:
            write_membership(layout.membership(name), scores, metrics, config.membership.min_k)
        row["membership"] = metrics
    if canaries is not None:  # a handful of sequences: every process scores them, the main one writes
        exposure = canary_exposure(
            model,
            canaries,
            ext.prefix_len,
            ext.suffix_len,
            vocab_size=len(tokenizer),
            excluded_token_ids=tokenizer.all_special_ids,
            num_candidates=config.canaries.num_candidates,
            seed=config.canaries.seed,
            batch_size=batch_size,
        )
        if main:
            write_parquet_atomic(layout.canaries(name), exposure)
        row["canaries"] = exposure[["canary_id", "repeats", "exposure", "extractable"]].to_dict("records")
    return row


def run(config: ExperimentConfig, output: str | Path | None = None, *, overwrite: bool = False) -> dict:
    """Run (or finish) the experiment in ``output`` (default ``runs/NAME``); return the summary.

    Under ``accelerate launch`` with N processes, training stages are one ``Trainer`` run across
    all of them (DDP, FSDP or DeepSpeed, as accelerate is configured); extraction, membership,
    features and the hard-KD generation split D between the processes; the rest (data
    preparation, filtering, analysis, report) runs on the main process while the others wait.
    Only the main process writes.
    """
    config.validate()
    state = process_state()
    main = state.is_main_process
    layout = RunLayout(Path(output) if output else Path("runs") / config.name)
    with state.main_process_first():  # the main process checks (or clears) the folder first
        _check_output(layout, config, overwrite and main)
        if main:
            layout.root.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(layout.root)
            save_config(config, layout.config)
    clock = StageClock(layout.provenance)

    def stage(name: str, done_marker: Path, action, distributed: bool = False) -> None:
        """``action`` unless ``done_marker`` exists: on every process when ``distributed``, else on
        the main process alone (the others find the marker once it is done)."""
        state.wait_for_everyone()
        with contextlib.nullcontext() if distributed else state.main_process_first():
            if done_marker.exists():
                if main:
                    logger.info("[%s] done already: %s", name, done_marker)
                return
            if not (distributed or main):
                raise RuntimeError(f"stage {name} finished on the main process without writing {done_marker}")
            logger.info("[%s] running", name)
            start = time.perf_counter()
            try:
                action()
            except Exception as error:  # the rehearsal and the logs name the stage that failed
                if hasattr(error, "add_note"):  # Python 3.11+
                    error.add_note(f"kdmem stage: {name}")
                raise
            if distributed:
                state.wait_for_everyone()
            if main:
                clock.record(name, time.perf_counter() - start)
                write_json_atomic(layout.provenance, _provenance(config, clock))

    # Bases: hub names pass through; builtin names are built (once, cached) here.
    start = time.perf_counter()
    teacher_base = resolve_model_name(config.teacher.model, config.embedded)
    student_base = resolve_model_name(config.student.model, config.embedded)
    clock.seconds.setdefault("bases", round(time.perf_counter() - start, 2))
    device = state.device
    tokenizer = load_tokenizer(teacher_base, revision=config.teacher.revision, trust_remote_code=config.teacher.trust_remote_code)
    student_tokenizer = load_tokenizer(student_base, revision=config.student.revision, trust_remote_code=config.student.trust_remote_code)
    check_same_vocabulary(tokenizer, student_tokenizer)

    def make_data():
        splits = prepare_sequences(config.data, tokenizer)
        write_sequences(layout.data("validation"), splits.validation)
        if config.canaries.repeats:
            canaries = make_canaries(
                config.canaries, len(tokenizer), config.data.seq_len, config.extraction.prefix_len, tokenizer.all_special_ids
            )
            write_parquet_atomic(layout.data("canaries"), canaries)
        write_sequences(layout.data("train"), splits.train)  # written last: its presence marks the stage done

    stage("data", layout.data("train"), make_data)
    train = read_sequences(layout.data("train"))
    validation = read_sequences(layout.data("validation"))
    canaries = pd.read_parquet(layout.data("canaries")) if config.canaries.repeats else None
    # What training sees: D, plus each canary's copies when canaries are planted (D stays the audited set).
    training_rows = train if canaries is None else inject_canaries(train, canaries, config.canaries.seed)
    logger.info("D: %d training and %d validation sequences of %d tokens", len(train), len(validation), config.data.seq_len)

    def load_base(spec, base):
        return load_model(base, revision=spec.revision, trust_remote_code=spec.trust_remote_code, device=device)

    ext = config.extraction

    def trackers(name: str) -> list[MemorizationTracker]:
        if not ext.track_every_epochs:
            return []
        sample = train if ext.track_examples is None else train.iloc[: ext.track_examples]
        return [MemorizationTracker(sample, ext.prefix_len, ext.suffix_len, ext.track_every_epochs, ext.batch_size, name)]

    def stage_info(kind: str, seed: int, base: str, callbacks: list[MemorizationTracker]) -> dict:
        history = callbacks[0].history if callbacks else []
        return {"stage": kind, "seed": seed, "base": base, "memorization_over_training": history}

    def train_ce(name: str, spec_base, base: str, training, data: pd.DataFrame, seed: int, stage_kind: str):
        def action():
            callbacks = trackers(name)
            if main:  # left by a run killed while saving
                shutil.rmtree(_saving_dir(layout.model(name)), ignore_errors=True)
            fine_tune(load_base(spec_base, base), data, training, layout.work(name), seed, callbacks, save_to=_saving_dir(layout.model(name)))
            if main:
                _publish_model(tokenizer, layout.model(name), stage_info(stage_kind, seed, base, callbacks), layout.work(name))

        stage(name, layout.model_done(name), action, distributed=True)

    train_ce("teacher", config.teacher, teacher_base, config.teacher.training, training_rows, config.seeds[0], "teacher")
    loaded_teacher: dict = {}
    # The cache knows its teacher by the teacher stage's fingerprint (its settings and data), not
    # by a path, which changes with the working directory or an --output spelled another way.
    teacher_id = f"kdmem teacher stage {stage_fingerprints(config)['teacher']}"

    def teacher_model():
        if "model" not in loaded_teacher:
            loaded_teacher["model"] = load_model(str(layout.model("teacher")), device=device, dtype=config.inference_dtype)
        return loaded_teacher["model"]

    # One cache for every soft student, whatever its temperature.
    cache_settings = {"kind": config.soft.cache_kind, "top_k": config.soft.cache_top_k, "tail_samples": config.soft.cache_tail_samples,
                      "tail_draws": config.soft.cache_draws, "temperatures": config.soft.cache_temperatures}

    def build_cache(rows: pd.DataFrame, rows_name: str) -> None:
        """The teacher cache over ``rows``: its own stage, done when every shard is written."""
        root = layout.teacher_cache(rows_name)

        def action():
            if complete_teacher_cache(root, rows, teacher_id=teacher_id, **cache_settings) is None:  # else never load the teacher
                shared_vocabulary = min(teacher_model().config.get_text_config().vocab_size, model_vocab_size(student_base, config.student))
                build_teacher_cache(
                    teacher_model(), rows, root, teacher_id=teacher_id, vocab_size=shared_vocabulary, batch_size=ext.batch_size or 32, **cache_settings
                )
            if main:
                write_json_atomic(root / "complete.json", {"teacher": teacher_id, "examples": len(rows)})

        stage(f"cache:{rows_name}", root / "complete.json", action, distributed=True)

    def train_soft(name: str, seed: int, soft, rows: pd.DataFrame = training_rows, track: bool = True, rows_name: str = "train"):
        def action():
            callbacks = trackers(name) if track else []
            if main:  # left by a run killed while saving
                shutil.rmtree(_saving_dir(layout.model(name)), ignore_errors=True)
            student = load_base(config.student, student_base)
            cache = TeacherLogitCache(layout.teacher_cache(rows_name)) if soft.teacher_cache else None
            distill(
                student, None if cache else teacher_model(), rows, soft, layout.work(name), seed, callbacks, cache=cache,
                save_to=_saving_dir(layout.model(name)),
            )
            info = stage_info("soft", seed, student_base, callbacks) | {"temperature": soft.temperature}
            if main:
                _publish_model(tokenizer, layout.model(name), info, layout.work(name))

        stage(name, layout.model_done(name), action, distributed=True)

    if config.soft.teacher_cache:
        build_cache(training_rows, "train")
    for seed in config.seeds:
        suffix = seed_suffix(seed, config)
        train_ce("baseline" + suffix, config.student, student_base, config.student.training, training_rows, seed, "baseline")
        train_soft("soft" + suffix, seed, config.soft)

    for temperature, name in temperature_sweep(config).items():
        if name != "soft":
            train_soft(name, config.seeds[0], dataclasses.replace(config.soft, temperature=temperature), track=False)

    def make_hard_data():
        # The teacher writes only ids the student can read (the smaller embedding matrix).
        shared_vocabulary = min(teacher_model().config.get_text_config().vocab_size, model_vocab_size(student_base, config.student))

        def generate(share: pd.DataFrame, offset: int) -> pd.DataFrame:
            generated = greedy_continuations(
                teacher_model(), as_tensor(share), config.hard.prefix_len, config.data.seq_len, config.hard.generation_batch_size,
                desc="hard data", vocab_size=shared_vocabulary,
            )
            return pd.DataFrame({"example_id": share["example_id"].to_numpy(), "input_ids": list(generated.numpy().astype("int32"))})

        hard = split_across_processes(training_rows, generate, layout.work("parts-hard-data"), state)
        if main:
            write_sequences(layout.data("hard"), hard)

    stage("hard_data", layout.data("hard"), make_hard_data, distributed=True)
    hard_train = read_sequences(layout.data("hard"))
    for seed in config.seeds:
        suffix = seed_suffix(seed, config)
        train_ce("hard" + suffix, config.student, student_base, config.hard.training, hard_train, seed, "hard")

    def evaluate(name: str):
        def action():
            base = teacher_base if name == "teacher" else student_base
            row = evaluate_model(name, base, layout, config, train, validation, tokenizer, canaries, state)
            if main:
                write_json_atomic(layout.evaluation(name), row)

        stage(f"evaluate:{name}", layout.evaluation(name), action, distributed=True)

    trained = [name for name in model_names(config) if not (config.filtering.enabled and name == filtered_name(config))]
    for name in trained:
        evaluate(name)
    stage("features", layout.features, lambda: model_feature_table(layout, config, train, state), distributed=True)

    if config.filtering.enabled:
        kind = config.filtering.student

        def flag():
            features = pd.read_parquet(layout.features)
            target, stand_in = memorized_over_seeds(layout, config, kind), {}
            if len(target) < MIN_MEMORIZED_TO_FILTER and config.filtering.stand_in_examples:
                target = stand_in_memorized(pd.read_parquet(layout.memorization(kind + seed_suffix(config.seeds[0], config))), config.filtering.stand_in_examples)
                stand_in = {"stand_in": f"a rehearsal: the {len(target)} examples the {kind} student came closest to reproducing stand in for its memorized set"}
            try:
                removed, info = flag_examples(features, features["example_id"].isin(target).to_numpy(), config.filtering.target_recall, config.seeds[0])
                info |= stand_in
            except ValueError as error:
                # What the students memorized decides this, not the config alone: the run goes on,
                # and the report says why there is no filtered student.
                info, removed = {"skipped": f"{error}; or set filtering.student to the other student"}, set()
                logger.warning("filtering of the %s student skipped: %s", kind, info["skipped"])
            write_json_atomic(layout.filtering, info | {"removed_ids": sorted(removed)})

        stage("filtering", layout.filtering, flag)
        state.wait_for_everyone()
        flagging = json.loads(layout.filtering.read_text())
        if "skipped" not in flagging:
            removed = set(flagging["removed_ids"])
            if kind == "soft":
                kept = train[~train["example_id"].isin(removed)]
                kept_rows = kept if canaries is None else inject_canaries(kept, canaries, config.canaries.seed)
                if config.soft.teacher_cache:
                    build_cache(kept_rows, filtered_name(config))
                train_soft(filtered_name(config), config.seeds[0], config.soft, kept_rows, rows_name=filtered_name(config))
            else:  # the teacher's continuations of the kept examples (and of the canaries' copies)
                kept_hard = hard_train[~hard_train["example_id"].isin(removed)]
                train_ce(filtered_name(config), config.student, student_base, config.hard.training, kept_hard, config.seeds[0], "hard")
            evaluate(filtered_name(config))
            trained.append(filtered_name(config))
    loaded_teacher.clear()

    summary = {
        "name": config.name,
        "models": {name: json.loads(layout.evaluation(name).read_text()) for name in trained},
        "extraction": {"prefix_len": ext.prefix_len, "suffix_len": ext.suffix_len},
        "memorization_over_training": {
            name: json.loads(layout.model_done(name).read_text())["memorization_over_training"] for name in trained
        },
        "data": {"train_examples": len(train), "validation_examples": len(validation), "seq_len": config.data.seq_len},
        "stage_seconds": clock.seconds,
    }
    state.wait_for_everyone()
    if main:
        if layout.work_root.exists() and not any(layout.work_root.iterdir()):
            layout.work_root.rmdir()
        write_json_atomic(layout.summary, summary)
    stage("analysis", layout.analysis, lambda: analyze(layout.root))
    stage("report", layout.report_html, lambda: write_report(layout.root))
    state.wait_for_everyone()
    if main:
        write_json_atomic(layout.provenance, _provenance(config, clock))
        logger.info("\n%s", headline_table(summary))
        logger.info("report: %s", layout.report_html)
    return summary
