//! qrt-format: the `.qrt` container, GGUF and safetensors readers, and block codecs.
//!
//! Source checkpoints (read-only):
//! - [`gguf`]: GGUF v2/v3 files (llama.cpp), with [`ggml_blocks`] decoding
//!   their quantized tensors to `f32`;
//! - [`safetensors_import`]: Hugging Face checkpoint directories;
//! - [`checkpoint`]: one view over both, with canonical Hugging Face tensor
//!   names and layouts, and the model [`config`].
//!
//! Quantized storage types of the `.qrt` container (bitsandbytes NF4/FP4, LLM.int8(),
//! GPTQ, AWQ) and their codecs are in [`quant`].
//!
//! Errors while reading source checkpoints are [`source_error::SourceError`]s.

pub mod checkpoint;
pub mod config;
pub mod container;
pub mod error;
pub mod ggml_blocks;
pub mod gguf;
mod mapped;
pub mod quant;
pub mod safetensors_import;
pub mod source_error;

pub use error::FormatError;
