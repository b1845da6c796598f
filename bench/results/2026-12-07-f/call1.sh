# Call 1: attention's prep and final pass folded into the split pass (QWGPU_ATTN_FOLD=2, the
# default on Vulkan; 1 the prep alone, 0 neither) against separate dispatches, and the tail prefetch (on by default on NVIDIA) against none:
# plain decode (1024 + 128) and MTP at forced 0.8 (64 + 256, 10 trials); then the issue's
# end-to-end protocol with the defaults. Runs stop being started DEADLINE seconds into the call.
. bench/results/2026-12-07-f/head.sh
# The fold's bit tests on this GPU (the kernel test, and the model's split attention against one
# pass), from the tests directory (fixtures).
(cd tests && QWGPU_FIXTURES=$PWD/fixtures/models timeout 120 $C/kernels_attention --test-threads 1 prep_folded split_and_fused; QWGPU_FIXTURES=$PWD/fixtures/models timeout 120 $C/model_invariance --test-threads 1 split_attention row0) > $OUT/tests.txt 2>&1
grep -E "^test |test result" $OUT/tests.txt
run def_1 "" $P
run nofold_1 "QWGPU_ATTN_FOLD=0" $P
run prep_1 "QWGPU_ATTN_FOLD=1" $P
run mdef_1 "" $M
run mnofold_1 "QWGPU_ATTN_FOLD=0" $M
run def_2 "" $P
run nofold_2 "QWGPU_ATTN_FOLD=0" $P
run prep_2 "QWGPU_ATTN_FOLD=1" $P
run off_1 "QWGPU_TAIL_PREFETCH=0" $P
run e2e "" $E
run moff_1 "QWGPU_TAIL_PREFETCH=0" $M
ls /tmp/r/*.json | head -15 | xargs -r cp -t $OUT/; ts done
