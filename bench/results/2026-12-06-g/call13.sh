# Call 13: the tiny form (chunks of at most 16 tokens, CoopTile::TINY 64x16x128) and the x-row
# clamp in the short forms only (XCLAMP), against the state before 062b301 (its shader, no tiny
# form); tiny tile variants; a 32-token tiny form.
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b13 && tar -C /tmp/b13 -xJf .carry/bins13.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 200 /tmp/b13/coop 2>&1 | grep -E "test result|panicked|skipping|assert" | head -12)
rm -rf /tmp/sh_old; cp -r shaders /tmp/sh_old; cp /tmp/b13/old/matmul_coop.wgsl /tmp/sh_old/
test -d /tmp/m27 || /tmp/b13/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b13/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B base "10 16 32 64 1024" QWGPU_SHADER_DIR=/tmp/sh_old QWGPU_COOP_TINY_TOKENS=0
B new "10 16 32 64 1024" X=1
B noclamp "10 64" QWGPU_SHADER_DIR=/tmp/sh_old
B tiny32x16x128 "10" QWGPU_COOP_TILE_TINY=32x16x128x2x1x3
B tinyfew32x16x128 "10" QWGPU_COOP_TILE_TINY_FEW=32x16x128x2x1x3
B tiny32x16x64 "10" QWGPU_COOP_TILE_TINY=32x16x64x2x1x3
B t32_64x32x64 "32" QWGPU_COOP_TINY_TOKENS=32 QWGPU_COOP_TILE_TINY=64x32x64x4x1x3
B t32_32x32x128 "32" QWGPU_COOP_TINY_TOKENS=32 QWGPU_COOP_TILE_TINY=32x32x128x2x1x3
# The f32 GEMM (devices without cooperative matrices, Metal): its short-chunk cost.
B f32 "10 64 1024" QWGPU_PREFILL_COOP=0
B f32_64x16 "10" QWGPU_PREFILL_COOP=0 QWGPU_GEMM_TILE=64x16x32x4x4
B f32_32x16 "10" QWGPU_PREFILL_COOP=0 QWGPU_GEMM_TILE=32x16x32x4x4
B f32_64x64 "10" QWGPU_PREFILL_COOP=0 QWGPU_GEMM_TILE=64x64x32x4x4
B base "10" QWGPU_SHADER_DIR=/tmp/sh_old QWGPU_COOP_TINY_TOKENS=0
B new "10" X=1
