# qwgpu (this tree) and mlx-lm (mlx 0.32.4 + mlx-cuda-13 0.32.4 + mlx-lm 0.32.2) on one synthetic
# Qwen3.6-27B in the same run, through bench/side_by_side.sh. The mlx-cuda-13 wheel came in
# thirds over three calls (.whl/a with the mlx and mlx-lm wheels and the sha256, .whl/b, then
# .whl/c with this script; the first two calls copied theirs to /tmp/whl) and is checked against
# its sha256. Then the kernel lab's lm_head alone (no synth running).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c
W=/tmp/whl; mkdir -p $W; cp .whl/c/* $W/
cat $W/part_aa $W/part_ab $W/part_ac > $W/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
(cd $W && sha256sum -c sha256.txt) || exit 3
python3 -m pip install --no-deps --no-index $W/mlx-0.32.4-cp312-cp312-manylinux_2_35_x86_64.whl $W/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl $W/mlx_lm-0.32.2-py3-none-any.whl 2>&1 | tail -2
python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
/tmp/c/qwgpu synth --out /tmp/qwgpu-27b > /tmp/synth.log 2>&1
QWGPU=/tmp/c/qwgpu WARMUP=1 TRIALS=3 OUT=$OUT PYTHON=python3 bash bench/side_by_side.sh /tmp/qwgpu-27b
/tmp/c/lab matmul --reps 100 --shapes lm_head > $OUT/lab_lm_head.jsonl 2>&1; grep xq $OUT/lab_lm_head.jsonl
