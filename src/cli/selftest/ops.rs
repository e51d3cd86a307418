//! Every op of the CUDA backend against the CPU backend (the reference) on random inputs: the
//! products (GEMV for up to 8 rows, up to 16 where the tensor-core GEMV pays, tensor-core GEMM
//! beyond, f16 and bf16, with and without
//! bias, one matrix or several sharing the input), RMSNorm, embedding, SiLU-and-multiply,
//! rotary embedding with the KV store, prefill and decode attention over the paged cache for
//! several head layouts, row selection, argmax and sampling. Outputs start as NaN, so an
//! element a kernel fails to write fails the check.

use std::path::Path;
use std::sync::Arc;

use qrt_format::config::ModelConfig;
use qrt_format::container::{ElemType, Metadata, QrtFile, QrtWriter, TensorPlan};
use qrt_kernels::{CudaDevice, DecodeTc, Half16};
use qrt_runtime::backend::{
    AttentionInputs, Backend, BatchLayout, HeadGeometry, LinearOut, MlpScratch, MlpWeights,
    SeqSpan, StepInput,
};
use qrt_runtime::cpu::CpuBackend;
use qrt_runtime::cuda::CudaBackend;
use qrt_runtime::import::encode_dense;
use qrt_runtime::kv_cache::{BlockAllocator, KvGeometry, SequenceBlocks};
use qrt_runtime::rope::inverse_frequencies;
use qrt_runtime::sampling::{argmax, sample_with_uniform, Rng, SamplingParams};
use qrt_runtime::synthetic::preset;

use super::{rel_err, Checks};

/// Error bound of a product: the FMA GEMV (one row, or k not a multiple of 32) keeps f32
/// activations; the tensor-core kernels round them to the weight type.
fn linear_bound(rows: usize, k: usize, dtype: ElemType) -> f64 {
    let tensor_cores =
        rows > 1 && (rows > qrt_runtime::cuda::MAX_GEMV_ROWS || k.is_multiple_of(32));
    match (tensor_cores, dtype) {
        (false, _) => 1e-5,
        (true, ElemType::BF16) => 1e-2,
        (true, _) => 2e-3,
    }
}

/// Bound of attention and of whole models: the GPU's KV cache is f16.
const ATTENTION_BOUND: f64 = 2e-3;

/// Weight matrices of the products: (rows, cols, dtype, row counts to test).
fn matrices(big: bool) -> Vec<(usize, usize, ElemType, &'static [usize])> {
    // 11 rows: the tensor-core GEMV of 16 batch columns where k is a multiple of 32.
    const SMALL: &[usize] = &[1, 2, 3, 5, 8, 11, 17, 130];
    // 16 rows: that GEMV; 24 and 64 rows: the skinny GEMM of batched decode beyond 16
    // sequences (on Hopper; below it, the mma.sync GEMM with k split through global memory).
    const LARGE: &[usize] = &[1, 4, 8, 16, 24, 64, 200];
    let mut m = vec![
        (37, 72, ElemType::F16, SMALL),
        (37, 72, ElemType::BF16, SMALL),
        (576, 576, ElemType::F16, SMALL),
        (1536, 576, ElemType::F16, SMALL),
        (576, 1536, ElemType::F16, SMALL),
        // Rows of 3, 5, 6 and 7 groups of 2048 (at batch one the tiled GEMV): the last block
        // of 8 rows partial, and at 2,200 rows more blocks of 8 than the tiled kernel's grid
        // holds.
        (130, 6144, ElemType::F16, &[1, 3]),
        (70, 10240, ElemType::F16, &[1]),
        (2200, 12288, ElemType::BF16, &[1]),
        (300, 14336, ElemType::F16, &[1]),
        // Llama-3.2-1B
        (2048, 2048, ElemType::F16, LARGE),
        (2048, 2048, ElemType::BF16, LARGE),
        (512, 2048, ElemType::F16, LARGE),
        // At 300 and 520 rows the TMA GEMM unsplit, 128-wide and 256-wide tiles.
        (8192, 2048, ElemType::F16, &[1, 4, 8, 200, 300, 520]),
        (8192, 2048, ElemType::BF16, LARGE),
        (2048, 8192, ElemType::F16, LARGE),
        (2048, 8192, ElemType::BF16, LARGE),
        // The tiled batch-one GEMV (k = 4 x 2048) over more blocks of 8 rows than its grid
        // holds, the last one partial.
        (2500, 8192, ElemType::F16, &[1]),
        (128256, 2048, ElemType::F16, &[1, 8, 13, 17]),
        // SmolLM2's output head: at 12 rows the 16-column GEMV, a tile a block, the blocks
        // walking the tiles over several rounds.
        (49152, 576, ElemType::F16, &[1, 12]),
        // The gate and down of an MLP whose gate and up exceed what the 16-column GEMV takes
        // (the skinny GEMM) while down does not (below).
        (12288, 2048, ElemType::F16, &[16]),
        (2048, 12288, ElemType::F16, &[16]),
        // The wgmma GEMMs' edges: k not a multiple of their 64-wide steps, partial tiles (at
        // 520 rows the TMA GEMM, 128-wide tiles, k split 2 ways).
        (1000, 4104, ElemType::F16, &[9, 130, 520]),
        (1000, 4104, ElemType::BF16, &[520]),
        // An MLP with k = 4096 for the gate/up GEMM (wgmma on Hopper): Llama-3.1-8B's k/v
        // shape and its transpose.
        (1024, 4096, ElemType::F16, LARGE),
        (4096, 1024, ElemType::F16, &[1, 8, 130]),
    ];
    if big {
        // Llama-3.1-8B
        m.extend([
            (4096, 4096, ElemType::F16, LARGE),
            (14336, 4096, ElemType::F16, LARGE),
            (4096, 14336, ElemType::F16, LARGE),
        ]);
    }
    m
}

fn matrix_name(n: usize, k: usize, dtype: ElemType) -> String {
    format!("w.{dtype:?}.{n}x{k}")
}

/// (hidden, ffn) of the MLP checks: Llama-3.2-1B, SmolLM2, one with a gate/up k of 4096, and
/// one whose gate and up (96 MiB) exceed what the 16-column GEMV takes on Hopper while its
/// down does not (at 9 to 16 rows: the gated skinny GEMM, then down on the GEMV).
const MLP_SHAPES: [(usize, usize); 4] = [(2048, 8192), (576, 1536), (4096, 1024), (2048, 12288)];

/// The up projection of an MLP check (its gate is `matrix_name(ffn, hidden, F16)`).
fn up_name(ffn: usize, hidden: usize) -> String {
    format!("up.{ffn}x{hidden}")
}

/// Writes the random test weights: the matrices, biases and norm scales.
fn write_weights(dir: &Path, rng: &mut Rng, big: bool) -> anyhow::Result<Arc<QrtFile>> {
    let mut tensors: Vec<(String, Vec<u64>, ElemType, f32)> = matrices(big)
        .iter()
        .map(|&(n, k, dtype, _)| {
            let scale = 1.0 / (k as f32).sqrt();
            (
                matrix_name(n, k, dtype),
                vec![n as u64, k as u64],
                dtype,
                scale,
            )
        })
        .collect();
    for n in [37, 512, 2048, 2500] {
        tensors.push((format!("b.{n}"), vec![n as u64], ElemType::F32, 1.0));
    }
    for n in [129, 576, 1000, 2048, 4096, 8192] {
        tensors.push((format!("norm.{n}"), vec![n as u64], ElemType::F32, 0.3));
    }
    // Up projections of the MLP checks, distinct from their gates (matrix_name(ffn, hidden)).
    for (hidden, ffn) in MLP_SHAPES {
        let scale = 1.0 / (hidden as f32).sqrt();
        tensors.push((
            up_name(ffn, hidden),
            vec![ffn as u64, hidden as u64],
            ElemType::F16,
            scale,
        ));
    }
    let path = dir.join("weights.qrt");
    let plans = tensors
        .iter()
        .map(|(name, shape, dtype, _)| TensorPlan::dense(name.clone(), shape.clone(), *dtype))
        .collect();
    let mut writer = QrtWriter::create(&path, &Metadata::new(), plans)?;
    for (name, shape, dtype, scale) in &tensors {
        let numel = shape.iter().product::<u64>() as usize;
        let mut values = rng.normals(numel, *scale);
        if name.starts_with("norm.") {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        writer.write_tensor(name, &[&encode_dense(&values, *dtype)])?;
    }
    writer.finish()?;
    Ok(Arc::new(QrtFile::open(&path)?))
}

/// A weight of `file` on backend `b`.
fn weight<B: Backend>(b: &B, file: &Arc<QrtFile>, name: &str) -> anyhow::Result<B::Weight> {
    let t = file
        .tensor(name)
        .ok_or_else(|| anyhow::anyhow!("test tensor {name} missing"))?;
    Ok(b.load_weight(file, t)?)
}

/// A NaN-filled activation buffer.
fn poisoned<B: Backend>(b: &B, rows: usize, cols: usize) -> anyhow::Result<B::Act> {
    Ok(b.act_from_host(rows, cols, &vec![f32::NAN; rows * cols])?)
}

/// How [`products`] calls the backend.
#[derive(Clone, Copy)]
enum ProductOp<'a> {
    /// `linears(x)`.
    Plain,
    /// `norm_linears(x)` with this norm weight.
    Normed(&'a str),
    /// `linear_add` of the one matrix into outputs that start as this residual.
    Add(&'a [f32]),
}

/// One products check: `rows` rows of `k` values `x` times each named matrix of `mats`
/// (rows, optional bias), all in one call as `op` says.
struct ProductCase<'a> {
    x: &'a [f32],
    rows: usize,
    k: usize,
    mats: &'a [(String, usize, Option<String>)],
    op: ProductOp<'a>,
}

/// `x @ w^T (+ bias)` for each named matrix of `case` on `b`.
fn products<B: Backend>(
    b: &B,
    file: &Arc<QrtFile>,
    &ProductCase {
        x,
        rows,
        k,
        mats,
        op,
    }: &ProductCase<'_>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let xa = b.act_from_host(rows, k, x)?;
    let ws = mats
        .iter()
        .map(|(name, _, bias)| {
            Ok((
                weight(b, file, name)?,
                bias.as_ref().map(|n| weight(b, file, n)).transpose()?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outs = mats
        .iter()
        .map(|(_, n, _)| match op {
            ProductOp::Add(residual) => Ok(b.act_from_host(rows, *n, residual)?),
            _ => poisoned(b, rows, *n),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut list: Vec<LinearOut<'_, B>> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|((w, bias), out)| LinearOut {
            weight: w,
            bias: bias.as_ref(),
            out,
        })
        .collect();
    match op {
        ProductOp::Plain => b.linears(&xa, &mut list)?,
        ProductOp::Normed(norm) => {
            let mut normed = poisoned(b, rows, k)?;
            let norm = weight(b, file, norm)?;
            b.norm_linears(&xa, &norm, 1e-5, &mut normed, &mut list)?
        }
        ProductOp::Add(_) => {
            let [one] = list.as_mut_slice() else {
                anyhow::bail!("linear_add takes one matrix");
            };
            b.linear_add(&xa, one.weight, one.bias, one.out)?
        }
    }
    drop(list);
    outs.iter().map(|o| Ok(b.to_host(o)?)).collect()
}

/// The largest relative error of the CUDA products of `case` against the CPU's, over its
/// matrices.
fn worst_product_err(
    (cpu, cuda): (&CpuBackend, &CudaBackend),
    file: &Arc<QrtFile>,
    case: &ProductCase<'_>,
) -> anyhow::Result<f64> {
    let want = products(cpu, file, case)?;
    let got = products(cuda, file, case)?;
    Ok(want
        .iter()
        .zip(&got)
        .map(|(w, g)| rel_err(g, w))
        .fold(0.0, f64::max))
}

fn check_products(
    cpu: &CpuBackend,
    cuda: &CudaBackend,
    file: &Arc<QrtFile>,
    rng: &mut Rng,
    checks: &mut Checks,
    big: bool,
) -> anyhow::Result<()> {
    for (n, k, dtype, rows_list) in matrices(big) {
        for &rows in rows_list {
            let x = rng.normals(rows * k, 1.0);
            let bias = (n == 37).then(|| "b.37".to_string());
            let mats = [(matrix_name(n, k, dtype), n, bias)];
            let case = ProductCase {
                x: &x,
                rows,
                k,
                mats: &mats,
                op: ProductOp::Plain,
            };
            let err = worst_product_err((cpu, cuda), file, &case)?;
            let half = if dtype == ElemType::BF16 {
                Half16::Bf16
            } else {
                Half16::F16
            };
            let kind = match rows {
                1 => "gemv",
                r if r <= qrt_runtime::cuda::MAX_GEMV_ROWS && k.is_multiple_of(32) => "gemv tc",
                r if r <= qrt_runtime::cuda::MAX_GEMV_ROWS => "gemv",
                r if cuda.device().gemv_takes(half, r, k, [n], false)? => "gemv tc",
                // (Other than at 9.0, the mma.sync GEMM, its k loop split through global memory.)
                r if r <= qrt_kernels::GEMM_SKINNY_MAX_M
                    && cuda.device().compute_capability() == (9, 0) =>
                {
                    "gemm skinny"
                }
                _ => "gemm",
            };
            checks.check(
                &format!("linear {kind} {dtype:?}"),
                &format!("{rows}x{k} @ {n}x{k}"),
                err,
                linear_bound(rows, k, dtype),
            );
        }
    }
    // q, k and v of Llama-3.2-1B in one call, with biases (as Qwen2 has).
    let qkv = [
        (
            matrix_name(2048, 2048, ElemType::F16),
            2048,
            Some("b.2048".into()),
        ),
        (
            matrix_name(512, 2048, ElemType::F16),
            512,
            Some("b.512".into()),
        ),
        (matrix_name(512, 2048, ElemType::F16), 512, None),
    ];
    // Also normalised on the way (RMSNorm fused into the batch-one GEMV); at 300 rows by the
    // TMA GEMM on Hopper (three matrices, k split 2 ways).
    for rows in [1, 5, 8, 13, 40, 300] {
        let x = rng.normals(rows * 2048, 1.0);
        for (name, op) in [
            ("linears q,k,v + bias", ProductOp::Plain),
            ("norm_linears q,k,v + bias", ProductOp::Normed("norm.2048")),
        ] {
            let case = ProductCase {
                x: &x,
                rows,
                k: 2048,
                mats: &qkv,
                op,
            };
            let err = worst_product_err((cpu, cuda), file, &case)?;
            checks.check(
                name,
                &format!("{rows}x2048"),
                err,
                linear_bound(rows, 2048, ElemType::F16),
            );
        }
    }
    // Rows of k = 8192 from a normalised input at batch one, one matrix and two sharing the
    // input (the streaming GEMV; the tiled one takes inputs that are not normalised).
    let wide = |n: usize| {
        let bias = (n == 2500).then(|| "b.2500".to_string());
        (matrix_name(n, 8192, ElemType::F16), n, bias)
    };
    for mats in [vec![wide(2500)], vec![wide(2048), wide(2500)]] {
        let x = rng.normals(8192, 1.0);
        let op = ProductOp::Normed("norm.8192");
        let case = ProductCase {
            x: &x,
            rows: 1,
            k: 8192,
            mats: &mats,
            op,
        };
        let err = worst_product_err((cpu, cuda), file, &case)?;
        checks.check(
            &format!("norm_linears {} + bias", mats.len()),
            "1x8192",
            err,
            linear_bound(1, 8192, ElemType::F16),
        );
    }
    // SmolLM2's output head from a normalised input at 12 rows: the 16-column GEMV with the
    // norm fused, a tile a block over several rounds.
    let head = [(matrix_name(49152, 576, ElemType::F16), 49152, None)];
    let x = rng.normals(12 * 576, 1.0);
    let case = ProductCase {
        x: &x,
        rows: 12,
        k: 576,
        mats: &head,
        op: ProductOp::Normed("norm.576"),
    };
    let err = worst_product_err((cpu, cuda), file, &case)?;
    checks.check(
        "norm_linears head",
        "12x576",
        err,
        linear_bound(12, 576, ElemType::F16),
    );
    // Products added into a residual stream (the o and down projections), with a bias; by the
    // TMA GEMM on Hopper at 300, 1100 and 2048 rows of the 1B's o (128-wide tiles split 2
    // ways; 128-wide and 256-wide tiles unsplit) and 2048 of SmolLM2's down (256-wide, split 2
    // ways).
    for (n, k, bias, rows_list) in [
        (
            2048,
            2048,
            Some("b.2048"),
            &[1, 3, 8, 40, 63, 300, 1100, 2048][..],
        ),
        (576, 1536, None, &[1, 3, 8, 40, 2048][..]),
    ] {
        for &rows in rows_list {
            let x = rng.normals(rows * k, 1.0);
            let residual = rng.normals(rows * n, 1.0);
            let mats = [(matrix_name(n, k, ElemType::F16), n, bias.map(String::from))];
            let case = ProductCase {
                x: &x,
                rows,
                k,
                mats: &mats,
                op: ProductOp::Add(&residual),
            };
            let err = worst_product_err((cpu, cuda), file, &case)?;
            checks.check(
                "linear_add (residual)",
                &format!("{rows}x{k} @ {n}x{k}"),
                err,
                linear_bound(rows, k, ElemType::F16),
            );
        }
    }
    // SwiGLU MLP blocks with their norm and residual (norm, gate, up and SiLU fused on the GPU
    // at batch one; gate, up and SiLU in one GEMM for prefill).
    fn mlp<B: Backend>(
        b: &B,
        file: &Arc<QrtFile>,
        x: &[f32],
        rows: usize,
        (hidden, ffn): (usize, usize),
    ) -> anyhow::Result<Vec<f32>> {
        let w = |n, k| weight(b, file, &matrix_name(n, k, ElemType::F16));
        let (gate, down) = (w(ffn, hidden)?, w(hidden, ffn)?);
        let up = weight(b, file, &up_name(ffn, hidden))?;
        let norm = weight(b, file, &format!("norm.{hidden}"))?;
        let mut xa = b.act_from_host(rows, hidden, x)?;
        let mut normed = poisoned(b, rows, hidden)?;
        let mut scratch = [
            poisoned(b, rows, ffn)?,
            poisoned(b, rows, ffn)?,
            poisoned(b, rows, ffn)?,
        ];
        let [g, u, act] = &mut scratch;
        let weights = MlpWeights {
            norm: &norm,
            gate: &gate,
            up: &up,
            down: &down,
        };
        let mut scratch = MlpScratch {
            normed: &mut normed,
            gate: g,
            up: u,
            act,
        };
        b.mlp(&mut xa, &weights, 1e-5, &mut scratch)?;
        Ok(b.to_host(&xa)?)
    }
    for shape @ (hidden, ffn) in MLP_SHAPES {
        // At 300 rows of the 1B's shape the gate/up and the down GEMM take the TMA kernel.
        for rows in [1, 2, 3, 8, 11, 16, 40, 64, 130, 300] {
            let x = rng.normals(rows * hidden, 1.0);
            let want = mlp(cpu, file, &x, rows, shape)?;
            let got = mlp(cuda, file, &x, rows, shape)?;
            checks.check(
                "mlp (norm, gate+up+silu, down, residual)",
                &format!("{rows}x{hidden} -> {ffn} -> {hidden}"),
                rel_err(&got, &want),
                linear_bound(rows, hidden, ElemType::F16),
            );
            // Beyond 8 rows also with silu(gate) * up passed in f32 (`QRT_MLP_HALF16=0`): the
            // 16-column GEMVs' gated f32 output and plain f32 input.
            if matches!(rows, 11 | 16) {
                let keep = cuda.half16_mlp_rows();
                cuda.set_half16_mlp_rows(usize::MAX);
                let got = mlp(cuda, file, &x, rows, shape);
                cuda.set_half16_mlp_rows(keep);
                checks.check(
                    "mlp (activations in f32)",
                    &format!("{rows}x{hidden} -> {ffn} -> {hidden}"),
                    rel_err(&got?, &want),
                    linear_bound(rows, hidden, ElemType::F16),
                );
            }
        }
    }
    Ok(())
}

/// RMSNorm through the backends.
fn check_norms(
    cpu: &CpuBackend,
    cuda: &CudaBackend,
    file: &Arc<QrtFile>,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    fn norm<B: Backend>(
        b: &B,
        file: &Arc<QrtFile>,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> anyhow::Result<Vec<f32>> {
        let w = weight(b, file, &format!("norm.{cols}"))?;
        let xa = b.act_from_host(rows, cols, x)?;
        let mut out = poisoned(b, rows, cols)?;
        b.rms_norm(&xa, &w, 1e-5, &mut out)?;
        Ok(b.to_host(&out)?)
    }
    for (rows, cols) in [(1, 576), (3, 129), (8, 2048), (77, 4096), (5, 1000)] {
        let x = rng.normals(rows * cols, 3.0);
        let want = norm(cpu, file, &x, rows, cols)?;
        let got = norm(cuda, file, &x, rows, cols)?;
        checks.check(
            "rms_norm",
            &format!("{rows}x{cols}"),
            rel_err(&got, &want),
            1e-5,
        );
    }
    Ok(())
}

/// A step over one sequence of `rows` new tokens (no cache needed).
fn single_sequence(rows: usize) -> BatchLayout {
    BatchLayout {
        seqs: vec![SeqSpan {
            start: 0,
            len: rows,
            past: 0,
            block_table: (0..rows.div_ceil(16) as u32).collect(),
        }],
        positions: (0..rows as u32).collect(),
        slots: (0..rows as u32).collect(),
        block_size: 16,
    }
}

fn small_heads() -> HeadGeometry {
    HeadGeometry {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
    }
}

/// Embedding gather, SiLU-and-multiply, row selection and argmax.
fn check_elementwise(
    cpu: &CpuBackend,
    cuda: &CudaBackend,
    file: &Arc<QrtFile>,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    fn run<B: Backend>(
        b: &B,
        file: &Arc<QrtFile>,
        tokens: &[u32],
        gate: &[f32],
        up: &[f32],
        logits: &[f32],
    ) -> anyhow::Result<[Vec<f32>; 5]> {
        let rows = tokens.len();
        let batch = single_sequence(rows);
        let logit_rows = [6u32, 0, 3];
        let heads = small_heads();
        let kv = b.alloc_kv(&KvGeometry {
            num_layers: 1,
            num_kv_heads: heads.num_kv_heads,
            head_dim: heads.head_dim,
            block_size: 16,
            num_blocks: rows.div_ceil(16),
        })?;
        let step = b.prepare(
            &StepInput {
                tokens,
                batch: &batch,
                logit_rows: &logit_rows,
                inv_freq: &[1.0; 32],
                heads,
            },
            &kv,
        )?;
        let mut out = Vec::new();
        for dtype in [ElemType::F16, ElemType::BF16] {
            let table = weight(b, file, &matrix_name(37, 72, dtype))?;
            let mut e = poisoned(b, rows, 72)?;
            b.embed(&table, &step, &mut e)?;
            out.push(b.to_host(&e)?);
        }
        let cols = gate.len() / rows;
        let g = b.act_from_host(rows, cols, gate)?;
        let u = b.act_from_host(rows, cols, up)?;
        let mut act = poisoned(b, rows, cols)?;
        b.silu_mul(&g, &u, &mut act)?;
        out.push(b.to_host(&act)?);
        let mut selected = poisoned(b, logit_rows.len(), cols)?;
        b.select_rows(&act, &step, &mut selected)?;
        out.push(b.to_host(&selected)?);
        let vocab = logits.len() / 3;
        let l = b.act_from_host(3, vocab, logits)?;
        out.push(b.argmax(&l)?.iter().map(|&t| t as f32).collect());
        Ok([
            out[0].clone(),
            out[1].clone(),
            out[2].clone(),
            out[3].clone(),
            out[4].clone(),
        ])
    }
    let rows = 7;
    let mut tokens: Vec<u32> = (0..rows).map(|_| rng.below(37) as u32).collect();
    tokens[0] = 0;
    tokens[1] = 36;
    let gate = rng.normals(rows * 8192, 2.0);
    let up = rng.normals(rows * 8192, 1.0);
    let vocab = 128256;
    let mut logits = rng.normals(3 * vocab, 4.0);
    // Ties: the first index must win, as torch.argmax does.
    let top = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) + 1.0;
    logits[vocab + 5000] = top;
    logits[vocab + 90000] = top;
    logits[2 * vocab + vocab - 1] = top;
    let want = run(cpu, file, &tokens, &gate, &up, &logits)?;
    let got = run(cuda, file, &tokens, &gate, &up, &logits)?;
    let exact = |a: &[f32], b: &[f32]| if a == b { 0.0 } else { f64::INFINITY };
    checks.check("embed f16", "7 of 37x72", exact(&got[0], &want[0]), 0.0);
    checks.check("embed bf16", "7 of 37x72", exact(&got[1], &want[1]), 0.0);
    checks.check("silu_mul", "7x8192", rel_err(&got[2], &want[2]), 1e-6);
    checks.check(
        "select_rows",
        "3 of 7x8192",
        rel_err(&got[3], &want[3]),
        1e-6,
    );
    let cpu_argmax: Vec<f32> = logits.chunks(vocab).map(|r| argmax(r) as f32).collect();
    checks.check(
        "argmax (ties: first)",
        "3x128256",
        exact(&got[4], &cpu_argmax),
        0.0,
    );
    Ok(())
}

/// Sampling on the device against the CPU reference ([`sample_with_uniform`]) for the same
/// uniforms: random rows with ties, peaked rows, and every mix of temperature, top-k and top-p
/// (a greedy row among them). The two may differ only where a uniform or top-p falls within
/// rounding of a boundary between two tokens: at most one such row is allowed. Then the
/// device's token frequencies against a softmax computed here in f64.
/// Perplexity's per-row log-probability of a target token against the CPU's f64 reference:
/// random rows at the Llama-3 vocabulary, a row with one huge logit, a flat row.
fn check_target_log_probs(
    cpu: &CpuBackend,
    cuda: &CudaBackend,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let (rows, vocab) = (6, 128256);
    let mut logits = rng.normals(rows * vocab, 4.0);
    logits[vocab + 17] = 1.0e4;
    logits[2 * vocab..3 * vocab].fill(0.5);
    let targets: Vec<u32> = (0..rows)
        .map(|r| if r == 1 { 17 } else { rng.below(vocab) as u32 })
        .collect();
    let want = cpu.target_log_probs(&cpu.act_from_host(rows, vocab, &logits)?, &targets)?;
    let got = cuda.target_log_probs(&cuda.act_from_host(rows, vocab, &logits)?, &targets)?;
    checks.check(
        "target log-probs (ppl)",
        &format!("{rows}x{vocab}"),
        rel_err(&got, &want),
        1e-6,
    );
    Ok(())
}

fn check_sample(cuda: &CudaBackend, rng: &mut Rng, checks: &mut Checks) -> anyhow::Result<()> {
    let mut mismatches = 0usize;
    let mut greedy_mismatches = 0usize;
    for (rows, vocab) in [(64, 128256), (40, 1000)] {
        let mut logits = rng.normals(rows * vocab, 4.0);
        let mut params = Vec::with_capacity(rows);
        let mut uniforms = Vec::with_capacity(rows);
        for (r, row) in logits.chunks_mut(vocab).enumerate() {
            match r % 7 {
                // Exact ties at the top: the lower index comes first.
                3 => {
                    let top = row.iter().fold(f32::MIN, |a, &b| a.max(b));
                    for i in [5, vocab / 2, vocab - 1] {
                        row[i] = top;
                    }
                }
                // Ties everywhere (and zeros of both signs).
                5 => row.iter_mut().for_each(|v| *v = (*v * 2.0).round() / 2.0),
                // Peaked: one token far ahead (most others round to weight 0).
                6 => row[rng.below(vocab)] += if r % 2 == 0 { 40.0 } else { 12.0 },
                _ => {}
            }
            params.push(SamplingParams {
                temperature: if r == rows - 1 {
                    0.0
                } else {
                    [0.3, 1.0, 2.0][(r / 20) % 3]
                },
                top_k: [0, 1, 2, 50, vocab][r % 5],
                top_p: [1.0, 0.9, 0.5, 1e-6][(r / 5) % 4],
            });
            uniforms.push(match r {
                7 => 0.0,
                // The largest uniform Rng::next_f64 draws.
                8 => 1.0 - f64::EPSILON / 2.0,
                _ => rng.next_f64(),
            });
        }
        let l = cuda.act_from_host(rows, vocab, &logits)?;
        let got = cuda.sample(&l, &params, &uniforms)?;
        for (r, row) in logits.chunks(vocab).enumerate() {
            let want = sample_with_uniform(row, &params[r], uniforms[r]);
            if got[r] != want {
                println!(
                    "  sample row {r} of {rows}x{vocab} ({:?}, u {}): device {} CPU {want}",
                    params[r], uniforms[r], got[r]
                );
                if params[r].is_greedy() {
                    greedy_mismatches += 1;
                } else {
                    mismatches += 1;
                }
            }
        }
    }
    checks.check(
        "sample vs CPU (mismatches)",
        "64x128256 + 40x1000",
        mismatches as f64,
        1.0,
    );
    checks.check(
        "sample greedy rows",
        "64x128256 + 40x1000",
        greedy_mismatches as f64,
        0.0,
    );

    // Frequencies: 2^16 rows per setting, so that 0.01 is over 5 standard deviations.
    let logits = [1.0f32, 2.0, 0.5, -1.0];
    let temperature = 0.7f32;
    let settings = [(0, 1.0f32), (3, 1.0), (0, 0.9)];
    let n = 1 << 16;
    let rows = settings.len() * n;
    let params: Vec<SamplingParams> = (0..rows)
        .map(|r| SamplingParams {
            temperature,
            top_k: settings[r / n].0,
            top_p: settings[r / n].1,
        })
        .collect();
    let uniforms: Vec<f64> = (0..rows).map(|_| rng.next_f64()).collect();
    let l = cuda.act_from_host(rows, logits.len(), &logits.repeat(rows))?;
    let got = cuda.sample(&l, &params, &uniforms)?;
    // Independent reference: softmax of logits / T in f64, cut to the top k, then to the
    // shortest prefix reaching top_p, renormalized.
    let z: Vec<f64> = logits
        .iter()
        .map(|&v| (f64::from(v) / f64::from(temperature)).exp())
        .collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    let mut worst = 0.0f64;
    for (&(top_k, top_p), tokens) in settings.iter().zip(got.chunks(n)) {
        let mut kept = if top_k == 0 {
            order.clone()
        } else {
            order[..top_k].to_vec()
        };
        let total: f64 = kept.iter().map(|&i| z[i]).sum();
        let mut cumulative = 0.0;
        let reach = kept
            .iter()
            .position(|&i| {
                cumulative += z[i] / total;
                cumulative >= f64::from(top_p)
            })
            .map_or(kept.len(), |p| p + 1);
        kept.truncate(reach);
        let kept_total: f64 = kept.iter().map(|&i| z[i]).sum();
        let mut counts = vec![0usize; logits.len()];
        for &t in tokens {
            match counts.get_mut(t as usize) {
                Some(c) => *c += 1,
                None => worst = f64::INFINITY,
            }
        }
        for (i, &count) in counts.iter().enumerate() {
            let expected = if kept.contains(&i) {
                z[i] / kept_total
            } else {
                0.0
            };
            worst = worst.max((count as f64 / n as f64 - expected).abs());
        }
    }
    checks.check("sample frequencies", "3x65536 rows of 4", worst, 0.01);
    Ok(())
}

/// A KV cache on one backend with the block tables of several sequences, for driving ops or
/// models batch by batch.
pub struct KvRun<B: Backend> {
    /// The cache.
    pub kv: B::Kv,
    alloc: BlockAllocator,
    seqs: Vec<SequenceBlocks>,
    geometry: KvGeometry,
}

impl<B: Backend> KvRun<B> {
    /// A cache of 512 blocks of 16 tokens for `seqs` sequences.
    pub fn new(b: &B, layers: usize, heads: HeadGeometry, seqs: usize) -> anyhow::Result<Self> {
        let geometry = KvGeometry {
            num_layers: layers,
            num_kv_heads: heads.num_kv_heads,
            head_dim: heads.head_dim,
            block_size: 16,
            num_blocks: 512,
        };
        Ok(Self {
            kv: b.alloc_kv(&geometry)?,
            alloc: BlockAllocator::new(geometry.num_blocks),
            seqs: (0..seqs).map(|_| SequenceBlocks::new()).collect(),
            geometry,
        })
    }

    /// The layout of a batch of (sequence, new tokens), reserving the blocks.
    pub fn layout(&mut self, batch: &[(usize, usize)]) -> anyhow::Result<BatchLayout> {
        let mut layout = BatchLayout {
            block_size: self.geometry.block_size,
            ..Default::default()
        };
        for &(s, len) in batch {
            let blocks = &mut self.seqs[s];
            let past = blocks.len();
            blocks.reserve(len, &self.geometry, &mut self.alloc)?;
            layout.seqs.push(SeqSpan {
                start: layout.positions.len(),
                len,
                past,
                block_table: blocks.table().to_vec(),
            });
            layout
                .slots
                .extend(blocks.append_slots(len, &self.geometry));
            layout
                .positions
                .extend((past..past + len).map(|p| p as u32));
        }
        Ok(layout)
    }

    /// Rotary embedding + KV store, then attention, on layer 1 (fused where the backend
    /// fuses them); returns q and k (rotated, except where fused) and the attention output.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        b: &B,
        batch: &BatchLayout,
        heads: HeadGeometry,
        inv_freq: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> anyhow::Result<[Vec<f32>; 3]> {
        let rows = batch.rows();
        let tokens = vec![0u32; rows];
        let logit_rows: Vec<u32> = batch
            .seqs
            .iter()
            .map(|s| (s.start + s.len - 1) as u32)
            .collect();
        let step = b.prepare(
            &StepInput {
                tokens: &tokens,
                batch,
                logit_rows: &logit_rows,
                inv_freq,
                heads,
            },
            &self.kv,
        )?;
        let (qd, kvd) = (
            heads.num_heads * heads.head_dim,
            heads.num_kv_heads * heads.head_dim,
        );
        let mut qa = b.act_from_host(rows, qd, q)?;
        let mut ka = b.act_from_host(rows, kvd, k)?;
        let va = b.act_from_host(rows, kvd, v)?;
        let mut out = poisoned(b, rows, qd)?;
        b.rope_kv_attention(
            &mut AttentionInputs {
                q: &mut qa,
                k: &mut ka,
                v: &va,
                kv: &mut self.kv,
                layer: 1,
                step: &step,
                heads,
            },
            &mut out,
        )?;
        Ok([b.to_host(&qa)?, b.to_host(&ka)?, b.to_host(&out)?])
    }
}

/// Rotary embedding, KV store and attention for several head layouts, over batches that mix
/// prefill, continued prefill and decode, with contexts from 1 to 4,204 tokens; `mode` names
/// the decode attention policy of `cuda` in the checks' names.
fn check_attention(
    cpu: &CpuBackend,
    cuda: &CudaBackend,
    mode: &str,
    rng: &mut Rng,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let layouts = [
        (9, 3, 64),
        (32, 8, 64),
        (32, 8, 128),
        (4, 4, 64),
        (16, 2, 128),
        (12, 2, 64),
    ];
    let scenario: Vec<Vec<(usize, usize)>> = vec![
        vec![(0, 37), (1, 70)],
        vec![(0, 5), (1, 1)],
        vec![(0, 1), (1, 1)],
        vec![(2, 300), (3, 1), (4, 700)],
        vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)],
        vec![(4, 1), (2, 1), (0, 1)],
        vec![(5, 3000)],
        vec![(5, 1), (3, 1)],
        // Long contexts at batch one and two: few partitions, streamed through the ring kernel
        // beyond 4,096 tokens.
        vec![(5, 1)],
        vec![(5, 1200)],
        vec![(5, 1), (3, 1)],
        vec![(5, 1)],
    ];
    for (h, kvh, d) in layouts {
        let heads = HeadGeometry {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
        };
        let config = ModelConfig {
            head_dim: d,
            ..preset("llama-3.2-1b")?
        };
        let inv_freq = inverse_frequencies(&config);
        let mut on_cpu = KvRun::new(cpu, 2, heads, 6)?;
        let mut on_cuda = KvRun::new(cuda, 2, heads, 6)?;
        for batch in &scenario {
            let layout = on_cpu.layout(batch)?;
            on_cuda.layout(batch)?;
            let rows = layout.rows();
            let q = rng.normals(rows * h * d, 1.0);
            let k = rng.normals(rows * kvh * d, 1.0);
            let v = rng.normals(rows * kvh * d, 1.0);
            let want = on_cpu.step(cpu, &layout, heads, &inv_freq, &q, &k, &v)?;
            let got = on_cuda.step(cuda, &layout, heads, &inv_freq, &q, &k, &v)?;
            let decode = batch.iter().all(|&(_, len)| len == 1);
            let ctx = layout
                .seqs
                .iter()
                .map(|s| s.past + s.len)
                .max()
                .unwrap_or(0);
            let shape = format!("{h}/{kvh}x{d} {rows} rows ctx {ctx}");
            // CUDA fuses decode's rotation into its attention kernel: q and k stay as they were.
            if !decode {
                checks.check(
                    "rope_kv",
                    &shape,
                    rel_err(&got[0], &want[0]).max(rel_err(&got[1], &want[1])),
                    1e-5,
                );
            }
            let name = if decode {
                "rope + KV + attention decode"
            } else {
                "attention prefill (tiled)"
            };
            checks.check(
                &format!("{name}{mode}"),
                &shape,
                rel_err(&got[2], &want[2]),
                ATTENTION_BOUND,
            );
        }
    }
    Ok(())
}

/// Runs the op checks.
pub fn run(
    cuda: &CudaBackend,
    dir: &Path,
    rng: &mut Rng,
    checks: &mut Checks,
    big: bool,
) -> anyhow::Result<()> {
    let cpu = CpuBackend::new();
    let file = write_weights(dir, rng, big)?;
    check_products(&cpu, cuda, &file, rng, checks, big)?;
    check_norms(&cpu, cuda, &file, rng, checks)?;
    check_elementwise(&cpu, cuda, &file, rng, checks)?;
    check_sample(cuda, rng, checks)?;
    check_target_log_probs(&cpu, cuda, rng, checks)?;
    check_attention(&cpu, cuda, "", rng, checks)?;
    // The decode attention policies `QRT_ATTN_TC` can ask for besides the default: the
    // register kernel for every grid, the tensor-core kernel for every grid.
    for (tc, mode) in [
        (DecodeTc::Never, " (registers)"),
        (DecodeTc::Always, " (tc)"),
    ] {
        let device = CudaDevice::new(cuda.device().ordinal())?.with_decode_tc(tc);
        check_attention(&cpu, &CudaBackend::on(device), mode, rng, checks)?;
    }
    Ok(())
}
