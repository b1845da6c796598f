# Verify-tile knobs retried on the committed tree (the cheaper inner loop may move the balance
# between ALU and loads): MTP at forced 0.8 with plain measured in the same run, the defaults
# first and last. The committed shaders via QWGPU_SHADER_DIR (.carry/old_shaders = HEAD's).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export QWGPU_SHADER_DIR=$PWD/.carry/old_shaders
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
ts synth; [ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3))" $1 2>/dev/null || echo failed; }
for v in base QWGPU_XQ_VERIFY_BIG=2,8 QWGPU_XQ_MID_VERIFY=4,8 QWGPU_XQ_LONG_ROWS=2,8 QWGPU_XQ_VERIFY_FEW=2,8 QWGPU_XQ_MID_VERIFY=2,4 base2; do
  ts "$v"; ( case $v in base*) ;; *) export "$v";; esac; timeout 90 $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null ); m $R/mtp_$v.json
  save
done
ts done
