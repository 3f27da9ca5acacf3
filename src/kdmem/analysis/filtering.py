"""The filtering intervention: drop from D what the predictor flags, re-distill, and compare.

The predictor is fitted on half of D (stratified) and its threshold is set on the other half so
that at least ``target_recall`` of the student's memorized examples there are flagged; every
example of D at or above that threshold is then removed. Re-distilling on what is left shows
whether memorization simply moves to other examples (the "privacy onion").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from kdmem.analysis.predictor import FEATURES, fit_risk_model, precision_at_recall

MIN_MEMORIZED_TO_FILTER = 4
"""Memorized examples the predictor needs: two to fit on and two to calibrate the threshold on."""


def flag_examples(
    features: pd.DataFrame, memorized: np.ndarray, target_recall: float = 0.99, seed: int = 0
) -> tuple[set[str], dict]:
    """The example ids to remove, and how the threshold was chosen.

    Raises ValueError when the student memorizes too few examples to fit and calibrate a predictor,
    or when reaching ``target_recall`` would flag every example (nothing would be left to train on).
    """
    memorized = np.asarray(memorized, dtype=bool)
    if memorized.sum() < MIN_MEMORIZED_TO_FILTER:
        raise ValueError(
            f"the student memorizes {int(memorized.sum())} examples; filtering needs at least "
            f"{MIN_MEMORIZED_TO_FILTER} to fit and calibrate the predictor"
        )
    rows = np.arange(len(features))
    fit_rows, calibration_rows = train_test_split(rows, train_size=0.5, stratify=memorized, random_state=seed)
    model = fit_risk_model(features.iloc[fit_rows], memorized[fit_rows], FEATURES)

    def risk(selected: np.ndarray) -> np.ndarray:
        return model.predict_proba(features.iloc[selected][list(FEATURES)].to_numpy(dtype=float))[:, 1]

    precision, threshold = precision_at_recall(memorized[calibration_rows], risk(calibration_rows), target_recall)
    flagged = risk(rows) >= threshold
    if flagged.all():
        raise ValueError(
            f"reaching recall {target_recall} flags all {len(rows)} examples, leaving nothing to train on; "
            "lower filtering.target_recall"
        )
    return set(features["example_id"][flagged]), {
        "target_recall": target_recall,
        "threshold": threshold,
        "calibration_precision": precision,
        "flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()),
        "flagged_memorized": int((flagged & memorized).sum()),
        "memorized": int(memorized.sum()),
    }


def stand_in_memorized(verdicts: pd.DataFrame, count: int) -> set[str]:
    """The ``count`` examples a model comes closest to reproducing: most leading suffix tokens
    matched, then the lowest suffix loss where measured (a rehearsal's stand-in memorized set)."""
    order = ["matched_tokens"] + (["suffix_loss"] if "suffix_loss" in verdicts else [])
    ranked = verdicts.sort_values(order, ascending=[False] + [True] * (len(order) - 1), kind="stable")
    return set(ranked["example_id"].head(count))


def filtering_report(before: set, after: set, removed: set, val_loss_before: float, val_loss_after: float) -> dict:
    """Memorized sets of the student before and after filtering, on all of D."""
    return {
        "memorized_before": len(before),
        "memorized_after": len(after),
        "removed_and_memorized_before": len(before & removed),
        "still_memorized": len(before & after),
        "new_after": len(after - before),
        "new_after_among_removed": len((after - before) & removed),
        "val_loss_before": val_loss_before,
        "val_loss_after": val_loss_after,
        "val_loss_cost": val_loss_after - val_loss_before,
    }
