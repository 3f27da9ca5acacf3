import pytest
import torch

from kdmem.config import SoftDistillConfig, TrainingConfig
from kdmem.data import as_tensor
from kdmem.losses import distillation_loss
from kdmem.models import load_model
from kdmem.models.decoding import greedy_config, greedy_continuations, plain_generation_defaults
from kdmem.train import distill, fine_tune


def mean_kl(student, teacher, ids):
    ids = ids.to(student.device)
    with torch.no_grad():
        return distillation_loss(student(ids).logits, teacher(ids).logits, temperature=2.0).item()


def test_soft_distillation_lowers_kl_to_teacher(tiny_bases, tiny_data, tmp_path):
    teacher, student = load_model(str(tiny_bases["teacher"])), load_model(str(tiny_bases["student"]))
    ids = as_tensor(tiny_data.train)[:16]
    before = mean_kl(student, teacher, ids)
    cfg = SoftDistillConfig(temperature=2.0, training=TrainingConfig(epochs=2, learning_rate=2e-3, batch_size=8))
    student = distill(student, teacher, tiny_data.train, cfg, tmp_path, seed=0)
    after = mean_kl(student.eval(), teacher, ids)
    assert after < 0.9 * before, (before, after)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(tiny_bases, tiny_data, tmp_path):
    cfg = TrainingConfig(epochs=1, learning_rate=1e-3, batch_size=8)
    runs = [
        _state(fine_tune(load_model(str(tiny_bases["student"])), tiny_data.train, cfg, tmp_path / str(i), seed=seed))
        for i, seed in enumerate((0, 0, 1))
    ]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # a different seed shuffles differently


# Weight comparisons across a change of summation order (micro-batches, processes, threads, a
# cache). They train one plain SGD step (or a few), so the weight change is lr x the gradient: a
# wrong normalisation moves the weights by a share of the whole update. Adam would hide it, since
# its first step is lr x sign(gradient) whatever the gradient's scale.
# Noise, measured with `python benchmarks/summation_noise.py` (2-core Xeon, AVX-512, torch 2.13 CPU):
# the largest weight difference between two equally correct runs (1 vs 2 threads, 8 x 1 vs 4 x 2
# vs 2 x 4, 1 vs 2 processes, live teacher vs full-logit cache) is 1.2e-7, one float32 ulp of a
# weight near 1 (the largest weight is 1.01). The bound is 80x that noise; the broken
# normalisations below exceed it 500x or more, and are held to exceed it 100x.
SGD_NOISE = 1.2e-7
WEIGHT_BOUND = 80 * SGD_NOISE


def _sgd(batch: int, accumulation: int = 1, steps_of: int = 1) -> TrainingConfig:
    return TrainingConfig(
        epochs=steps_of,
        learning_rate=1.0,
        batch_size=batch,
        gradient_accumulation_steps=accumulation,
        lr_scheduler="constant",
        weight_decay=0.0,
        extra_args={"optim": "sgd"},
    )


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def micro_batch_normalised(compute_loss):
    """The broken normalisation: each micro-batch divided by its own tokens, not the window's."""

    def broken(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return compute_loss(
            self, model, inputs, return_outputs, num_items_in_batch=inputs["labels"][:, 1:].ne(-100).sum()
        )

    return broken


def test_distillation_loss_is_normalised_over_the_accumulation_window(tiny_bases, tiny_data, tmp_path, monkeypatch):
    from kdmem.train.trainers import DistillationTrainer

    teacher = load_model(str(tiny_bases["teacher"]))
    train = tiny_data.train.iloc[:8]

    def one_step(batch, accumulation, name):
        cfg = SoftDistillConfig(training=_sgd(batch, accumulation))
        return _state(distill(load_model(str(tiny_bases["student"])), teacher, train, cfg, tmp_path / name, seed=0))

    whole = one_step(8, 1, "8x1")
    base = _state(load_model(str(tiny_bases["student"])))
    assert largest_difference(whole, base) > 5e-3  # measured: the step moves a weight by 9.7e-3
    for batch, accumulation in ((4, 2), (2, 4)):
        assert (
            largest_difference(one_step(batch, accumulation, f"{batch}x{accumulation}"), whole) < WEIGHT_BOUND
        )  # measured 7.5e-9
    # Measured: 9.7e-3 (4 x 2) and 2.9e-2 (2 x 4): the step is 2x and 4x too large.
    monkeypatch.setattr(DistillationTrainer, "compute_loss", micro_batch_normalised(DistillationTrainer.compute_loss))
    for batch, accumulation in ((4, 2), (2, 4)):
        assert (
            largest_difference(one_step(batch, accumulation, f"broken-{batch}x{accumulation}"), whole)
            > 100 * WEIGHT_BOUND
        )


def test_ce_weight_adds_cross_entropy_over_the_accumulation_window(tiny_bases, tiny_data, tmp_path):
    """soft.ce_weight > 0: one SGD step (4 x 2 accumulation) moves the weights as the loss written
    out here does: (T^2 KL(teacher || student) + w CE) summed over the window's tokens and divided
    by their count, in float64, clipped as the Trainer clips (max_grad_norm 1)."""
    teacher = load_model(str(tiny_bases["teacher"])).eval()
    train = tiny_data.train.iloc[:8]
    temperature, weight = 2.0, 0.5
    cfg = SoftDistillConfig(temperature=temperature, ce_weight=weight, training=_sgd(4, 2))
    trained = _state(
        distill(load_model(str(tiny_bases["student"])), teacher, train, cfg, tmp_path / "trained", seed=0)
    )

    def by_hand(ce_weight):
        student = load_model(str(tiny_bases["student"])).double().train()
        ids = as_tensor(train).to(student.device)
        logits = student(ids).logits[:, :-1]
        with torch.no_grad():
            target = teacher.double()(ids).logits[:, :-1] / temperature
        teacher.float()
        kl = (target.softmax(-1) * (target.log_softmax(-1) - (logits / temperature).log_softmax(-1))).sum(
            -1
        ) * temperature**2
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        ((kl.sum() + ce_weight * ce.sum()) / kl.numel()).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        with torch.no_grad():
            for parameter in student.parameters():
                parameter -= parameter.grad
        return _state(student.float())

    assert largest_difference(trained, by_hand(weight)) < WEIGHT_BOUND  # measured: 1.5e-8
    assert (
        largest_difference(trained, by_hand(0.0)) > 100 * WEIGHT_BOUND
    )  # the CE term is really there (measured: 5.4e-2)


def test_bf16_training_follows_float32_within_bf16_precision(tiny_bases, tiny_data, tmp_path):
    """training.bf16, which every paper config sets, through both trainers (KdmemTrainer for the
    cross-entropy stages, DistillationTrainer for the soft student): a one-epoch run (one SGD step
    of 8 sequences) moves the weights in float32's direction, to within bf16's precision, and
    really ran in bf16 (the steps are not equal), keeping float32 weights."""
    from dataclasses import replace

    teacher = load_model(str(tiny_bases["teacher"]))
    train = tiny_data.train.iloc[:8]
    base = _state(load_model(str(tiny_bases["student"])))
    trainers = {
        "fine_tune": lambda cfg, path: fine_tune(load_model(str(tiny_bases["student"])), train, cfg, path, seed=0),
        "distill": lambda cfg, path: distill(
            load_model(str(tiny_bases["student"])), teacher, train, SoftDistillConfig(training=cfg), path, seed=0
        ),
    }
    for name, train_with in trainers.items():
        steps = {}
        for bf16 in (False, True):
            state = _state(train_with(replace(_sgd(8), bf16=bf16), tmp_path / f"{name}-{bf16}"))
            assert all(value.dtype == base[key].dtype for key, value in state.items())
            steps[bf16] = torch.cat([(state[key] - base[key]).flatten().double() for key in base])
        relative = ((steps[True] - steps[False]).norm() / steps[False].norm()).item()
        cosine = torch.nn.functional.cosine_similarity(steps[True], steps[False], dim=0).item()
        # Measured: relative difference 3.7e-3 (fine_tune) and 2.7e-3 (distill), cosine 0.999993 and
        # 0.999996. bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per operation);
        # the bound is 8x the measured difference, and a step that ignored bf16 would give 0.
        assert 1e-4 < relative < 0.03 and cosine > 0.9995, (name, relative, cosine)


def test_hard_data_equals_generate(memorizing_model, tiny_data):
    ids = as_tensor(tiny_data.train)[:12]
    prefix_len, total = 8, ids.shape[1]
    batched = greedy_continuations(memorizing_model, ids, prefix_len, total, batch_size=5)
    assert batched.shape == (12, total)
    assert torch.equal(batched[:, :prefix_len].cpu(), ids[:, :prefix_len])
    config = greedy_config(total - prefix_len, memorizing_model.config.pad_token_id)
    with plain_generation_defaults(memorizing_model):
        for row in range(len(ids)):
            prefix = ids[row : row + 1, :prefix_len].to(memorizing_model.device)
            alone = memorizing_model.generate(prefix, do_sample=False, generation_config=config)
            assert torch.equal(alone[0].cpu(), batched[row].cpu())


def test_generation_does_not_stop_at_end_of_text(memorizing_model, tiny_data):
    # Force end-of-text to be the greedy choice everywhere: generation must still run to full length.
    eos = memorizing_model.config.eos_token_id
    head = memorizing_model.get_output_embeddings()
    original = head.bias
    try:
        head.bias = torch.nn.Parameter(torch.zeros(memorizing_model.config.vocab_size, device=memorizing_model.device))
        with torch.no_grad():
            head.bias[eos] = 1e4
        out = greedy_continuations(memorizing_model, as_tensor(tiny_data.train)[:2], 4, 20)
    finally:
        head.bias = original
    assert out.shape == (2, 20)
    assert (out[:, 4:] == eos).all()
    assert memorizing_model.generation_config.eos_token_id == eos  # restored afterwards


def test_distilling_from_the_teacher_logit_cache_equals_distilling_from_the_teacher(tiny_bases, tiny_data, tmp_path):
    import pytest

    from kdmem.train.teacher_cache import build_teacher_cache

    teacher = load_model(str(tiny_bases["teacher"]))
    train = tiny_data.train.iloc[:16]
    vocab = min(teacher.config.vocab_size, load_model(str(tiny_bases["student"])).config.vocab_size)
    cfg = SoftDistillConfig(temperature=2.0, training=_sgd(4))  # 4 steps

    def student(name, cache=None):
        return _state(
            distill(load_model(str(tiny_bases["student"])), teacher, train, cfg, tmp_path / name, seed=0, cache=cache)
        )

    def cache(name, kind, top_k=64):
        return build_teacher_cache(
            teacher,
            train,
            tmp_path / f"cache-{name}",
            teacher_id="tiny",
            kind=kind,
            vocab_size=vocab,
            top_k=top_k,
            shard_size=5,
        )

    direct = student("direct")
    for name, kind, top_k in (
        ("hidden", "hidden", 0),
        ("logits", "logits", 0),
        ("all", "sampled", vocab),
    ):  # all exact
        assert (
            largest_difference(student(name, cache(name, kind, top_k)), direct) < WEIGHT_BOUND
        )  # measured 0, 7.5e-9 and 1.2e-7
    approximate = student("top8", cache("top8", "sampled", 8))
    assert largest_difference(approximate, direct) > 1e-2  # k = 8 of 512: visibly approximate (measured 4.5e-2)
    with pytest.raises(ValueError, match="serves forward_kl only"):
        distill(
            load_model(str(tiny_bases["student"])),
            teacher,
            train,
            SoftDistillConfig(kind="jsd"),
            tmp_path / "jsd",
            seed=0,
            cache=cache("top8", "sampled", 8),
        )
    jsd = SoftDistillConfig(kind="jsd", temperature=2.0, training=_sgd(4))  # an exact cache serves every kind
    from_hidden = _state(
        distill(
            load_model(str(tiny_bases["student"])),
            None,
            train,
            jsd,
            tmp_path / "jsd-hidden",
            seed=0,
            cache=cache("hidden", "hidden"),
        )
    )
    live = _state(distill(load_model(str(tiny_bases["student"])), teacher, train, jsd, tmp_path / "jsd-live", seed=0))
    assert largest_difference(from_hidden, live) < WEIGHT_BOUND


def test_each_epoch_reads_a_fresh_draw_of_the_tail(tiny_bases, tiny_data, tmp_path, monkeypatch):
    """A sampled cache with 2 draws, 3 epochs: epochs 0, 1, 2 read draws 0, 1, 0."""
    from kdmem.train.teacher_cache import TeacherLogitCache, build_teacher_cache

    teacher = load_model(str(tiny_bases["teacher"]))
    train = tiny_data.train.iloc[:8]
    cache = build_teacher_cache(
        teacher, train, tmp_path / "cache", teacher_id="tiny", kind="sampled", top_k=8, tail_samples=4, tail_draws=2
    )
    read = []
    exact = TeacherLogitCache.teacher_at
    monkeypatch.setattr(
        TeacherLogitCache,
        "teacher_at",
        lambda self, cached, temperature, draw=0: read.append(draw % 2) or exact(self, cached, temperature, draw),
    )
    distill(
        load_model(str(tiny_bases["student"])),
        None,
        train,
        SoftDistillConfig(training=_sgd(4, steps_of=3)),
        tmp_path / "soft",
        seed=0,
        cache=cache,
    )
    assert read == [0, 0, 1, 1, 0, 0]  # two steps per epoch


DISTILL_SCRIPT = """
import sys
from pathlib import Path

import pandas as pd
from accelerate import PartialState
from safetensors.torch import save_file

from kdmem.config import SoftDistillConfig, TrainingConfig
from kdmem.models import load_model
from kdmem.train import distill

from kdmem.train.trainers import DistillationTrainer

# One launch distills once per OUT:BATCH:NORMALISATION:ACCUMULATION (a launch costs seconds).
teacher, student, data, *runs = sys.argv[1:]
exact = DistillationTrainer.compute_loss


def too_small(self, *args, **kwargs):
    # DDP averages gradients over processes: a loss not scaled back by their number is too small
    return exact(self, *args, **kwargs) / self.accelerator.num_processes


state = PartialState()
for spec in runs:
    out, batch, normalisation, accumulation = spec.split(":")
    DistillationTrainer.compute_loss = too_small if normalisation == "broken" else exact
    cfg = SoftDistillConfig(training=TrainingConfig(
        epochs=1, learning_rate=1.0, batch_size=int(batch), gradient_accumulation_steps=int(accumulation),
        lr_scheduler="constant", weight_decay=0.0, extra_args={"optim": "sgd"},
    ))
    model = distill(load_model(student), load_model(teacher), pd.read_parquet(data), cfg, Path(out) / "work", seed=0)
    print(f"process {state.process_index} of {state.num_processes}")
    if state.is_main_process:
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(Path(out) / "weights.safetensors"))
    state.wait_for_everyone()
state.destroy_process_group()  # a gloo group left to interpreter exit can abort the process
"""


def test_two_processes_distill_like_one_with_the_same_global_batch(tiny_bases, tiny_data, tmp_path):
    """DDP on CPU (gloo): 2 processes x 4 sequences per step, and 2 processes x 2 sequences x 2
    accumulated micro-batches, give the weights of 1 process x 8."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from .conftest import CPU_ONLY, two_cpu_processes

    data = tmp_path / "train.parquet"
    tiny_data.train.iloc[:16].to_parquet(data)
    script = tmp_path / "distill.py"
    script.write_text(DISTILL_SCRIPT)
    env = os.environ | CPU_ONLY
    models = [str(tiny_bases["teacher"]), str(tiny_bases["student"]), str(data)]
    one = subprocess.run(
        [sys.executable, str(script), *models, f"{tmp_path / 'one'}:8:exact:1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    runs = [f"{tmp_path / name}:{setting}" for name, setting in (("exact", "4:exact:1"), ("broken", "4:broken:1"))]
    two = two_cpu_processes(str(script), *models, *runs, f"{tmp_path / 'accumulated'}:2:exact:2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("process 0 of 2") == 3 and two.stdout.count("process 1 of 2") == 3
    single, double, broken, accumulated = (
        load_file(str(tmp_path / name / "weights.safetensors")) for name in ("one", "exact", "broken", "accumulated")
    )
    base = load_model(str(tiny_bases["student"]), device="cpu").state_dict()
    assert largest_difference(single, base) > 5e-3
    assert largest_difference(double, single) < WEIGHT_BOUND  # measured: 7.5e-9
    assert largest_difference(accumulated, single) < WEIGHT_BOUND  # measured: 7.5e-9
    assert largest_difference(broken, single) > 100 * WEIGHT_BOUND  # measured: 4.9e-3, half of the step


def test_a_stage_killed_after_a_checkpoint_resumes_from_it(tiny_bases, tiny_data, tmp_path):
    """Training with checkpoints (save_strategy=steps) stopped after step 3 resumes from
    checkpoint-2 and ends with the weights of an uninterrupted run."""
    from transformers import TrainerCallback

    from kdmem.config import TrainingConfig
    from kdmem.models import load_model
    from kdmem.train import fine_tune

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    cfg = TrainingConfig(
        epochs=1, learning_rate=5e-3, batch_size=8, extra_args={"save_strategy": "steps", "save_steps": 2}
    )
    rows = tiny_data.train.iloc[:40]
    whole = fine_tune(load_model(str(tiny_bases["student"])), rows, cfg, tmp_path / "whole", seed=0)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(load_model(str(tiny_bases["student"])), rows, cfg, tmp_path / "killed", seed=0, callbacks=[Crash()])
    assert (tmp_path / "killed" / "checkpoint-2").exists() and not (tmp_path / "killed" / "checkpoint-4").exists()
    resumed = fine_tune(load_model(str(tiny_bases["student"])), rows, cfg, tmp_path / "killed", seed=0)
    fresh = load_model(str(tiny_bases["student"])).state_dict()
    assert any(not torch.equal(value, fresh[name]) for name, value in whole.state_dict().items())
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_the_readme_s_checkpointing_setting_passes_through_without_a_deprecation(tmp_path):
    """The README suggests training.extra_args={activation_checkpointing: true}; transformers 5.23
    deprecates the gradient_checkpointing spelling with a FutureWarning (before 5.23 there is only
    gradient_checkpointing, and the README says so)."""
    import warnings
    from pathlib import Path

    import transformers
    from packaging.version import Version

    from kdmem.config import TrainingConfig
    from kdmem.train.trainers import training_arguments

    if Version(transformers.__version__) < Version("5.23"):
        pytest.skip(f"transformers {transformers.__version__} has no activation_checkpointing (5.23 or later)")

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = training_arguments(TrainingConfig(extra_args={"activation_checkpointing": True}), tmp_path, seed=0)
    assert args.activation_checkpointing is True
    assert "activation_checkpointing: true" in (Path(__file__).resolve().parents[1] / "README.md").read_text()
