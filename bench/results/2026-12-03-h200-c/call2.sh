# (0) lab persist again, with chained phases (each phase its own workgroups, waiting on the
# previous phase's counter). (1) The decode matmuls with each fused epilogue alone (lab matmul: xq, xnorm, xout, fused).
# (2) Verify-tile rows per group for the short-row matrices: QWGPU_XQ_TILE=G,A,B (G groups of
# 32 lanes, A / B rows per group in the 1- / 2-token tile).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
timeout 100 $C/lab persist --reps 20 > $R/persist.jsonl 2>&1; grep bench $R/persist.jsonl | cut -c1-110
timeout 150 $C/lab matmul --reps 40 > $R/matmul.jsonl 2>&1; grep '"matmul q4 xq' $R/matmul.jsonl | cut -c1-90
save
for T in 4,4,1 4,4,2 4,4,8 2,4,2 2,4,4 8,4,1 8,4,2 8,4,4 2,4,8 1,4,4 1,4,8; do
  export QWGPU_XQ_TILE=$T
  timeout 100 $C/lab matmul --shapes in_proj,qkv,out_proj,gate_up --reps 40 2>&1 | grep '"matmul q4 xq fused' | grep "T=2" | sed "s/^/$T /" | tee -a $R/tiles.txt | cut -c1-100
done
save
