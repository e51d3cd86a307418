//! Turning logits into tokens: greedy, or seeded temperature / top-k / top-p sampling.

/// A small, seedable PRNG (SplitMix64), so that sampling is reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index below `n` (multiply-shift; the bias is below `n / 2^64`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// `len` normal samples scaled by `scale`, for test data.
    pub fn normals(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| scale * self.next_normal()).collect()
    }

    /// A standard normal sample (Box-Muller), for test data.
    pub fn next_normal(&mut self) -> f32 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };
}

impl SamplingParams {
    /// Whether these parameters always choose the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Index of the largest logit (the first one on ties, as `torch.argmax` does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Chooses a token from `logits` under `params`, drawing from `rng` when sampling.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    sample_with_uniform(logits, params, draw_uniform(params, rng))
}

/// The uniform [`sample`] draws from `rng` for `params`: one `rng.next_f64()` when sampling,
/// nothing (and 0, which greedy decoding ignores) when greedy.
pub fn draw_uniform(params: &SamplingParams, rng: &mut Rng) -> f64 {
    if params.is_greedy() {
        0.0
    } else {
        rng.next_f64()
    }
}

/// Chooses a token from `logits` under `params` with the uniform `u` in `[0, 1)` (ignored
/// when greedy): the candidates sorted by `logit / temperature` descending (ties: lower index
/// first), cut to `top_k`, then to the shortest prefix whose probability reaches `top_p`;
/// the first candidate whose inclusive cumulative probability exceeds `u`.
pub fn sample_with_uniform(logits: &[f32], params: &SamplingParams, mut u: f64) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / params.temperature))
        .collect();
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    let max = candidates[0].1;
    let mut probs: Vec<f64> = candidates
        .iter()
        .map(|c| ((c.1 - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p;
            if cumulative >= params.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let kept: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= kept);
    }
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return candidates[i].0;
        }
        u -= p;
    }
    candidates[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        let mut rng = Rng::new(1);
        assert_eq!(
            sample(&[0.0, 1.0, 5.0], &SamplingParams::GREEDY, &mut rng),
            2
        );
    }

    #[test]
    fn sampling_matches_softmax_frequencies() {
        // Independent reference: softmax of logits/T computed in f64 here.
        let logits = [1.0f32, 2.0, 0.5, -1.0];
        let t = 0.7;
        let z: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
        let sum: f64 = z.iter().sum();
        let params = SamplingParams {
            temperature: t as f32,
            top_k: 0,
            top_p: 1.0,
        };
        let mut rng = Rng::new(42);
        let n = 200_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample(&logits, &params, &mut rng) as usize] += 1;
        }
        for i in 0..4 {
            let expected = z[i] / sum;
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - expected).abs() < 0.005,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0];
        let mut rng = Rng::new(7);
        let k2 = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        };
        // p(4)=0.636, p(3)=0.234: top_p 0.6 keeps only token 4.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.6,
        };
        for _ in 0..2000 {
            assert!(sample(&logits, &k2, &mut rng) >= 3);
            assert_eq!(sample(&logits, &p, &mut rng), 4);
        }
    }

    #[test]
    fn sampling_with_drawn_uniforms_is_sampling() {
        let logits: Vec<f32> = (0..300).map(|i| (i as f32 * 0.91).cos() * 3.0).collect();
        let all = [
            SamplingParams::GREEDY,
            SamplingParams {
                temperature: 0.8,
                top_k: 0,
                top_p: 1.0,
            },
            SamplingParams {
                temperature: 1.3,
                top_k: 40,
                top_p: 0.9,
            },
            SamplingParams {
                temperature: 0.5,
                top_k: 1,
                top_p: 0.5,
            },
        ];
        let mut a = Rng::new(11);
        let mut b = Rng::new(11);
        let mut drawn = Vec::new();
        for i in 0..400 {
            let params = &all[i % all.len()];
            let want = sample(&logits, params, &mut a);
            let u = draw_uniform(params, &mut b);
            assert_eq!(sample_with_uniform(&logits, params, u), want, "draw {i}");
            drawn.push(want);
        }
        // What `sample` chose for this stream before it was split into a draw and a choice.
        let before = [0, 55, 7, 0, 0, 256, 131, 0, 0, 152, 159, 0, 0, 221, 166, 0];
        assert_eq!(drawn[..16], before);
        // Greedy draws nothing, so both streams are still in step.
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| sample(&logits, &params, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
