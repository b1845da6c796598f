# Persistent phases against one dispatch per phase (lab persist). Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
timeout 120 $C/lab persist --reps 20 > $R/persist.jsonl 2>&1; cat $R/persist.jsonl | grep -v "^  "
save
timeout 60 $C/lab chain --reps 20 > $R/chain.jsonl 2>&1; grep bench $R/chain.jsonl
save
