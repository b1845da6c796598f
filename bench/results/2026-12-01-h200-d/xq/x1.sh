# x as integer planes converted once per matmul input (xquant.wgsl + XQ in matmul_staged.wgsl):
# kernel lab (f32 staged vs XQ alone vs xquant + XQ), end to end XQ on / off, MTP at forced 0.8.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
$C/lab matmul --reps 100 > $OUT/lab_matmul.jsonl 2>&1; cat $OUT/lab_matmul.jsonl
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','dispatch_kinds_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline')})" $1; }
for xq in 1 0; do echo "== e2e xq=$xq"; QWGPU_MATMUL_XQ=$xq $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_xq$xq.json 2>$OUT/e2e_xq$xq.err; g $OUT/e2e_xq$xq.json; tail -3 $OUT/e2e_xq$xq.err; done
for a in 0.8; do echo "== mtp $a xq"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $OUT/mtp_$a.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_$a.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"; done
echo "== final: 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_final.json 2>/dev/null; g $OUT/e2e_final.json
