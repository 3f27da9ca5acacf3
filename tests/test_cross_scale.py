"""Cross-scale: another size of the student's family, fine-tuned on D like the baseline, scored like
every model and compared with the baseline both ways (the paper's Pythia-1B beside the 1.4B)."""

import json

import pandas as pd
import pytest

from kdmem.analysis.overlaps import memorized_ids, shared_both_ways
from kdmem.config import load_config, second_family_config
from kdmem.layout import CROSS_SCALE, RunLayout
from kdmem.models import ModelError, build_model, train_tokenizer
from kdmem.pipeline import run
from kdmem.plan import plan

from .conftest import FAST_OVERRIDES

FAST = FAST_OVERRIDES + [
    "cross_scale.model=builtin:tiny-small",
    "cross_scale.training.epochs=2",
]


def test_shared_both_ways_reads_the_overlap_from_each_side():
    assert shared_both_ways({"a", "b", "c", "d"}, {"c", "d", "e"}) == {
        "first": 4,
        "second": 3,
        "both": 2,
        "share_of_first_in_second": 0.5,
        "share_of_second_in_first": 2 / 3,
        "jaccard": 2 / 5,
    }
    empty = shared_both_ways(set(), {"x"})
    assert empty["share_of_first_in_second"] is None and empty["share_of_second_in_first"] == 0.0


def test_the_cross_scale_model_is_trained_scored_and_compared(tmp_path):
    out = tmp_path / "run"
    summary = run(load_config(preset="smoke", overrides=FAST), out)
    layout = RunLayout(out)
    assert list(summary["models"])[-1] == CROSS_SCALE
    info = json.loads((layout.model(CROSS_SCALE) / "kdmem_stage.json").read_text())
    student_info = json.loads((layout.model("baseline") / "kdmem_stage.json").read_text())
    assert info["stage"] == "cross-scale" and info["base"] != student_info["base"]
    config = json.loads((layout.model(CROSS_SCALE) / "config.json").read_text())
    assert config["hidden_size"] == 128  # embedded.small, not the student's 192
    # Its verdicts against the baseline's, counted by hand from both models' verdict files.
    sets = {name: memorized_ids(pd.read_parquet(layout.memorization(name))) for name in (CROSS_SCALE, "baseline")}
    analysis = json.loads(layout.analysis.read_text())["cross_scale"]
    both = sets[CROSS_SCALE] & sets["baseline"]
    assert analysis["model"] == "builtin:tiny-small"
    assert (analysis["cross_scale"], analysis["baseline"], analysis["both"]) == (
        len(sets[CROSS_SCALE]),
        len(sets["baseline"]),
        len(both),
    )
    assert summary["models"][CROSS_SCALE]["memorized"] == len(sets[CROSS_SCALE])
    page = layout.report_html.read_text()
    assert "Across sizes of one family" in page and "builtin:tiny-small" in page
    row4 = next(line for line in layout.report_markdown.read_text().splitlines() if line.startswith("| 4 |"))
    assert "cross-scale:" in row4


def test_a_cross_scale_model_of_another_vocabulary_is_refused_before_training(tiny_config, tmp_path):
    tokenizer = train_tokenizer(["some other text, another vocabulary"] * 50, 300)
    other = tmp_path / "other-family"
    model = build_model(tiny_config.embedded.small, len(tokenizer), 64, tokenizer)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    out = tmp_path / "run"
    overrides = [*FAST, f"cross_scale.model={other}"]
    with pytest.raises(ModelError, match="Teacher and cross_scale vocabularies differ"):
        run(load_config(preset="smoke", overrides=overrides), out)
    assert not RunLayout(out).model("teacher").exists()  # nothing was trained


def test_the_second_family_trains_no_cross_scale_model():
    config = load_config(preset="paper-mini")
    assert config.cross_scale.model == "builtin:tiny-small"
    assert second_family_config(config).cross_scale.model is None


def test_dry_run_counts_the_cross_scale_model_at_pythia_1b():
    config = load_config("configs/paper/pythia-fineweb.yaml")
    stages = {row["stage"]: row["flops"] for row in plan(config)["stages"]}
    tokens = config.data.num_examples * config.data.seq_len
    assert stages[CROSS_SCALE] == pytest.approx(6 * 4 * tokens * 1.01e9)
    assert stages[f"extract:{CROSS_SCALE}"] > 0 and f"utility:{CROSS_SCALE}" in stages


def test_the_third_base_s_size_reaches_the_cross_scale_model_alone():
    from .test_stages import DERIVED, changed_by

    with_it = ("cross_scale.model=builtin:tiny-small",)
    scoring = {f"{part}:{CROSS_SCALE}" for part in ("extract", "validation", "membership", "utility")}
    assert changed_by("embedded.small.hidden=64", base=with_it) == {CROSS_SCALE, *scoring} | DERIVED
    assert changed_by("embedded.small.hidden=64") == set()  # no cross-scale model: nothing reads it
    assert changed_by("cross_scale.training.epochs=3", base=with_it) == {CROSS_SCALE, *scoring} | DERIVED
