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
