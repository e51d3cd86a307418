//! LLM.int8() matrix product (Dettmers et al. 2022), as bitsandbytes computes it.
//!
//! Activations are taken in 16 bits. Columns of the input in which any row has a magnitude at
//! or above the threshold are outliers: they are multiplied in 16 bits against the
//! dequantized weight columns. Every other column is quantized per input row to int8 by its
//! absmax (outlier columns zeroed first), multiplied with the int8 weights with int32
//! accumulation, and scaled back by the row's absmax and the weight row's absmax (SCB) over
//! 127 x 127.

use half::f16;
use rayon::prelude::*;

use super::linear::SharedOut;

/// Int8 weights `[n, k]` with their per-row absmax (bitsandbytes' `CB` and `SCB`).
#[derive(Clone, Copy)]
pub struct Int8Rows<'a> {
    /// `round(w * 127 / absmax_row)`.
    pub data: &'a [i8],
    /// Row absmax.
    pub scales: &'a [f32],
}

fn to_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// `out = x @ w^T` with LLM.int8()'s mixed-precision decomposition (`threshold > 0`).
pub fn int8_matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: Int8Rows<'_>,
    n: usize,
    threshold: f32,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.data.len(), n * k);
    assert_eq!(out.len(), m * n);
    let x16: Vec<f32> = x.iter().map(|&v| to_f16(v)).collect();
    let outlier: Vec<bool> = (0..k)
        .map(|j| (0..m).any(|r| x16[r * k + j].abs() >= threshold))
        .collect();
    let outlier_cols: Vec<usize> = (0..k).filter(|&j| outlier[j]).collect();
    let mut xq = vec![0i8; m * k];
    let mut row_absmax = vec![0f32; m];
    for r in 0..m {
        let row = &x16[r * k..(r + 1) * k];
        let absmax = row
            .iter()
            .zip(&outlier)
            .filter(|(_, &o)| !o)
            .fold(0f32, |a, (v, _)| a.max(v.abs()));
        row_absmax[r] = absmax;
        if absmax > 0.0 {
            for j in 0..k {
                if !outlier[j] {
                    xq[r * k + j] = (row[j] * 127.0 / absmax).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
    }
    let shared = SharedOut(out.as_mut_ptr());
    (0..n).into_par_iter().with_min_len(64).for_each(|c| {
        let wrow = &w.data[c * k..(c + 1) * k];
        let scale = w.scales[c];
        for r in 0..m {
            let acc = dot_i8(&xq[r * k..(r + 1) * k], wrow);
            let mut v = acc as f32 * row_absmax[r] * scale / (127.0 * 127.0);
            for &j in &outlier_cols {
                v += x16[r * k + j] * to_f16(wrow[j] as f32 * scale / 127.0);
            }
            // SAFETY: element (r, c) is written only by the task for column c.
            unsafe { *shared.at(r * n + c) = v };
        }
    });
}

/// `sum_i a[i] b[i]` in i32, exactly (the products of values within ±127 cannot overflow i32
/// below 2^17 terms).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_scalar(a, b)
}

fn dot_i8_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// [`dot_i8`] 16 values at a time: widened to i16, multiplied and pair-summed to i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n - n % 16;
    let mut lanes = [0i32; 8];
    // SAFETY: 16-byte reads at i + 16 <= whole <= both lengths; 32 bytes written to `lanes`.
    unsafe {
        let mut acc = _mm256_setzero_si256();
        for i in (0..whole).step_by(16) {
            let va = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(i).cast()));
            let vb = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(i).cast()));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(va, vb));
        }
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc);
    }
    lanes.iter().sum::<i32>() + dot_i8_scalar(&a[whole..n], &b[whole..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn quantize_rows(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
        let mut data = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        for r in 0..n {
            let row = &w[r * k..(r + 1) * k];
            let absmax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            scales[r] = absmax;
            for j in 0..k {
                data[r * k + j] = (row[j] * 127.0 / absmax).round() as i8;
            }
        }
        (data, scales)
    }

    #[test]
    fn int8_dots_are_exact() {
        let mut rng = Rng::new(17);
        for len in [0usize, 1, 15, 16, 17, 576, 1000] {
            let v = |rng: &mut Rng| -> Vec<i8> {
                (0..len)
                    .map(|_| (rng.below(255) as i32 - 127) as i8)
                    .collect()
            };
            let (a, b) = (v(&mut rng), v(&mut rng));
            let want: i64 = a.iter().zip(&b).map(|(&x, &y)| x as i64 * y as i64).sum();
            assert_eq!(dot_i8(&a, &b) as i64, want, "length {len}");
        }
        // The extremes: every product 127 * 127 or -127 * 127.
        let a = vec![127i8; 1000];
        let b: Vec<i8> = (0..1000)
            .map(|i| if i % 3 == 0 { -127 } else { 127 })
            .collect();
        let want: i64 = a.iter().zip(&b).map(|(&x, &y)| x as i64 * y as i64).sum();
        assert_eq!(dot_i8(&a, &b) as i64, want);
    }

    #[test]
    fn int8_product_is_close_and_outliers_are_exact_in_16_bits() {
        let (m, k, n) = (3, 256, 40);
        let mut rng = Rng::new(5);
        let mut x: Vec<f32> = (0..m * k).map(|_| rng.next_normal()).collect();
        // Two outlier columns, far above the threshold.
        for r in 0..m {
            x[r * k + 7] = 40.0 + r as f32;
            x[r * k + 100] = -25.0;
        }
        let w: Vec<f32> = (0..n * k).map(|_| 0.05 * rng.next_normal()).collect();
        let (data, scales) = quantize_rows(&w, n, k);
        let mut got = vec![f32::NAN; m * n];
        int8_matmul(
            &x,
            m,
            k,
            Int8Rows {
                data: &data,
                scales: &scales,
            },
            n,
            6.0,
            &mut got,
        );
        // Reference in f64 with the dequantized weights.
        let mut err = 0f64;
        let mut norm = 0f64;
        for r in 0..m {
            for c in 0..n {
                let want: f64 = (0..k)
                    .map(|j| {
                        x[r * k + j] as f64 * (data[c * k + j] as f64 * scales[c] as f64 / 127.0)
                    })
                    .sum();
                err += (got[r * n + c] as f64 - want).powi(2);
                norm += want * want;
            }
        }
        let rel = (err / norm).sqrt();
        assert!(rel < 0.02, "relative error {rel}");
        // Without the decomposition the outliers would blow up the per-row int8 scale.
        let mut plain = vec![0f32; m * n];
        int8_matmul(
            &x,
            m,
            k,
            Int8Rows {
                data: &data,
                scales: &scales,
            },
            n,
            f32::INFINITY,
            &mut plain,
        );
        let err_plain: f64 = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let want: f64 = (0..k)
                    .map(|j| {
                        x[r * k + j] as f64 * (data[c * k + j] as f64 * scales[c] as f64 / 127.0)
                    })
                    .sum();
                (plain[i] as f64 - want).powi(2)
            })
            .sum();
        assert!(
            err_plain > 4.0 * err,
            "outlier decomposition should help: {err_plain} vs {err}"
        );
    }
}
