//! The `qrt` command line.

mod cli;

use clap::{Parser, Subcommand};

/// Version line with the build facts recorded by build.rs.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("QRT_GIT_REV"),
    ", ",
    env!("QRT_BUILD_PROFILE"),
    ")\nCUDA kernels: ",
    env!("QRT_CUDA_KERNELS"),
    "\nnvcc: ",
    env!("QRT_NVCC_VERSION"),
    "\ntarget architectures: ",
    env!("QRT_CUDA_ARCHS"),
);

/// qrt: LLM inference with its own quantized format, CPU reference and CUDA kernels.
#[derive(Parser)]
#[command(name = "qrt", version = env!("CARGO_PKG_VERSION"), long_version = LONG_VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads for CPU work (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face (safetensors) or GGUF checkpoint into a .qrt file.
    Convert(cli::convert::Args),
    /// Write a synthetic model (a public configuration with random weights).
    Init(cli::init::Args),
    /// Evaluate a model: CoQA, perplexity, KL-divergence.
    #[command(subcommand)]
    Eval(cli::eval::EvalCommand),
    /// Show a .qrt file's metadata, tensors, storage types and sizes.
    Inspect(cli::inspect::Args),
    /// Generate text from a prompt.
    Generate(cli::generate::Args),
    /// Quantize a model: NF4, FP4, LLM.int8(), GPTQ, AWQ, RTN (see --list-presets).
    Quantize(cli::quantize::Args),
    /// Check kernels against the CPU reference on random data.
    Selftest(cli::selftest::Args),
    /// Measure prefill latency, decode speed and memory per batch size (or kernels).
    Bench(cli::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    // Worker threads with the main thread's stack size (8 MiB): the whole command runs on
    // one of them (below).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .stack_size(8 << 20)
        .build_global();
    if let Err(e) = pool {
        eprintln!("error: cannot start the worker threads: {e}");
        std::process::exit(2);
    }
    // The command runs on a worker of the pool, not on the main thread: each op's parallel
    // loop then starts where it is called, instead of being handed from the main thread to
    // a worker and back (two thread wake-ups per op, which cost a decode step on 2 cores
    // about 15% of its time).
    let mut result = Ok(());
    rayon::scope(|_| {
        result = match cli.command {
            Command::Convert(a) => cli::convert::run(a),
            Command::Eval(c) => cli::eval::run(c),
            Command::Init(a) => cli::init::run(a),
            Command::Inspect(a) => cli::inspect::run(a),
            Command::Generate(a) => cli::generate::run(a),
            Command::Quantize(a) => cli::quantize::run(a),
            Command::Selftest(a) => cli::selftest::run(a),
            Command::Bench(a) => cli::bench::run(a),
        };
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
