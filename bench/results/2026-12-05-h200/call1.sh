# (1) Loads issued before barriers: the fused Gated-DeltaNet recurrence issues every load of a
# row (raw k|q, v, b, a, the output gate's z; row t+1's during row t) before its barriers and
# reductions, and attn_prep loads its norm weights and computes its cos/sin before its reduction
# (`new`), against the committed shaders (`prev`); the same bits. Alternating, one binary, shader
# directories swapped with QWGPU_SHADER_DIR. Also plain decode with f16 KV caches, and of a
# 6-bit checkpoint.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
PREV="QWGPU_SHADER_DIR=$PWD/.carry/prev"
NEW="QWGPU_SHADER_DIR=$PWD/.carry/new"
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
brk() { n=$1; shift; ts "breakdown $n"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos 1024 > $R/layers_$n.jsonl 2>&1; grep '"bench\|"part' $R/layers_$n.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:80]:80s} {j['us']:7.1f}\")" | grep -v "matmul"; save; }
brk prev $PREV
brk new $NEW
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
for r in 1 2; do
  run plain_prev_$r $PREV $B
  run plain_new_$r $NEW $B
done
run mtp_prev $PREV $M
run mtp_new $NEW $M
run plain_new_kvf16 $NEW $B --kv-cache f16
# A 6-bit checkpoint (MLX's 6-bit layout; the GPU holds 8-bit codes).
ts "synth 6-bit"; $C/qwgpu synth --bits 6 --out /tmp/m27b6 > /tmp/synth6.log 2>&1 || tail -3 /tmp/synth6.log
run plain_new_b6 $NEW timeout 100 $C/qwgpu bench --model /tmp/m27b6 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
ts done
