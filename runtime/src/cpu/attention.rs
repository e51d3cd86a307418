//! Causal grouped-query attention over the paged KV cache, on the CPU.
//!
//! Work is split into (sequence, query head) tasks. Each task gathers its key/value head's
//! rows from the sequence's blocks into contiguous buffers, then computes scores and the
//! weighted sum of values with two matrix products (`gemm`), 128 query rows at a time, with the
//! causal mask and a numerically stable softmax in between.

use rayon::prelude::*;

use super::linear::SharedOut;
use crate::backend::{BatchLayout, HeadGeometry};

/// Keys and values of one layer: `[slots, kv_heads * head_dim]` each.
pub struct LayerKv<'a> {
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
}

/// Query rows per score tile.
const QUERY_TILE: usize = 128;

/// For every row of `q` (`[rows, heads * head_dim]`), attends over positions `0..=position` of
/// its own sequence, reading keys and values through the sequence's block table.
pub fn paged_attention(
    q: &[f32],
    kv: LayerKv<'_>,
    batch: &BatchLayout,
    heads: HeadGeometry,
    out: &mut [f32],
) {
    let HeadGeometry {
        num_heads,
        num_kv_heads,
        head_dim: d,
    } = heads;
    let group = num_heads / num_kv_heads;
    let kv_stride = num_kv_heads * d;
    let q_stride = num_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let bs = batch.block_size;
    let shared = SharedOut(out.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..batch.seqs.len())
        .flat_map(|s| (0..num_heads).map(move |h| (s, h)))
        .collect();
    tasks.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(keys, values, scores), (s, head)| {
            let span = &batch.seqs[s];
            let ctx = span.past + span.len;
            let kv_off = (head / group) * d;
            keys.clear();
            values.clear();
            for p in 0..ctx {
                let at = (span.block_table[p / bs] as usize * bs + p % bs) * kv_stride + kv_off;
                keys.extend_from_slice(&kv.k[at..at + d]);
                values.extend_from_slice(&kv.v[at..at + d]);
            }
            for r0 in (0..span.len).step_by(QUERY_TILE) {
                let n = QUERY_TILE.min(span.len - r0);
                let row0 = span.start + r0;
                scores.resize(n * ctx, 0.0);
                // SAFETY: all pointers cover live buffers of the stated shapes and strides:
                // q rows row0..row0+n of head `head`, keys [ctx, d], scores [n, ctx].
                unsafe {
                    gemm::gemm(
                        n,
                        ctx,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        ctx as isize,
                        false,
                        q.as_ptr().add(row0 * q_stride + head * d),
                        1,
                        q_stride as isize,
                        keys.as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (i, row) in scores.chunks_mut(ctx).enumerate() {
                    let visible = span.past + r0 + i + 1;
                    softmax_prefix(row, visible);
                }
                // SAFETY: each (row, head) block of `out` is written by exactly one task;
                // values are [ctx, d], scores [n, ctx].
                unsafe {
                    gemm::gemm(
                        n,
                        d,
                        ctx,
                        shared.at(row0 * q_stride + head * d),
                        1,
                        q_stride as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        ctx as isize,
                        values.as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        },
    );
}

/// Softmax over `row[..visible]`; the rest of the row (future positions) becomes 0.
fn softmax_prefix(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for s in live.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    let inv = 1.0 / total;
    live.iter_mut().for_each(|s| *s *= inv);
    masked.fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqSpan;
    use crate::sampling::Rng;

    /// Naive f64 attention over contiguous per-sequence keys/values.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        pos: usize,
        head: usize,
        h: HeadGeometry,
        q_row: usize,
        kv_base: usize,
    ) -> Vec<f64> {
        let d = h.head_dim;
        let kvh = head / (h.num_heads / h.num_kv_heads);
        let qv = &q[q_row * h.num_heads * d + head * d..][..d];
        let stride = h.num_kv_heads * d;
        let scores: Vec<f64> = (0..=pos)
            .map(|p| {
                let kk = &k[(kv_base + p) * stride + kvh * d..][..d];
                qv.iter()
                    .zip(kk)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..d)
            .map(|j| {
                (0..=pos)
                    .map(|p| w[p] / total * v[(kv_base + p) * stride + kvh * d + j] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn paged_attention_matches_a_naive_reference() {
        let h = HeadGeometry {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
        };
        let bs = 4;
        let stride = h.num_kv_heads * h.head_dim;
        let mut rng = Rng::new(11);
        // Two sequences: 3 cached + 2 new tokens, and 7 new tokens (a prefill).
        let lens = [(3usize, 2usize), (0, 7)];
        let tables: [Vec<u32>; 2] = [vec![5, 1], vec![0, 3]];
        let slots_total = 6 * bs;
        let k: Vec<f32> = (0..slots_total * stride)
            .map(|_| rng.next_normal())
            .collect();
        let v: Vec<f32> = (0..slots_total * stride)
            .map(|_| rng.next_normal())
            .collect();
        let rows = 9;
        let q: Vec<f32> = (0..rows * h.num_heads * h.head_dim)
            .map(|_| rng.next_normal())
            .collect();
        let mut batch = BatchLayout {
            block_size: bs,
            ..Default::default()
        };
        let mut start = 0;
        for (s, &(past, len)) in lens.iter().enumerate() {
            batch.seqs.push(SeqSpan {
                start,
                len,
                past,
                block_table: tables[s].clone(),
            });
            batch.positions.extend((past..past + len).map(|p| p as u32));
            start += len;
        }
        let mut out = vec![f32::NAN; q.len()];
        paged_attention(&q, LayerKv { k: &k, v: &v }, &batch, h, &mut out);
        // Reference: gather each sequence's keys/values contiguously, then attend naively.
        for (s, span) in batch.seqs.iter().enumerate() {
            let ctx = span.past + span.len;
            let gather = |src: &[f32]| -> Vec<f32> {
                (0..ctx)
                    .flat_map(|p| {
                        let slot = tables[s][p / bs] as usize * bs + p % bs;
                        src[slot * stride..(slot + 1) * stride].to_vec()
                    })
                    .collect()
            };
            let (kc, vc) = (gather(&k), gather(&v));
            for i in 0..span.len {
                let row = span.start + i;
                for head in 0..h.num_heads {
                    let want = reference(&q, &kc, &vc, span.past + i, head, h, row, 0);
                    let got =
                        &out[row * h.num_heads * h.head_dim + head * h.head_dim..][..h.head_dim];
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "row {row} head {head}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
