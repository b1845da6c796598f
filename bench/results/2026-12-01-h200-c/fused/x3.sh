# Fused Gated-DeltaNet decode (conv in the in_proj epilogue + one recurrence dispatch for steps 4-7)
# against the gated recurrence alone and the separate kernels; MTP with norms folded (new default).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','dispatch_kinds_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline')})" $1; }
for cfg in "1 1" "0 1" "0 0" "1 1"; do set -- $cfg; echo "== e2e fused=$1 gated=$2"; QWGPU_FUSED_GDN=$1 QWGPU_GATED_RECURRENCE=$2 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_f$1_g$2.json 2>/dev/null; g $OUT/e2e_f$1_g$2.json; done
for a in 0.8 0.6 0.9; do echo "== mtp $a fused"; $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $OUT/mtp_$a.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_$a.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"; done
echo "== mtp 0.8 not fused, norms not folded (previous default)"; QWGPU_FUSED_GDN=0 QWGPU_NORM_FOLD_MTP=0 $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_0.8_old.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_0.8_old.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"
echo "== final: 1024 + 512, 3 + 10"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_final.json 2>/dev/null; g $OUT/e2e_final.json
