"""Training: pre-training the embedded bases, fine-tuning, soft and hard distillation (whose data,
the teacher's greedy continuations, comes from ``kdmem.models.decoding``)."""

from kdmem.train.pretrain import embedded_bases, resolve_model_name
from kdmem.train.trainers import DistillationTrainer, causal_lm_collator, distill, fine_tune, validation_loss

__all__ = [
    "DistillationTrainer",
    "causal_lm_collator",
    "distill",
    "embedded_bases",
    "fine_tune",
    "resolve_model_name",
    "validation_loss",
]
