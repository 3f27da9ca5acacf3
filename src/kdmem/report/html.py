"""``kdmem report OUT``: ``OUT/report.html`` (one self-contained page) and ``OUT/report.md``.

The page follows the paper: the headline table, the set overlaps, seed consistency, features,
the predictor, the mechanism, temperature, soft vs hard, filtering, the prefix-length curve,
membership inference, canaries, the most-memorized examples, and the run's provenance. Figures
are embedded as PNG data URIs, so the file opens anywhere without network access. Every string
from data or config goes through Jinja2's autoescaping: training text shows as text, never runs.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import jinja2
import pandas as pd

from kdmem.io import write_text_atomic
from kdmem.layout import RunLayout
from kdmem.models import load_tokenizer
from kdmem.report.findings import key_findings, paper_findings
from kdmem.report.headline import reduction_vs_baseline, utility_columns, utility_value

EXAMPLES_SHOWN = 10


def headline_rows(summary: dict) -> list[dict]:
    """The headline table's rows: one per model, numbers formatted for display."""
    rows = []
    columns = utility_columns(summary)
    for name, row in summary["models"].items():
        reduction = reduction_vs_baseline(summary, name)
        auc = row.get("membership", {}).get("loss", {}).get("auc")
        rows.append(
            {
                "model": name,
                "memorized": row["memorized"],
                "examples": row["examples"],
                "rate": f"{100 * row['rate']:.2f}",
                "val_loss": f"{row['val_loss']:.3f}",
                "val_ppl": f"{row['val_ppl']:.1f}",
                "reduction": ""
                if reduction is None
                else ("inf" if reduction == float("inf") else f"{reduction:.2f}x"),
                "mia_auc": "" if auc is None else f"{auc:.3f}",
                "utility": [utility_value(row, task, metric) for task, metric, _ in columns],
            }
        )
    return rows


def most_memorized_examples(layout: RunLayout, summary: dict, count: int = EXAMPLES_SHOWN) -> list[dict]:
    """The examples the most models memorize (ties: the longest reproduced span), each with its
    prefix, the part of its true suffix that the best model reproduces, and the rest."""
    prefix_len, suffix_len = summary["extraction"]["prefix_len"], summary["extraction"]["suffix_len"]
    columns = ["example_id", "memorized", "matched_tokens"]
    verdicts = {name: pd.read_parquet(layout.memorization(name), columns=columns) for name in summary["models"]}
    ranking = pd.DataFrame({"example_id": verdicts["teacher"]["example_id"]})
    ranking["models"] = sum(v["memorized"].astype(int).to_numpy() for v in verdicts.values())
    matched = pd.DataFrame({name: v["matched_tokens"].to_numpy() for name, v in verdicts.items()})
    ranking["matched"] = matched.max(axis=1).to_numpy()
    ranking["best_model"] = matched.idxmax(axis=1).to_numpy()
    top = ranking.sort_values(["models", "matched"], ascending=False, kind="stable").head(count)
    train = pd.read_parquet(layout.data("train")).set_index("example_id")
    tokenizer = load_tokenizer(str(layout.model("teacher")))
    examples = []
    for row in top.itertuples():
        ids = train.loc[row.example_id, "input_ids"].tolist()
        suffix = ids[prefix_len : prefix_len + suffix_len]
        examples.append(
            {
                "example_id": row.example_id,
                "memorized_by": [name for name, v in verdicts.items() if bool(v["memorized"].iloc[row.Index])],
                "best_model": row.best_model,
                "matched": int(row.matched),
                "suffix_len": suffix_len,
                "prefix": tokenizer.decode(ids[:prefix_len]),
                "reproduced": tokenizer.decode(suffix[: row.matched]),
                "rest": tokenizer.decode(suffix[row.matched :]),
            }
        )
    return examples


def _figures(layout: RunLayout) -> dict[str, str]:
    """Figure stem -> a PNG data URI."""
    return {
        path.stem: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        for path in sorted(layout.figures.glob("*.png"))
    }


def report_context(run: str | Path) -> dict:
    """Everything the report shows, read from a finished, analysed run."""
    layout = RunLayout(Path(run))
    if not layout.analysis.exists():
        raise FileNotFoundError(
            f"{layout.root} holds no analysed run (no analysis.json); run `kdmem run` or `kdmem analyze` first."
        )
    summary = json.loads(layout.summary.read_text())
    analysis = json.loads(layout.analysis.read_text())
    provenance = json.loads(layout.provenance.read_text()) if layout.provenance.exists() else {}
    return {
        "name": summary["name"],
        "summary": summary,
        "analysis": analysis,
        "headline": headline_rows(summary),
        "utility_headers": [header for _, _, header in utility_columns(summary)],
        "findings": key_findings(summary, analysis),
        "paper_findings": paper_findings(summary, analysis),
        "figures": _figures(layout),
        "examples": most_memorized_examples(layout, summary),
        "provenance": provenance,
        "config_yaml": layout.config.read_text(encoding="utf-8"),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("kdmem.report", "templates"),
        autoescape=True,  # every template, whatever its extension: data never becomes markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(context: dict) -> str:
    return _environment().get_template("report.html.j2").render(**context)


MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|&~])")


def _markdown_text(value) -> str:
    """kdmem's own text (numbers, findings) on one line of Markdown: written as is, the pipes of a
    table cell escaped."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_data(value) -> str:
    """Text from a dataset or a config (a run's name) on one line of Markdown: every character
    Markdown could read as syntax, raw HTML included, backslash-escaped (CommonMark), so it shows
    as the text it is, with no HTML entities."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", str(value)).replace("\n", " ")


def findings_table(findings) -> str:
    """``paper_findings`` as a Markdown table (the README shows the same one)."""
    lines = ["| # | analysis | paper | kdmem | agrees in direction |", "|---|---|---|---|---|"]
    lines += [
        f"| {f.number} | {_markdown_text(f.analysis)} | {_markdown_text(f.paper)} | {_markdown_text(f.kdmem)} "
        f"| {f.agrees} |"
        for f in findings
    ]
    return "\n".join(lines)


def render_markdown(context: dict) -> str:
    """The headline table and the key findings, for pasting into a paper or an issue."""
    columns = [
        ("model", "model"),
        ("memorized", "memorized"),
        ("examples", "examples"),
        ("rate", "rate %"),
        ("val_loss", "val loss"),
        ("val_ppl", "val PPL"),
        ("reduction", "reduction vs baseline"),
        ("mia_auc", "MIA AUC"),
    ]
    lines = [
        f"# kdmem report: {_markdown_data(context['name'])}",
        "",
        "| " + " | ".join([*(title for _, title in columns), *context["utility_headers"]]) + " |",
        "|" + "---|" * (len(columns) + len(context["utility_headers"])),
    ]
    lines += [
        "| " + " | ".join([*(_markdown_text(row[key]) for key, _ in columns), *row["utility"]]) + " |"
        for row in context["headline"]
    ]
    ext = context["summary"]["extraction"]
    lines += [
        "",
        f"Memorized: greedy decoding from a {ext['prefix_len']}-token prefix reproduces the next "
        f"{ext['suffix_len']} tokens exactly.",
        "",
        "## Key findings",
        "",
    ]
    lines += [f"- {_markdown_text(finding)}" for finding in context["findings"]]
    lines += ["", "## The paper's findings, and this run's", "", findings_table(context["paper_findings"])]
    lines += ["", "Figures: `figures/` beside this file; the whole report with figures: `report.html`.", ""]
    return "\n".join(lines)


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the run's folder; return their paths."""
    layout = RunLayout(Path(run))
    context = report_context(layout.root)
    write_text_atomic(layout.report_html, render_html(context))
    write_text_atomic(layout.report_markdown, render_markdown(context))
    return layout.report_html, layout.report_markdown
