# Thirty-second session, device calls 2-4 on the same warm H100 after call1.sh (the checkpoint
# still in /tmp/m27): the tail prefetch alone (`QWGPU_TAIL_PREFETCH=MB[,WORKGROUPS]`), its size
# and its workgroups. Uses call1.sh's set-up and `one` (sourced up to its runs).
sed '/^for r in 1 2; do$/,$d' bench/results/2026-12-07-d/call1.sh > /tmp/head.sh
. /tmp/head.sh
# call 2
for r in 1 2; do
  one off_$r "QWGPU_PREFETCH_WGS=0" $P
  one t2_$r "QWGPU_TAIL_PREFETCH=2" $P
  one t4_$r "QWGPU_TAIL_PREFETCH=4" $P
  one t4w264_$r "QWGPU_TAIL_PREFETCH=4,264" $P
  one t6_$r "QWGPU_TAIL_PREFETCH=6" $P
done
one mtp_off "QWGPU_PREFETCH_WGS=0" $M
one mtp_t4 "QWGPU_TAIL_PREFETCH=4" $M
# call 3
one off_1 "QWGPU_PREFETCH_WGS=0" $P
one t6_1 "QWGPU_TAIL_PREFETCH=6" $P
one t6w1056_1 "QWGPU_TAIL_PREFETCH=6,1056" $P
one t8w1056_1 "QWGPU_TAIL_PREFETCH=8,1056" $P
one t10w1056_1 "QWGPU_TAIL_PREFETCH=10,1056" $P
one mtp_off "QWGPU_PREFETCH_WGS=0" $M
one mtp_t6w1056 "QWGPU_TAIL_PREFETCH=6,1056" $M
# call 4
one off "QWGPU_PREFETCH_WGS=0" $P
one t8w2112 "QWGPU_TAIL_PREFETCH=8,2112" $P
one t8w4224 "QWGPU_TAIL_PREFETCH=8,4224" $P
one t8w1056 "QWGPU_TAIL_PREFETCH=8,1056" $P
