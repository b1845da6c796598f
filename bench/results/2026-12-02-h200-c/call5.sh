# Prompt chunk length and time to first token: a 1024-token prompt in chunks of 512 (the
# default), 1024 and 2048 tokens, and a 4096-token prompt, with the GPU memory each needs.
# One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('ttft_s','prefill_tokens_per_s','decode_tokens_per_s','gpu_memory_bytes')})" $1; }
for pc in 512 1024 2048; do
  for pt in 1024 4000; do
    echo "== prompt $pt, chunk $pc"; $C/qwgpu bench --model /tmp/m27 --mtp off --max-context 4096 --prefill-chunk $pc --prompt-tokens $pt --gen-tokens 32 --warmup 1 --trials 3 --json > $R/ttft_${pt}_$pc.json 2>$R/ttft_${pt}_$pc.err; g $R/ttft_${pt}_$pc.json
  done
done
tar czf $OUT/results.tar.gz -C $R .
