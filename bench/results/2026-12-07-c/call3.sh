# Thirty-first session, third device call: real integer-plane matmuls chained as phases of one
# dispatch over a resident grid with a grid barrier between phases (`PERSIST_B`), against one
# dispatch per phase and the tile-queue form (`lab mmchain`, 8 phases of one 27B shape, 1 token;
# bits compared). Carries .gl and .carry/lab.tar.xz (`cargo bench -p engine --bench lab --no-run`).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/lab.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
for s in out_proj down in_proj gate_up; do
  ts $s
  timeout 200 $C/lab mmchain --phases 8 --reps 100 --roofline 3350 --shapes $s > $OUT/mmchain_$s.txt 2>&1
  grep -a mmchain $OUT/mmchain_$s.txt | sed 's/"bytes.*"GBps"/ GBps/' | cut -c1-160
done
ts done
