# Gated recurrence (recurrence + gated norm in one dispatch) on / off, plain and MTP 0.8.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k not in ('decode_tokens_per_s_trials','device','model','temperature')})" $1; }
for gr in 1 0 1 0; do echo "== e2e gated_recurrence=$gr"; QWGPU_GATED_RECURRENCE=$gr $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_gr$gr.json 2>/dev/null; g $OUT/e2e_gr$gr.json; done
for gr in 1 0; do echo "== mtp 0.8 gated_recurrence=$gr"; QWGPU_GATED_RECURRENCE=$gr $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_0.8_gr$gr.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_0.8_gr$gr.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"; done
