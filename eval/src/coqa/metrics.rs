//! SQuAD exact match and token F1 (`transformers.data.metrics.squad_metrics`) and the CoQA
//! leave-one-out scoring over several gold answers, reproducing lm-evaluation-harness.
//!
//! Python's string semantics are kept where they differ from Rust's defaults: whitespace is
//! `str.isspace` (Unicode `White_Space` plus the ASCII separators U+001C..U+001F), and the
//! article pattern `\b(a|an|the)\b` uses Python's Unicode word characters (letters, numbers and
//! `_`). Lowercasing is Rust's full Unicode mapping, the same as `str.lower()` up to
//! Unicode-version differences.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// The SQuAD normalization: lowercase, drop ASCII punctuation (`string.punctuation`), replace
/// the articles `a`, `an`, `the` (whole words) by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    py_split(&remove_articles(&no_punct))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match after normalization: 1.0 or 0.0.
pub fn exact(gold: &str, pred: &str) -> f64 {
    f64::from(u8::from(normalize_answer(gold) == normalize_answer(pred)))
}

/// Token F1 between the normalized answers (multiset overlap). When either side has no
/// tokens the score is 1.0 if both have none, else 0.0.
pub fn f1(gold: &str, pred: &str) -> f64 {
    let gold_norm = normalize_answer(gold);
    let pred_norm = normalize_answer(pred);
    let gold_toks: Vec<&str> = py_split(&gold_norm).collect();
    let pred_toks: Vec<&str> = py_split(&pred_norm).collect();
    if gold_toks.is_empty() || pred_toks.is_empty() {
        return f64::from(u8::from(gold_toks == pred_toks));
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for tok in &gold_toks {
        *gold_counts.entry(tok).or_default() += 1;
    }
    let mut same = 0usize;
    for tok in &pred_toks {
        if let Some(count) = gold_counts.get_mut(tok).filter(|c| **c > 0) {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred_toks.len() as f64;
    let recall = same as f64 / gold_toks.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// A story's scores.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Scores {
    /// Exact match, in [0, 1].
    pub em: f64,
    /// Token F1, in [0, 1].
    pub f1: f64,
}

/// CoQA's `compute_scores`: with several golds, the average over each gold left out of the
/// best score against the others; with one gold, the score against it. No golds scores 0.
pub fn score(golds: &[String], pred: &str) -> Scores {
    let best = |metric: fn(&str, &str) -> f64, skip: Option<usize>| {
        golds
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != skip)
            .map(|(_, gold)| metric(gold, pred))
            .fold(0.0, f64::max)
    };
    let (mut em_sum, mut f1_sum) = (0.0, 0.0);
    if golds.len() > 1 {
        for i in 0..golds.len() {
            em_sum += best(exact, Some(i));
            f1_sum += best(f1, Some(i));
        }
    } else {
        em_sum += best(exact, None);
        f1_sum += best(f1, None);
    }
    let n = golds.len().max(1) as f64;
    Scores {
        em: em_sum / n,
        f1: f1_sum / n,
    }
}

/// The answer in a generation: `output.strip().split("\n")[0]`.
pub fn prediction_from_output(generated: &str) -> String {
    let stripped = generated.trim_matches(py_space);
    stripped.split('\n').next().unwrap_or_default().to_string()
}

/// Python's `str.isspace`.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` without arguments.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|t| !t.is_empty())
}

/// A word character of Python's `re` in Unicode mode (`str.isalnum()` or `_`).
fn is_word_char(c: char) -> bool {
    static WORD: OnceLock<Regex> = OnceLock::new();
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let word = WORD.get_or_init(|| Regex::new(r"\A[\p{L}\p{N}_]\z").expect("a valid pattern"));
    word.is_match(c.encode_utf8(&mut [0; 4]))
}

/// The alternatives of `(a|an|the)`, in the order Python's `re` tries them.
const ARTICLES: [&[char]; 3] = [&['a'], &['a', 'n'], &['t', 'h', 'e']];

/// `re.sub(r"\b(a|an|the)\b", " ", text)` with Python's word boundaries: scanning left to
/// right, the alternatives tried in order at each position, matches not overlapping.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let word_starts = matches!(chars[i], 'a' | 't') && (i == 0 || !is_word_char(chars[i - 1]));
        let article = ARTICLES.iter().filter(|_| word_starts).find(|a| {
            chars[i..].starts_with(a)
                && !matches!(chars.get(i + a.len()), Some(&c) if is_word_char(c))
        });
        match article {
            Some(a) => {
                out.push(' ');
                i += a.len();
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}
