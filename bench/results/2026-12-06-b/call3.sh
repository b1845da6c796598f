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
print('$lab','plain',round(j['decode_tokens_per_s']['p50'],2),'batch',b['streams'],'total',round(b['decode_tokens_per_s']['p50'],2),'x',round(b['total_over_plain'],3), 'disp', b.get('dispatches_per_step'))"
}
run t442 QWGPU_XQ_TILE=4,4,2 --batch 4
run t441 QWGPU_XQ_TILE=4,4,1 --batch 4
run t242 QWGPU_XQ_TILE=2,4,2 --batch 4
run late QWGPU_XQ_NORM_LATE_VERIFY=1 --batch 4
run midlong "QWGPU_XQ_MID_VERIFY=0 QWGPU_XQ_LONG_ROWS=2,2" --batch 4
run midlonglate "QWGPU_XQ_MID_VERIFY=0 QWGPU_XQ_LONG_ROWS=2,2 QWGPU_XQ_NORM_LATE_VERIFY=1" --batch 4
run t442late "QWGPU_XQ_TILE=4,4,2 QWGPU_XQ_NORM_LATE_VERIFY=1" --batch 4
