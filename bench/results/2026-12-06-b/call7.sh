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
L mid14 QWGPU_XQ_MID_VERIFY=1,4
L mid18 QWGPU_XQ_MID_VERIFY=1,8
L t144 QWGPU_XQ_TILE=1,4,4
L t148 QWGPU_XQ_TILE=1,4,8
L t444 QWGPU_XQ_TILE=4,4,4
L long22 QWGPU_XQ_LONG_ROWS=2,2
L long28 QWGPU_XQ_LONG_ROWS=2,8
L vb14 QWGPU_XQ_VERIFY_BIG=1,4
L vf14 QWGPU_XQ_VERIFY_FEW=1,4
