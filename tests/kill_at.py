"""Run ``kdmem`` and SIGKILL it at a chosen point: the fault-injection tests' entry point.

    python tests/kill_at.py POINT N -- run --preset smoke ...

POINT is where the process kills itself, on the N-th time it gets there:

- ``train``: a training step (``Trainer.training_step``) of any stage;
- ``generate``: a batch of the teacher's greedy continuations for hard KD;
- ``extract``: a batch of the memorization audit of a trained model (the evaluation stage);
- ``report``: the rename that would publish ``report.html`` (the file is written, not yet in place).

The kill is a real ``SIGKILL``: no ``finally`` block, no atomic-write cleanup runs. Nothing of this
lives in kdmem itself; the patches are made here, before ``kdmem.cli.main`` runs.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    point, times = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    calls = {"n": 0}

    def arrive() -> None:
        calls["n"] += 1
        if calls["n"] == times:
            sys.stderr.write(f"kill_at: SIGKILL at {point} #{times}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def counting(function, inside: dict | None = None):
        def wrapper(*args, **kwargs):
            if inside is None or inside["active"]:
                arrive()
            return function(*args, **kwargs)

        return wrapper

    def scope(function, inside: dict):
        """``function`` with ``inside["active"]`` set while it runs."""

        def wrapper(*args, **kwargs):
            inside["active"] = True
            try:
                return function(*args, **kwargs)
            finally:
                inside["active"] = False

        return wrapper

    import kdmem.pipeline as pipeline

    if point == "train":
        import transformers

        transformers.Trainer.training_step = counting(transformers.Trainer.training_step)
    elif point == "generate":
        import transformers

        inside = {"active": False}
        pipeline.greedy_continuations = scope(pipeline.greedy_continuations, inside)
        transformers.GenerationMixin.generate = counting(transformers.GenerationMixin.generate, inside)
    elif point == "extract":
        import kdmem.memorization.extraction as extraction

        inside = {"active": False}
        pipeline.measure_memorization = scope(pipeline.measure_memorization, inside)
        extraction._full_pass = counting(extraction._full_pass, inside)
        extraction._staged_checks = counting(extraction._staged_checks, inside)
    elif point == "report":
        real_replace = os.replace

        def replace(source, target, *args, **kwargs):
            if os.path.basename(target) == "report.html":
                arrive()
            return real_replace(source, target, *args, **kwargs)

        os.replace = replace
    else:
        raise SystemExit(f"unknown point {point!r}")

    from kdmem.cli import main as kdmem_main

    return kdmem_main(argv)


if __name__ == "__main__":
    sys.exit(main())
