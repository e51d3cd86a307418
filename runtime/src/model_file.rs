//! Opening a `.qrt` model: its configuration, tokenizer and chat template from the metadata.
//!
//! The metadata keys written and read here are listed in `format/SPEC.md` ("Model metadata").

use std::path::Path;
use std::sync::Arc;

use qrt_format::config::{Architecture, ModelConfig, RopeScaling};
use qrt_format::container::{MetaValue, Metadata, QrtFile};

use crate::tokenizer::Tokenizer;
use crate::RuntimeError;

/// Metadata key of the tokenizer (`tokenizer.json` text).
pub const KEY_TOKENIZER: &str = "tokenizer.json";
/// Metadata key of the Jinja chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// Writes `config` under `model.*` keys.
pub fn config_to_metadata(c: &ModelConfig, m: &mut Metadata) {
    let arch = match c.architecture {
        Architecture::Llama => "llama",
        Architecture::Mistral => "mistral",
        Architecture::Qwen2 => "qwen2",
    };
    m.insert("model.architecture", arch);
    for (key, value) in [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_layers", c.num_layers),
        ("num_heads", c.num_heads),
        ("num_kv_heads", c.num_kv_heads),
        ("head_dim", c.head_dim),
        ("vocab_size", c.vocab_size),
        ("max_position_embeddings", c.max_position_embeddings),
    ] {
        m.insert(format!("model.{key}"), value as u64);
    }
    m.insert("model.rms_norm_eps", c.rms_norm_eps);
    m.insert("model.rope_theta", c.rope_theta);
    m.insert("model.tie_word_embeddings", c.tie_word_embeddings);
    m.insert("model.attention_bias", c.attention_bias);
    if let Some(bos) = c.bos_token_id {
        m.insert("model.bos_token_id", bos);
    }
    let eos: Vec<MetaValue> = c.eos_token_ids.iter().map(|&e| MetaValue::U32(e)).collect();
    m.insert("model.eos_token_ids", eos);
    match c.rope_scaling {
        RopeScaling::None => m.insert("model.rope_scaling.type", "none"),
        RopeScaling::Linear { factor } => {
            m.insert("model.rope_scaling.type", "linear");
            m.insert("model.rope_scaling.factor", factor);
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            m.insert("model.rope_scaling.type", "llama3");
            m.insert("model.rope_scaling.factor", factor);
            m.insert("model.rope_scaling.low_freq_factor", low_freq_factor);
            m.insert("model.rope_scaling.high_freq_factor", high_freq_factor);
            m.insert(
                "model.rope_scaling.original_max_position_embeddings",
                original_max_position_embeddings,
            );
        }
    }
}

/// Reads the `model.*` keys back into a configuration and validates it.
pub fn config_from_metadata(m: &Metadata) -> Result<ModelConfig, RuntimeError> {
    let usize_key = |k: &str| m.get_u64(&format!("model.{k}")).map(|v| v as usize);
    let f32_key = |k: &str| m.get_f64(&format!("model.{k}")).map(|v| v as f32);
    let architecture = match m.get_str("model.architecture")? {
        "llama" => Architecture::Llama,
        "mistral" => Architecture::Mistral,
        "qwen2" => Architecture::Qwen2,
        other => return Err(invalid(m, format!("unknown architecture '{other}'"))),
    };
    let rope_scaling = match m.get_str("model.rope_scaling.type")? {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f32_key("rope_scaling.factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f32_key("rope_scaling.factor")?,
            low_freq_factor: f32_key("rope_scaling.low_freq_factor")?,
            high_freq_factor: f32_key("rope_scaling.high_freq_factor")?,
            original_max_position_embeddings: m
                .get_u64("model.rope_scaling.original_max_position_embeddings")?,
        },
        other => return Err(invalid(m, format!("unknown rope scaling '{other}'"))),
    };
    let eos_token_ids = m
        .get_array("model.eos_token_ids")?
        .iter()
        .map(|v| v.as_u64().map(|e| e as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| invalid(m, "model.eos_token_ids must hold integers".into()))?;
    let config = ModelConfig {
        architecture,
        hidden_size: usize_key("hidden_size")?,
        intermediate_size: usize_key("intermediate_size")?,
        num_layers: usize_key("num_layers")?,
        num_heads: usize_key("num_heads")?,
        num_kv_heads: usize_key("num_kv_heads")?,
        head_dim: usize_key("head_dim")?,
        vocab_size: usize_key("vocab_size")?,
        max_position_embeddings: usize_key("max_position_embeddings")?,
        rms_norm_eps: f32_key("rms_norm_eps")?,
        rope_theta: f32_key("rope_theta")?,
        rope_scaling,
        tie_word_embeddings: m.get_bool("model.tie_word_embeddings")?,
        attention_bias: m.get_bool("model.attention_bias")?,
        bos_token_id: m
            .get("model.bos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32),
        eos_token_ids,
    };
    config.validate().map_err(|e| invalid(m, e))?;
    Ok(config)
}

fn invalid(m: &Metadata, reason: String) -> RuntimeError {
    RuntimeError::InvalidModel {
        path: m.source().to_string(),
        reason,
    }
}

/// An opened model file: the container, its configuration and its tokenizer.
pub struct ModelFile {
    /// The container (memory-mapped).
    pub file: Arc<QrtFile>,
    /// The model configuration.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model has one.
    pub chat_template: Option<String>,
}

impl ModelFile {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Self, RuntimeError> {
        let file = Arc::new(QrtFile::open(path)?);
        let m = file.metadata();
        let config = config_from_metadata(m)?;
        let tokenizer_json = m.get_str(KEY_TOKENIZER).map_err(|_| {
            RuntimeError::Tokenizer(format!(
                "{}: the file carries no tokenizer ({KEY_TOKENIZER})",
                path.display()
            ))
        })?;
        let tokenizer = Tokenizer::from_json(tokenizer_json)
            .map_err(|e| RuntimeError::Tokenizer(format!("{}: {e}", path.display())))?;
        let chat_template = m
            .get(KEY_CHAT_TEMPLATE)
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Ok(Self {
            file,
            config,
            tokenizer,
            chat_template,
        })
    }
}
