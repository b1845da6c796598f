#!/usr/bin/env bash
# qwgpu and mlx-lm on the same checkpoint, in the same run: decode tok/s, TTFT, ratio.
#
#   bash bench/side_by_side.sh [MODEL_DIR]
#
# MODEL_DIR defaults to a synthetic Qwen3.6-27B written by `qwgpu synth` into /tmp/qwgpu-27b
# (about 15 GB). mlx-lm must be importable by $PYTHON (on a CUDA machine: pip install
# mlx-cuda-13==0.32.4 mlx==0.32.4 mlx-lm==0.32.2; on a Mac: pip install mlx-lm).
# Environment: QWGPU (binary, default target/release/qwgpu), PYTHON, PROMPT (1024), GEN (512),
# WARMUP (3), TRIALS (10), OUT (folder for the JSON outputs, default a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
QWGPU=${QWGPU:-target/release/qwgpu}
PYTHON=${PYTHON:-python3}
PROMPT=${PROMPT:-1024}
GEN=${GEN:-512}
WARMUP=${WARMUP:-3}
TRIALS=${TRIALS:-10}
OUT=${OUT:-$(mktemp -d)}
MODEL=${1:-/tmp/qwgpu-27b}
mkdir -p "$OUT"
if [ ! -f "$MODEL/config.json" ]; then
  echo "writing a synthetic Qwen3.6-27B checkpoint to $MODEL" >&2
  "$QWGPU" synth --preset qwen3.6-27b --out "$MODEL" >&2
fi
"$QWGPU" bench --model "$MODEL" --mtp off --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
  --warmup "$WARMUP" --trials "$TRIALS" --json > "$OUT/qwgpu.json"
"$PYTHON" bench/mlx_lm_bench.py --model "$MODEL" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
  --warmup "$WARMUP" --trials "$TRIALS" > "$OUT/mlx_lm.json"
"$PYTHON" bench/compare.py "$OUT/qwgpu.json" "$OUT/mlx_lm.json" | tee "$OUT/table.md"
