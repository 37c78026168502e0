//! Model ids (`owner/name`) resolved through the Hugging Face cache, laid out and looked up as
//! huggingface_hub does it (`constants.py`, `file_download.py`):
//!
//! - the cache root is `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE` (the legacy name), else
//!   `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`
//!   (`~` and `$VAR` expanded, as Python's `expanduser` / `expandvars`);
//! - a model lives in `models--{owner}--{name}/`: `blobs/` (the content), `snapshots/<sha>/<file>`
//!   (relative symlinks into `blobs/`, or plain copies), `refs/<revision>` (a branch or tag name,
//!   `/` allowed, holding the 40-hex commit sha; tags are stored like branches) and
//!   `.no_exist/<sha>/<file>` (a file known to be absent at that commit);
//! - a revision that is a 40-hex sha names `snapshots/<sha>/` directly; any other name is looked up
//!   in `refs/` only: a missing ref is never resolved to some other snapshot;
//! - offline mode: `HF_HUB_OFFLINE` (else `TRANSFORMERS_OFFLINE`) is one of 1/ON/YES/TRUE, any case.
//!
//! hf-hub 0.4 implements neither `HF_HUB_CACHE`, offline mode nor sha revisions, so the lookup is
//! done here and hf-hub only downloads (into the same root, at the commit the Hub reported) what
//! the cache lacks; tsd then writes `refs/<revision>` itself. A cached snapshot that holds every
//! file a command needs is used without asking the Hub whether the branch has moved (as hf-hub's
//! `get` does); a sha revision pins it exactly.

use crate::error::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The weight files transformers reads, in the order it tries them.
const SAFETENSORS_SINGLE: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// Pickle checkpoints transformers would fall back to; tsd refuses them.
const PICKLE_WEIGHTS: &[&str] = &["pytorch_model.bin", "pytorch_model.bin.index.json"];
/// Fetched when the repo has them (training and evaluation need them, analysis does not).
const OPTIONAL_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json"];

/// `owner/name` with no path-like parts.
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && *p != "."
                && *p != ".."
        })
}

/// A 40-hex lowercase commit sha (huggingface_hub's `REGEX_COMMIT_HASH`).
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether a name stays inside the directory it is joined to (`a/b` yes; `/a`, `../a`, `a//b` no).
fn is_relative_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Refuses revisions that would leave `refs/` or `snapshots/` as paths.
fn check_revision(rev: &str) -> Result<()> {
    if !is_relative_name(rev) {
        return Err(Error::InvalidArgument(format!(
            "--revision `{rev}`: not a branch, tag or commit name"
        )));
    }
    Ok(())
}

/// The shards an index names, each refused unless it stays inside the snapshot.
fn shards(id: &str, index: &Path) -> Result<Vec<String>> {
    let names = crate::weights::safetensors_dir::shard_names(index)?;
    if let Some(bad) = names.iter().find(|n| !is_relative_name(n)) {
        return Err(Error::Config {
            path: index.to_path_buf(),
            reason: format!("{id}: shard name `{bad}` leaves the snapshot directory"),
        });
    }
    Ok(names)
}

/// What the cache knows about one file at one commit.
#[derive(Debug, PartialEq)]
pub enum Cached {
    /// `snapshots/<sha>/<file>` (following its symlink).
    Present(PathBuf),
    /// `.no_exist/<sha>/<file>`: the repo has no such file at that commit.
    Absent,
    /// Neither: only the Hub can tell.
    Unknown,
}

/// A Hugging Face cache root (the `hub/` directory).
#[derive(Clone, Debug)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// The root of this environment ([`crate::env::hf_cache_root`]).
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(crate::env::hf_cache_root()?))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--{owner}--{name}`.
    pub fn repo_dir(&self, id: &str) -> PathBuf {
        self.root.join(format!("models--{}", id.replace('/', "--")))
    }

    /// `datasets--{owner}--{name}` (huggingface_hub's `repo_type="dataset"` folder).
    pub fn dataset_dir(&self, id: &str) -> PathBuf {
        self.root
            .join(format!("datasets--{}", id.replace('/', "--")))
    }

    /// The snapshot directory of dataset `id` at `revision` (`None` = `main`), from the cache
    /// only: tsd never downloads datasets. A repo, ref or snapshot the cache lacks is refused
    /// (exit 2) naming the path searched.
    pub fn dataset_snapshot(&self, id: &str, revision: Option<&str>) -> Result<PathBuf> {
        let revision = revision.unwrap_or("main");
        check_revision(revision)?;
        let repo = self.dataset_dir(id);
        let how = format!(
            "tsd reads datasets only from the local Hugging Face cache (it never downloads \
             them); fetch it first, e.g. `huggingface-cli download --repo-type dataset {id}{}`",
            if revision == "main" {
                String::new()
            } else {
                format!(" --revision {revision}")
            }
        );
        let missing = |what: String, path: &Path| Error::Config {
            path: path.to_path_buf(),
            reason: format!("dataset `{id}`: {what}; {how}"),
        };
        if !repo.is_dir() {
            return Err(missing(
                "not in the Hugging Face cache (no such directory)".into(),
                &repo,
            ));
        }
        let commit = if is_commit_sha(revision) {
            revision.to_string()
        } else {
            let r = repo.join("refs").join(revision);
            if !r.is_file() {
                return Err(missing(
                    format!("revision `{revision}` is not in the cache (a commit is named by its full 40-hex sha)"),
                    &r,
                ));
            }
            let sha = std::fs::read_to_string(&r).map_err(|e| Error::io(&r, e))?;
            let sha = sha.trim();
            if !is_commit_sha(sha) {
                return Err(Error::Config {
                    path: r,
                    reason: format!("a cache ref must hold a 40-hex commit sha, found {sha:?}"),
                });
            }
            sha.to_string()
        };
        let snap = repo.join("snapshots").join(&commit);
        if !snap.is_dir() {
            return Err(missing(
                format!("commit {commit} has no snapshot in the cache"),
                &snap,
            ));
        }
        Ok(snap)
    }

    /// The commit a revision names in the cache: a sha itself, else the content of
    /// `refs/<revision>`; `None` when the cache has no such ref.
    pub fn commit(&self, id: &str, revision: &str) -> Result<Option<String>> {
        if is_commit_sha(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.repo_dir(id).join("refs").join(revision);
        if !path.is_file() {
            return Ok(None);
        }
        let sha = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let sha = sha.trim();
        if !is_commit_sha(sha) {
            return Err(Error::Config {
                path,
                reason: format!("a cache ref must hold a 40-hex commit sha, found {sha:?}"),
            });
        }
        Ok(Some(sha.to_string()))
    }

    /// `snapshots/<sha>/`.
    pub fn snapshot(&self, id: &str, commit: &str) -> PathBuf {
        self.repo_dir(id).join("snapshots").join(commit)
    }

    /// Whether `file` is cached at `commit`, known absent, or unknown (a dangling symlink counts
    /// as not cached, as `os.path.isfile` says). A file in the snapshot wins over a stale marker.
    pub fn lookup(&self, id: &str, commit: &str, file: &str) -> Cached {
        let p = self.snapshot(id, commit).join(file);
        let marker = self.repo_dir(id).join(".no_exist").join(commit).join(file);
        if p.is_file() {
            Cached::Present(p)
        } else if marker.is_file() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }
}

/// Why the cache alone cannot serve a model: something it does not hold (the Hub may), or a
/// definitive answer (the file is known absent, the weights are pickle).
enum Miss {
    NotCached(String),
    Final(Error),
}

fn not_found(id: &str, reason: impl Into<String>) -> Error {
    Error::ModelNotFound {
        spec: id.to_string(),
        reason: reason.into(),
    }
}

/// The weights a repo offers, decided from what is known about each file
/// (`Some(true)` present, `Some(false)` absent, `None` unknown) in transformers' order.
fn plan_weights(id: &str, known: &dyn Fn(&str) -> Option<bool>) -> Result<&'static str, Miss> {
    for f in [SAFETENSORS_SINGLE, SAFETENSORS_INDEX] {
        if known(f) == Some(true) {
            return Ok(f);
        }
    }
    let pickle: Vec<&str> = PICKLE_WEIGHTS
        .iter()
        .copied()
        .filter(|f| known(f) == Some(true))
        .collect();
    if !pickle.is_empty() {
        return Err(Miss::Final(Error::PickleWeights {
            spec: id.to_string(),
            files: pickle.join(", "),
        }));
    }
    if known(SAFETENSORS_SINGLE) == Some(false) && known(SAFETENSORS_INDEX) == Some(false) {
        return Err(Miss::Final(not_found(
            id,
            format!("the repo has neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}"),
        )));
    }
    Err(Miss::NotCached(format!(
        "neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}"
    )))
}

/// The snapshot of `id` at `revision` from the cache alone, when it holds `required` (and, with
/// `weights`, the weights) and knows about each of `optional`.
fn from_cache(
    cache: &HubCache,
    id: &str,
    revision: &str,
    required: &[&str],
    weights: bool,
    optional: &[&str],
) -> Result<PathBuf, Miss> {
    let repo = cache.repo_dir(id);
    if !repo.is_dir() {
        return Err(Miss::NotCached(format!(
            "`{id}` is not in the Hugging Face cache {}",
            cache.root().display()
        )));
    }
    let commit = match cache.commit(id, revision) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(Miss::NotCached(format!(
                "revision `{revision}` is not in the Hugging Face cache (no refs/{revision} in {}; \
                 a commit is named by its full 40-hex sha)",
                repo.display()
            )))
        }
        Err(e) => return Err(Miss::Final(e)),
    };
    let at = if commit == revision {
        format!("commit {commit}")
    } else {
        format!("revision `{revision}` (commit {commit})")
    };
    let snap = cache.snapshot(id, &commit);
    if !snap.is_dir() {
        return Err(Miss::NotCached(format!(
            "{at} has no snapshot in the Hugging Face cache ({} is missing)",
            snap.display()
        )));
    }
    let need = |f: &str| -> Result<(), Miss> {
        match cache.lookup(id, &commit, f) {
            Cached::Present(_) => Ok(()),
            Cached::Absent => Err(Miss::Final(not_found(
                id,
                format!("`{f}` does not exist in the repo at {at} (the cache records it absent)"),
            ))),
            Cached::Unknown => Err(Miss::NotCached(format!(
                "`{f}` at {at} is not in the Hugging Face cache"
            ))),
        }
    };
    for f in required {
        need(f)?;
    }
    if weights {
        let known = |f: &str| match cache.lookup(id, &commit, f) {
            Cached::Present(_) => Some(true),
            Cached::Absent => Some(false),
            Cached::Unknown => None,
        };
        match plan_weights(id, &known) {
            Ok(SAFETENSORS_INDEX) => {
                let index = snap.join(SAFETENSORS_INDEX);
                for shard in shards(id, &index).map_err(Miss::Final)? {
                    need(&shard)?;
                }
            }
            Ok(_) => {}
            Err(Miss::NotCached(what)) => {
                return Err(Miss::NotCached(format!(
                    "{what} at {at} is in the Hugging Face cache"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(f) = optional
        .iter()
        .find(|f| cache.lookup(id, &commit, f) == Cached::Unknown)
    {
        return Err(Miss::NotCached(format!(
            "`{f}` at {at} is not in the Hugging Face cache"
        )));
    }
    Ok(snap)
}

/// One revision of a repo on the Hub: its commit and file listing (one API call), downloading
/// single files into the cache at that commit.
struct Remote<'a> {
    cache: &'a HubCache,
    id: &'a str,
    revision: &'a str,
    commit: String,
    listed: BTreeSet<String>,
    api: ApiRepo,
    endpoint: String,
}

impl<'a> Remote<'a> {
    fn open(cache: &'a HubCache, id: &'a str, revision: &'a str) -> Result<Self> {
        let endpoint = crate::env::hf_endpoint();
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.root().to_path_buf()))
            .with_endpoint(endpoint.clone())
            .with_token(crate::env::hf_token()?)
            .with_progress(true)
            .build()
            .map_err(|e| hub_error(id, &endpoint, "connecting", e))?;
        let info = api
            .repo(Repo::with_revision(
                id.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .info()
            .map_err(|e| {
                hub_error(
                    id,
                    &endpoint,
                    &format!("asking {endpoint} for revision `{revision}`"),
                    e,
                )
            })?;
        if !is_commit_sha(&info.sha) {
            return Err(not_found(
                id,
                format!(
                    "{endpoint} answered revision `{revision}` with {:?}, not a commit sha",
                    info.sha
                ),
            ));
        }
        let api = api.repo(Repo::with_revision(
            id.to_string(),
            RepoType::Model,
            info.sha.clone(),
        ));
        Ok(Remote {
            cache,
            id,
            revision,
            commit: info.sha,
            listed: info.siblings.into_iter().map(|s| s.rfilename).collect(),
            api,
            endpoint,
        })
    }

    fn has(&self, file: &str) -> bool {
        self.listed.contains(file)
    }

    /// A listed file from the cache at this commit, downloading it when missing.
    fn get(&self, file: &str) -> Result<PathBuf> {
        if !self.has(file) {
            return Err(not_found(
                self.id,
                format!(
                    "the repo has no `{file}` at revision `{}` (commit {})",
                    self.revision, self.commit
                ),
            ));
        }
        if let Cached::Present(p) = self.cache.lookup(self.id, &self.commit, file) {
            return Ok(p);
        }
        // hf-hub writes `refs/<revision>` after each download; with the sha as revision that is a
        // `refs/<sha>` huggingface_hub never writes: removed again unless it was there before.
        let sha_ref = self.cache.repo_dir(self.id).join("refs").join(&self.commit);
        let had_sha_ref = sha_ref.exists();
        let got = self
            .api
            .download(file)
            .map_err(|e| hub_error(self.id, &self.endpoint, &format!("downloading `{file}`"), e));
        if !had_sha_ref && sha_ref.is_file() {
            std::fs::remove_file(&sha_ref).map_err(|e| Error::io(&sha_ref, e))?;
        }
        let got = got?;
        let want = self.cache.snapshot(self.id, &self.commit).join(file);
        if got != want {
            return Err(not_found(
                self.id,
                format!(
                    "`{file}` was served from another commit than {} ({})",
                    self.commit,
                    got.display()
                ),
            ));
        }
        Ok(got)
    }

    /// Records what was learnt: `refs/<revision>` → the commit (for branch and tag names), and
    /// `.no_exist/<sha>/<file>` for each of `absent` the repo does not list.
    fn record(&self, absent: &[&str]) -> Result<()> {
        let repo = self.cache.repo_dir(self.id);
        if self.revision != self.commit {
            crate::fsutil::atomic_write(
                &repo.join("refs").join(self.revision),
                self.commit.as_bytes(),
            )?;
        }
        for f in absent.iter().filter(|f| !self.has(f)) {
            crate::fsutil::atomic_write(&repo.join(".no_exist").join(&self.commit).join(f), b"")?;
        }
        Ok(())
    }
}

/// An hf-hub failure as tsd's error: an HTTP answer (repo, revision or file not found, access
/// denied) is about the request (exit 2); a transport failure is a network error.
fn hub_error(id: &str, endpoint: &str, what: &str, e: ApiError) -> Error {
    match e {
        ApiError::RequestError(b) => match *b {
            ureq::Error::Status(code, resp) => {
                let kind = resp.header("x-error-code").unwrap_or_default().to_string();
                let reason = match (code, kind.as_str()) {
                    (_, "RevisionNotFound") => format!("{what}: no such revision on the Hub"),
                    (_, "EntryNotFound") => format!("{what}: no such file in the repo"),
                    (_, "GatedRepo") | (403, _) => format!(
                        "{what}: access denied (HTTP {code}; a gated repo: accept its terms on the \
                         Hub and set HF_TOKEN)"
                    ),
                    (_, "RepoNotFound") | (401 | 404, _) => format!(
                        "{what}: no such repository on {endpoint} (HTTP {code}; a private or \
                         gated one needs HF_TOKEN)"
                    ),
                    _ => format!("{what}: HTTP {code} from {}", resp.get_url()),
                };
                not_found(id, reason)
            }
            ureq::Error::Transport(t) => Error::Network {
                spec: id.to_string(),
                reason: format!(
                    "{what}: {t} (--offline or HF_HUB_OFFLINE=1 works from the cache alone)"
                ),
            },
        },
        ApiError::TooManyRetries(inner) => Error::Network {
            spec: id.to_string(),
            reason: format!("{what}: {inner}"),
        },
        other => not_found(id, format!("{what}: {other}")),
    }
}

/// Resolves from the cache, else (unless offline) from the Hub with `online`.
fn resolve_with<T>(
    id: &str,
    revision: Option<&str>,
    offline: Option<String>,
    local: impl Fn(&HubCache, &str) -> Result<T, Miss>,
    online: impl Fn(&Remote) -> Result<T>,
) -> Result<T> {
    let revision = revision.unwrap_or("main");
    check_revision(revision)?;
    let cache = HubCache::from_env()?;
    let miss = match local(&cache, revision) {
        Ok(v) => return Ok(v),
        Err(m) => m,
    };
    if let Some(reason) = offline {
        return Err(match miss {
            Miss::Final(e) => e,
            Miss::NotCached(why) => not_found(id, format!("{why}, and {reason}")),
        });
    }
    online(&Remote::open(&cache, id, revision)?)
}

/// One file of a model repo from the cache, downloading it unless offline.
pub fn fetch_file(id: &str, revision: Option<&str>, offline: bool, file: &str) -> Result<PathBuf> {
    resolve_with(
        id,
        revision,
        crate::env::offline_reason(offline, false),
        |cache, rev| {
            let dir = from_cache(cache, id, rev, &[file], false, &[])?;
            Ok(dir.join(file))
        },
        |remote| {
            let p = remote.get(file)?;
            remote.record(&[])?;
            Ok(p)
        },
    )
}

/// The snapshot directory of a model id holding its `config.json`, its safetensors weights (one
/// file or the index and every shard it names) and, when the repo has them, its tokenizer files;
/// from the cache, downloading what it lacks unless offline. Pickle-only repos are refused.
///
/// `local_only`: never download (a declared base), said so in the error when the cache lacks it.
pub fn resolve(
    id: &str,
    revision: Option<&str>,
    offline: bool,
    local_only: bool,
) -> Result<PathBuf> {
    let reason = crate::env::offline_reason(offline, local_only);
    let offline = reason.is_some();
    resolve_with(
        id,
        revision,
        reason,
        |cache, rev| {
            // Offline, missing tokenizer files are left to the commands that need them.
            let optional = if offline { &[][..] } else { OPTIONAL_FILES };
            from_cache(cache, id, rev, &["config.json"], true, optional)
        },
        |remote| {
            // Decided from the listing before anything is downloaded.
            let known = |f: &str| Some(remote.has(f));
            let weights = plan_weights(id, &known).map_err(|m| match m {
                Miss::Final(e) => e,
                Miss::NotCached(why) => not_found(id, why),
            })?;
            remote.get("config.json")?;
            for f in OPTIONAL_FILES.iter().filter(|f| remote.has(f)) {
                remote.get(f)?;
            }
            let path = remote.get(weights)?;
            if weights == SAFETENSORS_INDEX {
                for shard in shards(id, &path)? {
                    remote.get(&shard)?;
                }
            }
            remote.record(OPTIONAL_FILES)?;
            Ok(remote.cache.snapshot(id, &remote.commit))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M"));
        assert!(!looks_like_repo_id("./model"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("model"));
    }

    #[test]
    fn commit_shas_and_revisions() {
        assert!(is_commit_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_sha("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_commit_sha("0123456"));
        for ok in ["main", "v1.0", "refs/pr/1"] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "/etc", "a//b", "a/./b", "a\\b"] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_names_stay_inside_the_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let index = d.path().join(SAFETENSORS_INDEX);
        let write = |shard: &str| {
            let v = serde_json::json!({"weight_map": {"w": shard}});
            std::fs::write(&index, v.to_string()).unwrap();
        };
        write("model-00001-of-00002.safetensors");
        assert_eq!(shards("o/n", &index).unwrap().len(), 1);
        for bad in ["../../../etc/x.safetensors", "/abs.safetensors"] {
            write(bad);
            let e = shards("o/n", &index).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
