//! `qrt quantize`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use qrt_format::quant::FloatDtype;
use qrt_runtime::quantize::pipeline::quantize_model;
use qrt_runtime::quantize::recipe::{preset, Calibration, Method, Recipe, PRESETS};

/// Arguments of `qrt quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// The 16- or 32-bit .qrt model to quantize.
    #[arg(long = "in", required_unless_present = "list_presets")]
    input: Option<PathBuf>,
    /// The .qrt file to write.
    #[arg(long, required_unless_present = "list_presets")]
    out: Option<PathBuf>,
    /// A named experiment (see --list-presets); other flags override its settings.
    #[arg(long)]
    preset: Option<String>,
    /// Method, when no preset is given: fp16, nf4, fp4, int8, gptq, awq, rtn.
    #[arg(long)]
    method: Option<String>,
    /// Bits (gptq: 2, 3, 4, 8; awq: 4; rtn: 2, 3, 4, 8).
    #[arg(long)]
    bits: Option<u32>,
    /// Group size (gptq, awq, rtn; 0 = one group per output channel) or block size (nf4, fp4).
    #[arg(long)]
    group_size: Option<usize>,
    /// Symmetric quantization (gptq, rtn).
    #[arg(long)]
    sym: Option<bool>,
    /// GPTQ act-order.
    #[arg(long)]
    act_order: Option<bool>,
    /// GPTQ dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long)]
    damp: Option<f64>,
    /// bitsandbytes double quantization (nf4, fp4).
    #[arg(long)]
    double_quant: Option<bool>,
    /// bitsandbytes compute dtype: f16 or bf16.
    #[arg(long, value_parser = ["f16", "bf16"])]
    compute_dtype: Option<String>,
    /// LLM.int8() outlier threshold (0: weight-only int8).
    #[arg(long)]
    int8_threshold: Option<f32>,
    /// Quantize the output head too.
    #[arg(long)]
    quantize_head: bool,
    /// Calibration text for gptq and awq: plain text (blank-line separated) or JSONL with "text".
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Seed of the calibration windows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// List the presets and exit.
    #[arg(long)]
    list_presets: bool,
}

fn method_named(name: &str) -> anyhow::Result<Method> {
    Ok(match name {
        "fp16" => Method::Fp16,
        "nf4" => Method::Nf4,
        "fp4" => Method::Fp4,
        "int8" => Method::Int8 { threshold: 6.0 },
        "gptq" => Method::Gptq,
        "awq" => Method::Awq,
        "rtn" => Method::Rtn,
        other => bail!("unknown method '{other}' (known: fp16, nf4, fp4, int8, gptq, awq, rtn)"),
    })
}

/// The recipe from a preset or method, with the flags applied.
fn recipe(args: &Args) -> anyhow::Result<Recipe> {
    let mut r = match (&args.preset, &args.method) {
        (Some(p), None) => preset(p)?,
        (None, Some(m)) => Recipe::for_method(method_named(m)?),
        (Some(_), Some(_)) => bail!("give --preset or --method, not both"),
        (None, None) => bail!("give --preset NAME (see --list-presets) or --method"),
    };
    if let Some(b) = args.bits {
        r.bits = b;
    }
    if let Some(g) = args.group_size {
        r.group_size = (g > 0).then_some(g);
    }
    if let Some(s) = args.sym {
        r.sym = s;
    }
    if let Some(a) = args.act_order {
        r.act_order = a;
    }
    if let Some(d) = args.damp {
        r.damp = d;
    }
    if let Some(d) = args.double_quant {
        r.double_quant = d;
    }
    if let Some(c) = &args.compute_dtype {
        r.compute_dtype = if c == "bf16" {
            FloatDtype::Bf16
        } else {
            FloatDtype::F16
        };
    }
    if let Some(t) = args.int8_threshold {
        match r.method {
            Method::Int8 { .. } => r.method = Method::Int8 { threshold: t },
            _ => bail!("--int8-threshold applies to the int8 method only"),
        }
    }
    r.quantize_head = args.quantize_head;
    if r.method.needs_calibration() {
        let path = args.calib.clone().with_context(|| {
            format!(
                "{} needs calibration text: pass --calib FILE",
                r.method.name()
            )
        })?;
        if !path.exists() {
            bail!("calibration file {} does not exist", path.display());
        }
        r.calibration = Some(Calibration {
            path,
            samples: args.samples,
            seqlen: args.seqlen,
            seed: args.seed,
        });
    }
    Ok(r)
}

/// Quantizes with a progress bar, or lists the presets.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.list_presets {
        for p in PRESETS {
            println!("{:<24} {}", p.name, p.description);
        }
        return Ok(());
    }
    let (Some(input), Some(out)) = (&args.input, &args.out) else {
        bail!("--in and --out are required");
    };
    let r = recipe(&args)?;
    let started = Instant::now();
    let bar = super::progress_bar(0, "quantize");
    let report = quantize_model(
        input,
        out,
        &r,
        &super::qrt_version(),
        &mut |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_string());
        },
    )
    .with_context(|| format!("quantizing {} into {}", input.display(), out.display()))?;
    bar.finish_and_clear();
    println!(
        "wrote {}: {} tensors ({} quantized, {}), {:.1} MB, {:.1} s",
        out.display(),
        report.tensors,
        report.quantized,
        r.preset.as_deref().unwrap_or(r.method.name()),
        report.file_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
