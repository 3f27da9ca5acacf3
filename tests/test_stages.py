from kdmem.config import load_config
from kdmem.stages import stage_fingerprints


def changed_by(*overrides: str) -> set[str]:
    base = stage_fingerprints(load_config())
    other = stage_fingerprints(load_config(overrides=list(overrides)))
    return {stage for stage in base.keys() | other.keys() if base.get(stage) != other.get(stage)}


def test_a_change_reaches_exactly_the_stages_that_read_it():
    evaluations = {stage for stage in stage_fingerprints(load_config()) if stage.startswith("evaluate:")}
    assert changed_by("name=renamed") == set()
    # The filtered student is trained on what the filtering (which reads the evaluations) keeps.
    assert changed_by("extraction.suffix_len=16") == evaluations | {"features", "filtering", "hard-filtered"}
    # The baseline never reads the teacher.
    assert changed_by("teacher.training.epochs=3") == set(stage_fingerprints(load_config())) - {"data", "baseline", "evaluate:baseline"}
    assert changed_by("hard.training.learning_rate=1e-3") == {"hard", "evaluate:hard", "features", "filtering", "hard-filtered", "evaluate:hard-filtered"}
    # Tracking memorization during training changes the training stages' records, not the evaluations.
    assert changed_by("extraction.track_every_epochs=0") >= {"teacher", "baseline", "soft", "hard"}
    assert "evaluate:teacher" in changed_by("extraction.track_every_epochs=0")  # downstream of the teacher
    # A new sweep temperature only adds a student and what reads it.
    assert changed_by("soft.sweep_temperatures=[1,4]") == {"soft-T4", "evaluate:soft-T4"}
