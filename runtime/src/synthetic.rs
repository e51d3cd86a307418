//! Synthetic models: the public configurations of real models with random weights and a
//! byte-level tokenizer, so that speed can be measured at real shapes without moving
//! gigabytes, and tests can run a whole model in milliseconds (`qrt init`).

use std::path::Path;

use qrt_format::checkpoint::required_tensors;
use qrt_format::config::{Architecture, ModelConfig, RopeScaling};
use qrt_format::container::{ElemType, Metadata, QrtWriter, TensorPlan};
use rayon::prelude::*;
use serde_json::json;

use crate::import::encode_dense;
use crate::model_file::{config_to_metadata, KEY_CHAT_TEMPLATE, KEY_TOKENIZER};
use crate::sampling::Rng;
use crate::tokenizer::CHATML_TEMPLATE;
use crate::RuntimeError;

/// Names of the configurations [`preset`] knows.
pub const PRESETS: [&str; 4] = ["tiny", "smollm2-135m", "llama-3.2-1b", "llama-3.1-8b"];

/// Special tokens of the synthetic tokenizer, right after the 256 byte tokens.
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The public configuration called `name` (see [`PRESETS`]).
pub fn preset(name: &str) -> Result<ModelConfig, RuntimeError> {
    let llama3 = |factor| RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let base = ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        vocab_size: 320,
        max_position_embeddings: 1024,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![258, 256],
    };
    let config = match name {
        "tiny" => base,
        "smollm2-135m" => ModelConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            max_position_embeddings: 8192,
            rope_theta: 100000.0,
            ..base
        },
        "llama-3.2-1b" => ModelConfig {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            vocab_size: 128256,
            max_position_embeddings: 131072,
            rope_theta: 500000.0,
            rope_scaling: llama3(32.0),
            ..base
        },
        "llama-3.1-8b" => ModelConfig {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 128256,
            max_position_embeddings: 131072,
            rope_theta: 500000.0,
            rope_scaling: llama3(8.0),
            tie_word_embeddings: false,
            ..base
        },
        other => {
            return Err(RuntimeError::InvalidRequest(format!(
                "unknown configuration '{other}' (known: {})",
                PRESETS.join(", ")
            )))
        }
    };
    Ok(config)
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut by_byte = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        by_byte[*b as usize] = char::from_u32(c).expect("valid code point");
    }
    by_byte
}

/// A byte-level BPE `tokenizer.json` with no merges: ids 0-255 are bytes, then
/// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, then filler tokens up to `vocab_size`.
pub fn byte_tokenizer_json(vocab_size: usize) -> String {
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(id));
    }
    let mut added = Vec::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
        added.push(
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    for id in 256 + SPECIALS.len()..vocab_size {
        vocab.insert(format!("<x{id}>"), json!(id));
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    })
    .to_string()
}

/// Values of one tensor: norm scales are 1, everything else N(0, 0.02²), drawn in parallel
/// from per-chunk seeds so the result depends only on `seed`.
fn random_values(name: &str, numel: usize, seed: u64) -> Vec<f32> {
    if name.ends_with("norm.weight") {
        return vec![1.0; numel];
    }
    const CHUNK: usize = 1 << 16;
    let mut values = vec![0f32; numel];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            chunk.iter_mut().for_each(|v| *v = 0.02 * rng.next_normal());
        });
    values
}

/// Writes a model of configuration `config` with random weights (matrices in `dtype`).
/// `progress(done, total)` is called per tensor.
pub fn write_random_model(
    config: &ModelConfig,
    dtype: ElemType,
    seed: u64,
    out: &Path,
    qrt_version: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), RuntimeError> {
    config.validate().map_err(RuntimeError::InvalidRequest)?;
    if config.vocab_size < 256 + SPECIALS.len() {
        return Err(RuntimeError::InvalidRequest(format!(
            "a synthetic model needs a vocabulary of at least {} tokens",
            256 + SPECIALS.len()
        )));
    }
    let mut meta = Metadata::new();
    let config = ModelConfig {
        eos_token_ids: vec![258, 256],
        bos_token_id: None,
        ..config.clone()
    };
    config_to_metadata(&config, &mut meta);
    meta.insert(KEY_TOKENIZER, byte_tokenizer_json(config.vocab_size));
    meta.insert(KEY_CHAT_TEMPLATE, CHATML_TEMPLATE);
    meta.insert("provenance.source_format", "random");
    meta.insert("provenance.random_seed", seed);
    meta.insert("provenance.qrt_version", qrt_version);
    meta.insert("quantization.method", "none");
    meta.insert(
        "quantization.weight_dtype",
        qrt_format::container::StorageType::dense(dtype)
            .name
            .as_str(),
    );
    meta.insert("quantization.vector_dtype", "f32");
    let tensors = required_tensors(&config);
    let elem_of = |shape: &[u64]| {
        if shape.len() >= 2 {
            dtype
        } else {
            ElemType::F32
        }
    };
    let plans = tensors
        .iter()
        .map(|(name, shape)| TensorPlan::dense(name.clone(), shape.clone(), elem_of(shape)))
        .collect();
    let mut writer = QrtWriter::create(out, &meta, plans)?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        progress(i, tensors.len());
        let numel = shape.iter().product::<u64>() as usize;
        let values = random_values(name, numel, seed.wrapping_add(i as u64 * 0x100_0000_01B3));
        writer.write_tensor(name, &[&encode_dense(&values, elem_of(shape))])?;
    }
    progress(tensors.len(), tensors.len());
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn byte_tokenizer_round_trips_any_text() {
        let t = Tokenizer::from_json(&byte_tokenizer_json(320)).unwrap();
        let text = "héllo\n\t wörld 🚀<|im_end|>";
        let ids = t.encode(text).unwrap();
        assert!(ids.contains(&258), "special token parsed: {ids:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        assert_eq!(t.vocab_size(), 320);
    }

    #[test]
    fn presets_are_valid_and_public_shapes() {
        for name in PRESETS {
            preset(name).unwrap().validate().unwrap();
        }
        let c = preset("llama-3.2-1b").unwrap();
        assert_eq!(
            (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads),
            (2048, 16, 32, 8)
        );
        assert_eq!((c.intermediate_size, c.vocab_size), (8192, 128256));
        assert!(preset("gpt-5").is_err());
    }
}
