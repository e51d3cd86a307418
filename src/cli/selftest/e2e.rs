//! Whole models on CUDA against the CPU: a random model with a real layout (grouped-query
//! attention, Llama-3 rope) and any models given with `--model`. Four sequences are read in
//! one prefill pass, then decoded together for several steps (fed the CPU's greedy tokens, so
//! both backends see the same inputs); the decode steps from the third on replay a CUDA graph.
//! On the wide models, the engine also generates for 20 sequences with passes run ahead and
//! without, and again after freeing its kept buffers and caches, which must give the same
//! tokens.

use std::path::{Path, PathBuf};

use qrt_format::config::ModelConfig;
use qrt_format::container::ElemType;
use qrt_kernels::DecodeTc;
use qrt_runtime::backend::{Backend, HeadGeometry};
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::cuda::CudaBackend;
use qrt_runtime::engine::{Engine, SeqRequest};
use qrt_runtime::model::Model;
use qrt_runtime::model_file::ModelFile;
use qrt_runtime::sampling::{argmax, Rng, SamplingParams};
use qrt_runtime::synthetic::{preset, write_random_model};

use super::ops::KvRun;
use super::{rel_err, Checks};

/// Logit error bounds: prefill and batched decode round activations to 16 bits for the tensor
/// cores; batch-one decode keeps them in f32; all read the f16 KV cache.
const PREFILL_BOUND: f64 = 2e-2;
const DECODE_BOUND: f64 = 1e-2;
/// Decode steps compared.
const STEPS: usize = 8;

/// What one run produced: the logits of every step, and the greedy choice of every step.
struct RunOutput {
    logits: Vec<Vec<f32>>,
    choices: Vec<Vec<u32>>,
}

/// The logits of every step of the run on backend `b`: one prefill pass over `prompts`, then
/// `STEPS` decode passes feeding `feed[step][seq]` (the CPU's choices; `None`: choose greedily).
fn logits_of_run<B: Backend>(
    b: &B,
    mf: &ModelFile,
    prompts: &[Vec<u32>],
    feed: Option<&[Vec<u32>]>,
) -> anyhow::Result<RunOutput> {
    let c = &mf.config;
    let model = Model::load(b, &mf.file, c.clone())?;
    let heads = HeadGeometry {
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    };
    let mut run = KvRun::new(b, c.num_layers, heads, prompts.len())?;
    let mut all_logits = Vec::new();
    let mut chosen = Vec::new();
    let mut tokens: Vec<u32> = prompts.concat();
    let mut batch: Vec<(usize, usize)> = prompts.iter().map(|p| p.len()).enumerate().collect();
    for step in 0..=STEPS {
        let layout = run.layout(&batch)?;
        let rows: Vec<u32> = layout
            .seqs
            .iter()
            .map(|s| (s.start + s.len - 1) as u32)
            .collect();
        let logits = model.forward(b, &mut run.kv, &tokens, &layout, &rows)?;
        let picks: Vec<u32> = logits.chunks(c.vocab_size).map(argmax).collect();
        all_logits.push(logits);
        tokens = match feed {
            Some(f) if step < f.len() => f[step].clone(),
            _ => picks.clone(),
        };
        chosen.push(picks);
        batch = (0..prompts.len()).map(|s| (s, 1)).collect();
    }
    Ok(RunOutput {
        logits: all_logits,
        choices: chosen,
    })
}

/// Prompt lengths of the runs of a model: four sequences read with a prefill GEMM and decoded
/// with the batched GEMV; one long and one short sequence alone (prefill by GEMM or GEMV, then
/// batch-one decode); two short ones.
const RUNS: [&[usize]; 4] = [&[45, 1, 17, 120], &[40], &[5], &[5, 3]];

/// Compares one model's logits on both backends, a run for each list of prompt lengths.
fn compare(
    cuda: &CudaBackend,
    mf: &ModelFile,
    label: &str,
    runs: &[&[usize]],
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    for lens in runs {
        compare_run(cuda, mf, lens, label, rng, checks)?;
    }
    Ok(())
}

/// Compares the logits of one run (prompts of the given lengths) on both backends.
fn compare_run(
    cuda: &CudaBackend,
    mf: &ModelFile,
    lens: &[usize],
    label: &str,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let vocab = mf.config.vocab_size;
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let label = format!("{label} x{}", lens.len());
    let mf = &mf;
    let cpu = CpuBackend::new();
    let want = logits_of_run(&cpu, mf, &prompts, None)?;
    let got = logits_of_run(cuda, mf, &prompts, Some(&want.choices))?;
    for (step, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        let (name, bound) = if step == 0 {
            ("model prefill logits", PREFILL_BOUND)
        } else {
            ("model decode logits", DECODE_BOUND)
        };
        checks.check(name, &format!("{label} step {step}"), rel_err(g, w), bound);
    }
    let vocab = mf.config.vocab_size;
    let mut rows = 0;
    let mut beyond_ties = 0;
    for (step, (w_picks, g_picks)) in want.choices.iter().zip(&got.choices).enumerate() {
        for (row, (&a, &b)) in w_picks.iter().zip(g_picks).enumerate() {
            rows += 1;
            let range = row * vocab..(row + 1) * vocab;
            let (w, g) = (&want.logits[step][range.clone()], &got.logits[step][range]);
            if a != b && !near_tie(w, g, a as usize, b as usize) {
                beyond_ties += 1;
            }
        }
    }
    checks.check(
        "model greedy disagreement beyond ties",
        &format!("{label} {rows} tokens"),
        beyond_ties as f64 / rows as f64,
        0.05,
    );
    Ok(())
}

/// Whether the CPU's greedy choice `a` and the CUDA choice `b` of one row of logits (CPU `w`,
/// CUDA `g`) differ only because they nearly tie: the CPU's margin of `a` over `b` is within
/// eight times the row's root-mean-square difference between the backends. On random models
/// the top two logits sometimes lie closer than 16-bit rounding; a choice that differs by more
/// than that margin is an error in the logits' largest entries.
fn near_tie(w: &[f32], g: &[f32], a: usize, b: usize) -> bool {
    let sq: f64 = w
        .iter()
        .zip(g)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let rms = (sq / w.len().max(1) as f64).sqrt();
    (w[a] as f64 - w[b] as f64) <= 8.0 * rms
}

/// A random model of a real layout, small enough to check quickly.
fn random_config() -> anyhow::Result<ModelConfig> {
    Ok(ModelConfig {
        hidden_size: 512,
        intermediate_size: 1408,
        num_layers: 4,
        num_heads: 8,
        num_kv_heads: 2,
        head_dim: 64,
        vocab_size: 4096,
        tie_word_embeddings: false,
        ..preset("llama-3.2-1b")?
    })
}

/// Two layers of a preset's width (its heads, hidden size and head dimension), with a shorter
/// MLP (still one whose products plan a tile a warp) and vocabulary: the batched decode
/// attention, output projection and MLP paths of that model.
fn wide_config(name: &str) -> anyhow::Result<ModelConfig> {
    Ok(ModelConfig {
        intermediate_size: 4096,
        num_layers: 2,
        vocab_size: 4096,
        tie_word_embeddings: false,
        ..preset(name)?
    })
}

/// Wide random models and prompt lengths whose batched decode splits contexts into several
/// tensor-core partitions (some sequences shorter than a partition, so that others lie beyond
/// their context): Llama-3.2-1B's width (heads of 64: at batch 8 3 partitions of 192 tokens,
/// at batch 4 4 of 256 and 7 of 192; long contexts, partitions streamed through the ring: 12 of
/// 384 at batch 2, merged by the projection, and 14 of 384 at batch one, merged by the
/// attention) and, unless skipped, Llama-3.1-8B's (heads of 128, 128-token partitions: 4 and 6
/// at batch 8, the 6 merged by the attention: see `CudaDevice::gemv_merges_partials`; 12 ring
/// partitions of 192 at batch 2). Batches of 10 and 12 (1B) and 10 (8B) sequences take the
/// tensor-core GEMV of 16 batch columns, the 1B's partitions merged by its o projection (6 of
/// 192 tokens, two at a time, at 10; two a context at 12); batches of 16 (1B: contexts
/// streamed through the ring, so no such merge) also that GEMV, and of 40 (1B) and 24 (8B)
/// the skinny GEMM, their passes recorded; these split a context in two partitions (12 and 16
/// sequences) or not at all.
fn wide_models(with_8b: bool) -> Vec<(&'static str, Vec<&'static [usize]>)> {
    let mut wide = vec![(
        "llama-3.2-1b",
        vec![
            &[45, 300, 520, 7, 90, 260, 33, 410][..],
            &[700, 300, 1000, 20],
            &[1300, 200, 50, 900],
            &[4300, 2600],
            &[5000],
            // 12 sequences, contexts within two tensor-core partitions of 256; 10 up to 1,000
            // tokens, 6 partitions of 192 merged by the o projection two at a time.
            &[40, 300, 7, 130, 64, 410, 2, 90, 250, 18, 33, 160],
            &[1000, 60, 300, 7, 640, 25, 90, 3, 200, 33],
            // 16 sequences: two partitions a context, streamed through the ring beyond 512
            // tokens (merged by the attention); recorded passes.
            &[
                33, 5, 700, 120, 9, 64, 18, 600, 45, 1, 90, 150, 12, 30, 77, 101,
            ],
            &[
                12, 40, 7, 90, 33, 150, 2, 64, 19, 280, 45, 8, 120, 60, 3, 75, 31, 17, 99, 240, 11,
                52, 130, 6, 88, 27, 190, 14, 70, 36, 5, 110, 23, 81, 160, 9, 57, 44, 300, 1,
            ],
        ],
    )];
    if with_8b {
        wide.push((
            "llama-3.1-8b",
            vec![
                &[400, 100, 20, 300, 250, 5, 380, 60][..],
                &[700, 100, 20, 300, 250, 5, 380, 60],
                &[2200, 900],
                &[60, 300, 7, 140, 410, 25, 90, 3, 200, 33],
                &[
                    30, 200, 5, 90, 410, 12, 64, 150, 33, 7, 260, 48, 1, 120, 75, 19, 300, 22, 88,
                    9, 140, 56, 17, 240,
                ],
            ],
        ));
    }
    wide
}

/// Sequences of the engine check: more than 16, so that the products take the skinny GEMM (and
/// the 16-column GEMV as sequences finish), and the passes run ahead are recorded.
const ENGINE_SEQS: usize = 20;

/// Greedy generation through the engine on fresh backends, with decode passes run ahead (each
/// one's tokens fed to the next on the device) and without: the tokens must be the same. The
/// sequences stop after 8 to 12 tokens, so that passes of several sizes run. Then, run ahead
/// again, after the model frees the buffers its recorded passes wrote (same engine and KV
/// cache: new buffers, so new recordings), and on an engine rebuilt after the backend freed
/// its recordings and caches (as `qrt bench` does between batch sizes): the same tokens again.
/// (A stale recording replayed into freed buffers could still give the same tokens where the
/// pool hands the same addresses back; what these runs show is that the freeing paths work.)
fn check_run_ahead(
    ordinal: usize,
    mf: &ModelFile,
    label: &str,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let vocab = mf.config.vocab_size;
    let requests: Vec<SeqRequest> = (0..ENGINE_SEQS)
        .map(|i| SeqRequest {
            prompt: (0..5 + rng.below(150))
                .map(|_| rng.below(vocab) as u32)
                .collect(),
            max_new_tokens: 8 + i % 5,
            sampling: SamplingParams::GREEDY,
            seed: i as u64,
        })
        .collect();
    let engine_of = |backend, model| -> anyhow::Result<Engine<CudaBackend>> {
        Ok(Engine::new(
            backend,
            model,
            8192,
            crate::cli::device::KV_BLOCK_SIZE,
        )?)
    };
    let engine_on = |backend: CudaBackend| {
        let model = Model::load(&backend, &mf.file, mf.config.clone())?;
        engine_of(backend, model)
    };
    let mut stepwise = engine_on(CudaBackend::new(ordinal)?)?;
    stepwise.set_run_ahead(false);
    let want = generate(&mut stepwise, &requests)?;
    drop(stepwise);
    let mut ahead = engine_on(CudaBackend::new(ordinal)?)?;
    let mut runs = vec![("run ahead = stepwise", generate(&mut ahead, &requests)?)];
    ahead.model().release_workspaces();
    runs.push((
        "run ahead after freeing the kept buffers = stepwise",
        generate(&mut ahead, &requests)?,
    ));
    let (backend, model) = ahead.into_parts()?;
    let mut rebuilt = engine_of(backend, model)?;
    runs.push((
        "rebuilt engine after freeing every cache = stepwise",
        generate(&mut rebuilt, &requests)?,
    ));
    for (what, got) in runs {
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        checks.check(
            &format!("engine: {what}"),
            &format!("{label} x{ENGINE_SEQS}, seqs differing"),
            differ as f64,
            0.5,
        );
    }
    Ok(())
}

/// The tokens `engine` generates for each of `requests`, run together.
fn generate(
    engine: &mut Engine<CudaBackend>,
    requests: &[SeqRequest],
) -> anyhow::Result<Vec<Vec<u32>>> {
    let ids = requests
        .iter()
        .map(|r| engine.add(r.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = vec![Vec::new(); ids.len()];
    while engine.has_work() {
        for t in engine.step()? {
            if let Some(i) = ids.iter().position(|&id| id == t.seq) {
                tokens[i].push(t.token);
            }
        }
    }
    Ok(tokens)
}

/// Writes a random F16 model of `config` at `path`.
fn write_random(config: &ModelConfig, path: &Path, rng: &mut Rng) -> anyhow::Result<()> {
    write_random_model(
        config,
        ElemType::F16,
        rng.next_u64(),
        path,
        &super::super::qrt_version(),
        &mut |_, _| {},
    )?;
    Ok(())
}

/// Runs the model checks.
pub fn run(
    cuda: &CudaBackend,
    dir: &Path,
    rng: &mut Rng,
    checks: &mut Checks,
    models: &[PathBuf],
    with_8b: bool,
) -> anyhow::Result<()> {
    let path = dir.join("random-model.qrt");
    write_random(&random_config()?, &path, rng)?;
    compare(cuda, &ModelFile::open(&path)?, "random", &RUNS, rng, checks)?;
    for (name, runs) in wide_models(with_8b) {
        let path = dir.join(format!("wide-{name}.qrt"));
        write_random(&wide_config(name)?, &path, rng)?;
        let mf = ModelFile::open(&path)?;
        let label = format!("{name}-wide");
        let before = cuda.fused_counts();
        compare(cuda, &mf, &label, &runs, rng, checks)?;
        check_run_ahead(cuda.device().ordinal(), &mf, &label, rng, checks)?;
        drop(mf);
        std::fs::remove_file(&path)?;
        let after = cuda.fused_counts();
        // On sm_90 (tensor-core decode attention, clusters for the products' plans) these
        // batches leave the attention's partitions to the output projection and pass the
        // MLP's activations in 16 bits.
        let sm90 = cuda.device().compute_capability() == (9, 0);
        let merge = sm90
            && cuda.device().decode_policy().tensor_cores != DecodeTc::Never
            && cuda.defers_attention_merge();
        let half16 = sm90 && runs.iter().any(|r| r.len() >= cuda.half16_mlp_rows());
        for (what, expected, taken) in [
            (
                "attention partitions merged by the projection",
                merge,
                after.0 > before.0,
            ),
            (
                "MLP activations passed in 16 bits",
                half16,
                after.1 > before.1,
            ),
        ] {
            checks.check(
                what,
                &format!("{name}-wide (expected: {expected})"),
                f64::from(u8::from(expected && !taken)),
                0.5,
            );
        }
    }
    for m in models {
        let label = m
            .file_name()
            .map_or_else(|| m.display().to_string(), |n| n.to_string_lossy().into());
        compare(cuda, &ModelFile::open(m)?, &label, &RUNS, rng, checks)?;
    }
    Ok(())
}
