//! qrt-runtime: the model graph, the backends, the paged KV cache, sampling and tokenization.
//!
//! Layout: [`backend`] defines the op set; [`cpu`] is the reference backend and [`cuda`] runs the same ops on an NVIDIA GPU; [`model`] is the
//! Llama-family graph over any backend; [`engine`] batches sequences over the paged
//! [`kv_cache`]; [`sampling`], [`tokenizer`] and [`rope`] are the pieces around them;
//! [`import`] turns source checkpoints into `.qrt` files and [`model_file`] opens them.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod import;
pub mod kv_cache;
pub mod logprob;
pub mod model;
pub mod model_file;
pub mod quant;
pub mod quantize;
pub mod rope;
pub mod sampling;
pub mod synthetic;
pub mod textgen;
pub mod tokenizer;

use qrt_format::FormatError;

/// Errors of the runtime; each message says what was wrong with what.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model file is malformed or unreadable.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The model's metadata is inconsistent.
    #[error("{path}: invalid model: {reason}")]
    InvalidModel {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the graph needs is absent.
    #[error("tensor {0} is missing from {1}")]
    MissingTensor(String, String),
    /// Shapes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Something the backend cannot run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A request that cannot be served (empty prompt, longer than the context, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The KV cache has too few free blocks.
    #[error("KV cache full: {needed} more blocks needed, {free} of {capacity} free")]
    KvCacheFull {
        /// Blocks missing.
        needed: usize,
        /// Blocks free.
        free: usize,
        /// Blocks in the pool.
        capacity: usize,
    },
    /// An allocation failed.
    #[error("out of memory allocating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Its size.
        bytes: u128,
    },
    /// Tokenizer problems.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Reading a source checkpoint failed.
    #[error(transparent)]
    Source(#[from] qrt_format::source_error::SourceError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The GPU: no driver or device, a failed launch, out of device memory.
    #[error(transparent)]
    Cuda(#[from] qrt_kernels::KernelError),
}
