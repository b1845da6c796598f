# Mid-row verify tile (QWGPU_XQ_MID_VERIFY: 2 groups of 8 rows, default) against the staged
# 4 x 4 tile (=0): MTP at forced 0.8 and plain decoding in the same runs, A B A B.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,utilization.gpu --format=csv > $R/smi.txt 2>&1; nvidia-smi --query-compute-apps=pid,used_memory --format=csv >> $R/smi.txt 2>&1; cat $R/smi.txt
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for i in 1 2; do for V in 0 2,8; do
  ts "mtp 0.8, QWGPU_XQ_MID_VERIFY=$V, run $i"; QWGPU_XQ_MID_VERIFY=$V $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_${V}_$i.json 2>/dev/null; m $R/mtp_${V}_$i.json
  save
done; done
for V in 0 2,8; do
  QWGPU_XQ_MID_VERIFY=$V timeout 90 $C/lab layer --breakdown --reps 40 2>&1 | grep '"part"' | grep "T=2" | grep -v "T=2 xq" | sed "s/^/$V /" >> $R/layers.txt
done
grep -E "in_proj|q_proj|sum" $R/layers.txt
save
ts done
