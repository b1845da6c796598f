# Dispatch fixed cost (lab chain), the k split of few-row matrices (out_proj / o_proj) and of
# long rows, the layer breakdown with the conv epilogue's constant taps, and end to end with the
# candidates. One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
echo "== chain"; $C/lab chain --reps 20 > $R/chain.jsonl 2>&1; grep '"bench' $R/chain.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.2f}\")"
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 100 --shapes ${SHAPES:-out_proj,down} > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep '"bench' $R/lab_$name.jsonl | grep ' xq ' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
lab ks121 QWGPU_XQ_KSPLIT=1,2,1
lab ks122 QWGPU_XQ_KSPLIT=1,2,2
lab ks123 QWGPU_XQ_KSPLIT=1,2,3
lab ks124 QWGPU_XQ_KSPLIT=1,2,4
SHAPES=down lab ks131 QWGPU_XQ_KSPLIT=1,3,1
SHAPES=down lab ks141 QWGPU_XQ_KSPLIT=1,4,1
echo "== layer breakdown"; $C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers.jsonl 2>&1; grep '"bench\|"part' $R/layers.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part')):100s} {j['us']:7.1f}\")"
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms')})" $1; }
e2e() { name=$1; shift; echo "== $name ($*), 1024 + 512, 1 + 5"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 1 --trials 5 --roofline-gbps 4500 --json > $R/e2e_$name.json 2>/dev/null; g $R/e2e_$name.json; }
e2e ks121 QWGPU_XQ_KSPLIT=1,2,1
e2e ks122 QWGPU_XQ_KSPLIT=1,2,2
e2e ks124 QWGPU_XQ_KSPLIT=1,2,4
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'))" $1; }
for v in "ks121 QWGPU_XQ_KSPLIT=1,2,1" "ks122 QWGPU_XQ_KSPLIT=1,2,2"; do
  set -- $v; name=$1; shift
  echo "== mtp on 0.8 $name"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $R/mtp_0.8_$name.json 2>/dev/null; m $R/mtp_0.8_$name.json
done
tar czf $OUT/results.tar.gz -C $R .
