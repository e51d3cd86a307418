//! Codec tests of the quantized storage types: packing layouts, round trips of integer
//! codes, quantization error bounds, the bitsandbytes code rules and dynamic map, and
//! the row decoders (`decode_rows`, views over part bytes).

mod quant_common;

use half::f16;
use qrt_format::quant::awq::{self, AwqTensor};
use qrt_format::quant::bnb4::{
    quantize_4bit, Bnb4Absmax, Bnb4Kind, Bnb4Params, Bnb4Tensor, Bnb4View, DoubleQuantAbsmax,
};
use qrt_format::quant::dynamic_map::{
    create_dynamic_map, dequantize_blockwise, quantize_blockwise, quantize_value,
};
use qrt_format::quant::gptq::{self, GptqTensor};
use qrt_format::quant::int8::{Int8Params, Int8Tensor};
use qrt_format::quant::{quantized_view, FloatDtype, QuantizedMatrix, QuantizedParts};
use quant_common::{rel_rms, Rng};

// ---------------------------------------------------------------- packing layouts

#[test]
fn gptq_packing_round_trips_every_width() {
    let mut rng = Rng::new(1);
    for bits in [2u32, 3, 4, 8] {
        let max = (1 << bits) - 1;
        let (rows, cols) = (96, 40);
        let v = rng.codes(rows * cols, max);
        let words = gptq::pack_along_rows(&v, rows, cols, bits);
        assert_eq!(words.len(), rows * bits as usize / 32 * cols);
        assert_eq!(
            gptq::unpack_along_rows(&words, rows, cols, bits),
            v,
            "{bits} bits, rows"
        );
        let (rows, cols) = (5, 64);
        let v = rng.codes(rows * cols, max);
        let words = gptq::pack_along_cols(&v, rows, cols, bits);
        assert_eq!(words.len(), rows * cols * bits as usize / 32);
        assert_eq!(
            gptq::unpack_along_cols(&words, rows, cols, bits),
            v,
            "{bits} bits, cols"
        );
    }
}

/// AutoGPTQ's `QuantLinear.pack` loop for one column of 32 values, written out word by
/// word (for 3 bits: 10 values, a split value, 10, a split value, 10).
fn autogptq_pack_32(v: &[u32], bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; bits as usize];
    if bits == 3 {
        let mut i = 0;
        for j in 0..10 {
            out[0] |= v[i + j] << (3 * j);
        }
        i += 10;
        out[0] |= v[i] << 30;
        out[1] |= (v[i] >> 2) & 1;
        i += 1;
        for j in 0..10 {
            out[1] |= v[i + j] << (3 * j + 1);
        }
        i += 10;
        out[1] |= v[i] << 31;
        out[2] |= (v[i] >> 1) & 3;
        i += 1;
        for j in 0..10 {
            out[2] |= v[i + j] << (3 * j + 2);
        }
    } else {
        let per = (32 / bits) as usize;
        for (w, word) in out.iter_mut().enumerate() {
            for j in 0..per {
                *word |= v[w * per + j] << (bits as usize * j);
            }
        }
    }
    out
}

#[test]
fn gptq_packing_matches_autogptq_layout() {
    let mut rng = Rng::new(2);
    for bits in [2u32, 3, 4, 8] {
        let cols = 7;
        let codes = rng.codes(64 * cols, (1 << bits) - 1);
        let words = gptq::pack_along_rows(&codes, 64, cols, bits);
        for c in 0..cols {
            for half in 0..2 {
                let column: Vec<u32> = (0..32)
                    .map(|j| u32::from(codes[(half * 32 + j) * cols + c]))
                    .collect();
                let expected = autogptq_pack_32(&column, bits);
                for (w, e) in expected.iter().enumerate() {
                    let row = half * bits as usize + w;
                    assert_eq!(
                        words[row * cols + c] as u32,
                        *e,
                        "{bits} bits, column {c}, word {row}"
                    );
                }
            }
        }
        // qzeros: the same stream along the other dimension.
        let zeros = rng.codes(2 * 32, (1 << bits) - 1);
        let zwords = gptq::pack_along_cols(&zeros, 2, 32, bits);
        for g in 0..2 {
            let row: Vec<u32> = zeros[g * 32..(g + 1) * 32]
                .iter()
                .map(|&z| u32::from(z))
                .collect();
            let got: Vec<u32> = zwords[g * bits as usize..(g + 1) * bits as usize]
                .iter()
                .map(|&w| w as u32)
                .collect();
            assert_eq!(
                got,
                autogptq_pack_32(&row, bits),
                "{bits}-bit qzeros row {g}"
            );
        }
    }
    // 4 bits: input j of the word in bits 4(j % 8); values 1..8 read 0x87654321.
    let codes: Vec<u8> = (1..=8).collect();
    assert_eq!(
        gptq::pack_along_rows(&codes, 8, 1, 4),
        vec![0x8765_4321u32 as i32]
    );
}

#[test]
fn awq_packing_follows_the_autoawq_interleave() {
    // Outputs 0..8 with codes 1..8: nibble i holds output [0, 2, 4, 6, 1, 3, 5, 7][i].
    let codes: Vec<u8> = (1..=8).collect();
    let words = awq::pack(&codes, 1, 8);
    assert_eq!(words, vec![0x8642_7531u32 as i32]);
    assert_eq!(awq::unpack(&words), codes);
    let mut rng = Rng::new(3);
    let v = rng.codes(6 * 32, 15);
    assert_eq!(awq::unpack(&awq::pack(&v, 6, 32)), v);
}

// ---------------------------------------------------------------- GPTQ

/// `g_idx` for `k` inputs in groups of `gs`, through a random act-order permutation.
fn act_order_g_idx(rng: &mut Rng, k: usize, gs: usize) -> Vec<i32> {
    let perm = rng.permutation(k);
    let mut g_idx = vec![0i32; k];
    for (i, &p) in perm.iter().enumerate() {
        g_idx[p] = (i / gs) as i32;
    }
    g_idx
}

#[test]
fn gptq_codes_round_trip_and_decode_by_the_formula() {
    let mut rng = Rng::new(4);
    let (n, k, gs) = (64usize, 128usize, 32usize);
    for bits in [2u32, 3, 4, 8] {
        for act_order in [false, true] {
            let maxq = (1u32 << bits) - 1;
            let groups = k / gs;
            let codes = rng.codes(n * k, maxq);
            let mut zeros = rng.codes(groups * n, maxq);
            zeros[0] = 0; // stored as 2^bits - 1
            zeros[1] = maxq as u8;
            let scales: Vec<f32> = (0..groups * n)
                .map(|_| 0.001 + rng.uniform() as f32 * 0.05)
                .collect();
            let g_idx = if act_order {
                act_order_g_idx(&mut rng, k, gs)
            } else {
                (0..k).map(|j| (j / gs) as i32).collect()
            };
            let t = GptqTensor::from_codes(
                &codes, &scales, &zeros, &g_idx, bits, gs as i32, false, act_order,
            )
            .expect("from_codes");
            assert_eq!((t.n, t.k, t.n_groups()), (n, k, groups));
            assert_eq!(t.codes(), codes, "{bits} bits");
            assert_eq!(t.zeros(), zeros, "{bits} bits");
            let w = t.view().dequantize();
            for r in 0..n {
                for j in 0..k {
                    let g = g_idx[j] as usize;
                    let s = f16::from_f32(scales[g * n + r]).to_f32();
                    let e = s * (f32::from(codes[r * k + j]) - f32::from(zeros[g * n + r]));
                    assert_eq!(
                        w[r * k + j].to_bits(),
                        e.to_bits(),
                        "{bits} bits, ({r}, {j})"
                    );
                }
            }
        }
    }
}

#[test]
fn gptq_stores_zero_minus_one() {
    // zero 8 (symmetric 4-bit) is stored as 7 in every nibble; zero 0 as 15.
    let (n, k) = (8usize, 8usize);
    let codes = vec![8u8; n * k];
    let g_idx = vec![0i32; k];
    let t = GptqTensor::from_codes(&codes, &[1.0; 8], &[8; 8], &g_idx, 4, -1, true, false).unwrap();
    assert_eq!(t.qzeros, vec![0x7777_7777]);
    assert_eq!(t.qweight, vec![0x8888_8888u32 as i32; 8]);
    assert!(t.view().dequantize().iter().all(|&v| v == 0.0));
    let t =
        GptqTensor::from_codes(&codes, &[1.0; 8], &[0; 8], &g_idx, 4, -1, false, false).unwrap();
    assert_eq!(t.qzeros, vec![-1]);
    assert!(t.view().dequantize().iter().all(|&v| v == 8.0));
}

#[test]
fn gptq_from_codes_refuses_inconsistent_input() {
    let g_idx: Vec<i32> = (0..64).map(|j| j / 32).collect();
    let ok = |codes: &[u8], zeros: &[u8], g: &[i32], bits, gs, sym, act| {
        GptqTensor::from_codes(codes, &[1.0; 64], zeros, g, bits, gs, sym, act)
    };
    let codes = vec![1u8; 32 * 64];
    assert!(ok(&codes, &[1; 64], &g_idx, 4, 32, false, false).is_ok());
    let e = ok(&codes, &[1; 64], &g_idx, 5, 32, false, false).unwrap_err();
    assert!(e.contains("bits is 5"), "{e}");
    let e = ok(&[16u8; 32 * 64], &[1; 64], &g_idx, 4, 32, false, false).unwrap_err();
    assert!(e.contains("code 16"), "{e}");
    let e = ok(&codes, &[1; 64], &g_idx, 4, 32, true, false).unwrap_err();
    assert!(e.contains("symmetric"), "{e}");
    let mut bad = g_idx.clone();
    bad[3] = 1;
    let e = ok(&codes, &[1; 64], &bad, 4, 32, false, false).unwrap_err();
    assert!(e.contains("without act_order"), "{e}");
    bad[3] = 2;
    let e = ok(&codes, &[1; 64], &bad, 4, 32, false, true).unwrap_err();
    assert!(e.contains("g_idx[3] = 2"), "{e}");
    let e = GptqTensor::from_codes(&codes, &[1.0; 64], &[1; 64], &g_idx, 4, 24, false, false)
        .unwrap_err();
    assert!(e.contains("scales") || e.contains("does not divide"), "{e}");
}

#[test]
fn rtn_4bit_g128_error_is_at_most_half_a_step() {
    let mut rng = Rng::new(5);
    let (n, k) = (64usize, 512usize);
    let w = rng.normals(n * k, 0.02);
    for sym in [false, true] {
        let t = gptq::rtn_quantize(&w, n, k, 4, 128, sym).expect("rtn");
        assert!(!t.params.act_order);
        let deq = t.view().dequantize();
        let codes = t.codes();
        let mut worst_inner = 0f32;
        for r in 0..n {
            for j in 0..k {
                let s = t.scales[(j / 128) * n + r].to_f32();
                let err = (w[r * k + j] - deq[r * k + j]).abs();
                // Rounding to the stored (f16) scale can move the ends of the grid by
                // up to 15 × 2^-12 of a step.
                assert!(
                    err <= s * (0.5 + 16.0 / 4096.0),
                    "sym {sym} ({r}, {j}): {err} > {s}/2"
                );
                let q = codes[r * k + j];
                if q > 0 && q < 15 {
                    worst_inner = worst_inner.max(err / s);
                }
            }
        }
        assert!(worst_inner <= 0.5 + 1e-4, "sym {sym}: {worst_inner}");
        assert!(rel_rms(&w, &deq) < 0.15, "sym {sym}: {}", rel_rms(&w, &deq));
    }
    // Per channel (-1) and 3 bits also quantize and decode.
    let t = gptq::rtn_quantize(&w, n, k, 3, -1, false).unwrap();
    assert_eq!(t.n_groups(), 1);
    assert!(rel_rms(&w, &t.view().dequantize()) < 0.5);
}

#[test]
fn rtn_scale_and_zero_follow_autogptq_find_params() {
    // One row of 8: min -1, max 2 → scale 3/15 = 0.2, zero round(1/0.2) = 5.
    let w = [-1.0f32, 0.5, 2.0, 0.0, 0.1, -0.3, 1.0, 1.5];
    let e = gptq::rtn_quantize(&w, 8, 1, 4, -1, false).unwrap_err();
    assert!(e.contains("k must be a multiple of 8"), "{e}");
    let rows: Vec<f32> = w.iter().cycle().take(8 * 8).copied().collect();
    let t = gptq::rtn_quantize(&rows, 8, 8, 4, -1, false).unwrap();
    assert_eq!(t.zeros(), vec![5; 8]);
    assert_eq!(t.scales[0], f16::from_f32(0.2));
    // Symmetric: xmax = max(|-1|, 2) = 2, xmin = -2 → scale 4/15, zero 8.
    let t = gptq::rtn_quantize(&rows, 8, 8, 4, -1, true).unwrap();
    assert_eq!(t.zeros(), vec![8; 8]);
    assert_eq!(t.scales[0], f16::from_f32(4.0 / 15.0));
    // All non-negative: xmin clamps to 0, so the zero point is 0.
    let pos: Vec<f32> = rows.iter().map(|v| v.abs()).collect();
    let t = gptq::rtn_quantize(&pos, 8, 8, 4, -1, false).unwrap();
    assert_eq!(t.zeros(), vec![0; 8]);
    // All zero: the range [-1, 1] is used.
    let t = gptq::rtn_quantize(&[0.0; 64], 8, 8, 4, -1, false).unwrap();
    assert_eq!(t.scales[0], f16::from_f32(2.0 / 15.0));
    assert!(t.view().dequantize().iter().all(|&v| v == 0.0));
}

/// `gemv_rows` of a codec with whole-word rows (multiples of 8) against an f64 product with
/// its decoded matrix, over the whole matrix and pieces inside it; and its refusals of rows
/// not in whole words, which leave `out` untouched.
fn check_direct_product(view: &dyn QuantizedMatrix, x: &[f32], what: &str) {
    let (n, k) = (view.rows(), view.cols());
    assert_eq!(view.gemv_row_multiple(), 8);
    let d = view.dequantize();
    let want: Vec<f64> = (0..n)
        .map(|r| {
            (0..k)
                .map(|j| f64::from(d[r * k + j]) * f64::from(x[j]))
                .sum()
        })
        .collect();
    for (start, count) in [(0, n), (8, n - 8), (n - 8, 8)] {
        if count == 0 {
            continue;
        }
        let mut out = vec![f32::NAN; count];
        assert!(
            view.gemv_rows(x, start, &mut out),
            "{what} {n}x{k} rows {start}+{count}"
        );
        let want = &want[start..start + count];
        let num: f64 = out
            .iter()
            .zip(want)
            .map(|(&g, w)| (f64::from(g) - w).powi(2))
            .sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        let err = (num / den).sqrt();
        assert!(err < 1e-5, "{what} {n}x{k} rows {start}+{count}: {err}");
    }
    let mut out = vec![7.0f32; 8];
    assert!(!view.gemv_rows(x, 4, &mut out));
    assert!(!view.gemv_rows(x, 0, &mut out[..5]));
    assert_eq!(out, vec![7.0; 8], "a refused product leaves out untouched");
}

/// The GPTQ product of one row read from the packed words (`gemv_rows`) against an f64 product
/// with the decoded matrix, for 4 and 8 bits, grouped and per-channel, asymmetric zero points,
/// pieces inside the matrix; act-order tensors are refused (their groups are not runs).
#[test]
fn gptq_direct_product_matches_the_decoded_matrix() {
    let mut rng = Rng::new(62);
    for (bits, n, k, gs) in [
        (4u32, 72usize, 256usize, 64i32),
        (8, 16, 192, -1),
        (4, 576, 576, 128),
    ] {
        let w = rng.normals(n * k, 0.1);
        let t = gptq::rtn_quantize(&w, n, k, bits, gs, false).unwrap();
        check_direct_product(
            &t.view(),
            &rng.normals(k, 1.0),
            &format!("{bits} bits g{gs}"),
        );
    }
    // Act-order: groups assigned to permuted columns.
    let (n, k) = (8usize, 64usize);
    let codes = rng.codes(n * k, 15);
    let g_idx: Vec<i32> = (0..k as i32).map(|j| (j * 7 % 64) / 32).collect();
    let t =
        GptqTensor::from_codes(&codes, &[0.5; 16], &[8; 16], &g_idx, 4, 32, false, true).unwrap();
    let mut out = vec![7.0f32; 8];
    assert!(!t.view().gemv_rows(&rng.normals(k, 1.0), 0, &mut out));
}

// ---------------------------------------------------------------- AWQ

/// The AWQ product of one row read from the packed words (`gemv_rows`) against an f64 product
/// with the decoded matrix: whole and partial groups, pieces that start inside the matrix,
/// and refusals of rows not in whole words.
#[test]
fn awq_direct_product_matches_the_decoded_matrix() {
    let mut rng = Rng::new(61);
    for (n, k, gs) in [(72usize, 200usize, 64u32), (8, 128, 128), (576, 576, 128)] {
        let t = random_awq(&mut rng, n, k, gs).0;
        check_direct_product(&t.view(), &rng.normals(k, 1.0), &format!("g{gs}"));
    }
}

/// An AWQ tensor of random codes, zero points and scales (`[groups, n]`), with them.
fn random_awq(
    rng: &mut Rng,
    n: usize,
    k: usize,
    gs: u32,
) -> (AwqTensor, Vec<u8>, Vec<u8>, Vec<f32>) {
    let groups = k.div_ceil(gs as usize);
    let codes = rng.codes(n * k, 15);
    let zeros = rng.codes(groups * n, 15);
    let scales: Vec<f32> = (0..groups * n)
        .map(|_| 0.01 + rng.uniform() as f32)
        .collect();
    let t = AwqTensor::from_codes(&codes, &scales, &zeros, n, k, gs).unwrap();
    (t, codes, zeros, scales)
}

#[test]
fn awq_codes_round_trip_and_rtn_error_bound() {
    let mut rng = Rng::new(6);
    let (n, k, gs) = (48usize, 256usize, 64u32);
    let (t, codes, zeros, scales) = random_awq(&mut rng, n, k, gs);
    assert_eq!(t.codes(), codes);
    assert_eq!(t.zeros(), zeros);
    let w = t.view().dequantize();
    for r in 0..n {
        for j in 0..k {
            let g = j / gs as usize;
            let s = f16::from_f32(scales[g * n + r]).to_f32();
            let e = (f32::from(codes[r * k + j]) - f32::from(zeros[g * n + r])) * s;
            assert_eq!(w[r * k + j].to_bits(), e.to_bits());
        }
    }
    let x = rng.normals(n * k, 0.05);
    let t = awq::rtn_quantize(&x, n, k, gs).unwrap();
    let deq = t.view().dequantize();
    for r in 0..n {
        for j in 0..k {
            let s = t.scales[(j / gs as usize) * n + r].to_f32();
            let err = (x[r * k + j] - deq[r * k + j]).abs();
            assert!(
                err <= s * (0.5 + 16.0 / 4096.0),
                "({r}, {j}): {err} vs step {s}"
            );
        }
    }
    assert!(AwqTensor::from_codes(&codes, &scales, &zeros, n, k, 48).is_err());
    assert!(
        awq::rtn_quantize(&x[..12 * k], 12, k, gs).is_err(),
        "n must be a multiple of 8"
    );
}

// ---------------------------------------------------------------- int8

#[test]
fn int8_error_is_at_most_row_absmax_over_254() {
    let mut rng = Rng::new(7);
    let (n, k) = (32usize, 200usize);
    let mut w = rng.normals(n * k, 0.1);
    w[5 * k + 17] = 3.0; // an outlier sets its row's scale
    w[9 * k..10 * k].fill(0.0); // an all-zero row
    let t = Int8Tensor::quantize(&w, n, k, &Int8Params::default()).unwrap();
    assert_eq!(t.scales[5], 3.0);
    assert_eq!(t.scales[9], 0.0);
    assert_eq!(t.data[5 * k + 17], 127);
    let deq = t.view().dequantize();
    for r in 0..n {
        let amax = w[r * k..(r + 1) * k]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        for j in 0..k {
            let err = (w[r * k + j] - deq[r * k + j]).abs();
            assert!(
                err <= amax / 254.0 * (1.0 + 1e-5),
                "({r}, {j}): {err} > {amax}/254"
            );
        }
    }
    assert!(deq[9 * k..10 * k].iter().all(|&v| v == 0.0));
    assert!(Int8Tensor::quantize(&w, n, k + 1, &Int8Params::default()).is_err());
}

// ---------------------------------------------------------------- bitsandbytes 4-bit

#[test]
fn code_values_quantize_to_themselves_and_nan_to_zero() {
    for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
        for (c, &v) in kind.codebook().iter().enumerate() {
            // FP4's -0 (code 8) is not negative, so it maps to +0 (code 0).
            let expected = if kind == Bnb4Kind::Fp4 && c == 8 {
                0
            } else {
                c
            };
            assert_eq!(
                usize::from(kind.quantize_value(v)),
                expected,
                "{kind:?} code {c}"
            );
        }
        assert_eq!(kind.quantize_value(f32::NAN), 0);
    }
}

#[test]
fn decisions_switch_at_the_midpoints_of_the_codebook() {
    for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
        let mut sorted: Vec<(f32, u8)> = kind
            .codebook()
            .iter()
            .enumerate()
            .filter(|&(c, _)| !(kind == Bnb4Kind::Fp4 && c == 8))
            .map(|(c, &v)| (v, c as u8))
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in sorted.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            // Compared as values: FP4 gives code 8 (-0) to small negative values.
            let mid = (f64::from(lo.0) + f64::from(hi.0)) / 2.0;
            let eps = 1e-5;
            let decode = |x: f64| kind.codebook()[usize::from(kind.quantize_value(x as f32))];
            assert_eq!(
                decode(mid - eps),
                lo.0,
                "{kind:?} below {mid} (code {})",
                lo.1
            );
            assert_eq!(
                decode(mid + eps),
                hi.0,
                "{kind:?} above {mid} (code {})",
                hi.1
            );
        }
    }
}

#[test]
fn the_first_value_of_each_pair_goes_in_the_high_nibble() {
    let mut x = vec![0f32; 64];
    x[0] = 1.0;
    x[1] = -1.0;
    let (data, absmax) = quantize_4bit(&x, Bnb4Kind::Nf4, 64);
    assert_eq!(absmax, vec![1.0]);
    assert_eq!(data[0], 0xF0);
    assert_eq!(data[1], 0x77, "zeros are NF4 code 7");
    let (data, _) = quantize_4bit(&x, Bnb4Kind::Fp4, 64);
    assert_eq!(data[0], 0x3B, "FP4: +1 is code 3, -1 is code 11");
    assert_eq!(data[1], 0x00);
}

#[test]
fn an_odd_length_pads_the_last_low_nibble() {
    let x: Vec<f32> = (0..15).map(|i| i as f32 - 7.0).collect();
    let params = Bnb4Params {
        block_size: 32,
        orig_dtype: FloatDtype::F32,
        ..Bnb4Params::new(Bnb4Kind::Nf4)
    };
    let t = Bnb4Tensor::quantize(&x, &[3, 5], &params).unwrap();
    assert_eq!(t.data.len(), 8);
    assert_eq!(t.data[7] & 0x0F, 7, "the padding value 0 is NF4 code 7");
    assert_eq!(t.data[7] >> 4, 15, "the last value (7 = absmax) is code 15");
    let deq = t.view().dequantize();
    assert_eq!(deq.len(), 15);
    assert_eq!((deq[0], deq[7], deq[14]), (-7.0, 0.0, 7.0));
}

#[test]
fn nf4_error_on_normal_data_is_about_a_tenth_and_below_fp4() {
    let mut rng = Rng::new(8);
    let (n, k) = (256usize, 512usize);
    let w = rng.normals(n * k, 1.0);
    let err = |kind| {
        let params = Bnb4Params {
            orig_dtype: FloatDtype::F32,
            ..Bnb4Params::new(kind)
        };
        let t = Bnb4Tensor::quantize(&w, &[n as u64, k as u64], &params).unwrap();
        rel_rms(&w, &t.view().dequantize())
    };
    let (nf4, fp4) = (err(Bnb4Kind::Nf4), err(Bnb4Kind::Fp4));
    assert!((0.085..0.10).contains(&nf4), "NF4 relative RMS error {nf4}");
    assert!(nf4 < fp4 && fp4 < 0.14, "NF4 {nf4} vs FP4 {fp4}");
}

#[test]
fn double_quantized_absmax_is_within_the_dynamic_map_error() {
    let mut rng = Rng::new(9);
    let w = rng.normals(300 * 256, 0.03);
    let params = Bnb4Params {
        double_quant: true,
        orig_dtype: FloatDtype::Bf16,
        compute_dtype: FloatDtype::Bf16,
        ..Bnb4Params::new(Bnb4Kind::Nf4)
    };
    let t = Bnb4Tensor::quantize(&w, &[300, 256], &params).unwrap();
    let rounded: Vec<f32> = w.iter().map(|&v| FloatDtype::Bf16.round(v)).collect();
    let (data, plain) = quantize_4bit(&rounded, Bnb4Kind::Nf4, 64);
    assert_eq!(
        t.data, data,
        "double quantization does not change the codes"
    );
    let Bnb4Absmax::Double(dq) = &t.absmax else {
        panic!("not double-quantized")
    };
    assert_eq!(dq.q.len(), plain.len());
    assert_eq!(dq.scale.len(), plain.len().div_ceil(256));
    assert_eq!(*dq.code, create_dynamic_map());
    // The widest gap of the map is a step of the last decade, 0.9/64: each value is
    // within half of it (times its block's scale) of the plain absmax.
    let decoded = dq.dequantize();
    for (i, (&a, &d)) in plain.iter().zip(&decoded).enumerate() {
        let bound = dq.scale[i / 256] * (0.45 / 64.0) * 1.001 + a * 1e-6;
        assert!(
            (a - d).abs() <= bound,
            "block {i}: {a} vs {d} (bound {bound})"
        );
    }
    let again = DoubleQuantAbsmax::quantize(&plain);
    assert_eq!(&again, dq);
}

// ---------------------------------------------------------------- dynamic map

#[test]
fn dynamic_map_matches_an_independent_derivation() {
    // Decade 10^(i-6) holds the midpoints of 2^i equal steps from 0.1 to 1, both signs.
    let mut expected = vec![0.0f64, 1.0];
    for i in 0..7 {
        let steps = 1u32 << i;
        for j in 0..steps {
            let mid = 0.1 + 0.9 * (f64::from(j) + 0.5) / f64::from(steps);
            let v = 10f64.powi(i - 6) * mid;
            expected.push(v);
            expected.push(-v);
        }
    }
    expected.sort_by(f64::total_cmp);
    let map = create_dynamic_map();
    assert_eq!(expected.len(), 256);
    for (i, (&m, &e)) in map.iter().zip(&expected).enumerate() {
        assert!(
            (f64::from(m) - e).abs() <= e.abs() * 4.0 * f64::from(f32::EPSILON),
            "entry {i}: {m} vs {e}"
        );
    }
    assert!(map.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    assert_eq!((map[127], map[255]), (0.0, 1.0));
    assert_eq!(map[0], -map[254]);
}

#[test]
fn dynamic_map_quantization_picks_a_nearest_entry() {
    let map = create_dynamic_map();
    let mut rng = Rng::new(10);
    let mut xs: Vec<f32> = (0..20000)
        .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
        .collect();
    xs.extend((0..2000).map(|_| (rng.normal() * 1e-4).clamp(-1.0, 1.0)));
    xs.extend(map.iter().copied());
    xs.extend(map.windows(2).map(|w| (w[0] + w[1]) * 0.5));
    for &x in &xs {
        let q = usize::from(quantize_value(&map, x));
        let dist = |c: f32| (f64::from(x) - f64::from(c)).abs();
        let best = map.iter().map(|&c| dist(c)).fold(f64::INFINITY, f64::min);
        // Ties are decided against the f32-rounded midpoint, so "nearest" holds up to
        // the rounding of that midpoint.
        let slack = f64::from(x.abs().max(1e-30)) * f64::from(f32::EPSILON);
        assert!(
            dist(map[q]) <= best + slack,
            "x = {x}: picked {} (index {q})",
            map[q]
        );
    }
    for (i, &c) in map.iter().enumerate() {
        assert_eq!(usize::from(quantize_value(&map, c)), i);
    }
    // Blockwise: a block is scaled by its absmax, which maps to ±1 or the top entry.
    let x: Vec<f32> = (0..600).map(|i| (i as f32 - 300.0) * 0.01).collect();
    let (q, absmax) = quantize_blockwise(&x, &map, 256);
    assert_eq!(absmax.len(), 3);
    let back = dequantize_blockwise(&q, &absmax, &map, 256);
    for (i, (&a, &b)) in x.iter().zip(&back).enumerate() {
        assert!((a - b).abs() <= absmax[i / 256] * 0.0071, "{i}: {a} vs {b}");
    }
}

// ---------------------------------------------------------------- row decoders

/// One tensor of every kind, with its parts.
fn sample_tensors() -> Vec<(String, Box<dyn QuantizedParts>)> {
    let mut rng = Rng::new(11);
    let mut out: Vec<(String, Box<dyn QuantizedParts>)> = Vec::new();
    let w = rng.normals(48 * 96, 0.05);
    let nf4 = Bnb4Params {
        double_quant: true,
        ..Bnb4Params::new(Bnb4Kind::Nf4)
    };
    out.push((
        "nf4 dq".into(),
        Box::new(Bnb4Tensor::quantize(&w, &[48, 96], &nf4).unwrap()),
    ));
    let fp4 = Bnb4Params {
        block_size: 32,
        orig_dtype: FloatDtype::Bf16,
        compute_dtype: FloatDtype::Bf16,
        ..Bnb4Params::new(Bnb4Kind::Fp4)
    };
    let w3 = rng.normals(2 * 15 * 33, 1.0);
    out.push((
        "fp4 3-d".into(),
        Box::new(Bnb4Tensor::quantize(&w3, &[2, 15, 33], &fp4).unwrap()),
    ));
    let w = rng.normals(40 * 72, 0.05);
    out.push((
        "int8".into(),
        Box::new(Int8Tensor::quantize(&w, 40, 72, &Int8Params::default()).unwrap()),
    ));
    let (n, k) = (64usize, 96usize);
    let codes = rng.codes(n * k, 7);
    let g_idx = act_order_g_idx(&mut rng, k, 32);
    let scales: Vec<f32> = (0..3 * n).map(|_| rng.uniform() as f32).collect();
    let zeros = rng.codes(3 * n, 7);
    out.push((
        "gptq 3-bit act-order".into(),
        Box::new(
            GptqTensor::from_codes(&codes, &scales, &zeros, &g_idx, 3, 32, false, true).unwrap(),
        ),
    ));
    let w = rng.normals(32 * 64, 0.05);
    out.push((
        "gptq 8-bit per channel".into(),
        Box::new(gptq::rtn_quantize(&w, 32, 64, 8, -1, true).unwrap()),
    ));
    let w = rng.normals(48 * 128, 0.05);
    out.push((
        "awq".into(),
        Box::new(awq::rtn_quantize(&w, 48, 128, 32).unwrap()),
    ));
    out
}

/// The parts of `t` copied into one buffer at `misalign` bytes past an 8-aligned start.
fn part_buffer(t: &dyn QuantizedParts, misalign: usize) -> (Vec<u64>, Vec<(String, usize, usize)>) {
    let bytes = t.part_bytes();
    let total: usize = bytes.iter().map(|b| b.len() + 16).sum();
    let mut buf = vec![0u64; total / 8 + 2];
    let mut spans = Vec::new();
    // SAFETY (test): a u64 buffer viewed as bytes.
    let raw = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
    let mut at = misalign;
    for ((role, _, len), b) in t.plan_parts().into_iter().zip(&bytes) {
        assert_eq!(len as usize, b.len(), "plan and bytes of part {role}");
        raw[at..at + b.len()].copy_from_slice(b);
        spans.push((role, at, b.len()));
        at += (b.len() + 15) / 8 * 8 + misalign;
    }
    (buf, spans)
}

#[test]
fn decode_rows_equals_the_full_dequantization() {
    let mut rng = Rng::new(12);
    for (label, t) in sample_tensors() {
        let shape = t.shape();
        let storage = t.storage_type();
        let mut reference: Option<Vec<f32>> = None;
        for misalign in [0usize, 1, 2] {
            let (buf, spans) = part_buffer(t.as_ref(), misalign);
            let raw =
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, buf.len() * 8) };
            let lookup = |role: &str| {
                spans
                    .iter()
                    .find(|(r, _, _)| r == role)
                    .map(|&(_, at, len)| &raw[at..at + len])
            };
            let view = quantized_view(&storage, &shape, &lookup).expect(&label);
            let full = view.dequantize();
            assert_eq!(full.len(), view.rows() * view.cols());
            match &reference {
                None => reference = Some(full.clone()),
                Some(r) => assert_eq!(&full, r, "{label}: misaligned parts decode differently"),
            }
            let (rows, cols) = (view.rows(), view.cols());
            for _ in 0..40 {
                let start = rng.below(rows);
                let count = 1 + rng.below(rows - start);
                let mut dst = vec![f32::NAN; count * cols];
                view.decode_rows(start, count, &mut dst);
                let want = &full[start * cols..(start + count) * cols];
                assert!(
                    dst.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{label}: rows {start}..+{count}"
                );
            }
        }
    }
}

/// A quantized tensor's parts by role, as a reader would find them in a file.
struct Parts {
    roles: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

impl Parts {
    fn of(t: &dyn QuantizedParts) -> Self {
        Self {
            roles: t
                .plan_parts()
                .into_iter()
                .map(|(role, _, _)| role)
                .collect(),
            bytes: t.part_bytes(),
        }
    }

    fn get(&self, role: &str) -> Option<&[u8]> {
        let i = self.roles.iter().position(|r| r == role)?;
        Some(self.bytes[i].as_slice())
    }
}

#[test]
fn views_of_owned_tensors_agree_with_views_over_their_bytes() {
    let mut rng = Rng::new(13);
    let w = rng.normals(16 * 64, 0.1);
    let t = gptq::rtn_quantize(&w, 16, 64, 4, 32, false).unwrap();
    let parts = Parts::of(&t);
    let lookup = |role: &str| parts.get(role);
    let v = quantized_view(&t.storage_type(), &t.shape(), &lookup).unwrap();
    assert_eq!(v.dequantize(), t.view().dequantize());
    let t = Int8Tensor::quantize(&w, 16, 64, &Int8Params { threshold: 0.0 }).unwrap();
    let bytes = t.part_bytes();
    let lookup = |role: &str| match role {
        "data" => Some(bytes[0].as_slice()),
        "scales" => Some(bytes[1].as_slice()),
        _ => None,
    };
    let v = quantized_view(&t.storage_type(), &t.shape(), &lookup).unwrap();
    assert_eq!(v.dequantize(), t.view().dequantize());
}

/// A double-quantized NF4 view built on block scales decoded by an earlier view decodes the
/// same values; scales of the wrong count are refused.
#[test]
fn bnb4_views_on_decoded_scales_decode_the_same() {
    let mut rng = Rng::new(14);
    let w = rng.normals(24 * 80, 0.05);
    let params = Bnb4Params {
        double_quant: true,
        ..Bnb4Params::new(Bnb4Kind::Nf4)
    };
    let t = Bnb4Tensor::quantize(&w, &[24, 80], &params).unwrap();
    let parts = Parts::of(&t);
    let lookup = |role: &str| parts.get(role);
    let first = Bnb4View::from_parts(&params, &t.shape(), &lookup).unwrap();
    let absmax = first.absmax().to_vec();
    assert_eq!(absmax.len(), (24 * 80usize).div_ceil(64));
    let second = Bnb4View::with_absmax(&params, &t.shape(), &lookup, &absmax).unwrap();
    let (a, b) = (first.dequantize(), second.dequantize());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let short = &absmax[1..];
    let err = Bnb4View::with_absmax(&params, &t.shape(), &lookup, short).unwrap_err();
    assert!(err.contains("block scales"), "{err}");
}

/// The fast in-place rounding agrees with the `half` conversions on every f16/bf16 boundary
/// region: a sweep of f32 bit patterns across all exponents, including ties.
#[test]
fn float_dtype_rounding_matches_half_conversions() {
    use half::{bf16, f16};
    use qrt_format::quant::FloatDtype;
    let mut bits: u32 = 0;
    let mut checked = 0u64;
    while bits < 0x7F80_0000 {
        for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
            assert_eq!(
                FloatDtype::F16.round(x).to_bits(),
                f16::from_f32(x).to_f32().to_bits(),
                "f16 of {x:e}"
            );
            assert_eq!(
                FloatDtype::Bf16.round(x).to_bits(),
                bf16::from_f32(x).to_f32().to_bits(),
                "bf16 of {x:e}"
            );
            checked += 1;
        }
        // Odd step: visits ties (low bits 0x1000 / 0x8000) and their neighbours.
        bits += 0x0FFF;
    }
    assert!(checked > 1_000_000);
}
