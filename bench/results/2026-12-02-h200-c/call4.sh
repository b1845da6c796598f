# The 2-token tile with 2 rows per 32-lane group for rows below 16384 features
# (QWGPU_STAGED_ROWS=4,2; rows per group never change a row's bits) against the default 4: kernel
# lab (after the synthetic checkpoint is written, so nothing else runs on the GPU) and MTP at
# forced 0.8. One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 100 --shapes gate_up,in_proj,qkv,out_proj > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep '"bench' $R/lab_$name.jsonl | grep ' xq fused' | grep T=2 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
lab rows44 X=1
lab rows42 QWGPU_STAGED_ROWS=4,2
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('dispatches_per_token'))" $1; }
for v in "rows44 X=1" "rows42 QWGPU_STAGED_ROWS=4,2"; do
  set -- $v; name=$1; shift
  echo "== mtp on 0.8 $name"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 4 --warmup 1 --force-accept 0.8 --json > $R/mtp_0.8_$name.json 2>/dev/null; m $R/mtp_0.8_$name.json
done
tar czf $OUT/results.tar.gz -C $R .
