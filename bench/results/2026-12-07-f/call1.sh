# Call 1 (prepared in the thirty-fourth session, which was lent no device): first the folds' bit
# tests on this GPU (the kernel test of every fold level, the model's split attention at levels
# 2 / 1 / 0 against one pass, row 0 of a verify against a decode); then attention's prep folded
# into the split pass (QWGPU_ATTN_FOLD=1, the default), with its final pass too (=2, opt-in on
# Vulkan) and neither (=0): plain decode (1024 + 128) and MTP at forced 0.8 (64 + 256, 10
# trials); sampled MTP queued one ahead (default), with the next iteration's body submitted
# ahead (QWGPU_MTP_SAMPLED_QUEUE=0) or whole iterations (and QWGPU_MTP_BODY_AHEAD=0); the tail prefetch off; the end-to-end protocol. Runs stop
# being started DEADLINE seconds into the call.
. bench/results/2026-12-07-f/head.sh
(cd tests && QWGPU_FIXTURES=$PWD/fixtures/models timeout 120 $C/kernels_attention --test-threads 1 prep_folded split_and_fused; QWGPU_FIXTURES=$PWD/fixtures/models timeout 120 $C/model_invariance --test-threads 1 split_attention row0; QWGPU_FIXTURES=$PWD/fixtures/models timeout 120 $C/mtp --test-threads 1 greedy_mtp_head_on sampl) > $OUT/tests.txt 2>&1
grep -E "^test |test result" $OUT/tests.txt
run def_1 "" $P
run nofold_1 "QWGPU_ATTN_FOLD=0" $P
run fold2_1 "QWGPU_ATTN_FOLD=2" $P
run mdef_1 "" $M
run mrows2_1 "QWGPU_MTP_HEAD_ONE_ROW=0" $M
run mfold2_1 "QWGPU_ATTN_FOLD=2" $M
run samp_queue "" $S
run samp_ahead "QWGPU_MTP_SAMPLED_QUEUE=0" $S
run samp_rows2 "QWGPU_MTP_HEAD_ONE_ROW=0" $S
run samp_whole "QWGPU_MTP_SAMPLED_QUEUE=0 QWGPU_MTP_BODY_AHEAD=0" $S
run mnofold_1 "QWGPU_ATTN_FOLD=0" $M
run e2e "" $E
run def_2 "" $P
run nofold_2 "QWGPU_ATTN_FOLD=0" $P
run fold2_2 "QWGPU_ATTN_FOLD=2" $P
run mdef_2 "" $M
run mrows2_2 "QWGPU_MTP_HEAD_ONE_ROW=0" $M
run off_1 "QWGPU_TAIL_PREFETCH=0" $P
ls /tmp/r/*.json | head -15 | xargs -r cp -t $OUT/; ts done
