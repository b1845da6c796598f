# The one-plane format (QWGPU_XQ_BYTE=1) under grid-stride sizes (QWGPU_XQ_GRID=A,B): is its
# slower plain decode a matter of waves? Plain + MTP at forced 0.8 per setting. One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms'))" $1 2>/dev/null || echo failed; }
for s in 0:0 1:0 1:1584,0 1:2112,0 1:2640,0 1:2112,2112 1:3168,3168 0:0; do
  b=${s%%:*}; g=${s#*:}
  ts "mtp auto 0.8 byte=$b grid=$g"; QWGPU_XQ_BYTE=$b QWGPU_XQ_GRID=$g timeout 120 $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_byte${b}_grid$g.json 2>/dev/null; m $R/mtp_byte${b}_grid$g.json
  save
done
ts done
