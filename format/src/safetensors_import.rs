//! Hugging Face checkpoint directories: `config.json`, `model.safetensors`
//! or `model.safetensors.index.json` + shards, `tokenizer.json`, and the chat
//! template from `chat_template.jinja` or `tokenizer_config.json`.
//!
//! Shards are memory-mapped; headers are parsed and validated by the
//! `safetensors` crate (offsets contiguous, sizes consistent with shapes and
//! dtypes, data exactly filling the file). Tensors of dtype F32, F16 and BF16
//! can be read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::mapped::FileBytes;
use crate::source_error::SourceError;

/// The configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The single-file weights of a checkpoint directory.
pub const SINGLE_WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index of a sharded checkpoint directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The generation defaults (extra end-of-sequence tokens).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer settings (may hold the chat template).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The chat template as a standalone file (newer transformers versions).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// A floating-point safetensors dtype this importer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
}

impl HfDtype {
    /// The name, as in safetensors headers (`"F32"`, `"F16"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
        }
    }
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct HfTensorInfo {
    /// The dtype as written in the header (e.g. `"BF16"`, `"I64"`).
    pub dtype_name: String,
    /// The dtype, when it is one this importer reads.
    pub dtype: Option<HfDtype>,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Index into [`HfCheckpoint::shard_paths`].
    pub shard: usize,
    /// Byte range of the data within the shard file.
    range: std::ops::Range<usize>,
}

/// An open Hugging Face checkpoint directory.
#[derive(Debug)]
pub struct HfCheckpoint {
    dir: PathBuf,
    config: ModelConfig,
    shards: Vec<(PathBuf, FileBytes)>,
    tensors: BTreeMap<String, HfTensorInfo>,
    /// Files other than the shards that shaped this view, in a fixed order.
    metadata_files: Vec<PathBuf>,
    tokenizer: Option<PathBuf>,
    chat_template: Option<String>,
}

fn read_text(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|e| SourceError::io(path, "read", e))
}

fn read_json(path: &Path) -> Result<Value, SourceError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| SourceError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl HfCheckpoint {
    /// Opens the checkpoint directory `dir`.
    ///
    /// Reads and validates `config.json` (merging extra end-of-sequence ids
    /// from `generation_config.json` when present), maps the weights
    /// (`model.safetensors`, else the shards listed by
    /// `model.safetensors.index.json`) and reads the chat template.
    pub fn open(dir: &Path) -> Result<Self, SourceError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(SourceError::missing(
                dir,
                format!("`{CONFIG_FILE}` (not a Hugging Face checkpoint directory)"),
            ));
        }
        let mut config = ModelConfig::from_hf_config_json(
            &read_text(&config_path)?,
            &config_path.to_string_lossy(),
        )?;
        let mut metadata_files = vec![config_path];

        let gen_path = dir.join(GENERATION_CONFIG_FILE);
        if gen_path.is_file() {
            merge_generation_config(&mut config, &gen_path)?;
            metadata_files.push(gen_path);
        }

        let single = dir.join(SINGLE_WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let (shard_names, weight_map) = if single.is_file() {
            (vec![SINGLE_WEIGHTS_FILE.to_string()], None)
        } else if index.is_file() {
            let (names, map) = read_index(&index)?;
            metadata_files.push(index.clone());
            (names, Some((index, map)))
        } else {
            return Err(SourceError::missing(
                dir,
                format!("weights (`{SINGLE_WEIGHTS_FILE}` or `{INDEX_FILE}`)"),
            ));
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors = BTreeMap::new();
        for (si, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let bytes = FileBytes::map(&path)?;
            for (tname, info) in read_shard_header(&path, bytes.bytes(), si)? {
                if tensors.contains_key(&tname) {
                    return Err(SourceError::tensor(
                        &path,
                        &tname,
                        "appears in more than one shard",
                    ));
                }
                tensors.insert(tname, info);
            }
            shards.push((path, bytes));
        }
        if let Some((index_path, map)) = &weight_map {
            for (tname, file) in map {
                let found = tensors.get(tname).map(|t| shard_names[t.shard] == *file);
                if found != Some(true) {
                    return Err(SourceError::tensor(
                        index_path,
                        tname,
                        format!("is mapped to shard `{file}` but that shard does not contain it"),
                    ));
                }
            }
        }

        let tok = dir.join(TOKENIZER_FILE);
        let tokenizer = tok.is_file().then_some(tok);
        if let Some(t) = &tokenizer {
            metadata_files.push(t.clone());
        }
        let chat_template = read_chat_template(dir, &mut metadata_files)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
            metadata_files,
            tokenizer,
            chat_template,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration from `config.json` (and `generation_config.json`).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The shard files, in load order.
    pub fn shard_paths(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Every file that determines the checkpoint's contents: `config.json`,
    /// `generation_config.json`, the index, `tokenizer.json`,
    /// `tokenizer_config.json` / `chat_template.jinja` (those present), then the shards.
    pub fn source_files(&self) -> Vec<PathBuf> {
        self.metadata_files
            .iter()
            .cloned()
            .chain(self.shard_paths())
            .collect()
    }

    /// All tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, HfTensorInfo> {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&HfTensorInfo> {
        self.tensors.get(name)
    }

    /// The shard file holding `name` (for messages).
    pub fn tensor_path(&self, name: &str) -> PathBuf {
        self.tensor(name)
            .and_then(|t| self.shards.get(t.shard))
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// The raw little-endian bytes of `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], SourceError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| SourceError::missing(&self.dir, format!("tensor `{name}`")))?;
        let (path, bytes) = self
            .shards
            .get(t.shard)
            .ok_or_else(|| SourceError::tensor(&self.dir, name, "refers to a missing shard"))?;
        bytes
            .bytes()
            .get(t.range.clone())
            .ok_or_else(|| SourceError::tensor(path, name, "data lies outside the shard"))
    }

    /// `name` converted to `f32` (row-major, shape [`HfTensorInfo::shape`]).
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>, SourceError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| SourceError::missing(&self.dir, format!("tensor `{name}`")))?;
        let dtype = t.dtype.ok_or_else(|| {
            SourceError::tensor(
                self.tensor_path(name),
                name,
                format!(
                    "dtype {} is not supported (supported: F32, F16, BF16)",
                    t.dtype_name
                ),
            )
        })?;
        let b = self.tensor_bytes(name)?;
        Ok(match dtype {
            HfDtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            HfDtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            HfDtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// The text of `tokenizer.json`.
    pub fn tokenizer_json(&self) -> Result<String, SourceError> {
        let path = self.tokenizer.as_ref().ok_or_else(|| {
            SourceError::missing(&self.dir, format!("tokenizer (`{TOKENIZER_FILE}`)"))
        })?;
        read_text(path)
    }

    /// The chat template, from `chat_template.jinja` or `tokenizer_config.json`.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// Adds `generation_config.json`'s end-of-sequence ids (and its BOS id when
/// the config has none) to `config`.
fn merge_generation_config(config: &mut ModelConfig, path: &Path) -> Result<(), SourceError> {
    let v = read_json(path)?;
    let bad = |key: &str| {
        SourceError::config(
            path,
            format!("`{key}` must be a token id or a list of token ids"),
        )
    };
    let ids = |key: &str| -> Result<Vec<u32>, SourceError> {
        let one = |x: &Value| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(key))
        };
        match v.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(one).collect(),
            Some(x) => Ok(vec![one(x)?]),
        }
    };
    for id in ids("eos_token_id")? {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
    if config.bos_token_id.is_none() {
        config.bos_token_id = ids("bos_token_id")?.first().copied();
    }
    config
        .validate()
        .map_err(|msg| SourceError::config(path, msg))
}

/// The shard file names (sorted, deduplicated) and the weight map of an index.
#[allow(clippy::type_complexity)]
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>), SourceError> {
    let v = read_json(path)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| SourceError::malformed(path, "`weight_map` is missing or not an object"))?;
    let mut files = BTreeSet::new();
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            SourceError::malformed(path, format!("`weight_map[\"{name}\"]` is not a string"))
        })?;
        // A shard must be a plain file name inside the checkpoint directory.
        let plain =
            Path::new(file).file_name().is_some_and(|f| f == file) && file != "." && file != "..";
        if !plain || file.contains(['/', '\\']) {
            return Err(SourceError::malformed(
                path,
                format!("`weight_map[\"{name}\"]` = `{file}` is not a file name in the checkpoint directory"),
            ));
        }
        files.insert(file.to_string());
        weight_map.insert(name.clone(), file.to_string());
    }
    if files.is_empty() {
        return Err(SourceError::malformed(path, "`weight_map` is empty"));
    }
    Ok((files.into_iter().collect(), weight_map))
}

fn read_shard_header(
    path: &Path,
    bytes: &[u8],
    shard: usize,
) -> Result<Vec<(String, HfTensorInfo)>, SourceError> {
    let (n, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| SourceError::malformed(path, format!("invalid safetensors file: {e}")))?;
    let data_start = 8 + n; // read_metadata checked that the header fits in `bytes`
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        // read_metadata checked that the offsets are contiguous and end at the file's end.
        let range = data_start
            .checked_add(s)
            .zip(data_start.checked_add(e))
            .map(|(a, b)| a..b);
        let range =
            range.ok_or_else(|| SourceError::tensor(path, &name, "data offsets overflow"))?;
        let dtype = match info.dtype {
            Dtype::F32 => Some(HfDtype::F32),
            Dtype::F16 => Some(HfDtype::F16),
            Dtype::BF16 => Some(HfDtype::BF16),
            _ => None,
        };
        let info = HfTensorInfo {
            dtype_name: format!("{:?}", info.dtype),
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            shard,
            range,
        };
        out.push((name, info));
    }
    Ok(out)
}

/// `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
/// (a string, or a list of `{name, template}` from which `default` or the
/// first is taken). Files read are appended to `files`.
fn read_chat_template(dir: &Path, files: &mut Vec<PathBuf>) -> Result<Option<String>, SourceError> {
    let tc_path = dir.join(TOKENIZER_CONFIG_FILE);
    let from_config = if tc_path.is_file() {
        files.push(tc_path.clone());
        let v = read_json(&tc_path)?;
        match v.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => {
                let named = |want: Option<&str>| {
                    list.iter().find_map(|e| {
                        let name = e.get("name").and_then(Value::as_str);
                        let t = e.get("template").and_then(Value::as_str)?;
                        (want.is_none() || name == want).then(|| t.to_string())
                    })
                };
                Some(
                    named(Some("default"))
                        .or_else(|| named(None))
                        .ok_or_else(|| {
                            SourceError::malformed(
                                &tc_path,
                                "`chat_template` list has no entry with a `template` string",
                            )
                        })?,
                )
            }
            Some(_) => {
                return Err(SourceError::malformed(
                    &tc_path,
                    "`chat_template` must be a string or a list",
                ))
            }
        }
    } else {
        None
    };
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if jinja.is_file() {
        files.push(jinja.clone());
        return Ok(Some(read_text(&jinja)?));
    }
    Ok(from_config)
}
