set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
test -x /tmp/qwgpu || tar -C /tmp -xJf .carry/bins3.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
test -d /tmp/m27 || /tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
b() { # label, env...
  lab=$1; shift
  for p in 10 1024; do
    env "$@" /tmp/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
b default X=1
b coop_off QWGPU_PREFILL_COOP=0
b t64x64x32 QWGPU_COOP_TILE=64x64x32x2x2x3
b t64x64x64 QWGPU_COOP_TILE=64x64x64x2x2x3
b t32x64x32 QWGPU_COOP_TILE=32x64x32x1x2x3
b t128x128x64 QWGPU_COOP_TILE=128x128x64x4x2x3
b t64x128x32 QWGPU_COOP_TILE=64x128x32x2x4x3
