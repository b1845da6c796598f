# Call 4 (thirty-sixth session): where attention's folds stop paying, plain decode by prompt
# length (+ 128 generated) at fold levels 0 and 2, then level 2 below a key count and 0 from it
# on (QWGPU_ATTN_FOLD_KEYS) at 1024.
. bench/results/2026-12-07-f/head.sh
Q="--mtp off --gen-tokens 128 --trials 2 --warmup 1"
for L in 256 512 768; do
  run f0_$L "QWGPU_ATTN_FOLD=0" $Q --prompt-tokens $L
  run f2_$L "QWGPU_ATTN_FOLD=2" $Q --prompt-tokens $L
done
run f2k640_1024 "QWGPU_ATTN_FOLD=2 QWGPU_ATTN_FOLD_KEYS=640" $Q --prompt-tokens 1024
run f0_1024 "QWGPU_ATTN_FOLD=0" $Q --prompt-tokens 1024
run f2_1024 "QWGPU_ATTN_FOLD=2" $Q --prompt-tokens 1024
ts done
