set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b10 && tar -C /tmp/b10 -xJf .carry/bins10.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 300 /tmp/b10/coop 2>&1 | grep -E "test result|panicked|skipping|assert" | head -12)
rm -rf /tmp/sh_old; cp -r shaders /tmp/sh_old; cp /tmp/b10/old/matmul_coop.wgsl /tmp/sh_old/
L() { # label N env...
  lab=$1; n=$2; shift 2
  env "$@" timeout 150 /tmp/b10/lab matmul --prefill $n --shapes gate_up,down,out_proj,in_proj --reps 20 > $OUT/lab_${lab}_$n.txt 2>&1
  echo "== $lab T=$n: $(grep -E "T=$n\"" $OUT/lab_${lab}_$n.txt | grep -v TFLOP | sed -E 's/.*matmul q4 ([a-z_.]+) [0-9x]+ T=[0-9]+", "us": ([0-9.]+).*/\1 \2/' | tr '\n' ';')"
}
for n in 16 64; do
  L old $n QWGPU_SHADER_DIR=/tmp/sh_old
  L new $n X=1
  L s4x1 $n QWGPU_COOP_TILE_SHORT=64x64x64x4x1x3
  L s32 $n QWGPU_COOP_TILE_SHORT=64x32x64x4x1x3
  L s16 $n QWGPU_COOP_TILE_SHORT=64x16x64x4x1x3
  L r32 $n QWGPU_COOP_TILE_SHORT=32x64x64x2x1x3
  L r128 $n QWGPU_COOP_TILE_SHORT=128x64x32x8x1x3
  L k32 $n QWGPU_COOP_TILE_SHORT=64x64x32x4x1x3
done
L old 1024 QWGPU_SHADER_DIR=/tmp/sh_old
L new 1024 X=1
test -d /tmp/m27 || /tmp/b10/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label env...
  lab=$1; shift
  for p in 10 64 1024; do
    env "$@" /tmp/b10/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B old QWGPU_SHADER_DIR=/tmp/sh_old
B new X=1
B s4x1 QWGPU_COOP_TILE_SHORT=64x64x64x4x1x3
