//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
//! Acceleration"): the numerical pieces, independent of the model graph, after mit-han-lab/llm-awq
//! (`auto_scale.py`, `auto_clip.py`, `quantizer.py`).
//!
//! The flow for one decoder layer, driven by the caller:
//! 1. For each group of linears sharing an input (q/k/v after `input_layernorm`, gate/up after
//!    `post_attention_layernorm`, o after v, down after up), measure the inputs `x` and search a
//!    per-input-channel scale `s` ([`search_scales_linear`] or [`search_scales_with`]).
//! 2. Fold `s`: multiply the linears' input columns by `s` ([`scale_weight_columns`]) and
//!    divide whatever produces their input by `s` ([`fold_scale_into_norm`],
//!    [`fold_scale_into_linear_rows`]); the layer computes the same function. Divide the
//!    recorded inputs by `s` as well before clipping.
//! 3. Search clipping thresholds on the scaled weights and inputs ([`search_clip`]; llm-awq
//!    skips q and k, whose outputs meet in a product) and apply them ([`apply_clip`]).
//! 4. Quantize ([`awq_quantize`]) for packing by the storage codec.
//!
//! The quantizer is llm-awq's `pseudo_quantize_tensor` with `zero_point=True`: asymmetric,
//! per group of `group_size` input columns, `scale = max(max − min, 1e-5) / maxq`,
//! `zero = clamp(−round(min / scale), 0, maxq)`, `q = clamp(round(w / scale) + zero, 0, maxq)`,
//! `ŵ = (q − zero) · scale`, rounding half to even like `torch.round`.
//!
//! Groups are taken within each output row: a row of `k` inputs has `ceil(k / group_size)`
//! groups, columns `g · group_size .. min((g + 1) · group_size, k)`, so when `k` is not a
//! multiple of the group size the last group is shorter (as AutoAWQ/AutoGPTQ with
//! `g_idx = j // group_size`, and as the storage codec accepts). llm-awq itself reshapes the
//! weight to `[-1, group_size]` and needs `k` to be a multiple.

use qrt_format::quant::awq::group_params;
use rayon::prelude::*;

use super::linalg::{gemm, View};

/// Settings of the AWQ searches and quantizer (llm-awq's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    /// Bits per weight (4).
    pub bits: u32,
    /// Input columns per quantization group (128).
    pub group_size: usize,
    /// Points of the scale search: `alpha = 0, 1/grid, .., (grid−1)/grid` (20).
    pub grid: usize,
    /// Denominator of the clip search steps (20).
    pub clip_grid: usize,
    /// Largest fraction the clip search takes off the group maximum (0.5).
    pub max_shrink: f32,
    /// Calibration rows used by the clip search, taken at an even stride (512).
    pub clip_samples: usize,
}

impl Default for AwqConfig {
    /// 4 bits, group size 128, 20-point grids, shrink up to 0.5, 512 clip samples.
    fn default() -> Self {
        Self {
            bits: 4,
            group_size: 128,
            grid: 20,
            clip_grid: 20,
            max_shrink: 0.5,
            clip_samples: 512,
        }
    }
}

/// Scale and zero point of one group.
#[derive(Debug, Clone, Copy)]
struct GroupParams {
    scale: f32,
    zero: f32,
}

impl GroupParams {
    /// llm-awq's asymmetric parameters of a group ([`group_params`]).
    fn find(group: &[f32], maxq: f32) -> Self {
        let (scale, zero) = group_params(group, maxq);
        Self { scale, zero }
    }

    /// The code of `w`.
    fn code(self, w: f32, maxq: f32) -> f32 {
        ((w / self.scale).round_ties_even() + self.zero).clamp(0.0, maxq)
    }

    /// The weight a code stands for.
    fn dequantize(self, q: f32) -> f32 {
        (q - self.zero) * self.scale
    }

    /// Quantize-dequantize a group in place.
    fn fake_quantize(group: &mut [f32], maxq: f32) {
        let p = Self::find(group, maxq);
        for v in group {
            *v = p.dequantize(p.code(*v, maxq));
        }
    }
}

/// `2^bits − 1`, checking the shapes the quantizer needs.
fn check(w: &[f32], n: usize, k: usize, bits: u32, group_size: usize) -> f32 {
    assert_eq!(w.len(), n * k, "weight is not {n}x{k}");
    assert!(
        (1..=8).contains(&bits),
        "{bits}-bit quantization is not supported (1..=8)"
    );
    assert!(group_size > 0, "group size must be positive");
    ((1u32 << bits) - 1) as f32
}

/// The columns of group `g` in a row of `k` inputs: `g·gs .. min((g + 1)·gs, k)`.
fn group_cols(g: usize, gs: usize, k: usize) -> std::ops::Range<usize> {
    g * gs..((g + 1) * gs).min(k)
}

/// Quantize-dequantize `w` (row-major `[n, k]`) with the AWQ quantizer, per group of
/// `group_size` columns within each row, `ceil(k / group_size)` groups with the last one
/// shorter when `k` is not a multiple (llm-awq's `pseudo_quantize_tensor`). Clip first with
/// [`apply_clip`] to quantize with clipping thresholds.
///
/// # Panics
/// If `w.len() != n·k`, `group_size == 0`, or `bits` is outside 1..=8.
pub fn pseudo_quantize(w: &[f32], n: usize, k: usize, bits: u32, group_size: usize) -> Vec<f32> {
    let maxq = check(w, n, k, bits, group_size);
    let mut out = w.to_vec();
    out.par_chunks_mut(k.max(1)).for_each(|row| {
        row.chunks_mut(group_size)
            .for_each(|g| GroupParams::fake_quantize(g, maxq))
    });
    out
}

/// Final quantization to integer codes: returns `(codes [n, k], scales [groups, n],
/// zeros [groups, n])` with `groups = ceil(k / group_size)` (the last group shorter when `k` is
/// not a multiple) and `(codes − zeros) · scales` equal to [`pseudo_quantize`] element for
/// element.
///
/// # Panics
/// As [`pseudo_quantize`].
pub fn awq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    bits: u32,
    group_size: usize,
) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let maxq = check(w, n, k, bits, group_size);
    let groups = k.div_ceil(group_size);
    let mut codes = vec![0u8; n * k];
    let mut params = vec![
        GroupParams {
            scale: 0.0,
            zero: 0.0
        };
        n * groups
    ];
    codes
        .par_chunks_mut(k.max(1))
        .zip(w.par_chunks(k.max(1)))
        .zip(params.par_chunks_mut(groups.max(1)))
        .for_each(|((codes, row), params)| {
            for ((c, g), p) in codes
                .chunks_mut(group_size)
                .zip(row.chunks(group_size))
                .zip(params)
            {
                *p = GroupParams::find(g, maxq);
                for (c, &v) in c.iter_mut().zip(g) {
                    *c = p.code(v, maxq) as u8;
                }
            }
        });
    let mut scales = vec![0f32; groups * n];
    let mut zeros = vec![0u8; groups * n];
    for (i, p) in params.iter().enumerate() {
        let (r, g) = (i / groups, i % groups);
        scales[g * n + r] = p.scale;
        zeros[g * n + r] = p.zero as u8;
    }
    (codes, scales, zeros)
}

/// Mean absolute value of each input channel over `rows` calibration rows `x` (row-major
/// `[rows, k]`): llm-awq's `get_act_scale`.
///
/// # Panics
/// If `x.len() != rows·k`.
pub fn activation_scale(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not {rows}x{k}");
    if k == 0 {
        return Vec::new();
    }
    let sums = x
        .par_chunks(k * 64)
        .fold(
            || vec![0f64; k],
            |mut acc, block| {
                for row in block.chunks(k) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += f64::from(v.abs());
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0f64; k],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    sums.iter()
        .map(|&s| (s / rows.max(1) as f64) as f32)
        .collect()
}

/// The candidate scale for `alpha`: `x_mean^alpha` (at least 1e-4), divided by
/// `sqrt(max · min)` so the scales straddle 1.
fn candidate(x_mean: &[f32], alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean.iter().map(|&m| m.powf(alpha).max(1e-4)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (hi * lo).sqrt();
    s.iter_mut().for_each(|v| *v /= norm);
    s
}

/// The AWQ scale search in its general form (llm-awq's `_search_module_scale`): for
/// `alpha = 0, 1/grid, .., (grid−1)/grid` builds `s = x_mean^alpha / sqrt(max(s)·min(s))`
/// (each `x_mean^alpha` at least 1e-4) and asks `loss(s)` how far the module's output moves
/// when its weights become `Q(W · s) / s`. The caller owns the module: `loss` may run the whole
/// attention or MLP block, as llm-awq does, and may record the loss curve. Returns the best
/// `s`, its loss and its alpha; NaN losses never win, and if no loss is finite the result is
/// alpha 0 (`s = 1`) with the first loss.
///
/// # Panics
/// If `x_mean.len() != k` or `grid == 0`.
pub fn search_scales_with(
    k: usize,
    x_mean: &[f32],
    grid: usize,
    loss: &mut dyn FnMut(&[f32]) -> f64,
) -> (Vec<f32>, f64, f32) {
    assert_eq!(
        x_mean.len(),
        k,
        "x_mean has {} channels, expected {k}",
        x_mean.len()
    );
    assert!(
        grid > 0,
        "the scale search needs a grid of at least one point"
    );
    let mut best: Option<(Vec<f32>, f64, f32)> = None;
    let mut first = f64::NAN;
    for i in 0..grid {
        let alpha = i as f32 / grid as f32;
        let s = candidate(x_mean, alpha);
        let l = loss(&s);
        if i == 0 {
            first = l;
        }
        if l.is_finite() && best.as_ref().is_none_or(|b| l < b.1) {
            best = Some((s, l, alpha));
        }
    }
    best.unwrap_or_else(|| (candidate(x_mean, 0.0), first, 0.0))
}

/// The AWQ scale search for linear layers sharing the input `x` (row-major `[rows, k]`), e.g.
/// q/k/v or gate/up: `weights` are `(W, n)` pairs with `W` row-major `[n, k]`. The loss of a
/// candidate `s` is the mean squared change of the concatenated outputs `x · W'ᵀ` with
/// `W' = pseudo_quantize(W · s) / s`. This approximates llm-awq, which measures the output of
/// the whole block (the attention output for q/k/v, the MLP output for gate/up); use
/// [`search_scales_with`] to measure that. Returns the best `s` and its alpha.
///
/// # Panics
/// On shape mismatches, `cfg.group_size == 0`, bits outside 1..=8, or `cfg.grid == 0`.
pub fn search_scales_linear(
    weights: &[(&[f32], usize)],
    x: &[f32],
    rows: usize,
    k: usize,
    cfg: &AwqConfig,
) -> (Vec<f32>, f32) {
    assert_eq!(x.len(), rows * k, "x is not {rows}x{k}");
    for &(w, n) in weights {
        check(w, n, k, cfg.bits, cfg.group_size);
    }
    let x_mean = activation_scale(x, rows, k);
    let outputs: usize = weights.iter().map(|&(_, n)| n).sum();
    let denom = (rows * outputs).max(1) as f64;
    let mut loss = |s: &[f32]| {
        let mut total = 0f64;
        for &(w, n) in weights {
            let mut ws = w.to_vec();
            scale_weight_columns(&mut ws, n, k, s);
            let q = pseudo_quantize(&ws, n, k, cfg.bits, cfg.group_size);
            // x · W'ᵀ − x · Wᵀ = x · (W' − W)ᵀ.
            let delta: Vec<f32> = q
                .par_chunks(k.max(1))
                .zip(w.par_chunks(k.max(1)))
                .flat_map_iter(|(q, w)| q.iter().zip(s).zip(w).map(|((q, s), w)| q / s - w))
                .collect();
            total += output_sq_norm(x, rows, k, &delta, n);
        }
        total / denom
    };
    let (s, _, alpha) = search_scales_with(k, &x_mean, cfg.grid, &mut loss);
    (s, alpha)
}

/// `‖x · dᵀ‖²` for `x [rows, k]`, `d [n, k]`, in row tiles (never the whole product).
fn output_sq_norm(x: &[f32], rows: usize, k: usize, d: &[f32], n: usize) -> f64 {
    const TILE: usize = 128;
    if rows == 0 || n == 0 || k == 0 {
        return 0.0;
    }
    x.par_chunks(TILE * k)
        .map_init(
            || vec![0f32; TILE * n],
            |out, xt| {
                let m = xt.len() / k;
                gemm(
                    m,
                    n,
                    k,
                    out,
                    0,
                    n,
                    None,
                    View {
                        data: xt,
                        off: 0,
                        rs: k,
                        cs: 1,
                    },
                    View {
                        data: d,
                        off: 0,
                        rs: 1,
                        cs: k,
                    },
                    1.0,
                );
                out[..m * n]
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
            },
        )
        .sum()
}

/// The AWQ clipping search (llm-awq's `auto_clip_layer`) for `w` (row-major `[n, k]`) with
/// inputs `x` (`[rows, k]`; both after scaling). Every `rows / clip_samples`-th row of `x` is
/// used (at least every row). For each output row and group, tries
/// `max_val = max|w_g| · (1 − i/clip_grid)` for `i = 0 .. max_shrink·clip_grid` and keeps the
/// one minimizing the mean over the sampled rows of `(x_g · (Q(clamp(w_g, ±max_val)) − w_g))²`;
/// `i = 0` is no clipping, so the chosen threshold never measures worse than none. The groups
/// are those of [`pseudo_quantize`]: `ceil(k / group_size)` per row, the last one shorter
/// when `k` is not a multiple. Returns the thresholds row-major `[n, ceil(k / group_size)]`,
/// for [`apply_clip`].
///
/// # Panics
/// On shape mismatches, `cfg.group_size == 0`, or bits outside 1..=8.
pub fn search_clip(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    cfg: &AwqConfig,
) -> Vec<f32> {
    let maxq = check(w, n, k, cfg.bits, cfg.group_size);
    assert_eq!(x.len(), rows * k, "x is not {rows}x{k}");
    let gs = cfg.group_size;
    let groups = k.div_ceil(gs);
    let step = (rows / cfg.clip_samples.max(1)).max(1);
    let xs: Vec<f32> = x
        .chunks(k.max(1))
        .step_by(step)
        .flatten()
        .copied()
        .collect();
    let samples = xs.len().checked_div(k).unwrap_or(0);
    // int(max_shrink * n_grid), robust to 0.7 * 10 = 6.9999…
    let steps = (cfg.max_shrink * cfg.clip_grid as f32 + 1e-4)
        .floor()
        .max(1.0) as usize;
    let per_group: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let cols = group_cols(g, gs, k);
            let width = cols.len();
            let wg_of = |r: usize| &w[r * k + cols.start..r * k + cols.end];
            let org_max: Vec<f32> = (0..n)
                .map(|r| wg_of(r).iter().fold(0f32, |m, v| m.max(v.abs())))
                .collect();
            let mut best = org_max.clone();
            let mut min_err = vec![f64::INFINITY; n];
            let mut delta = vec![0f32; n * width];
            let mut out = vec![0f32; samples * n];
            for i in 0..steps {
                let factor = (1.0 - i as f64 / cfg.clip_grid as f64) as f32;
                for r in 0..n {
                    let wg = wg_of(r);
                    let d = &mut delta[r * width..(r + 1) * width];
                    let max_val = org_max[r] * factor;
                    for (d, &v) in d.iter_mut().zip(wg) {
                        *d = v.clamp(-max_val, max_val);
                    }
                    GroupParams::fake_quantize(d, maxq);
                    d.iter_mut().zip(wg).for_each(|(d, &v)| *d -= v);
                }
                gemm(
                    samples,
                    n,
                    width,
                    &mut out,
                    0,
                    n,
                    None,
                    View {
                        data: &xs,
                        off: cols.start,
                        rs: k,
                        cs: 1,
                    },
                    View {
                        data: &delta,
                        off: 0,
                        rs: 1,
                        cs: width,
                    },
                    1.0,
                );
                for r in 0..n {
                    let err = (0..samples)
                        .map(|t| f64::from(out[t * n + r]).powi(2))
                        .sum::<f64>()
                        / samples.max(1) as f64;
                    if err < min_err[r] {
                        min_err[r] = err;
                        best[r] = org_max[r] * factor;
                    }
                }
            }
            best
        })
        .collect();
    let mut clip = vec![0f32; n * groups];
    for (g, best) in per_group.iter().enumerate() {
        for (r, &b) in best.iter().enumerate() {
            clip[r * groups + g] = b;
        }
    }
    clip
}

/// Clamps every group of `w` (row-major `[n, k]`) to `±max_abs[row · groups + group]` with
/// `groups = ceil(k / group_size)` (the last group of a row shorter when `k` is not a
/// multiple), the layout [`search_clip`] returns (llm-awq's `apply_clip`).
///
/// # Panics
/// If `w.len() != n·k`, `group_size == 0`, or `max_abs.len() != n · ceil(k / group_size)`.
pub fn apply_clip(w: &mut [f32], n: usize, k: usize, group_size: usize, max_abs: &[f32]) {
    assert_eq!(w.len(), n * k, "weight is not {n}x{k}");
    assert!(group_size > 0, "group size must be positive");
    let groups = k.div_ceil(group_size);
    assert_eq!(
        max_abs.len(),
        n * groups,
        "one clip value per row and group expected"
    );
    w.par_chunks_mut(k.max(1))
        .zip(max_abs.par_chunks(groups.max(1)))
        .for_each(|(row, clip)| {
            for (g, &m) in row.chunks_mut(group_size).zip(clip) {
                g.iter_mut().for_each(|v| *v = v.clamp(-m, m));
            }
        });
}

/// Divides a norm's weight (or any per-channel multiplier producing the scaled input, such as
/// the previous layer's bias) by `s`: `norm(x) / s` feeds `W · s` the same products.
///
/// # Panics
/// If the lengths differ.
pub fn fold_scale_into_norm(norm_weight: &mut [f32], s: &[f32]) {
    assert_eq!(
        norm_weight.len(),
        s.len(),
        "norm weight and scales differ in length"
    );
    norm_weight.iter_mut().zip(s).for_each(|(w, s)| *w /= s);
}

/// Multiplies each input column `j` of `w` (row-major `[n, k]`) by `s[j]`.
///
/// # Panics
/// If `w.len() != n·k` or `s.len() != k`.
pub fn scale_weight_columns(w: &mut [f32], n: usize, k: usize, s: &[f32]) {
    assert_eq!(w.len(), n * k, "weight is not {n}x{k}");
    assert_eq!(s.len(), k, "one scale per input column expected");
    w.par_chunks_mut(k.max(1))
        .for_each(|row| row.iter_mut().zip(s).for_each(|(w, s)| *w *= s));
}

/// Divides each output row `i` of the previous linear `prev_w` (row-major `[n_prev, k_prev]`)
/// by `s[i]` (v before o, up before down): its outputs, the next layer's inputs, shrink by
/// `s`, which the next layer's `W · s` undoes. A bias of the previous layer must be divided
/// too ([`fold_scale_into_norm`]).
///
/// # Panics
/// If `prev_w.len() != n_prev·k_prev` or `s.len() != n_prev`.
pub fn fold_scale_into_linear_rows(prev_w: &mut [f32], n_prev: usize, k_prev: usize, s: &[f32]) {
    assert_eq!(
        prev_w.len(),
        n_prev * k_prev,
        "weight is not {n_prev}x{k_prev}"
    );
    assert_eq!(s.len(), n_prev, "one scale per output row expected");
    prev_w
        .par_chunks_mut(k_prev.max(1))
        .zip(s)
        .for_each(|(row, &s)| row.iter_mut().for_each(|v| *v /= s));
}
