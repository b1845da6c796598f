# (3) The model tests against mlx-lm on the H200 (every fixture, the 2-, 3-, 5- and 6-bit ones
# included), with the defaults: tests/model_vs_mlx.rs built here
# (`cargo test --release -p qwgpu-tests --test model_vs_mlx --no-run`), carried stripped.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/t; mkdir -p /tmp/t; tar xJf .carry/tests.tar.xz -C /tmp/t
QWGPU_FIXTURES=$PWD/tests/fixtures/models timeout 300 /tmp/t/model_vs_mlx --test-threads 4 --nocapture > $OUT/output.txt 2>&1; echo rc=$?; grep -a -E "^test |test result|panicked" $OUT/output.txt
