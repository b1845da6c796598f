# server: alone vs 2 concurrent, new (pipelined) and old (sync) binaries
srv() { # bin label
  $1 --model /tmp/m27 --model-name m27 --port 8099 --batch 2 --mtp off > /tmp/srv.log 2>&1 &
  pid=$!
  for i in $(seq 1 120); do curl -s localhost:8099/health >/dev/null 2>&1 && break; python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/v1/models')" 2>/dev/null && break; sleep 1; done
  echo "== $2"
  python3 .carry/srv.py 8099 1 64 > /dev/null  # warm
  python3 .carry/srv.py 8099 1 256
  python3 .carry/srv.py 8099 2 256
  python3 .carry/srv.py 8099 2 256
  kill $pid; wait $pid 2>/dev/null
}
srv /tmp/qwgpu-server new
srv /tmp/qwgpu-server-old old
