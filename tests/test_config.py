import pytest

from kdmem.config import ConfigError, ExperimentConfig, available_presets, load_config, save_config


def test_defaults_are_the_embedded_experiment():
    config = load_config()
    assert config == ExperimentConfig()
    assert config.teacher.model == "builtin:tiny-teacher" and config.data.source == "builtin:python-docs"
    assert {"default", "smoke"} <= set(available_presets())


def test_paper_mini_sets_up_every_analysis_of_the_paper():
    """The issue-16 setting: 3 seeds, T = 1..4, soft and hard, filtering of the soft student,
    canaries, and a second family of one seed over the same documents with its own tokenizer."""
    from kdmem.config import second_family_config
    from kdmem.layout import model_names

    config = load_config(preset="paper-mini")
    config.validate()
    assert "paper-mini" in available_presets() and config.seeds == [0, 1, 2] and config.soft.temperature == 2.0
    assert sorted([config.soft.temperature, *config.soft.sweep_temperatures]) == [1, 2, 3, 4]
    assert (config.filtering.enabled, config.filtering.student) == (True, "soft") and config.canaries.repeats
    assert "soft-filtered" in model_names(config) and {"hard", "hard-seed2", "soft-T4"} <= set(model_names(config))
    second = second_family_config(config)
    assert (
        second.data.packing == config.data.packing == "documents"
        and second.embedded.vocab_size != config.embedded.vocab_size
    )
    assert model_names(second) == ["teacher", "baseline", "soft", "hard"] and not second.second_family.enabled
    assert second.data.num_examples == config.data.num_examples and second.teacher.training == config.teacher.training


def test_overrides_are_typed():
    config = load_config(
        preset="smoke",
        overrides=[
            "data.source=./my.jsonl",
            "data.seq_len=32",
            "seeds=[0,1,2]",
            "soft.temperature=3",
            "teacher.training.learning_rate=5e-5",
            "data.num_examples=null",
        ],
    )
    assert config.name == "smoke"
    assert config.data.source == "./my.jsonl" and config.data.seq_len == 32
    assert config.seeds == [0, 1, 2]
    assert config.soft.temperature == 3.0 and isinstance(config.soft.temperature, float)
    assert config.teacher.training.learning_rate == 5e-5
    assert config.data.num_examples is None
    # the preset's other values survive a partial override of the same section
    assert config.teacher.training.epochs == load_config(preset="smoke").teacher.training.epochs


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"Did you mean data\.seq_len\?"):
        load_config(overrides=["data.seq_lem=12"])
    with pytest.raises(ConfigError, match=r"Did you mean extraction\?"):
        load_config(overrides=["extracton.prefix_len=3"])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  modle: EleutherAI/pythia-12b\n")
    with pytest.raises(ConfigError, match=r"Did you mean teacher\.model\?"):
        load_config(path)


def test_wrong_types_and_inconsistent_values():
    with pytest.raises(ConfigError, match="data.seq_len must be an integer"):
        load_config(overrides=["data.seq_len=long"])
    with pytest.raises(ConfigError, match="longer than data.seq_len"):
        load_config(overrides=["extraction.prefix_len=50", "extraction.suffix_len=50", "data.seq_len=64"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["data.seq_len"])
    with pytest.raises(ConfigError, match="Unknown preset 'smok'. Did you mean 'smoke'"):
        load_config(preset="smok")


def test_yaml_round_trip(tmp_path):
    config = load_config(preset="smoke", overrides=["seeds=[3,4]"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_defaults_survive_a_yaml_round_trip_with_their_types(tmp_path):
    # Cache keys are built from the config's JSON: 12 and 12.0 must not name two different models.
    import dataclasses
    import json

    config = load_config()
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml", overrides=["embedded.student.layers=4"])
    assert json.dumps(dataclasses.asdict(again), sort_keys=True) == json.dumps(
        dataclasses.asdict(config), sort_keys=True
    )


def test_sections_check_themselves_however_they_are_made():
    """A section built directly in Python (as ``kdmem extract`` builds its ExtractionConfig) is
    checked as one loaded from YAML is; through load_config the error names the full key."""
    from kdmem.config import DataConfig, ExtractionConfig, TrainingConfig
    from kdmem.memorization.audit import AuditConfig

    with pytest.raises(ConfigError, match=r"^extraction.prefix_len must be at least 1, got 0"):
        ExtractionConfig(prefix_len=0)
    with pytest.raises(ConfigError, match=r"^extraction.prefix_len must be an integer, got '32'"):
        ExtractionConfig(prefix_len="32")
    with pytest.raises(ConfigError, match="prefix_lens needs extraction.full=true"):
        ExtractionConfig(full=False, prefix_lens=[8])
    assert isinstance(TrainingConfig(learning_rate=1).learning_rate, float)  # converted where nothing is lost
    # The same section, in its place in a config: named by where it sits.
    with pytest.raises(ConfigError, match=r"^teacher.training.epochs must be positive, got 0.0"):
        load_config(overrides=["teacher.training.epochs=0"])
    with pytest.raises(ConfigError, match=r"^soft.training.batch_size must be at least 1"):
        load_config(overrides=["soft.training.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^embedded.student.hidden and heads"):
        load_config(overrides=["embedded.student.heads=5"])
    with pytest.raises(ConfigError, match=r"^filtering.target_recall must be in \(0, 1\]"):
        load_config(overrides=["filtering.target_recall=1.5"])
    with pytest.raises(ConfigError, match=r"^soft.kind = 'kl' is unknown; use forward_kl, reverse_kl, jsd or tvd"):
        load_config(overrides=["soft.kind=kl"])
    # A whole config made in Python, and the audit's.
    with pytest.raises(ConfigError, match="inference_dtype must be one of"):
        ExperimentConfig(inference_dtype="int8")
    data = DataConfig(source="x.txt", seq_len=16, validation_examples=0)
    with pytest.raises(ConfigError, match=r"longer than the sequence length \(--seq-len\) = 16"):
        AuditConfig(model="m", data=data, extraction=ExtractionConfig(prefix_len=10, suffix_len=10))
    with pytest.raises(ConfigError, match=r"^audit.dtype must be one of float32, bfloat16, float16; got 'fp8'"):
        AuditConfig(model="m", data=data, extraction=ExtractionConfig(prefix_len=8, suffix_len=8), dtype="fp8")


def test_validate_checks_again_what_was_changed_in_place():
    config = load_config()
    config.soft.training.gradient_accumulation_steps = 0
    with pytest.raises(ConfigError, match=r"^soft.training.gradient_accumulation_steps must be at least 1, got 0"):
        config.validate()
    config = load_config()
    config.data.seq_len = 16
    with pytest.raises(ConfigError, match="longer than data.seq_len = 16"):
        config.validate()


def test_the_second_family_is_this_config_made_another_family():
    from kdmem.config import second_family_config

    config = load_config(
        overrides=[
            "data.packing=documents",
            "second_family.enabled=true",
            "seeds=[0,1,2]",
            "soft.sweep_temperatures=[1,3]",
        ]
    )
    family = second_family_config(config)
    assert family.embedded.vocab_size == 3072 and config.embedded.vocab_size == 2048  # a tokenizer of its own
    assert family.data == config.data and family.soft.training == config.soft.training  # the same documents and recipe
    assert (
        family.seeds == [0]
        and family.soft.sweep_temperatures == []
        and not family.filtering.enabled
        and not family.second_family.enabled
    )
    assert family.name == "default-second-family"
    with pytest.raises(ConfigError, match="second_family needs data.packing=documents"):
        load_config(overrides=["second_family.enabled=true"])
    with pytest.raises(
        ConfigError,
        match=r"second_family.overrides: Unknown config key embedded.'vocab_sise'. Did you mean embedded.vocab_size",
    ):
        load_config(
            overrides=[
                "data.packing=documents",
                "second_family.enabled=true",
                "second_family.overrides=[embedded.vocab_sise=3072]",
            ]
        )
