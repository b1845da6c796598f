# Verify-tile rows per group for the short-row matrices: lab matmul at 1 and 2 tokens under
# QWGPU_XQ_TILE=G,A,B (G groups of 32 lanes, A / B rows per group in the 1- / 2-token tile).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
for T in default 4,4,1 4,4,2 4,4,8 2,4,2 2,4,4 8,4,1 8,4,2 8,4,4 2,4,8 1,4,4 1,4,8; do
  if [ $T = default ]; then unset QWGPU_XQ_TILE; else export QWGPU_XQ_TILE=$T; fi
  timeout 100 $C/lab matmul --shapes in_proj,qkv,out_proj,gate_up --reps 40 2>&1 | grep '"matmul q4 xq fused' | sed "s/^/$T /" | tee -a $R/tiles.txt | grep "T=2"
done
save
