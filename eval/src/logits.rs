//! Agreement between our logits and a reference's top-k logits, position by position.

use serde::{Deserialize, Serialize};

/// A reference's top-k logits for one sequence: per position, token ids and their logits,
/// most likely first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopKReference {
    /// Per position, the k token ids.
    pub top_ids: Vec<Vec<u32>>,
    /// Per position, their logits.
    pub top_logits: Vec<Vec<f32>>,
}

/// How well our logits agree with a reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LogitAgreement {
    /// Positions compared.
    pub positions: usize,
    /// Positions whose argmax equals the reference's top-1 token.
    pub top1_matches: usize,
    /// Largest |ours - reference| over every reference top-k entry of every position.
    pub max_abs_diff: f32,
    /// Mean |ours - reference| over the same entries.
    pub mean_abs_diff: f32,
}

impl LogitAgreement {
    /// Folds another sequence's agreement into this one.
    pub fn merge(&mut self, other: &LogitAgreement) {
        let n = (self.positions + other.positions).max(1) as f32;
        self.mean_abs_diff = (self.mean_abs_diff * self.positions as f32
            + other.mean_abs_diff * other.positions as f32)
            / n;
        self.positions += other.positions;
        self.top1_matches += other.top1_matches;
        self.max_abs_diff = self.max_abs_diff.max(other.max_abs_diff);
    }
}

/// Compares `ours` (`positions x vocab`, row-major) with `reference`.
///
/// A position's argmax counts as a match when it is the reference's top-1 token, or when our
/// logit of the reference's top-1 token ties with our maximum (a tie the reference broke the
/// other way).
pub fn compare_top_k(
    ours: &[f32],
    vocab: usize,
    reference: &TopKReference,
) -> Result<LogitAgreement, String> {
    let positions = reference.top_ids.len();
    if ours.len() != positions * vocab || reference.top_logits.len() != positions {
        return Err(format!(
            "logits for {} positions of a {vocab}-token vocabulary, reference has {positions}",
            ours.len() / vocab.max(1)
        ));
    }
    let mut agreement = LogitAgreement {
        positions,
        ..Default::default()
    };
    let mut total = 0f64;
    let mut count = 0usize;
    for (p, row) in ours.chunks(vocab).enumerate() {
        let (ids, logits) = (&reference.top_ids[p], &reference.top_logits[p]);
        let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let top1 = *ids.first().ok_or("empty reference row")? as usize;
        if row.get(top1).is_some_and(|&v| v == best) {
            agreement.top1_matches += 1;
        }
        for (&id, &want) in ids.iter().zip(logits) {
            let got = *row
                .get(id as usize)
                .ok_or_else(|| format!("reference token {id} outside the vocabulary"))?;
            let d = (got - want).abs();
            agreement.max_abs_diff =
                agreement
                    .max_abs_diff
                    .max(if d.is_nan() { f32::INFINITY } else { d });
            total += d as f64;
            count += 1;
        }
    }
    agreement.mean_abs_diff = (total / count.max(1) as f64) as f32;
    Ok(agreement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_exactly_and_shifts_are_measured() {
        let vocab = 5;
        let ours = vec![0.0, 3.0, 1.0, -1.0, 2.0, 5.0, 0.0, 0.0, 4.5, 1.0];
        let reference = TopKReference {
            top_ids: vec![vec![1, 4], vec![0, 3]],
            top_logits: vec![vec![3.0, 2.0], vec![5.0, 4.0]],
        };
        let a = compare_top_k(&ours, vocab, &reference).unwrap();
        assert_eq!(a.positions, 2);
        assert_eq!(a.top1_matches, 2);
        // Only position 1, token 3 differs: 4.5 vs 4.0.
        assert_eq!(a.max_abs_diff, 0.5);
        assert!((a.mean_abs_diff - 0.125).abs() < 1e-6);
    }

    #[test]
    fn a_different_argmax_is_not_a_match() {
        let reference = TopKReference {
            top_ids: vec![vec![0]],
            top_logits: vec![vec![1.0]],
        };
        let a = compare_top_k(&[1.0, 1.5], 2, &reference).unwrap();
        assert_eq!(a.top1_matches, 0);
        assert!(compare_top_k(&[1.0], 2, &reference).is_err());
    }
}
