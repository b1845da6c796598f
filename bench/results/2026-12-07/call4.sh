# The f32 GEMM's default short forms as a whole (devices without cooperative matrices; measured
# with QWGPU_PREFILL_COOP=0), against no forms. Binary: .carry/bins3.tar.xz.
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b3 && tar -C /tmp/b3 -xJf .carry/bins3.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
test -d /tmp/m27 || /tmp/b3/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b3/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B f32 "10 16 24 48 64" QWGPU_PREFILL_COOP=0
B f32_none "10 48" QWGPU_PREFILL_COOP=0 QWGPU_GEMM_FORMS=none
