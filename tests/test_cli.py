"""The ``kdmem`` command itself: bad input is one line, a bug keeps its traceback and asks for a
report, and ``kdmem run --print-config`` prints the config a run would use and runs nothing."""

import pytest
import yaml

import kdmem.pipeline
from kdmem import cli
from kdmem.config import load_config, save_config


@pytest.fixture
def no_pipeline(monkeypatch):
    """``kdmem.pipeline.run`` replaced: a call records its config and raises ``ValueError``, as a bug
    deep inside would."""
    calls = []

    def broken_run(config, output=None, **options):
        calls.append(config)
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(kdmem.pipeline, "run", broken_run)
    return calls


def test_an_internal_error_keeps_its_traceback_and_asks_for_a_report(no_pipeline, capsys):
    assert cli.main(["run", "--preset", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken_run" in err
    assert "ValueError: an internal invariant broke" in err
    assert err.rstrip().endswith(cli.INTERNAL_ERROR) and "please report it" in err
    assert "kdmem: error:" not in err  # not dressed up as the user's mistake
    with pytest.raises(ValueError, match="invariant broke"):  # --debug hands it to the debugger
        cli.main(["--debug", "run", "--preset", "smoke"])
    assert len(no_pipeline) == 2


def test_a_config_error_is_one_line_without_a_traceback(no_pipeline, capsys):
    assert cli.main(["run", "--preset", "smoke", "data.seq_lne=3"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["kdmem: error: Unknown config key data.'seq_lne'. Did you mean data.seq_len?"]
    assert no_pipeline == []


def test_print_config_prints_the_resolved_config_and_runs_nothing(no_pipeline, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a run would write runs/NAME
    assert cli.main(["run", "--print-config", "data.num_examples=123"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["num_examples"] == 123  # the override
    assert printed["teacher"]["training"]["epochs"] == 12.0  # a default the run gets
    assert printed["data"]["seq_len"] == 64 and printed["name"] == "default"

    # Preset, file and overrides (one after the flag) resolve as the run resolves them, printed as
    # save_config writes the run's config.yaml.
    file = tmp_path / "mine.yaml"
    file.write_text("data: {seq_len: 24}\nsoft: {temperature: 3}\n")
    overrides = ["hard.prefix_len=10", "extraction.prefix_len=8", "extraction.prefix_lens=[4,8]"]
    assert cli.main(["run", str(file), overrides[0], "--preset", "smoke", "--print-config", *overrides[1:]]) == 0
    printed_text = capsys.readouterr().out
    save_config(load_config(file, preset="smoke", overrides=overrides), tmp_path / "saved.yaml")
    assert printed_text == (tmp_path / "saved.yaml").read_text()
    printed = yaml.safe_load(printed_text)
    assert (printed["name"], printed["teacher"]["training"]["epochs"]) == ("smoke", 16.0)  # from the preset
    assert (printed["data"]["seq_len"], printed["soft"]["temperature"]) == (24, 3.0)  # from the file
    assert (printed["hard"]["prefix_len"], printed["extraction"]["prefix_lens"]) == (10, [4, 8])  # overrides

    assert no_pipeline == [] and sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml", "saved.yaml"]


def test_print_config_of_a_bad_config_is_the_run_s_error(no_pipeline, capsys):
    assert cli.main(["run", "--print-config", "extraction.prefix_len=abc"]) == 2
    assert "extraction.prefix_len must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("kdmem.cli", ("torch", "transformers", "pandas", "kdmem.pipeline")),
        ("kdmem.memorization.audit", ("sklearn", "matplotlib", "kdmem.pipeline", "kdmem.analysis", "kdmem.report")),
    ],
)
def test_the_command_imports_only_what_it_runs(module, absent):
    """``kdmem --help`` loads no torch, and ``kdmem extract`` no analysis, report or plotting:
    start-up was 7.3 s when ``import kdmem`` pulled in the whole pipeline."""
    import subprocess
    import sys

    probe = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
