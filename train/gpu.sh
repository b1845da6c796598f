#!/usr/bin/env bash
# One training call on the GPU machine (CUDA, torch + numpy + safetensors, no network).
#
#   OUT=/path/to/out bash train/gpu.sh
#
# Trains for $MINUTES (default 7.5) of wall time, then writes into $OUT the bf16 weight shards
# (weights-*.safetensors, <= 15 MiB each), loss.csv, samples.txt and log.txt, and in $OUT/best/
# the shards of the best validation (lowest held-out loss; export.py uses them).
# The run directory $RUN (default train/runs/gpu, ignored by git) keeps the full state
# (state.pt: float32 weights + optimizer); a later call on the same machine resumes from it
# exactly. On a fresh machine, put the returned shards in $RESUME_DIR (default train/ckpt) to
# resume from them (fresh optimizer moments, short re-warm-up).
#
# Environment: MINUTES, TOTAL_MINUTES (length of the whole LR schedule over all calls; default:
# minutes already trained + MINUTES), PRESET (base | small | tiny), BATCH, SEQ, LR, MTP_WEIGHT (0.5),
# MTP_DISTILL (0.7: share of the MTP loss that is self-distillation), EVAL_EVERY (minutes, 0.5),
# EVAL_BATCHES (16), EXTRA (more train.py flags).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
MINUTES=${MINUTES:-7.5}
PRESET=${PRESET:-base}
BATCH=${BATCH:-64}
SEQ=${SEQ:-512}
LR=${LR:-2e-3}
MTP_WEIGHT=${MTP_WEIGHT:-0.5}
MTP_DISTILL=${MTP_DISTILL:-0.7}
EVAL_EVERY=${EVAL_EVERY:-0.5}
EVAL_BATCHES=${EVAL_BATCHES:-16}
RUN=${RUN:-train/runs/gpu}
RESUME_DIR=${RESUME_DIR:-train/ckpt}
PY=${PYTHON:-python3}

mkdir -p "$RUN" "$OUT"
RESUME=()
if [ -f "$RUN/state.pt" ]; then
  RESUME=(--resume "$RUN")
elif compgen -G "$RESUME_DIR/weights-*.safetensors" > /dev/null; then
  RESUME=(--resume "$RESUME_DIR")
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
"$PY" -c 'import torch, numpy, safetensors; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

# shellcheck disable=SC2086
"$PY" train/train.py --out "$RUN" ${RESUME[@]+"${RESUME[@]}"} \
  --preset "$PRESET" --minutes "$MINUTES" ${TOTAL_MINUTES:+--total-minutes "$TOTAL_MINUTES"} \
  --batch "$BATCH" --seq "$SEQ" --lr "$LR" --mtp-weight "$MTP_WEIGHT" --mtp-distill "$MTP_DISTILL" \
  --log-every 50 --eval-every "$EVAL_EVERY" --eval-batches "$EVAL_BATCHES" --save-every 3 \
  ${EXTRA:-}

cp "$RUN"/weights-*.safetensors "$RUN"/loss.csv "$RUN"/log.txt "$OUT"/
[ -f "$RUN/samples.txt" ] && cp "$RUN/samples.txt" "$OUT"/
if [ -f "$RUN/best/best.json" ]; then
  mkdir -p "$OUT/best"
  cp "$RUN"/best/weights-*.safetensors "$RUN/best/best.json" "$OUT/best/"
fi
ls -la "$OUT" "$OUT/best" 2>/dev/null || true
