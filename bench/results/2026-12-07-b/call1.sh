# Thirtieth session, first device call: the committed tree (every change since the fourteenth
# session's H200 table is on the prompt side) with the issues' protocols. Plain decode: synthetic
# 27B, 1024-token prompt, 512 generated, greedy, 3 warm-ups + 10 trials. MTP: forced acceptance
# 0.6 / 0.8 / 0.9 (benchmark-only) with --mtp on, 64 + 256 tokens, 3 trials after 1 warm-up, plain
# measured in the same run; 0.8 also with the plain protocol's prompt and length.
# Binary: qwgpu (--no-default-features) of the commit named in README.md.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); d=j['decode_tokens_per_s']
print('plain p50', round(d['p50'],2), d, 'tpot', j.get('tpot_ms'), 'ttft', j['ttft_s'], 'drift', j.get('drift_pct'), 'cpu_ms', j.get('cpu_ms_per_token'), 'disp', j.get('dispatches_per_token'), 'mem', j.get('gpu_memory_bytes'), '' if not m else ('mtp', m['decode_tokens_per_s'], m['mtp'], 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
run e2e timeout 150 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500
M="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
run on_06 $M --mtp on --force-accept 0.6
run on_08 $M --mtp on --force-accept 0.8
run on_09 $M --mtp on --force-accept 0.9
run e2e_on_08 timeout 200 $C/qwgpu bench --model /tmp/m27 --json --mtp on --force-accept 0.8 --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500
ts done
