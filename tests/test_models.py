import shutil

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from kdmem.config import TinySizeConfig
from kdmem.models import ModelError, build_model, check_same_vocabulary, load_model, load_tokenizer, train_tokenizer


def test_save_pretrained_loads_by_local_path(tmp_path, tiny_bases):
    tokenizer = load_tokenizer(str(tiny_bases["student"]))
    model = build_model(TinySizeConfig(layers=1, hidden=32, heads=2), len(tokenizer), 16, tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert load_tokenizer(str(tmp_path / "m")).get_vocab() == tokenizer.get_vocab()


def test_a_local_model_s_revisions_are_its_subfolders(tmp_path, tiny_bases):
    """A local folder's revision is its subfolder of that name (as kdmem's own pre-training saves
    its checkpoints): that one loads; a revision it lacks is refused, naming those it has."""
    from kdmem.plan import model_config

    tokenizer = load_tokenizer(str(tiny_bases["student"]))
    checkpoints = {}
    for step in ("step1", "step2"):
        torch.manual_seed(len(checkpoints))
        checkpoints[step] = build_model(TinySizeConfig(layers=1, hidden=32, heads=2), len(tokenizer), 16, tokenizer)
        checkpoints[step].save_pretrained(tmp_path / "m" / step)
        tokenizer.save_pretrained(tmp_path / "m" / step)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        loaded = load_model(str(tmp_path / "m"), revision="step2", device="cpu")
        torch.testing.assert_close(loaded(ids).logits, checkpoints["step2"](ids).logits)
    assert load_tokenizer(str(tmp_path / "m"), revision="step1").get_vocab() == tokenizer.get_vocab()
    assert model_config(str(tmp_path / "m"), "step1").hidden_size == 32
    with pytest.raises(ModelError, match=r"has no revision 'step3'.*\(step1, step2\)"):
        load_model(str(tmp_path / "m"), revision="step3")
    with pytest.raises(ModelError, match="It holds revisions step1, step2"):
        load_model(str(tmp_path / "m"))


def test_a_revision_a_local_model_lacks_is_refused_before_training(tmp_path, tiny_bases):
    from kdmem.config import load_config
    from kdmem.layout import RunLayout
    from kdmem.pipeline import run

    from .conftest import TINY_OVERRIDES

    out = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, f"student.model={tiny_bases['student']}", "student.revision=step115000"]
    with pytest.raises(ModelError, match="has no revision 'step115000'"):
        run(load_config(preset="smoke", overrides=overrides), out)
    assert not RunLayout(out).model("teacher").exists()


@torch.no_grad()
def test_embedded_bases_are_pretrained_gpt_neox(tiny_bases, tiny_data):
    teacher, student = load_model(str(tiny_bases["teacher"])), load_model(str(tiny_bases["student"]))
    assert isinstance(teacher, GPTNeoXForCausalLM) and isinstance(teacher.config, GPTNeoXConfig)
    assert sum(p.numel() for p in teacher.parameters()) > sum(p.numel() for p in student.parameters())
    # Pre-trained, not just built: on D (text the bases never saw) each predicts far better than a
    # fresh initialisation of its own config. Measured on the tests' 8,000-token pre-training:
    # teacher 5.40 against 6.27 nats, student 5.55 against 6.27 (ln 512 = 6.24).
    ids = torch.as_tensor(np.stack(tiny_data.train["input_ids"].iloc[:16]), dtype=torch.long)
    torch.manual_seed(0)
    for base in (teacher, student):
        fresh = type(base)(base.config).to(base.device).eval()
        losses = [
            model.eval()(input_ids=ids.to(base.device), labels=ids.to(base.device)).loss.item()
            for model in (base, fresh)
        ]
        assert losses[0] < losses[1] - 0.4, losses


def test_not_a_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))


def test_mismatched_vocabularies_are_refused(tiny_bases):
    texts = ["alpha beta gamma delta " * 50, "one two three four five " * 50]
    small, large = train_tokenizer(texts, 300), load_tokenizer(str(tiny_bases["teacher"]))
    with pytest.raises(
        ModelError, match=rf"teacher {len(large)} tokens, student {len(small)};.* only in the teacher's"
    ):
        check_same_vocabulary(large, small)
    check_same_vocabulary(large, load_tokenizer(str(tiny_bases["student"])))


def test_a_vocabulary_mismatch_with_equal_counts_names_what_differs(tiny_bases, tmp_path):
    """Two tokens swap ids: the counts are equal, so the message must show the swap."""
    import json

    folder = tmp_path / "swapped"
    shutil.copytree(tiny_bases["student"], folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = [token for token, index in vocab.items() if index in (300, 301)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    teacher = load_tokenizer(str(tiny_bases["teacher"]))
    with pytest.raises(ModelError, match=r"2 with other ids \(e.g. .*: teacher id 300, student id 301\)"):
        check_same_vocabulary(teacher, load_tokenizer(str(folder)))
