# The README's benchmark shape (1024-token prompt, 512 generated) and a short one (64 + 256):
# the committed shaders (QWGPU_SHADER_DIR=.carry/old_shaders, one head per split workgroup, no
# grouped path compiled in) against this tree's default (grouped from 2048 keys), grouped from
# the first key with 6 and 3 heads per workgroup, alternating. Results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
OLD="QWGPU_SHADER_DIR=$PWD/.carry/old_shaders QWGPU_ATTN_SPLIT_HEADS=1"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'],3))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>/dev/null; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
S="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
for r in 1 2; do
  run k1_old_$r $OLD $B
  run k1_new_$r $B
  run k1_g6_$r QWGPU_ATTN_GROUP_KEYS=1 $B
  run k1_g3_$r QWGPU_ATTN_GROUP_KEYS=1 QWGPU_ATTN_SPLIT_HEADS=3 $B
done
run s_old $OLD $S
run s_new $S
run s_g3 QWGPU_ATTN_GROUP_KEYS=1 QWGPU_ATTN_SPLIT_HEADS=3 $S
ts done
