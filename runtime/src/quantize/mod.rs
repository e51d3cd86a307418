//! Quantizing a model: recipes and presets, calibration, and the pipeline behind
//! `qrt quantize`. The numerical cores of GPTQ and AWQ are in [`crate::quant`]; the storage
//! codecs in `qrt_format::quant`.

pub mod calib;
pub mod pipeline;
pub mod recipe;
