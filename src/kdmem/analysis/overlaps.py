"""Where a student's memorized examples come from: set algebra over memorized example ids.

T, B and S are the sets of training examples the teacher, the baseline (the student's size,
trained with cross-entropy) and a distilled student memorize. The paper's vocabulary:

- easy-to-memorize: T ∩ B, examples both independently trained models memorize;
- inherited (teacher-specific): (T ∩ S) \\ B, what the student can only have from the teacher;
- suppressed: (T ∩ B) \\ S, what both memorize and distillation removes;
- teacher-only: T \\ B, the teacher-specific examples the student could inherit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

# Every example falls in exactly one region of the T/B/S Venn diagram.
CATEGORIES = {
    (True, True, True): "t_b_s",
    (True, True, False): "suppressed",
    (True, False, True): "inherited",
    (True, False, False): "teacher_only",
    (False, True, True): "baseline_and_student",
    (False, True, False): "baseline_only",
    (False, False, True): "student_only",
    (False, False, False): "none",
}


def memorized_ids(verdicts: pd.DataFrame) -> set[str]:
    """The example ids a per-example verdict table marks memorized."""
    return set(verdicts.loc[verdicts["memorized"].astype(bool), "example_id"])


def overlap(teacher: set, baseline: set, student: set) -> dict[str, float]:
    """Counts of the paper's categories for one student, and their shares of the student's set.

    ``teacher_only`` is |T \\ B| (the pool the student can inherit from), so ``inherited`` is part
    of it; ``inherited_share_of_teacher_only`` is the paper's "18 of 1,955 (0.9%)".
    """
    easy = teacher & baseline
    inherited = (teacher & student) - baseline
    size = len(student)
    teacher_only = teacher - baseline
    return {
        "teacher": len(teacher),
        "baseline": len(baseline),
        "student": size,
        "easy": len(easy),
        "inherited": len(inherited),
        "suppressed": len(easy - student),
        "student_only": len(student - teacher - baseline),
        "teacher_only": len(teacher_only),
        "t_b_s": len(easy & student),
        "baseline_and_student": len((baseline & student) - teacher),
        "share_easy": len(easy & student) / size if size else 0.0,
        "share_inherited": len(inherited) / size if size else 0.0,
        "inherited_share_of_teacher_only": len(inherited) / len(teacher_only) if teacher_only else 0.0,
    }


def shared_both_ways(first: set, second: set) -> dict[str, float | None]:
    """How much two memorized sets share, read from each side: the share of ``first`` that
    ``second`` memorizes too and the reverse (None for an empty side), and their Jaccard index."""
    both, either = len(first & second), len(first | second)
    return {
        "first": len(first),
        "second": len(second),
        "both": both,
        "share_of_first_in_second": both / len(first) if first else None,
        "share_of_second_in_first": both / len(second) if second else None,
        "jaccard": both / either if either else None,
    }


def categories(example_ids: Iterable[str], teacher: set, baseline: set, student: set) -> pd.Series:
    """Each example's Venn region (one of ``CATEGORIES``' values), indexed like ``example_ids``."""
    ids = list(example_ids)
    return pd.Series(
        [CATEGORIES[(i in teacher, i in baseline, i in student)] for i in ids], index=ids, name="category"
    )


def seed_consistency(
    example_ids: Sequence[str], baseline_seeds: Sequence[set], student_seeds: Sequence[set]
) -> np.ndarray:
    """(n_baseline + 1, n_student + 1) int: entry [i, j] counts examples memorized by exactly i
    baseline seeds and j student seeds (the paper's heatmap)."""
    matrix = np.zeros((len(baseline_seeds) + 1, len(student_seeds) + 1), dtype=np.int64)
    for i in example_ids:
        matrix[sum(i in s for s in baseline_seeds), sum(i in s for s in student_seeds)] += 1
    return matrix


def pairwise_overlap(a: set, b: set) -> dict[str, float]:
    """Overlap of two memorized sets (two runs, sizes or families on the same examples)."""
    union = a | b
    return {"a": len(a), "b": len(b), "both": len(a & b), "jaccard": len(a & b) / len(union) if union else 0.0}


def soft_vs_hard(teacher: set, baseline: set, soft: set, hard: set) -> dict[str, float]:
    """Soft vs hard distillation: their overlap, the hard-only examples and how many of those the
    teacher memorizes, and the ratio of inherited counts (hard / soft; paper: 2.7x)."""
    hard_only = hard - soft
    inherited_soft = len((teacher & soft) - baseline)
    inherited_hard = len((teacher & hard) - baseline)
    return {
        **{f"overlap_{k}": v for k, v in pairwise_overlap(soft, hard).items()},
        "hard_only": len(hard_only),
        "hard_only_memorized_by_teacher": len(hard_only & teacher),
        "hard_only_teacher_share": len(hard_only & teacher) / len(hard_only) if hard_only else 0.0,
        "inherited_soft": inherited_soft,
        "inherited_hard": inherited_hard,
        "inherited_ratio_hard_over_soft": inherited_hard / inherited_soft if inherited_soft else None,
    }
