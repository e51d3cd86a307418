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

/// Arguments of the RMSNorm kernels (`qrt_rms_norm_*`, `qrt_add_rms_norm_*`),
/// passed by value; the device pointers follow as separate kernel parameters.
///
/// For row `r` and column `c < cols` (strides are in elements, not bytes):
///   plain:  `y[r*y_stride + c] = x[r*x_stride + c] / sqrt(mean_c(x[r,:]^2) + eps) * w[c]`
///   fused:  `s[r*sum_stride + c] = x[r*x_stride + c] + residual[r*residual_stride + c]`
///           then `y[r, :] = rmsnorm(s[r, :])`, computed from `s` as stored
///           (rounded to the activation type).
/// The plain kernels ignore `residual_stride` and `sum_stride`.
typedef struct qrt_rms_norm_args {
    /// Number of rows; the grid has exactly this many blocks.
    uint32_t rows;
    /// Number of columns (the normalised dimension); must be at least 1.
    uint32_t cols;
    /// Elements between the starts of consecutive rows of `x`.
    uint32_t x_stride;
    /// Elements between the starts of consecutive rows of `residual` (fused only).
    uint32_t residual_stride;
    /// Elements between the starts of consecutive rows of the sum `s` (fused only).
    uint32_t sum_stride;
    /// Elements between the starts of consecutive rows of `y`.
    uint32_t y_stride;
    /// Added to the mean square before the square root.
    float eps;
} qrt_rms_norm_args;

QRT_STATIC_ASSERT(sizeof(qrt_rms_norm_args) == 28, "qrt_rms_norm_args must be 28 bytes");

#endif /* QRT_KERNELS_H */
