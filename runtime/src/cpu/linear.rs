//! CPU matrix products against weights stored `[n, k]` row-major in f32, f16 or bf16.
//!
//! Small batches (decode) stream each weight row once and dot it with every input row, with
//! AVX2/F16C/FMA when the processor has them. Larger batches (prefill) convert a tile of weight
//! rows to f32 and hand it to the `gemm` crate; tiles are spread over threads with rayon.

use half::{bf16, f16};
use rayon::prelude::*;

/// A dense weight matrix `[n, k]`, row-major.
#[derive(Clone, Copy, Debug)]
pub enum DenseRows<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half floats.
    F16(&'a [f16]),
    /// bfloat16.
    Bf16(&'a [bf16]),
}

impl DenseRows<'_> {
    /// Converts rows `[start, start + count)` into `dst` (`count * k` floats).
    pub fn rows_to_f32(&self, k: usize, start: usize, count: usize, dst: &mut [f32]) {
        let range = start * k..(start + count) * k;
        match self {
            DenseRows::F32(w) => dst.copy_from_slice(&w[range]),
            DenseRows::F16(w) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[range], dst)
            }
            DenseRows::Bf16(w) => {
                for (d, s) in dst.iter_mut().zip(&w[range]) {
                    *d = s.to_f32();
                }
            }
        }
    }
}

/// A weight matrix whose rows are decoded on demand (quantized storage).
pub trait DecodeRows: Sync {
    /// Writes rows `start..start + count` (each `k` values) into `dst`.
    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]);
}

/// Any weight matrix `[n, k]` the CPU multiplies by.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Stored as floats.
    Dense(DenseRows<'a>),
    /// Decoded tile by tile.
    Decoded(&'a dyn DecodeRows),
}

impl Weights<'_> {
    /// Rows `[start, start + count)` as f32 in `dst`.
    pub fn rows_to_f32(&self, k: usize, start: usize, count: usize, dst: &mut [f32]) {
        match self {
            Weights::Dense(d) => d.rows_to_f32(k, start, count, dst),
            Weights::Decoded(q) => q.decode_rows(start, count, dst),
        }
    }
}

/// Weight rows decoded at a time by the streaming path for decoded weights.
const DECODE_TILE: usize = 16;

/// Rows of the batch up to which the streaming (GEMV) path is used.
pub const GEMV_MAX_ROWS: usize = 8;
/// Fewest weight rows per parallel task.
const MIN_ROWS_PER_TASK: usize = 64;

/// A raw pointer that may cross threads; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements through the pointer (see each use).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` past the start.
    ///
    /// # Safety
    /// `offset` must be inside the buffer, and no other task may touch that element.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `out[m, n] = sum_k x[m, k] * w[n, k]`, with `x` `[m, k]` and `out` `[m, n]` row-major.
pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: Weights<'_>, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul: input has the wrong size");
    assert_eq!(out.len(), m * n, "matmul: output has the wrong size");
    match w {
        Weights::Dense(d) if m <= GEMV_MAX_ROWS => gemv(x, m, k, d, n, out),
        Weights::Decoded(q) if m <= GEMV_MAX_ROWS => gemv_decoded(x, m, k, q, n, out),
        _ => gemm_tiled(x, m, k, w, n, out),
    }
}

/// Rows per task for `n` weight rows: a few tasks per thread, enough to balance, few enough
/// to keep scheduling cheap.
fn rows_per_task(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads())
        .next_multiple_of(DECODE_TILE)
        .max(MIN_ROWS_PER_TASK)
}

fn gemv_decoded(x: &[f32], m: usize, k: usize, w: &dyn DecodeRows, n: usize, out: &mut [f32]) {
    let shared = SharedOut(out.as_mut_ptr());
    let per_task = rows_per_task(n);
    (0..n.div_ceil(per_task)).into_par_iter().for_each_init(
        || vec![0f32; DECODE_TILE * k],
        |tile, task| {
            let n1 = ((task + 1) * per_task).min(n);
            let mut sums = [0f32; GEMV_MAX_ROWS];
            for t0 in (task * per_task..n1).step_by(DECODE_TILE) {
                let count = DECODE_TILE.min(n1 - t0);
                w.decode_rows(t0, count, &mut tile[..count * k]);
                for i in 0..count {
                    let rows = DenseRows::F32(&tile[..count * k]);
                    dot_rows(x, m, k, rows, i, &mut sums[..m]);
                    for (r, s) in sums[..m].iter().enumerate() {
                        // SAFETY: element (r, t0 + i) is written only by the task owning row t0 + i.
                        unsafe { *shared.at(r * n + t0 + i) = *s };
                    }
                }
            }
        },
    );
}

fn gemv(x: &[f32], m: usize, k: usize, w: DenseRows<'_>, n: usize, out: &mut [f32]) {
    let shared = SharedOut(out.as_mut_ptr());
    let per_task = rows_per_task(n);
    let tasks = n.div_ceil(per_task);
    (0..tasks).into_par_iter().for_each(|task| {
        let n0 = task * per_task;
        let n1 = (n0 + per_task).min(n);
        let mut row = n0;
        let mut sums = [0f32; GEMV_MAX_ROWS];
        while row < n1 {
            if m == 1 && row + 4 <= n1 && dot_four_rows(x, k, w, row, &mut sums[..4]) {
                for (i, s) in sums[..4].iter().enumerate() {
                    // SAFETY: element (0, row + i) is written by exactly one task (the owner of
                    // these rows), and `out` outlives the parallel loop.
                    unsafe { *shared.at(row + i) = *s };
                }
                row += 4;
                continue;
            }
            dot_rows(x, m, k, w, row, &mut sums[..m]);
            for (r, s) in sums[..m].iter().enumerate() {
                // SAFETY: as above, element (r, row) has one writer.
                unsafe { *shared.at(r * n + row) = *s };
            }
            row += 1;
        }
    });
}

/// Dot products of weight row `row` with each of the `m` input rows.
fn dot_rows(x: &[f32], m: usize, k: usize, w: DenseRows<'_>, row: usize, sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the features were detected at run time; slices are bounds-checked inside.
        unsafe {
            match w {
                DenseRows::F16(w) => {
                    return simd::dot_f16(x, m, k, &w[row * k..(row + 1) * k], sums)
                }
                DenseRows::F32(w) => {
                    return simd::dot_f32(x, m, k, &w[row * k..(row + 1) * k], sums)
                }
                DenseRows::Bf16(_) => {}
            }
        }
    }
    let mut wrow = vec![0f32; k];
    w.rows_to_f32(k, row, 1, &mut wrow);
    for (r, s) in sums.iter_mut().enumerate() {
        *s = x[r * k..(r + 1) * k]
            .iter()
            .zip(&wrow)
            .map(|(a, b)| a * b)
            .sum();
    }
}

/// For a single input row: dot products of weight rows `row..row + 4` with it, through the
/// SIMD kernel when available. Returns whether it did them (otherwise use `dot_rows`).
fn dot_four_rows(x: &[f32], k: usize, w: DenseRows<'_>, row: usize, sums: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        if let DenseRows::F16(w) = w {
            // SAFETY: features detected at run time; the slice covers the four rows.
            unsafe { simd::dot4_f16(x, k, &w[row * k..(row + 4) * k], sums) };
            return true;
        }
    }
    let _ = (x, k, w, row, sums);
    false
}

fn gemm_tiled(x: &[f32], m: usize, k: usize, w: Weights<'_>, n: usize, out: &mut [f32]) {
    let shared = SharedOut(out.as_mut_ptr());
    let tile = tile_rows(k);
    let tasks = n.div_ceil(tile);
    (0..tasks).into_par_iter().for_each_init(
        || vec![0f32; tile * k],
        |scratch, task| {
            let n0 = task * tile;
            let count = tile.min(n - n0);
            let wt = &mut scratch[..count * k];
            w.rows_to_f32(k, n0, count, wt);
            // SAFETY: dst covers columns n0..n0+count of every row of `out`, disjoint across
            // tasks; lhs/rhs point into live slices of the stated shapes and strides.
            unsafe {
                gemm::gemm(
                    m,
                    count,
                    k,
                    shared.at(n0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wt.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

/// Weight rows per prefill tile: about 256 KiB of f32 weights, a multiple of 16.
fn tile_rows(k: usize) -> usize {
    ((256 * 1024 / 4 / k.max(1)) / 16 * 16).max(16)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use half::f16;

    /// Whether AVX2, FMA and F16C are present.
    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Loads 8 weights as f32.
    trait Load8 {
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(self) -> f32;
    }
    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        fn to_f32(self) -> f32 {
            f16::to_f32(self)
        }
    }
    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
        fn to_f32(self) -> f32 {
            self
        }
    }

    #[inline(always)]
    unsafe fn dot_generic<T: Load8 + Copy>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[T],
        sums: &mut [f32],
    ) {
        assert!(w.len() == k && x.len() >= m * k && sums.len() == m);
        let body = k / 32 * 32;
        let wp = w.as_ptr();
        if m == 1 {
            let xp = x.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < body {
                for (j, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *a = _mm256_fmadd_ps(T::load8(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
                }
                i += 32;
            }
            let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(total);
            for j in body..k {
                s += w[j].to_f32() * x[j];
            }
            sums[0] = s;
            return;
        }
        let body8 = k / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); super::GEMV_MAX_ROWS];
        let mut i = 0;
        while i < body8 {
            let wv = T::load8(wp.add(i));
            for (r, a) in acc.iter_mut().enumerate().take(m) {
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(r * k + i)), *a);
            }
            i += 8;
        }
        for r in 0..m {
            let mut s = hsum(acc[r]);
            for j in body8..k {
                s += w[j].to_f32() * x[r * k + j];
            }
            sums[r] = s;
        }
    }

    /// Dot products of an f16 weight row with `m` f32 input rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(x: &[f32], m: usize, k: usize, w: &[f16], sums: &mut [f32]) {
        dot_generic(x, m, k, w, sums)
    }

    /// Dot products of four consecutive f16 weight rows (`w` is `[4, k]`) with one f32 row:
    /// four independent streams keep more loads in flight than one.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_f16(x: &[f32], k: usize, w: &[f16], sums: &mut [f32]) {
        assert!(w.len() == 4 * k && x.len() >= k && sums.len() == 4);
        let body = k / 8 * 8;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < body {
            let xv = _mm256_loadu_ps(xp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(f16::load8(wp.add(r * k + i)), xv, *a);
            }
            i += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = hsum(*a);
            for j in body..k {
                s += w[r * k + j].to_f32() * x[j];
            }
            sums[r] = s;
        }
    }

    /// Dot products of an f32 weight row with `m` f32 input rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(x: &[f32], m: usize, k: usize, w: &[f32], sums: &mut [f32]) {
        dot_generic(x, m, k, w, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    /// f64 reference product.
    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum();
            }
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..m * k).map(|_| rng.next_normal()).collect();
        let w32: Vec<f32> = (0..n * k).map(|_| rng.next_normal()).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let cases: [(&str, DenseRows, Vec<f32>); 3] = [
            ("f32", DenseRows::F32(&w32), w32.clone()),
            (
                "f16",
                DenseRows::F16(&w16),
                w16.iter().map(|v| v.to_f32()).collect(),
            ),
            (
                "bf16",
                DenseRows::Bf16(&wb16),
                wb16.iter().map(|v| v.to_f32()).collect(),
            ),
        ];
        for (label, view, exact) in cases {
            let want = reference(&x, m, k, &exact, n);
            let mut out = vec![f32::NAN; m * n];
            matmul_nt(&x, m, k, Weights::Dense(view), n, &mut out);
            let err: f64 = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
            assert!(
                err / norm < 1e-5,
                "m={m} k={k} n={n} {label}: rel err {}",
                err / norm
            );
        }
    }

    #[test]
    fn products_match_an_f64_reference() {
        for (i, &(m, k, n)) in [
            (1, 576, 192),
            (1, 37, 5),
            (3, 64, 129),
            (8, 100, 70),
            (9, 576, 200),
            (33, 31, 17),
        ]
        .iter()
        .enumerate()
        {
            check(m, k, n, 100 + i as u64);
        }
    }
}
