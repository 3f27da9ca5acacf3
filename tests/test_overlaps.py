import pandas as pd
import pytest

from kdmem.analysis.overlaps import (
    categories,
    memorized_ids,
    overlap,
    pairwise_overlap,
    seed_consistency,
    soft_vs_hard,
)

# A hand-built case: ten examples a..j.
T = {"a", "b", "c", "d", "e", "f"}
B = {"a", "b", "c", "g"}
S = {"a", "b", "d", "g", "h"}
IDS = list("abcdefghij")


def test_overlap_counts_match_a_hand_count():
    counts = overlap(T, B, S)
    assert counts["easy"] == 3  # a b c
    assert counts["t_b_s"] == 2  # a b
    assert counts["suppressed"] == 1  # c
    assert counts["inherited"] == 1  # d
    assert counts["teacher_only"] == 3  # d e f: T minus B
    assert counts["student_only"] == 1  # h
    assert counts["baseline_and_student"] == 1  # g
    assert counts["share_easy"] == pytest.approx(2 / 5)
    assert counts["share_inherited"] == pytest.approx(1 / 5)
    assert counts["inherited_share_of_teacher_only"] == pytest.approx(1 / 3)
    # the student's set is split across its four regions without loss
    assert counts["t_b_s"] + counts["inherited"] + counts["baseline_and_student"] + counts["student_only"] == len(S)


def test_overlap_of_an_empty_student():
    counts = overlap(T, B, set())
    assert counts["student"] == 0 and counts["share_easy"] == 0.0 and counts["suppressed"] == 3


def test_categories_partition_every_example():
    cats = categories(IDS, T, B, S)
    assert cats.to_dict() == {
        "a": "t_b_s",
        "b": "t_b_s",
        "c": "suppressed",
        "d": "inherited",
        "e": "teacher_only",
        "f": "teacher_only",
        "g": "baseline_and_student",
        "h": "student_only",
        "i": "none",
        "j": "none",
    }
    counts = overlap(T, B, S)
    assert (cats == "suppressed").sum() == counts["suppressed"] and (cats == "inherited").sum() == counts["inherited"]


def test_seed_consistency_heatmap():
    baselines = [{"a", "b"}, {"a", "c"}, {"a"}]
    students = [{"a"}, {"a", "b"}, {"d"}]
    matrix = seed_consistency(list("abcde"), baselines, students)
    assert matrix.shape == (4, 4)
    assert matrix[3, 2] == 1  # a: all three baselines, two students
    assert matrix[1, 1] == 1  # b
    assert matrix[1, 0] == 1  # c
    assert matrix[0, 1] == 1  # d
    assert matrix[0, 0] == 1  # e
    assert matrix.sum() == 5


def test_memorized_ids_and_pairwise_and_soft_vs_hard():
    verdicts = pd.DataFrame({"example_id": list("abc"), "memorized": [True, False, True]})
    assert memorized_ids(verdicts) == {"a", "c"}
    assert pairwise_overlap({"a", "b"}, {"b", "c"}) == {"a": 2, "b": 2, "both": 1, "jaccard": pytest.approx(1 / 3)}
    hard = {"a", "d", "e", "f", "x"}
    result = soft_vs_hard(T, B, S, hard)
    assert result["overlap_both"] == 2  # a d
    assert result["hard_only"] == 3  # e f x
    assert result["hard_only_memorized_by_teacher"] == 2 and result["hard_only_teacher_share"] == pytest.approx(2 / 3)
    assert (result["inherited_soft"], result["inherited_hard"]) == (1, 3)  # d; d e f
    assert result["inherited_ratio_hard_over_soft"] == 3.0
    assert soft_vs_hard(T, B, set(), hard)["inherited_ratio_hard_over_soft"] is None
