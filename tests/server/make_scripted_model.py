#!/usr/bin/env python3
"""Builds a tiny "scripted" checkpoint for the server tests.

This checkpoint exists to script the model's output: its greedy continuation follows a fixed
token -> next-token table, so the server's reasoning, tool-call and stop-string paths can be
tested end to end with a real model in the real format (the embedded default model has random
weights and never writes a tool call or a think block by itself).

How: it takes the layers of the embedded default model (models/default: this architecture, MLX
affine 4-bit; --base) and the real Qwen3.6 tokenizer (tests/fixtures/qwen3.6-tokenizer;
--tokenizer), whatever vocabulary the base model has, and
  - zeroes every layer's output projection (attention o_proj, Gated-DeltaNet out_proj, MLP
    down_proj), so each layer adds exactly 0 to the residual stream and the hidden state at the
    final norm is the current token's embedding;
  - builds a new embedding with the Qwen3.6 vocabulary's 248,320 rows (random codes), in which
    each scripted token gets a random +-1 embedding code (near-orthogonal in `hidden` dimensions);
  - adds an untied lm_head whose row for token u is the sum of the codes of the tokens that
    must be followed by u. The final norm weight is 1, so logit(u | t) = <code_t, row_u>: `hidden`
    for the scripted successor, small cross terms for everything else.
Greedy decoding then depends only on the last token, so every scripted token is distinct and
each reply starts from the last token of its prompt:
  - "\\n" (198), the end of the thinking-mode generation prompt `<think>\\n`: a reasoning block,
    `</think>`, a Qwen XML tool call (get_weather, city "Paris", metric true), `<|im_end|>`;
  - "\\n\\n" (271), the end of the non-thinking prompt `<think>\\n\\n</think>\\n\\n`: plain
    content "Sunny and 21 degrees! STOP here: nothing more", `<|im_end|>`.
Text is split into tokens by a search that never reuses a token (any byte string the
vocabulary can spell works: the detokenizer only concatenates bytes).

Writes config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and script.json (the expected replies) to --out.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

THINK, END_THINK = 248068, 248069
TOOL_CALL, END_TOOL_CALL = 248058, 248059
IM_END = 248046
NEWLINE, DOUBLE_NEWLINE = 198, 271
FIRST_ADDED = 248044
ENDOFTEXT = 248044
# Embedding rows of the Qwen3.6 checkpoints (the tokenizer's 248,077 ids, padded).
VOCAB_ROWS = 248320

REASONING = "The user wants the weather in Paris in metric units, so I should call get_weather."
# Each token may appear once, and the vocabulary has few tokens with '>' (">", "><", "></",
# " >", ">P", ">true", ...), none that joins a newline to other text, while "\n" / "\n\n" start
# the two replies. So line breaks between tags are distinct whitespace tokens ("\r\n", "\t\n",
# ...), values sit directly inside their tags, and the function header has a space before its
# '>' (names are trimmed). It is a valid Qwen XML tool call with a string and a boolean argument.
AFTER_THINK = "\r\n\r\n"
TOOL_BODY = "\r\n<function=get_weather >\t\n<parameter=city>Paris</parameter><parameter=metric>true</parameter></function>\n\n\n"
ANSWER = "Sunny and 21 degrees! STOP here: nothing more"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def vocab_bytes(tokenizer_json):
    tok = json.load(open(tokenizer_json, encoding="utf-8"))
    inv = bytes_to_unicode()
    out = {}
    for s, i in tok["model"]["vocab"].items():
        out[i] = bytes(inv[ch] for ch in s)
    return out


def segment(text, by_bytes, used, reserved):
    """Splits `text` into vocabulary tokens, none in `used` or `reserved`, none repeated
    (depth-first, longest token first)."""
    data = text.encode("utf-8")
    max_len = max(len(b) for b in by_bytes)
    sys.setrecursionlimit(10000)
    budget = [200000]

    def go(pos, chosen):
        if pos == len(data):
            return chosen
        budget[0] -= 1
        if budget[0] < 0:
            return None
        for n in range(min(max_len, len(data) - pos), 0, -1):
            for tid in by_bytes.get(data[pos:pos + n], ()):
                if tid in used or tid in reserved or tid in chosen:
                    continue
                chosen.append(tid)
                r = go(pos + n, chosen)
                if r is not None:
                    return r
                chosen.pop()
        return None

    r = go(0, [])
    if r is None:
        raise SystemExit(f"cannot spell {text!r} with distinct tokens")
    used.update(r)
    return list(r)


def quantize(w, group=64, bits=4):
    """MLX affine quantization of a 2-D float array: (packed uint32, scales, biases)."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group).astype(np.float32)
    lo, hi = g.min(axis=2), g.max(axis=2)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    scale_bf = bf16_round(scale)
    bias_bf = bf16_round(lo)
    safe = np.where(scale_bf == 0, 1, scale_bf)
    q = np.clip(np.rint((g - bias_bf[..., None]) / safe[..., None]), 0, levels).astype(np.uint32)
    q = np.where(scale_bf[..., None] == 0, 0, q).reshape(rows, cols)
    per = 32 // bits
    q = q.reshape(rows, cols // per, per)
    packed = np.zeros((rows, cols // per), dtype=np.uint32)
    for k in range(per):
        packed |= q[:, :, k] << np.uint32(bits * k)
    return packed, to_bf16(scale_bf), to_bf16(bias_bf)


def dequantize(packed, scales, biases, group=64, bits=4):
    rows = packed.shape[0]
    per = 32 // bits
    q = np.stack([(packed >> np.uint32(bits * k)) & np.uint32((1 << bits) - 1) for k in range(per)], axis=2).reshape(rows, -1)
    s = from_bf16(scales).repeat(group, axis=1)
    b = from_bf16(biases).repeat(group, axis=1)
    return q.astype(np.float32) * s + b


def bf16_round(x):
    return from_bf16(to_bf16(x))


def to_bf16(x):
    """float32 -> bfloat16 bits (round to nearest even), as uint16."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def from_bf16(b):
    return (np.asarray(b).astype(np.uint32) << 16).view(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--base", default=os.path.join(here, "..", "..", "models", "default"),
                    help="checkpoint whose architecture and layers are used (its vocabulary and tokenizer are not)")
    ap.add_argument("--tokenizer", default=os.path.join(here, "..", "fixtures", "qwen3.6-tokenizer"),
                    help="directory with the Qwen3.6 tokenizer.json and tokenizer_config.json")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    base = os.path.abspath(args.base)
    tok_dir = os.path.abspath(args.tokenizer)
    vb = vocab_bytes(os.path.join(tok_dir, "tokenizer.json"))
    added = {t["content"]: t["id"] for t in json.load(open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8"))["added_tokens"]}
    expect = {"<think>": THINK, "</think>": END_THINK, "<tool_call>": TOOL_CALL, "</tool_call>": END_TOOL_CALL,
              "<|im_end|>": IM_END, "<|endoftext|>": ENDOFTEXT}
    if any(added.get(k) != v for k, v in expect.items()) or max(vb) >= VOCAB_ROWS:
        raise SystemExit(f"{tok_dir}/tokenizer.json is not the Qwen3.6 tokenizer (this script uses its ids)")
    by_bytes = {}
    for i, b in vb.items():
        if i < FIRST_ADDED and b:
            by_bytes.setdefault(b, []).append(i)

    used = set()
    reserved = {NEWLINE, DOUBLE_NEWLINE}
    reasoning = segment(REASONING, by_bytes, used, reserved)
    after_think = segment(AFTER_THINK, by_bytes, used, reserved)
    tool_body = segment(TOOL_BODY, by_bytes, used, reserved)
    answer = segment(ANSWER, by_bytes, used, reserved)
    # The replies (the first id follows the prompt's last token; EOS ends them).
    reply_a = reasoning + [END_THINK] + after_think + [TOOL_CALL] + tool_body + [END_TOOL_CALL, IM_END]
    reply_b = answer + [IM_END]
    table = {}
    for start, reply in ((NEWLINE, reply_a), (DOUBLE_NEWLINE, reply_b)):
        prev = start
        for t in reply:
            assert prev not in table, f"token {prev} would need two successors"
            table[prev] = t
            prev = t

    weights, dtypes = read_checkpoint(base)
    cfg = json.load(open(os.path.join(base, "config.json")))
    tc = cfg.get("text_config", cfg)
    hidden = tc["hidden_size"]
    vocab = VOCAB_ROWS
    qcfg = cfg["quantization"]
    group, bits = qcfg["group_size"], qcfg["bits"]
    emb = "language_model.model.embed_tokens"
    if dtypes.get(f"{emb}.weight") != "U32" or dtypes.get(f"{emb}.scales") != "BF16":
        raise SystemExit(f"{base}: expected an MLX affine-quantized embedding with bf16 scales")

    # Layers add nothing: zero output projections (weights, scales and biases all 0).
    for k in list(weights):
        if not k.startswith("language_model.model.layers."):
            continue
        if any(k.endswith(f"{p}.{part}") for p in ("self_attn.o_proj", "linear_attn.out_proj", "mlp.down_proj") for part in ("weight", "scales", "biases")):
            weights[k] = np.zeros_like(weights[k])
    weights["language_model.model.norm.weight"] = to_bf16(np.ones(hidden, dtype=np.float32))

    rng = np.random.default_rng(args.seed)
    # A new embedding with the Qwen3.6 vocabulary's rows: random codes, scale 1/64 around 0 (the
    # rows of tokens that are not scripted never matter).
    packed_cols = hidden * bits // 32
    base_q = rng.integers(0, 1 << 32, size=(vocab, packed_cols), dtype=np.uint32)
    base_s = np.full((vocab, hidden // group), to_bf16(np.float32(1 / 64)), dtype=np.uint16)
    base_b = np.full((vocab, hidden // group), to_bf16(np.float32(-((1 << bits) - 1) / 2 / 64)), dtype=np.uint16)
    for attempt in range(50):
        codes = {t: rng.choice([-1.0, 1.0], size=hidden).astype(np.float32) for t in table}
        # Embedding rows of the scripted inputs.
        emb_q, emb_s, emb_b = base_q.copy(), base_s.copy(), base_b.copy()
        ids = sorted(codes)
        q, s, b = quantize(np.stack([codes[t] for t in ids]), group, bits)
        emb_q[ids], emb_s[ids], emb_b[ids] = q, s, b
        # lm_head: row u = sum of the codes of u's predecessors; every other row is 0 (quantized:
        # codes, scale and bias 0).
        succ = sorted(set(table.values()))
        head = np.zeros((len(succ), hidden), dtype=np.float32)
        for t, u in table.items():
            head[succ.index(u)] += codes[t]
        sq, ss, sb = quantize(head, group, bits)
        hq = np.zeros((vocab, packed_cols), dtype=np.uint32)
        hs = np.zeros((vocab, hidden // group), dtype=np.uint16)
        hb = np.zeros((vocab, hidden // group), dtype=np.uint16)
        hq[succ], hs[succ], hb[succ] = sq, ss, sb
        # Check the table on the dequantized weights, with a margin (the zero rows give logit 0).
        hd = dequantize(sq, ss, sb, group, bits)
        ed = dequantize(q, s, b, group, bits)
        worst = np.inf
        ok = True
        for row, t in enumerate(ids):
            x = ed[row]
            h = x / np.sqrt(np.mean(x * x) + 1e-6)
            logits = np.zeros(vocab, dtype=np.float32)
            logits[succ] = hd @ h
            top = int(np.argmax(logits))
            second = np.partition(logits, -2)[-2]
            if top != table[t]:
                ok = False
                break
            worst = min(worst, float(logits[top] - second))
        if ok and worst >= 16:
            break
    else:
        raise SystemExit("could not find embedding codes with a safe margin")
    weights["language_model.model.embed_tokens.weight"] = emb_q
    weights["language_model.model.embed_tokens.scales"] = emb_s
    weights["language_model.model.embed_tokens.biases"] = emb_b
    weights["language_model.lm_head.weight"] = hq
    weights["language_model.lm_head.scales"] = hs
    weights["language_model.lm_head.biases"] = hb

    for k in ("weight", "scales", "biases"):
        dtypes[f"language_model.lm_head.{k}"] = dtypes[f"language_model.model.embed_tokens.{k}"]
    os.makedirs(args.out, exist_ok=True)
    write_safetensors(os.path.join(args.out, "model.safetensors"), weights, dtypes)

    cfg["tie_word_embeddings"] = False
    tc["tie_word_embeddings"] = False
    tc["vocab_size"] = vocab
    # The Qwen3.6 stop ids (the base model's may be of another vocabulary).
    for c in (cfg, tc):
        c.pop("eos_token_id", None)
        c.pop("bos_token_id", None)
    tc["eos_token_id"] = tc["bos_token_id"] = ENDOFTEXT
    json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    json.dump({"eos_token_id": [IM_END, ENDOFTEXT], "bos_token_id": ENDOFTEXT},
              open(os.path.join(args.out, "generation_config.json"), "w"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, f), os.path.join(args.out, f))

    def text(ids):
        return b"".join(vb[i] for i in ids).decode("utf-8")

    script = {
        "thinking_reply_ids": reply_a,
        "reasoning": text(reasoning),
        "tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "metric": True}},
        "plain_reply_ids": reply_b,
        "answer": text(answer),
        "margin": worst,
    }
    assert script["reasoning"] == REASONING and script["answer"] == ANSWER and text(tool_body) == TOOL_BODY
    json.dump(script, open(os.path.join(args.out, "script.json"), "w"), indent=2)
    print(f"scripted checkpoint in {args.out}: {len(table)} scripted transitions, logit margin {worst:.1f}")


# safetensors without a framework: bf16 tensors are kept as their uint16 bits.
NP_OF = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U32": np.uint32, "I32": np.int32, "U8": np.uint8}


def read_checkpoint(base):
    """All tensors of a checkpoint directory: model.safetensors, or the shards its index names."""
    index = os.path.join(base, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    tensors, dtypes = {}, {}
    for f in files:
        t, d = read_safetensors(os.path.join(base, f))
        tensors.update(t)
        dtypes.update(d)
    return tensors, dtypes


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    tensors, dtypes = {}, {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        tensors[k] = np.frombuffer(data[a:b], dtype=NP_OF[v["dtype"]]).reshape(v["shape"]).copy()
        dtypes[k] = v["dtype"]
    return tensors, dtypes


def write_safetensors(path, tensors, dtypes):
    header, chunks, off = {"__metadata__": {"format": "mlx"}}, [], 0
    for k in sorted(tensors):
        raw = np.ascontiguousarray(tensors[k].astype(NP_OF[dtypes[k]])).tobytes()
        header[k] = {"dtype": dtypes[k], "shape": list(tensors[k].shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    main()
