set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
/tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
/tmp/qwgpu-server --model /tmp/m27 --model-name m27 --port 8099 --batch 4 --mtp off > $OUT/srv.log 2>&1 &
pid=$!
for i in $(seq 1 120); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
python3 .carry/srv2.py 8099 1 0 64 > /dev/null
python3 .carry/srv2.py 8099 0 1 64 > /dev/null
for a in "1 0" "0 1" "2 0" "1 1" "4 0" "3 1" "2 2" "0 4"; do python3 .carry/srv2.py 8099 $a 256; done
kill $pid; wait $pid 2>/dev/null
