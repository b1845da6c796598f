# The tensor-core prefill GEMM (xsplit.wgsl + matmul_coop.wgsl) on the H200: its CPU-reference
# test, the kernel lab at 1024 tokens against the f32 GEMM (QWGPU_PREFILL_COOP=0) and tile
# variants, then TTFT end to end on the synthetic 27B with and without it.
# Carry: .gl and .carry (bins.tar.xz: qwgpu, lab, coop_test).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
echo "== coop test"; $C/coop_test --nocapture > $R/coop_test.txt 2>&1; echo "rc $?"; tail -5 $R/coop_test.txt
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 10 --prefill 1024 --shapes ${SHAPES:-gate_up,down,in_proj,out_proj} > $R/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep 'T=1024' $R/lab_$name.jsonl | cut -c1-160; }
lab f32 QWGPU_PREFILL_COOP=0
lab coop X=1
for t in 128x64x32x4x2x1 128x64x32x2x2x3 128x64x32x2x2x1 128x128x32x4x2x3 128x128x32x4x2x1 64x128x32x2x4x3 128x64x32x4x2x2; do SHAPES=gate_up lab t$t QWGPU_COOP_TILE=$t; done
wait; tail -2 /tmp/synth.log
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','ttft_s','prefill_tokens_per_s','decode_tokens_per_s','tpot_ms','device')})" $1; }
for c in 0 1; do echo "== e2e coop=$c"; QWGPU_PREFILL_COOP=$c $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 64 --warmup 1 --trials 3 --json > $R/e2e_coop$c.json 2>$R/e2e_coop$c.err; g $R/e2e_coop$c.json; tail -2 $R/e2e_coop$c.err; done
tar czf $OUT/results.tar.gz -C $R .
