# Scales and biases as (scale, bias) pairs, one u32 per group (SB_PAIRS, the default now) against
# the checkpoint's two arrays (QWGPU_SB_PAIRS=0): the read pattern alone (lab rows), the kernel
# lab, end to end and MTP at forced 0.8. One call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
p() { grep '"bench' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:66s} {j['us']:7.1f} {j['GBps']:7.1f}\")"; }
$C/lab rows --reps 100 > $R/rows.jsonl 2>&1; p $R/rows.jsonl
wait
for v in pairs two; do e="QWGPU_SB_PAIRS=1"; [ $v = two ] && e="QWGPU_SB_PAIRS=0"
  echo "== lab $v"; env $e $C/lab matmul --reps 100 > $R/lab_$v.jsonl 2>&1; p $R/lab_$v.jsonl | grep -v "xquant\|q4 mlp\|q4 gdn\|q4 attn\|q4 lm"
done
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','decode_tokens_per_s','tpot_ms','ttft_s','gpu_memory_bytes')})" $1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
for v in pairs two pairs2; do e="QWGPU_SB_PAIRS=1"; [ $v = two ] && e="QWGPU_SB_PAIRS=0"
  echo "== e2e $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 4 --json > $R/e2e_$v.json 2>/dev/null; g $R/e2e_$v.json
  [ $v = pairs2 ] && break
  echo "== mtp 0.8 $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null; m $R/mtp_$v.json
done
tar czf $OUT/results.tar.gz -C $R .
