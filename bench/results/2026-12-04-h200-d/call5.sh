# (5) End to end, the 1-token cap (QWGPU_XQ_GRID=1632,0) on every matrix with more tiles (all),
# only on gate|up (QWGPU_XQ_GRID_ONLY=gate_proj), only on lm_head (QWGPU_XQ_GRID_ONLY=lm_head),
# and on none (QWGPU_XQ_GRID_AUTO=0), alternating twice.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1]))
print('plain', round(j['decode_tokens_per_s']['p50'],2))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
for r in 1 2; do
  run none_$r QWGPU_XQ_GRID_AUTO=0 $B
  run all_$r QWGPU_XQ_GRID=1632,0 $B
  run gateup_$r QWGPU_XQ_GRID=1632,0 QWGPU_XQ_GRID_ONLY=gate_proj $B
  run lmhead_$r QWGPU_XQ_GRID=1632,0 QWGPU_XQ_GRID_ONLY=lm_head $B
done
ts done
