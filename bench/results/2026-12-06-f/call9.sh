set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b9 && tar -C /tmp/b9 -xJf .carry/bins9.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 300 /tmp/b9/coop --nocapture 2>&1 | grep -E "test result|panicked|skipping|assert|worst" | head -12)
mk() { rm -rf /tmp/sh_$1; cp -r shaders /tmp/sh_$1; }
mk nomma; sed -i '/coopMultiplyAdd/d' /tmp/sh_nomma/matmul_coop.wgsl
mk nost; sed -i -E '/^\s*(ah|al|xb)\[.*\] = /d' /tmp/sh_nost/matmul_coop.wgsl
grep -c "coopMultiplyAdd" /tmp/sh_nomma/matmul_coop.wgsl; grep -cE "^\s*(ah|al|xb)\[" /tmp/sh_nost/matmul_coop.wgsl
L() { # label N env...
  lab=$1; n=$2; shift 2
  env "$@" timeout 150 /tmp/b9/lab matmul --prefill $n --shapes gate_up,down,out_proj --reps 20 > $OUT/lab_${lab}_$n.txt 2>&1
  echo "== $lab T=$n: $(grep -E "T=$n\"" $OUT/lab_${lab}_$n.txt | grep -v TFLOP | sed -E 's/.*matmul q4 ([a-z_.]+) [0-9x]+ T=[0-9]+", "us": ([0-9.]+).*/\1 \2/' | tr '\n' ';') $(grep TFLOP $OUT/lab_${lab}_$n.txt | sed -E 's/.*matmul q4 ([a-z_.]+) T=[0-9]+", "TFLOPs": ([0-9.]+).*/\1 \2 TF/' | tr '\n' ';')"
}
for n in 16 1024; do
  L rot $n X=1
  L norot $n QWGPU_COOP_ROT=0
  L nomma $n QWGPU_COOP_ROT=0 QWGPU_SHADER_DIR=/tmp/sh_nomma
  L nommarot $n QWGPU_SHADER_DIR=/tmp/sh_nomma
  L nost $n QWGPU_COOP_ROT=0 QWGPU_SHADER_DIR=/tmp/sh_nost
  L rot2 $n X=1
done
test -d /tmp/m27 || /tmp/b9/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
for r in 1 0 1 0; do
  for p in 10 64 1024; do
    QWGPU_COOP_ROT=$r /tmp/b9/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('rot $r', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
done
