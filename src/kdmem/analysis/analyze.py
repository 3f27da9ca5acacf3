"""``kdmem analyze OUT``: explain a finished run's memorization; ``OUT/analysis.json``,
``OUT/features.parquet`` and ``OUT/figures/``.

Reads the per-example verdicts under ``OUT/memorization/`` and the saved models, and runs the
paper's analyses: set overlaps per student (and over the union of seeds), seed consistency,
per-example features, the pre-distillation predictor, the mechanism of suppression, soft vs hard.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kdmem.analysis import figures
from kdmem.analysis.features import model_features
from kdmem.analysis.filtering import filtering_report
from kdmem.analysis.overlaps import categories, memorized_ids, overlap, seed_consistency, soft_vs_hard
from kdmem.analysis.predictor import (
    FEATURES,
    TEACHER_ONLY_FEATURES,
    deployment_protocol,
    fit_risk_model,
    paper_protocol,
)
from kdmem.config import DataConfig, load_config
from kdmem.data import load_sequences, read_sequences, write_documents
from kdmem.io import split_across_processes, write_json_atomic, write_parquet_atomic
from kdmem.layout import RunLayout, filtered_name, seed_suffix, temperature_sweep
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


def analyze(output: str | Path, *, repeats: int = 100) -> dict:
    """Run every analysis on the run in ``output``; write and return ``analysis.json``'s content.

    Args:
        repeats: repetitions of the predictor's balanced protocol (paper: 100).
    """
    layout = RunLayout(Path(output))
    if not layout.summary.exists():
        raise FileNotFoundError(f"{layout.root} holds no finished run (no summary.json); run `kdmem run` first.")
    config = load_config(layout.config)
    train = read_sequences(layout.data("train"))
    suffixes = [seed_suffix(seed, config) for seed in config.seeds]
    memorized = {
        path.stem: memorized_ids(pd.read_parquet(path))
        for path in sorted((layout.root / "memorization").glob("*.parquet"))
    }
    teacher = memorized["teacher"]
    figure_dir = layout.figures
    result: dict = {
        "examples": len(train),
        "seeds": len(config.seeds),
        "memorized": {name: len(ids) for name, ids in memorized.items()},
    }

    # 1. Set overlaps: each student against the teacher and the baseline of its own seed, and the
    #    union over seeds against the union of baselines (the paper's set analyses use the union).
    def union(kind: str) -> set:
        return set().union(*(memorized[kind + s] for s in suffixes))

    comparisons = {}  # name -> (baseline set, student set)
    for kind in STUDENT_KINDS:
        for suffix in suffixes:
            comparisons[kind + suffix] = (memorized["baseline" + suffix], memorized[kind + suffix])
        if len(suffixes) > 1:
            comparisons[f"{kind}_union"] = (union("baseline"), union(kind))
    result["overlap"] = {
        name: overlap(teacher, baseline, student) for name, (baseline, student) in comparisons.items()
    }
    for name, (baseline, student) in comparisons.items():
        regions = categories(train["example_id"], teacher, baseline, student).value_counts().to_dict()
        figures.venn(regions, name, figure_dir / f"venn_{name}")

    # 2. Seed consistency.
    if len(suffixes) > 1:
        result["seed_consistency"] = {}
        for kind in STUDENT_KINDS:
            matrix = seed_consistency(
                train["example_id"],
                [memorized["baseline" + s] for s in suffixes],
                [memorized[kind + s] for s in suffixes],
            )
            result["seed_consistency"][kind] = matrix.tolist()
            figures.seed_heatmap(matrix, kind, figure_dir / f"seed_consistency_{kind}")
    else:
        result["seed_consistency"] = {"skipped": "one seed only; set seeds=[0,1,2] for the heatmap"}

    # 3. Per-example features under teacher, baseline and the first seed's students.
    features = model_feature_table(
        layout, train, dtype=config.inference_dtype, batch_size=config.extraction.batch_size, **feature_spans(config)
    )
    # The analysis's own per-example table: the features stage's output is never rewritten.
    labels = pd.DataFrame({"example_id": features["example_id"]})
    for name in ["teacher", "baseline", *STUDENT_KINDS]:
        labels[f"memorized_{name}"] = features["example_id"].isin(memorized[name])
    for kind in STUDENT_KINDS:
        labels[f"category_{kind}"] = categories(
            features["example_id"], teacher, memorized["baseline"], memorized[kind]
        ).to_numpy()
    write_parquet_atomic(layout.categories, labels)
    easy = features["example_id"].isin(teacher & memorized["baseline"]).to_numpy()
    figures.zlib_vs_perplexity(features, easy, figure_dir / "zlib_vs_baseline_ppl")
    result["features"] = {
        "entropy_last_k": f"mean over the last {config.extraction.suffix_len} predicted tokens (the paper's last K)",
        "entropy_suffix": f"mean over the suffix extraction judges, tokens {config.extraction.prefix_len + 1} to "
        f"{config.extraction.prefix_len + config.extraction.suffix_len}",
        "easy_vs_rest": _means(features, easy, ["zlib_entropy", "baseline_ppl", "teacher_ppl", "teacher_baseline_kl"]),
    }

    # 4. Predicting each student's memorized set (union over seeds) before distillation.
    result["predictor"] = {}
    held_out = {}
    for kind in STUDENT_KINDS:
        target = features["example_id"].isin(union(kind)).to_numpy()
        deployment, _, scored = deployment_protocol(features, target, FEATURES)
        if scored is not None:
            held_out[kind] = (scored["memorized"].to_numpy(), scored["risk"].to_numpy())
        result["predictor"][kind] = {
            "paper_protocol": paper_protocol(features, target, FEATURES, repeats=repeats),
            "paper_protocol_teacher_only": paper_protocol(features, target, TEACHER_ONLY_FEATURES, repeats=repeats),
            "all_remaining_examples": deployment,
        }
    if held_out:
        figures.roc_curves(
            held_out, "Predicting student memorization (held-out examples)", figure_dir / "predictor_roc"
        )

    # 5. Mechanism: what the suppressed examples look like to each model.
    result["mechanism"] = {}
    for kind in STUDENT_KINDS:
        suppressed = (labels[f"category_{kind}"] == "suppressed").to_numpy()
        result["mechanism"][kind] = {
            "suppressed": int(suppressed.sum()),
            **{
                name: {
                    measure: float(features.loc[suppressed, f"{name}_{measure}"].mean()) if suppressed.any() else None
                    for measure in ("entropy_last_k", "entropy_suffix", "log_prob")
                }
                for name in ("teacher", "baseline", kind)
            },
        }
        if suppressed.any():
            figures.mechanism(features, suppressed, ["teacher", "baseline", kind], figure_dir / f"mechanism_{kind}")

    # 6. Soft vs hard, on the union over seeds.
    result["soft_vs_hard"] = soft_vs_hard(teacher, union("baseline"), union("soft"), union("hard"))

    # 7. Temperature sweep.
    summary = json.loads(layout.summary.read_text())
    sweep = temperature_sweep(config)
    if sweep:
        rows = [
            {
                "temperature": t,
                "model": name,
                **{k: summary["models"][name][k] for k in ("memorized", "rate", "val_loss")},
            }
            for t, name in sweep.items()
        ]
        result["temperature_sweep"] = rows
        figures.temperature_curve(rows, summary["models"]["baseline"], figure_dir / "temperature_sweep")
    else:
        result["temperature_sweep"] = {"skipped": "no sweep configured; set soft.sweep_temperatures=[1,3,4]"}

    # 8. Filtering and re-distilling (when the run did it).
    flagging = json.loads(layout.filtering.read_text()) if layout.filtering.exists() else {}
    if "skipped" in flagging:
        result["filtering"] = {"student": config.filtering.student, "skipped": flagging["skipped"]}
    elif flagging:
        removed = set(flagging.pop("removed_ids"))
        kind, name = config.filtering.student, filtered_name(config)
        after = memorized_ids(pd.read_parquet(layout.memorization(name)))
        result["filtering"] = (
            {"student": kind, "model": name}
            | flagging
            | filtering_report(
                memorized[kind],
                after,
                removed,
                summary["models"][kind]["val_loss"],
                summary["models"][name]["val_loss"],
            )
        )
    else:
        result["filtering"] = {"skipped": "not run; set filtering.enabled=true"}

    # 9. What else each model leaks: membership inference, the prefix-length curve, canaries.
    result["membership_roc"] = _membership_roc(layout, figure_dir)
    result["prefix_curve"] = _prefix_curve(layout, config, figure_dir)
    result["canaries"] = _canaries(layout, figure_dir)
    # 10. Cross-family: this run against its second family (the same documents, another family).
    if config.second_family.enabled and layout.cross_family.exists():
        result["cross_family"] = json.loads(layout.cross_family.read_text())
    else:
        result["cross_family"] = {
            "skipped": "no second family; set second_family.enabled=true (and data.packing=documents)"
        }
    write_json_atomic(layout.analysis, result)
    logger.info("analysis written to %s", layout.analysis)
    return result


def _membership_roc(layout: RunLayout, figure_dir: Path) -> dict:
    """ROC of the loss attack (training vs validation examples) per model, from ``membership/``."""
    paths = sorted((layout.root / "membership").glob("*.parquet"))
    if not paths:
        return {"skipped": "membership inference not run; set membership.enabled=true"}
    curves = {}
    for path in paths:
        scores = pd.read_parquet(path, columns=["split", "loss"])
        curves[path.stem] = (
            (scores["split"] == "train").to_numpy(),
            -scores["loss"].to_numpy(),
        )  # lower loss: more likely a member
    figures.roc_curves(curves, "Membership inference by loss", figure_dir / "membership_roc")
    return {"models": list(curves)}


def _prefix_curve(layout: RunLayout, config, figure_dir: Path) -> dict:
    """Memorized count per prefix length per model, from the ``memorized_pP`` columns."""
    lengths = sorted(set(config.extraction.prefix_lens))
    if not lengths:
        return {"skipped": "no prefix lengths measured; set extraction.full=true extraction.prefix_lens=[8,16,24,32]"}
    counts = {}
    for path in sorted((layout.root / "memorization").glob("*.parquet")):
        verdicts = pd.read_parquet(path)
        if all(
            f"memorized_p{k}" in verdicts for k in lengths
        ):  # verdicts written by hand or by `kdmem extract` may lack them
            counts[path.stem] = {k: int(verdicts[f"memorized_p{k}"].sum()) for k in lengths}
    if not counts:
        return {"skipped": f"no verdicts hold the memorized_pP columns for prefix lengths {lengths}"}
    figures.prefix_curve(counts, config.extraction.suffix_len, figure_dir / "prefix_curve")
    return {name: {str(k): n for k, n in by_length.items()} for name, by_length in counts.items()}


def _canaries(layout: RunLayout, figure_dir: Path) -> dict:
    """Exposure of every planted canary under every model, from ``canaries/``."""
    paths = sorted((layout.root / "canaries").glob("*.parquet"))
    if not paths:
        return {"skipped": "no canaries planted; set canaries.repeats=[1,4,16]"}
    exposure = pd.concat([pd.read_parquet(path).assign(model=path.stem) for path in paths], ignore_index=True)
    figures.canary_exposure(exposure, figure_dir / "canary_exposure")
    by_repeats = exposure.groupby(["model", "repeats"])["exposure"].mean()
    return {
        name: {str(r): float(v) for r, v in rows.droplevel(0).items()} for name, rows in by_repeats.groupby(level=0)
    }


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
        raise ValueError(
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
