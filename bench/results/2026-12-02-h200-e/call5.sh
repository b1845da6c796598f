# Integer-plane pipelines without the row clamp where every workgroup's rows are below n
# (QWGPU_XQ_EXACT_ROWS, the candidate default) against the clamp: end to end (1024 + 256, 1 + 3),
# alternating, and MTP at forced 0.8. Results written to $OUT as they come.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=$OUT; mkdir -p $R
[ -f /tmp/m27/config.json ] && echo "checkpoint kept" || { rm -rf /tmp/m27; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'])" $1 2>/dev/null || echo 0; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1; }
for v in exact clamp exact2 clamp2; do e="QWGPU_XQ_EXACT_ROWS=1"; case $v in clamp*) e="QWGPU_XQ_EXACT_ROWS=0";; esac
  env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$v.json 2>/dev/null
  echo "e2e $v: $(tp $R/e2e_$v.json) tok/s"
done
for v in exact clamp; do e="QWGPU_XQ_EXACT_ROWS=1"; [ $v = clamp ] && e="QWGPU_XQ_EXACT_ROWS=0"
  env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null
  echo "mtp 0.8 $v: $(m $R/mtp_$v.json)"
done
