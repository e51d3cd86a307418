//! Running CoQA: batched greedy generation for many stories at once, scoring, summaries,
//! and paired comparison of two runs.

use std::collections::BTreeMap;

use qrt_runtime::backend::Backend;
use qrt_runtime::engine::{Engine, SeqRequest};
use qrt_runtime::sampling::SamplingParams;
use qrt_runtime::textgen::{generate, GenerationEvent};
use qrt_runtime::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use super::data::CoqaDoc;
use super::metrics::{prediction_from_output, score};
use super::prompt::{build_prompt, gold_answers, MAX_NEW_TOKENS, STOP_SEQUENCES};
use crate::stats::{bootstrap_ci, mean, paired_bootstrap_ci};
use crate::EvalError;

/// One story's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocResult {
    /// Story id.
    pub id: String,
    /// Domain (`source`).
    pub source: String,
    /// Prompt tokens after truncation.
    pub prompt_tokens: usize,
    /// Whether the prompt was left-truncated to fit the context.
    pub truncated: bool,
    /// The model's answer: output stripped, first line.
    pub prediction: String,
    /// Gold answers.
    pub golds: Vec<String>,
    /// Exact match (leave-one-out over golds).
    pub em: f64,
    /// Token F1 (leave-one-out over golds).
    pub f1: f64,
}

/// Encodes a story's prompt as the harness does (no special tokens added), keeping the last
/// `max_context - MAX_NEW_TOKENS` tokens.
pub fn prompt_tokens(
    tokenizer: &Tokenizer,
    doc: &CoqaDoc,
    max_context: usize,
) -> Result<(Vec<u32>, bool), EvalError> {
    let ids = tokenizer.encode_with(&build_prompt(doc), false)?;
    let budget = max_context.saturating_sub(MAX_NEW_TOKENS);
    if budget == 0 {
        return Err(EvalError::Invalid(format!(
            "the model's context ({max_context} tokens) leaves no room for a prompt and {MAX_NEW_TOKENS} new tokens"
        )));
    }
    if ids.len() > budget {
        Ok((ids[ids.len() - budget..].to_vec(), true))
    } else {
        Ok((ids, false))
    }
}

/// Every story's prompt tokens and whether they were cut ([`prompt_tokens`]).
pub fn coqa_prompts(
    tokenizer: &Tokenizer,
    docs: &[CoqaDoc],
    max_context: usize,
) -> Result<Vec<(Vec<u32>, bool)>, EvalError> {
    docs.iter()
        .map(|doc| prompt_tokens(tokenizer, doc, max_context))
        .collect()
}

/// Generates answers for every story (greedy, up to 256 tokens, stopping at `"\nQ:"` or EOS),
/// all queued at once so that the engine batches them; `progress(done, total)` after each
/// story ends.
pub fn run_coqa<B: Backend>(
    engine: &mut Engine<B>,
    tokenizer: &Tokenizer,
    docs: &[CoqaDoc],
    eos: &[u32],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<DocResult>, EvalError> {
    let max_context = engine.model().config().max_position_embeddings;
    let prompts = coqa_prompts(tokenizer, docs, max_context)?;
    run_coqa_prompts(engine, tokenizer, docs, prompts, eos, progress)
}

/// [`run_coqa`] with the prompts already made by [`coqa_prompts`] (one per story).
pub fn run_coqa_prompts<B: Backend>(
    engine: &mut Engine<B>,
    tokenizer: &Tokenizer,
    docs: &[CoqaDoc],
    prompts: Vec<(Vec<u32>, bool)>,
    eos: &[u32],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<DocResult>, EvalError> {
    let (requests, truncated): (Vec<SeqRequest>, Vec<bool>) = prompts
        .into_iter()
        .map(|(prompt, cut)| {
            let request = SeqRequest {
                prompt,
                max_new_tokens: MAX_NEW_TOKENS,
                sampling: SamplingParams::GREEDY,
                seed: 0,
            };
            (request, cut)
        })
        .unzip();
    let stop: Vec<String> = STOP_SEQUENCES.iter().map(|s| s.to_string()).collect();
    let mut done = 0;
    let (completions, _) = generate(engine, tokenizer, requests, eos, &stop, |event| {
        if let GenerationEvent::Done(_) = event {
            done += 1;
            progress(done, docs.len());
        }
    })?;
    Ok(docs
        .iter()
        .zip(completions)
        .zip(truncated)
        .map(|((doc, c), truncated)| {
            let golds = gold_answers(doc);
            let prediction = prediction_from_output(&c.text);
            let s = score(&golds, &prediction);
            DocResult {
                id: doc.id.clone(),
                source: doc.source.clone(),
                prompt_tokens: c.prompt_tokens,
                truncated,
                prediction,
                golds,
                em: s.em,
                f1: s.f1,
            }
        })
        .collect())
}

/// A metric with its 95% bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Mean over stories (0-1).
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
}

/// Scores of one domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainRow {
    /// The `source` field.
    pub source: String,
    /// Stories.
    pub n: usize,
    /// Mean exact match.
    pub em: f64,
    /// Mean F1.
    pub f1: f64,
}

/// A CoQA run's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoqaSummary {
    /// Stories.
    pub n: usize,
    /// Exact match.
    pub em: Estimate,
    /// F1.
    pub f1: Estimate,
    /// Per domain, sorted by name.
    pub per_domain: Vec<DomainRow>,
    /// Bootstrap resamples behind the intervals.
    pub bootstrap_resamples: usize,
    /// Their seed.
    pub bootstrap_seed: u64,
}

fn estimate(xs: &[f64], resamples: usize, seed: u64) -> Estimate {
    let (ci_low, ci_high) = bootstrap_ci(xs, resamples, seed);
    Estimate {
        mean: mean(xs),
        ci_low,
        ci_high,
    }
}

/// Means, bootstrap intervals (fixed seed) and the per-domain table.
pub fn summarize(results: &[DocResult], resamples: usize, seed: u64) -> CoqaSummary {
    let em: Vec<f64> = results.iter().map(|r| r.em).collect();
    let f1: Vec<f64> = results.iter().map(|r| r.f1).collect();
    let mut domains: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for r in results {
        let e = domains.entry(&r.source).or_default();
        e.0 += 1;
        e.1 += r.em;
        e.2 += r.f1;
    }
    CoqaSummary {
        n: results.len(),
        em: estimate(&em, resamples, seed),
        f1: estimate(&f1, resamples, seed),
        per_domain: domains
            .into_iter()
            .map(|(source, (n, em, f1))| DomainRow {
                source: source.to_string(),
                n,
                em: em / n as f64,
                f1: f1 / n as f64,
            })
            .collect(),
        bootstrap_resamples: resamples,
        bootstrap_seed: seed,
    }
}

/// Per-story scores kept in a results file, for paired comparisons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocScore {
    /// Story id.
    pub id: String,
    /// Exact match.
    pub em: f64,
    /// F1.
    pub f1: f64,
}

/// Paired difference `B - A` of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairedDiff {
    /// Mean of A.
    pub a: f64,
    /// Mean of B.
    pub b: f64,
    /// Mean of B - A.
    pub diff: f64,
    /// 95% paired-bootstrap interval of the difference.
    pub ci_low: f64,
    /// Upper end.
    pub ci_high: f64,
}

impl PairedDiff {
    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.ci_low > 0.0 || self.ci_high < 0.0
    }
}

/// Paired comparison of two runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Stories in both runs.
    pub n: usize,
    /// Stories only in one run (left out).
    pub unmatched: usize,
    /// Exact match.
    pub em: PairedDiff,
    /// F1.
    pub f1: PairedDiff,
}

/// Compares two runs story by story (matched by id) with a paired bootstrap.
pub fn compare(
    a: &[DocScore],
    b: &[DocScore],
    resamples: usize,
    seed: u64,
) -> Result<Comparison, EvalError> {
    let by_id: BTreeMap<&str, &DocScore> = b.iter().map(|d| (d.id.as_str(), d)).collect();
    let pairs: Vec<(&DocScore, &DocScore)> = a
        .iter()
        .filter_map(|x| by_id.get(x.id.as_str()).map(|y| (x, *y)))
        .collect();
    if pairs.is_empty() {
        return Err(EvalError::Invalid("the two runs share no story".into()));
    }
    let diff = |f: fn(&DocScore) -> f64| {
        let xa: Vec<f64> = pairs.iter().map(|(x, _)| f(x)).collect();
        let xb: Vec<f64> = pairs.iter().map(|(_, y)| f(y)).collect();
        let (ci_low, ci_high) = paired_bootstrap_ci(&xa, &xb, resamples, seed);
        PairedDiff {
            a: mean(&xa),
            b: mean(&xb),
            diff: mean(&xb) - mean(&xa),
            ci_low,
            ci_high,
        }
    };
    Ok(Comparison {
        n: pairs.len(),
        unmatched: a.len() + b.len() - 2 * pairs.len(),
        em: diff(|d| d.em),
        f1: diff(|d| d.f1),
    })
}
