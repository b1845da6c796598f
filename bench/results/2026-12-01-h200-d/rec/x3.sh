# The fused Gated-DeltaNet recurrence writes out_proj's integer planes itself (48 xquant dispatches
# fewer); the integer-plane tile swept in the kernel lab (QWGPU_XQ_TILE=G,A,B: G groups of 32 lanes,
# A / B rows per group at 1 / 2 tokens); end to end; MTP at the synthetic head's own acceptance and 0.7.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
for t in 4,4,4 4,2,2 4,8,8 8,4,4 8,2,2; do echo "== lab XQ tile $t"; QWGPU_XQ_TILE=$t $C/lab matmul --reps 100 --shapes gate_up,down,in_proj,lm_head > $OUT/lab_tile_${t//,/_}.jsonl 2>&1; grep '"matmul q4 xq' $OUT/lab_tile_${t//,/_}.jsonl | python3 -c "
import json,sys
print('  '.join(f\"{json.loads(l)['bench'].split()[3]}:{json.loads(l)['bench'].split()[-1]} {json.loads(l)['us']}\" for l in sys.stdin))"; done
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','dispatch_kinds_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline')})" $1; }
echo "== final: 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_final.json 2>/dev/null; g $OUT/e2e_final.json
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1; }
echo "== mtp on, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $OUT/mtp_none.json 2>/dev/null; m $OUT/mtp_none.json
echo "== mtp auto, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $OUT/auto_none.json 2>/dev/null; m $OUT/auto_none.json
echo "== mtp on 0.7"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.7 --json > $OUT/mtp_0.7.json 2>/dev/null; m $OUT/mtp_0.7.json
