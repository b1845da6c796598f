# Layer breakdown at 1 and 2 tokens; the offset folded into the packed dot products' accumulator
# (this tree) against the previous shaders (.carry/old_shaders, via QWGPU_SHADER_DIR) and
# XNORM_LATE on top (kernel lab, then plain + MTP at forced 0.8 alternating); tensor-core GEMM
# tiles with 16 features a step (kernel lab at 1024 tokens, then TTFT). One device call; results
# in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
ts breakdown; timeout 150 $C/lab layer --breakdown --reps 50 --pos 1024 > $R/layers.jsonl 2>&1; grep '"bench\|"part' $R/layers.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:80]:80s} {j['us']:7.1f}\")"
save
run_v() { v=$1; shift; case $v in old) QWGPU_SHADER_DIR=$PWD/.carry/old_shaders "$@";; new) "$@";; late) QWGPU_XQ_NORM_LATE=1 "$@";; esac; }
for v in old new late; do
  ts "lab $v"; run_v $v timeout 120 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj,qkv > $R/lab_$v.jsonl 2>&1
  grep '"matmul q4 xq' $R/lab_$v.jsonl | sed "s/^/$v /" | cut -c1-110
done
save
ts "wait synth"; wait
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for i in 1 2; do for v in old new late; do
  ts "$v run $i"; run_v $v timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_${v}_$i.json 2>/dev/null; m $R/mtp_${v}_$i.json
  save
done; done
for t in 128x128x32x4x2x3 128x128x16x4x2x3 256x128x16x4x2x3 128x256x16x4x2x3 128x256x16x2x4x3 256x128x16x2x4x3; do
  ts "coop $t"; QWGPU_COOP_TILE=$t timeout 100 $C/lab matmul --reps 10 --prefill 1024 --shapes gate_up,down,in_proj > $R/coop_$t.jsonl 2>&1; grep 'TF' $R/coop_$t.jsonl | cut -c1-150
done
save
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s'])" $1 2>/dev/null || echo failed; }
for t in 128x128x32x4x2x3 128x256x16x4x2x3 256x128x16x4x2x3; do
  ts "ttft $t"; QWGPU_COOP_TILE=$t timeout 60 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft_$t.json 2>/dev/null; tt $R/ttft_$t.json
  save
done
ts done
