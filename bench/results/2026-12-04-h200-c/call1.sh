# (1) Attention: each head's (or row's) block max taken once by one thread in the grouped split
# pass and the final pass's row groups (`new`, the tree under test; the same bits), and in the
# one-head form too (`bmax1`, QWGPU_ATTN_BMAX1=1), against the committed attention.wgsl (`prev`).
# (2) What the integer-plane matmul's time is made of (kernel lab, lab-only shader variants, results
# wrong by design): `nox` = no plane loads (x synthesized from indices), `noar` = the packed dot
# products replaced by XORs, `noboth` = both.
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
for v in base nox noar noboth; do
  ts "lab matmul $v"
  if [ $v = base ]; then E="QWGPU_X=1"; else E="QWGPU_SHADER_DIR=$PWD/.carry/$v"; fi
  env $E timeout 60 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj > $R/mm_$v.jsonl 2>&1
  grep '"matmul q4 xq [a-z_.]* \|"matmul q4 xq fused' $R/mm_$v.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"  {j['bench'][:60]:60s} {j['us']:7.1f}\")"
  save
done
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 60 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep "full_attention T=" | grep "attention\.\|attention  " ; save; }
brk new 1024 QWGPU_X=1
brk prev 1024 $PREV
brk bmax1 1024 QWGPU_ATTN_BMAX1=1
brk new 16000 QWGPU_X=1
brk prev 16000 $PREV
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
L4="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1"
L16="timeout 80 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
run long16_new QWGPU_X=1 $L16
run long16_prev $PREV $L16
for r in 1 2; do
  run plain_new_$r QWGPU_X=1 $B
  run plain_prev_$r $PREV $B
  run plain_bmax1_$r QWGPU_ATTN_BMAX1=1 $B
done
run long4_new QWGPU_X=1 $L4
run long4_prev $PREV $L4
run mtp_new QWGPU_X=1 $M
run mtp_prev $PREV $M
ts done
