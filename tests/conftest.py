import os

import pytest

SECRETS = {"HF_TOKEN": "hf_kdmemTestCanaryToken0123456789", "WANDB_API_KEY": "kdmem-test-canary-wandb-key-9876543210"}
"""Set for the whole session: every run a test makes has them in its environment, and
``tests/test_safety.py`` and the fault tests check that none of them reaches an output or a log."""


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests build their own embedded models and data caches, never touching the user's; and run
    with fake secrets in the environment."""
    path = tmp_path_factory.mktemp("kdmem-cache")
    previous = {name: os.environ.get(name) for name in ["KDMEM_CACHE", *SECRETS]}
    os.environ.update({"KDMEM_CACHE": str(path), **SECRETS})
    yield path
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def assert_no_secrets(*texts: str, folder=None) -> None:
    """None of ``SECRETS`` appears in ``texts`` or in any file under ``folder``."""
    blobs = [text.encode() for text in texts]
    if folder is not None:
        blobs += [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    for secret in SECRETS.values():
        assert not any(secret.encode() in blob for blob in blobs), (
            f"a secret from the environment leaked: {secret[:8]}..."
        )


@pytest.fixture(scope="session")
def device():
    """Where the tests' own tensors live: ``KDMEM_TEST_DEVICE`` when set (``.ci/run`` sets ``cpu``),
    else where ``load_model`` puts models (the first GPU when there is one, as under
    ``benchmarks/gpu_check.sh``). Inputs given to a model go to ``model.device``."""
    import torch

    from kdmem.models.loading import default_device

    return torch.device(os.environ.get("KDMEM_TEST_DEVICE") or default_device())


TINY_OVERRIDES = [
    "data.num_examples=48",
    "data.validation_examples=16",
    "embedded.pretrain_tokens=8000",
    "embedded.vocab_size=512",
    "teacher.training.epochs=2",
    "student.training.epochs=2",
    "soft.training.epochs=2",
    "hard.training.epochs=2",
    "extraction.track_every_epochs=2",
    "utility.tasks=[]",  # lm-eval's own cost; tests/test_utility.py runs it
]

FAST_OVERRIDES = TINY_OVERRIDES + [
    "soft.sweep_temperatures=[]",
    "filtering.enabled=false",
    "membership.enabled=false",
    "extraction.track_every_epochs=0",
    "extraction.approximate_sample=0",
]
"""TINY_OVERRIDES without the stages a test of one other stage does not need."""


@pytest.fixture(scope="session")
def tiny_config():
    """The smoke preset, shrunk further: the whole pipeline in seconds."""
    from kdmem.config import load_config

    return load_config(preset="smoke", overrides=TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_bases(tiny_config):
    from kdmem.train import embedded_bases

    return embedded_bases(tiny_config.embedded)


@pytest.fixture(scope="session")
def tiny_data(tiny_config, tiny_bases):
    from kdmem.data import prepare_sequences
    from kdmem.models import load_tokenizer

    return prepare_sequences(tiny_config.data, load_tokenizer(str(tiny_bases["teacher"])))


@pytest.fixture(scope="session")
def memorizing_model(tiny_bases, tiny_data, tmp_path_factory):
    """The tiny teacher base fine-tuned hard on D (30 epochs): it memorizes some examples and not others."""
    from kdmem.config import TrainingConfig
    from kdmem.models import load_model
    from kdmem.train import fine_tune

    model = load_model(str(tiny_bases["teacher"]))
    cfg = TrainingConfig(epochs=30, learning_rate=5e-3, batch_size=16)
    return fine_tune(model, tiny_data.train, cfg, tmp_path_factory.mktemp("memorizing"), seed=0).eval()


@pytest.fixture(scope="session")
def finished_run(tiny_config, tiny_bases, tmp_path_factory):
    """A whole tiny run with two seeds and a temperature sweep: (config, folder, summary)."""
    from kdmem.config import load_config
    from kdmem.pipeline import run

    config = load_config(preset="smoke", overrides=TINY_OVERRIDES + ["seeds=[0,1]", "soft.sweep_temperatures=[1,4]"])
    out = tmp_path_factory.mktemp("run")
    return config, out, run(config, out)


HOSTILE_NAME = "<script>window.__kdmem_pwned='name'</script><img src=x onerror=\"window.__kdmem_pwned='name-img'\">"
"""Shown in the report's title and heading; both payloads must appear there as text. (Which
windows of the hostile training text the report shows depends on D.)"""


@pytest.fixture(scope="session")
def hostile_run(tiny_bases, tmp_path_factory):
    """A whole tiny run whose training text and run name carry HTML and script payloads, with two
    seeds, a temperature sweep and canaries so that every report section has data."""
    from kdmem.config import load_config
    from kdmem.pipeline import run

    corpus = tmp_path_factory.mktemp("hostile") / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            f"Record {i}: <script>window.__kdmem_pwned={i}</script> then "
            f"<img src=x onerror=\"window.__kdmem_pwned='img{i}'\"> "
            f"and </pre></section><b>bold {i * 7}</b> & done."
            for i in range(120)
        ),
        encoding="utf-8",
    )
    overrides = TINY_OVERRIDES + [
        f"data.source={corpus}",
        "seeds=[0,1]",
        "soft.sweep_temperatures=[1]",
        "canaries.repeats=[1,8]",
        "canaries.num_candidates=40",
    ]
    config = load_config(preset="smoke", overrides=overrides)
    config.name = HOSTILE_NAME
    out = tmp_path_factory.mktemp("hostile_run")
    return config, out, run(config, out)


CPU_ONLY = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
"""The environment of a test's CPU subprocess, also on a machine with a GPU (whose bits differ from the CPU's)."""


def two_cpu_processes(*command: str, timeout: int = 300):
    """Run ``command`` (a script or ``-m module`` and its arguments) under ``accelerate launch`` in
    two CPU processes with gloo DDP. ``--cpu --num_processes 2`` would start a single process:
    accelerate's multi-process path is ``--multi_gpu``, kept on the CPU by ``ACCELERATE_USE_CPU``."""
    import subprocess
    import sys

    env = os.environ | CPU_ONLY | {"ACCELERATE_USE_CPU": "true"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    return subprocess.run([*launch, *command], env=env, capture_output=True, text=True, timeout=timeout)
