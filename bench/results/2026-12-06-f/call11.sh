# Not run (no GPU could be started after call 10). .carry/bins11.tar.xz held qwgpu, the lab,
# the kernels_matmul_coop test binary (as coop) and old/matmul_coop.wgsl (the shader before 062b301).
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b11 && tar -C /tmp/b11 -xJf .carry/bins11.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 300 /tmp/b11/coop 2>&1 | grep -E "test result|panicked|skipping|assert" | head -12)
rm -rf /tmp/sh_old; cp -r shaders /tmp/sh_old; cp /tmp/b11/old/matmul_coop.wgsl /tmp/sh_old/
L() { # label N env...
  lab=$1; n=$2; shift 2
  env "$@" timeout 150 /tmp/b11/lab matmul --prefill $n --shapes gate_up,down,out_proj,in_proj --reps 100 > $OUT/lab_${lab}_$n.txt 2>&1
  echo "== $lab T=$n: $(grep -E "T=$n\"" $OUT/lab_${lab}_$n.txt | grep -v TFLOP | sed -E 's/.*matmul q4 ([a-z_.]+) [0-9x]+ T=[0-9]+", "us": ([0-9.]+).*/\1 \2/' | tr '\n' ';')"
}
test -d /tmp/m27 || /tmp/b11/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b11/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B old "10 64 1024" QWGPU_SHADER_DIR=/tmp/sh_old
B new "10 64 1024" X=1
B t32x64x64 "10 64" QWGPU_COOP_TILE_SHORT=32x64x64x2x2x3
B few32 "10 64" QWGPU_COOP_TILE_SHORT_FEW=32x64x64x2x2x3
B few16 "10 64" QWGPU_COOP_TILE_SHORT_FEW=16x64x64x1x4x3
B old "10 64 1024" QWGPU_SHADER_DIR=/tmp/sh_old
B new "10 64 1024" X=1
