"""The analysis figures, each saved as PNG and SVG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Circle
from matplotlib.ticker import LogFormatter

from kdmem.analysis.overlaps import CATEGORIES


def save(figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


class PlainLogFormatter(LogFormatter):
    """Labels the ticks matplotlib labels on a log axis, as plain numbers: 2, 5, 10, 20 where its
    default prints 2×10^0 (minor ticks get labels when the axis spans little more than a decade)."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:.6g}" if super().__call__(x, pos) else ""


def plain_log_ticks(axis) -> None:
    """Plain tick labels, major and minor, on a log-scaled ``axis`` (``axes.xaxis`` or ``axes.yaxis``)."""
    base = axis.get_transform().base
    axis.set_major_formatter(PlainLogFormatter(base))
    axis.set_minor_formatter(PlainLogFormatter(base))


def venn(region_counts: dict[str, int], student: str, stem: Path) -> list[Path]:
    """Three-set Venn of teacher, baseline and ``student``; ``region_counts`` maps each of
    ``CATEGORIES``' names to its number of examples."""
    figure, axes = plt.subplots(figsize=(5, 4.6))
    centres = {"teacher": (-0.55, 0.35), "baseline": (0.55, 0.35), student: (0.0, -0.55)}
    for (name, centre), colour in zip(centres.items(), ("tab:blue", "tab:orange", "tab:green"), strict=True):
        axes.add_patch(Circle(centre, 1.0, alpha=0.25, color=colour))
        x, y = centre
        axes.text(x * 1.9, y * 1.9 + (0.25 if y > 0 else -0.3), name, ha="center", fontsize=11, weight="bold")
    # Where each region's count is printed: (in teacher, in baseline, in student) -> (x, y).
    spots = {
        (True, False, False): (-1.0, 0.65),
        (False, True, False): (1.0, 0.65),
        (False, False, True): (0.0, -1.05),
        (True, True, False): (0.0, 0.75),
        (True, False, True): (-0.6, -0.35),
        (False, True, True): (0.6, -0.35),
        (True, True, True): (0.0, 0.0),
    }
    for membership, (x, y) in spots.items():
        axes.text(x, y, str(region_counts.get(CATEGORIES[membership], 0)), ha="center", va="center", fontsize=12)
    axes.set_xlim(-2.0, 2.0)
    axes.set_ylim(-2.0, 1.9)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title(f"Memorized examples: teacher, baseline, {student}")
    return save(figure, stem)


def seed_heatmap(matrix: np.ndarray, student: str, stem: Path) -> list[Path]:
    """Examples by how many baseline seeds (rows) and student seeds (columns) memorize them."""
    figure, axes = plt.subplots(figsize=(4.8, 4))
    image = axes.imshow(np.log1p(matrix), cmap="viridis", origin="lower")
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", color="white" if count < matrix.max() / 2 else "black")
    axes.set_xlabel(f"{student} seeds that memorize")
    axes.set_ylabel("baseline seeds that memorize")
    axes.set_xticks(range(matrix.shape[1]))
    axes.set_yticks(range(matrix.shape[0]))
    figure.colorbar(image, label="log(1 + examples)")
    axes.set_title("Seed consistency")
    return save(figure, stem)


def zlib_vs_perplexity(
    features: pd.DataFrame, easy: np.ndarray, stem: Path, sample: int = 500, seed: int = 0
) -> list[Path]:
    """zlib entropy against baseline perplexity: easy-to-memorize examples against a random sample."""
    figure, axes = plt.subplots(figsize=(5.5, 4))
    others = features[~easy]
    others = others.sample(min(sample, len(others)), random_state=seed)
    axes.scatter(
        others["zlib_entropy"], others["baseline_ppl"], s=8, alpha=0.4, label="random sample", color="tab:gray"
    )
    axes.scatter(
        features.loc[easy, "zlib_entropy"],
        features.loc[easy, "baseline_ppl"],
        s=14,
        label="easy (teacher ∩ baseline)",
        color="tab:red",
    )
    axes.set_yscale("log")
    plain_log_ticks(axes.yaxis)
    axes.set_xlabel("zlib entropy (compressed bytes)")
    axes.set_ylabel("baseline perplexity")
    axes.legend()
    axes.set_title("What easy-to-memorize examples look like")
    return save(figure, stem)


def mechanism(features: pd.DataFrame, suppressed: np.ndarray, models: list[str], stem: Path) -> list[Path]:
    """For the suppressed examples: mean token entropy over the last K tokens against sequence
    log-probability, one colour per model."""
    figure, axes = plt.subplots(figsize=(5.5, 4))
    rows = features[suppressed]
    for name in models:
        axes.scatter(rows[f"{name}_log_prob"], rows[f"{name}_entropy_last_k"], s=14, alpha=0.7, label=name)
    axes.set_xlabel("sequence log-probability (nats)")
    axes.set_ylabel("mean token entropy, last K tokens (nats)")
    axes.legend()
    axes.set_title(f"Suppressed examples ({int(suppressed.sum())}): teacher and baseline memorize, student does not")
    return save(figure, stem)


def temperature_curve(rows: list[dict], baseline: dict, stem: Path) -> list[Path]:
    """Soft students' memorized count and validation loss against the distillation temperature,
    with the baseline's as reference lines."""
    figure, count_axes = plt.subplots(figsize=(5.5, 4))
    temperatures = [row["temperature"] for row in rows]
    count_axes.plot(
        temperatures, [row["memorized"] for row in rows], "o-", color="tab:green", label="student memorized"
    )
    count_axes.axhline(baseline["memorized"], color="tab:green", linestyle=":", label="baseline memorized")
    count_axes.set_xlabel("temperature T")
    count_axes.set_ylabel("memorized examples")
    loss_axes = count_axes.twinx()
    loss_axes.plot(
        temperatures, [row["val_loss"] for row in rows], "s--", color="tab:purple", label="student val loss"
    )
    loss_axes.axhline(baseline["val_loss"], color="tab:purple", linestyle=":", label="baseline val loss")
    loss_axes.set_ylabel("validation loss (nats)")
    handles = count_axes.get_legend_handles_labels()[0] + loss_axes.get_legend_handles_labels()[0]
    count_axes.legend(handles=handles, fontsize=8, loc="best")
    count_axes.set_title("Temperature sweep")
    return save(figure, stem)


def chance_line(floor: float, points: int = 200) -> np.ndarray:
    """The ROC of a random guess, y = x, from ``floor`` to 1 as enough points (evenly spaced in log
    FPR) that it stays y = x on a log axis too: two end points joined by one segment would bow."""
    x = np.logspace(np.log10(floor), 0, points)
    return np.stack([x, x])


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, stem: Path) -> list[Path]:
    """One ROC curve per entry of ``curves`` (name -> (true labels, scores)), with its AUC in the
    legend: on linear axes, where the area is what the eye sees, and beside it with a log-scaled
    false-positive axis, since the low-FPR end is what an attacker uses."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, (linear, logarithmic) = plt.subplots(1, 2, figsize=(10, 4))
    floor = min(1e-3, 1 / max(len(labels) for labels, _ in curves.values()))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        for axes in (linear, logarithmic):
            axes.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    for axes in (linear, logarithmic):
        axes.plot(*chance_line(floor), ":", color="tab:gray", label="chance (y = x)")
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
    linear.set_xlim(0, 1)
    logarithmic.set_xscale("log")
    logarithmic.set_xlim(floor, 1)
    logarithmic.set_title("low false-positive rates (log scale)", fontsize=9)
    linear.legend(fontsize=8)
    linear.set_title(title)
    return save(figure, stem)


def prefix_curve(counts: dict[str, dict[int, int]], suffix_len: int, stem: Path) -> list[Path]:
    """Memorized examples against the prefix length given to the model, one line per model."""
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name, by_length in counts.items():
        lengths = sorted(by_length)
        axes.plot(lengths, [by_length[k] for k in lengths], "o-", label=name)
    axes.set_xlabel("prefix length (tokens)")
    axes.set_ylabel(f"memorized examples (next {suffix_len} tokens exact)")
    axes.legend(fontsize=8)
    axes.set_title("Memorized examples by prefix length")
    return save(figure, stem)


def canary_exposure(exposure: pd.DataFrame, stem: Path) -> list[Path]:
    """Canary exposure (bits) against how many times the canary was planted, one line per model;
    ``exposure`` has ``model``, ``repeats`` and ``exposure`` columns."""
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name, rows in exposure.groupby("model", sort=False):
        rows = rows.groupby("repeats")["exposure"].mean()
        axes.plot(rows.index, rows.to_numpy(), "o-", label=name)
    axes.set_xscale("log", base=2)
    plain_log_ticks(axes.xaxis)
    axes.set_xlabel("copies of the canary in training")
    axes.set_ylabel("exposure (bits)")
    axes.legend(fontsize=8)
    axes.set_title("Canary exposure")
    return save(figure, stem)
