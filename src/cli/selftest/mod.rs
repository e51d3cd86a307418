//! `qrt selftest`: every CUDA kernel against the CPU reference on fresh random data, at odd
//! sizes and at the Llama-3.2-1B and Llama-3.1-8B shapes, outputs poisoned (NaN) before each
//! run; then whole models end to end, CUDA logits against CPU logits.

mod e2e;
mod norm16;
mod ops;

use std::path::PathBuf;

use anyhow::bail;
use qrt_runtime::cuda::CudaBackend;
use qrt_runtime::sampling::Rng;

/// Arguments of `qrt selftest`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to test: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Seed of the random inputs (default: from the clock, so each run draws fresh data).
    #[arg(long)]
    seed: Option<u64>,
    /// Also compare CUDA and CPU logits of these .qrt models (e.g. the default model).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Skip the Llama-3.1-8B shapes (a few GB of random weights).
    #[arg(long)]
    skip_8b: bool,
}

/// Relative L2 error of `got` against `want`; a NaN or infinity anywhere (an unwritten,
/// poisoned output) is an infinite error.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Collects check results and prints one line per check.
pub struct Checks {
    failures: usize,
    total: usize,
}

impl Checks {
    fn new() -> Self {
        println!(
            "{:<28} {:>26} {:>10} {:>8}",
            "check", "shape", "rel err", "bound"
        );
        Self {
            failures: 0,
            total: 0,
        }
    }

    /// Records one check: `err` must be at most `bound`.
    pub fn check(&mut self, name: &str, shape: &str, err: f64, bound: f64) {
        self.total += 1;
        let ok = err <= bound;
        if !ok {
            self.failures += 1;
        }
        println!(
            "{name:<28} {shape:>26} {err:>10.2e} {bound:>8.0e} {}",
            if ok { "ok" } else { "FAIL" }
        );
    }
}

/// Runs every check; fails if any exceeds its bound.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ordinal = crate::cli::device::cuda_ordinal(&args.device)?;
    let cuda = CudaBackend::new(ordinal)?;
    println!("device: {}", qrt_runtime::backend::Backend::describe(&cuda));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let mut checks = Checks::new();
    let dir = tempdir()?;
    let result = (|| -> anyhow::Result<()> {
        norm16::run(cuda.device(), &mut rng, &mut checks)?;
        ops::run(&cuda, &dir, &mut rng, &mut checks, !args.skip_8b)?;
        e2e::run(
            &cuda,
            &dir,
            &mut rng,
            &mut checks,
            &args.model,
            !args.skip_8b,
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    if checks.failures > 0 {
        bail!("{} of {} checks failed", checks.failures, checks.total);
    }
    println!("all {} checks passed", checks.total);
    Ok(())
}

/// A fresh directory for the random test files.
fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("qrt-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
