# (4) Where the 1-token grid cap's end-to-end gain comes from (kernel lab): gate+up and lm_head
# alone, and whole layers (their dispatches in sequence), with QWGPU_XQ_GRID=1632,0 (grid) and
# without (none), alternating twice.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
show() { grep '"bench"' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l)
    if 'T=1' in j['bench'] and ('xq' in j['bench'] or 'layer' in j['bench']) and 'xquant' not in j['bench']: print(f\"  {j['bench'][:64]:64s} {j['us']:7.1f}\")"; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
for r in 1 2; do
  for v in none grid; do
    if [ $v = grid ]; then E="QWGPU_XQ_GRID=1632,0"; else E="QWGPU_X=1"; fi
    ts "matmul $v $r"; env $E timeout 60 $C/lab matmul --reps 100 --shapes gate_up,lm_head > $R/mm_${v}_$r.jsonl 2>&1; show $R/mm_${v}_$r.jsonl
    ts "layer $v $r"; env $E timeout 60 $C/lab layer --reps 100 > $R/layer_${v}_$r.jsonl 2>&1; show $R/layer_${v}_$r.jsonl
    save
  done
done
ts done
