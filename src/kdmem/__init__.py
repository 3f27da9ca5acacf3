"""kdmem: memorization dynamics in knowledge distillation for language models.

The Python API behind the ``kdmem`` command::

    import kdmem
    config = kdmem.load_config(preset="smoke", overrides=["data.num_examples=200"])
    summary = kdmem.run(config, "runs/smoke")
    checked = kdmem.rehearse(kdmem.load_config("configs/paper/pythia-fineweb.yaml"))  # look-alikes, minutes on a CPU
"""

__version__ = "0.1.0"

from kdmem.config import ExperimentConfig, load_config
from kdmem.errors import ConfigError

__all__ = ["ConfigError", "ExperimentConfig", "__version__", "distillation_loss", "load_config", "rehearse", "run"]

_LAZY = {"run": "kdmem.pipeline", "rehearse": "kdmem.rehearsal", "distillation_loss": "kdmem.losses"}
"""Imported when first used: the pipeline loads torch, transformers and the analyses, which
``import kdmem`` (and ``kdmem --help``) need not wait for."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdmem' has no attribute {name!r}")
