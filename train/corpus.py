#!/usr/bin/env python3
"""Build the training corpus from the Rust documentation installed with the toolchain.

Source: `$(rustc --print sysroot)/share/doc/rust/html` (rustup's `rust-docs` component):
The Rust Programming Language, Rust by Example (English pages only), The Rust Reference,
the Rustonomicon, the Edition Guide, the Cargo, rustc and rustdoc books, the style guide,
the unstable book, the compiler error index and the `std`, `core` and `alloc` API documentation
(without the platform intrinsics). All of these are
dual licensed MIT / Apache-2.0 (see COPYRIGHT.html next to them). The embedded book (text under
CC-BY-SA) and the source-code viewer pages are not used.

Stages (all run by default):

1. extract: HTML -> markdown-like plain text. mdBook pages keep the contents of <main>; rustdoc
   pages keep only the doc blocks (prose and examples). Navigation, buttons, hidden example lines,
   anchors and tables are dropped; long code blocks are dropped, short ones kept in ``` fences.
   Paragraphs repeated anywhere earlier are removed (the same text appears on many pages).
   Also builds question/answer pairs from section headings and from rustdoc items, rendered
   later with the Qwen3.6 chat template so that chat-mode prompts see familiar text.
2. tokenizer: trains the byte-level BPE (train/tokenizer.py) on the text.
3. tokens: encodes documents and chat pairs, shuffled with a fixed seed, each followed by
   <|endoftext|>, into uint16 files `train.bin` / `val.bin`.

Outputs (under --out, default train/data): corpus.txt, chat.jsonl (both regenerable, ignored by
git), train.bin, val.bin, corpus.json (sources, licence, sizes). The tokenizer goes to
--tokenizer-dir (default train/tokenizer).

Usage: python train/corpus.py [--docs DIR] [--out DIR] [--max-train-tokens N] [--stages ...]
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import random
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent

LICENCE = "MIT OR Apache-2.0 (Rust project documentation, see COPYRIGHT.html in the docs folder)"

# (name, folder under html/, kind). Order = order in corpus.txt.
SOURCES = [
    ("book", "book", "mdbook"),
    ("rust-by-example", "rust-by-example", "mdbook"),
    ("reference", "reference", "mdbook"),
    ("nomicon", "nomicon", "mdbook"),
    ("edition-guide", "edition-guide", "mdbook"),
    ("cargo", "cargo", "mdbook"),
    ("rustc", "rustc", "mdbook"),
    ("rustdoc", "rustdoc", "mdbook"),
    ("style-guide", "style-guide", "mdbook"),
    ("unstable-book", "unstable-book", "mdbook"),
    ("error-codes", "error_codes", "mdbook"),
    ("std", "std", "rustdoc"),
    ("core", "core", "rustdoc"),
    ("alloc", "alloc", "rustdoc"),
]

SKIP_FILES = {"print.html", "toc.html", "404.html", "searchindex.html", "all.html", "index.html"}
# rustdoc sub-trees that are nearly all machine-generated or platform intrinsics.
SKIP_DIRS = {"arch", "intrinsics", "simd", "os", "2018-edition", "first-edition", "second-edition"}

VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "area", "base", "col", "embed", "source", "track"}
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "dt", "dd", "blockquote", "div", "section",
          "ul", "ol", "dl", "summary", "details", "table", "main", "article", "aside"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
MAX_CODE_LINES = 30


class Extract(HTMLParser):
    """HTML -> list of blocks (kind, text). kind: 'h1'..'h6', 'p', 'li', 'code', 'item' (rustdoc
    code header)."""

    def __init__(self, mode: str):
        super().__init__(convert_charrefs=True)
        self.mode = mode  # 'mdbook' | 'rustdoc'
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skip, region)
        self.skip = 0
        self.region = 0
        self.blocks: list[tuple[str, str]] = []
        self.buf: list[str] = []
        self.kind = "p"
        self.in_pre = 0
        self.lang = "en"
        self.title = ""
        self.in_title = False
        self.header_depth = 0  # inside rustdoc h4.code-header
        self.header_buf: list[str] = []

    # -- helpers -------------------------------------------------------------------------------
    def flush(self):
        text = "".join(self.buf)
        self.buf = []
        if self.kind == "code":
            lines = [l.rstrip() for l in text.strip("\n").split("\n")]
            if lines and any(l.strip() for l in lines):
                self.blocks.append(("code", "\n".join(lines)))
        else:
            text = re.sub(r"\s+", " ", text).strip()
            if text:
                self.blocks.append((self.kind, text))
        self.kind = "p"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "html":
            self.lang = (a.get("lang") or "en").lower()
        if tag == "title":
            self.in_title = True
        if tag in VOID:
            if tag == "br" and self.active():
                self.buf.append("\n" if self.in_pre else " ")
            return
        skip = (
            tag in ("script", "style", "nav", "button", "noscript", "template", "table", "svg", "form")
            or "boring" in cls
            or "test-arrow" in cls
            or "doc-anchor" in cls
            or "rightside" in cls
            or "hideme" in cls
            or "since" in cls
            or "buttons" in cls
            or "stab" in cls  # rustdoc stability badges
            or "tooltip" in cls
            or "sidebar" in cls
            or a.get("aria-hidden") == "true"
        )
        region = False
        if self.mode == "mdbook" and tag == "main":
            region = True
        if self.mode == "rustdoc" and tag == "div" and "docblock" in cls:
            region = True
        if self.mode == "rustdoc" and tag == "h4" and "code-header" in cls:
            self.header_depth += 1
        self.stack.append((tag, skip, region))
        self.skip += skip
        self.region += region
        if not self.active():
            return
        if tag in BLOCKS or tag in HEADINGS:
            self.flush()
            if tag in HEADINGS:
                self.kind = tag
            elif tag == "li":
                self.kind = "li"
            elif tag == "pre":
                self.kind = "code"
                self.in_pre += 1
            elif tag in ("dt",):
                self.kind = "li"
        elif tag == "code" and not self.in_pre:
            self.buf.append("`")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in VOID:
            return
        # pop to the matching tag (tolerates a few unclosed inline tags)
        idx = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                idx = i
                break
        if idx is None:
            return
        while len(self.stack) > idx:
            t, skip, region = self.stack.pop()
            was_active = self.active()
            if was_active:
                if t in BLOCKS or t in HEADINGS:
                    self.flush()
                    if t == "pre":
                        self.in_pre = max(0, self.in_pre - 1)
                elif t == "code" and not self.in_pre:
                    self.buf.append("`")
            if t == "h4" and self.header_depth:
                self.header_depth -= 1
                if self.header_depth == 0:
                    h = re.sub(r"\s+", " ", "".join(self.header_buf)).strip()
                    self.header_buf = []
                    if h:
                        self.blocks.append(("item", h))
            self.skip -= skip
            self.region -= region

    def active(self):
        return self.region > 0 and self.skip == 0

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.header_depth and self.skip == 0:
            self.header_buf.append(data)
        if self.active():
            self.buf.append(data)


def blocks_to_text(blocks):
    """Blocks -> markdown-like text. Long code blocks are dropped."""
    out = []
    for kind, text in blocks:
        if kind == "item":
            continue
        if kind in HEADINGS:
            out.append("#" * HEADINGS[kind] + " " + text)
        elif kind == "li":
            out.append("- " + text)
        elif kind == "code":
            if text.count("\n") + 1 > MAX_CODE_LINES:
                continue
            out.append("```\n" + text + "\n```")
        else:
            out.append(text)
    return out


def norm_key(par: str) -> str:
    return hashlib.sha1(re.sub(r"\s+", " ", par.lower()).strip().encode()).hexdigest()


def question_from_heading(h: str, rng: random.Random) -> str | None:
    h = h.strip().rstrip(".:")
    if len(h) < 4 or len(h) > 80 or h.lower() in {"examples", "example", "panics", "errors", "safety",
                                                  "summary", "introduction", "foreword", "see also"}:
        return None
    if h.endswith("?"):
        return h
    forms = ["Tell me about {}.", "Explain {}.", "What should I know about {}?", "Can you describe {}?"]
    keep = {"Rust", "Cargo", "I", "Unicode", "Rustdoc", "Clippy", "Windows", "Linux", "macOS"}
    words = [w if (w in keep or not re.fullmatch(r"[A-Z][a-z]+", w)) else w.lower() for w in h.split()]
    return rng.choice(forms).format(" ".join(words))


def mdbook_pairs(blocks, rng):
    """Question/answer pairs: a section heading as the question, its first prose paragraphs
    (up to ~600 characters) as the answer."""
    pairs = []
    i = 0
    while i < len(blocks):
        kind, text = blocks[i]
        if kind in ("h1", "h2", "h3"):
            q = question_from_heading(text, rng)
            ans = []
            j = i + 1
            taking = True
            while j < len(blocks) and blocks[j][0] not in HEADINGS:
                if blocks[j][0] != "p":
                    taking = False
                elif taking and len(" ".join(ans)) < 600:
                    ans.append(blocks[j][1])
                j += 1
            while ans and ans[-1].endswith(":"):
                ans.pop()
            if q and ans and len(ans[0]) > 60:
                pairs.append({"q": q, "a": "\n\n".join(ans)})
            i = j
        else:
            i += 1
    return pairs


def rustdoc_pairs(title, path, blocks, rng):
    """'What does X::f do?' -> the first paragraph of f's docs; 'What is X?' -> the item's
    first paragraph."""
    pairs = []
    m = re.match(r"([\w]+) in ([\w:]+) - Rust", title)
    item = m.group(1) if m else None
    item_kind = path.name.split(".")[0] if "." in path.name else ""
    if item_kind not in ("struct", "enum", "trait", "fn", "macro", "type", "primitive", "union", "constant"):
        item = None
    last_item = None
    seen_top = False
    for kind, text in blocks:
        if kind == "item":
            fm = re.match(r".*?\bfn (\w+)", text)
            last_item = fm.group(1) if fm else None
            continue
        if kind != "p" or len(text) < 20 or text.endswith(":"):
            continue
        if not seen_top and item and last_item is None:
            noun = {"fn": "function", "type": "type alias", "primitive": "primitive type"}.get(item_kind, item_kind)
            q = rng.choice(["What is `{1}` in Rust?", "What is the {0} `{1}`?", "Explain `{1}`."])
            q = q.format(noun, item)
            pairs.append({"q": q, "a": text})
            seen_top = True
        elif last_item and item:
            q = rng.choice(["What does `{0}::{1}` do?", "How does `{1}` on `{0}` work?",
                            "What is `{0}::{1}` for?"]).format(item, last_item)
            pairs.append({"q": q, "a": text})
            last_item = None
    return pairs


def iter_pages(root: Path, folder: str):
    base = root / folder
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not (
            folder == "rust-by-example" and d in {"es", "ja", "ko", "zh", "fr", "de", "pt-BR"}))
        for f in sorted(filenames):
            if f.endswith(".html") and f not in SKIP_FILES:
                yield Path(dirpath) / f


def extract(root: Path, out: Path, seed: int):
    rng = random.Random(seed)
    seen: set[str] = set()
    docs, pairs, stats = [], [], {}
    t0 = time.time()
    for name, folder, mode in SOURCES:
        n_pages = n_html = n_chars = 0
        for page in iter_pages(root, folder):
            raw = page.read_text(encoding="utf-8", errors="replace")
            if "http-equiv=\"refresh\"" in raw[:2000] or len(raw) < 500:
                continue  # redirect stubs
            n_html += len(raw)
            p = Extract(mode)
            try:
                p.feed(raw)
                p.close()
            except Exception as e:  # noqa: BLE001
                print(f"skip {page}: {e}", file=sys.stderr)
                continue
            if p.lang != "en" and not p.lang.startswith("en"):
                continue
            p.flush()
            kept = []
            for par in blocks_to_text(p.blocks):
                if len(par) < 3:
                    continue
                if len(par) >= 30:
                    k = norm_key(par)
                    if k in seen:
                        continue
                    seen.add(k)
                kept.append(par)
            # A page must keep some prose (not only headings/code) to count as a document.
            prose = sum(len(x) for x in kept if not x.startswith(("#", "```")))
            if prose < 200:
                continue
            text = "\n\n".join(kept)
            docs.append({"source": name, "path": str(page.relative_to(root)), "text": text})
            if mode == "mdbook":
                pairs += [dict(x, source=name) for x in mdbook_pairs(p.blocks, rng)]
            else:
                pairs += [dict(x, source=name) for x in rustdoc_pairs(p.title, page, p.blocks, rng)]
            n_pages += 1
            n_chars += len(text)
        stats[name] = {"folder": folder, "pages": n_pages, "html_bytes": n_html, "text_chars": n_chars}
        print(f"  {name:16s} pages {n_pages:5d}  html {n_html / 1e6:7.1f} MB  text {n_chars / 1e6:6.2f} MB"
              f"  ({time.time() - t0:.0f}s)", flush=True)
    # dedupe pairs by answer
    uniq, seen_a = [], set()
    for x in pairs:
        k = norm_key(x["a"])
        if k not in seen_a:
            seen_a.add(k)
            uniq.append(x)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.txt", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(d["text"])
            f.write("\n\n<|endoftext|>\n\n")
    with open(out / "chat.jsonl", "w", encoding="utf-8") as f:
        for x in uniq:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    with open(out / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"source": d["source"], "path": d["path"], "chars": len(d["text"])}) + "\n")
    return docs, uniq, stats


# --------------------------------------------------------------------------------------------
# Token files
# --------------------------------------------------------------------------------------------

def chat_ids(tok, q, a, think: bool):
    """Ids of one chat exchange exactly as the engine would see it: the prompt rendered by the
    Qwen3.6 template (generation prompt, thinking on or off) encoded on its own, then the
    answer the model should produce, ending with <|im_end|>."""
    prompt = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    if think:
        prompt += "<think>\n"
        completion = f"\n</think>\n\n{a}<|im_end|>"
    else:
        prompt += "<think>\n\n</think>\n\n"
        completion = f"{a}<|im_end|>"
    return tok.encode(prompt).ids + tok.encode(completion).ids


def build_tokens(out: Path, tok_dir: Path, max_train_tokens: int, val_frac: float, seed: int,
                 chat_frac: float):
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.get_vocab_size() <= 65535
    text = (out / "corpus.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    pairs = [json.loads(l) for l in (out / "chat.jsonl").read_text(encoding="utf-8").splitlines() if l]
    rng = random.Random(seed)
    t0 = time.time()
    enc_docs = [ids + [eot] for ids in (e.ids for e in tok.encode_batch(docs))]
    n_doc_tokens = sum(len(x) for x in enc_docs)
    # Chat exchanges: about chat_frac of the tokens (thinking-mode prompt in 3 of 4).
    rng.shuffle(pairs)
    enc_chat, n_chat = [], 0
    for x in pairs:
        if n_chat >= chat_frac * n_doc_tokens:
            break
        ids = chat_ids(tok, x["q"], x["a"], think=rng.random() < 0.75) + [eot]
        enc_chat.append(ids)
        n_chat += len(ids)
    print(f"  encoded {len(enc_docs)} documents ({n_doc_tokens} tokens) and {len(enc_chat)} chat"
          f" exchanges ({n_chat} tokens) in {time.time() - t0:.0f}s", flush=True)
    items = enc_docs + enc_chat
    rng.shuffle(items)
    n_val_target = int(val_frac * (n_doc_tokens + n_chat))
    val, train, n_val = [], [], 0
    for ids in items:
        if n_val < n_val_target:
            val.append(ids)
            n_val += len(ids)
        else:
            train.append(ids)
    flat = lambda xs: np.array([t for ids in xs for t in ids], dtype=np.uint16)  # noqa: E731
    tr, va = flat(train), flat(val)
    if max_train_tokens and len(tr) > max_train_tokens:
        tr = tr[:max_train_tokens]
    tr.tofile(out / "train.bin")
    va.tofile(out / "val.bin")
    return {"documents": len(enc_docs), "document_tokens": n_doc_tokens, "chat_exchanges": len(enc_chat),
            "chat_tokens": n_chat, "train_tokens": int(len(tr)), "val_tokens": int(len(va)),
            "train_bin_bytes": int(tr.nbytes), "val_bin_bytes": int(va.nbytes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=None, help="the html folder (default: from rustc)")
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--tokenizer-dir", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--vocab", type=int, default=8192, help="total vocabulary incl. special tokens")
    ap.add_argument("--max-train-tokens", type=int, default=0, help="cap on train.bin (0 = all)")
    ap.add_argument("--val-frac", type=float, default=0.01)
    ap.add_argument("--chat-frac", type=float, default=0.15, help="chat tokens / document tokens")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--stages", nargs="+", default=["extract", "tokenizer", "tokens"],
                    choices=["extract", "tokenizer", "tokens"])
    args = ap.parse_args()

    root = args.docs
    if root is None:
        sysroot = subprocess.check_output(["rustc", "--print", "sysroot"], text=True).strip()
        root = Path(sysroot) / "share/doc/rust/html"
    meta_path = args.out / "corpus.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "extract" in args.stages:
        print(f"extracting from {root}", flush=True)
        try:
            rustc = subprocess.check_output(["rustc", "--version"], text=True).strip()
        except Exception:  # noqa: BLE001
            rustc = "unknown"
        docs, pairs, stats = extract(root, args.out, args.seed)
        meta = {
            "source": "Rust documentation shipped with the toolchain (rustup component rust-docs)",
            "toolchain": rustc,
            "licence": LICENCE,
            "sources": stats,
            "documents": len(docs),
            "chat_pairs": len(pairs),
            "text_bytes": (args.out / "corpus.txt").stat().st_size,
        }
    if "tokenizer" in args.stages:
        sys.path.insert(0, str(HERE))
        from tokenizer import train_tokenizer

        print(f"training tokenizer (vocab {args.vocab})", flush=True)
        train_tokenizer([args.out / "corpus.txt"], args.tokenizer_dir, args.vocab)
        meta["tokenizer_vocab"] = args.vocab
    if "tokens" in args.stages:
        print("encoding", flush=True)
        meta["tokens"] = build_tokens(args.out, args.tokenizer_dir, args.max_train_tokens, args.val_frac,
                                      args.seed, args.chat_frac)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
