//! `--device` and `--kv-memory`: where a model runs and how large its KV cache is.

use std::str::FromStr;

use anyhow::{bail, Context};
use qrt_runtime::backend::Backend;
use qrt_runtime::engine::Engine;
use qrt_runtime::model::Model;
use qrt_runtime::model_file::ModelFile;

/// Tokens per KV-cache block.
pub const KV_BLOCK_SIZE: usize = 16;
/// Share of the free device memory the KV cache may take when `--kv-memory` is not given
/// (vLLM's default `gpu_memory_utilization`).
const KV_FREE_FRACTION: f64 = 0.9;

/// A device named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first GPU when one is usable, else the CPU.
    Auto,
    /// The CPU reference backend.
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU when one is usable, else the CPU).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got '{s}'")),
        }
    }
}

/// The ordinal of a `cuda` or `cuda:N` device name (for the GPU-only commands).
pub fn cuda_ordinal(name: &str) -> anyhow::Result<usize> {
    match name.parse::<Device>() {
        Ok(Device::Cuda(n)) => Ok(n),
        _ => bail!("--device must be cuda or cuda:N, got '{name}'"),
    }
}

/// KV-cache capacity from `--kv-memory`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvMemory {
    /// This many bytes.
    Bytes(u64),
    /// This share of the device memory free after the weights are loaded.
    Fraction(f64),
}

impl FromStr for KvMemory {
    type Err = String;

    /// `8GiB`, `512MiB`, `2GB`, a plain byte count, or a fraction of free memory like `0.5`.
    fn from_str(s: &str) -> Result<Self, String> {
        let units: [(&str, f64); 6] = [
            ("GiB", (1u64 << 30) as f64),
            ("MiB", (1u64 << 20) as f64),
            ("KiB", 1024.0),
            ("GB", 1e9),
            ("MB", 1e6),
            ("B", 1.0),
        ];
        let bad =
            || format!("--kv-memory: expected e.g. 8GiB, 512MiB or a fraction like 0.5, got '{s}'");
        for (suffix, scale) in units {
            if let Some(number) = s.strip_suffix(suffix) {
                let v: f64 = number.trim().parse().map_err(|_| bad())?;
                return (v > 0.0 && v.is_finite())
                    .then_some(KvMemory::Bytes((v * scale) as u64))
                    .ok_or_else(bad);
            }
        }
        let v: f64 = s.parse().map_err(|_| bad())?;
        if v > 0.0 && v <= 1.0 {
            Ok(KvMemory::Fraction(v))
        } else if v > 1.0 && v.fract() == 0.0 {
            Ok(KvMemory::Bytes(v as u64))
        } else {
            Err(bad())
        }
    }
}

/// The options every command that runs a model takes.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run: auto (a GPU when there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// KV-cache size: bytes (8GiB, 512MiB) or a fraction of the memory free after loading
    /// (0.5). Default: what the run needs, on a GPU at most 90% of the free memory.
    #[arg(long)]
    pub kv_memory: Option<KvMemory>,
}

/// Bytes of KV cache per token of context for `mf` on `backend`.
pub fn kv_bytes_per_token<B: Backend>(mf: &ModelFile, backend: &B) -> usize {
    let c = &mf.config;
    2 * c.num_layers * c.num_kv_heads * c.head_dim * backend.kv_value_bytes()
}

/// Loads `mf` onto `backend` and makes an engine whose KV cache holds `needed` tokens, or
/// what `--kv-memory` says.
pub fn engine_on<B: Backend>(
    backend: B,
    mf: &ModelFile,
    needed: usize,
    kv_memory: Option<KvMemory>,
) -> anyhow::Result<Engine<B>> {
    let weights: u64 = mf.file.tensors().iter().map(|t| t.nbytes()).sum();
    if let Some(free) = backend.free_memory().filter(|&free| weights > free) {
        bail!(
            "{}: the weights take {} MiB, more than the {} MiB free on {}",
            mf.file.path(),
            weights >> 20,
            free >> 20,
            backend.describe()
        );
    }
    let model = Model::load(&backend, &mf.file, mf.config.clone())
        .with_context(|| format!("loading {} on {}", mf.file.path(), backend.describe()))?;
    engine_with(backend, model, mf, needed, kv_memory)
}

/// An engine for `model` (loaded from `mf`) whose KV cache holds `needed` tokens, or what
/// `--kv-memory` says, from the memory free on `backend` now.
pub fn engine_with<B: Backend>(
    backend: B,
    model: Model<B>,
    mf: &ModelFile,
    needed: usize,
    kv_memory: Option<KvMemory>,
) -> anyhow::Result<Engine<B>> {
    let per_token = kv_bytes_per_token(mf, &backend) as u64;
    let free = backend.free_memory();
    let tokens = match (kv_memory, free) {
        (Some(KvMemory::Bytes(b)), _) => (b / per_token) as usize,
        (Some(KvMemory::Fraction(f)), Some(free)) => (free as f64 * f / per_token as f64) as usize,
        (Some(KvMemory::Fraction(_)), None) => {
            bail!("--kv-memory as a fraction needs a GPU; give a size such as 4GiB")
        }
        (None, Some(free)) => {
            needed.min((free as f64 * KV_FREE_FRACTION / per_token as f64) as usize)
        }
        (None, None) => needed,
    };
    if tokens == 0 {
        bail!(
            "the KV cache would hold {tokens} tokens ({} bytes per token{}): too small to run; \
             give more --kv-memory",
            per_token,
            free.map_or(String::new(), |f| format!(
                ", {} MiB free on the device",
                f >> 20
            ))
        );
    }
    let mut engine = Engine::new(backend, model, tokens, KV_BLOCK_SIZE)?;
    // QRT_RUN_AHEAD=0: every decode step waits for its tokens before the next one is queued.
    engine.set_run_ahead(std::env::var("QRT_RUN_AHEAD").map_or(true, |v| v != "0"));
    Ok(engine)
}

/// Runs `$body` with `$engine` bound to an engine for `$mf` on the device of `$args`
/// (a [`DeviceArgs`]), its KV cache sized for `$needed` tokens unless `--kv-memory` says
/// otherwise. The body is compiled once per backend type.
macro_rules! with_engine {
    ($args:expr, $mf:expr, $needed:expr, |$engine:ident| $body:expr) => {{
        use $crate::cli::device::{engine_on, Device};
        let args: &$crate::cli::device::DeviceArgs = &$args;
        // The GPU is opened once; with `auto`, failing to open it means the CPU, unless a
        // setting for the GPU is wrong (then that is the error, wherever it would run).
        let gpu = match args.device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(qrt_runtime::cuda::CudaBackend::new(n)?),
            Device::Auto => match qrt_runtime::cuda::CudaBackend::new(0) {
                Ok(backend) => Some(backend),
                Err(e @ qrt_runtime::RuntimeError::Cuda(qrt_kernels::KernelError::Config(_))) => {
                    return Err(e.into())
                }
                Err(_) => None,
            },
        };
        match gpu {
            None => {
                let backend = qrt_runtime::cpu::CpuBackend::new();
                #[allow(unused_mut)]
                let mut $engine = engine_on(backend, $mf, $needed, args.kv_memory)?;
                $body
            }
            Some(backend) => {
                #[allow(unused_mut)]
                let mut $engine = engine_on(backend, $mf, $needed, args.kv_memory)?;
                $body
            }
        }
    }};
}
pub(crate) use with_engine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_only_commands_take_cuda_names() {
        assert_eq!(cuda_ordinal("cuda").unwrap(), 0);
        assert_eq!(cuda_ordinal("cuda:2").unwrap(), 2);
        for bad in ["cpu", "auto", "gpu"] {
            assert!(cuda_ordinal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn kv_memory_parses_sizes_and_fractions() {
        assert_eq!("8GiB".parse(), Ok(KvMemory::Bytes(8 << 30)));
        assert_eq!("512MiB".parse(), Ok(KvMemory::Bytes(512 << 20)));
        assert_eq!("2GB".parse(), Ok(KvMemory::Bytes(2_000_000_000)));
        assert_eq!("0.5".parse(), Ok(KvMemory::Fraction(0.5)));
        assert_eq!("4096".parse(), Ok(KvMemory::Bytes(4096)));
        for bad in ["", "-1GiB", "0", "1.5", "lots", "0GiB"] {
            assert!(bad.parse::<KvMemory>().is_err(), "{bad}");
        }
    }
}
