set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
/tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
run() { # label, batch
  lab=$1; shift
  /tmp/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json "$@" > $OUT/$lab.json 2>$OUT/$lab.err || tail -3 $OUT/$lab.err
  python3 -c "
import json;j=json.load(open('$OUT/$lab.json'));b=j['batch_decode']
print('$lab','plain',round(j['decode_tokens_per_s']['p50'],2),'batch',b['streams'],'total',round(b['decode_tokens_per_s']['p50'],2),'x',round(b['total_over_plain'],3))"
}
run b2 --batch 2
run b3 --batch 3
run b4 --batch 4
srv() { # label, join-slice args...
  lab=$1; shift
  /tmp/qwgpu-server --model /tmp/m27 --model-name m27 --port 8099 --batch 2 --mtp off --max-context 16384 --prompt-cache-entries 0 "$@" > $OUT/srv_$lab.log 2>&1 &
  pid=$!
  for i in $(seq 1 180); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
  python3 .carry/srv3.py 8099 warm$lab 300 > /dev/null
  python3 .carry/srv3.py 8099 $lab 8000
  python3 .carry/srv3.py 8099 ${lab}_2 8000
  kill $pid; wait $pid 2>/dev/null
}
srv whole --join-slice 0
srv slice1024
srv slice256 --join-slice 256
