set -u
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/lab.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
L() { # label env
  env $2 timeout 90 /tmp/lab matmul --four --reps 40 > $OUT/$1.txt 2>&1
  echo "== $1"; grep -E '"matmul q4 xq [a-z_.]+ [0-9]+x' $OUT/$1.txt | sed -E 's/.*matmul q4 xq ([a-z_.]+) [0-9x]+ (T=[0-9]).*"us": ?([0-9.]+).*/\1 \2 \3/' | tr '\n' ';'; echo
}
L def X=1
L mid0 QWGPU_XQ_MID_VERIFY=0
L mid24 QWGPU_XQ_MID_VERIFY=2,4
L long21 QWGPU_XQ_LONG_ROWS=2,1
L long22 QWGPU_XQ_LONG_ROWS=2,2
L t242 QWGPU_XQ_TILE=2,4,2
L t442 QWGPU_XQ_TILE=4,4,2
L t244 QWGPU_XQ_TILE=2,4,4
L t144 QWGPU_XQ_TILE=1,4,4
L t142 QWGPU_XQ_TILE=1,4,2
L t841 QWGPU_XQ_TILE=8,4,1
L t241 QWGPU_XQ_TILE=2,4,1
