import json

import torch

from kdmem.data import as_tensor
from kdmem.memorization import extract_memorized
from kdmem.models import load_model
from kdmem.models.decoding import greedy_continuations


def argmax_loop(model, ids: torch.Tensor, prefix_len: int, total: int) -> torch.Tensor:
    """The slow, obvious greedy decode: a full forward pass per new token, no cache, no generate."""
    out = ids[:, :prefix_len]
    with torch.no_grad():
        while out.shape[1] < total:
            out = torch.cat([out, model(out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out


def test_decoding_is_plain_greedy_whatever_the_checkpoints_generation_config(memorizing_model, tiny_data, tmp_path):
    """An instruct-style generation_config.json (sampling, a repetition penalty, an end-of-text
    stop) changes nothing. Before the fix, 7 of these 12 rows differed from plain greedy."""
    folder = tmp_path / "instruct-like"
    memorizing_model.save_pretrained(folder)
    config = memorizing_model.generation_config.to_dict() | {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "repetition_penalty": 1.05,
        "no_repeat_ngram_size": 3,
    }
    (folder / "generation_config.json").write_text(json.dumps(config))
    model = load_model(str(folder))
    assert model.generation_config.repetition_penalty == 1.05 and model.generation_config.do_sample
    ids = as_tensor(tiny_data.train)[:12]
    expected = argmax_loop(model, ids, 8, 40)
    torch.manual_seed(0)
    assert torch.equal(greedy_continuations(model, ids, 8, 40, batch_size=5), expected)
    assert model.generation_config.repetition_penalty == 1.05  # restored afterwards
    # the recheck path of extraction decodes the same way: every example rechecked, verdicts unchanged
    rows = tiny_data.train.iloc[:12]
    rechecked = extract_memorized(model, rows, 8, 16, margin_tolerance=float("inf"))
    plain = extract_memorized(model, rows, 8, 16, recheck=False)
    assert rechecked["rechecked"].all() and rechecked["matched_tokens"].tolist() == plain["matched_tokens"].tolist()
