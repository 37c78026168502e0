//! The declared-base policy, one place for `inspect`, `track`, `report` and `eval`: which base an
//! adapter or run declares (PEFT's `base_model_name_or_path` + `revision`, tsd's `--model` and the
//! run record's `base_files` sha256), where it resolves locally, and whether a base the user
//! passes is that one. Matching shapes do not make two models the same: a base that cannot be
//! shown to be the declared one is a warning naming both, and with `--strict-base` an error
//! (exit 2).
//!
//! Also the reference policy (`--reference` of `inspect`, `track`, `report`): an adapter, a run
//! directory of any layout (its newest checkpoint) or a model ([`open_reference`]).

use super::record::{base_files, WeightFile};
use super::{Run, RunKind};
use crate::adapter::{load_adapter, Adapter};
use crate::error::{Error, Result};
use crate::weights::{self, ModelSpec, WeightSource};
use std::path::{Path, PathBuf};

/// A base model as an adapter or run declares it.
#[derive(Clone, Debug)]
pub struct DeclaredBase {
    /// What declares it, for messages: `adapter DIR`, `run DIR`.
    pub source: String,
    /// The spec: a path, a Hugging Face id or `default`.
    pub spec: String,
    pub revision: Option<String>,
    /// Directories a relative path is tried against, in order, before the working directory.
    pub roots: Vec<PathBuf>,
    /// The weight files' sha256 (tsd's run record), when the declaration carries them.
    pub files: Vec<WeightFile>,
}

/// The base a command analyses, and the warning to print about it (if any).
pub struct OpenedBase {
    pub source: Box<dyn WeightSource>,
    pub warning: Option<String>,
}

impl DeclaredBase {
    /// The local path it names: a relative path against `roots`, then as given; an id through
    /// the Hugging Face cache only (never downloaded); tsd's pinned `default` is provisioned.
    /// `offline`: not even `default` is provisioned.
    pub fn resolve_local(&self, offline: bool) -> Result<PathBuf> {
        if self.spec != "default" && Path::new(&self.spec).is_relative() {
            if let Some(p) = self
                .roots
                .iter()
                .map(|r| r.join(&self.spec))
                .find(|p| p.exists())
            {
                return Ok(p);
            }
        }
        crate::provision::resolve_path(&ModelSpec {
            spec: self.spec.clone(),
            revision: self.revision.clone(),
            offline,
            local_only: self.spec != "default",
        })
    }

    /// What an adapter directory declares: `base_model_name_or_path` and `revision` (relative
    /// paths against the adapter's directory), and for a checkpoint of a tsd run
    /// (`RUN/checkpoints/step-N/`) the run record's weight hashes as well.
    pub fn of_adapter(dir: &Path, config: &crate::adapter::AdapterConfig) -> Option<Self> {
        let spec = config
            .base_model_name_or_path
            .clone()
            .filter(|b| !b.is_empty())?;
        let run = dir.parent().and_then(Path::parent);
        let files = run
            .filter(|r| super::layout::is_tsd_run(r))
            .and_then(|r| super::layout::read_record(r).ok())
            .filter(|rec| rec.config.model == spec && rec.config.revision == config.revision)
            .map(|rec| rec.base_files)
            .unwrap_or_default();
        Some(DeclaredBase {
            source: format!("adapter {}", dir.display()),
            spec,
            revision: config.revision.clone(),
            roots: vec![dir.to_path_buf()],
            files,
        })
    }

    fn describe(&self) -> String {
        match &self.revision {
            Some(r) => format!("`{}` (revision {r})", self.spec),
            None => format!("`{}`", self.spec),
        }
    }

    /// Why `given` (resolved to `given_path`) cannot be shown to be this base; `None` when it is.
    pub fn differs(&self, given: &ModelSpec, given_path: &Path) -> Result<Option<String>> {
        if !self.files.is_empty() {
            let mut want: Vec<&str> = self.files.iter().map(|f| f.sha256.as_str()).collect();
            let have = base_files(given_path)?;
            let mut got: Vec<&str> = have.iter().map(|f| f.sha256.as_str()).collect();
            want.sort_unstable();
            got.sort_unstable();
            return Ok((want != got).then(|| {
                "its weight files' sha256 differ from the ones the run record lists".to_string()
            }));
        }
        let rev = |r: &Option<String>| r.clone().unwrap_or_else(|| "main".into());
        if given.spec == self.spec {
            return Ok((rev(&given.revision) != rev(&self.revision)).then(|| {
                format!(
                    "the revisions differ ({} against {})",
                    rev(&given.revision),
                    rev(&self.revision)
                )
            }));
        }
        let Ok(declared) = self.resolve_local(true).and_then(|p| canonical(&p)) else {
            return Ok(Some(
                "the declared base does not resolve here, so tsd cannot compare the two"
                    .to_string(),
            ));
        };
        Ok((canonical(given_path).ok() != Some(declared)).then(|| {
            "it is another name or path, and there are no weight hashes to compare".to_string()
        }))
    }
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io(p, e))
}

/// The base a command analyses: `given` (named by `flag`, e.g. `--base`) when there is one,
/// checked against `declared` — a base that cannot be shown to be the declared one gives a warning
/// naming both, or with `strict` an error (exit 2) — else the declared base where it resolves
/// locally, else an error saying to pass `flag`.
/// `subject` names what is analysed (for the message when nothing is declared); `offline`: the
/// declared `default` is not provisioned either.
pub fn open_base(
    given: Option<&ModelSpec>,
    flag: &str,
    subject: &str,
    declared: Option<&DeclaredBase>,
    strict: bool,
    offline: bool,
) -> Result<OpenedBase> {
    let Some(given) = given else {
        let Some(d) = declared else {
            return Err(Error::InvalidArgument(format!(
                "{subject}: no {flag} given and it declares no base model (base_model_name_or_path); pass {flag}"
            )));
        };
        let path = d.resolve_local(offline).map_err(|e| {
            Error::InvalidArgument(format!(
                "{}: no {flag} given and its declared base {} does not resolve locally ({}); pass {flag}",
                d.source,
                d.describe(),
                e.to_string().lines().next().unwrap_or_default()
            ))
        })?;
        return Ok(OpenedBase {
            source: weights::open_path(&path)?,
            warning: None,
        });
    };
    let path = crate::provision::resolve_path(given)?;
    let warning = check_given(given, &path, flag, declared, strict)?;
    Ok(OpenedBase {
        source: weights::open_path(&path)?,
        warning,
    })
}

/// Whether `given` (resolved to `path`, named by `flag`) is the `declared` base: `None` when it
/// is (or nothing is declared), else a warning naming both — or with `strict` an error (exit 2).
pub fn check_given(
    given: &ModelSpec,
    path: &Path,
    flag: &str,
    declared: Option<&DeclaredBase>,
    strict: bool,
) -> Result<Option<String>> {
    let Some(d) = declared else {
        return Ok(None);
    };
    let Some(why) = d.differs(given, path)? else {
        return Ok(None);
    };
    let msg = format!(
        "{} declares base {} but {flag} `{}` is used: {why}; matching shapes do not make it the same model",
        d.source,
        d.describe(),
        given.spec
    );
    if strict {
        return Err(Error::InvalidArgument(format!("{msg} (--strict-base)")));
    }
    Ok(Some(msg + " (--strict-base makes this an error)"))
}

/// What a `--reference` argument names, opened.
pub enum RefSource {
    /// An adapter on the same base.
    Adapter(Box<Adapter>),
    /// A fine-tuned model (ΔW* = W* − W).
    Model(Box<dyn WeightSource>),
}

/// Resolves a reference: an adapter, a run directory of any layout (its newest checkpoint; a tsd
/// full fine-tune gives ΔW* = W* − W), or a model; with the name to print for it. A model that is
/// a hub id is looked up online ([`open_reference_with`] for `--offline`).
pub fn open_reference(spec: &str) -> Result<(RefSource, String)> {
    open_reference_with(spec, false)
}

/// [`open_reference`]; `offline`: a model reference never touches the network.
pub fn open_reference_with(spec: &str, offline: bool) -> Result<(RefSource, String)> {
    let p = Path::new(spec);
    if crate::adapter::read::is_adapter(p) {
        return Ok((
            RefSource::Adapter(Box::new(load_adapter(p)?)),
            format!("adapter {spec}"),
        ));
    }
    if Run::detect(p) {
        return reference_run(spec);
    }
    let model = ModelSpec {
        spec: spec.to_string(),
        offline,
        ..Default::default()
    };
    Ok((
        RefSource::Model(crate::provision::open_model(&model)?),
        format!("model {spec} (ΔW* = W* − W)"),
    ))
}

/// A run as a reference: its newest checkpoint (a tsd full fine-tune's is a model).
fn reference_run(spec: &str) -> Result<(RefSource, String)> {
    let run = Run::open(Path::new(spec), None)?;
    let last = run
        .require_checkpoints()
        .map_err(|_| Error::InvalidArgument(format!("reference run {spec} has no checkpoint")))?;
    let last = last.last().expect("non-empty");
    let at = match run.kind {
        RunKind::Adapters => last.name.clone(),
        _ => format!("step {}", last.step),
    };
    Ok(if run.is_full_fine_tune() {
        (
            RefSource::Model(weights::open_path(&last.dir)?),
            format!("full fine-tune {spec} {at} (ΔW* = W* − W)"),
        )
    } else {
        (
            RefSource::Adapter(Box::new(load_adapter(&last.adapter)?)),
            format!("run {spec} {at}"),
        )
    })
}
