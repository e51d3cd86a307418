//! `qrt eval`: CoQA as lm-evaluation-harness scores it, perplexity and KL-divergence, and
//! paired comparison of two CoQA runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use qrt_eval::coqa::data::{load_coqa, CoqaDoc};
use qrt_eval::coqa::prompt::{MAX_NEW_TOKENS, STOP_SEQUENCES};
use qrt_eval::coqa::run::{compare, coqa_prompts, run_coqa_prompts, summarize, DocScore};
use qrt_eval::ppl::{self, BaseLogitsWriter, BaseSource};
use qrt_runtime::backend::Backend;
use qrt_runtime::import::sha256_file;
use serde_json::{json, Value};

/// `qrt eval` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// CoQA F1/EM exactly as lm-evaluation-harness's `coqa` task (v3.0) scores it.
    Coqa(CoqaArgs),
    /// Perplexity (and KL-divergence against a base) on a text file, the llama.cpp way.
    #[command(long_about = PPL_HELP)]
    Ppl(PplArgs),
    /// Paired difference of two CoQA runs on the same stories, with a paired bootstrap CI.
    Compare(CompareArgs),
}

const PPL_HELP: &str =
    "Perplexity the llama.cpp way: the whole file is tokenized once (no special \
tokens) and cut into non-overlapping windows of --ctx tokens (the remainder is dropped; if the \
model's tokenizer adds a BOS token, each window's first token is replaced by it). Each window is \
run from an empty cache and only its second half is scored: for positions j in ctx/2 .. ctx-1, \
the negative log-likelihood of token j+1. PPL = exp(mean NLL), ± PPL·stderr(NLL).\n\n\
With --kl-base, the base (a .qrt model, or a file written by --save-logits) is scored on the \
same windows and the mean KL(base‖model) per token is reported with its standard error, median, \
99th percentile and maximum, the top-1 agreement and both perplexities. A base model gives the \
exact KL over the whole vocabulary; a saved file keeps the base's top-k tokens per position and \
merges the rest into one bucket (a lower bound of the exact KL, equal when the top-k hold all \
the mass).";

/// Arguments of `qrt eval coqa`.
#[derive(clap::Args)]
pub struct CoqaArgs {
    /// The .qrt model.
    #[arg(long)]
    model: PathBuf,
    /// CoQA data: the official JSON or Hugging Face JSONL (default: $QRT_HOME/data/coqa-dev-v1.0.json, downloaded if absent).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Score the first N stories in file order.
    #[arg(long)]
    limit: Option<usize>,
    /// Results JSON (default: <model>.coqa.json); predictions go beside it (.predictions.jsonl).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stories generated together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
    #[command(flatten)]
    device: super::device::DeviceArgs,
}

/// Arguments of `qrt eval ppl`.
#[derive(clap::Args)]
pub struct PplArgs {
    /// The .qrt model.
    #[arg(long)]
    model: PathBuf,
    /// Text file, e.g. WikiText-2's wiki.test.raw.
    #[arg(long)]
    data: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows.
    #[arg(long)]
    limit_windows: Option<usize>,
    /// Base for KL-divergence: a .qrt model, or a file written by --save-logits.
    #[arg(long)]
    kl_base: Option<PathBuf>,
    /// Save this model's top-k log-probabilities for later --kl-base runs.
    #[arg(long)]
    save_logits: Option<PathBuf>,
    /// Tokens kept per position by --save-logits.
    #[arg(long, default_value_t = 64)]
    save_top_k: usize,
    /// Results JSON (default: <model>.ppl.json).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: super::device::DeviceArgs,
}

/// Arguments of `qrt eval compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Results JSON of run A (e.g. FP16).
    a: PathBuf,
    /// Results JSON of run B (e.g. NF4).
    b: PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    resamples: usize,
}

/// Runs an eval subcommand.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Coqa(a) => coqa(a),
        EvalCommand::Ppl(a) => perplexity(a),
        EvalCommand::Compare(a) => compare_runs(a),
    }
}

const BOOTSTRAP_SEED: u64 = 1234;
const COQA_URL: &str = "https://nlp.stanford.edu/data/coqa/coqa-dev-v1.0.json";

/// `--data`, else the cached official dev file, else a download of it with curl or wget.
fn coqa_data_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let cached = super::qrt_home().join("data/coqa-dev-v1.0.json");
    if cached.exists() {
        return Ok(cached);
    }
    std::fs::create_dir_all(cached.parent().expect("has a parent"))?;
    let tmp = cached.with_extension("json.part");
    eprintln!("downloading {COQA_URL} into {}", cached.display());
    let fetched = [("curl", vec!["-fsSL", "-o"]), ("wget", vec!["-q", "-O"])]
        .iter()
        .any(|(tool, flags)| {
            std::process::Command::new(tool)
                .args(flags)
                .arg(&tmp)
                .arg(COQA_URL)
                .status()
                .is_ok_and(|s| s.success())
        });
    if !fetched {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "no CoQA data: pass --data FILE (the official coqa-dev-v1.0.json or a Hugging Face JSONL), \
             or place the official dev file at {} (download {COQA_URL} on a machine with internet access)",
            cached.display()
        );
    }
    std::fs::rename(&tmp, &cached)?;
    Ok(cached)
}

/// `<model stem>.<suffix>` in the current directory.
fn default_out(model: &Path, suffix: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from(format!("{stem}.{suffix}"))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    qrt_bench::report::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The model's file facts for results files: path, sha256, quantization recipe, provenance.
fn model_facts(path: &Path, file: &qrt_format::container::QrtFile) -> anyhow::Result<Value> {
    let pick = |prefix: &str| -> Value {
        file.metadata()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), json!(v.to_string())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Ok(json!({
        "path": path.display().to_string(),
        "sha256": sha256_file(path)?,
        "recipe": pick("quantization."),
        "provenance": pick("provenance."),
    }))
}

fn coqa(args: CoqaArgs) -> anyhow::Result<()> {
    let data = coqa_data_path(args.data)?;
    let mut docs: Vec<CoqaDoc> = load_coqa(&data)?;
    if let Some(limit) = args.limit {
        if limit == 0 || limit > docs.len() {
            bail!(
                "--limit {limit} is outside 1..={} (the stories in {})",
                docs.len(),
                data.display()
            );
        }
        docs.truncate(limit);
    }
    let out = args
        .out
        .unwrap_or_else(|| default_out(&args.model, "coqa.json"));
    let predictions_path = out.with_extension("predictions.jsonl");
    let mf = qrt_runtime::model_file::ModelFile::open(&args.model)?;
    let max_context = mf.config.max_position_embeddings;
    let prompts = coqa_prompts(&mf.tokenizer, &docs, max_context)?;
    let longest = prompts.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let batch = args.batch.max(1);
    let started = Instant::now();
    let bar = super::progress_bar(docs.len() as u64, "coqa");
    let (results, device) = super::device::with_engine!(
        args.device,
        &mf,
        batch * (longest + MAX_NEW_TOKENS),
        |engine| {
            engine.set_max_running(batch);
            let results = run_coqa_prompts(
                &mut engine,
                &mf.tokenizer,
                &docs,
                prompts,
                &mf.config.eos_token_ids,
                &mut |done, _| bar.set_position(done as u64),
            )?;
            (results, engine.backend().describe())
        }
    );
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let summary = summarize(&results, args.resamples, BOOTSTRAP_SEED);

    let mut jsonl = String::new();
    for r in &results {
        jsonl.push_str(&serde_json::to_string(r)?);
        jsonl.push('\n');
    }
    write_atomic(&predictions_path, jsonl.as_bytes())?;
    let per_doc: Vec<DocScore> = results
        .iter()
        .map(|r| DocScore {
            id: r.id.clone(),
            em: r.em,
            f1: r.f1,
        })
        .collect();
    let report = json!({
        "task": "coqa",
        "task_definition": "lm-evaluation-harness coqa v3.0 (zero-shot, last turn, greedy, until \\nQ:, max 256 tokens)",
        "model": model_facts(&args.model, &mf.file)?,
        "data": {"path": data.display().to_string(), "sha256": sha256_file(&data)?},
        "limit": args.limit,
        "settings": {"max_new_tokens": MAX_NEW_TOKENS, "stop": STOP_SEQUENCES, "greedy": true, "batch": batch,
                      "bootstrap_resamples": args.resamples, "bootstrap_seed": BOOTSTRAP_SEED},
        "qrt_version": super::qrt_version(),
        "device": device,
        "wall_seconds": wall,
        "stories_per_second": results.len() as f64 / wall,
        "summary": summary,
        "per_doc": per_doc,
        "predictions": predictions_path.display().to_string(),
    });
    write_atomic(&out, serde_json::to_string_pretty(&report)?.as_bytes())?;

    println!(
        "CoQA ({} stories, {:.1} s, {:.2} stories/s)",
        summary.n,
        wall,
        summary.n as f64 / wall
    );
    println!(
        "{:<10} {:>8} {:>20}",
        "metric", "value", "95% CI (bootstrap)"
    );
    for (name, e) in [("f1", summary.f1), ("em", summary.em)] {
        println!(
            "{name:<10} {:>7.2}% {:>9.2}% – {:>6.2}%   ({:.4})",
            100.0 * e.mean,
            100.0 * e.ci_low,
            100.0 * e.ci_high,
            e.mean
        );
    }
    println!("\n{:<12} {:>5} {:>8} {:>8}", "source", "n", "f1", "em");
    for d in &summary.per_domain {
        println!(
            "{:<12} {:>5} {:>7.2}% {:>7.2}%",
            d.source,
            d.n,
            100.0 * d.f1,
            100.0 * d.em
        );
    }
    println!(
        "\nresults: {}\npredictions: {}",
        out.display(),
        predictions_path.display()
    );
    Ok(())
}

fn perplexity(args: PplArgs) -> anyhow::Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let mf = qrt_runtime::model_file::ModelFile::open(&args.model)?;
    if args.ctx > mf.config.max_position_embeddings {
        bail!(
            "--ctx {} exceeds the model's context of {}",
            args.ctx,
            mf.config.max_position_embeddings
        );
    }
    let tokens = mf.tokenizer.encode_with(&text, false)?;
    let with_special = mf.tokenizer.encode_with("a", true)?;
    let bos = mf
        .config
        .bos_token_id
        .filter(|b| with_special.first() == Some(b) && with_special.len() > 1);
    let mut windows = ppl::windows(&tokens, args.ctx, bos);
    if windows.is_empty() {
        bail!(
            "{}: {} tokens make no window of {} tokens",
            args.data.display(),
            tokens.len(),
            args.ctx
        );
    }
    if let Some(n) = args.limit_windows {
        if n == 0 || n > windows.len() {
            bail!(
                "--limit-windows {n} is outside 1..={} (windows in {})",
                windows.len(),
                args.data.display()
            );
        }
        windows.truncate(n);
    }
    let base_model = match &args.kl_base {
        Some(p) if p.extension().is_some_and(|e| e == "qrt") => {
            Some(qrt_runtime::model_file::ModelFile::open(p)?)
        }
        _ => None,
    };
    let base_file = match &args.kl_base {
        Some(p) if base_model.is_none() => Some(ppl::read_base_logits(p, &windows, args.ctx)?),
        _ => None,
    };
    let exact = base_file.is_none();
    let mut writer = match &args.save_logits {
        Some(p) => Some(BaseLogitsWriter::create(
            p,
            &windows,
            args.ctx,
            args.save_top_k,
        )?),
        None => None,
    };
    let started = Instant::now();
    let bar = super::progress_bar(windows.len() as u64, "ppl");
    let (scores, device) = super::device::with_engine!(args.device, &mf, args.ctx, |engine| {
        // The base model runs on the same kind of device, in an engine of its own.
        let mut base_engine = match &base_model {
            Some(bm) => Some(super::device::engine_on(
                engine.backend().another()?,
                bm,
                args.ctx,
                None,
            )?),
            None => None,
        };
        let base = match (&mut base_engine, base_file) {
            (Some(e), _) => BaseSource::Model(e),
            (None, Some(f)) => BaseSource::File(f),
            (None, None) => BaseSource::None,
        };
        let scores = ppl::evaluate(
            &mut engine,
            base,
            &windows,
            writer.as_mut(),
            &mut |done, _| bar.set_position(done as u64),
        )?;
        (scores, engine.backend().describe())
    });
    bar.finish_and_clear();
    if let Some(w) = writer {
        w.finish()?;
    }
    let wall = started.elapsed().as_secs_f64();
    let summary = ppl::summarize(&scores, exact);
    let out = args
        .out
        .unwrap_or_else(|| default_out(&args.model, "ppl.json"));
    let report = json!({
        "task": "perplexity",
        "method": "llama.cpp: non-overlapping windows, second half of each scored",
        "model": model_facts(&args.model, &mf.file)?,
        "data": {"path": args.data.display().to_string(), "sha256": sha256_file(&args.data)?, "tokens": tokens.len()},
        "ctx": args.ctx,
        "windows": windows.len(),
        "kl_base": args.kl_base.as_ref().map(|p| p.display().to_string()),
        "qrt_version": super::qrt_version(),
        "device": device,
        "wall_seconds": wall,
        "summary": summary,
    });
    write_atomic(&out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "perplexity: {:.4} ± {:.4} ({} windows of {}, {} tokens scored, {:.1} s)",
        summary.ppl,
        summary.ppl_stderr,
        windows.len(),
        args.ctx,
        summary.tokens,
        wall
    );
    if let Some(kl) = &summary.kl {
        println!(
            "KL(base‖model): mean {:.6} ± {:.6}, median {:.6}, p99 {:.6}, max {:.4} ({})",
            kl.mean,
            kl.stderr,
            kl.median,
            kl.p99,
            kl.max,
            if kl.exact { "exact" } else { "top-k bucketed" }
        );
        println!(
            "top-1 agreement {:.2}%; base ppl {:.4}, Δppl {:+.4}",
            100.0 * kl.top1_agreement,
            kl.base_ppl,
            kl.delta_ppl
        );
    }
    println!("results: {}", out.display());
    Ok(())
}

fn read_run(path: &Path) -> anyhow::Result<(Value, Vec<DocScore>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if v["task"] != "coqa" {
        bail!("{}: not a qrt CoQA results file", path.display());
    }
    let docs: Vec<DocScore> = serde_json::from_value(v["per_doc"].clone()).with_context(|| {
        format!(
            "{}: per_doc scores are missing or malformed",
            path.display()
        )
    })?;
    Ok((v, docs))
}

fn compare_runs(args: CompareArgs) -> anyhow::Result<()> {
    let (va, a) = read_run(&args.a)?;
    let (vb, b) = read_run(&args.b)?;
    let c = compare(&a, &b, args.resamples, BOOTSTRAP_SEED)?;
    println!(
        "A: {} ({})\nB: {} ({})",
        args.a.display(),
        va["model"]["path"],
        args.b.display(),
        vb["model"]["path"]
    );
    println!(
        "{} paired stories ({} unmatched left out)\n",
        c.n, c.unmatched
    );
    println!("metric        A        B     B - A        95% CI (paired)");
    for (name, d) in [("f1", c.f1), ("em", c.em)] {
        println!(
            "{name:<6} {:>7.2}% {:>7.2}% {:>+8.2}  [{:>+7.2}, {:>+7.2}]  {}",
            100.0 * d.a,
            100.0 * d.b,
            100.0 * d.diff,
            100.0 * d.ci_low,
            100.0 * d.ci_high,
            if d.significant() {
                "significant"
            } else {
                "within noise"
            }
        );
    }
    Ok(())
}
