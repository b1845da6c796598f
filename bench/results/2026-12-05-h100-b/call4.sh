# Eighteenth session, fourth device call: the end-to-end benchmark on the H100 with the issue's
# protocol (synthetic 27B, 1024-token prompt, 512 generated, greedy, 3 warm-ups + 10 trials),
# the default f32 KV cache and `--kv-cache f16`. Binary: qwgpu of f34d9d4 (--no-default-features).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
s() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); d=j['decode_tokens_per_s']
print('decode p50', round(d['p50'],2), 'min', round(d.get('min',0),2), 'max', round(d.get('max',0),2), 'tpot_ms', j.get('tpot_ms'), 'ttft_s', j.get('ttft_s'), 'drift_pct', j.get('drift_pct'), 'cpu_ms', j.get('cpu_ms_per_token'), 'dispatches', j.get('dispatches_per_token'), 'gpu_memory', j.get('gpu_memory_bytes'), 'bytes_per_token', j.get('bytes_per_token'))" $1 2>/dev/null || tail -3 ${1%.json}.err; }
E="timeout 200 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 3350"
ts e2e; $E > $OUT/e2e.json 2>$OUT/e2e.err; s $OUT/e2e.json
ts e2e_f16; $E --kv-cache f16 > $OUT/e2e_f16.json 2>$OUT/e2e_f16.err; s $OUT/e2e_f16.json
ts done
