set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
test -d /tmp/t6 || { mkdir -p /tmp/t6 && tar -C /tmp/t6 -xJf .carry/tests6.tar.xz; }
test -d /tmp/m27 || /tmp/t6/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
for tile in 64x64x64x2x2x3 32x64x64x1x2x3 64x32x64x2x1x3 32x32x64x1x1x3 64x64x64x1x2x3 128x64x32x4x2x3; do
  for p in 10 64; do
    QWGPU_COOP_TILE=$tile /tmp/t6/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$tile', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
done
