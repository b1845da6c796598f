# The exact-weights form of the tensor-core GEMM (QWGPU_COOP_EXACT, default on) on the GPU:
# the coop kernel test, the model tests against mlx-lm, and TTFT with and without it.
# Build: cargo build --release -p native-cli --no-default-features; cargo test --release -p
# qwgpu-tests --test kernels_matmul_coop --test model_vs_mlx --no-run; strip qwgpu, coop and mlx
# into /tmp/b; tar -C /tmp/b -cJf .carry/bins1.tar.xz .; carry [".gl", ".carry"].
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b1 && tar -C /tmp/b1 -xJf .carry/bins1.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 200 /tmp/b1/coop 2>&1 | grep -E "test result|panicked|skipping|worst error|left:|right:|differ|bits" | head -40)
(timeout 100 /tmp/b1/mlx 2>&1 | grep -E "^test |test result|panicked|differ" | head -20)
test -d /tmp/m27 || /tmp/b1/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b1/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B exact "1024 10 64" X=1
B pairs "1024 10 64" QWGPU_COOP_EXACT=0
B exact "1024 32 256" X=1
B pairs "1024" QWGPU_COOP_EXACT=0
