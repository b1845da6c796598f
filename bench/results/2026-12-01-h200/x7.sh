set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
f() { grep bench | grep -v "T=512" | sed 's/"bytes.*"us"/"us"/; s/"GBps.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://; s/, $//'  | tr '\n' ' '; echo; }
for cfg in "4 4,4" "4 8,8" "4 2,4" "8 2,2" "8 4,4" "2 8,8" "2 4,8"; do set -- $cfg
  echo "G=$1 rows=$2: $(QWGPU_STAGED_GROUPS=$1 QWGPU_STAGED_ROWS=$2 $C/lab matmul --reps 100 | f)"
done
echo "long G=4 4,4: $(QWGPU_STAGED_LONG=1 $C/lab matmul --reps 100 | f)"
echo "default again: $($C/lab matmul --reps 100 | f)"
