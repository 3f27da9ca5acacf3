"""A run's folder: where each output of ``kdmem run`` lives, and the names of its models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdmem.config import ExperimentConfig


@dataclass
class RunLayout:
    """Where each output of a run lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis.json"

    @property
    def features(self) -> Path:
        return self.root / "features.parquet"

    @property
    def categories(self) -> Path:
        """The analysis's per-example labels: who memorized it, and its Venn category per student."""
        return self.root / "categories.parquet"

    @property
    def filtering(self) -> Path:
        """What the filtering intervention removed from D, and how its threshold was set."""
        return self.root / "filtering.json"

    @property
    def second_family(self) -> Path:
        """The run of the second family (``second_family``), a run folder of its own."""
        return self.root / "second-family"

    @property
    def cross_family(self) -> Path:
        """``kdmem compare`` of this run and its second family's."""
        return self.root / "cross_family.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def provenance(self) -> Path:
        return self.root / "run.json"

    def data(self, split: str) -> Path:
        return self.root / "data" / f"{split}.parquet"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def model_done(self, name: str) -> Path:
        """Written last into a model's folder, so its presence means the model is whole."""
        return self.model(name) / "kdmem_stage.json"

    def memorization(self, name: str) -> Path:
        return self.root / "memorization" / f"{name}.parquet"

    def membership(self, name: str) -> Path:
        return self.root / "membership" / f"{name}.parquet"

    def canaries(self, name: str) -> Path:
        return self.root / "canaries" / f"{name}.parquet"

    def utility(self, name: str) -> Path:
        """lm-eval's results for model ``name`` (JSON); per-sample outputs beside it (``.parquet``)."""
        return self.root / "utility" / f"{name}.json"

    @property
    def utility_documents(self) -> Path:
        """kdmem's own utility tasks' documents (``TASK.jsonl``), from the held-out sequences."""
        return self.root / "utility" / "tasks"

    def teacher_cache(self, rows: str) -> Path:
        """The teacher-logit cache over the named training rows (``train``, or a filtered set)."""
        return self.root / "cache" / f"teacher-logits-{rows}"

    def validation(self, name: str) -> Path:
        """The model's loss on the held-out sequences."""
        return self.root / "validation" / f"{name}.json"

    @property
    def work_root(self) -> Path:
        """Scratch space of the Trainer runs; emptied as each model is saved."""
        return self.root / "work"

    def work(self, name: str) -> Path:
        return self.work_root / name


def seed_suffix(seed: int, config: ExperimentConfig) -> str:
    return "" if seed == config.seeds[0] else f"-seed{seed}"


def filtered_name(config: ExperimentConfig) -> str:
    """The student distilled again on D without the examples the predictor flags: ``soft-filtered``
    or ``hard-filtered``."""
    return f"{config.filtering.student}-filtered"


def sweep_name(temperature: float) -> str:
    return f"soft-T{temperature:g}"


def temperature_sweep(config: ExperimentConfig) -> dict[float, str]:
    """Temperature -> the soft student distilled at it (first seed), for the sweep."""
    sweep = {t: sweep_name(t) for t in config.soft.sweep_temperatures}
    if sweep:
        sweep[config.soft.temperature] = "soft"
    return dict(sorted(sweep.items()))


CROSS_SCALE = "cross-scale"
"""The model of ``cross_scale``: another size of the student's family, trained like the baseline."""


def model_names(config: ExperimentConfig) -> list[str]:
    """Every model a run trains, in order: teacher, then baseline, soft and hard for each seed,
    then the temperature sweep's extra soft students, the cross-scale model and the filtered one."""
    names = ["teacher"]
    for kind in ("baseline", "soft", "hard"):
        names += [kind + seed_suffix(seed, config) for seed in config.seeds]
    names += [name for name in temperature_sweep(config).values() if name not in names]
    names += [CROSS_SCALE] if config.cross_scale.model else []
    return names + ([filtered_name(config)] if config.filtering.enabled else [])
