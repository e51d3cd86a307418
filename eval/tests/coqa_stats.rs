//! Means, standard errors and bootstrap intervals.

use qrt_eval::stats::{bootstrap_ci, mean, mean_and_stderr, paired_bootstrap_ci};

/// A fixed 0/1 pattern (like EM scores) with mean 0.6.
fn scores(n: usize) -> Vec<f64> {
    (0..n).map(|i| if i % 5 < 3 { 1.0 } else { 0.0 }).collect()
}

#[test]
fn means_and_stderr() {
    assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
    assert!(mean(&[]).is_nan());
    // Deviations -1.5, -0.5, 0.5, 1.5: squares sum to 5, sample variance 5/3, stderr
    // sqrt(5/3) / 2 = 0.6454972243679028.
    let (m, se) = mean_and_stderr(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(m, 2.5);
    assert!((se - 0.645_497_224_367_902_8).abs() < 1e-12, "{se}");
    let (m, se) = mean_and_stderr(&[0.7; 10]);
    assert!((m - 0.7).abs() < 1e-12 && se.abs() < 1e-12);
    let (m, se) = mean_and_stderr(&[3.0]);
    assert_eq!(m, 3.0);
    assert!(se.is_nan());
}

#[test]
fn bootstrap_interval() {
    let small = scores(50);
    let (lo, hi) = bootstrap_ci(&small, 2000, 7);
    let m = mean(&small);
    assert!(lo < m && m < hi, "({lo}, {hi}) around {m}");
    // The normal approximation: 0.6 +- 1.96 * sqrt(0.24 / 50) = 0.6 +- 0.136.
    assert!((hi - lo - 0.27).abs() < 0.05, "width {}", hi - lo);
    // Resampled means of 0/1 values are multiples of 1/50.
    assert!((lo * 50.0 - (lo * 50.0).round()).abs() < 1e-9);

    let large = scores(5000);
    let (lo_l, hi_l) = bootstrap_ci(&large, 2000, 7);
    assert!(lo_l < 0.6 && 0.6 < hi_l);
    assert!(
        hi_l - lo_l < (hi - lo) / 5.0,
        "100x the data: about a tenth of the width"
    );

    // Deterministic per seed, different across seeds.
    assert_eq!(bootstrap_ci(&small, 500, 42), bootstrap_ci(&small, 500, 42));
    assert_ne!(bootstrap_ci(&large, 500, 42), bootstrap_ci(&large, 500, 43));

    // Identical values: zero width.
    assert_eq!(
        bootstrap_ci(&[0.7; 30], 200, 1),
        (mean(&[0.7; 30]), mean(&[0.7; 30]))
    );
    assert_eq!(bootstrap_ci(&[0.25], 200, 1), (0.25, 0.25));
    let (lo, hi) = bootstrap_ci(&[], 200, 1);
    assert!(lo.is_nan() && hi.is_nan());
}

#[test]
fn paired_interval() {
    let a = scores(200);
    assert_eq!(paired_bootstrap_ci(&a, &a, 1000, 3), (0.0, 0.0));
    // b = a + 0.1 everywhere: every resampled mean difference is 0.1.
    let b: Vec<f64> = a.iter().map(|x| x + 0.125).collect();
    assert_eq!(paired_bootstrap_ci(&a, &b, 1000, 3), (0.125, 0.125));
    // b beats a on 20 of 200 items: the difference is 0.1, its interval around it and
    // narrower than an unpaired one would be.
    let c: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 10 == 3 { 1.0 } else { *x })
        .collect();
    let (lo, hi) = paired_bootstrap_ci(&a, &c, 2000, 3);
    assert!(lo > 0.0 && lo < 0.1 && hi > 0.1, "({lo}, {hi})");
    // The reverse comparison mirrors it.
    let (rlo, rhi) = paired_bootstrap_ci(&c, &a, 2000, 3);
    assert!((rlo + hi).abs() < 1e-12 && (rhi + lo).abs() < 1e-12);
}
