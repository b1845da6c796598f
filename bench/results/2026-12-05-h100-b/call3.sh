# Eighteenth session, third device call: what the fused Gated-DeltaNet recurrence's time is made
# of. Timing-only variants of shaders/gdn_recurrence.wgsl (wrong outputs; made here with python
# from the committed shader, loaded through QWGPU_SHADER_DIR), each timed alone in the kernel
# lab's layer breakdown (`lab layer --breakdown`, 27B shapes, 1 and 2 tokens):
#   full       the committed shader
#   empty      returns at once (launch and drain of 48 workgroups of 512 threads)
#   state      loads and stores the state, runs no token (T = 0)
#   no_state   the token loop on a zero state, nothing stored
#   no_qknorm  without the q/k normalization (its partial sums, tree and scaling)
#   no_gated   without the gated norm's sum of squares and tree
#   no_xq      without the output planes (their barrier and writes)
# Carries .gl and .carry/lab.tar.xz (the lab bench binary, `cargo bench -p engine --bench lab --no-run`).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/lab.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
python3 - <<'PY'
import os, shutil, re
src = open('shaders/gdn_recurrence.wgsl').read()
def cut(s, a, b, new):
    i = s.index(a); j = s.index(b, i)
    return s[:i] + new + s[j:]
v = {}
v['full'] = src
v['empty'] = src.replace("    let wg = wg_linear(wid, nwg);\n", "    let wg = wg_linear(wid, nwg);\n    if (p.n_v_heads > 0u) { return; }\n", 1)
v['state'] = src.replace("let T = min(step.n_tokens, p.rows_cap);", "let T = min(step.n_tokens, p.rows_cap) * 0u;", 1)
s = src.replace("s[j] = state[sbase + lane + LANES * j];", "s[j] = vec4<f32>(f32(lane) * 1e-3);", 1)
s = s.replace("            s[j] = snap[sbase + lane + LANES * j];", "            s[j] = vec4<f32>(f32(lane) * 2e-3);", 1)
s = s.replace("            state[sbase + lane + LANES * j] = s[j];", "            if (s[j].x == 12345.0) { state[sbase] = s[j]; }", 1)
v['no_state'] = s
v['no_qknorm'] = cut(src, "        // gdn_prep's normalization", "        for (var i = lid; i < 2u * dk4; i += WG) {", "        let inv_k = 1.0;\n        let inv_q = 1.0;\n")
v['no_gated'] = cut(src, "        // gated_norm.wgsl's order", "        if (live && lane == 0u) {\n#if PREP", "        let inv = 1.0;\n")
v['no_xq'] = src.replace("        workgroupBarrier();\n        let nwd = p.dv / 8u;", "        let nwd = 0u;", 1)
for name, text in v.items():
    assert name == 'full' or text != src, name
    d = f'/tmp/sh_{name}'
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree('shaders', d)
    open(f'{d}/gdn_recurrence.wgsl', 'w').write(text)
print('variants', list(v))
PY
for name in full empty state no_state no_qknorm no_gated no_xq full; do
  ts $name
  QWGPU_SHADER_DIR=/tmp/sh_$name timeout 60 $C/lab layer --breakdown --reps 200 > $OUT/$name.txt 2>&1
  grep -a -E "recurrence|bench\": \"layer linear" $OUT/$name.txt | head -8
done
ts done
