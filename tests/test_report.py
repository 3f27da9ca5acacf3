from kdmem.report import headline_table
from kdmem.report.headline import reduction_vs_baseline


def row(memorized, auc=None):
    values = {"memorized": memorized, "examples": 100, "rate": memorized / 100, "val_loss": 4.0, "val_ppl": 54.6}
    if auc is not None:
        values["membership"] = {"loss": {"auc": auc}}
    return values


def test_reduction_compares_with_the_baseline_of_the_same_seed():
    summary = {
        "models": {
            "teacher": row(30),
            "baseline": row(12),
            "baseline-seed1": row(20),
            "soft": row(3),
            "soft-seed1": row(5),
            "soft-T4": row(0),
            "hard": row(12, auc=0.61),
        }
    }
    assert reduction_vs_baseline(summary, "soft") == 4.0
    assert reduction_vs_baseline(summary, "soft-seed1") == 4.0
    assert reduction_vs_baseline(summary, "soft-T4") == float("inf")  # a sweep student: the first seed's baseline
    assert reduction_vs_baseline(summary, "baseline-seed1") is None
    table = headline_table(summary)
    hard_line = next(line for line in table.splitlines() if line.startswith("hard"))
    assert "1.00x" in hard_line and hard_line.endswith("0.610")
    assert "4.00x" in next(line for line in table.splitlines() if line.startswith("soft-seed1"))


# --- The findings table: verdicts from hand-built summaries and analyses -------------------------


def utility(last_word, two_choice):
    return {
        "utility": {"kdmem_last_word": {"perplexity": 90.0, "acc": last_word}, "kdmem_two_choice": {"acc": two_choice}}
    }


FINDINGS = [*range(1, 10), "9b", 10, 11]


def cross_scale(share: float | None) -> dict:
    return {
        "model": "EleutherAI/pythia-1b",
        "cross_scale": 25 if share is not None else 0,
        "baseline": 30,
        "both": round(25 * (share or 0)),
        "share_of_cross_scale_in_baseline": share,
        "share_of_baseline_in_cross_scale": 0.8,
        "jaccard": 0.7,
    }


def paper_like():
    """A summary and analysis that agree with the paper on every analysis (3 seeds, a second family)."""
    summary = {
        "models": {
            "teacher": row(30) | {"val_loss": 3.0} | utility(0.60, 0.70),
            "baseline": row(12) | {"val_loss": 4.0} | utility(0.50, 0.52),
            "soft": row(3) | {"val_loss": 3.8} | utility(0.52, 0.54),
            "hard": row(3) | {"val_loss": 4.1} | utility(0.56, 0.60),
        },
        "given_models": ["teacher", "baseline"],  # read as a pre-training pilot too, for row 11
    }
    overlap = {
        "student": 10,
        "share_easy": 0.9,
        "inherited": 1,
        "teacher_only": 40,
        "inherited_share_of_teacher_only": 0.025,
        "suppressed": 7,
        "student_only": 1,
    }
    analysis = {
        "overlap": {"soft": overlap | {"student": 3}, "soft_union": overlap},
        # [baseline seeds, student seeds]: what 3 student seeds memorize, 3 baseline seeds do
        "seed_consistency": {"soft": [[500, 1, 0, 0], [20, 2, 0, 0], [5, 1, 1, 0], [4, 0, 1, 3]]},
        "cross_family": {"zlib_pearson": 0.97, "overlap": {"baseline": {"jaccard": 0.0}}},
        "cross_scale": cross_scale(0.96),
        "features": {
            "easy_vs_rest": {
                "selected": {"zlib_entropy": 120.0, "baseline_ppl": 1.5},
                "rest": {"zlib_entropy": 140.0, "baseline_ppl": 2.2},
            }
        },
        "predictor": {
            "soft": {
                "paper_protocol": {
                    "auc": {"mean": 0.95, "std": 0.02},
                    "coefficients": {"zlib_entropy": -1.3, "teacher_ppl": -0.2},
                }
            }
        },
        "filtering": {"student": "soft", "memorized_before": 10, "memorized_after": 2, "new_after": 2},
        "mechanism": {
            "soft": {
                "suppressed": 7,
                "teacher": {"entropy_last_k": 1.1, "log_prob": -25.0},
                "baseline": {"entropy_last_k": 1.3, "log_prob": -30.0},
                "soft": {"entropy_last_k": 2.2, "log_prob": -90.0},
            }
        },
        "soft_vs_hard": {"inherited_hard": 5, "inherited_soft": 1},
        "temperature_sweep": [{"temperature": t, "memorized": m} for t, m in ((1, 9), (2, 3), (3, 3), (4, 0))],
    }
    return summary, analysis


def verdicts(summary, analysis):
    from kdmem.report.findings import paper_findings

    return {f.number: f.agrees for f in paper_findings(summary, analysis)}


def test_findings_agree_with_the_paper_where_the_numbers_do():
    summary, analysis = paper_like()
    assert verdicts(summary, analysis) == dict.fromkeys(FINDINGS, "yes")


def test_findings_disagree_where_the_numbers_go_the_other_way():
    import copy

    summary, analysis = paper_like()
    flip = copy.deepcopy(analysis)
    changed = copy.deepcopy(summary)
    changed["models"]["soft"]["val_loss"] = 4.5  # memorizes less, but at a higher loss than the baseline
    changed["models"]["hard"] |= utility(0.45, 0.50)  # below the baseline downstream: no gain recovered
    flip["overlap"]["soft_union"]["share_easy"] = 0.4
    flip["seed_consistency"]["soft"] = [
        [500, 1, 0, 3],
        [20, 2, 0, 0],
        [5, 1, 1, 0],
        [4, 0, 1, 0],
    ]  # 3 student seeds, no baseline seed
    flip["cross_family"]["overlap"]["baseline"]["jaccard"] = 0.8
    flip["features"]["easy_vs_rest"]["selected"]["zlib_entropy"] = 150.0
    flip["predictor"]["soft"]["paper_protocol"]["coefficients"]["zlib_entropy"] = 0.4
    flip["filtering"]["memorized_after"] = 12
    flip["mechanism"]["soft"]["soft"]["log_prob"] = -20.0
    flip["soft_vs_hard"] = {"inherited_hard": 1, "inherited_soft": 1}
    flip["temperature_sweep"][2]["memorized"] = 5  # rises from T = 2 to T = 3
    assert verdicts(changed, flip) == dict.fromkeys(FINDINGS, "no")


def test_findings_without_data_are_not_applicable():
    summary = {"models": {"teacher": row(30), "baseline": row(12)}}  # no student
    analysis = {
        "overlap": {"soft": {"student": 0}},
        "seed_consistency": {"skipped": "one seed only"},
        "features": {
            "easy_vs_rest": {"selected": None, "rest": {"zlib_entropy": 140.0, "baseline_ppl": 2.2}}
        },  # as analyze writes it
        "predictor": {"soft": {"paper_protocol": {"skipped": "needs at least 2 memorized examples, found 1"}}},
        "filtering": {"student": "soft", "memorized_before": 3, "memorized_after": 0, "stand_in": "a rehearsal"},
        "mechanism": {"soft": {"suppressed": 0}},
        "soft_vs_hard": {"inherited_hard": 0, "inherited_soft": 0},
        "temperature_sweep": [{"temperature": 2.0, "memorized": 0}],
    }
    from kdmem.report.findings import paper_findings

    findings = paper_findings(summary, analysis)
    assert [f.agrees for f in findings] == ["n/a"] * 12
    assert "needs at least 2 memorized examples" in findings[5].kdmem and "one seed only" in findings[2].kdmem


def test_the_findings_table_in_markdown_keeps_characters_and_escapes_data():
    from kdmem.report.findings import paper_findings
    from kdmem.report.html import _markdown_data, findings_table

    table = findings_table(paper_findings(*paper_like()))
    assert table.count("\n") == 13 and "| 6 | Predicting student memorization |" in table and "student's" in table
    assert "&#x27;" not in table and "&amp;" not in table
    assert _markdown_data("<img src=x onerror=alert(1)> *run*") == r"\<img src=x onerror=alert\(1\)\> \*run\*"


def test_the_student_against_the_baseline_in_words_at_the_edges():
    from kdmem.report.findings import key_findings

    def sentence(student, baseline):
        summary = {"models": {"teacher": row(30), "baseline": row(baseline), "soft": row(student)}}
        return next(f for f in key_findings(summary, {}) if f.startswith("The soft student"))

    assert "(2.0x more than the baseline's 2)" in sentence(4, 2)
    assert "(4.0x fewer than the baseline's 8)" in sentence(2, 8)
    assert "(the baseline memorizes none)" in sentence(3, 0) and "0.0x" not in sentence(3, 0)
    assert "(none, where the baseline memorizes 5)" in sentence(0, 5)
    assert "(as many as the baseline)" in sentence(5, 5)


def test_the_filtering_sentence_says_lower_or_higher_by_the_sign():
    """Before: "at a validation-loss cost of -0.595", a gain read as a cost."""
    from kdmem.report.findings import key_findings

    def sentence(cost):
        summary = {"models": {"teacher": row(30), "baseline": row(12)}}
        filtering = {
            "student": "hard",
            "flagged": 88,
            "memorized_before": 15,
            "memorized_after": 0,
            "new_after": 0,
            "val_loss_cost": cost,
        }
        return next(f for f in key_findings(summary, {"filtering": filtering}) if f.startswith("Filtering"))

    assert sentence(-0.5952).endswith(
        "0 of them new (the privacy onion; paper: 4 new), with a validation loss lower by 0.595 than before."
    )
    assert sentence(0.0121).endswith(", with a validation loss higher by 0.012 than before.")
    assert sentence(-0.0004).endswith(", with the same validation loss as before (to 3 decimals).")
    assert not any("cost" in sentence(cost) or "-0." in sentence(cost) for cost in (-0.5952, 0.0121, -0.0004))
    stand_in = {"filtering": {"memorized_after": 0, "stand_in": "a rehearsal", "val_loss_cost": -0.5}}
    assert "Filtering ran on a stand-in target, not a result: a rehearsal." in key_findings(
        {"models": {"teacher": row(30), "baseline": row(12)}}, stand_in
    )


def test_key_findings_and_the_findings_table_state_the_same_numbers():
    """Both read each measure through ``Measures``: the soft student's union overlap, the sweep and
    the filtering result appear in the sentences as in the table."""
    from kdmem.report.findings import key_findings, paper_findings

    summary, analysis = paper_like()
    analysis["seeds"] = 3
    analysis["predictor"]["soft"]["all_remaining_examples"] = {"skipped": "too few examples left"}
    analysis["filtering"] |= {"flagged": 12, "val_loss_cost": 0.02}
    sentences = " ".join(key_findings(summary, analysis))
    table = {f.number: f.kdmem for f in paper_findings(summary, analysis)}
    assert "90% of the soft student's memorized examples are easy" in sentences and table[2].startswith("90% easy")
    assert "inherits 1 of the teacher's 40 teacher-only" in sentences and "inherits 1 of 40" in table[2]
    assert "Soft students memorize 9 / 3 / 3 / 0 examples at T = 1, 2, 3, 4" in sentences
    assert table[10] == "9 / 3 / 3 / 0 at T = 1, 2, 3, 4"
    assert "10 memorized before, 2 after, 2 of them new" in sentences
    assert table[7] == "soft student: 10 memorized before, 2 after (2 new)"


def test_the_cross_scale_half_of_row_4_is_decided_on_its_own():
    """Row 4's cross-scale half decides the row where the run has no second family: over half of
    the cross-scale model's memorized set the baseline's too (the paper: 96%)."""
    from kdmem.report.findings import paper_findings

    summary, analysis = paper_like()
    del analysis["cross_family"]
    for share, expected in ((0.96, "yes"), (0.3, "no"), (None, "n/a")):
        analysis["cross_scale"] = cross_scale(share)
        row4 = next(f for f in paper_findings(summary, analysis) if f.number == 4)
        assert row4.agrees == expected, (share, row4)
        assert "cross-scale" in row4.kdmem and "cross-family" not in row4.kdmem
    analysis["cross_scale"] = cross_scale(0.96)
    assert "96% of EleutherAI/pythia-1b's 25 memorized examples are the baseline's too" in next(
        f.kdmem for f in paper_findings(summary, analysis) if f.number == 4
    )
    analysis["cross_scale"] = {"skipped": "no cross-scale model"}
    assert next(f.agrees for f in paper_findings(summary, analysis) if f.number == 4) == "n/a"
