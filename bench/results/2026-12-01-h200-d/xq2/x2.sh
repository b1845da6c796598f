# xquant with a workgroup per 64 blocks and a thread per word (was: one workgroup per row, a
# thread per block): kernel lab, end to end, MTP at forced 0.6 / 0.8 / 0.9 and --mtp auto.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
$C/lab matmul --reps 100 > $OUT/lab_matmul.jsonl 2>&1; grep -v '"matmul q4 [a-z]' $OUT/lab_matmul.jsonl | cut -c1-120
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','dispatch_kinds_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline')})" $1; }
echo "== e2e xq"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_xq1.json 2>/dev/null; g $OUT/e2e_xq1.json
for a in 0.8 0.6 0.9; do echo "== mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $OUT/mtp_$a.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_$a.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), m.get('break_even_acceptance'))"; done
for a in 0.6 0.8; do echo "== mtp auto $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept $a --json > $OUT/auto_$a.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/auto_$a.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})"; done
echo "== final: 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_final.json 2>/dev/null; g $OUT/e2e_final.json
