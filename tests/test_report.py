from kdmem.report import headline_table
from kdmem.report.headline import reduction_vs_baseline


def row(memorized, auc=None):
    values = {"memorized": memorized, "examples": 100, "rate": memorized / 100, "val_loss": 4.0, "val_ppl": 54.6}
    if auc is not None:
        values["membership"] = {"loss": {"auc": auc}}
    return values


def test_reduction_compares_with_the_baseline_of_the_same_seed():
    summary = {"models": {"teacher": row(30), "baseline": row(12), "baseline-seed1": row(20), "soft": row(3),
                          "soft-seed1": row(5), "soft-T4": row(0), "hard": row(12, auc=0.61)}}
    assert reduction_vs_baseline(summary, "soft") == 4.0
    assert reduction_vs_baseline(summary, "soft-seed1") == 4.0
    assert reduction_vs_baseline(summary, "soft-T4") == float("inf")  # a sweep student: the first seed's baseline
    assert reduction_vs_baseline(summary, "baseline-seed1") is None
    table = headline_table(summary)
    hard_line = next(line for line in table.splitlines() if line.startswith("hard"))
    assert "1.00x" in hard_line and hard_line.endswith("0.610")
    assert "4.00x" in next(line for line in table.splitlines() if line.startswith("soft-seed1"))
