
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
time /tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
summ() { python3 - "$1" <<'PY'
import json,sys
j=json.load(open(sys.argv[1]))
d=j.get("decode_tokens_per_s",{})
print("plain p50", d.get("p50"), "ttft/prefill", j.get("prefill_tokens_per_s"), "disp", j.get("dispatches_per_token"))
b=j.get("batch_decode")
if b: print("batch", json.dumps(b))
m=j.get("mtp_decode")
if m: print("mtp", m.get("speedup_over_plain"), json.dumps(m.get("measured_ms")), m.get("decode_tokens_per_s",{}).get("p50"))
PY
}
/tmp/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --batch 2 --json > $OUT/batch2.json 2>$OUT/batch2.err || tail -5 $OUT/batch2.err
summ $OUT/batch2.json
/tmp/qwgpu bench --model /tmp/m27 --mtp on --force-accept 0.8 --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $OUT/mtp.json 2>$OUT/mtp.err || tail -5 $OUT/mtp.err
summ $OUT/mtp.json
bash .carry/run2.sh
