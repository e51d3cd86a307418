//! `qrt eval` against transformers: perplexity on the first WikiText-2 windows and CoQA
//! predictions on the first dev stories, for the default model in f32
//! (`tests/fixtures/reference_eval.json`, made by `tools/reference_eval.py`).

mod common;

use common::{converted, fixture_named, shared_data};
use qrt_eval::coqa::data::load_coqa;
use qrt_eval::coqa::run::run_coqa;
use qrt_eval::ppl::{self, BaseSource};
use qrt_format::container::ElemType;
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::engine::Engine;
use qrt_runtime::model::Model;
use qrt_runtime::model_file::ModelFile;

fn engine(mf: &ModelFile, kv_tokens: usize) -> Engine<CpuBackend> {
    let backend = CpuBackend::new();
    let model = Model::load(&backend, &mf.file, mf.config.clone()).unwrap();
    Engine::new(backend, model, kv_tokens, 16).unwrap()
}

#[test]
fn perplexity_matches_transformers() {
    let (Some(model), Some(data)) = (
        converted(ElemType::F32),
        shared_data("wikitext-2-raw/wiki.test.raw"),
    ) else {
        return;
    };
    let reference = &fixture_named("reference_eval.json")["perplexity"];
    let mf = ModelFile::open(&model).unwrap();
    let text = std::fs::read_to_string(data).unwrap();
    let tokens = mf.tokenizer.encode_with(&text, false).unwrap();
    let ctx = reference["ctx"].as_u64().unwrap() as usize;
    let n = reference["windows"].as_u64().unwrap() as usize;
    // transformers' GGUF tokenizer drops SmolLM's digit splitting, so the whole-file token
    // counts differ slightly (304,830 here, 304,839 there); the scored windows are identical.
    let want_ids: Vec<u32> = serde_json::from_value(reference["window_ids"].clone()).unwrap();
    assert_eq!(
        &tokens[..n * ctx],
        &want_ids[..],
        "token ids of the scored windows"
    );
    let windows = &ppl::windows(&tokens, ctx, None)[..n];
    let mut e = engine(&mf, ctx);
    let scores = ppl::evaluate(&mut e, BaseSource::None, windows, None, &mut |_, _| {}).unwrap();
    let per_window = ppl::scored_positions(ctx).len();
    for (w, want) in reference["window_nll_sums"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let got: f64 = scores[w * per_window..(w + 1) * per_window]
            .iter()
            .map(|s| s.nll)
            .sum();
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() / want < 1e-5,
            "window {w}: NLL sum {got} vs {want}"
        );
    }
    let s = ppl::summarize(&scores, true);
    let want = reference["ppl"].as_f64().unwrap();
    assert!(
        (s.ppl - want).abs() / want < 1e-5,
        "ppl {} vs {want}",
        s.ppl
    );
}

#[test]
fn coqa_predictions_match_transformers() {
    let (Some(model), Some(data)) = (
        converted(ElemType::F32),
        shared_data("coqa/coqa-dev.hf.jsonl"),
    ) else {
        return;
    };
    let reference = fixture_named("reference_eval.json")["coqa"]
        .as_array()
        .unwrap()
        .clone();
    let mf = ModelFile::open(&model).unwrap();
    let docs = load_coqa(&data).unwrap()[..reference.len()].to_vec();
    let mut e = engine(&mf, 4 * 1400);
    e.set_max_running(4);
    let results = run_coqa(
        &mut e,
        &mf.tokenizer,
        &docs,
        &mf.config.eos_token_ids,
        &mut |_, _| {},
    )
    .unwrap();
    for (r, want) in results.iter().zip(&reference) {
        assert_eq!(r.id, want["id"].as_str().unwrap());
        assert_eq!(
            r.prompt_tokens as u64,
            want["prompt_tokens"].as_u64().unwrap(),
            "story {}",
            r.id
        );
        assert_eq!(
            r.prediction,
            want["prediction"].as_str().unwrap(),
            "story {}",
            r.id
        );
    }
}
