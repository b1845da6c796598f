set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
test -x /tmp/qwgpu || tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
test -d /tmp/m27 || /tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
srv() { # label, join-slice args...
  lab=$1; shift
  /tmp/qwgpu-server --model /tmp/m27 --model-name m27 --port 8099 --batch 2 --mtp off --max-context 16384 --prompt-cache-entries 0 "$@" > $OUT/srv_$lab.log 2>&1 &
  pid=$!
  for i in $(seq 1 180); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
  python3 .carry/srv3.py 8099 warm$lab 300 > /dev/null
  python3 .carry/srv3.py 8099 $lab 8000
  python3 .carry/srv3.py 8099 ${lab}_2 8000
  curl -s localhost:8099/metrics | grep "^qwgpu_batch_join"
  kill $pid; wait $pid 2>/dev/null
}
srv whole --join-slice 0
srv slice1024
srv slice256 --join-slice 256
