# The deferred norm's late sum of squares (1-token tile, XNORM_LATE) written out over the row's
# chunks with its loads issued together (LATE_UNROLL, default) against the loop
# (QWGPU_XQ_LATE_UNROLL=0); plain 1024 + 512, alternating. A short call (the session's device
# time was nearly spent).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
LOOP="QWGPU_XQ_LATE_UNROLL=0"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'],3))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>/dev/null; m $R/$n.json; save; }
B="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
for r in 1 2; do
  run plain_unrolled_$r QWGPU_X=1 $B
  run plain_loop_$r $LOOP $B
done
ts done
