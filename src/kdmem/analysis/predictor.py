"""Predicting, before distillation, which training examples the student will memorize.

A logistic regression on standardized per-example features available before any student is
trained: teacher perplexity, baseline perplexity, teacher-baseline KL and zlib entropy (or, in the
teacher-only variant, no baseline feature at all).

Two protocols:

- ``paper_protocol``: positives = the student's memorized examples, negatives sampled 1:3 from the
  rest, 30% held out, repeated with fresh negatives; mean and std of ROC-AUC, precision and
  recall. Balanced classes make this easy.
- ``deployment_protocol``: fit on part of D and score *all* remaining examples at the real class
  balance, as a filter would be used; average precision and precision at 90% / 99% recall, and
  the score threshold that keeps recall at the target on held-out data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("teacher_ppl", "baseline_ppl", "teacher_baseline_kl", "zlib_entropy")
TEACHER_ONLY_FEATURES = ("teacher_ppl", "zlib_entropy")


def _classifier():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def fit_risk_model(features: pd.DataFrame, memorized: np.ndarray, columns: Sequence[str] = FEATURES):
    """A logistic regression on standardized ``columns`` fitted to every row; ``predict_proba``
    of the result gives each example's risk of being memorized."""
    return _classifier().fit(features[list(columns)].to_numpy(dtype=float), np.asarray(memorized, dtype=bool))


def _standardized_coefficients(model, features: Sequence[str]) -> dict[str, float]:
    return dict(zip(features, model[-1].coef_[0].tolist(), strict=True))


def paper_protocol(
    features: pd.DataFrame,
    memorized: np.ndarray,
    columns: Sequence[str] = FEATURES,
    repeats: int = 100,
    negative_ratio: int = 3,
    test_size: float = 0.3,
    seed: int = 0,
) -> dict:
    """The paper's balanced protocol. ``memorized`` is a bool per row of ``features``.

    Returns mean and std over ``repeats`` of ``auc``, ``precision`` and ``recall`` (threshold 0.5)
    on the held-out part, the mean standardized coefficient of each feature, and the counts used.
    """
    memorized = np.asarray(memorized, dtype=bool)
    positives, negatives = np.flatnonzero(memorized), np.flatnonzero(~memorized)
    if len(positives) < 2:
        return {"skipped": f"needs at least 2 memorized examples, found {len(positives)}"}
    rng = np.random.default_rng(seed)
    x_all = features[list(columns)].to_numpy(dtype=float)
    scores: dict[str, list[float]] = {"auc": [], "precision": [], "recall": []}
    coefficients = []
    for repeat in range(repeats):
        sampled = rng.choice(negatives, size=min(len(negatives), negative_ratio * len(positives)), replace=False)
        rows = np.concatenate([positives, sampled])
        x, y = x_all[rows], memorized[rows]
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_size, stratify=y, random_state=seed + repeat
        )
        model = _classifier().fit(x_train, y_train)
        probability = model.predict_proba(x_test)[:, 1]
        scores["auc"].append(roc_auc_score(y_test, probability))
        predicted = probability >= 0.5
        scores["precision"].append(precision_score(y_test, predicted, zero_division=0))
        scores["recall"].append(recall_score(y_test, predicted, zero_division=0))
        coefficients.append(model[-1].coef_[0])
    result = {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in scores.items()}
    result["coefficients"] = dict(zip(columns, np.mean(coefficients, axis=0).tolist(), strict=True))
    result.update(
        features=list(columns), positives=int(len(positives)), negatives_per_repeat=int(len(sampled)), repeats=repeats
    )
    return result


def precision_at_recall(y_true: np.ndarray, score: np.ndarray, recall: float) -> tuple[float, float]:
    """The best precision among thresholds whose recall is at least ``recall``, and that threshold."""
    precision, achieved, thresholds = precision_recall_curve(y_true, score)
    # precision_recall_curve's last point (recall 0) has no threshold.
    ok = achieved[:-1] >= recall
    best = np.argmax(np.where(ok, precision[:-1], -1.0))
    return float(precision[best]), float(thresholds[best])


def deployment_protocol(
    features: pd.DataFrame,
    memorized: np.ndarray,
    columns: Sequence[str] = FEATURES,
    train_size: float = 0.5,
    seed: int = 0,
) -> tuple[dict, object, pd.DataFrame | None]:
    """Fit on ``train_size`` of D (stratified) and score every other example at D's true balance.

    Returns the metrics (``average_precision``, the base rate it should beat, precision at 90% and
    99% recall with their thresholds, ROC-AUC), the fitted model (a scikit-learn pipeline whose
    ``predict_proba`` gives the risk score) and the scored examples (``memorized``, ``risk``: what
    an ROC curve is drawn from). Model and scores are None when there are too few positives.
    """
    memorized = np.asarray(memorized, dtype=bool)
    if memorized.sum() < 4:
        return {"skipped": f"needs at least 4 memorized examples, found {int(memorized.sum())}"}, None, None
    x = features[list(columns)].to_numpy(dtype=float)
    x_train, x_test, y_train, y_test = train_test_split(
        x, memorized, train_size=train_size, stratify=memorized, random_state=seed
    )
    model = _classifier().fit(x_train, y_train)
    score = model.predict_proba(x_test)[:, 1]
    p90, t90 = precision_at_recall(y_test, score, 0.90)
    p99, t99 = precision_at_recall(y_test, score, 0.99)
    metrics = {
        "features": list(columns),
        "scored_examples": int(len(y_test)),
        "positives_scored": int(y_test.sum()),
        "base_rate": float(y_test.mean()),
        "average_precision": float(average_precision_score(y_test, score)),
        "auc": float(roc_auc_score(y_test, score)),
        "precision_at_90_recall": p90,
        "threshold_at_90_recall": t90,
        "precision_at_99_recall": p99,
        "threshold_at_99_recall": t99,
        "coefficients": _standardized_coefficients(model, columns),
    }
    return metrics, model, pd.DataFrame({"memorized": y_test, "risk": score})
