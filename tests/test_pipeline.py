import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from kdmem import cli
from kdmem.config import ConfigError, load_config
from kdmem.layout import model_names
from kdmem.memorization.canaries import candidate_secrets
from kdmem.models import load_model, load_tokenizer
from kdmem.pipeline import run
from tests.conftest import FAST_OVERRIDES, TINY_OVERRIDES


def test_layout_and_summary(finished_run):
    config, out, summary = finished_run
    names = ["teacher", "baseline", "baseline-seed1", "soft", "soft-seed1", "hard", "hard-seed1", "soft-T1", "soft-T4"]
    assert model_names(config) == names + ["hard-filtered"]
    assert load_config(out / "config.yaml") == config
    train = pd.read_parquet(out / "data" / "train.parquet")
    assert list(train.columns) == ["example_id", "input_ids"] and len(train) == config.data.num_examples
    assert len(pd.read_parquet(out / "data" / "validation.parquet")) == config.data.validation_examples
    hard = pd.read_parquet(out / "data" / "hard.parquet")
    assert list(hard["example_id"]) == list(train["example_id"])
    on_disk = json.loads((out / "summary.json").read_text())
    # the tiny hard students memorize too little to filter for: skipped, and no filtered model
    assert "skipped" in json.loads((out / "filtering.json").read_text())
    assert on_disk["models"] == summary["models"] and list(on_disk["models"]) == names
    for name in names:
        assert (out / "models" / name / "model.safetensors").exists()
        assert (out / "models" / name / "tokenizer.json").exists()
        assert not list(
            (out / "models" / name).glob("*.bin")
        )  # no pickle (Trainer.save_model's training_args.bin) is kept
        verdicts = pd.read_parquet(out / "memorization" / f"{name}.parquet")
        assert list(verdicts["example_id"]) == list(train["example_id"])
        assert verdicts["memorized_p16"].equals(verdicts["memorized"])  # the curve's point at the main prefix length
        row = summary["models"][name]
        assert row["memorized"] == int(verdicts["memorized"].sum()) and row["examples"] == len(train)
        assert row["rate"] == pytest.approx(row["memorized"] / row["examples"])
        assert row["val_ppl"] == pytest.approx(2.718281828 ** row["val_loss"], rel=1e-6)
        # the approximate check covers a sample (here all 48 examples, fewer than the default 100)
        assert verdicts["approx_token_match"].notna().sum() == row["approximate"]["examples"] == len(train)
        assert row["approximate"]["exact"] == row["memorized"]
        scores = pd.read_parquet(out / "membership" / f"{name}.parquet")
        assert (scores["split"] == "train").sum() == len(train) and (
            scores["split"] == "validation"
        ).sum() == config.data.validation_examples
        # the AUC the summary reports is the one the scores give (members: train; lower loss means member)
        from sklearn.metrics import roc_auc_score

        assert row["membership"]["loss"]["auc"] == pytest.approx(
            roc_auc_score(scores["split"] == "train", -scores["loss"])
        )
        assert "reference_ratio" in row["membership"]
        recorded = json.loads(pq.read_schema(out / "membership" / f"{name}.parquet").metadata[b"kdmem"])
        assert "zlib" in recorded["scores"]["zlib_ratio"]["formula"] and recorded["metrics"] == row["membership"]
    for name in names:  # memorization over training ends where the final audit does
        history = summary["memorization_over_training"][name]
        if name.startswith("soft-T"):  # the temperature sweep's extra students are not tracked
            assert history == []
            continue
        assert [record["epoch"] for record in history] == [2]
        assert history[-1]["memorized"] == summary["models"][name]["memorized"]
    assert not (out / "work").exists()  # Trainer scratch space is removed once each model is saved
    provenance = json.loads((out / "run.json").read_text())
    assert {"versions", "hardware", "seeds", "stage_seconds"} <= set(provenance)
    assert "teacher" in provenance["stage_seconds"] and "membership:hard-seed1" in provenance["stage_seconds"]


def test_rerun_skips_finished_stages(finished_run):
    config, out, summary = finished_run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert run(config, out)["models"] == summary["models"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps


def test_refuses_to_mix_configs(finished_run):
    config, out, _ = finished_run
    other = load_config(preset="smoke", overrides=TINY_OVERRIDES + ["soft.temperature=3"])
    with pytest.raises(ConfigError, match="different config, which changes the finished stages .*soft.*--overwrite"):
        run(other, out)


def test_a_changed_config_recomputes_only_what_it_changes(tiny_bases, tmp_path):
    """Adding a sweep temperature trains one more student and keeps the rest; a new soft learning
    rate is refused, then (--overwrite) recomputes the soft students only, ending where a fresh
    run of the new config ends."""
    out = tmp_path / "run"
    run(load_config(preset="smoke", overrides=TINY_OVERRIDES), out)
    teacher_weights = out / "models" / "teacher" / "model.safetensors"
    written = {
        name: (out / "models" / name / "model.safetensors").stat().st_mtime_ns
        for name in ("teacher", "baseline", "soft", "hard")
    }

    added = TINY_OVERRIDES + ["soft.sweep_temperatures=[4]"]
    summary = run(load_config(preset="smoke", overrides=added), out)  # only adds stages: no --overwrite needed
    assert "soft-T4" in summary["models"] and (out / "report.html").exists()
    assert {name: (out / "models" / name / "model.safetensors").stat().st_mtime_ns for name in written} == written

    changed = load_config(preset="smoke", overrides=added + ["soft.training.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"finished stages .*soft-T4.*kept as they are: .*baseline.*teacher"):
        run(changed, out)
    reused = run(changed, out, overwrite=True)
    assert (
        teacher_weights.stat().st_mtime_ns == written["teacher"]
        and (out / "models" / "hard" / "model.safetensors").stat().st_mtime_ns == written["hard"]
    )
    assert (out / "models" / "soft" / "model.safetensors").stat().st_mtime_ns != written["soft"]
    fresh = run(changed, tmp_path / "fresh")
    assert reused["models"] == fresh["models"]
    for name in fresh["models"]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "memorization" / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "fresh" / "memorization" / f"{name}.parquet"),
        )


def test_rescoring_settings_retrain_nothing_and_end_where_a_fresh_run_ends(tiny_bases, tmp_path):
    """membership.min_k, canaries.num_candidates and extraction.batch_size change no model. Before,
    min_k retrained the filtered student, num_candidates (hashed into the data) every model, and
    batch_size invalidated every evaluation and the filtered student."""
    base = TINY_OVERRIDES + ["canaries.repeats=[1,8]", "canaries.num_candidates=40", "filtering.stand_in_examples=8"]
    out = tmp_path / "run"
    run(load_config(preset="smoke", overrides=base), out)
    weights = {path: path.stat().st_mtime_ns for path in (out / "models").rglob("model.safetensors")}
    assert (out / "models" / "hard-filtered" / "model.safetensors") in weights
    changed = load_config(
        preset="smoke",
        overrides=base + ["membership.min_k=0.1", "canaries.num_candidates=60", "extraction.batch_size=8"],
    )
    with pytest.raises(
        ConfigError,
        match=r"finished stages membership:teacher, canaries:teacher, .*canaries:hard-filtered "
        r"\(kept as they are: .*extract:soft.*hard-filtered.*validation:teacher",
    ):
        run(changed, out)
    reused = run(changed, out, overwrite=True)
    assert {path: path.stat().st_mtime_ns for path in weights} == weights
    fresh = run(changed, tmp_path / "fresh")
    assert list(reused["models"]) == list(fresh["models"])
    for name, row in fresh["models"].items():
        # The batch size moves a loss by float rounding only (measured: 1e-7 relative), never a verdict.
        assert reused["models"][name]["memorized"] == row["memorized"] and reused["models"][name][
            "val_loss"
        ] == pytest.approx(row["val_loss"], rel=1e-5)
        assert reused["models"][name]["membership"]["min_k_prob"] == pytest.approx(
            row["membership"]["min_k_prob"], rel=1e-5
        )
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "memorization" / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "fresh" / "memorization" / f"{name}.parquet"),
        )
        for part in ("membership", "canaries"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / part / f"{name}.parquet"),
                pd.read_parquet(tmp_path / "fresh" / part / f"{name}.parquet"),
                rtol=1e-5,
            )
    assert json.loads((out / "filtering.json").read_text()) == json.loads(
        (tmp_path / "fresh" / "filtering.json").read_text()
    )
    # The canaries' key is their first extraction.prefix_len tokens: a new prefix length makes new
    # data (it was reused, stale).
    with pytest.raises(ConfigError, match=r"finished stages data, teacher, "):
        run(load_config(preset="smoke", overrides=base + ["extraction.prefix_len=8"]), out)


def test_the_teacher_cache_is_known_by_its_teacher_not_by_the_output_path(tiny_bases, tmp_path, monkeypatch):
    """A run written to a relative --output, extended with a sweep temperature from another working
    directory through an absolute one: the new student reads the cache as it is. Before: "holds a
    teacher-logit cache with other teacher; delete it" (at paper scale, 100 GB and hours of teacher)."""
    overrides = TINY_OVERRIDES + ["soft.teacher_cache=true", "soft.sweep_temperatures=[]"]
    monkeypatch.chdir(tmp_path)
    run(load_config(preset="smoke", overrides=overrides), "run")
    shards = sorted((tmp_path / "run" / "cache" / "teacher-logits-train").glob("shard-*.safetensors"))
    written = [path.stat().st_mtime_ns for path in shards]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = run(
        load_config(preset="smoke", overrides=overrides[:-1] + ["soft.sweep_temperatures=[4]"]), tmp_path / "run"
    )
    assert (
        "soft-T4" in summary["models"] and "cache:train" in summary["stage_seconds"]
    )  # the cache is a stage of its own
    assert [path.stat().st_mtime_ns for path in shards] == written


def test_cli_reports_bad_config_without_traceback(capsys):
    assert cli.main(["run", "--preset", "smoke", "data.seq_lne=3"]) == 2
    assert "Did you mean data.seq_len?" in capsys.readouterr().err


def test_cli_runs_and_prints_headline_table(tiny_bases, tmp_path, caplog):
    caplog.set_level("INFO")
    assert cli.main(["run", "--preset", "smoke", "--output", str(tmp_path / "cli"), *TINY_OVERRIDES]) == 0
    assert "memorized" in caplog.text and "teacher" in caplog.text and "reduction" in caplog.text
    assert (tmp_path / "cli" / "summary.json").exists()


def test_console_script_smoke_preset_shows_the_papers_direction(tmp_path):
    """`kdmem run --preset smoke` end to end, as a user types it: the soft student memorizes far
    fewer training examples than the baseline, at a lower validation loss."""
    import os
    import shutil
    import subprocess
    import sys

    script = shutil.which("kdmem") or str(Path(sys.executable).parent / "kdmem")
    result = subprocess.run(
        [script, "run", "--preset", "smoke", "--output", str(tmp_path / "smoke")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reduction" in result.stderr  # the headline table is logged
    models = json.loads((tmp_path / "smoke" / "summary.json").read_text())["models"]
    assert models["baseline"]["memorized"] >= 5
    assert models["soft"]["memorized"] * 3 <= models["baseline"]["memorized"]
    assert models["soft"]["val_loss"] < models["baseline"]["val_loss"]
    assert models["teacher"]["memorized"] > models["soft"]["memorized"]


def test_cli_extract_on_a_runs_training_set(finished_run, tmp_path, capsys):
    import pyarrow.parquet as pq

    config, out, summary = finished_run
    target = tmp_path / "teacher.parquet"
    args = [
        "extract",
        "--model",
        str(out / "models" / "teacher"),
        "--data",
        str(out / "data" / "train.parquet"),
        "--prefix-len",
        "16",
        "--suffix-len",
        "16",
        "--output",
        str(target),
        "--full",
        "--prefix-lens",
        "8,16",
    ]
    assert cli.main(args) == 0
    verdicts = pd.read_parquet(target)
    in_run = pd.read_parquet(out / "memorization" / "teacher.parquet")
    assert list(verdicts["example_id"]) == list(in_run["example_id"])
    assert verdicts["memorized"].tolist() == in_run["memorized"].tolist()
    assert verdicts["memorized_p16"].tolist() == verdicts["memorized"].tolist()
    assert {"suffix_token_accuracy", "suffix_loss", "memorized_p8", "min_margin", "rechecked"} <= set(verdicts.columns)
    memorized = summary["models"]["teacher"]["memorized"]
    assert f"memorized {memorized} of {len(verdicts)}" in capsys.readouterr().out
    recorded = json.loads(pq.read_schema(target).metadata[b"kdmem"])
    assert recorded["extraction"]["prefix_len"] == 16 and recorded["extraction"]["prefix_lens"] == [8, 16]


def test_cli_extract_on_text_and_bad_arguments(tiny_bases, tmp_path, capsys):
    target = tmp_path / "v.parquet"
    args = [
        "extract",
        "--model",
        str(tiny_bases["teacher"]),
        "--data",
        "builtin:python-docs",
        "--prefix-len",
        "8",
        "--suffix-len",
        "8",
        "--num-examples",
        "20",
        "--output",
        str(target),
    ]
    assert cli.main(args) == 0
    verdicts = pd.read_parquet(target)
    assert len(verdicts) == 20 and "memorized 0 of 20" in capsys.readouterr().out  # a base has not seen D
    assert cli.main(args[:-2] + ["--output", str(tmp_path / "w.parquet"), "--prefix-lens", "4"]) == 2
    assert "prefix_lens needs extraction.full=true" in capsys.readouterr().err
    assert (
        cli.main(["extract", "--model", str(tmp_path / "nowhere"), "--data", "builtin:python-docs", "-o", str(target)])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_canaries_are_planted_in_training_but_not_in_d(tiny_bases, tmp_path):
    config = load_config(
        preset="smoke", overrides=TINY_OVERRIDES + ["canaries.repeats=[1,8]", "canaries.num_candidates=40"]
    )
    out = tmp_path / "canaries"
    summary = run(config, out)
    train = pd.read_parquet(out / "data" / "train.parquet")
    canaries = pd.read_parquet(out / "data" / "canaries.parquet")
    assert list(canaries["repeats"]) == [1, 8] and len(train) == config.data.num_examples
    canary_tokens = {tuple(ids) for ids in canaries["input_ids"]}
    assert not canary_tokens & {tuple(ids) for ids in train["input_ids"]}  # D, the audited set, has none
    hard = pd.read_parquet(out / "data" / "hard.parquet")
    assert len(hard) == len(train) + 9 and (hard["example_id"] == "canary-01").sum() == 8  # training saw the copies
    for name in summary["models"]:
        exposure = pd.read_parquet(out / "canaries" / f"{name}.parquet")
        assert list(exposure["canary_id"]) == ["canary-00", "canary-01"]
        recorded = summary["models"][name]["canaries"]
        assert [c["exposure"] for c in recorded] == pytest.approx(exposure["exposure"].tolist())
    # The stage scored the trained teacher on the planted canaries: a ranking written out here,
    # from the saved model and the canaries' tokens, gives the ranks it wrote.
    teacher = load_model(str(out / "models" / "teacher")).eval()
    tokenizer = load_tokenizer(str(out / "models" / "teacher"))
    candidates = candidate_secrets(
        canaries, 16, 40, len(tokenizer), tokenizer.all_special_ids, seed=config.canaries.seed
    )
    ranks = []
    for ids, drawn in zip(canaries["input_ids"], candidates, strict=True):
        ids = torch.as_tensor(ids, dtype=torch.long)
        sequences = torch.cat(
            [ids[None], torch.cat([ids[:16].expand(len(drawn), -1), torch.from_numpy(drawn)], dim=1)]
        )
        with torch.no_grad():
            log_probs = teacher(sequences.to(teacher.device)).logits.float().log_softmax(-1)[:, 15:-1]
        totals = log_probs.gather(-1, sequences[:, 16:, None].to(teacher.device)).sum(dim=(1, 2)).cpu()
        ranks.append(1 + int((totals[1:] > totals[0]).sum()))
    exposure = pd.read_parquet(out / "canaries" / "teacher.parquet")
    assert exposure["rank"].tolist() == ranks
    assert exposure["exposure"].tolist() == pytest.approx([np.log2(41) - np.log2(rank) for rank in ranks])
    json.dumps(summary)  # plain JSON types only


def test_soft_students_from_the_teacher_logit_cache(finished_run, tiny_bases, tmp_path):
    """The teacher's hidden states cached once (the default kind): every soft student (both
    temperatures) reads them, and matches the students that ran the teacher at every step."""
    plain_config, plain, plain_summary = finished_run
    config = load_config(
        preset="smoke", overrides=TINY_OVERRIDES + ["soft.sweep_temperatures=[1,4]", "soft.teacher_cache=true"]
    )
    out = tmp_path / "cached"
    summary = run(config, out)
    cache = out / "cache" / "teacher-logits-train"
    assert (
        len(list(cache.glob("shard-*.safetensors"))) == 1
        and json.loads((cache / "spec.json").read_text())["kind"] == "hidden"
    )
    for name in ("soft", "soft-T1", "soft-T4"):
        # Measured relative difference: 9.2e-8 at most (soft-T1; 0 for the others). Bound 100x that.
        assert summary["models"][name]["val_loss"] == pytest.approx(
            plain_summary["models"][name]["val_loss"], rel=1e-5
        )
        verdicts = [
            pd.read_parquet(folder / "memorization" / f"{name}.parquet")["memorized"].tolist()
            for folder in (plain, out)
        ]
        assert verdicts[0] == verdicts[1], name
    with pytest.raises(ConfigError, match="forward_kl only"):
        load_config(
            preset="smoke", overrides=["soft.teacher_cache=true", "soft.cache_kind=sampled", "soft.kind=jsd"]
        ).validate()
    load_config(
        preset="smoke", overrides=["soft.teacher_cache=true", "soft.kind=jsd"]
    ).validate()  # an exact cache serves every kind
    with pytest.raises(ConfigError, match="set soft.cache_kind=logits"):
        load_config(preset="smoke", overrides=["soft.cache_top_k=null"])


def test_run_under_two_processes(tiny_bases, tmp_path):
    """The whole ``kdmem run`` under ``accelerate launch`` with two gloo processes, against one
    process with the same global batch: training (DDP) gives the same models up to float
    rounding, and every split stage (hard-KD generation, extraction, membership, features) gives
    exactly what one process computes on the two-process run's own models."""
    from kdmem.analysis.analyze import feature_spans
    from kdmem.analysis.features import model_features
    from kdmem.data import as_tensor, read_sequences
    from kdmem.memorization import sample_positions
    from kdmem.memorization.audit import measure_memorization
    from kdmem.memorization.membership import membership_scores
    from kdmem.models import load_model, load_tokenizer
    from kdmem.models.decoding import greedy_continuations

    from .conftest import two_cpu_processes

    shared = TINY_OVERRIDES + [
        "soft.teacher_cache=true",
        "soft.sweep_temperatures=[]",
        "extraction.approximate_sample=10",
        "cross_scale.model=builtin:tiny-small",  # one more training stage, distributed like the others
        "utility.tasks=[kdmem_last_word]",  # the main process alone evaluates, the other one waits
    ]
    trained = ("teacher", "student", "soft", "hard", "cross_scale")

    def batches(size: int) -> list[str]:
        return [f"{stage}.training.batch_size={size}" for stage in trained]

    one = run(load_config(preset="smoke", overrides=shared + batches(16)), tmp_path / "one")
    launched = two_cpu_processes(
        "-m", "kdmem.cli", "run", "--preset", "smoke", *shared, *batches(8), "-o", str(tmp_path / "two"), timeout=900
    )
    assert launched.returncode == 0, launched.stderr[-4000:]
    two_dir = tmp_path / "two"
    two = json.loads((two_dir / "summary.json").read_text())
    assert (two_dir / "report.html").exists() and (two_dir / "analysis.json").exists()
    assert list(two["models"]) == list(one["models"])
    assert json.loads((two_dir / "run.json").read_text())["hardware"]["processes"] == 2
    assert "cross-scale" in two["models"]
    for name in two["models"]:  # every model evaluated downstream once, by the main process
        assert (two_dir / "utility" / f"{name}.parquet").exists(), name
        assert len(pd.read_parquet(two_dir / "utility" / f"{name}.parquet")) == len(
            pd.read_parquet(tmp_path / "one" / "utility" / f"{name}.parquet")
        )
    for name, row in one["models"].items():  # DDP: same models, up to float rounding
        # Measured: 4.8e-7 at most (4 float32 ulps of a loss near 4) after 2 epochs of AdamW. Bound 200x that.
        assert two["models"][name]["val_loss"] == pytest.approx(row["val_loss"], abs=1e-4), name

    train = read_sequences(two_dir / "data" / "train.parquet")
    validation = read_sequences(two_dir / "data" / "validation.parquet")
    tokenizer = load_tokenizer(str(two_dir / "models" / "teacher"))
    config = load_config(two_dir / "config.yaml")
    teacher = load_model(str(two_dir / "models" / "teacher"))
    hard = read_sequences(two_dir / "data" / "hard.parquet")
    expected_hard = greedy_continuations(teacher, as_tensor(train), config.hard.prefix_len, config.data.seq_len)
    assert np.array_equal(as_tensor(hard).numpy(), expected_hard.numpy())
    for name in ("teacher", "soft"):
        model = load_model(str(two_dir / "models" / name))
        split = pd.read_parquet(two_dir / "memorization" / f"{name}.parquet")
        sample = sample_positions(len(train), config.extraction.approximate_sample, config.extraction.seed)
        alone = measure_memorization(model, train, config.extraction, sample)
        assert split["approx_token_match"].notna().sum() == 10
        np.testing.assert_allclose(split["approx_token_match"], alone["approx_token_match"], rtol=1e-6)
        for column in ("example_id", "memorized", "matched_tokens", "rechecked"):
            assert split[column].tolist() == alone[column].tolist(), (name, column)
        np.testing.assert_allclose(split["min_margin"], alone["min_margin"], rtol=1e-5, atol=1e-5)
        scores = pd.read_parquet(two_dir / "membership" / f"{name}.parquet")
        assert scores["example_id"].tolist() == train["example_id"].tolist() + validation["example_id"].tolist()
        np.testing.assert_allclose(
            scores.loc[scores["split"] == "train", "loss"],
            membership_scores(model, train, tokenizer)["loss"],
            rtol=1e-5,
        )
    features = pd.read_parquet(two_dir / "features.parquet")
    models = {name: load_model(str(two_dir / "models" / name)) for name in ("teacher", "baseline", "soft", "hard")}
    alone = model_features(models, train, tokenizer, **feature_spans(config))
    assert features["example_id"].tolist() == alone["example_id"].tolist()
    np.testing.assert_allclose(features["teacher_loss"], alone["teacher_loss"], rtol=1e-5)
    np.testing.assert_allclose(features["teacher_baseline_kl"], alone["teacher_baseline_kl"], rtol=1e-4, atol=1e-6)
    assert not (two_dir / "work").exists()  # the processes' parts are cleaned up


def _stage(config, layout, name):
    """Stage ``name`` of ``config``'s graph over ``layout``, and the context its action takes."""
    from kdmem.pipeline import run_context, stage_graph

    return next(stage for stage in stage_graph(config, layout) if stage.name == name), run_context(config, layout)


def test_evaluation_in_bfloat16(finished_run, tmp_path):
    """inference_dtype=bfloat16 evaluates in bf16: the same rows, losses within bf16's rounding."""
    import dataclasses
    import shutil

    from kdmem.layout import RunLayout

    config, out, summary = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    layout = RunLayout(copy)
    bf16 = dataclasses.replace(config, inference_dtype="bfloat16")
    for name in ("extract:teacher", "validation:teacher"):
        stage, context = _stage(bf16, layout, name)
        assert stage.settings["dtype"] == "bfloat16"
        stage.action(context, **stage.settings, **stage.speed)
    assert len(pd.read_parquet(layout.memorization("teacher"))) == summary["models"]["teacher"]["examples"]
    row = json.loads(layout.validation("teacher").read_text())
    assert row["val_loss"] == pytest.approx(summary["models"]["teacher"]["val_loss"], abs=0.05)
    assert row["val_loss"] != summary["models"]["teacher"]["val_loss"]  # it did run in bf16


def test_membership_reference_loads_with_the_bases_settings(finished_run, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    import kdmem.pipeline as pipeline
    from kdmem.layout import RunLayout

    config, out, _ = finished_run
    shutil.copytree(out, tmp_path / "copy")
    layout = RunLayout(tmp_path / "copy")
    # a local folder of checkpoints stands in for the student base, its revision "main" a subfolder
    shutil.copytree(layout.model("baseline"), tmp_path / "base" / "main")
    base = str(tmp_path / "base")
    pinned = dataclasses.replace(config, student=dataclasses.replace(config.student, model=base, revision="main"))
    loads = []
    real = pipeline.load_model

    def recording(name, **options):
        loads.append((name, options))
        return real(name, **options)

    monkeypatch.setattr(pipeline, "load_model", recording)
    stage, context = _stage(pinned, layout, "membership:soft")
    stage.action(context, **stage.settings, **stage.speed)
    reference = [options for name, options in loads if name == base]
    assert reference and reference[0]["revision"] == "main" and reference[0]["trust_remote_code"] is False


def test_a_second_family_is_run_inside_the_run_and_compared(tiny_bases, tmp_path):
    """second_family: the same documents under a tokenizer of 448 tokens (this run's: 512), run in
    OUT/second-family with its own markers, compared into cross_family.json, and read by the
    analysis, the report and the findings table; a rerun reuses both runs."""
    from kdmem.analysis.compare import compare_runs
    from kdmem.report.findings import paper_findings

    overrides = TINY_OVERRIDES + [
        "data.packing=documents",
        "soft.sweep_temperatures=[]",
        "second_family.enabled=true",
        "second_family.overrides=[embedded.vocab_size=448]",
    ]
    out = tmp_path / "run"
    summary = run(load_config(preset="smoke", overrides=overrides), out)
    family = out / "second-family"
    assert json.loads((family / "stages" / "teacher.json").read_text())["stage"] == "teacher"
    assert set(json.loads((family / "summary.json").read_text())["models"]) == {"teacher", "baseline", "soft", "hard"}
    assert load_config(family / "config.yaml").embedded.vocab_size == 448
    comparison = json.loads((out / "cross_family.json").read_text())
    assert comparison == json.loads(
        json.dumps(compare_runs(out, family))
    )  # what kdmem compare says of the two folders
    assert (
        not comparison["same_tokenizer"]
        and comparison["matched_by"] == "example id"
        and comparison["zlib_pearson"] is not None
    )
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["cross_family"] == comparison
    assert paper_findings(summary, analysis)[3].agrees in ("yes", "no")  # finding 4 has its data
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="cross-family">') : page.index('<section id="filtering">')]
    assert (
        "No data for this section" not in section and f"<td>{comparison['overlap']['teacher']['both']}</td>" in section
    )
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    run(load_config(preset="smoke", overrides=overrides), out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps


def _documents(count=80):
    from kdmem.data import python_docs

    return [text for text in python_docs("private") if len(text) > 300][:count]


@pytest.mark.parametrize("form", ["saved Dataset", "saved DatasetDict", "Dataset", "DataFrame", "list"])
def test_a_smoke_run_on_each_form_of_data(tiny_bases, tmp_path, form):
    """data.source as a save_to_disk folder of a Dataset or a DatasetDict (data.split picks the
    split), and documents in memory given to kdmem.run: the same documents, the same D."""
    import datasets

    texts = _documents()
    overrides = list(FAST_OVERRIDES)
    documents = None
    if form == "saved Dataset":
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
        overrides.append(f"data.source={tmp_path / 'saved'}")
    elif form == "saved DatasetDict":
        splits = {
            "train": datasets.Dataset.from_dict({"text": texts[:3]}),
            "validation": datasets.Dataset.from_dict({"text": texts}),
        }
        datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
        overrides += [f"data.source={tmp_path / 'saved'}", "data.split=validation"]
    else:
        documents = {
            "Dataset": datasets.Dataset.from_dict({"text": texts}),
            "DataFrame": pd.DataFrame({"text": texts}),
            "list": texts,
        }[form]
    summary = run(load_config(preset="smoke", overrides=overrides), tmp_path / "run", documents=documents)
    assert summary["models"]["teacher"]["examples"] == 48
    reference = (
        run(load_config(preset="smoke", overrides=FAST_OVERRIDES), tmp_path / "reference", documents=texts)
        if form == "list"
        else None
    )
    if documents is not None:
        source = load_config(tmp_path / "run" / "config.yaml").data.source
        assert (
            source.startswith(str((tmp_path / "run" / "source").resolve()))
            and list(pd.read_parquet(source)["text"]) == texts
        )
    if reference is not None:  # a rerun from the config it wrote makes the same D
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "run" / "data" / "train.parquet"),
            pd.read_parquet(tmp_path / "reference" / "data" / "train.parquet"),
        )


def test_extract_and_predict_read_a_saved_dataset(finished_run, tmp_path, capsys):
    import datasets

    _, out, summary = finished_run
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": _documents(30)})}).save_to_disk(
        str(tmp_path / "saved")
    )
    target = tmp_path / "verdicts.parquet"
    args = [
        "extract",
        "--model",
        str(out / "models" / "teacher"),
        "--data",
        str(tmp_path / "saved"),
        "--prefix-len",
        "8",
        "--suffix-len",
        "8",
        "--output",
        str(target),
    ]
    assert cli.main(args) == 0 and len(pd.read_parquet(target)) > 10
    memorizes = any(summary["models"][name]["memorized"] for name in ("hard", "hard-seed1"))
    code = cli.main(
        [
            "predict",
            str(out),
            "--data",
            str(tmp_path / "saved"),
            "--student",
            "hard",
            "-o",
            str(tmp_path / "risk.parquet"),
        ]
    )
    if memorizes:  # a predictor to fit: every sequence of the saved dataset scored
        assert code == 0 and len(pd.read_parquet(tmp_path / "risk.parquet")) == len(pd.read_parquet(target))
    else:
        assert code == 2 and "nothing to tell apart" in capsys.readouterr().err
