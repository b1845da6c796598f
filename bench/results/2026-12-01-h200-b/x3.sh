set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
f() { grep bench | grep -v "T=512" | sed 's/"bytes.*"us"/"us"/; s/"GBps.*//; s/{"bench": "matmul q4 //; s/ [0-9]*x[0-9]* / /; s/", "us"://; s/, $//'  | tr '\n' ' '; echo; }
for i in 1 2; do for a in 0 1 2 3; do
  echo "alu=$a long staged: $(QWGPU_LAB_ALU=$a QWGPU_STAGED_LONG=1 $C/lab matmul --reps 100 | f)"
done; done
