//! `qrt bench`: prefill latency, decode step time, tokens/s, memory and the fraction of the
//! bandwidth roofline reached, per batch size; `qrt bench kernels`: GEMV and GEMM speed per
//! shape. Results go to JSON and a table.

mod kernels;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use qrt_bench::nvml::{GpuMemory, PeakSampler};
use qrt_bench::report::{write_json, BatchResult, BenchReport, PeakMemory};
use qrt_bench::stats::Summary;
use qrt_runtime::backend::Backend;
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::cuda::CudaBackend;
use qrt_runtime::engine::{Engine, SeqRequest};
use qrt_runtime::model_file::ModelFile;
use qrt_runtime::sampling::{Rng, SamplingParams};

use super::device::{engine_with, kv_bytes_per_token, with_engine, DeviceArgs, KV_BLOCK_SIZE};

/// Arguments of `qrt bench`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// GEMV and GEMM kernels at the Llama-3.2-1B and 8B shapes: GB/s and TFLOP/s.
    Kernels(kernels::Args),
}

/// Arguments of a model benchmark.
#[derive(clap::Args)]
struct ModelArgs {
    /// The .qrt model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Batch sizes (sequences generated together), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens generated per sequence (the first comes from the prefill pass).
    #[arg(long, default_value_t = 128)]
    gen_len: usize,
    /// Untimed runs per batch size.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs per batch size.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Results JSON (default: <model>.bench.json).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// What a benchmark reads from a backend besides the engine: its memory ceilings.
trait Probe {
    /// Measured copy bandwidth, bytes read plus written per second.
    fn copy_bandwidth(&self) -> anyhow::Result<f64>;
    /// Starts the allocator's high-water mark anew, where the backend has one.
    fn reset_peak_allocated(&self);
    /// The allocator's high-water mark, where the backend has one.
    fn peak_allocated(&self) -> Option<u64>;
    /// The NVML index of the GPU, where there is one.
    fn gpu_index(&self) -> Option<u32>;
    /// Device time per op since the last call, where the backend profiles (`QRT_PROFILE=1`).
    fn profile(&self) -> anyhow::Result<Option<String>>;
}

impl Probe for CpuBackend {
    fn copy_bandwidth(&self) -> anyhow::Result<f64> {
        let bytes = 256 << 20;
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&dst);
        Ok(2.0 * bytes as f64 / best)
    }
    fn reset_peak_allocated(&self) {}
    fn peak_allocated(&self) -> Option<u64> {
        None
    }
    fn gpu_index(&self) -> Option<u32> {
        None
    }
    fn profile(&self) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

impl Probe for CudaBackend {
    fn copy_bandwidth(&self) -> anyhow::Result<f64> {
        Ok(self.device().copy_bandwidth(1 << 30, 10)?)
    }
    fn reset_peak_allocated(&self) {
        self.device().reset_peak_allocated();
    }
    fn peak_allocated(&self) -> Option<u64> {
        Some(self.device().peak_allocated_bytes() as u64)
    }
    fn gpu_index(&self) -> Option<u32> {
        Some(self.device().ordinal() as u32)
    }
    fn profile(&self) -> anyhow::Result<Option<String>> {
        Ok(self.profile_report()?)
    }
}

/// Runs the benchmark named by `args`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Kernels(a)) => kernels::run(a),
        None => bench_model(args.model),
    }
}

fn bench_model(args: ModelArgs) -> anyhow::Result<()> {
    let Some(path) = args.model.clone() else {
        bail!("qrt bench needs --model M (or `qrt bench kernels`)");
    };
    if args.batch.is_empty() || args.batch.contains(&0) || args.iters == 0 {
        bail!("--batch sizes and --iters must be at least 1");
    }
    if args.prompt_len == 0 || args.gen_len < 2 {
        bail!("--prompt-len must be at least 1 and --gen-len at least 2");
    }
    let mf = ModelFile::open(&path)?;
    let ctx = args.prompt_len + args.gen_len;
    if ctx > mf.config.max_position_embeddings {
        bail!(
            "--prompt-len + --gen-len = {ctx} exceeds the model's context of {}",
            mf.config.max_position_embeddings
        );
    }
    let max_batch = *args.batch.iter().max().expect("not empty");
    let needed = max_batch * ctx.next_multiple_of(KV_BLOCK_SIZE);
    let report = with_engine!(args.device, &mf, needed, |engine| {
        measure(engine, &mf, &args)?
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| path.with_extension("bench.json"));
    write_json(&report, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", report.table());
    println!("results: {}", out.display());
    Ok(())
}

/// Bytes of every tensor the forward pass reads in full each decode step (all but the
/// embedding table, of which it reads a few rows, unless it doubles as the output head).
fn weight_bytes_per_step(mf: &ModelFile) -> u64 {
    mf.file
        .tensors()
        .iter()
        .filter(|t| t.name != "model.embed_tokens.weight" || mf.config.tie_word_embeddings)
        .map(|t| t.nbytes())
        .sum()
}

/// Prints the backend's op profile since the last call (when it profiles and `show`).
fn print_profile(backend: &impl Probe, show: bool, what: &str) -> anyhow::Result<()> {
    if let Some(table) = backend.profile()?.filter(|_| show) {
        eprintln!("\n{what}:\n{table}");
    }
    Ok(())
}

/// `engine` again with nothing kept from earlier passes and a KV cache for `batch` sequences
/// of `ctx` tokens (or what `--kv-memory` says), so that the memory measured next is what
/// that batch needs.
fn engine_for_batch<B: Backend>(
    engine: Engine<B>,
    mf: &ModelFile,
    args: &ModelArgs,
    batch: usize,
    ctx: usize,
) -> anyhow::Result<Engine<B>> {
    let (backend, model) = engine.into_parts()?;
    let needed = batch * ctx.next_multiple_of(KV_BLOCK_SIZE);
    engine_with(backend, model, mf, needed, args.device.kv_memory)
}

fn measure<B: Backend + Probe>(
    mut engine: Engine<B>,
    mf: &ModelFile,
    args: &ModelArgs,
) -> anyhow::Result<BenchReport> {
    let backend_desc = engine.backend().describe();
    let copy = engine.backend().copy_bandwidth()?;
    let copy_gbs = copy / 1e9;
    eprintln!("{backend_desc}: copy bandwidth {copy_gbs:.0} GB/s (read + write)");
    let nvml = engine
        .backend()
        .gpu_index()
        .and_then(|i| GpuMemory::open(i).ok())
        .map(Arc::new);
    let kv_per_token = kv_bytes_per_token(mf, engine.backend()) as u64;
    let weights = weight_bytes_per_step(mf);
    let mut rng = Rng::new(0x5eed);
    let mut results = Vec::new();
    for &batch in &args.batch {
        let ctx = args.prompt_len + args.gen_len;
        engine = engine_for_batch(engine, mf, args, batch, ctx)?;
        let geometry = *engine.kv_geometry();
        let blocks = batch * ctx.div_ceil(KV_BLOCK_SIZE);
        if blocks > geometry.num_blocks {
            bail!(
                "batch {batch} needs {blocks} KV blocks of {KV_BLOCK_SIZE} tokens, the cache holds \
                 {} (give more --kv-memory)",
                geometry.num_blocks
            );
        }
        engine.set_max_running(batch);
        engine.set_max_batch_tokens(batch * args.prompt_len);
        engine.backend().reset_peak_allocated();
        let sampler = nvml.clone().and_then(|g| PeakSampler::start(g).ok());
        let bar = super::progress_bar((args.warmup + args.iters) as u64, &format!("batch {batch}"));
        let mut prefill_ms = Vec::new();
        let mut step_ms = Vec::new();
        let mut kv_bytes = 0;
        for it in 0..args.warmup + args.iters {
            for s in 0..batch {
                engine.add(SeqRequest {
                    prompt: (0..args.prompt_len)
                        .map(|_| rng.below(mf.config.vocab_size) as u32)
                        .collect(),
                    max_new_tokens: args.gen_len,
                    sampling: SamplingParams::GREEDY,
                    seed: s as u64,
                })?;
            }
            // The last run's ops are profiled, when the backend profiles.
            let last = it + 1 == args.warmup + args.iters;
            if last {
                engine.backend().profile()?;
            }
            let t = Instant::now();
            let first = engine.step()?;
            let prefill = t.elapsed().as_secs_f64() * 1e3;
            print_profile(engine.backend(), last, &format!("batch {batch}, prefill"))?;
            if first.len() != batch || !first.iter().all(|s| s.prefill) {
                bail!("the first step read {} of {batch} prompts", first.len());
            }
            kv_bytes = (engine.kv_blocks_in_use() * KV_BLOCK_SIZE) as u64 * kv_per_token;
            let t = Instant::now();
            let mut steps = 0;
            while engine.has_work() {
                engine.step()?;
                steps += 1;
            }
            let per_step = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            print_profile(
                engine.backend(),
                last,
                &format!("batch {batch}, {steps} decode steps"),
            )?;
            if it >= args.warmup {
                prefill_ms.push(prefill);
                step_ms.push(per_step);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        // A decode step reads every weight once and each sequence's cache (mean context).
        let mean_ctx = (args.prompt_len + args.gen_len / 2) as u64;
        let bytes_per_step = weights + batch as u64 * mean_ctx * kv_per_token;
        let summary = |v: &[f64]| Summary::of(v).context("no valid timings");
        let peak_memory = PeakMemory {
            peak_device_bytes_allocator: engine.backend().peak_allocated(),
            peak_device_bytes_nvml: sampler.map(PeakSampler::stop),
        };
        results.push(
            BatchResult::new(
                batch,
                args.prompt_len,
                args.gen_len,
                summary(&prefill_ms)?,
                summary(&step_ms)?,
                kv_bytes,
                bytes_per_step,
                Some(copy_gbs),
            )
            .with_peak_memory(peak_memory),
        );
    }
    Ok(BenchReport {
        qrt_version: super::qrt_version(),
        model: mf.file.path().to_string(),
        model_name: mf
            .file
            .metadata()
            .get("model.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        dtype: mf
            .file
            .metadata()
            .get("quantization.weight_dtype")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        device: backend_desc,
        model_bytes: mf.file.tensors().iter().map(|t| t.nbytes()).sum(),
        copy_bandwidth_gbs: Some(copy_gbs),
        warmup: args.warmup,
        iters: args.iters,
        results,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        timestamp_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}
