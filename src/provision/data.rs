//! `--data` values turned into local files: paths as they are (a directory meaning its
//! `train.json`, decided by [`crate::data::load_dataset`]), `hf:` specs through the Hugging Face
//! cache (datasets are read from the cache only, never downloaded) and the snapshot's data-files
//! layout ([`crate::data::hub_layout`]).

use crate::data::spec::DataSpec;
use crate::error::Result;
use std::path::PathBuf;

/// The local files of `--data` values, in order (an `hf:` spec may give several).
pub fn resolve_data(spec: &[String]) -> Result<Vec<PathBuf>> {
    resolve_data_in(&super::hub::HubCache::from_env()?, spec)
}

/// [`resolve_data`] against a given cache root.
pub fn resolve_data_in(cache: &super::hub::HubCache, spec: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for s in spec {
        match DataSpec::parse(s)? {
            DataSpec::Local(p) => out.push(p),
            DataSpec::Hub {
                repo,
                revision,
                config,
                split,
            } => {
                let snap = cache.dataset_snapshot(&repo, revision.as_deref())?;
                out.extend(crate::data::hub_layout::split_files(
                    &snap,
                    config.as_deref(),
                    split.as_deref(),
                )?);
            }
        }
    }
    Ok(out)
}
