# The prefill GEMM's f16 variant (QWGPU_GEMM_HALF=1: f16 staging, packed f16 multiply-adds over
# runs of 8 features summed in f32) against the f32 GEMM, kernel lab at 512 tokens.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
for h in 0 1; do
  QWGPU_GEMM_HALF=$h $C/lab matmul --reps 20 --prefill 512 --shapes gate_up,down,in_proj > $OUT/gemm_half$h.jsonl 2>&1
  echo "== QWGPU_GEMM_HALF=$h"; grep 'TFLOPs' $OUT/gemm_half$h.jsonl
done
