#!/usr/bin/env bash
# The device check for a session that has a GPU, in one call (about 6 minutes on one H200):
# bf16 KD step time, memory, tokens/s and MFU against TRL, the loss's memory at 50k vocabulary,
# and the loss and trainer tests on CUDA. Results go to $OUT (default benchmarks/results/gpu).
#
# The device image has torch, transformers and accelerate but not datasets or trl: fetch their
# wheels here first, and carry the folder:
#     pip download datasets trl dill multiprocess -d .wheels --no-deps
#     echo /.wheels/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".wheels"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .wheels ]; then $PY -m pip install -q --no-index --no-deps .wheels/*.whl 2>&1 | tail -2; fi
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__)" | tee -a "$OUT/gpu.txt"
# A Pythia-410m-like teacher and a 160m-like student at the paper's 50,304 vocabulary.
$PY benchmarks/kd_step.py --batch 16 --seq 512 --teacher-hidden 1024 --teacher-layers 24 \
    --student-hidden 768 --student-layers 12 --steps 10 --warmup 3 --output "$OUT/kd_step.json" 2>&1 | tee "$OUT/kd_step.txt"
$PY benchmarks/kd_loss_memory.py --batch 16 --seq 1024 --chunks 256 1024 0 --output "$OUT/kd_loss_memory.json" 2>&1 | tail -6 | tee "$OUT/kd_loss_memory.txt"
$PY -m pytest -q -x tests/test_losses.py tests/test_teacher_cache.py tests/test_train.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/tests.txt"
