"""A sweep of soft students from one teacher: the teacher run at every step vs the teacher-logit cache.

Same process, teacher, student base, data and training settings for both:

- ``live``: ``distill`` with the teacher's forward pass in every training step, for every student;
- ``cache``: ``build_teacher_cache`` once (timed separately), then ``distill`` from it for every student.

The S students differ only in temperature (1, 2, 3, 4, ...), as in the paper's sweep. The cost
of the cache is paid once, so its advantage grows with S.

The teacher and data are the embedded default run's, made by ``kdmem run --output runs/default``:

    python benchmarks/teacher_cache.py --teacher runs/default/models/teacher --data runs/default/data/train.parquet
    python benchmarks/teacher_cache.py ... --students 1 3 --kind sampled --top-k 64 --epochs 2
    python benchmarks/teacher_cache.py --teacher-size 512x6 --data ... --epochs 1   # a random 8x teacher

Prints a table and writes JSON (default ``benchmarks/results/teacher_cache.json``), which records
this command (``command``), the one that made the run it reads (``input_command``) and the
teacher and data paths, relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from kdmem.config import EmbeddedModelsConfig, SoftDistillConfig, TrainingConfig
from kdmem.data import read_sequences
from kdmem.models import load_model
from kdmem.train import distill, resolve_model_name
from kdmem.train.teacher_cache import build_teacher_cache


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def random_teacher(size: str, student_base: str):
    """A GPT-NeoX of ``HIDDENxLAYERS`` with random weights (seed 0), shaped like the embedded family."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hidden, layers = (int(part) for part in size.lower().split("x"))
    student = load_model(student_base).config
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=student.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        max_position_embeddings=student.max_position_embeddings,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=student.bos_token_id,
        eos_token_id=student.eos_token_id,
        pad_token_id=student.pad_token_id,
    )
    return GPTNeoXForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    teachers = parser.add_mutually_exclusive_group(required=True)
    teachers.add_argument("--teacher", help="the fine-tuned teacher (a save_pretrained folder or hub name)")
    teachers.add_argument(
        "--teacher-size",
        help="HIDDENxLAYERS: a GPT-NeoX teacher with random weights (seed 0) over the student's vocabulary",
    )
    parser.add_argument(
        "--student", default="builtin:tiny-student", help="the student base (default: the default config's)"
    )
    parser.add_argument(
        "--data", required=True, help="a Parquet file of sequences (e.g. runs/default/data/train.parquet)"
    )
    parser.add_argument("--students", type=int, nargs="+", default=[1, 3], help="sweep sizes S to time")
    parser.add_argument(
        "--kind",
        choices=["hidden", "logits", "sampled"],
        default="hidden",
        help="what the cache keeps (soft.cache_kind)",
    )
    parser.add_argument("--top-k", type=int, default=64, help="logits kept per token by a sampled cache")
    parser.add_argument(
        "--tail-samples",
        type=int,
        default=16,
        help="tail tokens sampled per position with a top-k cache (the paper configs': 16)",
    )
    parser.add_argument(
        "--tail-draws", type=int, help="independent draws of them (default: one per epoch, as kdmem run does)"
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "teacher_cache.json"))
    args = parser.parse_args()
    from provenance import command, input_command, relative  # benchmarks/provenance.py

    provenance = {"command": command(), **input_command(args.teacher, args.data)}
    student_base = resolve_model_name(args.student, EmbeddedModelsConfig())
    teacher = (load_model(args.teacher) if args.teacher else random_teacher(args.teacher_size, student_base)).eval()
    args.teacher = args.teacher or f"random GPT-NeoX {args.teacher_size}"
    train = read_sequences(Path(args.data))
    top_k = args.top_k if args.kind == "sampled" else None
    training = TrainingConfig(epochs=args.epochs, learning_rate=3e-3, batch_size=args.batch_size, logging_steps=10**9)
    tokens = len(train) * (len(train["input_ids"].iloc[0]) - 1)
    tail = {"tail_samples": args.tail_samples, "tail_draws": args.tail_draws or max(1, math.ceil(args.epochs))}
    # Student i of the sweep distills at T = i: a sampled cache must keep the log-partition at each.
    temperatures = [float(t) for t in range(1, max(args.students) + 1)]

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        vocab = min(teacher.config.vocab_size, load_model(student_base).config.vocab_size)
        cache_seconds = timed(
            lambda: build_teacher_cache(
                teacher,
                train,
                scratch / "cache",
                teacher_id=args.teacher,
                kind=args.kind,
                vocab_size=vocab,
                top_k=top_k or 0,
                batch_size=64,
                temperatures=temperatures,
                **tail,
            )
        )
        cache = build_teacher_cache(
            teacher,
            train,
            scratch / "cache",
            teacher_id=args.teacher,
            kind=args.kind,
            vocab_size=vocab,
            top_k=top_k or 0,
            temperatures=temperatures,
            **tail,
        )
        cache_bytes = sum(p.stat().st_size for p in (scratch / "cache").glob("shard-*"))

        def one_student(temperature: float, use_cache: bool) -> float:
            cfg = SoftDistillConfig(temperature=temperature, training=training)
            work = scratch / f"work-{temperature}-{use_cache}"
            return timed(
                lambda: distill(
                    load_model(student_base), teacher, train, cfg, work, seed=0, cache=cache if use_cache else None
                )
            )

        per_student = {"live": [], "cache": []}
        for temperature in range(1, max(args.students) + 1):
            for mode in per_student:
                per_student[mode].append(one_student(float(temperature), mode == "cache"))

    rows = []
    for size in args.students:
        live = sum(per_student["live"][:size])
        cached = cache_seconds + sum(per_student["cache"][:size])
        rows.append(
            {
                "students": size,
                "live_seconds": round(live, 2),
                "cache_seconds": round(cached, 2),
                "speedup": round(live / cached, 3),
            }
        )
    result = {
        **provenance,
        "teacher": relative(args.teacher) if args.teacher_size is None else args.teacher,
        "data": relative(args.data),
        "student": args.student,
        "parameters": {
            "teacher": sum(p.numel() for p in teacher.parameters()),
            "student": sum(p.numel() for p in load_model(student_base).parameters()),
        },
        "examples": len(train),
        "tokens_per_epoch": tokens,
        "epochs": args.epochs,
        "kind": args.kind,
        "top_k": top_k,
        **({} if top_k is None else tail),
        "cache_build_seconds": round(cache_seconds, 2),
        "cache_bytes": cache_bytes,
        "bytes_per_token": cache.spec.bytes_per_token,
        "per_student_seconds": {mode: [round(t, 2) for t in times] for mode, times in per_student.items()},
        "sweeps": rows,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(
        f"{len(train)} sequences, {args.epochs:g} epochs per student, "
        f"cache {args.kind} top_k={top_k} {'' if top_k is None else tail}: built in {cache_seconds:.1f} s, "
        f"{cache_bytes / 1e6:.1f} MB ({cache.spec.bytes_per_token} bytes per token)"
    )
    print(f"{'students':>9}{'live s':>10}{'cache s':>10}{'speedup':>9}")
    for row in rows:
        print(f"{row['students']:>9}{row['live_seconds']:>10.1f}{row['cache_seconds']:>10.1f}{row['speedup']:>8.2f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
