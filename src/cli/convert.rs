//! `qrt convert`.

use std::path::PathBuf;

use anyhow::Context;
use qrt_runtime::import::{import_checkpoint, ImportOptions};

/// Arguments of `qrt convert`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, or a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long = "in")]
    input: PathBuf,
    /// The .qrt file to write.
    #[arg(long)]
    out: PathBuf,
    /// Storage of the weight matrices.
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16", "f32"])]
    dtype: String,
}

/// Runs the conversion with a progress bar.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = ImportOptions {
        dtype: super::parse_dtype(&args.dtype),
        qrt_version: super::qrt_version(),
    };
    let start = std::time::Instant::now();
    let bar = super::progress_bar(0, "convert");
    let report = import_checkpoint(
        &args.input,
        &args.out,
        &options,
        &mut |done, total, name| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        },
    )
    .with_context(|| {
        format!(
            "converting {} into {}",
            args.input.display(),
            args.out.display()
        )
    })?;
    bar.finish_and_clear();
    let sources: Vec<String> = report
        .source_dtypes
        .iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    println!(
        "wrote {}: {} tensors, {:.1} M parameters, {:.1} MB, from {} ({:.1} s)",
        args.out.display(),
        report.tensors,
        report.parameters as f64 / 1e6,
        report.file_bytes as f64 / 1e6,
        sources.join(", "),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
