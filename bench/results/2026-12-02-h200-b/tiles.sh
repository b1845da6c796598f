# Tensor-core GEMM tiles for the matrices with few rows (down 5120×17408, out_proj 5120×6144: 40
# row tiles of 128), kernel lab at 1024 tokens.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
for t in 128x128x32x4x2x3 128x64x32x4x2x3 64x128x32x2x4x3 64x128x32x1x4x3 128x128x32x2x4x3 64x64x32x2x2x3; do
  echo "== $t"; QWGPU_COOP_TILE=$t $C/lab matmul --reps 10 --prefill 1024 --shapes down,out_proj,gate_up > $OUT/tiles_$t.jsonl 2>&1; grep 'T=1024", "TF' $OUT/tiles_$t.jsonl
done
