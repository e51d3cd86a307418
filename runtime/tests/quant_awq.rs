//! AWQ's quantizer, scale search, clip search and scale folding.

mod quant_common;

use qrt_runtime::quant::{
    activation_scale, apply_clip, awq_quantize, fold_scale_into_linear_rows, fold_scale_into_norm,
    pseudo_quantize, scale_weight_columns, search_clip, search_scales_linear, search_scales_with,
    AwqConfig,
};
use quant_common::output_error;

use qrt_runtime::sampling::Rng;

/// `y [rows, n] = x [rows, k] · w [n, k]ᵀ` in f64.
fn linear(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            y[r * n + o] = (0..k)
                .map(|j| f64::from(x[r * k + j]) * f64::from(w[o * k + j]))
                .sum();
        }
    }
    y
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale
}

/// Calibration inputs with a few channels of 10× magnitude.
const SALIENT: [usize; 4] = [3, 50, 130, 200];

fn salient_inputs(rows: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = rng.normals(rows * k, 1.0);
    for row in x.chunks_mut(k) {
        for &c in SALIENT.iter().filter(|&&c| c < k) {
            row[c] *= 10.0;
        }
    }
    x
}

#[test]
fn quantizer_matches_hand_computation() {
    // max 2, min −1 → scale (2 − (−1)) / 3 = 1, zero −round(−1) = 1; 0.5 rounds to even (0).
    let w = [-1.0f32, 0.5, 2.0, 0.25];
    assert_eq!(pseudo_quantize(&w, 1, 4, 2, 4), vec![-1.0, 0.0, 2.0, 0.0]);
    let (codes, scales, zeros) = awq_quantize(&w, 1, 4, 2, 4);
    assert_eq!(
        (codes, scales, zeros),
        (vec![0, 1, 3, 1], vec![1.0], vec![1])
    );
    // An all-positive group: zero clamps to 0, so the top of the range saturates (llm-awq).
    let w = [1.0f32, 2.0, 3.0, 4.0];
    assert_eq!(pseudo_quantize(&w, 1, 4, 2, 4), vec![1.0, 2.0, 3.0, 3.0]);
    // A constant group: range clamped to 1e-5.
    let w = [0.0f32; 4];
    let (codes, scales, zeros) = awq_quantize(&w, 1, 4, 4, 4);
    assert_eq!(scales, vec![1e-5f32 / 15.0]);
    assert_eq!(zeros, vec![0]);
    assert_eq!(codes, vec![0; 4]);
}

/// Widths that are not multiples of the group size: SmolLM2-135M's hidden size 576 with the
/// presets' 128 (4 groups of 128 and one of 64), and 200 with 64 (3 of 64 and one of 8).
const UNEVEN: [(usize, usize); 2] = [(576, 128), (200, 64)];

/// The columns of group `g`: `g·gs .. min((g + 1)·gs, k)`.
fn cols(g: usize, gs: usize, k: usize) -> std::ops::Range<usize> {
    g * gs..((g + 1) * gs).min(k)
}

#[test]
fn pseudo_quantize_error_is_bounded_and_matches_the_codes() {
    for (n, k, gs) in [(32, 512, 128), (32, 576, 128), (16, 200, 64)] {
        check_pseudo_quantize(n, k, gs);
    }
}

/// Per element, `|w − ŵ| ≤` half a step of its own group (the short last group included),
/// the scale is the group's own `(max − min) / maxq`, and `awq_quantize` reproduces
/// `pseudo_quantize` bit for bit.
fn check_pseudo_quantize(n: usize, k: usize, gs: usize) {
    let mut rng = Rng::new(1 + k as u64);
    let mut w = rng.normals(n * k, 0.02);
    // Each row's last group gets a much narrower range than the rest of its row, so a step
    // taken from the wrong columns would break the bound.
    let last = k.div_ceil(gs) - 1;
    for r in 0..n {
        w[r * k + last * gs - 1] = 1.0;
        for v in &mut w[r * k + last * gs..(r + 1) * k] {
            *v *= 0.1;
        }
    }
    for bits in [3, 4, 8] {
        let maxq = ((1u32 << bits) - 1) as f32;
        let q = pseudo_quantize(&w, n, k, bits, gs);
        let (codes, scales, zeros) = awq_quantize(&w, n, k, bits, gs);
        let groups = k.div_ceil(gs);
        assert_eq!(
            (scales.len(), zeros.len(), codes.len()),
            (groups * n, groups * n, n * k)
        );
        for r in 0..n {
            for g in 0..groups {
                let wg = &w[r * k + cols(g, gs, k).start..r * k + cols(g, gs, k).end];
                let lo = wg.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let hi = wg.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                assert!(lo < 0.0 && hi > 0.0);
                let step = (hi - lo) / maxq;
                let (s, z) = (scales[g * n + r], zeros[g * n + r]);
                assert_eq!(s, (hi - lo) / maxq, "k={k} g={gs} row {r} group {g}");
                for j in cols(g, gs, k) {
                    let e = (w[r * k + j] - q[r * k + j]).abs();
                    assert!(
                        e <= 0.5 * step * (1.0 + 1e-4),
                        "k={k} g={gs} {bits} bits, group {g}: error {e} > half step {}",
                        step / 2.0
                    );
                    let c = codes[r * k + j];
                    assert!(f32::from(c) <= maxq);
                    let deq = (f32::from(c) - f32::from(z)) * s;
                    assert_eq!(deq.to_bits(), q[r * k + j].to_bits());
                }
            }
        }
    }
}

#[test]
fn activation_scale_is_the_mean_magnitude() {
    let x = [1.0f32, -2.0, -3.0, 4.0, 0.5, 0.0];
    assert_eq!(activation_scale(&x, 3, 2), vec![1.5, 2.0]);
}

#[test]
fn scale_search_visits_the_grid_and_keeps_the_best() {
    let x_mean = [0.5f32, 1.0, 4.0, 8.0];
    let mut seen = Vec::new();
    let losses = [5.0, 4.0, f64::NAN, 2.0, 3.0];
    let (s, loss, alpha) = search_scales_with(4, &x_mean, 5, &mut |s: &[f32]| {
        seen.push(s.to_vec());
        losses[seen.len() - 1]
    });
    assert_eq!(seen.len(), 5);
    assert!(seen[0].iter().all(|&v| v == 1.0), "alpha 0 is the identity");
    for s in &seen {
        let (lo, hi) = s
            .iter()
            .fold((f32::INFINITY, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(
            ((lo * hi).sqrt() - 1.0).abs() < 1e-5,
            "scales not normalized"
        );
    }
    assert_eq!((loss, alpha), (2.0, 0.6));
    assert_eq!(s, seen[3]);
    let want: Vec<f32> = x_mean
        .iter()
        .map(|m| m.powf(0.6) / (0.5f32.powf(0.6) * 8f32.powf(0.6)).sqrt())
        .collect();
    for (a, b) in s.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5 * b);
    }
}

#[test]
fn scale_search_protects_salient_channels() {
    let (rows, k) = (512, 256);
    let mut rng = Rng::new(2);
    let x = salient_inputs(rows, k, &mut rng);
    let (nq, nv) = (64, 32);
    let wq = rng.normals(nq * k, 0.02);
    let wv = rng.normals(nv * k, 0.02);
    let cfg = AwqConfig::default();
    let (s, alpha) = search_scales_linear(&[(&wq, nq), (&wv, nv)], &x, rows, k, &cfg);
    assert!(alpha > 0.0, "alpha {alpha}");
    assert_eq!(s.len(), k);
    let salient_min = SALIENT.iter().map(|&c| s[c]).fold(f32::INFINITY, f32::min);
    let other_max = (0..k)
        .filter(|c| !SALIENT.contains(c))
        .map(|c| s[c])
        .fold(0f32, f32::max);
    assert!(
        salient_min > other_max,
        "salient channels are not scaled up most"
    );
    let mut plain = 0.0;
    let mut scaled = 0.0;
    for (w, n) in [(&wq, nq), (&wv, nv)] {
        plain += output_error(&x, rows, k, &pseudo_quantize(w, n, k, 4, 128), w, n);
        let mut ws = w.clone();
        scale_weight_columns(&mut ws, n, k, &s);
        let q = pseudo_quantize(&ws, n, k, 4, 128);
        let back: Vec<f32> = q
            .chunks(k)
            .flat_map(|row| row.iter().zip(&s).map(|(q, s)| q / s).collect::<Vec<_>>())
            .collect();
        scaled += output_error(&x, rows, k, &back, w, n);
    }
    eprintln!(
        "alpha {alpha}: output error {scaled:.4e} with scales vs {plain:.4e} without ({:.3})",
        scaled / plain
    );
    assert!(
        scaled < 0.9 * plain,
        "AWQ scaling did not lower the error: {scaled} vs {plain}"
    );
}

#[test]
fn clip_search_never_increases_the_error() {
    for (k, gs) in [(256, 128), UNEVEN[0], UNEVEN[1]] {
        check_clip_search(k, gs);
    }
}

fn check_clip_search(k: usize, gs: usize) {
    let (n, rows) = (48, 1000);
    let cfg = AwqConfig {
        clip_samples: 256,
        group_size: gs,
        ..AwqConfig::default()
    };
    let mut rng = Rng::new(3 + k as u64);
    let x = salient_inputs(rows, k, &mut rng);
    let mut w = rng.normals(n * k, 0.02);
    // Outliers make clipping worthwhile for some groups, the short last one included.
    for r in (0..n).step_by(3) {
        w[r * k + (r * 7) % k] = 0.3;
        w[r * k + k - 1 - r % (k - (k - 1) / gs * gs)] = 0.3;
    }
    let clip = search_clip(&w, n, k, &x, rows, &cfg);
    let groups = k.div_ceil(cfg.group_size);
    assert_eq!(clip.len(), n * groups);
    let mut clipped = w.clone();
    apply_clip(&mut clipped, n, k, cfg.group_size, &clip);
    let q_clip = pseudo_quantize(&clipped, n, k, 4, cfg.group_size);
    let q_plain = pseudo_quantize(&w, n, k, 4, cfg.group_size);
    // The rows the search samples: every rows / clip_samples-th.
    let sampled: Vec<f32> = x
        .chunks(k)
        .step_by(rows / cfg.clip_samples)
        .flatten()
        .copied()
        .collect();
    let s_rows = sampled.len() / k;
    let mut shrunk = 0;
    let mut shrunk_last = 0;
    for r in 0..n {
        for g in 0..groups {
            let c0 = cols(g, gs, k);
            let wg = &w[r * k + c0.start..r * k + c0.end];
            let org_max = wg.iter().fold(0f32, |m, v| m.max(v.abs()));
            let c = clip[r * groups + g];
            assert!(
                c <= org_max && c >= 0.5 * org_max * (1.0 - 1e-6),
                "clip {c} vs max {org_max}"
            );
            if c < org_max {
                shrunk += 1;
                shrunk_last += usize::from(g == groups - 1);
            }
            // apply_clip clamps exactly this group's columns to ±c.
            for (j, &v) in clipped[r * k + c0.start..r * k + c0.end].iter().enumerate() {
                assert_eq!(v, wg[j].clamp(-c, c), "row {r} group {g} column {j}");
            }
            let err = |q: &[f32]| -> f64 {
                (0..s_rows)
                    .map(|t| {
                        let xt = &sampled[t * k + c0.start..t * k + c0.end];
                        let v: f64 = xt
                            .iter()
                            .zip(&q[r * k + c0.start..r * k + c0.end])
                            .zip(wg)
                            .map(|((x, q), w)| f64::from(*x) * (f64::from(*q) - f64::from(*w)))
                            .sum();
                        v * v
                    })
                    .sum::<f64>()
            };
            let (with, without) = (err(&q_clip), err(&q_plain));
            assert!(
                with <= without * (1.0 + 1e-4),
                "k={k} g={gs} row {r} group {g}: {with} > {without}"
            );
        }
    }
    assert!(shrunk > 0, "no group was clipped");
    assert!(shrunk_last > 0, "no last group was clipped");
    let total_clip = output_error(&x, rows, k, &q_clip, &w, n);
    let total_plain = output_error(&x, rows, k, &q_plain, &w, n);
    eprintln!(
        "k={k} g={gs}: {shrunk} of {} groups clipped ({shrunk_last} last); output error \
         {total_clip:.4e} vs {total_plain:.4e}",
        n * groups
    );
    assert!(total_clip <= total_plain);
}

#[test]
fn folding_leaves_outputs_unchanged() {
    let (rows, k, n, inter) = (8, 64, 24, 96);
    let mut rng = Rng::new(4);
    let x = rng.normals(rows * k, 1.0);
    let s: Vec<f32> = (0..k).map(|_| (0.5 * rng.next_normal()).exp()).collect();

    // Column scaling against divided inputs: (W · s)(x / s) = W x.
    let w = rng.normals(n * k, 0.1);
    let mut ws = w.clone();
    scale_weight_columns(&mut ws, n, k, &s);
    let xs: Vec<f32> = x
        .chunks(k)
        .flat_map(|r| r.iter().zip(&s).map(|(x, s)| x / s).collect::<Vec<_>>())
        .collect();
    assert!(max_rel_diff(&linear(&xs, rows, k, &ws, n), &linear(&x, rows, k, &w, n)) < 1e-5);

    // Norm folding: RMSNorm(x) · (g / s) feeding W · s.
    let g: Vec<f32> = (0..k).map(|_| 1.0 + 0.1 * rng.next_normal()).collect();
    let norm = |x: &[f32], g: &[f32]| -> Vec<f32> {
        x.chunks(k)
            .flat_map(|r| {
                let rms = (r.iter().map(|v| v * v).sum::<f32>() / k as f32 + 1e-6).sqrt();
                r.iter()
                    .zip(g)
                    .map(move |(v, g)| v / rms * g)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut gf = g.clone();
    fold_scale_into_norm(&mut gf, &s);
    let before = linear(&norm(&x, &g), rows, k, &w, n);
    let after = linear(&norm(&x, &gf), rows, k, &ws, n);
    assert!(max_rel_diff(&after, &before) < 1e-5);

    // Row folding through the MLP: down(silu(gate x) ⊙ (up x)) with up's rows divided by s2
    // and down's columns multiplied by s2.
    let s2: Vec<f32> = (0..inter)
        .map(|_| (0.5 * rng.next_normal()).exp())
        .collect();
    let gate = rng.normals(inter * k, 0.1);
    let up = rng.normals(inter * k, 0.1);
    let down = rng.normals(n * inter, 0.1);
    let mlp = |up: &[f32], down: &[f32]| -> Vec<f64> {
        let gx = linear(&x, rows, k, &gate, inter);
        let ux = linear(&x, rows, k, up, inter);
        let h: Vec<f32> = gx
            .iter()
            .zip(&ux)
            .map(|(g, u)| (g / (1.0 + (-g).exp()) * u) as f32)
            .collect();
        linear(&h, rows, inter, down, n)
    };
    let mut up_f = up.clone();
    fold_scale_into_linear_rows(&mut up_f, inter, k, &s2);
    let mut down_s = down.clone();
    scale_weight_columns(&mut down_s, n, inter, &s2);
    assert!(max_rel_diff(&mlp(&up_f, &down_s), &mlp(&up, &down)) < 1e-5);
}

#[test]
fn uneven_groups_by_hand() {
    // k = 5, groups of 2: columns {0, 1}, {2, 3}, {4}. The single-column group is constant:
    // range max(0, 1e-5) / maxq and, being positive, zero clamped to 0, so it saturates at
    // maxq steps like llm-awq's constant positive groups.
    let w = [-1.0f32, 2.0, 0.0, 3.0, 0.7, 4.0, 4.0, 1.0, -2.0, -0.3];
    let q = pseudo_quantize(&w, 2, 5, 2, 2);
    let (codes, scales, zeros) = awq_quantize(&w, 2, 5, 2, 2);
    assert_eq!((scales.len(), zeros.len()), (6, 6));
    // Row 0: group 0 scale 1 zero 1; group 1 scale 1 zero 0; group 2 (0.7 alone).
    assert_eq!(&q[..4], &[-1.0, 2.0, 0.0, 3.0]);
    assert_eq!(scales[0], 1.0);
    assert_eq!(scales[2], 1.0);
    assert_eq!(scales[4], 1e-5f32 / 3.0);
    assert_eq!((codes[4], zeros[4]), (3, 0));
    assert_eq!(q[4], 3.0 * scales[4]);
    // Row 1: [4, 4] constant (scale 1e-5/3, zero 0 → saturates at 3 steps), [1, −2]
    // scale 1 zero 2, [−0.3] alone.
    assert_eq!((scales[1], zeros[1]), (1e-5f32 / 3.0, 0));
    assert_eq!((scales[3], zeros[3]), (1.0, 2));
    assert_eq!(&codes[5..9], &[3, 3, 3, 0]);
    assert_eq!(&q[7..9], &[1.0, -2.0]);
    for (i, &c) in codes.iter().enumerate() {
        let (r, g) = (i / 5, (i % 5) / 2);
        let deq = (f32::from(c) - f32::from(zeros[g * 2 + r])) * scales[g * 2 + r];
        assert_eq!(deq.to_bits(), q[i].to_bits(), "element {i}");
    }

    // apply_clip: [n, 3] thresholds, the last one for column 4 alone.
    let mut c = w;
    apply_clip(&mut c, 2, 5, 2, &[1.5, 10.0, 0.5, 3.0, 1.0, 0.1]);
    assert_eq!(c, [-1.0, 1.5, 0.0, 3.0, 0.5, 3.0, 3.0, 1.0, -1.0, -0.1]);
}

#[test]
#[should_panic(expected = "one clip value per row and group expected")]
fn apply_clip_wants_ceil_groups() {
    // 5 columns in groups of 2 are 3 groups, not 2.
    let mut w = [0f32; 10];
    apply_clip(&mut w, 2, 5, 2, &[1.0; 4]);
}

#[test]
fn scale_search_on_uneven_groups() {
    let rows = 512;
    for (k, gs) in UNEVEN {
        let mut rng = Rng::new(5 + k as u64);
        let x = salient_inputs(rows, k, &mut rng);
        let n = 48;
        let w = rng.normals(n * k, 0.02);
        let cfg = AwqConfig {
            group_size: gs,
            ..AwqConfig::default()
        };
        let (s, alpha) = search_scales_linear(&[(&w, n)], &x, rows, k, &cfg);
        assert_eq!(s.len(), k);
        let plain = output_error(&x, rows, k, &pseudo_quantize(&w, n, k, 4, gs), &w, n);
        let mut ws = w.clone();
        scale_weight_columns(&mut ws, n, k, &s);
        let q = pseudo_quantize(&ws, n, k, 4, gs);
        let back: Vec<f32> = q
            .chunks(k)
            .flat_map(|row| row.iter().zip(&s).map(|(q, s)| q / s).collect::<Vec<_>>())
            .collect();
        let scaled = output_error(&x, rows, k, &back, &w, n);
        eprintln!(
            "k={k} g={gs}: alpha {alpha}, error {:.3} of unscaled",
            scaled / plain
        );
        assert!(alpha > 0.0, "k={k} g={gs}: alpha {alpha}");
        assert!(scaled < 0.9 * plain, "k={k} g={gs}: {scaled} vs {plain}");
    }
}
