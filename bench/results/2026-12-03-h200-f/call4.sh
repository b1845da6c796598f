# The split pass's two forms as separate pipelines, the host recording one per step from its key
# estimate (grouped from QWGPU_ATTN_GROUP_KEYS = 2048 keys by default): the README's benchmark
# shape (1024 + 512) against the committed shaders (QWGPU_SHADER_DIR=.carry/old_shaders) and
# with grouping from 1024 keys; after 4000- and 16000-token prompts against one workgroup per
# head (QWGPU_ATTN_GROUP_KEYS=1000000000). Results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
OLD="QWGPU_SHADER_DIR=$PWD/.carry/old_shaders QWGPU_ATTN_SPLIT_HEADS=1"
NEVER="QWGPU_ATTN_GROUP_KEYS=1000000000"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'],3))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>/dev/null; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
run k1_old_1 $OLD $B
run k1_new_1 $B
run k1_gk1024 QWGPU_ATTN_GROUP_KEYS=1024 $B
run k1_new_2 $B
run k1_old_2 $OLD $B
L4="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1"
run long4k_new $L4
run long4k_perhead $NEVER $L4
L16="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
run long16k_new $L16
run long16k_perhead $NEVER $L16
ts done
