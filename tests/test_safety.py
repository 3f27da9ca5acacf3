"""Untrusted files never execute: no remote code unless asked, weights only through safetensors,
no pickle from a data or model path, and no secret from the environment in any output."""

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from kdmem.config import ExperimentConfig
from kdmem.models import ModelError, load_model, load_tokenizer
from tests.conftest import assert_no_secrets

SOURCE = Path(__file__).resolve().parent.parent / "src" / "kdmem"


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_remote_code_is_off_unless_asked(monkeypatch):
    import transformers

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    for trust in (None, True):
        options = {} if trust is None else {"trust_remote_code": True}
        for loader in (load_model, load_tokenizer):
            with pytest.raises(ModelError):
                loader("some-org/some-model", **options)
    assert [kwargs["trust_remote_code"] for kwargs in seen] == [False, False, True, True]
    assert seen[0]["use_safetensors"] is True and seen[2]["use_safetensors"] is True
    config = ExperimentConfig()
    assert not config.teacher.trust_remote_code and not config.student.trust_remote_code


def test_pickled_weights_are_never_loaded(tiny_bases, tmp_path):
    folder = tmp_path / "pickled-model"
    shutil.copytree(tiny_bases["teacher"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned.txt"
    with (folder / "pytorch_model.bin").open("wb") as handle:
        pickle.dump({"weights": Payload(marker)}, handle)
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(folder))
    assert not marker.exists()


def test_source_loads_no_pickle():
    """Every ``torch.load`` in kdmem says ``weights_only=True``; nothing calls pickle, joblib or
    ``eval`` on data."""
    offenders = []
    for path in SOURCE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        for pattern in (
            r"\bpickle\.loads?\(",
            r"\bjoblib\.load\(",
            r"(?<![.\w])eval\(",
            r"\bnp\.load\([^)]*allow_pickle=True",
        ):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_torch_load_of_a_checkpoint_refuses_code(tmp_path):
    """What resuming a Trainer checkpoint relies on: ``weights_only=True`` rejects a pickle that runs code."""
    marker = tmp_path / "pwned.txt"
    with (tmp_path / "rng_state.pth").open("wb") as handle:
        pickle.dump(Payload(marker), handle)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "rng_state.pth", weights_only=True)
    assert not marker.exists()


def test_secrets_in_the_environment_reach_no_output(finished_run):
    """The tiny run is made with ``HF_TOKEN`` and ``WANDB_API_KEY`` set (tests/conftest.py)."""
    _, out, _ = finished_run
    assert (out / "report.html").exists() and (out / "run.json").exists()
    assert_no_secrets(folder=out)
