"""The stage graphs of the shipped configs, held fixed: a refactor of the recipe must leave every
stage's fingerprint (so every finished run stays current), its needs, outputs and the plan's
compute estimate byte-identical. After an intended change, rewrite the file with

    python tests/test_graph_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdmem.config import load_config
from kdmem.layout import RunLayout
from kdmem.pipeline import stage_graph
from kdmem.stages import Sizes, fingerprints

GOLDEN = Path(__file__).parent / "golden" / "stage_graphs.json"
REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": {},
    "smoke": {"preset": "smoke"},
    "paper-mini": {"preset": "paper-mini"},
    **{path.stem: {"path": str(path)} for path in sorted((REPOSITORY / "configs" / "paper").glob("*.yaml"))},
}
# Made-up sizes, so that every stage's compute estimate is a number to compare.
SIZES = Sizes(teacher=12e9, student=1.4e9, tokens=2.56e8, head=5120 * 50304, held_out_tokens=2.56e6, cross_scale=1e9)


def describe(name: str) -> dict:
    """Every stage of the config ``name``: its fingerprint and what else it declares."""
    config = load_config(**CONFIGS[name])
    root = Path("runs") / config.name
    graph = stage_graph(config, RunLayout(root))
    prints = fingerprints(graph)
    return {
        stage.name: {
            "fingerprint": prints[stage.name],
            "action": stage.action.__name__,
            "needs": list(stage.needs),
            "outputs": [str(path.relative_to(root)) for path in stage.outputs],
            "distributed": stage.distributed,
            "speed": stage.speed,
            "flops": stage.flops(SIZES) if stage.flops else None,
            "rebuilt_freely": stage.rebuilt_freely,
        }
        for stage in graph
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stage_graph_is_unchanged(name):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden graph for {name}: run python tests/test_graph_golden.py"
    assert describe(name) == golden[name]


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({name: describe(name) for name in CONFIGS}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
