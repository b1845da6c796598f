import json, sys, time, threading, http.client
# port, label, newcomer prompt words: a streamed reply (A) decodes; after its 16th delta a
# request with a long prompt (B) arrives; A's delta times show how long it stalled.
port = int(sys.argv[1]); label = sys.argv[2]; words = int(sys.argv[3])
res = {}
def a():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    body = {"model": "m27", "prompt": f"{label}: once upon a time", "max_tokens": 600,
            "ignore_eos": True, "stream": True, "mtp": False}
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); times = []
    for line in r:
        line = line.strip()
        if line.startswith(b"data: {"):
            j = json.loads(line[6:])
            if j.get("choices") and j["choices"][0].get("text"):
                times.append(time.time())
                if len(times) == 16: res["go"].set()
    res["a"] = times
def b():
    res["go"].wait()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    text = label + " hello" * words
    body = {"model": "m27", "prompt": text, "max_tokens": 16, "ignore_eos": True, "mtp": False}
    t = time.time()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    j = json.loads(c.getresponse().read())
    if "usage" not in j: print("B failed:", j); raise SystemExit(1)
    res["b"] = (t, time.time(), j["usage"]["prompt_tokens"], (j.get("timings") or {}))
res["go"] = threading.Event()
ta, tb = threading.Thread(target=a), threading.Thread(target=b)
ta.start(); tb.start(); tb.join(); ta.join()
t0, t1, ptoks, timings = res["b"]
at = res["a"]
during = [x for x in at if t0 <= x <= t1]
gaps = [y - x for x, y in zip(at, at[1:])]
gaps_during = [y - x for x, y in zip(at, at[1:]) if y >= t0 and x <= t1]
print(f"{label}: B prompt {ptoks} tokens, B latency {t1 - t0:.2f}s (ttft {timings.get('ttft_s')}), "
      f"A deltas during B {len(during)}, A max gap {max(gaps):.3f}s, A median gap during B "
      f"{sorted(gaps_during)[len(gaps_during)//2] if gaps_during else 0:.4f}s, A median gap overall {sorted(gaps)[len(gaps)//2]:.4f}s")
