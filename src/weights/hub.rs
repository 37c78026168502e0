//! Model ids resolved through the Hugging Face cache (`$HF_HOME/hub`, default `~/.cache/huggingface`).
//! Offline use works from the cache alone; hf-hub 0.4 implements neither `HF_HUB_OFFLINE` nor
//! `HF_HUB_CACHE`, so offline mode is decided here and the network is never touched then.

use crate::error::{Error, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;

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

/// Whether the environment asks for offline mode (`HF_HUB_OFFLINE=1|true|yes`).
pub fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// One file of a model repo from the cache, downloading it unless offline.
pub fn fetch_file(id: &str, revision: Option<&str>, offline: bool, file: &str) -> Result<PathBuf> {
    let offline = offline || env_offline();
    let rev = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, rev.clone());
    if let Some(p) = Cache::from_env().repo(repo.clone()).get(file) {
        return Ok(p);
    }
    if offline {
        return Err(Error::ModelNotFound {
            spec: id.to_string(),
            reason: format!(
                "`{file}` (revision {rev}) is not in the Hugging Face cache and offline mode is on"
            ),
        });
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| Error::ModelNotFound {
            spec: id.to_string(),
            reason: e.to_string(),
        })?;
    api.repo(repo).get(file).map_err(|e| Error::ModelNotFound {
        spec: id.to_string(),
        reason: format!("downloading `{file}`: {e}"),
    })
}

/// The snapshot directory of a model id with its config and weights present, downloading what the
/// cache lacks unless offline.
pub fn resolve(id: &str, revision: Option<&str>, offline: bool) -> Result<PathBuf> {
    let get = |file: &str| fetch_file(id, revision, offline, file);
    let config = get("config.json")?;
    let dir = crate::fsutil::parent_dir(&config);
    // The tokenizer is needed for training and evaluation, not for analysis: best effort.
    let _ = get("tokenizer.json");
    match get("model.safetensors.index.json") {
        Ok(index) => {
            for f in super::safetensors_dir::shard_names(&index)? {
                get(&f)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    Ok(dir)
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
}
