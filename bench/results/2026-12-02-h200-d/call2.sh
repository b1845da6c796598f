# Instruction throughput of what the decode matmuls spend their time on (lab alu). One call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/lab alu --reps 20 > $R/alu.jsonl 2>&1; cat $R/alu.jsonl
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv | tee $R/clocks.txt
tar czf $OUT/results.tar.gz -C $R .
