//! `qrt init`: synthetic models of public configurations.

use std::path::PathBuf;

use anyhow::{bail, Context};
use qrt_runtime::synthetic::{preset, write_random_model};

/// Arguments of `qrt init`.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration: tiny, smollm2-135m, llama-3.2-1b or llama-3.1-8b.
    #[arg(long)]
    config: String,
    /// Random weights (N(0, 0.02²), norms 1): the only initialisation there is.
    #[arg(long)]
    random: bool,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage of the weight matrices.
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16", "f32"])]
    dtype: String,
    /// The .qrt file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the synthetic model with a progress bar.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.random {
        bail!("qrt init only makes random models: pass --random");
    }
    let config = preset(&args.config)?;
    let dtype = super::parse_dtype(&args.dtype);
    let bar = super::progress_bar(0, "init");
    write_random_model(
        &config,
        dtype,
        args.seed,
        &args.out,
        &super::qrt_version(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {}: random {} ({:.1} MB)",
        args.out.display(),
        args.config,
        bytes as f64 / 1e6
    );
    Ok(())
}
