set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
[ -f /tmp/m27/config.json ] || ($C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1) &
f() { grep bench | sed 's/"bytes.*"us"/"us"/; s/"GBps.*roofline_pct"/pct/; s/, "dispatches.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://'  | tr '\n' ' '; echo; }
echo "== staged (xreg off)"; QWGPU_MATMUL_XREG=0 $C/lab matmul --reps 50 | f
for s in "" "1,32,4" "1,8,4" "1,16,8" "1,32,8" "2,16,4" "1,64,8"; do echo "== xreg $s: $(QWGPU_XREG=$s $C/lab matmul --reps 50 2>&1 | f)"; done
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k not in ('decode_tokens_per_s_trials','device','model','temperature')})" $1; }
echo "== e2e xreg"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_xreg.json 2>$OUT/e2e_xreg.err; g $OUT/e2e_xreg.json
echo "== e2e staged"; QWGPU_MATMUL_XREG=0 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_staged.json 2>/dev/null; g $OUT/e2e_staged.json
for a in 0.8; do echo "== mtp $a"; $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $OUT/mtp_$a.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_$a.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"; done
echo "== mtp 0.8 no fold"; QWGPU_NORM_FOLD_MTP=0 $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_nofold.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_nofold.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'))"
