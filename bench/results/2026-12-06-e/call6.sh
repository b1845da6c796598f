set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/t6 && tar -C /tmp/t6 -xJf .carry/tests6.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(/tmp/t6/coop --nocapture 2>&1 | grep -E "test result|panicked|skipping|assert" | head -5) 
(/tmp/t6/state 2>&1 | grep -E "^test |test result|panicked" | head -20)
(/tmp/t6/mlx 2>&1 | grep -E "^test |test result|panicked" | head -20)
test -d /tmp/m27 || /tmp/t6/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
for s in 0 64 256; do
  for p in 10 64 128 256; do
    QWGPU_COOP_SHORT_TOKENS=$s /tmp/t6/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('short $s', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
done
/tmp/t6/qwgpu bench --model /tmp/m27 --prompt-tokens 1024 --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('default', 1024, round(j['ttft_s']['p50']*1000,1), 'ms')"
