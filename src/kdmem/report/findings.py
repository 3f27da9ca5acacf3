"""The run's key findings in words, from ``summary.json`` and ``analysis.json``: the same sentences
open the HTML report and ``report.md``."""

from __future__ import annotations

from kdmem.report.headline import reduction_vs_baseline


def _percent(row: dict) -> str:
    return f"{row['memorized']} of {row['examples']} ({100 * row['rate']:.2f}%)"


def key_findings(summary: dict, analysis: dict) -> list[str]:
    """One sentence per finding the paper reports, stated with this run's numbers."""
    models = summary["models"]
    findings = []
    teacher, baseline = models["teacher"], models["baseline"]
    findings.append(
        f"The teacher memorizes {_percent(teacher)} of its training examples, the same-size-as-student "
        f"baseline {_percent(baseline)} (paper, Pythia/FineWeb: 0.33% and 0.17%)."
    )
    for kind in ("soft", "hard"):
        row = models.get(kind)
        if row is None:
            continue
        reduction = reduction_vs_baseline(summary, kind)
        fewer = "" if reduction is None else (" (none memorized)" if reduction == float("inf") else f" ({reduction:.1f}x fewer than the baseline)")
        utility = "lower" if row["val_loss"] < baseline["val_loss"] else "higher"
        findings.append(
            f"The {kind} student memorizes {_percent(row)}{fewer}, at a {utility} validation loss than the baseline "
            f"({row['val_loss']:.3f} vs {baseline['val_loss']:.3f})."
        )
    # The paper's set analyses use the union over its 3 seeds; so do these, when the run has several.
    seeds = analysis.get("seeds", 1)
    sets = f"union over {seeds} seeds" if seeds > 1 else "one seed"
    for kind in ("soft", "hard"):
        overlaps = analysis.get("overlap", {})
        overlap = overlaps.get(f"{kind}_union", overlaps.get(kind))
        if overlap and overlap["student"]:
            findings.append(
                f"{100 * overlap['share_easy']:.0f}% of the {kind} student's memorized examples are easy (memorized by teacher "
                f"and baseline too; paper: 95.7%); it inherits {overlap['inherited']} of the teacher's {overlap['teacher_only']} "
                f"teacher-only examples (paper: 18 of 1,955) and suppresses {overlap['suppressed']} that teacher and baseline "
                f"both memorize (paper: 696); {sets}, as in the paper's 3."
            )
    versus = analysis.get("soft_vs_hard")
    if versus and versus.get("inherited_ratio_hard_over_soft") is not None:
        findings.append(
            f"Hard distillation inherits {versus['inherited_hard']} teacher-specific examples, soft {versus['inherited_soft']} "
            f"({versus['inherited_ratio_hard_over_soft']:.1f}x; paper: 2.7x; {sets})."
        )
    for kind, result in analysis.get("predictor", {}).items():
        paper = result["paper_protocol"]
        honest = result["all_remaining_examples"]
        if "skipped" in paper:
            findings.append(f"Predicting the {kind} student's memorization: skipped, {paper['skipped']}.")
            continue
        sentence = (
            f"Before distillation, a logistic regression predicts the {kind} student's memorized examples with ROC-AUC "
            f"{paper['auc']['mean']:.3f} ± {paper['auc']['std']:.3f} under the paper's 1:3 protocol (paper: 0.9997)"
        )
        if "skipped" not in honest:
            sentence += (
                f"; scored on all remaining examples its average precision is {honest['average_precision']:.3f} "
                f"against a base rate of {honest['base_rate']:.3f}"
            )
        findings.append(sentence + ".")
    sweep = analysis.get("temperature_sweep")
    if isinstance(sweep, list) and sweep:
        counts = " / ".join(str(row["memorized"]) for row in sweep)
        temperatures = ", ".join(f"{row['temperature']:g}" for row in sweep)
        findings.append(f"Soft students memorize {counts} examples at T = {temperatures} (paper: 1,591 / 668 / 155 / 12 at T = 1..4).")
    filtering = analysis.get("filtering", {})
    if "memorized_after" in filtering and filtering.get("stand_in"):
        findings.append(f"Filtering ran on a stand-in target, not a result: {filtering['stand_in']}.")
    elif "memorized_after" in filtering:
        findings.append(
            f"Filtering the {filtering['student']} student's predicted examples ({filtering['flagged']} removed) and training again: "
            f"{filtering['memorized_before']} memorized before, {filtering['memorized_after']} after, {filtering['new_after']} of them new "
            f"(the privacy onion; paper: 4 new), at a validation-loss cost of {filtering['val_loss_cost']:+.3f}."
        )
    aucs = {name: row["membership"]["loss"]["auc"] for name, row in models.items() if "membership" in row}
    if aucs:
        shown = ", ".join(f"{name} {auc:.3f}" for name, auc in aucs.items())
        findings.append(f"Membership inference by loss (training vs validation examples), ROC-AUC: {shown}.")
    return findings
