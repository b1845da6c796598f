set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
[ -f /tmp/m27/config.json ] || ($C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1) &
O=$PWD/.carry/old2
f() { grep bench | sed 's/"bytes.*"us"/"us"/; s/"GBps.*roofline_pct"/pct/; s/, "dispatches.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://; s/, "bytes": [0-9]*//'  | tr '\n' ' '; echo; }
for r in 1 2; do
echo "== new: $($C/lab matmul --reps 100 2>&1 | f)"
echo "== old: $(QWGPU_SHADER_DIR=$O $C/lab matmul --reps 100 2>&1 | f)"
done
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:(round(v,3) if isinstance(v,float) else v) for k,v in j.items() if k in ('prefill_tokens_per_s','dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline')})" $1; }
for v in new old; do
 if [ $v = old ]; then export QWGPU_SHADER_DIR=$O; fi
 echo "== e2e $v"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --roofline-gbps 4500 --json > $OUT/e2e_$v.json 2>/dev/null; g $OUT/e2e_$v.json
 echo "== mtp 0.8 $v"; $C/qwgpu bench --model /tmp/m27 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_$v.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$OUT/mtp_$v.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), j.get('dispatches_per_token'))"
done
unset QWGPU_SHADER_DIR
P=$(python3 -c "import random;random.seed(1);print(','.join(str(random.randrange(1000,200000)) for _ in range(1024)))")
Q="$P,$(python3 -c "import random;random.seed(2);print(','.join(str(random.randrange(1000,200000)) for _ in range(64)))")"
run(){ $C/qwgpu generate --model /tmp/m27 --prompt-ids "$1" --max-tokens 32 --ignore-eos --json $2 2>>$OUT/err.log | tail -1 > $OUT/$3.json; python3 -c "
import json;j=json.load(open('$OUT/$3.json'));print('$3',j['prompt_tokens'],j.get('prompt_cache'),j.get('mtp'),{k:round(v,3) for k,v in j['timings'].items()}, j['tokens'][:6])" || tail -3 $OUT/err.log; }
run "$P" "" nocache
run "$P" "--prompt-cache /tmp/pc.bin" first
run "$P" "--prompt-cache /tmp/pc.bin" again
run "$Q" "--prompt-cache /tmp/pc.bin" longer
run "$Q" "" longer_nocache
ls -la /tmp/pc.bin
