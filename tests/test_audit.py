import copy
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import kdmem.memorization.audit as audit_module
from kdmem.config import ConfigError, DataConfig, ExtractionConfig
from kdmem.data import read_sequence_rows, write_sequences
from kdmem.memorization import extract_memorized, sample_positions
from kdmem.memorization.audit import AuditConfig, audit
from kdmem.models import load_tokenizer

from .conftest import CPU_ONLY, two_cpu_processes

PREFIX, SUFFIX = 16, 16


@pytest.fixture(scope="module")
def saved_case(memorizing_model, tiny_bases, tiny_data, tmp_path_factory):
    """The memorizing model saved as a folder, and D as a run's train.parquet."""
    folder = tmp_path_factory.mktemp("audit-case")
    memorizing_model.save_pretrained(folder / "model")
    load_tokenizer(str(tiny_bases["teacher"])).save_pretrained(folder / "model")
    write_sequences(folder / "train.parquet", tiny_data.train)
    return folder


def audit_config(case, **changes) -> AuditConfig:
    extraction = {"prefix_len": PREFIX, "suffix_len": SUFFIX, "batch_size": 8, "approximate_sample": 0}
    extraction |= {"full": False, "prefix_lens": []} | changes
    return AuditConfig(
        model=str(case / "model"),
        data=DataConfig(source=str(case / "train.parquet"), validation_examples=0),
        extraction=ExtractionConfig(**extraction),
        shard_size=10,
    )


def test_read_sequence_rows_crosses_row_groups(tiny_data, tmp_path):
    path = tmp_path / "small-groups.parquet"
    tiny_data.train.to_parquet(path, index=False, row_group_size=7)
    assert pq.ParquetFile(path).num_row_groups == 7
    for start, stop in [(0, 48), (0, 7), (5, 9), (13, 30), (40, 48), (47, 60)]:
        rows = read_sequence_rows(path, start, stop)
        expected = tiny_data.train.iloc[start:stop]
        assert rows["example_id"].tolist() == expected["example_id"].tolist()
        assert all((a == b).all() for a, b in zip(rows["input_ids"], expected["input_ids"], strict=True))


def test_sharded_audit_equals_one_pass(saved_case, memorizing_model, tiny_data, tmp_path):
    output = tmp_path / "verdicts.parquet"
    sharded = audit(audit_config(saved_case), output)
    direct = extract_memorized(memorizing_model, tiny_data.train, PREFIX, SUFFIX, batch_size=8)
    pd.testing.assert_frame_equal(sharded, direct)
    assert not output.with_name(output.name + ".shards").exists()
    settings = pq.read_schema(output).metadata[b"kdmem"]
    assert b'"prefix_len": 16' in settings and b'"examples": 48' in settings


def test_extract_command_audits_in_the_dtype_asked(saved_case, memorizing_model, tiny_data, tmp_path, capsys):
    """`kdmem extract --dtype bfloat16`, as the paper configs audit: the verdicts are the bf16
    model's, and the output's settings record the dtype."""
    from kdmem import cli

    output = tmp_path / "bf16.parquet"
    args = [
        "extract",
        "--model",
        str(saved_case / "model"),
        "--data",
        str(saved_case / "train.parquet"),
        "--prefix-len",
        str(PREFIX),
        "--suffix-len",
        str(SUFFIX),
        "--batch-size",
        "8",
        "--dtype",
        "bfloat16",
        "-o",
        str(output),
    ]
    assert cli.main(args) == 0
    assert "rechecked with generate" in capsys.readouterr().out
    expected = extract_memorized(
        copy.deepcopy(memorizing_model).to(torch.bfloat16), tiny_data.train, PREFIX, SUFFIX, batch_size=8
    )
    verdicts = pd.read_parquet(output)
    assert verdicts["matched_tokens"].tolist() == expected["matched_tokens"].tolist()
    float32 = extract_memorized(memorizing_model, tiny_data.train, PREFIX, SUFFIX, batch_size=8)
    assert (verdicts["min_margin"] - float32["min_margin"]).abs().max() > 1e-3  # bf16 gaps, not float32's
    assert b'"dtype": "bfloat16"' in pq.read_schema(output).metadata[b"kdmem"]


def test_approximate_sample_and_listed_ids_land_in_the_same_rows(saved_case, memorizing_model, tiny_data, tmp_path):
    listed = list(tiny_data.train["example_id"].iloc[[3, 40]])
    sharded = audit(
        audit_config(saved_case, approximate_sample=12, approximate_ids=[*listed, "no-such-id"], seed=1),
        tmp_path / "a.parquet",
    )
    checked = sharded["approx_token_match"].notna()
    positions = set(sample_positions(48, 12, seed=1)) | {3, 40}
    assert set(checked[checked].index) == positions
    # the same rows and values as one in-memory pass over all of D
    in_memory = audit(audit_config(saved_case, approximate_sample=12, approximate_ids=listed, seed=1))
    pd.testing.assert_frame_equal(sharded, in_memory, check_like=True)
    exact = sharded[checked & sharded["memorized"]]
    assert (exact["approx_token_match"] == 1.0).all() and (exact["approx_edit_distance"] == 0.0).all()


def test_a_killed_audit_resumes_without_losing_or_repeating_examples(saved_case, tmp_path, monkeypatch):
    uninterrupted = audit(audit_config(saved_case), tmp_path / "whole.parquet")
    output = tmp_path / "killed.parquet"
    calls = []
    real_extract = audit_module.extract_memorized

    def dies_on_third_shard(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(audit_module, "extract_memorized", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        audit(audit_config(saved_case), output)
    shards = output.with_name(output.name + ".shards")
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not output.exists()

    calls.clear()
    monkeypatch.setattr(
        audit_module, "extract_memorized", lambda *a, **k: calls.append(len(a[1])) or real_extract(*a, **k)
    )
    resumed = audit(audit_config(saved_case), output)
    assert calls == [10, 10, 8]  # only the three missing shards
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    assert resumed["example_id"].is_unique and len(resumed) == 48


def test_resuming_with_other_settings_is_refused(saved_case, tmp_path, monkeypatch):
    output = tmp_path / "changed.parquet"

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_module, "extract_memorized", dies)
    with pytest.raises(KeyboardInterrupt):
        audit(audit_config(saved_case), output)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="unfinished audit with other extraction; .*delete that folder"):
        audit(audit_config(saved_case, suffix_len=8), output)
    # the batch size changes no verdict: resuming with another one is allowed
    assert len(audit(audit_config(saved_case, batch_size=16), output)) == 48


def test_automatic_batch_size_halves_until_it_fits(memorizing_model, tiny_data, monkeypatch):
    reference = extract_memorized(memorizing_model, tiny_data.train, PREFIX, SUFFIX, batch_size=48)
    real_forward = memorizing_model.forward

    def forward_with_small_memory(*args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids.shape[0] > 12:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB.")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(memorizing_model, "forward", forward_with_small_memory)
    automatic = extract_memorized(memorizing_model, tiny_data.train, PREFIX, SUFFIX, batch_size=None)
    assert automatic.attrs["batch_size"] == 8  # 64 -> 32 -> 16 -> 8
    # Bit for bit on the CPU. On a GPU the kernels depend on the batch's shape: an H200 gave min_margin
    # 0.0364723 at batch 48 and 0.0364714 at 8, and the same verdicts.
    exact = memorizing_model.device.type == "cpu"
    pd.testing.assert_frame_equal(automatic, reference, check_exact=exact, rtol=1e-5, atol=1e-5)


def test_two_processes_under_accelerate_equal_one(saved_case, tmp_path):
    single = tmp_path / "one.parquet"
    double = tmp_path / "two.parquet"
    common = [
        "--model",
        str(saved_case / "model"),
        "--data",
        str(saved_case / "train.parquet"),
        "--prefix-len",
        str(PREFIX),
        "--suffix-len",
        str(SUFFIX),
        "--batch-size",
        "8",
        "--shard-size",
        "10",
    ]
    env = os.environ | CPU_ONLY
    subprocess.run(
        [sys.executable, "-m", "kdmem.cli", "extract", *common, "--output", str(single)],
        check=True,
        env=env,
        capture_output=True,
    )
    result = two_cpu_processes("-m", "kdmem.cli", "extract", *common, "--output", str(double))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("memorized ") == 1  # only the main process prints the summary
    assert all(
        result.stderr.count(f"extract shard {i}/5:   0%") == 1 for i in range(1, 6)
    )  # each shard once: split, not repeated
    pd.testing.assert_frame_equal(pd.read_parquet(double), pd.read_parquet(single))
