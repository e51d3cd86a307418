//! One view over both source checkpoint kinds: a GGUF file or a Hugging Face
//! safetensors directory, presented with canonical Hugging Face tensor names,
//! shapes and layouts.
//!
//! For `llama`-architecture GGUF files, `q_proj` / `k_proj` rows are turned
//! back from llama.cpp's interleaved-pairs RoPE layout into Hugging Face's
//! rotate-half layout (see [`crate::gguf::names::unpermute_qk`]), so both
//! sources load identically.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{Architecture, ModelConfig};
use crate::gguf::model::{chat_template, config_from_gguf, gguf_architecture, vocab_from_gguf};
use crate::gguf::names::{canonical_hf_names, gguf_to_hf, qk_proj, unpermute_qk, QkProj};
use crate::gguf::{GgufFile, GGUF_MAGIC};
use crate::safetensors_import::{HfCheckpoint, CONFIG_FILE};
use crate::source_error::SourceError;

pub use crate::gguf::model::GgufVocab;

/// Where a checkpoint's tokenizer comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    /// tokenizer.json text
    HfJson(String),
    /// the GGUF `tokenizer.ggml.*` vocabulary
    Gguf(GgufVocab),
}

/// GGUF tensors that have no Hugging Face counterpart and are deliberately
/// skipped (`rope_freqs.weight` is folded into the config's RoPE scaling).
const IGNORED_GGUF_TENSORS: [&str; 1] = ["rope_freqs.weight"];

#[derive(Debug)]
enum Source {
    Gguf {
        file: GgufFile,
        /// Hugging Face name → GGUF name.
        names: HashMap<String, String>,
        /// Whether Q/K rows are in llama.cpp's permuted layout.
        permuted_qk: bool,
    },
    Hf(HfCheckpoint),
}

/// An open source checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    source: Source,
    config: ModelConfig,
    /// Canonical names of the tensors present, in canonical order.
    names: Vec<String>,
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool, SourceError> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| SourceError::io(path, "open", e))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == GGUF_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(SourceError::io(path, "read", e)),
    }
}

impl Checkpoint {
    /// Opens `path`: a `.gguf` file, a Hugging Face checkpoint directory
    /// (with `config.json`), or a file inside such a directory
    /// (`model.safetensors`, a shard, `model.safetensors.index.json`,
    /// `config.json`).
    ///
    /// The configuration is validated and every tensor's presence and shape
    /// is checked against it ([`Checkpoint::check_shapes`]); tensors without
    /// a canonical name are an error (except GGUF `rope_freqs.weight` and
    /// safetensors `*.rotary_emb.inv_freq`, which are skipped).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(|e| SourceError::io(path, "open", e))?;
        let ckpt = if meta.is_dir() {
            Self::open_hf(path)?
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let is_hf_file = name == CONFIG_FILE
                || name.ends_with(".safetensors")
                || name.ends_with(".index.json");
            if name.ends_with(".gguf") || starts_with_gguf_magic(path)? {
                Self::open_gguf(path)?
            } else if is_hf_file {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                Self::open_hf(dir)?
            } else {
                return Err(SourceError::unsupported(
                    path,
                    "not a GGUF file nor a Hugging Face checkpoint (directory with config.json)",
                ));
            }
        };
        ckpt.check_shapes()?;
        Ok(ckpt)
    }

    fn open_gguf(path: &Path) -> Result<Self, SourceError> {
        let file = GgufFile::open(path)?;
        let config = config_from_gguf(&file)?;
        let (_, arch) = gguf_architecture(&file)?;
        // llama.cpp's converter permutes Q/K for `llama` only (not `qwen2`).
        let permuted_qk = arch == "llama";
        let mut names = HashMap::new();
        for t in file.tensors() {
            match gguf_to_hf(&t.name) {
                Some(hf) => {
                    names.insert(hf, t.name.clone());
                }
                None if IGNORED_GGUF_TENSORS.contains(&t.name.as_str()) => {}
                None => {
                    return Err(SourceError::tensor(
                        path,
                        &t.name,
                        format!("has no Hugging Face equivalent for architecture `{arch}`"),
                    ))
                }
            }
        }
        let present: HashSet<&str> = names.keys().map(String::as_str).collect();
        let ordered = order_names(&config, &present, |n| {
            let g = names.get(n).map(String::as_str).unwrap_or(n);
            SourceError::tensor(
                path,
                g,
                format!("is not part of a {}-layer model", config.num_layers),
            )
        })?;
        Ok(Self {
            source: Source::Gguf {
                file,
                names,
                permuted_qk,
            },
            config,
            names: ordered,
        })
    }

    fn open_hf(dir: &Path) -> Result<Self, SourceError> {
        let hf = HfCheckpoint::open(dir)?;
        let mut config = hf.config().clone();
        let present: HashSet<&str> = hf
            .tensors()
            .keys()
            .map(String::as_str)
            .filter(|n| !n.ends_with(".rotary_emb.inv_freq"))
            .collect();
        if !present.contains("lm_head.weight") {
            config.tie_word_embeddings = true;
        }
        let mut ordered = order_names(&config, &present, |n| {
            SourceError::tensor(
                hf.tensor_path(n),
                n,
                format!(
                    "is not a tensor of a {}-layer {} model",
                    config.num_layers,
                    config.architecture.as_str()
                ),
            )
        })?;
        if config.tie_word_embeddings {
            // Tied: Hugging Face ignores a stored lm_head and uses the embeddings.
            ordered.retain(|n| n != "lm_head.weight");
        }
        Ok(Self {
            source: Source::Hf(hf),
            config,
            names: ordered,
        })
    }

    /// `"gguf"` or `"safetensors"`.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Gguf { .. } => "gguf",
            Source::Hf(_) => "safetensors",
        }
    }

    /// The files this checkpoint was read from, for provenance hashing: the
    /// GGUF file; or `config.json`, `generation_config.json`, the shard
    /// index, `tokenizer.json`, `tokenizer_config.json`,
    /// `chat_template.jinja` (those present) and the shards.
    pub fn source_files(&self) -> Vec<PathBuf> {
        match &self.source {
            Source::Gguf { file, .. } => vec![file.path().to_path_buf()],
            Source::Hf(hf) => hf.source_files(),
        }
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Canonical Hugging Face names of the tensors, in canonical order
    /// (`model.embed_tokens.weight`, per layer input norm, q/k/v (+bias),
    /// o, post-attention norm, gate/up/down, then `model.norm.weight` and
    /// `lm_head.weight`, which is absent when embeddings are tied).
    pub fn tensor_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn check_name(&self, name: &str) -> Result<(), SourceError> {
        if self.names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(SourceError::missing(
                self.primary_path(),
                format!("tensor `{name}`"),
            ))
        }
    }

    /// The GGUF file, or the checkpoint directory.
    fn primary_path(&self) -> PathBuf {
        match &self.source {
            Source::Gguf { file, .. } => file.path().to_path_buf(),
            Source::Hf(hf) => hf.dir().to_path_buf(),
        }
    }

    /// The file holding `name` (for messages).
    fn tensor_path(&self, name: &str) -> PathBuf {
        match &self.source {
            Source::Gguf { file, .. } => file.path().to_path_buf(),
            Source::Hf(hf) => hf.tensor_path(name),
        }
    }

    /// The shape of `name`, outermost first (`[out, in]` for a linear weight).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<u64>, SourceError> {
        self.check_name(name)?;
        match &self.source {
            Source::Gguf { file, names, .. } => {
                let g = names.get(name).and_then(|g| file.tensor(g));
                g.map(|t| t.shape())
                    .ok_or_else(|| SourceError::missing(file.path(), format!("tensor `{name}`")))
            }
            Source::Hf(hf) => {
                let t = hf.tensor(name);
                t.map(|t| t.shape.clone())
                    .ok_or_else(|| SourceError::missing(hf.dir(), format!("tensor `{name}`")))
            }
        }
    }

    /// The stored type of `name`: a ggml type name (`"Q4_1"`, `"F32"`, ...)
    /// for GGUF, a safetensors dtype (`"BF16"`, ...) otherwise.
    pub fn source_dtype(&self, name: &str) -> Result<String, SourceError> {
        self.check_name(name)?;
        match &self.source {
            Source::Gguf { file, names, .. } => {
                let g = names.get(name).and_then(|g| file.tensor(g));
                g.map(|t| t.ggml_type.name().to_string())
                    .ok_or_else(|| SourceError::missing(file.path(), format!("tensor `{name}`")))
            }
            Source::Hf(hf) => hf
                .tensor(name)
                .map(|t| t.dtype_name.clone())
                .ok_or_else(|| SourceError::missing(hf.dir(), format!("tensor `{name}`"))),
        }
    }

    /// `name` decoded to `f32`, row-major in Hugging Face layout (Q/K rows
    /// of llama GGUF files un-permuted to rotate-half order).
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>, SourceError> {
        self.check_name(name)?;
        match &self.source {
            Source::Gguf {
                file,
                names,
                permuted_qk,
            } => {
                let g = names
                    .get(name)
                    .ok_or_else(|| SourceError::missing(file.path(), format!("tensor `{name}`")))?;
                let data = file.dequantize(g)?;
                let n_head = match (permuted_qk, qk_proj(name)) {
                    (true, Some(QkProj::Q)) => self.config.num_heads,
                    (true, Some(QkProj::K)) => self.config.num_kv_heads,
                    _ => return Ok(data),
                };
                let shape = self.tensor_shape(name)?;
                let cols = if shape.len() >= 2 {
                    shape.last().copied().unwrap_or(1)
                } else {
                    1
                };
                let cols = usize::try_from(cols)
                    .map_err(|_| SourceError::tensor(file.path(), g, "too wide"))?;
                unpermute_qk(&data, n_head, cols)
                    .map_err(|e| SourceError::tensor(file.path(), g, e.to_string()))
            }
            Source::Hf(hf) => hf.load_f32(name),
        }
    }

    /// The tokenizer: `tokenizer.json` text, or the GGUF vocabulary.
    pub fn tokenizer(&self) -> Result<TokenizerSource, SourceError> {
        match &self.source {
            Source::Gguf { file, .. } => Ok(TokenizerSource::Gguf(vocab_from_gguf(file)?)),
            Source::Hf(hf) => Ok(TokenizerSource::HfJson(hf.tokenizer_json()?)),
        }
    }

    /// The chat template (Jinja), if the checkpoint has one.
    pub fn chat_template(&self) -> Option<String> {
        match &self.source {
            Source::Gguf { file, .. } => chat_template(file),
            Source::Hf(hf) => hf.chat_template().map(str::to_string),
        }
    }

    /// Checks that every tensor the configuration calls for is present with
    /// the shape it implies, and that none it rules out (biases, an untied
    /// `lm_head`) is present. Errors name the tensor, its file, and the
    /// expected and actual shapes.
    pub fn check_shapes(&self) -> Result<(), SourceError> {
        let c = &self.config;
        let present: HashSet<&str> = self.names.iter().map(String::as_str).collect();
        for name in canonical_hf_names(c.num_layers) {
            let rule = expected(c, &name);
            match (present.contains(name.as_str()), rule.required) {
                (false, true) => {
                    return Err(SourceError::missing(
                        self.primary_path(),
                        format!("tensor `{name}` (required: {})", rule.why),
                    ))
                }
                (true, false) => {
                    return Err(SourceError::tensor(
                        self.tensor_path(&name),
                        &name,
                        format!("is present but the config rules it out ({})", rule.why),
                    ))
                }
                (false, false) => {}
                (true, true) => {
                    let shape = self.tensor_shape(&name)?;
                    if shape != rule.shape {
                        return Err(SourceError::tensor(
                            self.tensor_path(&name),
                            &name,
                            format!(
                                "has shape {shape:?}, the config implies {:?} ({})",
                                rule.shape, rule.why
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Orders `present` canonically; `unknown` builds the error for a name that
/// is not canonical for `config`.
fn order_names(
    config: &ModelConfig,
    present: &HashSet<&str>,
    unknown: impl Fn(&str) -> SourceError,
) -> Result<Vec<String>, SourceError> {
    let canonical = canonical_hf_names(config.num_layers);
    let known: HashSet<&str> = canonical.iter().map(String::as_str).collect();
    let mut strays: Vec<&&str> = present.iter().filter(|n| !known.contains(**n)).collect();
    strays.sort();
    if let Some(stray) = strays.first() {
        return Err(unknown(stray));
    }
    Ok(canonical
        .into_iter()
        .filter(|n| present.contains(n.as_str()))
        .collect())
}

/// What the configuration says about one canonical tensor.
struct Expectation {
    required: bool,
    shape: Vec<u64>,
    why: String,
}

/// The tensors a model with configuration `c` has, with their shapes, in canonical order.
pub fn required_tensors(c: &ModelConfig) -> Vec<(String, Vec<u64>)> {
    canonical_hf_names(c.num_layers)
        .into_iter()
        .filter_map(|name| {
            let rule = expected(c, &name);
            rule.required.then_some((name, rule.shape))
        })
        .collect()
}

fn expected(c: &ModelConfig, name: &str) -> Expectation {
    let (h, i, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let q = (c.num_heads * c.head_dim) as u64;
    let kv = (c.num_kv_heads * c.head_dim) as u64;
    let bias = c.attention_bias;
    let o_bias = bias && c.architecture != Architecture::Qwen2;
    let suffix = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
        .map(|(_, s)| s);
    let (required, shape, why): (bool, Vec<u64>, String) = match (name, suffix) {
        ("model.embed_tokens.weight", _) => (true, vec![v, h], "[vocab_size, hidden_size]".into()),
        ("model.norm.weight", _) => (true, vec![h], "[hidden_size]".into()),
        ("lm_head.weight", _) => (
            !c.tie_word_embeddings,
            vec![v, h],
            format!("[vocab_size, hidden_size], tie_word_embeddings = {}", c.tie_word_embeddings),
        ),
        (_, Some("input_layernorm.weight" | "post_attention_layernorm.weight")) => {
            (true, vec![h], "[hidden_size]".into())
        }
        (_, Some("self_attn.q_proj.weight")) => (true, vec![q, h], "[num_heads * head_dim, hidden_size]".into()),
        (_, Some("self_attn.k_proj.weight" | "self_attn.v_proj.weight")) => {
            (true, vec![kv, h], "[num_kv_heads * head_dim, hidden_size]".into())
        }
        (_, Some("self_attn.o_proj.weight")) => (true, vec![h, q], "[hidden_size, num_heads * head_dim]".into()),
        (_, Some("self_attn.q_proj.bias")) => (bias, vec![q], format!("[num_heads * head_dim], attention_bias = {bias}")),
        (_, Some("self_attn.k_proj.bias" | "self_attn.v_proj.bias")) => {
            (bias, vec![kv], format!("[num_kv_heads * head_dim], attention_bias = {bias}"))
        }
        (_, Some("self_attn.o_proj.bias")) => (
            o_bias,
            vec![h],
            format!("[hidden_size], o_proj bias only for llama/mistral with attention_bias, here {o_bias}"),
        ),
        (_, Some("mlp.gate_proj.weight" | "mlp.up_proj.weight")) => {
            (true, vec![i, h], "[intermediate_size, hidden_size]".into())
        }
        (_, Some("mlp.down_proj.weight")) => (true, vec![h, i], "[hidden_size, intermediate_size]".into()),
        _ => (false, Vec::new(), "not a canonical tensor".into()),
    };
    Expectation {
        required,
        shape,
        why,
    }
}
