# The new defaults (offset in the packed dot products' accumulator, XNORM_LATE in the 1-token
# tile, the wide tensor-core tile for matrices of more than FEW_ROWS rows): the README benchmark,
# the MTP curve, XNORM_LATE in the verify tile too, TTFT against the old tile, the GEMM lab.
# One device call; results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
for t in default 128x128x32x4x2x3; do
  ts "coop lab wide=$t"; ( [ $t = default ] || export QWGPU_COOP_TILE_WIDE=$t; timeout 100 $C/lab matmul --reps 10 --prefill 1024 > $R/coop_$t.jsonl 2>&1 ); grep 'TF' $R/coop_$t.jsonl | cut -c1-120
done
save
ts "wait synth"; wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','gpu_memory_bytes','drift_pct')})" $1 2>/dev/null || echo failed; }
ts "e2e 1024 + 512, 3 + 10"; timeout 150 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>/dev/null; g $R/e2e.json
save
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1 2>/dev/null || echo failed; }
for a in 0.6 0.8 0.9; do ts "mtp on $a"; timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $R/mtp_$a.json 2>/dev/null; m $R/mtp_$a.json; save; done
ts "mtp on, own acceptance"; timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/mtp_none.json 2>/dev/null; m $R/mtp_none.json
for a in none 0.8; do f=""; [ $a != none ] && f="--force-accept $a"
  ts "mtp auto $a"; timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 $f --json > $R/auto_$a.json 2>/dev/null; m $R/auto_$a.json; done
save
for i in 1 2; do for L in 0 1; do
  ts "late verify=$L run $i"; QWGPU_XQ_NORM_LATE_VERIFY=$L timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/lv${L}_$i.json 2>/dev/null; m $R/lv${L}_$i.json
done; done
save
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s'])" $1 2>/dev/null || echo failed; }
for P in 1024 4000; do for t in default 128x128x32x4x2x3; do
  ts "ttft $P wide=$t"; ( [ $t = default ] || export QWGPU_COOP_TILE_WIDE=$t; timeout 80 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens $P --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft${P}_$t.json 2>/dev/null ); tt $R/ttft${P}_$t.json
  save
done; done
ts done
