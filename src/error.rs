//! The library's error type: every bad input maps to one variant that names the file and the cause.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `tsd`, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, which tsd cannot read here (supported: {supported})")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        supported: &'static str,
    },
    #[error("{path}: tensor `{tensor}` has {count} non-finite value(s) (NaN or Inf), first at flat index {first}")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: usize,
        first: usize,
    },
    #[error("{context}: shape mismatch: {reason}")]
    Shape { context: String, reason: String },
    #[error("{context}: missing tensor `{tensor}`")]
    MissingTensor { context: String, tensor: String },
    #[error("{path}: the adapter holds no LoRA tensors (found {found} tensor(s), none named like `<module>.lora_A.weight`)")]
    EmptyAdapter { path: PathBuf, found: usize },
    #[error("{path}: pickle checkpoints are refused: unpickling can run arbitrary code. Convert it to safetensors first (in Python: `safetensors.torch.save_file(torch.load(path), 'adapter_model.safetensors', metadata={{'format': 'pt'}})`)")]
    PickleRefused { path: PathBuf },
    #[error("model `{spec}` could not be resolved: {reason}")]
    ModelNotFound { spec: String, reason: String },
    #[error("model `{spec}` has only pickle weights ({files}): pickle weights are not read (unpickling can run arbitrary code); convert to safetensors (in transformers: `model.save_pretrained(dir, safe_serialization=True)`)")]
    PickleWeights { spec: String, files: String },
    /// The Hugging Face Hub could not be reached (a transport failure, not an answer from it):
    /// not bad input, so it exits 1.
    #[error("model `{spec}`: network error: {reason}")]
    Network { spec: String, reason: String },
    #[error("asset `{name}`: {reason}")]
    Asset { name: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Work a command needs has not finished (pieces of a reproduction, named in the message).
    #[error("{0}")]
    Unfinished(String),
    /// A command stopped by a signal before it finished, its state saved: exits with `code`
    /// (128 + the signal's number), not 1 or 2.
    #[error("{message}")]
    Stopped { message: String, code: i32 },
    #[error("numerical failure in {context}: {reason}")]
    Numerical { context: String, reason: String },
    /// A failure of tsd itself (serialising a record, drawing a chart, a template): exit 1.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A shape mismatch with a context string (usually the module name).
    pub fn shape(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Shape {
            context: context.into(),
            reason: reason.into(),
        }
    }

    /// Whether this error comes from bad user input (exit code 2) rather than an internal failure.
    pub fn is_user_input(&self) -> bool {
        !matches!(
            self,
            Error::Numerical { .. } | Error::Internal(_) | Error::Candle(_) | Error::Network { .. }
        )
    }
}

/// The exit code for an error and its causes: 2 when the first `tsd` error in the chain is bad user
/// input, 1 otherwise (an internal failure, or an error from outside tsd that nothing classified).
pub fn exit_code(err: &(dyn std::error::Error + 'static)) -> i32 {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<Error>() {
            if let Error::Stopped { code, .. } = e {
                return *code;
            }
            return if e.is_user_input() { 2 } else { 1 };
        }
        cur = e.source();
    }
    1
}

/// The error and its causes on one line, `a: b: c`, each cause's first line only (candle appends a
/// backtrace when `RUST_BACKTRACE` is set). A cause whose text its parent already shows — a
/// variant such as `Io` prints `{path}: {source}` and also reports `source` as its cause — is
/// not repeated.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim_end().to_string();
        let shown = parts.last().is_some_and(|p| p.contains(&first));
        if !first.is_empty() && !shown {
            parts.push(first);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_parent_is_not_repeated() {
        let e = Error::io(
            "data/train.json",
            std::io::Error::new(std::io::ErrorKind::NotFound, "training data not found"),
        );
        assert_eq!(one_line(&e), "data/train.json: training data not found");
        let e = Error::InvalidArgument("x".into());
        assert_eq!(one_line(&e), "invalid argument: x");
    }

    #[test]
    fn exit_codes_follow_the_first_tsd_error() {
        assert_eq!(exit_code(&Error::InvalidArgument("x".into())), 2);
        assert_eq!(exit_code(&Error::Internal("chart".into())), 1);
        let io = std::io::Error::other("disk");
        assert_eq!(exit_code(&io), 1);
        let stopped = Error::Stopped {
            message: "stopped".into(),
            code: 143,
        };
        assert_eq!(exit_code(&stopped), 143);
    }
}
