set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
[ -f /tmp/m27/config.json ] || ($C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1)
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:(round(v,3) if isinstance(v,float) else v) for k,v in j.items() if k in ('prefill_tokens_per_s','dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','drift_pct')})" $1; }
echo "== e2e --mtp off"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $OUT/e2e_gated.json 2>/dev/null; g $OUT/e2e_gated.json
echo "== e2e --mtp off, gated fold off"; QWGPU_GATED_FOLD=0 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_nogated.json 2>/dev/null; g $OUT/e2e_nogated.json
