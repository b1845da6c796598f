#!/usr/bin/env bash
# One training call on the GPU machine (CUDA, torch + numpy + safetensors, no network).
#
#   OUT=/path/to/out bash train/gpu.sh
#
# Trains for $MINUTES (default 7.5) of wall time, then writes into $OUT loss.csv, samples.txt and
# log.txt, and in $OUT/best/ the bf16 shards (weights-*.safetensors, <= 15 MiB each) + best.json
# of the best validation (lowest held-out loss; export.py uses them): 8 files for `base`. The
# final shards go to $OUT only when there is no best/ (see MAX_FILES below).
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

# What comes back from $OUT is limited (MAX_FILES files, 8 by default). A `base` run has 4 shards,
# so the final shards and best/ together (4 + 5) plus the logs would be 12: with best/ present
# only best/ is returned (what export.py uses); the final shards stay in $RUN (state.pt too).
# Without best/ (--keep-best none) the final shards are returned instead.
MAX_FILES=${MAX_FILES:-8}
cp "$RUN"/loss.csv "$RUN"/log.txt "$OUT"/
[ -f "$RUN/samples.txt" ] && cp "$RUN/samples.txt" "$OUT"/
if [ -f "$RUN/best/best.json" ]; then
  mkdir -p "$OUT/best"
  cp "$RUN"/best/weights-*.safetensors "$RUN/best/best.json" "$OUT/best/"
else
  cp "$RUN"/weights-*.safetensors "$OUT"/
fi
n=$(find "$OUT" -type f | wc -l)
if [ "$n" -gt "$MAX_FILES" ] && [ -f "$OUT/best/best.json" ]; then
  rm "$OUT/best/best.json"  # its numbers are also in the first shard's metadata and in log.txt
  n=$((n - 1))
fi
[ "$n" -gt "$MAX_FILES" ] && echo "warning: $n files in $OUT, more than $MAX_FILES come back" >&2
ls -la "$OUT" "$OUT/best" 2>/dev/null || true
