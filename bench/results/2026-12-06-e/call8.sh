set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/b8 && tar -C /tmp/b8 -xJf .carry/bins8.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
test -d /tmp/m27 || /tmp/b8/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
for s in 64 0; do
  echo "== QWGPU_COOP_SHORT_TOKENS=$s"
  QWGPU_COOP_SHORT_TOKENS=$s /tmp/b8/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 8 --trials 2 --warmup 1 --mtp off --profile --json > $OUT/prof_$s.json 2>/dev/null
  python3 - $OUT/prof_$s.json <<'PY'
import json,sys
j=json.load(open(sys.argv[1]))
print('ttft', j['ttft_s'])
for k,v in j['dispatch_profile'].items():
    print(k, round(v['total_ms'],3), 'ms')
    for kk,vv in sorted(v['by_kind'].items(), key=lambda x:-x[1]['us'])[:12]:
        print('   ', kk, vv['dispatches'], round(vv['us'],1), 'us')
PY
done
