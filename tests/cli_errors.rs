//! Bad input through the command line: each case must exit non-zero with a message that names
//! the file and the problem, never a panic, and must leave no output file behind.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    ok: bool,
    stderr: String,
}

fn qrt(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_qrt"))
        .args(args)
        .output()
        .expect("qrt runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "qrt {args:?} panicked:\n{stderr}"
    );
    Outcome {
        ok: out.status.success(),
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
    let long = "a".repeat(300);
    expect_error(
        &["generate", "--model", m, "--prompt", &long],
        &["exceeds the model's context of 256"],
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
}
