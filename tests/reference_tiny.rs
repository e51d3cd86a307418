//! The model graph against Hugging Face transformers on tiny checkpoints: grouped-query
//! attention with an untied head (Llama), Llama-3 rope scaling over 200 positions, and q/k/v
//! biases with a tied head (Qwen2). Reference: `tests/fixtures/reference_tiny.json`, made by
//! `tools/reference_tiny.py` (float32, CPU) from the checkpoints in
//! `format/tests/fixtures/gguf/*_hf`.

use std::path::{Path, PathBuf};

use qrt_eval::logits::{compare_top_k, TopKReference};
use qrt_format::container::ElemType;
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::engine::Engine;
use qrt_runtime::import::{import_checkpoint, ImportOptions};
use qrt_runtime::model::Model;
use qrt_runtime::model_file::ModelFile;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a fixture checkpoint, applies the config edit the reference used, converts it.
fn convert(name: &str, edit: &Value) -> PathBuf {
    let base = name.split('+').next().unwrap();
    let src = root().join("format/tests/fixtures/gguf").join(base);
    let dir = std::env::temp_dir().join(format!(
        "qrt-tiny-{}-{}",
        std::process::id(),
        name.replace('+', "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (k, v) in edit.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let out = dir.join("model.qrt");
    let options = ImportOptions {
        dtype: ElemType::F32,
        qrt_version: "test".into(),
    };
    import_checkpoint(&dir, &out, &options, &mut |_, _, _| {}).unwrap();
    out
}

#[test]
fn tiny_models_match_transformers() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/reference_tiny.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    for (name, case) in fixture["models"].as_object().unwrap() {
        let path = convert(name, &case["config_edit"]);
        let mf = ModelFile::open(&path).unwrap();
        let backend = CpuBackend::new();
        let model = Model::load(&backend, &mf.file, mf.config.clone()).unwrap();
        let mut engine = Engine::new(backend, model, 256, 16).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let reference: TopKReference = serde_json::from_value(case.clone()).unwrap();
        let logits = engine.score(&ids).unwrap();
        let a = compare_top_k(&logits, mf.config.vocab_size, &reference).unwrap();
        eprintln!("{name}: {a:?}");
        assert_eq!(a.top1_matches, a.positions, "{name}: {a:?}");
        assert!(a.max_abs_diff < 1e-4, "{name}: {a:?}");
    }
}

/// Token ids outside the vocabulary are refused before anything runs, by the engine and by the
/// model (a backend may replay a recorded pass without running the ops that would check them).
#[test]
fn out_of_vocabulary_tokens_are_refused() {
    let path = convert("tiny_llama_hf+vocab", &serde_json::json!({}));
    let mf = ModelFile::open(&path).unwrap();
    let vocab = mf.config.vocab_size as u32;
    let backend = CpuBackend::new();
    let model = Model::load(&backend, &mf.file, mf.config.clone()).unwrap();
    let mut engine = Engine::new(backend, model, 64, 16).unwrap();
    let request = |prompt: Vec<u32>| qrt_runtime::engine::SeqRequest {
        prompt,
        max_new_tokens: 2,
        sampling: qrt_runtime::sampling::SamplingParams::GREEDY,
        seed: 0,
    };
    let err = engine.add(request(vec![1, vocab])).unwrap_err();
    assert!(
        err.to_string().contains(&format!("token id {vocab}")),
        "{err}"
    );
    let err = engine.score(&[1, vocab + 7]).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert!(engine.add(request(vec![1, vocab - 1])).is_ok());
}

/// Runs `requests` to the end, finishing sequence `stop.0` (in request order) once it has
/// produced `stop.1` tokens, as a caller stopping at an end-of-sequence token would, and
/// scoring `[1, 2, 3]` after the third step (a pass of the same shape as three sequences'
/// decode pass); returns every step's tokens as (sequence, token) pairs, and the score's
/// greedy choices.
fn generate_all(
    engine: &mut Engine<CpuBackend>,
    requests: &[qrt_runtime::engine::SeqRequest],
    stop: (usize, usize),
) -> (Vec<Vec<(usize, u32)>>, Vec<usize>) {
    let ids: Vec<usize> = requests
        .iter()
        .map(|r| engine.add(r.clone()).unwrap())
        .collect();
    let mut produced = vec![0usize; ids.len()];
    let mut steps = Vec::new();
    let mut scored = Vec::new();
    while engine.has_work() {
        let step: Vec<(usize, u32)> = engine
            .step()
            .unwrap()
            .iter()
            .map(|t| (t.seq, t.token))
            .collect();
        for &(seq, _) in &step {
            let i = ids.iter().position(|&id| id == seq).unwrap();
            produced[i] += 1;
            if i == stop.0 && produced[i] == stop.1 {
                engine.finish(seq);
            }
        }
        steps.push(step);
        if steps.len() == 3 {
            let vocab = engine.model().config().vocab_size;
            let logits = engine.score(&[1, 2, 3]).unwrap();
            let best = logits
                .chunks(vocab)
                .map(|row| {
                    (0..vocab)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap()
                })
                .collect();
            scored = best;
        }
    }
    (steps, scored)
}

/// Decode steps queued one pass ahead (the next pass's tokens chosen by this pass's argmax
/// without the host) give the same tokens, step by step, as steps read one at a time: greedy
/// sequences of different lengths, one stopped by its caller, one sampling (which keeps the
/// engine from running ahead while it runs), and a scoring pass between two steps.
#[test]
fn running_ahead_changes_no_token() {
    let path = convert("tiny_llama_hf+ahead", &serde_json::json!({}));
    let mf = ModelFile::open(&path).unwrap();
    let request = |prompt: Vec<u32>, max_new_tokens, sampling| qrt_runtime::engine::SeqRequest {
        prompt,
        max_new_tokens,
        sampling,
        seed: 3,
    };
    let greedy = qrt_runtime::sampling::SamplingParams::GREEDY;
    let sampled = qrt_runtime::sampling::SamplingParams {
        temperature: 0.9,
        ..greedy
    };
    let cases = [
        (
            vec![
                request(vec![1, 5, 9], 12, greedy),
                request(vec![7], 4, greedy),
                request(vec![2, 3, 4, 5, 6, 7, 8], 9, greedy),
            ],
            (0, 6),
        ),
        (
            vec![
                request(vec![4, 4], 7, greedy),
                request(vec![9, 1, 3], 5, sampled),
            ],
            (0, 99),
        ),
    ];
    for (requests, stop) in cases {
        let mut runs = Vec::new();
        for ahead in [false, true] {
            let backend = CpuBackend::new();
            let model = Model::load(&backend, &mf.file, mf.config.clone()).unwrap();
            let mut engine = Engine::new(backend, model, 256, 16).unwrap();
            engine.set_run_ahead(ahead);
            runs.push(generate_all(&mut engine, &requests, stop));
            assert_eq!(engine.kv_blocks_in_use(), 0, "every block freed");
        }
        assert_eq!(runs[0], runs[1]);
        assert_eq!(runs[0].1.len(), 3);
        let tokens: usize = runs[0].0.iter().map(Vec::len).sum();
        assert!(tokens > 10, "{tokens} tokens");
    }
}

/// What `qrt bench` does between batch sizes: an idle engine gives back its backend and model
/// (refused while a sequence waits) with its kept buffers and caches freed, and an engine
/// rebuilt from them generates the same tokens.
#[test]
fn an_engine_rebuilt_from_its_parts_generates_the_same_tokens() {
    let path = convert("tiny_llama_hf+parts", &serde_json::json!({}));
    let mf = ModelFile::open(&path).unwrap();
    let greedy = qrt_runtime::sampling::SamplingParams::GREEDY;
    let requests: Vec<_> = [vec![1, 5, 9], vec![7], vec![2, 3, 4, 5, 6]]
        .into_iter()
        .map(|prompt| qrt_runtime::engine::SeqRequest {
            prompt,
            max_new_tokens: 8,
            sampling: greedy,
            seed: 1,
        })
        .collect();
    let engine_on = |backend: CpuBackend| {
        let model = Model::load(&backend, &mf.file, mf.config.clone()).unwrap();
        Engine::new(backend, model, 256, 16).unwrap()
    };
    let mut busy = engine_on(CpuBackend::new());
    busy.add(requests[0].clone()).unwrap();
    let refused = busy
        .into_parts()
        .err()
        .expect("a waiting sequence keeps the engine");
    assert!(
        refused.to_string().contains("still has sequences"),
        "{refused}"
    );

    let tokens = |steps: Vec<Vec<(usize, u32)>>| -> Vec<u32> {
        steps.iter().flatten().map(|&(_, t)| t).collect()
    };
    let mut engine = engine_on(CpuBackend::new());
    let first = tokens(generate_all(&mut engine, &requests, (0, 99)).0);
    assert_eq!(first.len(), 24);
    engine.model().release_workspaces();
    assert_eq!(
        tokens(generate_all(&mut engine, &requests, (0, 99)).0),
        first
    );
    let (backend, model) = engine.into_parts().unwrap();
    let mut rebuilt = Engine::new(backend, model, 128, 16).unwrap();
    assert_eq!(
        tokens(generate_all(&mut rebuilt, &requests, (0, 99)).0),
        first
    );
}
