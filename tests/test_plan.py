from pathlib import Path

import pytest

from kdmem import cli
from kdmem.config import load_config
from kdmem.models import load_model
from kdmem.plan import PEAK_FLOPS, UTILIZATION, parameter_count, plan

PAPER_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))


def test_the_paper_presets_are_valid_and_planned_without_downloads(capsys):
    assert [p.stem for p in PAPER_CONFIGS] == [
        "olmo2-fineweb",
        "pythia-fineweb",
        "pythia-nemotron",
        "pythia-pretraining-pilot",
        "pythia-wikitext",
        "qwen3-fineweb",
    ]
    for path in PAPER_CONFIGS:
        if path.stem == "pythia-pretraining-pilot":  # its own shape: tests/test_pilot.py
            assert cli.main(["run", str(path), "--dry-run"]) == 0
            printed = capsys.readouterr().out
            assert "1,024,000 training sequences of 256 tokens" in printed and "unknown" not in printed
            continue
        config = load_config(path)
        assert (config.data.num_examples, config.data.seq_len, config.seeds) == (1_000_000, 256, [0, 1, 2])
        assert (config.extraction.prefix_len, config.extraction.suffix_len) == (50, 50)
        assert sorted(config.soft.sweep_temperatures + [config.soft.temperature]) == [1.0, 2.0, 3.0, 4.0]
        assert cli.main(["run", str(path), "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert "256,000,000 tokens" in printed and "unknown" not in printed
    assert not Path("runs/pythia-fineweb").exists()  # a dry run writes nothing


def test_plan_arithmetic_on_the_pythia_setting():
    from kdmem.pipeline import stage_graph

    result = plan(load_config(PAPER_CONFIGS[1]))
    # a dry run lists the stages a real run executes, from the same graph
    assert [row["stage"] for row in result["stages"]] == [
        stage.name for stage in stage_graph(load_config(PAPER_CONFIGS[1]))
    ]
    stages = {row["stage"]: row for row in result["stages"]}
    tokens = 256_000_000
    assert stages["teacher"]["flops"] == pytest.approx(6 * 11.85e9 * tokens * 3)
    # the cached teacher costs each student its output layer: 2 x 5,120 x 50,304 (the shared vocabulary) a token
    assert stages["soft"]["flops"] == pytest.approx((6 * 1.41e9 + 2 * 5120 * 50_304) * tokens * 4)
    assert stages["cache:train"]["flops"] == pytest.approx(2 * 11.85e9 * tokens)
    assert result["teacher_cache"] == "hidden"
    assert (
        result["teacher_cache_bytes"] == (1_000_000 * 255 + 50_304) * 5120 * 2
    )  # bf16 states, and the output layer once
    sampled = plan(load_config(PAPER_CONFIGS[1], overrides=["soft.cache_kind=sampled"]))
    assert {row["stage"]: row for row in sampled["stages"]}["soft"]["flops"] == pytest.approx(6 * 1.41e9 * tokens * 4)
    assert sampled["teacher_cache_bytes"] == 1_000_000 * 255 * (
        8 * 64 + 12 * 16 * 4 + 4 * 4
    )  # top 64, 16 tail samples x 4 epochs, T = 1..4
    logits = plan(load_config(PAPER_CONFIGS[1], overrides=["soft.cache_kind=logits"]))
    assert logits["teacher_cache_bytes"] == 1_000_000 * 255 * 50_304 * 4
    total = sum(row["flops"] for row in result["stages"])
    assert result["total_gpu_hours"] == pytest.approx(total / (PEAK_FLOPS * UTILIZATION) / 3600)
    live = plan(load_config(PAPER_CONFIGS[1], overrides=["soft.teacher_cache=false"]))
    live_soft = {row["stage"]: row for row in live["stages"]}["soft"]["flops"]
    assert (
        live_soft == pytest.approx((6 * 1.41e9 * 4 + 2 * 11.85e9 * 4) * tokens) and live["teacher_cache_bytes"] is None
    )


def test_parameters_of_a_local_model_come_from_its_config_alone(tiny_bases):
    model = load_model(str(tiny_bases["teacher"]))
    assert parameter_count(str(tiny_bases["teacher"])) == sum(p.numel() for p in model.parameters())
    assert parameter_count("builtin:tiny-teacher") is None
    result = plan(load_config(preset="smoke"))
    assert result["total_gpu_hours"] is None and result["parameters"] == {"teacher": None, "student": None}


def test_dry_run_offline_says_so_at_once_and_takes_counts_from_a_flag(capsys, caplog, monkeypatch):
    """A hub name outside the table, the hub unreachable: one message, within seconds (before:
    about 54 s of retries, each error printed twice), and --parameters fills the counts."""
    import logging
    import time

    import kdmem.plan as plan_module

    monkeypatch.setattr(plan_module, "hub_reachable", lambda: False)
    overrides = ["teacher.model=Qwen/Qwen3-8B", "student.model=Qwen/Qwen3-1.7B"]
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        assert cli.main(["run", str(PAPER_CONFIGS[-1]), "--dry-run", *overrides]) == 0
    assert time.perf_counter() - start < 20
    messages = [r.getMessage() for r in caplog.records if "Cannot look up" in r.getMessage()]
    assert len(messages) == 2 and "Qwen/Qwen3-8B" in messages[0] and "--parameters" in messages[0]
    assert "unknown" in capsys.readouterr().out
    assert (
        cli.main(
            ["run", str(PAPER_CONFIGS[-1]), "--dry-run", "--parameters", "teacher=8.19e9,student=2.03e9", *overrides]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "8.19B parameters" in printed and "total" in printed and "unknown" not in printed.split("total")[-1]
    assert cli.main(["run", str(PAPER_CONFIGS[-1]), "--dry-run", "--parameters", "teacher=lots"]) == 2


@pytest.mark.parametrize(
    "name",
    [
        "EleutherAI/pythia-12b",
        "EleutherAI/pythia-1.4b",
        "allenai/OLMo-2-1124-7B",
        "allenai/OLMo-2-0425-1B",
        "Qwen/Qwen3-8B-Base",
        "Qwen/Qwen3-1.7B-Base",
    ],
)
def test_the_parameter_table_matches_a_count_of_each_models_config(name):
    """KNOWN_PARAMETERS, the plan's arithmetic checked against itself before: here against the
    parameters of a model built (empty, on the meta device) from the model's own config.json."""
    from transformers import AutoConfig

    from kdmem.models.lookalike import offline_fixture
    from kdmem.plan import KNOWN_PARAMETERS, counted_parameters

    counted = counted_parameters(AutoConfig.from_pretrained(offline_fixture(name)))
    assert counted == pytest.approx(KNOWN_PARAMETERS[name], rel=0.01)
