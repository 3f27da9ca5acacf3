"""``kdmem run CONFIG --dry-run``: what a run will do and roughly what it costs, before any weight
is downloaded or loaded.

Parameter counts come from a table of the paper's models, else from the model's config alone
(``AutoConfig`` and an empty-weights model: a few kilobytes, no weights). Compute is estimated
with the usual transformer rules: 2 N FLOPs per token for a forward pass and 6 N for a training
step (forward and backward), N the parameter count; GPU-hours assume an H100's dense bf16 peak
(989 TFLOP/s) at 40% model FLOPs utilization. Estimates, not measurements.
"""

from __future__ import annotations

import logging

from kdmem.config import ConfigError, ExperimentConfig
from kdmem.layout import model_names
from kdmem.stages import Sizes
from kdmem.train.teacher_cache import cache_bytes_per_token

logger = logging.getLogger(__name__)

PEAK_FLOPS = 989e12
UTILIZATION = 0.4

# Parameter counts of the paper's models (from their model cards and configs).
KNOWN_PARAMETERS = {
    "EleutherAI/pythia-12b": 11.85e9,
    "EleutherAI/pythia-1.4b": 1.41e9,
    "EleutherAI/pythia-1b": 1.01e9,
    "EleutherAI/pythia-12b-deduped": 11.85e9,
    "EleutherAI/pythia-2.8b-deduped": 2.78e9,
    "allenai/OLMo-2-1124-7B": 7.30e9,
    "allenai/OLMo-2-0425-1B": 1.48e9,
    "Qwen/Qwen3-8B-Base": 8.19e9,
    "Qwen/Qwen3-1.7B-Base": 2.03e9,
}


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick connection attempt, instead of the hub client's retries (about a minute offline)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_config(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The config of ``name`` without its weights: a local folder or the local hub cache, else the
    offline fixture of a paper model, else the hub when it answers; None if unknown, with one
    message saying why."""
    from transformers import AutoConfig

    from kdmem.models.loading import resolve_local
    from kdmem.models.lookalike import offline_fixture

    if name.startswith("builtin:"):
        return None  # built at run time from the embedded config
    source, local_revision = resolve_local(name, revision)  # a local folder's revision is its subfolder
    try:
        return AutoConfig.from_pretrained(
            source, revision=local_revision, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except Exception:  # not a local folder, and not in the local hub cache
        pass
    fixture = offline_fixture(name)
    if fixture is not None:
        return AutoConfig.from_pretrained(fixture)
    if not hub_reachable():
        logger.warning(
            "Cannot look up %s: the Hugging Face Hub is unreachable and no copy of its config.json is cached here. "
            "Give a local folder with its config.json as the model, or the counts with --parameters "
            "teacher=8.19e9,student=2.03e9.",
            name,
        )
        return None
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as error:  # gated or unknown: the plan says "unknown"
        logger.warning("no config for %s: %s", name, " ".join(str(error).split())[:300])
        return None


def parameter_count(name: str, revision: str | None = None, trust_remote_code: bool = False) -> float | None:
    """Parameters of ``name`` without its weights: the table, else its config (``model_config``)."""
    if name in KNOWN_PARAMETERS:
        return KNOWN_PARAMETERS[name]
    return counted_parameters(model_config(name, revision, trust_remote_code), trust_remote_code)


def counted_parameters(config, trust_remote_code: bool = False) -> float | None:
    """Parameters of a model built from ``config`` with empty weights; None for no config."""
    if config is None:
        return None
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return float(sum(p.numel() for p in model.parameters()))


def plan(config: ExperimentConfig, parameters: dict[str, float] | None = None) -> dict:
    """The stages of the run, its token counts, the teacher-cache size and a compute estimate.
    ``parameters`` (``teacher``, ``student``) overrides the parameter counts looked up."""
    parameters = parameters or {}
    unknown = set(parameters) - {"teacher", "student", "cross_scale"}
    if unknown:
        raise ConfigError(
            "--parameters takes teacher=N, student=N and cross_scale=N, not "
            f"{', '.join(repr(name) for name in sorted(unknown))}."
        )
    soft = config.soft
    cache = soft.teacher_cache
    exact_cache = cache and soft.cache_kind != "sampled"  # its size and cost follow the models' shapes
    configs, counts = {}, {}  # each model looked up once, with at most one message
    for role in ("teacher", "student"):
        model = getattr(config, role)
        counts[role] = parameters.get(role) or KNOWN_PARAMETERS.get(model.model)
        if exact_cache or counts[role] is None:
            configs[role] = model_config(model.model, model.revision, model.trust_remote_code)
        counts[role] = counts[role] or counted_parameters(configs[role], model.trust_remote_code)
    cross_scale = config.cross_scale
    if cross_scale.model:
        counts["cross_scale"] = parameters.get("cross_scale") or KNOWN_PARAMETERS.get(cross_scale.model)
        counts["cross_scale"] = counts["cross_scale"] or counted_parameters(
            model_config(cross_scale.model, cross_scale.revision, cross_scale.trust_remote_code),
            cross_scale.trust_remote_code,
        )
    teacher_n, student_n = counts["teacher"], counts["student"]
    shape = None  # (teacher hidden size, shared vocabulary)
    if configs.get("teacher") is not None and configs.get("student") is not None:
        teacher_text, student_text = configs["teacher"].get_text_config(), configs["student"].get_text_config()
        shape = teacher_text.hidden_size, min(teacher_text.vocab_size, student_text.vocab_size)
    examples = config.data.size
    tokens = None if examples is None else examples * config.data.seq_len
    sizes = Sizes(
        teacher_n,
        student_n,
        tokens,
        None if shape is None else float(shape[0] * shape[1]),
        config.data.validation_examples * config.data.seq_len,
        counts.get("cross_scale"),
    )
    # The same graph kdmem run executes: its stages, and each stage's own cost formula.
    from kdmem.pipeline import stage_graph

    stages = [(stage.name, stage.flops(sizes) if stage.flops else 0.0) for stage in stage_graph(config)]
    known = [f for _, f in stages if f is not None]
    total = sum(known) if len(known) == len(stages) else None
    cache_bytes = None
    if cache and tokens is not None:
        predicted = tokens - examples
        if soft.cache_kind == "sampled":
            cache_bytes = predicted * cache_bytes_per_token(
                "sampled",
                top_k=soft.cache_top_k,
                tail_samples=soft.cache_tail_samples * soft.cache_draws,
                temperatures=len(soft.cache_temperatures),
            )
        elif (
            shape is not None and soft.cache_kind == "hidden"
        ):  # the states in inference_dtype, and the output layer once
            width = 2 if config.inference_dtype in ("bfloat16", "float16") else 4
            cache_bytes = (predicted + shape[1]) * cache_bytes_per_token(
                "hidden", hidden_size=shape[0], hidden_bytes=width
            )
        elif shape is not None:
            cache_bytes = predicted * cache_bytes_per_token("logits", vocab_size=shape[1])
    return {
        "name": config.name,
        "models": {"teacher": config.teacher.model, "student": config.student.model},
        "parameters": {"teacher": teacher_n, "student": student_n},
        "data": {
            "source": config.data.source,
            "examples": examples,
            "seq_len": config.data.seq_len,
            "tokens": tokens,
            "validation_examples": config.data.validation_examples,
        },
        "trained_models": model_names(config),
        "teacher_cache": soft.cache_kind if cache else None,
        "teacher_cache_bytes": cache_bytes,
        "stages": [
            {"stage": name, "flops": f, "gpu_hours": None if f is None else f / (PEAK_FLOPS * UTILIZATION) / 3600}
            for name, f in stages
        ],
        "total_gpu_hours": None if total is None else total / (PEAK_FLOPS * UTILIZATION) / 3600,
        "assumptions": f"2N FLOPs/token forward, 6N training; {PEAK_FLOPS / 1e12:.0f} TFLOP/s at "
        f"{UTILIZATION:.0%} utilization"
        + (
            "; the hidden-state cache's output layer not counted (no config of the teacher or student here)"
            if cache and soft.cache_kind == "hidden" and shape is None
            else ""
        ),
    }


def _hours(hours: float | None) -> str:
    """GPU-hours as shown: to 0.1 hour, or to 2 significant digits below 0.1 (evaluation stages
    take minutes), ``unknown`` where a size is unknown."""
    if hours is None:
        return "unknown"
    return f"{hours:,.1f}" if hours >= 0.1 or hours == 0 else f"{hours:.2g}"


def format_plan(result: dict) -> str:
    def count(value: float | None, unit: str = "") -> str:
        return "unknown" if value is None else f"{value:,.0f}{unit}"

    sizes = {role: "unknown" if n is None else f"{n / 1e9:.2f}B" for role, n in result["parameters"].items()}
    lines = [
        f"plan for {result['name']!r}: nothing is downloaded or trained",
        f"teacher {result['models']['teacher']} ({sizes['teacher']} parameters), student "
        f"{result['models']['student']} ({sizes['student']} parameters)",
        f"data {result['data']['source']}: {count(result['data']['examples'])} training sequences of "
        f"{result['data']['seq_len']} tokens "
        f"= {count(result['data']['tokens'])} tokens; {result['data']['validation_examples']:,} held out",
        f"models trained: {', '.join(result['trained_models'])}",
    ]
    if result["teacher_cache_bytes"] is not None:
        lines.append(f"teacher cache ({result['teacher_cache']}): {result['teacher_cache_bytes'] / 1e9:,.1f} GB")
    lines.append(f"{'stage':<34}{'GPU-hours':>12}")
    for stage in result["stages"]:
        hours = stage["gpu_hours"]
        lines.append(f"{stage['stage']:<34}{_hours(hours):>12}")
    total = result["total_gpu_hours"]
    lines.append(f"{'total':<34}{'unknown' if total is None else f'{total:,.0f}':>12}")
    lines.append(f"estimate: {result['assumptions']}")
    return "\n".join(lines)
