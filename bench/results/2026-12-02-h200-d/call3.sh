# Rows per lane group of the integer-plane kernel (QWGPU_XQ_TILE=G,A,B: G groups of 32 lanes, A
# rows per group at 1 token, B at 2): x's planes are loaded once per lane and block for A rows.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
lab() { grep '"bench' $1 | grep ' xq ' | grep -v xquant | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
for t in 4,4,4 4,8,4 2,8,4 4,8,8 8,2,2 2,4,4 8,4,4 4,2,2; do
  echo "== QWGPU_XQ_TILE=$t"; QWGPU_XQ_TILE=$t $C/lab matmul --reps 100 --shapes gate_up,in_proj,qkv > $R/lab_$t.jsonl 2>&1; lab $R/lab_$t.jsonl
done
tar czf $OUT/results.tar.gz -C $R .
