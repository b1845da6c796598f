# The most key chunks per row (QWGPU_ATTN_NS, 32 by default): decode after a 16000-token prompt
# with 32 / 64 / 128 / 256 (more split-pass workgroups, each with fewer blocks in sequence; the
# final pass merges more partials), the benchmark shape with 32 and 128, the layer breakdown at
# 16000 keys, and f16 caches with 128.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep "full_attention T=1" | grep -v "xquant\|matmul"; save; }
brk ns32 16000 QWGPU_ATTN_NS=32
brk ns128 16000 QWGPU_ATTN_NS=128
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
L16="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
for ns in 128 32 64 256; do run long16_ns$ns QWGPU_ATTN_NS=$ns $L16; done
run long16_ns128_f16 QWGPU_ATTN_NS=128 $L16 --kv-cache f16
run plain_ns128 QWGPU_ATTN_NS=128 $B
run plain_ns32 QWGPU_ATTN_NS=32 $B
ts done
