# The split attention pass finishing its own rows (MERGE: no final dispatch for decode and
# verify), checked on the H200 (kernel test, fixtures against mlx-lm), then end to end and MTP
# with and without it, and the few-row k split. One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
echo "== kernels_attention"; $C/kernels_attention > $R/kernels_attention.txt 2>&1; grep "test result\|FAILED\|panicked" $R/kernels_attention.txt
echo "== model_vs_mlx"; QWGPU_FIXTURES=$PWD/tests/fixtures/models $C/model_vs_mlx > $R/model_vs_mlx.txt 2>&1; grep "test result\|FAILED\|panicked\|max" $R/model_vs_mlx.txt | head
echo "== layer breakdown"; $C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers.jsonl 2>&1; grep '"bench\|"part' $R/layers.jsonl | grep full_attention | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part')):100s} {j['us']:7.1f}\")"
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 200 --shapes out_proj > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep '"bench' $R/lab_$name.jsonl | grep ' xq fused' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
lab ks121 QWGPU_XQ_KSPLIT=1,2,1
lab ks122 QWGPU_XQ_KSPLIT=1,2,2
lab ks122_t442 QWGPU_XQ_KSPLIT=1,2,2 QWGPU_XQ_TILE=4,4,2
lab ks122_t422 QWGPU_XQ_KSPLIT=1,2,2 QWGPU_XQ_TILE=4,2,2
lab ks121_t442 QWGPU_XQ_KSPLIT=1,2,1 QWGPU_XQ_TILE=4,4,2
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms')})" $1; }
e2e() { name=$1; shift; echo "== $name ($*), 1024 + 512, 1 + 6"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 1 --trials 6 --roofline-gbps 4500 --json > $R/e2e_$name.json 2>/dev/null; g $R/e2e_$name.json; }
e2e merge0_ks121 QWGPU_ATTN_MERGE=0 QWGPU_XQ_KSPLIT=1,2,1
e2e merge1_ks121 QWGPU_XQ_KSPLIT=1,2,1
e2e merge1_ks122 QWGPU_XQ_KSPLIT=1,2,2
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'])" $1; }
for v in "merge1_ks121 QWGPU_XQ_KSPLIT=1,2,1" "merge1_ks122 QWGPU_XQ_KSPLIT=1,2,2" "merge0_ks121 QWGPU_ATTN_MERGE=0 QWGPU_XQ_KSPLIT=1,2,1"; do
  set -- $v; name=$1; shift
  echo "== mtp on 0.8 $name"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 5 --warmup 1 --force-accept 0.8 --json > $R/mtp_0.8_$name.json 2>/dev/null; m $R/mtp_0.8_$name.json
done
tar czf $OUT/results.tar.gz -C $R .
