"""Downstream utility of a model, through lm-evaluation-harness (``lm-eval``).

The paper judges the hard student downstream, on LAMBADA (perplexity and accuracy of a passage's
last word) and WinoGrande (accuracy of a two-way choice), because validation perplexity on real
data structurally favours the baseline. kdmem asks lm-eval itself, ``simple_evaluate`` on the
loaded model: any task lm-eval knows (``lambada_openai``, ``winogrande``) runs by name.

Offline, and on the embedded default, kdmem ships two tasks of the same kinds, written from the
run's own held-out documents (the validation sequences, which no model trained on):

- ``kdmem_last_word``: LAMBADA's format and metrics. A passage is a held-out window cut just
  before its last whole word; the model scores that word (perplexity over the passages, and
  accuracy: greedy decoding would produce it).
- ``kdmem_two_choice``: of the WinoGrande kind. The first half of a held-out window, then two
  continuations of the same length in words: its own, and the same stretch of another held-out
  window. Accuracy: the model gives its own continuation the higher likelihood.

Their documents are JSON Lines in the run folder; their task YAML is written beside them when
they are evaluated, with absolute paths, since lm-eval resolves ``data_files`` against the working
directory, not the YAML's folder.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kdmem.config import ConfigError
from kdmem.data import DataError
from kdmem.io import atomic_path, write_json_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)

LOCAL_TASKS: dict[str, str] = {
    "kdmem_last_word": """\
task: kdmem_last_word
dataset_path: json
dataset_kwargs:
  data_files:
    test: {documents}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    "kdmem_two_choice": """\
task: kdmem_two_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {documents}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}
"""kdmem's own tasks: name -> lm-eval task YAML, with ``{documents}`` for the JSON Lines file."""

PAPER_TASKS = {"lambada_openai": "kdmem_last_word", "winogrande": "kdmem_two_choice"}
"""The paper's tasks on the hub, and the local task of the same kind that stands in for each offline."""

HEADLINE_METRICS = ("perplexity", "acc")
"""The metrics a task's headline columns show, where the task has them."""

_WORD = re.compile(r"(?<= )[A-Za-z]{3,}(?=[\s.,;:!?)])")
"""A whole word of 3 letters or more: after a space, before whitespace or punctuation (a window's
last characters may be a word cut in two, which this never matches)."""


HUB_TASK_SIZES = {"lambada_openai": (5153, 90), "winogrande": (1267, 2 * 30)}
"""Hub tasks ``--dry-run`` can cost: (documents, tokens forwarded per document). Estimates: LAMBADA's
test split holds 5,153 passages of about 80 words; WinoGrande (xl, validation) 1,267 sentences,
each scored twice (one context per option) over about 30 tokens."""


def task_tokens(task: str, config, limit: int | None = None) -> float | None:
    """Tokens lm-eval forwards for ``task`` under ``config`` (an ``ExperimentConfig``); None: unknown.
    kdmem's own tasks have at most one document per validation sequence: a window of
    ``data.seq_len`` tokens for ``kdmem_last_word``, two requests of up to that for the choice."""
    if task in LOCAL_TASKS:
        documents, per_document = config.data.validation_examples, config.data.seq_len
        per_document *= 2 if task == "kdmem_two_choice" else 1
    elif task in HUB_TASK_SIZES:
        documents, per_document = HUB_TASK_SIZES[task]
    else:
        return None
    return float(min(documents, limit or documents) * per_document)


def lm_eval_version() -> str:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "utility.tasks needs lm-evaluation-harness: pip install 'kdmem[utility]' (or lm-eval), "
            "or set utility.tasks=[] to skip downstream utility."
        ) from None
    return lm_eval.__version__


# --- kdmem's own tasks, from held-out text ---------------------------------------------------------


def last_word_documents(texts: list[str]) -> list[dict]:
    """One LAMBADA-style document per text that has one: the text up to its last whole word
    (``context``) and that word (``target``), the context at least half of the text."""
    documents = []
    for text in texts:
        words = [m for m in _WORD.finditer(text) if m.start() >= len(text) // 2]
        if words:
            last = words[-1]
            documents.append({"context": text[: last.start() - 1], "target": last.group()})
    return documents


def two_choice_documents(texts: list[str], seed: int = 0) -> list[dict]:
    """One two-way choice per text: its first half (``context``, cut at a space), then its own next
    words against the same number of words from another text (``choices``, both led by a space),
    ``label`` the index of its own. Texts pair with the text half the list away."""
    halves = []
    for text in texts:
        cut = text.find(" ", len(text) // 2)
        words = text[cut + 1 :].split()[:-1] if cut > 0 else []  # the window's last word may be cut
        halves.append((text[:cut], words))
    rng = np.random.default_rng(seed)
    documents = []
    for i, (context, words) in enumerate(halves):
        other = halves[(i + len(halves) // 2) % len(halves)][1]
        length = min(len(words), len(other), 12)
        if not context or length < 3 or words[:length] == other[:length]:
            continue
        own, wrong = " " + " ".join(words[:length]), " " + " ".join(other[:length])
        label = int(rng.integers(2))
        documents.append({"context": context, "choices": [wrong, own] if label else [own, wrong], "label": label})
    return documents


LOCAL_DOCUMENTS = {"kdmem_last_word": last_word_documents, "kdmem_two_choice": two_choice_documents}


def write_local_documents(texts: list[str], folder: Path, tasks: list[str]) -> dict[str, int]:
    """``folder/TASK.jsonl`` for each of kdmem's own ``tasks`` among ``tasks``; task -> documents."""
    counts = {}
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task not in LOCAL_TASKS:
            continue
        documents = LOCAL_DOCUMENTS[task](texts)
        if not documents:
            raise DataError(
                f"The held-out text yields no document for {task}: use more or longer validation sequences "
                "(data.validation_examples, data.seq_len), or leave the task out of utility.tasks."
            )
        with atomic_path(folder / f"{task}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(doc) + "\n" for doc in documents))
        counts[task] = len(documents)
    return counts


def write_local_task_yaml(documents: Path, folder: Path) -> Path:
    """Each local task's YAML in ``folder``, naming its documents in ``documents`` by absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    for task, template in LOCAL_TASKS.items():
        path = (Path(documents) / f"{task}.jsonl").resolve()
        (folder / f"{task}.yaml").write_text(template.format(documents=json.dumps(str(path))))
    return folder


# --- evaluation ------------------------------------------------------------------------------------


def check_tasks(tasks: list[str]) -> None:
    """Raise ``ConfigError`` naming any task lm-eval does not know, before anything is trained.
    Looking up a hub task indexes lm-eval's ~15,000 built-in tasks (about 12 s); kdmem's own need no
    look-up."""
    hub = [task for task in tasks if task not in LOCAL_TASKS]
    if not tasks:
        return
    lm_eval_version()
    if not hub:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    unknown = [task for task in hub if task not in known]
    if unknown:
        import difflib

        hints = [
            f"{task!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(task, known, n=1))
            else repr(task)
            for task in unknown
        ]
        raise ConfigError(
            f"utility.tasks names tasks lm-eval {lm_eval_version()} does not know: {', '.join(hints)}. "
            f"Use lm-eval task names (`lm_eval ls tasks`) or kdmem's own: {', '.join(LOCAL_TASKS)}."
        )


def _is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the hub could not be reached."""
    while error is not None:
        text = f"{type(error).__name__} {error}"
        if isinstance(error, (ConnectionError, OSError)) and not isinstance(error, FileNotFoundError):
            return True
        if re.search(r"offline|Couldn't reach|connection|resolve|HF_HUB_OFFLINE", text, re.IGNORECASE):
            return True
        error = error.__cause__ or error.__context__
    return False


def evaluate_utility(
    model,
    tokenizer,
    tasks: list[str],
    documents: Path,
    work: Path,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    bootstrap_iters: int = 1000,
) -> dict:
    """lm-eval's ``simple_evaluate`` of a loaded model on ``tasks``; kdmem's own tasks read their
    documents from ``documents`` (``write_local_documents``), their YAML written to ``work``.
    Returns lm-eval's results dict, per-sample outputs (``samples``) included."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    local = [task for task in tasks if task in LOCAL_TASKS]
    hub = [task for task in tasks if task not in LOCAL_TASKS]
    # kdmem's own tasks need no index of lm-eval's built-in ones (12 s): only a hub task does.
    manager = TaskManager(
        include_path=str(write_local_task_yaml(documents, work)) if local else None, include_defaults=bool(hub)
    )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            task_manager=manager,
            random_seed=0,
        )
    except Exception as error:
        if hub and _is_unreachable(error):
            raise DataError(
                f"lm-eval could not fetch the datasets of {', '.join(hub)} from the Hugging Face Hub (offline, or "
                f"not cached: {type(error).__name__}). Download them once online, or use kdmem's local tasks of "
                f"the same kinds: utility.tasks=[{','.join(PAPER_TASKS.get(t, t) for t in tasks)}]."
            ) from None
        raise


def samples_table(results: dict) -> pd.DataFrame:
    """lm-eval's per-sample outputs as one frame: ``task``, ``doc_id``, each metric's value for the
    sample, and the document, target and responses as JSON text."""
    rows = []
    for task, samples in results.get("samples", {}).items():
        metrics = results["configs"][task].get("metric_list", [])
        names = [m["metric"] for m in metrics]
        for sample in samples:
            row = {"task": task, "doc_id": int(sample["doc_id"])}
            for name in names:
                value = sample.get(name)
                row[name] = (
                    float(value[0] if isinstance(value, (list, tuple)) else value) if value is not None else None
                )
            row["target"] = str(sample.get("target"))
            row["doc"] = json.dumps(sample.get("doc"), default=str)
            row["responses"] = json.dumps(sample.get("filtered_resps"), default=str)
            rows.append(row)
    return pd.DataFrame(rows)


def headline_metrics(results: dict) -> dict[str, dict[str, float]]:
    """Task -> {metric: value} for every metric lm-eval aggregated (``acc``, ``perplexity``, their
    ``_stderr``), without lm-eval's filter suffix (``acc,none`` -> ``acc``)."""
    out = {}
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, _ = key.partition(",")
            if isinstance(value, (int, float)) and metric != "alias":
                metrics[metric] = float(value)
        out[task] = metrics
    return out


def write_utility(path: Path, results: dict) -> None:
    """``path`` (JSON): lm-eval's results (metrics, versions, task configs, sample counts, lm-eval's
    version) and kdmem's ``metrics``; ``path`` with ``.parquet``: the per-sample outputs."""
    write_parquet_atomic(path.with_suffix(".parquet"), samples_table(results))
    kept = {key: results[key] for key in ("results", "versions", "n-shot", "n-samples", "configs") if key in results}
    record = {"metrics": headline_metrics(results), "lm_eval_version": lm_eval_version(), **kept}
    write_json_atomic(path, json.loads(json.dumps(record, default=str)))
