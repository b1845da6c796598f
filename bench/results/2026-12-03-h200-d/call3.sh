# The tensor-core GEMM's 4-bit codes dequantized without shifts (this tree) against the previous
# shaders (.carry/old_shaders via QWGPU_SHADER_DIR): kernel lab at 1024 tokens and TTFT,
# alternating; the GPU memory split (bench JSON `gpu_memory`); TTFT(4000) with 2048-token chunks;
# 8 query rows per attention workgroup. One device call; results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
ts synth; [ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
run_v() { v=$1; shift; case $v in old) QWGPU_SHADER_DIR=$PWD/.carry/old_shaders "$@";; new) "$@";; esac; }
for i in 1 2; do for v in old new; do
  ts "coop lab $v $i"; run_v $v timeout 100 $C/lab matmul --reps 10 --prefill 1024 > $R/coop_${v}_$i.jsonl 2>&1; grep 'TF' $R/coop_${v}_$i.jsonl | cut -c1-100
done; done
save
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s'], 'gpu_memory', j.get('gpu_memory'), j.get('gpu_memory_bytes'))" $1 2>/dev/null || echo failed; }
for i in 1 2; do for v in old new; do
  ts "ttft 1024 $v $i"; run_v $v timeout 80 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft1024_${v}_$i.json 2>/dev/null; tt $R/ttft1024_${v}_$i.json
  save
done; done
for ch in 1024 2048; do
  ts "ttft 4000 chunk $ch"; timeout 100 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 4000 --gen-tokens 16 --warmup 1 --trials 3 --prefill-chunk $ch --json > $R/ttft4000_c$ch.json 2>/dev/null; tt $R/ttft4000_c$ch.json
  save
done
ts "ttft 1024 attention rows 8"; QWGPU_ATTN_ROWS=8 timeout 80 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft1024_rows8.json 2>/dev/null; tt $R/ttft1024_rows8.json
save
ts done
