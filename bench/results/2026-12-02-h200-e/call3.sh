# The committed candidate (pipelines built for their row length, now the default, with the planes'
# row stride constant too) end to end, and the split and tile knobs retried on top of it; MTP at
# forced 0.8 for the default and for the best plain variant.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res3; rm -rf $R; mkdir -p $R
[ -f /tmp/m27/config.json ] && echo "checkpoint kept" || { rm -rf /tmp/m27; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'])" $1 2>/dev/null || echo 0; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
best=default; bt=0
for v in default "QWGPU_XQ_KSPLIT=1,2,1" "QWGPU_XQ_KSPLIT=1,1,2" "QWGPU_XQ_TILE=4,2,4" "QWGPU_XQ_TILE=4,8,4" "QWGPU_XQ_CONST_K=0"; do
  e="X=1"; [ "$v" != default ] && e="$v"; f=$(echo "$v" | tr -c 'A-Za-z0-9\n' '_')
  env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$f.json 2>/dev/null
  t=$(tp $R/e2e_$f.json); echo "e2e $v: $t tok/s"
  if [ "$v" != "QWGPU_XQ_CONST_K=0" ] && python3 -c "import sys; sys.exit(0 if $t > $bt else 1)"; then best="$v"; bt=$t; fi
done
for v in default "$best"; do
  e="X=1"; [ "$v" != default ] && e="$v"; f=$(echo "$v" | tr -c 'A-Za-z0-9\n' '_')
  [ -f $R/mtp_$f.json ] && continue
  env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$f.json 2>/dev/null
  echo "mtp 0.8 $v: $(m $R/mtp_$f.json)"
done
tar czf $OUT/results.tar.gz -C $R .
