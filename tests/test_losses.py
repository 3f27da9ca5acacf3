import math

import pytest
import torch

from kdmem.losses import SOFT_KINDS, distillation_loss


@pytest.fixture(autouse=True)
def on_the_test_device(device):
    """Every tensor these tests make is made on the test device (the GPU under gpu_check.sh)."""
    previous = torch.get_default_device()
    torch.set_default_device(device)
    yield
    torch.set_default_device(previous)


def textbook(student, teacher, kind, temperature, beta=0.5):
    """One token at a time, in float64, straight from the definitions."""
    values = []
    for s_row, t_row in zip(
        student.double().reshape(-1, student.shape[-1]), teacher.double().reshape(-1, teacher.shape[-1]), strict=True
    ):
        p_s = [math.exp(v / temperature) for v in s_row.tolist()]
        p_t = [math.exp(v / temperature) for v in t_row.tolist()]
        z_s, z_t = sum(p_s), sum(p_t)
        p_s = [v / z_s for v in p_s]
        p_t = [v / z_t for v in p_t]
        if kind == "forward_kl":
            value = sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
        elif kind == "reverse_kl":
            value = sum(s * math.log(s / t) for t, s in zip(p_t, p_s, strict=True))
        elif kind == "jsd":
            m = [beta * t + (1 - beta) * s for t, s in zip(p_t, p_s, strict=True)]
            value = beta * sum(t * math.log(t / mm) for t, mm in zip(p_t, m, strict=True)) + (1 - beta) * sum(
                s * math.log(s / mm) for s, mm in zip(p_s, m, strict=True)
            )
        else:
            value = 0.5 * sum(abs(t - s) for t, s in zip(p_t, p_s, strict=True))
        values.append(value * temperature**2)
    return torch.tensor(values, dtype=torch.float64).reshape(student.shape[:-1])


@pytest.mark.parametrize("kind", SOFT_KINDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_matches_textbook_with_mask(kind, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 11) * 3, torch.randn(3, 5, 11) * 3
    mask = torch.rand(3, 5) > 0.4
    expected = textbook(student, teacher, kind, temperature, beta=0.3)
    got = distillation_loss(student, teacher, kind, temperature, mask, jsd_beta=0.3, chunk_size=4)
    assert got.item() == pytest.approx(expected[mask].mean().item(), rel=1e-5, abs=1e-6)
    per_token = distillation_loss(student, teacher, kind, temperature, mask, jsd_beta=0.3, reduction="none")
    torch.testing.assert_close(per_token.double(), torch.where(mask, expected, 0.0), rtol=1e-5, atol=1e-6)
    total = distillation_loss(student, teacher, kind, temperature, mask, jsd_beta=0.3, reduction="sum")
    assert total.item() == pytest.approx(expected[mask].sum().item(), rel=1e-5)


def test_unmasked_mean_and_zero_when_equal():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    expected = textbook(student, teacher, "forward_kl", 2.0).mean().item()
    assert distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    for kind in SOFT_KINDS:
        assert distillation_loss(teacher, teacher, kind).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", SOFT_KINDS)
def test_chunked_gradient_equals_unchunked(kind):
    torch.manual_seed(2)
    teacher = torch.randn(4, 6, 13)
    grads = []
    for chunk_size in (1, 5, 10_000):
        student = (
            torch.randn(4, 6, 13, generator=torch.Generator(device=torch.get_default_device()).manual_seed(3))
        ).requires_grad_()
        distillation_loss(student, teacher, kind, 2.0, chunk_size=chunk_size).backward()
        grads.append(student.grad)
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])


def test_forward_kl_gradient_is_softmax_difference():
    # d/dz_s of T^2 KL(p_t || p_s) = T * (p_s - p_t) per token; averaged over tokens.
    torch.manual_seed(4)
    student, teacher = torch.randn(1, 3, 5, requires_grad=True), torch.randn(1, 3, 5)
    temperature = 3.0
    distillation_loss(student, teacher, temperature=temperature).backward()
    expected = temperature * (torch.softmax(student / temperature, -1) - torch.softmax(teacher / temperature, -1)) / 3
    torch.testing.assert_close(student.grad, expected.detach())


def test_bfloat16_inputs_computed_in_float32():
    torch.manual_seed(5)
    student, teacher = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    low = distillation_loss(student.bfloat16(), teacher.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(
        distillation_loss(student.bfloat16().float(), teacher.bfloat16().float()).item(), rel=1e-6
    )


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocabulary sizes are 9 .student. and 8 .teacher."):
        distillation_loss(torch.randn(2, 9), torch.randn(2, 8))
    with pytest.raises(ValueError, match="Unknown distillation loss kind"):
        distillation_loss(torch.randn(2, 9), torch.randn(2, 9), kind="kl")
    with pytest.raises(ValueError, match="jsd_beta"):
        distillation_loss(torch.randn(2, 9), torch.randn(2, 9), kind="jsd", jsd_beta=0.0)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.randn(2, 9), torch.randn(2, 9), temperature=0)


def sampled_teacher(
    teacher: torch.Tensor, k: int, samples: int, temperature: float, seed: int, temperatures=(1.0, 2.0, 3.0, 4.0)
):
    """The cache's own sampler and estimator (``sampled_entries``, ``importance_sampled_teacher``) on
    (..., V) logits."""
    from kdmem.losses import importance_sampled_teacher
    from kdmem.train.teacher_cache import CacheSpec, sampled_entries

    spec = CacheSpec("t", 1, 2, teacher.shape[-1], k, 1, (), tail_samples=samples, temperatures=temperatures)
    entries = sampled_entries(teacher, spec, torch.Generator(device=torch.get_default_device()).manual_seed(seed))
    column = temperatures.index(temperature)
    return importance_sampled_teacher(
        entries["top_logits"],
        entries["top_ids"],
        entries["tail_logits"],
        entries["tail_ids"],
        entries["tail_log_proposal"],
        entries["log_partition"][..., column],
        temperature,
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_sampled_forward_kl_is_exact_without_a_tail(temperature):
    """k = V: every token is a top-k entry with its exact probability; value and gradient equal the full loss."""
    from kdmem.losses import sampled_forward_kl

    torch.manual_seed(6)
    vocab = 50
    student, teacher = torch.randn(3, 4, vocab) * 2, torch.randn(3, 4, vocab) * 3
    mask = torch.rand(3, 4) > 0.3
    ids, log_probs, weights = sampled_teacher(teacher, vocab, 16, temperature, seed=0)
    assert ids.shape[-1] == vocab  # no tail samples where there is no tail
    fused = student.clone().requires_grad_()
    sampled_forward_kl(fused, ids, log_probs, weights, temperature, mask, chunk_size=5).backward()
    exact = student.clone().requires_grad_()
    distillation_loss(exact, teacher, temperature=temperature, mask=mask).backward()
    torch.testing.assert_close(fused.grad, exact.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Shapes do not match"):
        sampled_forward_kl(torch.randn(2, 11), ids[0, :2], log_probs[0, :2, :3], weights[0, :2])


def test_sampled_forward_kl_gradient_equals_autograd_of_its_formula():
    """The fused gradient T (S p_s - p_hat), with repeated sample ids, against autograd through
    T^2 sum_j w_j (log p_T(id_j) - log p_s(id_j))."""
    from kdmem.losses import sampled_forward_kl

    torch.manual_seed(10)
    vocab, temperature = 40, 2.0
    teacher = torch.randn(2, 5, vocab) * 3
    ids, log_probs, weights = sampled_teacher(teacher, 6, 8, temperature, seed=1)
    assert (ids[..., 6:].unsqueeze(-1) == ids[..., 6:].unsqueeze(-2)).sum() > ids[
        ..., 6:
    ].numel()  # some samples repeat
    base = torch.randn(2, 5, vocab)
    fused = base.clone().requires_grad_()
    sampled_forward_kl(fused, ids, log_probs, weights, temperature, reduction="sum", chunk_size=3).backward()
    obvious = base.clone().requires_grad_()
    log_s = torch.log_softmax(obvious / temperature, -1).gather(-1, ids.long())
    ((weights * (log_probs - log_s)).sum() * temperature**2).backward()
    torch.testing.assert_close(fused.grad, obvious.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_sampled_teacher_is_unbiased_at_every_temperature_it_serves(temperature):
    """Averaged over 4,000 independent caches, the estimated teacher distribution and the loss
    gradient equal the exact ones within 5 standard errors, element by element. The uniform tail
    it replaces misses by more than 20 standard errors at T = 2 and 4."""
    from kdmem.losses import sampled_forward_kl

    torch.manual_seed(11)
    vocab, k, samples, draws = 30, 4, 4, 4000
    teacher, student = torch.randn(3, vocab) * 2.5, torch.randn(3, vocab)
    exact_p = torch.softmax(teacher / temperature, -1)
    exact = student.clone().requires_grad_()
    distillation_loss(exact, teacher, temperature=temperature, reduction="sum").backward()
    # Each of the draws x 3 rows gets its own samples: one call draws every cache at once.
    ids, log_probs, weights = sampled_teacher(
        teacher.expand(draws, -1, -1).contiguous(), k, samples, temperature, seed=0
    )
    estimates = torch.zeros(draws, 3, vocab).scatter_add_(-1, ids.long(), weights)
    drawn = student.expand(draws, -1, -1).clone().requires_grad_()
    sampled_forward_kl(drawn, ids, log_probs, weights, temperature, reduction="sum").backward()
    for values, truth in ((estimates, exact_p), (drawn.grad, exact.grad)):
        error = (values.mean(0) - truth).abs()
        standard_error = values.std(0) / draws**0.5
        assert (error <= 5 * standard_error + 1e-6).all()  # 1e-6: float rounding of the exact top-k entries
    if temperature > 1:  # the uniform tail: T = 1 tail mass spread evenly, then softened
        top, top_ids = teacher.topk(k, -1)
        lse = torch.logsumexp(teacher, -1)
        tail = lse + torch.log1p(-torch.exp(top - lse[:, None]).sum(-1)) - math.log(vocab - k)
        uniform = torch.softmax(tail[:, None].expand(-1, vocab).scatter(-1, top_ids, top) / temperature, -1)
        standard_error = estimates.std(0) / draws**0.5
        assert ((uniform - exact_p).abs() / (standard_error + 1e-12)).max() > 20


def autograd_forward_kl(student, teacher_log_probs, temperature, weights):
    """The obvious path: float32 autograd through log_softmax, no chunks, no stored gradient."""
    log_s = torch.log_softmax(student.float() / temperature, dim=-1)
    per_token = (teacher_log_probs.exp() * (teacher_log_probs - log_s)).sum(-1) * temperature**2
    return (per_token * weights).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_forward_kl_gradient_equals_autograd(temperature, dtype):
    # The fused path keeps T (p_s - p_t) from the forward pass; it must equal what autograd computes,
    # for any upstream gradient (here: a mask and per-token weights through reduction="none").
    torch.manual_seed(9)
    teacher = torch.randn(3, 7, 29) * 2
    mask = torch.rand(3, 7) > 0.3
    weights = torch.rand(3, 7)
    base = (torch.randn(3, 7, 29) * 2).to(dtype)
    fused = base.clone().requires_grad_()
    (
        distillation_loss(fused, teacher, temperature=temperature, mask=mask, reduction="none", chunk_size=4) * weights
    ).sum().backward()
    obvious = base.clone().requires_grad_()
    log_t = torch.log_softmax(teacher / temperature, dim=-1)
    autograd_forward_kl(obvious, log_t, temperature, weights * mask).backward()
    assert fused.grad.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-3}
    torch.testing.assert_close(fused.grad, obvious.grad, **tolerance)


def test_loss_without_gradient_keeps_none():
    student, teacher = torch.randn(2, 3, 9, requires_grad=True), torch.randn(2, 3, 9)
    with torch.no_grad():
        value = distillation_loss(student, teacher)
    assert not value.requires_grad and student.grad is None


def test_forward_kl_reads_any_leading_shape_and_sliced_views():
    torch.manual_seed(11)
    logits, teacher = torch.randn(2, 3, 4, 10), torch.randn(2, 3, 4, 10)
    mask = torch.rand(2, 3, 4) > 0.2
    expected = distillation_loss(logits.reshape(-1, 10), teacher.reshape(-1, 10), mask=mask.reshape(-1), chunk_size=5)
    assert distillation_loss(logits, teacher, mask=mask, chunk_size=5).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    # What the trainer passes: positions :-1 and the first `vocab` columns of a wider, padded logits tensor.
    wide = torch.randn(2, 7, 12, requires_grad=True)
    target = torch.randn(2, 6, 10)
    distillation_loss(wide[:, :-1, :10], target, chunk_size=4).backward()
    copy = wide.detach()[:, :-1, :10].contiguous().requires_grad_()
    distillation_loss(copy, target, chunk_size=1000).backward()
    torch.testing.assert_close(wide.grad[:, :-1, :10], copy.grad)
    assert wide.grad[:, -1].abs().sum() == 0 and wide.grad[..., 10:].abs().sum() == 0
