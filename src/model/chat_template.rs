//! A model's chat template, rendered as Hugging Face transformers' `apply_chat_template` does
//! (transformers 5.24, `utils/chat_template_utils.py`), with minijinja.
//!
//! Environment, as transformers compiles it: `trim_blocks` and `lstrip_blocks` on, trailing
//! newline dropped (the Jinja default), `break`/`continue`, Python's string/dict/list methods
//! (`.strip()`, `.items()`, … via `minijinja_contrib::pycompat`), a `tojson` filter that is
//! Python's `json.dumps(x, ensure_ascii=False, indent=…, separators=…, sort_keys=…)` (not
//! minijinja's HTML-safe one), globals `raise_exception(msg)` (refused as bad input naming the
//! template) and `strftime_now(fmt)`, and values printed as Python prints them (`None`, `True`,
//! `1.0`, `['a', 1]`). The template sees `messages` (each message with its `null` keys dropped, as
//! transformers drops them), `add_generation_prompt`, `tools` (the caller's list, or `none` when
//! none is given — transformers passes `tools=None`), `documents` (`none`) and the special token
//! strings it has (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
//!
//! `{% generation %}…{% endgeneration %}` (transformers' `AssistantTracker` tag) is rewritten before
//! compiling into block tags that print private-use marker characters, with the same whitespace
//! control; after rendering the markers are removed and their byte ranges recorded
//! ([`Rendered::generation_spans`]).
//!
//! Mappings keep their keys in the order written, as Python's dicts do (`serde_json`'s and
//! minijinja's `preserve_order`): a tool schema, tool-call arguments or a dict literal print and
//! `tojson` as transformers prints them (tested with unsorted keys).
//!
//! Known differences from transformers: `sep_token`, `cls_token`, `mask_token` are not passed; named templates are read from `tokenizer_config.json`'s list only (`"default"`, and
//! `"tool_use"` when tools are given), not from an `additional_chat_templates/` directory.

use crate::error::{Error, Result};
use crate::model::tokenizer::{
    cfg_err, json_token_name, meta_str, meta_str_array, meta_u32, read_gguf, read_optional_json,
    resolve, Source,
};
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind, Output, State};
use serde_json::Value as Json;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Marks the start of a `{% generation %}` block in rendered text (a private-use code point that
/// input may not contain).
const GEN_START: char = '\u{10FFFC}';
/// Marks the end of a `{% generation %}` block.
const GEN_END: char = '\u{10FFFD}';
/// The name the template is compiled under (shows in minijinja's messages).
const TEMPLATE_NAME: &str = "chat_template";
/// Prefix of the minijinja error detail that `raise_exception` produces.
const RAISED: &str = "raise_exception: ";

/// Special token strings the template sees (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// A compiled chat template: its source text, where it came from, the special tokens it sees.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    special: SpecialTokens,
    has_markers: bool,
    env: Arc<Environment<'static>>,
    /// A named `"tool_use"` template, used instead when tools are given (transformers'
    /// `get_chat_template`).
    tool_use: Option<Box<ChatTemplate>>,
}

/// How to render a conversation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions<'a> {
    pub add_generation_prompt: bool,
    /// `tools` as the dataset row / caller gives it (a JSON list), passed to the template as `tools`.
    pub tools: Option<&'a Json>,
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// byte ranges of `text` inside `{% generation %}…{% endgeneration %}`
    pub generation_spans: Vec<Range<usize>>,
}

/// A tokenized conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    /// 1 where the token is the assistant's (see [`ChatTemplate::assistant_spans`]), else 0; same
    /// length as ids
    pub assistant_mask: Option<Vec<u8>>,
}

impl ChatTemplate {
    /// The template of the model at `path` (a model dir, a tokenizer.json, or a .gguf — the same
    /// forms as [`crate::model::tokenizer::load_tokenizer`]). None when the model has none.
    ///
    /// Beside a `tokenizer.json`, as transformers loads it: `chat_template.jinja` first, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` of
    /// which `"default"` is used). Special tokens come from `tokenizer_config.json` (else a legacy
    /// `special_tokens_map.json`); a list's `"tool_use"` template, if any, is used when tools are given,
    /// as transformers does. In a GGUF: `tokenizer.chat_template`, and the special tokens
    /// named by `tokenizer.ggml.{bos,eos,padding,unknown}_token_id`.
    pub fn load(path: &Path) -> Result<Option<ChatTemplate>> {
        match resolve(path)? {
            Source::Json(p) => load_from_dir(p.parent().unwrap_or(Path::new("."))),
            Source::Gguf(p) => {
                let content = read_gguf(&p)?;
                let Some(source) = meta_str(&content, &p, "tokenizer.chat_template")? else {
                    return Ok(None);
                };
                let tokens = meta_str_array(&content, &p, "tokenizer.ggml.tokens")?;
                let name = |key: &str| -> Result<Option<String>> {
                    Ok(meta_u32(&content, &p, key)?
                        .and_then(|id| tokens.get(id as usize))
                        .map(|s| s.to_string()))
                };
                let special = SpecialTokens {
                    bos_token: name("tokenizer.ggml.bos_token_id")?,
                    eos_token: name("tokenizer.ggml.eos_token_id")?,
                    pad_token: name("tokenizer.ggml.padding_token_id")?,
                    unk_token: name("tokenizer.ggml.unknown_token_id")?,
                };
                let origin = format!("{} (GGUF tokenizer.chat_template)", p.display());
                ChatTemplate::from_source(source, special, &origin).map(Some)
            }
        }
    }

    /// From template text (`origin` is only for messages).
    pub fn from_source(source: &str, special: SpecialTokens, origin: &str) -> Result<ChatTemplate> {
        let refuse = |reason: String| Error::Config {
            path: PathBuf::from(origin),
            reason,
        };
        if source.contains([GEN_START, GEN_END]) {
            return Err(refuse(format!(
                "the chat template contains U+{:X} or U+{:X}, code points tsd reserves for its \
                 generation markers",
                GEN_START as u32, GEN_END as u32
            )));
        }
        for t in [
            &special.bos_token,
            &special.eos_token,
            &special.pad_token,
            &special.unk_token,
        ]
        .into_iter()
        .flatten()
        {
            if t.contains([GEN_START, GEN_END]) {
                return Err(refuse(format!(
                    "special token {t:?} contains a code point tsd reserves for its generation \
                     markers"
                )));
            }
        }
        let has_markers = check_generation_tags(source).map_err(refuse)?;
        let rewritten = rewrite_generation_tags(source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(py_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_filter("string", |v: Value| py_str(&v));
        env.add_function(
            "raise_exception",
            |msg: Value| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISED}{}", py_str(&msg)),
                ))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewritten)
            .map_err(|e| refuse(format!("not a valid chat template: {}", one_line(&e))))?;
        Ok(ChatTemplate {
            source: source.to_string(),
            origin: origin.to_string(),
            special,
            has_markers,
            env: Arc::new(env),
            tool_use: None,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from, e.g. `…/chat_template.jinja`, `…/tokenizer_config.json`,
    /// `… (GGUF tokenizer.chat_template)`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether the template has `{% generation %}` tags (outside comments).
    pub fn has_generation_markers(&self) -> bool {
        self.has_markers
    }

    /// Renders a conversation as transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…, tools=…)` does.
    ///
    /// messages: the JSON objects of a conversation ({"role", "content", …any other keys such as
    /// tool_calls, name}).
    pub fn render(&self, messages: &[Json], opts: &RenderOptions) -> Result<Rendered> {
        if let Some(t) = self.tool_template(opts) {
            return t.render(messages, opts);
        }
        if messages.is_empty() {
            return Err(Error::InvalidArgument(
                "cannot apply a chat template to an empty conversation".into(),
            ));
        }
        self.render_any(messages, opts)
    }

    /// The byte ranges of `render(messages, opts with add_generation_prompt=false).text` that are
    /// the assistant's.
    ///
    /// When the template has `{% generation %}` markers, they are its generation spans, as
    /// transformers' `return_assistant_tokens_mask` uses them. When it has none (ChatML/SmolLM2,
    /// Qwen2.5, Llama 3 templates), tsd's prefix rule: for each assistant message `i`, let
    /// `P = render(messages[..i], add_generation_prompt=true)` and
    /// `S = render(messages[..=i], add_generation_prompt=false)`; `P` must be a prefix of `S` and
    /// `S` a prefix of the full rendering (else the template is not prefix-preserving and the
    /// conversation is refused, naming the message); the assistant's span is `S[len(P)..]`: what
    /// the template writes for the message after the generation prompt, up to and including its
    /// end-of-turn token and whatever the template writes after it for that message (the newline
    /// after ChatML's `<|im_end|>`, as TRL's `qwen2_5_training.jinja` marks it). Empty spans are
    /// left out.
    ///
    /// Checked against transformers' masks with TRL 1.16's training templates
    /// (`tests/chat_template.rs`): the same tokens on Llama 3 (`llama3_training.jinja`); on
    /// Qwen2.5 (`qwen2_5_training.jinja`) the same except the newline right after
    /// `<|im_start|>assistant`, which TRL marks and this rule leaves to the generation prompt that
    /// writes it (one token per assistant message).
    pub fn assistant_spans(
        &self,
        messages: &[Json],
        opts: &RenderOptions,
    ) -> Result<Vec<Range<usize>>> {
        if let Some(t) = self.tool_template(opts) {
            return t.assistant_spans(messages, opts);
        }
        let plain = RenderOptions {
            add_generation_prompt: false,
            ..*opts
        };
        let full = self.render(messages, &plain)?;
        if self.has_markers {
            return Ok(full.generation_spans);
        }
        let prompt = RenderOptions {
            add_generation_prompt: true,
            ..*opts
        };
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Json::as_str) != Some("assistant") {
                continue;
            }
            let at = |e: Error| match e {
                Error::Config { path, reason } => Error::Config {
                    path,
                    reason: format!("message {i} (assistant): {reason}"),
                },
                other => other,
            };
            let p = self.render_any(&messages[..i], &prompt).map_err(at)?.text;
            let s = self.render_any(&messages[..=i], &plain).map_err(at)?.text;
            if !s.starts_with(&p) || !full.text.starts_with(&s) {
                let which = if !s.starts_with(&p) {
                    "the conversation up to it rendered with the generation prompt is not a prefix \
                     of the conversation with it"
                } else {
                    "the conversation up to it is not a prefix of the whole conversation"
                };
                return Err(self.refuse(format!(
                    "message {i} (assistant): the chat template is not prefix-preserving ({which}), \
                     so tsd cannot tell the assistant's tokens; use a template with \
                     {{% generation %}} markers"
                )));
            }
            if s.len() > p.len() {
                spans.push(p.len()..s.len());
            }
        }
        Ok(spans)
    }

    /// The model's `"tool_use"` template when tools are given and it has one.
    fn tool_template(&self, opts: &RenderOptions) -> Option<&ChatTemplate> {
        opts.tools.and(self.tool_use.as_deref())
    }

    fn refuse(&self, reason: String) -> Error {
        Error::Config {
            path: PathBuf::from(&self.origin),
            reason,
        }
    }

    /// Renders any (even empty) message list.
    fn render_any(&self, messages: &[Json], opts: &RenderOptions) -> Result<Rendered> {
        let mut msgs = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let Json::Object(map) = m else {
                return Err(Error::InvalidArgument(format!(
                    "chat message {i} is not a JSON object: {}",
                    short(m)
                )));
            };
            if json_has_marker(m) {
                return Err(marker_in_input(&format!("chat message {i}")));
            }
            msgs.push(normalize_message(map));
        }
        if let Some(t) = opts.tools {
            if json_has_marker(t) {
                return Err(marker_in_input("`tools`"));
            }
        }
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(&msgs)),
            (
                "add_generation_prompt",
                Value::from(opts.add_generation_prompt),
            ),
            (
                "tools",
                opts.tools.map_or(Value::from(()), Value::from_serialize),
            ),
            ("documents", Value::from(())),
        ];
        let sp = &self.special;
        for (k, v) in [
            ("bos_token", &sp.bos_token),
            ("eos_token", &sp.eos_token),
            ("unk_token", &sp.unk_token),
            ("pad_token", &sp.pad_token),
        ] {
            if let Some(v) = v {
                ctx.push((k, Value::from(v.as_str())));
            }
        }
        let ctx: Value = ctx.into_iter().collect();
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Internal(format!("chat template not compiled: {e}")))?;
        let out = tmpl.render(ctx).map_err(|e| self.render_error(&e))?;
        strip_markers(&out).map_err(|r| self.refuse(r))
    }

    fn render_error(&self, e: &minijinja::Error) -> Error {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(me) = err.downcast_ref::<minijinja::Error>() {
                if let Some(msg) = me.detail().and_then(|d| d.strip_prefix(RAISED)) {
                    return self.refuse(format!("the chat template raised an exception: {msg}"));
                }
            }
            cur = err.source();
        }
        self.refuse(format!("cannot render the chat template: {}", one_line(e)))
    }
}

/// transformers' `apply_chat_template(messages, tokenize=True, add_generation_prompt=…, tools=…,
/// return_assistant_tokens_mask=assistant_mask)`: render, then encode WITHOUT special tokens
/// (transformers passes add_special_tokens=False, so a template that writes bos_token gets exactly
/// one BOS even when the tokenizer's post-processor would add one).
///
/// The mask marks every token whose offsets overlap an assistant span (transformers 5.24's single
/// pass over the token offsets, which also marks a token with empty offsets inside a span). Spans
/// are [`ChatTemplate::assistant_spans`]: the template's generation markers, else tsd's prefix
/// rule (with `add_generation_prompt`, the rendering without the prompt must be a prefix of the
/// one with it).
pub fn apply_chat_template(
    tok: &tokenizers::Tokenizer,
    t: &ChatTemplate,
    messages: &[Json],
    opts: &RenderOptions,
    assistant_mask: bool,
) -> Result<ChatTokens> {
    let t = t.tool_template(opts).unwrap_or(t);
    let rendered = t.render(messages, opts)?;
    let spans = if !assistant_mask {
        None
    } else if t.has_generation_markers() {
        Some(rendered.generation_spans.clone())
    } else {
        let spans = t.assistant_spans(messages, opts)?;
        if opts.add_generation_prompt {
            let plain = RenderOptions {
                add_generation_prompt: false,
                ..*opts
            };
            if !rendered.text.starts_with(&t.render(messages, &plain)?.text) {
                return Err(t.refuse(
                    "the conversation rendered without the generation prompt is not a prefix of \
                     it rendered with one, so tsd cannot tell the assistant's tokens"
                        .into(),
                ));
            }
        }
        Some(spans)
    };
    let enc = tok
        .encode(rendered.text.as_str(), false)
        .map_err(|e| Error::InvalidArgument(format!("cannot tokenize the chat: {e}")))?;
    Ok(ChatTokens {
        ids: enc.get_ids().to_vec(),
        assistant_mask: spans.map(|s| token_mask(enc.get_offsets(), &s)),
    })
}

/// transformers' mapping of character spans to tokens: a token is marked when its offsets overlap
/// a span (spans sorted, one pass).
fn token_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<u8> {
    let mut mask = vec![0u8; offsets.len()];
    let mut si = 0;
    for (i, &(start, end)) in offsets.iter().enumerate() {
        while si < spans.len() && start >= spans[si].end {
            si += 1;
        }
        if si == spans.len() {
            break;
        }
        if end > spans[si].start {
            mask[i] = 1;
        }
    }
    mask
}

fn load_from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
    let tconfig_path = dir.join("tokenizer_config.json");
    let tconfig = read_optional_json(&tconfig_path)?;
    let mut special = SpecialTokens::default();
    let legacy = read_optional_json(&dir.join("special_tokens_map.json"))?;
    for cfg in [tconfig.as_ref(), legacy.as_ref()].into_iter().flatten() {
        let get = |k: &str| cfg.get(k).and_then(json_token_name).map(|s| s.to_string());
        special.bos_token = special.bos_token.or_else(|| get("bos_token"));
        special.eos_token = special.eos_token.or_else(|| get("eos_token"));
        special.pad_token = special.pad_token.or_else(|| get("pad_token"));
        special.unk_token = special.unk_token.or_else(|| get("unk_token"));
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read(&jinja) {
        Ok(bytes) => {
            let source = String::from_utf8(bytes)
                .map_err(|_| cfg_err(&jinja, "chat_template.jinja is not UTF-8 text"))?;
            return ChatTemplate::from_source(&source, special, &jinja.display().to_string())
                .map(Some);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&jinja, e)),
    }
    let Some(field) = tconfig.as_ref().and_then(|c| c.get("chat_template")) else {
        return Ok(None);
    };
    let origin = tconfig_path.display().to_string();
    let mut tool_use = None;
    let source = match field {
        Json::Null => return Ok(None),
        Json::String(s) => s.as_str(),
        Json::Array(list) => {
            let mut default = None;
            for (i, item) in list.iter().enumerate() {
                let (Some(name), Some(template)) = (
                    item.get("name").and_then(Json::as_str),
                    item.get("template").and_then(Json::as_str),
                ) else {
                    return Err(cfg_err(
                        &tconfig_path,
                        format!(
                            "`chat_template` entry {i} is not {{\"name\": …, \"template\": …}}"
                        ),
                    ));
                };
                match name {
                    "default" => default = Some(template),
                    "tool_use" => tool_use = Some(template),
                    _ => {}
                }
            }
            default.ok_or_else(|| {
                cfg_err(
                    &tconfig_path,
                    "`chat_template` is a list of named templates without a \"default\" one",
                )
            })?
        }
        other => {
            return Err(cfg_err(
                &tconfig_path,
                format!(
                    "`chat_template` is neither a string nor a list of named templates: {}",
                    short(other)
                ),
            ))
        }
    };
    let tool_use = tool_use
        .map(|src| {
            let origin = format!("{origin} (chat_template \"tool_use\")");
            ChatTemplate::from_source(src, special.clone(), &origin).map(Box::new)
        })
        .transpose()?;
    let mut t = ChatTemplate::from_source(source, special, &origin)?;
    t.tool_use = tool_use;
    Ok(Some(t))
}

/// A message as transformers hands it to the template: `null` keys dropped; a reasoning field
/// (`reasoning_content`, `thinking`, `reasoning`, first non-null) copied to `thinking` and
/// `reasoning_content`.
fn normalize_message(map: &serde_json::Map<String, Json>) -> serde_json::Map<String, Json> {
    let mut out: serde_json::Map<String, Json> = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| out.get(*k).cloned());
    if let Some(r) = reasoning {
        out.entry("thinking").or_insert_with(|| r.clone());
        out.insert("reasoning_content".into(), r);
    }
    out
}

fn json_has_marker(v: &Json) -> bool {
    let has = |s: &str| s.contains([GEN_START, GEN_END]);
    match v {
        Json::String(s) => has(s),
        Json::Array(a) => a.iter().any(json_has_marker),
        Json::Object(m) => m.iter().any(|(k, v)| has(k) || json_has_marker(v)),
        _ => false,
    }
}

fn marker_in_input(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} contains U+{:X} or U+{:X}, private-use code points tsd reserves for the chat \
         template's generation markers",
        GEN_START as u32, GEN_END as u32
    ))
}

fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn one_line(e: &minijinja::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim_end()
        .to_string()
}

/// `{% generation %}` / `{% endgeneration %}` tags outside comments: whether there are any;
/// an error when they do not pair up.
fn check_generation_tags(source: &str) -> std::result::Result<bool, String> {
    let comments = regex::Regex::new(r"(?s)\{#.*?#\}").expect("static regex");
    let tags = regex::Regex::new(r"\{%[-+]?\s*(generation|endgeneration)\s*[-+]?%\}")
        .expect("static regex");
    let stripped = comments.replace_all(source, "");
    let mut depth = 0usize;
    let mut any = false;
    for c in tags.captures_iter(&stripped) {
        any = true;
        if &c[1] == "generation" {
            depth += 1;
        } else if depth == 0 {
            return Err("`{% endgeneration %}` without `{% generation %}`".into());
        } else {
            depth -= 1;
        }
    }
    if depth != 0 {
        return Err("`{% generation %}` without `{% endgeneration %}`".into());
    }
    Ok(any)
}

/// Rewrites `{%(-?) generation (-?)%}` to `{%$1 if true %}{{ "<start marker>" }}{% endif $2%}` (and
/// `endgeneration` likewise with the end marker): block tags in the same places, so `trim_blocks`,
/// `lstrip_blocks` and `-`/`+` whitespace control act as on the original tags.
fn rewrite_generation_tags(source: &str) -> String {
    let re = regex::Regex::new(r"\{%([-+]?)\s*(generation|endgeneration)\s*([-+]?)%\}")
        .expect("static regex");
    re.replace_all(source, |c: &regex::Captures| {
        let marker = if &c[2] == "generation" {
            GEN_START
        } else {
            GEN_END
        };
        format!(
            "{{%{} if true %}}{{{{ \"{marker}\" }}}}{{% endif {}%}}",
            &c[1], &c[3]
        )
    })
    .into_owned()
}

/// Removes the generation markers, recording the byte ranges between them (sorted by start).
fn strip_markers(out: &str) -> std::result::Result<Rendered, String> {
    if !out.contains([GEN_START, GEN_END]) {
        return Ok(Rendered {
            text: out.to_string(),
            generation_spans: Vec::new(),
        });
    }
    let mut text = String::with_capacity(out.len());
    let mut open = Vec::new();
    let mut spans = Vec::new();
    for ch in out.chars() {
        match ch {
            GEN_START => open.push(text.len()),
            GEN_END => {
                let start = open
                    .pop()
                    .ok_or("the rendering ends a generation block it did not start")?;
                spans.push(start..text.len());
            }
            _ => text.push(ch),
        }
    }
    if !open.is_empty() {
        return Err("the rendering starts a generation block it does not end".into());
    }
    spans.sort_by_key(|r| (r.start, r.end));
    Ok(Rendered {
        text,
        generation_spans: spans,
    })
}

/// `strftime_now(format)`: the local time formatted with C's `strftime` (Python's
/// `datetime.now().strftime` for the usual directives).
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    let bad = |why: &str| minijinja::Error::new(ErrorKind::InvalidOperation, why.to_string());
    let cfmt = std::ffi::CString::new(format).map_err(|_| bad("strftime_now: NUL in format"))?;
    // SAFETY: `time`, `localtime_r` and `strftime` get valid pointers to local storage and a
    // buffer of the length passed.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad("strftime_now: cannot read the local time"));
        }
        let mut buf = vec![0u8; 256 + format.len() * 16];
        let n = libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            cfmt.as_ptr(),
            &tm,
        );
        buf.truncate(n);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Prints values as Jinja2 on Python does (`str(value)`).
fn py_formatter(
    out: &mut Output,
    _state: &State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    let s = py_str(value);
    out.write_str(&s)
        .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
}

/// Python's `str(value)`.
fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => v.as_str().unwrap_or("").to_string(),
        _ => py_repr(v),
    }
}

/// Python's `repr(value)` (strings quoted, containers recursively).
fn py_repr(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => {
            if v.is_integer() {
                v.to_string()
            } else {
                match f64::try_from(v.clone()) {
                    Ok(x) => py_float(x, false),
                    Err(_) => v.to_string(),
                }
            }
        }
        ValueKind::String => py_str_repr(v.as_str().unwrap_or("")),
        ValueKind::Seq | ValueKind::Iterable => match v.try_iter() {
            Ok(it) => format!(
                "[{}]",
                it.map(|x| py_repr(&x)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => v.to_string(),
        },
        ValueKind::Map => match v.try_iter() {
            Ok(it) => {
                let items: Vec<String> = it
                    .map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr(&k), py_repr(&val))
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => v.to_string(),
        },
        _ => v.to_string(),
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)`, or with `json` its `json.dumps` form (`NaN`, `Infinity`).
fn py_float(x: f64, json: bool) -> String {
    if x.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if x.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if x < 0.0 { format!("-{s}") } else { s.into() };
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let e = exp as usize;
            let mut int: String = digits.chars().take(e + 1).collect();
            while int.len() < e + 1 {
                int.push('0');
            }
            let frac: String = digits.chars().skip(e + 1).collect();
            let frac = if frac.is_empty() { "0".into() } else { frac };
            format!("{sign}{int}.{frac}")
        } else {
            let zeros = "0".repeat((-exp - 1) as usize);
            format!("{sign}0.{zeros}{digits}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python `json.dumps` settings.
struct JsonStyle {
    ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: transformers'
/// filter, Python's `json.dumps` with those arguments (positional or by name).
fn tojson_filter(
    value: Value,
    args: Rest<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > names.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for (i, a) in args.0.into_iter().enumerate() {
        given[i] = Some(a);
    }
    for (i, n) in names.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<Value>>(n)? {
            if given[i].is_some() {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{n}'"),
                ));
            }
            given[i] = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ascii, indent, seps, sort] = given;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => match i64::try_from(v.clone()) {
            Ok(n) => Some(" ".repeat(n.max(0) as usize)),
            Err(_) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent must be an integer or a string, not {v}"),
                ))
            }
        },
    };
    let (item_sep, key_sep) = match seps.filter(|v| !v.is_none()) {
        None => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
    };
    let style = JsonStyle {
        ascii: ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    py_json(&value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn py_json(
    v: &Value,
    st: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let not_serializable = |what: &str| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: Object of type {what} is not JSON serializable"),
        )
    };
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &st.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let x = f64::try_from(v.clone())?;
                out.push_str(&py_float(x, true));
            }
        }
        ValueKind::String => json_str(v.as_str().unwrap_or(""), st.ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&st.item_sep);
                }
                newline(out, level + 1);
                py_json(x, st, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut items: Vec<(String, Value)> = Vec::new();
            for k in v.try_iter()? {
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or("").to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
                    ValueKind::Number if k.is_integer() => k.to_string(),
                    ValueKind::Number => py_float(f64::try_from(k.clone())?, true),
                    _ => return Err(not_serializable("key")),
                };
                let val = v.get_item(&k)?;
                items.push((key, val));
            }
            if st.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if items.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, x)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&st.item_sep);
                }
                newline(out, level + 1);
                json_str(k, st.ascii, out);
                out.push_str(&st.key_sep);
                py_json(x, st, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        other => return Err(not_serializable(&format!("{other:?}"))),
    }
    Ok(())
}

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii` escapes all but printable
/// ASCII as `\uXXXX`, surrogate pairs above U+FFFF).
fn json_str(s: &str, ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpl(src: &str) -> ChatTemplate {
        ChatTemplate::from_source(src, SpecialTokens::default(), "test.jinja").unwrap()
    }

    fn render_with(src: &str, ctx_messages: Json) -> String {
        let msgs: Vec<Json> = ctx_messages.as_array().unwrap().clone();
        tmpl(src)
            .render(&msgs, &RenderOptions::default())
            .unwrap()
            .text
    }

    fn one() -> Json {
        json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn generation_rewrite_keeps_whitespace_control() {
        // The rewritten source, and its rendering vs the same template with the tags deleted
        // (what Jinja2 renders, as the tags print nothing).
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%} b {% endgeneration %}\nc"),
            "a{%- if true %}{{ \"\u{10FFFC}\" }}{% endif -%} b {% if true %}{{ \"\u{10FFFD}\" }}{% endif %}\nc"
        );
        let cases = [
            (
                "A\n  {% generation %}\nX\n  {% endgeneration %}\nB",
                "A\nX\nB",
                "X\n",
            ),
            (
                "A  {%- generation -%}  X  {%- endgeneration -%}  B",
                "AXB",
                "X",
            ),
            (
                "A {% generation %} X {% endgeneration %} B",
                "A  X  B",
                " X ",
            ),
            (
                "A\n    {%- generation %}\n    {{- 'X' }}\n    {%- endgeneration %}\nB",
                "AXB",
                "X",
            ),
            (
                "A\n{%+ generation +%}\nX{% endgeneration %}",
                "A\n\nX",
                "\nX",
            ),
        ];
        for (src, text, span) in cases {
            let r = tmpl(src)
                .render(
                    &[json!({"role": "user", "content": ""})],
                    &RenderOptions::default(),
                )
                .unwrap();
            assert_eq!(r.text, text, "{src:?}");
            assert_eq!(r.generation_spans.len(), 1, "{src:?}");
            assert_eq!(&r.text[r.generation_spans[0].clone()], span, "{src:?}");
        }
        // A tag inside a comment does not count (TRL's training templates mention the tags in
        // their header comment).
        let t = tmpl("{#- uses {% generation %} / {% endgeneration %} -#}x");
        assert!(!t.has_generation_markers());
        assert!(tmpl("{% generation %}x{% endgeneration %}").has_generation_markers());
        let err =
            ChatTemplate::from_source("{% generation %}x", SpecialTokens::default(), "t.jinja")
                .unwrap_err();
        assert!(err.to_string().starts_with("t.jinja: "), "{err}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        // Expected strings: Python 3.11 `json.dumps(x, ensure_ascii=False, …)`.
        let msgs = json!([{"role": "user", "content": "hi", "x": {"b": [1, 2.5, null, true], "a": "é \"q\" \n 🙂"}}]);
        let cases = [
            // Keys in the order written (Python's dicts keep it).
            ("{{ messages[0].x | tojson }}", r#"{"b": [1, 2.5, null, true], "a": "é \"q\" \n 🙂"}"#),
            (
                "{{ messages[0].x | tojson(indent=2) }}",
                "{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": \"é \\\"q\\\" \\n 🙂\"\n}",
            ),
            ("{{ messages[0].x | tojson(separators=(',', ':')) }}", r#"{"b":[1,2.5,null,true],"a":"é \"q\" \n 🙂"}"#),
            ("{{ messages[0].x | tojson(sort_keys=true) }}", r#"{"a": "é \"q\" \n 🙂", "b": [1, 2.5, null, true]}"#),
            ("{{ messages[0].x.a | tojson(ensure_ascii=true) }}", r#""\u00e9 \"q\" \n \ud83d\ude42""#),
            ("{{ {'z': 1, 'a': {}} | tojson(sort_keys=true) }}", r#"{"a": {}, "z": 1}"#),
            ("{{ [] | tojson(indent=4) }}|{{ 1e16 | tojson }}|{{ 0.0001 | tojson }}|{{ 1.5e-5 | tojson }}", "[]|1e+16|0.0001|1.5e-05"),
        ];
        for (src, want) in cases {
            assert_eq!(render_with(src, msgs.clone()), want, "{src}");
        }
        // Printing follows Python's str().
        assert_eq!(
            render_with(
                "{{ none }}|{{ true }}|{{ 1.0 }}|{{ [1, 'a', none] }}|{{ {'k': false} }}",
                one()
            ),
            "None|True|1.0|[1, 'a', None]|{'k': False}"
        );
    }

    #[test]
    fn python_methods_and_globals() {
        assert_eq!(
            render_with("{{ '  x  '.strip() }}|{{ 'abc'.startswith('a') }}|{{ 'a,b'.split(',') }}|{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}", one()),
            "x|True|['a', 'b']|a=1"
        );
        assert_eq!(
            render_with(
                "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}",
                one()
            ),
            "01"
        );
        let year = render_with("{{ strftime_now('%Y') }}", one());
        assert_eq!(year.len(), 4, "{year}");
        // No trailing newline kept; tools undefined-vs-none as transformers passes it.
        assert_eq!(render_with("{{ tools is none }}\n", one()), "True");
    }

    #[test]
    fn raise_exception_is_refused_naming_the_template() {
        let t = tmpl("{{ raise_exception('Only user and assistant roles!') }}");
        let err = t
            .render(
                &one().as_array().unwrap().clone(),
                &RenderOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
        assert_eq!(
            err.to_string(),
            "test.jinja: the chat template raised an exception: Only user and assistant roles!"
        );
        assert_eq!(crate::error::exit_code(&err), 2);
    }

    #[test]
    fn malformed_and_missing_templates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        // No template anywhere: None.
        assert!(ChatTemplate::load(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "</s>"}"#,
        )
        .unwrap();
        assert!(ChatTemplate::load(dir.path()).unwrap().is_none());
        // Inline template in tokenizer_config.json, special tokens from it.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "</s>"}, "chat_template": "{{ eos_token }}"}"#,
        )
        .unwrap();
        let t = ChatTemplate::load(dir.path()).unwrap().unwrap();
        assert!(t.origin().ends_with("tokenizer_config.json"));
        assert_eq!(t.special().eos_token.as_deref(), Some("</s>"));
        // Named templates without a default: refused, naming the file.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
        )
        .unwrap();
        let err = ChatTemplate::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("tokenizer_config.json: "), "{err}");
        // A malformed chat_template.jinja: refused, naming it, on one line.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{% for m in messages %}{{ m }",
        )
        .unwrap();
        let err = ChatTemplate::load(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("chat_template.jinja: not a valid chat template"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(crate::error::exit_code(&err), 2);
        // The reserved markers are refused in input.
        let t = tmpl("{{ messages[0].content }}");
        let err = t
            .render(
                &[json!({"role": "user", "content": "a\u{10FFFC}"})],
                &RenderOptions::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("reserves"), "{err}");
        // Non-object messages and empty conversations are refused.
        assert!(t.render(&[json!("hi")], &RenderOptions::default()).is_err());
        assert!(t.render(&[], &RenderOptions::default()).is_err());
    }

    #[test]
    fn gguf_template_and_special_tokens() {
        use candle_core::quantized::gguf_file::{write, Value as G};
        let dir = tempfile::tempdir().unwrap();
        let tokens = G::Array(
            ["<s>", "</s>", "<unk>", "a"]
                .iter()
                .map(|s| G::String(s.to_string()))
                .collect(),
        );
        let ids = [
            ("tokenizer.ggml.bos_token_id", G::U32(0)),
            ("tokenizer.ggml.eos_token_id", G::U32(1)),
            ("tokenizer.ggml.unknown_token_id", G::U32(2)),
        ];
        let gguf = |name: &str, template: Option<&str>| {
            let path = dir.path().join(name);
            let tmpl = template.map(|t| G::String(t.to_string()));
            let mut meta: Vec<(&str, &G)> = vec![("tokenizer.ggml.tokens", &tokens)];
            meta.extend(ids.iter().map(|(k, v)| (*k, v)));
            if let Some(t) = &tmpl {
                meta.push(("tokenizer.chat_template", t));
            }
            let mut f = std::fs::File::create(&path).unwrap();
            write(&mut f, &meta, &[]).unwrap();
            path
        };
        assert!(ChatTemplate::load(&gguf("none.gguf", None))
            .unwrap()
            .is_none());
        let t = ChatTemplate::load(&gguf(
            "chat.gguf",
            Some("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"),
        ))
        .unwrap()
        .unwrap();
        assert!(
            t.origin()
                .ends_with("chat.gguf (GGUF tokenizer.chat_template)"),
            "{}",
            t.origin()
        );
        assert_eq!(
            t.special(),
            &SpecialTokens {
                bos_token: Some("<s>".into()),
                eos_token: Some("</s>".into()),
                pad_token: None,
                unk_token: Some("<unk>".into()),
            }
        );
        assert_eq!(
            t.render(
                &one().as_array().unwrap().clone(),
                &RenderOptions::default()
            )
            .unwrap()
            .text,
            "<s>hi</s>"
        );
        let err = ChatTemplate::load(&gguf("bad.gguf", Some("{% if %}"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("bad.gguf (GGUF tokenizer.chat_template): not a valid chat template"),
            "{err}"
        );
    }

    #[test]
    fn prefix_rule_spans_and_refusal() {
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = tmpl(chatml);
        let msgs = vec![
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "Hello"}),
            json!({"role": "user", "content": "Bye"}),
            json!({"role": "assistant", "content": ""}),
        ];
        let text = t.render(&msgs, &RenderOptions::default()).unwrap().text;
        let spans = t.assistant_spans(&msgs, &RenderOptions::default()).unwrap();
        let got: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(got, ["Hello<|im_end|>\n", "<|im_end|>\n"]);
        // A template that rewrites earlier turns is refused, naming the message.
        let bad = tmpl(
            "{% for m in messages %}{% if loop.last %}LAST:{% endif %}{{ m.content }}|{% endfor %}",
        );
        let err = bad
            .assistant_spans(&msgs, &RenderOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("message 1 (assistant)"), "{err}");
        assert!(err.to_string().contains("not prefix-preserving"), "{err}");
    }

    #[test]
    fn token_mask_marks_overlapping_tokens() {
        let offsets = [(0, 2), (2, 5), (5, 5), (5, 8), (8, 9)];
        // An empty token (5, 5) inside a span is marked, as transformers' sweep marks it.
        let span = 3..6;
        assert_eq!(token_mask(&offsets, &[span]), vec![0, 1, 1, 1, 0]);
        assert_eq!(token_mask(&offsets, &[0..2, 8..9]), vec![1, 0, 0, 0, 1]);
        assert_eq!(token_mask(&offsets, &[]), vec![0; 5]);
    }

    #[test]
    fn edge_cases_match_jinja2() {
        // Expected: transformers' compiled Jinja2 template, messages=[{"role": "user",
        // "content": "hi there"}], tools=None.
        let msgs = json!([{"role": "user", "content": "hi there"}]);
        let cases = [
            ("{{ messages[0].missing | trim }}|", "|"),
            ("{{ none | string }}|{{ true | string }}|{{ 1.0 | string }}", "None|True|1.0"),
            ("{{ (messages | length) / 2 }}|{{ 7 // 2 }}|{{ 2 ** 3 }}|{{ 10 / 4 }}", "0.5|3|8|2.5"),
            (
                "{{ messages[0].content[:3] }}|{{ messages[0].content.upper() }}|{{ messages[0].content.replace('i', 'I') }}",
                "hi |HI THERE|hI there",
            ),
            ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", "1"),
            (
                "{{ messages | map(attribute='role') | join(',') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
                "user|1",
            ),
            ("{{ dict(a=1) | tojson }}|{{ messages[0].content.split() }}|{{ 'x' in messages[0] }}", "{\"a\": 1}|['hi', 'there']|False"),
            ("{{ messages[0].content | tojson(indent=none) }}|{{ {'a': 1.5e300} | tojson }}|{{ -1 | abs }}", "\"hi there\"|{\"a\": 1.5e+300}|1"),
            ("{%- for m in messages %}\n  {{- m.role }}\n{% endfor %}\n", "user\n"),
            (
                "{{ messages[0].missing }}|{{ messages[0].missing is none }}|{{ messages[0].get('missing') }}|{{ messages[0].get('role') }}",
                "|False|None|user",
            ),
        ];
        let mut bad = Vec::new();
        for (src, want) in cases {
            let t = tmpl(src);
            let got = t.render(msgs.as_array().unwrap(), &RenderOptions::default());
            match got {
                Ok(r) if r.text == want => {}
                other => bad.push(format!("{src}: {other:?} want {want:?}")),
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (2.5, "2.5"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (0.1, "0.1"),
            (1e22, "1e+22"),
        ] {
            assert_eq!(py_float(x, false), want);
        }
        assert_eq!(py_float(f64::NAN, true), "NaN");
        assert_eq!(py_float(f64::NEG_INFINITY, true), "-Infinity");
    }
}
