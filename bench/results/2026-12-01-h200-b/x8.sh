set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/lab read --reps 100 | grep bench | grep -E "u=4 grid=0|u=8 grid=0" | sed 's/{"bench": "read //; s/"bytes.*"GBps"/GBps/; s/, "roofline_pct.*//'
$C/lab layer --breakdown --reps 50 > $OUT/layer_breakdown.jsonl 2>&1; grep bench $OUT/layer_breakdown.jsonl | sed 's/"bytes.*"us"/"us"/' | head -80
