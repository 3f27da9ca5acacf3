"""kdmem: memorization dynamics in knowledge distillation for language models.

The Python API behind the ``kdmem`` command::

    import kdmem
    config = kdmem.load_config(preset="smoke", overrides=["data.num_examples=200"])
    summary = kdmem.run(config, "runs/smoke")
    checked = kdmem.rehearse(kdmem.load_config("configs/paper/pythia-fineweb.yaml"))  # look-alikes, minutes on a CPU
"""

__version__ = "0.1.0"

from kdmem.config import ConfigError, ExperimentConfig, load_config
from kdmem.losses import distillation_loss
from kdmem.pipeline import run
from kdmem.rehearsal import rehearse

__all__ = ["ConfigError", "ExperimentConfig", "__version__", "distillation_loss", "load_config", "rehearse", "run"]
