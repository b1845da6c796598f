# The split pass taking a GQA group per workgroup only from QWGPU_ATTN_GROUP_KEYS keys on
# (default 2048; decided per step on the GPU), against one workgroup per head
# (QWGPU_ATTN_GROUP_KEYS=1000000000): kernel lab layer breakdown at positions 4096 and 16384,
# then end to end after 4000- and 16000-token prompts, alternating. Results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
NEVER="QWGPU_ATTN_GROUP_KEYS=1000000000"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"part' $R/layers_${n}_$pos.jsonl | grep 'full_attention' | grep 'attention\b\|split' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['part'][:70]:70s} {j['us']:7.1f}\")"; save; }
for pos in 4096 16384; do
  brk grouped $pos QWGPU_X=1
  brk perhead $pos $NEVER
  brk grouped3 $pos QWGPU_ATTN_SPLIT_HEADS=3
done
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'],3))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>/dev/null; m $R/$n.json; save; }
for r in 1 2; do
  run long4k_grouped_$r timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1
  run long4k_perhead_$r $NEVER timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1
done
for r in 1; do
  run long16k_grouped_$r timeout 150 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1
  run long16k_perhead_$r $NEVER timeout 150 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1
done
run short_grouped timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1
run short_perhead $NEVER timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1
ts done
