# Does the exact-weights form lose at 1024 tokens by holding more workgroups per SM (less
# workgroup memory)? The form with the pairs' second array as unused padding
# (QWGPU_COOP_EXACT_PAD=1, a probe) against the form and the pairs. Binary: .carry/bins3.tar.xz.
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
B exact_pad "1024 10" QWGPU_COOP_EXACT_PAD=1
B exact "1024" X=1
B pairs "1024 10" QWGPU_COOP_EXACT=0
B exact_pad_forced "1024" QWGPU_COOP_EXACT_PAD=1 QWGPU_COOP_TILE=128x128x32x4x2x3
B p3_forced "1024" QWGPU_COOP_EXACT=0 QWGPU_COOP_TILE=128x128x32x4x2x3
B exact_pad "1024" QWGPU_COOP_EXACT_PAD=1
