import torch

from kdmem.data import as_tensor
from kdmem.memorization import extract_memorized, matched_suffix_tokens
from kdmem.train import greedy_continuations


def test_matched_tokens_counts_leading_agreement():
    input_ids = torch.tensor([[5, 1, 2, 3, 4]])
    logits = torch.zeros(1, 4, 8)
    for position, token in enumerate([1, 2, 7, 4]):  # the third suffix token is wrong
        logits[0, position, token] = 1.0
    assert matched_suffix_tokens(logits, input_ids, prefix_len=1, suffix_len=4).tolist() == [2]
    assert matched_suffix_tokens(logits, input_ids, prefix_len=1, suffix_len=2).tolist() == [2]


def test_one_pass_verdicts_equal_greedy_decoding(memorizing_model, tiny_data):
    prefix_len, suffix_len = 16, 16
    verdicts = extract_memorized(memorizing_model, tiny_data.train, prefix_len, suffix_len, batch_size=7)
    ids = as_tensor(tiny_data.train)
    generated = greedy_continuations(memorizing_model, ids[:, : prefix_len + suffix_len], prefix_len, prefix_len + suffix_len)
    agree = (generated[:, prefix_len:] == ids[:, prefix_len : prefix_len + suffix_len]).long().cumprod(1).sum(1)
    assert verdicts["matched_tokens"].tolist() == agree.tolist()
    assert verdicts["memorized"].tolist() == (agree == suffix_len).tolist()
    assert list(verdicts["example_id"]) == list(tiny_data.train["example_id"])
    # The case must be informative: some examples memorized, some not.
    assert 0 < verdicts["memorized"].sum() < len(verdicts)
