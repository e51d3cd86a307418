//! Errors raised while reading source checkpoints (GGUF files and Hugging Face
//! safetensors directories).
//!
//! Every variant carries the path of the file it is about, and its message
//! names that path and the problem, so that an error reaching the user on its
//! own is still actionable.

use std::path::PathBuf;

use crate::ggml_blocks::BlockError;

/// An error while opening or reading a source checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The operating system refused an operation on the file.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being attempted ("open", "memory-map", "read", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is structurally invalid: truncated, corrupt, inconsistent.
    #[error("{}: malformed: {msg}", path.display())]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file is well formed but uses something this reader does not support.
    #[error("{}: unsupported: {msg}", path.display())]
    Unsupported {
        /// The file concerned.
        path: PathBuf,
        /// What is unsupported.
        msg: String,
    },
    /// Something required is absent (a file, a metadata key, a tensor).
    #[error("{}: missing {what}", path.display())]
    Missing {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A JSON file could not be parsed.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The underlying parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The model configuration is invalid or unsupported.
    #[error("{}: model config: {msg}", path.display())]
    Config {
        /// The file the configuration was read from.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A problem with one tensor (unknown name, bad shape, unsupported type, ...).
    #[error("{}: tensor `{tensor}`: {msg}", path.display())]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor's blocks could not be decoded.
    #[error("{}: tensor `{tensor}`: {source}", path.display())]
    Block {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The decoding error.
        #[source]
        source: BlockError,
    },
}

impl SourceError {
    /// Builds a [`SourceError::Malformed`].
    pub(crate) fn malformed(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Builds a [`SourceError::Unsupported`].
    pub(crate) fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Builds a [`SourceError::Missing`].
    pub(crate) fn missing(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self::Missing {
            path: path.into(),
            what: what.into(),
        }
    }

    /// Builds a [`SourceError::Config`].
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Builds a [`SourceError::Tensor`].
    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    /// Builds a [`SourceError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
