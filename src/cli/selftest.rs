//! `qrt selftest`: every CUDA kernel against the CPU reference on fresh random data.

use anyhow::bail;
use half::f16;
use qrt_kernels::CudaDevice;
use qrt_runtime::cpu::rms_norm_row;
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
}

/// Relative L2 error of `got` against `want`; NaN anywhere fails.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.iter().any(|v| !v.is_finite()) {
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

fn reference(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, r) in out.chunks_mut(cols).zip(x.chunks(cols)) {
        rms_norm_row(r, w, eps, o);
    }
    out
}

/// Runs the checks and prints one line per kernel and shape; fails if any exceeds its bound.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ordinal = match args.device.as_str() {
        "cuda" => 0,
        d => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => bail!("--device must be cuda or cuda:N, got '{d}'"),
        },
    };
    let dev = CudaDevice::new(ordinal)?;
    let (major, minor) = dev.compute_capability();
    println!("device {ordinal}: {} (sm_{major}{minor})", dev.name());
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let eps = 1e-5;
    let mut failures = 0;
    println!(
        "{:<18} {:>12} {:>12} {:>10}",
        "kernel", "shape", "rel err", "bound"
    );
    for &(rows, cols) in &[
        (1usize, 576usize),
        (7, 2048),
        (33, 4096),
        (3, 1000),
        (5, 129),
        (2, 14336),
    ] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.next_normal() * 3.0).collect();
        let r: Vec<f32> = (0..rows * cols).map(|_| rng.next_normal()).collect();
        let w: Vec<f32> = (0..cols).map(|_| 1.0 + 0.1 * rng.next_normal()).collect();
        let want = reference(&x, &w, cols, eps);

        let got = dev.rms_norm_f32(&x, &w, rows, cols, eps)?;
        let mut checks = vec![("rms_norm_f32", rel_err(&got, &want), 1e-6)];

        let x16: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
        let x16_f32: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
        let want16 = reference(&x16_f32, &w, cols, eps);
        let got16: Vec<f32> = dev
            .rms_norm_f16(&x16, &w, rows, cols, eps)?
            .iter()
            .map(|v| v.to_f32())
            .collect();
        checks.push(("rms_norm_f16", rel_err(&got16, &want16), 1e-3));

        let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        let want_norm = reference(&sum, &w, cols, eps);
        let (got_sum, got_norm) = dev.add_rms_norm_f32(&x, &r, &w, rows, cols, eps)?;
        checks.push((
            "add_rms_norm_f32",
            rel_err(&got_sum, &sum).max(rel_err(&got_norm, &want_norm)),
            1e-6,
        ));

        for (name, err, bound) in checks {
            let verdict = if err <= bound { "ok" } else { "FAIL" };
            if err > bound {
                failures += 1;
            }
            println!(
                "{name:<18} {:>12} {err:>12.2e} {bound:>10.0e} {verdict}",
                format!("{rows}x{cols}")
            );
        }
    }
    if failures > 0 {
        bail!("{failures} kernel checks failed");
    }
    println!("all kernel checks passed");
    Ok(())
}
