//! Shared by the end-to-end tests: the default model, converted once per test binary, and the
//! reference fixtures.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qrt_format::container::ElemType;
use qrt_runtime::import::{import_checkpoint, ImportOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The default model installed by tools/setup.sh, or `None` (with a message).
pub fn default_gguf() -> Option<PathBuf> {
    let home = std::env::var_os("QRT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/qrt")
        });
    let path = home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; run tools/setup.sh to install the default model",
            path.display()
        );
        None
    }
}

/// A committed reference fixture, parsed.
pub fn fixture_named(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reference fixtures are committed");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A fingerprint of the code that writes converted models (the format crate and the runtime's
/// import path), so that a cached conversion is never reused across code changes.
fn converter_fingerprint() -> String {
    fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(&root.join("format/src"), &mut files);
    for f in ["import.rs", "tokenizer.rs", "model_file.rs"] {
        files.push(root.join("runtime/src").join(f));
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(std::fs::read(&f).unwrap_or_default());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The default model converted to `dtype`, shared by every test binary through a file in the
/// temporary directory, named by the converter's fingerprint (made once, atomically).
pub fn converted(dtype: ElemType) -> Option<PathBuf> {
    static F16: OnceLock<Option<PathBuf>> = OnceLock::new();
    static F32: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = if dtype == ElemType::F16 { &F16 } else { &F32 };
    cell.get_or_init(|| {
        let gguf = default_gguf()?;
        let out = std::env::temp_dir().join(format!(
            "qrt-test-smollm2-{dtype:?}-{}.qrt",
            converter_fingerprint()
        ));
        if qrt_runtime::model_file::ModelFile::open(&out).is_err() {
            let options = ImportOptions {
                dtype,
                qrt_version: "test".into(),
            };
            import_checkpoint(&gguf, &out, &options, &mut |_, _, _| {})
                .expect("conversion succeeds");
        }
        Some(out)
    })
    .clone()
}

/// The transformers reference for the default model's logits and tokenizer.
pub fn fixture() -> Value {
    fixture_named("reference_smollm2.json")
}

/// `../shared/data/<rel>`, or `None` (with a message) when the shared data is absent.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (the shared data folder is not beside the checkout)",
            path.display()
        );
        None
    }
}
