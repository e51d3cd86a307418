//! `qrt quantize`: a 16/32-bit `.qrt` model in, a quantized `.qrt` model out.
//!
//! The linear layers of the transformer blocks are quantized (the output head too on
//! request); embeddings and norms keep their storage. Methods without calibration (NF4, FP4,
//! LLM.int8(), RTN) quantize tensor by tensor. GPTQ runs the calibration windows through the
//! model block by block in the true sequential order: q/k/v from the block input, then o_proj
//! from attention recomputed with the quantized q/k/v, then gate/up, then down_proj from the
//! MLP recomputed with the quantized gate/up; the next block sees the quantized block's
//! output. AWQ searches per-channel scales on the block's activations, folds them into the
//! preceding RMSNorm (q/k/v, gate/up) or linear layer (up -> down; v -> o when the head counts
//! allow), searches clipping, then quantizes; the next block sees this block's output computed
//! with the scaled, unquantized weights (as AutoAWQ does).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use qrt_format::config::ModelConfig;
use qrt_format::container::{ElemType, MetaValue, Metadata, QrtFile, QrtWriter, TensorPlan};
use qrt_format::quant::awq::AwqTensor;
use qrt_format::quant::bnb4::{Bnb4Kind, Bnb4Params, Bnb4Tensor};
use qrt_format::quant::gptq::GptqTensor;
use qrt_format::quant::int8::{Int8Params, Int8Tensor};
use qrt_format::quant::{FloatDtype, QuantizedParts};

use super::calib::{
    add_into, attention_input, layer_widths, linear, mlp_hidden, rms_norm, Activations,
    LayerWeights,
};
use super::recipe::{Method, Recipe};
use crate::cpu::read_dense_f32;
use crate::import::{encode_dense, sha256_file};
use crate::model_file::{config_to_metadata, ModelFile};
use crate::quant::awq::{
    apply_clip, awq_quantize, fold_scale_into_linear_rows, fold_scale_into_norm,
    scale_weight_columns, search_clip, search_scales_linear, AwqConfig,
};
use crate::quant::gptq::{gptq_quantize, GptqConfig, HessianAccumulator};
use crate::RuntimeError;

/// The projections of a block, in the order they are quantized.
pub const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Calibration rows used by AWQ's scale and clipping searches (evenly strided).
pub const AWQ_SEARCH_ROWS: usize = 4096;

/// What a quantization did.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Of which quantized.
    pub quantized: usize,
    /// Output file size.
    pub file_bytes: u64,
    /// Per quantized tensor, the method's own error measure (GPTQ's objective, AWQ's best
    /// scale-search loss), when it has one.
    pub losses: Vec<(String, f64)>,
}

/// What goes into the output file for one tensor.
enum Output {
    /// Dense values, stored as `elem`.
    Dense(Vec<f32>, Vec<u64>, ElemType),
    /// A quantized matrix.
    Quantized(Box<dyn QuantizedParts>),
}

/// Progress callback: (steps done, steps in all, what is being done).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidRequest(msg)
}

/// Reads the storage dtype name of a tensor (`f16`, `bf16` or `f32`).
fn orig_dtype(file: &QrtFile, name: &str) -> Result<ElemType, RuntimeError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| RuntimeError::MissingTensor(name.into(), file.path().into()))?;
    Ok(t.storage.dense_elem().unwrap_or(ElemType::F32))
}

/// Quantizes one matrix with a method that needs no calibration.
fn quantize_plain(
    w: &[f32],
    n: usize,
    k: usize,
    recipe: &Recipe,
    orig: ElemType,
) -> Result<Box<dyn QuantizedParts>, String> {
    Ok(match recipe.method {
        Method::Nf4 | Method::Fp4 => {
            let kind = if recipe.method == Method::Nf4 {
                Bnb4Kind::Nf4
            } else {
                Bnb4Kind::Fp4
            };
            let mut p = Bnb4Params::new(kind);
            p.block_size = recipe.group_size.unwrap_or(64) as u32;
            p.double_quant = recipe.double_quant;
            p.compute_dtype = recipe.compute_dtype;
            p.orig_dtype = match orig {
                ElemType::F16 => FloatDtype::F16,
                ElemType::BF16 => FloatDtype::Bf16,
                _ => FloatDtype::F32,
            };
            Box::new(Bnb4Tensor::quantize(w, &[n as u64, k as u64], &p)?)
        }
        Method::Int8 { threshold } => {
            Box::new(Int8Tensor::quantize(w, n, k, &Int8Params { threshold })?)
        }
        Method::Rtn => Box::new(qrt_format::quant::gptq::rtn_quantize(
            w,
            n,
            k,
            recipe.bits,
            recipe.group_size.map_or(-1, |g| g as i32),
            recipe.sym,
        )?),
        Method::Fp16 | Method::Gptq | Method::Awq => {
            unreachable!("handled by the calibrated paths")
        }
    })
}

fn layer_weights(file: &QrtFile, i: usize) -> Result<LayerWeights, RuntimeError> {
    let p = format!("model.layers.{i}");
    let get = |s: &str| read_dense_f32(file, &format!("{p}.{s}"));
    let opt = |s: &str| -> Result<Option<Vec<f32>>, RuntimeError> {
        let name = format!("{p}.{s}");
        file.tensor(&name)
            .map(|_| read_dense_f32(file, &name))
            .transpose()
    };
    Ok(LayerWeights {
        input_norm: get("input_layernorm.weight")?,
        q: get("self_attn.q_proj.weight")?,
        k: get("self_attn.k_proj.weight")?,
        v: get("self_attn.v_proj.weight")?,
        o: get("self_attn.o_proj.weight")?,
        biases: [
            opt("self_attn.q_proj.bias")?,
            opt("self_attn.k_proj.bias")?,
            opt("self_attn.v_proj.bias")?,
            opt("self_attn.o_proj.bias")?,
        ],
        post_norm: get("post_attention_layernorm.weight")?,
        gate: get("mlp.gate_proj.weight")?,
        up: get("mlp.up_proj.weight")?,
        down: get("mlp.down_proj.weight")?,
    })
}

/// Embeds the calibration windows: `[samples * seqlen, hidden]`.
fn embed_windows(
    file: &QrtFile,
    cfg: &ModelConfig,
    windows: &[Vec<u32>],
) -> Result<Activations, RuntimeError> {
    let table = read_dense_f32(file, "model.embed_tokens.weight")?;
    let h = cfg.hidden_size;
    let seqlen = windows[0].len();
    let mut x = Vec::with_capacity(windows.len() * seqlen * h);
    for w in windows {
        for &t in w {
            let t = t as usize;
            if t >= cfg.vocab_size {
                return Err(invalid(format!(
                    "calibration token {t} is outside the vocabulary"
                )));
            }
            x.extend_from_slice(&table[t * h..(t + 1) * h]);
        }
    }
    Ok(Activations {
        x,
        samples: windows.len(),
        seqlen,
    })
}

/// Every `stride`-th row of `x` (`[rows, k]`), at most `limit` rows (`x` itself when it has
/// no more).
fn sample_rows(x: &[f32], rows: usize, k: usize, limit: usize) -> (Cow<'_, [f32]>, usize) {
    if rows <= limit {
        return (Cow::Borrowed(x), rows);
    }
    let stride = rows.div_ceil(limit);
    let picked: Vec<f32> = (0..rows)
        .step_by(stride)
        .flat_map(|r| x[r * k..(r + 1) * k].iter().copied())
        .collect();
    let n = picked.len() / k;
    (Cow::Owned(picked), n)
}

fn gptq_config(recipe: &Recipe) -> GptqConfig {
    GptqConfig {
        bits: recipe.bits,
        group_size: recipe.group_size,
        sym: recipe.sym,
        act_order: recipe.act_order,
        damp_percent: recipe.damp,
        ..GptqConfig::default()
    }
}

/// GPTQ over all blocks in the true sequential order.
fn quantize_gptq(
    mf: &ModelFile,
    recipe: &Recipe,
    act: &mut Activations,
    outputs: &mut HashMap<String, Output>,
    report: &mut QuantizeReport,
    progress: Progress<'_>,
) -> Result<(), RuntimeError> {
    let cfg = &mf.config;
    let inv_freq = crate::rope::inverse_frequencies(cfg);
    let gcfg = gptq_config(recipe);
    let rows = act.rows();
    let (_, qd, kvd, _) = layer_widths(cfg);
    let total = cfg.num_layers * LINEARS.len();
    for i in 0..cfg.num_layers {
        let mut lw = layer_weights(&mf.file, i)?;
        let hessian = |x: &[f32]| {
            let mut h = HessianAccumulator::new(x.len() / rows);
            h.add_batch(x, rows);
            h
        };
        let mut quantize = |name: &str,
                            w: &mut Vec<f32>,
                            n: usize,
                            h: &HessianAccumulator,
                            done: usize|
         -> Result<(), RuntimeError> {
            let full = format!("model.layers.{i}.{name}.weight");
            progress(i * LINEARS.len() + done, total, &full);
            let k = w.len() / n;
            let r =
                gptq_quantize(w, n, k, h, &gcfg).map_err(|e| invalid(format!("{full}: {e}")))?;
            let t = GptqTensor::from_codes(
                &r.codes,
                &r.scales,
                &r.zeros,
                &r.g_idx,
                recipe.bits,
                recipe.group_size.map_or(-1, |g| g as i32),
                recipe.sym,
                recipe.act_order,
            )
            .map_err(|e| invalid(format!("{full}: {e}")))?;
            report.losses.push((full.clone(), r.loss));
            outputs.insert(full, Output::Quantized(Box::new(t)));
            *w = r.dequantized;
            Ok(())
        };
        let h = rms_norm(&act.x, &lw.input_norm, cfg.rms_norm_eps);
        // q, k and v share their input, hence one Hessian; so do gate and up.
        let h_attn = hessian(&h);
        let (mut q, mut k, mut v) = (
            std::mem::take(&mut lw.q),
            std::mem::take(&mut lw.k),
            std::mem::take(&mut lw.v),
        );
        quantize("self_attn.q_proj", &mut q, qd, &h_attn, 0)?;
        quantize("self_attn.k_proj", &mut k, kvd, &h_attn, 1)?;
        quantize("self_attn.v_proj", &mut v, kvd, &h_attn, 2)?;
        (lw.q, lw.k, lw.v) = (q, k, v);
        let o_in = attention_input(cfg, &lw, &h, act, &inv_freq);
        drop(h);
        let mut o = std::mem::take(&mut lw.o);
        quantize(
            "self_attn.o_proj",
            &mut o,
            cfg.hidden_size,
            &hessian(&o_in),
            3,
        )?;
        lw.o = o;
        add_into(
            &mut act.x,
            &linear(&o_in, rows, &lw.o, cfg.hidden_size, lw.biases[3].as_deref()),
        );
        drop(o_in);
        let h2 = rms_norm(&act.x, &lw.post_norm, cfg.rms_norm_eps);
        let h_mlp = hessian(&h2);
        let (mut gate, mut up) = (std::mem::take(&mut lw.gate), std::mem::take(&mut lw.up));
        quantize("mlp.gate_proj", &mut gate, cfg.intermediate_size, &h_mlp, 4)?;
        quantize("mlp.up_proj", &mut up, cfg.intermediate_size, &h_mlp, 5)?;
        (lw.gate, lw.up) = (gate, up);
        let hidden = mlp_hidden(cfg, &lw, &h2, rows);
        drop(h2);
        let mut down = std::mem::take(&mut lw.down);
        quantize(
            "mlp.down_proj",
            &mut down,
            cfg.hidden_size,
            &hessian(&hidden),
            6,
        )?;
        lw.down = down;
        add_into(
            &mut act.x,
            &linear(&hidden, rows, &lw.down, cfg.hidden_size, None),
        );
    }
    Ok(())
}

/// Scales found for inputs `x` shared by `weights`; returns `s` after checking it is usable.
fn awq_scales(
    weights: &[(&[f32], usize)],
    x: &[f32],
    rows: usize,
    k: usize,
    acfg: &AwqConfig,
) -> Vec<f32> {
    let (sample, n) = sample_rows(x, rows, k, AWQ_SEARCH_ROWS);
    search_scales_linear(weights, &sample, n, k, acfg).0
}

/// Divides every row of `x` (`[rows, k]`) by `s` (the activations seen after folding).
fn divide_columns(x: &mut [f32], k: usize, s: &[f32]) {
    for row in x.chunks_mut(k) {
        row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
    }
}

/// The inputs of a block's linear layers after AWQ's scales were folded in.
pub struct ScaledInputs {
    /// Input of q/k/v (the rescaled input_layernorm output).
    pub attn_in: Vec<f32>,
    /// Input of o_proj.
    pub o_in: Vec<f32>,
    /// Input of gate/up (the rescaled post_attention_layernorm output).
    pub mlp_in: Vec<f32>,
    /// Input of down_proj.
    pub down_in: Vec<f32>,
    /// The block's output with the scaled, unquantized weights.
    pub output: Vec<f32>,
}

/// AWQ's scale search and folding for one block: per-channel scales for q/k/v (folded into
/// input_layernorm), o (folded into v, only without grouped-query attention), gate/up (folded
/// into post_attention_layernorm) and down (folded into up). Folding leaves the block's
/// function unchanged; only its quantization error changes.
pub fn awq_scale_block(
    cfg: &ModelConfig,
    lw: &mut LayerWeights,
    act: &Activations,
    acfg: &AwqConfig,
    inv_freq: &[f32],
) -> ScaledInputs {
    let rows = act.rows();
    let (hd, qd, kvd, id) = layer_widths(cfg);
    let mut h = rms_norm(&act.x, &lw.input_norm, cfg.rms_norm_eps);
    let s = awq_scales(
        &[(&lw.q, qd), (&lw.k, kvd), (&lw.v, kvd)],
        &h,
        rows,
        hd,
        acfg,
    );
    fold_scale_into_norm(&mut lw.input_norm, &s);
    for (w, n) in [(&mut lw.q, qd), (&mut lw.k, kvd), (&mut lw.v, kvd)] {
        scale_weight_columns(w, n, hd, &s);
    }
    divide_columns(&mut h, hd, &s);
    let mut o_in = attention_input(cfg, lw, &h, act, inv_freq);
    if qd == kvd {
        let s = awq_scales(&[(&lw.o, hd)], &o_in, rows, qd, acfg);
        fold_scale_into_linear_rows(&mut lw.v, kvd, hd, &s);
        if let Some(b) = lw.biases[2].as_mut() {
            fold_scale_into_norm(b, &s);
        }
        scale_weight_columns(&mut lw.o, hd, qd, &s);
        divide_columns(&mut o_in, qd, &s);
    }
    let mut x1 = act.x.clone();
    add_into(
        &mut x1,
        &linear(&o_in, rows, &lw.o, hd, lw.biases[3].as_deref()),
    );
    let mut h2 = rms_norm(&x1, &lw.post_norm, cfg.rms_norm_eps);
    let s = awq_scales(&[(&lw.gate, id), (&lw.up, id)], &h2, rows, hd, acfg);
    fold_scale_into_norm(&mut lw.post_norm, &s);
    scale_weight_columns(&mut lw.gate, id, hd, &s);
    scale_weight_columns(&mut lw.up, id, hd, &s);
    divide_columns(&mut h2, hd, &s);
    let mut hidden = mlp_hidden(cfg, lw, &h2, rows);
    let s = awq_scales(&[(&lw.down, hd)], &hidden, rows, id, acfg);
    fold_scale_into_linear_rows(&mut lw.up, id, hd, &s);
    scale_weight_columns(&mut lw.down, hd, id, &s);
    divide_columns(&mut hidden, id, &s);
    add_into(&mut x1, &linear(&hidden, rows, &lw.down, hd, None));
    ScaledInputs {
        attn_in: h,
        o_in,
        mlp_in: h2,
        down_in: hidden,
        output: x1,
    }
}

/// The output of one block with dense f32 weights (the reference the AWQ folding test uses).
#[cfg(test)]
fn block_output(
    cfg: &ModelConfig,
    lw: &LayerWeights,
    act: &Activations,
    inv_freq: &[f32],
) -> Vec<f32> {
    let rows = act.rows();
    let h = rms_norm(&act.x, &lw.input_norm, cfg.rms_norm_eps);
    let o_in = attention_input(cfg, lw, &h, act, inv_freq);
    let mut x1 = act.x.clone();
    add_into(
        &mut x1,
        &linear(&o_in, rows, &lw.o, cfg.hidden_size, lw.biases[3].as_deref()),
    );
    let h2 = rms_norm(&x1, &lw.post_norm, cfg.rms_norm_eps);
    let hidden = mlp_hidden(cfg, lw, &h2, rows);
    add_into(
        &mut x1,
        &linear(&hidden, rows, &lw.down, cfg.hidden_size, None),
    );
    x1
}

/// AWQ over all blocks: scales, clipping (not for q and k, as AWQ), quantization.
fn quantize_awq(
    mf: &ModelFile,
    recipe: &Recipe,
    act: &mut Activations,
    outputs: &mut HashMap<String, Output>,
    progress: Progress<'_>,
) -> Result<(), RuntimeError> {
    let cfg = &mf.config;
    let inv_freq = crate::rope::inverse_frequencies(cfg);
    let group = recipe.group_size.unwrap_or(128);
    let acfg = AwqConfig {
        bits: recipe.bits,
        group_size: group,
        ..AwqConfig::default()
    };
    let rows = act.rows();
    let (hd, qd, kvd, id) = layer_widths(cfg);
    for i in 0..cfg.num_layers {
        progress(i, cfg.num_layers, &format!("model.layers.{i}"));
        let mut lw = layer_weights(&mf.file, i)?;
        let inputs = awq_scale_block(cfg, &mut lw, act, &acfg, &inv_freq);
        for (w, n, x, k) in [
            (&mut lw.v, kvd, &inputs.attn_in, hd),
            (&mut lw.o, hd, &inputs.o_in, qd),
            (&mut lw.gate, id, &inputs.mlp_in, hd),
            (&mut lw.up, id, &inputs.mlp_in, hd),
            (&mut lw.down, hd, &inputs.down_in, id),
        ] {
            let (xs, nrows) = sample_rows(x, rows, k, AWQ_SEARCH_ROWS);
            let clip = search_clip(w, n, k, &xs, nrows, &acfg);
            apply_clip(w, n, k, group, &clip);
        }
        let p = format!("model.layers.{i}");
        for (name, w, n) in [
            ("self_attn.q_proj", &lw.q, qd),
            ("self_attn.k_proj", &lw.k, kvd),
            ("self_attn.v_proj", &lw.v, kvd),
            ("self_attn.o_proj", &lw.o, hd),
            ("mlp.gate_proj", &lw.gate, id),
            ("mlp.up_proj", &lw.up, id),
            ("mlp.down_proj", &lw.down, hd),
        ] {
            let k = w.len() / n;
            let (codes, scales, zeros) = awq_quantize(w, n, k, recipe.bits, group);
            let full = format!("{p}.{name}.weight");
            let t = AwqTensor::from_codes(&codes, &scales, &zeros, n, k, group as u32)
                .map_err(|e| invalid(format!("{full}: {e}")))?;
            outputs.insert(full, Output::Quantized(Box::new(t)));
        }
        for (name, v) in [
            ("input_layernorm", &lw.input_norm),
            ("post_attention_layernorm", &lw.post_norm),
        ] {
            outputs.insert(
                format!("{p}.{name}.weight"),
                Output::Dense(v.clone(), vec![hd as u64], ElemType::F32),
            );
        }
        if let Some(b) = &lw.biases[2] {
            outputs.insert(
                format!("{p}.self_attn.v_proj.bias"),
                Output::Dense(b.clone(), vec![kvd as u64], ElemType::F32),
            );
        }
        // The next block sees this block's output with the scaled, unquantized weights.
        act.x = inputs.output;
    }
    Ok(())
}

/// Quantizes `src` into `out` following `recipe`.
pub fn quantize_model(
    src: &Path,
    out: &Path,
    recipe: &Recipe,
    qrt_version: &str,
    progress: Progress<'_>,
) -> Result<QuantizeReport, RuntimeError> {
    let mf = ModelFile::open(src)?;
    let meta = mf.file.metadata();
    match meta.get("quantization.method").and_then(MetaValue::as_str) {
        None | Some("none") | Some("fp16") => {}
        Some(other) => {
            return Err(invalid(format!(
                "{} is already quantized ({other}); quantize from a 16- or 32-bit model",
                src.display()
            )))
        }
    }
    let cfg = mf.config.clone();
    recipe.validate(&[
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.intermediate_size,
    ])?;
    let mut outputs: HashMap<String, Output> = HashMap::new();
    let mut report = QuantizeReport::default();
    match recipe.method {
        Method::Gptq | Method::Awq => {
            let calib = recipe.calibration.as_ref().expect("validated");
            let windows = super::calib::calibration_windows(&mf.tokenizer, calib)?;
            let mut act = embed_windows(&mf.file, &cfg, &windows)?;
            if recipe.method == Method::Gptq {
                quantize_gptq(&mf, recipe, &mut act, &mut outputs, &mut report, progress)?;
            } else {
                quantize_awq(&mf, recipe, &mut act, &mut outputs, progress)?;
            }
        }
        Method::Fp16 => {
            // Every matrix in f16, whatever the source stored.
            for t in mf.file.tensors() {
                if t.shape.len() == 2 && t.storage.name != "f16" {
                    let v = read_dense_f32(&mf.file, &t.name)?;
                    outputs.insert(
                        t.name.clone(),
                        Output::Dense(v, t.shape.clone(), ElemType::F16),
                    );
                }
            }
        }
        _ => {
            let names: Vec<String> = (0..cfg.num_layers)
                .flat_map(|i| {
                    LINEARS
                        .iter()
                        .map(move |l| format!("model.layers.{i}.{l}.weight"))
                })
                .collect();
            for (done, name) in names.iter().enumerate() {
                progress(done, names.len(), name);
                let t = mf.file.tensor(name).ok_or_else(|| {
                    RuntimeError::MissingTensor(name.clone(), src.display().to_string())
                })?;
                let (n, k) = (t.shape[0] as usize, t.shape[1] as usize);
                let w = read_dense_f32(&mf.file, name)?;
                let q = quantize_plain(&w, n, k, recipe, orig_dtype(&mf.file, name)?)
                    .map_err(|e| invalid(format!("{name}: {e}")))?;
                outputs.insert(name.clone(), Output::Quantized(q));
            }
        }
    }
    // The output head: quantized on request (with the non-calibrated form of the method).
    let mut out_cfg = cfg.clone();
    if recipe.quantize_head && recipe.method != Method::Fp16 {
        let head = if cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let w = read_dense_f32(&mf.file, head)?;
        let plain = match recipe.method {
            Method::Gptq | Method::Awq => Recipe {
                method: Method::Rtn,
                sym: false,
                ..recipe.clone()
            },
            _ => recipe.clone(),
        };
        let q = quantize_plain(
            &w,
            cfg.vocab_size,
            cfg.hidden_size,
            &plain,
            orig_dtype(&mf.file, head)?,
        )
        .map_err(|e| invalid(format!("lm_head.weight: {e}")))?;
        outputs.insert("lm_head.weight".into(), Output::Quantized(q));
        out_cfg.tie_word_embeddings = false;
    }

    // Metadata: the source's, with the recipe and provenance of this step.
    let mut m = Metadata::new();
    for (k, v) in meta.iter() {
        if !k.starts_with("quantization.") && !k.starts_with("model.") {
            m.insert(k.clone(), v.clone());
        }
    }
    config_to_metadata(&out_cfg, &mut m);
    recipe.to_metadata(&mut m);
    if let Some(c) = &recipe.calibration {
        m.insert("quantization.calib.sha256", sha256_file(&c.path)?);
    }
    m.insert("provenance.quantized_from", src.display().to_string());
    m.insert("provenance.quantized_from_sha256", sha256_file(src)?);
    m.insert("provenance.qrt_version", qrt_version);

    // Plans and data in the source's tensor order (plus a new lm_head at the end).
    let mut names: Vec<String> = mf.file.tensors().iter().map(|t| t.name.clone()).collect();
    if outputs.contains_key("lm_head.weight") && !names.iter().any(|n| n == "lm_head.weight") {
        names.push("lm_head.weight".into());
    }
    let mut plans = Vec::with_capacity(names.len());
    for name in &names {
        plans.push(match outputs.get(name) {
            Some(Output::Quantized(q)) => q.tensor_plan(name),
            Some(Output::Dense(_, shape, elem)) => {
                TensorPlan::dense(name.clone(), shape.clone(), *elem)
            }
            None => {
                let t = mf.file.tensor(name).expect("listed from the file");
                TensorPlan {
                    name: name.clone(),
                    shape: t.shape.clone(),
                    storage: t.storage.clone(),
                    parts: t
                        .parts
                        .iter()
                        .map(|p| (p.role.clone(), p.elem, p.nbytes))
                        .collect(),
                }
            }
        });
    }
    let mut writer = QrtWriter::create(out, &m, plans)?;
    for name in &names {
        match outputs.get(name) {
            Some(Output::Quantized(q)) => {
                let parts = q.part_bytes();
                let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                writer.write_tensor(name, &refs)?;
                report.quantized += 1;
            }
            Some(Output::Dense(v, _, elem)) => {
                writer.write_tensor(name, &[&encode_dense(v, *elem)])?
            }
            None => {
                let t = mf.file.tensor(name).expect("listed from the file");
                let parts: Vec<&[u8]> = t
                    .parts
                    .iter()
                    .map(|p| mf.file.part_bytes(t, &p.role))
                    .collect::<Result<_, _>>()?;
                writer.write_tensor(name, &parts)?;
            }
        }
        report.tensors += 1;
    }
    writer.finish()?;
    report.file_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::calib::calibration_windows;
    use crate::quantize::recipe::Calibration;

    /// AWQ's folding changes weights and norms but not what a block computes.
    #[test]
    fn awq_scale_folding_leaves_block_outputs_unchanged() {
        let dir = std::env::temp_dir().join(format!("qrt-awq-fold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("tiny.qrt");
        let cfg = crate::synthetic::preset("tiny").unwrap();
        crate::synthetic::write_random_model(
            &cfg,
            ElemType::F32,
            9,
            &model,
            "test",
            &mut |_, _| {},
        )
        .unwrap();
        let text = dir.join("calib.txt");
        std::fs::write(
            &text,
            "Calibration text about rivers, mountains and 1234 numbers.\n\n".repeat(30),
        )
        .unwrap();
        let mf = ModelFile::open(&model).unwrap();
        let calib = Calibration {
            path: text,
            samples: 4,
            seqlen: 32,
            seed: 1,
        };
        let windows = calibration_windows(&mf.tokenizer, &calib).unwrap();
        let mut act = embed_windows(&mf.file, &mf.config, &windows).unwrap();
        // Make a few channels salient, as in real activations, so the scales are far from 1.
        for row in act.x.chunks_mut(cfg.hidden_size) {
            row[3] *= 20.0;
            row[17] *= 8.0;
        }
        let inv_freq = crate::rope::inverse_frequencies(&mf.config);
        let acfg = AwqConfig {
            group_size: 32,
            ..AwqConfig::default()
        };
        for layer in 0..cfg.num_layers {
            let original = layer_weights(&mf.file, layer).unwrap();
            let want = block_output(&mf.config, &original, &act, &inv_freq);
            let mut scaled = original.clone();
            let got = awq_scale_block(&mf.config, &mut scaled, &act, &acfg, &inv_freq).output;
            assert_ne!(
                scaled.input_norm, original.input_norm,
                "layer {layer}: scales were folded"
            );
            let again = block_output(&mf.config, &scaled, &act, &inv_freq);
            for (out, name) in [(&got, "search output"), (&again, "folded weights")] {
                let err: f64 = out
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
                assert!(
                    err / norm < 1e-5,
                    "layer {layer} {name}: relative change {}",
                    err / norm
                );
            }
            act.x = want;
        }
    }
}
