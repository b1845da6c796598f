# Second call: the tensor-core GEMM's CPU-reference test and the fixtures against mlx-lm on the
# H200 (prompts through the tensor-core GEMM), the kernel lab at 1024 tokens for tiles of 128 ×
# 128, and the README's end-to-end benchmark with it (and with one f16 per value, P = 1).
# Carry: .gl and .carry (bins.tar.xz: qwgpu, lab, coop_test, model_vs_mlx).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
echo "== coop test"; $C/coop_test --nocapture > $R/coop_test.txt 2>&1; echo "rc $?"; grep -v "^ *[0-9]*: \|   at " $R/coop_test.txt | tail -6
echo "== model_vs_mlx on the H200"; QWGPU_FIXTURES=$PWD/tests/fixtures/models $C/model_vs_mlx --nocapture --test-threads 1 > $R/model_vs_mlx.txt 2>&1; echo "rc $?"; grep -E "max \|logit|test result|panicked" $R/model_vs_mlx.txt | head -30
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 10 --prefill 1024 --shapes ${SHAPES:-gate_up,down,in_proj,out_proj,qkv,o_proj,lm_head} > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep 'T=1024", "TF' $R/lab_$name.jsonl | cut -c1-160; }
lab default X=1
for t in 128x128x32x2x4x3 128x128x32x2x2x3 128x128x32x4x2x2 128x128x32x4x2x1; do SHAPES=gate_up,down lab t$t QWGPU_COOP_TILE=$t; done
wait; tail -1 /tmp/synth.log
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','ttft_s','prefill_tokens_per_s','decode_tokens_per_s','tpot_ms','device','gpu_memory_bytes','peak_gpu_memory_bytes')})" $1; }
echo "== e2e README benchmark (tensor cores, pairs)"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>$R/e2e.err; g $R/e2e.json
echo "== e2e P=1"; QWGPU_COOP_TILE=128x128x32x4x2x1 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 32 --warmup 1 --trials 3 --json > $R/e2e_p1.json 2>/dev/null; g $R/e2e_p1.json
tar czf $OUT/results.tar.gz -C $R .
