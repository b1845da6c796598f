# The committed tree (integer-plane pipelines built for their row length): layer breakdown, the
# README's end-to-end benchmark, the MTP table and --mtp auto, then two blocks per lane iteration
# retried on top (QWGPU_XQ_UNROLL). One device call; results written to $OUT as they come.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=$OUT; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
$C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers.jsonl 2>&1; grep '"bench\|"part' $R/layers.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:90]:90s} {j['us']:7.1f}\")"
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','gpu_memory_bytes','drift_pct')})" $1; }
echo "== 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>/dev/null; g $R/e2e.json
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1; }
for a in 0.6 0.8 0.9; do echo "== mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $R/mtp_$a.json 2>/dev/null; m $R/mtp_$a.json; done
echo "== mtp on, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/mtp_none.json 2>/dev/null; m $R/mtp_none.json
for a in none 0.8; do f=""; [ $a != none ] && f="--force-accept $a"
  echo "== mtp auto $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 $f --json > $R/auto_$a.json 2>/dev/null; m $R/auto_$a.json; done
for v in 2,1 1,2; do echo "== QWGPU_XQ_UNROLL=$v"; QWGPU_XQ_UNROLL=$v $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_unroll_$v.json 2>/dev/null; g $R/e2e_unroll_$v.json; done
