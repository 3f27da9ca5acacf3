"""The paper's headline table: memorization and utility per model."""

from __future__ import annotations


def reduction_vs_baseline(summary: dict, name: str) -> float | None:
    """How many times fewer examples ``name`` memorizes than the baseline of the same seed."""
    models = summary["models"]
    variant = name.partition("-")[2]  # "seed1" for another seed; "T4" for a temperature-sweep student
    baseline = models.get("baseline" + (f"-{variant}" if variant.startswith("seed") else ""))
    if baseline is None or name.startswith(("baseline", "teacher")):
        return None
    memorized = models[name]["memorized"]
    if memorized == 0:
        return float("inf") if baseline["memorized"] else None
    return baseline["memorized"] / memorized


TASK_LABELS = {
    "kdmem_last_word": "last-word",
    "kdmem_two_choice": "two-choice",
    "lambada_openai": "lambada",
    "winogrande": "winogrande",
}
"""Short names of utility tasks in table headers; any other task shows its own name."""

UTILITY_METRICS = {"perplexity": "ppl", "acc": "acc"}
"""The utility metrics the headline table shows, where a task has them, and their short names."""


def utility_columns(summary: dict) -> list[tuple[str, str, str]]:
    """(task, metric, header) of each utility column: every task any model was evaluated on, each
    with its perplexity and accuracy where it has them."""
    tasks = dict.fromkeys(task for row in summary["models"].values() for task in row.get("utility", {}))
    columns = []
    for task in tasks:
        metrics = set().union(*(row.get("utility", {}).get(task, {}) for row in summary["models"].values()))
        for metric, short in UTILITY_METRICS.items():
            if metric in metrics:
                columns.append((task, metric, f"{TASK_LABELS.get(task, task)} {short}"))
    return columns


def utility_value(row: dict, task: str, metric: str) -> str:
    """A utility metric as shown: accuracy in percent, perplexity to 1 decimal; blank where missing."""
    value = row.get("utility", {}).get(task, {}).get(metric)
    if value is None:
        return ""
    return f"{100 * value:.2f}" if metric == "acc" else f"{value:.1f}"


def headline_table(summary: dict) -> str:
    """A fixed-width text table: model, memorized / examples, rate, validation loss and PPL, reduction,
    the membership-inference AUC of the loss score where it was measured, and each utility task's
    perplexity and accuracy (%) where they were."""
    columns = utility_columns(summary)
    widths = [max(len(header) + 2, 10) for _, _, header in columns]
    header = (
        f"{'model':<16}{'memorized':>14}{'rate %':>9}{'val loss':>10}{'val ppl':>10}{'reduction':>11}{'MIA AUC':>9}"
        + "".join(f"{h:>{w}}" for (_, _, h), w in zip(columns, widths, strict=True))
    )
    lines = [header, "-" * len(header)]
    for name, row in summary["models"].items():
        reduction = reduction_vs_baseline(summary, name)
        shown = "" if reduction is None else ("inf" if reduction == float("inf") else f"{reduction:.2f}x")
        utility = "".join(
            f"{utility_value(row, task, metric):>{w}}" for (task, metric, _), w in zip(columns, widths, strict=True)
        )
        lines.append(
            f"{name:<16}{row['memorized']:>7d} / {row['examples']:<5d}{100 * row['rate']:>8.2f}"
            f"{row['val_loss']:>10.3f}{row['val_ppl']:>10.1f}{shown:>11}{_mia_auc(row):>9}{utility}"
        )
    lines.append("reduction: the baseline's memorized count divided by the model's (paper: 2.1x to 7.6x for students)")
    lines.append("MIA AUC: membership inference by loss, training vs validation examples (0.5 = chance)")
    if columns:
        lines.append(
            "utility: lm-evaluation-harness on held-out text (ppl: perplexity of the target word; acc: accuracy, %)"
        )
    ext = summary.get("extraction")
    if ext:
        lines.append(
            f"memorized: greedy decoding from a {ext['prefix_len']}-token prefix reproduces the next "
            f"{ext['suffix_len']} tokens exactly"
        )
    return "\n".join(lines)


def _mia_auc(row: dict) -> str:
    auc = row.get("membership", {}).get("loss", {}).get("auc")
    return "" if auc is None else f"{auc:.3f}"


def comparison_table(comparison: dict) -> str:
    """``compare_many``'s result as text: memorized count and validation loss of every model side
    by side (one column per run), then the overlap of memorized sets for each pair of runs."""
    runs = list(comparison["runs"])
    labels = [f"run {i + 1}" for i in range(len(runs))]
    lines = [f"{label}: {run}" for label, run in zip(labels, runs, strict=True)]
    models = list(dict.fromkeys(name for rows in comparison["runs"].values() for name in rows))
    header = f"{'model':<16}" + "".join(f"{label + ' memorized':>20}{'val loss':>10}" for label in labels)
    lines += ["", header, "-" * len(header)]
    for name in models:
        cells = []
        for run in runs:
            row = comparison["runs"][run].get(name)
            cells.append(
                f"{'':>20}{'':>10}"
                if row is None
                else f"{row['memorized']:>12d} / {row['examples']:<5d}{row['val_loss']:>10.3f}"
            )
        lines.append(f"{name:<16}" + "".join(cells))
    for pair in comparison["pairs"]:
        a, b = labels[runs.index(pair["a"])], labels[runs.index(pair["b"])]
        tokenizers = "same tokenizer" if pair["same_tokenizer"] else "different tokenizers"
        r = "n/a (fewer than 3 shared examples)" if pair["zlib_pearson"] is None else f"{pair['zlib_pearson']:.3f}"
        lines += [
            "",
            f"{a} vs {b} ({tokenizers}, matched by {pair['matched_by']}; {pair['shared_examples']} shared "
            f"examples; zlib entropy Pearson r {r})",
        ]
        if "note" in pair:
            lines.append(f"  note: {pair['note']}")
        for name, o in pair["overlap"].items():
            lines.append(
                f"  {name:<14} memorized {o['a']:>5d} / {o['b']:<5d} both {o['both']:>5d}  Jaccard {o['jaccard']:.3f}"
            )
    return "\n".join(lines)
