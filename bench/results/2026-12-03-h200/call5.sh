set -u
C=/tmp/c; R=/tmp/res5; rm -rf $R; mkdir -p $R
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QWGPU_XQ_LONG_ROWS=2,4
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1 2>/dev/null || echo failed; }
for a in 0.6 0.9; do echo "== mtp on $a"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept $a --json > $R/mtp_$a.json 2>/dev/null; m $R/mtp_$a.json; done
echo "== mtp on, own acceptance"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --json > $R/mtp_none.json 2>/dev/null; m $R/mtp_none.json
for a in none 0.8; do f=""; [ $a != none ] && f="--force-accept $a"
  echo "== mtp auto $a"; $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 $f --json > $R/auto_$a.json 2>/dev/null; m $R/auto_$a.json; done
echo "== mtp on 0.8 profile"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $R/mtp_0.8.json 2>/dev/null; m $R/mtp_0.8.json
tar czf $OUT/results.tar.gz -C $R .
