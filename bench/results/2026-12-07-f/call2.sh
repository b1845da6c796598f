# Call 2 (thirty-sixth session, the same warm H100 as call 1): repeats of the fold levels and
# of the sampled forms, alternating, and the tail prefetch off.
. bench/results/2026-12-07-f/head.sh
run def_2 "" $P
run nofold_2 "QWGPU_ATTN_FOLD=0" $P
run fold2_2 "QWGPU_ATTN_FOLD=2" $P
run mdef_2 "" $M
run mnofold_2 "QWGPU_ATTN_FOLD=0" $M
run mfold2_2 "QWGPU_ATTN_FOLD=2" $M
run samp_queue_2 "" $S
run samp_ahead_2 "QWGPU_MTP_SAMPLED_QUEUE=0" $S
run off_1 "QWGPU_TAIL_PREFETCH=0" $P
run def_3 "" $P
run fold2_3 "QWGPU_ATTN_FOLD=2" $P
ts done
