//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers") and round-to-nearest with the same quantizer.
//!
//! [`gptq_quantize`] follows the structure of the reference `fasterquant` (IST-DASLab/gptq,
//! AutoGPTQ): dead input channels are zeroed; with `act_order` the columns are visited in
//! descending order of `diag(H)`; `H` is dampened by `damp_percent · mean(diag H)`; the
//! columns are quantized one at a time, the scaled error of each is propagated to the columns
//! not yet quantized (`W[:, i:] -= err · Hinv[i, i:]`) inside a block of `block_size` columns,
//! and to the rest of the matrix once per block (the lazy batch update, one `gemm`). Group
//! parameters are found when the first column of a group is reached, from the weights as they
//! stand then: updated by all earlier blocks but, inside the current block, not yet by its
//! earlier columns — exactly what the reference reads.
//!
//! `k` need not be a multiple of the group size: there are `ceil(k / group_size)` groups and
//! the last one is shorter, as in AutoGPTQ (`W[:, i:i+groupsize]` at the end of the matrix,
//! `g_idx = j // group_size`). Groups are consecutive in the order the columns are quantized,
//! so with `act_order` (and no static groups) the short group is the last in permuted order:
//! `g_idx[j] = position(j) // group_size`.
//!
//! Differences from the reference, none of which change the quantized weights:
//! - `H` is accumulated and factored in f64; the weight updates run in f32 like the
//!   reference's.
//! - `Hinv` (the upper Cholesky factor of `H⁻¹`) is computed directly
//!   ([`super::linalg::inverse_cholesky_upper`]).
//! - Output channels are independent in GPTQ (only `Hinv` is shared), so blocks of rows run
//!   on separate threads.
//! - [`HessianAccumulator::samples`] counts rows (tokens); AutoGPTQ counts sequences. `H` then
//!   differs by a constant factor, which changes only [`GptqResult::loss`], not the weights.
//! - If the Cholesky factorization fails, it is retried with ten times the damping (up to
//!   three times); [`GptqResult::damp_percent`] says which damping was used.

use qrt_format::quant::gptq::minmax_params;
use rayon::prelude::*;

use super::linalg::{gemm, inverse_cholesky_upper, View};

/// Largest number of times the damping is multiplied by ten after a failed factorization.
const DAMP_RETRIES: u32 = 3;

/// Settings of [`gptq_quantize`] (AutoGPTQ's `BaseQuantizeConfig` and `fasterquant` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    /// Bits per weight: 2, 3, 4 or 8.
    pub bits: u32,
    /// Columns per group; `None` quantizes each output channel with one scale/zero. There are
    /// `ceil(k / group_size)` groups; when `k` is not a multiple, the last one is shorter.
    pub group_size: Option<usize>,
    /// Symmetric quantization (zero point fixed at `(maxq + 1) / 2`).
    pub sym: bool,
    /// Quantize columns in descending order of `diag(H)` ("desc_act").
    pub act_order: bool,
    /// Damping added to the diagonal of `H`, as a fraction of its mean (0.01 = 1%).
    pub damp_percent: f64,
    /// Columns per lazy batch update (128 in the reference).
    pub block_size: usize,
    /// Compute all group parameters up front from the unmodified weights, in original column
    /// order (only with `group_size`).
    pub static_groups: bool,
}

impl Default for GptqConfig {
    /// AutoGPTQ's usual 4-bit setting: group size 128, symmetric, no act-order, 1% damping.
    fn default() -> Self {
        Self {
            bits: 4,
            group_size: Some(128),
            sym: true,
            act_order: false,
            damp_percent: 0.01,
            block_size: 128,
            static_groups: false,
        }
    }
}

/// Running estimate of the layer Hessian `H = 2/N Σ x xᵀ` over `N` calibration rows `x` (the
/// layer's inputs), kept in f64 and updated like AutoGPTQ's `add_batch`:
/// `H ← H · n/(n+m) + 2/(n+m) · XᵀX` for a batch of `m` rows.
#[derive(Debug, Clone)]
pub struct HessianAccumulator {
    k: usize,
    /// Row-major `k × k`; only the lower triangle (with the diagonal) is maintained.
    lower: Vec<f64>,
    samples: usize,
}

/// Rows of a batch converted to f64 at a time in [`HessianAccumulator::add_batch`].
const HESSIAN_SUB_BATCH: usize = 256;

impl HessianAccumulator {
    /// An empty accumulator for a layer with `k` input features.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            lower: vec![0.0; k * k],
            samples: 0,
        }
    }

    /// Input features (the side of `H`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Adds `rows` calibration rows `x` (row-major `rows × k`, the inputs of the layer).
    ///
    /// # Panics
    /// If `x.len() != rows * k`.
    pub fn add_batch(&mut self, x: &[f32], rows: usize) {
        let k = self.k;
        assert_eq!(x.len(), rows * k, "add_batch: x is not {rows}x{k}");
        if rows == 0 || k == 0 {
            self.samples += rows;
            return;
        }
        let total = self.samples + rows;
        let mut decay = (self.samples > 0).then(|| self.samples as f64 / total as f64);
        let scale = 2.0 / total as f64;
        let mut xf = Vec::with_capacity(HESSIAN_SUB_BATCH.min(rows) * k);
        for sub in x.chunks(HESSIAN_SUB_BATCH * k) {
            let m = sub.len() / k;
            xf.clear();
            xf.extend(sub.iter().map(|&v| f64::from(v)));
            let xf = &xf;
            let alpha = decay;
            self.lower
                .par_chunks_mut(64 * k)
                .enumerate()
                .for_each(|(b, chunk)| {
                    let i0 = b * 64;
                    let rows_here = chunk.len() / k;
                    gemm(
                        rows_here,
                        i0 + rows_here,
                        m,
                        chunk,
                        0,
                        k,
                        alpha,
                        View {
                            data: xf,
                            off: i0,
                            rs: 1,
                            cs: k,
                        },
                        View {
                            data: xf,
                            off: 0,
                            rs: k,
                            cs: 1,
                        },
                        scale,
                    );
                });
            // Later sub-batches add to what the first one left.
            decay = Some(1.0);
        }
        self.samples = total;
    }

    /// Calibration rows seen so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The full symmetric `H`, row-major `k × k`.
    pub fn hessian(&self) -> Vec<f64> {
        let k = self.k;
        let mut h = self.lower.clone();
        for i in 0..k {
            for j in i + 1..k {
                h[i * k + j] = self.lower[j * k + i];
            }
        }
        h
    }
}

/// A quantized weight matrix `[n, k]` (`n` output channels, `k` input features).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqResult {
    /// Integer codes in `0..=2^bits − 1`, row-major `[n, k]`, original column order.
    pub codes: Vec<u8>,
    /// Scales, `[n_groups, n]` with `n_groups = ceil(k / group_size)` (1 without groups).
    pub scales: Vec<f32>,
    /// Zero points, `[n_groups, n]`.
    pub zeros: Vec<u8>,
    /// The group of each input column, `[k]` (AutoGPTQ's `g_idx`): `j / group_size`, or with
    /// `act_order` and no static groups `position(j) / group_size` where `position(j)` is the
    /// place of column `j` in the quantization order; all zero without groups.
    pub g_idx: Vec<i32>,
    /// The quantized weights, `[n, k]`, original column order; for every element
    /// `dequantized[r·k + j] == scales[g·n + r] · (codes[r·k + j] − zeros[g·n + r])` in f32
    /// with `g = g_idx[j]`.
    pub dequantized: Vec<f32>,
    /// The GPTQ objective summed over all weights, as AutoGPTQ's `torch.sum(Losses)`:
    /// `Σ (w − q)² / (2 · Hinv[i,i]²)`. For [`rtn_quantize`], `Σ (w − q)²` (the same objective
    /// for `H = 2I`).
    pub loss: f64,
    /// The damping actually used (the configured one, or ten times it per failed Cholesky);
    /// 0 for [`rtn_quantize`].
    pub damp_percent: f64,
}

/// Scale and zero point of one output channel over a set of weights (the reference
/// `Quantizer.find_params` with `perchannel=True`, no MSE search).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Params {
    scale: f32,
    zero: f32,
}

impl Params {
    /// The grid of `values` ([`minmax_params`]).
    fn find(values: impl Iterator<Item = f32>, maxq: f32, sym: bool) -> Self {
        let (scale, zero) = minmax_params(values, maxq, sym);
        Self { scale, zero }
    }

    /// The integer code of `x`: `clamp(round(x / scale) + zero, 0, maxq)`, rounding half to
    /// even like `torch.round`.
    fn code(self, x: f32, maxq: f32) -> f32 {
        ((x / self.scale).round_ties_even() + self.zero).clamp(0.0, maxq)
    }

    /// The weight a code stands for: `scale · (code − zero)`.
    fn dequantize(self, code: f32) -> f32 {
        self.scale * (code - self.zero)
    }
}

/// Checks shapes and settings shared by GPTQ and RTN; returns `maxq`.
fn check(
    w: &[f32],
    n: usize,
    k: usize,
    bits: u32,
    group_size: Option<usize>,
) -> Result<f32, String> {
    if w.len() != n * k {
        return Err(format!("weight has {} elements, expected {n}x{k}", w.len()));
    }
    if !(2..=8).contains(&bits) {
        return Err(format!("{bits}-bit quantization is not supported (2..=8)"));
    }
    if group_size == Some(0) {
        return Err("group size must be positive".into());
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(format!("weight element {i} is not finite ({})", w[i]));
    }
    Ok(((1u32 << bits) - 1) as f32)
}

/// Round-to-nearest quantization with the GPTQ quantizer: each group (or each whole row when
/// `group_size` is `None`) gets its own scale and zero from its min/max. With `group_size = g`
/// there are `ceil(k / g)` groups of consecutive columns, the last one shorter when `k` is not
/// a multiple of `g`. The baseline GPTQ is measured against.
///
/// # Panics
/// If the shapes or settings are invalid (`w.len() != n·k`, bits outside 2..=8, group size 0,
/// non-finite weights).
pub fn rtn_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    bits: u32,
    group_size: Option<usize>,
    sym: bool,
) -> GptqResult {
    let maxq = check(w, n, k, bits, group_size).unwrap_or_else(|e| panic!("rtn_quantize: {e}"));
    let gs = group_size.unwrap_or(k.max(1)).min(k.max(1));
    let groups = k.div_ceil(gs);
    let mut codes = vec![0u8; n * k];
    let mut dequantized = vec![0f32; n * k];
    let mut params = vec![
        Params {
            scale: 0.0,
            zero: 0.0
        };
        n * groups
    ];
    let loss: f64 = codes
        .par_chunks_mut(k.max(1))
        .zip(dequantized.par_chunks_mut(k.max(1)))
        .zip(params.par_chunks_mut(groups.max(1)))
        .enumerate()
        .map(|(r, ((codes, deq), params))| {
            let row = &w[r * k..(r + 1) * k];
            let mut loss = 0f64;
            for (g, p) in params.iter_mut().enumerate() {
                let cols = g * gs..((g + 1) * gs).min(k);
                *p = Params::find(row[cols.clone()].iter().copied(), maxq, sym);
                for j in cols {
                    let q = p.code(row[j], maxq);
                    codes[j] = q as u8;
                    deq[j] = p.dequantize(q);
                    loss += f64::from(row[j] - deq[j]).powi(2);
                }
            }
            loss
        })
        .sum();
    let (scales, zeros) = transpose_params(&params, n, groups);
    GptqResult {
        codes,
        scales,
        zeros,
        g_idx: (0..k).map(|j| (j / gs) as i32).collect(),
        dequantized,
        loss,
        damp_percent: 0.0,
    }
}

/// `[n, groups]` parameters → (`scales [groups, n]`, `zeros [groups, n]`).
fn transpose_params(params: &[Params], n: usize, groups: usize) -> (Vec<f32>, Vec<u8>) {
    let mut scales = vec![0f32; groups * n];
    let mut zeros = vec![0u8; groups * n];
    for r in 0..n {
        for g in 0..groups {
            let p = params[r * groups + g];
            scales[g * n + r] = p.scale;
            zeros[g * n + r] = p.zero as u8;
        }
    }
    (scales, zeros)
}

/// GPTQ-quantizes `w` (row-major `[n, k]`: `n` output channels, `k` inputs) against the
/// Hessian `h` of its inputs. See the module documentation for the algorithm.
///
/// # Errors
/// Invalid shapes or settings, non-finite weights or Hessian, no calibration rows, or a
/// Hessian that stays not positive definite after raising the damping to 1000× its setting.
pub fn gptq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    h: &HessianAccumulator,
    cfg: &GptqConfig,
) -> Result<GptqResult, String> {
    if ![2, 3, 4, 8].contains(&cfg.bits) {
        return Err(format!(
            "{}-bit GPTQ is not supported (2, 3, 4 or 8)",
            cfg.bits
        ));
    }
    let maxq = check(w, n, k, cfg.bits, cfg.group_size)?;
    if h.k() != k {
        return Err(format!("Hessian is {0}x{0}, weight has {k} columns", h.k()));
    }
    if h.samples() == 0 {
        return Err("Hessian has no calibration rows".into());
    }
    if cfg.block_size == 0 {
        return Err("block size must be positive".into());
    }
    if cfg.static_groups && cfg.group_size.is_none() {
        return Err("static groups need a group size".into());
    }
    if !(cfg.damp_percent > 0.0 && cfg.damp_percent.is_finite()) {
        return Err(format!(
            "damp_percent must be positive, got {}",
            cfg.damp_percent
        ));
    }
    if k == 0 || n == 0 {
        return Ok(rtn_quantize(w, n, k, cfg.bits, cfg.group_size, cfg.sym));
    }
    let sym = cfg.sym;
    let mut hm = h.hessian();
    if let Some(i) = hm.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "Hessian element ({}, {}) is not finite",
            i / k,
            i % k
        ));
    }

    // Per-channel parameters come from the weights before dead columns are zeroed, as the
    // reference calls find_params first.
    let channel_params: Vec<Params> = match cfg.group_size {
        None => w
            .par_chunks(k)
            .map(|row| Params::find(row.iter().copied(), maxq, sym))
            .collect(),
        Some(_) => Vec::new(),
    };
    let mut wz = w.to_vec();
    for i in 0..k {
        if hm[i * k + i] == 0.0 {
            hm[i * k + i] = 1.0;
            wz.iter_mut().skip(i).step_by(k).for_each(|v| *v = 0.0);
        }
    }
    let gs = cfg.group_size.unwrap_or(k).min(k);
    let groups = if cfg.group_size.is_some() {
        k.div_ceil(gs)
    } else {
        1
    };
    // Static groups: [n, groups] parameters from the (dead-zeroed) weights, original order.
    let static_params: Vec<Params> = if cfg.static_groups {
        wz.par_chunks(k)
            .flat_map_iter(|row| {
                (0..groups).map(move |g| {
                    Params::find(
                        row[g * gs..((g + 1) * gs).min(k)].iter().copied(),
                        maxq,
                        sym,
                    )
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    // Column order: descending diag(H) with act_order (stable for ties).
    let mut perm: Vec<usize> = (0..k).collect();
    if cfg.act_order {
        perm.sort_by(|&a, &b| hm[b * k + b].total_cmp(&hm[a * k + a]));
        let mut hp = vec![0f64; k * k];
        hp.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let src = &hm[perm[i] * k..(perm[i] + 1) * k];
            for (d, &p) in row.iter_mut().zip(&perm) {
                *d = src[p];
            }
        });
        hm = hp;
        wz.par_chunks_mut(k).for_each(|row| {
            let orig = row.to_vec();
            for (d, &p) in row.iter_mut().zip(&perm) {
                *d = orig[p];
            }
        });
    }

    let mean_diag = (0..k).map(|i| hm[i * k + i]).sum::<f64>() / k as f64;
    let mut damp_percent = cfg.damp_percent;
    let mut attempt = 0;
    let hinv: Vec<f32> = loop {
        let mut f = hm.clone();
        let damp = damp_percent * mean_diag;
        for i in 0..k {
            f[i * k + i] += damp;
        }
        let err = match inverse_cholesky_upper(&mut f, k) {
            Ok(()) if f.iter().all(|v| v.is_finite()) => {
                break f.iter().map(|&v| v as f32).collect()
            }
            Ok(()) => "the inverse factor is not finite".to_string(),
            Err(e) => e.to_string(),
        };
        if attempt == DAMP_RETRIES {
            return Err(format!(
                "Hessian is not positive definite even with damp_percent {damp_percent} ({err})"
            ));
        }
        attempt += 1;
        damp_percent *= 10.0;
    };
    drop(hm);

    let bs = cfg.block_size;
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = n.div_ceil(threads).next_multiple_of(8).clamp(8, 256);
    let mut qp = vec![0f32; n * k];
    let mut codes_p = vec![0u8; n * k];
    let ctx = Ctx {
        k,
        maxq,
        sym,
        gs,
        grouped: cfg.group_size.is_some(),
        bs,
        hinv: &hinv,
    };
    let parts: Vec<(Vec<Params>, f64)> = wz
        .par_chunks_mut(chunk_rows * k)
        .zip(qp.par_chunks_mut(chunk_rows * k))
        .zip(codes_p.par_chunks_mut(chunk_rows * k))
        .enumerate()
        .map(|(c, ((wc, qc), cc))| {
            let r0 = c * chunk_rows;
            let m = wc.len() / k;
            let fixed = if cfg.static_groups {
                Fixed::Static {
                    params: &static_params[r0 * groups..(r0 + m) * groups],
                    groups,
                    perm: &perm,
                }
            } else if cfg.group_size.is_none() {
                Fixed::Channel(&channel_params[r0..r0 + m])
            } else {
                Fixed::None
            };
            ctx.run(wc, qc, cc, m, fixed)
        })
        .collect();

    // Gather [n, groups] parameters and the loss; undo the permutation.
    let mut params = vec![
        Params {
            scale: 0.0,
            zero: 0.0
        };
        n * groups
    ];
    let mut loss = 0f64;
    for (c, (p, l)) in parts.into_iter().enumerate() {
        let r0 = c * chunk_rows;
        let m = p.len() / groups;
        for i in 0..m {
            for g in 0..groups {
                params[(r0 + i) * groups + g] = p[g * m + i];
            }
        }
        loss += l;
    }
    let (scales, zeros) = if cfg.static_groups {
        transpose_params(&static_params, n, groups)
    } else {
        transpose_params(&params, n, groups)
    };
    let mut dequantized = vec![0f32; n * k];
    let mut codes = vec![0u8; n * k];
    dequantized
        .par_chunks_mut(k)
        .zip(codes.par_chunks_mut(k))
        .enumerate()
        .for_each(|(r, (deq, cod))| {
            for (pos, &j) in perm.iter().enumerate() {
                deq[j] = qp[r * k + pos];
                cod[j] = codes_p[r * k + pos];
            }
        });
    let mut g_idx = vec![0i32; k];
    if cfg.group_size.is_some() {
        for (pos, &j) in perm.iter().enumerate() {
            g_idx[j] = if cfg.static_groups { j / gs } else { pos / gs } as i32;
        }
    }
    Ok(GptqResult {
        codes,
        scales,
        zeros,
        g_idx,
        dequantized,
        loss,
        damp_percent,
    })
}

/// Quantizer parameters fixed before the column loop.
#[derive(Clone, Copy)]
enum Fixed<'a> {
    /// Groups found during the loop.
    None,
    /// One parameter set per row of the chunk.
    Channel(&'a [Params]),
    /// `[rows, groups]` static groups in original column order; `perm[pos]` is the original
    /// column at permuted position `pos`.
    Static {
        params: &'a [Params],
        groups: usize,
        perm: &'a [usize],
    },
}

/// What every chunk of rows shares.
struct Ctx<'a> {
    k: usize,
    maxq: f32,
    sym: bool,
    gs: usize,
    grouped: bool,
    bs: usize,
    /// Upper Cholesky factor of the dampened `H⁻¹`, f32, row-major `k × k`, permuted order.
    hinv: &'a [f32],
}

impl Ctx<'_> {
    /// GPTQ on `m` rows `wc` (row-major `[m, k]`, permuted order, updated in place), writing
    /// the dequantized weights to `qc` and the codes to `cc`. Returns the parameters found per
    /// group as `[groups, m]` (empty for static groups) and the loss.
    fn run(
        &self,
        wc: &mut [f32],
        qc: &mut [f32],
        cc: &mut [u8],
        m: usize,
        fixed: Fixed<'_>,
    ) -> (Vec<Params>, f64) {
        let (k, maxq, bs, hinv) = (self.k, self.maxq, self.bs, self.hinv);
        let mut found = Vec::new();
        let mut cur = vec![
            Params {
                scale: 1.0,
                zero: 0.0
            };
            m
        ];
        if let Fixed::Channel(p) = fixed {
            cur.copy_from_slice(p);
            found.extend_from_slice(p);
        }
        // The current block, transposed ([count, m]: one column of W per row), and its
        // scaled errors.
        let mut w1 = vec![0f32; bs.min(k) * m];
        let mut err1 = vec![0f32; bs.min(k) * m];
        let mut loss = 0f64;
        for i1 in (0..k).step_by(bs) {
            let i2 = (i1 + bs).min(k);
            let count = i2 - i1;
            for r in 0..m {
                for c in 0..count {
                    w1[c * m + r] = wc[r * k + i1 + c];
                }
            }
            for i in 0..count {
                let col = i1 + i;
                match fixed {
                    Fixed::None if self.grouped && col % self.gs == 0 => {
                        // The reference reads the outer W here: inside this block it has not
                        // seen this block's updates yet.
                        let end = (col + self.gs).min(k);
                        for (r, p) in cur.iter_mut().enumerate() {
                            *p = Params::find(
                                wc[r * k + col..r * k + end].iter().copied(),
                                maxq,
                                self.sym,
                            );
                        }
                        found.extend_from_slice(&cur);
                    }
                    Fixed::Static {
                        params,
                        groups,
                        perm,
                    } => {
                        let g = perm[col] / self.gs;
                        for (r, p) in cur.iter_mut().enumerate() {
                            *p = params[r * groups + g];
                        }
                    }
                    _ => {}
                }
                let d = hinv[col * k + col];
                let (done, rest) = w1.split_at_mut((i + 1) * m);
                let wcol = &done[i * m..];
                let ecol = &mut err1[i * m..(i + 1) * m];
                for r in 0..m {
                    let x = wcol[r];
                    let q = cur[r].code(x, maxq);
                    let deq = cur[r].dequantize(q);
                    qc[r * k + col] = deq;
                    cc[r * k + col] = q as u8;
                    let diff = x - deq;
                    loss += f64::from(diff).powi(2) / (2.0 * f64::from(d).powi(2));
                    ecol[r] = diff / d;
                }
                let hrow = &hinv[col * k + i1 + i + 1..col * k + i2];
                for (wj, &hij) in rest.chunks_mut(m).zip(hrow) {
                    for (v, &e) in wj.iter_mut().zip(ecol.iter()) {
                        *v -= e * hij;
                    }
                }
            }
            // Lazy batch update: W[:, i2:] -= Err1 · Hinv[i1:i2, i2:].
            gemm(
                m,
                k - i2,
                count,
                wc,
                i2,
                k,
                Some(1.0),
                View {
                    data: &err1,
                    off: 0,
                    rs: 1,
                    cs: m,
                },
                View {
                    data: hinv,
                    off: i1 * k + i2,
                    rs: k,
                    cs: 1,
                },
                -1.0,
            );
        }
        (found, loss)
    }
}
