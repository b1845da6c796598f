# Integer-plane decode matmul pipelines built for their row length (QWGPU_XQ_CONST_K=1), with the
# chunk loop written out (QWGPU_XQ_UNROLL_CH=1), against the default; an occupancy probe
# (QWGPU_XQ_PAD: unused workgroup memory per workgroup); end to end and MTP at forced 0.8.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
p() { grep '"bench' $1 | grep ' xq' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:66s} {j['us']:7.1f} {j['GBps']:7.1f}\")"; }
S=gate_up,down,in_proj,qkv,out_proj
for v in base constk unroll; do e="X=1"; [ $v = constk ] && e="QWGPU_XQ_CONST_K=1"; [ $v = unroll ] && e="QWGPU_XQ_CONST_K=1 QWGPU_XQ_UNROLL_CH=1"
  echo "== lab $v"; env $e $C/lab matmul --reps 100 --shapes $S > $R/lab_$v.jsonl 2>&1; p $R/lab_$v.jsonl | grep -v xquant
done
for pad in 2048 4096 8192 16384; do
  echo "== pad $pad words"; QWGPU_XQ_PAD=$pad $C/lab matmul --reps 100 --shapes gate_up,down > $R/pad_$pad.jsonl 2>&1; p $R/pad_$pad.jsonl | grep fused
done
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','decode_tokens_per_s','tpot_ms','ttft_s')})" $1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
for v in base constk unroll; do e="X=1"; [ $v = constk ] && e="QWGPU_XQ_CONST_K=1"; [ $v = unroll ] && e="QWGPU_XQ_CONST_K=1 QWGPU_XQ_UNROLL_CH=1"
  echo "== e2e $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 4 --json > $R/e2e_$v.json 2>/dev/null; g $R/e2e_$v.json
  echo "== mtp 0.8 $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null; m $R/mtp_$v.json
done
tar czf $OUT/results.tar.gz -C $R .
