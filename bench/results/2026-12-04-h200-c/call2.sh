# With the grouped split pass's block max taken once per head (the tree under test): where the
# split pass is now bound. Decode after 16000 tokens with more key chunks per row
# (QWGPU_ATTN_NS=48/64; default 32) and with f16 caches; the grouped form from fewer keys
# (QWGPU_ATTN_GROUP_KEYS=2048/1024; default 4096) after 1024 and 4000 tokens.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 60 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep "full_attention T=" | grep "attention\.\|attention  " ; save; }
brk ns32 16000 QWGPU_X=1
brk ns64 16000 QWGPU_ATTN_NS=64
brk gk1024 1024 QWGPU_ATTN_GROUP_KEYS=1024
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
L4="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1"
L16="timeout 80 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
run long16_ns32 QWGPU_X=1 $L16
run long16_ns64 QWGPU_ATTN_NS=64 $L16
run long16_ns48 QWGPU_ATTN_NS=48 $L16
run long16_f16 QWGPU_X=1 $L16 --kv-cache f16
run long4_gk4096 QWGPU_X=1 $L4
run long4_gk2048 QWGPU_ATTN_GROUP_KEYS=2048 $L4
run long4_gk1024 QWGPU_ATTN_GROUP_KEYS=1024 $L4
run plain_gk4096 QWGPU_X=1 $B
run plain_gk1024 QWGPU_ATTN_GROUP_KEYS=1024 $B
ts done
