"""What the benchmarks compute besides timings."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kd_step_counts_only_the_teacher_work_each_variant_does():
    """The cached variant never runs the teacher: its MFU used to count 2 N_teacher FLOPs per token anyway."""
    step_flops = _module("kd_step").step_flops
    parameters = {"student": 1.4e9, "teacher": 12e9}
    assert step_flops("kdmem", parameters, "hidden", 5120, 50304) == 6 * 1.4e9 + 2 * 12e9
    assert step_flops("kdmem_cache", parameters, "hidden", 5120, 50304) == 6 * 1.4e9 + 2 * 5120 * 50304
    assert step_flops("kdmem_cache", parameters, "sampled", 5120, 50304) == 6 * 1.4e9


def test_kd_step_reports_nothing_when_the_exact_variants_disagree():
    import pytest

    check = _module("kd_step").check_agreement
    rows = [{"variant": v, "first_loss": 0.0767, "bf16": False} for v in ("plain", "trl_gkd", "kdmem")]
    sampled = {"variant": "kdmem_cache", "first_loss": 0.0268, "bf16": False}  # top-k: approximate, not held to it
    assert check(rows + [sampled], "sampled") == 0.0
    with pytest.raises(SystemExit, match="exact variants disagree .* kdmem_cache 0.0268"):
        check(rows + [sampled], "hidden")  # a hidden-state cache is exact: it must agree
    off = [*rows[:2], {"variant": "kdmem", "first_loss": 0.0767 * (1 + 3e-4), "bf16": False}]
    with pytest.raises(SystemExit, match="3.00e-04 > 0.0001"):
        check(off, "hidden")
    assert check([{**row, "bf16": True} for row in off], "hidden") == pytest.approx(3e-4)  # within bf16's precision
