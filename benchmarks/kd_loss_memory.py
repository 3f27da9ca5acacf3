"""Peak memory of one soft-KD loss step (forward and backward) at a Pythia-sized vocabulary:
``distillation_loss`` one chunk of tokens at a time vs all tokens at once.

Each setting runs in a fresh subprocess, so its peak resident memory (CPU) or peak allocated
memory (CUDA) is its own. The inputs are bf16 student and teacher logits (batch, seq, vocab), as
a bf16 model produces them; what a setting adds over them is what the loss itself costs.

    python benchmarks/kd_loss_memory.py                      # batch 8, seq 256, vocab 50304
    python benchmarks/kd_loss_memory.py --batch 8 --chunks 256 1024 0

Prints a table and writes JSON (default ``benchmarks/results/kd_loss_memory.json``); the JSON
records this command (``command``), with paths relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdmem.losses import distillation_loss


def one_step(batch: int, seq: int, vocab: int, chunk: int, device: str) -> dict:
    """Inside the subprocess: make the logits, record the memory they take, run one step."""
    generator = torch.Generator(device=device).manual_seed(0)
    # made in bf16 directly: a float32 temporary would raise the high-water mark before the loss runs
    student = torch.randn(batch, seq, vocab, device=device, generator=generator, dtype=torch.bfloat16).requires_grad_()
    teacher = torch.randn(batch, seq, vocab, device=device, generator=generator, dtype=torch.bfloat16)

    def peak() -> int:
        if device == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    inputs = peak()
    start = time.perf_counter()
    loss = distillation_loss(student, teacher, temperature=2.0, chunk_size=chunk or batch * seq)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - start,
        "peak_bytes": peak(),
        "before_loss_bytes": inputs,
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50304, help="Pythia's padded vocabulary")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[1024, 0], help="tokens per chunk; 0 = all tokens at once"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "kd_loss_memory.json"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(one_step(args.batch, args.seq, args.vocab, args.child, args.device)))
        return

    from provenance import command as command_line  # benchmarks/provenance.py

    tokens = args.batch * args.seq
    float32_tensor = tokens * args.vocab * 4
    rows = []
    for chunk in args.chunks:
        command = [
            sys.executable,
            __file__,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--vocab",
            str(args.vocab),
            "--device",
            args.device,
            "--child",
            str(chunk),
        ]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        added = result["peak_bytes"] - result["before_loss_bytes"]
        rows.append({"chunk_tokens": chunk or tokens, **result, "added_by_loss_bytes": added})
    losses = {round(row["loss"], 4) for row in rows}
    assert len(losses) == 1, f"chunking changed the loss: {losses}"
    print(
        f"batch {args.batch} x seq {args.seq} x vocab {args.vocab} on {args.device}: "
        f"one float32 (batch, seq, vocab) tensor is {float32_tensor / 2**20:.0f} MiB"
    )
    print(f"{'chunk tokens':>13}{'peak MiB':>10}{'added by loss MiB':>19}{'seconds':>9}")
    for row in rows:
        print(
            f"{row['chunk_tokens']:>13}{row['peak_bytes'] / 2**20:>10.0f}"
            f"{row['added_by_loss_bytes'] / 2**20:>19.0f}{row['seconds']:>9.2f}"
        )
    result = {
        "command": command_line(),
        "batch": args.batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "device": args.device,
        "float32_full_tensor_bytes": float32_tensor,
        "rows": rows,
        "platform": platform.platform(),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
