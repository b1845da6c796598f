# Side by side with mlx-lm, second call: the second half of the mlx-cuda-13 wheel, checked
# against its sha256; mlx 0.32.4 + mlx-cuda-13 0.32.4 + mlx-lm 0.32.2 installed; then
# bench/side_by_side.sh on the synthetic checkpoint of the first call (qwgpu, then mlx-lm, in
# one run; 1024-token prompt, 512 generated, greedy, 1 warm-up + 3 trials each).
set -u
W=/tmp/whl; cp .whl/b/* $W/
cat $W/part_aa $W/part_ab > $W/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
(cd $W && sha256sum -c sha256.txt) || exit 3
python3 -m pip install --no-deps --no-index $W/mlx-0.32.4-cp312-cp312-manylinux_2_35_x86_64.whl $W/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl $W/mlx_lm-0.32.2-py3-none-any.whl 2>&1 | tail -2
python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f /tmp/qwgpu-27b/config.json ] || /tmp/c/qwgpu synth --out /tmp/qwgpu-27b > /tmp/synth.log 2>&1
QWGPU=/tmp/c/qwgpu WARMUP=1 TRIALS=3 OUT=$OUT PYTHON=python3 bash bench/side_by_side.sh /tmp/qwgpu-27b
