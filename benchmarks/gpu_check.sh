#!/usr/bin/env bash
# The device check for a session that has a GPU, in one call (about 8 minutes on one H200):
# bf16 KD step time, memory, tokens/s and MFU against TRL, the loss's memory at 50k vocabulary,
# the loss and trainer tests on CUDA, and the utility stage's (lm-eval's) cost and bf16/fp32
# agreement on a 410m-like model. Results go to $OUT (default benchmarks/results/gpu).
#
# The device image has torch, transformers, accelerate, pandas and scikit-learn but not datasets,
# trl or lm-eval: fetch their wheels here first (.whl/ is ignored by .gitignore), and carry them.
# The packages and versions are those of requirements-cpu.lock; the three without a wheel on PyPI
# (sqlitedict, word2number, rouge_score) are built here with `pip wheel --no-deps -w .whl NAME==V`:
#     pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 --platform any lm_eval==0.4.13 datasets dill multiprocess \
#         evaluate pytablewriter DataProperty mbstrdecoder pathvalidate tabledata typepy tcolorpy \
#         dominate Logbook msgfy chardet more-itertools nltk 'trl>=1.0'
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=$PWD/src:$PWD
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
    SITE=$SITE:/tmp/site
fi
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__)" | tee -a "$OUT/gpu.txt"
# A Pythia-410m-like teacher and a 160m-like student at the paper's 50,304 vocabulary.
$PY benchmarks/kd_step.py --batch 16 --seq 512 --teacher-hidden 1024 --teacher-layers 24 \
    --student-hidden 768 --student-layers 12 --steps 10 --warmup 3 --output "$OUT/kd_step.json" 2>&1 | tee "$OUT/kd_step.txt"
$PY benchmarks/kd_loss_memory.py --batch 16 --seq 1024 --chunks 256 1024 0 --output "$OUT/kd_loss_memory.json" 2>&1 | tail -6 | tee "$OUT/kd_loss_memory.txt"
$PY -m pytest -q -x tests/test_losses.py tests/test_teacher_cache.py tests/test_train.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/tests.txt"
$PY benchmarks/utility_speed.py --hidden 1024 --layers 24 --heads 16 --documents 1000 --batch-size 64 \
    --output "$OUT/utility_speed.json" 2>&1 | grep -v "it/s\]" | tail -5 | tee "$OUT/utility_speed.txt"
