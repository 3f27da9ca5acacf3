import json
import math
import zlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from kdmem.data import as_tensor
from kdmem.memorization.membership import (
    SCORES,
    audit_membership,
    membership_metrics,
    membership_scores,
    membership_table,
    token_log_probs,
    write_membership,
    zlib_entropy,
)
from kdmem.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_bases):
    return load_tokenizer(str(tiny_bases["teacher"]))


@pytest.fixture(scope="module")
def base(tiny_bases):
    return load_model(str(tiny_bases["teacher"])).eval()


def test_zlib_entropy_on_hand_values():
    repetitive = "abc" * 200
    assert zlib_entropy(repetitive) == len(zlib.compress(repetitive.encode("utf-8")))
    assert zlib_entropy(repetitive) < 30 < len(repetitive)
    assert zlib_entropy("") == 8  # zlib's 2-byte header, empty deflate block and 4-byte checksum
    assert zlib_entropy("é") == len(zlib.compress("é".encode()))  # bytes of UTF-8, not characters


def direct_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """One sequence at a time: log p of each true next token from the full sequence's logits."""
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1].float()
    return F.log_softmax(logits, dim=-1)[torch.arange(len(ids) - 1), ids[1:]]


def test_every_score_equals_a_direct_computation(base, tiny_bases, tiny_data, tokenizer):
    rows = tiny_data.validation
    student = load_model(str(tiny_bases["student"])).eval()
    scores = membership_scores(base, rows, tokenizer, reference=student, batch_size=5)  # 16 rows: a ragged last batch
    assert list(scores.columns) == ["example_id", *SCORES]
    assert list(scores["example_id"]) == list(rows["example_id"])
    ids = as_tensor(rows)
    for i in range(len(rows)):
        log_probs = direct_log_probs(base, ids[i])
        assert len(log_probs) == 31
        loss = -log_probs.mean().item()
        text = tokenizer.decode(rows["input_ids"][i].tolist())
        reference_loss = -direct_log_probs(student, ids[i]).mean().item()
        lowest = sorted(log_probs.tolist())[:6]  # 20% of 31 predicted tokens, floored
        expected = {
            "loss": loss,
            "zlib_ratio": loss / len(zlib.compress(text.encode("utf-8"))),
            "min_k_prob": sum(lowest) / 6,
            "reference_ratio": loss / reference_loss,
        }
        for name, value in expected.items():
            assert scores[name][i] == pytest.approx(value, rel=1e-4), name
    assert scores["reference_ratio"].between(0.5, 2).all()  # two different models: near, not equal, to 1
    assert not np.allclose(scores["reference_ratio"], 1)
    assert membership_scores(base, rows, tokenizer)["reference_ratio"].isna().all()


def test_token_log_probs_are_float32_and_independent_of_batching(base, tiny_data):
    ids = as_tensor(tiny_data.validation)
    whole = token_log_probs(base, ids, batch_size=64)
    assert whole.shape == (16, 31) and whole.dtype == torch.float32
    assert (whole <= 0).all()
    torch.testing.assert_close(token_log_probs(base, ids, batch_size=3), whole, rtol=1e-5, atol=1e-5)


def test_min_k_picking_one_token_is_the_minimum_and_all_tokens_the_mean(base, tiny_data, tokenizer):
    rows = tiny_data.validation
    log_probs = token_log_probs(base, as_tensor(rows))
    one = membership_scores(base, rows, tokenizer, min_k=0.01)  # floor(0.31) = 0, raised to one token
    np.testing.assert_allclose(one["min_k_prob"], log_probs.min(dim=1).values.numpy(), rtol=1e-6)
    every = membership_scores(base, rows, tokenizer, min_k=1.0)
    np.testing.assert_allclose(every["min_k_prob"], -every["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="min_k"):
        membership_scores(base, rows, tokenizer, min_k=0)


def scores(
    members: list[float], non_members: list[float], name: str = "min_k_prob"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame({name: members}), pd.DataFrame({name: non_members})


def test_perfect_separation():
    metrics = membership_metrics(*scores([5.0, 6.0, 7.0], [1.0, 2.0]))
    assert metrics == {"members": 3, "non_members": 2, "min_k_prob": {"auc": 1.0, "tpr_at_1pct_fpr": 1.0}}


def test_hand_built_auc_and_tpr_at_one_percent_fpr():
    # 100 non-members score 0..99. Members: 4 above all of them, 2 between the top two (98.5, so
    # beaten by 99 alone) and 4 below all. AUC = (4 * 100 + 2 * 99 + 4 * 0) / (10 * 100) = 0.598.
    # At FPR 0 (threshold above 99) TPR is 0.4; at FPR exactly 0.01 (threshold 98.5) TPR is 0.6.
    members = [1000.0] * 4 + [98.5] * 2 + [-1.0] * 4
    metrics = membership_metrics(*scores(members, [float(v) for v in range(100)]))
    assert metrics["min_k_prob"]["auc"] == pytest.approx(0.598)
    assert metrics["min_k_prob"]["tpr_at_1pct_fpr"] == pytest.approx(0.6)
    # one more non-member above the members at 98.5 pushes them past 1% FPR
    metrics = membership_metrics(*scores(members, [float(v) for v in range(99)] + [99.0, 99.5]))
    assert metrics["min_k_prob"]["tpr_at_1pct_fpr"] == pytest.approx(0.4)


def test_scores_are_oriented_so_higher_means_member():
    members = pd.DataFrame({"loss": [1.0, 2.0, 3.5], "min_k_prob": [1.0, 2.0, 3.5], "reference_ratio": math.nan})
    non_members = pd.DataFrame({"loss": [3.0, 4.0], "min_k_prob": [3.0, 4.0], "reference_ratio": math.nan})
    metrics = membership_metrics(members, non_members)
    # members have the lower values: evidence of membership for loss, against it for min_k_prob
    assert metrics["loss"]["auc"] == pytest.approx(5 / 6)
    assert metrics["min_k_prob"]["auc"] == pytest.approx(1 / 6)
    assert set(metrics) == {"members", "non_members", "loss", "min_k_prob"}  # all-NaN and absent scores skipped
    with pytest.raises(ValueError, match="members and non-members"):
        membership_metrics(members, non_members.iloc[:0])


def test_fine_tuned_model_betrays_its_training_set_and_the_base_does_not(memorizing_model, base, tiny_data, tokenizer):
    frame, metrics = audit_membership(
        memorizing_model, tiny_data.train, tiny_data.validation, tokenizer, reference=base
    )
    assert list(frame.columns) == ["example_id", "split", *SCORES]
    assert list(frame["example_id"]) == list(tiny_data.train["example_id"]) + list(tiny_data.validation["example_id"])
    assert frame["split"].tolist() == ["train"] * 48 + ["validation"] * 16
    assert (metrics["members"], metrics["non_members"]) == (48, 16)
    # measured: 1.0 for every score (train loss ~0.12 nats, validation ~5.1)
    for name in SCORES:
        assert metrics[name]["auc"] >= 0.9, (name, metrics[name])
    assert metrics["loss"]["tpr_at_1pct_fpr"] >= 0.5
    # The base saw neither split (it was pre-trained on other text). Measured AUCs: loss 0.432,
    # zlib_ratio 0.785, min_k_prob 0.439. With 48 vs 16 independent examples chance alone has a SD
    # of ~0.08, but validation is held out by document and its 16 sequences come from a few long
    # documents, so it differs from D in style as a cluster: zlib_ratio, which divides by how
    # compressible the text is, moves the most. The bounds allow for that; a leaking score gives ~1.
    _, control = audit_membership(base, tiny_data.train, tiny_data.validation, tokenizer)
    assert "reference_ratio" not in control
    for name, bound in (("loss", 0.2), ("zlib_ratio", 0.35), ("min_k_prob", 0.2)):
        assert abs(control[name]["auc"] - 0.5) <= bound, (name, control[name])


def test_table_metadata_round_trips_through_parquet(base, tiny_data, tokenizer, tmp_path):
    frame, metrics = audit_membership(
        base, tiny_data.train.iloc[:8], tiny_data.validation.iloc[:8], tokenizer, min_k=0.5
    )
    path = tmp_path / "membership.parquet"
    write_membership(path, frame, metrics, min_k=0.5)
    assert json.loads(pq.read_schema(path).metadata[b"kdmem"]) == {"scores": SCORES, "min_k": 0.5, "metrics": metrics}
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    assert pq.read_table(path).equals(membership_table(frame, metrics, 0.5))


def test_membership_command_on_a_run(finished_run, tmp_path, capsys):
    from kdmem import cli

    _, out, summary = finished_run
    target = tmp_path / "m.parquet"
    args = [
        "membership",
        "--model",
        str(out / "models" / "teacher"),
        "--members",
        str(out / "data" / "train.parquet"),
        "--non-members",
        str(out / "data" / "validation.parquet"),
        "-o",
        str(target),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    auc = summary["models"]["teacher"]["membership"]["loss"]["auc"]
    assert f"loss AUC {auc:.3f}" in printed and "reference_ratio" not in printed  # no reference given
    assert len(pd.read_parquet(target)) == len(pd.read_parquet(out / "data" / "train.parquet")) + 16
    assert cli.main([*args[:-2], "--dtype", "bfloat16", "-o", str(tmp_path / "bf16.parquet")]) == 0
    bf16 = pd.read_parquet(tmp_path / "bf16.parquet")["loss"]
    assert bf16.tolist() != pd.read_parquet(target)["loss"].tolist()  # scored by the bf16 model
    assert (bf16 - pd.read_parquet(target)["loss"]).abs().max() < 0.1
