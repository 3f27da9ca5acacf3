"""Training: pre-training the embedded bases, fine-tuning, soft and hard distillation."""

from kdmem.train.hard import greedy_config, greedy_continuations
from kdmem.train.pretrain import embedded_bases, resolve_model_name
from kdmem.train.trainers import DistillationTrainer, causal_lm_collator, distill, fine_tune, validation_loss

__all__ = [
    "DistillationTrainer",
    "causal_lm_collator",
    "distill",
    "embedded_bases",
    "fine_tune",
    "greedy_config",
    "greedy_continuations",
    "resolve_model_name",
    "validation_loss",
]
