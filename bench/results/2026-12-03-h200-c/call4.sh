# 2-token tiles of the few-row (out_proj, o_proj, MTP fc) and big (gate|up) matrices, on top of
# the mid-row tile: MTP at forced 0.8 (and plain in the same runs), each variant twice.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for i in 1 2; do for V in base QWGPU_XQ_VERIFY_FEW=2,4 QWGPU_XQ_VERIFY_BIG=2,4 QWGPU_XQ_VERIFY_BIG=2,8; do
  ts "mtp 0.8, $V, run $i"; env $([ $V = base ] || echo $V) $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_${V}_$i.json 2>/dev/null; m $R/mtp_${V}_$i.json
  save
done; done
ts done
