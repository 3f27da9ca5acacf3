import pytest
import torch

from kdmem.config import SoftDistillConfig, TrainingConfig
from kdmem.data import as_tensor
from kdmem.losses import distillation_loss
from kdmem.models import load_model
from kdmem.train import distill, fine_tune, greedy_config, greedy_continuations
from kdmem.train.hard import end_of_text_cleared


def mean_kl(student, teacher, ids):
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


def test_distillation_loss_is_normalised_over_the_accumulation_window(tiny_bases, tiny_data, tmp_path):
    teacher = load_model(str(tiny_bases["teacher"]))
    train = tiny_data.train.iloc[:8]
    states = []
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        cfg = SoftDistillConfig(
            training=TrainingConfig(epochs=1, learning_rate=1e-2, batch_size=batch, gradient_accumulation_steps=accumulation, lr_scheduler="constant")
        )
        student = distill(load_model(str(tiny_bases["student"])), teacher, train, cfg, tmp_path / f"{batch}", seed=0)
        states.append(_state(student))
    base = _state(load_model(str(tiny_bases["student"])))
    assert any(not torch.equal(states[0][k], base[k]) for k in base)
    for other in states[1:]:
        for key in base:
            torch.testing.assert_close(other[key], states[0][key], rtol=1e-4, atol=1e-5)


def test_hard_data_equals_generate(memorizing_model, tiny_data):
    ids = as_tensor(tiny_data.train)[:12]
    prefix_len, total = 8, ids.shape[1]
    batched = greedy_continuations(memorizing_model, ids, prefix_len, total, batch_size=5)
    assert batched.shape == (12, total)
    assert torch.equal(batched[:, :prefix_len], ids[:, :prefix_len])
    config = greedy_config(total - prefix_len, memorizing_model.config.pad_token_id)
    with end_of_text_cleared(memorizing_model):
        for row in range(len(ids)):
            alone = memorizing_model.generate(ids[row : row + 1, :prefix_len], do_sample=False, generation_config=config)
            assert torch.equal(alone[0], batched[row])


def test_generation_does_not_stop_at_end_of_text(memorizing_model, tiny_data):
    # Force end-of-text to be the greedy choice everywhere: generation must still run to full length.
    eos = memorizing_model.config.eos_token_id
    head = memorizing_model.get_output_embeddings()
    original = head.bias
    try:
        head.bias = torch.nn.Parameter(torch.zeros(memorizing_model.config.vocab_size))
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
    cfg = SoftDistillConfig(temperature=2.0, training=TrainingConfig(epochs=1, learning_rate=1e-2, batch_size=4, lr_scheduler="constant"))

    def student(name, cache=None):
        return _state(distill(load_model(str(tiny_bases["student"])), teacher, train, cfg, tmp_path / name, seed=0, cache=cache))

    def cache(name, top_k):
        return build_teacher_cache(teacher, train, tmp_path / f"cache-{name}", teacher_id="tiny", vocab_size=vocab, top_k=top_k, shard_size=5)

    direct = student("direct")
    for name, top_k in (("full", None), ("all", vocab)):  # both exact
        cached = student(name, cache(name, top_k))
        # float32 summation order differs; Adam turns that into weight differences near 2e-4 here
        assert max((cached[k] - direct[k]).abs().max().item() for k in direct) < 1e-3
    approximate = student("top8", cache("top8", 8))
    assert max((approximate[k] - direct[k]).abs().max().item() for k in direct) > 1e-2  # k = 8 of 512: visibly approximate
    with pytest.raises(ValueError, match="serves forward_kl only"):
        distill(load_model(str(tiny_bases["student"])), teacher, train, SoftDistillConfig(kind="jsd"), tmp_path / "jsd", seed=0, cache=cache("top8", 8))


DISTILL_SCRIPT = """
import sys
from pathlib import Path

import pandas as pd
from accelerate import PartialState
from safetensors.torch import save_file

from kdmem.config import SoftDistillConfig, TrainingConfig
from kdmem.models import load_model
from kdmem.train import distill

teacher, student, data, out, batch = sys.argv[1:6]
cfg = SoftDistillConfig(training=TrainingConfig(epochs=1, learning_rate=1e-2, batch_size=int(batch), lr_scheduler="constant"))
model = distill(load_model(student), load_model(teacher), pd.read_parquet(data), cfg, Path(out) / "work", seed=0)
state = PartialState()
print(f"process {state.process_index} of {state.num_processes}")
if state.is_main_process:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(Path(out) / "weights.safetensors"))
state.wait_for_everyone()
state.destroy_process_group()  # a gloo group left to interpreter exit can abort the process
"""


def test_two_processes_distill_like_one_with_the_same_global_batch(tiny_bases, tiny_data, tmp_path):
    """DDP on CPU (gloo): 2 processes x 4 sequences per step give the weights of 1 process x 8."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from .conftest import two_cpu_processes

    data = tmp_path / "train.parquet"
    tiny_data.train.iloc[:16].to_parquet(data)
    script = tmp_path / "distill.py"
    script.write_text(DISTILL_SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    models = [str(tiny_bases["teacher"]), str(tiny_bases["student"]), str(data)]
    one = subprocess.run([sys.executable, str(script), *models, str(tmp_path / "one"), "8"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = two_cpu_processes(str(script), *models, str(tmp_path / "two"), "4")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 0 of 2" in two.stdout and "process 1 of 2" in two.stdout
    single, double = (load_file(str(tmp_path / name / "weights.safetensors")) for name in ("one", "two"))
    base = load_model(str(tiny_bases["student"])).state_dict()
    assert any(not torch.equal(single[k], base[k]) for k in single)
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5)


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

    cfg = TrainingConfig(epochs=1, learning_rate=5e-3, batch_size=8, extra_args={"save_strategy": "steps", "save_steps": 2})
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
