set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/lab.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
ts read; timeout 150 $C/lab read --reps 100 --roofline 3350 > $OUT/read.txt 2>&1; grep -a -v "^\s*$" $OUT/read.txt | tail -25
ts persist; timeout 150 $C/lab persist --reps 100 --roofline 3350 > $OUT/persist.txt 2>&1; grep -a -v "^\s*$" $OUT/persist.txt | tail -20
ts chain; timeout 100 $C/lab chain --reps 100 --roofline 3350 > $OUT/chain.txt 2>&1; grep -a -v "^\s*$" $OUT/chain.txt | tail -12
ts done
