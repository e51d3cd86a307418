//! `Checkpoint` over GGUF and Hugging Face sources of the same models
//! (fixtures from `tools/make_ggml_fixtures.py`, whose GGUFs are permuted and
//! quantized the way llama.cpp's converter does it), plus crafted variants.

mod source_common;

use std::path::Path;

use qrt_format::checkpoint::{Checkpoint, TokenizerSource};
use qrt_format::config::{Architecture, ModelConfig, RopeScaling};
use qrt_format::gguf::model::llama3_rope_factors;
use qrt_format::gguf::names::permute_qk;
use source_common::*;

fn open(p: &Path) -> Checkpoint {
    Checkpoint::open(p).unwrap_or_else(|e| panic!("{e}"))
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Compares every tensor of the GGUF and HF views of one model.
fn compare_sources(gguf: &Checkpoint, hf: &Checkpoint, permuted: bool) {
    assert_eq!(gguf.tensor_names(), hf.tensor_names());
    let c = gguf.config();
    for name in gguf.tensor_names() {
        let shape = gguf.tensor_shape(&name).unwrap();
        assert_eq!(shape, hf.tensor_shape(&name).unwrap(), "{name}");
        let g = gguf.load_f32(&name).unwrap();
        let h = hf.load_f32(&name).unwrap();
        assert_eq!(g.len() as u64, shape.iter().product::<u64>(), "{name}");
        let ty = gguf.source_dtype(&name).unwrap();
        if matches!(ty.as_str(), "F32" | "F16" | "BF16") {
            // Float storage: same values (HF values were rounded to their dtype).
            let tol = if ty == hf.source_dtype(&name).unwrap() || ty == "F32" {
                0.0
            } else {
                1e-3
            };
            let worst = g
                .iter()
                .zip(&h)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst <= tol, "{name} ({ty}): max diff {worst}");
        } else {
            // Quantized: close, and far closer than with the rows left permuted.
            let err = mean_abs_diff(&g, &h);
            assert!(
                err < 0.06 * max_abs(&h) as f64,
                "{name} ({ty}): mean error {err}"
            );
        }
        let heads = if name.contains("q_proj") {
            c.num_heads
        } else if name.contains("k_proj") {
            c.num_kv_heads
        } else {
            continue;
        };
        let cols = if shape.len() == 2 {
            shape[1] as usize
        } else {
            1
        };
        let still_permuted = permute_qk(&g, heads, cols).unwrap();
        let (ok, wrong) = (mean_abs_diff(&g, &h), mean_abs_diff(&still_permuted, &h));
        if permuted {
            assert!(
                ok * 4.0 < wrong,
                "{name}: un-permuted error {ok} vs permuted {wrong}"
            );
        }
    }
}

#[test]
fn tiny_llama_gguf_equals_hf() {
    let dir = fixtures().join("gguf");
    let g = open(&dir.join("tiny_llama.gguf"));
    let h = open(&dir.join("tiny_llama_hf"));
    assert_eq!((g.kind(), h.kind()), ("gguf", "safetensors"));
    let expected = ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        vocab_size: 64,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    assert_eq!(g.config(), &expected);
    // HF: generation_config.json adds end-of-sequence id 3.
    assert_eq!(
        h.config(),
        &ModelConfig {
            eos_token_ids: vec![2, 3],
            ..expected
        }
    );

    let names = g.tensor_names();
    assert_eq!(names.len(), 1 + 2 * 9 + 2);
    assert_eq!(names[0], "model.embed_tokens.weight");
    assert_eq!(names[1], "model.layers.0.input_layernorm.weight");
    assert_eq!(names[2], "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(names.last().unwrap(), "lm_head.weight");
    assert_eq!(
        g.tensor_shape("model.layers.1.mlp.down_proj.weight")
            .unwrap(),
        vec![32, 64]
    );
    assert_eq!(
        g.tensor_shape("model.layers.0.self_attn.k_proj.weight")
            .unwrap(),
        vec![16, 32]
    );
    assert_eq!(
        g.source_dtype("model.layers.1.self_attn.q_proj.weight")
            .unwrap(),
        "Q4_1"
    );
    assert_eq!(g.source_dtype("model.embed_tokens.weight").unwrap(), "Q8_0");
    assert_eq!(
        h.source_dtype("model.layers.0.self_attn.v_proj.weight")
            .unwrap(),
        "BF16"
    );
    compare_sources(&g, &h, true);

    // Unknown names are errors, not silent zeros.
    for c in [&g, &h] {
        let e = c
            .load_f32("model.layers.2.mlp.up_proj.weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.layers.2.mlp.up_proj.weight"), "{e}");
        assert!(c.tensor_shape("blk.0.attn_q.weight").is_err());
    }

    // Tokenizers and templates.
    match g.tokenizer().unwrap() {
        TokenizerSource::Gguf(v) => {
            assert_eq!(
                (v.model.as_str(), v.pre.as_deref()),
                ("gpt2", Some("default"))
            );
            assert_eq!(v.tokens.len(), 64);
            assert_eq!(v.tokens[3], "<|im_end|>");
            assert_eq!(v.token_types.len(), 64);
            assert_eq!(v.merges, vec!["t 1", "t 2", "t1 0"]);
            assert!(v.scores.is_empty());
            assert_eq!(
                (v.bos, v.eos, v.unk, v.pad),
                (Some(1), Some(2), Some(0), Some(2))
            );
            assert!(!v.add_bos && !v.add_space_prefix);
        }
        other => panic!("{other:?}"),
    }
    match h.tokenizer().unwrap() {
        TokenizerSource::HfJson(t) => assert!(t.contains("\"BPE\"")),
        other => panic!("{other:?}"),
    }
    assert_eq!(g.chat_template(), h.chat_template());
    assert!(g.chat_template().unwrap().contains("messages"));

    // Provenance files.
    assert_eq!(g.source_files(), vec![dir.join("tiny_llama.gguf")]);
    let files: Vec<String> = h
        .source_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
}

#[test]
fn tiny_qwen2_gguf_equals_hf_without_permutation() {
    let dir = fixtures().join("gguf");
    let g = open(&dir.join("tiny_qwen2.gguf"));
    // A path to the weights file opens its directory.
    let h = open(&dir.join("tiny_qwen2_hf/model.safetensors"));
    for c in [g.config(), h.config()] {
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!(
            (c.num_layers, c.rope_theta, c.rms_norm_eps),
            (1, 1_000_000.0, 1e-6)
        );
    }
    let names = g.tensor_names();
    assert_eq!(names.len(), 1 + 12 + 1);
    assert!(names.contains(&"model.layers.0.self_attn.k_proj.bias".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
    compare_sources(&g, &h, false);
    // Qwen2 GGUFs are stored in HF order: F32 q_proj and biases load exactly.
    for n in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
    ] {
        assert_eq!(g.load_f32(n).unwrap(), h.load_f32(n).unwrap(), "{n}");
    }
}

#[test]
fn mini_llama_unpermutes_and_validates() {
    let dir = scratch("mini");
    let p = mini_llama("llama").write(&dir, "mini.gguf");
    let c = open(&p);
    for (name, _, vals) in mini_weights() {
        assert_eq!(c.load_f32(&name).unwrap(), vals, "{name}");
    }
    assert!(!c.config().tie_word_embeddings);
    match c.tokenizer().unwrap() {
        TokenizerSource::Gguf(v) => {
            assert_eq!(v.model, "llama");
            assert!(v.add_bos && v.add_space_prefix, "SentencePiece defaults");
            assert_eq!(v.scores[3], -3.0);
        }
        other => panic!("{other:?}"),
    }

    // Tied: no output.weight.
    let p = mini_llama("llama")
        .without_tensor("output.weight")
        .write(&dir, "tied.gguf");
    let c = open(&p);
    assert!(c.config().tie_word_embeddings);
    assert!(!c.tensor_names().contains(&"lm_head.weight".to_string()));

    // Errors that must name the tensor / key / architecture.
    let cases: Vec<(GgufBuilder, &str)> = vec![
        (
            mini_llama("llama").tensor(RawTensor::f32("blk.0.attn_q_norm.weight", &[4], &[1.0; 4])),
            "blk.0.attn_q_norm.weight",
        ),
        (
            mini_llama("llama").tensor(RawTensor::f32("blk.1.attn_norm.weight", &[8], &[1.0; 8])),
            "blk.1.attn_norm.weight",
        ),
        (
            mini_llama("llama").tensor(RawTensor::f32("blk.0.attn_q.weight", &[4, 8], &[0.0; 32])),
            "model.layers.0.self_attn.q_proj.weight`: has shape [4, 8], the config implies [8, 8]",
        ),
        (
            mini_llama("llama").tensor(RawTensor::f32("token_embd.weight", &[7, 8], &[0.0; 56])),
            "model.embed_tokens.weight",
        ),
        (
            mini_llama("llama").without_tensor("blk.0.ffn_up.weight"),
            "model.layers.0.mlp.up_proj.weight",
        ),
        (
            mini_llama("llama").tensor(RawTensor::f32("blk.0.attn_v.bias", &[4], &[0.0; 4])),
            "model.layers.0.self_attn.v_proj.bias",
        ),
        (mini_llama("phi3"), "architecture `phi3`"),
        (
            mini_llama("llama").without("llama.block_count"),
            "llama.block_count",
        ),
        (
            mini_llama("llama").kv("llama.block_count", Meta::Str("1".into())),
            "`llama.block_count` has type string",
        ),
        (
            mini_llama("llama").kv("llama.attention.head_count_kv", Meta::U32(3)),
            "not a multiple of num_kv_heads",
        ),
        (
            mini_llama("llama").kv("llama.rope.dimension_count", Meta::U32(2)),
            "partial RoPE",
        ),
        (
            mini_llama("llama").kv("llama.rope.scaling.type", Meta::Str("yarn".into())),
            "yarn",
        ),
        (
            mini_llama("llama").kv("tokenizer.ggml.eos_token_id", Meta::U32(99)),
            "eos_token_id 99 is outside",
        ),
        (
            mini_llama("llama").kv("llama.attention.layer_norm_rms_epsilon", Meta::F32(-1.0)),
            "rms_norm_eps",
        ),
    ];
    for (i, (b, needle)) in cases.into_iter().enumerate() {
        let p = b.write(&dir, &format!("bad{i}.gguf"));
        let e = Checkpoint::open(&p).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(&format!("bad{i}.gguf")), "{e}");
        assert!(e.contains(needle), "expected `{needle}` in: {e}");
    }

    // A tensor type we cannot decode: opens (shape is fine), loading names tensor and type.
    let mut b = mini_llama("llama");
    let t = b
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap();
    t.ty = 24; // I8: 1 byte per element
    t.data.truncate(16 * 8);
    let c = open(&b.write(&dir, "i8.gguf"));
    assert_eq!(
        c.source_dtype("model.layers.0.mlp.up_proj.weight").unwrap(),
        "I8"
    );
    let e = c
        .load_f32("model.layers.0.mlp.up_proj.weight")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.ffn_up.weight") && e.contains("I8") && e.contains("i8.gguf"),
        "{e}"
    );

    // Bad tokenizer metadata: the model opens, tokenizer() names the problem.
    let c = open(
        &mini_llama("llama")
            .without("tokenizer.ggml.model")
            .write(&dir, "notok.gguf"),
    );
    let e = c.tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("notok.gguf") && e.contains("tokenizer.ggml.model"),
        "{e}"
    );
    let c = open(
        &mini_llama("llama")
            .kv("tokenizer.ggml.scores", Meta::F32Arr(vec![0.0; 3]))
            .write(&dir, "sc.gguf"),
    );
    let e = c.tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("`tokenizer.ggml.scores` has 3 entries for 8 tokens"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rope_scaling_from_gguf() {
    let dir = scratch("rope");
    let hd = MINI.3 as usize;
    let linear = mini_llama("llama")
        .kv("llama.rope.scaling.type", Meta::Str("linear".into()))
        .kv("llama.rope.scaling.factor", Meta::F32(4.0));
    assert_eq!(
        open(&linear.write(&dir, "lin.gguf")).config().rope_scaling,
        RopeScaling::Linear { factor: 4.0 }
    );

    // Llama 3.1 scaling lives in rope_freqs.weight; with head_dim 4 and theta
    // 1e9 the two frequencies fall in the kept and the fully scaled band, so
    // low/high default to 1/4 and must reproduce the tensor.
    let theta = 1e9;
    let factors = llama3_rope_factors(hd, theta, 8.0, 1.0, 4.0, 8192);
    let b = mini_llama("llama")
        .kv("llama.rope.freq_base", Meta::F32(theta))
        .tensor(RawTensor::f32(
            "rope_freqs.weight",
            &[hd as u64 / 2],
            &factors,
        ));
    let c = open(&b.write(&dir, "l3.gguf"));
    assert_eq!(
        c.config().rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );
    assert!(c.tensor_names().iter().all(|n| !n.contains("rope")));

    let bad = b
        .clone()
        .tensor(RawTensor::f32("rope_freqs.weight", &[2], &[1.0, 0.5]));
    let e = Checkpoint::open(&bad.write(&dir, "l3bad.gguf"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rope_freqs.weight") && e.contains("llama3"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_directory_variants() {
    let src = fixtures().join("gguf/tiny_qwen2_hf");
    let dir = scratch("hf");
    let edit = |name: &str, f: &dyn Fn(&Path)| {
        let d = dir.join(name);
        copy_dir(&src, &d);
        f(&d);
        d
    };
    let replace = |d: &Path, file: &str, from: &str, to: &str| {
        let p = d.join(file);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{file} lacks {from}");
        std::fs::write(&p, t.replace(from, to)).unwrap();
    };

    // Path forms: directory, config.json, weights file.
    for p in [
        src.clone(),
        src.join("config.json"),
        src.join("model.safetensors"),
    ] {
        assert_eq!(open(&p).kind(), "safetensors");
    }

    // Unsupported architecture names the file and the architecture.
    let d = edit("neox", &|d| {
        replace(d, "config.json", "\"qwen2\"", "\"gpt_neox\"")
    });
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("gpt_neox"), "{e}");

    // Config / weights disagreement names the tensor.
    let d = edit("heads", &|d| {
        replace(
            d,
            "config.json",
            "\"intermediate_size\": 64",
            "\"intermediate_size\": 48",
        )
    });
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[48, 32]"),
        "{e}"
    );

    // Missing tokenizer: opens, tokenizer() is a clear error.
    let d = edit("notok", &|d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    let e = open(&d).tokenizer().unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("notok"), "{e}");

    // chat_template.jinja wins over tokenizer_config.json; no template at all is None.
    let d = edit("jinja", &|d| {
        std::fs::write(d.join("chat_template.jinja"), "JINJA").unwrap()
    });
    assert_eq!(open(&d).chat_template().as_deref(), Some("JINJA"));
    let d = edit("notemplate", &|d| {
        std::fs::remove_file(d.join("tokenizer_config.json")).unwrap()
    });
    assert_eq!(open(&d).chat_template(), None);

    // No weights at all.
    let d = edit("noweights", &|d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    // Truncated safetensors.
    let d = edit("cut", &|d| {
        let p = d.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    });
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors"),
        "{e}"
    );

    // Sharded: an index entry escaping the directory, and one pointing at the wrong shard.
    let llama = fixtures().join("gguf/tiny_llama_hf");
    let d = dir.join("escape");
    copy_dir(&llama, &d);
    replace(
        &d,
        "model.safetensors.index.json",
        "\"model-00002-of-00002.safetensors\"",
        "\"../x.safetensors\"",
    );
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("../x.safetensors") && e.contains("not a file name"),
        "{e}"
    );
    let d = dir.join("wrongshard");
    copy_dir(&llama, &d);
    let idx = d.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("does not contain it"),
        "{e}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_extra_tensors_and_dtypes() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = scratch("hfextra");
    let src = fixtures().join("gguf/tiny_qwen2_hf");
    let write_with = |name: &str, extra: &[(&str, Dtype, Vec<usize>, Vec<u8>)]| {
        let d = dir.join(name);
        copy_dir(&src, &d);
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
        for (n, dt, shape, data) in extra {
            views.retain(|(k, _)| k != n);
            views.push((
                n.to_string(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            ));
        }
        safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
        d
    };
    // Rotary buffers are skipped; an untied lm_head stored alongside tied embeddings is dropped.
    let d = write_with(
        "inv",
        &[
            (
                "model.layers.0.self_attn.rotary_emb.inv_freq",
                Dtype::F32,
                vec![4],
                vec![0; 16],
            ),
            (
                "lm_head.weight",
                Dtype::F32,
                vec![64, 32],
                vec![0; 64 * 32 * 4],
            ),
        ],
    );
    let c = open(&d);
    assert!(c
        .tensor_names()
        .iter()
        .all(|n| !n.contains("inv_freq") && n != "lm_head.weight"));
    // Unknown tensors are errors naming them.
    let d = write_with(
        "vision",
        &[("model.vision_tower.weight", Dtype::F32, vec![2], vec![0; 8])],
    );
    let e = Checkpoint::open(&d).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("model.vision_tower.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    // Unsupported dtype: opens, loading names tensor and dtype.
    let d = write_with(
        "i8",
        &[("model.norm.weight", Dtype::I8, vec![32], vec![1; 32])],
    );
    let c = open(&d);
    assert_eq!(c.source_dtype("model.norm.weight").unwrap(), "I8");
    let e = c.load_f32("model.norm.weight").unwrap_err().to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("I8") && e.contains("model.safetensors"),
        "{e}"
    );
    // Missing lm_head with tie_word_embeddings false: tied is inferred.
    let d = dir.join("untied_cfg");
    copy_dir(&src, &d);
    let cfg = d.join("config.json");
    let t = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    std::fs::write(&cfg, t).unwrap();
    assert!(open(&d).config().tie_word_embeddings);
    std::fs::remove_dir_all(&dir).unwrap();
}
