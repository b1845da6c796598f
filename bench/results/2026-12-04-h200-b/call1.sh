# Attention: the final pass's partials loaded 8 at a time before their merges (`merge`), and
# the split pass's next key block loaded while this block's softmax runs (`new` = both, the
# tree under test); `prev` = the committed attention.wgsl; `sg` = new + the grouped split pass
# written out (bench/results/2026-12-04-h200/splitg_unrolled.diff), timed after a 16000-token
# prompt where the grouped form runs. Alternating variants in one call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
PREV="QWGPU_SHADER_DIR=$PWD/.carry/prev"
MERGE="QWGPU_SHADER_DIR=$PWD/.carry/merge"
SG="QWGPU_SHADER_DIR=$PWD/.carry/sg"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep full_attention | grep -v "xquant\|matmul"; save; }
brk new 1024 QWGPU_X=1
brk prev 1024 $PREV
brk merge 1024 $MERGE
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>/dev/null; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
L="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
for r in 1 2; do
  run plain_new_$r QWGPU_X=1 $B
  run plain_prev_$r $PREV $B
  run plain_merge_$r $MERGE $B
done
run long_new QWGPU_X=1 $L
run long_sg $SG $L
run long_prev $PREV $L
run mtp_new_1 QWGPU_X=1 $M
run mtp_prev_1 $PREV $M
ts done
