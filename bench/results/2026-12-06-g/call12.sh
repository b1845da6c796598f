# Call 12: the x-row clamp of 062b301 (old shader vs new), the few-row short tile, and the tiny
# (16-token) tile form (QWGPU_COOP_TINY_TOKENS / QWGPU_COOP_TILE_TINY[_FEW]); the coop test on
# the GPU first (forced SHORT and TINY tiles, three forms by token count).
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b12 && tar -C /tmp/b12 -xJf .carry/bins12.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 200 /tmp/b12/coop 2>&1 | grep -E "test result|panicked|skipping|assert|worst" | head -12)
rm -rf /tmp/sh_old; cp -r shaders /tmp/sh_old; cp /tmp/b12/old/matmul_coop.wgsl /tmp/sh_old/
test -d /tmp/m27 || /tmp/b12/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b12/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B old "10 64 1024" QWGPU_SHADER_DIR=/tmp/sh_old
B new "10 64 1024" X=1
B tiny64x16x64 "10 16" QWGPU_COOP_TINY_TOKENS=16
B tiny32x16x64 "10" QWGPU_COOP_TINY_TOKENS=16 QWGPU_COOP_TILE_TINY=32x16x64x2x1x3
B tiny64x16x128 "10" QWGPU_COOP_TINY_TOKENS=16 QWGPU_COOP_TILE_TINY=64x16x128x4x1x3
B tiny64_few32 "10" QWGPU_COOP_TINY_TOKENS=16 QWGPU_COOP_TILE_TINY_FEW=32x16x64x2x1x3
B tiny64x32x64 "10 32" QWGPU_COOP_TINY_TOKENS=32 QWGPU_COOP_TILE_TINY=64x32x64x4x1x3
B short_few32 "10 64" QWGPU_COOP_TILE_SHORT_FEW=32x64x64x2x2x3
B old "10 64 1024" QWGPU_SHADER_DIR=/tmp/sh_old
B new "10 64 1024" X=1
B tiny64x16x64 "10 16" QWGPU_COOP_TINY_TOKENS=16
