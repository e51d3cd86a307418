//! Runs the RMSNorm kernels on a GPU against an f64 CPU reference.
//!
//! Usage: `cargo run --release -p qrt-kernels --example rmsnorm_check [DEVICE]`
//! (DEVICE defaults to 0). Exits non-zero if any element is off.
//!
//! Error bounds, per element, against the reference computed in f64 from the
//! exact inputs:
//! - f32: |y - ref| <= 1e-5 * |ref| (f32 accumulation over at most 2^16
//!   columns, then two f32 multiplies);
//! - f16: |y - ref| <= 2^-10 * |ref| + 2^-24 (one f16 rounding of the result,
//!   2^-11 relative, plus f32 error; 2^-24 covers f16 subnormals).
//!
//! Outputs are NaN-poisoned before each launch, so unwritten elements fail.

use std::process::ExitCode;

use half::f16;
use qrt_kernels::{CudaDevice, KernelError, BUILD_INFO};

/// xorshift64* pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Reference RMSNorm of one row, in f64.
fn reference_row(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean_sq + f64::from(eps)).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &w)| v * scale * f64::from(w))
        .collect()
}

/// Tracks the worst error of one check against `rel * |ref| + abs`.
struct Check {
    label: String,
    rel: f64,
    abs: f64,
    worst: f64,
    failures: usize,
    first_failure: Option<String>,
}

impl Check {
    fn new(label: String, rel: f64, abs: f64) -> Self {
        Self {
            label,
            rel,
            abs,
            worst: 0.0,
            failures: 0,
            first_failure: None,
        }
    }

    /// `got` (possibly NaN) against `want` at flat index `i`.
    fn element(&mut self, i: usize, got: f64, want: f64) {
        let err = (got - want).abs();
        let bound = self.rel * want.abs() + self.abs;
        if err.is_nan() || err > bound {
            self.failures += 1;
            if self.first_failure.is_none() {
                self.first_failure = Some(format!("[{i}] got {got:e}, want {want:e}"));
            }
        }
        let scaled = err / bound;
        if scaled.is_nan() || scaled > self.worst {
            self.worst = if scaled.is_nan() {
                f64::INFINITY
            } else {
                scaled
            };
        }
    }

    /// Prints the result; true if it passed.
    fn report(&self) -> bool {
        let status = if self.failures == 0 { "ok  " } else { "FAIL" };
        print!(
            "{status} {:<46} worst err/bound {:.3}",
            self.label, self.worst
        );
        if let Some(first) = &self.first_failure {
            print!("  {} bad, first {first}", self.failures);
        }
        println!();
        self.failures == 0
    }
}

/// Relative bound for f32 outputs.
const F32_REL: f64 = 1e-5;
/// Relative and absolute bounds for f16 outputs.
const F16_REL: f64 = 1.0 / 1024.0;
const F16_ABS: f64 = 1.0 / 16_777_216.0;

/// Random activations: normal, times a per-row scale in [1e-2, 1e2].
fn activations(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let scale = 10f64.powf(rng.uniform() * 4.0 - 2.0);
        out.extend((0..cols).map(|_| rng.normal() * scale));
    }
    out
}

/// Random weights around 1.
fn weights(rng: &mut Rng, cols: usize) -> Vec<f32> {
    (0..cols)
        .map(|_| (1.0 + 0.2 * rng.normal()) as f32)
        .collect()
}

fn check_rows(check: &mut Check, x: &[f64], w: &[f32], eps: f32, cols: usize, got: &[f64]) {
    for (r, row) in x.chunks(cols).enumerate() {
        for (c, want) in reference_row(row, w, eps).into_iter().enumerate() {
            check.element(r * cols + c, got[r * cols + c], want);
        }
    }
}

fn run_case(
    dev: &CudaDevice,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<bool, KernelError> {
    let w = weights(rng, cols);
    let mut ok = true;

    // f32 RMSNorm.
    let x: Vec<f32> = activations(rng, rows, cols)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let y = dev.rms_norm_f32(&x, &w, rows, cols, eps)?;
    let mut check = Check::new(
        format!("rms_norm_f32 {rows}x{cols} eps={eps:e}"),
        F32_REL,
        0.0,
    );
    check_rows(
        &mut check,
        &x64,
        &w,
        eps,
        cols,
        &y.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    );
    ok &= check.report();

    // f16 RMSNorm.
    let xh: Vec<f16> = activations(rng, rows, cols)
        .into_iter()
        .map(f16::from_f64)
        .collect();
    let xh64: Vec<f64> = xh.iter().map(|v| v.to_f64()).collect();
    let y = dev.rms_norm_f16(&xh, &w, rows, cols, eps)?;
    let mut check = Check::new(
        format!("rms_norm_f16 {rows}x{cols} eps={eps:e}"),
        F16_REL,
        F16_ABS,
    );
    check_rows(
        &mut check,
        &xh64,
        &w,
        eps,
        cols,
        &y.iter().map(|v| v.to_f64()).collect::<Vec<_>>(),
    );
    ok &= check.report();

    Ok(ok)
}

fn main() -> ExitCode {
    let ordinal = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: rmsnorm_check [DEVICE]: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "qrt-kernels: cuda_kernels={} nvcc={:?} archs={:?}",
        BUILD_INFO.cuda_kernels, BUILD_INFO.nvcc_version, BUILD_INFO.archs
    );
    let dev = match CudaDevice::new(ordinal) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("cannot open CUDA device {ordinal}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (major, minor) = dev.compute_capability();
    println!(
        "device {ordinal}: {} (compute capability {major}.{minor}, {:.1} GiB), using {} PTX",
        dev.name(),
        dev.total_memory() as f64 / (1u64 << 30) as f64,
        dev.arch()
    );

    // (rows, cols): vectorised (cols % 8 == 0) and scalar (odd, or cols % 4 == 2)
    // paths, a single warp, many loop trips per thread, many rows.
    let cases = [
        (1, 1),
        (3, 7),
        (4, 64),
        (8, 576),
        (5, 577),
        (3, 578),
        (64, 576),
        (2, 1000),
        (2, 4096),
        (3, 4098),
        (2, 8192),
        (1, 65536),
        (2048, 576),
    ];
    let mut rng = Rng::new(0x5eed);
    let mut ok = true;
    for (i, &(rows, cols)) in cases.iter().enumerate() {
        let eps = if i % 2 == 0 { 1e-5 } else { 1e-6 };
        match run_case(&dev, &mut rng, rows, cols, eps) {
            Ok(case_ok) => ok &= case_ok,
            Err(e) => {
                eprintln!("FAIL {rows}x{cols}: {e}");
                ok = false;
            }
        }
    }
    if ok {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAILED");
        ExitCode::FAILURE
    }
}
