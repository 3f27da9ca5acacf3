"""Bad input, one test each, through the ``kdmem`` command as a user meets it: exit code 2, one
line that names the problem and the fix, no traceback (unless ``--debug``), and nothing already
computed lost."""

import errno
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from kdmem import cli
from tests.conftest import TINY_OVERRIDES


def fails(capsys, *argv: str) -> str:
    """Run ``kdmem argv``; it must fail cleanly. Returns what it printed on stderr."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "kdmem: error:" in err
    return err


def extract(model, data, tmp_path, *extra) -> list[str]:
    return [
        "extract",
        "--model",
        str(model),
        "--data",
        str(data),
        "--prefix-len",
        "8",
        "--suffix-len",
        "8",
        "-o",
        str(tmp_path / "out.parquet"),
        *extra,
    ]


def run(tmp_path, *overrides) -> list[str]:
    return ["run", "--preset", "smoke", "-o", str(tmp_path / "run"), *TINY_OVERRIDES, *overrides]


def test_missing_data_path(tiny_bases, tmp_path, capsys):
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "nowhere.jsonl", tmp_path))
    assert "nowhere.jsonl does not exist" in err
    assert "does not exist" in fails(capsys, *run(tmp_path, f"data.source={tmp_path / 'nowhere.jsonl'}"))


def test_unreadable_data_files(tiny_bases, tmp_path, capsys):
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "broken.parquet", tmp_path))
    assert "Cannot read" in err and "broken.parquet" in err and "Parquet" in err
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{not json at all\n')
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "broken.jsonl", tmp_path))
    assert "Cannot read" in err and "one JSON object per line" in err


def test_empty_dataset(tiny_bases, tmp_path, capsys):
    for name in ("empty.jsonl", "empty.txt"):
        (tmp_path / name).write_text("")
        assert f"{name} is empty" in fails(capsys, *extract(tiny_bases["teacher"], tmp_path / name, tmp_path))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.jsonl").write_text("")
    assert "is empty" in fails(capsys, *run(tmp_path, f"data.source={tmp_path / 'folder'}"))


def test_texts_too_short_say_what_was_dropped(tiny_bases, tmp_path, capsys):
    (tmp_path / "short.jsonl").write_text('{"text": "hi"}\n{"text": "yo"}\n')
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "short.jsonl", tmp_path))
    assert "read 2 documents" in err and "were dropped" in err and "sequence of 16 tokens" in err
    # Too few sequences for the run's D: the count available and the count needed.
    (tmp_path / "few.jsonl").write_text(
        "\n".join(json.dumps({"text": "word " * 40 + str(i)}) for i in range(3)) + "\n"
    )
    err = fails(capsys, *run(tmp_path, f"data.source={tmp_path / 'few.jsonl'}"))
    assert "yields only" in err and "are needed" in err


def test_audited_parquet_without_usable_sequences(tiny_bases, tmp_path, capsys):
    frames = {
        "none": pd.DataFrame({"input_ids": pd.Series([], dtype=object)}),
        "words": pd.DataFrame({"input_ids": [["12", "x"]]}),
        "short": pd.DataFrame({"input_ids": [list(range(10))] * 3}),
    }
    errors = {}
    for name, frame in frames.items():
        (tmp_path / name).mkdir()
        frame.to_parquet(tmp_path / name / "data.parquet")
        errors[name] = fails(
            capsys, *extract(tiny_bases["teacher"], tmp_path / name / "data.parquet", tmp_path / name)
        )
    assert "holds no sequences" in errors["none"]
    assert "input_ids must hold one list of integer token ids" in errors["words"]
    assert "Sequences have 10 tokens, fewer than prefix_len + suffix_len = 16" in errors["short"]
    assert "--prefix-len" in errors["short"]


def test_jsonl_without_the_text_field(tiny_bases, tmp_path, capsys):
    (tmp_path / "other.jsonl").write_text('{"body": "hello world, a document"}\n')
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "other.jsonl", tmp_path))
    assert "no text field 'text'" in err and "['body']" in err and "text_field" in err
    assert (
        cli.main(extract(tiny_bases["teacher"], tmp_path / "other.jsonl", tmp_path, "--text-field", "body")) == 2
    )  # too short, but read
    assert "yields no sequence" in capsys.readouterr().err


def test_malformed_or_unknown_config(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    assert "not valid YAML" in fails(capsys, "run", str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("teacher:\n  trainig: {epochs: 1}\n")
    assert "Did you mean" in fails(capsys, "run", str(tmp_path / "typo.yaml"))
    assert "Did you mean data.seq_len?" in fails(capsys, "run", "data.seq_lne=3")
    assert "extraction.prefix_len must be an integer" in fails(capsys, "run", "extraction.prefix_len=abc")


def test_model_path_that_is_not_a_model(tiny_bases, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "some words " * 200}) + "\n")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in fails(capsys, *extract(tmp_path / "empty", data, tmp_path))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{}")
    assert "could not be loaded as a tokenizer" in fails(capsys, *extract(junk, data, tmp_path))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_bases["teacher"], no_weights)
    (no_weights / "model.safetensors").unlink()
    err = fails(capsys, *extract(no_weights, data, tmp_path))
    assert "could not be loaded as a causal language model" in err and "safetensors" in err
    assert "does not exist" in fails(capsys, *run(tmp_path, f"teacher.model={tmp_path / 'missing'}"))


def test_teacher_and_student_with_different_vocabularies(tiny_bases, tmp_path, capsys):
    from kdmem.config import TinySizeConfig
    from kdmem.models.tiny import build_model, train_tokenizer

    texts = ["alpha beta gamma delta " * 50, "one two three four five " * 50]
    tokenizer = train_tokenizer(texts, 300)
    other = tmp_path / "other-student"
    build_model(TinySizeConfig(layers=1, hidden=32, heads=1), len(tokenizer), 64, tokenizer).save_pretrained(other)
    tokenizer.save_pretrained(other)
    err = fails(capsys, *run(tmp_path, f"student.model={other}"))
    assert "tokens, student" in err and "vocabular" in err.lower()
    assert not (tmp_path / "run" / "models").exists()  # refused before any training


def test_training_settings_transformers_refuses(tiny_bases, tmp_path, capsys):
    err = fails(capsys, *run(tmp_path, "teacher.training.lr_scheduler=cosine_typo"))
    assert "refuses the training settings of the teacher stage" in err and "cosine_typo is not a valid" in err
    err = fails(capsys, *run(tmp_path, "teacher.training.report_to=tensorbored"))
    assert "tensorbored is not supported" in err and "report_to" in err


def test_compare_needs_two_runs(tmp_path, capsys):
    assert "needs two or more run folders" in fails(capsys, "compare", str(tmp_path))


def test_prefix_and_suffix_longer_than_the_sequence(tiny_bases, tmp_path, capsys):
    err = fails(capsys, *run(tmp_path, "extraction.prefix_len=20", "extraction.suffix_len=20"))
    assert "longer than data.seq_len" in err
    err = fails(capsys, *extract(tiny_bases["teacher"], "builtin:python-docs", tmp_path, "--seq-len", "12"))
    assert "prefix" in err and "12" in err


def test_data_with_bytes_that_are_not_utf8(tiny_bases, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait, a paragraph\n\nanother one".encode("latin-1"))
    err = fails(capsys, *extract(tiny_bases["teacher"], tmp_path / "latin1.txt", tmp_path))
    assert "is not UTF-8: byte 0xe9 at offset 3" in err and "iconv" in err


def test_non_finite_loss_stops_and_keeps_the_last_good_weights(tiny_bases, tmp_path, capsys):
    err = fails(
        capsys, *run(tmp_path, "teacher.training.learning_rate=1e12", "teacher.training.lr_scheduler=constant")
    )
    assert "The training loss became" in err and "at step" in err and "Lower the learning rate" in err
    kept = sorted((tmp_path / "run" / "work" / "teacher").glob("last-good-step-*"))
    assert kept, err
    weights = load_file(str(kept[0] / "model.safetensors"))
    assert all(bool(value.isfinite().all()) for value in weights.values())
    assert str(kept[0]) in err
    assert (tmp_path / "run" / "data" / "train.parquet").exists()  # the finished data stage is kept


def test_full_disk_leaves_no_truncated_output(tiny_bases, tmp_path, capsys, monkeypatch):
    """The disk fills while the evaluation of a model is written: the error says so, nothing
    half-written stays, and a rerun finishes from the stages already done."""
    out = tmp_path / "run"
    original = pd.DataFrame.to_parquet

    def fill_disk(self, path, *args, **kwargs):
        if "memorization" in str(Path(path).parent):
            Path(path).write_bytes(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fill_disk)
    err = fails(capsys, *run(tmp_path))
    assert "no space left on device" in err and "Free some space" in err
    assert (out / "models" / "teacher" / "model.safetensors").exists()
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or (p.parent.name == "memorization")]
    assert leftovers == []
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    assert cli.main(run(tmp_path)) == 0
    assert (out / "memorization" / "teacher.parquet").exists() and (out / "report.html").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        cli.main(["--debug", *run(tmp_path, f"data.source={tmp_path / 'nowhere'}")])
