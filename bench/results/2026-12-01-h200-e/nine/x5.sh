# Fused plane epilogues (QWGPU_XQ_FUSE): the residual projections write the next norm's planes (norm
# deferred to the reader), gate+up writes down's planes. Kernel lab, end to end fused vs not in the
# same session, MTP table.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
$C/lab matmul --reps 100 > $OUT/lab_matmul.jsonl 2>&1; grep '"bench' $OUT/lab_matmul.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','dispatch_kinds_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','gpu_memory_bytes')})" $1; }
echo "== fused: 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_fused.json 2>/dev/null; g $OUT/e2e_fused.json
echo "== not fused (QWGPU_XQ_FUSE=0): 1024 + 512, 2 + 5"; QWGPU_XQ_FUSE=0 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 2 --trials 5 --roofline-gbps 4500 --json > $OUT/e2e_unfused.json 2>/dev/null; g $OUT/e2e_unfused.json
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1; }
for a in 0.8 0.6 0.9; do echo "== mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $OUT/mtp_$a.json 2>/dev/null; m $OUT/mtp_$a.json; done
echo "== mtp auto, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $OUT/auto_none.json 2>/dev/null; m $OUT/auto_none.json
