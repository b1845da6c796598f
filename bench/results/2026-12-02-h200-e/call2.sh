# End to end and MTP at forced 0.8 for the default, QWGPU_XQ_CONST_K=1 and with
# QWGPU_XQ_UNROLL_CH=1 (call 1 ran out of time before these).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res2; rm -rf $R; mkdir -p $R
ls /tmp/m27 >/dev/null 2>&1 && [ -f /tmp/m27/config.json ] && echo "checkpoint kept" || { rm -rf /tmp/m27; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','decode_tokens_per_s','tpot_ms','ttft_s')})" $1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
for v in base constk unroll base2 unroll2; do e="X=1"; case $v in constk) e="QWGPU_XQ_CONST_K=1";; unroll*) e="QWGPU_XQ_CONST_K=1 QWGPU_XQ_UNROLL_CH=1";; esac
  echo "== e2e $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 4 --json > $R/e2e_$v.json 2>/dev/null; g $R/e2e_$v.json
  case $v in *2) continue;; esac
  echo "== mtp 0.8 $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null; m $R/mtp_$v.json
done
tar czf $OUT/results.tar.gz -C $R .
