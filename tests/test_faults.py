"""Fault injection: real ``kdmem run`` processes are SIGKILLed at several points
(``tests/kill_at.py``), then ``kdmem run`` on the same folder must finish with outputs identical to
an uninterrupted run with the same seed. Run alone with ``pytest -m faults``; part of the default run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_OVERRIDES, assert_no_secrets

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parent.parent
# Small batches, so that every killed stage is several steps or batches long.
ARGS = [
    "run",
    "--preset",
    "smoke",
    *TINY_OVERRIDES,
    "extraction.batch_size=8",
    "hard.generation_batch_size=8",
    "teacher.training.batch_size=8",
    "student.training.batch_size=8",
]
COMPARED = [
    "summary.json",
    "analysis.json",
    "data/train.parquet",
    "data/hard.parquet",
    "features.parquet",
    "filtering.json",
]


def kdmem(*argv: str, kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    # One thread in every process: the reference and the resumed runs then add floats in the same order.
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    if kill_at:
        command = [sys.executable, str(ROOT / "tests" / "kill_at.py"), kill_at[0], str(kill_at[1]), "--", *argv]
    else:
        command = [sys.executable, "-m", "kdmem.cli", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def reference(tiny_bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    done = kdmem(*ARGS, "-o", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def without_timings(value):
    """JSON content minus what differs between any two runs: wall times."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "stage_seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_outputs(out: Path, reference: Path) -> None:
    for name in COMPARED:
        if name.endswith(".json"):
            assert without_timings(json.loads((out / name).read_text())) == without_timings(
                json.loads((reference / name).read_text())
            ), name
        else:
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / name), pd.read_parquet(reference / name), check_exact=True
            )
    for folder in ("memorization", "membership"):
        names = sorted(p.name for p in (reference / folder).glob("*.parquet"))
        assert names and names == sorted(p.name for p in (out / folder).glob("*.parquet"))
        for name in names:  # same rows, same values, same memorized sets
            pd.testing.assert_frame_equal(
                pd.read_parquet(out / folder / name), pd.read_parquet(reference / folder / name), check_exact=True
            )
    assert (out / "report.html").stat().st_size > 0
    leftovers = [str(p) for p in out.rglob("*") if p.name.endswith((".tmp", ".saving"))]
    assert leftovers == [], leftovers


@pytest.mark.parametrize(
    "point, times",
    [
        # The default run keeps one kill, mid-training (the costliest stage to lose); the other
        # points, about 25 s each, run with `make test-all`.
        ("train", 15),  # the baseline's third step, after the teacher's 12
        pytest.param(
            "generate", 3, marks=pytest.mark.slow
        ),  # the third batch of the teacher's continuations for hard KD
        pytest.param("extract", 9, marks=pytest.mark.slow),  # the second model's audit (6 batches of 8 per model)
        pytest.param("report", 1, marks=pytest.mark.slow),  # report.html written, not yet renamed
    ],
)
def test_killed_run_resumes_to_identical_outputs(reference, tmp_path, point, times):
    out = tmp_path / "run"
    killed = kdmem(*ARGS, "-o", str(out), kill_at=(point, times))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert f"SIGKILL at {point}" in killed.stderr
    assert not (out / "summary.json").exists() or point == "report"
    resumed = kdmem(*ARGS, "-o", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "done already" in resumed.stderr  # finished stages were kept, not redone
    assert_same_outputs(out, reference)
    assert_no_secrets(killed.stdout, killed.stderr, resumed.stdout, resumed.stderr, folder=out)
