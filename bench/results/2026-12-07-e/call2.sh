# Call 2 (same warm machine): MTP at forced 0.8 with the new sites, and the size sweep on the H200.
. bench/results/2026-12-07-e/head.sh
rm -f /tmp/r/*
for r in 1 2; do
  one mdef_$r "" $M
  one moff_$r "QWGPU_TAIL_PREFETCH=0" $M
  one mmtp_$r "QWGPU_TAIL_SITES=$D,mtp,lm" $M
done
one t6 "QWGPU_TAIL_PREFETCH=6" $P
one t10 "QWGPU_TAIL_PREFETCH=10" $P
one def "" $P
cp /tmp/r/*.json $OUT/ 2>/dev/null; ts done
