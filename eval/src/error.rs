//! The one error type of qrt-eval.

/// Errors of evaluation; each message names the file (or thing) that was wrong and how.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file, as given.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file was read but its contents are not what was expected.
    #[error("{path}: {reason}")]
    Data {
        /// The file (or label) the data came from.
        path: String,
        /// Where in the file and what is wrong, e.g. `line 17: story 16 has no questions`.
        reason: String,
    },
    /// Arguments or inputs that cannot be evaluated together.
    #[error("{0}")]
    Invalid(String),
    /// The runtime failed (model, tokenizer, backend).
    #[error(transparent)]
    Runtime(#[from] qrt_runtime::RuntimeError),
}
