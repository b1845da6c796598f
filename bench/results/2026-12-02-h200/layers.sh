# One 27B-shaped layer of each kind at position 1024, 1 / 2 / 1024 tokens, and each of its
# dispatches alone (kernel lab `layer --breakdown`): attention decode, the Gated-DeltaNet step
# and the prompt path next to the matmuls.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/lab layer --breakdown --reps 100 --pos 1024 --prefill 1024 > $OUT/layers.jsonl 2>&1; grep '"bench\|"part' $OUT/layers.jsonl
