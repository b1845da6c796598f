# Follow-up of bench/xq_variants.sh (one device call, about 5 minutes): the kernel lab's default
# against the k split of long rows (QWGPU_XQ_KSPLIT=1,2) with and without block sums, then end to
# end (synthetic 27B, 1024 + 512, 1 + 5) and MTP at 0.8 forced acceptance for each. Same carry
# as xq_variants.sh. Every result is also packed into $OUT/results.tar.gz (a call brings back
# only a few files).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 100 --shapes ${SHAPES:-gate_up,down,out_proj,in_proj} > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep '"bench' $R/lab_$name.jsonl | grep ' xq ' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
lab word X=1
lab ks12 QWGPU_XQ_KSPLIT=1,2
lab block_ks12 QWGPU_XQ_BLOCK_SUM=1 QWGPU_XQ_KSPLIT=1,2
SHAPES=gate_up,in_proj lab ks22 QWGPU_XQ_KSPLIT=2,2
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms')})" $1; }
e2e() { name=$1; shift; echo "== $name ($*), 1024 + 512, 1 + 5"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 1 --trials 5 --roofline-gbps 4500 --json > $R/e2e_$name.json 2>/dev/null; g $R/e2e_$name.json; }
e2e word X=1
e2e ks12 QWGPU_XQ_KSPLIT=1,2
e2e block_ks12 QWGPU_XQ_BLOCK_SUM=1 QWGPU_XQ_KSPLIT=1,2
e2e ks22 QWGPU_XQ_KSPLIT=2,2
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'))" $1; }
for v in "word X=1" "ks12 QWGPU_XQ_KSPLIT=1,2" "block_ks12 QWGPU_XQ_BLOCK_SUM=1 QWGPU_XQ_KSPLIT=1,2"; do
  set -- $v; name=$1; shift
  echo "== mtp on 0.8 $name"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $R/mtp_0.8_$name.json 2>/dev/null; m $R/mtp_0.8_$name.json
done
tar czf $OUT/results.tar.gz -C $R .
