# Where the one-plane format (QWGPU_XQ_BYTE=1) loses at 1 token: layer breakdown and lm_head for
# byte 0 / 1; then plain decode (--mtp off) under the 1-token tile's knobs with byte=1, the
# default as control on both sides. One device call; results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
for b in 0 1; do
  ts "breakdown byte=$b"; QWGPU_XQ_BYTE=$b timeout 100 $C/lab layer --breakdown --reps 50 --pos 1024 > $R/layers_byte$b.jsonl 2>&1; grep '"bench\|"part' $R/layers_byte$b.jsonl | grep 'T=1' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:90]:90s} {j['us']:7.1f}\")"
  QWGPU_XQ_BYTE=$b timeout 60 $C/lab matmul --reps 20 --shapes lm_head > $R/lm_head_byte$b.jsonl 2>&1; grep '"matmul q4 xq' $R/lm_head_byte$b.jsonl | cut -c1-100
  save
done
p() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "plain $n"; env "$@" timeout 90 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/plain_$n.json 2>/dev/null; p $R/plain_$n.json; save; }
run b0 QWGPU_XQ_BYTE=0
run b1 QWGPU_XQ_BYTE=1
run b1_late0 QWGPU_XQ_BYTE=1 QWGPU_XQ_NORM_LATE=0
run b1_unroll2 QWGPU_XQ_BYTE=1 QWGPU_XQ_UNROLL=2,2,2
run b1_tile484 QWGPU_XQ_BYTE=1 QWGPU_XQ_TILE=4,8,4
run b1_tile444 QWGPU_XQ_BYTE=1 QWGPU_XQ_TILE=4,4,4
run b1_ksplit QWGPU_XQ_BYTE=1 QWGPU_XQ_KSPLIT=1,2,1
run b0_2 QWGPU_XQ_BYTE=0
run b1_2 QWGPU_XQ_BYTE=1
ts done
