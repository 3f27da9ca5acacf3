"""Extraction speed: kdmem's staged forward passes vs greedy ``generate``, side by side.

Same process, model, data and batch size for every method:

- ``kdmem``: ``extract_memorized`` (early exit over the KV cache, near-ties rechecked with generate);
- ``kdmem_full``: the one full pass (``--full``), which also yields suffix loss and prefix curves;
- ``generate``: greedy ``model.generate`` of the suffix from each prefix, batched with the KV cache,
  then compared with the true suffix, as the public memorization scripts do it;
- ``forward_full``: a bare forward pass over prefix + suffix (the cost of any one-pass method);
- ``floor``: a bare forward pass over prefix + 1 token, the least any exact method can compute.

Verdicts of ``kdmem`` and ``generate`` are checked equal before any time is reported.

    python benchmarks/extraction_speed.py                       # default teacher base, k = L = 50
    python benchmarks/extraction_speed.py --model runs/default/models/teacher --prefix-len 32 --suffix-len 32

``runs/default`` is the embedded default run, made by ``kdmem run --output runs/default``. Prints a
table and writes JSON (default ``benchmarks/results/extraction_speed.json``), which records this
command (``command``) and, for a model or data from a run, the one that made it
(``input_command``), with paths relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from kdmem.config import DataConfig, EmbeddedModelsConfig
from kdmem.data import as_tensor, load_sequences
from kdmem.memorization import extract_memorized, greedy_matched_tokens
from kdmem.models import load_model, load_tokenizer
from kdmem.train import resolve_model_name


def best_time(work, repeats: int) -> float:
    """Fastest of ``repeats`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def bare_forward(model, input_ids: torch.Tensor, length: int, batch_size: int) -> None:
    for start in range(0, len(input_ids), batch_size):
        model(input_ids=input_ids[start : start + batch_size, :length].to(model.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default="builtin:tiny-teacher",
        help="hub name, folder, or builtin:tiny-teacher (the default config's base)",
    )
    parser.add_argument("--data", default="builtin:python-docs")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--prefix-len", type=int, default=50)
    parser.add_argument("--suffix-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "extraction_speed.json"))
    args = parser.parse_args()
    from provenance import command, input_command, relative  # benchmarks/provenance.py

    model_path = resolve_model_name(args.model, EmbeddedModelsConfig())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_path, device=device).eval()
    k, L, batch = args.prefix_len, args.suffix_len, args.batch_size
    data = DataConfig(source=args.data, seq_len=k + L, num_examples=args.examples, validation_examples=0)
    sequences = load_sequences(data, load_tokenizer(model_path))
    input_ids = as_tensor(sequences)

    # Correctness first: identical verdicts, or no timing at all.
    verdicts = extract_memorized(model, sequences, k, L, batch)
    truth = greedy_matched_tokens(model, input_ids, k, L, batch)
    assert verdicts["matched_tokens"].tolist() == truth.tolist(), "kdmem and generate disagree"
    memorized_rate = float(verdicts["memorized"].mean())

    seconds = {
        "kdmem": best_time(lambda: extract_memorized(model, sequences, k, L, batch), args.repeats),
        "kdmem_full": best_time(lambda: extract_memorized(model, sequences, k, L, batch, full=True), args.repeats),
        "generate": best_time(lambda: greedy_matched_tokens(model, input_ids, k, L, batch), args.repeats),
        "forward_full": best_time(lambda: bare_forward(model, input_ids, k + L, batch), args.repeats),
        "floor": best_time(lambda: bare_forward(model, input_ids, k + 1, batch), args.repeats),
    }
    n = len(sequences)
    result = {
        "command": command(),
        **input_command(args.model, args.data),
        "model": relative(args.model),
        "model_path": relative(model_path),
        "data": relative(args.data),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "examples": n,
        "prefix_len": k,
        "suffix_len": L,
        "batch_size": batch,
        "memorized_rate": memorized_rate,
        "rechecked": int(verdicts["rechecked"].sum()),
        # Where early exit pays: the share still matching after the first 4 suffix tokens (the
        # first stage's length, extraction.first_stage_tokens), which the later stages must decode.
        "still_matching_after_4_tokens": float((truth >= 4).float().mean()),
        "seconds": seconds,
        "examples_per_second": {name: n / s for name, s in seconds.items()},
        "speedup_vs_generate": seconds["generate"] / seconds["kdmem"],
        "kdmem_over_floor": seconds["kdmem"] / seconds["floor"],
        "kdmem_full_over_forward_full": seconds["kdmem_full"] / seconds["forward_full"],
    }
    print(
        f"{n} examples, k = {k}, L = {L}, batch {batch}, {result['parameters']:,} parameters on {result['device']}; "
        f"memorized {memorized_rate:.1%}, {result['still_matching_after_4_tokens']:.0%} still matching after "
        f"4 suffix tokens, rechecked {result['rechecked']}"
    )
    for name, s in seconds.items():
        print(f"  {name:13s} {s:8.3f} s  {n / s:9.1f} examples/s")
    print(
        f"  kdmem is {result['speedup_vs_generate']:.2f}x faster than generate, "
        f"{result['kdmem_over_floor']:.2f}x the floor; "
        f"the full pass is {result['kdmem_full_over_forward_full']:.2f}x a bare forward pass"
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
