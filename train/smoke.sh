#!/usr/bin/env bash
# The whole chain on the CPU with a tiny model: corpus (if missing) -> 2 min training -> MLX export
# with mlx-lm logit checks -> qwgpu load, greedy parity with mlx-lm, generate, bench.
# Needs a venv with torch (CPU), numpy, safetensors, tokenizers, matplotlib, mlx[cpu]==0.32.4,
# mlx-lm==0.32.2 (PY, default /tmp/train-venv/bin/python) and a built qwgpu (QWGPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/tmp/train-venv/bin/python}
QWGPU=${QWGPU:-target/debug/qwgpu}
RUN=${RUN:-train/runs/smoke}
EXPORT=${EXPORT:-train/runs/smoke-mlx}
[ -f train/data/train.bin.xz ] || [ -f train/data/train.bin ] || "$PY" train/corpus.py
[ -x "$QWGPU" ] || cargo build -p native-cli
rm -rf "$RUN"
"$PY" train/train.py --preset tiny --minutes "${MINUTES:-2}" --seq 128 --batch 8 --lr 3e-3 --warmup 20 \
  --log-every 20 --eval-every 0.5 --eval-batches 4 --threads 2 --out "$RUN"
"$PY" train/plot.py "$RUN/loss.csv"
"$PY" train/export.py --run "$RUN" --out "$EXPORT" --report "$RUN/export-report.json"
"$PY" train/check_engine.py --model "$EXPORT" --qwgpu "$QWGPU"
