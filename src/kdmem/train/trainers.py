"""Training on ``transformers.Trainer``: cross-entropy fine-tuning and soft distillation.

Both stages are a ``Trainer`` run, so ``accelerate launch`` (DDP, FSDP, DeepSpeed), bf16,
gradient accumulation, checkpoints and ``report_to`` logging come from the ecosystem. The only
new part is ``DistillationTrainer.compute_loss``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed
from transformers.integrations import get_reporting_integration_callbacks

from kdmem.data import as_training_dataset
from kdmem.errors import TrainingError
from kdmem.losses import distillation_loss, on_shared_vocabulary, sampled_forward_kl
from kdmem.train.teacher_cache import TeacherLogitCache

if TYPE_CHECKING:  # annotations only: kdmem.config imports kdmem.train.teacher_cache, which imports this module
    from kdmem.config import SoftDistillConfig, TrainingConfig


def training_arguments(
    cfg: TrainingConfig, output_dir: Path, seed: int, remove_unused_columns: bool = True
) -> TrainingArguments:
    """``cfg`` as ``TrainingArguments``; settings transformers refuses (an unknown ``lr_scheduler`` or
    ``report_to``, a key of ``extra_args`` it does not have, bf16 where the hardware has none) raise
    ``ConfigError``."""
    from kdmem.config import ConfigError  # not at the top: kdmem.config imports what imports this module

    try:
        args = TrainingArguments(
            remove_unused_columns=remove_unused_columns,
            output_dir=str(output_dir),
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=float(cfg.warmup_ratio),  # a float below 1 is a share of all steps
            weight_decay=cfg.weight_decay,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            bf16=cfg.bf16,
            # bf16 mixed precision without a GPU is CPU autocast, which transformers runs only when asked
            use_cpu=cfg.bf16 and not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            logging_steps=cfg.logging_steps,
            report_to=cfg.report_to,
            save_strategy=cfg.extra_args.get("save_strategy", "no"),
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            **{k: v for k, v in cfg.extra_args.items() if k != "save_strategy"},
        )
        get_reporting_integration_callbacks(args.report_to)  # what Trainer() would refuse, refused here
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"transformers refuses the training settings of the {Path(output_dir).name} stage: "
            f"{str(error).rstrip('.')}. "
            "Check its training section (lr_scheduler, logging_steps, report_to, bf16, extra_args)."
        ) from None
    return args


def causal_lm_collator(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Fixed-length sequences need no padding: labels are the inputs (the model shifts them).
    Rows that carry a ``cache_row`` (their row in the teacher-logit cache) pass it on as ``cache_rows``."""
    input_ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])
    batch = {"input_ids": input_ids, "labels": input_ids.clone()}
    if "cache_row" in rows[0]:
        batch["cache_rows"] = torch.as_tensor([int(row["cache_row"]) for row in rows])
    return batch


class KdmemTrainer(Trainer):
    """A ``Trainer`` that stops at the first non-finite loss, before that step changes the weights,
    and saves the weights it still has (the last good ones) next to its checkpoints."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0], device=loss.device)
        if self.accelerator.num_processes > 1:  # every process stops together, or the others would wait forever
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            step = self.state.global_step + 1
            kept = Path(self.args.output_dir) / f"last-good-step-{self.state.global_step}"
            self.save_model(str(kept))  # the optimizer has not applied this step: the weights are still good
            raise TrainingError(
                f"The training loss became {loss.item()} at step {step} (epoch {self.state.epoch or 0:.2f}) of "
                f"{Path(self.args.output_dir).name}; training stopped before the step changed the weights. The "
                f"weights after step {self.state.global_step} are saved in {kept}. Lower the learning rate, or "
                "check the data and the model's dtype (bf16 on hardware without it overflows)."
            )
        return loss


def _run(
    trainer_cls,
    model: PreTrainedModel,
    train: pd.DataFrame,
    cfg: TrainingConfig,
    work_dir: Path,
    seed: int,
    callbacks=None,
    save_to: Path | None = None,
    **extra,
) -> PreTrainedModel:
    set_seed(seed)
    # A stage killed after saving a checkpoint (training.extra_args: save_strategy) resumes from
    # the last one: weights, optimizer, scheduler, RNG and the place in the data. The weights are
    # read with from_pretrained, which knows the architecture's key names; the Trainer's own
    # reload misses renamed keys (GPT-NeoX's embed_out -> lm_head in transformers 5).
    checkpoints = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    if checkpoints:
        model = type(model).from_pretrained(checkpoints[-1], use_safetensors=True, dtype=model.dtype).to(model.device)
    dataset = as_training_dataset(train)
    if "cache_row" in train:
        dataset = dataset.add_column("cache_row", train["cache_row"].tolist())
    trainer = trainer_cls(
        model=model,
        args=training_arguments(cfg, work_dir, seed, remove_unused_columns="cache_row" not in train),
        train_dataset=dataset,
        data_collator=causal_lm_collator,
        callbacks=callbacks,
        **extra,
    )
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    if save_to is not None:  # every process calls it: under FSDP or DeepSpeed it gathers the weights
        trainer.save_model(str(save_to))
    return trainer.model


def fine_tune(
    model: PreTrainedModel,
    train: pd.DataFrame,
    cfg: TrainingConfig,
    work_dir: Path,
    seed: int,
    callbacks=None,
    save_to: Path | None = None,
) -> PreTrainedModel:
    """Next-token cross-entropy on every sequence of ``train`` (teacher, baseline, hard student).
    With ``save_to``, the trained weights are also written there by ``Trainer.save_model``, which
    gathers them from every process under FSDP or DeepSpeed (call it on all processes)."""
    return _run(KdmemTrainer, model, train, cfg, work_dir, seed, callbacks, save_to)


class DistillationTrainer(KdmemTrainer):
    """A ``Trainer`` whose loss is a divergence from a frozen teacher's next-token distributions:
    computed by the teacher at every step, or read from a teacher-logit cache (``cache``), which
    the batch indexes through ``cache_rows``.

    The loss is summed over tokens and divided by the token count of the whole accumulation
    window (``num_items_in_batch``, which the Trainer gathers across processes), so a step's
    gradient does not depend on how the window is split into micro-batches or processes.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        teacher: PreTrainedModel | None,
        distill: SoftDistillConfig,
        cache: TeacherLogitCache | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # Make the Trainer count the window's tokens whatever the model's forward accepts.
        self.model_accepts_loss_kwargs = True
        if (teacher is None) == (cache is None):
            raise ValueError("DistillationTrainer needs exactly one of a teacher and a teacher-logit cache.")
        if cache is not None and cache.spec.kind == "sampled" and distill.kind != "forward_kl":
            raise ValueError(
                f"A sampled teacher-logit cache serves forward_kl only, not {distill.kind}; cache hidden states or "
                "logits (exact)."
            )
        if cache is not None:
            cache.spec.check_serves(distill.temperature)  # before training starts, not at its first step
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False).to(self.args.device)
        self.cache = cache
        self.distill = distill

    def _divergence(
        self, student_logits: torch.Tensor, inputs: dict, cache_rows: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """Summed divergence over the masked positions; position i predicts token i + 1."""
        options = {"temperature": self.distill.temperature, "mask": mask, "reduction": "sum"}
        if self.cache is None:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits[:, :-1]
        else:
            cached = {name: value.to(student_logits.device) for name, value in self.cache.rows(cache_rows).items()}
            if self.cache.spec.kind == "sampled":
                # a fresh draw of the tail each epoch, while the cache has draws
                teacher = self.cache.teacher_at(cached, self.distill.temperature, draw=int(self.state.epoch or 0))
                return sampled_forward_kl(student_logits[:, :-1, : self.cache.spec.vocab_size], *teacher, **options)
            teacher_logits = self.cache.logits(cached)
        student_logits, teacher_logits = on_shared_vocabulary(student_logits[:, :-1], teacher_logits)
        return distillation_loss(
            student_logits, teacher_logits, kind=self.distill.kind, jsd_beta=self.distill.jsd_beta, **options
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        cache_rows = inputs.pop("cache_rows", None)
        outputs = model(**inputs)
        mask = labels[:, 1:].ne(-100)
        total = self._divergence(outputs.logits, inputs, cache_rows, mask)
        if self.distill.ce_weight:
            nll = torch.nn.functional.cross_entropy(
                outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total = total + self.distill.ce_weight * nll
        if num_items_in_batch is None:  # evaluation: one batch at a time
            loss = total / mask.sum().clamp_min(1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts every process's tokens, and DDP averages gradients over processes.
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def distill(
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
    train: pd.DataFrame,
    cfg: SoftDistillConfig,
    work_dir: Path,
    seed: int,
    callbacks=None,
    cache: TeacherLogitCache | None = None,
    save_to: Path | None = None,
) -> PreTrainedModel:
    """Soft distillation of ``student`` on every sequence of ``train``, from ``teacher`` or from a
    teacher-logit ``cache`` built over ``train`` (row i of ``train`` is row i of the cache,
    unless ``train`` has a ``cache_row`` column that says otherwise). ``save_to`` as in ``fine_tune``."""
    if cache is not None:
        if "cache_row" not in train:
            if len(train) != cache.spec.examples:
                raise ValueError(
                    f"The cache holds {cache.spec.examples} sequences and the training set {len(train)}; give train "
                    "a cache_row column."
                )
            train = train.assign(cache_row=range(len(train)))
        teacher = None
    return _run(
        DistillationTrainer,
        student,
        train,
        cfg.training,
        work_dir,
        seed,
        callbacks,
        save_to,
        teacher=teacher,
        distill=cfg,
        cache=cache,
    )


def validation_loss(model: PreTrainedModel, sequences: pd.DataFrame, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats per token) over ``sequences``, through ``Trainer.evaluate``."""
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = Trainer(model=model, args=args, data_collator=causal_lm_collator)
        metrics = trainer.evaluate(eval_dataset=as_training_dataset(sequences))
    return float(metrics["eval_loss"])
