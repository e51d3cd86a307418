//! End-to-end checks of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against
//! Hugging Face transformers: token ids, logits and greedy generation.
//!
//! The reference numbers are in `tests/fixtures/reference_smollm2.json`, made by
//! `tools/reference_logits.py` (transformers, float32, CPU). The model comes from
//! `tools/setup.sh`; without it these tests print a message and pass without checking.

use std::path::Path;

mod common;

use common::{converted, fixture};
use qrt_eval::logits::{compare_top_k, LogitAgreement, TopKReference};
use qrt_format::container::ElemType;
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::engine::{Engine, SeqRequest};
use qrt_runtime::model::Model;
use qrt_runtime::model_file::ModelFile;
use qrt_runtime::sampling::SamplingParams;
use qrt_runtime::textgen::generate;

fn load(path: &Path) -> (ModelFile, Engine<CpuBackend>) {
    let mf = ModelFile::open(path).expect("converted model opens");
    let backend = CpuBackend::new();
    let model = Model::load(&backend, &mf.file, mf.config.clone()).expect("weights load");
    let engine = Engine::new(backend, model, 1024, 16).expect("engine");
    (mf, engine)
}

fn logits_agreement(dtype: ElemType) -> Option<LogitAgreement> {
    let path = converted(dtype)?;
    let (mf, mut engine) = load(&path);
    let fx = fixture();
    let mut total = LogitAgreement::default();
    for p in fx["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(p["ids"].clone()).unwrap();
        assert_eq!(
            mf.tokenizer.encode(p["prompt"].as_str().unwrap()).unwrap(),
            ids,
            "token ids of {}",
            p["prompt"]
        );
        let reference: TopKReference = serde_json::from_value(p.clone()).unwrap();
        let logits = engine.score(&ids).unwrap();
        let a = compare_top_k(&logits, mf.config.vocab_size, &reference).unwrap();
        eprintln!("{dtype:?} {:?}: {a:?}", p["prompt"].as_str().unwrap());
        total.merge(&a);
    }
    Some(total)
}

#[test]
fn f32_logits_match_transformers() {
    let Some(a) = logits_agreement(ElemType::F32) else {
        return;
    };
    assert_eq!(a.top1_matches, a.positions, "{a:?}");
    assert!(a.max_abs_diff < 2e-3, "{a:?}");
}

#[test]
fn f16_logits_match_transformers() {
    let Some(a) = logits_agreement(ElemType::F16) else {
        return;
    };
    assert_eq!(a.top1_matches, a.positions, "{a:?}");
    assert!(a.max_abs_diff < 0.1, "{a:?}");
}

#[test]
fn tokenizer_matches_transformers() {
    let Some(path) = converted(ElemType::F16) else {
        return;
    };
    let mf = ModelFile::open(&path).unwrap();
    for case in fixture()["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(
            mf.tokenizer.encode(text).unwrap(),
            want,
            "encoding of {text:?}"
        );
        let round_trip = mf.tokenizer.decode(&want, false).unwrap();
        assert_eq!(round_trip, text, "decoding of {text:?}");
    }
}

#[test]
fn greedy_generation_says_paris() {
    let fx = fixture();
    for dtype in [ElemType::F16, ElemType::F32] {
        let Some(path) = converted(dtype) else { return };
        let (mf, mut engine) = load(&path);
        let prompt = fx["greedy"]["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(fx["greedy"]["ids"].clone()).unwrap();
        let request = SeqRequest {
            prompt: mf.tokenizer.encode(prompt).unwrap(),
            max_new_tokens: want.len(),
            sampling: SamplingParams::GREEDY,
            seed: 0,
        };
        let (done, _) =
            generate(&mut engine, &mf.tokenizer, vec![request], &[], &[], |_| {}).unwrap();
        assert!(
            done[0].text.contains("Paris"),
            "{dtype:?}: {:?}",
            done[0].text
        );
        if dtype == ElemType::F32 {
            assert_eq!(done[0].tokens, want, "{dtype:?}: {:?}", done[0].text);
        }
    }
}

#[test]
fn batched_prompts_of_different_lengths_match_single_runs() {
    let Some(path) = converted(ElemType::F16) else {
        return;
    };
    let prompts = [
        "The capital of France is",
        "def add(a, b):",
        "List three colors of the rainbow, separated by commas:",
    ];
    let request = |mf: &ModelFile, p: &str| SeqRequest {
        prompt: mf.tokenizer.encode(p).unwrap(),
        max_new_tokens: 12,
        sampling: SamplingParams::GREEDY,
        seed: 0,
    };
    let (mf, mut engine) = load(&path);
    let batch: Vec<SeqRequest> = prompts.iter().map(|p| request(&mf, p)).collect();
    let (together, _) = generate(&mut engine, &mf.tokenizer, batch, &[], &[], |_| {}).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) = generate(
            &mut engine,
            &mf.tokenizer,
            vec![request(&mf, p)],
            &[],
            &[],
            |_| {},
        )
        .unwrap();
        assert_eq!(together[i].tokens, alone[0].tokens, "prompt {p:?}");
    }
}

#[test]
fn quantized_default_model_still_says_paris() {
    let Some(path) = converted(ElemType::F16) else {
        return;
    };
    let fx = fixture();
    let prompt = fx["greedy"]["prompt"].as_str().unwrap();
    for preset in ["bnb_4bit_nf4", "bnb_8bit", "rtn_4bit_g128"] {
        let out =
            std::env::temp_dir().join(format!("qrt-test-{}-{preset}.qrt", std::process::id()));
        let recipe = qrt_runtime::quantize::recipe::preset(preset).unwrap();
        qrt_runtime::quantize::pipeline::quantize_model(
            &path,
            &out,
            &recipe,
            "test",
            &mut |_, _, _| {},
        )
        .unwrap();
        let (mf, mut engine) = load(&out);
        let request = SeqRequest {
            prompt: mf.tokenizer.encode(prompt).unwrap(),
            max_new_tokens: 4,
            sampling: SamplingParams::GREEDY,
            seed: 0,
        };
        let (done, _) =
            generate(&mut engine, &mf.tokenizer, vec![request], &[], &[], |_| {}).unwrap();
        assert!(
            done[0].text.contains("Paris"),
            "{preset}: {:?}",
            done[0].text
        );
        let _ = std::fs::remove_file(out);
    }
}
