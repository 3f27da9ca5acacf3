"""The run's findings, from ``summary.json`` and ``analysis.json``: the key findings in words, and
the paper's analyses 1 to 11 (9 in two halves) beside this run's figures, each with a verdict computed from the numbers
(``paper_findings``). Both open the HTML report and ``report.md``, and both read their numbers
through ``Measures``, so a sentence and a verdict never read one measure two ways."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Measures:
    """Each measure a finding states, read in one place from a run's ``summary.json`` (``summary``)
    and ``analysis.json`` (``analysis``); None (or empty) where the run did not measure it."""

    summary: dict
    analysis: dict

    @property
    def models(self) -> dict:
        """Model name -> its row of the summary (memorized, examples, rate, val_loss, ...)."""
        return self.summary["models"]

    @property
    def teacher_baseline_soft(self) -> tuple[dict, dict, dict] | None:
        """The summary rows of the teacher, the baseline and the soft student; None unless all three ran."""
        names = ("teacher", "baseline", "soft")
        return tuple(self.models[name] for name in names) if set(names) <= set(self.models) else None

    @property
    def seeds(self) -> int:
        return self.analysis.get("seeds", 1)

    def overlap(self, kind: str) -> dict | None:
        """``kind``'s set overlaps: over the union of seeds when the run has several (as the paper's
        3), else the first seed's."""
        overlaps = self.analysis.get("overlap", {})
        return overlaps.get(f"{kind}_union", overlaps.get(kind))

    def seed_consistency(self, kind: str) -> list[list[int]] | None:
        """[baseline seeds, student seeds] counts of examples, or None (see ``seed_consistency_skipped``)."""
        return self.analysis.get("seed_consistency", {}).get(kind)

    @property
    def seed_consistency_skipped(self) -> str:
        return self.analysis.get("seed_consistency", {}).get("skipped", "no seed heatmap")

    @property
    def cross_family(self) -> dict | None:
        return self.analysis.get("cross_family")

    @property
    def cross_scale(self) -> dict | None:
        """The cross-scale model against the baseline (``analysis.json``'s ``cross_scale``), if run."""
        result = self.analysis.get("cross_scale")
        return None if not result or "skipped" in result else result

    @property
    def easy_vs_rest(self) -> dict | None:
        """Feature means over the easy examples (``selected``) and over the rest (``rest``)."""
        return self.analysis.get("features", {}).get("easy_vs_rest")

    @property
    def predictors(self) -> dict:
        """Student kind -> its predictor's results (``paper_protocol``, ``all_remaining_examples``)."""
        return self.analysis.get("predictor", {})

    @property
    def filtering(self) -> dict:
        return self.analysis.get("filtering", {})

    @property
    def filtered(self) -> dict | None:
        """The filtering intervention's result, when it ran on the student's own memorized set."""
        filtering = self.filtering
        return filtering if "memorized_after" in filtering and not filtering.get("stand_in") else None

    @property
    def filtered_stand_in(self) -> str | None:
        """Why the filtering that ran is no result: it ran on a stand-in target (a rehearsal)."""
        return self.filtering.get("stand_in") if "memorized_after" in self.filtering else None

    def mechanism(self, kind: str) -> dict | None:
        return self.analysis.get("mechanism", {}).get(kind)

    @property
    def soft_vs_hard(self) -> dict | None:
        return self.analysis.get("soft_vs_hard")

    @property
    def sweep(self) -> list[dict]:
        """The temperature sweep's rows (temperature, model, memorized, ...); empty without one."""
        sweep = self.analysis.get("temperature_sweep")
        return sweep if isinstance(sweep, list) else []

    def downstream_accuracy(self, name: str) -> float | None:
        """Model ``name``'s mean accuracy over its utility tasks (lm-eval's ``acc``); None unmeasured."""
        tasks = self.models.get(name, {}).get("utility", {})
        accuracies = [metrics["acc"] for metrics in tasks.values() if "acc" in metrics]
        return float(np.mean(accuracies)) if accuracies else None

    @property
    def pilot(self) -> bool:
        """A pre-training pilot: the teacher is a given checkpoint (``teacher.fine_tune`` false)."""
        return "teacher" in self.summary.get("given_models", [])

    @property
    def membership_aucs(self) -> dict[str, float]:
        """Model name -> ROC-AUC of membership inference by loss, where it was measured."""
        return {name: row["membership"]["loss"]["auc"] for name, row in self.models.items() if "membership" in row}


def _percent(row: dict) -> str:
    return f"{row['memorized']} of {row['examples']} ({100 * row['rate']:.2f}%)"


def _against_baseline(memorized: int, baseline: int) -> str:
    """How a student's memorized count compares with the baseline's, in words that hold at the
    edges: more or fewer, and either count zero."""
    if baseline == 0:
        return " (the baseline memorizes none)"
    if memorized == 0:
        return f" (none, where the baseline memorizes {baseline})"
    if memorized == baseline:
        return " (as many as the baseline)"
    ratio, direction = (baseline / memorized, "fewer") if memorized < baseline else (memorized / baseline, "more")
    return f" ({ratio:.1f}x {direction} than the baseline's {baseline})"


def _loss_change(difference: float) -> str:
    """A change of validation loss in words by its sign, as shown to 3 decimals: ``with a
    validation loss lower by 0.595 than before`` (a gain), ``higher by 0.012`` (a cost)."""
    shown = f"{abs(difference):.3f}"
    if float(shown) == 0:
        return "with the same validation loss as before (to 3 decimals)"
    return f"with a validation loss {'lower' if difference < 0 else 'higher'} by {shown} than before"


def key_findings(summary: dict, analysis: dict) -> list[str]:
    """One sentence per finding the paper reports, stated with this run's numbers."""
    m = Measures(summary, analysis)
    findings = []
    teacher, baseline = m.models["teacher"], m.models["baseline"]
    findings.append(
        f"The teacher memorizes {_percent(teacher)} of its training examples, the same-size-as-student "
        f"baseline {_percent(baseline)} (paper, Pythia/FineWeb: 0.33% and 0.17%)."
    )
    for kind in ("soft", "hard"):
        row = m.models.get(kind)
        if row is None:
            continue
        fewer = _against_baseline(row["memorized"], baseline["memorized"])
        utility = "lower" if row["val_loss"] < baseline["val_loss"] else "higher"
        findings.append(
            f"The {kind} student memorizes {_percent(row)}{fewer}, at a {utility} validation loss than the "
            f"baseline ({row['val_loss']:.3f} vs {baseline['val_loss']:.3f})."
        )
    # The paper's set analyses use the union over its 3 seeds; so do these, when the run has several.
    sets = f"union over {m.seeds} seeds" if m.seeds > 1 else "one seed"
    for kind in ("soft", "hard"):
        overlap = m.overlap(kind)
        if overlap and overlap["student"]:
            findings.append(
                f"{100 * overlap['share_easy']:.0f}% of the {kind} student's memorized examples are easy "
                f"(memorized by teacher and baseline too; paper: 95.7%); it inherits {overlap['inherited']} of "
                f"the teacher's {overlap['teacher_only']} teacher-only examples (paper: 18 of 1,955) and "
                f"suppresses {overlap['suppressed']} that teacher and baseline both memorize (paper: 696); "
                f"{sets}, as in the paper's 3."
            )
    if (scale := m.cross_scale) and scale["share_of_cross_scale_in_baseline"] is not None:
        findings.append(
            f"{100 * scale['share_of_cross_scale_in_baseline']:.0f}% of the {scale['cross_scale']} examples "
            f"{scale['model']} memorizes are memorized by the baseline too (paper, Pythia-1B beside the 1.4B "
            "baseline: 96%)."
        )
    versus = m.soft_vs_hard
    if versus and versus.get("inherited_ratio_hard_over_soft") is not None:
        findings.append(
            f"Hard distillation inherits {versus['inherited_hard']} teacher-specific examples, soft "
            f"{versus['inherited_soft']} ({versus['inherited_ratio_hard_over_soft']:.1f}x; paper: 2.7x; {sets})."
        )
    for kind, result in m.predictors.items():
        paper = result["paper_protocol"]
        honest = result["all_remaining_examples"]
        if "skipped" in paper:
            findings.append(f"Predicting the {kind} student's memorization: skipped, {paper['skipped']}.")
            continue
        sentence = (
            f"Before distillation, a logistic regression predicts the {kind} student's memorized examples with "
            f"ROC-AUC {paper['auc']['mean']:.3f} ± {paper['auc']['std']:.3f} under the paper's 1:3 protocol "
            "(paper: 0.9997)"
        )
        if "skipped" not in honest:
            sentence += (
                f"; scored on all remaining examples its average precision is {honest['average_precision']:.3f} "
                f"against a base rate of {honest['base_rate']:.3f}"
            )
        findings.append(sentence + ".")
    if m.sweep:
        counts = " / ".join(str(row["memorized"]) for row in m.sweep)
        temperatures = ", ".join(f"{row['temperature']:g}" for row in m.sweep)
        findings.append(
            f"Soft students memorize {counts} examples at T = {temperatures} "
            "(paper: 1,591 / 668 / 155 / 12 at T = 1..4)."
        )
    if m.filtered_stand_in:
        findings.append(f"Filtering ran on a stand-in target, not a result: {m.filtered_stand_in}.")
    elif filtered := m.filtered:
        findings.append(
            f"Filtering the {filtered['student']} student's predicted examples ({filtered['flagged']} removed) and "
            f"training again: {filtered['memorized_before']} memorized before, {filtered['memorized_after']} after, "
            f"{filtered['new_after']} of them new (the privacy onion; paper: 4 new), "
            f"{_loss_change(filtered['val_loss_cost'])}."
        )
    if m.pilot and (row := m.models.get("soft")) is not None:
        findings.append(
            "In this pre-training pilot, where teacher and baseline are checkpoints that saw D in pre-training "
            "and nobody fine-tuned them, the soft student distilled from the earlier checkpoint memorizes "
            f"{_percent(row)} (paper: teacher 1.57%, baseline 0.27%, student 0.06%)."
        )
    if m.membership_aucs:
        shown = ", ".join(f"{name} {auc:.3f}" for name, auc in m.membership_aucs.items())
        findings.append(f"Membership inference by loss (training vs validation examples), ROC-AUC: {shown}.")
    return findings


# --- The paper's findings, each with this run's figure and a verdict ---------------------------


@dataclass(frozen=True)
class Finding:
    """One of the paper's analyses (``../shared/PAPER.md``, 1 to 10, and 9b) beside this run's figure."""

    number: int | str
    """The paper's analysis number; ``9b``: the second half of analysis 9 (the paper's v2)."""
    analysis: str
    paper: str
    kdmem: str
    """This run's figure, or why there is none."""
    agrees: str
    """``yes``, ``no`` or ``n/a`` (no data for it): does the run agree with the paper in direction?"""
    criterion: str
    """What agreeing in direction means, checked on the numbers."""


def verdict(agrees: bool | None) -> str:
    return "n/a" if agrees is None else ("yes" if agrees else "no")


NEEDS_THREE = "needs the teacher, the baseline and the soft student"


def _rates(m: Measures) -> tuple[str, bool | None]:
    if m.teacher_baseline_soft is None:
        return NEEDS_THREE, None
    t, b, s = m.teacher_baseline_soft
    figure = (
        f"memorized {t['memorized']} / {b['memorized']} / {s['memorized']} of {t['examples']}; "
        f"validation loss soft {s['val_loss']:.3f} vs baseline {b['val_loss']:.3f}"
    )
    return figure, t["memorized"] > b["memorized"] > s["memorized"] and s["val_loss"] < b["val_loss"]


def _overlaps(m: Measures) -> tuple[str, bool | None]:
    overlap = m.overlap("soft")
    if not overlap or not overlap["student"]:
        return "the soft student memorizes nothing", None
    figure = (
        f"{100 * overlap['share_easy']:.0f}% easy; inherits {overlap['inherited']} of {overlap['teacher_only']} "
        f"teacher-only ({100 * overlap['inherited_share_of_teacher_only']:.1f}%); suppresses {overlap['suppressed']}"
    )
    return figure, overlap["share_easy"] > 0.5 and overlap["inherited_share_of_teacher_only"] < 0.1


def _seed_consistency(m: Measures) -> tuple[str, bool | None]:
    matrix = m.seed_consistency("soft")
    if matrix is None:
        return m.seed_consistency_skipped, None
    counts = np.asarray(matrix, dtype=float)  # [baseline seeds, student seeds]
    memorized_by = [j for j in range(1, counts.shape[1]) if counts[:, j].sum()]
    if not memorized_by or not counts[:, 0].sum():
        return "no soft-student seed memorizes an example", None
    seeds = np.arange(counts.shape[0])
    mean_at = {j: float(seeds @ counts[:, j] / counts[:, j].sum()) for j in (0, memorized_by[-1])}
    figure = (
        f"baseline seeds memorizing an example: {mean_at[memorized_by[-1]]:.2f} on average where "
        f"{memorized_by[-1]} student seeds do, {mean_at[0]:.2f} where none does"
    )
    return figure, mean_at[memorized_by[-1]] > mean_at[0]


def _across_models(m: Measures) -> tuple[str, bool | None]:
    """Two halves, each decided where the run measured it: another size of the family memorizes
    mostly what the baseline memorizes (cross-scale), and another family memorizes other examples
    while its zlib estimates agree (cross-family)."""
    figures, verdicts = [], []
    scale = m.cross_scale
    if scale:
        share = scale["share_of_cross_scale_in_baseline"]
        if share is None:
            figures.append(f"cross-scale: {scale['model']} memorizes nothing")
        else:
            back = scale["share_of_baseline_in_cross_scale"]
            figures.append(
                f"cross-scale: {100 * share:.0f}% of {scale['model']}'s {scale['cross_scale']} memorized examples "
                f"are the baseline's too (of the baseline's {scale['baseline']}: "
                f"{'n/a' if back is None else f'{100 * back:.0f}%'})"
            )
            verdicts.append(share > 0.5)
    pair = m.cross_family
    if pair and pair.get("zlib_pearson") is not None and "baseline" in pair.get("overlap", {}):
        jaccard = pair["overlap"]["baseline"]["jaccard"]
        figures.append(
            f"cross-family: zlib entropy Pearson r {pair['zlib_pearson']:.3f}; baselines' memorized sets "
            f"Jaccard {jaccard:.3f}"
        )
        verdicts.append(pair["zlib_pearson"] >= 0.9 and jaccard < 0.5)
    if not figures:
        return (
            "no cross-scale model (cross_scale.model) and no second family (second_family.enabled, or "
            "`kdmem compare` of two runs)",
            None,
        )
    return "; ".join(figures), all(verdicts) if verdicts else None


def _easy_examples(m: Measures) -> tuple[str, bool | None]:
    easy = m.easy_vs_rest
    if not easy or not easy.get("selected") or not easy.get("rest"):
        return "no easy examples (memorized by teacher and baseline)", None
    chosen, rest = easy["selected"], easy["rest"]
    figure = (
        f"zlib {chosen['zlib_entropy']:.1f} vs {rest['zlib_entropy']:.1f}; baseline PPL "
        f"{chosen['baseline_ppl']:.2f} vs {rest['baseline_ppl']:.2f} (easy vs the rest)"
    )
    return figure, chosen["zlib_entropy"] < rest["zlib_entropy"] and chosen["baseline_ppl"] < rest["baseline_ppl"]


def _predictor(m: Measures) -> tuple[str, bool | None]:
    result = m.predictors.get("soft", {}).get("paper_protocol")
    if not result or "skipped" in result:
        return f"soft student: {result['skipped']}" if result else "no predictor of the soft student", None
    zlib = result["coefficients"].get("zlib_entropy")
    figure = f"ROC-AUC {result['auc']['mean']:.3f} ± {result['auc']['std']:.3f}; zlib coefficient {zlib:+.2f}"
    return figure, result["auc"]["mean"] >= 0.8 and zlib is not None and zlib < 0


def _filtering(m: Measures) -> tuple[str, bool | None]:
    filtered = m.filtered
    if not filtered:
        stand_in = m.filtering.get("stand_in")
        return m.filtering.get("skipped", "a stand-in target (a rehearsal)" if stand_in else "filtering is off"), None
    figure = (
        f"{filtered['student']} student: {filtered['memorized_before']} memorized before, "
        f"{filtered['memorized_after']} after ({filtered['new_after']} new)"
    )
    return figure, filtered["memorized_after"] < filtered["memorized_before"]


def _mechanism(m: Measures) -> tuple[str, bool | None]:
    mechanism = m.mechanism("soft")
    if not mechanism or not mechanism.get("suppressed") or "soft" not in mechanism:
        return "no suppressed examples (memorized by teacher and baseline, not the soft student)", None
    t, b, s = (mechanism[name] for name in ("teacher", "baseline", "soft"))
    figure = (
        f"entropy teacher {t['entropy_last_k']:.2f} / baseline {b['entropy_last_k']:.2f} / student "
        f"{s['entropy_last_k']:.2f}; log-prob {t['log_prob']:.1f} / {b['log_prob']:.1f} / {s['log_prob']:.1f} "
        f"({mechanism['suppressed']} examples)"
    )
    return figure, s["entropy_last_k"] > t["entropy_last_k"] and s["log_prob"] < min(t["log_prob"], b["log_prob"])


def _soft_vs_hard(m: Measures) -> tuple[str, bool | None]:
    """Two halves, each decided where the run measured it: the hard student inherits more
    teacher-specific examples, and beats the baseline downstream (mean accuracy over the tasks)."""
    versus = m.soft_vs_hard
    figures, verdicts = [], []
    if versus and "inherited_hard" in versus:
        figures.append(
            f"teacher-specific examples inherited: hard {versus['inherited_hard']}, soft {versus['inherited_soft']}"
        )
        if versus["inherited_hard"] or versus["inherited_soft"]:
            verdicts.append(versus["inherited_hard"] > versus["inherited_soft"])
    hard, baseline = m.downstream_accuracy("hard"), m.downstream_accuracy("baseline")
    if hard is not None and baseline is not None:
        figures.append(f"downstream accuracy hard {100 * hard:.1f}% vs baseline {100 * baseline:.1f}%")
        verdicts.append(hard > baseline)
    if not figures:
        return "needs the soft and the hard student", None
    return "; ".join(figures), all(verdicts) if verdicts else None


def _gain_recovered(m: Measures) -> tuple[str, bool | None]:
    """The share of the teacher's downstream gain over the baseline that each student recovers:
    (student - baseline) / (teacher - baseline), in mean accuracy; decided on the hard student."""
    teacher, baseline = m.downstream_accuracy("teacher"), m.downstream_accuracy("baseline")
    if teacher is None or baseline is None:
        return "no utility tasks (utility.tasks)", None
    if teacher <= baseline:
        return f"the teacher gains nothing downstream: {100 * teacher:.1f}% vs baseline {100 * baseline:.1f}%", None
    shares = {
        kind: (accuracy - baseline) / (teacher - baseline)
        for kind in ("hard", "soft")
        if (accuracy := m.downstream_accuracy(kind)) is not None
    }
    if not shares:
        return "needs a student evaluated downstream", None
    figure = "; ".join(f"{kind} {100 * share:.0f}%" for kind, share in shares.items())
    figure += f" of the teacher's {100 * (teacher - baseline):.1f} points over the baseline"
    decided = shares.get("hard", shares.get("soft"))
    return figure, decided > 0


def _pilot(m: Measures) -> tuple[str, bool | None]:
    """The pre-training pilot: memorized counts of the given teacher, the given baseline and the
    soft student, its easy share and its new examples (memorized by neither teacher nor baseline)."""
    if not m.pilot:
        return "not a pre-training pilot (teacher.fine_tune=false, baseline.model; the pilot-mini preset)", None
    if m.teacher_baseline_soft is None:
        return NEEDS_THREE, None
    t, b, s = m.teacher_baseline_soft
    figure = (
        f"memorized {t['memorized']} ({100 * t['rate']:.2f}%) / {b['memorized']} ({100 * b['rate']:.2f}%) / "
        f"{s['memorized']} ({100 * s['rate']:.2f}%) of {t['examples']}"
    )
    overlap = m.overlap("soft")
    if overlap and overlap["student"]:
        figure += f"; {100 * overlap['share_easy']:.0f}% easy, {overlap['student_only']} new"
        mostly_easy = overlap["share_easy"] > 0.5
    else:
        figure += "; the soft student memorizes none (0 new), so no easy share"
        mostly_easy = True
    return figure, t["memorized"] > b["memorized"] > s["memorized"] and mostly_easy


def _temperature(m: Measures) -> tuple[str, bool | None]:
    if len(m.sweep) < 2:
        return "fewer than two temperatures (soft.sweep_temperatures)", None
    counts = [row["memorized"] for row in m.sweep]
    figure = " / ".join(map(str, counts)) + " at T = " + ", ".join(f"{row['temperature']:g}" for row in m.sweep)
    return figure, all(a >= b for a, b in zip(counts, counts[1:], strict=False)) and counts[0] > counts[-1]


PAPER_FINDINGS = (
    (
        1,
        "Rates and utility",
        "memorized 0.33% / 0.17% / 0.07% (teacher / baseline / soft); the student's validation loss is lower",
        "teacher > baseline > soft student in memorized examples, and the soft student's validation loss below "
        "the baseline's",
        _rates,
    ),
    (
        2,
        "Set overlaps",
        "95.7% of the student's memorized set is easy; it inherits 18 of 1,955 teacher-only examples (0.9%)",
        "most of the soft student's memorized set is easy (over 50%), and it inherits under 10% of the "
        "teacher-only examples",
        _overlaps,
    ),
    (
        3,
        "Seed consistency",
        "3x3 heatmap: what more student seeds memorize, more baseline seeds memorize",
        "examples that the most soft-student seeds memorize are memorized by more baseline seeds than examples "
        "none does",
        _seed_consistency,
    ),
    (
        4,
        "Cross-scale and cross-family",
        "96% of Pythia-1B's memorized set is memorized by the 1.4B baseline too; families share no memorized "
        "examples, and their zlib estimates correlate (Pearson r 0.95-0.99)",
        "over half of the cross-scale model's memorized set is the baseline's too; zlib entropy correlates across "
        "the families (r at least 0.9), and their baselines share under half their memorized sets (Jaccard below "
        "0.5) (each half decided where the run measured it)",
        _across_models,
    ),
    (
        5,
        "What easy examples look like",
        "easy examples cluster at low zlib entropy and low baseline perplexity",
        "easy examples have a lower mean zlib entropy and baseline perplexity than the rest",
        _easy_examples,
    ),
    (
        6,
        "Predicting student memorization",
        "ROC-AUC 0.9997; zlib has the largest, negative coefficient",
        "ROC-AUC at least 0.8 under the paper's 1:3 protocol, and a negative zlib coefficient",
        _predictor,
    ),
    (
        7,
        "Filtering intervention",
        "re-distilled without the flagged examples, the student memorizes 4 (new) examples",
        "the student distilled again memorizes fewer examples of D than before",
        _filtering,
    ),
    (
        8,
        "Mechanism",
        "on suppressed examples the student has high entropy and low log-probability; the teacher low entropy",
        "the soft student's entropy above the teacher's, and its log-probability below the teacher's and the "
        "baseline's",
        _mechanism,
    ),
    (
        9,
        "Soft vs hard",
        "hard KD inherits 2.7x more teacher-specific examples (50 vs 18); downstream the hard student beats the "
        "baseline: LAMBADA 56.65% vs 51.85% (PPL 6.43 vs 9.41), WinoGrande 57.46% vs 55.72%",
        "the hard student inherits more teacher-specific examples than the soft one, and its mean accuracy on "
        "the utility tasks is above the baseline's (each half decided where the run measured it)",
        _soft_vs_hard,
    ),
    (
        "9b",
        "Teacher's gain recovered",
        "the student recovers 78% of the teacher's generalization (v2)",
        "the hard student (else the soft) recovers a positive share of the teacher's gain in mean downstream "
        "accuracy over the baseline",
        _gain_recovered,
    ),
    (
        10,
        "Temperature",
        "1,591 / 668 / 155 / 12 memorized at T = 1..4",
        "memorized count never rises with T, and is lower at the highest T than at the lowest",
        _temperature,
    ),
    (
        11,
        "Pre-training distillation pilot",
        "teacher (Pythia-12B at step 116k) 16,133 (1.57%) / baseline (2.8B at 116k) 2,785 (0.27%) / student (2.8B "
        "from 115k, distilled 5 epochs) 638 (0.06%) memorized; 76% of the student's set easy, 92 new",
        "teacher > baseline > soft student in memorized examples, and most of the student's memorized set easy "
        "(over 50%) where it memorizes any",
        _pilot,
    ),
)
"""The analyses of the paper kdmem reproduces, as (number, name, the paper's figure, criterion, and
the function giving a run's figure and verdict from its ``Measures``)."""


def paper_findings(summary: dict, analysis: dict) -> list[Finding]:
    """The paper's analyses beside this run's figures, each with a verdict decided on the numbers."""
    measures = Measures(summary, analysis)
    findings = []
    for number, name, paper, criterion, measure in PAPER_FINDINGS:
        figure, agrees = measure(measures)
        findings.append(Finding(number, name, paper, figure, verdict(agrees), criterion))
    return findings
