//! `qrt convert`: a Hugging Face or GGUF checkpoint into a `.qrt` file in 16 or 32 bits.
//!
//! Two-dimensional weights are stored in the requested dtype; vectors (norm scales, biases)
//! stay in f32. Quantized GGUF tensors are dequantized first. The file carries the model
//! configuration, the tokenizer, the chat template, and the provenance of its source.

use std::io::Read;
use std::path::Path;

use half::{bf16, f16};
use qrt_format::checkpoint::{Checkpoint, TokenizerSource};
use qrt_format::container::{ElemType, Metadata, QrtWriter, StorageType, TensorPlan};
use sha2::{Digest, Sha256};

use crate::model_file::{config_to_metadata, KEY_CHAT_TEMPLATE, KEY_TOKENIZER};
use crate::tokenizer::{tokenizer_json_from_gguf, Tokenizer};
use crate::RuntimeError;

/// How to convert.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Storage of 2-D weights: F16, BF16 or F32.
    pub dtype: ElemType,
    /// The qrt version recorded in the provenance.
    pub qrt_version: String,
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// Bytes of the output file.
    pub file_bytes: u64,
    /// The source's storage types, with counts.
    pub source_dtypes: Vec<(String, usize)>,
}

/// Progress of a conversion: tensors done, tensors in all, the tensor being written.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Hex sha256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, RuntimeError> {
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Little-endian bytes of `values` stored as `elem`.
pub fn encode_dense(values: &[f32], elem: ElemType) -> Vec<u8> {
    match elem {
        ElemType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        ElemType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Converts the checkpoint at `src` into a `.qrt` file at `out`.
pub fn import_checkpoint(
    src: &Path,
    out: &Path,
    options: &ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport, RuntimeError> {
    if !matches!(
        options.dtype,
        ElemType::F16 | ElemType::BF16 | ElemType::F32
    ) {
        return Err(RuntimeError::InvalidRequest(format!(
            "convert writes f16, bf16 or f32, not {:?}",
            options.dtype
        )));
    }
    let ckpt = Checkpoint::open(src)?;
    ckpt.check_shapes()?;
    let config = ckpt.config().clone();

    let tokenizer_json = match ckpt.tokenizer()? {
        TokenizerSource::HfJson(text) => text,
        TokenizerSource::Gguf(vocab) => tokenizer_json_from_gguf(&vocab)?,
    };
    Tokenizer::from_json(&tokenizer_json)?;

    let mut meta = Metadata::new();
    config_to_metadata(&config, &mut meta);
    meta.insert(KEY_TOKENIZER, tokenizer_json);
    if let Some(t) = ckpt.chat_template() {
        meta.insert(KEY_CHAT_TEMPLATE, t);
    }
    let names = ckpt.tensor_names();
    let mut source_dtypes: Vec<(String, usize)> = Vec::new();
    let mut plans = Vec::with_capacity(names.len());
    let mut parameters = 0u64;
    for name in &names {
        let shape = ckpt.tensor_shape(name)?;
        let dtype = ckpt.source_dtype(name)?;
        match source_dtypes.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n += 1,
            None => source_dtypes.push((dtype, 1)),
        }
        let elem = if shape.len() >= 2 {
            options.dtype
        } else {
            ElemType::F32
        };
        let numel: u64 = shape.iter().product();
        parameters += numel;
        plans.push(TensorPlan::dense(name.clone(), shape, elem));
    }
    record_provenance(&mut meta, &ckpt, options, &source_dtypes)?;

    let mut writer = QrtWriter::create(out, &meta, plans)?;
    let total = names.len();
    for (i, name) in names.iter().enumerate() {
        progress(i, total, name);
        let values = ckpt.load_f32(name)?;
        let elem = if ckpt.tensor_shape(name)?.len() >= 2 {
            options.dtype
        } else {
            ElemType::F32
        };
        writer.write_tensor(name, &[&encode_dense(&values, elem)])?;
    }
    progress(total, total, "");
    writer.finish()?;
    let file_bytes = std::fs::metadata(out)
        .map_err(|source| RuntimeError::Io {
            path: out.display().to_string(),
            source,
        })?
        .len();
    Ok(ImportReport {
        tensors: total,
        parameters,
        file_bytes,
        source_dtypes,
    })
}

fn record_provenance(
    meta: &mut Metadata,
    ckpt: &Checkpoint,
    options: &ImportOptions,
    source_dtypes: &[(String, usize)],
) -> Result<(), RuntimeError> {
    let mut files: Vec<qrt_format::container::MetaValue> = Vec::new();
    for f in ckpt.source_files() {
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        files.push(format!("{name} sha256:{}", sha256_file(&f)?).into());
    }
    let dtype_name = StorageType::dense(options.dtype).name;
    meta.insert("provenance.source_format", ckpt.kind());
    meta.insert("provenance.source_files", files);
    meta.insert(
        "provenance.source_dtypes",
        source_dtypes
            .iter()
            .map(|(d, n)| format!("{d} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    meta.insert("provenance.qrt_version", options.qrt_version.as_str());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    meta.insert("provenance.created_unix", now);
    meta.insert("quantization.method", "none");
    meta.insert("quantization.weight_dtype", dtype_name.as_str());
    meta.insert("quantization.vector_dtype", "f32");
    Ok(())
}
