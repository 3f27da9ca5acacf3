import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from kdmem.analysis.predictor import FEATURES, deployment_protocol, paper_protocol, precision_at_recall


def gaussian_case(positives: int, negatives: int, shift: float, seed: int = 0):
    """One informative feature (zlib_entropy) shifted by ``shift`` standard deviations for
    positives, three pure-noise features: the ROC-AUC of the best classifier is Phi(shift / sqrt 2)."""
    rng = np.random.default_rng(seed)
    n = positives + negatives
    memorized = np.zeros(n, dtype=bool)
    memorized[:positives] = True
    frame = pd.DataFrame({name: rng.normal(size=n) for name in FEATURES})
    frame.loc[memorized, "zlib_entropy"] -= shift  # memorized examples compress better
    return frame, memorized


def test_paper_protocol_recovers_a_known_auc():
    frame, memorized = gaussian_case(400, 6000, shift=1.0)
    result = paper_protocol(frame, memorized, repeats=20)
    expected = norm.cdf(1.0 / np.sqrt(2))  # 0.760
    assert result["auc"]["mean"] == pytest.approx(expected, abs=0.03)
    assert result["auc"]["std"] < 0.05
    assert result["negatives_per_repeat"] == 1200 and result["positives"] == 400
    coefficients = result["coefficients"]
    assert coefficients["zlib_entropy"] < -0.5  # the informative feature has the large, negative coefficient
    assert all(abs(coefficients[f]) < 0.2 for f in FEATURES if f != "zlib_entropy")


def test_paper_protocol_on_noise_is_chance_and_skips_without_positives():
    frame, memorized = gaussian_case(300, 3000, shift=0.0)
    assert paper_protocol(frame, memorized, repeats=10)["auc"]["mean"] == pytest.approx(0.5, abs=0.05)
    assert "skipped" in paper_protocol(frame, np.zeros(len(frame), dtype=bool))


def test_deployment_protocol_at_the_real_balance():
    frame, memorized = gaussian_case(100, 9900, shift=3.0)
    metrics, model, scored = deployment_protocol(frame, memorized)
    assert metrics["scored_examples"] == 5000 and metrics["positives_scored"] == 50
    assert metrics["auc"] == pytest.approx(norm.cdf(3.0 / np.sqrt(2)), abs=0.03)
    # a rare class: average precision is far above the base rate, precision at 99% recall is low
    assert metrics["average_precision"] > 10 * metrics["base_rate"]
    assert metrics["precision_at_99_recall"] <= metrics["precision_at_90_recall"]
    assert model.predict_proba(frame[list(FEATURES)].to_numpy())[:, 1].shape == (10000,)
    # the scored rows are the held-out half the metrics come from
    assert len(scored) == 5000 and int(scored["memorized"].sum()) == 50
    assert roc_auc_score(scored["memorized"], scored["risk"]) == pytest.approx(metrics["auc"])


def test_precision_at_recall_on_a_hand_case():
    y = np.array([1, 0, 1, 0, 0, 1])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # thresholds 0.9 (P 1, R 1/3), 0.7 (P 2/3, R 2/3), 0.4 (P 1/2, R 1)
    assert precision_at_recall(y, score, 0.6) == (pytest.approx(2 / 3), 0.7)
    assert precision_at_recall(y, score, 0.99) == (pytest.approx(0.5), 0.4)


def test_flagging_reaches_the_target_recall_and_the_report_counts():
    from kdmem.analysis.filtering import filtering_report, flag_examples

    frame, memorized = gaussian_case(200, 1800, shift=2.5)
    frame.insert(0, "example_id", [f"e{i}" for i in range(len(frame))])
    flagged, info = flag_examples(frame, memorized, target_recall=0.99)
    assert info["flagged"] == len(flagged) and info["memorized"] == 200
    # on all of D the recall is near the target (it was set on half of it)
    assert info["flagged_memorized"] / 200 >= 0.95
    assert info["flagged"] < len(frame)  # it does not simply flag everything
    with pytest.raises(ValueError, match="at least 4"):
        flag_examples(frame, np.zeros(len(frame), dtype=bool))
    constant = frame.assign(**dict.fromkeys(FEATURES, 1.0))  # every example gets the same risk
    with pytest.raises(ValueError, match="flags all 2000 examples"):
        flag_examples(constant, memorized)
    report = filtering_report({"a", "b", "c"}, {"b", "d", "e"}, {"a", "d"}, 4.0, 4.1)
    assert report == {
        "memorized_before": 3,
        "memorized_after": 3,
        "removed_and_memorized_before": 1,
        "still_memorized": 1,
        "new_after": 2,
        "new_after_among_removed": 1,
        "val_loss_before": 4.0,
        "val_loss_after": 4.1,
        "val_loss_cost": pytest.approx(0.1),
    }
