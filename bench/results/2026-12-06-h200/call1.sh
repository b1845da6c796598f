for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
/tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
one() { # label env
  env $2 /tmp/qwgpu bench --model /tmp/m27 --mtp on --force-accept 0.8 --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $OUT/$1.json 2>$OUT/$1.err || tail -3 $OUT/$1.err
  python3 - $OUT/$1.json $1 <<'PY'
import json,sys
j=json.load(open(sys.argv[1])); m=j["mtp_decode"]
print(sys.argv[2], "plain", round(j["decode_tokens_per_s"]["p50"],2), "mtp0.8", round(m["decode_tokens_per_s"]["p50"],2), "x", round(m["speedup_over_plain"],3), "acc", m["mtp"]["acceptance"], "ms", m.get("measured_ms"))
PY
}
one base1 QWGPU_XQ_NOSUB=0
one nosub1 QWGPU_XQ_NOSUB=1
one base2 QWGPU_XQ_NOSUB=0
one nosub2 QWGPU_XQ_NOSUB=1
