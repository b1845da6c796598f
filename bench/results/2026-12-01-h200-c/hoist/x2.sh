# HOIST (a chunk's weights loaded before its x is staged) on / off: kernel lab, plain, MTP 0.8.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
($C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1) &
f() { grep bench | grep -v "T=512" | sed 's/"bytes.*"us"/"us"/; s/"GBps.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://; s/, $//'  | tr '\n' ' '; echo; }
for i in 1 2; do
  echo "hoist 0: $(QWGPU_STAGED_HOIST=0 $C/lab matmul --reps 100 | f)"
  echo "hoist 1: $(QWGPU_STAGED_HOIST=1 $C/lab matmul --reps 100 | f)"
done
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms')})" $1; }
for h in 1 0; do echo "== e2e hoist=$h"; QWGPU_STAGED_HOIST=$h $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_h$h.json 2>/dev/null; g $OUT/e2e_h$h.json; done
for cfg in "1 0" "0 0" "1 1"; do set -- $cfg; echo "== mtp 0.8 hoist=$1 norm_fold_mtp=$2"; QWGPU_STAGED_HOIST=$1 QWGPU_NORM_FOLD_MTP=$2 $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_0.8_h$1_f$2.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_0.8_h$1_f$2.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"; done
