//! Calibration: windows of tokenized text, and a layer-by-layer f32 forward pass that exposes
//! the input of every linear layer, for GPTQ's Hessians and AWQ's activation statistics.
//!
//! The forward pass runs on in-memory f32 weights (which AWQ rescales and GPTQ replaces by
//! their quantized values before the next stage runs), with the CPU backend's kernels.

use std::path::Path;

use qrt_format::config::ModelConfig;
use rayon::prelude::*;

use crate::backend::{BatchLayout, HeadGeometry, SeqSpan};
use crate::cpu::attention::{paged_attention, LayerKv};
use crate::cpu::linear::{matmul_nt, DenseRows, Weights};
use crate::cpu::{rms_norm_row, rope_rows, silu_mul_into};
use crate::sampling::Rng;
use crate::tokenizer::Tokenizer;
use crate::RuntimeError;

use super::recipe::Calibration;

/// Reads calibration text: JSONL with a `text` field per line, or plain text whose samples
/// are separated by blank lines.
pub fn read_calibration_texts(path: &Path) -> Result<Vec<String>, RuntimeError> {
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    let raw = std::fs::read_to_string(path).map_err(io)?;
    let jsonl = raw
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('{'));
    let texts: Vec<String> = if jsonl {
        raw.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                    RuntimeError::InvalidRequest(format!(
                        "{}: line {}: not JSON: {e}",
                        path.display(),
                        i + 1
                    ))
                })?;
                v["text"].as_str().map(str::to_owned).ok_or_else(|| {
                    RuntimeError::InvalidRequest(format!(
                        "{}: line {}: no \"text\" field",
                        path.display(),
                        i + 1
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        raw.split("\n\n")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if texts.is_empty() {
        return Err(RuntimeError::InvalidRequest(format!(
            "{}: the calibration file is empty",
            path.display()
        )));
    }
    Ok(texts)
}

/// Draws `samples` windows of `seqlen` tokens at random offsets (seeded) of the
/// concatenated, tokenized calibration text.
pub fn calibration_windows(
    tokenizer: &Tokenizer,
    calib: &Calibration,
) -> Result<Vec<Vec<u32>>, RuntimeError> {
    let texts = read_calibration_texts(&calib.path)?;
    let mut tokens = Vec::new();
    for t in &texts {
        tokens.extend(tokenizer.encode_with(t, false)?);
    }
    if calib.seqlen == 0 || tokens.len() < calib.seqlen {
        return Err(RuntimeError::InvalidRequest(format!(
            "{}: {} tokens is shorter than one calibration window of {} tokens",
            calib.path.display(),
            tokens.len(),
            calib.seqlen
        )));
    }
    let mut rng = Rng::new(calib.seed);
    let span = (tokens.len() - calib.seqlen + 1) as u64;
    Ok((0..calib.samples)
        .map(|_| {
            let start = (rng.next_u64() % span) as usize;
            tokens[start..start + calib.seqlen].to_vec()
        })
        .collect())
}

/// One transformer layer's weights in f32 (`[out, in]` row-major), as calibration uses them.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `input_layernorm.weight`.
    pub input_norm: Vec<f32>,
    /// q/k/v/o projections.
    pub q: Vec<f32>,
    /// See `q`.
    pub k: Vec<f32>,
    /// See `q`.
    pub v: Vec<f32>,
    /// See `q`.
    pub o: Vec<f32>,
    /// Optional biases of q, k, v, o.
    pub biases: [Option<Vec<f32>>; 4],
    /// `post_attention_layernorm.weight`.
    pub post_norm: Vec<f32>,
    /// MLP projections.
    pub gate: Vec<f32>,
    /// See `gate`.
    pub up: Vec<f32>,
    /// See `gate`.
    pub down: Vec<f32>,
}

/// `x @ w^T (+ bias)` for `x` `[rows, k]` and `w` `[n, k]`.
pub fn linear(x: &[f32], rows: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let k = w.len() / n;
    let mut out = vec![0f32; rows * n];
    matmul_nt(x, rows, k, Weights::Dense(DenseRows::F32(w)), n, &mut out);
    if let Some(b) = bias {
        out.par_chunks_mut(n)
            .for_each(|r| r.iter_mut().zip(b).for_each(|(o, b)| *o += b));
    }
    out
}

/// RMSNorm of every row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(w.len())
        .zip(x.par_chunks(w.len()))
        .for_each(|(o, r)| rms_norm_row(r, w, eps, o));
    out
}

/// Hidden states of the calibration windows, `[samples * seqlen, hidden]`.
pub struct Activations {
    /// Row-major hidden states.
    pub x: Vec<f32>,
    /// Windows.
    pub samples: usize,
    /// Tokens per window.
    pub seqlen: usize,
}

impl Activations {
    /// Rows (tokens) in all.
    pub fn rows(&self) -> usize {
        self.samples * self.seqlen
    }
}

/// The layer's attention up to (excluding) `o_proj`: the input of `o_proj`, `[rows, heads * head_dim]`.
pub fn attention_input(
    cfg: &ModelConfig,
    lw: &LayerWeights,
    h: &[f32],
    act: &Activations,
    inv_freq: &[f32],
) -> Vec<f32> {
    let rows = act.rows();
    let (_, qd, kvd, _) = layer_widths(cfg);
    let mut q = linear(h, rows, &lw.q, qd, lw.biases[0].as_deref());
    let mut k = linear(h, rows, &lw.k, kvd, lw.biases[1].as_deref());
    let v = linear(h, rows, &lw.v, kvd, lw.biases[2].as_deref());
    let positions: Vec<u32> = (0..rows).map(|r| (r % act.seqlen) as u32).collect();
    rope_rows(&mut q, &positions, cfg.num_heads, cfg.head_dim, inv_freq);
    rope_rows(&mut k, &positions, cfg.num_kv_heads, cfg.head_dim, inv_freq);
    // Each window is one sequence whose "KV cache" is its own rows: block size 1, identity table.
    let batch = BatchLayout {
        seqs: (0..act.samples)
            .map(|s| SeqSpan {
                start: s * act.seqlen,
                len: act.seqlen,
                past: 0,
                block_table: (s * act.seqlen..(s + 1) * act.seqlen)
                    .map(|r| r as u32)
                    .collect(),
            })
            .collect(),
        positions,
        slots: (0..rows as u32).collect(),
        block_size: 1,
    };
    let heads = HeadGeometry {
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
    };
    let mut out = vec![0f32; rows * qd];
    paged_attention(&q, LayerKv { k: &k, v: &v }, &batch, heads, &mut out);
    out
}

/// `silu(x @ gate^T) * (x @ up^T)`: the input of `down_proj`.
pub fn mlp_hidden(cfg: &ModelConfig, lw: &LayerWeights, h2: &[f32], rows: usize) -> Vec<f32> {
    let gate = linear(h2, rows, &lw.gate, cfg.intermediate_size, None);
    let up = linear(h2, rows, &lw.up, cfg.intermediate_size, None);
    let mut act = vec![0f32; gate.len()];
    silu_mul_into(&gate, &up, &mut act);
    act
}

/// `x += y`.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// Widths of a block: hidden, query (heads x head_dim), key/value, MLP intermediate.
pub(super) fn layer_widths(cfg: &ModelConfig) -> (usize, usize, usize, usize) {
    (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_jsonl_calibration_files() {
        let dir = std::env::temp_dir().join(format!("qrt-calib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("c.txt");
        std::fs::write(&plain, "first passage\nstill first\n\nsecond\n\n\n").unwrap();
        assert_eq!(
            read_calibration_texts(&plain).unwrap(),
            vec!["first passage\nstill first", "second"]
        );
        let jsonl = dir.join("c.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(read_calibration_texts(&jsonl).unwrap(), vec!["a", "b"]);
        std::fs::write(&jsonl, "{\"txt\": \"a\"}\n").unwrap();
        assert!(read_calibration_texts(&jsonl)
            .unwrap_err()
            .to_string()
            .contains("text"));
        std::fs::write(&plain, "\n\n").unwrap();
        assert!(read_calibration_texts(&plain)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(read_calibration_texts(&dir.join("missing.txt")).is_err());
    }
}
