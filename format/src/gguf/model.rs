//! Model-level views of a GGUF file: the [`ModelConfig`] from the
//! `<arch>.*` keys, the `tokenizer.ggml.*` vocabulary and the chat template.

use super::{GgufArray, GgufFile, GgufValue};
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::source_error::SourceError;

/// A tokenizer vocabulary stored in GGUF `tokenizer.ggml.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE), `"llama"` (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (e.g. `"smollm"`, `"llama-bpe"`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token strings by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: llama.cpp token types by id (1 normal,
    /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); empty if absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: BPE merges, `"a b"`; empty if absent.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece scores by id; empty if absent.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default: true for `"llama"` vocabularies).
    pub add_bos: bool,
    /// `tokenizer.ggml.add_space_prefix` (default: true for `"llama"` vocabularies).
    pub add_space_prefix: bool,
}

/// Typed metadata lookups that name the key and the file in errors.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl<'a> Meta<'a> {
    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> SourceError {
        SourceError::malformed(
            self.file.path(),
            format!(
                "metadata `{key}` has type {}, expected {expected}",
                v.type_name()
            ),
        )
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, SourceError> {
        self.file
            .get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, SourceError> {
        self.u64(key)?
            .map(|v| {
                usize::try_from(v).map_err(|_| {
                    SourceError::malformed(
                        self.file.path(),
                        format!("metadata `{key}` = {v} is too large"),
                    )
                })
            })
            .transpose()
    }

    fn usize_req(&self, key: &str) -> Result<usize, SourceError> {
        self.usize(key)?
            .ok_or_else(|| SourceError::missing(self.file.path(), format!("metadata key `{key}`")))
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, SourceError> {
        self.u64(key)?
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    SourceError::malformed(
                        self.file.path(),
                        format!("metadata `{key}` = {v} is not a u32"),
                    )
                })
            })
            .transpose()
    }

    fn f32(&self, key: &str) -> Result<Option<f32>, SourceError> {
        self.file
            .get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.wrong_type(key, v, "a float"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, SourceError> {
        self.file
            .get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong_type(key, v, "a bool")))
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, SourceError> {
        self.file
            .get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(key, v, "a string"))
            })
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a GgufArray>, SourceError> {
        self.file
            .get(key)
            .map(|v| {
                v.as_array()
                    .ok_or_else(|| self.wrong_type(key, v, "an array"))
            })
            .transpose()
    }
}

/// The architecture named by `general.architecture`, with the raw string.
///
/// GGUF files of Mistral models use `llama`; `qwen2` is the other supported value.
pub fn gguf_architecture(file: &GgufFile) -> Result<(Architecture, &str), SourceError> {
    let arch = Meta { file }
        .str("general.architecture")?
        .ok_or_else(|| SourceError::missing(file.path(), "metadata key `general.architecture`"))?;
    match arch {
        "llama" => Ok((Architecture::Llama, arch)),
        "qwen2" => Ok((Architecture::Qwen2, arch)),
        other => Err(SourceError::unsupported(
            file.path(),
            format!("architecture `{other}` (supported GGUF architectures: llama, qwen2)"),
        )),
    }
}

/// Builds the [`ModelConfig`] from `<arch>.*` and `tokenizer.ggml.*` metadata.
///
/// `head_dim` is `<arch>.attention.key_length`, else `embedding_length /
/// head_count`; `<arch>.rope.dimension_count` and `value_length`, when present,
/// must equal it (partial RoPE is not supported).
/// `tie_word_embeddings` is true when there is no `output.weight` tensor;
/// `attention_bias` is true for qwen2, and for llama when `blk.0.attn_q.bias`
/// exists. Llama 3 RoPE scaling, which llama.cpp's converter stores only as
/// the `rope_freqs.weight` tensor, is recovered from that tensor (and
/// checked to reproduce it). The result is validated.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig, SourceError> {
    let m = Meta { file };
    let (architecture, a) = gguf_architecture(file)?;
    let hidden_size = m.usize_req(&format!("{a}.embedding_length"))?;
    let num_heads = m.usize_req(&format!("{a}.attention.head_count"))?;
    if num_heads == 0 {
        return Err(SourceError::config(
            file.path(),
            format!("`{a}.attention.head_count` is 0"),
        ));
    }
    let num_kv_heads = m
        .usize(&format!("{a}.attention.head_count_kv"))?
        .unwrap_or(num_heads);
    let key_length = m.usize(&format!("{a}.attention.key_length"))?;
    let value_length = m.usize(&format!("{a}.attention.value_length"))?;
    let rope_dims = m.usize(&format!("{a}.rope.dimension_count"))?;
    // As llama.cpp: the head width is `key_length`, else hidden / heads; the
    // rotary width must equal it for these architectures.
    let head_dim = key_length.unwrap_or(hidden_size / num_heads);
    for (key, v) in [
        ("attention.key_length", key_length),
        ("attention.value_length", value_length),
        ("rope.dimension_count", rope_dims),
    ] {
        if let Some(v) = v.filter(|&v| v != head_dim) {
            return Err(SourceError::unsupported(
                file.path(),
                format!("`{a}.{key}` = {v} differs from the head width {head_dim} (partial RoPE / asymmetric heads)"),
            ));
        }
    }

    let n_tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .map(GgufArray::len);
    let vocab_size = match m.usize(&format!("{a}.vocab_size"))? {
        Some(v) => v,
        None => match (n_tokens, file.tensor("token_embd.weight")) {
            (Some(n), _) => n,
            (None, Some(t)) => t
                .shape()
                .first()
                .and_then(|&r| usize::try_from(r).ok())
                .unwrap_or(0),
            (None, None) => {
                return Err(SourceError::missing(
                    file.path(),
                    format!("metadata key `{a}.vocab_size`"),
                ))
            }
        },
    };
    let rope_theta = m.f32(&format!("{a}.rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = rope_scaling(file, a, head_dim, rope_theta)?;

    let mut eos_token_ids = Vec::new();
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = m.u32(&format!("tokenizer.ggml.{key}"))? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let cfg = ModelConfig {
        architecture,
        hidden_size,
        intermediate_size: m.usize_req(&format!("{a}.feed_forward_length"))?,
        num_layers: m.usize_req(&format!("{a}.block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        max_position_embeddings: m.usize_req(&format!("{a}.context_length"))?,
        rms_norm_eps: m
            .f32(&format!("{a}.attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                SourceError::missing(
                    file.path(),
                    format!("metadata key `{a}.attention.layer_norm_rms_epsilon`"),
                )
            })?,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: architecture == Architecture::Qwen2
            || file.tensor("blk.0.attn_q.bias").is_some(),
        bos_token_id: m.u32("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    cfg.validate()
        .map_err(|msg| SourceError::config(file.path(), msg))?;
    Ok(cfg)
}

/// RoPE scaling from `<arch>.rope.scaling.*` (or the legacy
/// `<arch>.rope.scale_linear`), or recovered from `rope_freqs.weight`.
fn rope_scaling(
    file: &GgufFile,
    a: &str,
    head_dim: usize,
    theta: f32,
) -> Result<RopeScaling, SourceError> {
    let m = Meta { file };
    let factor_key = format!("{a}.rope.scaling.factor");
    let from_meta = match m.str(&format!("{a}.rope.scaling.type"))? {
        None | Some("none") => match m.f32(&format!("{a}.rope.scale_linear"))? {
            Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
        Some("linear") => RopeScaling::Linear {
            factor: m.f32(&factor_key)?.ok_or_else(|| SourceError::missing(file.path(), format!("metadata key `{factor_key}`")))?,
        },
        Some(other) => {
            return Err(SourceError::unsupported(
                file.path(),
                format!("RoPE scaling type `{other}` (supported: none, linear, llama3 via rope_freqs.weight)"),
            ))
        }
    };
    if file.tensor("rope_freqs.weight").is_none() {
        return Ok(from_meta);
    }
    if from_meta != RopeScaling::None {
        return Err(SourceError::unsupported(
            file.path(),
            "both `rope_freqs.weight` and RoPE scaling metadata are present",
        ));
    }
    let factors = file.dequantize("rope_freqs.weight")?;
    let original = m
        .u64(&format!("{a}.rope.scaling.original_context_length"))?
        .unwrap_or(8192);
    recover_llama3(&factors, head_dim, theta, original).map_err(|msg| {
        SourceError::tensor(
            file.path(),
            "rope_freqs.weight",
            format!("not a llama3 RoPE scaling: {msg}"),
        )
    })
}

/// The per-frequency divisors llama.cpp's converter stores in
/// `rope_freqs.weight` for Hugging Face `rope_type: "llama3"`.
pub fn llama3_rope_factors(
    head_dim: usize,
    theta: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original: u64,
) -> Vec<f32> {
    let old = original as f64;
    let (low, high, factor) = (
        low_freq_factor as f64,
        high_freq_factor as f64,
        factor as f64,
    );
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// Recovers `RopeScaling::Llama3` parameters from stored divisors: `factor`
/// is the largest divisor; `low_freq_factor` and `high_freq_factor` are
/// fitted (least squares) to the blended band, or taken as Hugging Face's
/// defaults (1, 4) when the band has fewer than two points. The recovered
/// parameters must reproduce every divisor to 1e-3 relative error.
fn recover_llama3(
    factors: &[f32],
    head_dim: usize,
    theta: f32,
    original: u64,
) -> Result<RopeScaling, String> {
    if factors.len() != head_dim / 2 {
        return Err(format!(
            "{} values, expected head_dim / 2 = {}",
            factors.len(),
            head_dim / 2
        ));
    }
    if factors.iter().any(|f| !(f.is_finite() && *f >= 1.0 - 1e-6)) {
        return Err("values must be finite and at least 1".into());
    }
    let factor = factors.iter().copied().fold(1.0f32, f32::max);
    if factor <= 1.0 + 1e-6 {
        return Ok(RopeScaling::None);
    }
    let old = original as f64;
    let f = factor as f64;
    // In the blend band, s = (factor / r - 1) / (factor - 1) = old·x/(high-low) - low/(high-low)
    // with x = 1 / wavelength: fit s = α·x - β.
    let points: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|(_, &r)| (r as f64) > 1.0 + 1e-4 && (r as f64) < f * (1.0 - 1e-4))
        .map(|(i, &r)| {
            let freq = 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64);
            (
                freq / (2.0 * std::f64::consts::PI),
                (f / r as f64 - 1.0) / (f - 1.0),
            )
        })
        .collect();
    let (mut low, mut high) = (1.0f64, 4.0f64);
    if points.len() >= 2 {
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        if sxx > 0.0 && sxy > 0.0 {
            let alpha = sxy / sxx;
            let beta = alpha * mx - my;
            let span = old / alpha;
            low = beta * span;
            high = low + span;
        }
    }
    let round = |v: f64| {
        let r = (v * 1e4).round() / 1e4;
        (if (r - v).abs() < 1e-3 { r } else { v }) as f32
    };
    let (low, high) = (round(low), round(high));
    let expect = llama3_rope_factors(head_dim, theta, factor, low, high, original);
    for (i, (&got, &want)) in factors.iter().zip(&expect).enumerate() {
        if ((got - want) / want).abs() > 1e-3 {
            return Err(format!(
                "value {i} is {got}, but factor {factor}, low_freq_factor {low}, high_freq_factor {high}, original context {original} give {want}"
            ));
        }
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original,
    })
}

/// Reads the `tokenizer.ggml.*` vocabulary. `tokenizer.ggml.model` and
/// `tokenizer.ggml.tokens` are required; per-token arrays must match the
/// token count and special token ids must be inside the vocabulary.
pub fn vocab_from_gguf(file: &GgufFile) -> Result<GgufVocab, SourceError> {
    let m = Meta { file };
    let path = file.path();
    let model = m
        .str("tokenizer.ggml.model")?
        .ok_or_else(|| {
            SourceError::missing(path, "tokenizer (metadata key `tokenizer.ggml.model`)")
        })?
        .to_string();
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = m.array(tokens_key)?.ok_or_else(|| {
        SourceError::missing(
            path,
            format!("tokenizer vocabulary (metadata key `{tokens_key}`)"),
        )
    })?;
    let tokens = tokens
        .as_strings()
        .ok_or_else(|| {
            SourceError::malformed(
                path,
                format!(
                    "`{tokens_key}` is array<{}>, expected array<string>",
                    tokens.element_type_name()
                ),
            )
        })?
        .to_vec();
    let n = tokens.len();
    let per_token_len = |key: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(SourceError::malformed(
                path,
                format!("`{key}` has {len} entries for {n} tokens"),
            ))
        }
    };

    let types_key = "tokenizer.ggml.token_type";
    let token_types = match m.array(types_key)? {
        None => Vec::new(),
        Some(arr) => {
            let v: Option<Vec<i32>> = arr
                .to_i64s()
                .and_then(|v| v.into_iter().map(|x| i32::try_from(x).ok()).collect());
            let v = v.ok_or_else(|| {
                SourceError::malformed(
                    path,
                    format!(
                        "`{types_key}` is array<{}>, expected i32 values",
                        arr.element_type_name()
                    ),
                )
            })?;
            per_token_len(types_key, v.len())?;
            v
        }
    };
    let merges_key = "tokenizer.ggml.merges";
    let merges = match m.array(merges_key)? {
        None => Vec::new(),
        Some(arr) => arr
            .as_strings()
            .ok_or_else(|| {
                SourceError::malformed(
                    path,
                    format!(
                        "`{merges_key}` is array<{}>, expected array<string>",
                        arr.element_type_name()
                    ),
                )
            })?
            .to_vec(),
    };
    let scores_key = "tokenizer.ggml.scores";
    let scores = match m.array(scores_key)? {
        None => Vec::new(),
        Some(arr) => {
            let v = arr.to_f32s().ok_or_else(|| {
                SourceError::malformed(
                    path,
                    format!(
                        "`{scores_key}` is array<{}>, expected floats",
                        arr.element_type_name()
                    ),
                )
            })?;
            per_token_len(scores_key, v.len())?;
            v
        }
    };
    let special = |name: &str| -> Result<Option<u32>, SourceError> {
        let key = format!("tokenizer.ggml.{name}");
        match m.u32(&key)? {
            Some(id) if id as usize >= n => Err(SourceError::malformed(
                path,
                format!("`{key}` = {id} is outside the vocabulary of {n} tokens"),
            )),
            id => Ok(id),
        }
    };
    let is_spm = model == "llama";
    Ok(GgufVocab {
        pre: m.str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens,
        token_types,
        merges,
        scores,
        bos: special("bos_token_id")?,
        eos: special("eos_token_id")?,
        unk: special("unknown_token_id")?,
        pad: special("padding_token_id")?,
        add_bos: m.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(is_spm),
        add_space_prefix: m.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(is_spm),
        model,
    })
}

/// `tokenizer.chat_template`, if present and a string.
pub fn chat_template(file: &GgufFile) -> Option<String> {
    file.get("tokenizer.chat_template")
        .and_then(GgufValue::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_recovered() {
        for (hd, theta, factor, low, high, orig) in [
            (128, 500000.0, 8.0, 1.0, 4.0, 8192),
            (64, 500000.0, 32.0, 1.0, 4.0, 8192),
            (128, 500000.0, 16.0, 2.0, 8.0, 4096),
        ] {
            let r = llama3_rope_factors(hd, theta, factor, low, high, orig);
            let got = recover_llama3(&r, hd, theta, orig).unwrap();
            assert_eq!(
                got,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: orig
                }
            );
        }
        assert_eq!(
            recover_llama3(&[1.0; 32], 64, 10000.0, 8192),
            Ok(RopeScaling::None)
        );
        assert!(recover_llama3(&[1.0; 31], 64, 10000.0, 8192).is_err());
        assert!(recover_llama3(&[f32::NAN; 32], 64, 10000.0, 8192).is_err());
        let mut bumpy = llama3_rope_factors(64, 500000.0, 8.0, 1.0, 4.0, 8192);
        bumpy[3] = 2.5;
        assert!(recover_llama3(&bumpy, 64, 500000.0, 8192).is_err());
    }
}
