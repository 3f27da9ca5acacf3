"""The HTML and Markdown report, and `kdmem report` / `kdmem compare`."""

import json
import os
import re
from pathlib import Path

import pandas as pd

from kdmem import cli
from kdmem.report.html import EXAMPLES_SHOWN, report_context, write_report

from .browser import render_page, require_browser
from .conftest import HOSTILE_NAME

SECTIONS = [
    "findings",
    "paper-findings",
    "headline",
    "overlaps",
    "seed-consistency",
    "features",
    "predictor",
    "mechanism",
    "temperature",
    "soft-vs-hard",
    "cross-scale",
    "cross-family",
    "filtering",
    "prefix-curve",
    "membership",
    "canaries",
    "examples",
    "provenance",
]
ARTIFACTS = Path(os.environ.get("KDMEM_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def test_the_run_writes_a_self_contained_report(hostile_run):
    _, out, summary = hostile_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', page) == SECTIONS
    assert "<script" not in page and "<img src=x" not in page  # no script of ours, no payload as markup
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: every image is a data URI
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(figures)
    for stem in (
        "venn_soft",
        "seed_consistency_soft",
        "temperature_sweep",
        "prefix_curve",
        "membership_roc",
        "canary_exposure",
    ):
        assert stem in figures
    # The predictor's ROC is drawn exactly when a student's predictor was scored on held-out
    # examples; when none was (tiny students memorize too few), the page says why instead.
    predictors = json.loads((out / "analysis.json").read_text())["predictor"]
    scored = [kind for kind, result in predictors.items() if "skipped" not in result["all_remaining_examples"]]
    assert ("predictor_roc" in figures) == bool(scored), scored
    if not scored:
        assert "No data for this section: needs at least" in page
    for name, row in summary["models"].items():  # the headline table holds every model's numbers
        assert f"<td>{name}</td><td>{row['memorized']} / {row['examples']}</td>" in page
    # the training text's markup shows as text: escaped once, not twice
    assert "&lt;script&gt;window.__kdmem_pwned=" in page and "&amp;lt;" not in page
    markdown = (out / "report.md").read_text(encoding="utf-8")
    # the headline table, then the paper's findings (rows 1 to 10 and 9b)
    assert markdown.count("\n| ") == (1 + len(summary["models"])) + (1 + 12)
    # Markdown renderers pass HTML through: the run's name (data) is backslash-escaped, never entity-escaped
    assert (
        "## Key findings" in markdown and "# kdmem report: \\<script\\>window" in markdown and "&lt;" not in markdown
    )
    assert "soft student's" in markdown and "&#x27;" not in markdown


def test_sections_without_data_say_why(finished_run, tmp_path):
    _, out, _ = finished_run
    context = report_context(out)
    context["analysis"]["seed_consistency"] = {"skipped": "one seed only; set seeds=[0,1,2] for the heatmap"}
    for key in ("prefix_curve", "membership_roc", "canaries"):
        del context["analysis"][key]  # as in an analysis written before these sections existed
    from kdmem.report.html import render_html

    page = render_html(context)
    assert re.findall(r'<section id="([^"]+)"', page) == SECTIONS
    assert "No data for this section: one seed only" in page
    assert "No data for this section: no canaries planted" not in page  # finished_run plants none ...
    assert page.count("predates") == 3  # ... but here the analysis lacks the three sections


def test_most_memorized_examples_split_the_suffix_at_the_reproduced_span(finished_run):
    from kdmem.models import load_tokenizer

    _, out, summary = finished_run
    examples = report_context(out)["examples"]
    assert len(examples) == EXAMPLES_SHOWN
    tokenizer = load_tokenizer(str(out / "models" / "teacher"))
    train = pd.read_parquet(out / "data" / "train.parquet").set_index("example_id")
    ext = summary["extraction"]
    counts = [len(e["memorized_by"]) for e in examples]
    assert counts == sorted(counts, reverse=True)
    for example in examples:
        ids = train.loc[example["example_id"], "input_ids"].tolist()
        assert example["prefix"] == tokenizer.decode(ids[: ext["prefix_len"]])
        verdicts = pd.read_parquet(out / "memorization" / f"{example['best_model']}.parquet").set_index("example_id")
        assert example["matched"] == verdicts.loc[example["example_id"], "matched_tokens"]
        suffix = ids[ext["prefix_len"] : ext["prefix_len"] + ext["suffix_len"]]
        assert example["reproduced"] == tokenizer.decode(suffix[: example["matched"]])
        if example["memorized_by"]:
            assert example["matched"] == ext["suffix_len"] and example["rest"] == ""


def test_report_and_compare_commands(finished_run, hostile_run, tmp_path, capsys):
    _, out, summary = finished_run
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "report.md").exists()
    _, hostile, _ = hostile_run
    target = tmp_path / "compare.json"
    assert cli.main(["compare", str(out), str(hostile), "--json", str(target)]) == 0
    printed = capsys.readouterr().out
    comparison = json.loads(target.read_text())
    assert list(comparison["runs"]) == [str(out), str(hostile)] and len(comparison["pairs"]) == 1
    pair = comparison["pairs"][0]
    assert pair["same_tokenizer"] and pair["shared_examples"] == 0  # same tokenizer, different text
    assert (
        f"{summary['models']['teacher']['memorized']:>12d} / {summary['models']['teacher']['examples']:<5d}" in printed
    )
    assert cli.main(["compare", str(out)]) == 2
    assert "needs two or more run folders" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "no analysed run" in capsys.readouterr().err


def test_report_in_headless_chromium(hostile_run):
    """Every section renders, nothing errs or is fetched, and the payloads in the training text and
    the run's name show as text and run nothing."""
    require_browser()
    _, out, _ = hostile_run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    page = render_page(out / "report.html", screenshot=screenshot)
    assert page.section_ids == SECTIONS
    assert page.console_errors == [] and page.page_errors == [] and page.dialogs == []
    assert page.blocked_requests == [] and page.broken_images == []
    assert page.script_count == 0 and page.window_flags is None  # no payload ran
    assert (
        HOSTILE_NAME in page.title
        and "<img src=x onerror=" in page.text
        and "<script>window.__kdmem_pwned=" in page.text
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rewriting_the_report_replaces_it(finished_run):
    _, out, _ = finished_run
    html, markdown = write_report(out)
    before = html.read_text(encoding="utf-8")
    html.write_text("stale", encoding="utf-8")
    write_report(out)
    assert html.read_text(encoding="utf-8") == before and markdown.exists()
