import pandas as pd
import pytest
import torch

from kdmem.config import DataConfig, TrainingConfig
from kdmem.data import DataError, as_tensor, prepare_sequences
from kdmem.memorization import (
    TokenChecks,
    decisive,
    extract_memorized,
    extraction,
    greedy_matched_tokens,
    leading_matches,
)
from kdmem.models import load_model, load_tokenizer
from kdmem.train import fine_tune

PREFIX, SUFFIX = 16, 16


def test_pure_checks_on_hand_built_logits():
    targets = torch.tensor([[1, 2, 3, 4]])
    logits = torch.zeros(1, 4, 8)
    for position, (token, top) in enumerate([(1, 3.0), (2, 2.5), (7, 0.5), (4, 9.0)]):  # third is wrong
        logits[0, position, token] = top
    checks = TokenChecks.of(logits, targets, margin_tolerance=1e-3)
    assert checks.correct.tolist() == [[True, True, False, True]]
    assert checks.gap.tolist() == [[3.0, 2.5, 0.5, 9.0]]
    assert not checks.near_tie.any()
    matched = leading_matches(checks.correct)
    assert matched.tolist() == [2]
    # decisive positions: the two matched ones and the first mismatch, not the later match
    assert decisive(checks, matched)[0].tolist() == [0.5]
    all_right = TokenChecks(
        torch.ones(1, 4, dtype=torch.bool),
        torch.tensor([[3.0, 2.0, 4.0, 1.5]]),
        torch.tensor([[False, False, False, True]]),
    )
    gap, near_tie = decisive(all_right, leading_matches(all_right.correct))
    assert gap.tolist() == [1.5] and near_tie.tolist() == [True]
    after_the_mismatch = TokenChecks(checks.correct, checks.gap, torch.tensor([[False, False, False, True]]))
    assert decisive(after_the_mismatch, matched)[1].tolist() == [
        False
    ]  # a near tie past the first mismatch decides nothing


def test_the_near_tie_threshold_follows_the_logits_dtype():
    """A gap of 0.25 between logits near 20 is 2 bfloat16 steps (a near tie) but 2 million float32 ones."""
    logits = torch.zeros(1, 1, 4)
    logits[0, 0, 0], logits[0, 0, 1] = 20.25, 20.0
    targets = torch.tensor([[0]])
    assert TokenChecks.of(logits.bfloat16(), targets, margin_tolerance=1e-3).near_tie.item()
    assert not TokenChecks.of(logits, targets, margin_tolerance=1e-3).near_tie.item()
    assert TokenChecks.of(logits, targets, margin_tolerance=0.5).near_tie.item()  # the fixed floor still applies
    assert extraction.logit_spacing(torch.tensor([20.0, 0.75]), torch.bfloat16).tolist() == [0.125, 2**-8]


def test_bfloat16_verdicts_equal_generate_on_1024_examples():
    """A random GPT-NeoX in bfloat16 whose targets are its own greedy output: every example, at
    every prefix length, is memorized by construction. Before the dtype-aware threshold, the fast
    path called 22 of 1,024 not memorized (25 at the prefix curve's P = 32), in bfloat16 noise."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kdmem.models.decoding import greedy_continuations

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    )
    model = GPTNeoXForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(
            25
        )  # top logits 14 to 28, as in a trained model: bf16 steps of 0.0625 to 0.125
    prefix, suffix, examples = 32, 32, 1024
    starts = torch.randint(0, 1024, (examples, prefix + suffix))
    ids = greedy_continuations(model, starts, prefix, prefix + suffix, batch_size=64)
    rows = pd.DataFrame({"example_id": range(examples), "input_ids": list(ids.numpy())})
    staged = extract_memorized(model, rows, prefix, suffix, batch_size=64)
    assert staged["memorized"].all(), (~staged["memorized"]).sum()
    assert 0 < staged.attrs["rechecked_examples"] <= examples
    curve = extract_memorized(model, rows, prefix, suffix, batch_size=64, full=True, prefix_lens=[16, 32])
    assert curve["memorized"].all() and curve["memorized_p32"].all()
    # P = 16 starts inside the random prefix: its verdicts are mixed, and each must equal generate's
    truth = greedy_matched_tokens(model, ids, 16, suffix, batch_size=64) == suffix
    assert curve["memorized_p16"].tolist() == truth.tolist()


@pytest.fixture(scope="module")
def audit_case(tiny_bases, tmp_path_factory):
    """500 training sequences and a model fine-tuned on them until some, not all, are memorized."""
    tokenizer = load_tokenizer(str(tiny_bases["teacher"]))
    data = prepare_sequences(DataConfig(seq_len=32, num_examples=500, validation_examples=20), tokenizer).train
    cfg = TrainingConfig(epochs=24, learning_rate=5e-3, batch_size=32)
    model = fine_tune(load_model(str(tiny_bases["teacher"])), data, cfg, tmp_path_factory.mktemp("audit"), seed=0)
    return model.eval(), data


def test_staged_verdicts_equal_greedy_decoding_on_500_examples(audit_case):
    model, data = audit_case
    verdicts = extract_memorized(model, data, PREFIX, SUFFIX, batch_size=64, recheck=False)
    truth = greedy_matched_tokens(model, as_tensor(data), PREFIX, SUFFIX)
    assert len(verdicts) == 500
    assert verdicts["matched_tokens"].tolist() == truth.tolist()
    assert verdicts["memorized"].tolist() == (truth == SUFFIX).tolist()
    assert list(verdicts["example_id"]) == list(data["example_id"])
    memorized = int(verdicts["memorized"].sum())
    assert 10 <= memorized <= 490, memorized  # informative: both kinds of example present
    assert (verdicts["matched_tokens"] < 4).sum() > 0  # and some exit at the first stage


def test_stage_split_and_full_pass_agree(audit_case):
    model, data = audit_case
    reference = extract_memorized(model, data, PREFIX, SUFFIX, recheck=False)
    for first_stage_tokens in (1, 3, SUFFIX):
        other = extract_memorized(model, data, PREFIX, SUFFIX, first_stage_tokens=first_stage_tokens, recheck=False)
        assert other["matched_tokens"].tolist() == reference["matched_tokens"].tolist()
        torch.testing.assert_close(
            torch.tensor(other["min_margin"].values),
            torch.tensor(reference["min_margin"].values),
            rtol=1e-4,
            atol=1e-4,
        )
    full = extract_memorized(model, data, PREFIX, SUFFIX, full=True, recheck=False)
    assert full["matched_tokens"].tolist() == reference["matched_tokens"].tolist()
    torch.testing.assert_close(
        torch.tensor(full["min_margin"].values), torch.tensor(reference["min_margin"].values), rtol=1e-4, atol=1e-4
    )


def test_full_fields_match_a_direct_computation(audit_case):
    model, data = audit_case
    rows = data.iloc[:20]
    full = extract_memorized(model, rows, PREFIX, SUFFIX, full=True)
    ids = as_tensor(rows)
    with torch.no_grad():
        logits = model(ids).logits
    for i in range(len(rows)):
        predicted = logits[i, PREFIX - 1 : PREFIX + SUFFIX - 1].argmax(-1)
        true = ids[i, PREFIX : PREFIX + SUFFIX]
        assert full["suffix_token_accuracy"][i] == pytest.approx((predicted == true).float().mean().item())
        nll = torch.nn.functional.cross_entropy(logits[i, PREFIX - 1 : PREFIX + SUFFIX - 1], true)
        assert full["suffix_loss"][i] == pytest.approx(nll.item(), rel=1e-4)


def test_prefix_curve_equals_separate_extractions(audit_case):
    model, data = audit_case
    suffix = 8
    curve = extract_memorized(model, data, PREFIX, suffix, full=True, prefix_lens=[4, 10, 24])
    for prefix in (4, 10, 24):
        separate = extract_memorized(model, data, prefix, suffix, recheck=False)
        assert curve[f"memorized_p{prefix}"].tolist() == separate["memorized"].tolist()
    with pytest.raises(ValueError, match="needs full=True"):
        extract_memorized(model, data, PREFIX, suffix, prefix_lens=[4])
    with pytest.raises(DataError, match="does not fit"):
        extract_memorized(model, data, PREFIX, suffix, full=True, prefix_lens=[30])


def test_near_ties_are_rechecked_with_generate(audit_case):
    model, data = audit_case
    rows = data.iloc[:64]
    everything = extract_memorized(model, rows, PREFIX, SUFFIX, margin_tolerance=float("inf"))
    assert everything["rechecked"].all()
    plain = extract_memorized(model, rows, PREFIX, SUFFIX, recheck=False)
    assert everything["matched_tokens"].tolist() == plain["matched_tokens"].tolist()
    assert not plain["rechecked"].any()


def test_too_short_sequences_are_refused(audit_case):
    model, data = audit_case
    with pytest.raises(DataError, match="fewer than prefix_len \\+ suffix_len = 40"):
        extract_memorized(model, data.iloc[:2], 20, 20)
