//! Log-probabilities of logit rows, accumulated in f64: the reference that evaluation
//! (`qrt eval ppl`) and every backend's [`Backend::target_log_probs`] compute.
//!
//! [`Backend::target_log_probs`]: crate::backend::Backend::target_log_probs

/// `log sum exp(row)`, as `max + ln(sum exp(v - max))` with the differences in f32 and the
/// exponentials and sum in f64.
pub fn log_normalizer(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

/// `log softmax(row)[i]` given the row's [`log_normalizer`].
pub fn log_prob_with(value: f32, log_z: f64) -> f32 {
    (value as f64 - log_z) as f32
}

/// `log softmax(row)[target]`.
pub fn log_prob(row: &[f32], target: u32) -> f32 {
    log_prob_with(row[target as usize], log_normalizer(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_match_a_direct_softmax() {
        // Independent reference: softmax computed directly in f64 (no max shift).
        let row = [0.5f32, -1.25, 3.0, 2.0, 0.0];
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        for (i, &v) in row.iter().enumerate() {
            let want = ((v as f64).exp() / z).ln();
            assert!((log_prob(&row, i as u32) as f64 - want).abs() < 1e-6);
        }
        // Large logits do not overflow.
        let big = [1000.0f32, 999.0];
        let want = -(1.0 + (-1.0f64).exp()).ln();
        assert!((log_prob(&big, 0) as f64 - want).abs() < 1e-6);
    }
}
