# The README's end-to-end protocol (3 warm-ups + 10 trials, 1024 + 512) for the tree of this
# session; then decode after a 16000-token prompt with the grouped split pass as committed
# (`head`), without its one-block-ahead loads (`nopf`: fewer registers), and with 3 or 2 query
# heads per workgroup (QWGPU_ATTN_SPLIT_HEADS; 6 = the whole GQA group by default).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2), j['decode_tokens_per_s'], 'ttft', j['ttft_s'])" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
run e2e QWGPU_X=1 timeout 150 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500
L16="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
run long16_head QWGPU_X=1 $L16
run long16_nopf QWGPU_SHADER_DIR=$PWD/.carry/nopf $L16
run long16_sh3 QWGPU_ATTN_SPLIT_HEADS=3 $L16
run long16_sh2 QWGPU_ATTN_SPLIT_HEADS=2 $L16
ts done
