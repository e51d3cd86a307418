//! Summaries of repeated timing samples.

use serde::Serialize;

/// Order statistics, mean and spread of a set of samples (for example, milliseconds per
/// iteration).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Middle value; for an even count, the mean of the two middle values.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (divides by `n - 1`); 0 for a single sample.
    pub stdev: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarizes `samples`. `None` when there are no samples, or when any sample is NaN or
    /// infinite (a timing that cannot be trusted makes the whole summary meaningless).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let stdev = if n > 1 {
            let squares: f64 = sorted.iter().map(|x| (x - mean) * (x - mean)).sum();
            (squares / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            mean,
            stdev,
            n,
        })
    }

    /// Half the range, `(max - min) / 2`: the "±" printed next to the median in tables.
    pub fn spread(&self) -> f64 {
        (self.max - self.min) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn odd_count() {
        // Sorted: 1 2 3 4 10. Mean 4. Squared deviations 9+4+1+0+36 = 50; 50/4 = 12.5.
        let s = Summary::of(&[4.0, 1.0, 10.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
        assert!(close(s.mean, 4.0));
        assert!(close(s.stdev, 12.5f64.sqrt()));
        assert!(close(s.spread(), 4.5));
    }

    #[test]
    fn even_count_median_is_mean_of_middle_pair() {
        // Sorted: 1 2 4 9. Median (2+4)/2 = 3. Mean 4. Squared deviations 9+4+0+25 = 38;
        // 38/3.
        let s = Summary::of(&[9.0, 2.0, 1.0, 4.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert!(close(s.mean, 4.0));
        assert!(close(s.stdev, (38.0f64 / 3.0).sqrt()));
    }

    #[test]
    fn two_samples() {
        // Mean 2, deviations ±1, stdev sqrt(2/1).
        let s = Summary::of(&[1.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.0);
        assert!(close(s.stdev, 2f64.sqrt()));
    }

    #[test]
    fn single_sample_has_zero_stdev() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 7.5,
                min: 7.5,
                max: 7.5,
                mean: 7.5,
                stdev: 0.0,
                n: 1
            }
        );
    }

    #[test]
    fn empty_and_nan_are_rejected() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN, 2.0]), None);
        assert_eq!(Summary::of(&[f64::INFINITY]), None);
    }
}
