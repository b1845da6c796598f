# The tensor-core GEMM test (tests/kernels_matmul_coop.rs: every tile including CoopTile::WIDE
# against the CPU, chunk and tile invariance) on the H200; then the one-plane integer format
# (QWGPU_XQ_BYTE=1) against the default two-plane one: kernel lab at 1 and 2 tokens, and plain +
# MTP at forced 0.8 (plain in the same run), alternating. One device call; results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
ts "coop test"; ( timeout 150 $C/coop_test --nocapture > $R/coop_test.txt 2>&1; echo "rc=$?" >> $R/coop_test.txt ); grep -a "test result\|rc=\|panicked\|worst" $R/coop_test.txt | head -20
save
ts synth; [ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
for b in 0 1; do
  ts "lab byte=$b"; QWGPU_XQ_BYTE=$b timeout 100 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj,out_proj > $R/lab_byte$b.jsonl 2>&1; grep '"matmul q4' $R/lab_byte$b.jsonl | grep -v 'xnorm\|xout' | cut -c1-120
done
save
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), {k:v for k,v in m.items() if k in ('measured_ms','break_even_acceptance')})" $1 2>/dev/null || echo failed; }
for r in 1 2; do for b in 0 1; do
  ts "mtp auto 0.8 byte=$b run $r"; QWGPU_XQ_BYTE=$b timeout 120 $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_byte${b}_$r.json 2>/dev/null; m $R/mtp_byte${b}_$r.json
  save
done; done
ts done
