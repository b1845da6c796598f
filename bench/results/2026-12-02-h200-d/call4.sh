# The integer-plane matmul's read pattern alone (lab rows) against the streaming read (lab read).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
p() { grep '"bench' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['GBps']:7.1f}\")"; }
$C/lab rows --reps 100 > $R/rows.jsonl 2>&1; p $R/rows.jsonl
$C/lab read --reps 100 > $R/read.jsonl 2>&1; p $R/read.jsonl | grep -E "gate_up|in_proj|down"
tar czf $OUT/results.tar.gz -C $R .
