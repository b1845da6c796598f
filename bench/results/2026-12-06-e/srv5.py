import json, sys, time, threading, http.client
# port, label: three streamed completions that ask for MTP (64, 64 and 600 tokens) start
# together; the first speculates alone until the others arrive, then all three decode in the
# batch; once the short ones end, the long one is alone. Its token rate after that, and its
# longest pause (the resume's prefill), tell whether it speculates again.
port = int(sys.argv[1]); label = sys.argv[2]
res = {}; final = {}
def run(i, toks):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    body = {"model": "m27", "prompt": f"{label} stream {i}: once upon a time", "max_tokens": toks,
            "ignore_eos": True, "stream": True, "mtp": True}
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); times = []
    for line in r:
        line = line.strip()
        if line.startswith(b"data: {"):
            j = json.loads(line[6:])
            if j.get("choices") and j["choices"][0].get("text"):
                times.append(time.time())
            if j.get("timings"):
                final[i] = j["timings"]
    res[i] = times
ths = []
for i, toks in enumerate([64, 64, 600]):
    t = threading.Thread(target=run, args=(i, toks)); t.start(); ths.append(t); time.sleep(0.05)
for t in ths: t.join()
end_others = max(res[0][-1], res[1][-1])
c = res[2]
alone = [x for x in c if x > end_others]
gaps = [b - a for a, b in zip([end_others] + alone[:-1], alone)]
rate = (len(alone) - 1) / (alone[-1] - alone[0]) if len(alone) > 1 else 0
m = final.get(2, {}).get("mtp")
print(f"{label}: long stream {len(c)} deltas in {c[-1]-c[0]:.2f}s; after the others: {len(alone)} deltas in {alone[-1]-end_others:.2f}s, {rate:.1f} deltas/s, longest gap {max(gaps)*1000:.0f} ms; mtp {m}")
