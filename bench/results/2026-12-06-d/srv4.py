import json, sys, time, threading, http.client
# port, label: three streamed completions (64, 64 and 400 tokens) start together; the long one
# ends up alone in slot 2. Its token rate once alone tells how many rows its steps run.
port = int(sys.argv[1]); label = sys.argv[2]
res = {}
def run(i, toks):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    body = {"model": "m27", "prompt": f"{label} stream {i}: once upon a time", "max_tokens": toks,
            "ignore_eos": True, "stream": True, "mtp": False}
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); times = []
    for line in r:
        line = line.strip()
        if line.startswith(b"data: {"):
            j = json.loads(line[6:])
            if j.get("choices") and j["choices"][0].get("text"):
                times.append(time.time())
    res[i] = times
ths = []
for i, toks in enumerate([64, 64, 400]):
    t = threading.Thread(target=run, args=(i, toks)); t.start(); ths.append(t); time.sleep(0.05)
for t in ths: t.join()
end_others = max(res[0][-1], res[1][-1])
c = res[2]
alone = [x for x in c if x > end_others + 0.05]
rate = (len(alone) - 1) / (alone[-1] - alone[0]) if len(alone) > 1 else 0
print(f"{label}: long stream {len(c)} deltas in {c[-1]-c[0]:.2f}s; alone after the others: {len(alone)} deltas at {rate:.1f} tok/s")
