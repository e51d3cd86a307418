//! Perplexity and KL-divergence, the llama.cpp way.
//!
//! Method (as llama.cpp's `perplexity` tool): tokenize the whole text once; cut it into
//! non-overlapping windows of `ctx` tokens (the remainder is dropped); if the model wants a
//! BOS token, the first token of each window is replaced by it; run each window from an empty
//! cache and score only its second half: for positions `j` in `ctx/2 .. ctx-1`, the
//! negative log-likelihood of token `j+1` given tokens `..=j`. Perplexity is
//! `exp(mean nll)`; its standard error is `ppl * stderr(nll)` (delta method), with
//! `stderr = sqrt(var(nll) / (n - 1))`.
//!
//! KL-divergence compares the same positions of a base model P (e.g. FP16) and the model
//! under test Q: per token `KL(P||Q) = sum_v p_v (log p_v - log q_v)`, reported as mean ±
//! standard error, median, 99th percentile and maximum, with the share of positions whose
//! most likely token agrees, and both perplexities. With the base given as a model the sum
//! runs over the whole vocabulary. With the base given as a saved logits file (see
//! [`BaseLogitsWriter`]) only its `k` most likely tokens are stored, and the remaining mass
//! is one bucket: `p_rest (log p_rest - log q_rest)`. That bucketed value never exceeds the
//! exact KL (the log-sum inequality) and equals it when the top-k carry all the mass.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use qrt_runtime::backend::Backend;
use qrt_runtime::engine::Engine;
use qrt_runtime::logprob::{log_normalizer, log_prob_with};
use qrt_runtime::sampling::argmax;

use crate::stats::percentile;
use crate::EvalError;

/// Per-position statistics of one scored token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenScore {
    /// `-log q(target)` under the model.
    pub nll: f64,
    /// `-log p(target)` under the base, when there is one.
    pub base_nll: Option<f64>,
    /// `KL(P||Q)` at this position, when there is a base.
    pub kl: Option<f64>,
    /// Whether base and model agree on the most likely token.
    pub same_top1: Option<bool>,
}

/// Non-overlapping windows of `ctx` tokens (the remainder dropped), the first token of each
/// replaced by `bos` when given.
pub fn windows(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    tokens
        .chunks_exact(ctx)
        .map(|w| {
            let mut w = w.to_vec();
            if let Some(b) = bos {
                w[0] = b;
            }
            w
        })
        .collect()
}

/// The positions of a window whose predictions are scored: `ctx/2 .. ctx-1`.
pub fn scored_positions(ctx: usize) -> std::ops::Range<usize> {
    ctx / 2..ctx - 1
}

/// `log softmax(row)`, accumulated in f64 (`qrt_runtime::logprob`).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let log_z = log_normalizer(row);
    row.iter().map(|&v| log_prob_with(v, log_z)).collect()
}

/// Exact `KL(P||Q)` from two log-probability rows.
pub fn kl_exact(base_logp: &[f32], model_logp: &[f32]) -> f64 {
    base_logp
        .iter()
        .zip(model_logp)
        .map(|(&p, &q)| {
            let pp = (p as f64).exp();
            if pp > 0.0 {
                pp * (p as f64 - q as f64)
            } else {
                0.0
            }
        })
        .sum()
}

/// A base distribution reduced to its `k` most likely tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogProbs {
    /// Token ids, most likely first.
    pub ids: Vec<u32>,
    /// Their log-probabilities.
    pub logprobs: Vec<f32>,
    /// Log-probability of the target token.
    pub target: f32,
}

impl TopLogProbs {
    /// Keeps the `k` most likely tokens of a log-probability row.
    pub fn from_row(logp: &[f32], k: usize, target: u32) -> Self {
        let mut idx: Vec<u32> = (0..logp.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
            logp[*b as usize].total_cmp(&logp[*a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|a, b| {
            logp[*b as usize]
                .total_cmp(&logp[*a as usize])
                .then(a.cmp(b))
        });
        Self {
            logprobs: idx.iter().map(|&i| logp[i as usize]).collect(),
            ids: idx,
            target: logp[target as usize],
        }
    }

    /// `KL(P||Q)` with the tokens outside the top-k merged into one bucket.
    pub fn kl_bucketed(&self, model_logp: &[f32]) -> f64 {
        let (mut kl, mut p_top, mut q_top) = (0.0, 0.0, 0.0);
        for (&id, &lp) in self.ids.iter().zip(&self.logprobs) {
            let p = (lp as f64).exp();
            let lq = model_logp[id as usize] as f64;
            kl += p * (lp as f64 - lq);
            p_top += p;
            q_top += lq.exp();
        }
        let (p_rest, q_rest) = ((1.0 - p_top).max(0.0), (1.0 - q_top).max(1e-30));
        if p_rest > 1e-12 {
            kl += p_rest * (p_rest.ln() - q_rest.ln());
        }
        kl
    }
}

/// Scores one window's rows (`scored_positions(ctx).len() x vocab` logits) of the model,
/// against an optional base given as full log-probability rows or top-k summaries.
pub fn score_window(
    window: &[u32],
    logits: &[f32],
    vocab: usize,
    base: Base<'_>,
) -> Vec<TokenScore> {
    score_log_probs(window, &log_softmax_rows(logits, vocab), base)
}

/// The log-softmax of every row of `logits` (`rows x vocab`), rows in parallel.
pub fn log_softmax_rows(logits: &[f32], vocab: usize) -> Vec<Vec<f32>> {
    logits.par_chunks(vocab).map(log_softmax).collect()
}

/// [`score_window`] from the model's log-probability rows.
pub fn score_log_probs(window: &[u32], rows: &[Vec<f32>], base: Base<'_>) -> Vec<TokenScore> {
    let first = scored_positions(window.len()).start;
    rows.par_iter()
        .enumerate()
        .map(|(i, q)| {
            let target = window[first + i + 1];
            let mut s = TokenScore {
                nll: -(q[target as usize] as f64),
                ..Default::default()
            };
            match &base {
                Base::None => {}
                Base::Rows(rows) => {
                    let p = &rows[i];
                    s.base_nll = Some(-(p[target as usize] as f64));
                    s.kl = Some(kl_exact(p, q));
                    s.same_top1 = Some(argmax(p) == argmax(q));
                }
                Base::Top(tops) => {
                    let t = &tops[i];
                    s.base_nll = Some(-(t.target as f64));
                    s.kl = Some(t.kl_bucketed(q));
                    s.same_top1 = Some(t.ids.first() == Some(&argmax(q)));
                }
            }
            s
        })
        .collect()
}

/// What a window is compared against.
pub enum Base<'a> {
    /// No base: perplexity only.
    None,
    /// The base's full log-probability rows.
    Rows(&'a [Vec<f32>]),
    /// The base's top-k summaries (from a saved logits file).
    Top(&'a [TopLogProbs]),
}

/// Mean and standard error (`sqrt(var / (n - 1))`, population variance) as llama.cpp computes.
fn mean_stderr(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.clone().count() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.clone().sum::<f64>() / n;
    let mean_sq = xs.map(|x| x * x).sum::<f64>() / n;
    let var = (mean_sq - mean * mean).max(0.0);
    (
        mean,
        if n > 1.0 {
            (var / (n - 1.0)).sqrt()
        } else {
            f64::NAN
        },
    )
}

/// Perplexity and, with a base, KL statistics over all scored tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PplSummary {
    /// Tokens scored.
    pub tokens: usize,
    /// Perplexity of the model.
    pub ppl: f64,
    /// Its standard error.
    pub ppl_stderr: f64,
    /// KL statistics, when a base was given.
    pub kl: Option<KlSummary>,
}

/// KL-divergence statistics against a base.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KlSummary {
    /// Mean KL(base‖model) per token (nats).
    pub mean: f64,
    /// Its standard error.
    pub stderr: f64,
    /// Median per-token KL.
    pub median: f64,
    /// 99th percentile per-token KL.
    pub p99: f64,
    /// Largest per-token KL.
    pub max: f64,
    /// Share of positions where base and model pick the same most likely token.
    pub top1_agreement: f64,
    /// Perplexity of the base on the same tokens.
    pub base_ppl: f64,
    /// `ppl(model) - ppl(base)`.
    pub delta_ppl: f64,
    /// Whether KL is exact (base model) or bucketed (base top-k file).
    pub exact: bool,
}

/// Summarises per-token scores.
pub fn summarize(scores: &[TokenScore], exact_kl: bool) -> PplSummary {
    let (mean_nll, se_nll) = mean_stderr(scores.iter().map(|s| s.nll));
    let ppl = mean_nll.exp();
    let kl = if scores.iter().all(|s| s.kl.is_some()) && !scores.is_empty() {
        let mut kls: Vec<f64> = scores.iter().filter_map(|s| s.kl).collect();
        let (mean, stderr) = mean_stderr(kls.iter().copied());
        kls.sort_by(f64::total_cmp);
        let base_ppl = mean_stderr(scores.iter().filter_map(|s| s.base_nll))
            .0
            .exp();
        let agree = scores.iter().filter(|s| s.same_top1 == Some(true)).count();
        Some(KlSummary {
            mean,
            stderr,
            median: percentile(&kls, 0.5),
            p99: percentile(&kls, 0.99),
            max: *kls.last().unwrap_or(&f64::NAN),
            top1_agreement: agree as f64 / scores.len() as f64,
            base_ppl,
            delta_ppl: ppl - base_ppl,
            exact: exact_kl,
        })
    } else {
        None
    };
    PplSummary {
        tokens: scores.len(),
        ppl,
        ppl_stderr: ppl * se_nll,
        kl,
    }
}

const LOGITS_MAGIC: &[u8; 8] = b"QRTLOGP1";

/// Fingerprint of the windows a logits file was made from (sha256 of their token ids).
pub fn windows_fingerprint(windows: &[Vec<u32>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for w in windows {
        h.update((w.len() as u64).to_le_bytes());
        for t in w {
            h.update(t.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// Writes a base model's top-k log-probabilities for every scored position, so that many
/// models can be compared against one base run. Written to a temporary file and renamed.
pub struct BaseLogitsWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    k: usize,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl BaseLogitsWriter {
    /// Starts `path` for `windows` (each of `ctx` tokens), keeping `k` tokens per position.
    pub fn create(
        path: &Path,
        windows: &[Vec<u32>],
        ctx: usize,
        k: usize,
    ) -> Result<Self, EvalError> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::new(file);
        let mut header = Vec::new();
        header.extend_from_slice(LOGITS_MAGIC);
        for v in [ctx as u64, k as u64, windows.len() as u64] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&windows_fingerprint(windows));
        out.write_all(&header).map_err(io_err(&tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            k,
        })
    }

    /// Appends one window's summaries (from the base's log-probability rows).
    pub fn write_window(
        &mut self,
        window: &[u32],
        base_rows: &[Vec<f32>],
    ) -> Result<(), EvalError> {
        let out = self.out.as_mut().expect("open until finish");
        let mut buf = Vec::new();
        for (row, j) in base_rows.iter().zip(scored_positions(window.len())) {
            let t = TopLogProbs::from_row(row, self.k, window[j + 1]);
            buf.extend_from_slice(&t.target.to_le_bytes());
            for (id, lp) in t.ids.iter().zip(&t.logprobs) {
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&lp.to_le_bytes());
            }
        }
        out.write_all(&buf).map_err(io_err(&self.tmp))
    }

    /// Flushes, syncs and renames into place.
    pub fn finish(mut self) -> Result<(), EvalError> {
        let out = self.out.take().expect("open until finish");
        let file = out
            .into_inner()
            .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))
    }
}

impl Drop for BaseLogitsWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a file written by [`BaseLogitsWriter`], checking it matches `windows` and `ctx`.
pub fn read_base_logits(
    path: &Path,
    windows: &[Vec<u32>],
    ctx: usize,
) -> Result<Vec<Vec<TopLogProbs>>, EvalError> {
    let label = path.display().to_string();
    let bad = |reason: String| EvalError::Data {
        path: label.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::new(file);
    let mut header = [0u8; 8 + 24 + 32];
    r.read_exact(&mut header)
        .map_err(|_| bad("too short for a logits file".into()))?;
    if &header[..8] != LOGITS_MAGIC {
        return Err(bad("not a qrt base-logits file (bad magic)".into()));
    }
    let word =
        |i: usize| u64::from_le_bytes(header[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
    let (file_ctx, k, n) = (word(0) as usize, word(1) as usize, word(2) as usize);
    if file_ctx != ctx || n != windows.len() || header[32..] != windows_fingerprint(windows) {
        return Err(bad(format!(
            "made from other windows (ctx {file_ctx}, {n} windows) than this run (ctx {ctx}, {} windows); \
             use the same --data, --ctx and --limit-windows",
            windows.len()
        )));
    }
    let per_pos = 4 + 8 * k as u64;
    let expected = header.len() as u64 + n as u64 * scored_positions(ctx).len() as u64 * per_pos;
    if len != expected {
        return Err(bad(format!(
            "is {len} bytes, expected {expected} (truncated or corrupt)"
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; per_pos as usize];
    for _ in 0..n {
        let mut rows = Vec::new();
        for _ in scored_positions(ctx) {
            r.read_exact(&mut buf).map_err(io_err(path))?;
            let f = |i: usize| f32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            let u = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            rows.push(TopLogProbs {
                target: f(0),
                ids: (0..k).map(|i| u(4 + 8 * i)).collect(),
                logprobs: (0..k).map(|i| f(8 + 8 * i)).collect(),
            });
        }
        out.push(rows);
    }
    Ok(out)
}

/// Where the base distribution of a KL run comes from.
pub enum BaseSource<'a, B: Backend> {
    /// No base: perplexity only.
    None,
    /// A base model run on the same windows (exact KL).
    Model(&'a mut Engine<B>),
    /// Top-k summaries saved by an earlier run (bucketed KL), one `Vec` per window.
    File(Vec<Vec<TopLogProbs>>),
}

/// Runs `model` (and the base) over `windows`, scoring the second half of each; optionally
/// saves the model's own top-k log-probabilities for later KL runs. `progress(done, total)`
/// is called after each window.
pub fn evaluate<B: Backend>(
    model: &mut Engine<B>,
    mut base: BaseSource<'_, B>,
    windows: &[Vec<u32>],
    mut save: Option<&mut BaseLogitsWriter>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<TokenScore>, EvalError> {
    let mut scores = Vec::new();
    let vocab = model.model().config().vocab_size;
    for (w, window) in windows.iter().enumerate() {
        let rows: Vec<u32> = scored_positions(window.len()).map(|r| r as u32).collect();
        if save.is_none() && matches!(base, BaseSource::None) {
            // Perplexity alone needs each target's log-probability, not whole rows: the
            // backend computes them where the logits are.
            let targets: Vec<u32> = rows.iter().map(|&r| window[r as usize + 1]).collect();
            let logp = model.score_targets(window, &rows, &targets)?;
            scores.extend(logp.iter().map(|&q| TokenScore {
                nll: -(q as f64),
                ..Default::default()
            }));
            progress(w + 1, windows.len());
            continue;
        }
        let own = log_softmax_rows(&model.score_rows(window, &rows)?, vocab);
        if let Some(writer) = save.as_deref_mut() {
            writer.write_window(window, &own)?;
        }
        let window_scores = match &mut base {
            BaseSource::None => score_log_probs(window, &own, Base::None),
            BaseSource::Model(engine) => {
                let base_vocab = engine.model().config().vocab_size;
                if base_vocab != vocab {
                    return Err(EvalError::Invalid(format!(
                        "the base model's vocabulary ({base_vocab}) differs from the model's ({vocab})"
                    )));
                }
                let base_rows = log_softmax_rows(&engine.score_rows(window, &rows)?, vocab);
                score_log_probs(window, &own, Base::Rows(&base_rows))
            }
            BaseSource::File(tops) => score_log_probs(window, &own, Base::Top(&tops[w])),
        };
        scores.extend(window_scores);
        progress(w + 1, windows.len());
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_the_remainder_and_take_bos() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(
            windows(&t, 4, None),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        assert_eq!(windows(&t, 4, Some(99))[1], vec![99, 5, 6, 7]);
        assert_eq!(scored_positions(512), 256..511);
    }

    #[test]
    fn kl_of_identical_distributions_is_zero_and_known_values_match() {
        let p = log_softmax(&[1.0, 2.0, 3.0]);
        assert!(kl_exact(&p, &p).abs() < 1e-12);
        // Two-point distributions: KL([0.5,0.5] || [0.9,0.1]) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1).
        let a = [0.5f32.ln(), 0.5f32.ln()];
        let b = [0.9f32.ln(), 0.1f32.ln()];
        let want = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        assert!((kl_exact(&a, &b) - want).abs() < 1e-6);
    }

    #[test]
    fn bucketed_kl_is_exact_with_all_tokens_and_a_lower_bound_otherwise() {
        let p = log_softmax(&[2.0, 1.0, 0.5, -1.0, 0.0]);
        let q = log_softmax(&[1.5, 1.2, 0.1, 0.3, -0.5]);
        let exact = kl_exact(&p, &q);
        let all = TopLogProbs::from_row(&p, 5, 0).kl_bucketed(&q);
        assert!((all - exact).abs() < 1e-6, "{all} vs {exact}");
        let two = TopLogProbs::from_row(&p, 2, 0).kl_bucketed(&q);
        assert!(two <= exact + 1e-9 && two > 0.0, "{two} vs {exact}");
        assert_eq!(TopLogProbs::from_row(&p, 2, 3).ids, vec![0, 1]);
    }

    #[test]
    fn perplexity_of_a_uniform_model_is_the_vocabulary_size() {
        let vocab = 7;
        let window: Vec<u32> = (0..8).map(|i| i % 7).collect();
        let logits = vec![0.25f32; scored_positions(8).len() * vocab];
        let scores = score_window(&window, &logits, vocab, Base::None);
        let s = summarize(&scores, true);
        assert_eq!(s.tokens, 3);
        assert!((s.ppl - 7.0).abs() < 1e-4);
        assert!(s.ppl_stderr.abs() < 1e-6);
    }

    #[test]
    fn base_logits_file_round_trips_and_refuses_other_windows() {
        let dir = std::env::temp_dir().join(format!("qrt-logits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.logits");
        let ws = vec![vec![1u32, 2, 0, 1], vec![2, 2, 1, 0]];
        let rows: Vec<Vec<f32>> = (0..2)
            .map(|i| log_softmax(&[i as f32, 1.0, -1.0]))
            .collect();
        let mut w = BaseLogitsWriter::create(&path, &ws, 4, 2).unwrap();
        for win in &ws {
            w.write_window(win, &rows[..1]).unwrap();
        }
        w.finish().unwrap();
        let back = read_base_logits(&path, &ws, 4).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0][0], TopLogProbs::from_row(&rows[0], 2, ws[0][3]));
        let other = vec![vec![1u32, 2, 0, 2], vec![2, 2, 1, 0]];
        assert!(read_base_logits(&path, &other, 4).is_err());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_base_logits(&path, &ws, 4)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
