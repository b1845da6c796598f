# Attention: each key's softmax weight exp(s - m) computed once per block by its own thread
# (workgroup array `pe`, one more barrier) instead of by every thread of every value slice that
# uses it (the same bits); `new` = the tree under test, `prev` = the committed attention.wgsl.
# Layer breakdown at 1024 and 16000 keys; end to end at 1024 + 512, after 4000 and 16000
# tokens, MTP at forced 0.8. Alternating.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
PREV="QWGPU_SHADER_DIR=$PWD/.carry/prev"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep "full_attention T=" | grep "attention\.\|attention  " ; save; }
brk new 1024 QWGPU_X=1
brk prev 1024 $PREV
brk new 16000 QWGPU_X=1
brk prev 16000 $PREV
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
L4="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1"
L16="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
for r in 1 2; do
  run plain_new_$r QWGPU_X=1 $B
  run plain_prev_$r $PREV $B
done
run long16_new QWGPU_X=1 $L16
run long16_prev $PREV $L16
run long4_new QWGPU_X=1 $L4
run long4_prev $PREV $L4
run mtp_new QWGPU_X=1 $M
run mtp_prev $PREV $M
ts done
