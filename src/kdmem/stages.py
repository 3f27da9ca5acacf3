"""Which settings each stage of ``kdmem run`` depends on, so a changed config recomputes only
what it changes.

Every stage gets a fingerprint: a hash of the settings it reads and of the fingerprints of the
stages whose outputs it reads. Changing the soft student's learning rate changes the
fingerprints of the soft student, its evaluation, the features and the filtering, and nothing
upstream: the teacher and the baseline are kept. The summary, analysis and report are always
rebuilt after a config change; they are cheap and read everything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdmem.config import ExperimentConfig, config_to_dict
from kdmem.layout import RunLayout, filtered_name, model_names, seed_suffix, temperature_sweep

TRACKING = ("track_every_epochs", "track_examples")
"""Extraction settings that shape training outputs (memorization over training), not evaluation."""
SPEED_ONLY = ("batch_size",)
"""Extraction settings that change how fast a verdict comes, never the verdict (a batch size, or
the search for one)."""
CACHE_SETTINGS = ("cache_kind", "cache_top_k", "cache_tail_samples", "cache_tail_draws")
"""Soft settings the teacher cache reads; a soft student reads them through the cache stage."""


def stage_fingerprints(config: ExperimentConfig) -> dict[str, str]:
    """Stage name (as ``kdmem run`` logs it) -> 16 hex digits.

    ``verdicts:NAME`` is the memorization part of ``evaluate:NAME`` (its outputs are among the
    evaluation's): what the filtering reads, so that rescoring membership or canaries leaves the
    filtered student alone."""
    values = config_to_dict(config)
    extraction = {k: v for k, v in values["extraction"].items() if k not in TRACKING + SPEED_ONLY}
    tracking = {k: values["extraction"][k] for k in TRACKING}
    student_base = {k: values["student"][k] for k in ("model", "revision", "trust_remote_code")}
    # The teacher runs in inference_dtype for the soft students (live or cached) and the hard-KD data.
    soft = {k: v for k, v in values["soft"].items() if k not in ("sweep_temperatures", *CACHE_SETTINGS)} | {"teacher_dtype": values["inference_dtype"]}
    cache = {"kind": config.soft.cache_kind, "dtype": values["inference_dtype"]}
    if config.soft.cache_kind == "sampled":  # its samples, and the temperatures it serves
        cache |= {"top_k": config.soft.cache_top_k, "tail_samples": config.soft.cache_tail_samples, "tail_draws": config.soft.cache_draws,
                  "temperatures": config.soft.cache_temperatures}
    verdicts = {"extraction": extraction, "dtype": values["inference_dtype"]}
    # Canary exposure draws num_candidates random candidates with the canaries' seed.
    scoring = {"membership": values["membership"], "canaries": {k: values["canaries"][k] for k in ("num_candidates", "seed")}, "dtype": values["inference_dtype"]}
    prints: dict[str, str] = {}

    def add(stage: str, *upstream: str, **settings) -> None:
        payload = {"upstream": [prints[name] for name in upstream], **settings}
        prints[stage] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # The tokenizer is the teacher base's, and canaries are planted in the training rows; their
    # key is the first extraction.prefix_len tokens of each.
    canaries = {k: v for k, v in values["canaries"].items() if k != "num_candidates"}
    if config.canaries.repeats:
        canaries["key_length"] = config.extraction.prefix_len
    add("data", data=values["data"], canaries=canaries, embedded=values["embedded"], tokenizer=values["teacher"]["model"])
    add("teacher", "data", teacher=values["teacher"], seed=config.seeds[0], tracking=tracking)
    # The soft students read the teacher through its logit cache, when there is one.
    teacher_for_soft = "teacher"
    if config.soft.teacher_cache:
        add("cache:train", "teacher", **cache)
        teacher_for_soft = "cache:train"
    add("hard_data", "teacher", prefix_len=values["hard"]["prefix_len"], batch=values["hard"]["generation_batch_size"], dtype=values["inference_dtype"])
    for seed in config.seeds:
        suffix = seed_suffix(seed, config)
        add("baseline" + suffix, "data", student=values["student"], seed=seed, tracking=tracking)
        add("soft" + suffix, teacher_for_soft, student=student_base, soft=soft, seed=seed, tracking=tracking)
        add("hard" + suffix, "hard_data", student=student_base, training=values["hard"]["training"], seed=seed, tracking=tracking)
    for temperature, name in temperature_sweep(config).items():
        if name != "soft":
            add(name, teacher_for_soft, student=student_base, soft=soft | {"temperature": temperature}, seed=config.seeds[0])

    def evaluated(name: str) -> None:
        add(f"verdicts:{name}", name, **verdicts)
        add(f"evaluate:{name}", f"verdicts:{name}", **scoring)

    trained = [name for name in model_names(config) if not (config.filtering.enabled and name == filtered_name(config))]
    for name in trained:
        evaluated(name)
    # Features score D under the first seed's models (entropy over the suffix spans, in inference_dtype).
    add("features", "teacher", "baseline", "soft", "hard", spans=[extraction["prefix_len"], extraction["suffix_len"]], dtype=values["inference_dtype"])
    if config.filtering.enabled:
        kind = config.filtering.student
        add("filtering", "features", *(f"verdicts:{kind}{seed_suffix(s, config)}" for s in config.seeds), filtering=values["filtering"])
        training = soft if kind == "soft" else values["hard"]["training"]
        upstream = "hard_data"
        if kind == "soft":
            upstream = "teacher"
            if config.soft.teacher_cache:  # over the kept examples
                upstream = f"cache:{filtered_name(config)}"
                add(upstream, "teacher", "filtering", **cache)
        add(filtered_name(config), "filtering", upstream, student=student_base, training=training, seed=config.seeds[0], tracking=tracking)
        evaluated(filtered_name(config))
    return prints


def stage_outputs(layout: RunLayout, stage: str) -> list[Path]:
    """What ``stage`` writes under the run folder (existing or not)."""
    if stage == "data":
        return [layout.data("train"), layout.data("validation"), layout.data("canaries")]
    if stage == "hard_data":
        return [layout.data("hard")]
    if stage == "features":
        return [layout.features]
    if stage == "filtering":
        return [layout.filtering]
    if stage.startswith("cache:"):
        return [layout.teacher_cache(stage.split(":", 1)[1])]
    if stage.startswith("verdicts:"):
        return [layout.memorization(stage.split(":", 1)[1])]
    if stage.startswith("evaluate:"):
        name = stage.split(":", 1)[1]
        return [layout.evaluation(name), layout.memorization(name), layout.membership(name), layout.canaries(name)]
    return [layout.model(stage), layout.work(stage)]  # a model


def derived_outputs(layout: RunLayout) -> list[Path]:
    """Rebuilt after any config change: they read every stage."""
    return [layout.summary, layout.analysis, layout.report_html, layout.report_markdown, layout.figures]
