import math

import numpy as np
import pandas as pd
import pytest
import torch

from kdmem.config import CanaryConfig, ConfigError, TrainingConfig
from kdmem.data import as_tensor
from kdmem.memorization.canaries import (
    canary_exposure,
    candidate_secrets,
    inject_canaries,
    make_canaries,
    secret_log_likelihood,
)
from kdmem.models import load_model, load_tokenizer
from kdmem.train import fine_tune

PREFIX, SUFFIX, SEQ_LEN = 16, 16, 32


def test_make_canaries_is_deterministic_and_avoids_excluded_ids():
    cfg = CanaryConfig(repeats=[1, 4, 16], seed=3)
    canaries = make_canaries(cfg, vocab_size=50, seq_len=12, prefix_len=4, excluded_token_ids=(0, 7, 49))
    assert list(canaries.columns) == ["canary_id", "repeats", "input_ids"]
    assert list(canaries["canary_id"]) == ["canary-00", "canary-01", "canary-02"]
    assert list(canaries["repeats"]) == [1, 4, 16]
    ids = np.stack(canaries["input_ids"])
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 50 and not np.isin(ids, [0, 7, 49]).any()
    again = make_canaries(cfg, vocab_size=50, seq_len=12, prefix_len=4, excluded_token_ids=(0, 7, 49))
    assert np.array_equal(np.stack(again["input_ids"]), ids)
    other = make_canaries(CanaryConfig(repeats=[1, 4, 16], seed=4), vocab_size=50, seq_len=12, prefix_len=4)
    assert not np.array_equal(np.stack(other["input_ids"]), ids)


def test_canary_keys_are_distinct():
    # 5 usable tokens and 1-token keys: 5 canaries must take every key once, a sixth cannot fit.
    canaries = make_canaries(
        CanaryConfig(repeats=[1] * 5), vocab_size=10, seq_len=6, prefix_len=1, excluded_token_ids=range(5)
    )
    assert sorted(ids[0] for ids in canaries["input_ids"]) == [5, 6, 7, 8, 9]
    with pytest.raises(ConfigError, match="distinct keys"):
        make_canaries(
            CanaryConfig(repeats=[1] * 6), vocab_size=10, seq_len=6, prefix_len=1, excluded_token_ids=range(5)
        )


def test_inject_canaries_adds_each_copy_and_keeps_every_row():
    train = pd.DataFrame(
        {"example_id": [f"x{i}" for i in range(10)], "input_ids": [np.full(8, i, dtype=np.int32) for i in range(10)]}
    )
    canaries = make_canaries(CanaryConfig(repeats=[1, 3, 5]), vocab_size=100, seq_len=8, prefix_len=3)
    mixed = inject_canaries(train, canaries, seed=0)
    assert len(mixed) == 10 + 9
    assert list(mixed.columns) == ["example_id", "input_ids"]
    counts = mixed["example_id"].value_counts()
    for canary in canaries.itertuples():
        assert counts[canary.canary_id] == canary.repeats
        for ids in mixed.loc[mixed["example_id"] == canary.canary_id, "input_ids"]:
            assert np.array_equal(ids, canary.input_ids)
    originals = mixed[mixed["example_id"].str.startswith("x")]
    assert sorted(originals["example_id"]) == sorted(train["example_id"])
    for row in originals.itertuples():
        assert np.array_equal(row.input_ids, train.set_index("example_id").loc[row.example_id, "input_ids"])
    assert mixed["example_id"].tolist() == inject_canaries(train, canaries, seed=0)["example_id"].tolist()
    assert mixed["example_id"].tolist() != inject_canaries(train, canaries, seed=1)["example_id"].tolist()


def test_candidates_follow_the_secret_distribution_and_never_equal_it():
    # 2 usable tokens and 2-token secrets: a quarter of the draws hit the true secret and are redrawn.
    canaries = make_canaries(
        CanaryConfig(repeats=[1, 1]), vocab_size=4, seq_len=3, prefix_len=1, excluded_token_ids=(0, 1)
    )
    candidates = candidate_secrets(canaries, 1, 200, vocab_size=4, excluded_token_ids=(0, 1), seed=5)
    assert candidates.shape == (2, 200, 2)
    assert set(np.unique(candidates)) == {2, 3}
    for secret, drawn in zip(np.stack(canaries["input_ids"])[:, 1:], candidates, strict=True):
        assert not (drawn == secret).all(axis=1).any()
        assert len({tuple(c) for c in drawn}) == 3  # every other secret occurs
    assert np.array_equal(
        candidates, candidate_secrets(canaries, 1, 200, vocab_size=4, excluded_token_ids=(0, 1), seed=5)
    )


def test_candidates_do_not_replay_canaries_made_with_the_same_seed():
    canaries = make_canaries(CanaryConfig(repeats=[1, 1], seed=0), 512, SEQ_LEN, PREFIX)
    candidates = candidate_secrets(canaries, PREFIX, 100, 512, seed=0)
    windows = {tuple(ids[i : i + SUFFIX]) for ids in canaries["input_ids"] for i in range(SEQ_LEN - SUFFIX + 1)}
    assert not windows & {tuple(c) for c in candidates.reshape(-1, SUFFIX)}


@pytest.fixture(scope="module")
def base(tiny_bases):
    return load_model(str(tiny_bases["teacher"])).eval()


def _slow_log_likelihood(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        log_probs = model(ids[None]).logits[0].log_softmax(-1)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(PREFIX, len(ids)))


def test_secret_log_likelihood_equals_a_token_by_token_sum(base):
    ids = torch.randint(1, 512, (7, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    fast = secret_log_likelihood(base, ids, PREFIX, batch_size=3)
    assert fast.shape == (7,) and fast.dtype == torch.float32
    torch.testing.assert_close(
        fast, torch.tensor([_slow_log_likelihood(base, row) for row in ids]), rtol=1e-5, atol=1e-3
    )


def test_exposure_equals_a_direct_ranking(base, tiny_bases):
    vocab, excluded, k = 512, load_tokenizer(str(tiny_bases["teacher"])).all_special_ids, 20
    canaries = make_canaries(CanaryConfig(repeats=[1, 2, 3, 4]), vocab, SEQ_LEN, PREFIX, excluded)
    result = canary_exposure(
        base,
        canaries,
        PREFIX,
        SUFFIX,
        vocab_size=vocab,
        excluded_token_ids=excluded,
        num_candidates=k,
        seed=1,
        batch_size=8,
    )
    candidates = candidate_secrets(canaries, PREFIX, k, vocab, excluded, seed=1)
    ranks = []
    for ids, drawn in zip(as_tensor(canaries), torch.from_numpy(candidates), strict=True):
        true = _slow_log_likelihood(base, ids)
        ranks.append(1 + sum(_slow_log_likelihood(base, torch.cat([ids[:PREFIX], secret])) > true for secret in drawn))
    assert result["rank"].tolist() == ranks
    assert np.allclose(result["exposure"], [math.log2(k + 1) - math.log2(r) for r in ranks])
    assert len(set(ranks)) > 1, ranks  # informative: not every rank the same
    assert list(result["canary_id"]) == list(canaries["canary_id"]) and list(result["repeats"]) == [1, 2, 3, 4]
    assert not result["extractable"].any() and (result["matched_tokens"] < SUFFIX).all()


def test_the_base_ranks_unseen_secrets_uniformly(base, tiny_bases):
    # A secret the model never saw is one more random draw: its rank is uniform on 1..K+1, so its
    # exposure averages log2(K+1) - log2((K+1)!)/(K+1) = 1.375 bits for K = 63 (standard error
    # about 0.18 over 64 canaries). Measured: 1.21.
    excluded = load_tokenizer(str(tiny_bases["teacher"])).all_special_ids
    canaries = make_canaries(CanaryConfig(repeats=[1] * 64, seed=12), 512, SEQ_LEN, PREFIX, excluded)
    result = canary_exposure(
        base, canaries, PREFIX, SUFFIX, vocab_size=512, excluded_token_ids=excluded, num_candidates=63, seed=2
    )
    assert 0.7 < result["exposure"].mean() < 2.1, result["exposure"].mean()
    assert (np.histogram(result["rank"], bins=4, range=(1, 65))[0] >= 6).all(), result["rank"].tolist()


def test_repeated_canary_is_exposed_and_extractable_after_fine_tuning(base, tiny_bases, tiny_data, tmp_path):
    excluded = load_tokenizer(str(tiny_bases["teacher"])).all_special_ids
    canaries = make_canaries(CanaryConfig(repeats=[1, 16], seed=1), 512, SEQ_LEN, PREFIX, excluded)
    measure = {"vocab_size": 512, "excluded_token_ids": excluded, "num_candidates": 1000}
    top = math.log2(1001)
    before = canary_exposure(base, canaries, PREFIX, SUFFIX, **measure).set_index("repeats")
    cfg = TrainingConfig(epochs=10, learning_rate=5e-3, batch_size=16)
    tuned = fine_tune(
        load_model(str(tiny_bases["teacher"])),
        inject_canaries(tiny_data.train, canaries, seed=0),
        cfg,
        tmp_path,
        seed=0,
    )
    after = canary_exposure(tuned.eval(), canaries, PREFIX, SUFFIX, **measure).set_index("repeats")
    # Measured: base exposure 0.61 and 1.18 bits (ranks 654 and 443 of 1001), nothing extractable;
    # fine-tuned 10 epochs, 9.97 bits (rank 1) for both, the 16-repeat canary extractable (16 of 16
    # tokens), the single copy not (2 tokens). (6 epochs left the 16-repeat one at 5 of 16 once D
    # was held out by document.)
    assert (before["exposure"] < 4).all() and not before["extractable"].any(), before
    assert after.loc[16, "exposure"] > top - 1 and after.loc[16, "exposure"] > before.loc[16, "exposure"] + 4, after
    assert after.loc[16, "extractable"] and not after.loc[1, "extractable"], after
