//! qrt-bench: measuring speed. Throughput summaries of generation runs, and (in `benches/`)
//! criterion benchmarks of the CPU kernels. `qrt bench` builds on this crate: [`stats`]
//! summarizes timings, [`report`] lays out and saves the results, and [`nvml`] reads GPU
//! memory use.

#![warn(missing_docs)]

pub mod nvml;
pub mod report;
pub mod stats;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Prompt-reading and token-generation speed of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Prompt tokens read.
    pub prompt_tokens: usize,
    /// Seconds spent reading prompts (the steps that also produced the first token).
    pub prefill_seconds: f64,
    /// Tokens produced by decode steps.
    pub decode_tokens: usize,
    /// Seconds spent in decode steps.
    pub decode_seconds: f64,
}

impl Throughput {
    /// From token counts and durations.
    pub fn new(
        prompt_tokens: usize,
        prefill: Duration,
        decode_tokens: usize,
        decode: Duration,
    ) -> Self {
        Self {
            prompt_tokens,
            prefill_seconds: prefill.as_secs_f64(),
            decode_tokens,
            decode_seconds: decode.as_secs_f64(),
        }
    }

    /// Prompt tokens per second (0 when nothing was read).
    pub fn prompt_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_seconds)
    }

    /// Generated tokens per second over the decode steps (0 when there were none).
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_tokens, self.decode_seconds)
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prompt: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({:.1} tokens/s)",
            self.prompt_tokens,
            self.prefill_seconds,
            self.prompt_tokens_per_second(),
            self.decode_tokens,
            self.decode_seconds,
            self.decode_tokens_per_second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_divide_tokens_by_seconds() {
        let t = Throughput::new(
            500,
            Duration::from_millis(250),
            30,
            Duration::from_millis(600),
        );
        assert_eq!(t.prompt_tokens_per_second(), 2000.0);
        assert!((t.decode_tokens_per_second() - 50.0).abs() < 1e-9);
        assert_eq!(Throughput::default().decode_tokens_per_second(), 0.0);
        assert!(t.to_string().contains("2000.0 tokens/s"));
    }
}
