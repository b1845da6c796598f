# Ready, not run (no device time left): the final coop test (SHORT32 forced, four forms by count)
# and the default short-chunk forms as a whole, tensor cores and the f32 GEMM.
# Build first: cargo build --release -p native-cli --no-default-features;
# cargo test --release -p qwgpu-tests --test kernels_matmul_coop --no-run; strip both into
# /tmp/b (qwgpu, coop), tar -C /tmp/b -cJf .carry/bins16.tar.xz .; carry [".gl", ".carry"].
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b16 && tar -C /tmp/b16 -xJf .carry/bins16.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 200 /tmp/b16/coop 2>&1 | grep -E "test result|panicked|skipping|assert" | head -12)
test -d /tmp/m27 || /tmp/b16/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b16/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B coop "10 16 24 32 48 64 128 1024" X=1
B coop_none "10 32 64" QWGPU_COOP_FORMS=none
B f32 "10 16 24 32 48 64 1024" QWGPU_PREFILL_COOP=0
B f32_none "10 64" QWGPU_PREFILL_COOP=0 QWGPU_GEMM_FORMS=none
