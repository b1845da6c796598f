# Ceiling of a per-block-scale plane format: the integer-plane kernel with QWGPU_XQ_BOUND=1
# (7 vec4 of planes per block instead of 9, the block's 24 packed dot products chained into
# three i32 accumulators, one conversion per block and row; results wrong, timing only) against
# the committed kernel: kernel lab, end to end, MTP at forced 0.8. One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
lab() { grep '"bench' $1 | grep ' xq ' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
echo "== lab base"; $C/lab matmul --reps 100 > $R/lab_base.jsonl 2>&1; lab $R/lab_base.jsonl
echo "== lab bound"; QWGPU_XQ_BOUND=1 $C/lab matmul --reps 100 > $R/lab_bound.jsonl 2>&1; lab $R/lab_bound.jsonl
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','decode_tokens_per_s','tpot_ms')})" $1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
for v in base bound; do e=""; [ $v = bound ] && e="QWGPU_XQ_BOUND=1"
  echo "== e2e $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 4 --json > $R/e2e_$v.json 2>/dev/null; g $R/e2e_$v.json
  echo "== mtp 0.8 $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null; m $R/mtp_$v.json
done
tar czf $OUT/results.tar.gz -C $R .
