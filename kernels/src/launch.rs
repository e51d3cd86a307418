//! Launchers of the decoder kernels (`gemv_one.cu`, `gemv.cu`, `gemv_tc.cu`, `gemm.cu`,
//! `gemm_wgmma.cu`, `gemm_tma.cu`, `attention.cu`, `elementwise.cu`)
//! over raw device addresses. They check what can be checked from the host (sizes, limits)
//! and pick the kernel variant and grid; the callers (the CUDA backend) own the buffers.

use std::ffi::c_void;
use std::sync::PoisonError;

use cudarc::driver::{result, sys, CudaFunction, DeviceRepr, DriverError};

use crate::error::cuda_err;
use crate::layouts::{
    qrt_attn_args, qrt_feed, qrt_gemm_args, qrt_gemm_segment, qrt_gemm_tma_args, qrt_gemv_args,
    qrt_gemv_segment, qrt_rope_kv_args, qrt_tensor_map, QRT_ARGMAX_PER_BLOCK, QRT_FEED_MAX_ROWS,
    QRT_GEMV_MAX_BATCH, QRT_GEMV_MAX_SEGMENTS, QRT_GEMV_MAX_SPLIT, QRT_GEMV_TC_MAX_BATCH,
    QRT_MAX_BLOCK_THREADS,
};
use crate::{CudaDevice, KernelError};

// SAFETY: plain C structs of fixed-width fields with no implicit padding, whose layout nvcc and
// bindgen agree on (static_asserts in qrt_kernels.h, the compile-time layout checks bindgen
// writes into layouts.rs).
unsafe impl DeviceRepr for qrt_gemv_args {}
unsafe impl DeviceRepr for qrt_gemm_args {}
unsafe impl DeviceRepr for qrt_gemm_tma_args {}
unsafe impl DeviceRepr for qrt_attn_args {}
unsafe impl DeviceRepr for qrt_rope_kv_args {}
unsafe impl DeviceRepr for qrt_feed {}

/// A 16-bit floating-point weight type of the matrix kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half16 {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Half16 {
    /// Kernel-name suffix: `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Half16::F16 => "f16",
            Half16::Bf16 => "bf16",
        }
    }
}

/// One weight matrix of a GEMV or GEMM launch: `y[b, :] = w @ x[b, :] (+ bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Device address of `w`, `[n, k]` 16-bit, 16-byte aligned.
    pub w: u64,
    /// Device address of `n` f32 biases, or 0.
    pub bias: u64,
    /// Device address of `y`, `[batch, n]` f32.
    pub y: u64,
    /// Rows of `w`.
    pub n: usize,
}

/// The activations a GEMV reads: `rows` rows (the batch) of `k` f32 at `x`.
#[derive(Clone, Copy, Debug)]
pub struct GemvInput {
    /// Device address of `x`, `[rows, k]` f32.
    pub x: u64,
    /// Rows of `x`: 1 to 8.
    pub rows: usize,
    /// Columns of `x`.
    pub k: usize,
}

/// A deferred decode attention's partitions as the input of the GEMV that follows it (its
/// output projection, [`CudaDevice::gemv_merging`]): per (query row, head), `splits`
/// unnormalised outputs of `head_dim` values with their maxima and sums, laid out as
/// [`CudaDevice::attention_decode`] leaves them when its `out` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions {
    /// Dimension of one head; the GEMV's `k` is a multiple of it.
    pub head_dim: usize,
    /// Partitions per (row, head): 1 to [`MAX_MERGED_PARTITIONS`].
    pub splits: usize,
}

/// Most decode partitions a merging GEMV combines: as many as a context is split into before
/// the splits double (16, the largest decode cluster; up to 4 requested at once, more after a
/// first pass over their maxima, `merged_chunk` in `gemv_tc.cu`).
pub const MAX_MERGED_PARTITIONS: usize = MAX_DECODE_CLUSTER;

/// Decode partitions a merging GEMV requests at once (`kMaxMerged` in `gemv_tc.cu`).
const MERGED_AT_ONCE: usize = 4;

/// The kernels of a tensor-core GEMV besides the plain ones (`gemv_tc.cu`), all with plans of a
/// tile a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcVariant {
    /// `_t1` or `_tw`: f32 input, f32 output; the plan sparing multiprocessors as
    /// [`Fusion::spare_multiprocessors`] says (the other variants take the plan their callers
    /// checked, which does not).
    Plain { spare: bool },
    /// `_tw_merge`: the input a deferred decode attention's partitions (argument: head_dim <<
    /// 8 | partitions).
    Merge(u32),
    /// `_tw_x16`: the input 16-bit values of the weights' type.
    Half16In,
    /// `_tw_y16` (gated): the output 16-bit values of the weights' type.
    Half16Out,
}

/// RMSNorm of a GEMV's input, applied on the fly: the product reads
/// `x / sqrt(mean(x^2) + eps) * weight` (see [`CudaDevice::gemv_fuses_norm`]).
#[derive(Clone, Copy, Debug)]
pub struct InputNorm {
    /// Device address of the `k` f32 norm weights.
    pub weight: u64,
    /// Added to the mean square.
    pub eps: f32,
}

/// What a GEMV does besides `y = w @ x (+ bias)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fusion {
    /// Normalise the input first.
    pub norm: Option<InputNorm>,
    /// `y += product` instead of `y = product` (a residual add).
    pub accumulate: bool,
    /// Where two tensor-core plans keep as many warps busy, take the one of fewer blocks,
    /// leaving whole multiprocessors free for the next kernel's blocks to start on: for q, k
    /// and v, which the attention reads next (H200, three machines: the 1B's decode step at
    /// batches 2 / 4 -0.5-0.8 / -0.8-1.0%, at batch 8 -0.4-0.9% on two and +0.1-0.3% on the
    /// third, the 8B's at batch 8 -0.7-1.2%; the same for gate/up lost 1-3%, RESULTS log 46).
    pub spare_multiprocessors: bool,
}

/// Most decode partitions merged within one thread-block cluster (Hopper's non-portable
/// cluster size).
const MAX_DECODE_CLUSTER: usize = 16;

/// Most partitions of a long context whose partitions stream through the ring (see
/// [`DecodePolicy::split`]): at batch one, two blocks a multiprocessor. The ring kernel issues
/// an instruction every ~5 cycles a warp (ncu, RESULTS log 52), so a multiprocessor needs the
/// warps of two blocks (measured with blocks of 4 warps; since log 56 heads of 64 take 8).
const MAX_LONG_SPLITS: usize = 32;

/// Whether the `splits` partitions of each (sequence, KV head) of a decode attention grid of
/// `blocks` blocks merge through each other's shared memory as one thread-block cluster: when
/// there are several, they fit one cluster, and the whole grid is one wave of `slots` blocks
/// (a block per multiprocessor, two for the tensor-core kernel); else through global memory.
/// On an H200, clusters made batch one faster (1B 0.986 -> 0.962 ms/step, SmolLM2 0.696 ->
/// 0.651, 8B 4.464 -> 4.442) and batches of 4-8 of the register kernel slower (1B batch 8
/// 1.554 -> 1.703).
fn merge_in_cluster(splits: u32, blocks: usize, slots: usize) -> bool {
    (2..=MAX_DECODE_CLUSTER as u32).contains(&splits) && blocks <= slots
}

/// The groups (query heads per KV head) the decode attention kernels are built for: a launch
/// takes the smallest that holds its group.
const DECODE_GROUPS: [u32; 2] = [4, MAX_ATTN_GROUP as u32];
/// Largest decode partition of the register kernel (`kMaxPartition` in attention.cu).
const MAX_ATTN_PARTITION: usize = 64;
/// Tensor-core decode partitions are multiples of this (`DecodeTcShape`: 4 warps of 16-key
/// steps).
const TC_PARTITION_STEP: usize = 64;
/// Threads of a tensor-core decode block (`DecodeTcShape::kThreads`).
const TC_DECODE_THREADS: u32 = 128;
/// Threads of a ring decode block (`RingShape::kThreads`): 8 warps for heads of 64, else 4.
const fn ring_decode_threads(head_dim: usize) -> u32 {
    if head_dim <= 64 {
        2 * TC_DECODE_THREADS
    } else {
        TC_DECODE_THREADS
    }
}
/// Most static shared memory of a tensor-core decode block (`WarpResults` and the queries
/// for groups of 8 heads of 128: 16.5 KB and 2 KB).
const TC_DECODE_STATIC_MAX: usize = 19 * 1024;

/// Bytes of 16-bit weights from which a product is large enough to gain from overlapping the
/// kernels around it. Measured on an H200 (RESULTS logs 40 and 41); the line separates
/// SmolLM2's products, 0.66-3.5 MB, which lost where they were given either rule, from the
/// 1B's and 8B's, 8.4 MB and up:
/// - decode attention on tensor cores followed by an output projection this large
///   (`heads * head_dim` square, as in the Llama family) takes its longest partitions, which
///   leave multiprocessors to the projection's blocks: the 1B gained at batches 2-4 (up to
///   4.6% at 512-token prompts, 11% at 1,024); on SmolLM2 they lost 2-5% at batches 6 and 8;
/// - a tensor-core GEMV this large lets the next kernel in at its start, before its own wait:
///   the 1B gained 0.3-2% at batches 2-8 and the 8B 1.7% at batch 8; SmolLM2's products,
///   given the same, lost 2-3% at batches 6 and 8.
const OVERLAP_BYTES: usize = 4 << 20;

/// Largest partition the tensor-core decode kernel stages whole for heads of `head_dim`
/// (`DecodeTcShape::kMaxStaged`): its keys and values in about 72 KB of shared memory, two
/// blocks a multiprocessor. Longer partitions pass through a ring of stages in the same
/// memory (two of 128 tokens for heads of 64, two of 64 for heads of 128).
fn max_tc_partition(head_dim: usize) -> usize {
    if head_dim <= 64 {
        256
    } else {
        128
    }
}

/// Shared memory of a tensor-core decode block for partitions of `partition` tokens: the
/// partition's keys and values, or the ring's for a longer one (`DecodeTcShape`: rows of
/// `head_dim + 8` halves).
fn tc_partition_bytes(partition: usize, head_dim: usize) -> usize {
    2 * partition.min(max_tc_partition(head_dim)) * (head_dim + 8) * 2
}

/// When decode attention scores on tensor cores (`QRT_ATTN_TC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeTc {
    /// Never (`0`).
    Never,
    /// For batches of several sequences whose 64-token partitions would be more blocks than
    /// multiprocessors (the default; batch one keeps the register kernel).
    Batched,
    /// Always (`all`).
    Always,
}

/// How decode attention splits each sequence's context and which kernel scores the
/// partitions, for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodePolicy {
    /// The device's multiprocessors.
    pub multiprocessors: usize,
    /// When the tensor-core kernel serves.
    pub tensor_cores: DecodeTc,
}

impl DecodePolicy {
    /// The register kernel's splits only (64-token partitions). Which kernel runs is decided at
    /// launch from the partition and the device's own policy
    /// ([`tensor_core_partition`](Self::tensor_core_partition)).
    pub const REGISTERS: DecodePolicy = DecodePolicy {
        multiprocessors: 1,
        tensor_cores: DecodeTc::Never,
    };

    /// (partitions per sequence, tokens per partition) for `seqs` sequences of contexts up to
    /// `max_ctx` tokens with `heads` query heads over `kv_heads` KV heads of `head_dim`. The
    /// register kernel (batch one, or a grid of at most a block per multiprocessor) takes
    /// 64-token partitions, as many as the context needs while they fit one cluster, beyond
    /// that a power of two (few distinct shapes, so few graphs). The tensor-core kernel takes
    /// partitions in steps of 64 tokens, as many as the context needs (a power of two beyond
    /// 16):
    /// - after a small output projection (below `OVERLAP_BYTES`), the shortest
    ///   partitions that keep the grid within a block per multiprocessor, else the longest it
    ///   stages;
    /// - after a large one, the longest it stages: fewer blocks leave multiprocessors to the
    ///   projection's blocks, which load their weights while the attention runs; but where
    ///   those would be more blocks than multiprocessors, partitions three quarters as long
    ///   where they stay on the tensor cores (192 tokens for heads of 64: blocks of 57 KB of
    ///   keys and values, three to a multiprocessor, against two of 74 KB). On an H200, the
    ///   1B at batch 8 -0.6-0.9% a decode step at 512-token prompts and -1.8-2.0% at 1,024,
    ///   at batch 4 with 1,024 -0.6%; where the longest were within the multiprocessors they
    ///   lost 0.4-2.1% (batch 2), and 128-token partitions lost 4-15% (RESULTS log 46).
    ///
    /// On an H200, aiming at two blocks a multiprocessor was slower at batch 4 (1B: 128-token
    /// partitions, 160 blocks, 1.40 ms a step against 1.11).
    ///
    /// Long contexts, where those rules would split a context into more partitions than one
    /// cluster holds, take instead as many partitions as keep the tensor-core kernel's grid
    /// within two blocks a multiprocessor, at most a cluster's (16), or 32 where even 32 would
    /// stream through the ring, in multiples of half the tokens the kernel stages whole;
    /// unless the register kernel is forced. A merge of many partitions by one block had cost
    /// more than the attention itself (the 1B at batch one and 8,192 tokens: 40 µs a layer for
    /// 16 MB of keys and values; RESULTS log 52). The partitions are counted exactly, as below
    /// 16, so a generation records a decode graph per (partitions, length) it passes through:
    /// about 100 up to 32K tokens, against about 20 before.
    ///
    /// Where the (sequence, KV head) pairs alone are more blocks than multiprocessors (the 1B
    /// from 17 sequences), each context is one tensor-core partition, streamed through the
    /// ring beyond what the kernel stages whole: on an H200 at 512-token prompts, the 1B's
    /// step at 32 / 64 sequences 1.75 / 2.23 → 1.67 / 2.04–2.11 ms, SmolLM2's at 64 1.48 →
    /// 1.26, the 8B's at 32 / 64 7.23 / 9.46 → 6.44 / 7.62; at 2,000 tokens the 1B's 2.69 /
    /// 4.02 → 2.34 / 3.19 (RESULTS log 54, call 8). Where they are at least 70% of the
    /// multiprocessors (the 1B and 8B from 12 sequences, SmolLM2 from 31), two partitions a
    /// context: SmolLM2 at 32 / 40 1.15 / 1.18 → 1.03–1.04 / 1.07, the 8B at 12 / 16 5.80–5.86
    /// / 6.13 → 5.58–5.61 / 5.91, the 1B at 16 at 2,000 tokens 1.93 → 1.78; the 1B at 512
    /// tokens about the same (at 12 1.29–1.33 → 1.30–1.31, at 16 1.41 → 1.38–1.41); with fewer
    /// pairs two partitions lost (the 1B at 9 and 11, 72 and 88 pairs, 1.22 / 1.24 → 1.29 /
    /// 1.30–1.33; SmolLM2 at 24, 0.96 → 0.99) (calls 9–10).
    pub fn split(
        &self,
        max_ctx: usize,
        seqs: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> (usize, usize) {
        let max_ctx = max_ctx.max(1);
        let round = |needed: usize| {
            if needed <= MAX_DECODE_CLUSTER {
                needed
            } else {
                needed.next_power_of_two()
            }
        };
        let needed = max_ctx.div_ceil(MAX_ATTN_PARTITION);
        let pairs = seqs.max(1) * kv_heads.max(1);
        let one_wave = pairs * needed <= self.multiprocessors;
        let registers = match self.tensor_cores {
            DecodeTc::Never => true,
            // Batch one was measured only on the register kernel's side of the line (log 29:
            // the tensor-core kernel lost there at 640 tokens).
            DecodeTc::Batched => seqs <= 1 || one_wave,
            DecodeTc::Always => false,
        };
        let whole = max_tc_partition(head_dim);
        // Many sequences: one or two partitions a context (see above).
        if !registers && 10 * pairs >= 7 * self.multiprocessors {
            let parts = if pairs > self.multiprocessors { 1 } else { 2 };
            let partition = max_ctx.div_ceil(parts);
            let step = if partition <= whole {
                TC_PARTITION_STEP
            } else {
                whole / 2
            };
            // At least the shortest tensor-core partition (short contexts stay on tensor cores).
            let partition = partition
                .next_multiple_of(step)
                .max(MAX_ATTN_PARTITION + TC_PARTITION_STEP);
            return (max_ctx.div_ceil(partition), partition);
        }
        let (splits, partition) = self.short_split(registers, max_ctx, pairs, heads, head_dim);
        if splits <= MAX_DECODE_CLUSTER || self.tensor_cores == DecodeTc::Never {
            return (round(splits), partition);
        }
        let long = |most: usize| {
            let splits = (2 * self.multiprocessors / pairs).clamp(1, most);
            let partition = max_ctx.div_ceil(splits).next_multiple_of(whole / 2);
            (max_ctx.div_ceil(partition), partition)
        };
        // Within a cluster's partitions, unless they stream through the ring and still would
        // with more of them (partitions staged whole beyond a cluster would be merged by one
        // block, one partition after another).
        let few = long(MAX_DECODE_CLUSTER);
        match long(MAX_LONG_SPLITS) {
            more if few.1 > whole && more.1 > whole => more,
            _ => few,
        }
    }

    /// [`split`](Self::split)'s rules before the long-context one: (partitions, tokens per
    /// partition) for `pairs` (sequence, KV head) pairs, the partitions not yet rounded.
    fn short_split(
        &self,
        registers: bool,
        max_ctx: usize,
        pairs: usize,
        heads: usize,
        head_dim: usize,
    ) -> (usize, usize) {
        if registers {
            return (max_ctx.div_ceil(MAX_ATTN_PARTITION), MAX_ATTN_PARTITION);
        }
        let largest = max_tc_partition(head_dim);
        let width = heads * head_dim;
        let partition = if width * width * 2 >= OVERLAP_BYTES {
            // Three quarters of it, where it stays a tensor-core partition and the longest
            // would make more blocks than multiprocessors.
            let shorter = largest * 3 / 4 / TC_PARTITION_STEP * TC_PARTITION_STEP;
            if shorter > MAX_ATTN_PARTITION
                && pairs * max_ctx.div_ceil(largest) > self.multiprocessors
            {
                shorter
            } else {
                largest
            }
        } else {
            (TC_PARTITION_STEP..=largest)
                .step_by(TC_PARTITION_STEP)
                .find(|p| pairs * max_ctx.div_ceil(*p) <= self.multiprocessors)
                .unwrap_or(largest)
        };
        (max_ctx.div_ceil(partition), partition)
    }

    /// Whether partitions of `partition` tokens are scored on tensor cores.
    pub fn tensor_core_partition(&self, partition: usize) -> bool {
        partition > MAX_ATTN_PARTITION || self.tensor_cores == DecodeTc::Always
    }
}
/// Largest number of query heads per KV head (`kMaxGroup` in attention.cu).
pub const MAX_ATTN_GROUP: usize = 8;

/// Bytes of the decode attention's work area: per (sequence, query head, split) an output of
/// `head_dim` f32, a maximum and a sum; per (sequence, KV head) a u32 arrival counter, which
/// must be zero before the first launch.
pub fn attention_decode_work_bytes(
    seqs: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    splits: usize,
) -> (usize, usize) {
    let partials = seqs * heads * splits * (head_dim + 2) * 4;
    (partials, partials + seqs * kv_heads * 4)
}

/// (query row, head) pairs one prefill attention block computes (`kPrefillPairs` in
/// attention.cu).
const PREFILL_PAIRS: usize = 64;
/// Threads of a prefill attention block: two halves (alternate key tiles) of a warp per 16
/// pairs.
const PREFILL_THREADS: u32 = PREFILL_PAIRS as u32 * 4;

/// Dynamic shared memory of a prefill attention block for heads of `head_dim` (64 or 128):
/// each half's two key and two value buffers of 64 keys (32 for heads of 128), rows padded by
/// 8 values (`PrefillShape::kSharedBytes` in attention.cu).
fn prefill_shared_bytes(head_dim: usize) -> usize {
    let keys = if head_dim == 64 { 64 } else { 32 };
    2 * 4 * keys * (head_dim + 8) * 2
}

/// Query rows per prefill attention tile for `group` query heads per KV head: the tile's rows
/// times the group's heads fill one block's (row, head) pairs.
pub fn attention_tile_rows(group: usize) -> usize {
    PREFILL_PAIRS / group.clamp(1, MAX_ATTN_GROUP)
}

/// The shape part of GEMM arguments, checked: `m > 0`, `k` a positive multiple of 8, `a` and
/// the weights 16-byte aligned (cp.async copies 16-byte pieces).
fn gemm_args(
    a: u64,
    m: usize,
    k: usize,
    mut weights: impl Iterator<Item = u64>,
) -> Result<qrt_gemm_args, KernelError> {
    if k == 0 || !k.is_multiple_of(8) || m == 0 {
        return Err(KernelError::Shape(format!(
            "GEMM needs m > 0 and k a positive multiple of 8, got m = {m}, k = {k}"
        )));
    }
    if !a.is_multiple_of(16) || weights.any(|w| !w.is_multiple_of(16)) {
        return Err(KernelError::Shape(
            "GEMM operands must be 16-byte aligned".into(),
        ));
    }
    Ok(qrt_gemm_args {
        a,
        m: u32_of("m", m)?,
        k: u32_of("k", k)?,
        ..Default::default()
    })
}

/// Smallest k the wgmma GEMM takes (below it, the mma.sync GEMM is faster).
const WGMMA_MIN_K: usize = 4096;

/// Dynamic shared memory of a wgmma GEMM block of `warpgroups` warpgroups: 4 stages of a
/// (64 warpgroups) x 64 and a 128 x 64 tile of 16-bit values, and 1 KiB for alignment
/// (`WgShape` in gemm_wgmma.cu).
fn gemm_wgmma_smem(warpgroups: usize) -> usize {
    4 * (64 * warpgroups + 128) * 64 * 2 + 1024
}

/// Dynamic shared memory of a TMA GEMM block (gemm_tma.cu): 1 KiB to align the ring, a
/// 192 KiB ring of stages (4 of 48 KiB, or 6 of 32 KiB), a full and an empty mbarrier a stage.
const GEMM_TMA_SMEM: usize = 1024 + 192 * 1024 + 2 * 6 * 8;

/// Smallest k the TMA GEMM takes: shorter k loops fill its pipeline too little.
const GEMM_TMA_MIN_K: usize = 1024;
/// Fewest rows of `a` the TMA GEMM takes: fewer leave its 128-row tiles mostly empty.
const GEMM_TMA_MIN_M: usize = 256;

/// The k split of a TMA GEMM of `tiles` tiles and `ktiles` 64-wide k steps on
/// `multiprocessors`: 2 where that keeps the grid within one wave and at least 8 steps per
/// split (at most `max_splits`), else 1. Clusters of 4 blocks of this kernel's shared memory
/// did not all fit at once on the H200 (the 1B's o and down ran as if in two waves).
fn gemm_tma_splits(
    tiles: usize,
    ktiles: usize,
    multiprocessors: usize,
    max_splits: usize,
) -> usize {
    if max_splits >= 2 && 2 * tiles <= multiprocessors && ktiles / 2 >= 8 {
        2
    } else {
        1
    }
}

/// Output columns of a TMA GEMM tile `width` weight rows wide: gated tiles hold half gate and
/// half up rows.
fn tma_tile_outputs(width: usize, gated: bool) -> usize {
    if gated {
        width / 2
    } else {
        width
    }
}

/// The tile width (weight rows: 256 or 128) and k split of a TMA GEMM of `row_tiles` tiles of
/// 128 rows over matrices of `ns` outputs with `ktiles` k steps: 256 wide where the grid then
/// fills 90% of the device, else whichever width gives the larger grid (on a tie the one that
/// splits less, then 256: the 1B's q/k/v, RESULTS logs 50 and 51); `None`
/// where the grid would fill less than half the device (the mma.sync kernels' smaller tiles
/// do better there). Gated GEMMs (gate and up, 128 outputs a tile) take 256 and no split;
/// without `split_k` (`QRT_GEMM_SPLITK=0`) none splits.
fn gemm_tma_plan(
    row_tiles: usize,
    ns: &[usize],
    ktiles: usize,
    multiprocessors: usize,
    gated: bool,
    split_k: bool,
) -> Option<(usize, usize)> {
    let max_splits = if gated || !split_k { 1 } else { 2 };
    let grid = |width: usize| {
        let outputs = tma_tile_outputs(width, gated);
        let tiles = row_tiles * ns.iter().map(|n| n.div_ceil(outputs)).sum::<usize>();
        let splits = gemm_tma_splits(tiles, ktiles, multiprocessors, max_splits);
        (width, splits, tiles * splits)
    };
    let wide = grid(256);
    let (width, splits, blocks) = if gated || 10 * wide.2 >= 9 * multiprocessors {
        wide
    } else {
        let narrow = grid(128);
        if (narrow.2, wide.1) > (wide.2, narrow.1) {
            narrow
        } else {
            wide
        }
    };
    (2 * blocks >= multiprocessors).then_some((width, splits))
}

/// The TMA GEMM arguments of `args`: maps of `a` (boxes of `a_rows` rows) and of every weight
/// matrix (boxes of 128 rows), each segment's first column tile counted in tiles of `outputs`
/// columns; and the column tiles (`gated`: gate's, which up's rows share).
fn tma_args(
    ty: Half16,
    args: &qrt_gemm_args,
    a_rows: u32,
    outputs: usize,
    gated: bool,
) -> Result<(qrt_gemm_tma_args, usize), KernelError> {
    let (m, k) = (args.m as usize, args.k as usize);
    let mut tma = qrt_gemm_tma_args {
        a: tensor_map(ty, args.a, m, k, a_rows)?,
        gemm: *args,
        ..Default::default()
    };
    let mut tiles = 0;
    for (i, seg) in tma.gemm.seg[..args.num_segments as usize]
        .iter_mut()
        .enumerate()
    {
        tma.w[i] = tensor_map(ty, seg.w, seg.n as usize, k, 128)?;
        seg.first_tile = u32_of("tiles", tiles)?;
        if !gated || i == 0 {
            tiles += (seg.n as usize).div_ceil(outputs);
        }
    }
    Ok((tma, tiles))
}

/// Most rows of `a` the skinny GEMM takes (`gemm_skinny` in gemm_tma.cu: its wgmma's N).
pub const GEMM_SKINNY_MAX_M: usize = 64;

/// Most blocks of a skinny GEMM's cluster, which split its k loop (the portable cluster size).
const MAX_SKINNY_SPLIT: usize = 8;

/// Dynamic shared memory of a skinny GEMM block (gemm_tma.cu): 1 KiB to align the ring, the
/// 192 KiB ring (8 stages of 24 KiB, or 4 of 40 KiB gated), a full and an empty mbarrier a
/// stage.
const GEMM_SKINNY_SMEM: usize = 1024 + 192 * 1024 + 2 * 8 * 8;

/// Into how many blocks a skinny GEMM of `tiles` 128-row weight tiles and `ktiles` 64-wide k
/// steps splits its k loop: as many as keep the grid within one block a multiprocessor, at
/// most [`MAX_SKINNY_SPLIT`] and at most one a k step.
fn gemm_skinny_splits(tiles: usize, ktiles: usize, multiprocessors: usize) -> usize {
    (multiprocessors / tiles.max(1))
        .min(ktiles)
        .clamp(1, MAX_SKINNY_SPLIT)
}

/// A TMA map of the row-major `[rows, k]` 16-bit matrix at `addr`: boxes of `box_rows` rows by
/// 64 columns, 128-byte swizzle, zeros outside the matrix (gemm_tma.cu).
fn tensor_map(
    ty: Half16,
    addr: u64,
    rows: usize,
    k: usize,
    box_rows: u32,
) -> Result<qrt_tensor_map, KernelError> {
    use sys::{
        CUtensorMapDataType as Data, CUtensorMapFloatOOBfill as Fill,
        CUtensorMapInterleave as Interleave, CUtensorMapL2promotion as Promotion,
        CUtensorMapSwizzle as Swizzle,
    };
    let data = match ty {
        Half16::F16 => Data::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        Half16::Bf16 => Data::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    };
    let dims = [k as u64, rows as u64];
    let strides = [2 * k as u64];
    let boxes = [64u32, box_rows];
    let steps = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer refers to an array of the rank (2) or rank - 1 entries the call
    // reads; the address is only recorded in the map.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data,
            2,
            addr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Swizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            Promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(cuda_err(format!(
            "encoding a TMA map of a {rows} x {k} matrix"
        )))?;
        // SAFETY: the driver wrote the map; both types are 128 opaque bytes.
        Ok(std::mem::transmute::<sys::CUtensorMap, qrt_tensor_map>(
            map.assume_init(),
        ))
    }
}

/// Every (module, kernel) the launchers of this crate may launch, so that a build can be
/// checked for all of them without a GPU.
pub fn kernel_inventory() -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for ty in [Half16::F16, Half16::Bf16] {
        let t = ty.name();
        all.push(("gemv_one", format!("qrt_gemv_one_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_gated_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_lean_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_lean_gated_{t}")));
        for groups in 3..=7 {
            all.push(("gemv_one", format!("qrt_gemv_one_stream{groups}_{t}")));
            all.push(("gemv_one", format!("qrt_gemv_one_tiled{groups}_{t}")));
        }
        for batch in 1..=QRT_GEMV_MAX_BATCH {
            for rows in [1, 2, 4] {
                all.push(("gemv", format!("qrt_gemv_{t}_b{batch}_r{rows}")));
            }
            for rows in [2, 4] {
                all.push(("gemv", format!("qrt_gemv_gated_{t}_b{batch}_r{rows}")));
            }
        }
        for variant in ["", "gated_"] {
            for bm in [64, 128] {
                all.push(("gemm", format!("qrt_gemm_{variant}{t}_m{bm}")));
            }
            for warpgroups in [1, 2] {
                all.push((
                    "gemm_wgmma",
                    format!("qrt_gemm_wg_{variant}{t}_w{warpgroups}"),
                ));
            }
            all.push(("gemm_tma", format!("qrt_gemm_tma_{variant}{t}")));
        }
        all.push(("gemm_tma", format!("qrt_gemm_tma_n128_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_gated_{t}")));
        for (warps, cols) in [8, 16].into_iter().flat_map(|w| [(w, ""), (w, "_c16")]) {
            for tiles in ["t1", "tw"] {
                all.push(("gemv_tc", format!("qrt_gemv_tc_{t}_w{warps}_{tiles}{cols}")));
                all.push((
                    "gemv_tc",
                    format!("qrt_gemv_tc_gated_{t}_w{warps}_{tiles}{cols}"),
                ));
            }
            for variant in ["merge", "x16"] {
                all.push((
                    "gemv_tc",
                    format!("qrt_gemv_tc_{t}_w{warps}_tw_{variant}{cols}"),
                ));
            }
            all.push((
                "gemv_tc",
                format!("qrt_gemv_tc_gated_{t}_w{warps}_tw_y16{cols}"),
            ));
        }
        all.push(("elementwise", format!("qrt_to_{t}")));
    }
    for d in [64, 128] {
        all.push(("attention", format!("qrt_attn_prefill_d{d}")));
        for g in DECODE_GROUPS {
            all.push(("attention", format!("qrt_attn_decode_d{d}_g{g}")));
            all.push(("attention", format!("qrt_attn_decode_d{d}_g{g}_cluster")));
            all.push(("attention", format!("qrt_attn_decode_tc_d{d}_g{g}")));
            all.push(("attention", format!("qrt_attn_decode_tc_d{d}_g{g}_cluster")));
            all.push(("attention", format!("qrt_attn_decode_tc_ring_d{d}_g{g}")));
        }
    }
    for name in [
        "qrt_embed_f16",
        "qrt_embed_bf16",
        "qrt_rope_kv",
        "qrt_silu_mul",
        "qrt_gather_rows",
        "qrt_argmax",
        "qrt_argmax_finalize",
        "qrt_target_log_probs",
    ] {
        all.push(("elementwise", name.to_string()));
    }
    all.push(("norm", "qrt_rms_norm_f32".to_string()));
    for ty in [Half16::F16, Half16::Bf16] {
        all.push(("norm", crate::norm::rms_norm_to_half16_kernel(ty)));
    }
    all.push(("sample", "qrt_sample".to_string()));
    all
}

/// The name stem of the tensor-core GEMV kernels for weights of `ty` (`gated`: SwiGLU's
/// gate and up in one launch); plans and variants complete it (`gemv_tc.cu`).
fn tc_stem(ty: Half16, gated: bool) -> String {
    let gate = if gated { "gated_" } else { "" };
    format!("qrt_gemv_tc_{gate}{}", ty.name())
}

/// How a tensor-core GEMV runs (`gemv_tc.cu`): blocks of `warps` warps holding `per_block`
/// 16-row tiles at a time, `split` blocks of a cluster splitting k, `walkers` clusters walking
/// the tile groups, `shared` bytes staging a block's slice of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcPlan {
    pub(crate) warps: usize,
    pub(crate) per_block: usize,
    pub(crate) split: usize,
    pub(crate) walkers: usize,
    pub(crate) shared: usize,
}

/// Longest input row a tensor-core GEMV of 16 batch columns merges a deferred decode
/// attention's partitions into. On an H200 (RESULTS log 55), the 1B's o projection (k = 2,048)
/// at 16 sequences merged them in 14.0 us a layer and the attention left them in 13.9,
/// against 17.7 for an attention merging them itself and 15.0 for the o GEMM after it; the
/// 8B's (k = 4,096) at 12 sequences took 41.5 and 18.9 against 22.6 and 24.2.
const WIDE_MERGE_MAX_K: usize = 2048;

/// Largest batch the tensor-core GEMV takes (16 columns beyond [`QRT_GEMV_MAX_BATCH`] rows).
pub const GEMV_TC_MAX_ROWS: usize = QRT_GEMV_TC_MAX_BATCH as usize;

/// The batch columns of the tensor-core GEMV kernels for `batch` rows (`kCols` in
/// `gemv_tc.cu`) and the suffix of their names.
fn tc_columns(batch: usize) -> (usize, &'static str) {
    if batch > QRT_GEMV_MAX_BATCH as usize {
        (GEMV_TC_MAX_ROWS, "_c16")
    } else {
        (QRT_GEMV_MAX_BATCH as usize, "")
    }
}

/// Static shared memory of a tensor-core GEMV block of `warps` warps and `cols` batch columns,
/// bytes: its partial tiles (`part`) and the rows' squares from every block of a cluster
/// (`squares` in `gemv_tc.cu`; keep the two in step).
const fn tc_static_shared(warps: usize, cols: usize) -> usize {
    warps * 16 * cols * 4 + QRT_GEMV_MAX_SPLIT as usize * cols * 4
}

/// Bytes of 16-bit weights a tensor-core GEMV of `tiles` tiles of rows of `k` reads: every
/// tile 16 rows (gated: 8 of gate, 8 of up).
const fn tc_weight_bytes(tiles: usize, k: usize) -> usize {
    tiles * 16 * k * 2
}

/// Shared memory a tensor-core GEMV block stages `batch` rows of a slice of `steps` k-steps in:
/// 16-bit values, rows padded 64 bytes apart.
const fn tc_slice_bytes(batch: usize, steps: usize) -> usize {
    batch * (steps * 64 + 64)
}

/// Most shared memory a tensor-core GEMV block of `warps` warps and `cols` batch columns
/// stages its slice of the input in: 80 KB where two blocks share a multiprocessor (8 warps),
/// 200 KB for one (16), within what a block may opt in to (`optin`) and what the blocks of a
/// multiprocessor (`shared_per_sm`, less `reserved` a block) hold beside their static shared
/// memory.
fn tc_stage_max(
    warps: usize,
    cols: usize,
    optin: usize,
    shared_per_sm: usize,
    reserved: usize,
) -> usize {
    let per_multiprocessor = 16 / warps;
    let cap = if per_multiprocessor > 1 {
        80 * 1024
    } else {
        200 * 1024
    };
    let fixed = tc_static_shared(warps, cols);
    cap.min(optin.saturating_sub(fixed))
        .min((shared_per_sm / per_multiprocessor).saturating_sub(fixed + reserved))
}

/// Weights below which a tensor-core GEMV keeps to blocks of one tile, unsplit: its time is
/// latency more than bytes, and a cluster's barriers cost more than the input reads they save
/// (SmolLM2 at batch 4 and 8 lost 17-20% with tile groups split across clusters, H200).
const TC_GROUP_MIN_BYTES: usize = 8 << 20;

/// The plan of a tensor-core GEMV of `tiles` 16-row tiles, `batch` input rows of `k`, on
/// `multiprocessors`, its k split over clusters of at most `max_split` blocks, `spare` as
/// [`Fusion::spare_multiprocessors`];
/// `stage_max(warps)` is the most shared memory a block may stage in ([`tc_stage_max`]);
/// `clusters_fit(warps, split, shared)` says how many such clusters the device holds at once.
///
/// Blocks of 8 warps (two a multiprocessor: the kernels' launch bounds hold them to 128
/// registers a thread) or 16 (one). Matrices of [`TC_GROUP_MIN_BYTES`] or more take a tile a
/// warp where a cluster can split k: the widest (a power of two) whose blocks make one wave,
/// that the device holds, and that leaves each block two k-steps or more. Otherwise a tile a
/// block, unsplit, the blocks walking the tiles. Chosen: a split group of tiles if any, then
/// blocks of 8 warps where they walk more than one round (two blocks a multiprocessor: while
/// one waits at its barrier between tiles the other streams; H200, the output head of the 1B
/// at batch 8: decode steps 1.040 -> 1.029-1.035 ms), then the block size that keeps more
/// warps busy on average over its rounds, then the one with more blocks (fewer where `spare`).
/// `None` when no slice of the input fits in shared memory.
fn tc_plan(
    tiles: usize,
    batch: usize,
    k: usize,
    multiprocessors: usize,
    (max_split, spare): (usize, bool),
    stage_max: impl Fn(usize) -> usize,
    mut clusters_fit: impl FnMut(usize, usize, usize) -> usize,
) -> Option<TcPlan> {
    let steps = k / 32;
    let large = tc_weight_bytes(tiles, k) >= TC_GROUP_MIN_BYTES;
    // Beyond QRT_GEMV_MAX_BATCH rows (16 columns), groups of tiles only in 16-warp blocks:
    // twice the tiles a group, so half the input staged. On an H200 (RESULTS log 55, calls
    // 9-10) the 1B at 9 / 12 / 16 sequences -5 / -6 / -3%, the 8B at 12 / 16 -1 / -2%;
    // SmolLM2's output head, which no cluster of 16-warp blocks splits in one wave, lost 3% in
    // 16-warp blocks of a tile a block, so those keep the usual choice.
    let candidates: &[(usize, bool)] = match (large, batch > QRT_GEMV_MAX_BATCH as usize) {
        (true, false) => &[(8, true), (16, true), (8, false), (16, false)],
        (true, true) => &[(16, true), (8, false), (16, false)],
        (false, _) => &[(8, false), (16, false)],
    };
    let mut best: Option<(TcPlan, (bool, bool, usize, isize))> = None;
    for &(warps, grouped) in candidates {
        let per_multiprocessor = 16 / warps;
        let capacity = multiprocessors * per_multiprocessor;
        let per_block = if grouped { warps } else { 1 };
        let groups = tiles.div_ceil(per_block);
        // (A block sends each of its tiles' sums to one block of the cluster: at most as
        // many blocks as tiles.)
        let mut split = if grouped {
            max_split.max(1).next_power_of_two().min(per_block)
        } else {
            1
        };
        let plan = loop {
            let shared = tc_slice_bytes(batch, steps.div_ceil(split));
            let fits = shared <= stage_max(warps);
            if split == 1 {
                // A group of tiles pays only where a cluster splits its k (unsplit, the 1B's
                // output head took 148 us at batch 8 against 134 with a tile a block).
                break (fits && !grouped).then_some(TcPlan {
                    warps,
                    per_block,
                    split,
                    walkers: groups.min(capacity),
                    shared,
                });
            }
            if fits
                && groups * split <= capacity
                && steps / split >= 2
                && clusters_fit(warps, split, shared) >= groups
            {
                break Some(TcPlan {
                    warps,
                    per_block,
                    split,
                    walkers: groups,
                    shared,
                });
            }
            split /= 2;
        };
        if let Some(plan) = plan {
            let rounds = groups.div_ceil(plan.walkers);
            let blocks = (plan.walkers * plan.split) as isize;
            let key = (
                grouped,
                warps == 8 && rounds > 1,
                groups * plan.split * warps / rounds,
                if spare { -blocks } else { blocks },
            );
            if best.as_ref().is_none_or(|(_, k)| key > *k) {
                best = Some((plan, key));
            }
        }
    }
    best.map(|(plan, _)| plan)
}

/// Into how many clusters' blocks the k loop of a plain GEMM of `tiles` 64-row tiles and
/// `ktiles` 32-wide k steps splits (`gemm.cu`): 4 or 2 when the tiles alone would leave
/// multiprocessors idle, as long as the blocks stay within two per multiprocessor and each
/// keeps at least 8 k steps; else 1.
fn split_k_factor(tiles: usize, ktiles: usize, multiprocessors: usize) -> usize {
    [4, 2]
        .into_iter()
        .find(|&s| tiles * s <= 2 * multiprocessors && ktiles / s >= 8)
        .unwrap_or(1)
}

/// Checks a GEMV call and lays out its segments, `rows_per_block` weight rows per block;
/// returns the arguments and the number of blocks.
fn gemv_args(
    input: GemvInput,
    segments: &[Segment],
    rows_per_block: usize,
    k_multiple: usize,
    fusion: Fusion,
) -> Result<(qrt_gemv_args, u32), KernelError> {
    let GemvInput { x, rows: batch, k } = input;
    if !(1..=GEMV_TC_MAX_ROWS).contains(&batch) {
        return Err(KernelError::Shape(format!(
            "GEMV batch {batch} outside 1..={GEMV_TC_MAX_ROWS}"
        )));
    }
    if k == 0 || !k.is_multiple_of(k_multiple) {
        return Err(KernelError::Shape(format!(
            "this GEMV needs k a positive multiple of {k_multiple}, got {k}"
        )));
    }
    check_segments("GEMV", segments.len())?;
    let mut args = qrt_gemv_args {
        x,
        k: u32_of("k", k)?,
        num_segments: segments.len() as u32,
        norm: fusion.norm.map_or(0, |n| n.weight),
        eps: fusion.norm.map_or(0.0, |n| n.eps),
        accumulate: fusion.accumulate.into(),
        ..Default::default()
    };
    let mut blocks = 0usize;
    for (slot, s) in args.seg.iter_mut().zip(segments) {
        if s.n == 0 || !s.w.is_multiple_of(16) {
            return Err(KernelError::Shape(format!(
                "GEMV matrix of {} rows at {:#x}: needs rows and 16-byte alignment",
                s.n, s.w
            )));
        }
        *slot = qrt_gemv_segment {
            w: s.w,
            bias: s.bias,
            y: s.y,
            n: u32_of("n", s.n)?,
            first_block: u32_of("blocks", blocks)?,
        };
        blocks += s.n.div_ceil(rows_per_block);
    }
    Ok((args, u32_of("blocks", blocks)?))
}

/// Whether a merging GEMV of rows of `k`, its k split over `split` blocks, combines `splits`
/// partitions: up to [`MERGED_AT_ONCE`] always, more only where each lane stages one chunk of 8
/// values of its block's slice (4 chunks a k-step of 32; see
/// [`CudaDevice::gemv_merges_partials`]).
fn merge_fits(splits: usize, k: usize, split: usize) -> bool {
    let chunks = (k / 32).div_ceil(split.max(1)) * 4;
    splits <= MERGED_AT_ONCE || chunks <= 32
}

/// A gated GEMV takes no bias, no accumulation and 16-byte aligned matrices.
fn check_gated(gate: &Segment, up: u64, fusion: Fusion) -> Result<(), KernelError> {
    if gate.bias != 0 || !up.is_multiple_of(16) || fusion.accumulate {
        return Err(KernelError::Shape(
            "the gated GEMV takes no bias, no accumulation and 16-byte aligned matrices".into(),
        ));
    }
    Ok(())
}

/// [`gemv_args`] of a gated GEMV: gate and up (`[gate.n, k]` at `up`) as the two segments of
/// one launch.
fn gated_args(
    input: GemvInput,
    gate: Segment,
    up: u64,
    rows_per_block: usize,
    k_multiple: usize,
    fusion: Fusion,
) -> Result<(qrt_gemv_args, u32), KernelError> {
    let (mut args, blocks) = gemv_args(input, &[gate], rows_per_block, k_multiple, fusion)?;
    args.seg[1] = qrt_gemv_segment {
        w: up,
        n: args.seg[0].n,
        ..Default::default()
    };
    args.num_segments = 2;
    Ok((args, blocks))
}

/// A launch of `what` multiplies 1 to QRT_GEMV_MAX_SEGMENTS matrices.
fn check_segments(what: &str, count: usize) -> Result<(), KernelError> {
    if count == 0 || count > QRT_GEMV_MAX_SEGMENTS as usize {
        return Err(KernelError::Shape(format!(
            "{what} takes 1 to {QRT_GEMV_MAX_SEGMENTS} matrices, got {count}"
        )));
    }
    Ok(())
}

/// Bytes of input the batch-one GEMV may stage in shared memory (`k` f32).
const GEMV_ONE_MAX_STAGED: usize = 200 * 1024;

/// Longest row the lean batch-one GEMV takes. Longer rows stream in sequential groups of 8
/// chunks per lane, which lost to the plain kernel at k = 8192 and 14336 on the H200 (the
/// Llama down projections) and won at 2048 and 4096.
const LEAN_MAX_K: usize = 4096;

/// Which batch-one GEMV kernel a product takes (`gemv_one.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OneVariant {
    /// Pairs of rows per warp, 16 loads in flight per lane.
    Plain,
    /// A row per warp in few registers, the next kernel let in early (short rows).
    Lean,
    /// A row per warp streamed as this many groups of 2048 values through two register sets.
    Stream(usize),
    /// Rows of this many groups of 2048 values ([`stream_groups`]) of one matrix, not
    /// normalised, in blocks of 8 rows whose warps read 32 KB in a row at each step.
    Tiled(usize),
}

impl OneVariant {
    /// The variant for rows of `k` values (`gated`: gate/up pairs) of `matrices` matrices, the
    /// input `normed` or not.
    fn for_row(k: usize, gated: bool, matrices: u32, normed: bool) -> Self {
        let lean_max = if gated { LEAN_GATED_MAX_K } else { LEAN_MAX_K };
        if k <= lean_max {
            OneVariant::Lean
        } else if gated {
            OneVariant::Plain
        } else {
            match stream_groups(k) {
                Some(groups) if matrices == 1 && !normed => OneVariant::Tiled(groups),
                Some(groups) => OneVariant::Stream(groups),
                None => OneVariant::Plain,
            }
        }
    }

    /// The variant's part of the kernel name.
    fn infix(self) -> String {
        match self {
            OneVariant::Plain => String::new(),
            OneVariant::Lean => "lean_".into(),
            OneVariant::Stream(groups) => format!("stream{groups}_"),
            OneVariant::Tiled(groups) => format!("tiled{groups}_"),
        }
    }
}

/// Groups of 2048 values a row of `k` streams as, where a streaming and a tiled kernel are
/// built for it (`QRT_GEMV_ONE_STREAM` and `QRT_GEMV_ONE_TILED` in `gemv_one.cu`: 3 to 7
/// groups, k = 6144 to 14336). The tiled kernel, for one matrix and an input that is not
/// normalised, took the 1B's down projection from 10.7 to 9.3 us on the H200, where the
/// streaming one leaves a block's loads in pieces of 8 KB (RESULTS logs 48, 49).
fn stream_groups(k: usize) -> Option<usize> {
    (k.is_multiple_of(2048) && (3..=7).contains(&(k / 2048))).then_some(k / 2048)
}

/// Longest row the lean gated batch-one GEMV takes (4 chunks per lane of gate and of up per
/// group): it won at k = 576 and 2048 on the H200.
const LEAN_GATED_MAX_K: usize = 2048;

/// A normalised input needs a kernel that normalises (see [`CudaDevice::gemv_fuses_norm`]).
fn check_norm(dev: &CudaDevice, input: GemvInput, fusion: Fusion) -> Result<(), KernelError> {
    if fusion.norm.is_some() && !dev.gemv_fuses_norm(input.rows, input.k) {
        return Err(KernelError::Shape(format!(
            "a GEMV of {} rows of {} values cannot normalise its input",
            input.rows, input.k
        )));
    }
    Ok(())
}

/// The FMA GEMV kernels (`gemv.cu`) take at most [`QRT_GEMV_MAX_BATCH`] rows and cannot
/// normalise their input: an error rather than a silently unnormalised product, should a
/// normalised input ever reach them.
fn fma_takes(input: GemvInput, fusion: Fusion) -> Result<(), KernelError> {
    if input.rows > QRT_GEMV_MAX_BATCH as usize {
        return Err(KernelError::Shape(format!(
            "no tensor-core plan for {} rows of {} values (the FMA GEMV takes at most \
             {QRT_GEMV_MAX_BATCH})",
            input.rows, input.k
        )));
    }
    if fusion.norm.is_some() {
        return Err(KernelError::Shape(format!(
            "no tensor-core plan for a normalised input of {} rows of {} values",
            input.rows, input.k
        )));
    }
    Ok(())
}

/// Threads of a block that gives each of `units` work items a thread: whole warps, at least
/// one, at most `QRT_MAX_BLOCK_THREADS`.
pub(crate) fn block_threads(units: usize) -> u32 {
    (units.div_ceil(32) * 32).clamp(32, QRT_MAX_BLOCK_THREADS as usize) as u32
}

/// Shared memory a batch-one GEMV launch asks each multiprocessor to keep beyond its own
/// resident blocks: room for the blocks of the next kernel, which programmatic dependent
/// launch starts while this one runs. Measured on the H200 (RESULTS log 33): with the driver's
/// own choice of configuration SmolLM2's batch-one step took 0.504 ms and the 1B's 0.815;
/// with this preference 0.458 and 0.803; with 0 or 16 KB of room no gain.
const GEMV_ONE_HEADROOM: usize = 64 * 1024;

/// Shared memory a merging tensor-core GEMV (the o projection after a deferred decode
/// attention) of `rows` rows asks each multiprocessor to keep beyond its own blocks, where its
/// plan leaves one block a multiprocessor (without a preference the driver chooses). With the
/// 1B's two 10 KB blocks this asks for 51% and 65% of the H200's 228 KB, which the driver
/// rounds up to its 132 and 164 KB configurations (RESULTS log 45). Measured on the H200 (log 44),
/// the 1B's decode steps at batches 2 / 3 / 4 / 5 / 6 / 8 with 512-token prompts: 96 KB
/// -2.1 / -2.1 / -3.4 / -3.2 / -2.2 / -1.0%, 128 KB at 6 and 8 rows -1.9 / -1.6% (at 2 rows
/// +4%); with 1,024-token prompts 96 KB -1.2 / -0.3 / +0.3 / +0.7% at 2-5 rows, 128 KB
/// -0.2 / -2.8% at 6 and 8. 32 or 64 KB gained less, a whole multiprocessor's shared memory
/// cost 30-40%. Why it pays is not established: room for the next kernel's blocks, for the
/// attention's still running, or the L1 cache the configuration leaves the kernels that
/// follow.
fn merge_headroom(rows: usize) -> usize {
    if rows >= 6 {
        128 * 1024
    } else {
        96 * 1024
    }
}

/// The shared memory a merging tensor-core GEMV of `rows` rows launched as `plan` on
/// `multiprocessors` asks for ([`merge_headroom`]): only where the plan's blocks are one a
/// multiprocessor or fewer. (The room is counted beside as many of its blocks as a
/// multiprocessor holds, as it was measured.)
fn merge_reserve(plan: &TcPlan, rows: usize, multiprocessors: usize) -> Option<SharedReserve> {
    (plan.walkers * plan.split <= multiprocessors).then(|| SharedReserve {
        resident: 16 / plan.warps,
        headroom: merge_headroom(rows),
    })
}

/// How a launch asks for shared memory beyond its blocks' own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SharedReserve {
    /// Blocks of the launch resident on one multiprocessor.
    resident: usize,
    /// Bytes to keep free beside them.
    headroom: usize,
}

/// The preferred shared-memory carveout, in percent of a multiprocessor's `per_sm` bytes,
/// that holds `reserve.resident` blocks of `per_block` bytes each (their dynamic, static and
/// driver-reserved shared memory) and `reserve.headroom` more; 100 where that is more than
/// the multiprocessor has. The driver takes the smallest configuration the multiprocessor
/// supports that holds the percent (on the H200, RESULTS log 45: 44% of 228 KB, 100.3 KB,
/// takes 132 KB), so the configuration holds the blocks and the headroom.
fn carveout_percent(reserve: SharedReserve, per_block: usize, per_sm: usize) -> u32 {
    let need = reserve.resident * per_block + reserve.headroom;
    u32::try_from((need * 100).div_ceil(per_sm.max(1)).min(100)).unwrap_or(100)
}

/// Options of a launch beyond its grid and parameters.
#[derive(Clone, Copy, Debug)]
struct LaunchOptions {
    /// Thread-block clusters of this many blocks along z (1: none).
    cluster_z: u32,
    /// Programmatic dependent launch (where the device has it).
    overlap: bool,
    /// A preferred shared-memory configuration for this launch (else the driver's choice).
    reserve: Option<SharedReserve>,
}

/// Lets `f` take `shared` bytes of dynamic shared memory: above 48 KiB (with its static
/// shared memory) a kernel must opt in.
fn allow_dynamic_shared(f: &CudaFunction, shared: u32) -> Result<(), DriverError> {
    if shared == 0 {
        return Ok(());
    }
    let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    if i64::from(shared) > i64::from(f.get_attribute(attribute)?) {
        f.set_attribute(attribute, shared as i32)?;
    }
    Ok(())
}

/// The launch attribute for clusters of `cluster_z` blocks along z, allowing `f` sizes beyond
/// the portable 8 where asked (Hopper allows 16).
fn cluster_attribute(
    f: &CudaFunction,
    cluster_z: u32,
) -> Result<sys::CUlaunchAttribute, DriverError> {
    if cluster_z > 8 {
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
            1,
        )?;
    }
    let mut attr =
        zeroed_attribute(sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION);
    attr.value.clusterDim.x = 1;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = cluster_z;
    Ok(attr)
}

/// A launch attribute of kind `id`, its value zeroed for the caller to fill.
fn zeroed_attribute(id: sys::CUlaunchAttributeID) -> sys::CUlaunchAttribute {
    sys::CUlaunchAttribute {
        id,
        pad: [0; 4],
        // SAFETY: an all-zero union is a valid value; the caller sets the field that is read.
        value: unsafe { std::mem::zeroed() },
    }
}

fn u32_of(what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| KernelError::Shape(format!("{what} = {v} does not fit 32 bits")))
}

/// Pointers to kernel arguments, in order, as cuLaunchKernel takes them.
pub(crate) fn params<const N: usize>(values: [&dyn Param; N]) -> [*mut c_void; N] {
    values.map(|v| v.ptr())
}

/// A kernel argument, passed by address.
pub(crate) trait Param {
    fn ptr(&self) -> *mut c_void;
}

impl<T: DeviceRepr> Param for T {
    fn ptr(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

impl CudaDevice {
    /// Launches `kernel` of `module` with 1-D blocks of `block` threads.
    ///
    /// # Safety
    /// `params` must point to values matching the kernel's parameter list, and every device
    /// address among them must be valid for what the kernel does with it.
    pub(crate) unsafe fn launch(
        &self,
        module: &'static str,
        kernel: &str,
        grid: (u32, u32, u32),
        block: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_config(module, kernel, (grid, block, 0), params, true) }
    }

    /// Launches `kernel` of `module` with (grid, threads per block, dynamic shared bytes),
    /// with programmatic dependent launch only when `overlap` (large kernels that fill the GPU
    /// run better without it).
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    pub(crate) unsafe fn launch_config(
        &self,
        module: &'static str,
        kernel: &str,
        config: ((u32, u32, u32), u32, usize),
        params: &mut [*mut c_void],
        overlap: bool,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_clustered(module, kernel, config, 1, params, overlap) }
    }

    /// [`launch_config`](Self::launch_config) with thread-block clusters of `cluster_z` blocks
    /// along z (1: none; more than 8 only where the device allows non-portable sizes).
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    pub(crate) unsafe fn launch_clustered(
        &self,
        module: &'static str,
        kernel: &str,
        config: ((u32, u32, u32), u32, usize),
        cluster_z: u32,
        params: &mut [*mut c_void],
        overlap: bool,
    ) -> Result<(), KernelError> {
        let options = LaunchOptions {
            cluster_z,
            overlap,
            reserve: None,
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_with(module, kernel, config, params, options) }
    }

    /// [`launch_clustered`](Self::launch_clustered) with every option.
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    unsafe fn launch_with(
        &self,
        module: &'static str,
        kernel: &str,
        (grid, block, shared): ((u32, u32, u32), u32, usize),
        params: &mut [*mut c_void],
        LaunchOptions {
            cluster_z,
            overlap,
            reserve,
        }: LaunchOptions,
    ) -> Result<(), KernelError> {
        let f = self.function(module, kernel)?;
        self.bind()?;
        let context = || format!("launching {kernel} (grid {grid:?}, block {block})");
        let shared = u32_of("shared memory bytes", shared)?;
        allow_dynamic_shared(&f, shared).map_err(cuda_err(context()))?;
        let pdl = self.programmatic_launch && overlap;
        let mut attrs: Vec<sys::CUlaunchAttribute> = Vec::with_capacity(3);
        if let Some(reserve) = reserve {
            let fixed = f
                .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(cuda_err(context()))?;
            let per_block =
                shared as usize + usize::try_from(fixed).unwrap_or(0) + self.shared_reserved;
            let mut attr = zeroed_attribute(
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            );
            attr.value.sharedMemCarveout = carveout_percent(reserve, per_block, self.shared_per_sm);
            attrs.push(attr);
        }
        if pdl {
            // Programmatic dependent launch: this kernel may start while the previous one
            // finishes; it waits (griddepcontrol.wait) before reading what that one wrote.
            let mut attr = zeroed_attribute(
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            );
            attr.value.programmaticStreamSerializationAllowed = 1;
            attrs.push(attr);
        }
        if cluster_z > 1 {
            attrs.push(cluster_attribute(&f, cluster_z).map_err(cuda_err(context()))?);
        }
        if attrs.is_empty() {
            // SAFETY: the caller guarantees the parameters; the driver checks grid and block.
            return unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    grid,
                    (block, 1, 1),
                    shared,
                    self.stream.cu_stream(),
                    params,
                )
            }
            .map_err(cuda_err(context()));
        }
        let config = self.launch_config_of(grid, block, shared, &mut attrs);
        // SAFETY: as above; `config` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(cuda_err(context()))
    }

    /// The launch configuration of `grid` blocks of `block` threads with `shared` bytes of
    /// dynamic shared memory and `attrs`, on this device's stream (it points into `attrs`).
    fn launch_config_of(
        &self,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        attrs: &mut [sys::CUlaunchAttribute],
    ) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shared,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        }
    }

    /// How many clusters of `cluster_z` blocks of `kernel` (`block` threads, `shared` bytes of
    /// dynamic shared memory) the device holds at once.
    pub(crate) fn max_active_clusters(
        &self,
        module: &'static str,
        kernel: &str,
        block: u32,
        shared: usize,
        cluster_z: usize,
    ) -> Result<usize, KernelError> {
        let f = self.function(module, kernel)?;
        self.bind()?;
        let context = || format!("occupancy of {kernel} in clusters of {cluster_z}");
        let shared = u32_of("shared memory bytes", shared)?;
        let cluster_z = u32_of("cluster size", cluster_z)?;
        allow_dynamic_shared(&f, shared).map_err(cuda_err(context()))?;
        let mut attrs = [cluster_attribute(&f, cluster_z).map_err(cuda_err(context()))?];
        let config = self.launch_config_of((1, 1, cluster_z), block, shared, &mut attrs);
        let mut clusters = 0i32;
        // SAFETY: `config` and `attrs` outlive the call, which only reads them.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &config) }
            .result()
            .map_err(cuda_err(context()))?;
        Ok(usize::try_from(clusters).unwrap_or(0))
    }

    /// [`tc_stage_max`] on this device, for a batch of `batch` rows.
    fn tc_stage_max(&self, warps: usize, batch: usize) -> usize {
        tc_stage_max(
            warps,
            tc_columns(batch).0,
            self.shared_optin,
            self.shared_per_sm,
            self.shared_reserved,
        )
    }

    /// Whether a GEMV of `rows` rows of `k` values can normalise its input ([`Fusion::norm`]):
    /// a batch of one whose input fits the batch-one kernel's shared memory, or a batch of 2
    /// to [`GEMV_TC_MAX_ROWS`] on the tensor cores (`k` a multiple of 32, the whole input
    /// staged in one block of 16 warps, which the tensor-core plans can always fall back to).
    pub fn gemv_fuses_norm(&self, rows: usize, k: usize) -> bool {
        Self::one_row_kernel(rows, k)
            || ((2..=GEMV_TC_MAX_ROWS).contains(&rows)
                && k.is_multiple_of(32)
                && tc_slice_bytes(rows, k / 32) <= self.tc_stage_max(16, rows))
    }

    /// Whether a product of `rows` rows of `k` values into matrices of `ns` rows each (of
    /// 16-bit type `ty`) should run as [`gemv`](Self::gemv) rather than a GEMM: any batch up
    /// to [`QRT_GEMV_MAX_BATCH`], and larger ones up to [`GEMV_TC_MAX_ROWS`] where the
    /// tensor-core GEMV has a plan (`spare` as [`Fusion::spare_multiprocessors`]) and
    /// [`wide_gemv_pays`](Self::wide_gemv_pays).
    pub fn gemv_takes(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        ns: impl IntoIterator<Item = usize>,
        spare: bool,
    ) -> Result<bool, KernelError> {
        if rows <= QRT_GEMV_MAX_BATCH as usize {
            return Ok(true);
        }
        if rows > GEMV_TC_MAX_ROWS || !k.is_multiple_of(32) {
            return Ok(false);
        }
        let tiles = ns.into_iter().map(|n| n.div_ceil(16)).sum();
        Ok(self.wide_gemv_pays(rows, tc_weight_bytes(tiles, k))
            && self
                .tc_plan(&tc_stem(ty, false), tiles, rows, k, spare)?
                .is_some())
    }

    /// Whether a product of `rows` rows over `weight_bytes` of weights is better off on the
    /// tensor-core GEMV than on a GEMM: always up to [`QRT_GEMV_MAX_BATCH`] rows; beyond (16
    /// batch columns), within the device's bound (`QRT_GEMV_WIDE_MAX_MB`; by default 80 MiB
    /// where the skinny GEMM runs, any size elsewhere).
    pub fn wide_gemv_pays(&self, rows: usize, weight_bytes: usize) -> bool {
        rows <= QRT_GEMV_MAX_BATCH as usize || weight_bytes <= self.wide_gemv_max_bytes
    }

    /// Whether [`gemv_half16`](Self::gemv_half16) takes `rows` rows of `k` values of `ty`
    /// into a matrix of `n` rows (where it [pays](Self::wide_gemv_pays)).
    pub fn gemv_half16_takes(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        n: usize,
    ) -> Result<bool, KernelError> {
        Ok(self
            .tile_a_warp_plan(&tc_stem(ty, false), n.div_ceil(16), rows, k)?
            .is_some())
    }

    /// Whether a GEMV of `rows` rows of `k` values runs on the batch-one kernel
    /// (`gemv_one.cu`): one row whose `k` f32 fit its shared memory.
    fn one_row_kernel(rows: usize, k: usize) -> bool {
        rows == 1 && k.is_multiple_of(8) && k * 4 <= GEMV_ONE_MAX_STAGED
    }

    /// `y[b, :] = w @ x[b, :] (+ bias)` for each segment, `x` being `[batch, k]` f32, with
    /// `fusion`'s extras. One launch covers up to three matrices that read the same `x`. A
    /// batch of one runs on the FMA units with f32 activations (`gemv_one.cu`); larger
    /// batches run on the tensor cores ([`gemv_tc`](Self::gemv_tc)) when `k` is a multiple of
    /// 32 and a slice of the input fits a block's shared memory, else (up to
    /// [`QRT_GEMV_MAX_BATCH`] rows; an error beyond) on the FMA units.
    ///
    /// # Safety
    /// Every address must hold what [`Segment`], [`GemvInput`] and [`Fusion`] say.
    pub unsafe fn gemv(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_norm(self, input, fusion)?;
        if Self::one_row_kernel(input.rows, input.k) {
            let (args, _) = gemv_args(input, segments, 1, 8, fusion)?;
            let rows = segments.iter().map(|s| s.n).sum();
            // SAFETY: forwarded from the caller.
            return unsafe { self.launch_gemv_one(ty, false, &args, rows) };
        }
        // SAFETY: forwarded from the caller.
        if input.rows > 1
            && input.k.is_multiple_of(32)
            && unsafe { self.planned_gemv_tc(ty, input, segments, fusion)? }
        {
            return Ok(());
        }
        fma_takes(input, fusion)?;
        let total: usize = segments.iter().map(|s| s.n).sum();
        let rows_per_block = if total >= 8192 {
            4
        } else if total >= 1024 {
            2
        } else {
            1
        };
        let (args, blocks) = gemv_args(input, segments, rows_per_block, 8, fusion)?;
        let kernel = format!("qrt_gemv_{}_b{}_r{rows_per_block}", ty.name(), input.rows);
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemv_fma(&kernel, &args, blocks) }
    }

    /// Launches the batch-one GEMV kernel for `ty` (`gated` or not) over `rows` output rows
    /// (gated: pairs): 8 warps per block, `k` f32 of dynamic shared memory. A plain kernel takes
    /// up to two blocks per multiprocessor (all resident at once), a warp per pair of rows at
    /// a time; a lean one (rows up to [`LEAN_MAX_K`], gated [`LEAN_GATED_MAX_K`]) a warp per
    /// row, up to four blocks per multiprocessor; a streaming one (plain rows of
    /// [`stream_groups`] x 2048) a warp per row, and a tiled one (the same rows of one matrix,
    /// no norm) 8 rows per block, both two blocks per multiprocessor.
    ///
    /// # Safety
    /// `args` must describe valid buffers for the kernel.
    unsafe fn launch_gemv_one(
        &self,
        ty: Half16,
        gated: bool,
        args: &qrt_gemv_args,
        rows: usize,
    ) -> Result<(), KernelError> {
        const WARPS: usize = 8;
        let variant =
            OneVariant::for_row(args.k as usize, gated, args.num_segments, args.norm != 0);
        let kernel = format!(
            "qrt_gemv_one_{}{}{}",
            variant.infix(),
            if gated { "gated_" } else { "" },
            ty.name()
        );
        let per_multiprocessor = if variant == OneVariant::Lean { 4 } else { 2 };
        let blocks = rows
            .div_ceil(WARPS)
            .min(self.multiprocessors() * per_multiprocessor);
        let options = LaunchOptions {
            cluster_z: 1,
            overlap: true,
            reserve: self.gemv_one_carveout.then(|| SharedReserve {
                resident: blocks.div_ceil(self.multiprocessors()),
                headroom: GEMV_ONE_HEADROOM,
            }),
        };
        // SAFETY: qrt_gemv_args by value, as the kernel takes it; the caller guarantees it.
        unsafe {
            self.launch_with(
                "gemv_one",
                &kernel,
                (
                    (u32_of("blocks", blocks)?, 1, 1),
                    (WARPS * 32) as u32,
                    args.k as usize * 4,
                ),
                &mut params([args]),
                options,
            )
        }
    }

    /// Launches FMA GEMV kernel `kernel` on `blocks` blocks, a warp per 512 values of k (1 to
    /// 8 warps).
    ///
    /// # Safety
    /// `args` must describe valid buffers for `kernel`.
    unsafe fn launch_gemv_fma(
        &self,
        kernel: &str,
        args: &qrt_gemv_args,
        blocks: u32,
    ) -> Result<(), KernelError> {
        let warps = (args.k / 8 / 64).clamp(1, 8);
        // SAFETY: qrt_gemv_args by value, as the kernel takes it; the caller guarantees it.
        unsafe {
            self.launch(
                "gemv",
                kernel,
                (blocks, 1, 1),
                warps * 32,
                &mut params([args]),
            )
        }
    }

    /// The plan of tensor-core GEMV `stem` over `tiles` tiles of `batch` rows of `k`, `spare`
    /// as [`Fusion::spare_multiprocessors`] ([`tc_plan`]; cached, with the device's occupancy
    /// of each cluster it considers).
    fn tc_plan(
        &self,
        stem: &str,
        tiles: usize,
        batch: usize,
        k: usize,
        spare: bool,
    ) -> Result<Option<TcPlan>, KernelError> {
        let key = (stem.to_string(), tiles, batch, k, spare);
        let mut plans = self.tc_plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = plans.get(&key) {
            return Ok(*plan);
        }
        let plan = tc_plan(
            tiles,
            batch,
            k,
            self.multiprocessors(),
            (self.gemv_tc_split as usize, spare),
            |warps| self.tc_stage_max(warps, batch),
            |warps, split, shared| {
                // A cluster the driver cannot size (a partitioned device, say) is not formed.
                let kernel = format!("{stem}_w{warps}_tw{}", tc_columns(batch).1);
                self.max_active_clusters("gemv_tc", &kernel, warps as u32 * 32, shared, split)
                    .unwrap_or(0)
            },
        );
        if std::env::var_os("QRT_TC_PLAN_LOG").is_some() {
            eprintln!("tc plan {stem} tiles {tiles} batch {batch} k {k} spare {spare}: {plan:?}");
        }
        plans.insert(key, plan);
        Ok(plan)
    }

    /// The plain tensor-core GEMV of `segments` where it has a plan; `false`, launching
    /// nothing, where it has none.
    ///
    /// # Safety
    /// As for [`gemv_tc`](Self::gemv_tc).
    unsafe fn planned_gemv_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<bool, KernelError> {
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        let stem = tc_stem(ty, false);
        // SAFETY: forwarded from the caller.
        unsafe {
            self.launch_planned_gemv_tc(
                &stem,
                &args,
                tiles,
                input,
                TcVariant::Plain {
                    spare: fusion.spare_multiprocessors,
                },
            )
        }
    }

    /// Whether [`gemv_merging`](Self::gemv_merging) takes a product of `n` rows of type `ty`
    /// whose input is `rows` rows of `k` values left as `parts`: a batch of 2 to
    /// [`GEMV_TC_MAX_ROWS`] whose tensor-core plan gives each warp a tile of its own (where it
    /// pays; beyond 8 rows only for rows of up to [`WIDE_MERGE_MAX_K`]; a cluster splitting k,
    /// so that a block merges only its slice), at most [`MAX_MERGED_PARTITIONS`] partitions,
    /// more than [`MERGED_AT_ONCE`] only where each lane stages one chunk of 8 values: those
    /// take a round trip to L2 per pair after the first over their maxima, and on an H200 the
    /// 8B's o projection at batch 8, two chunks a lane, lost 1-1.6% with 5 (RESULTS log 43).
    pub fn gemv_merges_partials(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        n: usize,
        parts: Partitions,
    ) -> Result<bool, KernelError> {
        self.merges_partials(ty, n.div_ceil(16), rows, k, parts)
    }

    /// [`gemv_merges_partials`](Self::gemv_merges_partials) for `tiles` 16-row tiles.
    fn merges_partials(
        &self,
        ty: Half16,
        tiles: usize,
        rows: usize,
        k: usize,
        parts: Partitions,
    ) -> Result<bool, KernelError> {
        if !(1..=MAX_MERGED_PARTITIONS).contains(&parts.splits)
            || parts.head_dim == 0
            || !parts.head_dim.is_multiple_of(8)
            || parts.head_dim > 0xff_ffff
            || !k.is_multiple_of(parts.head_dim)
            || tiles == 0
        {
            return Ok(false);
        }
        // (16 batch columns: only rows of up to WIDE_MERGE_MAX_K.)
        if rows > QRT_GEMV_MAX_BATCH as usize && k > WIDE_MERGE_MAX_K {
            return Ok(false);
        }
        let stem = tc_stem(ty, false);
        let Some(plan) = self.tile_a_warp_plan(&stem, tiles, rows, k)? else {
            return Ok(false);
        };
        Ok(merge_fits(parts.splits, k, plan.split))
    }

    /// Whether a SwiGLU MLP of `rows` rows, `hidden` wide with `ffn` intermediate rows of type
    /// `ty`, passes silu(gate) * up from the gated GEMV to down in 16 bits
    /// ([`gemv_gated_half16`](Self::gemv_gated_half16), then
    /// [`gemv_half16`](Self::gemv_half16)): where both products plan a tile a warp (and pay:
    /// gate and up together, down, being half their size, then too). Down then stages half the
    /// bytes, and the same values: its own staging rounds its input to `ty`.
    pub fn mlp_in_half16(
        &self,
        ty: Half16,
        rows: usize,
        hidden: usize,
        ffn: usize,
    ) -> Result<bool, KernelError> {
        Ok(ffn.is_multiple_of(8)
            && self
                .tile_a_warp_plan(&tc_stem(ty, true), ffn / 8, rows, hidden)?
                .is_some()
            && self
                .tile_a_warp_plan(&tc_stem(ty, false), hidden.div_ceil(16), rows, ffn)?
                .is_some())
    }

    /// [`gemv_gated`](Self::gemv_gated) writing `out` (`gate.y`) as `[batch, n]` values of
    /// `ty`, rounded to nearest, where [`mlp_in_half16`](Self::mlp_in_half16) says so; an
    /// error otherwise.
    ///
    /// # Safety
    /// As for [`gemv_gated`](Self::gemv_gated), `gate.y` holding `batch * n` 16-bit values.
    pub unsafe fn gemv_gated_half16(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_gated(&gate, up, fusion)?;
        if !gate.n.is_multiple_of(8)
            || self
                .tile_a_warp_plan(&tc_stem(ty, true), gate.n / 8, input.rows, input.k)?
                .is_none()
        {
            return Err(KernelError::Shape(format!(
                "no 16-bit output from a gated GEMV of {} rows x {} for {} rows of {} values",
                gate.n, input.k, input.rows, input.k
            )));
        }
        check_norm(self, input, fusion)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gated_tc(ty, input, gate, up, fusion, TcVariant::Half16Out)? };
        Ok(())
    }

    /// [`gemv`](Self::gemv) of `input.x` holding `[rows, k]` values of `ty` (a
    /// [`gemv_gated_half16`](Self::gemv_gated_half16) output), where the product plans a tile a
    /// warp (see [`mlp_in_half16`](Self::mlp_in_half16)); an error otherwise. No norm.
    ///
    /// # Safety
    /// As for [`gemv`](Self::gemv), `input.x` holding `rows * k` 16-bit values.
    pub unsafe fn gemv_half16(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        let stem = tc_stem(ty, false);
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        if fusion.norm.is_some()
            || self
                .tile_a_warp_plan(&stem, tiles as usize, input.rows, input.k)?
                .is_none()
        {
            return Err(KernelError::Shape(format!(
                "no GEMV of 16-bit input for {} rows of {} values into {tiles} tiles",
                input.rows, input.k
            )));
        }
        // SAFETY: forwarded from the caller; the plan for these tiles exists (checked above).
        unsafe { self.launch_planned_gemv_tc(&stem, &args, tiles, input, TcVariant::Half16In)? };
        Ok(())
    }

    /// [`gemv`](Self::gemv) of a deferred decode attention's partitions: `input.x` is the
    /// attention's work area, whose `parts` for each (row, head) are combined as the input is
    /// staged, so that the attention need not merge them itself. Only where
    /// [`gemv_merges_partials`](Self::gemv_merges_partials) says so; an error otherwise.
    ///
    /// # Safety
    /// `input.x` must hold what [`attention_decode`](Self::attention_decode) left there for
    /// `input.rows` sequences of `input.k / parts.head_dim` heads in `parts.splits`
    /// partitions; every segment what [`Segment`] says.
    pub unsafe fn gemv_merging(
        &self,
        ty: Half16,
        input: GemvInput,
        parts: Partitions,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        if fusion.norm.is_some()
            || !self.merges_partials(ty, tiles as usize, input.rows, input.k, parts)?
        {
            return Err(KernelError::Shape(format!(
                "no merging GEMV for {} rows of {} values in {} partitions of heads of {}",
                input.rows, input.k, parts.splits, parts.head_dim
            )));
        }
        let stem = tc_stem(ty, false);
        let merge = (parts.head_dim << 8 | parts.splits) as u32;
        // SAFETY: forwarded from the caller; the plan for these tiles exists (checked above).
        unsafe {
            self.launch_planned_gemv_tc(&stem, &args, tiles, input, TcVariant::Merge(merge))?
        };
        Ok(())
    }

    /// The gated tensor-core GEMV (tiles of 8 rows of gate over the same 8 of up) in `variant`,
    /// as its plan says; `false`, launching nothing, where it has none.
    ///
    /// # Safety
    /// As for [`gemv_gated`](Self::gemv_gated) (and `gate.y` as `variant` writes it).
    unsafe fn launch_gated_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
        variant: TcVariant,
    ) -> Result<bool, KernelError> {
        let (args, tiles) = gated_args(input, gate, up, 8, 32, fusion)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_planned_gemv_tc(&tc_stem(ty, true), &args, tiles, input, variant) }
    }

    /// The plan of tensor-core GEMV `stem` over `tiles` tiles of `rows` rows of `k` where it
    /// gives each warp a tile, which its variants other than [`TcVariant::Plain`] need (a plan
    /// that spares no multiprocessors), and where it [pays](Self::wide_gemv_pays) (those
    /// variants run only where it does).
    fn tile_a_warp_plan(
        &self,
        stem: &str,
        tiles: usize,
        rows: usize,
        k: usize,
    ) -> Result<Option<TcPlan>, KernelError> {
        if !(2..=GEMV_TC_MAX_ROWS).contains(&rows)
            || !k.is_multiple_of(32)
            || !self.wide_gemv_pays(rows, tc_weight_bytes(tiles, k))
        {
            return Ok(None);
        }
        Ok(self
            .tc_plan(stem, tiles, rows, k, false)?
            .filter(|p| p.per_block > 1))
    }

    /// Launches tensor-core GEMV `stem` over `tiles` 16-row tiles of `input` as its plan
    /// ([`tc_plan`](Self::tc_plan)) says, in `variant` (other than plain: a plan of a tile a
    /// warp only); `false`, launching nothing, when it has no plan.
    ///
    /// # Safety
    /// `args` must describe valid buffers for the kernel.
    unsafe fn launch_planned_gemv_tc(
        &self,
        stem: &str,
        args: &qrt_gemv_args,
        tiles: u32,
        input: GemvInput,
        variant: TcVariant,
    ) -> Result<bool, KernelError> {
        let spare = variant == TcVariant::Plain { spare: true };
        let Some(plan) = self.tc_plan(stem, tiles as usize, input.rows, input.k, spare)? else {
            return Ok(false);
        };
        let batch = input.rows as u32;
        let early = u32::from(tc_weight_bytes(tiles as usize, input.k) >= OVERLAP_BYTES);
        let layout = match (plan.per_block, variant) {
            (1, TcVariant::Plain { .. }) => "t1",
            (1, _) => {
                return Err(KernelError::Shape(format!(
                    "{stem}: {variant:?} needs a plan of a tile a warp"
                )))
            }
            (_, TcVariant::Plain { .. }) => "tw",
            (_, TcVariant::Merge(_)) => "tw_merge",
            (_, TcVariant::Half16In) => "tw_x16",
            (_, TcVariant::Half16Out) => "tw_y16",
        };
        let grid = (plan.walkers as u32, 1, plan.split as u32);
        let kernel = format!(
            "{stem}_w{}_{layout}{}",
            plan.warps,
            tc_columns(input.rows).1
        );
        let config = (grid, plan.warps as u32 * 32, plan.shared);
        // The merging kernels take a fifth argument, and may ask for room beside their blocks.
        let (merge, count, reserve) = match variant {
            TcVariant::Merge(merge) => {
                let reserve = self
                    .merge_carveout
                    .then(|| merge_reserve(&plan, input.rows, self.multiprocessors()))
                    .flatten();
                (merge, 5, reserve)
            }
            _ => (0, 4, None),
        };
        let options = LaunchOptions {
            cluster_z: plan.split as u32,
            overlap: true,
            reserve,
        };
        let mut all = params([args, &batch, &tiles, &early, &merge]);
        // SAFETY: (qrt_gemv_args, uint32_t batch, uint32_t tiles, uint32_t early[, uint32_t
        // merge]) by value, `shared` bytes of dynamic shared memory for the staged slice,
        // clusters of `split` blocks along z; the caller guarantees the buffers.
        unsafe { self.launch_with("gemv_tc", &kernel, config, &mut all[..count], options)? };
        Ok(true)
    }

    /// SwiGLU's input: `out[b, :] = silu(gate @ x[b, :]) * (up @ x[b, :])`, gate and up both
    /// `[n, k]` of type `ty` (`gate.y` is `out`, `[batch, n]` f32; no biases), in one pass
    /// that reads both matrices; kernels as for [`gemv`](Self::gemv). `fusion` may normalise
    /// the input; it cannot accumulate.
    ///
    /// # Safety
    /// `x` must hold `[batch, k]` f32, `gate.w` and `up` `[gate.n, k]` 16-bit values.
    pub unsafe fn gemv_gated(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_gated(&gate, up, fusion)?;
        check_norm(self, input, fusion)?;
        let t = ty.name();
        let with_up = |rows_per_block, k_multiple| {
            gated_args(input, gate, up, rows_per_block, k_multiple, fusion)
        };
        if Self::one_row_kernel(input.rows, input.k) {
            let (args, _) = with_up(1, 8)?;
            // SAFETY: forwarded from the caller.
            return unsafe { self.launch_gemv_one(ty, true, &args, gate.n) };
        }
        // SAFETY: forwarded from the caller.
        if input.rows > 1
            && input.k.is_multiple_of(32)
            && unsafe {
                self.launch_gated_tc(
                    ty,
                    input,
                    gate,
                    up,
                    fusion,
                    TcVariant::Plain { spare: false },
                )?
            }
        {
            return Ok(());
        }
        fma_takes(input, fusion)?;
        let rows_loaded = if gate.n >= 4096 { 4 } else { 2 };
        let (args, blocks) = with_up(rows_loaded / 2, 8)?;
        // SAFETY: forwarded from the caller.
        unsafe {
            self.launch_gemv_fma(
                &format!("qrt_gemv_gated_{t}_b{}_r{rows_loaded}", input.rows),
                &args,
                blocks,
            )
        }
    }

    /// [`gemv`](Self::gemv) on the tensor cores for any batch of 1 to [`GEMV_TC_MAX_ROWS`]: the
    /// activations (times their RMSNorm when `fusion` normalises) are rounded to the weight
    /// type, 16 weight rows per tile; `k` must be a multiple of 32, and an error says so when
    /// no slice of the input fits a block's shared memory.
    ///
    /// # Safety
    /// Every address must hold what [`Segment`] and [`GemvInput`] say.
    pub unsafe fn gemv_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        if unsafe { self.planned_gemv_tc(ty, input, segments, fusion)? } {
            return Ok(());
        }
        Err(KernelError::Shape(format!(
            "no slice of {} rows of {} values fits a tensor-core GEMV's shared memory",
            input.rows, input.k
        )))
    }

    /// `c = a @ w^T (+ bias)` on the tensor cores for each segment (`y` is `c`, `[m, n]` f32):
    /// `a` `[m, k]` of type `ty` at `a`, every `w` `[n, k]` of the same type.
    ///
    /// # Safety
    /// The addresses must hold the stated shapes (`bias`: `n` f32 or 0).
    pub unsafe fn gemm(
        &self,
        ty: Half16,
        a: u64,
        m: usize,
        k: usize,
        segments: &[Segment],
        accumulate: bool,
    ) -> Result<(), KernelError> {
        check_segments("GEMM", segments.len())?;
        let mut args = gemm_args(a, m, k, segments.iter().map(|s| s.w))?;
        args.num_segments = segments.len() as u32;
        args.accumulate = accumulate.into();
        let mut tiles = 0usize;
        for (slot, s) in args.seg.iter_mut().zip(segments) {
            if s.n == 0 {
                return Err(KernelError::Shape("GEMM matrix of 0 rows".into()));
            }
            *slot = qrt_gemm_segment {
                w: s.w,
                bias: s.bias,
                c: s.y,
                n: u32_of("n", s.n)?,
                first_tile: u32_of("tiles", tiles)?,
            };
            tiles += s.n.div_ceil(128);
        }
        // SAFETY: forwarded from the caller.
        if unsafe { self.gemm_skinny(ty, &args, false)? || self.gemm_tma(ty, &args, false)? } {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemm(ty, &args, tiles, "") }
    }

    /// SwiGLU's `out = silu(a @ gate^T) * (a @ up^T)` on the tensor cores, `out` `[m, n]` of
    /// type `ty` (the input of the down projection's GEMM): `a` `[m, k]` and `gate`, `up`
    /// `[n, k]`, all of type `ty`. Gate and up rows are read together, so the products never
    /// leave the registers as f32.
    ///
    /// # Safety
    /// The addresses must hold the stated shapes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_gated(
        &self,
        ty: Half16,
        a: u64,
        m: usize,
        k: usize,
        (gate, up): (u64, u64),
        n: usize,
        out: u64,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Err(KernelError::Shape("GEMM matrix of 0 rows".into()));
        }
        let mut args = gemm_args(a, m, k, [gate, up].into_iter())?;
        let n32 = u32_of("n", n)?;
        args.num_segments = 2;
        args.seg[0] = qrt_gemm_segment {
            w: gate,
            c: out,
            n: n32,
            ..Default::default()
        };
        args.seg[1] = qrt_gemm_segment {
            w: up,
            n: n32,
            ..Default::default()
        };
        // SAFETY: forwarded from the caller.
        if unsafe { self.gemm_skinny(ty, &args, true)? || self.gemm_tma(ty, &args, true)? } {
            return Ok(());
        }
        // 64 rows each of gate and up per 128-row weight tile.
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemm(ty, &args, n.div_ceil(64), "gated_") }
    }

    /// Launches the TMA GEMM (`gemm_tma.cu`) for `args` where it applies: Hopper, at least
    /// [`GEMM_TMA_MIN_M`] rows and [`GEMM_TMA_MIN_K`] columns, a grid that fills at least half
    /// the device (see [`gemm_tma_plan`]; the gated kernel never splits). `gated`: `args.seg`
    /// holds gate and up; else every segment is a matrix of its own, in column tiles 256 or 128
    /// wide. Returns whether it launched.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn gemm_tma(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        gated: bool,
    ) -> Result<bool, KernelError> {
        let (m, k) = (args.m as usize, args.k as usize);
        if !self.gemm_tma || m < GEMM_TMA_MIN_M || k < GEMM_TMA_MIN_K {
            return Ok(false);
        }
        let segments = &args.seg[..args.num_segments as usize];
        let ns: Vec<usize> = if gated {
            vec![args.seg[0].n as usize]
        } else {
            segments.iter().map(|s| s.n as usize).collect()
        };
        let Some((width, splits)) = gemm_tma_plan(
            m.div_ceil(128),
            &ns,
            k.div_ceil(64),
            self.multiprocessors(),
            gated,
            self.gemm_split_k,
        ) else {
            return Ok(false);
        };
        let (tma, col_tiles) = tma_args(ty, args, 128, tma_tile_outputs(width, gated), gated)?;
        let tiles = m.div_ceil(128) * col_tiles;
        let variant = match (gated, width) {
            (true, _) => "gated_",
            (false, 256) => "",
            _ => "n128_",
        };
        let kernel = format!("qrt_gemm_tma_{variant}{}", ty.name());
        // SAFETY: the maps name the caller's matrices.
        unsafe { self.launch_tma(&kernel, &tma, tiles, splits, GEMM_TMA_SMEM)? };
        Ok(true)
    }

    /// Launches `kernel` of gemm_tma.cu on `tma`: `tiles` tiles of `splits` blocks along z,
    /// which form one cluster (the kernels' sums of a split k need it), `shared` bytes of
    /// dynamic shared memory. With programmatic launch (unlike the other GEMMs), which took the
    /// 1B's prefill of 512 tokens 3.22–3.25 → 3.07–3.09 ms on the H200 (RESULTS log 50).
    ///
    /// # Safety
    /// The maps and addresses in `tma` must hold what the kernel reads and writes.
    unsafe fn launch_tma(
        &self,
        kernel: &str,
        tma: &qrt_gemm_tma_args,
        tiles: usize,
        splits: usize,
        shared: usize,
    ) -> Result<(), KernelError> {
        let grid = (u32_of("tiles", tiles)?, 1, splits as u32);
        // SAFETY: qrt_gemm_tma_args by value; forwarded from the caller.
        unsafe {
            self.launch_clustered(
                "gemm_tma",
                kernel,
                (grid, 384, shared),
                splits as u32,
                &mut params([tma]),
                true,
            )
        }
    }

    /// Launches the skinny GEMM (`gemm_skinny` in gemm_tma.cu) for `args` where it applies:
    /// Hopper, at most [`GEMM_SKINNY_MAX_M`] rows (batched decode). Tiles of 128 weight rows
    /// (`gated`: 128 rows each of gate, `args.seg[0]`, and up, `args.seg[1]`), each a cluster
    /// of [`gemm_skinny_splits`] blocks along z that split the k loop. Returns whether it
    /// launched.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn gemm_skinny(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        gated: bool,
    ) -> Result<bool, KernelError> {
        let (m, k) = (args.m as usize, args.k as usize);
        if !self.gemm_skinny || m > GEMM_SKINNY_MAX_M {
            return Ok(false);
        }
        let (tma, tiles) = tma_args(ty, args, GEMM_SKINNY_MAX_M as u32, 128, gated)?;
        let splits = gemm_skinny_splits(tiles, k.div_ceil(64), self.multiprocessors())
            .min(self.skinny_split_cap());
        let variant = if gated { "gated_" } else { "" };
        let kernel = format!("qrt_gemm_skinny_{variant}{}", ty.name());
        // SAFETY: the maps name the caller's matrices.
        unsafe { self.launch_tma(&kernel, &tma, tiles, splits, GEMM_SKINNY_SMEM)? };
        Ok(true)
    }

    /// The most blocks a skinny GEMM's cluster may have here: the largest size up to
    /// [`MAX_SKINNY_SPLIT`] of which the device places at least one cluster (a block takes
    /// nearly a multiprocessor's shared memory, and a cluster's blocks share one GPC; a
    /// partitioned device may have fewer), else 1.
    fn skinny_split_cap(&self) -> usize {
        *self.skinny_split_cap.get_or_init(|| {
            (2..=MAX_SKINNY_SPLIT)
                .rev()
                .find(|&s| {
                    self.max_active_clusters(
                        "gemm_tma",
                        "qrt_gemm_skinny_f16",
                        384,
                        GEMM_SKINNY_SMEM,
                        s,
                    )
                    .is_ok_and(|clusters| clusters > 0)
                })
                .unwrap_or(1)
        })
    }

    /// Launches the GEMM kernel family `variant` ("" or "gated_") for `args` over `tiles`
    /// column tiles: wgmma for long k on Hopper, else mma.sync; blocks of 128 rows of `a` when
    /// they make a full wave, else of 64.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn launch_gemm(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        tiles: usize,
        variant: &str,
    ) -> Result<(), KernelError> {
        let m = args.m as usize;
        let tall = m.div_ceil(128) * tiles >= self.multiprocessors();
        let splits = if self.gemm_split_k && variant.is_empty() && !tall {
            split_k_factor(
                m.div_ceil(64) * tiles,
                (args.k as usize).div_ceil(32),
                self.multiprocessors(),
            )
        } else {
            1
        };
        // wgmma pays off on long k loops (the 8B shapes: 29.8 instead of 32.2 ms per 512-token
        // prefill on an H200); on short ones the mma.sync kernel's wider blocks do better (1B:
        // 6.28 against 6.40 ms, SmolLM2: 3.23 against 3.56 ms). A split k takes mma.sync.
        if splits == 1 && self.wgmma && args.k as usize >= WGMMA_MIN_K {
            let warpgroups = if tall { 2 } else { 1 };
            let kernel = format!("qrt_gemm_wg_{variant}{}_w{warpgroups}", ty.name());
            let grid = (
                u32_of("n tiles", tiles)?,
                u32_of("m tiles", m.div_ceil(64 * warpgroups))?,
                1,
            );
            let config = (grid, 128 * warpgroups as u32, gemm_wgmma_smem(warpgroups));
            // SAFETY: qrt_gemm_args by value; the caller guarantees the addresses.
            return unsafe {
                self.launch_config("gemm_wgmma", &kernel, config, &mut params([args]), false)
            };
        }
        let bm = if tall { 128 } else { 64 };
        let kernel = format!("qrt_gemm_{variant}{}_m{bm}", ty.name());
        let grid = (
            u32_of("n tiles", tiles)?,
            u32_of("m tiles", m.div_ceil(bm))?,
            splits as u32,
        );
        // SAFETY: qrt_gemm_args by value; the caller guarantees the addresses. With a split k
        // (never tall, so BM = 64) the blocks of a tile form one cluster along z, as the
        // kernel's split epilogue needs.
        unsafe {
            self.launch_clustered(
                "gemm",
                &kernel,
                (grid, 256, 0),
                splits as u32,
                &mut params([args]),
                false,
            )
        }
    }

    fn check_attention(args: &qrt_attn_args) -> Result<(), KernelError> {
        let (h, kvh, d) = (args.num_heads, args.num_kv_heads, args.head_dim);
        if kvh == 0 || h == 0 || h % kvh != 0 || h / kvh > MAX_ATTN_GROUP as u32 {
            return Err(KernelError::Shape(format!(
                "attention needs num_heads a multiple of num_kv_heads with at most \
                 {MAX_ATTN_GROUP} query heads per KV head, got {h} and {kvh}"
            )));
        }
        if d != 64 && d != 128 {
            return Err(KernelError::Shape(format!(
                "the attention kernels take head_dim 64 or 128, not {d}"
            )));
        }
        if args.block_size == 0 {
            return Err(KernelError::Shape("KV block size 0".into()));
        }
        Ok(())
    }

    /// Causal attention for rows of several sequences over the paged cache, one block per
    /// (tile of query rows, KV head); `args.work` holds `tiles` (sequence, first row) pairs, a tile
    /// being [`attention_tile_rows`] rows of one sequence (fewer at its end). Blocks start in the
    /// list's order (all KV heads of a tile together), so listing the tiles that see the most
    /// keys first pairs long blocks with short ones on the multiprocessors.
    ///
    /// # Safety
    /// The addresses in `args` must hold what [`qrt_attn_args`] describes.
    pub unsafe fn attention_prefill(
        &self,
        args: &qrt_attn_args,
        tiles: usize,
    ) -> Result<(), KernelError> {
        Self::check_attention(args)?;
        let kernel = format!("qrt_attn_prefill_d{}", args.head_dim);
        // A block per (tile, KV head), the KV head varying fastest.
        let blocks = tiles.saturating_mul(args.num_kv_heads as usize);
        let grid = (u32_of("attention tiles x KV heads", blocks)?, 1, 1);
        // SAFETY: qrt_attn_args by value; the caller guarantees the addresses.
        unsafe {
            self.launch_config(
                "attention",
                &kernel,
                (
                    grid,
                    PREFILL_THREADS,
                    prefill_shared_bytes(args.head_dim as usize),
                ),
                &mut params([args]),
                false,
            )
        }
    }

    /// Attention of the last row of each sequence over its cached context, split into
    /// `args.splits` partitions of `args.partition` tokens (flash-decoding; together they must
    /// cover every sequence's context), merged within a thread-block cluster (by its first
    /// block, from its shared memory) or else by the last partition of each (sequence, KV head)
    /// to finish. Partitions of up to 64 tokens go to the register kernel, longer ones (or any,
    /// under `QRT_ATTN_TC=all`) to the tensor-core kernel, which takes multiples of 64: up to
    /// 256 tokens for heads of 64 and 128 for heads of 128 staged whole, longer ones through a
    /// ring of stages ([`DecodePolicy::split`] chooses them). `args.work` needs
    /// [`attention_decode_work_bytes`] bytes, its arrival counters zero (they are left zero).
    /// With `args.out` 0 (deferred; one row per sequence, rows in `0..num_seqs`, tensor-core
    /// partitions only) nothing is merged: every partition's
    /// unnormalised output, maximum and sum stay in `args.work` by query row (partitions beyond
    /// a context with maximum -inf), for [`gemv_merging`](Self::gemv_merging) to combine.
    ///
    /// # Safety
    /// The addresses in `args` must hold what [`qrt_attn_args`] describes.
    pub unsafe fn attention_decode(&self, args: &qrt_attn_args) -> Result<(), KernelError> {
        Self::check_attention(args)?;
        let partition = args.partition as usize;
        let head_dim = args.head_dim as usize;
        let tc = self.decode_policy().tensor_core_partition(partition);
        let valid = if tc {
            partition.is_multiple_of(TC_PARTITION_STEP)
        } else {
            partition <= MAX_ATTN_PARTITION
        };
        if partition == 0 || !valid {
            let kernel = if tc {
                format!("multiples of {TC_PARTITION_STEP} (tensor cores)")
            } else {
                format!("1..={MAX_ATTN_PARTITION} (registers)")
            };
            return Err(KernelError::Shape(format!(
                "decode partition {partition} for heads of {head_dim}: the kernel takes {kernel}"
            )));
        }
        if args.out == 0 && !tc {
            return Err(KernelError::Shape(format!(
                "decode partitions of {partition} tokens (registers) cannot be left unmerged"
            )));
        }
        let grid = (args.num_seqs, args.num_kv_heads, args.splits);
        let group = args.num_heads / args.num_kv_heads;
        // check_attention bounds the group by MAX_ATTN_GROUP, the last of DECODE_GROUPS.
        let built = DECODE_GROUPS
            .into_iter()
            .find(|&g| g >= group)
            .unwrap_or(MAX_ATTN_GROUP as u32);
        // The register kernel: two warps per 16 dimensions (`DecodeShape` in attention.cu);
        // the tensor-core one: four warps (`DecodeTcShape`), its partition staged in dynamic
        // shared memory; the ring kernel: as many warps as `RingShape` says (8 for heads of
        // 64), its stages in the same memory.
        let ring = tc && partition > max_tc_partition(head_dim);
        let (threads, name, staged) = if tc {
            let (kind, threads) = if ring {
                ("tc_ring", ring_decode_threads(head_dim))
            } else {
                ("tc", TC_DECODE_THREADS)
            };
            (
                threads,
                format!("qrt_attn_decode_{kind}_d{head_dim}_g{built}"),
                tc_partition_bytes(partition, head_dim),
            )
        } else {
            (
                2 * args.head_dim,
                format!("qrt_attn_decode_d{head_dim}_g{built}"),
                0,
            )
        };
        let blocks = grid.0 as usize * grid.1 as usize * grid.2 as usize;
        // The leader's slots: per partition, the group's outputs, maxima and sums.
        let slots = args.splits as usize * group as usize * (head_dim + 2) * 4;
        // A tensor-core cluster only where two of its blocks fit a multiprocessor: a cluster
        // of 16 blocks of one a multiprocessor would need 16 free multiprocessors in one GPC.
        let fits_twice =
            !tc || 2 * (staged + slots + TC_DECODE_STATIC_MAX) <= self.block_shared_per_sm();
        // Its grid is one wave up to two blocks a multiprocessor.
        let wave = self.multiprocessors() * if tc { 2 } else { 1 };
        // Deferred (`out` 0): the partitions are left in `work` for the projection to merge.
        // Ring partitions stream long enough to want a multiprocessor each, where a cluster
        // packs its blocks two to a multiprocessor of one GPC.
        let cluster = args.out != 0
            && !ring
            && self.decode_clusters
            && fits_twice
            && merge_in_cluster(args.splits, blocks, wave);
        // SAFETY: qrt_attn_args by value; the caller guarantees the addresses.
        unsafe {
            if cluster {
                self.launch_clustered(
                    "attention",
                    &format!("{name}_cluster"),
                    (grid, threads, staged + slots),
                    args.splits,
                    &mut params([args]),
                    true,
                )
            } else {
                self.launch_config(
                    "attention",
                    &name,
                    (grid, threads, staged),
                    &mut params([args]),
                    true,
                )
            }
        }
    }

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

    /// The threads a kernel of `module`'s PTX for `arch` was compiled for (its `.maxntid`).
    fn max_threads(module: &str, arch: &str, kernel: &str) -> Option<u32> {
        let ptx = crate::ptx(module, arch)?;
        let entry = ptx.find(&format!(".entry {kernel}("))?;
        let bound = &ptx[entry..]
            .lines()
            .find_map(|l| l.strip_prefix(".maxntid "))?;
        bound.split(',').next()?.trim().parse().ok()
    }

    #[test]
    fn decode_launches_match_the_kernels_bounds() {
        if !crate::BUILD_INFO.cuda_kernels {
            eprintln!("built without nvcc: no PTX to check");
            return;
        }
        for arch in crate::BUILD_INFO.archs {
            for d in [64, 128] {
                for g in DECODE_GROUPS {
                    let bound = |name: &str| {
                        max_threads("attention", arch, name)
                            .unwrap_or_else(|| panic!("no .maxntid for {name} ({arch})"))
                    };
                    assert_eq!(
                        bound(&format!("qrt_attn_decode_tc_ring_d{d}_g{g}")),
                        ring_decode_threads(d),
                        "ring, heads of {d}, {arch}"
                    );
                    assert_eq!(
                        bound(&format!("qrt_attn_decode_tc_d{d}_g{g}")),
                        TC_DECODE_THREADS,
                        "tensor cores, heads of {d}, {arch}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_sequences_take_one_or_two_partitions_each() {
        let policy = DecodePolicy {
            multiprocessors: 132,
            tensor_cores: DecodeTc::Batched,
        };
        // The 1B's heads: from 17 sequences the (sequence, KV head) pairs outnumber the
        // multiprocessors; each context is one partition, whole up to 256 tokens (steps of
        // 64, at least 128: a tensor-core partition), streamed beyond (steps of 128).
        for seqs in [17, 64] {
            for ctx in [1, 64, 65, 128, 129, 256, 257, 544, 2000, 8192] {
                let (splits, partition) = policy.split(ctx, seqs, 32, 8, 64);
                let step = if ctx <= 256 { 64 } else { 128 };
                assert_eq!(
                    (splits, partition),
                    (1, ctx.next_multiple_of(step).max(128))
                );
                assert!(policy.tensor_core_partition(partition));
            }
        }
        // 12 to 16 sequences (96 to 128 pairs, at least 70% of the multiprocessors): each
        // context in two partitions.
        assert_eq!(policy.split(544, 16, 32, 8, 64), (2, 384));
        assert_eq!(policy.split(2000, 12, 32, 8, 64), (2, 1024));
        assert_eq!(policy.split(200, 12, 32, 8, 64), (2, 128));
        assert_eq!(policy.split(100, 12, 32, 8, 64), (1, 128));
        // 11 (88 pairs) keep the rules below: three partitions of 192 tokens.
        assert_eq!(policy.split(544, 11, 32, 8, 64), (3, 192));
        // Nor does a forced register kernel change.
        let registers = DecodePolicy {
            tensor_cores: DecodeTc::Never,
            ..policy
        };
        assert_eq!(registers.split(544, 64, 32, 8, 64), (9, 64));
    }

    #[test]
    fn decode_splits_cover_every_context_with_partitions_a_kernel_takes() {
        // Every policy, head layouts of the presets, batches 1 to 64, contexts to 32K: the
        // partitions cover the context; register partitions are at most 64 tokens and
        // tensor-core ones multiples of 64; more than a cluster's only as ring partitions
        // (at most 32) or as the register kernel's (a power of two).
        let layouts = [
            (32, 8, 64),
            (9, 3, 64),
            (32, 8, 128),
            (4, 4, 64),
            (16, 2, 128),
        ];
        for tensor_cores in [DecodeTc::Never, DecodeTc::Batched, DecodeTc::Always] {
            let policy = DecodePolicy {
                multiprocessors: 132,
                tensor_cores,
            };
            for (heads, kv_heads, head_dim) in layouts {
                for seqs in [1, 2, 3, 8, 17, 64] {
                    for ctx in (1..=32_768).step_by(7) {
                        let (splits, partition) =
                            policy.split(ctx, seqs, heads, kv_heads, head_dim);
                        let at = format!(
                            "{tensor_cores:?} {heads}/{kv_heads}x{head_dim} b{seqs} ctx {ctx}"
                        );
                        assert!(splits * partition >= ctx, "{at}: {splits} x {partition}");
                        if policy.tensor_core_partition(partition) {
                            assert!(partition.is_multiple_of(TC_PARTITION_STEP), "{at}");
                            let ring = partition > max_tc_partition(head_dim);
                            assert!(
                                splits <= MAX_DECODE_CLUSTER || (ring && splits <= MAX_LONG_SPLITS),
                                "{at}: {splits} x {partition}"
                            );
                        } else {
                            assert!(partition <= MAX_ATTN_PARTITION, "{at}");
                            assert!(
                                splits <= MAX_DECODE_CLUSTER || splits.is_power_of_two(),
                                "{at}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn carveouts_are_the_smallest_percent_holding_the_blocks_and_the_headroom() {
        let per_sm = 228 * 1024; // the H200's multiprocessor
        for resident in 1..=4 {
            for per_block in (1024..=60_000).step_by(997) {
                for headroom in [0, 16 * 1024, GEMV_ONE_HEADROOM] {
                    let reserve = SharedReserve { resident, headroom };
                    let need = resident * per_block + headroom;
                    let percent = carveout_percent(reserve, per_block, per_sm) as usize;
                    if need >= per_sm {
                        assert_eq!(percent, 100, "{resident} x {per_block} + {headroom}");
                        continue;
                    }
                    assert!(percent * per_sm >= need * 100, "{resident} x {per_block}");
                    assert!(
                        (percent - 1) * per_sm < need * 100,
                        "{resident} x {per_block}"
                    );
                }
            }
        }
        // SmolLM2's batch-one q/k/v (k = 576: 2,304 bytes staged, 32 static, 1,024 reserved),
        // one block a multiprocessor: 30% (68 KB, which the H200 rounds up to 100 KB).
        let smollm2 = SharedReserve {
            resident: 1,
            headroom: GEMV_ONE_HEADROOM,
        };
        assert_eq!(carveout_percent(smollm2, 3360, per_sm), 30);
    }

    #[test]
    fn tensor_core_gemv_stages_within_the_device() {
        // H200 (227 KiB a block, 228 a multiprocessor, 1 reserved): the caps.
        assert_eq!(tc_stage_max(8, 8, 232_448, 233_472, 1024), 80 * 1024);
        assert_eq!(tc_stage_max(16, 8, 232_448, 233_472, 1024), 200 * 1024);
        // A100 (163 / 164 KiB): two 8-warp blocks with their static 4,608 bytes (8 partial
        // tiles, 16 x 8 squares) and the reserve; one 16-warp block within the opt-in less its
        // 8,704 static bytes.
        assert_eq!(
            tc_stage_max(8, 8, 166_912, 167_936, 1024),
            83_968 - 4608 - 1024
        );
        assert_eq!(tc_stage_max(16, 8, 166_912, 167_936, 1024), 166_912 - 8704);
        // sm_86/89 (99 / 100 KiB).
        assert_eq!(tc_stage_max(16, 8, 101_376, 102_400, 1024), 101_376 - 8704);
        assert_eq!(
            tc_stage_max(8, 8, 101_376, 102_400, 1024),
            51_200 - 4608 - 1024
        );
    }

    /// An H200's shared memory for a tensor-core GEMV block of `warps` warps to stage in.
    fn hopper(warps: usize) -> usize {
        tc_stage_max(warps, 8, 232_448, 233_472, 1024)
    }

    /// The tensor-core GEMV plan on an H200: 132 multiprocessors, splits up to 16; the device
    /// holding clusters of up to 8 blocks (it did not hold enough of 16 for the 1B's o and
    /// down).
    fn h200_plan(tiles: usize, batch: usize, k: usize) -> Option<TcPlan> {
        h200_plan_sparing(tiles, batch, k, false)
    }

    /// [`h200_plan`], `spare` as [`Fusion::spare_multiprocessors`].
    fn h200_plan_sparing(tiles: usize, batch: usize, k: usize, spare: bool) -> Option<TcPlan> {
        tc_plan(tiles, batch, k, 132, (16, spare), hopper, |_, split, _| {
            if split > 8 {
                0
            } else {
                64
            }
        })
    }

    #[test]
    fn tensor_core_gemv_plans() {
        let plan = h200_plan;
        let p = |warps, per_block, split, walkers, shared| {
            Some(TcPlan {
                warps,
                per_block,
                split,
                walkers,
                shared,
            })
        };
        // Llama-3.2-1B at batch 8: a tile a warp, k split 8 ways for q/k/v (192 tiles), o and
        // down (128); gate/up (1,024 tiles of 8 rows) 2 ways in groups of 16 (128 groups of 8
        // would not all be held at once).
        assert_eq!(plan(192, 8, 2048), p(8, 8, 8, 24, 8 * (8 * 64 + 64)));
        // Sparing multiprocessors, the same warps in 96 blocks of 16 (36 multiprocessors left
        // free); the 8B's q/k/v (384 tiles, k = 4096) likewise in 96 blocks, its k split 4 ways.
        let sparing = |tiles, batch, k| h200_plan_sparing(tiles, batch, k, true);
        assert_eq!(sparing(192, 8, 2048), p(16, 16, 8, 12, 8 * (8 * 64 + 64)));
        assert_eq!(plan(384, 8, 4096), p(8, 8, 4, 48, 8 * (32 * 64 + 64)));
        assert_eq!(sparing(384, 8, 4096), p(16, 16, 4, 24, 8 * (32 * 64 + 64)));
        // Where the fewer blocks would keep fewer warps busy, sparing changes nothing: the
        // output head (below) walks its tiles in two 8-warp blocks a multiprocessor.
        assert_eq!(sparing(8016, 8, 2048), plan(8016, 8, 2048));
        assert_eq!(plan(128, 8, 2048), p(8, 8, 8, 16, 8 * (8 * 64 + 64)));
        assert_eq!(plan(128, 8, 8192), p(8, 8, 8, 16, 8 * (32 * 64 + 64)));
        assert_eq!(plan(1024, 8, 2048), p(16, 16, 2, 64, 8 * (32 * 64 + 64)));
        // The output head (8,016 tiles) cannot split in one wave: a tile a block, the blocks
        // walking the tiles, two blocks a multiprocessor.
        assert_eq!(plan(8016, 8, 2048), p(8, 1, 1, 264, 8 * (64 * 64 + 64)));
        // A device holding clusters of 16: a cluster splits over at most a block's tiles, so
        // the 1B's o at batch 8 takes 16-warp blocks (8 groups split 16 ways; 8-warp blocks
        // could split only 8 ways).
        let wide =
            |tiles, batch, k| tc_plan(tiles, batch, k, 132, (16, false), hopper, |_, _, _| 64);
        assert_eq!(wide(128, 8, 2048), p(16, 16, 16, 8, 8 * (4 * 64 + 64)));
        // Under 8 MiB (SmolLM2's q/k/v, 1.1 MB): a tile a block, unsplit.
        assert_eq!(plan(60, 8, 576), p(16, 1, 1, 60, 8 * (18 * 64 + 64)));
        // A100 (108 multiprocessors, no clusters): a tile a block; the 1B's down at batch 8
        // (131 KB staged) in 16-warp blocks; the 8B's (229 KB) has no plan.
        let a100 = |warps| tc_stage_max(warps, 8, 166_912, 167_936, 1024);
        let unsplit =
            |tiles, batch, k| tc_plan(tiles, batch, k, 108, (1, false), a100, |_, _, _| 0);
        assert_eq!(unsplit(128, 8, 8192), p(16, 1, 1, 108, 8 * (256 * 64 + 64)));
        assert_eq!(unsplit(128, 4, 8192), p(8, 1, 1, 128, 4 * (256 * 64 + 64)));
        assert_eq!(unsplit(128, 8, 14336), None);
        // sm_89 (99 KiB a block): the 1B's down at batch 6 (98,688 bytes) has no plan.
        let ada = |warps| tc_stage_max(warps, 8, 101_376, 102_400, 1024);
        assert_eq!(
            tc_plan(128, 6, 8192, 128, (1, false), ada, |_, _, _| 0),
            None
        );
    }

    #[test]
    fn batches_beyond_8_take_the_16_column_kernels() {
        assert_eq!(tc_columns(2), (8, ""));
        assert_eq!(tc_columns(8), (8, ""));
        assert_eq!(tc_columns(9), (16, "_c16"));
        assert_eq!(tc_columns(16), (16, "_c16"));
        // The static shared memory ptxas reports for gemv_tc.cu's kernels (sm_90a): 4,608 and
        // 8,704 bytes for 8 and 16 warps of 8 columns, 9,216 and 17,408 of 16.
        assert_eq!(tc_static_shared(8, 8), 4608);
        assert_eq!(tc_static_shared(16, 8), 8704);
        assert_eq!(tc_static_shared(8, 16), 9216);
        assert_eq!(tc_static_shared(16, 16), 17_408);
        // The caps hold on an H200 whatever the columns.
        assert_eq!(tc_stage_max(8, 16, 232_448, 233_472, 1024), 80 * 1024);
        assert_eq!(tc_stage_max(16, 16, 232_448, 233_472, 1024), 200 * 1024);
        // The 1B's q/k/v at 16 rows: 16-warp blocks, groups of 16 tiles, k split 8 ways (the
        // device holds no clusters of 16 here), twice the staged rows.
        assert_eq!(
            h200_plan(192, 16, 2048),
            Some(TcPlan {
                warps: 16,
                per_block: 16,
                split: 8,
                walkers: 12,
                shared: 16 * (8 * 64 + 64),
            })
        );
        // Small matrices as at 8 rows: SmolLM2's q/k/v a tile a block; its output head (3,072
        // tiles, more groups of 16 than multiprocessors) a tile a block in blocks of 8 warps.
        assert_eq!(h200_plan(60, 12, 576).map(|p| p.per_block), Some(1));
        assert_eq!(
            h200_plan(3072, 12, 576).map(|p| (p.warps, p.per_block)),
            Some((8, 1))
        );
    }

    #[test]
    fn gemms_split_k_only_when_tiles_leave_the_gpu_idle() {
        // H200, 512 rows. Llama-3.2-1B o and down: 8 x 16 tiles, k = 2048 / 8192.
        assert_eq!(split_k_factor(128, 64, 132), 2);
        assert_eq!(split_k_factor(128, 256, 132), 2);
        // q,k,v: 8 x 24 tiles.
        assert_eq!(split_k_factor(192, 64, 132), 1);
        // SmolLM2 down (576 x 1536): 8 x 5 tiles, 48 k steps; its o (k = 576): 18 k steps.
        assert_eq!(split_k_factor(40, 48, 132), 4);
        assert_eq!(split_k_factor(40, 18, 132), 2);
        // Too short a k loop to share.
        assert_eq!(split_k_factor(40, 15, 132), 1);
    }

    #[test]
    fn skinny_gemms_split_k_as_far_as_one_wave_allows() {
        // Every split is a cluster the kernel takes, never more blocks than k steps, and the
        // grid stays within one block a multiprocessor unless the tiles alone exceed it; one
        // more block a tile would break one of these.
        for multiprocessors in [1, 78, 132] {
            for tiles in 1..1100 {
                for ktiles in 1..80 {
                    let s = gemm_skinny_splits(tiles, ktiles, multiprocessors);
                    assert!((1..=MAX_SKINNY_SPLIT).contains(&s));
                    assert!(s <= ktiles);
                    assert!(s == 1 || tiles * s <= multiprocessors);
                    assert!(
                        s == MAX_SKINNY_SPLIT || s == ktiles || tiles * (s + 1) > multiprocessors,
                        "{tiles} tiles, {ktiles} k steps: {s} blocks a tile leave room"
                    );
                }
            }
        }
        // H200, the 1B: q/k/v (24 tiles) 5 blocks a tile, o and down (16) 8, gate and up (64) 2.
        assert_eq!(gemm_skinny_splits(24, 32, 132), 5);
        assert_eq!(gemm_skinny_splits(16, 128, 132), 8);
        assert_eq!(gemm_skinny_splits(64, 32, 132), 2);
    }

    #[test]
    fn tma_gemm_tiles_fill_the_device() {
        // H200 (132 multiprocessors), 512 rows (4 row tiles), Llama-3.2-1B. Down (k = 8192)
        // and o (k = 2048): 128-wide tiles split in 2, 128 blocks.
        assert_eq!(
            gemm_tma_plan(4, &[2048], 128, 132, false, true),
            Some((128, 2))
        );
        assert_eq!(
            gemm_tma_plan(4, &[2048], 32, 132, false, true),
            Some((128, 2))
        );
        // q, k, v: 4 x (8 + 2 + 2) wide tiles split in 2 tie with 96 narrow ones unsplit,
        // which took the product 30.5 → 21.0 µs (RESULTS log 50) and, with the split
        // epilogue's grouped loads, 20.8 → 15.9 µs (log 51).
        assert_eq!(
            gemm_tma_plan(4, &[2048, 512, 512], 32, 132, false, true),
            Some((128, 1))
        );
        // gate/up: 4 x 64 tiles of 128 outputs.
        assert_eq!(
            gemm_tma_plan(4, &[8192], 32, 132, true, true),
            Some((256, 1))
        );
        // lm_head: plenty of wide tiles.
        assert_eq!(
            gemm_tma_plan(4, &[128256], 32, 132, false, true),
            Some((256, 1))
        );
        // Llama-3.1-8B down (k = 14336): 4 x 16 wide tiles split in 2.
        assert_eq!(
            gemm_tma_plan(4, &[4096], 224, 132, false, true),
            Some((256, 2))
        );
        // No split with QRT_GEMM_SPLITK=0: the 1B's down, 64 narrow tiles, fills under half
        // the device and is left to mma.sync; at 1,024 rows it takes 128 narrow tiles.
        assert_eq!(gemm_tma_plan(4, &[2048], 128, 132, false, false), None);
        assert_eq!(
            gemm_tma_plan(8, &[2048], 128, 132, false, false),
            Some((128, 1))
        );
        // Too few tiles either way: SmolLM2's down at 512 rows (n = 576).
        assert_eq!(gemm_tma_plan(4, &[576], 24, 132, false, true), None);
        // No split below 8 steps per share.
        assert_eq!(gemm_tma_splits(32, 15, 132, 2), 1);
    }

    #[test]
    fn argmax_blocks_cover_every_logit_once() {
        // A block per 4096 logits (256 threads x 16), the last one partial.
        assert_eq!(argmax_keys_per_row(1), 1);
        assert_eq!(argmax_keys_per_row(4096), 1);
        assert_eq!(argmax_keys_per_row(4097), 2);
        assert_eq!(argmax_keys_per_row(49152), 12); // SmolLM2
        assert_eq!(argmax_keys_per_row(128256), 32); // Llama 3
    }

    #[test]
    fn merging_projection_asks_for_room_only_where_its_blocks_leave_multiprocessors_room() {
        let plan = |tiles, batch, k| h200_plan(tiles, batch, k).expect("a plan");
        // The 1B's o (128 tiles, k = 2048): 128 blocks of 8 warps, one a multiprocessor.
        let room = |kb: usize| {
            Some(SharedReserve {
                resident: 2,
                headroom: kb * 1024,
            })
        };
        assert_eq!(merge_reserve(&plan(128, 4, 2048), 4, 132), room(96));
        assert_eq!(merge_reserve(&plan(128, 8, 2048), 8, 132), room(128));
        // The 8B's (256 tiles, k = 4096): 256 blocks, two a multiprocessor: none.
        assert_eq!(merge_reserve(&plan(256, 8, 4096), 8, 132), None);
    }

    #[test]
    fn many_partitions_merge_in_the_projection_only_where_a_lane_stages_one_chunk() {
        // The 1B's o projection (k = 2048 over clusters of 8): 32 chunks a slice, one a lane.
        assert!(merge_fits(6, 2048, 8));
        assert!(merge_fits(MAX_MERGED_PARTITIONS, 2048, 8));
        // The 8B's (k = 4096 over 8): two a lane, so only up to 4 at once.
        assert!(merge_fits(4, 4096, 8));
        assert!(!merge_fits(5, 4096, 8));
        // Unsplit, a whole row of the 1B's: 256 chunks.
        assert!(!merge_fits(5, 2048, 1));
    }

    #[test]
    fn decode_partitions_merge_in_a_cluster_only_for_one_wave() {
        // Llama-3.2-1B at batch one, 513-1,024 tokens: 8 KV heads x 16 partitions on an H200.
        assert!(merge_in_cluster(16, 128, 132));
        // SmolLM2 (3 KV heads) at batch two.
        assert!(merge_in_cluster(16, 96, 132));
        // Batch four of the 1B: 512 blocks, more than a wave.
        assert!(!merge_in_cluster(16, 512, 132));
        // One partition needs no merge; 32 do not fit a cluster of 16.
        assert!(!merge_in_cluster(1, 8, 132));
        assert!(!merge_in_cluster(32, 64, 132));
        assert!(merge_in_cluster(2, 16, 132));
        // Exactly one wave.
        assert!(merge_in_cluster(4, 132, 132));
        assert!(!merge_in_cluster(4, 133, 132));
    }

    #[test]
    fn prefill_tiles_fill_a_block_with_the_group() {
        // 64 (row, head) pairs per block: 16 rows of a group of 4, 21 of 3, 64 of 1.
        assert_eq!(attention_tile_rows(4), 16);
        assert_eq!(attention_tile_rows(3), 21);
        assert_eq!(attention_tile_rows(1), 64);
        assert_eq!(attention_tile_rows(8), 8);
        for group in 1..=MAX_ATTN_GROUP {
            assert!(attention_tile_rows(group) * group <= PREFILL_PAIRS);
            assert!((attention_tile_rows(group) + 1) * group > PREFILL_PAIRS);
        }
    }
}
