"""One soft-KD training step, side by side: kdmem's ``DistillationTrainer`` (live teacher, and
reading a teacher cache: ``--cache-kind``, hidden states by default), TRL's ``GKDTrainer``
(forward KL: beta = 0, lmbda = 0, no generation) and the plain loop that recomputes the teacher
and takes the KL of the full tensors.

Every variant runs in a fresh subprocess on the same models, batch and seed, and times
``training_step`` (forward of student and teacher, loss, backward; no optimizer step, which is
the same for all). Peak memory is what a step adds above the resident models: peak allocated
minus allocated before the step on CUDA; on CPU the resident-set high-water mark (reset through
``/proc/self/clear_refs``) minus the resident set before the step.

The models are GPT-NeoX (Pythia's architecture) built from configs at Pythia's vocabulary
(50,304), so the (batch, seq, vocab) logits dominate memory as they do at scale. The loss is at
T = 1 because ``GKDTrainer`` does not apply its temperature to the loss (only to sampling).

    python benchmarks/kd_step.py                                   # batch 8, seq 256
    python benchmarks/kd_step.py --teacher-hidden 1024 --teacher-layers 8 --steps 5

Prints a table and writes JSON (default ``benchmarks/results/kd_step.json``), which records this
command (``command``), with paths relative to the repository root. On a GPU it also records bf16
tokens per second and model FLOPs utilization (6 N_student + 2 N_teacher FLOPs per token, the
teacher's share only what runs of it: ``step_flops``; ``--peak-tflops``, default 989, an
H100/H200's dense bf16 peak).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("plain", "trl_gkd", "trl_gkd_no_ckpt", "kdmem", "kdmem_cache")


def build_models(args) -> tuple:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    def make(hidden: int, layers: int):
        config = GPTNeoXConfig(
            vocab_size=args.vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(hidden // 64, 1),
            intermediate_size=4 * hidden,
            max_position_embeddings=args.seq,
            tie_word_embeddings=False,
        )
        return GPTNeoXForCausalLM(config)

    torch.manual_seed(0)
    teacher = make(args.teacher_hidden, args.teacher_layers)
    student = make(args.student_hidden, args.student_layers)
    return teacher, student


def tokenizer_with_padding(vocab: int):
    """GKDTrainer needs a tokenizer for its pad id; a word-level one over the ids is enough."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="t0")), pad_token="t0", eos_token="t0"
    )


class Memory:
    """What a step adds above the memory in use before it (see the module docstring)."""

    def __init__(self, device: str):
        self.device = device

    @staticmethod
    def _status(field: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.before = self._status("VmRSS")

    def added(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        return self._status("VmHWM") - self.before


def run_variant(variant: str, args) -> dict:
    """Inside the subprocess: set up ``variant``, run warm-up and timed steps, measure."""
    from transformers import TrainingArguments

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda"
    teacher, student = build_models(args)
    parameters = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in (("student", student), ("teacher", teacher))
    }
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, args.vocab, (args.batch, args.seq), generator=generator)
    tokens = args.batch * (args.seq - 1)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    scratch = Path(tempfile.mkdtemp())
    common = {
        "output_dir": str(scratch / "out"),
        "per_device_train_batch_size": args.batch,
        "report_to": "none",
        "bf16": bf16,
        "dataloader_pin_memory": False,
        "disable_tqdm": True,
    }

    if variant == "plain":
        student, teacher = student.to(device).train(), teacher.to(device).eval()

        def step() -> float:
            batch = {k: v.to(device) for k, v in inputs.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                student_logits = student(input_ids=batch["input_ids"]).logits[:, :-1]
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=batch["input_ids"]).logits[:, :-1]
            loss = (
                torch.nn.functional.kl_div(
                    torch.log_softmax(student_logits.float(), -1),
                    torch.log_softmax(teacher_logits.float(), -1),
                    log_target=True,
                    reduction="sum",
                )
                / tokens
            )
            loss.backward()
            student.zero_grad(set_to_none=True)
            return loss.item()

    elif variant.startswith("trl_gkd"):
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        # TRL turns activation checkpointing on by default; trl_gkd_no_ckpt matches kdmem's setting.
        checkpointing = {"gradient_checkpointing": False} if variant == "trl_gkd_no_ckpt" else {}
        config = GKDConfig(
            **common, **checkpointing, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False, max_length=args.seq
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            processing_class=tokenizer_with_padding(args.vocab),
            train_dataset=Dataset.from_dict({"input_ids": input_ids.tolist()}),
            data_collator=lambda rows: rows,
        )

        def step() -> float:
            loss = trainer.training_step(trainer.model, dict(inputs), torch.tensor(tokens))
            trainer.model.zero_grad(set_to_none=True)
            return loss.item()

    else:
        import pandas as pd

        from kdmem.config import SoftDistillConfig
        from kdmem.train.teacher_cache import build_teacher_cache
        from kdmem.train.trainers import DistillationTrainer

        cache = None
        batch = dict(inputs)
        batch.pop("attention_mask")
        if variant == "kdmem_cache":  # built before timing: its cost is paid once per teacher and D
            rows = pd.DataFrame(
                {"example_id": [str(i) for i in range(args.batch)], "input_ids": list(input_ids.numpy())}
            )
            cache = build_teacher_cache(
                teacher.to(device),
                rows,
                scratch / "cache",
                teacher_id="bench",
                kind=args.cache_kind,
                top_k=args.top_k,
                tail_samples=args.tail_samples,
                batch_size=args.batch,
            )
            batch["cache_rows"] = torch.arange(args.batch)
            teacher = None
        trainer = DistillationTrainer(
            model=student,
            args=TrainingArguments(**common),
            teacher=teacher,
            cache=cache,
            distill=SoftDistillConfig(temperature=1.0),
        )

        def step() -> float:
            loss = trainer.training_step(trainer.model, dict(batch), torch.tensor(tokens))
            trainer.model.zero_grad(set_to_none=True)
            return loss.item()

    first_loss = step()  # before any timing; every step's loss is this one (no optimizer step)
    for _ in range(args.warmup - 1):
        step()
    memory = Memory(device)
    memory.start()
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {
        "variant": variant,
        "device": device,
        "bf16": bf16,
        "step_seconds": seconds,
        "step_seconds_all": times,
        "tokens_per_second": args.batch * args.seq / seconds,
        "peak_added_bytes": memory.added(),
        "loss": losses[-1],
        "first_loss": first_loss,
    }
    if device == "cuda":
        flops = (
            step_flops(variant, parameters, args.cache_kind, args.teacher_hidden, args.vocab) * args.batch * args.seq
        )
        result["mfu"] = flops / seconds / (args.peak_tflops * 1e12)
    return result


def step_flops(variant: str, parameters: dict, cache_kind: str, teacher_hidden: int, vocab: int) -> float:
    """FLOPs per token of one step: 6 N_student, plus what runs of the teacher. A cached variant never
    runs it: a hidden-state cache recomputes its output layer (2 x hidden x vocabulary), the others nothing."""
    if variant != "kdmem_cache":
        teacher = 2 * parameters["teacher"]
    else:
        teacher = 2 * teacher_hidden * vocab if cache_kind == "hidden" else 0
    return 6 * parameters["student"] + teacher


def exact_variants(variants, cache_kind: str) -> list[str]:
    """The variants that compute the same forward KL: all but a sampled (top-k) cache's."""
    return [v for v in variants if not (v == "kdmem_cache" and cache_kind == "sampled")]


def check_agreement(results: list[dict], cache_kind: str) -> float:
    """The exact variants' losses on the same models and batch agree, or nothing is reported:
    timing a variant that computes something else would compare nothing. Returns the largest
    relative difference; the bound is float32's summation noise, or bf16's precision on a GPU."""
    exact = [row for row in results if row["variant"] in exact_variants([r["variant"] for r in results], cache_kind)]
    reference = exact[0]["first_loss"]
    spread = max(abs(row["first_loss"] - reference) / abs(reference) for row in exact)
    bound = 2e-2 if any(row["bf16"] for row in exact) else 1e-4
    if spread > bound:
        losses = ", ".join(f"{row['variant']} {row['first_loss']:.6g}" for row in exact)
        raise SystemExit(
            f"The exact variants disagree (relative difference {spread:.2e} > {bound:g}): {losses}. "
            "No timing is reported."
        )
    return spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--teacher-hidden", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-hidden", type=int, default=128)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument(
        "--cache-kind",
        choices=["hidden", "logits", "sampled"],
        default="hidden",
        help="what kdmem_cache reads (soft.cache_kind)",
    )
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument(
        "--tail-samples",
        type=int,
        default=16,
        help="tail tokens sampled per position by the top-k cache (the paper configs': 16)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "kd_step.json"))
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # the subprocess's own variant
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_variant(args.one, args)))
        return
    from provenance import command  # benchmarks/provenance.py

    settings = {k: v for k, v in vars(args).items() if k not in ("one", "output", "variants")}
    forwarded = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    results = []
    for variant in args.variants:
        done = subprocess.run([sys.executable, __file__, *forwarded, "--one", variant], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"variant {variant} failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    spread = check_agreement(results, args.cache_kind)
    print(
        f"batch {args.batch} x seq {args.seq}, vocab {args.vocab}; "
        f"teacher {args.teacher_hidden}x{args.teacher_layers}, student {args.student_hidden}x{args.student_layers}; "
        f"{results[0]['device']}, median of {args.steps} steps"
    )
    print(
        f"{'variant':>12}{'step s':>9}{'tokens/s':>10}{'added MiB':>11}{'loss':>10}"
        + ("{:>7}".format("MFU") if "mfu" in results[0] else "")
    )
    for row in results:
        line = (
            f"{row['variant']:>12}{row['step_seconds']:>9.3f}{row['tokens_per_second']:>10.0f}"
            f"{row['peak_added_bytes'] / 2**20:>11.0f}{row['loss']:>10.5f}"
        )
        print(line + (f"{row['mfu']:>7.1%}" if "mfu" in row else ""))
    print(f"exact variants agree: largest relative loss difference {spread:.1e}")
    payload = {
        "command": command(),
        "settings": settings,
        "results": results,
        "exact_variants_loss_spread": spread,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
