# Call 1: the tail prefetch at the sites not yet recorded (`QWGPU_TAIL_SITES`) against the
# default (in,gu,down at 8 MB over 1056) and off, plain decode and MTP at forced 0.8, most wanted
# first; runs stop being started 480 s into the call (device time is scarce).
. bench/results/2026-12-07-e/head.sh
run() { [ $(( $(date +%s) - T0 )) -lt ${DEADLINE:-480} ] && one "$@"; true; }
run def_1 "" $P
run off_1 "QWGPU_TAIL_PREFETCH=0" $P
run out4_1 "QWGPU_TAIL_SITES=$D,out:4" $P
run lm_1 "QWGPU_TAIL_SITES=$D,lm" $P
run os_1 "QWGPU_TAIL_SITES=$D,os" $P
run mdef_1 "" $M
run moff_1 "QWGPU_TAIL_PREFETCH=0" $M
run mmtp_1 "QWGPU_TAIL_SITES=$D,mtp,lm" $M
run out8_1 "QWGPU_TAIL_SITES=$D,out:8" $P
run o_1 "QWGPU_TAIL_SITES=$D,o" $P
run def_2 "" $P
run off_2 "QWGPU_TAIL_PREFETCH=0" $P
run out4_2 "QWGPU_TAIL_SITES=$D,out:4" $P
run lm_2 "QWGPU_TAIL_SITES=$D,lm" $P
run os_2 "QWGPU_TAIL_SITES=$D,os" $P
run t6_1 "QWGPU_TAIL_PREFETCH=6" $P
run t10_1 "QWGPU_TAIL_PREFETCH=10" $P
ls /tmp/r/*.json | head -16 | xargs -r cp -t $OUT/; ts done
