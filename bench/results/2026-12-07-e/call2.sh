# Call 2 (the same warm H100, 137 s of device time left): out_proj's read size.
. bench/results/2026-12-07-e/head.sh
rm -f /tmp/r/*
one out8_2 "QWGPU_TAIL_SITES=$D,out:8" $P
one out12_1 "QWGPU_TAIL_SITES=$D,out:12" $P
one def_3 "" $P
one out8lm_1 "QWGPU_TAIL_SITES=$D,out:8,lm,o" $P
ts done
