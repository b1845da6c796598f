# Call 1: the tail prefetch at the sites not yet recorded (`QWGPU_TAIL_SITES`), plain decode,
# two alternating rounds against the default (in,gu,down at 8 MB over 1056) and off.
. bench/results/2026-12-07-e/head.sh
for r in 1 2; do
  one def_$r "" $P
  one off_$r "QWGPU_TAIL_PREFETCH=0" $P
  one out4_$r "QWGPU_TAIL_SITES=$D,out:4" $P
  one out8_$r "QWGPU_TAIL_SITES=$D,out:8" $P
  one os_$r "QWGPU_TAIL_SITES=$D,os" $P
  one o_$r "QWGPU_TAIL_SITES=$D,o" $P
  one lm_$r "QWGPU_TAIL_SITES=$D,lm" $P
done
cp /tmp/r/*.json $OUT/ 2>/dev/null; ts done
