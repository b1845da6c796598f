import json, sys, time, threading, urllib.request
# port, plain streams, constrained (regex) streams, tokens
port = int(sys.argv[1]); n = int(sys.argv[2]); m = int(sys.argv[3]); toks = int(sys.argv[4])
def req(i, out, constrained):
    body = {"model": "m27", "prompt": f"Stream {i}: once upon a time", "max_tokens": toks,
            "ignore_eos": True, "mtp": False, "temperature": 0}
    if constrained:
        body["response_format"] = {"type": "regex", "regex": "[a-z ]{1,4000}"}
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    t = time.time()
    j = json.load(urllib.request.urlopen(r, timeout=600))
    out[i] = (j["usage"]["completion_tokens"], time.time() - t, (j.get("timings") or {}).get("decode_tokens_per_s"), constrained)
out = {}
ths = [threading.Thread(target=req, args=(i, out, i >= n)) for i in range(n + m)]
t0 = time.time()
for t in ths: t.start()
for t in ths: t.join()
wall = time.time() - t0
tot = sum(v[0] for v in out.values())
print(f"server plain={n} regex={m}: {tot} tokens in {wall:.2f}s = {tot/wall:.1f} tok/s total; per request (tokens, s, decode tok/s, constrained):",
      [(v[0], round(v[1], 2), v[2] and round(v[2], 1), v[3]) for v in out.values()])
