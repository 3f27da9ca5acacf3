"""Memorization over training: a ``TrainerCallback`` that audits D every few epochs.

Memorization onset is sharp (a few epochs, or a small change of learning rate, separate almost
none from most of D), so a final count alone hides when and how fast each model memorizes.
"""

from __future__ import annotations

import logging

import pandas as pd
from transformers import TrainerCallback

from kdmem.memorization.extraction import extract_memorized

logger = logging.getLogger(__name__)


class MemorizationTracker(TrainerCallback):
    """Counts memorized examples of ``sequences`` at the end of every ``every_epochs``-th epoch.

    ``history`` holds one record per measurement: epoch, global step, memorized and examples;
    each record is also added to the Trainer's log history, so ``report_to`` loggers see it.
    """

    def __init__(
        self,
        sequences: pd.DataFrame,
        prefix_len: int,
        suffix_len: int,
        every_epochs: int = 1,
        batch_size: int = 64,
        name: str = "model",
    ):
        self.sequences = sequences
        self.prefix_len = prefix_len
        self.suffix_len = suffix_len
        self.every_epochs = every_epochs
        self.batch_size = batch_size
        self.name = name
        self.history: list[dict] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch % self.every_epochs:
            return
        was_training = model.training
        verdicts = extract_memorized(
            model, self.sequences, self.prefix_len, self.suffix_len, self.batch_size, desc=f"track {self.name}"
        )
        model.train(was_training)
        record = {
            "epoch": epoch,
            "step": state.global_step,
            "memorized": int(verdicts["memorized"].sum()),
            "examples": len(verdicts),
        }
        self.history.append(record)
        state.log_history.append({"memorized": record["memorized"], "epoch": epoch, "step": state.global_step})
        logger.info("%s epoch %d: memorized %d of %d", self.name, epoch, record["memorized"], record["examples"])
