//! Token choice on the device (`kernels/cuda/sample.cu`): greedy, or temperature / top-k /
//! top-p sampling with one uniform per row, as the CPU reference
//! (`qrt_runtime::sampling::sample_with_uniform`) chooses.

use crate::launch::{block_threads, params};
use crate::layouts::QRT_SAMPLE_NO_TOKEN;
use crate::{CudaDevice, KernelError};

/// Largest vocabulary [`CudaDevice::sample`] takes: the integer weights of a row (2^40 for its
/// most likely token) must sum below 2^64.
pub const MAX_SAMPLE_VOCAB: usize = 1 << 24;

/// Checks a sampling call; returns its grid (one block per row) and block size (whole warps,
/// up to one thread per token, at most `QRT_MAX_BLOCK_THREADS`).
fn sample_grid(rows: usize, vocab: usize) -> Result<(u32, u32), KernelError> {
    if vocab == 0 || vocab > MAX_SAMPLE_VOCAB {
        return Err(KernelError::Shape(format!(
            "sampling takes a vocabulary of 1 to {MAX_SAMPLE_VOCAB} tokens, got {vocab}"
        )));
    }
    // gridDim.x is at most 2^31 - 1.
    let rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| KernelError::Shape(format!("sampling {rows} rows exceeds 2^31 - 1")))?;
    Ok((rows, block_threads(vocab)))
}

impl CudaDevice {
    /// Queues the choice of one token per row of `rows` rows of `vocab` f32 at `logits` into
    /// `tokens` (`rows` u32, read with [`sampled_token`]): row `r` under the
    /// [`qrt_sample_row`](crate::layouts::qrt_sample_row) `r` of the array at `row_params`.
    ///
    /// # Safety
    /// `logits` must hold `rows * vocab` f32, `row_params` `rows` `qrt_sample_row`, and
    /// `tokens` room for `rows` u32.
    pub unsafe fn sample(
        &self,
        logits: u64,
        row_params: u64,
        tokens: u64,
        rows: usize,
        vocab: usize,
    ) -> Result<(), KernelError> {
        let (grid, threads) = sample_grid(rows, vocab)?;
        if grid == 0 {
            return Ok(());
        }
        let vocab = vocab as u32;
        // SAFETY: (const float*, const qrt_sample_row*, uint32_t*, uint32_t) as the kernel
        // takes them; the caller guarantees the buffers.
        unsafe {
            self.launch(
                "sample",
                "qrt_sample",
                (grid, 1, 1),
                threads,
                &mut params([&logits, &row_params, &tokens, &vocab]),
            )
        }
    }
}

/// The token [`CudaDevice::sample`] chose for a row (`None` for a greedy row of NaNs).
pub fn sampled_token(raw: u32) -> Option<u32> {
    (raw != QRT_SAMPLE_NO_TOKEN).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_grid_uses_whole_warps_within_limits() {
        assert_eq!(sample_grid(3, 4).unwrap(), (3, 32));
        assert_eq!(sample_grid(1, 1000).unwrap(), (1, 1024));
        assert_eq!(sample_grid(64, 128_256).unwrap(), (64, 1024));
        assert_eq!(sample_grid(0, 100).unwrap(), (0, 128));
        assert_eq!(sample_grid(2, MAX_SAMPLE_VOCAB).unwrap().1, 1024);
    }

    #[test]
    fn sample_grid_rejects_bad_shapes() {
        for (rows, vocab) in [(1, 0), (1, MAX_SAMPLE_VOCAB + 1), (1 << 31, 10)] {
            assert!(
                matches!(sample_grid(rows, vocab), Err(KernelError::Shape(_))),
                "{rows} x {vocab}"
            );
        }
    }

    #[test]
    fn sampled_tokens_decode() {
        assert_eq!(sampled_token(7), Some(7));
        assert_eq!(sampled_token(QRT_SAMPLE_NO_TOKEN), None);
    }
}
