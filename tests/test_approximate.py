import numpy as np
import pandas as pd
import pytest
import torch

from kdmem.data import as_tensor
from kdmem.memorization import approximate_memorization, approximate_summary, extract_memorized
from kdmem.memorization.approximate import (
    add_approximate,
    edit_distance,
    longest_common_run,
    sample_positions,
    suffix_similarity,
)
from kdmem.models.decoding import plain_generation_defaults

PREFIX, SUFFIX = 16, 16


def test_edit_distance_and_longest_common_run_on_hand_cases():
    def ids(text):
        return [ord(c) for c in text]

    assert edit_distance(ids("kitten"), ids("sitting")) == 3
    assert edit_distance(ids("flaw"), ids("lawn")) == 2
    assert edit_distance([], ids("abc")) == 3
    assert edit_distance(ids("same"), ids("same")) == 0
    assert longest_common_run(ids("xxabcdyy"), ids("zabcdz")) == 4
    assert longest_common_run(ids("abab"), ids("cdcd")) == 0
    # a run repeated many times is still found: no junk heuristic
    assert longest_common_run([1] * 300 + [2], [1] * 250) == 250


def test_suffix_similarity_of_copies_shifts_and_strangers():
    true = [1, 2, 3, 4, 5, 6, 7, 8]
    assert suffix_similarity(true, true) == {
        "approx_token_match": 1.0,
        "approx_edit_distance": 0.0,
        "approx_longest_common": 8.0,
    }
    shifted = [0] + true[:-1]  # one insertion and one deletion apart, but no position matches
    assert suffix_similarity(shifted, true) == {
        "approx_token_match": 0.0,
        "approx_edit_distance": 2 / 8,
        "approx_longest_common": 7.0,
    }
    assert suffix_similarity([9] * 8, true)["approx_edit_distance"] == 1.0


def test_measures_come_from_real_greedy_decoding(memorizing_model, tiny_data):
    rows = tiny_data.train.iloc[:24]
    measures = approximate_memorization(memorizing_model, rows, PREFIX, SUFFIX, batch_size=5)
    verdicts = extract_memorized(memorizing_model, rows, PREFIX, SUFFIX)
    ids = as_tensor(rows)
    for i in range(len(rows)):  # one example at a time, with generate called directly
        prefix = ids[i : i + 1, :PREFIX]
        with torch.no_grad(), plain_generation_defaults(memorizing_model):
            out = memorizing_model.generate(
                prefix,
                attention_mask=torch.ones_like(prefix),
                do_sample=False,
                max_new_tokens=SUFFIX,
                eos_token_id=None,
                pad_token_id=0,
            )
        generated, true = out[0, PREFIX:].tolist(), ids[i, PREFIX : PREFIX + SUFFIX].tolist()
        assert len(generated) == SUFFIX
        assert measures["approx_token_match"][i] == pytest.approx(np.mean(np.equal(generated, true)))
        assert measures["approx_edit_distance"][i] == pytest.approx(edit_distance(generated, true) / SUFFIX)
        # the exact verdict's matched span is a common run, so the longest one is at least as long
        assert measures["approx_longest_common"][i] >= verdicts["matched_tokens"][i]
        assert (measures["approx_token_match"][i] == 1.0) == bool(verdicts["memorized"][i])


def test_add_approximate_fills_only_the_checked_rows():
    verdicts = pd.DataFrame({"example_id": list("abcde"), "memorized": [True, False, False, True, False]})
    measures = pd.DataFrame(
        {
            "example_id": ["b", "d"],
            "approx_token_match": [0.5, 1.0],
            "approx_edit_distance": [0.5, 0.0],
            "approx_longest_common": [3.0, 8.0],
        }
    )
    merged = add_approximate(verdicts, np.array([1, 3]), measures)
    assert merged["approx_token_match"].isna().tolist() == [True, False, True, False, True]
    assert merged["approx_token_match"][1] == 0.5
    summary = approximate_summary(merged)["approximate"]
    assert summary == {
        "examples": 2,
        "token_match_mean": 0.75,
        "edit_distance_mean": 0.25,
        "longest_common_mean": 5.5,
        "near_verbatim": 1,
        "exact": 1,
    }
    assert approximate_summary(verdicts) == {}


def test_sample_positions_are_deterministic_and_bounded():
    assert sample_positions(100, 10, seed=3).tolist() == sample_positions(100, 10, seed=3).tolist()
    assert sample_positions(100, 10, seed=3).tolist() != sample_positions(100, 10, seed=4).tolist()
    assert sorted(sample_positions(5, 50).tolist()) == [0, 1, 2, 3, 4]
    assert len(sample_positions(100, 0)) == 0
