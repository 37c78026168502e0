//! The data files of a dataset directory (a Hub snapshot) per config and split, decided as
//! `datasets.load_dataset(<dir>, name=config, split=split)` decides them (`datasets` 5.2:
//! `load.py` `LocalDatasetModuleFactory`, `utils/metadata.py` `MetadataConfigs`,
//! `data_files.py`) — pure: the directory's listing and its `README.md` in, files out.
//!
//! - The `configs:` list in `README.md`'s YAML front matter: each `config_name` with its
//!   `data_files` (a pattern, a list of patterns for the `train` split, or a list of
//!   `{split, path}` with `path` a pattern or a list of them), relative to `data_dir` when it is
//!   given; without `data_files`, the default patterns inside `data_dir`. The default config is the
//!   only one, the one named `default`, or the one with `default: true`.
//! - Without `configs:`, one config `default` from the default patterns: first the sharded
//!   `data/{split}-NNNNN-of-NNNNN*.*` names, else split keywords in directory names, else in file
//!   names (train/training, validation/valid/dev/val, test/testing/eval/evaluation, each between
//!   `-._ 0-9` separators), else every file as `train` (before the keywords, `datasets`' `*.eval`
//!   logs and Harbor task patterns, whose files tsd then refuses as formats it does not read).
//!
//! Patterns are globs as fsspec ≥ 2023.12 reads them (`*` within a path component, `**` as a whole
//! component for any depth, `[…]` classes); hidden files and directories, `__*` directories and
//! `README.md`-like metadata files are left out unless the pattern names them; matches are sorted.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The split keywords of `datasets`' `SPLIT_KEYWORDS`, in its split order.
const SPLIT_KEYWORDS: &[(&str, &[&str])] = &[
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];
const SEP: &str = "[-._ 0-9]";
const SPLIT_PATTERN_SHARDED: &str =
    "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*";
const FILES_TO_IGNORE: &[&str] = &[
    "README.md",
    "config.json",
    "dataset_info.json",
    "dataset_infos.json",
    "dummy_data.zip",
    "dataset_dict.json",
];
/// The extensions of the `datasets` builders tsd reads: `json` and `parquet`.
const FAMILIES: &[(&str, &[&str])] = &[
    ("json", &["json", "jsonl", "ndjson"]),
    ("parquet", &["parquet", "geoparquet", "gpq"]),
];
/// Extensions of files that sit beside the data in a repo (notes, code, citations): they never
/// decide a config's format here, where `datasets` would count `.md` / `.txt` as text data.
const IGNORED_EXTENSIONS: &[&str] = &["md", "txt", "py", "yaml", "yml", "cff", "toml"];

type Splits = Vec<(String, Vec<PathBuf>)>;

/// One config's files per split, in `datasets`' split order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    pub name: String,
    /// The config `datasets` loads when none is named.
    pub default: bool,
    pub splits: Splits,
    /// Why tsd cannot read this config (its files are of another format), refused when it is
    /// chosen; the other configs stay readable.
    pub unreadable: Option<String>,
}

fn config_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A glob pattern (fsspec's `glob_translate`) as an anchored regex over `/`-separated paths.
pub fn glob_regex(pattern: &str) -> Result<regex::Regex> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let last = parts.len() - 1;
    let mut re = String::from("^");
    for (i, part) in parts.iter().enumerate() {
        match *part {
            "*" if i < last => re.push_str("[^/]+/"),
            "*" => re.push_str("[^/]+"),
            "**" if i < last => re.push_str("(?:.+/)?"),
            "**" => re.push_str(".*"),
            p => {
                if p.contains("**") {
                    return Err(Error::InvalidArgument(format!(
                        "data_files pattern `{pattern}`: `**` can only be an entire path component"
                    )));
                }
                translate_part(p, &mut re);
                if i < last {
                    re.push('/');
                }
            }
        }
    }
    re.push('$');
    regex::Regex::new(&re)
        .map_err(|e| Error::InvalidArgument(format!("data_files pattern `{pattern}`: {e}")))
}

/// fnmatch within one component: `*`, `?`, `[…]`, `[!…]`.
fn translate_part(p: &str, re: &mut String) {
    let c: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                // Find the closing `]` (a `]` right after `[` or `[!` is literal).
                let mut j = i + 1;
                if j < c.len() && c[j] == '!' {
                    j += 1;
                }
                if j < c.len() && c[j] == ']' {
                    j += 1;
                }
                while j < c.len() && c[j] != ']' {
                    j += 1;
                }
                if j >= c.len() {
                    re.push_str("\\[");
                } else {
                    let mut body: String = c[i + 1..j].iter().collect();
                    let negate = body.starts_with('!');
                    if negate {
                        body.remove(0);
                    }
                    let body = body.replace('\\', "\\\\").replace('[', "\\[");
                    re.push('[');
                    if negate {
                        re.push('^');
                    }
                    re.push_str(&body);
                    re.push(']');
                    i = j;
                }
            }
            ch => re.push_str(&regex::escape(&ch.to_string())),
        }
        i += 1;
    }
}

/// Every regular file under `dir` (following symlinks, as snapshots are), as sorted `/` paths.
fn listing(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let here = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for e in std::fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            let e = e.map_err(|e| Error::io(&here, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let p = root.join(&r);
            if p.is_dir() {
                walk(root, &r, out)?;
            } else if p.is_file() {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn hidden_parts(s: &str) -> usize {
    s.split('/')
        .filter(|p| p.starts_with('.') && !p.chars().all(|c| c == '.'))
        .count()
}

fn special_dirs(s: &str) -> usize {
    let parent = s.rsplit_once('/').map_or("", |(d, _)| d);
    parent.split('/').filter(|p| p.starts_with("__")).count()
}

/// The files of `listing` one pattern matches, as `datasets`' `resolve_pattern` keeps them.
fn resolve_pattern(files: &[String], pattern: &str) -> Result<Vec<String>> {
    let pattern = pattern.trim_start_matches("./");
    let re = glob_regex(pattern)?;
    let base = pattern.rsplit('/').next().unwrap_or(pattern);
    Ok(files
        .iter()
        .filter(|f| re.is_match(f))
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            !(FILES_TO_IGNORE.contains(&name) && name != base)
        })
        .filter(|f| special_dirs(f) == special_dirs(pattern))
        .filter(|f| hidden_parts(f) == hidden_parts(pattern))
        .cloned()
        .collect())
}

/// `datasets`' default patterns for a directory listing: split → patterns, in split order.
fn default_patterns(files: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    // data/{split}-00000-of-00001.parquet
    let probe = SPLIT_PATTERN_SHARDED.replace("{split}", "*");
    let sharded = resolve_pattern(files, &probe)?;
    if !sharded.is_empty() {
        let mut splits = BTreeSet::new();
        // `{split}-NNNNN-of-NNNNN…`: the split is what precedes the shard numbers.
        let re = regex::Regex::new(r"^(.+?)-[0-9]{5}-of-[0-9]{5}").expect("static regex");
        for f in &sharded {
            let name = f.rsplit('/').next().unwrap_or(f);
            if let Some(c) = re.captures(name) {
                splits.insert(c[1].to_string());
            }
        }
        let known: Vec<&str> = SPLIT_KEYWORDS.iter().map(|(s, _)| *s).collect();
        let mut order: Vec<String> = known
            .iter()
            .filter(|s| splits.contains(**s))
            .map(|s| s.to_string())
            .collect();
        order.extend(
            splits
                .iter()
                .filter(|s| !known.contains(&s.as_str()))
                .cloned(),
        );
        return Ok(order
            .into_iter()
            .map(|s| {
                let p = SPLIT_PATTERN_SHARDED.replace("{split}", &s);
                (s, vec![p])
            })
            .collect());
    }
    let in_dir = [
        "**/{k}/**",
        "**/{k}[{s}]*/**",
        "**/*[{s}]{k}/**",
        "**/*[{s}]{k}[{s}]*/**",
    ];
    let in_name = ["**/{k}[{s}]*", "**/*[{s}]{k}[{s}]*"];
    let sep = &SEP[1..SEP.len() - 1];
    let keyword_patterns = |bases: &[&str]| -> Vec<(String, Vec<String>)> {
        SPLIT_KEYWORDS
            .iter()
            .map(|(split, keywords)| {
                let patterns = keywords
                    .iter()
                    .flat_map(|k| {
                        bases
                            .iter()
                            .map(move |b| b.replace("{k}", k).replace("{s}", sep))
                    })
                    .collect();
                (split.to_string(), patterns)
            })
            .collect()
    };
    let one = |split: &str, patterns: &[&str]| {
        vec![(
            split.to_string(),
            patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        )]
    };
    // ALL_DEFAULT_PATTERNS, in order: the first whose patterns match a file decides the splits.
    let candidates = [
        one("logs", &["**/*.eval"]),
        one("test", &["**/task.toml", "**/instruction.md"]),
        keyword_patterns(&in_dir),
        keyword_patterns(&in_name),
        one("train", &["**"]),
    ];
    for candidate in candidates {
        let mut found = Vec::new();
        for (split, patterns) in candidate {
            let mut any = false;
            for p in &patterns {
                if !resolve_pattern(files, p)?.is_empty() {
                    any = true;
                    break;
                }
            }
            if any {
                found.push((split, patterns));
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(vec![("train".into(), vec!["**".into()])])
}

/// Patterns → files, each once, in pattern order, relative paths joined to `dir`.
fn files_of(dir: &Path, files: &[String], base: &str, patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in patterns {
        let full = if base.is_empty() {
            p.clone()
        } else {
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                p.trim_start_matches("./")
            )
        };
        for f in resolve_pattern(files, &full)? {
            if seen.insert(f.clone()) {
                out.push(f);
            }
        }
    }
    Ok(out.into_iter().map(|f| dir.join(f)).collect())
}

/// The format family of a file name, by its extension (`datasets`' `_EXTENSION_TO_MODULE`).
fn family(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    FAMILIES
        .iter()
        .find(|(_, exts)| exts.contains(&ext.as_str()))
        .map(|(f, _)| *f)
}

/// One format per config, as `datasets` infers its builder from the most common extension among
/// the matched files and then keeps only that builder's files (a `LICENSE` or a stray `.md` is
/// dropped). A config whose files are mostly of a format tsd does not read is refused. (Unlike
/// `datasets`, `.md` and `.txt` files never make a config a text dataset, and each config is
/// inferred on its own where `datasets` infers one builder for a repo from its first config.)
fn one_format(config: &str, splits: Splits) -> (Splits, Option<String>) {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for f in splits.iter().flat_map(|(_, fs)| fs) {
        if let Some(e) = f.extension().and_then(|e| e.to_str()) {
            *counts.entry(e.to_ascii_lowercase()).or_default() += 1;
        }
    }
    // Most common first (among equals, a family tsd reads first); files that sit beside data in
    // a repo (`.md`, `.txt`, code) do not decide the format.
    let mut ranked: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(e, _)| !IGNORED_EXTENSIONS.contains(&e.as_str()))
        .collect();
    ranked.sort_by_key(|(e, n)| {
        (
            std::cmp::Reverse(*n),
            family(Path::new(&format!("x.{e}"))).is_none(),
        )
    });
    let Some((top, _)) = ranked.first() else {
        // Nothing but README-like files: no data file at all.
        let splits = splits
            .into_iter()
            .map(|(s, fs)| (s, fs.into_iter().filter(|f| family(f).is_some()).collect()))
            .collect();
        return (splits, None);
    };
    let Some(fam) = family(Path::new(&format!("x.{top}"))) else {
        let why = format!(
            "config `{config}`: its data files are mostly `.{top}`, a format tsd does not read \
             (it reads JSON, JSON Lines and Parquet)"
        );
        return (splits, Some(why));
    };
    let splits = splits
        .into_iter()
        .map(|(s, fs)| {
            (
                s,
                fs.into_iter().filter(|f| family(f) == Some(fam)).collect(),
            )
        })
        .collect();
    (splits, None)
}

/// The YAML front matter of a README, as huggingface_hub's `REGEX_YAML_BLOCK` finds it: a
/// `---` line at the start (after blank space), up to the next `---` line.
fn front_matter(readme: &str) -> Option<&str> {
    let re =
        regex::Regex::new(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
            .expect("static regex");
    re.captures(readme)
        .and_then(|c| c.get(2))
        .map(|m| m.as_str())
}

fn string_list(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(l) => l.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// Every config of a dataset directory with its files per split.
pub fn layout(dir: &Path) -> Result<Vec<ConfigFiles>> {
    let files = listing(dir)?;
    let readme = dir.join("README.md");
    let Some(configs) = readme_configs(&readme)? else {
        let splits = default_patterns(&files)?
            .into_iter()
            .map(|(s, p)| Ok((s, files_of(dir, &files, "", &p)?)))
            .collect::<Result<Vec<_>>>()?;
        let (splits, unreadable) = one_format("default", splits);
        return Ok(vec![ConfigFiles {
            name: "default".into(),
            default: true,
            splits,
            unreadable,
        }]);
    };
    let serde_json::Value::Array(configs) = configs else {
        return Err(config_err(&readme, "`configs` must be a list"));
    };
    let n = configs.len();
    let mut out: Vec<ConfigFiles> = Vec::new();
    for c in &configs {
        let Some(name) = c.get("config_name").and_then(|v| v.as_str()) else {
            return Err(config_err(
                &readme,
                format!("each of `configs` needs a `config_name`, found {c}"),
            ));
        };
        let data_dir = c.get("data_dir").and_then(|v| v.as_str()).unwrap_or("");
        let data_dir = data_dir.trim_matches('/');
        let patterns = config_patterns(&readme, name, c, data_dir, &files)?;
        let splits = patterns
            .into_iter()
            .map(|(s, p)| Ok((s, files_of(dir, &files, data_dir, &p)?)))
            .collect::<Result<Vec<_>>>()?;
        let (splits, unreadable) = one_format(name, splits);
        let default =
            n == 1 || name == "default" || c.get("default").and_then(|v| v.as_bool()) == Some(true);
        if default {
            if let Some(other) = out.iter().find(|o| o.default) {
                return Err(config_err(
                    &readme,
                    format!("several default configs: `{}` and `{name}`", other.name),
                ));
            }
        }
        out.push(ConfigFiles {
            name: name.to_string(),
            default,
            splits,
            unreadable,
        });
    }
    Ok(out)
}

/// The `configs:` value of a README's YAML front matter (None without README, front matter or
/// `configs`).
fn readme_configs(readme: &Path) -> Result<Option<serde_json::Value>> {
    if !readme.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(readme).map_err(|e| Error::io(readme, e))?;
    let Some(yaml) = front_matter(&text) else {
        return Ok(None);
    };
    let meta: serde_json::Value = serde_yaml_ng::from_str(yaml)
        .map_err(|e| config_err(readme, format!("invalid YAML front matter: {e}")))?;
    Ok(meta.get("configs").cloned().filter(|c| !c.is_null()))
}

/// A config's `(split, patterns)`: its `data_files` (a pattern, a list, or `{split, path}`
/// entries), else `datasets`' default patterns over its `data_dir`.
fn config_patterns(
    readme: &Path,
    name: &str,
    c: &serde_json::Value,
    data_dir: &str,
    files: &[String],
) -> Result<Vec<(String, Vec<String>)>> {
    let bad_files = || {
        config_err(
            readme,
            format!(
                "config `{name}`: `data_files` must be a pattern, a list of patterns or a \
                 list of {{split, path}}"
            ),
        )
    };
    match c.get("data_files") {
        None | Some(serde_json::Value::Null) => {
            let sub: Vec<String> = if data_dir.is_empty() {
                files.to_vec()
            } else {
                files
                    .iter()
                    .filter_map(|f| f.strip_prefix(&format!("{data_dir}/")))
                    .map(str::to_string)
                    .collect()
            };
            default_patterns(&sub)
        }
        Some(serde_json::Value::Array(l)) if l.iter().any(|x| x.is_object()) => {
            let mut splits: Vec<(String, Vec<String>)> = Vec::new();
            for x in l {
                let (Some(split), Some(path)) = (
                    x.get("split").and_then(|s| s.as_str()),
                    x.get("path").and_then(string_list),
                ) else {
                    return Err(bad_files());
                };
                if splits.iter().any(|(s, _)| s == split) {
                    return Err(config_err(
                        readme,
                        format!("config `{name}`: split `{split}` is listed twice"),
                    ));
                }
                splits.push((split.to_string(), path));
            }
            Ok(splits)
        }
        Some(v) => Ok(vec![(
            "train".into(),
            string_list(v).ok_or_else(bad_files)?,
        )]),
    }
}

/// The files of one (config, split) of a dataset directory: `config` `None` means the default
/// config, `split` `None` means `train`. An unknown config or split, or an empty split, is
/// refused listing what there is.
pub fn split_files(dir: &Path, config: Option<&str>, split: Option<&str>) -> Result<Vec<PathBuf>> {
    let configs = layout(dir)?;
    let names = || {
        configs
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match config {
        Some(name) => configs.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: no config `{name}`; available configs: {}",
                dir.display(),
                names()
            ))
        })?,
        None => configs.iter().find(|c| c.default).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: the dataset has several configs and no default; name one of: {}",
                dir.display(),
                names()
            ))
        })?,
    };
    if let Some(why) = &chosen.unreadable {
        return Err(config_err(&dir.join("README.md"), why.clone()));
    }
    let split = split.unwrap_or(crate::data::spec::DEFAULT_SPLIT);
    let splits = || {
        chosen
            .splits
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (_, files) = chosen
        .splits
        .iter()
        .find(|(s, _)| s == split)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: config `{}` has no split `{split}`; available splits: {}",
                dir.display(),
                chosen.name,
                splits()
            ))
        })?;
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: config `{}`, split `{split}`: its data_files patterns match no file",
            dir.display(),
            chosen.name
        )));
    }
    Ok(files.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_fsspec() {
        let m = |p: &str, f: &str| glob_regex(p).unwrap().is_match(f);
        assert!(m("**/train[-._ 0-9]*", "train.json"));
        assert!(m("**/train[-._ 0-9]*", "data/train-00000.parquet"));
        assert!(!m("**/train[-._ 0-9]*", "data/trainer.json"));
        assert!(m("**/*[-._ 0-9]test[-._ 0-9]*", "data/my_test.jsonl"));
        assert!(m("data/*.parquet", "data/a.parquet"));
        assert!(!m("data/*.parquet", "data/x/a.parquet"));
        assert!(m("**", "a/b/c.json"));
        assert!(m("chat/**/*.jsonl", "chat/a.jsonl"));
        assert!(m("x[!a]y", "xby") && !m("x[!a]y", "xay"));
    }

    #[test]
    fn default_patterns_follow_datasets_order() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = default_patterns(&f(&[
            "data/test-00000-of-00001.parquet",
            "data/train-00000-of-00001.parquet",
            "README.md",
        ]))
        .unwrap();
        assert_eq!(
            p.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["train", "test"]
        );
        let p = default_patterns(&f(&["dev.jsonl", "train.jsonl", "other.jsonl"])).unwrap();
        assert_eq!(
            p.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["train", "validation"]
        );
        let p = default_patterns(&f(&["a.jsonl", "b.jsonl"])).unwrap();
        assert_eq!(p[0].1, ["**"]);
        assert_eq!(
            resolve_pattern(
                &f(&["README.md", "a.jsonl", ".hidden/b.jsonl", "__x__/c.jsonl"]),
                "**"
            )
            .unwrap(),
            ["a.jsonl"]
        );
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, text) in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    fn rel(dir: &Path, files: Vec<PathBuf>) -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(dir).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn configs_with_data_dir_string_and_list_patterns() {
        let readme = "---\nconfigs:\n- config_name: a\n  data_files: a/*.jsonl\n- config_name: b\n  \
                      data_dir: sub\n  default: true\n- config_name: c\n  data_files:\n  - c/x.csv\n---\n";
        let d = tree(&[
            ("README.md", readme),
            ("LICENSE", ""),
            ("a/1.jsonl", ""),
            ("a/notes.md", ""),
            ("sub/train.parquet", ""),
            ("sub/test.parquet", ""),
            ("c/x.csv", ""),
        ]);
        let p = d.path();
        assert_eq!(
            rel(p, split_files(p, Some("a"), None).unwrap()),
            ["a/1.jsonl"]
        );
        assert_eq!(
            rel(p, split_files(p, None, None).unwrap()),
            ["sub/train.parquet"]
        );
        assert_eq!(
            rel(p, split_files(p, None, Some("test")).unwrap()),
            ["sub/test.parquet"]
        );
        let e = split_files(p, Some("c"), None).unwrap_err().to_string();
        assert!(e.contains("config `c`") && e.contains(".csv"), "{e}");
    }

    #[test]
    fn several_defaults_and_no_default_are_refused() {
        let two = "---\nconfigs:\n- config_name: a\n  data_files: a.jsonl\n  default: true\n- config_name: b\n  data_files: b.jsonl\n  default: true\n---\n";
        let d = tree(&[("README.md", two), ("a.jsonl", ""), ("b.jsonl", "")]);
        let e = layout(d.path()).unwrap_err().to_string();
        assert!(e.contains("several default configs"), "{e}");
        let none = "---\nconfigs:\n- config_name: a\n  data_files: a.jsonl\n- config_name: b\n  data_files: b.jsonl\n---\n";
        let d = tree(&[("README.md", none), ("a.jsonl", ""), ("b.jsonl", "")]);
        let e = split_files(d.path(), None, None).unwrap_err().to_string();
        assert!(e.contains("no default") && e.contains("a, b"), "{e}");
        assert_eq!(split_files(d.path(), Some("b"), None).unwrap().len(), 1);
    }

    #[test]
    fn front_matter_is_found() {
        assert_eq!(front_matter("---\na: 1\n---\n# T\n"), Some("a: 1"));
        assert_eq!(
            front_matter("\n---\r\na: 1\r\nb: 2\r\n--- \r\n"),
            Some("a: 1\r\nb: 2")
        );
        assert_eq!(front_matter("---\na: 1\n----\n"), None);
        assert_eq!(front_matter("# no\n"), None);
    }
}
