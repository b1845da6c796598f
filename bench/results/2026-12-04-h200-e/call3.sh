# (3) The committed defaults (the verify tile's relative cap (0.75, 2000) from the H200 table,
# no environment knobs): the README's end-to-end run (1024 + 512, 3 warm-ups + 10 trials), the
# MTP table (forced 0.6 / 0.8 / 0.9 with --mtp on, none and 0.8 with --mtp auto, the profile), and
# forced 0.8 without the verify cap (QWGPU_XQ_GRID_FRAC_VERIFY=0) once more.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode')
print('plain', round(j['decode_tokens_per_s']['p50'],2), j['decode_tokens_per_s'], 'ttft', j['ttft_s'], j.get('verify_grid'), j.get('profile_ms'), '' if not m else ('mtp', m['decode_tokens_per_s'], m['mtp'], 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
run e2e timeout 150 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500
M="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
run on_none $M --mtp on
run on_06 $M --mtp on --force-accept 0.6
run on_08 $M --mtp on --force-accept 0.8 --profile
run on_09 $M --mtp on --force-accept 0.9
run auto_none $M --mtp auto
run auto_08 $M --mtp auto --force-accept 0.8
run on_08_nocap QWGPU_XQ_GRID_FRAC_VERIFY=0 $M --mtp on --force-accept 0.8
ts done
