"""The paper's headline table: memorization and utility per model."""

from __future__ import annotations


def reduction_vs_baseline(summary: dict, name: str) -> float | None:
    """How many times fewer examples ``name`` memorizes than the baseline of the same seed."""
    models = summary["models"]
    variant = name.partition("-")[2]  # "seed1" for another seed; "T4" for a temperature-sweep student
    baseline = models.get("baseline" + (f"-{variant}" if variant.startswith("seed") else ""))
    if baseline is None or name.startswith("baseline"):
        return None
    memorized = models[name]["memorized"]
    if memorized == 0:
        return float("inf") if baseline["memorized"] else None
    return baseline["memorized"] / memorized


def headline_table(summary: dict) -> str:
    """A fixed-width text table: model, memorized / examples, rate, validation loss and PPL, reduction,
    and the membership-inference AUC of the loss score where it was measured."""
    header = f"{'model':<16}{'memorized':>14}{'rate %':>9}{'val loss':>10}{'val ppl':>10}{'reduction':>11}{'MIA AUC':>9}"
    lines = [header, "-" * len(header)]
    for name, row in summary["models"].items():
        reduction = reduction_vs_baseline(summary, name)
        shown = "" if reduction is None else ("inf" if reduction == float("inf") else f"{reduction:.2f}x")
        lines.append(
            f"{name:<16}{row['memorized']:>7d} / {row['examples']:<5d}{100 * row['rate']:>8.2f}"
            f"{row['val_loss']:>10.3f}{row['val_ppl']:>10.1f}{shown:>11}{_mia_auc(row):>9}"
        )
    lines.append("reduction: the baseline's memorized count divided by the model's (paper: 2.1x to 7.6x for students)")
    lines.append("MIA AUC: membership inference by loss, training vs validation examples (0.5 = chance)")
    ext = summary.get("extraction")
    if ext:
        lines.append(f"memorized: greedy decoding from a {ext['prefix_len']}-token prefix reproduces the next {ext['suffix_len']} tokens exactly")
    return "\n".join(lines)


def _mia_auc(row: dict) -> str:
    auc = row.get("membership", {}).get("loss", {}).get("auc")
    return "" if auc is None else f"{auc:.3f}"
