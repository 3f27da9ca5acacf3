import inspect

import pytest

from kdmem.config import load_config
from kdmem.pipeline import stage_graph
from kdmem.stages import fingerprints


def stage_fingerprints(config):
    return fingerprints(stage_graph(config))


def changed_by(*overrides: str, base: tuple[str, ...] = ()) -> set[str]:
    other = stage_fingerprints(load_config(overrides=[*base, *overrides]))
    base = stage_fingerprints(load_config(overrides=list(base)))
    return {stage for stage in base.keys() | other.keys() if base.get(stage) != other.get(stage)}


DERIVED = {"summary", "analysis", "report"}
"""Read every model's evaluation: changed by any change that reaches one."""


SCORING = ("extract", "validation", "membership", "utility")
"""A model's scoring stages in the default config (no canaries)."""


def evaluation_of(*names: str) -> set[str]:
    return {f"{part}:{name}" for name in names for part in SCORING}


def scoring(part: str, config) -> set[str]:
    return {stage for stage in stage_fingerprints(config) if stage.startswith(f"{part}:")}


def test_a_change_reaches_exactly_the_stages_that_read_it():
    stages = set(stage_fingerprints(load_config()))
    extractions = {stage for stage in stages if stage.startswith("extract:")}
    assert changed_by("name=renamed") == set()
    # The filtered student is trained on what the filtering (which reads the verdicts and the features) keeps;
    # the other models' validation loss and membership scores do not read the extraction.
    untracked = ("extraction.track_every_epochs=0",)
    assert (
        changed_by("extraction.suffix_len=16", base=untracked)
        == extractions | {"features", "filtering", "hard-filtered", *evaluation_of("hard-filtered")} | DERIVED
    )
    # Memorization tracked over training measures with the extraction's prefix and suffix: with it
    # on, those reach the training stages.
    assert {"teacher", "baseline", "soft"} <= changed_by("extraction.suffix_len=16")
    # The baseline never reads the teacher, nor do the utility tasks' documents (held-out text).
    assert changed_by("teacher.training.epochs=3") == stages - {
        "data",
        "utility",
        "baseline",
        *evaluation_of("baseline"),
    }
    assert (
        changed_by("hard.training.learning_rate=1e-3")
        == {"hard", "features", "filtering", "hard-filtered", *evaluation_of("hard", "hard-filtered")} | DERIVED
    )
    # Tracking memorization during training changes the training stages' records, not the evaluations.
    assert changed_by("extraction.track_every_epochs=0") >= {"teacher", "baseline", "soft", "hard"}
    assert evaluation_of("teacher") <= changed_by("extraction.track_every_epochs=0")  # downstream of the teacher
    # A new sweep temperature only adds a student and what reads it.
    assert changed_by("soft.sweep_temperatures=[1,4]") == {"soft-T4", *evaluation_of("soft-T4")} | DERIVED


def test_the_four_settings_that_were_fingerprinted_wrong():
    """Found by calling stage_fingerprints on the default config (issue 15): one missed dependency
    (a stale result) and three that recomputed far more than they touch."""
    # Canaries' keys are their first extraction.prefix_len tokens: with canaries the data changes, and all after it.
    with_canaries = ["canaries.repeats=[1,8]"]
    data = stage_fingerprints(load_config(overrides=with_canaries))["data"]
    assert stage_fingerprints(load_config(overrides=with_canaries + ["extraction.prefix_len=16"]))["data"] != data
    assert "data" not in changed_by("extraction.prefix_len=16")  # without canaries the data never reads it
    # Read only when canaries are scored: no retraining, no new data, no new verdicts, no other score.
    assert (
        changed_by("canaries.num_candidates=50", base=tuple(with_canaries))
        == scoring("canaries", load_config(overrides=with_canaries)) | DERIVED
    )
    assert changed_by("canaries.num_candidates=50") == set()  # no canaries: nothing reads it
    # A batch size changes no verdict.
    assert changed_by("extraction.batch_size=8") == set()
    # Membership is scored apart from the verdicts the filtering reads: the filtered student stays,
    # and so does every other score.
    assert changed_by("membership.min_k=0.1") == scoring("membership", load_config()) | DERIVED
    assert changed_by("membership.reference=false") == scoring("membership", load_config()) | DERIVED


def test_inference_dtype_reaches_every_stage_that_runs_a_model_without_training():
    changed = changed_by("inference_dtype=bfloat16")
    assert {"data", "teacher", "baseline"}.isdisjoint(changed)
    assert {
        "hard_data",
        "hard",
        "soft",
        "soft-T1",
        "features",
        "validation:teacher",
        "membership:baseline",
        "extract:teacher",
    } <= changed
    # With the cache, the cache is the stage that runs the teacher; it is dropped with it.
    base = stage_fingerprints(load_config(overrides=["soft.teacher_cache=true"]))
    other = stage_fingerprints(load_config(overrides=["soft.teacher_cache=true", "inference_dtype=bfloat16"]))
    assert base["cache:train"] != other["cache:train"] and base["teacher"] == other["teacher"]


def test_inference_dtype_is_checked():
    import pytest

    from kdmem.config import ConfigError

    with pytest.raises(ConfigError, match="inference_dtype must be one of float32, bfloat16, float16"):
        load_config(overrides=["inference_dtype=int8"])


@pytest.mark.parametrize(
    "overrides", [[], ["soft.teacher_cache=true", "filtering.student=soft", "seeds=[0,1]", "canaries.repeats=[2]"]]
)
def test_each_action_takes_exactly_its_stage_settings(overrides):
    """What a stage reads is what its fingerprint hashes: every keyword of its action is a
    setting (or a speed setting, which changes no result), and every setting is a keyword."""
    for stage in stage_graph(load_config(overrides=overrides)):
        parameters = list(inspect.signature(stage.action).parameters)
        assert parameters[0] == "ctx", stage.name
        assert set(parameters[1:]) == set(stage.settings) | set(stage.speed), stage.name
        assert not set(stage.settings) & set(stage.speed), stage.name


def test_a_second_family_is_one_stage_that_only_its_own_settings_change():
    second = ("data.packing=documents", "second_family.enabled=true")
    assert changed_by("name=renamed", base=second) == set()
    assert changed_by("second_family.overrides=[embedded.vocab_size=1024]", base=second) == {
        "second_family",
        "cross_family",
        "analysis",
        "report",
    }
    # the soft students' recipe is the second family's too
    assert {"soft", "second_family", "cross_family"} <= changed_by("soft.training.epochs=20", base=second)
    assert "second_family" not in changed_by(
        "soft.sweep_temperatures=[1,4]", base=second
    )  # the second family has no sweep
