//! Summary statistics for per-item evaluation scores: means, standard errors and
//! percentile-bootstrap confidence intervals, deterministic for a given seed.

use qrt_runtime::sampling::Rng;

/// The arithmetic mean; NaN for no values.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The mean and its standard error, the sample standard deviation (n - 1 denominator) over
/// `sqrt(n)`. The error is NaN for fewer than two values (and both are NaN for none).
pub fn mean_and_stderr(xs: &[f64]) -> (f64, f64) {
    let m = mean(xs);
    let n = xs.len() as f64;
    let variance = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    let stderr = if xs.len() < 2 {
        f64::NAN
    } else {
        (variance / n).sqrt()
    };
    (m, stderr)
}

/// The 95% percentile-bootstrap interval of the mean: `resamples` resamples of the items
/// with replacement, the 2.5th and 97.5th percentiles of their means (linear interpolation
/// between order statistics, as numpy's default). Deterministic for a seed; (NaN, NaN) for
/// no values or no resamples.
pub fn bootstrap_ci(xs: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    if xs.is_empty() || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..xs.len()).map(|_| xs[rng.below(xs.len())]).sum::<f64>() / xs.len() as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (percentile(&means, 0.025), percentile(&means, 0.975))
}

/// The 95% paired-bootstrap interval of `mean(b - a)`: each resample draws the same item
/// indices for both runs (it resamples the per-item differences).
///
/// # Panics
/// If `a` and `b` have different lengths.
pub fn paired_bootstrap_ci(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    assert_eq!(
        a.len(),
        b.len(),
        "paired scores must have one value per item in both runs"
    );
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    bootstrap_ci(&diffs, resamples, seed)
}

/// The `q` quantile of sorted values, interpolating linearly; NaN for none.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}
