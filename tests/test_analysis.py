import json
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest

from kdmem import cli
from kdmem.analysis.analyze import ANALYSES, analyze, predict
from kdmem.analysis.features import model_features
from kdmem.config import DataConfig
from kdmem.data import as_tensor, zlib_entropy
from kdmem.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def hand_run(finished_run, tmp_path_factory):
    """The finished tiny run, with memorized sets replaced by hand-chosen ones (real models, known sets)."""
    _, source, _ = finished_run
    out = tmp_path_factory.mktemp("hand") / "run"
    shutil.copytree(source, out)
    # without the run's own filtering, which the filtering tests redo on the hand-made sets
    (out / "filtering.json").unlink(missing_ok=True)
    for filtered in {
        *out.glob("*/hard-filtered*"),
        *out.glob("stages/*hard-filtered*"),
        out / "stages" / "filtering.json",
    }:
        shutil.rmtree(filtered) if filtered.is_dir() else filtered.unlink()
    ids = list(pd.read_parquet(out / "data" / "train.parquet")["example_id"])
    sets = {
        "teacher": ids[0:20],
        "baseline": ids[10:30],
        "baseline-seed1": ids[12:32],
        "soft": ids[12:16] + ids[0:2],  # 4 easy, 2 inherited
        "soft-seed1": ids[14:18] + ids[40:41],  # 4 easy (2 shared with seed 0), 1 student-only
        "hard": ids[0:10] + ids[10:18],  # 10 inherited, 8 easy
        "hard-seed1": ids[5:15],
        "soft-T1": ids[0:3],
        "soft-T4": [],
    }
    for name, members in sets.items():  # the verdicts replaced, the other columns kept (the report reads them)
        frame = pd.read_parquet(out / "memorization" / f"{name}.parquet").assign(
            memorized=[i in set(members) for i in ids]
        )
        frame.to_parquet(out / "memorization" / f"{name}.parquet", index=False)
    return out, ids, {name: set(members) for name, members in sets.items()}


def test_analysis_counts_match_the_hand_built_sets(hand_run):
    out, ids, sets = hand_run
    result = analyze(out, repeats=5)
    assert json.loads((out / "analysis.json").read_text()) == json.loads(json.dumps(result))
    assert list(result) == ["examples", "seeds", *(key for key, _ in ANALYSES)]  # one key per analysis, in order
    soft = result["overlap"]["soft"]
    assert (soft["easy"], soft["inherited"], soft["suppressed"], soft["t_b_s"]) == (10, 2, 6, 4)
    assert soft["share_easy"] == pytest.approx(4 / 6) and soft["share_inherited"] == pytest.approx(2 / 6)
    assert soft["teacher_only"] == 10 and soft["student_only"] == 0
    seed1 = result["overlap"]["soft-seed1"]  # against baseline-seed1 (ids 12..31)
    assert (seed1["easy"], seed1["t_b_s"], seed1["student_only"]) == (8, 4, 1)
    union = result["overlap"]["soft_union"]  # soft seeds 0..1 union vs baselines' union (ids 10..31)
    assert (union["student"], union["t_b_s"], union["inherited"], union["student_only"]) == (9, 6, 2, 1)
    hard = result["overlap"]["hard"]
    assert (hard["inherited"], hard["t_b_s"], hard["inherited_share_of_teacher_only"]) == (10, 8, 1.0)
    heatmap = np.array(result["seed_consistency"]["soft"])
    assert heatmap.sum() == len(ids) and heatmap[2, 2] == 2  # ids 14, 15: both baselines, both soft seeds
    assert heatmap[0, 1] == 2 + 1  # ids 0, 1 (seed 0) and 40 (seed 1): no baseline
    versus = result["soft_vs_hard"]  # union over seeds: hard ids 0..17, soft {0, 1, 12..17, 40}, baselines 10..31
    assert (versus["hard_only"], versus["inherited_soft"], versus["inherited_hard"]) == (10, 2, 10)
    assert result["seeds"] == 2
    assert versus["inherited_ratio_hard_over_soft"] == 5.0
    sweep = result["temperature_sweep"]
    assert [row["temperature"] for row in sweep] == [1.0, 2.0, 4.0]
    assert [row["model"] for row in sweep] == ["soft-T1", "soft", "soft-T4"]
    assert result["mechanism"]["soft"]["suppressed"] == 6
    for stem in (
        "venn_soft",
        "venn_hard_union",
        "seed_consistency_soft",
        "zlib_vs_baseline_ppl",
        "mechanism_soft",
        "temperature_sweep",
    ):
        for suffix in (".png", ".svg"):
            assert (out / "figures" / (stem + suffix)).stat().st_size > 1000


def test_features_and_categories(hand_run):
    out, ids, sets = hand_run
    analyze(out, repeats=5)
    features = pd.read_parquet(out / "features.parquet")
    assert list(features["example_id"]) == ids and not any(
        c.startswith(("memorized_", "category_")) for c in features
    )  # never rewritten
    labels = pd.read_parquet(out / "categories.parquet")
    assert list(labels["example_id"]) == ids
    category = dict(zip(labels["example_id"], labels["category_soft"], strict=True))
    assert category[ids[0]] == "inherited" and category[ids[12]] == "t_b_s" and category[ids[10]] == "suppressed"
    assert category[ids[25]] == "baseline_only" and category[ids[45]] == "none"
    assert labels["memorized_hard"].sum() == 18
    tokenizer = load_tokenizer(str(out / "models" / "teacher"))
    train = pd.read_parquet(out / "data" / "train.parquet")
    assert features["zlib_entropy"][3] == zlib_entropy(tokenizer.decode(list(train["input_ids"][3])))


def test_model_features_equal_a_direct_computation(finished_run):
    _, out, _ = finished_run
    train = pd.read_parquet(out / "data" / "train.parquet").iloc[:6]
    tokenizer = load_tokenizer(str(out / "models" / "teacher"))
    teacher, baseline = load_model(str(out / "models" / "teacher")), load_model(str(out / "models" / "baseline"))
    # a 256-token look-alike of the paper's split: suffix tokens 7..12 of 32, far from the last 5
    features = model_features(
        {"teacher": teacher, "baseline": baseline}, train, tokenizer, last_k=5, suffix_span=(6, 6), batch_size=4
    )
    import torch

    ids = as_tensor(train)
    with torch.no_grad():
        t_logits, b_logits = teacher(ids).logits[:, :-1], baseline(ids).logits[:, :-1]
    t_log, b_log = t_logits.log_softmax(-1), b_logits.log_softmax(-1)
    for i in range(len(train)):
        token_lp = t_log[i].gather(-1, ids[i, 1:, None]).squeeze(-1)
        assert features["teacher_log_prob"][i] == pytest.approx(token_lp.sum().item(), rel=1e-4)
        assert features["teacher_ppl"][i] == pytest.approx(torch.exp(-token_lp.mean()).item(), rel=1e-4)
        entropy = -(t_log[i].exp() * t_log[i]).sum(-1)
        assert features["teacher_entropy_last_k"][i] == pytest.approx(entropy[-5:].mean().item(), rel=1e-4)
        assert features["teacher_entropy_suffix"][i] == pytest.approx(
            entropy[5:11].mean().item(), rel=1e-4
        )  # predicting tokens 6..11 (0-based)
        assert features["teacher_entropy_suffix"][i] != pytest.approx(features["teacher_entropy_last_k"][i], rel=1e-4)
        kl = (t_log[i].exp() * (t_log[i] - b_log[i])).sum(-1).mean()
        assert features["teacher_baseline_kl"][i] == pytest.approx(kl.item(), rel=1e-4)


def test_predict_scores_new_data_and_the_cli(hand_run, tmp_path, capsys):
    out, ids, sets = hand_run
    analyze(out, repeats=5)
    risk = predict(
        out, DataConfig(source=str(out / "data" / "validation.parquet"), validation_examples=0), student="hard"
    )
    assert len(risk) == 16
    # the risk is a logistic regression's predict_proba, refitted here by hand on the run's features
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    known = pd.read_parquet(out / "features.parquet")
    columns = ["teacher_ppl", "baseline_ppl", "teacher_baseline_kl", "zlib_entropy"]
    hard = set().union(
        *(
            set(pd.read_parquet(out / "memorization" / f"{name}.parquet").query("memorized")["example_id"])
            for name in ("hard", "hard-seed1")
        )
    )
    refit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        known[columns].to_numpy(float), known["example_id"].isin(hard)
    )
    np.testing.assert_allclose(risk["risk"], refit.predict_proba(risk[columns].to_numpy(float))[:, 1], rtol=1e-9)
    assert risk["risk"].std() > 0  # it tells the sequences apart
    target = tmp_path / "risk.parquet"
    args = [
        "predict",
        str(out),
        "--data",
        str(out / "data" / "validation.parquet"),
        "--student",
        "hard",
        "--teacher-only",
        "-o",
        str(target),
    ]
    assert cli.main(args) == 0
    assert "scored 16 sequences" in capsys.readouterr().out
    assert set(pd.read_parquet(target).columns) == {"example_id", "risk", "teacher_ppl", "zlib_entropy"}
    assert cli.main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_key_findings_use_the_union_over_seeds_and_say_so(hand_run):
    """The paper's 95.7%, 18 of 1,955 and 696 are unions over 3 seeds; the first seed alone would
    give the soft student 6 suppressed here, the union 4 (teacher and both baselines: 10, 11, 18, 19)."""
    from kdmem.report.findings import key_findings

    out, _, _ = hand_run
    result = analyze(out, repeats=5)
    sentences = key_findings(json.loads((out / "summary.json").read_text()), result)
    soft = next(line for line in sentences if "of the soft student's memorized examples are easy" in line)
    assert "suppresses 4 " in soft and "union over 2 seeds" in soft
    assert any(
        "Hard distillation inherits 10 teacher-specific examples, soft 2" in line and "union over 2 seeds" in line
        for line in sentences
    )


def test_predict_for_a_student_that_memorized_nothing_says_so(hand_run, tmp_path, capsys):
    """Before: scikit-learn's "needs samples of at least 2 classes" leaked out."""
    source, ids, _ = hand_run
    analyze(source, repeats=5)
    out = tmp_path / "run"
    shutil.copytree(source, out)
    for name in ("soft", "soft-seed1"):
        pd.DataFrame({"example_id": ids, "memorized": False}).to_parquet(
            out / "memorization" / f"{name}.parquet", index=False
        )
    assert (
        cli.main(
            [
                "predict",
                str(out),
                "--data",
                str(out / "data" / "validation.parquet"),
                "--student",
                "soft",
                "-o",
                str(tmp_path / "r.parquet"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "soft student" in err and "memorized no example" in err and "--student hard" in err and "2 classes" not in err
    )


@pytest.mark.parametrize("student, recall", [("soft", 0.99), ("hard", 0.25)])
def test_filtering_removes_flagged_examples_and_distills_again(hand_run, tmp_path, student, recall):
    from kdmem.config import load_config, save_config
    from kdmem.pipeline import run

    source, ids, sets = hand_run
    out = tmp_path / "filtered"
    shutil.copytree(source, out)
    for stale in ("summary.json", "analysis.json"):
        (out / stale).unlink()
    config = load_config(
        out / "config.yaml",
        overrides=["filtering.enabled=true", f"filtering.student={student}", f"filtering.target_recall={recall}"],
    )
    save_config(config, out / "config.yaml")  # as if the run had been configured so from the start
    summary = run(config, out)
    flagging = json.loads((out / "filtering.json").read_text())
    removed = set(flagging["removed_ids"])
    assert flagging["flagged"] == len(removed) > 0 and flagging["memorized"] == len(
        sets[student] | sets[f"{student}-seed1"]
    )
    name = f"{student}-filtered"
    assert name in summary["models"]
    after = pd.read_parquet(out / "memorization" / f"{name}.parquet")
    assert list(after["example_id"]) == ids  # audited on all of D, removed examples included
    info = json.loads((out / "models" / name / "kdmem_stage.json").read_text())
    assert info["stage"] == student
    report = json.loads((out / "analysis.json").read_text())["filtering"]
    assert report["student"] == student and report["model"] == name
    assert report["memorized_before"] == len(sets[student]) and report["flagged"] == len(removed)
    assert report["val_loss_after"] == summary["models"][name]["val_loss"]
    assert report["val_loss_cost"] == pytest.approx(report["val_loss_after"] - report["val_loss_before"])


def test_compare_runs_overlaps_by_example_id_under_one_tokenizer(finished_run, hand_run):
    from kdmem.analysis.compare import compare_runs

    _, plain, _ = finished_run
    hand, ids, sets = hand_run
    result = compare_runs(plain, hand)
    assert result["same_tokenizer"] and result["matched_by"] == "example id" and result["shared_examples"] == len(ids)
    plain_teacher = set(pd.read_parquet(plain / "memorization" / "teacher.parquet").query("memorized")["example_id"])
    assert result["overlap"]["teacher"]["both"] == len(plain_teacher & sets["teacher"])
    assert result["overlap"]["hard"]["b"] == len(sets["hard"])
    assert result["zlib_pearson"] == pytest.approx(1.0)  # one tokenizer, one text per example: identical estimates


def test_compare_two_tokenizers_over_the_same_documents(tiny_bases, tmp_path):
    """Two runs whose tokenizers differ (512 and 448 tokens) over the same documents, each
    document-aligned: they share their examples by document, and the zlib correlation is measured
    from each run's own text. Packed the usual way, the same two runs share next to nothing, and
    say why."""
    from kdmem.analysis.compare import compare_runs
    from kdmem.config import load_config
    from kdmem.pipeline import run

    from .conftest import TINY_OVERRIDES

    def tiny_run(name, vocab, packing):
        overrides = TINY_OVERRIDES + [
            f"embedded.vocab_size={vocab}",
            f"data.packing={packing}",
            "soft.sweep_temperatures=[]",
        ]
        run(load_config(preset="smoke", overrides=overrides), tmp_path / name)
        return tmp_path / name

    a, b = tiny_run("a", 512, "documents"), tiny_run("b", 448, "documents")
    result = compare_runs(a, b)
    train_a, train_b = (pd.read_parquet(run / "data" / "train.parquet") for run in (a, b))
    shared = set(train_a["example_id"]) & set(train_b["example_id"])
    assert not result["same_tokenizer"] and result["document_aligned"] and result["matched_by"] == "example id"
    assert result["shared_examples"] == len(shared) > 0.5 * len(train_a)

    # Written out here: each run's own text of every shared document, compressed, then correlated.
    # Measured on two texts per example, not one re-tokenized, so not 1; the same documents, so
    # clearly positive.
    def compressed(run, train):
        tokenizer = load_tokenizer(str(run / "models" / "teacher"))
        return pd.Series(
            {
                i: len(zlib.compress(tokenizer.decode(list(ids)).encode()))
                for i, ids in zip(train["example_id"], train["input_ids"], strict=True)
            }
        )

    by_hand = pd.concat([compressed(a, train_a), compressed(b, train_b)], axis=1, join="inner")
    expected = np.corrcoef(by_hand[0], by_hand[1])[0, 1]
    assert len(by_hand) == len(shared) and result["zlib_pearson"] == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 0.999, expected
    teacher_a, teacher_b = (
        set(pd.read_parquet(run / "memorization" / "teacher.parquet").query("memorized")["example_id"])
        for run in (a, b)
    )
    assert result["overlap"]["teacher"]["both"] == len(teacher_a & teacher_b)
    packed = compare_runs(a, tiny_run("c", 448, "concatenate"))
    assert packed["matched_by"] == "decoded text" and "data.packing=documents" in packed["note"]


def test_filtering_that_cannot_flag_is_skipped_with_the_reason(hand_run, tmp_path):
    from kdmem.config import load_config, save_config
    from kdmem.pipeline import run

    source, _, _ = hand_run
    out = tmp_path / "unfilterable"
    shutil.copytree(source, out)
    for stale in ("summary.json", "analysis.json"):
        (out / stale).unlink()
    # features that tell no example from another: every example gets one risk, so recall 0.99 flags them all
    from kdmem.analysis.predictor import FEATURES

    features = pd.read_parquet(out / "features.parquet")
    features[list(FEATURES)] = 1.0
    features.to_parquet(out / "features.parquet", index=False)
    config = load_config(out / "config.yaml", overrides=["filtering.enabled=true", "filtering.student=hard"])
    save_config(config, out / "config.yaml")
    summary = run(config, out)
    assert "hard-filtered" not in summary["models"] and not (out / "models" / "hard-filtered").exists()
    report = json.loads((out / "analysis.json").read_text())["filtering"]
    assert report["student"] == "hard" and "flags all 48 examples" in report["skipped"]


def test_the_roc_chance_line_is_y_equals_x_on_a_log_axis_too():
    """Drawn before as one segment from (1e-3, 0.001) to (1, 1): on a log FPR axis that bows, and
    an AUC-0.78 classifier looked worse than chance. Dense points keep it y = x on both axes."""
    from kdmem.analysis.figures import chance_line

    x, y = chance_line(1e-3)
    assert np.array_equal(x, y) and x[0] == pytest.approx(1e-3) and x[-1] == 1
    # evenly spaced in log FPR: no segment long enough to bow visibly on the log axis
    assert np.allclose(np.diff(np.log10(x)), 3 / (len(x) - 1)) and len(x) >= 100


def test_log_axes_label_their_ticks_as_plain_numbers(monkeypatch, tmp_path):
    """Before: the perplexity axis read 2×10^0, 3×10^0 (matplotlib's log-axis labels), and the
    canary axis 2^0, 2^2, 2^4. The same ticks are labelled, written 2, 3, 10 and 1, 4, 16."""
    from kdmem.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, stem: drawn.append(figure))

    def labels(axis) -> list[str]:
        """The tick labels shown inside the axis's view, major and minor."""
        axis.figure.canvas.draw()
        low, high = sorted(axis.get_view_interval())
        ticks = axis.get_major_ticks() + axis.get_minor_ticks()
        return [t.label1.get_text() for t in ticks if t.label1.get_text() and low <= t.get_loc() <= high]

    rng = np.random.default_rng(0)
    features = pd.DataFrame({"zlib_entropy": rng.uniform(60, 100, 40), "baseline_ppl": np.geomspace(1.5, 30, 40)})
    figures.zlib_vs_perplexity(features, np.arange(40) < 5, tmp_path / "zlib")
    shown = labels(drawn[-1].axes[0].yaxis)
    assert {"2", "3", "10", "20"} <= set(shown), shown
    assert all(text.replace(".", "").isdigit() for text in shown), shown  # no ×, ^ or mathtext
    exposure = pd.DataFrame({"model": ["teacher"] * 3, "repeats": [1, 4, 16], "exposure": [1.0, 3.0, 9.0]})
    figures.canary_exposure(exposure, tmp_path / "canaries")
    shown = labels(drawn[-1].axes[0].xaxis)
    assert {"1", "4", "16"} <= set(shown) and all(text.isdigit() for text in shown), shown
