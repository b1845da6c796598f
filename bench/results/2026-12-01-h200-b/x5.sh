set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
[ -f /tmp/m27/config.json ] || ($C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1) &
f() { grep bench | grep -v "T=512" | sed 's/"bytes.*"us"/"us"/; s/"GBps.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://; s/, $//'  | tr '\n' ' '; echo; }
for x in 0 1; do for rt in 1 2 4 8; do
  echo "xfix=$x rt=$rt: $(QWGPU_MATMUL_XFIX=$x QWGPU_STAGED_RT=$rt $C/lab matmul --reps 100 | f)"
done; done
echo "xfix=0 rt=4 G=8: $(QWGPU_MATMUL_XFIX=0 QWGPU_STAGED_RT=4 QWGPU_STAGED_GROUPS=8 $C/lab matmul --reps 100 | f)"
echo "xfix=1 rt=4 G=8: $(QWGPU_MATMUL_XFIX=1 QWGPU_STAGED_RT=4 QWGPU_STAGED_GROUPS=8 $C/lab matmul --reps 100 | f)"
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k not in ('decode_tokens_per_s_trials','device','model','temperature')})" $1; }
for cfg in "0 1" "0 4" "1 4"; do set -- $cfg; echo "== e2e xfix=$1 rt=$2"; QWGPU_MATMUL_XFIX=$1 QWGPU_STAGED_RT=$2 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_x$1_rt$2.json 2>/dev/null; g $OUT/e2e_x$1_rt$2.json; done
