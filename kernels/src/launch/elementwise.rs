//! Launchers of the small kernels of a pass (`elementwise.cu`): rotary embedding and KV store,
//! embedding gather, SiLU-and-multiply, row gathers and conversions, argmax, and target
//! log-probabilities.

use super::*;

impl CudaDevice {
    /// Rotary embedding of `q` and `k` in place, then `k` and `v` into their cache slots.
    ///
    /// # Safety
    /// The addresses in `args` must hold what [`qrt_rope_kv_args`] describes.
    pub unsafe fn rope_kv(&self, args: &qrt_rope_kv_args) -> Result<(), KernelError> {
        if !args.head_dim.is_multiple_of(2) {
            return Err(KernelError::Shape(format!(
                "rotary embedding needs an even head_dim, got {}",
                args.head_dim
            )));
        }
        // SAFETY: qrt_rope_kv_args by value; the caller guarantees the addresses.
        unsafe {
            self.launch(
                "elementwise",
                "qrt_rope_kv",
                (args.rows, 1, 1),
                256,
                &mut params([args]),
            )
        }
    }

    /// `out[r, :] = table[tokens[r], :]` as f32; `table_type` is `f16` or `bf16`.
    ///
    /// # Safety
    /// `table` must hold every row `tokens` names, `tokens` `rows` u32, `out` `rows * cols` f32.
    pub unsafe fn embed(
        &self,
        table_type: &str,
        table: u64,
        tokens: u64,
        out: u64,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        let cols = u32_of("cols", cols)?;
        let kernel = format!("qrt_embed_{table_type}");
        // SAFETY: (const T*, const uint32_t*, float*, uint32_t) as the kernel takes them.
        unsafe {
            self.launch(
                "elementwise",
                &kernel,
                (u32_of("rows", rows)?, 1, 1),
                256,
                &mut params([&table, &tokens, &out, &cols]),
            )
        }
    }

    /// Launches element-wise kernel `kernel` (parameters: the device addresses `pointers`,
    /// then `n` as u32) on up to 1024 blocks of 256 threads, grid-stride loops beyond.
    ///
    /// # Safety
    /// The addresses must be what the kernel reads and writes, each of `n` elements.
    unsafe fn launch_elementwise(
        &self,
        kernel: &str,
        pointers: &[u64],
        n: usize,
    ) -> Result<(), KernelError> {
        let n32 = u32_of("n", n)?;
        let mut list: Vec<*mut c_void> = pointers.iter().map(Param::ptr).collect();
        list.push(Param::ptr(&n32));
        let grid = (n.div_ceil(256).clamp(1, 1024) as u32, 1, 1);
        // SAFETY: the pointers then n, as the kernel takes them; the caller guarantees the
        // addresses, which `pointers` and `n32` keep alive for the call.
        unsafe { self.launch("elementwise", kernel, grid, 256, &mut list) }
    }

    /// `out = silu(gate) * up` over `n` f32.
    ///
    /// # Safety
    /// Each address must hold `n` f32.
    pub unsafe fn silu_mul(
        &self,
        gate: u64,
        up: u64,
        out: u64,
        n: usize,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_elementwise("qrt_silu_mul", &[gate, up, out], n) }
    }

    /// `out[i, :] = x[rows[i], :]` for `count` rows of `cols` f32.
    ///
    /// # Safety
    /// `rows` must hold `count` valid row indices of `x`; `out` room for `count * cols` f32.
    pub unsafe fn gather_rows(
        &self,
        x: u64,
        rows: u64,
        out: u64,
        count: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        let cols = u32_of("cols", cols)?;
        // SAFETY: (const float*, const uint32_t*, float*, uint32_t).
        unsafe {
            self.launch(
                "elementwise",
                "qrt_gather_rows",
                (u32_of("rows", count)?, 1, 1),
                256,
                &mut params([&x, &rows, &out, &cols]),
            )
        }
    }

    /// Rounds `n` f32 at `x` to `ty` at `out`.
    ///
    /// # Safety
    /// `x` must hold `n` f32 and `out` room for `n` 16-bit values.
    pub unsafe fn to_half16(
        &self,
        ty: Half16,
        x: u64,
        out: u64,
        n: usize,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_elementwise(&format!("qrt_to_{}", ty.name()), &[x, out], n) }
    }

    /// Queues the argmax of `rows` rows of `vocab` f32 at `logits` into `keys`:
    /// [`argmax_keys_per_row`] u64 per row, each the argmax of one slice of the row (see
    /// [`argmax_token`]); the row's answer is the largest of its keys.
    ///
    /// # Safety
    /// `logits` must hold `rows * vocab` f32 and `keys` room for
    /// `rows * argmax_keys_per_row(vocab)` u64.
    pub unsafe fn argmax(
        &self,
        logits: u64,
        keys: u64,
        rows: usize,
        vocab: usize,
    ) -> Result<(), KernelError> {
        let grid = (
            u32_of("blocks", argmax_keys_per_row(vocab))?,
            u32_of("rows", rows)?,
            1,
        );
        let vocab = u32_of("vocab", vocab)?;
        // SAFETY: keys holds rows * blocks u64; then (const float*, u64*, uint32_t).
        unsafe {
            self.launch(
                "elementwise",
                "qrt_argmax",
                grid,
                256,
                &mut params([&logits, &keys, &vocab]),
            )
        }
    }

    /// Queues [`argmax`](Self::argmax) into `keys`, then the rows' tokens into `chosen`
    /// (`rows` u32, see [`sampled_token`](crate::sampled_token)) and, for each row `r` with
    /// `feed[r]` not `u32::MAX`, into `next_tokens[feed[r]]`: the input tokens of a pass queued
    /// after this one, which then runs without waiting for the host. At most
    /// `QRT_FEED_MAX_ROWS` rows (the feed goes by value).
    ///
    /// # Safety
    /// As for [`argmax`](Self::argmax); `chosen` must hold `rows` u32 (device or mapped host
    /// memory) and `next_tokens` every row `feed` names.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn argmax_feed(
        &self,
        logits: u64,
        keys: u64,
        rows: usize,
        vocab: usize,
        feed: &[u32],
        next_tokens: u64,
        chosen: u64,
    ) -> Result<(), KernelError> {
        if feed.len() != rows || rows > QRT_FEED_MAX_ROWS as usize {
            return Err(KernelError::Shape(format!(
                "a fed argmax of {rows} rows with {} feed entries (at most {QRT_FEED_MAX_ROWS})",
                feed.len()
            )));
        }
        let mut by_value = qrt_feed {
            rows: [u32::MAX; QRT_FEED_MAX_ROWS as usize],
        };
        by_value.rows[..rows].copy_from_slice(feed);
        let per_row = u32_of("argmax keys per row", argmax_keys_per_row(vocab))?;
        let rows32 = u32_of("rows", rows)?;
        // SAFETY: forwarded from the caller; then (const u64*, u32, u32, qrt_feed, u32*, u32*).
        unsafe {
            self.argmax(logits, keys, rows, vocab)?;
            self.launch(
                "elementwise",
                "qrt_argmax_finalize",
                (1, 1, 1),
                256,
                &mut params([&keys, &per_row, &rows32, &by_value, &next_tokens, &chosen]),
            )
        }
    }

    /// Queues `out[r] = log softmax(logits[r])[targets[r]]` for `rows` rows of `vocab` f32
    /// (perplexity without copying the rows back): one block per row, f64 sums.
    ///
    /// # Safety
    /// `logits` must hold `rows * vocab` f32, `targets` `rows` u32 below `vocab`, `out` room
    /// for `rows` f32.
    pub unsafe fn target_log_probs(
        &self,
        logits: u64,
        targets: u64,
        out: u64,
        rows: usize,
        vocab: usize,
    ) -> Result<(), KernelError> {
        if rows == 0 || vocab == 0 {
            return Err(KernelError::Shape(format!(
                "target log-probabilities of {rows} rows of {vocab} values"
            )));
        }
        let grid = (u32_of("rows", rows)?, 1, 1);
        let vocab = u32_of("vocab", vocab)?;
        // SAFETY: (const float*, const uint32_t*, float*, uint32_t), as the kernel takes
        // them; the caller guarantees the buffers.
        unsafe {
            self.launch(
                "elementwise",
                "qrt_target_log_probs",
                grid,
                256,
                &mut params([&logits, &targets, &out, &vocab]),
            )
        }
    }
}

/// Keys the argmax kernel writes per row of `vocab` logits (one per block of
/// `QRT_ARGMAX_PER_BLOCK`).
pub fn argmax_keys_per_row(vocab: usize) -> usize {
    vocab.div_ceil(QRT_ARGMAX_PER_BLOCK as usize).max(1)
}

/// The token of an argmax key written by [`CudaDevice::argmax`] (`None` for a row of NaNs).
pub fn argmax_token(key: u64) -> Option<u32> {
    (key != 0).then(|| u32::MAX - key as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_blocks_cover_every_logit_once() {
        // A block per 4096 logits (256 threads x 16), the last one partial.
        assert_eq!(argmax_keys_per_row(1), 1);
        assert_eq!(argmax_keys_per_row(4096), 1);
        assert_eq!(argmax_keys_per_row(4097), 2);
        assert_eq!(argmax_keys_per_row(49152), 12); // SmolLM2
        assert_eq!(argmax_keys_per_row(128256), 32); // Llama 3
    }
}
