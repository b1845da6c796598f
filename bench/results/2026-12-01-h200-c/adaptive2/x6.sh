# --mtp auto at forced 0.7 and 0.8 after the fallback fix.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
p() { python3 -c "
import json; j=json.load(open('$1')); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m['mtp'], m.get('policy'), m.get('measured_ms'), m.get('break_even_acceptance'))"; }
for a in 0.7 0.8; do echo "== mtp auto forced $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept $a --json > $OUT/mtp_auto_$a.json 2>/dev/null; p $OUT/mtp_auto_$a.json; done
