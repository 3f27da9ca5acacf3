"""The pre-training distillation pilot (the paper's finding 11): D as a slice of a pre-training
stream, teacher and baseline as given checkpoints trained by nobody, the embedded bases' own
checkpoints at steps k and k + 1, and the findings row beside the paper's figures."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdmem.config import ConfigError, DataConfig, load_config
from kdmem.data import DataError, prepare_sequences
from kdmem.data.sequences import pack_sequences
from kdmem.data.sources import load_documents
from kdmem.data.streams import MMapStream, stream_rows, write_mmap_stream
from kdmem.layout import RunLayout
from kdmem.models import load_model, load_tokenizer
from kdmem.pipeline import run
from kdmem.plan import plan
from kdmem.report.findings import paper_findings

from .conftest import TINY_OVERRIDES

PILOT = [
    *(o for o in TINY_OVERRIDES if not o.startswith("data.num_examples")),
    "data.num_examples=null",
    "data.sequence_range=[0,48]",
    "data.dedupe=false",
    "teacher.model=builtin:tiny-teacher",
    "teacher.revision=k+1",
    "teacher.fine_tune=false",
    "student.revision=k",
    "baseline.model=builtin:tiny-student",
    "baseline.revision=k+1",
    "filtering.enabled=false",
    "soft.sweep_temperatures=[]",
    "extraction.approximate_sample=0",
    "extraction.track_every_epochs=0",
]


def test_a_megatron_stream_is_read_by_position(tmp_path):
    """The index as Megatron's (and Pythia's) writer lays it out, byte by byte: magic, version 1,
    dtype code 8 (uint16), counts, int32 sizes, int64 byte pointers, the document index."""
    sequences = [list(range(10 * i, 10 * i + 7)) for i in range(6)]
    (tmp_path / "document.bin").write_bytes(b"".join(np.asarray(s, dtype=np.uint16).tobytes() for s in sequences))
    sizes = np.full(6, 7, dtype=np.int32)
    pointers = np.arange(6, dtype=np.int64) * 7 * 2
    header = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<QQ", 6, 7)
    index = header + sizes.tobytes() + pointers.tobytes() + np.arange(7, dtype=np.int64).tobytes()
    (tmp_path / "document.idx").write_bytes(index)
    stream = MMapStream(tmp_path / "document")
    assert len(stream) == 6
    assert [row.tolist() for row in stream.rows(2, 4, 5)] == [sequences[2][:5], sequences[3][:5]]
    write_mmap_stream(tmp_path / "again", sequences)  # kdmem's writer makes the same bytes
    assert (tmp_path / "again.idx").read_bytes() == index and (tmp_path / "again.bin").read_bytes() == (
        tmp_path / "document.bin"
    ).read_bytes()
    with pytest.raises(DataError, match="sequence 0 holds 7 tokens, fewer than data.seq_len = 8"):
        stream.rows(0, 2, 8)
    (tmp_path / "bad.idx").write_bytes(b"not an index" * 4)
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not a Megatron MMapIndexedDataset index"):
        MMapStream(tmp_path / "bad")


def test_a_sequence_range_is_that_slice_of_the_stream_and_validation_what_follows(tmp_path, tiny_bases):
    """D is sequences [start, end) of the stream, named by position; validation the ones after it.
    Checked against the stream packed whole, and against a tokenized stream holding those tokens."""
    tokenizer = load_tokenizer(str(tiny_bases["teacher"]))
    text = DataConfig(seq_len=16, num_examples=None, sequence_range=[5, 25], validation_examples=4, dedupe=False)
    splits = prepare_sequences(text, tokenizer)
    whole = pack_sequences(load_documents(text), tokenizer, 16, limit=40, dedupe=False)
    assert splits.train["example_id"].tolist() == [f"seq-{i}" for i in range(5, 25)]
    assert [ids.tolist() for ids in splits.train["input_ids"]] == [ids.tolist() for ids in whole["input_ids"][5:25]]
    assert [ids.tolist() for ids in splits.validation["input_ids"]] == [
        ids.tolist() for ids in whole["input_ids"][25:29]
    ]
    # The same tokens as a Megatron stream of longer sequences: each record's first seq_len tokens.
    write_mmap_stream(tmp_path / "pile", [[*ids.tolist(), 1, 2, 3] for ids in whole["input_ids"]])
    tokens = DataConfig(
        source=str(tmp_path / "pile"),
        packing="tokens",
        seq_len=16,
        num_examples=None,
        sequence_range=[5, 25],
        validation_examples=4,
        dedupe=False,
    )
    from_tokens = prepare_sequences(tokens, None)
    assert from_tokens.train["example_id"].tolist() == splits.train["example_id"].tolist()
    assert [ids.tolist() for ids in from_tokens.train["input_ids"]] == [
        ids.tolist() for ids in splits.train["input_ids"]
    ]
    assert len(stream_rows(tokens, None, 38, 45)) == 2  # the stream ends at 40
    with pytest.raises(DataError, match=r"\[30, 38\] is outside .*holds 40 sequences.*needs 42"):
        prepare_sequences(DataConfig(**{**tokens.__dict__, "sequence_range": [30, 38]}), None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.sequence_range=[0,10]"], "num_examples must be null with data.sequence_range"),
        (["data.sequence_range=[10,5]", "data.num_examples=null"], "sequence_range must be \\[start, end\\]"),
        (["student.revision=step5"], "an embedded base has the revisions k and k\\+1"),
        (["student.revision=k"], "student.revision = k: .*set data.sequence_range"),
        (["baseline.model=builtin:tiny-student", "seeds=[0,1]"], "baseline.model is a given checkpoint.*one seed"),
        (["teacher.fine_tune=false"], "membership.reference .* student.revision is not set"),
        (["data.packing=tokens"], "packing = tokens needs a tokenized source"),
    ],
)
def test_pilot_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_a_range_outside_the_stream_is_refused_before_training(tmp_path, tiny_bases):
    out = tmp_path / "run"
    config = load_config(preset="smoke", overrides=[*PILOT, "data.sequence_range=[100000,100048]"])
    with pytest.raises(DataError, match=r"data.sequence_range = \[100000, 100048\] is outside builtin:python-docs"):
        run(config, out)
    assert not RunLayout(out).model("teacher").exists() and not RunLayout(out).model("soft").exists()


@pytest.fixture(scope="module")
def pilot_run(tmp_path_factory, tiny_bases):
    out = tmp_path_factory.mktemp("pilot") / "run"
    config = load_config(preset="smoke", overrides=PILOT)
    return config, out, run(config, out)


@torch.no_grad()
def test_the_pilot_adopts_teacher_and_baseline_and_distills_from_step_k(pilot_run):
    config, out, summary = pilot_run
    layout = RunLayout(out)
    assert summary["given_models"] == ["teacher", "baseline"]
    teacher_info = json.loads(layout.model_done("teacher").read_text())
    checkpoints = teacher_info["base"]
    assert teacher_info["given"] and (layout.root / "stages" / "teacher.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    given = load_model(checkpoints, revision="k+1", device="cpu")(ids).logits
    torch.testing.assert_close(load_model(str(layout.model("teacher")), device="cpu")(ids).logits, given)
    # k + 1 is the base's pre-training gone on through D; k is the base itself
    before = load_model(checkpoints, revision="k", device="cpu")(ids).logits
    assert not torch.allclose(before, given)
    pretraining = json.loads((Path(checkpoints) / "k+1" / "kdmem_pretraining.json").read_text())
    assert pretraining["from"] == "k" and pretraining["sequences"] == 48
    assert pretraining["chunk"]["sequence_range"] == [0, 48]
    student_info = json.loads(layout.model_done("soft").read_text())
    assert student_info["base"] != checkpoints and student_info["base"].endswith(
        json.loads(layout.model_done("baseline").read_text())["base"].rsplit("/", 1)[-1]
    )
    # D is the chunk the k + 1 checkpoints were pre-trained through
    train = layout.data("train")
    assert train.exists() and summary["data"]["train_examples"] == 48
    row = next(f for f in paper_findings(summary, json.loads(layout.analysis.read_text())) if f.number == 11)
    models = summary["models"]
    assert row.kdmem.startswith(f"memorized {models['teacher']['memorized']} (")
    assert f"/ {models['soft']['memorized']} (" in row.kdmem and row.agrees in ("yes", "no")
    assert "| 11 | Pre-training distillation pilot |" in layout.report_markdown.read_text()


def test_the_pilot_plans_at_paper_scale():
    config = load_config(Path(__file__).parent.parent / "configs" / "paper" / "pythia-pretraining-pilot.yaml")
    result = plan(config)
    stages = {stage["stage"]: stage["flops"] for stage in result["stages"]}
    assert result["data"]["examples"] == 1_024_000 and result["data"]["tokens"] == 1_024_000 * 256
    assert stages["teacher"] == 0 and stages["baseline"] == 0  # trained by nobody
    assert stages["soft"] == pytest.approx(1_024_000 * 256 * 5 * (6 * 2.78e9 + 2 * 11.85e9))
    assert result["total_gpu_hours"] > 0
