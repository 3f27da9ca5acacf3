"""The experiment config: typed dataclasses, loaded from YAML and overridden with ``key=value``.

The dataclass defaults *are* the embedded default experiment (tiny models built locally, the
builtin corpus, CPU-sized budgets): a field's default is the value the default run gets. A
section type that serves several roles defaults to what the default run gives most of them
(``TrainingConfig``: the baseline's and the students'), and a role that differs says so where
``ExperimentConfig`` declares it, by the fields that differ (the teacher's learning rate). A
preset or a YAML file lists only what differs from the defaults; ``kdmem run --print-config``
prints what a run resolves to.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdmem.errors import ConfigError

# The values some settings take, declared here so that reading a config loads no model code.
SOFT_KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")
"""The divergences soft distillation can minimise: the values of ``distillation_loss``'s ``kind``
and of the config's ``soft.kind``."""
CACHE_KINDS = ("hidden", "logits", "sampled")
"""What a teacher cache can keep per token (``kdmem.train.teacher_cache``); ``soft.cache_kind``."""
PAPER_TEMPERATURES = (1.0, 2.0, 3.0, 4.0)
"""The paper's temperature sweep: what a sampled cache serves besides the run's own temperatures,
so that sweeping them reuses one cache."""
PILOT_REVISIONS = ("k", "k+1")
"""The embedded bases' checkpoints for the pre-training pilot: ``k``, the base as pre-trained, and
``k+1``, its pre-training continued through the chunk of the stream after step k (``pilot_checkpoints``)."""


class FieldError(ConfigError):
    """A field of one section that cannot be used, named ``section.field``; where the section sits
    in a whole config, ``at`` names it by its full key (``teacher.training.epochs``)."""

    def __init__(self, section: str, field_name: str, problem: str):
        self.field_name, self.problem = field_name, problem
        super().__init__(f"{section}.{field_name} {problem}")

    def at(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}{self.field_name} {self.problem}")


class Section:
    """A config section. However it is made (from YAML, with ``key=value`` overrides, or
    directly in Python, as ``kdmem extract`` makes its ``ExtractionConfig``), it checks its own
    fields as it is made, as TRL's configs do in ``__post_init__``: their types, then ``check``."""

    section: typing.ClassVar[str] = ""
    """The section's usual key, naming its fields in errors when it is made on its own."""
    later_fields: typing.ClassVar[tuple[str, ...]] = ()
    """Fields added after runs were made whose default changes nothing: at that default they are
    left out of stage fingerprints (``kdmem.io.jsonable``), so a finished run stays current."""

    def __post_init__(self) -> None:
        for name, annotation in _field_types(type(self)).items():
            object.__setattr__(self, name, _coerce(getattr(self, name), annotation, f"{self.section}.{name}"))
        self.check()

    def check(self) -> None:
        """Raise ``FieldError`` (through ``fail``) for a field that cannot be used."""

    def fail(self, field_name: str, problem: str) -> typing.NoReturn:
        raise FieldError(self.section, field_name, problem)

    def validate(self, prefix: str = "") -> None:
        """Check this section and every section in it again (after fields were changed in place)."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Section):
                value.validate(f"{prefix}{item.name}.")
        try:
            self.check()
        except FieldError as error:
            raise error.at(prefix) from None


@dataclass
class DataConfig(Section):
    """Where the private training set D comes from and how it is cut into sequences."""

    source: str = "builtin:python-docs"
    """``builtin:python-docs``, a local .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset name."""
    subset: str | None = None
    """Hugging Face dataset config name (e.g. ``wikitext-103-raw-v1``, ``sample-10BT``)."""
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    seq_len: int = 64
    """Tokens per training sequence (paper: 256)."""
    num_examples: int | None = 600
    """Size of D in sequences (paper: 1,000,000); None keeps every sequence the source yields."""
    validation_examples: int = 100
    """Sequences held out of D to measure utility (validation loss and perplexity)."""
    dedupe: bool = True
    """Drop sequences whose tokens exactly repeat an earlier one."""
    seed: int = 0
    """Seed of the hash that decides which documents are held out (D keeps the source's order)."""
    sequence_range: list[int] | None = None
    """``[start, end]``: D is the sequences ``start`` to ``end - 1`` of the source's stream, in its
    order (counted before any dedupe), and validation the ``validation_examples`` after them (which
    a pre-training checkpoint at ``end`` has not seen yet); ``num_examples`` must then be null. The
    pre-training pilot's slice: Pythia's steps 115,000 to 116,000 at 1,024 sequences a step are
    ``[117760000, 118784000]``. None: D is the first ``num_examples`` sequences of the documents
    not held out."""
    packing: str = "concatenate"
    """``concatenate``: documents joined with end-of-text between them and cut into ``seq_len``
    tokens (no BOS; as Pythia was pre-trained). ``documents``: one example per document, its first
    ``seq_len`` tokens as the tokenizer starts a text (with BOS for Llama, Gemma), shorter
    documents dropped and counted; each example's id comes from its document's text, so two runs
    with different tokenizers share their examples (``kdmem compare`` of two families). Either
    way validation is split by document: no document feeds both D and validation. ``tokens``: the
    source is already tokenized, one training sequence per record (a Megatron ``.bin``/``.idx``
    pair, as Pythia's pre-shuffled Pile, or Parquet/JSON lines with an ``input_ids`` column), and
    each sequence's first ``seq_len`` tokens are one example."""

    section = "data"
    later_fields = ("sequence_range",)

    @property
    def size(self) -> int | None:
        """Sequences of D: the range's length, else ``num_examples`` (None: every sequence)."""
        return self.sequence_range[1] - self.sequence_range[0] if self.sequence_range else self.num_examples

    def check(self) -> None:
        if self.packing not in PACKINGS:
            self.fail("packing", f"must be one of {', '.join(PACKINGS)}; got {self.packing!r}.")
        if self.num_examples is not None and self.num_examples < 1:
            self.fail("num_examples", "must be at least 1 (or null for every sequence).")
        if self.sequence_range is not None:
            if len(self.sequence_range) != 2 or not 0 <= self.sequence_range[0] < self.sequence_range[1]:
                self.fail("sequence_range", f"must be [start, end] with 0 <= start < end; got {self.sequence_range}.")
            if self.num_examples is not None:
                self.fail("num_examples", "must be null with data.sequence_range, which sets the size of D.")
        if self.packing == "tokens" and self.source.startswith("builtin:"):
            self.fail("packing", f"= tokens needs a tokenized source; {self.source} is text (use concatenate).")
        if self.validation_examples < 0:
            self.fail("validation_examples", f"must be 0 or more, got {self.validation_examples}.")
        if self.seq_len < 2:
            self.fail("seq_len", "must be at least 2.")


@dataclass
class TrainingConfig(Section):
    """One training stage's optimisation; mapped onto ``transformers.TrainingArguments``."""

    epochs: float = 12.0
    learning_rate: float = 3e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    """Per-device micro-batch, in sequences."""
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    logging_steps: int = 10
    report_to: str = "none"
    """Any ``report_to`` value of ``transformers`` (``tensorboard``, ``wandb``, ...)."""
    extra_args: dict[str, Any] = field(default_factory=dict)
    """Passed through to ``TrainingArguments`` unchanged (e.g. ``{"fsdp": "full_shard"}``)."""

    section = "training"

    def check(self) -> None:
        if not self.epochs > 0:
            self.fail("epochs", f"must be positive, got {self.epochs}.")
        if self.learning_rate < 0:
            self.fail("learning_rate", f"must be 0 or more, got {self.learning_rate}.")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            field_name = "batch_size" if self.batch_size < 1 else "gradient_accumulation_steps"
            self.fail(field_name, f"must be at least 1, got {getattr(self, field_name)}.")


@dataclass
class ModelConfig(Section):
    """A model to start from, and how the stage that fine-tunes it trains."""

    model: str = "builtin:tiny-student"
    """A hub name (``EleutherAI/pythia-12b``), a local ``save_pretrained`` folder, or ``builtin:tiny-*``."""
    revision: str | None = None
    trust_remote_code: bool = False
    training: TrainingConfig = field(default_factory=TrainingConfig)

    section = "model"


@dataclass
class TeacherConfig(ModelConfig):
    """The teacher's base, and how it is fine-tuned on D; or, with ``fine_tune`` false, the teacher
    as given (the pre-training pilot's, a checkpoint that saw D in pre-training)."""

    fine_tune: bool = True
    """False: the teacher is ``model`` at ``revision`` as it is, trained by nobody (``training`` unused)."""

    section = "teacher"
    later_fields = ("fine_tune",)


@dataclass
class BaselineConfig(Section):
    """The cross-entropy baseline: by default the student's base fine-tuned on D with
    ``student.training``; or a given checkpoint, trained by nobody (the pre-training pilot's: the
    student's own family at the step after the student's starting point)."""

    model: str | None = None
    """None: fine-tune the student's base. Else a hub name, a local folder or ``builtin:tiny-*``."""
    revision: str | None = None
    trust_remote_code: bool = False

    section = "baseline"


@dataclass
class SoftDistillConfig(Section):
    """Soft knowledge distillation: match the teacher's temperature-softened distributions."""

    kind: str = "forward_kl"
    """``forward_kl`` (the paper), ``reverse_kl``, ``jsd`` or ``tvd``."""
    temperature: float = 2.0
    sweep_temperatures: list[float] = field(default_factory=lambda: [1.0])
    """Extra soft students at these temperatures (paper: 1, 2, 3, 4), first seed only, named
    ``soft-T{t}``; the one at ``temperature`` is the ``soft`` student itself."""
    jsd_beta: float = 0.5
    ce_weight: float = 0.0
    """Weight of an added cross-entropy term on D; the paper uses none."""
    teacher_cache: bool = False
    """Compute the teacher's distributions over D once (``OUT/cache/``) and distill every soft
    student, seed and temperature from them, instead of running the teacher at every step."""
    cache_kind: str = "hidden"
    """What the cache keeps per token: ``hidden``, the input of the teacher's output layer, from
    which each student recomputes the teacher's logits (exact, every kind and temperature; the
    hidden size per token); ``logits`` (exact; the vocabulary per token); or ``sampled``, the top
    ``cache_top_k`` logits and ``cache_tail_samples`` tokens sampled from the rest (forward KL;
    unbiased at every temperature it serves, but noisy where the tail holds most of the mass)."""
    cache_top_k: int = 64
    """Logits kept per token by a sampled cache."""
    cache_tail_samples: int = 16
    """Tail tokens sampled per position by a sampled cache (importance sampling)."""
    cache_tail_draws: int | None = None
    """Independent draws of those samples, epoch e reading draw e mod draws; None: one per epoch
    of soft training (so no draw is reused)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def cache_draws(self) -> int:
        return self.cache_tail_draws or max(1, math.ceil(self.training.epochs))

    @property
    def cache_temperatures(self) -> tuple[float, ...]:
        """What a sampled cache serves: the paper's sweep T = 1..4 (so that sweeping it reuses one
        cache), the soft student's own temperature and the run's sweep."""
        return tuple(sorted({*PAPER_TEMPERATURES, float(self.temperature), *map(float, self.sweep_temperatures)}))

    section = "soft"

    def check(self) -> None:
        if self.kind not in SOFT_KINDS:
            self.fail("kind", f"= {self.kind!r} is unknown; use {', '.join(SOFT_KINDS[:-1])} or {SOFT_KINDS[-1]}.")
        if self.temperature <= 0 or any(t <= 0 for t in self.sweep_temperatures):
            field_name = "temperature" if self.temperature <= 0 else "sweep_temperatures"
            self.fail(field_name, f"must be positive, got {getattr(self, field_name)}.")
        if self.cache_kind not in CACHE_KINDS:
            self.fail("cache_kind", f"must be one of {', '.join(CACHE_KINDS)}, got {self.cache_kind!r}.")
        if self.teacher_cache and self.cache_kind == "sampled" and self.kind != "forward_kl":
            self.fail(
                "cache_kind", f"= sampled serves forward_kl only, not {self.kind}; set soft.cache_kind=hidden (exact)."
            )
        if self.cache_top_k < 1 or self.cache_tail_samples < 0:
            self.fail(
                "cache_top_k" if self.cache_top_k < 1 else "cache_tail_samples",
                "must be at least 1 (top_k) and 0 (tail samples).",
            )


@dataclass
class HardDistillConfig(Section):
    """Hard (sequence-level) distillation: cross-entropy on text the teacher generates greedily."""

    prefix_len: int = 32
    """Tokens of each training sequence the teacher continues from (paper: 50)."""
    generation_batch_size: int = 64
    training: TrainingConfig = field(default_factory=TrainingConfig)

    section = "hard"

    def check(self) -> None:
        if self.prefix_len < 1:
            self.fail("prefix_len", f"must be at least 1, got {self.prefix_len}.")
        if self.generation_batch_size < 1:
            self.fail("generation_batch_size", f"must be at least 1, got {self.generation_batch_size}.")


@dataclass
class ExtractionConfig(Section):
    """Discoverable memorization: greedy decoding from a prefix must reproduce the suffix exactly."""

    prefix_len: int = 32
    suffix_len: int = 32
    batch_size: int | None = 64
    """Sequences per forward pass; None: the largest that fits in memory."""
    full: bool = True
    """One full forward pass per example, adding suffix_token_accuracy, suffix_loss and prefix curves."""
    prefix_lens: list[int] = field(default_factory=lambda: [8, 16, 24, 32])
    """With ``full``: also decide memorization for each of these prefix lengths (same suffix_len)."""
    first_stage_tokens: int = 4
    """Early exit: suffix tokens every example is checked on before the survivors continue."""
    margin_tolerance: float = 1e-3
    """Examples whose top-1/top-2 logit gap falls below this are decided by real greedy decoding."""
    approximate_sample: int = 100
    """Also decode this many random training examples with greedy ``generate`` and add the
    approximate measures (token match rate, edit distance, longest common run); 0: none."""
    approximate_ids: list[str] = field(default_factory=list)
    """... and these examples, by ``example_id``."""
    seed: int = 0
    """Seed of the approximate sample."""
    track_every_epochs: int = 4
    """Also audit D every this many epochs of each training stage (0: only at the end); the
    temperature sweep's extra students are not tracked."""
    track_examples: int | None = None
    """Audit only the first this many examples of D while training (None: all of them)."""

    section = "extraction"

    def check(self) -> None:
        for field_name in ("prefix_len", "suffix_len", "first_stage_tokens"):
            if getattr(self, field_name) < 1:
                self.fail(field_name, f"must be at least 1, got {getattr(self, field_name)}.")
        if self.batch_size is not None and self.batch_size < 1:
            self.fail("batch_size", f"must be at least 1 (or null: the largest that fits), got {self.batch_size}.")
        if self.prefix_lens and not self.full:
            self.fail("prefix_lens", "needs extraction.full=true (the curve comes from the full pass).")
        if any(length < 1 for length in self.prefix_lens):
            self.fail("prefix_lens", f"entries must be at least 1, got {self.prefix_lens}.")
        for field_name in ("approximate_sample", "track_every_epochs"):
            if getattr(self, field_name) < 0:
                self.fail(field_name, f"must be 0 or more, got {getattr(self, field_name)}.")

    def check_fits(self, seq_len: int, where: str) -> None:
        """The prefix and suffix (and each curve prefix) fit sequences of ``seq_len`` tokens
        (``where`` names that setting)."""
        if self.prefix_len + self.suffix_len > seq_len:
            raise ConfigError(
                f"extraction.prefix_len + extraction.suffix_len = {self.prefix_len + self.suffix_len} is longer than "
                f"{where} = {seq_len}; lower them or raise {where}."
            )
        for length in self.prefix_lens:
            if length + self.suffix_len > seq_len:
                raise ConfigError(
                    f"extraction.prefix_lens entry {length} plus suffix_len {self.suffix_len} does not fit "
                    f"{where} = {seq_len}."
                )


@dataclass
class MembershipConfig(Section):
    """Membership inference: do a model's scores tell D's examples from held-out ones?"""

    enabled: bool = True
    min_k: float = 0.2
    """k of Min-K% Prob: the share of lowest-probability tokens whose log-probabilities are averaged."""
    reference: bool = True
    """Also score the reference ratio against the base each model was fine-tuned from."""

    section = "membership"

    def check(self) -> None:
        if not 0 < self.min_k <= 1:
            self.fail("min_k", f"must be in (0, 1], got {self.min_k}.")


@dataclass
class UtilityConfig(Section):
    """Downstream utility of every model, through lm-evaluation-harness (``kdmem.utility``): the
    paper's LAMBADA and WinoGrande, or kdmem's own tasks of the same kinds on held-out text."""

    tasks: list[str] = field(default_factory=lambda: ["kdmem_last_word", "kdmem_two_choice"])
    """lm-eval task names (``lambada_openai``, ``winogrande``) or kdmem's own (``kdmem_last_word``,
    ``kdmem_two_choice``, written from the run's validation sequences); empty: no utility stage."""
    limit: int | None = None
    """Documents per task (lm-eval's ``limit``); None: all."""
    batch_size: int = 16
    bootstrap_iters: int = 1000
    """lm-eval's bootstrap of the standard errors of non-mean metrics (perplexity); lm-eval's own
    default, 100,000, costs about 30 s per model; 0 skips them."""

    section = "utility"

    def check(self) -> None:
        if len(set(self.tasks)) != len(self.tasks):
            self.fail("tasks", f"must not repeat a task: {self.tasks}.")
        if self.limit is not None and self.limit < 1:
            self.fail("limit", f"must be at least 1, or null for every document; got {self.limit}.")
        if self.batch_size < 1:
            self.fail("batch_size", f"must be at least 1, got {self.batch_size}.")
        if self.bootstrap_iters < 0:
            self.fail("bootstrap_iters", f"must be 0 or more, got {self.bootstrap_iters}.")


@dataclass
class FilteringConfig(Section):
    """The intervention: remove from D what the predictor flags, distill the student again from the
    same teacher (first seed), and compare what it memorizes."""

    enabled: bool = True
    student: str = "hard"
    """Which student is predicted, filtered for and distilled again: ``soft`` (the paper's) or
    ``hard`` (trained again on the teacher's continuations of the kept examples). The default run
    filters for the hard student: at its scale the soft student (T = 2) memorizes too few examples
    to fit a predictor on."""
    target_recall: float = 0.99
    """The flagging threshold is set on held-out examples so at least this share of the
    student's memorized examples are flagged."""
    stand_in_examples: int = 0
    """Rehearsals only (``kdmem run --rehearse`` sets it): when the student memorizes too few
    examples to fit the predictor, this many examples it comes closest to reproducing (most
    leading suffix tokens) stand in for its memorized set, so that the filtering and the
    student distilled again still run. Marked in ``filtering.json`` and the report."""

    section = "filtering"

    def check(self) -> None:
        if self.student not in ("soft", "hard"):
            self.fail("student", f"must be soft or hard, got {self.student!r}.")
        if not 0 < self.target_recall <= 1:
            self.fail("target_recall", f"must be in (0, 1], got {self.target_recall}.")
        if self.stand_in_examples < 0:
            self.fail("stand_in_examples", f"must be 0 or more, got {self.stand_in_examples}.")


@dataclass
class SecondFamilyConfig(Section):
    """A second model family trained on the same documents, for the paper's cross-family finding:
    do two families memorize the same examples, and do their zlib estimates agree? Its run goes
    into ``OUT/second-family`` (teacher, baseline, soft and hard student of the first seed) and
    is compared with this one (``kdmem compare``) into ``OUT/cross_family.json``."""

    section = "second_family"

    enabled: bool = False
    overrides: list[str] = field(default_factory=lambda: ["embedded.vocab_size=3072"])
    """``key=value`` overrides that make the second family from this config: by default the
    embedded family with a tokenizer of its own (another vocabulary, trained on the same public
    text); for hub models, e.g. ``teacher.model=allenai/OLMo-2-1124-7B`` and
    ``student.model=allenai/OLMo-2-0425-1B``."""


@dataclass
class CrossScaleConfig(ModelConfig):
    """Another size of the student's family, fine-tuned on D with cross-entropy like the baseline
    and scored like every model, for the paper's cross-scale finding: Pythia-1B beside the 1.4B
    baseline, 96% of its memorized set memorized by the baseline too. The analysis gives that share
    both ways. It must share the student's tokenizer. ``model`` None: no cross-scale model."""

    model: str | None = None
    """e.g. ``EleutherAI/pythia-1b``, or ``builtin:tiny-small`` (the embedded family's third size)."""

    section = "cross_scale"


@dataclass
class CanaryConfig(Section):
    """Synthetic secrets planted in D before training (the Secret Sharer's canaries).

    Each canary is a random key of ``extraction.prefix_len`` tokens followed by a random secret
    that fills the rest of the sequence; it goes into the training data ``repeats[i]`` times.
    """

    repeats: list[int] = field(default_factory=list)
    """Copies of each canary in the training data, one canary per entry (e.g. [1, 4, 16, 64]); empty: none."""
    num_candidates: int = 1000
    """Random alternative secrets each true secret is ranked against to measure its exposure."""
    seed: int = 0

    section = "canaries"

    def check(self) -> None:
        if any(r < 1 for r in self.repeats):
            self.fail("repeats", f"must be positive counts, got {self.repeats}.")
        if self.num_candidates < 1:
            self.fail("num_candidates", "must be at least 1.")


@dataclass
class TinySizeConfig(Section):
    layers: int = 4
    hidden: int = 192
    heads: int = 4

    section = "size"

    def check(self) -> None:
        if min(self.layers, self.hidden, self.heads) < 1 or self.hidden % self.heads:
            self.fail(
                "hidden",
                "and heads must be positive, the heads dividing the hidden size; "
                f"got hidden {self.hidden}, heads {self.heads}, layers {self.layers}.",
            )


@dataclass
class EmbeddedModelsConfig(Section):
    """The embedded tiny family behind ``builtin:tiny-teacher`` and ``builtin:tiny-student``.

    A byte-level BPE tokenizer and two GPT-NeoX (Pythia-architecture) bases, pre-trained on the
    public part of the builtin corpus, which shares no document with the private part that D is
    drawn from.
    """

    vocab_size: int = 2048
    seq_len: int = 64
    teacher: TinySizeConfig = field(default_factory=lambda: TinySizeConfig(layers=4, hidden=256, heads=4))
    student: TinySizeConfig = field(default_factory=lambda: TinySizeConfig(layers=4, hidden=192, heads=4))
    small: TinySizeConfig = field(default_factory=lambda: TinySizeConfig(layers=4, hidden=128, heads=4))
    """``builtin:tiny-small``: a third, smaller size of the family, for ``cross_scale`` (built on first use)."""
    pretrain_tokens: int = 400_000
    """Cap on public-corpus tokens used for pre-training."""
    pretraining: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=2.0, learning_rate=2e-3, warmup_ratio=0.05)
    )
    pilot_training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=1.0, learning_rate=3.6e-4, lr_scheduler="constant")
    )
    """How pre-training goes on from step k to k + 1 for the pilot's ``k+1`` revisions: one pass
    over the chunk at 18% of ``pretraining``'s peak rate, what Pythia's cosine schedule (to 10% of
    its peak over 143,000 steps) gives at step 115,000."""
    seed: int = 0

    section = "embedded"
    later_fields = ("pilot_training",)


INFERENCE_DTYPES = ("float32", "bfloat16", "float16")
PACKINGS = ("concatenate", "documents", "tokens")


@dataclass
class ExperimentConfig(Section):
    later_fields = ("baseline",)

    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(
        default_factory=lambda: TeacherConfig(
            model="builtin:tiny-teacher", training=TrainingConfig(learning_rate=2e-3)
        )
    )
    student: ModelConfig = field(default_factory=ModelConfig)
    """The student's base; its ``training`` is the cross-entropy baseline's."""
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    soft: SoftDistillConfig = field(default_factory=SoftDistillConfig)
    hard: HardDistillConfig = field(default_factory=HardDistillConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    second_family: SecondFamilyConfig = field(default_factory=SecondFamilyConfig)
    cross_scale: CrossScaleConfig = field(default_factory=CrossScaleConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the student-side models (baseline, soft, hard); the teacher uses the first."""
    embedded: EmbeddedModelsConfig = field(default_factory=EmbeddedModelsConfig)
    inference_dtype: str = "float32"
    """dtype of the models run without training: evaluation (extraction, membership, features), the
    teacher's hard-KD generations and logit cache, and the live teacher of soft distillation.
    ``bfloat16`` halves their memory and time on GPUs (the paper's 12B teacher: 24 GB instead of
    48); verdicts can then differ from float32 on near-ties. Training keeps float32 weights
    (``training.bf16`` is mixed precision)."""

    def check(self) -> None:
        """What no section can check alone: the settings that must fit one another."""
        if self.inference_dtype not in INFERENCE_DTYPES:
            raise ConfigError(
                f"inference_dtype must be one of {', '.join(INFERENCE_DTYPES)}; got {self.inference_dtype!r}."
            )
        self.extraction.check_fits(self.data.seq_len, "data.seq_len")
        if not self.hard.prefix_len < self.data.seq_len:
            raise ConfigError(
                f"hard.prefix_len = {self.hard.prefix_len} must be between 1 and "
                f"data.seq_len - 1 = {self.data.seq_len - 1}."
            )
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed, e.g. seeds=[0].")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must not repeat: {self.seeds}.")
        if self.second_family.enabled:
            if self.data.packing != "documents":
                raise ConfigError(
                    "second_family needs data.packing=documents: only then do two tokenizers cut the same "
                    "examples from the same documents, with the same example ids."
                )
            second_family_config(self)  # its overrides name real keys and make a valid config
        if self.baseline.model and len(self.seeds) > 1:
            raise ConfigError(
                "baseline.model is a given checkpoint, one model, so seeds must list one seed; "
                f"got seeds={self.seeds}."
            )
        given_teacher = not self.teacher.fine_tune
        if given_teacher and self.membership.enabled and self.membership.reference and not self.student.revision:
            raise ConfigError(
                "membership.reference scores a given teacher (teacher.fine_tune=false) against its own checkpoint "
                "at student.revision (where the student starts), but student.revision is not set. Set it, or set "
                "membership.reference=false."
            )
        sections = {"teacher": self.teacher, "student": self.student, "baseline": self.baseline}
        for key, section in (sections | {"cross_scale": self.cross_scale}).items():
            if section.model and section.model.startswith("builtin:") and section.revision is not None:
                if section.revision not in PILOT_REVISIONS:
                    raise ConfigError(
                        f"{key}.revision = {section.revision!r}: an embedded base has the revisions "
                        f"{' and '.join(PILOT_REVISIONS)} (the pre-training pilot's checkpoints) or none."
                    )
                if self.data.sequence_range is None:
                    raise ConfigError(
                        f"{key}.revision = {section.revision}: the embedded pilot's checkpoints are pre-trained "
                        "through D's chunk of the stream, so set data.sequence_range (e.g. [0, 1000])."
                    )
        models = [m.model for m in (self.teacher, self.student, self.cross_scale, self.baseline) if m.model]
        uses_embedded = [model for model in models if model.startswith("builtin:")]
        if uses_embedded and self.embedded.seq_len < self.data.seq_len:
            raise ConfigError(
                f"embedded.seq_len = {self.embedded.seq_len} is shorter than data.seq_len = {self.data.seq_len}; "
                "the embedded models would see positions they were never trained on. Raise embedded.seq_len."
            )


# --- loading -------------------------------------------------------------------------------------


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """A dataclass's fields and their types (its ``ClassVar`` annotations left out)."""
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's annotation; convert only where no information is lost."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {annotation.__name__} fields, got {value!r}.")
        return _from_dict(annotation, value, prefix=key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}.")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}.")
    raise ConfigError(f"{key}: unsupported type {annotation!r}.")


def _unknown_key(prefix: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {prefix}{close[0]}?" if close else f" Valid keys here: {', '.join(sorted(valid))}."
    return ConfigError(f"Unknown config key {prefix}{key!r}.{hint}")


RETIRED_SETTINGS = {
    "soft.cache_top_k": "soft.cache_top_k=null no longer means full logits: set soft.cache_kind=logits, or keep "
    "the default soft.cache_kind=hidden (exact too, and the hidden size per token instead of the vocabulary).",
}
"""Settings whose null once meant something that is now spelled otherwise: key -> what to write."""


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    default = cls()
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(prefix, key, valid)
        if value is None and prefix + key in RETIRED_SETTINGS:
            raise ConfigError(RETIRED_SETTINGS[prefix + key])
        current = getattr(default, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            # Nested sections merge into the defaults, so a file lists only what differs.
            merged = dataclasses.asdict(current)
            _deep_update(merged, value)
            kwargs[key] = _coerce(merged, hints[key], prefix + key)
        else:
            kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return dataclasses.replace(default, **kwargs)
    except FieldError as error:
        raise error.at(prefix) from None


def _deep_update(target: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key != "extra_args":
            _deep_update(target[key], value)
        else:
            target[key] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"Cannot read config file {path}: {error.strerror}. Check the path.") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(values).__name__}.")
    return values


def available_presets() -> list[str]:
    folder = resources.files("kdmem") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_values(name: str) -> dict[str, Any]:
    presets = available_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown preset {name!r}.{hint} Available: {', '.join(presets)}.")
    resource = resources.files("kdmem") / "presets" / f"{name}.yaml"
    with resources.as_file(resource) as path:
        return _read_yaml(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"data.seq_len=128"`` -> (["data", "seq_len"], 128); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key=value, e.g. data.num_examples=200.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Override {text!r} has no key before '='.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(values: dict[str, Any], path: list[str], value: Any) -> None:
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Cannot set {'.'.join(path)}: {part} is not a section.")
    node[path[-1]] = value


def _check_path(path: list[str]) -> None:
    """Reject an override whose key does not exist, before it is merged anywhere."""
    cls: Any = ExperimentConfig
    prefix = ""
    for i, part in enumerate(path):
        hints = _field_types(cls)
        if part not in hints:
            raise _unknown_key(prefix, part, list(hints))
        annotation = hints[part]
        if part == "extra_args":
            return
        prefix += part + "."
        if dataclasses.is_dataclass(annotation):
            cls = annotation
        elif i < len(path) - 1:
            raise ConfigError(f"{prefix.rstrip('.')} is a value, not a section; {'.'.join(path)} does not exist.")


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Build a validated config: defaults, then a preset, then a YAML file, then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if preset:
        _deep_update(values, preset_values(preset))
    if path:
        _deep_update(values, _read_yaml(Path(path)))
    if isinstance(overrides, dict):
        pairs = [(key.split("."), value) for key, value in overrides.items()]
    else:
        pairs = [parse_override(text) for text in overrides or []]
    if preset and "name" not in values and not any(key_path == ["name"] for key_path, _ in pairs):
        values["name"] = preset
    return _with_overrides(values, pairs)


def _with_overrides(values: dict[str, Any], pairs: list[tuple[list[str], Any]]) -> ExperimentConfig:
    """``values`` with each (key path, value) override set, checked key by key, as a config."""
    for key_path, value in pairs:
        _check_path(key_path)
        _set_path(values, key_path, value)
    return _from_dict(ExperimentConfig, values)


def second_family_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config of ``config``'s second family: the same data and recipe, made another family by
    ``second_family.overrides``; the first seed only, without the sweep, the filtering, canaries and
    the cross-scale model."""
    values = config_to_dict(config)
    values.update(name=f"{config.name}-second-family", seeds=config.seeds[:1])
    values["soft"]["sweep_temperatures"] = []
    values["filtering"]["enabled"] = False
    values["canaries"]["repeats"] = []
    values["second_family"]["enabled"] = False
    values["cross_scale"]["model"] = None
    try:
        return _with_overrides(values, [parse_override(text) for text in config.second_family.overrides])
    except ConfigError as error:
        raise ConfigError(f"second_family.overrides: {error}") from None


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """A config from a (possibly partial) mapping of its keys, checked as a YAML file is."""
    return _from_dict(ExperimentConfig, values)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: ExperimentConfig, path: Path) -> None:
    from kdmem.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
