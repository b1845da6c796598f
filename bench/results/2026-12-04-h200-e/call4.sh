# (4) On the committed defaults, with knobs only: the verify cap on the mid-row matrices too
# (QWGPU_XQ_GRID_FRAC_VERIFY=F,800: in_proj 1030 and q|k|v 896 tiles of the 2-token tile), the
# gate|up verify tile of 2 groups of 4 or 8 rows under the cap (QWGPU_XQ_VERIFY_BIG), and the
# 1-token fraction around 0.75 (QWGPU_XQ_GRID_FRAC=F,2000).
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
print('plain', round(j['decode_tokens_per_s']['p50'],2), j.get('decode_grid'), j.get('verify_grid'), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
M="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
B="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
run mtp_default $M
run mtp_v75_800 QWGPU_XQ_GRID_FRAC_VERIFY=0.75,800 $M
run mtp_v90_800 QWGPU_XQ_GRID_FRAC_VERIFY=0.9,800 $M
run mtp_big24 QWGPU_XQ_VERIFY_BIG=2,4 $M
run mtp_big28 QWGPU_XQ_VERIFY_BIG=2,8 $M
run plain_default $B
run plain_f85 QWGPU_XQ_GRID_FRAC=0.85,2000 $B
run plain_f65 QWGPU_XQ_GRID_FRAC=0.65,2000 $B
ts done
