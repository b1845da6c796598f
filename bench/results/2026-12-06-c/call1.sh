set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
/tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
B="/tmp/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json"
run() { # label, env..., batch
  lab=$1; e=$2; shift 2
  env $e $B "$@" > $OUT/$lab.json 2>$OUT/$lab.err || tail -3 $OUT/$lab.err
  python3 -c "
import json;j=json.load(open('$OUT/$lab.json'));b=j['batch_decode']
print('$lab','plain',round(j['decode_tokens_per_s']['p50'],2),'batch',b['streams'],'total',round(b['decode_tokens_per_s']['p50'],2),'x',round(b['total_over_plain'],3))"
}
run b4 X=1 --batch 4
run b3 X=1 --batch 3
run b3_noguard QWGPU_XQ_TOK_GUARD=0 --batch 3
run b4_noguard QWGPU_XQ_TOK_GUARD=0 --batch 4
run b2 X=1 --batch 2
srv() { # batch
  /tmp/qwgpu-server --model /tmp/m27 --model-name m27 --port 8099 --batch $1 --mtp off > /tmp/srv.log 2>&1 &
  pid=$!
  for i in $(seq 1 120); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
  echo "== server --batch $1"
  python3 .carry/srv.py 8099 1 64 > /dev/null
  for n in 1 2 3 4; do python3 .carry/srv.py 8099 $n 256; done
  kill $pid; wait $pid 2>/dev/null
}
srv 4
