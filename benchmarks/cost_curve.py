"""The cost curve: wall time of each pipeline stage as D grows, to show that every stage is linear
in the number of training examples.

Each size runs ``kdmem run`` (the Python API) in its own output folder with the smoke preset's
models, one epoch per training stage, and the larger ``builtin:python-docs-public`` corpus
(the private part has too few sequences for the largest D; which text it is does not change
the cost). Stage times come from each run's ``run.json``. Per stage, a least-squares line
through (D, seconds) gives seconds per 1,000 examples and R^2; a stage is linear when R^2 is
near 1 and the intercept is small against the largest D's time.

    python benchmarks/cost_curve.py                        # D = 1k, 4k, 16k
    python benchmarks/cost_curve.py --sizes 500 1000 2000 --output /tmp/curve.json

Prints a table and writes JSON and a PNG next to it (default ``benchmarks/results/cost_curve.*``);
the JSON records this command (``command``), with paths relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdmem.config import load_config
from kdmem.pipeline import run

EXCLUDED = {"bases"}
"""Built once per machine and cached, whatever D is."""


def config_for(size: int, seq_len: int, validation: int):
    half = seq_len // 2
    return load_config(
        preset="smoke",
        overrides={
            "name": f"cost-{size}",
            "data.source": "builtin:python-docs-public",
            "data.num_examples": size,
            "data.validation_examples": validation,
            "data.seq_len": seq_len,
            "extraction.prefix_len": half,
            "extraction.suffix_len": half,
            "extraction.prefix_lens": [half // 2, half],
            "hard.prefix_len": half,
            "teacher.training.epochs": 1,
            "student.training.epochs": 1,
            "soft.training.epochs": 1,
            "hard.training.epochs": 1,
        },
    )


def linear_fit(sizes: list[int], seconds: list[float]) -> dict:
    x, y = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = ((y - (slope * x + intercept)) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return {
        "seconds_per_1k": slope * 1000,
        "intercept_seconds": intercept,
        "r2": 1 - residual / total if total else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--seq-len", type=int, default=24)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cost_curve.json"))
    args = parser.parse_args()
    from provenance import command  # benchmarks/provenance.py

    stage_seconds: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            run(config_for(size, args.seq_len, args.validation), Path(scratch) / str(size))
            times = json.loads((Path(scratch) / str(size) / "run.json").read_text())["stage_seconds"]
            stage_seconds[size] = {stage: t for stage, t in times.items() if stage not in EXCLUDED}

    stages = list(stage_seconds[args.sizes[-1]])
    totals = [sum(stage_seconds[size].values()) for size in args.sizes]
    fits = {
        stage: linear_fit(args.sizes, [stage_seconds[size].get(stage, 0.0) for size in args.sizes]) for stage in stages
    }
    fits["total"] = linear_fit(args.sizes, totals)

    print(f"seconds per stage, seq_len {args.seq_len}, smoke models, 1 epoch per training stage")
    print(f"{'stage':>22}" + "".join(f"{'D=' + str(s):>10}" for s in args.sizes) + f"{'s/1k':>9}{'R^2':>8}")
    for stage in [*stages, "total"]:
        row = totals if stage == "total" else [stage_seconds[size].get(stage, 0.0) for size in args.sizes]
        fit = fits[stage]
        print(f"{stage:>22}" + "".join(f"{t:>10.1f}" for t in row) + f"{fit['seconds_per_1k']:>9.2f}{fit['r2']:>8.3f}")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command(),
        "sizes": args.sizes,
        "seq_len": args.seq_len,
        "stage_seconds": {str(size): times for size, times in stage_seconds.items()},
        "total_seconds": dict(zip(map(str, args.sizes), totals, strict=True)),
        "fits": fits,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    output.write_text(json.dumps(payload, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    scoring = ("extract:", "validation:", "membership:", "canaries:")
    groups = {
        "training": [
            s
            for s in stages
            if not s.startswith(
                (*scoring, "features", "analysis", "report", "summary", "data", "hard_data", "filtering", "cache")
            )
        ]
    }
    groups["evaluation"] = [s for s in stages if s.startswith(scoring)]
    groups["hard data"] = ["hard_data"]
    groups["data, features, filtering, analysis, report"] = [
        s for s in stages if s in ("data", "features", "filtering", "analysis", "report")
    ]
    for label, members in groups.items():
        axis.plot(
            args.sizes,
            [sum(stage_seconds[size].get(s, 0.0) for s in members) for size in args.sizes],
            marker="o",
            label=label,
        )
    axis.plot(args.sizes, totals, marker="o", color="black", label="total")
    axis.set_xlabel("training examples D")
    axis.set_ylabel("seconds")
    axis.set_title(f"kdmem run stage times (smoke models, seq_len {args.seq_len}, 1 epoch)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
