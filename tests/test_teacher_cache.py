import json

import pytest
import torch

from kdmem.config import ConfigError
from kdmem.data import as_tensor
from kdmem.losses import distillation_loss, sampled_forward_kl
from kdmem.models import ModelError, load_model
from kdmem.train.teacher_cache import TeacherLogitCache, build_teacher_cache


@pytest.fixture(scope="module")
def teacher_and_rows(tiny_bases, tiny_data):
    return load_model(str(tiny_bases["teacher"])).eval(), tiny_data.train.iloc[:20].reset_index(drop=True)


def direct_logits(teacher, rows):
    with torch.no_grad():
        return teacher(input_ids=as_tensor(rows)[:, :-1].to(teacher.device)).logits.float().cpu()


def test_full_and_topk_caches_round_trip(teacher_and_rows, tmp_path):
    teacher, rows = teacher_and_rows
    logits = direct_logits(teacher, rows)
    full = build_teacher_cache(
        teacher, rows, tmp_path / "full", teacher_id="tiny", kind="logits", shard_size=8, batch_size=3
    )
    assert full.spec.num_shards == 3 and full.spec.bytes_per_token == 4 * logits.shape[-1]
    picked = [19, 0, 8, 7]  # across shards, out of order
    torch.testing.assert_close(full.rows(picked)["logits"], logits[picked], rtol=1e-5, atol=1e-5)
    top = build_teacher_cache(
        teacher, rows, tmp_path / "top", teacher_id="tiny", kind="sampled", top_k=16, shard_size=8, batch_size=3
    )
    cached = top.rows(picked)
    expected_logits, expected_ids = logits[picked].topk(16, dim=-1)
    torch.testing.assert_close(cached["top_logits"], expected_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(cached["top_ids"].long(), expected_ids)
    assert top.spec.temperatures == (1.0, 2.0, 3.0, 4.0) and top.spec.tail_samples == 16
    for column, temperature in enumerate(top.spec.temperatures):
        torch.testing.assert_close(
            cached["log_partition"][..., column],
            torch.logsumexp(logits[picked] / temperature, -1),
            rtol=1e-5,
            atol=1e-5,
        )
    tail_ids = cached["tail_ids"].long()
    assert tail_ids.shape == (4, logits.shape[1], 16)
    assert not (tail_ids[..., :, None] == expected_ids[..., None, :]).any()  # drawn from the tail only
    torch.testing.assert_close(cached["tail_logits"], logits[picked].gather(-1, tail_ids), rtol=1e-5, atol=1e-5)
    proposal = torch.log_softmax(
        logits[picked].scatter(-1, expected_ids, -torch.inf) / 4.0, -1
    )  # the highest temperature served
    torch.testing.assert_close(cached["tail_log_proposal"], proposal.gather(-1, tail_ids), rtol=1e-5, atol=1e-5)
    assert top.spec.bytes_per_token == 8 * 16 + 12 * 16 + 4 * 4
    drawn = build_teacher_cache(
        teacher,
        rows,
        tmp_path / "drawn",
        teacher_id="tiny",
        kind="sampled",
        top_k=16,
        tail_samples=4,
        tail_draws=3,
        shard_size=8,
    )
    tail = drawn.rows(picked)["tail_ids"]
    assert tail.shape[-1] == 12 and drawn.spec.bytes_per_token == 8 * 16 + 12 * 12 + 4 * 4
    blocks = [drawn.teacher_at(drawn.rows(picked), 2.0, draw)[0][..., 16:] for draw in range(4)]
    assert [torch.equal(block, tail[..., 4 * (d % 3) : 4 * (d % 3) + 4]) for d, block in enumerate(blocks)] == [
        True
    ] * 4  # draw 3 is draw 0
    assert not torch.equal(blocks[0], blocks[1])
    with pytest.raises(IndexError, match="outside"):
        top.rows([20])


def test_a_hidden_state_cache_gives_back_the_teachers_logits(teacher_and_rows, tmp_path):
    teacher, rows = teacher_and_rows
    logits = direct_logits(teacher, rows)
    cache = build_teacher_cache(
        teacher, rows, tmp_path / "hidden", teacher_id="tiny", shard_size=8, batch_size=3
    )  # the default kind
    assert cache.spec.kind == "hidden" and cache.names == ("hidden",)
    assert cache.spec.bytes_per_token == 4 * teacher.config.hidden_size  # float32 states, not the vocabulary
    picked = [19, 0, 8, 7]
    torch.testing.assert_close(cache.logits(cache.rows(picked)), logits[picked], rtol=0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "hidden").iterdir())[0] == "head.safetensors"
    sampled = build_teacher_cache(teacher, rows, tmp_path / "sampled", teacher_id="tiny", kind="sampled", shard_size=8)
    with pytest.raises(ValueError, match="keeps no logits"):
        sampled.logits(sampled.rows([0]))
    with pytest.raises(ValueError, match="kind must be one of hidden, logits, sampled"):
        build_teacher_cache(teacher, rows, tmp_path / "bad", teacher_id="tiny", kind="topk")


def _paper_shaped(name: str, dtype=torch.bfloat16, **changes):
    """A look-alike of a paper model from its offline config alone (no tokenizer): real vocabulary,
    ties and special ids, 2 layers of width 64, random weights, in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdmem.models.lookalike import TEACHER_SIZE, offline_fixture, shrunk_sizes

    real = AutoConfig.from_pretrained(offline_fixture(name))
    config = AutoConfig.from_pretrained(offline_fixture(name), **shrunk_sizes(real, TEACHER_SIZE), **changes)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _random_rows(count: int, length: int, vocab: int):
    import pandas as pd

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (count, length), generator=generator)
    return pd.DataFrame({"example_id": [f"r{i}" for i in range(count)], "input_ids": list(ids.numpy())})


@pytest.mark.parametrize(("name", "shared"), [("EleutherAI/pythia-12b", 50_304), ("Qwen/Qwen3-1.7B-Base", None)])
def test_a_hidden_state_cache_at_paper_shapes_in_bfloat16(name, shared, tmp_path):
    """Pythia-12B (50,688 rows, untied) cached for the 1.4B student's 50,304; Qwen3-1.7B (tied,
    151,936 rows); bf16, as the paper configs run the teacher: the student reads the teacher's
    own bf16 logits back, over the shared vocabulary."""
    teacher = _paper_shaped(name)
    vocab = teacher.config.vocab_size
    rows = _random_rows(6, 33, 50_277)
    cache = build_teacher_cache(
        teacher, rows, tmp_path, teacher_id=name, vocab_size=shared, shard_size=4, batch_size=4
    )
    kept = shared or vocab
    assert (cache.spec.vocab_size, cache.spec.hidden_dtype, cache.spec.bytes_per_token) == (kept, "bfloat16", 2 * 64)
    with torch.no_grad():
        expected = teacher(input_ids=as_tensor(rows)[:, :-1].to(teacher.device)).logits[..., :kept].cpu()
    read = cache.logits(cache.rows(range(6)))
    assert read.dtype == torch.bfloat16 and read.shape == expected.shape
    ulp = torch.finfo(torch.bfloat16).eps * expected.float().abs().max()
    assert (read.float() - expected.float()).abs().max() <= ulp  # measured: 0 (the same bf16 product)


def test_a_model_that_transforms_its_logits_is_refused_for_a_hidden_state_cache(tmp_path):
    """Gemma-2 soft-caps its logits after the output layer: the hidden states alone would lose that."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=0.5,
    )
    teacher = Gemma2ForCausalLM(config).eval()
    rows = _random_rows(2, 9, 256)
    with pytest.raises(ModelError, match="transforms them further .* soft.cache_kind=logits"):
        build_teacher_cache(teacher, rows, tmp_path / "hidden", teacher_id="gemma")
    logits = build_teacher_cache(teacher, rows, tmp_path / "logits", teacher_id="gemma", kind="logits")
    with torch.no_grad():
        torch.testing.assert_close(
            logits.logits(logits.rows([0, 1])),
            teacher(input_ids=as_tensor(rows)[:, :-1].to(teacher.device)).logits.cpu(),
        )


def test_the_loss_from_the_cache_equals_the_loss_from_the_teacher(teacher_and_rows, tmp_path):
    teacher, rows = teacher_and_rows
    vocab = teacher.config.vocab_size
    cache = build_teacher_cache(
        teacher, rows, tmp_path / "all", teacher_id="tiny", kind="sampled", top_k=vocab, shard_size=8
    )
    student = torch.randn(4, rows["input_ids"].iloc[0].shape[0] - 1, vocab)
    cached = cache.rows([0, 1, 2, 3])
    for temperature in (1.0, 2.0, 4.0):  # one cache, every temperature it serves
        direct = distillation_loss(student, direct_logits(teacher, rows.iloc[:4]), temperature=temperature)
        from_cache = sampled_forward_kl(student, *cache.teacher_at(cached, temperature), temperature=temperature)
        assert from_cache.item() == pytest.approx(direct.item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"serves temperatures \[1.0, 2.0, 3.0, 4.0\], not 1.5"):
        cache.teacher_at(cached, 1.5)


@pytest.mark.parametrize("kind", ["hidden", "sampled"])
def test_a_killed_build_resumes_and_equals_an_uninterrupted_one(kind, teacher_and_rows, tmp_path, monkeypatch):
    teacher, rows = teacher_and_rows
    options = {"teacher_id": "tiny", "kind": kind, "top_k": 8, "shard_size": 4, "batch_size": 4}
    reference = build_teacher_cache(teacher, rows, tmp_path / "reference", **options)

    calls = []
    forward = teacher.forward

    def dying_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return forward(*args, **kwargs)

    monkeypatch.setattr(teacher, "forward", dying_forward)
    with pytest.raises(RuntimeError, match="killed"):
        build_teacher_cache(teacher, rows, tmp_path / "resumed", **options)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    with pytest.raises(FileNotFoundError, match="missing 3 of 5 shards"):
        TeacherLogitCache(tmp_path / "resumed")
    calls.clear()
    monkeypatch.setattr(teacher, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    resumed = build_teacher_cache(teacher, rows, tmp_path / "resumed", **options)
    assert len(calls) == 3  # only the three missing shards
    for index in range(5):
        name = f"shard-{index:05d}.safetensors"
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    assert resumed.spec == reference.spec


def test_a_cache_of_other_settings_is_refused(teacher_and_rows, tmp_path):
    teacher, rows = teacher_and_rows
    build_teacher_cache(teacher, rows, tmp_path, teacher_id="tiny", kind="sampled", top_k=8, shard_size=8)
    with pytest.raises(ConfigError, match="other teacher, top_k"):
        build_teacher_cache(teacher, rows, tmp_path, teacher_id="another", kind="sampled", top_k=16, shard_size=8)
    with pytest.raises(ConfigError, match="top_k must be between 1"):
        build_teacher_cache(teacher, rows, tmp_path / "bad", teacher_id="tiny", kind="sampled", top_k=0)
    with pytest.raises(ConfigError, match="needs tail_samples >= 1"):
        build_teacher_cache(
            teacher, rows, tmp_path / "no-tail", teacher_id="tiny", kind="sampled", top_k=8, tail_samples=0
        )
    assert json.loads((tmp_path / "spec.json").read_text())["top_k"] == 8


BUILD_SCRIPT = """
import sys
from accelerate import PartialState
import pandas as pd
from kdmem.models import load_model
from kdmem.train.teacher_cache import build_teacher_cache

teacher, data, out = sys.argv[1:4]
for kind in ("hidden", "sampled"):
    build_teacher_cache(
        load_model(teacher), pd.read_parquet(data), f"{out}/{kind}",
        teacher_id="tiny", kind=kind, top_k=8, shard_size=4, batch_size=4,
    )
state = PartialState()
print(f"process {state.process_index} of {state.num_processes}")
state.wait_for_everyone()
state.destroy_process_group()  # a gloo group left to interpreter exit can abort the process
"""


def test_two_processes_under_accelerate_build_the_same_cache(tiny_bases, teacher_and_rows, tmp_path):
    from .conftest import two_cpu_processes

    _, rows = teacher_and_rows
    # The reference on the CPU, where the two processes run: on a GPU the same teacher's bits differ.
    teacher = load_model(str(tiny_bases["teacher"]), device="cpu").eval()
    data = tmp_path / "rows.parquet"
    rows.to_parquet(data)
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    for kind in ("hidden", "sampled"):
        build_teacher_cache(
            teacher, rows, tmp_path / "one" / kind, teacher_id="tiny", kind=kind, top_k=8, shard_size=4, batch_size=4
        )
    result = two_cpu_processes(str(script), str(tiny_bases["teacher"]), str(data), str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0 of 2" in result.stdout and "process 1 of 2" in result.stdout
    for kind in ("hidden", "sampled"):
        names = [f"shard-{index:05d}.safetensors" for index in range(5)] + (
            ["head.safetensors"] if kind == "hidden" else []
        )
        for name in names:
            assert (tmp_path / "two" / kind / name).read_bytes() == (tmp_path / "one" / kind / name).read_bytes()
