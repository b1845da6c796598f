# The committed tree (two-plane integer format on by default): the README's benchmark (1024 + 512,
# 3 + 10), the MTP table at forced 0.6 / 0.8 / 0.9, own acceptance with --mtp on and auto; then
# the tile knobs retried on the narrower planes (1024 + 256, 1 + 3; MTP at 0.8 for the 2-token
# tile's). Results written to $OUT as they come.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=$OUT; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','gpu_memory_bytes','drift_pct')})" $1 2>/dev/null || echo failed; }
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'], 'tok/s')" $1 2>/dev/null || echo failed; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1 2>/dev/null || echo failed; }
ts "e2e 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>$R/e2e.err; g $R/e2e.json
for a in 0.6 0.8 0.9; do ts "mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $R/mtp_$a.json 2>/dev/null; m $R/mtp_$a.json; done
ts "mtp on, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/mtp_none.json 2>/dev/null; m $R/mtp_none.json
for a in none 0.8; do f=""; [ $a != none ] && f="--force-accept $a"
  ts "mtp auto $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 $f --json > $R/auto_$a.json 2>/dev/null; m $R/auto_$a.json; done
for v in QWGPU_XQ_UNROLL=2,1 QWGPU_XQ_UNROLL=1,2 QWGPU_XQ_TILE=4,8,4 QWGPU_XQ_KSPLIT=1,2,1 QWGPU_XQ_KSPLIT=1,1,2 QWGPU_XQ_EXACT_ROWS=0 QWGPU_DEFAULT=1; do
  ts "e2e $v"; n=$(echo $v | tr '=,' '__'); env $v $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/knob_$n.json 2>/dev/null; tp $R/knob_$n.json
done
for v in QWGPU_XQ_TILE=4,4,2 QWGPU_XQ_TILE=4,4,8 QWGPU_XQ_EXACT_ROWS=0 QWGPU_DEFAULT=1; do
  ts "mtp 0.8 $v"; n=$(echo $v | tr '=,' '__'); env $v $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtpknob_$n.json 2>/dev/null; m $R/mtpknob_$n.json
done
ts done
