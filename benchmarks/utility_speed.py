"""Downstream utility's cost and dtype agreement: kdmem's lm-eval stage on a Pythia-shaped model.

Times ``kdmem.utility.evaluate_utility`` (lm-eval's ``simple_evaluate`` through ``HFLM``) on
kdmem's two local tasks, written from the embedded corpus, once per dtype, and reports documents
and tokens per second, the model FLOP/s it reaches (2 N FLOPs per forwarded token, as
``--dry-run`` counts) and the seconds ``--dry-run`` would predict for the same tokens (its H100
peak at 40% utilization). Per-sample verdicts of each dtype are compared with the first's.

The model is GPT-NeoX built from a config at Pythia's vocabulary (50,304) with random weights, so
accuracies are chance; the cost and the agreement are what it measures. The tokenizer is a
byte-level BPE trained on the corpus (its ids fit the vocabulary).

    python benchmarks/utility_speed.py                                  # tiny, on CPU
    python benchmarks/utility_speed.py --hidden 1024 --layers 24 --heads 16 --documents 2000  # 410m-like

Prints a table and writes JSON (default ``benchmarks/results/utility_speed.json``) with this
command (``command``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from kdmem.config import TinySizeConfig
from kdmem.data.builtin import python_docs
from kdmem.models.tiny import build_model, train_tokenizer
from kdmem.plan import PEAK_FLOPS, UTILIZATION
from kdmem.utility import LOCAL_TASKS, headline_metrics, samples_table, write_local_documents

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def corpus_windows(texts: list[str], count: int, chars: int) -> list[str]:
    """``count`` windows of about ``chars`` characters, cut at spaces, from ``texts`` in order."""
    windows = []
    for text in texts:
        text = " ".join(text.split())
        for start in range(0, len(text) - chars, chars):
            windows.append(text[start : start + chars])
            if len(windows) == count:
                return windows
    return windows


def forwarded_tokens(tokenizer, task: str, documents: list[dict]) -> int:
    """Tokens lm-eval forwards for ``documents``: context and continuation of every request."""
    if task == "kdmem_last_word":
        texts = [doc["context"] + " " + doc["target"] for doc in documents]
    else:
        texts = [doc["context"] + choice for doc in documents for choice in doc["choices"]]
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"])


def main() -> None:
    from provenance import command

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--documents", type=int, default=200, help="texts each task is written from")
    parser.add_argument("--chars", type=int, default=480, help="characters per text (~100 tokens)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="benchmarks/results/utility_speed.json")
    args = parser.parse_args()

    import lm_eval

    from kdmem.utility import evaluate_utility

    texts = corpus_windows(python_docs("public"), args.documents, args.chars)
    tokenizer = train_tokenizer(python_docs("public"), 8192)
    work = Path(tempfile.mkdtemp(prefix="kdmem-utility-"))
    tasks = list(LOCAL_TASKS)
    counts = write_local_documents(texts, work / "documents", tasks)
    documents = {task: [json.loads(line) for line in (work / "documents" / f"{task}.jsonl").open()] for task in tasks}
    tokens = sum(forwarded_tokens(tokenizer, task, documents[task]) for task in tasks)

    torch.manual_seed(0)
    size = TinySizeConfig(hidden=args.hidden, layers=args.layers, heads=args.heads)
    base = build_model(size, args.vocab, 2048, tokenizer).eval()
    parameters = sum(p.numel() for p in base.parameters() if p is not base.get_input_embeddings().weight)
    runs, verdicts = [], {}
    for name in args.dtypes:
        model = build_model(size, args.vocab, 2048, tokenizer)
        model.load_state_dict(base.state_dict())
        model = model.to(args.device, DTYPES[name]).eval()
        evaluate_utility(model, tokenizer, tasks, work / "documents", work / "warm", limit=8, batch_size=8)
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = evaluate_utility(
            model, tokenizer, tasks, work / "documents", work / name, batch_size=args.batch_size, bootstrap_iters=0
        )
        seconds = time.perf_counter() - start
        table = samples_table(results)
        verdicts[name] = table.set_index(["task", "doc_id"])["acc"]
        flops = 2 * parameters * tokens
        runs.append(
            {
                "dtype": name,
                "seconds": seconds,
                "documents_per_s": sum(counts.values()) / seconds,
                "tokens_per_s": tokens / seconds,
                "model_tflops": flops / seconds / 1e12,
                "dry_run_seconds": flops / (PEAK_FLOPS * UTILIZATION),
                "metrics": headline_metrics(results),
                "agreement_with_first": float((verdicts[name] == verdicts[args.dtypes[0]]).mean()),
            }
        )
        del model
    record = {
        "command": command(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "lm_eval": lm_eval.__version__,
        "non_embedding_parameters": parameters,
        "documents": counts,
        "forwarded_tokens": tokens,
        "batch_size": args.batch_size,
        "runs": runs,
    }
    print(f"{parameters / 1e6:.1f}M parameters, documents {counts}, {tokens} tokens forwarded, {record['device']}")
    print(f"{'dtype':<10}{'seconds':>9}{'docs/s':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'dry-run s':>11}{'agree':>7}")
    for run in runs:
        print(
            f"{run['dtype']:<10}{run['seconds']:>9.2f}{run['documents_per_s']:>9.0f}{run['tokens_per_s']:>11.0f}"
            f"{run['model_tflops']:>9.2f}{run['dry_run_seconds']:>11.3f}{run['agreement_with_first']:>7.3f}"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
