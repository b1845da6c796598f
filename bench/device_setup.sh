# Set-up shared by the device-machine scripts (sourced from the repository root): the Vulkan
# loader from the carried .gl debs, NVIDIA's ICD, the carried release binaries
# (.carry/bins.tar.xz) unpacked into $C, `ts` for time-stamped lines, the synthetic 27B written
# once into /tmp/m27, and the GPU's name and clocks printed.
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
