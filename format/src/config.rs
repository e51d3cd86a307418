//! The model hyper-parameters the runtime needs, read from a Hugging Face
//! `config.json` or (see [`crate::gguf::model`]) from GGUF metadata.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::source_error::SourceError;

/// A supported decoder architecture. All three are the pre-norm RMSNorm /
/// RoPE / SwiGLU transformer; they differ in attention biases and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama (also SmolLM and most llama-derived checkpoints).
    Llama,
    /// Mistral.
    Mistral,
    /// Qwen2 / Qwen2.5 (biases on q, k and v).
    Qwen2,
}

impl Architecture {
    /// The Hugging Face `model_type` / GGUF `general.architecture` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }

    fn from_model_type(s: &str) -> Option<Self> {
        match s {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    fn from_hf_class(s: &str) -> Option<Self> {
        match s {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

/// RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama 3.1 scaling: low frequencies divided by `factor`, high ones
    /// kept, a smooth blend in between (Hugging Face `rope_type: "llama3"`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: u64,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
}

/// The hyper-parameters of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when < `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Whether the output projection reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether the attention projections have biases (q/k/v for Qwen2;
    /// q/k/v/o for Llama with `attention_bias: true`).
    pub attention_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
}

/// Reads typed fields from a JSON object, naming the key in errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: PathBuf,
    scope: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> SourceError {
        SourceError::config(&self.path, format!("`{}{key}` {msg}", self.scope))
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn u64_opt(&self, key: &str) -> Result<Option<u64>, SourceError> {
        self.get(key)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    self.err(key, format!("must be a non-negative integer, got {v}"))
                })
            })
            .transpose()
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>, SourceError> {
        self.u64_opt(key)?
            .map(|v| usize::try_from(v).map_err(|_| self.err(key, format!("{v} is too large"))))
            .transpose()
    }

    fn usize_req(&self, key: &str) -> Result<usize, SourceError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>, SourceError> {
        self.get(key)
            .map(|v| match v.as_f64() {
                Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(x as f32),
                _ => Err(self.err(key, format!("must be a finite number, got {v}"))),
            })
            .transpose()
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, SourceError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.err(key, format!("must be a boolean, got {v}")))
            })
            .transpose()
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>, SourceError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.err(key, format!("must be a string, got {v}")))
            })
            .transpose()
    }

    fn token_id(&self, key: &str, v: &Value) -> Result<u32, SourceError> {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.err(key, format!("must hold token ids (u32), got {v}")))
    }

    /// An integer, a list of integers, or absent/null.
    fn token_ids(&self, key: &str) -> Result<Vec<u32>, SourceError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| self.token_id(key, v)).collect(),
            Some(v) => Ok(vec![self.token_id(key, v)?]),
        }
    }
}

/// Per-architecture defaults of the Hugging Face config classes.
struct Defaults {
    max_position_embeddings: usize,
    rms_norm_eps: f32,
}

fn defaults(arch: Architecture) -> Defaults {
    match arch {
        Architecture::Llama => Defaults {
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
        },
        Architecture::Mistral => Defaults {
            max_position_embeddings: 4096 * 32,
            rms_norm_eps: 1e-6,
        },
        Architecture::Qwen2 => Defaults {
            max_position_embeddings: 32768,
            rms_norm_eps: 1e-6,
        },
    }
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`; `label` (normally the file's
    /// path) names it in errors.
    ///
    /// Handles `model_type` `llama` / `mistral` / `qwen2` (or, without
    /// `model_type`, `architectures` `LlamaForCausalLM` / `MistralForCausalLM`
    /// / `Qwen2ForCausalLM`); `rope_scaling` with `rope_type` (or `type`)
    /// `default`, `llama3` or `linear` (also inside transformers 5's
    /// `rope_parameters`); `eos_token_id` as an integer or a list; `head_dim`
    /// defaulting to `hidden_size / num_attention_heads`. Qwen2 always has
    /// q/k/v biases; Llama has them when `attention_bias` is true.
    /// `tie_word_embeddings` defaults to false; whether a missing `lm_head`
    /// implies tying is left to the caller. The result is [`validate`](Self::validate)d.
    pub fn from_hf_config_json(text: &str, label: &str) -> Result<Self, SourceError> {
        let path = PathBuf::from(label);
        let root: Value = serde_json::from_str(text).map_err(|source| SourceError::Json {
            path: path.clone(),
            source,
        })?;
        let obj = root
            .as_object()
            .ok_or_else(|| SourceError::config(&path, "the top level is not a JSON object"))?;
        let f = Fields {
            obj,
            path: path.clone(),
            scope: "",
        };

        let architecture = hf_architecture(&f)?;
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(f.err(
                    "hidden_act",
                    format!("is `{act}`; only `silu` is supported"),
                ));
            }
        }
        let d = defaults(architecture);
        let hidden_size = f.usize_req("hidden_size")?;
        let num_heads = f.usize_req("num_attention_heads")?;
        if num_heads == 0 {
            return Err(f.err("num_attention_heads", "must be nonzero"));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(h) => h,
            None => hidden_size / num_heads,
        };
        let rope = rope_fields(&f)?;
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Llama | Architecture::Mistral => {
                f.bool_opt("attention_bias")?.unwrap_or(false)
            }
        };
        let bos = f.token_ids("bos_token_id")?;
        if bos.len() > 1 {
            return Err(f.err("bos_token_id", "must be a single token id"));
        }
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_layers: f.usize_req("num_hidden_layers")?,
            num_heads,
            num_kv_heads: f.usize_opt("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            vocab_size: f.usize_req("vocab_size")?,
            max_position_embeddings: f
                .usize_opt("max_position_embeddings")?
                .unwrap_or(d.max_position_embeddings),
            rms_norm_eps: f.f32_opt("rms_norm_eps")?.unwrap_or(d.rms_norm_eps),
            rope_theta: rope.0,
            rope_scaling: rope.1,
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            bos_token_id: bos.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
        };
        cfg.validate()
            .map_err(|msg| SourceError::config(&path, msg))?;
        Ok(cfg)
    }

    /// Checks internal consistency: nonzero dimensions, query heads a
    /// multiple of key/value heads, even head width (RoPE rotates pairs),
    /// positive finite epsilon and RoPE parameters, special tokens inside the
    /// vocabulary.
    ///
    /// `num_heads * head_dim` need not equal `hidden_size` (an explicit
    /// `head_dim`, as in Mistral Nemo, is allowed).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must be nonzero"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        for (name, dims) in [
            (
                "num_heads * head_dim * hidden_size",
                [self.num_heads, self.head_dim, self.hidden_size],
            ),
            (
                "vocab_size * hidden_size",
                [self.vocab_size, self.hidden_size, 1],
            ),
            (
                "intermediate_size * hidden_size",
                [self.intermediate_size, self.hidden_size, 1],
            ),
        ] {
            if dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return Err(format!("{name} overflows"));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be positive and finite",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "rope_theta {} must be positive and finite",
                self.rope_theta
            ));
        }
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(format!(
                        "linear rope scaling factor {factor} must be positive and finite"
                    ));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let ok = [factor, low_freq_factor, high_freq_factor]
                    .iter()
                    .all(|x| x.is_finite() && *x > 0.0);
                if !ok
                    || low_freq_factor >= high_freq_factor
                    || original_max_position_embeddings == 0
                {
                    return Err(format!(
                        "llama3 rope scaling needs positive finite factors with low_freq_factor < high_freq_factor and a nonzero original context: factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original_max_position_embeddings {original_max_position_embeddings}"
                    ));
                }
            }
        }
        for (name, id) in self
            .bos_token_id
            .iter()
            .map(|&b| ("bos_token_id", b))
            .chain(self.eos_token_ids.iter().map(|&e| ("eos_token_id", e)))
        {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "{name} {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }
}

fn hf_architecture(f: &Fields<'_>) -> Result<Architecture, SourceError> {
    const SUPPORTED: &str = "supported: llama, mistral, qwen2";
    let classes: Vec<&str> = match f.get("architectures") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| f.err("architectures", format!("must list strings, got {v}")))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(f.err("architectures", format!("must be a list, got {v}"))),
    };
    if let Some(bad) = classes
        .iter()
        .find(|c| Architecture::from_hf_class(c).is_none())
    {
        return Err(SourceError::config(
            &f.path,
            format!("unsupported architecture `{bad}` ({SUPPORTED}: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"),
        ));
    }
    match f.str_opt("model_type")? {
        Some(mt) => Architecture::from_model_type(mt).ok_or_else(|| {
            SourceError::config(
                &f.path,
                format!("unsupported architecture `{mt}` ({SUPPORTED})"),
            )
        }),
        None => classes
            .first()
            .and_then(|c| Architecture::from_hf_class(c))
            .ok_or_else(|| {
                SourceError::config(
                    &f.path,
                    "neither `model_type` nor `architectures` names the architecture",
                )
            }),
    }
}

/// `(rope_theta, rope_scaling)` from `rope_theta` + `rope_scaling`, or from
/// transformers 5's combined `rope_parameters` (used when `rope_scaling` is
/// absent).
fn rope_fields(f: &Fields<'_>) -> Result<(f32, RopeScaling), SourceError> {
    let top_theta = f.f32_opt("rope_theta")?.unwrap_or(10000.0);
    if f.get("rope_scaling").is_none() {
        if let Some(v) = f.get("rope_parameters") {
            let obj = v
                .as_object()
                .ok_or_else(|| f.err("rope_parameters", format!("must be an object, got {v}")))?;
            let p = Fields {
                obj,
                path: f.path.clone(),
                scope: "rope_parameters.",
            };
            let theta = p.f32_opt("rope_theta")?.unwrap_or(top_theta);
            return Ok((theta, rope_scaling(&p)?));
        }
    }
    match f.get("rope_scaling") {
        None => Ok((top_theta, RopeScaling::None)),
        Some(Value::Object(obj)) => {
            let s = Fields {
                obj,
                path: f.path.clone(),
                scope: "rope_scaling.",
            };
            Ok((top_theta, rope_scaling(&s)?))
        }
        Some(v) => Err(f.err(
            "rope_scaling",
            format!("must be an object or null, got {v}"),
        )),
    }
}

/// The scaling described by a `rope_scaling` / `rope_parameters` object.
fn rope_scaling(s: &Fields<'_>) -> Result<RopeScaling, SourceError> {
    let kind = match s.str_opt("rope_type")? {
        Some(k) => Some(k),
        None => s.str_opt("type")?,
    };
    let factor = || {
        s.f32_opt("factor")?
            .ok_or_else(|| s.err("factor", "is missing"))
    };
    Ok(match kind {
        None | Some("default") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear { factor: factor()? },
        Some("llama3") => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: s.f32_opt("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: s.f32_opt("high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: s
                .u64_opt("original_max_position_embeddings")?
                .ok_or_else(|| s.err("original_max_position_embeddings", "is missing"))?,
        },
        Some(other) => {
            return Err(SourceError::config(
                &s.path,
                format!(
                    "unsupported RoPE scaling type `{other}` (supported: default, linear, llama3)"
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2,
      "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
      "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
      "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_scaling": null,
      "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 49152
    }"#;

    #[test]
    fn smollm2_config() {
        let c = ModelConfig::from_hf_config_json(SMOLLM2, "config.json").unwrap();
        assert_eq!(
            c,
            ModelConfig {
                architecture: Architecture::Llama,
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                vocab_size: 49152,
                max_position_embeddings: 8192,
                rms_norm_eps: 1e-5,
                rope_theta: 100000.0,
                rope_scaling: RopeScaling::None,
                tie_word_embeddings: true,
                attention_bias: false,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
            }
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""architecture":"llama""#), "{json}");
        assert!(json.contains(r#""rope_scaling":{"type":"none"}"#), "{json}");
        assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), c);
    }

    #[test]
    fn llama31_config() {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
          "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
          "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
          "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": true}"#;
        let c = ModelConfig::from_hf_config_json(text, "llama/config.json").unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), c);
    }

    #[test]
    fn qwen2_and_mistral() {
        let qwen = r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
          "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
          "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
          "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": true, "sliding_window": 32768,
          "use_sliding_window": false, "hidden_act": "silu"}"#;
        let c = ModelConfig::from_hf_config_json(qwen, "q.json").unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.attention_bias);
        assert_eq!(c.head_dim, 64);
        let mistral = r#"{"architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
          "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
          "rope_theta": 1000000.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": null}"#;
        let c = ModelConfig::from_hf_config_json(mistral, "m.json").unwrap();
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.max_position_embeddings, 131072);
        assert!(c.eos_token_ids.is_empty() && c.bos_token_id.is_none());
        let v5 = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "vocab_size": 100, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}"#;
        let c = ModelConfig::from_hf_config_json(v5, "v5.json").unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (5000.0, RopeScaling::None));
    }

    #[test]
    fn errors_name_file_and_problem() {
        let cases = [
            (r#"{"model_type": "gpt_neox"}"#, "gpt_neox"),
            (
                r#"{"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}"#,
                "Phi3ForCausalLM",
            ),
            (r#"{"model_type": "phi3"}"#, "`phi3`"),
            (r#"{"hidden_size": 8}"#, "neither"),
            (r#"[1]"#, "not a JSON object"),
            (r#"{"#, "invalid JSON"),
            (
                &SMOLLM2.replace(r#""hidden_size": 576"#, r#""hidden_size": -1"#),
                "hidden_size",
            ),
            (
                &SMOLLM2.replace(r#""vocab_size": 49152"#, r#""vocab_size": 2"#),
                "eos_token_id 2 is outside",
            ),
            (
                &SMOLLM2.replace(r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 4"#),
                "not a multiple",
            ),
            (
                &SMOLLM2.replace(r#""num_attention_heads": 9"#, r#""num_attention_heads": 0"#),
                "nonzero",
            ),
            (
                &SMOLLM2.replace(r#""head_dim": 64"#, r#""head_dim": 63"#),
                "even",
            ),
            (
                &SMOLLM2.replace(r#""hidden_act": "silu""#, r#""hidden_act": "gelu""#),
                "gelu",
            ),
            (
                &SMOLLM2.replace(
                    r#""rope_scaling": null"#,
                    r#""rope_scaling": {"type": "yarn", "factor": 4}"#,
                ),
                "yarn",
            ),
            (
                &SMOLLM2.replace(
                    r#""rope_scaling": null"#,
                    r#""rope_scaling": {"type": "linear"}"#,
                ),
                "factor",
            ),
            (
                &SMOLLM2.replace(r#""rms_norm_eps": 1e-05"#, r#""rms_norm_eps": "x""#),
                "rms_norm_eps",
            ),
            (
                &SMOLLM2.replace(r#""eos_token_id": 2"#, r#""eos_token_id": [2, -1]"#),
                "eos_token_id",
            ),
            (
                &SMOLLM2.replace(r#""num_hidden_layers": 30,"#, ""),
                "num_hidden_layers` is missing",
            ),
        ];
        for (text, needle) in cases {
            let e = ModelConfig::from_hf_config_json(text, "/models/x/config.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("/models/x/config.json"), "{e}");
            assert!(e.contains(needle), "expected `{needle}` in: {e}");
        }
    }
}
