//! qrt-eval: measuring how close a model's outputs are to a reference.
//!
//! This first piece compares logits against a reference implementation's top-k logits
//! (how qrt's CPU runtime is checked against Hugging Face transformers). CoQA, perplexity and
//! KL-divergence evaluation build on it.

pub mod coqa;
pub mod error;
pub mod logits;
pub mod ppl;
pub mod stats;

pub use error::EvalError;
