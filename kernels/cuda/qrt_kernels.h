/*
 * qrt_kernels.h — the one header shared by the CUDA kernels (every kernels/cuda/<name>.cu)
 * and the Rust host code (turned into `qrt_kernels::layouts` by bindgen in
 * kernels/build.rs).
 *
 * Rules for this file:
 *   - plain C (it is parsed as C by bindgen and as C++17 by nvcc);
 *   - only fixed-width fields, laid out so that there is no implicit padding;
 *   - every struct gets a QRT_STATIC_ASSERT on its size, mirrored by a Rust
 *     test on `size_of`, so that host and device can never disagree;
 *   - every public name starts with `qrt_` (types) or `QRT_` (constants):
 *     bindgen only exports those.
 */
#ifndef QRT_KERNELS_H
#define QRT_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
#define QRT_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define QRT_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/// Largest thread block the row kernels (RMSNorm) accept: one block per row,
/// `blockDim.x` a multiple of 32 and at most this.
#define QRT_MAX_BLOCK_THREADS 1024

/// Arguments of the RMSNorm kernels (`qrt_rms_norm_*`), passed by value; the
/// device pointers follow as separate kernel parameters.
///
/// For row `r` and column `c < cols` (strides are in elements, not bytes):
///   `y[r*y_stride + c] = x[r*x_stride + c] / sqrt(mean_c(x[r,:]^2) + eps) * w[c]`
typedef struct qrt_rms_norm_args {
    /// Number of rows; the grid has exactly this many blocks.
    uint32_t rows;
    /// Number of columns (the normalised dimension); must be at least 1.
    uint32_t cols;
    /// Elements between the starts of consecutive rows of `x`.
    uint32_t x_stride;
    /// Elements between the starts of consecutive rows of `y`.
    uint32_t y_stride;
    /// Added to the mean square before the square root.
    float eps;
} qrt_rms_norm_args;

QRT_STATIC_ASSERT(sizeof(qrt_rms_norm_args) == 20, "qrt_rms_norm_args must be 20 bytes");

/// Largest batch (rows of `x`) the GEMV kernels take in one launch.
#define QRT_GEMV_MAX_BATCH 8
/// Largest batch the tensor-core GEMV kernels take (`gemv_tc.cu`: 8 batch columns up to
/// QRT_GEMV_MAX_BATCH rows, 16 beyond).
#define QRT_GEMV_TC_MAX_BATCH 16
/// Most weight matrices one GEMV or GEMM launch multiplies (e.g. q, k and v together).
#define QRT_GEMV_MAX_SEGMENTS 3
/// Most blocks of a cluster a tensor-core GEMV splits k over (the largest cluster sm_90 allows).
#define QRT_GEMV_MAX_SPLIT 16

/// One weight matrix of a GEMV launch: `y[b, i] = sum_j x[b, j] * w[i, j] (+ bias[i])`.
typedef struct qrt_gemv_segment {
    /// Device address of `w`, `[n, k]` 16-bit floats, row-major, 16-byte aligned.
    uint64_t w;
    /// Device address of `n` f32 biases, or 0 for none.
    uint64_t bias;
    /// Device address of `y`, `[batch, n]` f32.
    uint64_t y;
    /// Rows of `w`.
    uint32_t n;
    /// First thread block of the grid that works on this segment.
    uint32_t first_block;
} qrt_gemv_segment;

QRT_STATIC_ASSERT(sizeof(qrt_gemv_segment) == 32, "qrt_gemv_segment must be 32 bytes");

/// Arguments of the GEMV kernels (`qrt_gemv_*`): every segment reads the same activations
/// `x`, `[batch, k]` f32; `k` is a multiple of 8. The order of the fields matters: what the
/// batch-one kernels first read after their grid-dependency wait (`x`, `norm`, `eps`,
/// `accumulate`) shares the 64-byte lines of the parameter bank with what they read before it
/// (`k`, the segments), so that no line is first fetched after the wait (the line size is
/// inferred, not documented). With those four after the segments, in a line of their own,
/// SmolLM2's decode step on an H200 took 0.446 ms instead of 0.442 (RESULTS log 49).
typedef struct qrt_gemv_args {
    /// Device address of `x`.
    uint64_t x;
    /// Device address of `k` f32 RMSNorm weights `g`, or 0: the product then reads
    /// `x[b, :] / sqrt(mean(x[b, :]^2) + eps) * g` instead of `x` (batch-one kernels only).
    uint64_t norm;
    /// Columns of `x` and of every `w`.
    uint32_t k;
    /// Segments in use (1 to QRT_GEMV_MAX_SEGMENTS).
    uint32_t num_segments;
    /// The RMSNorm's epsilon (with `norm`).
    float eps;
    /// Nonzero: `y += product` (a residual add) instead of `y = product`.
    uint32_t accumulate;
    /// The weight matrices, `num_segments` of them; blocks are assigned in order.
    qrt_gemv_segment seg[QRT_GEMV_MAX_SEGMENTS];
} qrt_gemv_args;

QRT_STATIC_ASSERT(sizeof(qrt_gemv_args) == 128, "qrt_gemv_args must be 128 bytes");

/// One weight matrix of a GEMM launch: `c[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j])`.
typedef struct qrt_gemm_segment {
    /// Device address of `w`, `[n, k]` 16-bit floats (the type of `a`), row-major.
    uint64_t w;
    /// Device address of `n` f32 biases, or 0.
    uint64_t bias;
    /// Device address of `c`, `[m, n]` f32.
    uint64_t c;
    /// Rows of `w`, columns of `c`.
    uint32_t n;
    /// First column tile of the grid that works on this segment (tiles of 128 columns, indexed
    /// by blockIdx.x, in the mma.sync and cp.async wgmma kernels; see qrt_gemm_tma_args).
    uint32_t first_tile;
} qrt_gemm_segment;

QRT_STATIC_ASSERT(sizeof(qrt_gemm_segment) == 32, "qrt_gemm_segment must be 32 bytes");

/// Arguments of the tensor-core GEMM kernels (`qrt_gemm_<w>_m<tile>`): every segment
/// multiplies the same `a`; f32 accumulation; `k` a multiple of 8. The gated kernels
/// (`qrt_gemm_gated_*`, `qrt_gemm_wg_gated_*`) take SwiGLU's gate as `seg[0]` and its up as
/// `seg[1]`, both `[n, k]`, and write `silu(a @ gate^T) * (a @ up^T)` to `seg[0].c` as `[m, n]`
/// 16-bit floats of the weights' type (no bias, no accumulate), in column tiles 64 wide.
typedef struct qrt_gemm_args {
    /// The weight matrices, `num_segments` of them; column tiles are assigned in order.
    qrt_gemm_segment seg[QRT_GEMV_MAX_SEGMENTS];
    /// Device address of `a`, `[m, k]` 16-bit floats, row-major.
    uint64_t a;
    /// Rows of `a` and of every `c`.
    uint32_t m;
    /// Columns of `a` and of every `w`.
    uint32_t k;
    /// Segments in use (1 to QRT_GEMV_MAX_SEGMENTS).
    uint32_t num_segments;
    /// Nonzero: `c += product` (a residual add) instead of `c = product`.
    uint32_t accumulate;
} qrt_gemm_args;

QRT_STATIC_ASSERT(sizeof(qrt_gemm_args) == 120, "qrt_gemm_args must be 120 bytes");

/// A TMA tensor map (the driver's `CUtensorMap`), encoded on the host by
/// `cuTensorMapEncodeTiled`; opaque to both sides.
typedef struct qrt_tensor_map {
    uint64_t opaque[16];
} __attribute__((aligned(64))) qrt_tensor_map;

QRT_STATIC_ASSERT(sizeof(qrt_tensor_map) == 128, "qrt_tensor_map must be 128 bytes");

/// Arguments of the TMA GEMM kernels (`qrt_gemm_tma_*`, sm_90): `gemm` as for the other GEMM
/// kernels, its segments' `first_tile` counted in the kernel's column tiles (256 columns, 128
/// for `qrt_gemm_tma_n128_*`, 128 weight rows for `qrt_gemm_skinny_*`; the gated kernels ignore
/// it), and tensor maps of 16-bit [rows, k] matrices with boxes of 128 rows (64 for the skinny
/// kernels' `a`) by 64 columns and the 128-byte swizzle: `a`, and `w[i]` of segment `i`.
typedef struct qrt_gemm_tma_args {
    qrt_tensor_map a;
    qrt_tensor_map w[QRT_GEMV_MAX_SEGMENTS];
    qrt_gemm_args gemm;
    uint8_t reserved[8];
} qrt_gemm_tma_args;

QRT_STATIC_ASSERT(sizeof(qrt_gemm_tma_args) == 640, "qrt_gemm_tma_args must be 640 bytes");

/// One sequence of a flat attention batch.
typedef struct qrt_attn_seq {
    /// First row of the sequence in the flat batch.
    uint32_t start;
    /// New tokens (query rows) of the sequence in this batch.
    uint32_t len;
    /// Tokens the sequence had in the cache before this batch.
    uint32_t past;
    /// Offset of the sequence's block table in `block_tables`.
    uint32_t table;
} qrt_attn_seq;

QRT_STATIC_ASSERT(sizeof(qrt_attn_seq) == 16, "qrt_attn_seq must be 16 bytes");

/// Arguments of the attention kernels. The KV cache of a layer is
/// `[num_blocks, block_size, num_kv_heads, head_dim]` f16 for K and for V; token `t` of a
/// sequence lives in slot `table[t / block_size] * block_size + t % block_size`. Query row `i`
/// of a sequence (position `past + i`) attends to its tokens `0 ..= past + i`.
typedef struct qrt_attn_args {
    /// Device address of the queries, `[rows, num_heads * head_dim]` f32 (rotary applied).
    uint64_t q;
    /// Device address of the layer's K pool.
    uint64_t k_cache;
    /// Device address of the layer's V pool.
    uint64_t v_cache;
    /// Device address of the output, `[rows, num_heads * head_dim]` f32. Decode may leave it 0:
    /// then every partition's unnormalised output, maximum and sum stay in `work`, indexed by
    /// the sequence's query row, for the output projection to merge as it reads them
    /// (`qrt_gemv_tc_*_tw_merge`).
    uint64_t out;
    /// Device address of `num_seqs` qrt_attn_seq.
    uint64_t seqs;
    /// Device address of the block tables (u32).
    uint64_t block_tables;
    /// Prefill: device address of the tile list, one (sequence, first query row) u32 pair per
    /// block. Decode: device address of the f32 partial results of the splits.
    uint64_t work;
    /// Sequences in the batch.
    uint32_t num_seqs;
    /// Query heads.
    uint32_t num_heads;
    /// Key/value heads (num_heads is a multiple of it).
    uint32_t num_kv_heads;
    /// Dimension of one head (64 or 128).
    uint32_t head_dim;
    /// Tokens per KV block.
    uint32_t block_size;
    /// Decode: partitions each sequence's context is split into.
    uint32_t splits;
    /// Decode: tokens per partition.
    uint32_t partition;
    /// Softmax scale, usually 1 / sqrt(head_dim).
    float scale;
    /// Decode, fused with the rotary embedding and the KV store: 0, or the device address of
    /// the `head_dim / 2` inverse frequencies (f32). Then `q` is rotated as it is read, and
    /// each sequence's newest token (position `past`) is taken from `k_new` and `v_new`,
    /// rotated, and stored in its cache slot.
    uint64_t inv_freq;
    /// Decode, fused: the new keys, `[rows, num_kv_heads * head_dim]` f32, not yet rotated.
    uint64_t k_new;
    /// Decode, fused: the new values, `[rows, num_kv_heads * head_dim]` f32.
    uint64_t v_new;
} qrt_attn_args;

QRT_STATIC_ASSERT(sizeof(qrt_attn_args) == 112, "qrt_attn_args must be 112 bytes");

/// Arguments of the fused rotary-embedding + KV-store kernel (`qrt_rope_kv`): rotates `q` and
/// `k` in place (rotate-half layout, angle `position * inv_freq[i]`), then stores `k` and `v`
/// (as f16) in the cache slots of their rows.
typedef struct qrt_rope_kv_args {
    /// Device address of `q`, `[rows, num_heads * head_dim]` f32.
    uint64_t q;
    /// Device address of `k`, `[rows, num_kv_heads * head_dim]` f32.
    uint64_t k;
    /// Device address of `v`, `[rows, num_kv_heads * head_dim]` f32.
    uint64_t v;
    /// Device address of the layer's K pool (f16).
    uint64_t k_cache;
    /// Device address of the layer's V pool (f16).
    uint64_t v_cache;
    /// Device address of the position of every row (u32).
    uint64_t positions;
    /// Device address of the cache slot of every row (u32).
    uint64_t slots;
    /// Device address of the `head_dim / 2` inverse frequencies (f32).
    uint64_t inv_freq;
    /// Rows.
    uint32_t rows;
    /// Query heads.
    uint32_t num_heads;
    /// Key/value heads.
    uint32_t num_kv_heads;
    /// Dimension of one head (even).
    uint32_t head_dim;
} qrt_rope_kv_args;

QRT_STATIC_ASSERT(sizeof(qrt_rope_kv_args) == 80, "qrt_rope_kv_args must be 80 bytes");

/// Sampling parameters of one row for `qrt_sample` (an array of one per row in device memory);
/// the semantics are those of the CPU reference, `qrt_runtime::sampling::sample_with_uniform`.
typedef struct qrt_sample_row {
    /// The uniform in [0, 1) that picks the token (ignored by greedy rows).
    double uniform;
    /// Temperature; at most 0 means greedy.
    float temperature;
    /// Keep the shortest prefix of candidates whose probability reaches this (1 or more: all).
    float top_p;
    /// Keep this many most likely candidates (0: all; 1: greedy).
    uint32_t top_k;
    /// Unused; keeps the size a multiple of 8.
    uint32_t pad;
} qrt_sample_row;

QRT_STATIC_ASSERT(sizeof(qrt_sample_row) == 24, "qrt_sample_row must be 24 bytes");

/// The token `qrt_sample` writes for a greedy row whose logits are all NaN.
#define QRT_SAMPLE_NO_TOKEN 0xffffffffu

/// Logits one block of the argmax kernel (`qrt_argmax`) reduces to one key: 256 threads, 16
/// each.
#define QRT_ARGMAX_PER_BLOCK 4096

/// Most rows one fed argmax (`qrt_argmax_finalize`) takes: the decode passes that run ahead
/// (up to 64 sequences, as many as the runtime records a pass of).
#define QRT_FEED_MAX_ROWS 64

/// Which row of the next pass each row's chosen token feeds (0xffffffff: none), by value.
typedef struct qrt_feed {
    uint32_t rows[QRT_FEED_MAX_ROWS];
} qrt_feed;

QRT_STATIC_ASSERT(sizeof(qrt_feed) == 256, "qrt_feed must be 256 bytes");

#endif /* QRT_KERNELS_H */
