//! Bad input through the command line: each case must exit non-zero with a message that names
//! the file and the problem, never a panic, and must leave no output file behind.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn qrt(args: &[&str]) -> Outcome {
    qrt_with(args, &[])
}

/// [`qrt`] with environment variables set.
fn qrt_with(args: &[&str], vars: &[(&str, &str)]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_qrt"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("qrt runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "qrt {args:?} panicked:\n{stderr}"
    );
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn expect_error(args: &[&str], needles: &[&str]) {
    let o = qrt(args);
    assert!(!o.ok, "qrt {args:?} should fail");
    for n in needles {
        assert!(
            o.stderr.contains(n),
            "qrt {args:?}: message lacks {n:?}:\n{}",
            o.stderr
        );
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qrt-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("format/tests/fixtures/gguf")
        .join(rel)
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.qrt");
    let o = qrt(&[
        "init",
        "--config",
        "tiny",
        "--random",
        "--seed",
        "3",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(o.ok, "{}", o.stderr);
    path
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn generation_requests_that_cannot_be_served() {
    let dir = scratch("gen");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    expect_error(
        &["generate", "--model", m, "--prompt", ""],
        &["prompt is empty"],
    );
    let long = "a".repeat(1100);
    expect_error(
        &["generate", "--model", m, "--prompt", &long],
        &["exceeds the model's context of 1024"],
    );
    expect_error(
        &["generate", "--model", "/nonexistent/m.qrt", "--prompt", "x"],
        &["/nonexistent/m.qrt"],
    );
    let ok = qrt(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
    ]);
    assert!(ok.ok, "{}", ok.stderr);
}

#[test]
fn corrupt_and_truncated_model_files() {
    let dir = scratch("corrupt");
    let model = tiny_model(&dir);
    let bytes = std::fs::read(&model).unwrap();
    let bad = dir.join("bad.qrt");
    let b = bad.to_str().unwrap();
    for cut in [0, 3, 40, 64, 200, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        expect_error(&["inspect", b], &[b]);
        expect_error(&["generate", "--model", b, "--prompt", "x"], &[b]);
    }
    let mut garbage = bytes.clone();
    garbage[..4].copy_from_slice(b"GGUF");
    std::fs::write(&bad, &garbage).unwrap();
    expect_error(&["inspect", b], &[b, "not a .qrt file"]);
    let mut flipped = bytes.clone();
    let last = flipped.len() - 300;
    flipped[last] ^= 0x55;
    std::fs::write(&bad, &flipped).unwrap();
    let plain = qrt(&["inspect", b]);
    assert!(
        plain.ok,
        "a flipped data byte is only found by --verify: {}",
        plain.stderr
    );
    expect_error(&["inspect", b, "--verify"], &[b, "checksum"]);
}

#[test]
fn bad_source_checkpoints_leave_no_output() {
    let dir = scratch("convert");
    let out = dir.join("out.qrt");
    let o = out.to_str().unwrap();
    let convert_fails = |src: &Path, needles: &[&str]| {
        expect_error(
            &["convert", "--in", src.to_str().unwrap(), "--out", o],
            needles,
        );
        assert!(
            !out.exists(),
            "no output after a failed conversion from {}",
            src.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    };

    let gguf = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    let truncated = dir.join("truncated.gguf");
    for cut in [10, 100, gguf.len() / 2] {
        std::fs::write(&truncated, &gguf[..cut]).unwrap();
        convert_fails(&truncated, &["truncated.gguf"]);
    }

    let unknown_arch = dir.join("neox");
    copy_dir(&fixture("tiny_qwen2_hf"), &unknown_arch);
    let config = std::fs::read_to_string(unknown_arch.join("config.json")).unwrap();
    let config = config
        .replace("\"qwen2\"", "\"gpt_neox\"")
        .replace("Qwen2ForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(unknown_arch.join("config.json"), config).unwrap();
    convert_fails(
        &unknown_arch,
        &["GPTNeoXForCausalLM", "unsupported architecture"],
    );

    let no_tokenizer = dir.join("no_tokenizer");
    copy_dir(&fixture("tiny_qwen2_hf"), &no_tokenizer);
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    convert_fails(&no_tokenizer, &["tokenizer"]);

    let wrong_shape = dir.join("wrong_shape");
    copy_dir(&fixture("tiny_qwen2_hf"), &wrong_shape);
    let config = std::fs::read_to_string(wrong_shape.join("config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 96");
    std::fs::write(wrong_shape.join("config.json"), config).unwrap();
    convert_fails(&wrong_shape, &["shape"]);

    let short_shard = dir.join("short_shard");
    copy_dir(&fixture("tiny_qwen2_hf"), &short_shard);
    let st = std::fs::read(short_shard.join("model.safetensors")).unwrap();
    std::fs::write(short_shard.join("model.safetensors"), &st[..st.len() - 100]).unwrap();
    convert_fails(&short_shard, &["model.safetensors"]);
}

#[test]
fn no_gpu_is_a_clear_message() {
    let o = qrt(&["selftest", "--device", "cuda"]);
    if o.ok {
        eprintln!("a GPU is present; the no-GPU message is not tested here");
        return;
    }
    assert!(
        o.stderr.contains("CUDA") || o.stderr.contains("cuda"),
        "{}",
        o.stderr
    );
    // Every command that can run on a GPU says so the same way.
    let dir = scratch("nogpu");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "one two three four five six seven eight nine ten ".repeat(50),
    )
    .unwrap();
    let t = text.to_str().unwrap();
    for args in [
        &[
            "generate", "--model", m, "--prompt", "hi", "--device", "cuda",
        ][..],
        &["bench", "--model", m, "--device", "cuda:0"],
        &["bench", "kernels"],
        &[
            "eval", "ppl", "--model", m, "--data", t, "--ctx", "64", "--device", "cuda",
        ],
    ] {
        expect_error(args, &["CUDA"]);
    }
    expect_error(
        &[
            "generate", "--model", m, "--prompt", "hi", "--device", "gpu",
        ],
        &["expected auto, cpu, cuda or cuda:N"],
    );
    expect_error(
        &["bench", "kernels", "--device", "cpu"],
        &["cuda or cuda:N"],
    );
}

#[test]
fn a_gpu_route_qrt_lacks_is_an_error_even_where_the_cpu_could_serve() {
    let dir = scratch("route");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    for device in ["auto", "cuda"] {
        let args = [
            "generate", "--model", m, "--prompt", "hi", "--device", device,
        ];
        let o = qrt_with(&args, &[("QRT_CUDA_ARCH", "sm_75")]);
        assert!(!o.ok, "qrt {args:?} with QRT_CUDA_ARCH=sm_75 should fail");
        assert!(
            o.stderr.contains("QRT_CUDA_ARCH=sm_75") && o.stderr.contains("sm_80"),
            "{}",
            o.stderr
        );
    }
    // The route that exists is no error where there is no GPU: auto runs on the CPU.
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ];
    let o = qrt_with(&args, &[("QRT_CUDA_ARCH", "sm_80")]);
    assert!(o.ok, "{}", o.stderr);
}

#[test]
fn bench_measures_a_model_on_the_cpu_and_refuses_bad_requests() {
    let dir = scratch("bench");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let out = dir.join("bench.json");
    let o = qrt(&[
        "bench",
        "--model",
        m,
        "--device",
        "cpu",
        "--batch",
        "1,3",
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.ok, "{}", o.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, batch) in results.iter().zip([1, 3]) {
        assert_eq!(r["batch"], batch);
        assert_eq!(r["decode_step_ms"]["n"], 2);
        // A decode step reads every weight and the cache: at least the file's matrices.
        assert!(r["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["bytes_per_step"].as_u64().unwrap() > 0);
        // Each sequence holds prompt + generated tokens, in blocks of 16.
        assert_eq!(r["kv_bytes"].as_u64().unwrap() % 16, 0);
        // The CPU has no device memory to measure: the fields are there, null.
        for field in ["peak_device_bytes_allocator", "peak_device_bytes_nvml"] {
            assert_eq!(r.get(field), Some(&serde_json::Value::Null), "{field}");
        }
    }
    assert!(report["copy_bandwidth_gbs"].as_f64().unwrap() > 0.0);
    assert!(report["device"].as_str().unwrap().starts_with("cpu"));
    expect_error(&["bench", "--batch", "1"], &["needs --model"]);
    expect_error(
        &["bench", "--model", m, "--device", "cpu", "--batch", "0"],
        &["at least 1"],
    );
    expect_error(
        &[
            "bench",
            "--model",
            m,
            "--device",
            "cpu",
            "--prompt-len",
            "1000",
        ],
        &["exceeds the model's context of 1024"],
    );
    expect_error(
        &[
            "bench",
            "--model",
            m,
            "--device",
            "cpu",
            "--batch",
            "8",
            "--prompt-len",
            "100",
            "--gen-len",
            "28",
            "--kv-memory",
            "64KiB",
        ],
        &["KV blocks", "--kv-memory"],
    );
}

fn story(id: &str, turns: usize) -> String {
    let questions: Vec<String> = (0..turns).map(|i| format!("\"what is {i}?\"")).collect();
    let answers: Vec<String> = (0..turns).map(|i| format!("\"it is {i}\"")).collect();
    format!(
        "{{\"id\": \"{id}\", \"source\": \"mctest\", \"story\": \"A short story about numbers.\", \"questions\": [{}], \"answers\": {{\"input_text\": [{}]}}}}",
        questions.join(", "),
        answers.join(", ")
    )
}

#[test]
fn eval_runs_end_to_end_and_refuses_bad_data() {
    let dir = scratch("eval");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let data = dir.join("coqa.jsonl");
    std::fs::write(
        &data,
        format!("{}\n{}\n{}\n", story("a", 2), story("b", 3), story("c", 1)),
    )
    .unwrap();
    let d = data.to_str().unwrap();
    let out = dir.join("run.json");
    let o = out.to_str().unwrap();
    let ok = qrt(&[
        "eval", "coqa", "--model", m, "--data", d, "--limit", "3", "--out", o,
    ]);
    assert!(ok.ok, "{}", ok.stderr);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(results["summary"]["n"], 3);
    assert_eq!(results["per_doc"].as_array().unwrap().len(), 3);
    let f1 = results["summary"]["f1"]["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f1));
    let predictions = std::fs::read_to_string(dir.join("run.predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 3);
    let same = qrt(&["eval", "compare", o, o]);
    let text = &same.stdout;
    assert!(
        same.ok && text.contains("+0.00") && text.contains("within noise"),
        "{text}"
    );

    expect_error(
        &[
            "eval", "coqa", "--model", m, "--data", d, "--limit", "4", "--out", o,
        ],
        &["--limit 4", "coqa.jsonl"],
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    expect_error(
        &[
            "eval",
            "coqa",
            "--model",
            m,
            "--data",
            empty.to_str().unwrap(),
        ],
        &["empty.jsonl"],
    );
    let no_questions = dir.join("noq.jsonl");
    std::fs::write(&no_questions, story("z", 0) + "\n").unwrap();
    expect_error(
        &[
            "eval",
            "coqa",
            "--model",
            m,
            "--data",
            no_questions.to_str().unwrap(),
        ],
        &["noq.jsonl", "no questions"],
    );
    let wrong_schema = dir.join("wrong.jsonl");
    std::fs::write(&wrong_schema, "{\"text\": \"hello\"}\n").unwrap();
    expect_error(
        &[
            "eval",
            "coqa",
            "--model",
            m,
            "--data",
            wrong_schema.to_str().unwrap(),
        ],
        &["wrong.jsonl"],
    );
    expect_error(&["eval", "compare", d, o], &["coqa.jsonl"]);

    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let t = text.to_str().unwrap();
    let logits = dir.join("base.logits");
    let ppl_out = dir.join("ppl.json");
    let p = ppl_out.to_str().unwrap();
    let args = [
        "eval", "ppl", "--model", m, "--data", t, "--ctx", "128", "--out", p,
    ];
    let save = [&args[..], &["--save-logits", logits.to_str().unwrap()]].concat();
    assert!(qrt(&save).ok);
    for base in [m, logits.to_str().unwrap()] {
        let with_base = [&args[..], &["--kl-base", base]].concat();
        let run = qrt(&with_base);
        assert!(run.ok, "{}", run.stderr);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ppl_out).unwrap()).unwrap();
        let kl = r["summary"]["kl"]["mean"].as_f64().unwrap();
        assert!(
            kl.abs() < 1e-6,
            "KL of a model against itself ({base}): {kl}"
        );
        assert_eq!(r["summary"]["kl"]["top1_agreement"], 1.0);
    }
    expect_error(
        &["eval", "ppl", "--model", m, "--data", t, "--ctx", "4096"],
        &["exceeds the model's context"],
    );
    let short = dir.join("short.txt");
    std::fs::write(&short, "tiny").unwrap();
    expect_error(
        &[
            "eval",
            "ppl",
            "--model",
            m,
            "--data",
            short.to_str().unwrap(),
            "--ctx",
            "128",
        ],
        &["short.txt", "no window"],
    );
    let l = logits.to_str().unwrap();
    expect_error(
        &[
            "eval",
            "ppl",
            "--model",
            m,
            "--data",
            t,
            "--ctx",
            "64",
            "--out",
            p,
            "--kl-base",
            l,
        ],
        &["base.logits", "other windows"],
    );
}

#[test]
fn quantize_refuses_bad_requests_and_leaves_no_file() {
    let dir = scratch("quantize");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let out = dir.join("q.qrt");
    let o = out.to_str().unwrap();
    let calib = dir.join("calib.txt");
    std::fs::write(
        &calib,
        "Some calibration text about the sea and ships. ".repeat(50),
    )
    .unwrap();
    let c = calib.to_str().unwrap();
    let fails = |args: &[&str], needles: &[&str]| {
        let full = [&["quantize", "--in", m, "--out", o][..], args].concat();
        expect_error(&full, needles);
        assert!(
            !out.exists(),
            "no output after a failed quantization ({args:?})"
        );
    };
    fails(
        &["--preset", "gptq_5bit"],
        &["unknown preset", "gptq_4bit_g128"],
    );
    fails(&["--method", "zip"], &["unknown method"]);
    fails(&["--method", "rtn", "--bits", "5"], &["5"]);
    fails(
        &["--method", "rtn", "--group-size", "4096"],
        &["wider than the layer"],
    );
    fails(&["--preset", "gptq_4bit_g128"], &["--calib"]);
    fails(
        &[
            "--preset",
            "gptq_4bit_g128",
            "--calib",
            "/nonexistent/calib.txt",
        ],
        &["/nonexistent/calib.txt"],
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    fails(
        &[
            "--preset",
            "awq_4bit_g128",
            "--group-size",
            "32",
            "--calib",
            empty.to_str().unwrap(),
        ],
        &["empty"],
    );
    fails(
        &[
            "--preset",
            "gptq_4bit_g128",
            "--group-size",
            "32",
            "--calib",
            c,
            "--seqlen",
            "100000",
        ],
        &["shorter than one calibration window"],
    );

    let ok = qrt(&[
        "quantize",
        "--in",
        m,
        "--out",
        o,
        "--preset",
        "bnb_4bit_nf4",
    ]);
    assert!(ok.ok, "{}", ok.stderr);
    let again = dir.join("again.qrt");
    expect_error(
        &[
            "quantize",
            "--in",
            o,
            "--out",
            again.to_str().unwrap(),
            "--preset",
            "rtn_4bit_g128",
        ],
        &["already quantized"],
    );
    let text = qrt(&["quantize", "--list-presets"]).stdout;
    for p in [
        "fp16_baseline",
        "bnb_8bit",
        "bnb_4bit_nf4_no_double",
        "gptq_3bit_g128",
        "awq_4bit_g128",
        "rtn_4bit_g128",
    ] {
        assert!(text.contains(p), "{p} listed");
    }
}

#[test]
fn every_preset_quantizes_a_model_that_runs() {
    let dir = scratch("presets");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let calib = dir.join("calib.txt");
    std::fs::write(
        &calib,
        "Calibration passages: rivers, mountains, 1789 and the sea. ".repeat(60),
    )
    .unwrap();
    let listed = qrt(&["quantize", "--list-presets"]).stdout;
    for line in listed.lines() {
        let preset = line.split_whitespace().next().unwrap();
        let out = dir.join(format!("{preset}.qrt"));
        let o = out.to_str().unwrap();
        let args = [
            "quantize",
            "--in",
            m,
            "--out",
            o,
            "--preset",
            preset,
            "--group-size",
            "32",
        ];
        let args = if preset.starts_with("bnb") || preset == "fp16_baseline" {
            &args[..7]
        } else {
            &args[..]
        };
        let q = qrt(&[
            args,
            &[
                "--calib",
                calib.to_str().unwrap(),
                "--samples",
                "4",
                "--seqlen",
                "64",
            ],
        ]
        .concat());
        assert!(q.ok, "{preset}: {}", q.stderr);
        let g = qrt(&[
            "generate",
            "--model",
            o,
            "--prompt",
            "hello",
            "--max-tokens",
            "4",
        ]);
        assert!(g.ok, "{preset}: {}", g.stderr);
        let i = qrt(&["inspect", o, "--verify"]);
        let text = &i.stdout;
        assert!(
            i.ok && text.contains(&format!("\"{preset}\"")) || preset == "fp16_baseline",
            "{preset}: {text}"
        );
    }
}
