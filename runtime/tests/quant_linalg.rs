//! The f64 factorizations behind GPTQ against direct products on random SPD matrices.

use qrt_runtime::quant::linalg::{
    cholesky_inverse, cholesky_lower, cholesky_upper, inverse_cholesky_upper,
    invert_lower_triangular,
};

use qrt_runtime::sampling::Rng;

/// `A = B Bᵀ / k + eps·I` for a random `k × k` `B`.
fn random_spd(k: usize, eps: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let b: Vec<f64> = (0..k * k).map(|_| rng.next_normal() as f64).collect();
    let mut a = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (0..k).map(|p| b[i * k + p] * b[j * k + p]).sum::<f64>() / k as f64;
            a[i * k + j] = s;
            a[j * k + i] = s;
        }
        a[i * k + i] += eps;
    }
    a
}

/// `C = A · B` for row-major `k × k` matrices, plainly.
fn matmul(a: &[f64], b: &[f64], k: usize) -> Vec<f64> {
    let mut c = vec![0.0; k * k];
    for i in 0..k {
        for p in 0..k {
            let aip = a[i * k + p];
            if aip != 0.0 {
                for j in 0..k {
                    c[i * k + j] += aip * b[p * k + j];
                }
            }
        }
    }
    c
}

fn transpose(a: &[f64], k: usize) -> Vec<f64> {
    let mut t = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            t[j * k + i] = a[i * k + j];
        }
    }
    t
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn identity(k: usize) -> Vec<f64> {
    let mut e = vec![0.0; k * k];
    (0..k).for_each(|i| e[i * k + i] = 1.0);
    e
}

/// Sizes around the block size (128) exercise the blocked paths and ragged last blocks.
const SIZES: [usize; 5] = [1, 7, 128, 200, 300];

#[test]
fn cholesky_reproduces_the_matrix() {
    for (t, &k) in SIZES.iter().enumerate() {
        let a = random_spd(k, 0.1, 1 + t as u64);
        let mut l = a.clone();
        cholesky_lower(&mut l, k).unwrap();
        for i in 0..k {
            assert!(l[i * k + i] > 0.0);
            assert!(
                l[i * k + i + 1..(i + 1) * k].iter().all(|&v| v == 0.0),
                "upper not zero"
            );
        }
        let llt = matmul(&l, &transpose(&l, k), k);
        let e = rel_err(&llt, &a);
        assert!(e < 1e-12, "k={k}: L Lᵀ differs from A by {e:e}");
    }
}

#[test]
fn inverse_from_cholesky_inverts() {
    for (t, &k) in SIZES.iter().enumerate() {
        let a = random_spd(k, 0.1, 10 + t as u64);
        let mut l = a.clone();
        cholesky_lower(&mut l, k).unwrap();
        let inv = cholesky_inverse(&l, k);
        let e = rel_err(&matmul(&a, &inv, k), &identity(k));
        assert!(e < 1e-9, "k={k}: A·A⁻¹ differs from I by {e:e}");
        let e = rel_err(&matmul(&inv, &a, k), &identity(k));
        assert!(e < 1e-9, "k={k}: A⁻¹·A differs from I by {e:e}");
    }
}

#[test]
fn triangular_inverse_inverts() {
    for (t, &k) in SIZES.iter().enumerate() {
        let mut l = random_spd(k, 0.5, 20 + t as u64);
        cholesky_lower(&mut l, k).unwrap();
        let mut x = l.clone();
        invert_lower_triangular(&mut x, k);
        let e = rel_err(&matmul(&l, &x, k), &identity(k));
        assert!(e < 1e-10, "k={k}: L·L⁻¹ differs from I by {e:e}");
    }
}

#[test]
fn upper_factor_of_inverse_matches_the_reference_route() {
    for (t, &k) in SIZES.iter().enumerate() {
        let h = random_spd(k, 0.05, 30 + t as u64);
        // The reference: cholesky_upper(cholesky_inverse(cholesky(H))).
        let mut l = h.clone();
        cholesky_lower(&mut l, k).unwrap();
        let mut reference = cholesky_inverse(&l, k);
        cholesky_upper(&mut reference, k).unwrap();
        let mut u = h.clone();
        inverse_cholesky_upper(&mut u, k).unwrap();
        for i in 0..k {
            assert!(
                u[i * k..i * k + i].iter().all(|&v| v == 0.0),
                "lower part not zero"
            );
        }
        let e = rel_err(&u, &reference);
        assert!(e < 1e-9, "k={k}: factors differ by {e:e}");
        // Uᵀ U = H⁻¹, so H · Uᵀ U = I.
        let utu = matmul(&transpose(&u, k), &u, k);
        let e = rel_err(&matmul(&h, &utu, k), &identity(k));
        assert!(e < 1e-9, "k={k}: H·UᵀU differs from I by {e:e}");
    }
}

#[test]
fn indefinite_matrices_are_rejected() {
    let k = 150;
    let mut a = random_spd(k, 0.1, 40);
    a[140 * k + 140] = -1.0;
    let err = cholesky_lower(&mut a.clone(), k).unwrap_err();
    assert_eq!(err.index, 140);
    assert!(err.pivot <= 0.0);
    let err = inverse_cholesky_upper(&mut a, k).unwrap_err();
    assert_eq!(err.index, 140);
}
