for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
tar -C /tmp -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
/tmp/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /dev/null
for i in 1 2; do
/tmp/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --batch 2 --json > $OUT/batch2_$i.json 2>$OUT/batch2_$i.err || tail -3 $OUT/batch2_$i.err
python3 -c "
import json;j=json.load(open('$OUT/batch2_$i.json'));b=j['batch_decode']
print('plain',round(j['decode_tokens_per_s']['p50'],2),'batch total',round(b['decode_tokens_per_s']['p50'],2),b['decode_tokens_per_s'],'x',round(b['total_over_plain'],3))"
done
