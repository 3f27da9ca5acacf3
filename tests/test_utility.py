"""Downstream utility through lm-evaluation-harness: kdmem's own tasks from held-out text, the
utility stages of a run, and their numbers against lm-eval's own run and a count by hand."""

import json
import shutil

import pandas as pd
import pytest
import torch

from kdmem.config import ConfigError, load_config
from kdmem.pipeline import run
from kdmem.utility import last_word_documents, two_choice_documents, write_local_task_yaml

from .conftest import FAST_OVERRIDES

TASKS = ["kdmem_last_word", "kdmem_two_choice"]
FAST = FAST_OVERRIDES + [
    f"utility.tasks=[{','.join(TASKS)}]",
]


@pytest.fixture(scope="module")
def utility_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("utility") / "run"
    summary = run(load_config(preset="smoke", overrides=FAST), out)
    return out, summary


def test_last_word_documents_end_on_a_whole_word():
    texts = ["the quick brown fox jumps over the lazy dog and then some", "short", "a b c d e f g h i j k l m nopq"]
    documents = last_word_documents(texts)
    # "some" is the window's last characters, perhaps a word cut in two: the last whole word is "then"
    assert documents[0] == {"context": "the quick brown fox jumps over the lazy dog and", "target": "then"}
    assert len(documents) == 1  # "short" has no word after a space; "nopq" ends the window


def test_two_choice_documents_pair_each_text_with_another():
    texts = [f"document {i} " + " ".join(f"w{i}x{j}" for j in range(30)) for i in range(4)]
    documents = two_choice_documents(texts, seed=0)
    assert len(documents) == 4 and {d["label"] for d in documents} == {0, 1}
    for i, document in enumerate(documents):
        own, other = document["choices"][document["label"]], document["choices"][1 - document["label"]]
        assert texts[i].startswith(document["context"]) and (document["context"] + own) in texts[i]
        assert other.split()[0].startswith(f"w{(i + 2) % 4}x") and len(own.split()) == len(other.split())


def test_every_model_is_evaluated_downstream(utility_run):
    import lm_eval

    out, summary = utility_run
    from kdmem.report import headline_table

    documents = json.loads((out / "stages" / "utility.json").read_text())["documents"]
    assert set(documents) == set(TASKS) and all(count > 0 for count in documents.values())
    for name, row in summary["models"].items():
        assert set(row["utility"]) == set(TASKS), name
        last_word, two_choice = row["utility"]["kdmem_last_word"], row["utility"]["kdmem_two_choice"]
        assert 0 <= last_word["acc"] <= 1 and last_word["perplexity"] > 1 and 0 <= two_choice["acc"] <= 1
        samples = pd.read_parquet(out / "utility" / f"{name}.parquet")
        assert samples.groupby("task").size().to_dict() == documents
        # per sample: lm-eval's acc of the sample, and the mean of them is the task's accuracy
        assert samples[samples["task"] == "kdmem_last_word"]["acc"].mean() == pytest.approx(last_word["acc"])
        results = json.loads((out / "utility" / f"{name}.json").read_text())
        assert results["lm_eval_version"] == lm_eval.__version__ and set(results["configs"]) == set(TASKS)
    table = headline_table(summary)
    assert "last-word ppl" in table and "two-choice acc" in table
    assert "two-choice acc" in (out / "report.html").read_text() and "last-word acc" in (out / "report.md").read_text()


def test_last_word_accuracy_equals_lm_evals_own_run_and_a_count_by_hand(utility_run, tmp_path):
    """The stage hands lm-eval the loaded model; lm-eval's own run loads the saved folder itself
    (``model="hf"``). A count by hand: greedy decoding produces the target's tokens after the
    context, and perplexity is exp of minus the mean log-likelihood of the targets."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = utility_run
    folder = out / "models" / "baseline"
    tasks = write_local_task_yaml(out / "utility" / "tasks", tmp_path / "tasks")
    own = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "device": "cpu", "dtype": "float32"},
        tasks=["kdmem_last_word"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0,
    )["results"]["kdmem_last_word"]
    ours = summary["models"]["baseline"]["utility"]["kdmem_last_word"]
    assert ours["acc"] == own["acc,none"]
    assert ours["perplexity"] == pytest.approx(own["perplexity,none"], rel=1e-5)

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    longest = model.config.max_position_embeddings
    hits, log_likelihoods = [], []
    for line in (out / "utility" / "tasks" / "kdmem_last_word.jsonl").read_text().splitlines():
        document = json.loads(line)
        context = tokenizer(document["context"])["input_ids"]
        whole = tokenizer(document["context"] + " " + document["target"])["input_ids"]
        target = whole[len(context) :]
        ids = torch.tensor([whole[-(longest + 1) :][:-1]])  # as lm-eval truncates: from the left
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, -len(target) :].float(), dim=-1)
        hits.append(log_probs.argmax(-1).tolist() == target)
        log_likelihoods.append(float(log_probs[torch.arange(len(target)), target].sum()))
    assert ours["acc"] == pytest.approx(sum(hits) / len(hits))
    assert ours["perplexity"] == pytest.approx(float(torch.tensor(log_likelihoods).mean().neg().exp()), rel=1e-4)


def test_a_change_of_tasks_rescores_utility_and_nothing_else(utility_run, tmp_path):
    out, _ = utility_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = {path.name: path.read_text() for path in (copy / "stages").iterdir()}
    summary = run(
        load_config(preset="smoke", overrides=FAST + ["utility.tasks=[kdmem_last_word]"]), copy, overwrite=True
    )
    after = {path.name: path.read_text() for path in (copy / "stages").iterdir()}
    changed = {name for name in before if after.get(name) != before[name]}
    assert changed == {name for name in before if name.startswith("utility") or name in READING_STAGES}
    assert all(set(row["utility"]) == {"kdmem_last_word"} for row in summary["models"].values())


READING_STAGES = {"summary.json", "analysis.json", "report.json"}


def test_an_unknown_task_is_refused_before_anything_is_trained(tmp_path):
    config = load_config(preset="smoke", overrides=FAST + ["utility.tasks=[lambada_opnai]"])
    with pytest.raises(ConfigError, match=r"does not know: 'lambada_opnai' \(did you mean 'lambada_openai'\?\)"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_hub_task_offline_names_the_local_tasks(utility_run, tmp_path, monkeypatch):
    """lambada_openai with its dataset neither cached nor reachable (lm-eval indexes its built-in
    tasks first: about 12 s)."""
    from kdmem.data import DataError
    from kdmem.models import load_model, load_tokenizer
    from kdmem.utility import evaluate_utility

    out, _ = utility_run
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    model = load_model(str(out / "models" / "baseline"))
    with pytest.raises(DataError, match=r"lambada_openai.*utility.tasks=\[kdmem_last_word\]"):
        evaluate_utility(
            model, load_tokenizer(str(out / "models" / "baseline")), ["lambada_openai"], tmp_path, tmp_path
        )
