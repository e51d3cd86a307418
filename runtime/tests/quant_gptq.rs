//! GPTQ against round-to-nearest on a synthetic layer with correlated inputs, the quantizer
//! against hand computations, and the bookkeeping (codes, scales, zeros, g_idx, loss).

mod quant_common;

use qrt_runtime::quant::linalg::{cholesky_inverse, cholesky_lower, cholesky_upper};
use qrt_runtime::quant::{gptq_quantize, rtn_quantize, GptqConfig, GptqResult, HessianAccumulator};
use quant_common::output_error;

use qrt_runtime::sampling::Rng;

const N: usize = 64;
const K: usize = 256;
const ROWS: usize = 2048;

/// A layer `w [N, K]` and calibration inputs `x = z · M [ROWS, K]`: `z` normal with a few
/// high-variance channels, `M` a random mixing matrix, so the inputs are correlated.
fn layer(seed: u64) -> (Vec<f32>, Vec<f32>) {
    layer_k(seed, K)
}

/// [`layer`] with `k` input features: `w [N, k]`, `x [ROWS, k]`.
fn layer_k(seed: u64, k: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut z: Vec<f32> = (0..ROWS * k).map(|_| rng.next_normal()).collect();
    for row in z.chunks_mut(k) {
        for (j, v) in row.iter_mut().enumerate() {
            if j % 37 == 3 {
                *v *= 8.0;
            }
        }
    }
    let m: Vec<f32> = (0..k * k)
        .map(|_| rng.next_normal() / (k as f32).sqrt())
        .collect();
    let mut x = vec![0f32; ROWS * k];
    for r in 0..ROWS {
        for p in 0..k {
            let zp = z[r * k + p];
            for j in 0..k {
                x[r * k + j] += zp * m[p * k + j];
            }
        }
    }
    let w: Vec<f32> = (0..N * k).map(|_| 0.05 * rng.next_normal()).collect();
    (w, x)
}

/// Layer widths that are not multiples of the group size: SmolLM2-135M's hidden size 576 with
/// the presets' 128 (4 groups of 128 and one of 64), and 200 with 64 (3 of 64 and one of 8).
const UNEVEN: [(usize, usize); 2] = [(576, 128), (200, 64)];

/// How many columns each group holds according to `g_idx`.
fn group_sizes(g_idx: &[i32], groups: usize) -> Vec<usize> {
    let mut sizes = vec![0; groups];
    for &g in g_idx {
        sizes[g as usize] += 1;
    }
    sizes
}

/// `ceil(k / gs)` groups of `gs` columns, the last one holding the rest.
fn want_sizes(k: usize, gs: usize) -> Vec<usize> {
    (0..k.div_ceil(gs)).map(|g| gs.min(k - g * gs)).collect()
}

fn hessian(x: &[f32], rows: usize, k: usize) -> HessianAccumulator {
    let mut h = HessianAccumulator::new(k);
    // Uneven batches exercise the running average.
    let cut = 700.min(rows);
    h.add_batch(&x[..cut * k], cut);
    h.add_batch(&x[cut * k..], rows - cut);
    h
}

/// Codes in range, `dequantized == scales · (codes − zeros)` bit for bit, shapes.
fn check_consistent(res: &GptqResult, n: usize, k: usize, bits: u32, groups: usize) {
    let maxq = (1u32 << bits) - 1;
    assert_eq!(res.codes.len(), n * k);
    assert_eq!(res.dequantized.len(), n * k);
    assert_eq!(res.g_idx.len(), k);
    assert_eq!(res.scales.len(), groups * n);
    assert_eq!(res.zeros.len(), groups * n);
    for r in 0..n {
        for j in 0..k {
            let g = res.g_idx[j] as usize;
            assert!(g < groups, "g_idx {g} out of range");
            let code = res.codes[r * k + j];
            assert!(
                u32::from(code) <= maxq,
                "code {code} out of range for {bits} bits"
            );
            let want = res.scales[g * n + r] * (f32::from(code) - f32::from(res.zeros[g * n + r]));
            assert_eq!(
                res.dequantized[r * k + j].to_bits(),
                want.to_bits(),
                "row {r} col {j}"
            );
        }
    }
    assert!(res.zeros.iter().all(|&z| u32::from(z) <= maxq));
}

/// Columns in descending order of diag(H) (stable).
fn act_order(h: &HessianAccumulator) -> Vec<usize> {
    let k = h.k();
    let hm = h.hessian();
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|&a, &b| hm[b * k + b].total_cmp(&hm[a * k + a]));
    perm
}

/// GPTQ's result against the reference: every scale within 1e-4 (relative) and 999 of every
/// 1000 dequantized weights within 1e-6 (`N` rows of `k`).
fn assert_matches_reference(
    res: &GptqResult,
    want: &[f32],
    want_scales: &[Vec<f32>],
    k: usize,
    label: &str,
) {
    let mut worst = 0f32;
    for (g, sc) in want_scales.iter().enumerate() {
        for (r, &s) in sc.iter().enumerate() {
            worst = worst.max((res.scales[g * N + r] - s).abs() / s);
        }
    }
    assert!(
        worst < 1e-4,
        "{label}: scales differ by {worst:e} (relative)"
    );
    let same = res
        .dequantized
        .iter()
        .zip(want)
        .filter(|(a, b)| (*a - *b).abs() < 1e-6)
        .count();
    assert!(
        same * 1000 >= 999 * N * k,
        "{label}: {} of {} weights differ",
        N * k - same,
        N * k
    );
}

/// A literal port of the reference `fasterquant` (no threads, W in f64, Hinv through the three
/// reference steps), asymmetric, blocks of 128 columns: returns the dequantized weights (original order) and the
/// scales in the order the groups are visited, `[groups][n]`.
fn reference_fasterquant(
    w: &[f32],
    n: usize,
    k: usize,
    h: &HessianAccumulator,
    bits: u32,
    group_size: usize,
    act_order: bool,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let blocksize = 128;
    let maxq = ((1u32 << bits) - 1) as f32;
    let find = |vals: &[f64]| {
        let lo = vals.iter().fold(0f32, |m, &v| m.min(v as f32));
        let hi = vals.iter().fold(0f32, |m, &v| m.max(v as f32));
        let (lo, hi) = if lo == 0.0 && hi == 0.0 {
            (-1.0, 1.0)
        } else {
            (lo, hi)
        };
        let scale = (hi - lo) / maxq;
        (scale, (-lo / scale).round_ties_even())
    };
    let mut hm = h.hessian();
    let mut wm: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for i in 0..k {
        if hm[i * k + i] == 0.0 {
            hm[i * k + i] = 1.0;
            (0..n).for_each(|r| wm[r * k + i] = 0.0);
        }
    }
    let mut perm: Vec<usize> = (0..k).collect();
    if act_order {
        perm.sort_by(|&a, &b| hm[b * k + b].total_cmp(&hm[a * k + a]));
    }
    let hp: Vec<f64> = (0..k * k)
        .map(|e| hm[perm[e / k] * k + perm[e % k]])
        .collect();
    let mut wp: Vec<f64> = (0..n * k).map(|e| wm[(e / k) * k + perm[e % k]]).collect();
    let damp = 0.01 * (0..k).map(|i| hp[i * k + i]).sum::<f64>() / k as f64;
    let mut l = hp.clone();
    (0..k).for_each(|i| l[i * k + i] += damp);
    cholesky_lower(&mut l, k).unwrap();
    let mut u = cholesky_inverse(&l, k);
    cholesky_upper(&mut u, k).unwrap();
    let mut q = vec![0f64; n * k];
    let mut scales = Vec::new();
    let mut params = vec![(0f32, 0f32); n];
    for i1 in (0..k).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(k);
        let mut w1: Vec<Vec<f64>> = (0..n)
            .map(|r| wp[r * k + i1..r * k + i2].to_vec())
            .collect();
        let mut err1 = vec![vec![0f64; i2 - i1]; n];
        for i in 0..i2 - i1 {
            let col = i1 + i;
            if col % group_size == 0 {
                let end = (col + group_size).min(k);
                params = (0..n)
                    .map(|r| find(&wp[r * k + col..r * k + end]))
                    .collect();
                scales.push(params.iter().map(|p| p.0).collect());
            }
            let d = u[col * k + col];
            for r in 0..n {
                let (scale, zero) = params[r];
                let x = w1[r][i];
                let code = ((x as f32 / scale).round_ties_even() + zero).clamp(0.0, maxq);
                let deq = f64::from(scale * (code - zero));
                q[r * k + col] = deq;
                let e = (x - deq) / d;
                for j in i..i2 - i1 {
                    w1[r][j] -= e * u[col * k + i1 + j];
                }
                err1[r][i] = e;
            }
        }
        for r in 0..n {
            for j in i2..k {
                wp[r * k + j] -= (i1..i2)
                    .map(|p| err1[r][p - i1] * u[p * k + j])
                    .sum::<f64>();
            }
        }
    }
    let mut out = vec![0f32; n * k];
    for r in 0..n {
        for (pos, &j) in perm.iter().enumerate() {
            out[r * k + j] = q[r * k + pos] as f32;
        }
    }
    (out, scales)
}

#[test]
fn matches_a_literal_port_of_the_reference() {
    // Groups of 32 inside blocks of 128: the group parameters must come from the weights the
    // reference reads (earlier blocks' updates, not this block's).
    let (w, x) = layer(31);
    let h = hessian(&x, ROWS, K);
    for act in [false, true] {
        let cfg = GptqConfig {
            bits: 4,
            group_size: Some(32),
            sym: false,
            act_order: act,
            ..GptqConfig::default()
        };
        let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
        let (want, want_scales) = reference_fasterquant(&w, N, K, &h, 4, 32, act);
        assert_matches_reference(&res, &want, &want_scales, K, &format!("act_order={act}"));
    }
}

#[test]
fn gptq_beats_round_to_nearest() {
    let (w, x) = layer(7);
    let h = hessian(&x, ROWS, K);
    for (bits, group_size) in [
        (4, Some(128)),
        (3, Some(128)),
        (4, None),
        (3, None),
        (2, Some(64)),
    ] {
        for sym in [false, true] {
            let rtn = rtn_quantize(&w, N, K, bits, group_size, sym);
            let groups = group_size.map_or(1, |g| K.div_ceil(g));
            check_consistent(&rtn, N, K, bits, groups);
            let rtn_err = output_error(&x, ROWS, K, &w, &rtn.dequantized, N);
            for act in [false, true] {
                let cfg = GptqConfig {
                    bits,
                    group_size,
                    sym,
                    act_order: act,
                    ..GptqConfig::default()
                };
                let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
                check_consistent(&res, N, K, bits, groups);
                assert_eq!(res.damp_percent, 0.01);
                let err = output_error(&x, ROWS, K, &w, &res.dequantized, N);
                let ratio = err / rtn_err;
                eprintln!(
                    "{bits}-bit g={group_size:?} sym={sym} act_order={act}: GPTQ/RTN = {ratio:.3}"
                );
                assert!(
                    ratio < 0.8,
                    "{bits}-bit g={group_size:?} sym={sym} act_order={act}: ratio {ratio}"
                );
            }
        }
    }
}

#[test]
fn loss_equals_the_dampened_objective() {
    // GPTQ leaves W − Q = Err · U with Uᵀ U = (H + λI)⁻¹, so Σ err² = tr(E (H + λI) Eᵀ):
    // loss = ½ Σ err² = ‖X Eᵀ‖² / N + ½ λ ‖E‖². This checks the propagation and Hinv end to end.
    let (w, x) = layer(11);
    let h = hessian(&x, ROWS, K);
    let hm = h.hessian();
    let mean_diag = (0..K).map(|i| hm[i * K + i]).sum::<f64>() / K as f64;
    for act in [false, true] {
        for group_size in [Some(32), None] {
            let cfg = GptqConfig {
                bits: 3,
                group_size,
                sym: false,
                act_order: act,
                ..GptqConfig::default()
            };
            let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
            let lambda = cfg.damp_percent * mean_diag;
            let e2: f64 = w
                .iter()
                .zip(&res.dequantized)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let want = output_error(&x, ROWS, K, &w, &res.dequantized, N) / ROWS as f64
                + 0.5 * lambda * e2;
            let rel = (res.loss - want).abs() / want;
            assert!(
                rel < 2e-3,
                "act_order={act} g={group_size:?}: loss {} vs {want} ({rel:e})",
                res.loss
            );
        }
    }
}

#[test]
fn act_order_groups_follow_the_permutation() {
    let (w, x) = layer(13);
    let h = hessian(&x, ROWS, K);
    let perm = act_order(&h);
    assert_ne!(
        perm,
        (0..K).collect::<Vec<_>>(),
        "the test needs a nontrivial order"
    );
    for gs in [128, 64, 100] {
        let cfg = GptqConfig {
            bits: 4,
            group_size: Some(gs),
            act_order: true,
            ..GptqConfig::default()
        };
        let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
        let groups = K.div_ceil(gs);
        check_consistent(&res, N, K, 4, groups);
        for (pos, &j) in perm.iter().enumerate() {
            assert_eq!(
                res.g_idx[j] as usize,
                pos / gs,
                "column {j} at position {pos}"
            );
        }
        for g in 0..groups {
            let size = res.g_idx.iter().filter(|&&v| v as usize == g).count();
            assert_eq!(size, gs.min(K - g * gs), "group {g}");
        }
        // Static groups keep the original grouping.
        let cfg = GptqConfig {
            static_groups: true,
            ..cfg
        };
        let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
        check_consistent(&res, N, K, 4, groups);
        assert!(res
            .g_idx
            .iter()
            .enumerate()
            .all(|(j, &g)| g as usize == j / gs));
        let rtn = rtn_quantize(&w, N, K, 4, Some(gs), true);
        let ratio = output_error(&x, ROWS, K, &w, &res.dequantized, N)
            / output_error(&x, ROWS, K, &w, &rtn.dequantized, N);
        assert!(ratio < 0.8, "static groups, g={gs}: GPTQ/RTN = {ratio}");
    }
}

#[test]
fn results_do_not_depend_on_block_size_for_per_channel() {
    // Per channel, the lazy batch update is only a regrouping of the same arithmetic, so
    // block sizes agree up to f32 rounding of the propagated updates.
    let (w, x) = layer(17);
    let h = hessian(&x, ROWS, K);
    let a = gptq_quantize(
        &w,
        N,
        K,
        &h,
        &GptqConfig {
            group_size: None,
            block_size: 128,
            ..GptqConfig::default()
        },
    )
    .unwrap();
    let b = gptq_quantize(
        &w,
        N,
        K,
        &h,
        &GptqConfig {
            group_size: None,
            block_size: 5,
            ..GptqConfig::default()
        },
    )
    .unwrap();
    let differ = a.codes.iter().zip(&b.codes).filter(|(p, q)| p != q).count();
    assert!(
        differ * 200 < N * K,
        "{differ} codes differ between block sizes"
    );
    assert!((a.loss - b.loss).abs() < 1e-3 * a.loss);
}

#[test]
fn dead_columns_are_zeroed() {
    let (w, mut x) = layer(19);
    for row in x.chunks_mut(K) {
        row[5] = 0.0;
        row[200] = 0.0;
    }
    let h = hessian(&x, ROWS, K);
    for act in [false, true] {
        let cfg = GptqConfig {
            act_order: act,
            sym: false,
            ..GptqConfig::default()
        };
        let res = gptq_quantize(&w, N, K, &h, &cfg).unwrap();
        check_consistent(&res, N, K, 4, 2);
        for r in 0..N {
            assert_eq!(res.dequantized[r * K + 5], 0.0);
            assert_eq!(res.dequantized[r * K + 200], 0.0);
        }
    }
}

#[test]
fn quantizer_matches_hand_computation() {
    // Asymmetric, 2 bits (maxq 3): xmin −1, xmax 2 → scale 1, zero round(1) = 1.
    // 0.5 / 1 = 0.5 rounds to even (0), like torch.round.
    let w = [-1.0f32, 0.5, 2.0, 0.25];
    let r = rtn_quantize(&w, 1, 4, 2, None, false);
    assert_eq!(r.scales, vec![1.0]);
    assert_eq!(r.zeros, vec![1]);
    assert_eq!(r.codes, vec![0, 1, 3, 1]);
    assert_eq!(r.dequantized, vec![-1.0, 0.0, 2.0, 0.0]);
    assert_eq!(r.g_idx, vec![0; 4]);
    assert!((r.loss - (0.25 + 0.0625)).abs() < 1e-12);

    // Symmetric: xmax = max(|−1|, 2) = 2, xmin = −2 → scale 4/3, zero (3 + 1) / 2 = 2.
    // w / scale = −0.75, 0.375, 1.5, 0.1875 → −1, 0, 2 (half to even), 0 → codes 1, 2, 3 (clamped), 2.
    let r = rtn_quantize(&w, 1, 4, 2, None, true);
    let scale = 4.0f32 / 3.0;
    assert_eq!(r.scales, vec![scale]);
    assert_eq!(r.zeros, vec![2]);
    assert_eq!(r.codes, vec![1, 2, 3, 2]);
    assert_eq!(r.dequantized, vec![-scale, 0.0, scale, 0.0]);

    // Groups of 2, asymmetric 4 bits; a group of non-negative values still includes 0 in its
    // range (scale 0.6/15, zero 0); an all-zero group gets the range [−1, 1]: scale 2/15,
    // zero round(1 / (2/15)) = round(7.4999996) = 7 in f32.
    let w = [0.25f32, 0.6, 0.0, 0.0];
    let r = rtn_quantize(&w, 1, 4, 4, Some(2), false);
    assert_eq!(r.g_idx, vec![0, 0, 1, 1]);
    assert_eq!(r.scales, vec![0.6f32 / 15.0, 2.0 / 15.0]);
    assert_eq!(r.zeros, vec![0, 7]);
    assert_eq!(r.codes, vec![6, 15, 7, 7]);
    assert_eq!(r.dequantized[2..], [0.0, 0.0]);
}

#[test]
fn invalid_inputs_are_errors() {
    let (w, x) = layer(23);
    let h = hessian(&x, ROWS, K);
    let ok = GptqConfig::default();
    assert!(gptq_quantize(&w[1..], N, K, &h, &ok).is_err());
    assert!(gptq_quantize(
        &w,
        N,
        K,
        &h,
        &GptqConfig {
            bits: 5,
            ..ok.clone()
        }
    )
    .is_err());
    assert!(gptq_quantize(
        &w,
        N,
        K,
        &h,
        &GptqConfig {
            group_size: Some(0),
            ..ok.clone()
        }
    )
    .is_err());
    assert!(gptq_quantize(
        &w,
        N,
        K,
        &h,
        &GptqConfig {
            static_groups: true,
            group_size: None,
            ..ok.clone()
        }
    )
    .is_err());
    assert!(gptq_quantize(&w, N, K, &HessianAccumulator::new(K), &ok).is_err());
    assert!(gptq_quantize(&w, N, K, &HessianAccumulator::new(K + 1), &ok).is_err());
    let mut bad = w.clone();
    bad[3] = f32::NAN;
    assert!(gptq_quantize(&bad, N, K, &h, &ok).is_err());
    let mut hb = HessianAccumulator::new(K);
    let mut xb = x[..10 * K].to_vec();
    xb[0] = f32::INFINITY;
    hb.add_batch(&xb, 10);
    assert!(gptq_quantize(&w, N, K, &hb, &ok)
        .unwrap_err()
        .contains("not finite"));
}

#[test]
fn hessian_is_the_running_average() {
    let (_, x) = layer(29);
    let k = 16;
    let rows = 300;
    let x: Vec<f32> = x
        .chunks(K)
        .take(rows)
        .flat_map(|r| r[..k].to_vec())
        .collect();
    let mut h = HessianAccumulator::new(k);
    h.add_batch(&x[..100 * k], 100);
    h.add_batch(&x[100 * k..], rows - 100);
    assert_eq!(h.samples(), rows);
    let hm = h.hessian();
    for i in 0..k {
        for j in 0..k {
            let want: f64 = (0..rows)
                .map(|r| f64::from(x[r * k + i]) * f64::from(x[r * k + j]))
                .sum::<f64>()
                * 2.0
                / rows as f64;
            assert!(
                (hm[i * k + j] - want).abs() < 1e-10 * want.abs().max(1.0),
                "H[{i},{j}]"
            );
        }
    }
}

#[test]
#[ignore = "timing: cargo test --release -p qrt-runtime --test quant_gptq -- --ignored --nocapture"]
fn gptq_timings() {
    for (n, k) in [(576, 576), (576, 1536), (2048, 8192)] {
        let mut rng = Rng::new(k as u64);
        let rows = 256;
        let x: Vec<f32> = (0..rows * k).map(|_| rng.next_normal()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| 0.05 * rng.next_normal()).collect();
        let t = std::time::Instant::now();
        let mut h = HessianAccumulator::new(k);
        h.add_batch(&x, rows);
        let th = t.elapsed();
        let t = std::time::Instant::now();
        let cfg = GptqConfig {
            act_order: true,
            ..GptqConfig::default()
        };
        let res = gptq_quantize(&w, n, k, &h, &cfg).unwrap();
        eprintln!(
            "n={n} k={k}: add_batch({rows} rows) {th:.2?}, gptq_quantize {:.2?} (damp {})",
            t.elapsed(),
            res.damp_percent
        );
    }
}

#[test]
fn uneven_groups_match_a_literal_port_of_the_reference() {
    // The last group is shorter: its parameters come from W[:, i:i+groupsize] clipped at k,
    // and with act_order it is the last group in permuted order.
    for (k, gs) in UNEVEN {
        let (w, x) = layer_k(37, k);
        let h = hessian(&x, ROWS, k);
        for act in [false, true] {
            let cfg = GptqConfig {
                bits: 4,
                group_size: Some(gs),
                sym: false,
                act_order: act,
                ..GptqConfig::default()
            };
            let res = gptq_quantize(&w, N, k, &h, &cfg).unwrap();
            let (want, want_scales) = reference_fasterquant(&w, N, k, &h, 4, gs, act);
            assert_eq!(want_scales.len(), k.div_ceil(gs));
            assert_eq!(res.scales.len(), k.div_ceil(gs) * N);
            let label = format!("k={k} g={gs} act_order={act}");
            assert_matches_reference(&res, &want, &want_scales, k, &label);
        }
    }
}

#[test]
fn uneven_groups_gptq_beats_round_to_nearest() {
    for (k, gs) in UNEVEN {
        let (w, x) = layer_k(41, k);
        let h = hessian(&x, ROWS, k);
        let perm = act_order(&h);
        assert_ne!(
            perm,
            (0..k).collect::<Vec<_>>(),
            "the test needs a nontrivial order"
        );
        let groups = k.div_ceil(gs);
        let sizes = want_sizes(k, gs);
        assert_eq!(sizes.last(), Some(&(k % gs)));
        for bits in [4, 3] {
            for sym in [false, true] {
                let rtn = rtn_quantize(&w, N, k, bits, Some(gs), sym);
                check_consistent(&rtn, N, k, bits, groups);
                assert!(rtn
                    .g_idx
                    .iter()
                    .enumerate()
                    .all(|(j, &g)| g as usize == j / gs));
                assert_eq!(group_sizes(&rtn.g_idx, groups), sizes);
                let rtn_err = output_error(&x, ROWS, k, &w, &rtn.dequantized, N);
                for (act, stat) in [(false, false), (true, false), (false, true), (true, true)] {
                    let cfg = GptqConfig {
                        bits,
                        group_size: Some(gs),
                        sym,
                        act_order: act,
                        static_groups: stat,
                        ..GptqConfig::default()
                    };
                    let what =
                        format!("k={k} g={gs} {bits}-bit sym={sym} act_order={act} static={stat}");
                    let res = gptq_quantize(&w, N, k, &h, &cfg).unwrap();
                    check_consistent(&res, N, k, bits, groups);
                    assert_eq!(group_sizes(&res.g_idx, groups), sizes, "{what}");
                    if act && !stat {
                        for (pos, &j) in perm.iter().enumerate() {
                            assert_eq!(res.g_idx[j] as usize, pos / gs, "{what}: column {j}");
                        }
                        // The short group is the last gs-or-fewer columns in permuted order.
                        let last: Vec<usize> = perm[(groups - 1) * gs..].to_vec();
                        assert!(last.iter().all(|&j| res.g_idx[j] as usize == groups - 1));
                    } else {
                        assert!(
                            res.g_idx
                                .iter()
                                .enumerate()
                                .all(|(j, &g)| g as usize == j / gs),
                            "{what}: g_idx"
                        );
                    }
                    if stat {
                        // Static groups come from the unmodified weights: RTN's parameters.
                        assert_eq!(res.scales, rtn.scales, "{what}: static scales");
                        assert_eq!(res.zeros, rtn.zeros, "{what}: static zeros");
                    }
                    let ratio = output_error(&x, ROWS, k, &w, &res.dequantized, N) / rtn_err;
                    eprintln!("{what}: GPTQ/RTN = {ratio:.3}");
                    assert!(ratio < 0.8, "{what}: ratio {ratio}");
                }
            }
        }
    }
}

#[test]
fn uneven_last_group_parameters_cover_only_its_columns() {
    // RTN by hand: the short last group's range is its own columns', not a full group's.
    let (k, gs, n) = (200, 64, 3);
    let mut rng = Rng::new(43);
    let mut w: Vec<f32> = (0..n * k).map(|_| 0.05 * rng.next_normal()).collect();
    // A large value just before the last group must not leak into it.
    for r in 0..n {
        w[r * k + 191] = 5.0;
    }
    for sym in [false, true] {
        let res = rtn_quantize(&w, n, k, 4, Some(gs), sym);
        check_consistent(&res, n, k, 4, 4);
        for r in 0..n {
            for g in 0..4 {
                let cols = &w[r * k + g * gs..r * k + ((g + 1) * gs).min(k)];
                let lo = cols.iter().fold(0f32, |m, &v| m.min(v));
                let hi = cols.iter().fold(0f32, |m, &v| m.max(v));
                let want = if sym {
                    2.0 * hi.max(-lo) / 15.0
                } else {
                    (hi - lo) / 15.0
                };
                assert_eq!(res.scales[g * n + r], want, "sym={sym} row {r} group {g}");
            }
            assert!(
                res.scales[3 * n + r] < 0.1,
                "the outlier leaked into the last group"
            );
        }
    }
}
