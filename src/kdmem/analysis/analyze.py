"""``kdmem analyze OUT``: explain a finished run's memorization; ``OUT/analysis.json``,
``OUT/categories.parquet``, ``OUT/features.parquet`` and ``OUT/figures/``.

Reads the per-example verdicts under ``OUT/memorization/`` and the saved models, and runs the
paper's analyses, one function each in ``ANALYSES`` (set overlaps per student and over the union of
seeds, seed consistency, what easy examples look like, the pre-distillation predictor, the
mechanism of suppression, soft vs hard, temperature, filtering, what else leaks, cross-family):
each computes its part of ``analysis.json`` and draws its figures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from kdmem.analysis import figures
from kdmem.analysis.features import model_features
from kdmem.analysis.filtering import filtering_report
from kdmem.analysis.overlaps import (
    categories,
    memorized_ids,
    overlap,
    seed_consistency,
    shared_both_ways,
    soft_vs_hard,
)
from kdmem.analysis.predictor import (
    FEATURES,
    TEACHER_ONLY_FEATURES,
    deployment_protocol,
    fit_risk_model,
    paper_protocol,
)
from kdmem.config import DataConfig, ExperimentConfig, load_config
from kdmem.data import DataError, load_sequences, read_sequences, write_documents
from kdmem.io import split_across_processes, write_json_atomic, write_parquet_atomic
from kdmem.layout import CROSS_SCALE, RunLayout, filtered_name, seed_suffix, temperature_sweep
from kdmem.models import load_model, load_tokenizer

logger = logging.getLogger(__name__)

STUDENT_KINDS = ("soft", "hard")


def memorized_over_seeds(layout: RunLayout, config, kind: str) -> set[str]:
    """The example ids any seed's ``kind`` model (``soft``, ``hard``, ``baseline``) memorizes."""
    return set().union(
        *(memorized_ids(pd.read_parquet(layout.memorization(kind + seed_suffix(s, config)))) for s in config.seeds)
    )


def feature_spans(config) -> dict:
    """The spans ``model_features`` averages entropy over: the paper's last K tokens (K = the suffix
    length) and the suffix extraction judges."""
    return {
        "last_k": config.extraction.suffix_len,
        "suffix_span": (config.extraction.prefix_len, config.extraction.suffix_len),
    }


def model_feature_table(
    layout: RunLayout,
    train: pd.DataFrame,
    state=None,
    *,
    dtype: str,
    batch_size: int | None,
    last_k: int,
    suffix_span: tuple[int, int],
) -> pd.DataFrame:
    """``model_features`` of D under teacher, baseline and the first seed's students, computed once
    and kept in ``features.parquet``.
    Given the ``state`` of several processes, each computes its share of D and the main process
    writes; without one, this process computes it all. ``batch_size`` None: the largest that
    fits, as extraction finds it.

    The entropy features average over the last ``last_k`` tokens (the paper: K = 50, its suffix
    length) and over ``suffix_span`` (prefix length, suffix length), the span extraction judges.
    """
    if layout.features.exists():
        features = pd.read_parquet(layout.features)
        if list(features["example_id"]) == list(train["example_id"]):
            return features
    tokenizer = load_tokenizer(str(layout.model("teacher")))
    device = state.device if state else None
    models = {
        name: load_model(str(layout.model(name)), device=device, dtype=dtype)
        for name in ["teacher", "baseline", *STUDENT_KINDS]
    }
    features = split_across_processes(
        train,
        lambda share, offset: model_features(
            models, share, tokenizer, batch_size=batch_size, last_k=last_k, suffix_span=suffix_span
        ),
        layout.work("parts-features"),
        state,
    )
    if state is None or state.is_main_process:
        write_parquet_atomic(layout.features, features)
    return features


@dataclass
class AnalysedRun:
    """What the analyses read: a finished run's folder, config, summary and D, each model's memorized
    set (by the stem of its verdicts under ``memorization/``), and, computed once when first asked
    for, the per-example features and categories."""

    layout: RunLayout
    config: ExperimentConfig
    summary: dict
    train: pd.DataFrame
    memorized: dict[str, set[str]]
    repeats: int
    """Repetitions of the predictor's balanced protocol (paper: 100)."""

    @classmethod
    def load(cls, output: Path, repeats: int) -> AnalysedRun:
        layout = RunLayout(output)
        if not layout.summary.exists():
            raise FileNotFoundError(f"{layout.root} holds no finished run (no summary.json); run `kdmem run` first.")
        memorized = {
            path.stem: memorized_ids(pd.read_parquet(path))
            for path in sorted((layout.root / "memorization").glob("*.parquet"))
        }
        config, train = load_config(layout.config), read_sequences(layout.data("train"))
        return cls(layout, config, json.loads(layout.summary.read_text()), train, memorized, repeats)

    @property
    def teacher(self) -> set[str]:
        return self.memorized["teacher"]

    @property
    def suffixes(self) -> list[str]:
        """Each seed's model-name suffix (``""`` for the first seed, ``-seed1``, ...)."""
        return [seed_suffix(seed, self.config) for seed in self.config.seeds]

    def union(self, kind: str) -> set[str]:
        """What any seed's ``kind`` model memorizes (the paper's set analyses use the union)."""
        return set().union(*(self.memorized[kind + s] for s in self.suffixes))

    def figure(self, stem: str) -> Path:
        return self.layout.figures / stem

    @cached_property
    def features(self) -> pd.DataFrame:
        """Per-example features under teacher, baseline and the first seed's students."""
        return model_feature_table(
            self.layout,
            self.train,
            dtype=self.config.inference_dtype,
            batch_size=self.config.extraction.batch_size,
            **feature_spans(self.config),
        )

    @cached_property
    def categories(self) -> pd.DataFrame:
        """The analysis's own per-example table, ``categories.parquet`` (the features stage's output is
        never rewritten): whether teacher, baseline and each first-seed student memorize each example,
        and each student's Venn region."""
        ids = self.features["example_id"]
        labels = pd.DataFrame({"example_id": ids})
        for name in ["teacher", "baseline", *STUDENT_KINDS]:
            labels[f"memorized_{name}"] = ids.isin(self.memorized[name])
        for kind in STUDENT_KINDS:
            labels[f"category_{kind}"] = categories(
                ids, self.teacher, self.memorized["baseline"], self.memorized[kind]
            ).to_numpy()
        return labels


def _memorized_counts(run: AnalysedRun) -> dict:
    """Rates: how many examples of D each model memorizes."""
    return {name: len(ids) for name, ids in run.memorized.items()}


def _set_overlaps(run: AnalysedRun) -> dict:
    """Each student against the teacher and the baseline of its own seed, and (with several seeds)
    the union over seeds against the union of baselines; a Venn diagram each."""
    comparisons = {}  # name -> (baseline set, student set)
    for kind in STUDENT_KINDS:
        for suffix in run.suffixes:
            comparisons[kind + suffix] = (run.memorized["baseline" + suffix], run.memorized[kind + suffix])
        if len(run.suffixes) > 1:
            comparisons[f"{kind}_union"] = (run.union("baseline"), run.union(kind))
    for name, (baseline, student) in comparisons.items():
        regions = categories(run.train["example_id"], run.teacher, baseline, student).value_counts().to_dict()
        figures.venn(regions, name, run.figure(f"venn_{name}"))
    return {name: overlap(run.teacher, baseline, student) for name, (baseline, student) in comparisons.items()}


def _seed_consistency(run: AnalysedRun) -> dict:
    """Per student kind, examples by how many baseline and student seeds memorize them (a heatmap)."""
    if len(run.suffixes) < 2:
        return {"skipped": "one seed only; set seeds=[0,1,2] for the heatmap"}
    result = {}
    for kind in STUDENT_KINDS:
        matrix = seed_consistency(
            run.train["example_id"],
            [run.memorized["baseline" + s] for s in run.suffixes],
            [run.memorized[kind + s] for s in run.suffixes],
        )
        result[kind] = matrix.tolist()
        figures.seed_heatmap(matrix, kind, run.figure(f"seed_consistency_{kind}"))
    return result


def _easy_examples(run: AnalysedRun) -> dict:
    """What easy examples (memorized by teacher and baseline) look like against the rest."""
    features, extraction = run.features, run.config.extraction
    easy = features["example_id"].isin(run.teacher & run.memorized["baseline"]).to_numpy()
    figures.zlib_vs_perplexity(features, easy, run.figure("zlib_vs_baseline_ppl"))
    return {
        "entropy_last_k": f"mean over the last {extraction.suffix_len} predicted tokens (the paper's last K)",
        "entropy_suffix": f"mean over the suffix extraction judges, tokens {extraction.prefix_len + 1} to "
        f"{extraction.prefix_len + extraction.suffix_len}",
        "easy_vs_rest": _means(features, easy, ["zlib_entropy", "baseline_ppl", "teacher_ppl", "teacher_baseline_kl"]),
    }


def _predictor(run: AnalysedRun) -> dict:
    """Predicting each student's memorized set (union over seeds) before distillation: the paper's
    balanced protocol, and scored on all remaining examples (their ROC curves)."""
    result, held_out = {}, {}
    for kind in STUDENT_KINDS:
        target = run.features["example_id"].isin(run.union(kind)).to_numpy()
        deployment, _, scored = deployment_protocol(run.features, target, FEATURES)
        if scored is not None:
            held_out[kind] = (scored["memorized"].to_numpy(), scored["risk"].to_numpy())
        result[kind] = {
            "paper_protocol": paper_protocol(run.features, target, FEATURES, repeats=run.repeats),
            "paper_protocol_teacher_only": paper_protocol(
                run.features, target, TEACHER_ONLY_FEATURES, repeats=run.repeats
            ),
            "all_remaining_examples": deployment,
        }
    if held_out:
        figures.roc_curves(
            held_out, "Predicting student memorization (held-out examples)", run.figure("predictor_roc")
        )
    return result


def _mechanism(run: AnalysedRun) -> dict:
    """What the suppressed examples look like to each model: mean entropy and log-probability."""
    result, measures = {}, ("entropy_last_k", "entropy_suffix", "log_prob")
    for kind in STUDENT_KINDS:
        suppressed = (run.categories[f"category_{kind}"] == "suppressed").to_numpy()
        rows = run.features[suppressed]
        result[kind] = {"suppressed": len(rows)} | {
            name: {m: float(rows[f"{name}_{m}"].mean()) if len(rows) else None for m in measures}
            for name in ("teacher", "baseline", kind)
        }
        if len(rows):
            figures.mechanism(run.features, suppressed, ["teacher", "baseline", kind], run.figure(f"mechanism_{kind}"))
    return result


def _soft_vs_hard(run: AnalysedRun) -> dict:
    """What each kind of distillation inherits from the teacher, on the union over seeds."""
    return soft_vs_hard(run.teacher, run.union("baseline"), run.union("soft"), run.union("hard"))


def _temperature_sweep(run: AnalysedRun) -> list[dict] | dict:
    """The soft students' memorized count and validation loss at each distillation temperature."""
    sweep = temperature_sweep(run.config)
    if not sweep:
        return {"skipped": "no sweep configured; set soft.sweep_temperatures=[1,3,4]"}
    models = run.summary["models"]
    rows = [
        {"temperature": t, "model": name, **{k: models[name][k] for k in ("memorized", "rate", "val_loss")}}
        for t, name in sweep.items()
    ]
    figures.temperature_curve(rows, models["baseline"], run.figure("temperature_sweep"))
    return rows


def _filtering(run: AnalysedRun) -> dict:
    """The filtered student (when the run filtered and distilled again) against the one before."""
    layout, config = run.layout, run.config
    flagging = json.loads(layout.filtering.read_text()) if layout.filtering.exists() else {}
    if "skipped" in flagging:
        return {"student": config.filtering.student, "skipped": flagging["skipped"]}
    if not flagging:
        return {"skipped": "not run; set filtering.enabled=true"}
    removed = set(flagging.pop("removed_ids"))
    kind, name = config.filtering.student, filtered_name(config)
    after = memorized_ids(pd.read_parquet(layout.memorization(name)))
    models = run.summary["models"]
    report = filtering_report(run.memorized[kind], after, removed, models[kind]["val_loss"], models[name]["val_loss"])
    return {"student": kind, "model": name} | flagging | report


def _membership_roc(run: AnalysedRun) -> dict:
    """ROC of the loss attack (training vs validation examples) per model, from ``membership/``."""
    paths = sorted((run.layout.root / "membership").glob("*.parquet"))
    if not paths:
        return {"skipped": "membership inference not run; set membership.enabled=true"}
    curves = {}
    for path in paths:
        scores = pd.read_parquet(path, columns=["split", "loss"])
        # lower loss: more likely a member
        curves[path.stem] = ((scores["split"] == "train").to_numpy(), -scores["loss"].to_numpy())
    figures.roc_curves(curves, "Membership inference by loss", run.figure("membership_roc"))
    return {"models": list(curves)}


def _prefix_curve(run: AnalysedRun) -> dict:
    """Memorized count per prefix length per model, from the ``memorized_pP`` columns."""
    lengths = sorted(set(run.config.extraction.prefix_lens))
    if not lengths:
        return {"skipped": "no prefix lengths measured; set extraction.full=true extraction.prefix_lens=[8,16,24,32]"}
    counts = {}
    for path in sorted((run.layout.root / "memorization").glob("*.parquet")):
        verdicts = pd.read_parquet(path)
        # verdicts written by hand or by `kdmem extract` may lack them
        if all(f"memorized_p{k}" in verdicts for k in lengths):
            counts[path.stem] = {k: int(verdicts[f"memorized_p{k}"].sum()) for k in lengths}
    if not counts:
        return {"skipped": f"no verdicts hold the memorized_pP columns for prefix lengths {lengths}"}
    figures.prefix_curve(counts, run.config.extraction.suffix_len, run.figure("prefix_curve"))
    return {name: {str(k): n for k, n in by_length.items()} for name, by_length in counts.items()}


def _canaries(run: AnalysedRun) -> dict:
    """Exposure of every planted canary under every model, from ``canaries/``."""
    paths = sorted((run.layout.root / "canaries").glob("*.parquet"))
    if not paths:
        return {"skipped": "no canaries planted; set canaries.repeats=[1,4,16]"}
    exposure = pd.concat([pd.read_parquet(path).assign(model=path.stem) for path in paths], ignore_index=True)
    figures.canary_exposure(exposure, run.figure("canary_exposure"))
    by_repeats = exposure.groupby(["model", "repeats"])["exposure"].mean()
    return {
        name: {str(r): float(v) for r, v in rows.droplevel(0).items()} for name, rows in by_repeats.groupby(level=0)
    }


def _cross_family(run: AnalysedRun) -> dict:
    """This run against its second family (the same documents, another family), as the run compared them."""
    if run.config.second_family.enabled and run.layout.cross_family.exists():
        return json.loads(run.layout.cross_family.read_text())
    return {"skipped": "no second family; set second_family.enabled=true (and data.packing=documents)"}


def _cross_scale(run: AnalysedRun) -> dict:
    """The cross-scale model (another size of the student's family, trained like the baseline)
    against the first seed's baseline: the share of each one's memorized set that the other
    memorizes too (the paper: 96% of Pythia-1B's memorized set is the 1.4B baseline's too)."""
    if CROSS_SCALE not in run.memorized:
        return {"skipped": "no cross-scale model; set cross_scale.model (e.g. EleutherAI/pythia-1b)"}
    shared = shared_both_ways(run.memorized[CROSS_SCALE], run.memorized["baseline"])
    return {
        "model": run.config.cross_scale.model,
        "cross_scale": shared["first"],
        "baseline": shared["second"],
        "both": shared["both"],
        "share_of_cross_scale_in_baseline": shared["share_of_first_in_second"],
        "share_of_baseline_in_cross_scale": shared["share_of_second_in_first"],
        "jaccard": shared["jaccard"],
    }


ANALYSES = (
    ("memorized", _memorized_counts),
    ("overlap", _set_overlaps),
    ("seed_consistency", _seed_consistency),
    ("features", _easy_examples),
    ("predictor", _predictor),
    ("mechanism", _mechanism),
    ("soft_vs_hard", _soft_vs_hard),
    ("temperature_sweep", _temperature_sweep),
    ("filtering", _filtering),
    ("membership_roc", _membership_roc),
    ("prefix_curve", _prefix_curve),
    ("canaries", _canaries),
    ("cross_scale", _cross_scale),
    ("cross_family", _cross_family),
)
"""The paper's analyses and what else each model leaks, in ``analysis.json``'s order, as (key, the
function that computes that key's value from an ``AnalysedRun`` and draws its figures)."""


def analyze(output: str | Path, *, repeats: int = 100) -> dict:
    """Run every analysis of ``ANALYSES`` on the run in ``output``; write ``analysis.json`` and
    ``categories.parquet``, and return ``analysis.json``'s content.

    Args:
        repeats: repetitions of the predictor's balanced protocol (paper: 100).
    """
    run = AnalysedRun.load(Path(output), repeats)
    result: dict = {"examples": len(run.train), "seeds": len(run.config.seeds)}
    for key, analysis in ANALYSES:
        result[key] = analysis(run)
    write_parquet_atomic(run.layout.categories, run.categories)
    write_json_atomic(run.layout.analysis, result)
    logger.info("analysis written to %s", run.layout.analysis)
    return result


def _means(features: pd.DataFrame, selected: np.ndarray, columns: list[str]) -> dict:
    """Means of ``columns`` over the selected examples and over the rest (None where empty)."""

    def means(rows: pd.DataFrame):
        return {c: float(rows[c].mean()) for c in columns} if len(rows) else None

    return {"selected": means(features[selected]), "rest": means(features[~selected])}


def predict(
    run: str | Path,
    data,
    *,
    student: str = "soft",
    teacher: str | None = None,
    baseline: str | None = None,
    teacher_only: bool = False,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Risk that a student distilled from ``teacher`` memorizes each sequence of ``data``, before
    any distillation: a logistic regression fitted on the finished run's ``features.parquet``
    (target: the ``student`` kind's memorized examples, union over seeds), applied to features of
    ``data`` computed with ``teacher`` and ``baseline`` (default: the run's own models).

    ``data`` is a ``DataConfig``, or documents in memory (a ``datasets.Dataset``, a pandas
    DataFrame with a ``text`` column, or a list of strings), cut into sequences of the run's length.

    Returns ``example_id`` and ``risk`` (the predicted probability), with the features used.
    The model is refitted from the Parquet features each time; nothing is unpickled.
    """
    layout = RunLayout(Path(run))
    features_path = layout.features
    if not features_path.exists():
        raise FileNotFoundError(f"{features_path} does not exist; run `kdmem analyze {layout.root}` first.")
    config = load_config(layout.config)
    if not isinstance(data, DataConfig):
        source = write_documents(data, layout.root / "source")
        data = DataConfig(source=str(source), seq_len=config.data.seq_len, num_examples=None, validation_examples=0)
    known = pd.read_parquet(features_path)
    target = known["example_id"].isin(memorized_over_seeds(layout, config, student)).to_numpy()
    if target.all() or not target.any():
        raise DataError(
            f"The {student} student of {layout.root} memorized {'every' if target.any() else 'no'} example of its "
            f"{len(target)} (union over seeds), so there is nothing to tell apart and no predictor to fit. Predict "
            "from a run whose student memorizes some examples and not others (more data, more epochs, a lower "
            "temperature), or try --student hard."
        )
    columns = TEACHER_ONLY_FEATURES if teacher_only else FEATURES
    model = fit_risk_model(known, target, columns)
    models = {"teacher": load_model(teacher or str(layout.model("teacher")))}
    if not teacher_only:
        models["baseline"] = load_model(baseline or str(layout.model("baseline")))
    tokenizer = load_tokenizer(teacher or str(layout.model("teacher")))
    sequences = load_sequences(data, tokenizer)
    scored = model_features(models, sequences, tokenizer, batch_size=batch_size, **feature_spans(config))
    scored.insert(1, "risk", model.predict_proba(scored[list(columns)].to_numpy(dtype=float))[:, 1])
    return scored[["example_id", "risk", *columns]]
