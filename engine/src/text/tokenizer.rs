//! The tokenizer: a Hugging Face `tokenizer.json` (byte-level BPE for Qwen3.5 / Qwen3.6) run by the
//! `tokenizers` crate, plus a converter from tiktoken rank files.
//!
//! The regex engine is fancy-regex on every target (no Oniguruma), so native builds and the
//! browser split text identically. Added tokens (`<|im_start|>`, `<think>`, ...) written in the
//! text are recognised as whole strings when `special` is true (Hugging Face behaviour) and are
//! plain text otherwise. No BOS is ever added: the chat template provides every control token.

use std::io::Read;
use std::path::Path;

use tokenizers as tk;
use tokenizers::{Model, Normalizer, PreTokenizer};

use super::{Result, TextError};

/// The pre-tokenizer split pattern of Qwen3.5 / Qwen3.6 (combining marks belong to letter runs).
pub const QWEN3_5_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The 33 added tokens of the Qwen3.5 / Qwen3.6 vocabulary, at ids 248044..=248076.
pub const QWEN3_5_SPECIAL_TOKENS: [(u32, &str); 33] = [
    (248044, "<|endoftext|>"),
    (248045, "<|im_start|>"),
    (248046, "<|im_end|>"),
    (248047, "<|object_ref_start|>"),
    (248048, "<|object_ref_end|>"),
    (248049, "<|box_start|>"),
    (248050, "<|box_end|>"),
    (248051, "<|quad_start|>"),
    (248052, "<|quad_end|>"),
    (248053, "<|vision_start|>"),
    (248054, "<|vision_end|>"),
    (248055, "<|vision_pad|>"),
    (248056, "<|image_pad|>"),
    (248057, "<|video_pad|>"),
    (248058, "<tool_call>"),
    (248059, "</tool_call>"),
    (248060, "<|fim_prefix|>"),
    (248061, "<|fim_middle|>"),
    (248062, "<|fim_suffix|>"),
    (248063, "<|fim_pad|>"),
    (248064, "<|repo_name|>"),
    (248065, "<|file_sep|>"),
    (248066, "<tool_response>"),
    (248067, "</tool_response>"),
    (248068, "<think>"),
    (248069, "</think>"),
    (248070, "<|audio_start|>"),
    (248071, "<|audio_end|>"),
    (248072, "<tts_pad>"),
    (248073, "<tts_text_bos>"),
    (248074, "<tts_text_eod>"),
    (248075, "<tts_text_bos_single>"),
    (248076, "<|audio_pad|>"),
];

/// Whether an added token of a Qwen vocabulary is flagged `special` in its tokenizer.json (and so
/// dropped by `decode(.., skip_special = true)`). Tool-call, tool-response, think and
/// fill-in-the-middle markers are not special: they stay in decoded text.
pub fn qwen_token_is_special(token: &str) -> bool {
    !matches!(
        token,
        "<tool_call>"
            | "</tool_call>"
            | "<|fim_prefix|>"
            | "<|fim_middle|>"
            | "<|fim_suffix|>"
            | "<|fim_pad|>"
            | "<|repo_name|>"
            | "<|file_sep|>"
            | "<tool_response>"
            | "</tool_response>"
            | "<think>"
            | "</think>"
    )
}

/// Ids of the control tokens the engine acts on, looked up by their text (None when the vocabulary
/// has no such token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlTokens {
    /// `<|endoftext|>`
    pub endoftext: Option<u32>,
    /// `<|im_start|>`
    pub im_start: Option<u32>,
    /// `<|im_end|>` (the chat turn terminator)
    pub im_end: Option<u32>,
    /// `<think>`
    pub think: Option<u32>,
    /// `</think>`
    pub think_end: Option<u32>,
    /// `<tool_call>`
    pub tool_call: Option<u32>,
    /// `</tool_call>`
    pub tool_call_end: Option<u32>,
}

impl ControlTokens {
    fn lookup(t: &tk::Tokenizer) -> Self {
        let id = |s: &str| t.token_to_id(s);
        ControlTokens {
            endoftext: id("<|endoftext|>"),
            im_start: id("<|im_start|>"),
            im_end: id("<|im_end|>"),
            think: id("<think>"),
            think_end: id("</think>"),
            tool_call: id("<tool_call>"),
            tool_call_end: id("</tool_call>"),
        }
    }

    /// The stop ids every chat generation uses: `<|im_end|>` then `<|endoftext|>`, those present.
    pub fn stop_ids(&self) -> Vec<u32> {
        [self.im_end, self.endoftext]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// A loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tk::Tokenizer,
    controls: ControlTokens,
    source: String,
    /// Added tokens by id: (content, special).
    added: std::collections::HashMap<u32, (String, bool)>,
    /// The byte-level alphabet's inverse, when the decoder is ByteLevel.
    byte_of: Option<std::collections::HashMap<char, u8>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("controls", &self.controls)
            .finish()
    }
}

fn format_err(source_name: &str, message: impl std::fmt::Display) -> TextError {
    TextError::Format {
        source_name: source_name.to_string(),
        message: message.to_string(),
    }
}

/// Whether `bytes` start with the gzip magic number.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

fn gunzip(bytes: &[u8], source_name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format_err(source_name, format!("not a valid gzip stream: {e}")))?;
    Ok(out)
}

impl Tokenizer {
    /// Wraps an already built `tokenizers::Tokenizer`; `source` names it in errors.
    pub fn from_tokenizers(inner: tk::Tokenizer, source: &str) -> Self {
        let controls = ControlTokens::lookup(&inner);
        let added = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, (t.content, t.special)))
            .collect();
        let byte_of = match inner.get_decoder() {
            Some(tk::DecoderWrapper::ByteLevel(_)) => Some(
                bytes_to_unicode()
                    .iter()
                    .enumerate()
                    .map(|(b, &c)| (c, b as u8))
                    .collect(),
            ),
            _ => None,
        };
        Tokenizer {
            inner,
            controls,
            source: source.to_string(),
            added,
            byte_of,
        }
    }

    /// Loads a tokenizer.json from memory (plain or gzip-compressed, detected by its magic number);
    /// `source` names it in errors (a path, or e.g. "embedded tokenizer.json.gz").
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let unzipped;
        let json = if is_gzip(bytes) {
            unzipped = gunzip(bytes, source)?;
            &unzipped[..]
        } else {
            bytes
        };
        if json.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(format_err(
                source,
                "empty file, expected a tokenizer.json document",
            ));
        }
        let inner = tk::Tokenizer::from_bytes(json)
            .map_err(|e| format_err(source, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self::from_tokenizers(inner, source))
    }

    /// Loads a tokenizer.json (or a gzip-compressed tokenizer.json.gz) file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TextError::Io {
            path: name.clone(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &name)
    }

    /// The tokenizer of a checkpoint directory: `tokenizer.json`, else `tokenizer.json.gz`.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        for name in ["tokenizer.json", "tokenizer.json.gz"] {
            let p = dir.join(name);
            if p.is_file() {
                return Self::from_file(p);
            }
        }
        Err(TextError::Io {
            path: dir.display().to_string(),
            message: "no tokenizer.json (or tokenizer.json.gz) in this directory".to_string(),
        })
    }

    /// Where this tokenizer was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tk::Tokenizer {
        &self.inner
    }

    /// Token ids of `text` (NFC-normalized first). With `special` true, added tokens written in the
    /// text (`<|im_start|>`, `<think>`, ...) become their ids; with `special` false they are
    /// tokenized as plain text. No BOS or other token is added.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        if special {
            let enc = self
                .inner
                .encode_fast(text, false)
                .map_err(|e| TextError::Encode(e.to_string()))?;
            return Ok(enc.get_ids().to_vec());
        }
        // The same pipeline without the added-token pass: normalize, pre-tokenize, model.
        let err = |e: tk::Error| TextError::Encode(e.to_string());
        let mut pre = tk::PreTokenizedString::from(text);
        if let Some(n) = self.inner.get_normalizer() {
            pre.normalize(|s| n.normalize(s)).map_err(err)?;
        }
        if let Some(p) = self.inner.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre).map_err(err)?;
        }
        let model = self.inner.get_model();
        pre.tokenize(|s| model.tokenize(s.get())).map_err(err)?;
        let enc = pre
            .into_encoding(None, 0, tk::OffsetType::None)
            .map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`. With `skip_special`, tokens flagged special in tokenizer.json are left out
    /// (for Qwen: `<|im_end|>` etc., but not `<think>` or `<tool_call>`). Invalid UTF-8 (a partial
    /// character at either end) becomes U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            return Err(TextError::Decode(format!(
                "id {id} at position {i} is not in the vocabulary of {} ({n} tokens)",
                self.source
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TextError::Decode(e.to_string()))
    }

    /// The vocabulary entry of `id` (byte-level form for BPE tokens, e.g. "Ġthe"), None if unknown.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or added token, None if unknown.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of token ids, added tokens included (248,077 for Qwen3.5 / Qwen3.6; the model's
    /// embedding has more rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the highest id this tokenizer can produce (the vocabulary and the added tokens).
    pub fn id_bound(&self) -> usize {
        let added = self
            .added
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        self.vocab_size().max(added)
    }

    /// Checks that this tokenizer can be the one of a model whose embedding has `model_vocab` rows
    /// and whose stop ids are `eos_ids` (config.json / generation_config.json): every id it
    /// produces must have an embedding row (the model's table may be larger, e.g. Qwen3.6 pads
    /// 248,077 ids to 248,320 rows), and the model's EOS ids must be tokens of this vocabulary.
    /// Pairing a checkpoint with another model's tokenizer (a 248k-id Qwen3.6 tokenizer with a
    /// small-vocabulary model, or the reverse) fails here with both sizes named, instead of
    /// encoding out-of-range ids or silently dropping every generated id it cannot decode.
    pub fn check_model(&self, model_vocab: usize, eos_ids: &[u32]) -> Result<()> {
        let n = self.id_bound();
        let mismatch = |message: String| TextError::ModelMismatch {
            source_name: self.source.clone(),
            message,
        };
        if n > model_vocab {
            return Err(mismatch(format!(
                "this tokenizer has {n} token ids but the model's embedding has only {model_vocab} rows \
                 (vocab_size in config.json): it is not this model's tokenizer"
            )));
        }
        if let Some(&e) = eos_ids
            .iter()
            .find(|&&e| self.inner.id_to_token(e).is_none())
        {
            return Err(mismatch(format!(
                "the model's end-of-sequence id {e} (config.json / generation_config.json) is not in this \
                 tokenizer's vocabulary of {n} ids, while the model's embedding has {model_vocab} rows: \
                 it is not this model's tokenizer"
            )));
        }
        Ok(())
    }

    /// Ids of the control tokens.
    pub fn controls(&self) -> &ControlTokens {
        &self.controls
    }

    /// The added tokens as (id, content, special), by id.
    pub fn added_tokens(&self) -> Vec<(u32, String, bool)> {
        let mut v: Vec<(u32, String, bool)> = self
            .added
            .iter()
            .map(|(&id, (c, s))| (id, c.clone(), *s))
            .collect();
        v.sort_by_key(|t| t.0);
        v
    }

    /// Whether `id` is an added token flagged special.
    pub fn is_special(&self, id: u32) -> bool {
        self.added.get(&id).is_some_and(|t| t.1)
    }

    /// The bytes a token stands for (an added token's text; a byte-level BPE token's raw bytes,
    /// which may be part of a UTF-8 character), for streaming detokenization. None for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if let Some((content, _)) = self.added.get(&id) {
            return Some(content.as_bytes().to_vec());
        }
        let token = self.inner.id_to_token(id)?;
        match &self.byte_of {
            Some(map) => token.chars().map(|c| map.get(&c).copied()).collect(),
            None => self.inner.decode(&[id], false).ok().map(String::into_bytes),
        }
    }

    /// The tokenizer.json text.
    pub fn to_json(&self, pretty: bool) -> Result<String> {
        self.inner
            .to_string(pretty)
            .map_err(|e| format_err(&self.source, format!("cannot serialize: {e}")))
    }

    /// The BPE vocabulary as a tiktoken rank file (one `base64(token bytes) rank` line per token, by
    /// rank; added tokens are not part of it). Only for byte-level BPE tokenizers.
    pub fn to_tiktoken(&self) -> Result<String> {
        let tk::models::ModelWrapper::BPE(bpe) = self.inner.get_model() else {
            return Err(format_err(&self.source, "the model is not BPE"));
        };
        let vocab = bpe.get_vocab();
        let mut by_rank: Vec<Option<&str>> = vec![None; vocab.len()];
        for (tok, &id) in &vocab {
            let slot = by_rank.get_mut(id as usize).ok_or_else(|| {
                format_err(
                    &self.source,
                    format!(
                        "BPE id {id} of '{tok}' is not below the vocabulary size {}",
                        vocab.len()
                    ),
                )
            })?;
            *slot = Some(tok);
        }
        let dec = unicode_to_byte();
        let mut out = String::with_capacity(vocab.len() * 16);
        for (rank, tok) in by_rank.iter().enumerate() {
            let tok = tok.ok_or_else(|| {
                format_err(
                    &self.source,
                    format!("BPE ids are not contiguous: {rank} is missing"),
                )
            })?;
            let mut bytes = Vec::with_capacity(tok.len());
            for c in tok.chars() {
                let b = dec(c).ok_or_else(|| {
                    format_err(
                        &self.source,
                        format!("token {rank} '{tok}' is not byte-level (character {c:?})"),
                    )
                })?;
                bytes.push(b);
            }
            out.push_str(&base64_encode(&bytes));
            out.push(' ');
            out.push_str(&rank.to_string());
            out.push('\n');
        }
        Ok(out)
    }
}

/// `text` in Unicode normalization form C (what the Qwen tokenizer applies before splitting).
pub fn nfc(text: &str) -> String {
    let mut n = tk::NormalizedString::from(text);
    match tk::normalizers::unicode::NFC.normalize(&mut n) {
        Ok(()) => n.get().to_string(),
        Err(_) => text.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// tiktoken -> tokenizer.json

/// GPT-2's byte -> printable character map used by byte-level BPE vocabularies.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    map
}

/// The inverse of [`bytes_to_unicode`].
fn unicode_to_byte() -> impl Fn(char) -> Option<u8> {
    let map = bytes_to_unicode();
    let mut inv = std::collections::HashMap::with_capacity(256);
    for (b, c) in map.iter().enumerate() {
        inv.insert(*c, b as u8);
    }
    move |c| inv.get(&c).copied()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 != 0 {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci + 1 == s.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut v = 0u32;
        for &c in &chunk[..4 - pad] {
            v = v << 6 | val(c)?;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Parses a tiktoken rank file (`base64(token bytes) rank` per line) into the tokens by rank.
/// Ranks must be 0..n without gaps or duplicates, and every single byte must be a token.
pub fn parse_tiktoken(data: &[u8], source_name: &str) -> Result<Vec<Vec<u8>>> {
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut seen = std::collections::HashMap::<Vec<u8>, usize>::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(b64), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format_err(
                source_name,
                format!("line {line_no}: expected '<base64 token> <rank>'"),
            ));
        };
        let token = base64_decode(b64)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format_err(
                    source_name,
                    format!(
                        "line {line_no}: invalid base64 token '{}'",
                        String::from_utf8_lossy(b64)
                    ),
                )
            })?;
        let rank: usize = std::str::from_utf8(rank)
            .ok()
            .and_then(|r| r.parse().ok())
            .filter(|&r: &usize| r < u32::MAX as usize / 2)
            .ok_or_else(|| {
                format_err(
                    source_name,
                    format!(
                        "line {line_no}: invalid rank '{}'",
                        String::from_utf8_lossy(rank)
                    ),
                )
            })?;
        if let Some(prev) = seen.insert(token.clone(), line_no) {
            return Err(format_err(
                source_name,
                format!("line {line_no}: token {token:?} already defined on line {prev}"),
            ));
        }
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].is_some() {
            return Err(format_err(
                source_name,
                format!("line {line_no}: rank {rank} is used twice"),
            ));
        }
        by_rank[rank] = Some(token);
    }
    if by_rank.is_empty() {
        return Err(format_err(source_name, "no tokens"));
    }
    let tokens: Vec<Vec<u8>> = by_rank
        .into_iter()
        .enumerate()
        .map(|(r, t)| {
            t.ok_or_else(|| {
                format_err(
                    source_name,
                    format!("ranks must be 0..n without gaps; rank {r} is missing"),
                )
            })
        })
        .collect::<Result<_>>()?;
    for b in 0..=255u8 {
        if !seen.contains_key(&[b][..]) {
            return Err(format_err(
                source_name,
                format!("byte 0x{b:02x} is not a token (a byte-level BPE needs all 256 bytes)"),
            ));
        }
    }
    Ok(tokens)
}

/// The BPE merges equivalent to a tiktoken rank table: for each token, in rank order, the pair of
/// tokens that byte-pair encoding of its bytes with only lower ranks ends with, when that is
/// exactly two parts (tokens that no such pair builds get no merge; they are still found whole
/// because the model ignores merges for pieces that are already a token).
/// Returns (left rank, right rank) pairs.
pub fn merges_from_ranks(tokens: &[Vec<u8>]) -> Vec<(u32, u32)> {
    let ranks: std::collections::HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let mut merges = Vec::with_capacity(tokens.len());
    let mut bounds: Vec<usize> = Vec::new();
    for (rank, tok) in tokens.iter().enumerate() {
        if tok.len() < 2 {
            continue;
        }
        bounds.clear();
        bounds.extend(0..=tok.len());
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..bounds.len().saturating_sub(2) {
                if let Some(&r) = ranks.get(&tok[bounds[i]..bounds[i + 2]]) {
                    if (r as usize) < rank && best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            match best {
                Some((_, i)) => {
                    bounds.remove(i + 1);
                }
                None => break,
            }
        }
        if bounds.len() == 3 {
            let (l, r) = (&tok[..bounds[1]], &tok[bounds[1]..]);
            merges.push((ranks[l], ranks[r]));
        }
    }
    merges
}

/// Builds a byte-level BPE tokenizer from a tiktoken rank file that tokenizes exactly like
/// tiktoken with the same ranks, split pattern and special tokens (after NFC normalization, as the
/// Qwen tokenizer does): NFC normalizer; pre-tokenizer = Split(`pattern`, isolated) then ByteLevel
/// (no prefix space, no regex); BPE with merges from [`merges_from_ranks`] and `ignore_merges`;
/// ByteLevel decoder; `special_tokens` as added tokens (special flag per
/// [`qwen_token_is_special`]). The added-token ids must follow the vocabulary without gaps.
pub fn from_tiktoken(
    tiktoken: &[u8],
    special_tokens: &[(u32, &str)],
    pattern: &str,
) -> Result<Tokenizer> {
    const SRC: &str = "tiktoken file";
    let tokens = parse_tiktoken(tiktoken, SRC)?;
    let enc = bytes_to_unicode();
    let to_str = |b: &[u8]| b.iter().map(|&x| enc[x as usize]).collect::<String>();
    let strings: Vec<String> = tokens.iter().map(|t| to_str(t)).collect();
    let merges: Vec<(String, String)> = merges_from_ranks(&tokens)
        .into_iter()
        .map(|(l, r)| (strings[l as usize].clone(), strings[r as usize].clone()))
        .collect();
    let vocab: tk::models::bpe::Vocab = strings
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i as u32))
        .collect();
    let bpe = tk::models::bpe::BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(|e| format_err(SRC, format!("cannot build the BPE model: {e}")))?;

    let mut t = tk::Tokenizer::new(bpe);
    t.with_normalizer(Some(tk::normalizers::unicode::NFC))
        .map_err(|e| format_err(SRC, format!("normalizer: {e}")))?;
    let split = tk::pre_tokenizers::split::Split::new(
        tk::pre_tokenizers::split::SplitPattern::Regex(pattern.to_string()),
        tk::SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| format_err("split pattern", format!("invalid regex: {e}")))?;
    let byte_level = tk::pre_tokenizers::byte_level::ByteLevel::new(false, false, false);
    t.with_pre_tokenizer(Some(tk::pre_tokenizers::sequence::Sequence::new(vec![
        split.into(),
        byte_level.into(),
    ])));
    t.with_post_processor(Some(byte_level));
    t.with_decoder(Some(byte_level));

    let mut specials: Vec<(u32, &str)> = special_tokens.to_vec();
    specials.sort_by_key(|s| s.0);
    for (next, (id, content)) in (tokens.len() as u32..).zip(specials) {
        if content.is_empty() {
            return Err(format_err(
                "special tokens",
                format!("id {id}: empty token"),
            ));
        }
        if id != next {
            return Err(format_err(
                "special tokens",
                format!("'{content}' has id {id}, but added tokens must follow the {} vocabulary ids without gaps (expected {next})", tokens.len()),
            ));
        }
        if t.token_to_id(content).is_some() {
            return Err(format_err(
                "special tokens",
                format!("'{content}' (id {id}) is already in the vocabulary"),
            ));
        }
        let special = qwen_token_is_special(content);
        let added = tk::AddedToken::from(content, special).normalized(false);
        if special {
            t.add_special_tokens([added])
                .map_err(|e| format_err("special tokens", e))?;
        } else {
            t.add_tokens([added])
                .map_err(|e| format_err("special tokens", e))?;
        }
        if t.token_to_id(content) != Some(id) {
            return Err(format_err(
                "special tokens",
                format!("'{content}' did not get id {id}"),
            ));
        }
    }
    Ok(Tokenizer::from_tokenizers(t, "converted from tiktoken"))
}

/// [`from_tiktoken`], written out as tokenizer.json text.
pub fn tiktoken_to_json(
    tiktoken: &[u8],
    special_tokens: &[(u32, &str)],
    pattern: &str,
    pretty: bool,
) -> Result<String> {
    from_tiktoken(tiktoken, special_tokens, pattern)?.to_json(pretty)
}

/// Writes tokenizer.json text to `path`, gzip-compressed (deterministically: no timestamp) when the
/// file name ends in `.gz`.
pub fn write_tokenizer_file(path: impl AsRef<Path>, json: &str) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let shown = path.display().to_string();
    let io = |e: std::io::Error| TextError::Io {
        path: shown.clone(),
        message: e.to_string(),
    };
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        enc.write_all(json.as_bytes()).map_err(io)?;
        enc.finish().map_err(io)?
    } else {
        json.as_bytes().to_vec()
    };
    std::fs::write(path, bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..20usize {
            let v: Vec<u8> = (0..n as u8).map(|x| x.wrapping_mul(37)).collect();
            assert_eq!(
                base64_decode(base64_encode(&v).as_bytes()).as_deref(),
                Some(&v[..])
            );
        }
        assert_eq!(base64_encode(b"!"), "IQ==");
        assert_eq!(base64_decode(b"6I2354mp"), Some("荷物".as_bytes().to_vec()));
        assert_eq!(base64_decode(b"IQ="), None);
        assert_eq!(base64_decode(b"I?=="), None);
    }

    #[test]
    fn byte_map_is_gpt2() {
        let m = bytes_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        let inv = unicode_to_byte();
        assert!((0..=255u8).all(|b| inv(m[b as usize]) == Some(b)));
    }
}
