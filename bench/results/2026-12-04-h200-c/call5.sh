# Prompt attention at long contexts: query rows per workgroup of the final pass's row groups
# (QWGPU_ATTN_ROWS, default 4), TTFT of 16000- and 4000-token prompts. (The binaries of call 3:
# their decode numbers carry the subgroup max and are not used here; prefill does not run the
# split pass.)
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
L16="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 8 --max-context 16384 --trials 1 --warmup 1"
L4="timeout 40 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 8 --trials 2 --warmup 1"
for q in 4 8 2; do run long16_rows$q QWGPU_ATTN_ROWS=$q $L16; done
for q in 4 8; do run long4_rows$q QWGPU_ATTN_ROWS=$q $L4; done
run long16_rows4b QWGPU_ATTN_ROWS=4 $L16
ts done
