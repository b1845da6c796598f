# The MTP curve with the mid-row verify tile (the committed defaults): forced 0.6 / 0.8 / 0.9,
# the synthetic head's own acceptance (--mtp on and auto), auto at 0.8; plain in each run.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1 2>/dev/null || echo failed; }
for a in 0.8 0.6 0.9; do ts "mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $R/mtp_$a.json 2>/dev/null; m $R/mtp_$a.json; save; done
ts "mtp on, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/mtp_none.json 2>/dev/null; m $R/mtp_none.json; save
for a in none 0.8; do f=""; [ $a != none ] && f="--force-accept $a"
  ts "mtp auto $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 $f --json > $R/auto_$a.json 2>/dev/null; m $R/auto_$a.json; save; done
ts done
