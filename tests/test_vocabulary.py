"""Two models of one family whose embedding matrices are padded to different sizes, as
Pythia-12B (50,688 rows) and Pythia-1.4B (50,304) are for one tokenizer of 50,277 tokens: here
544 and 528 rows for the tests' 512-token tokenizer. Every place where their logits meet compares
them over the shared 528."""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdmem.analysis.features import model_features
from kdmem.config import SoftDistillConfig, TinySizeConfig
from kdmem.data import as_tensor
from kdmem.losses import distillation_loss, on_shared_vocabulary
from kdmem.models import build_model, load_tokenizer
from kdmem.train import distill
from kdmem.train.trainers import DistillationTrainer

from .test_train import _sgd, largest_difference

TEACHER_ROWS, STUDENT_ROWS = 544, 528


@pytest.fixture(scope="module")
def padded_pair(tiny_bases):
    tokenizer = load_tokenizer(str(tiny_bases["teacher"]))
    assert len(tokenizer) <= STUDENT_ROWS
    torch.manual_seed(0)
    teacher = build_model(TinySizeConfig(layers=2, hidden=64), TEACHER_ROWS, 64, tokenizer).eval()
    student = build_model(TinySizeConfig(layers=2, hidden=32), STUDENT_ROWS, 64, tokenizer).eval()
    return teacher, student, tokenizer


def test_shared_vocabulary_is_the_smaller_matrix():
    a, b = torch.zeros(2, 3, 544), torch.zeros(2, 3, 528)
    assert [x.shape[-1] for x in on_shared_vocabulary(a, b)] == [528, 528]
    assert on_shared_vocabulary(a, b)[0].data_ptr() == a.data_ptr()  # a view, not a copy


def test_features_compare_teacher_and_baseline_over_the_shared_vocabulary(padded_pair, tiny_data):
    """Before the fix: RuntimeError, the size of tensor a (544) must match the size of tensor b (528)."""
    teacher, baseline, tokenizer = padded_pair
    rows = tiny_data.train.iloc[:6]
    features = model_features({"teacher": teacher, "baseline": baseline}, rows, tokenizer, last_k=8, batch_size=4)
    ids = as_tensor(rows)[:, :-1]
    with torch.no_grad():
        p = F.log_softmax(teacher(ids).logits[..., :STUDENT_ROWS].double(), -1)
        q = F.log_softmax(baseline(ids).logits.double(), -1)
    expected = (p.exp() * (p - q)).sum(-1).mean(-1)
    torch.testing.assert_close(
        torch.tensor(features["teacher_baseline_kl"].values, dtype=torch.float64), expected, rtol=1e-4, atol=1e-6
    )
    assert (features["teacher_baseline_kl"] > 0).all()


def test_soft_distillation_from_a_wider_teacher_reads_the_shared_vocabulary(
    padded_pair, tiny_data, tmp_path, monkeypatch
):
    teacher, student, _ = padded_pair
    rows = tiny_data.train.iloc[:8]
    seen = []
    exact = DistillationTrainer._divergence

    def recorded(self, student_logits, *args):
        seen.append(student_logits.shape[-1])
        return exact(self, student_logits, *args)

    monkeypatch.setattr(DistillationTrainer, "_divergence", recorded)
    trained = distill(
        copy.deepcopy(student), teacher, rows, SoftDistillConfig(training=_sgd(8)), tmp_path / "soft", seed=0
    )
    assert seen == [STUDENT_ROWS]
    assert largest_difference(trained.state_dict(), student.state_dict()) > 1e-3
    ids = as_tensor(rows)
    with torch.no_grad():
        loss = distillation_loss(trained(ids).logits[:, :-1], teacher(ids).logits[:, :-1, :STUDENT_ROWS])
    assert torch.isfinite(loss)


def test_hard_kd_data_holds_only_ids_the_student_has(padded_pair, tiny_data):
    """Found by rehearsing the Pythia config: a teacher with 50,688 rows generated ids its 50,304-row
    student has no embedding for, and the hard student died on an IndexError. Now the continuation
    is greedy over the shared rows: each generated token is the argmax of the first 528 logits."""
    from kdmem.models.decoding import greedy_continuations

    teacher, _, _ = padded_pair
    starts = as_tensor(tiny_data.train.iloc[:16])
    free = greedy_continuations(teacher, starts, 8, 40, batch_size=8)
    assert (free[:, 8:] >= STUDENT_ROWS).any()  # unrestricted, the random teacher writes padded-row ids
    shared = greedy_continuations(teacher, starts, 8, 40, batch_size=8, vocab_size=STUDENT_ROWS)
    assert int(shared.max()) < STUDENT_ROWS
    with torch.no_grad():
        logits = teacher(shared[:, :-1]).logits[:, 7:, :STUDENT_ROWS]
    assert torch.equal(logits.argmax(-1), shared[:, 8:])
