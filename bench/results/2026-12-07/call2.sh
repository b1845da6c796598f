# The exact-weights form with its tail steps in a loop of their own (the main loop as before):
# the coop test, then TTFT with and without it. Binaries: qwgpu, coop in .carry/bins2.tar.xz.
set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b2 && tar -C /tmp/b2 -xJf .carry/bins2.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
export QWGPU_FIXTURES=$PWD/tests/fixtures/models
(timeout 200 /tmp/b2/coop --nocapture 2>&1 | grep -E "test result|panicked|skipping|worst error|left:|right:|differ|bits" | head -40)
test -d /tmp/m27 || /tmp/b2/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B() { # label prompts env...
  lab=$1; ps=$2; shift 2
  for p in $ps; do
    env "$@" /tmp/b2/qwgpu bench --model /tmp/m27 --prompt-tokens $p --gen-tokens 4 --trials 3 --warmup 1 --mtp off --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$lab', $p, round(j['ttft_s']['p50']*1000,1), 'ms')"
  done
}
B exact "1024 10 64" X=1
B pairs "1024" QWGPU_COOP_EXACT=0
B exact "1024" X=1
# One tile everywhere (128 x 128 x 32): weight pairs (P = 3), rounded weights (P = 2), exact.
B p3_forced "1024" QWGPU_COOP_EXACT=0 QWGPU_COOP_TILE=128x128x32x4x2x3
B p2_forced "1024" QWGPU_COOP_EXACT=0 QWGPU_COOP_TILE=128x128x32x4x2x2
B exact_forced "1024" QWGPU_COOP_TILE=128x128x32x4x2x3
