"""Look-alikes of the paper's models and ``kdmem run --rehearse``.

The paper configs are rehearsed offline (``HF_HUB_OFFLINE=1``) against kdmem's look-alike
fixtures, on the builtin text. The default suite rehearses the Pythia setting with one seed and no
extra temperature (every stage of the graph, at Pythia's vocabularies and dtypes, in a minute); the
slow set rehearses all five paper configs whole (``pytest -m slow tests/test_rehearsal.py``).
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kdmem.config import load_config
from kdmem.memorization.extraction import extract_memorized, greedy_matched_tokens, starting_batch_size
from kdmem.models.decoding import greedy_continuations
from kdmem.models.lookalike import (
    LEARNED_TOKENS,
    STUDENT_SIZE,
    TEACHER_SIZE,
    build_lookalike,
    materialized_fixture,
    offline_fixture,
    offline_fixture_names,
)
from kdmem.rehearsal import RehearsalError, rehearse

PAPER = Path(__file__).parent.parent / "configs" / "paper"
OFFLINE_DATA = ["data.source=builtin:python-docs"]

REAL = {  # rows of the embedding matrix, tokenizer length, tied, eos id, pad id (None: none of its own)
    "EleutherAI/pythia-12b": (50688, 50277, False, 0, None),
    "EleutherAI/pythia-1.4b": (50304, 50277, False, 0, None),
    "EleutherAI/pythia-1b": (50304, 50277, False, 0, None),
    "EleutherAI/pythia-12b-deduped": (50688, 50277, False, 0, None),
    "EleutherAI/pythia-2.8b-deduped": (50304, 50277, False, 0, None),
    "allenai/OLMo-2-1124-7B": (100352, 100278, False, 100257, 100277),
    "allenai/OLMo-2-0425-1B": (100352, 100278, False, 100257, 100277),
    "Qwen/Qwen3-8B-Base": (151936, 151669, False, 151643, 151643),
    "Qwen/Qwen3-1.7B-Base": (151936, 151669, True, 151643, 151643),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_every_paper_model_has_an_offline_lookalike():
    models = set()
    for path in PAPER.glob("*.yaml"):
        config = load_config(path)
        models |= {config.teacher.model, config.student.model} | (
            {config.cross_scale.model, config.baseline.model} - {None}
        )
    assert models == set(REAL) == set(offline_fixture_names())


@pytest.mark.parametrize("name", sorted(REAL))
def test_lookalike_fixture_keeps_the_real_vocabulary_ties_and_special_tokens(name):
    rows, length, tied, eos, pad = REAL[name]
    folder = materialized_fixture(name)
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (config.vocab_size, len(tokenizer), bool(config.tie_word_embeddings)) == (rows, length, tied)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, config.eos_token_id) == (eos, pad, eos)
    assert not any(folder.glob("*.safetensors")) and not offline_fixture(name).joinpath("model.safetensors").exists()
    # text tokenizes into learned tokens only; a special token is one id, at its real id
    ids = tokenizer("def f(x):\n    return x  # <|endoftext|> and more")["input_ids"]
    assert tokenizer.eos_token in tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    assert all(i in special or i < LEARNED_TOKENS + 2 for i in ids)
    assert tokenizer.decode([i for i in ids if i not in special]).startswith("def f(x):")


@pytest.mark.parametrize("name", sorted(REAL))
def test_a_lookalike_keeps_the_architecture_and_shrinks_width_and_depth(name, tmp_path):
    rows, _, tied, _, _ = REAL[name]
    size = STUDENT_SIZE if tied else TEACHER_SIZE
    info = build_lookalike(str(materialized_fixture(name)), tmp_path / "m", size)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    real = AutoConfig.from_pretrained(materialized_fixture(name))
    assert type(model).__name__ == real.architectures[0] == info["architecture"]
    assert model.config.vocab_size == rows and model.get_input_embeddings().weight.shape[0] == rows
    shared = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shared == tied
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (size.hidden, size.layers)
    if hasattr(real, "num_key_value_heads"):  # grouped-query attention keeps its ratio
        assert (
            model.config.num_attention_heads // model.config.num_key_value_heads
            == real.num_attention_heads // real.num_key_value_heads
        )
    assert info["real_sizes"]["hidden_size"] == real.hidden_size > size.hidden


def test_the_cpu_batch_search_starts_where_a_batch_of_logits_fits():
    def shaped(vocab):  # what the search reads of a model: its device and its vocabulary
        return SimpleNamespace(device=torch.device("cpu"), config=AutoConfig.for_model("gpt_neox", vocab_size=vocab))

    assert [starting_batch_size(shaped(v), 256) for v in (2048, 50688, 151936)] == [64, 16, 4]
    assert starting_batch_size(shaped(2048), 64) == 64


@pytest.mark.parametrize("name", ["allenai/OLMo-2-0425-1B", "Qwen/Qwen3-1.7B-Base"])
def test_extraction_verdicts_equal_generate_on_olmo2_and_qwen3_lookalikes_in_bfloat16(name, tmp_path):
    """Targets are the model's own greedy output from a 10-token prefix, with one token changed at a
    random suffix position k (or none): greedy decoding reproduces exactly k tokens, and every
    count must equal generate's. OLMo-2: pad 100277 != eos, untied; Qwen3-1.7B: pad == eos, tied
    embeddings, grouped-query attention."""
    build_lookalike(str(materialized_fixture(name)), tmp_path / "m", STUDENT_SIZE)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16).eval()
    with torch.no_grad():  # top logits of a trained model's size, where bfloat16 steps are coarse
        model.get_output_embeddings().weight.mul_(40)
    torch.manual_seed(0)
    prefix, suffix, examples = 10, 30, 64
    ids = greedy_continuations(
        model, torch.randint(0, 8000, (examples, prefix)), prefix, prefix + suffix, batch_size=64
    )
    changed_at = torch.randint(0, suffix + 1, (examples,))  # suffix: unchanged
    for row, k in enumerate(changed_at.tolist()):
        if k < suffix:
            ids[row, prefix + k] = (ids[row, prefix + k] + 1) % 8000
    rows = pd.DataFrame({"example_id": range(examples), "input_ids": list(ids.numpy())})
    truth = greedy_matched_tokens(model, ids, prefix, suffix, batch_size=64)
    assert torch.equal(truth, changed_at)  # the construction holds under generate itself
    for full in (False, True):
        verdicts = extract_memorized(
            model, rows, prefix, suffix, batch_size=None, full=full, prefix_lens=[prefix] if full else []
        )
        assert verdicts["matched_tokens"].tolist() == truth.tolist()
        assert verdicts["memorized"].tolist() == (truth == suffix).tolist()


EXAMPLES = (16, 8)
"""Training and validation sequences of the slow rehearsals (the CLI's default: 64 and 16)."""

FEW_EXAMPLES = (8, 4)
"""The default suite's rehearsal: half as many, half the time (25 s instead of 50 s here)."""


ONE_SEED = ["seeds=[0]", "soft.sweep_temperatures=[2.0]"]
"""The default suite's Pythia rehearsal: pythia-fineweb's graph with one seed and only its soft
temperature (6 models instead of 14), every stage kind still in it."""


def _rehearsed(name: str, tmp_path_factory, overrides=(), examples=EXAMPLES) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp(f"rehearse-{name}")
    config = load_config(PAPER / f"{name}.yaml", overrides=OFFLINE_DATA + list(overrides))
    return rehearse(config, output, examples=examples), output


@pytest.fixture(scope="module")
def pythia(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return _rehearsed("pythia-fineweb", tmp_path_factory, ONE_SEED, FEW_EXAMPLES)


def _check_rehearsal(
    result: dict, output: Path, teacher_rows: int, student_rows: int, seeds=(0, 1, 2), examples=EXAMPLES
) -> None:
    run = output / "run"
    assert result["status"] == "passed" and json.loads((output / "rehearsal.json").read_text())["status"] == "passed"
    config = load_config(run / "config.yaml")
    assert config.data.seq_len == 256 and (config.extraction.prefix_len, config.extraction.suffix_len) == (50, 50)
    assert config.teacher.training.bf16 and config.inference_dtype == "bfloat16" and config.seeds == list(seeds)
    assert (result["lookalikes"]["teacher"]["vocab_size"], result["lookalikes"]["student"]["vocab_size"]) == (
        teacher_rows,
        student_rows,
    )
    summary = json.loads((run / "summary.json").read_text())
    expected = {"teacher", "baseline", "soft", "hard", "soft-filtered"}
    expected |= {f"soft-T{t:g}" for t in config.soft.sweep_temperatures if t != config.soft.temperature}
    expected |= {f"{kind}-seed{s}" for kind in ("baseline", "soft", "hard") for s in seeds[1:]}
    if config.cross_scale.model:  # another size of the student's family: its vocabulary too
        expected.add("cross-scale")
        assert result["lookalikes"]["cross_scale"]["vocab_size"] == student_rows
    assert set(summary["models"]) == expected
    shared = min(teacher_rows, student_rows)
    hard = pd.read_parquet(run / "data" / "hard.parquet")
    assert max(int(ids.max()) for ids in hard["input_ids"]) < shared  # the teacher writes only ids the student has
    features = pd.read_parquet(run / "features.parquet")
    assert len(features) == examples[0] and features["teacher_baseline_kl"].gt(0).all()
    filtering = json.loads((run / "filtering.json").read_text())
    assert "stand_in" in filtering and filtering["flagged"] > 0
    assert "Not a result" in (run / "report.html").read_text()
    assert any("teacher cache" in line for line in result["checked"])
    # the paper's lambada_openai and winogrande, rehearsed offline as kdmem's tasks of the same kinds
    assert any(
        "utility: every model evaluated by lm-eval on kdmem_last_word, kdmem_two_choice" in line
        for line in result["checked"]
    )


def test_rehearsal_of_the_pythia_paper_config_with_one_seed(pythia):
    result, output = pythia
    _check_rehearsal(result, output, 50688, 50304, seeds=(0,), examples=FEW_EXAMPLES)
    assert "offline look-alike" in result["lookalikes"]["teacher"]["found_in"]


def test_rehearsal_fails_loudly_on_the_features_bug(pythia, tmp_path, monkeypatch):
    """The bug the paper-settings review found: features took KL(teacher || baseline) over the two
    full logit tensors, which differ in size at Pythia's 50,688 vs 50,304 rows."""
    import kdmem.analysis.features as features

    _, output = pythia
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    for later in ("features.parquet", "filtering.json", "summary.json", "analysis.json", "report.html"):
        (copy / "run" / later).unlink(missing_ok=True)
    shutil.rmtree(copy / "run" / "models" / "soft-filtered")
    monkeypatch.setattr(features, "on_shared_vocabulary", lambda *tensors: tensors)  # the code before the fix
    config = load_config(PAPER / "pythia-fineweb.yaml", overrides=OFFLINE_DATA + ONE_SEED)
    with pytest.raises(
        RehearsalError,
        match=r"failed in stage features .*size of tensor a \(50688\) must match the size of tensor b \(50304\)",
    ):
        rehearse(config, copy, examples=FEW_EXAMPLES)
    assert json.loads((copy / "rehearsal.json").read_text())["stage"] == "features"


def test_a_rehearsal_never_writes_into_a_real_run(tmp_path):
    (tmp_path / "config.yaml").write_text("name: real\n")
    with pytest.raises(RehearsalError, match="not a rehearsal"):
        rehearse(load_config(PAPER / "pythia-fineweb.yaml", overrides=OFFLINE_DATA), tmp_path)


def test_offline_a_hub_dataset_gets_one_clear_message(tmp_path):
    with pytest.raises(RehearsalError, match=r"unreachable.*HuggingFaceFW/fineweb.*data.source=builtin:python-docs"):
        rehearse(load_config(PAPER / "pythia-fineweb.yaml"), tmp_path)


def test_offline_a_model_without_a_fixture_names_the_fix(tmp_path):
    config = load_config(PAPER / "pythia-fineweb.yaml", overrides=OFFLINE_DATA + ["teacher.model=someone/unknown-7b"])
    with pytest.raises(
        RehearsalError, match=r"cannot read the config.json and tokenizer of someone/unknown-7b.*--lookalikes"
    ):
        rehearse(config, tmp_path)


def test_lookalikes_folder_is_read_before_the_hub(tmp_path):
    """--lookalikes DIR: a folder of ORG/NAME/ with config.json and tokenizer files, no weights."""
    from kdmem.rehearsal import lookalike_source

    shutil.copytree(materialized_fixture("EleutherAI/pythia-12b"), tmp_path / "EleutherAI" / "pythia-12b")
    source, where = lookalike_source("EleutherAI/pythia-12b", tmp_path, online=True)
    assert source == str(tmp_path / "EleutherAI" / "pythia-12b") and where == source


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, rows",
    [
        ("pythia-fineweb", (50688, 50304)),
        ("olmo2-fineweb", (100352, 100352)),
        ("qwen3-fineweb", (151936, 151936)),
        ("pythia-wikitext", (50688, 50304)),
        ("pythia-nemotron", (50688, 50304)),
    ],
)
def test_rehearsal_of_every_paper_config(name, rows, tmp_path_factory):
    result, output = _rehearsed(name, tmp_path_factory)
    _check_rehearsal(result, output, *rows)


@pytest.mark.slow
def test_rehearsal_of_the_pretraining_pilot(tmp_path_factory):
    """The pilot's config on look-alikes at its revisions: teacher and baseline given (saved into the
    run, trained by nobody), the student distilled from step 115,000, the given teacher scored
    against its own look-alike at the student's revision; D the range's first sequences."""
    overrides = ["data.packing=concatenate", "data.sequence_range=[0,80]"]
    result, output = _rehearsed("pythia-pretraining-pilot", tmp_path_factory, overrides)
    run = output / "run"
    assert result["status"] == "passed"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "baseline", "soft", "hard"}
    assert summary["given_models"] == ["teacher", "baseline"]
    found = result["lookalikes"]
    assert (found["teacher"]["revision"], found["student"]["revision"], found["baseline"]["revision"]) == (
        "step116000",
        "step115000",
        "step116000",
    )
    config = load_config(run / "config.yaml")
    assert sorted(p.name for p in Path(config.teacher.model).iterdir()) == ["step115000", "step116000"]
    assert config.data.sequence_range == [0, EXAMPLES[0]] and summary["data"]["train_examples"] == EXAMPLES[0]
    train = pd.read_parquet(run / "data" / "train.parquet")
    assert train["example_id"].tolist() == [f"seq-{i}" for i in range(EXAMPLES[0])]
    assert "| 11 | Pre-training distillation pilot |" in (run / "report.md").read_text()
