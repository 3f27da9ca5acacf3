"""Float noise of a training step under a change of summation order, and what a broken
normalisation gives: the figures behind the weight bounds of ``tests/test_train.py``.

Every run is one plain SGD step (or four, for the cache) of soft distillation on the tests' tiny
models, so the weight change is lr x the gradient. Reported: the largest absolute weight
difference between two runs that are equally correct but sum in another order (1 vs 2 threads;
one batch of 8 vs 4 x 2 and 2 x 4 accumulated; the live teacher vs the exact logit caches), and
between the correct run and one that divides each micro-batch by its own tokens. The same runs
with AdamW show why the tests use SGD: Adam's noise is 100x larger and hides scale errors.

    python benchmarks/summation_noise.py [--output benchmarks/results/summation_noise.json]

The JSON records this command (``command``), with paths relative to the repository root.

The two-process (DDP) figures come from ``tests/test_train.py::test_two_processes_*`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from kdmem.config import SoftDistillConfig, TrainingConfig, load_config
from kdmem.data import prepare_sequences
from kdmem.models import load_model, load_tokenizer
from kdmem.train import distill, embedded_bases
from kdmem.train.teacher_cache import build_teacher_cache
from kdmem.train.trainers import DistillationTrainer

TINY = [
    "data.num_examples=48",
    "data.validation_examples=16",
    "embedded.pretrain_tokens=8000",
    "embedded.vocab_size=512",
]


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/summation_noise.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kdmem-noise-"))
    os.environ.setdefault("KDMEM_CACHE", str(work / "cache"))
    config = load_config(preset="smoke", overrides=TINY)
    bases = embedded_bases(config.embedded)
    data = prepare_sequences(config.data, load_tokenizer(str(bases["teacher"])))
    teacher = load_model(str(bases["teacher"]))
    base = {k: v.clone() for k, v in load_model(str(bases["student"])).state_dict().items()}
    exact_loss = DistillationTrainer.compute_loss

    def micro_batch_normalised(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return exact_loss(
            self, model, inputs, return_outputs, num_items_in_batch=inputs["labels"][:, 1:].ne(-100).sum()
        )

    counter = iter(range(10**6))

    def student(optim, lr, rows, batch, accumulation=1, threads=2, broken=False, cache=None):
        torch.set_num_threads(threads)
        DistillationTrainer.compute_loss = micro_batch_normalised if broken else exact_loss
        training = TrainingConfig(
            epochs=1,
            learning_rate=lr,
            batch_size=batch,
            gradient_accumulation_steps=accumulation,
            lr_scheduler="constant",
            weight_decay=0.0,
            extra_args={"optim": optim},
        )
        model = distill(
            load_model(str(bases["student"])),
            teacher,
            data.train.iloc[:rows],
            SoftDistillConfig(training=training),
            work / f"run-{next(counter)}",
            seed=0,
            cache=cache,
        )
        torch.set_num_threads(2)
        DistillationTrainer.compute_loss = exact_loss
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    from provenance import command  # benchmarks/provenance.py

    results = {
        "command": command(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "largest_weight": max(v.abs().max().item() for v in base.values()),
    }
    for optim, lr in (("sgd", 1.0), ("adamw_torch", 1e-2)):
        one_batch = student(optim, lr, 8, 8)
        row = {
            "update": largest_difference(one_batch, base),
            "1 vs 2 threads": largest_difference(student(optim, lr, 8, 8, threads=1), one_batch),
        }
        for batch, accumulation in ((4, 2), (2, 4)):
            row[f"{batch}x{accumulation} vs 8x1"] = largest_difference(
                student(optim, lr, 8, batch, accumulation), one_batch
            )
            row[f"{batch}x{accumulation} broken vs 8x1"] = largest_difference(
                student(optim, lr, 8, batch, accumulation, broken=True), one_batch
            )
        live = student(optim, lr, 16, 4)
        for name, kind, top_k in (
            ("full", "logits", 0),
            ("hidden", "hidden", 0),
            ("all 512", "sampled", 512),
            ("top 8", "sampled", 8),
        ):
            cache = build_teacher_cache(
                teacher,
                data.train.iloc[:16],
                work / f"cache-{optim}-{name}",
                teacher_id="tiny",
                kind=kind,
                vocab_size=512,
                top_k=top_k,
            )
            row[f"cache {name} vs live (4 steps)"] = largest_difference(student(optim, lr, 16, 4, cache=cache), live)
        results[optim] = row
    print(json.dumps(results, indent=2))
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
