# Call 3 (thirty-sixth session, an H200 if one starts): the end-to-end protocol for the
# README's H200 row, then fold levels plain / MTP at forced 0.8, sampled MTP, the prefetch off.
. bench/results/2026-12-07-f/head.sh
run e2e "" $E
run def_1 "" $P
run nofold_1 "QWGPU_ATTN_FOLD=0" $P
run fold2_1 "QWGPU_ATTN_FOLD=2" $P
run mdef_1 "" $M
run mnofold_1 "QWGPU_ATTN_FOLD=0" $M
run mfold2_1 "QWGPU_ATTN_FOLD=2" $M
run samp_queue "" $S
run off_1 "QWGPU_TAIL_PREFETCH=0" $P
run samp_ahead "QWGPU_MTP_SAMPLED_QUEUE=0" $S
ts done
