# (1) Pipelined weight loads in the integer-plane decode matmul (QWGPU_XQ_PIPE=1: each lane's
# next chunk of weights and scales loaded while the current one is multiplied; in the
# grid-stride form the last chunk of a tile loads the first of the next tile) against the
# committed loop (QWGPU_XQ_PIPE=0); the same bits. One binary, alternating. The grid cap is given
# explicitly (the H200's tuned 0.75 of the tiles for matrices of at least 2000 tiles) so an H100
# runs the same grid-stride form.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
export QWGPU_XQ_GRID_FRAC=0.75,2000
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
lab() { n=$1; shift; ts "lab $n"; env "$@" timeout 120 $C/lab matmul --reps 100 --shapes gate_up,down,out_proj,in_proj,qkv > $R/lab_$n.jsonl 2>&1; python3 -c "
import json,sys
for l in open(sys.argv[1]):
    try: j=json.loads(l)
    except Exception: continue
    print(f\"{j.get('bench','?')[:90]:90s} {j['us']:7.1f}\")" $R/lab_$n.jsonl; save; }
brk() { n=$1; shift; ts "breakdown $n"; env "$@" timeout 100 $C/lab layer --breakdown --reps 50 --pos 1024 > $R/layers_$n.jsonl 2>&1; grep '"bench\|"part' $R/layers_$n.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:80]:80s} {j['us']:7.1f}\")"; save; }
lab pipe0 QWGPU_XQ_PIPE=0
lab pipe1 QWGPU_XQ_PIPE=1
brk pipe0 QWGPU_XQ_PIPE=0
brk pipe1 QWGPU_XQ_PIPE=1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
for r in 1 2; do
  run plain_pipe0_$r QWGPU_XQ_PIPE=0 $B
  run plain_pipe1_$r QWGPU_XQ_PIPE=1 $B
done
run mtp_pipe0 QWGPU_XQ_PIPE=0 $M
run mtp_pipe1 QWGPU_XQ_PIPE=1 $M
# The pipelined form with smaller grids (fewer workgroups, longer streams each).
run plain_pipe1_g50 QWGPU_XQ_PIPE=1 QWGPU_XQ_GRID_FRAC=0.5,2000 $B
run plain_pipe1_g35 QWGPU_XQ_PIPE=1 QWGPU_XQ_GRID_FRAC=0.35,1000 $B
ts done
