#!/usr/bin/env python3
"""Train a Qwen-style byte-level BPE tokenizer on the corpus.

Same pipeline as the Qwen3.5/3.6 tokenizer.json (NFC normalizer, the Qwen3.5 split regex
(isolated), ByteLevel without prefix space or regex, ByteLevel decoder, ignore_merges), a
smaller learned vocabulary, and the 33 Qwen3.6 added tokens (<|endoftext|>, <|im_start|>,
<|im_end|>, ..., <think>, </think>, <tool_call>, ...) appended after the learned tokens in the
Qwen order with the Qwen `special` flags. tokenizer_config.json copies the Qwen3.6 one (chat
template included; tests/fixtures/qwen3.6-tokenizer or models/default) with the ids renumbered.

Usage: python train/tokenizer.py [--corpus FILE] [--out DIR] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special) in Qwen3.6 id order (248044..248076).
ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False), ("<|audio_start|>", True),
    ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True), ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True), ("<|audio_pad|>", True),
]


def iter_corpus(files):
    """Documents as training units (the <|endoftext|> separators are not text)."""
    for f in files:
        text = Path(f).read_text(encoding="utf-8")
        for doc in text.split("<|endoftext|>"):
            doc = doc.strip()
            if doc:
                yield doc


def train_tokenizer(files, out_dir: Path, vocab_total: int = 8192):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    from tokenizers import processors

    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    learned = vocab_total - len(ADDED)
    trainer = trainers.BpeTrainer(
        vocab_size=learned,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(iter_corpus(files), trainer=trainer)
    n_learned = tok.get_vocab_size()
    for content, special in ADDED:
        t = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    write_tokenizer_config(out_dir, {c: tok.token_to_id(c) for c, _ in ADDED})
    print(f"  tokenizer: {n_learned} learned + {len(ADDED)} added = {tok.get_vocab_size()} ids -> {out_dir}")
    return tok


def write_tokenizer_config(out_dir: Path, ids: dict):
    # The Qwen3.6 tokenizer_config.json (chat template, added-token flags): the copy in
    # tests/fixtures/qwen3.6-tokenizer or models/default, else the one already written here
    # (derived from it; ids are renumbered by content below, so any source gives the same file).
    for cand in (REPO / "tests/fixtures/qwen3.6-tokenizer/tokenizer_config.json",
                 REPO / "models/default/tokenizer_config.json", out_dir / "tokenizer_config.json",
                 HERE / "tokenizer/tokenizer_config.json"):
        if cand.exists() and "chat_template" in json.loads(cand.read_text()):
            src = json.loads(cand.read_text())
            break
    else:
        raise SystemExit("no Qwen3.6 tokenizer_config.json with a chat template found")
    old_by_content = {v["content"]: v for v in src.get("added_tokens_decoder", {}).values()}
    dec = {}
    for content, special in ADDED:
        entry = dict(old_by_content.get(content, {}))
        entry.update({"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": special})
        dec[str(ids[content])] = dict(sorted(entry.items()))
    cfg = dict(src)
    cfg["added_tokens_decoder"] = dec
    cfg["model_max_length"] = 8192
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, nargs="+", default=[HERE / "data/corpus.txt"])
    ap.add_argument("--out", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    train_tokenizer(args.corpus, args.out, args.vocab)


if __name__ == "__main__":
    main()
