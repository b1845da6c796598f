# Side by side with mlx-lm, first of two calls: the Vulkan loader, the first half of the
# mlx-cuda-13 wheel (with the mlx and mlx-lm wheels and the sha256s) copied to /tmp/whl, and the
# synthetic Qwen3.6-27B written to /tmp/qwgpu-27b while the machine is held.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
mkdir -p /tmp/whl; cp .whl/a/* /tmp/whl/
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f /tmp/qwgpu-27b/config.json ] || /tmp/c/qwgpu synth --out /tmp/qwgpu-27b > /tmp/synth.log 2>&1
ls -la /tmp/whl; du -sh /tmp/qwgpu-27b; python3 --version
