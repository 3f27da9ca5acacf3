"""How far a top-k teacher-logit cache is from the teacher, at T = 1..4, on a finished run.

Part 1, the target: over the first ``--sequences`` training sequences, the run's teacher against
the run's baseline standing in for the student, for each estimator of the teacher at T:
- ``uniform``: the earlier cache, top-k plus a uniform tail of the T = 1 tail mass;
- ``uniform, exact tail mass``: top-k plus a uniform tail holding the exact tail mass at T;
- ``sampled``: top-k plus N importance-sampled tail tokens (``soft.cache_kind=sampled``);
- ``hidden``: the teacher's logits recomputed from its cached last hidden states and output
  layer (``soft.cache_kind=hidden``, the default), read back from a cache built on disk.
It reports the loss error (mean over tokens, relative to the exact loss), the gradient error
per token (mean of |g - g_exact| / |g_exact|) and of the summed gradient, and the cosine of the
summed gradient with the exact one.

Part 2, the students (``--students``): soft students distilled with the run's own soft settings
from the full-logit cache (``--no-full`` skips it), from the hidden-state cache (``--no-hidden``
skips it) and from sampled caches (``--draws``: how many independent tail draws, epoch e reading
draw e mod draws; default one per soft epoch; ``--draws`` alone: none), at each temperature:
memorized set (the run's extraction settings) and validation loss.

The run folder is the embedded default's, made by ``kdmem run --output runs/default``:

    python benchmarks/cache_error.py runs/default [--top-k 64] [--tail-samples 16] [--students] \
        [--draws 12] [--no-full] [--no-hidden] [--output benchmarks/results/cache_error.json]

The JSON records this command (``command``), the one that made the run (``input_command``) and
the run folder, relative to the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdmem.config import PAPER_TEMPERATURES, load_config
from kdmem.data import as_tensor, read_sequences
from kdmem.losses import importance_sampled_teacher
from kdmem.memorization import extract_memorized
from kdmem.models import load_model
from kdmem.train import distill, resolve_model_name, validation_loss
from kdmem.train.teacher_cache import CacheSpec, build_teacher_cache, sampled_entries

TEMPERATURES = PAPER_TEMPERATURES


def dense_estimates(
    teacher_logits: torch.Tensor, k: int, samples: int, temperature: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """(n, V) logits -> estimator name -> (n, V) estimated teacher distribution at T."""
    vocab = teacher_logits.shape[-1]
    top, top_ids = teacher_logits.topk(k, -1)
    lse = torch.logsumexp(teacher_logits, -1)
    tail_mass = (1 - torch.exp(top - lse[:, None]).sum(-1)).clamp_min(1e-30)
    uniform_logit = (lse + torch.log(tail_mass) - math.log(vocab - k)) / temperature
    uniform = torch.softmax(uniform_logit[:, None].expand(-1, vocab).scatter(-1, top_ids, top / temperature), -1)
    log_norm = torch.logsumexp(teacher_logits / temperature, -1)
    tail_log_mass = torch.logsumexp(teacher_logits.scatter(-1, top_ids, -torch.inf) / temperature, -1) - log_norm
    exact_mass = (
        torch.exp(tail_log_mass - math.log(vocab - k))[:, None]
        .expand(-1, vocab)
        .scatter(-1, top_ids, torch.exp(top / temperature - log_norm[:, None]))
    )
    spec = CacheSpec("bench", 1, 2, vocab, k, 1, (), tail_samples=samples, temperatures=TEMPERATURES, kind="sampled")
    entries = sampled_entries(teacher_logits, spec, generator)
    ids, _, weights = importance_sampled_teacher(
        entries["top_logits"],
        entries["top_ids"],
        entries["tail_logits"],
        entries["tail_ids"],
        entries["tail_log_proposal"],
        entries["log_partition"][..., TEMPERATURES.index(temperature)],
        temperature,
    )
    sampled = torch.zeros_like(teacher_logits).scatter_add_(-1, ids.long(), weights)
    return {"uniform": uniform, "uniform, exact tail mass": exact_mass, "sampled": sampled}


def hidden_cache_logits(teacher, sequences, vocab: int) -> torch.Tensor:
    """The teacher's logits as a student reads them from a hidden-state cache built on disk."""
    with tempfile.TemporaryDirectory() as scratch:
        cache = build_teacher_cache(
            teacher, sequences, Path(scratch), teacher_id="bench", kind="hidden", vocab_size=vocab
        )
        return cache.logits(cache.rows(list(range(len(sequences))))).float().reshape(-1, vocab)


def target_errors(teacher, baseline, sequences, k: int, samples: int) -> list[dict]:
    ids = as_tensor(sequences)
    with torch.no_grad():
        teacher_logits = torch.cat(
            [teacher(input_ids=ids[i : i + 32, :-1]).logits.float() for i in range(0, len(ids), 32)]
        )
        student_logits = torch.cat(
            [baseline(input_ids=ids[i : i + 32, :-1]).logits.float() for i in range(0, len(ids), 32)]
        )
    vocab = min(teacher_logits.shape[-1], student_logits.shape[-1])
    teacher_logits = teacher_logits[..., :vocab].reshape(-1, vocab)
    student_logits = student_logits[..., :vocab].reshape(-1, vocab)
    from_hidden = hidden_cache_logits(teacher, sequences, vocab)
    rows = []
    for temperature in TEMPERATURES:
        log_t = F.log_softmax(teacher_logits / temperature, -1)
        log_s = F.log_softmax(student_logits / temperature, -1)
        exact_p = log_t.exp()
        exact_loss = (exact_p * (log_t - log_s)).sum(-1) * temperature**2
        exact_grad = temperature * (log_s.exp() - exact_p)
        top_mass = exact_p.topk(k, -1).values.sum(-1).mean().item()
        estimates = dense_estimates(teacher_logits, k, samples, temperature, torch.Generator().manual_seed(0))
        estimates["hidden"] = torch.softmax(from_hidden / temperature, -1)
        for name, p in estimates.items():
            mass = p.sum(-1, keepdim=True)
            loss = (p * (log_t - log_s)).sum(
                -1
            ) * temperature**2  # the cross-entropy and entropy terms the cache's loss uses
            if name.startswith("uniform"):  # the earlier loss took the teacher's entropy from the estimate itself
                loss = (p * (torch.log(p.clamp_min(1e-38)) - log_s)).sum(-1) * temperature**2
            grad = temperature * (mass * log_s.exp() - p)
            summed, exact_summed = grad.sum(0), exact_grad.sum(0)
            rows.append(
                {
                    "temperature": temperature,
                    "estimator": name,
                    "top_k_mass": round(top_mass, 4),
                    "loss_error": (loss.mean() / exact_loss.mean() - 1).item(),
                    "token_gradient_relative_error": ((grad - exact_grad).norm(dim=-1) / exact_grad.norm(dim=-1))
                    .mean()
                    .item(),
                    "summed_gradient_relative_error": ((summed - exact_summed).norm() / exact_summed.norm()).item(),
                    "summed_gradient_cosine": F.cosine_similarity(summed, exact_summed, 0).item(),
                }
            )
    return rows


def students(
    run: Path,
    config,
    teacher,
    train,
    validation,
    k: int,
    samples: int,
    draws: list[int],
    full: bool,
    hidden: bool,
    temperatures: list[float],
) -> list[dict]:
    rows = []
    vocab = teacher.config.vocab_size
    with tempfile.TemporaryDirectory() as scratch:
        caches = {}
        if full:
            caches["full logits"] = build_teacher_cache(
                teacher, train, Path(scratch) / "full", teacher_id="bench", kind="logits", vocab_size=vocab
            )
        if hidden:
            caches["hidden states"] = build_teacher_cache(
                teacher, train, Path(scratch) / "hidden", teacher_id="bench", kind="hidden", vocab_size=vocab
            )
        for count in draws:
            caches[f"top-{k} + {samples} sampled x {count} draws"] = build_teacher_cache(
                teacher,
                train,
                Path(scratch) / f"sampled-{count}",
                teacher_id="bench",
                kind="sampled",
                vocab_size=vocab,
                top_k=k,
                tail_samples=samples,
                tail_draws=count,
                temperatures=TEMPERATURES,
            )
        for temperature in temperatures:
            for name, cache in caches.items():
                start = time.perf_counter()
                soft = dataclasses.replace(config.soft, temperature=temperature)
                student = load_model(resolve_model_name(config.student.model, config.embedded))
                student = distill(
                    student,
                    None,
                    train,
                    soft,
                    Path(scratch) / f"{name}-{temperature}",
                    seed=config.seeds[0],
                    cache=cache,
                )
                verdicts = extract_memorized(
                    student.eval(), train, config.extraction.prefix_len, config.extraction.suffix_len
                )
                memorized = sorted(verdicts.loc[verdicts["memorized"], "example_id"])
                rows.append(
                    {
                        "temperature": temperature,
                        "cache": name,
                        "memorized": len(memorized),
                        "memorized_ids": memorized,
                        "val_loss": validation_loss(student, validation),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(
                    json.dumps({key: value for key, value in rows[-1].items() if key != "memorized_ids"}), flush=True
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--tail-samples", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--students", action="store_true")
    parser.add_argument(
        "--draws",
        type=int,
        nargs="*",
        help="tail draws of the sampled caches (default: one per soft epoch; none: no sampled students)",
    )
    parser.add_argument("--no-full", action="store_true", help="skip the students from the full-logit cache")
    parser.add_argument("--no-hidden", action="store_true", help="skip the students from the hidden-state cache")
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=list(TEMPERATURES), help="temperatures of the students"
    )
    parser.add_argument("--output", default="benchmarks/results/cache_error.json")
    args = parser.parse_args()
    from provenance import command, input_command, relative  # benchmarks/provenance.py

    config = load_config(args.run / "config.yaml")
    teacher = load_model(str(args.run / "models" / "teacher")).eval()
    baseline = load_model(str(args.run / "models" / "baseline")).eval()
    train = read_sequences(args.run / "data" / "train.parquet")
    result = {
        "command": command(),
        **input_command(args.run),
        "run": relative(args.run),
        "top_k": args.top_k,
        "tail_samples": args.tail_samples,
        "sequences": args.sequences,
        "target": target_errors(teacher, baseline, train.iloc[: args.sequences], args.top_k, args.tail_samples),
    }
    for row in result["target"]:
        print(
            f"T={row['temperature']:g} {row['estimator']:26s} loss {100 * row['loss_error']:+6.1f}%  "
            f"token grad {row['token_gradient_relative_error']:.3f}  "
            f"summed grad {row['summed_gradient_relative_error']:.3f}  cos {row['summed_gradient_cosine']:.3f}"
        )
    if args.students:
        draws = [config.soft.cache_draws] if args.draws is None else args.draws
        result["students"] = students(
            args.run,
            config,
            teacher,
            train,
            read_sequences(args.run / "data" / "validation.parquet"),
            args.top_k,
            args.tail_samples,
            draws,
            not args.no_full,
            not args.no_hidden,
            args.temperatures,
        )
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
