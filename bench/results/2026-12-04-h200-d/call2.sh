# (2) As call 1 after the calibration's warm-up waits for steady clocks (runs of >= 10 ms until
# two agree within 2 %), measured against one workgroup per tile (QWGPU_XQ_GRID_AUTO=0).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); g=j.get('decode_grid')
print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), 'load', round(j['load_s'],2), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))
print('  grid', None if g is None else (g['chosen'], g['tiles'], g['times']))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
for r in 1 2; do
  run plain_auto_$r QWGPU_X=1 $B
  run plain_off_$r QWGPU_XQ_GRID_AUTO=0 $B
done
run mtp_auto QWGPU_X=1 $M
ts done
