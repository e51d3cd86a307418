//! Weight quantizers: the numerical core of GPTQ and AWQ as pure functions on f32 matrices.
//!
//! Weights are row-major `[n, k]` (`n` output channels, `k` input features, the layout of a
//! Hugging Face `Linear.weight`); calibration inputs are row-major `[rows, k]`.
//! - [`gptq`]: the layer Hessian ([`HessianAccumulator`]), GPTQ ([`gptq_quantize`]) and
//!   round-to-nearest with the same quantizer ([`rtn_quantize`]).
//! - [`awq`]: AWQ's activation-aware scale search, clipping search, quantizer and the helpers
//!   that fold scales into neighbouring layers.
//! - [`linalg`]: the blocked f64 Cholesky factorization and triangular inverse GPTQ needs.
//!
//! Packing codes into a storage layout is the job of the format codecs, not of this module.

pub mod awq;
pub mod gptq;
pub mod linalg;

pub use awq::{
    activation_scale, apply_clip, awq_quantize, fold_scale_into_linear_rows, fold_scale_into_norm,
    pseudo_quantize, scale_weight_columns, search_clip, search_scales_linear, search_scales_with,
    AwqConfig,
};
pub use gptq::{gptq_quantize, rtn_quantize, GptqConfig, GptqResult, HessianAccumulator};
