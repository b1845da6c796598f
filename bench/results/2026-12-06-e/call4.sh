set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins3.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
test -d /tmp/m27 || /tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
srv() { # label, extra args
  lab=$1; shift
  /tmp/qwgpu-server --model /tmp/m27 --model-name m27 --port 8099 --batch 4 --mtp on --bench-force-accept 0.8 "$@" > $OUT/srv_$lab.log 2>&1 &
  pid=$!
  for i in $(seq 1 180); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
  python3 .carry/srv5.py 8099 warm$lab > /dev/null
  python3 .carry/srv5.py 8099 $lab
  python3 .carry/srv5.py 8099 ${lab}_2
  curl -s localhost:8099/metrics | grep "^qwgpu_batch_resumes\|^qwgpu_batch_handoffs\|^qwgpu_batch_steps"
  kill $pid; wait $pid 2>/dev/null
}
srv stay --no-batch-resume
srv resume
srv stay2 --no-batch-resume
srv resume2
