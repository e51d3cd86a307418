//! The CPU backend: the numerical reference for every other backend.
//!
//! Activations are f32; weights are read in place from the memory-mapped `.qrt` file; the KV
//! pool is f32. Products use the kernels in `linear`, attention the paged kernel in `attention`.

pub mod attention;
pub mod int8;
pub mod linear;

use std::sync::Arc;

use qrt_format::container::{ElemType, QrtFile, TensorInfo};
use rayon::prelude::*;

use crate::backend::{
    check_feed, check_host_len, AttentionInputs, Backend, BatchLayout, HeadGeometry, LinearOut,
    StepInput, NO_FEED,
};
use crate::kv_cache::KvGeometry;
use crate::RuntimeError;
use linear::{DecodeRows, DenseRows, Weights};
use qrt_format::quant::bnb4::{Bnb4Params, Bnb4View};
use qrt_format::quant::int8::{Int8Params, Int8View};
use qrt_format::quant::{quantized_view, FloatDtype, QuantizedMatrix};

/// The CPU backend.
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using rayon's global thread pool.
    pub fn new() -> Self {
        Self
    }
}

/// A row-major f32 activation buffer.
#[derive(Clone, Debug)]
pub struct CpuAct {
    /// Values, `rows * cols`.
    pub data: Vec<f32>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// A weight read in place from the mapped file.
#[derive(Debug)]
pub struct CpuWeight {
    file: Arc<QrtFile>,
    tensor: TensorInfo,
    rows: usize,
    cols: usize,
    /// NF4/FP4 with double quantization: the block scales, decoded once at load (numel / 64
    /// f32) instead of at every product.
    bnb4_absmax: Option<Vec<f32>>,
}

impl CpuWeight {
    fn bytes(&self) -> &[u8] {
        self.file
            .part_bytes(&self.tensor, "data")
            .expect("part validated when the weight was loaded")
    }

    /// The weight as dense rows `[rows, cols]`.
    pub fn dense(&self) -> DenseRows<'_> {
        dense_rows(self.dense_elem(), self.bytes())
    }

    fn dense_elem(&self) -> ElemType {
        self.tensor.storage.dense_elem().unwrap_or(ElemType::F32)
    }

    /// The row decoder of a quantized weight.
    fn quantized(&self) -> Result<Box<dyn QuantizedMatrix + Send + Sync + '_>, RuntimeError> {
        let t = &self.tensor;
        let parts = |role: &str| self.file.part_bytes(t, role).ok();
        let view = match &self.bnb4_absmax {
            Some(absmax) => Bnb4Params::from_storage(&t.storage)
                .and_then(|p| Bnb4View::with_absmax(&p, &t.shape, &parts, absmax))
                .map(|v| Box::new(v) as Box<dyn QuantizedMatrix + Send + Sync>),
            None => quantized_view(&t.storage, &t.shape, &parts),
        };
        view.map_err(|e| {
            RuntimeError::Unsupported(format!("tensor {} ({}): {e}", t.name, t.storage.name))
        })
    }

    /// The decoded block scales of a double-quantized NF4/FP4 weight, to keep.
    fn decoded_bnb4_absmax(&self) -> Result<Option<Vec<f32>>, RuntimeError> {
        let t = &self.tensor;
        if !matches!(t.storage.name.as_str(), "nf4" | "fp4") {
            return Ok(None);
        }
        let unsupported = |e: String| {
            RuntimeError::Unsupported(format!("tensor {} ({}): {e}", t.name, t.storage.name))
        };
        let params = Bnb4Params::from_storage(&t.storage).map_err(unsupported)?;
        if !params.double_quant {
            return Ok(None);
        }
        let parts = |role: &str| self.file.part_bytes(t, role).ok();
        let view = Bnb4View::from_parts(&params, &t.shape, &parts).map_err(unsupported)?;
        Ok(Some(view.absmax().to_vec()))
    }

    /// `out = x @ w^T` for this weight, whatever its storage.
    fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), RuntimeError> {
        let (n, k) = (self.rows, self.cols);
        let t = &self.tensor;
        let unsupported = |e: String| RuntimeError::Unsupported(format!("tensor {}: {e}", t.name));
        match t.storage.name.as_str() {
            "f32" | "f16" | "bf16" => {
                linear::matmul_nt(x, m, k, Weights::Dense(self.dense()), n, out)
            }
            "int8_rowwise" => {
                let params = Int8Params::from_storage(&t.storage).map_err(unsupported)?;
                let view = Int8View::from_parts(&params, &t.shape, &|role| {
                    self.file.part_bytes(t, role).ok()
                })
                .map_err(unsupported)?;
                if params.threshold > 0.0 {
                    let rows = int8::Int8Rows {
                        data: view.data(),
                        scales: view.scales(),
                    };
                    int8::int8_matmul(x, m, k, rows, n, params.threshold, out);
                } else {
                    // Weight-only int8: 16-bit activations against the dequantized weights.
                    let f16 = Some(FloatDtype::F16);
                    rounded_matmul(x, m, &view, f16, f16, out);
                }
            }
            name => {
                let view = self.quantized()?;
                let dtype = match name {
                    "nf4" | "fp4" => {
                        Some(Bnb4Params::from_storage(&t.storage).map_err(unsupported)?)
                    }
                    _ => None,
                };
                match dtype {
                    // Decoded values are already in the original dtype; round the inputs only.
                    Some(p) if p.orig_dtype == p.compute_dtype => {
                        rounded_matmul(x, m, view.as_ref(), Some(p.compute_dtype), None, out)
                    }
                    Some(p) => rounded_matmul(
                        x,
                        m,
                        view.as_ref(),
                        Some(p.compute_dtype),
                        Some(p.compute_dtype),
                        out,
                    ),
                    None => rounded_matmul(x, m, view.as_ref(), None, None, out),
                }
            }
        }
        Ok(())
    }

    /// A 1-D weight (norm scale, bias) as f32.
    fn vector(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.rows * self.cols];
        self.dense().rows_to_f32(self.cols, 0, self.rows, &mut v);
        v
    }
}

/// A quantized matrix as rows for [`linear::matmul_nt`], its decoded rows optionally rounded
/// to a compute dtype (bitsandbytes multiplies in 16 bits).
pub struct QuantizedRows<'a> {
    /// The codec's row decoder.
    pub inner: &'a (dyn QuantizedMatrix + Send + Sync + 'a),
    /// Dtype the decoded values are rounded to, if any.
    pub dtype: Option<FloatDtype>,
}

impl DecodeRows for QuantizedRows<'_> {
    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]) {
        self.inner.decode_rows(start, count, dst);
        if let Some(d) = self.dtype {
            dst.iter_mut().for_each(|v| *v = d.round(*v));
        }
    }
}

/// `out = x @ w^T` with weights decoded tile by tile; the inputs rounded to `x_dtype` and the
/// decoded weights to `w_dtype` where given (products still accumulate in f32).
fn rounded_matmul(
    x: &[f32],
    m: usize,
    w: &(dyn QuantizedMatrix + Send + Sync),
    x_dtype: Option<FloatDtype>,
    w_dtype: Option<FloatDtype>,
    out: &mut [f32],
) {
    let (k, n) = (w.cols(), w.rows());
    if m == 1 && x_dtype.is_none() && w_dtype.is_none() && direct_gemv(x, w, &mut out[..n]) {
        return;
    }
    let rows = QuantizedRows {
        inner: w,
        dtype: w_dtype,
    };
    match x_dtype {
        Some(d) => {
            let xr: Vec<f32> = x.iter().map(|&v| d.round(v)).collect();
            linear::matmul_nt(&xr, m, k, Weights::Decoded(&rows), n, out)
        }
        None => linear::matmul_nt(x, m, k, Weights::Decoded(&rows), n, out),
    }
}

/// `out = w @ x` for one row `x` through the codec's own product ([`QuantizedMatrix::gemv_rows`]),
/// 64-row pieces spread over threads; false (nothing computed) where the codec has none.
fn direct_gemv(x: &[f32], w: &(dyn QuantizedMatrix + Send + Sync), out: &mut [f32]) -> bool {
    let multiple = w.gemv_row_multiple();
    if multiple == 0 || !out.len().is_multiple_of(multiple) {
        return false;
    }
    let chunk = 64usize.div_ceil(multiple) * multiple;
    // Every piece starts and ends on a multiple, so the codec takes all of them; should one
    // refuse, the caller's decode path recomputes every row.
    out.par_chunks_mut(chunk)
        .enumerate()
        .map(|(i, piece)| w.gemv_rows(x, i * chunk, piece))
        .all(|done| done)
}

/// Reads a dense (f32, f16 or bf16) tensor of `file` into f32.
pub fn read_dense_f32(file: &QrtFile, name: &str) -> Result<Vec<f32>, RuntimeError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| RuntimeError::MissingTensor(name.to_string(), file.path().to_string()))?;
    let bytes = file.part_bytes(t, "data")?;
    let elem = t.storage.dense_elem().ok_or_else(|| {
        RuntimeError::Unsupported(format!(
            "tensor {name} is stored as {}; a 16- or 32-bit tensor is needed here",
            t.storage.name
        ))
    })?;
    let rows = dense_rows(elem, bytes);
    let numel = t.numel() as usize;
    let mut out = vec![0f32; numel];
    rows.rows_to_f32(numel, 0, 1, &mut out);
    Ok(out)
}

/// Dense rows of element type `elem` (f16, bf16, else f32) over `bytes`.
fn dense_rows(elem: ElemType, bytes: &[u8]) -> DenseRows<'_> {
    match elem {
        ElemType::F16 => DenseRows::F16(cast(bytes)),
        ElemType::BF16 => DenseRows::Bf16(cast(bytes)),
        _ => DenseRows::F32(cast(bytes)),
    }
}

/// Reinterprets aligned little-endian bytes as a slice of `T`.
fn cast<T: Copy>(bytes: &[u8]) -> &[T] {
    // SAFETY: f32/f16/bf16 accept any bit pattern; alignment and size are checked.
    let (head, body, tail) = unsafe { bytes.align_to::<T>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "tensor data is not aligned"
    );
    body
}

/// The KV pool: per layer, keys and values `[slots, kv_heads * head_dim]`.
#[derive(Debug)]
pub struct CpuKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    stride: usize,
}

/// A forward pass's inputs, kept on the host.
#[derive(Clone, Debug)]
pub struct CpuStep {
    tokens: Vec<u32>,
    batch: BatchLayout,
    logit_rows: Vec<u32>,
    inv_freq: Vec<f32>,
}

impl CpuBackend {
    /// `x += y`.
    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), RuntimeError> {
        check_shape("add", y, x.rows, x.cols)?;
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Stores `k` and `v` rows of layer `layer` into the given slots.
    fn write_kv(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        k: &CpuAct,
        v: &CpuAct,
        slots: &[u32],
    ) -> Result<(), RuntimeError> {
        let stride = kv.stride;
        check_shape("write_kv keys", k, slots.len(), stride)?;
        check_shape("write_kv values", v, slots.len(), stride)?;
        for (pool, src) in [(&mut kv.k[layer], k), (&mut kv.v[layer], v)] {
            for (row, &slot) in src.data.chunks(stride).zip(slots) {
                let at = slot as usize * stride;
                pool.get_mut(at..at + stride)
                    .ok_or_else(|| {
                        RuntimeError::Shape(format!("KV slot {slot} is outside the pool"))
                    })?
                    .copy_from_slice(row);
            }
        }
        Ok(())
    }
}

fn check_shape(what: &str, act: &CpuAct, rows: usize, cols: usize) -> Result<(), RuntimeError> {
    if act.rows != rows || act.cols != cols {
        return Err(RuntimeError::Shape(format!(
            "{what}: expected [{rows}, {cols}], got [{}, {}]",
            act.rows, act.cols
        )));
    }
    Ok(())
}

/// Rotary embedding (rotate-half layout) of rows `[positions.len(), heads * head_dim]`, in place.
pub fn rope_rows(
    x: &mut [f32],
    positions: &[u32],
    heads: usize,
    head_dim: usize,
    inv_freq: &[f32],
) {
    let half_dim = head_dim / 2;
    x.par_chunks_mut(heads * head_dim)
        .zip(positions)
        .for_each(|(row, &pos)| {
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
                .iter()
                .map(|f| {
                    let angle = pos as f32 * f;
                    (angle.cos(), angle.sin())
                })
                .unzip();
            for head in row.chunks_mut(head_dim) {
                let (a, b) = head.split_at_mut(half_dim);
                for i in 0..half_dim {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
}

/// `silu(gate) * up`, element-wise.
pub fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

/// The reference RMSNorm of one row: `out = x / sqrt(mean(x^2) + eps) * w`, the mean in f64.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Weight = CpuWeight;
    type Kv = CpuKv;
    type Step = CpuStep;
    type Chosen = Vec<u32>;

    fn argmax_feed(
        &self,
        logits: &CpuAct,
        next: &mut CpuStep,
        feed: &[u32],
    ) -> Result<Vec<u32>, RuntimeError> {
        check_feed(logits.rows, next.tokens.len(), feed)?;
        let chosen = self.argmax(logits)?;
        for (&token, &row) in chosen.iter().zip(feed) {
            if row != NO_FEED {
                next.tokens[row as usize] = token;
            }
        }
        Ok(chosen)
    }

    fn read_chosen(&self, chosen: Vec<u32>) -> Result<Vec<u32>, RuntimeError> {
        Ok(chosen)
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn another(&self) -> Result<Self, RuntimeError> {
        Ok(Self::new())
    }

    fn load_weight(
        &self,
        file: &Arc<QrtFile>,
        tensor: &TensorInfo,
    ) -> Result<CpuWeight, RuntimeError> {
        let (rows, cols) = match tensor.shape.as_slice() {
            [n] => (1, *n as usize),
            [r, c] => (*r as usize, *c as usize),
            other => {
                return Err(RuntimeError::Shape(format!(
                    "tensor {}: expected 1 or 2 dimensions, got {other:?}",
                    tensor.name
                )))
            }
        };
        let mut weight = CpuWeight {
            file: file.clone(),
            tensor: tensor.clone(),
            rows,
            cols,
            bnb4_absmax: None,
        };
        match tensor.storage.name.as_str() {
            "f32" | "f16" | "bf16" => {
                let bytes = file.part_bytes(tensor, "data")?;
                if bytes.len() as u64 != (rows * cols) as u64 * weight.dense_elem().size_bytes() {
                    return Err(RuntimeError::Shape(format!(
                        "tensor {}: data size does not match its shape",
                        tensor.name
                    )));
                }
            }
            _ => {
                // The scales first: with them, checking the view decodes nothing again.
                weight.bnb4_absmax = weight.decoded_bnb4_absmax()?;
                weight.quantized()?;
            }
        }
        Ok(weight)
    }

    fn alloc_act(&self, rows: usize, cols: usize) -> Result<CpuAct, RuntimeError> {
        Ok(CpuAct {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        })
    }

    fn act_from_host(
        &self,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<CpuAct, RuntimeError> {
        check_host_len(rows, cols, data.len())?;
        Ok(CpuAct {
            data: data.to_vec(),
            rows,
            cols,
        })
    }

    fn kv_value_bytes(&self) -> usize {
        4
    }

    fn alloc_kv(&self, g: &KvGeometry) -> Result<CpuKv, RuntimeError> {
        let per_layer = g.num_slots() * g.slot_elems();
        let bytes = per_layer as u128 * g.num_layers as u128 * 2 * 4;
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..g.num_layers {
            for pool in [&mut k, &mut v] {
                let mut layer = Vec::new();
                layer
                    .try_reserve_exact(per_layer)
                    .map_err(|_| RuntimeError::OutOfMemory {
                        what: "KV cache".into(),
                        bytes,
                    })?;
                layer.resize(per_layer, 0.0);
                pool.push(layer);
            }
        }
        Ok(CpuKv {
            k,
            v,
            stride: g.slot_elems(),
        })
    }

    fn prepare(&self, input: &StepInput<'_>, kv: &CpuKv) -> Result<CpuStep, RuntimeError> {
        let _ = kv; // each op checks its slots against the pool
        Ok(CpuStep {
            tokens: input.tokens.to_vec(),
            batch: input.batch.clone(),
            logit_rows: input.logit_rows.to_vec(),
            inv_freq: input.inv_freq.to_vec(),
        })
    }

    fn embed(
        &self,
        table: &CpuWeight,
        step: &CpuStep,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        let tokens = &step.tokens;
        check_shape("embed", out, tokens.len(), table.cols)?;
        let view = table.dense();
        for (row, &t) in out.data.chunks_mut(table.cols).zip(tokens) {
            if t as usize >= table.rows {
                return Err(RuntimeError::Shape(format!(
                    "token id {t} is outside the vocabulary of {}",
                    table.rows
                )));
            }
            view.rows_to_f32(table.cols, t as usize, 1, row);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CpuAct,
        weight: &CpuWeight,
        eps: f32,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        check_shape("rms_norm", out, x.rows, weight.cols)?;
        let w = weight.vector();
        out.data
            .par_chunks_mut(x.cols)
            .zip(x.data.par_chunks(x.cols))
            .for_each(|(o, r)| rms_norm_row(r, &w, eps, o));
        Ok(())
    }

    fn linear(
        &self,
        x: &CpuAct,
        weight: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        if x.cols != weight.cols {
            return Err(RuntimeError::Shape(format!(
                "linear {}: input has {} features, weight expects {}",
                weight.tensor.name, x.cols, weight.cols
            )));
        }
        check_shape("linear output", out, x.rows, weight.rows)?;
        weight.matmul(&x.data, x.rows, &mut out.data)?;
        if let Some(b) = bias {
            let b = b.vector();
            out.data
                .chunks_mut(weight.rows)
                .for_each(|r| r.iter_mut().zip(&b).for_each(|(o, b)| *o += b));
        }
        Ok(())
    }

    fn linears(&self, x: &CpuAct, outs: &mut [LinearOut<'_, Self>]) -> Result<(), RuntimeError> {
        // One parallel region for all the products (each splits its rows further), not one
        // after another: fewer joins per layer.
        outs.par_iter_mut()
            .try_for_each(|o| self.linear(x, o.weight, o.bias, o.out))
    }

    fn linear_add(
        &self,
        x: &CpuAct,
        weight: &CpuWeight,
        bias: Option<&CpuWeight>,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        let mut product = self.alloc_act(out.rows, out.cols)?;
        self.linear(x, weight, bias, &mut product)?;
        self.add(out, &product)
    }

    fn rope_kv(&self, a: &mut AttentionInputs<'_, Self>) -> Result<(), RuntimeError> {
        let AttentionInputs {
            q,
            k,
            v,
            kv,
            layer,
            step,
            heads,
        } = a;
        let (layer, heads) = (*layer, *heads);
        let positions = &step.batch.positions;
        let d = heads.head_dim;
        check_shape("rope q", q, positions.len(), heads.num_heads * d)?;
        check_shape("rope k", k, positions.len(), heads.num_kv_heads * d)?;
        rope_rows(&mut q.data, positions, heads.num_heads, d, &step.inv_freq);
        rope_rows(
            &mut k.data,
            positions,
            heads.num_kv_heads,
            d,
            &step.inv_freq,
        );
        self.write_kv(kv, layer, k, v, &step.batch.slots)
    }

    fn attention(
        &self,
        q: &CpuAct,
        kv: &CpuKv,
        layer: usize,
        step: &CpuStep,
        heads: HeadGeometry,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        let batch = &step.batch;
        check_shape(
            "attention query",
            q,
            batch.rows(),
            heads.num_heads * heads.head_dim,
        )?;
        check_shape("attention output", out, q.rows, q.cols)?;
        let layer_kv = attention::LayerKv {
            k: &kv.k[layer],
            v: &kv.v[layer],
        };
        attention::paged_attention(&q.data, layer_kv, batch, heads, &mut out.data);
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuAct, up: &CpuAct, out: &mut CpuAct) -> Result<(), RuntimeError> {
        check_shape("silu_mul up", up, gate.rows, gate.cols)?;
        check_shape("silu_mul output", out, gate.rows, gate.cols)?;
        silu_mul_into(&gate.data, &up.data, &mut out.data);
        Ok(())
    }

    fn select_rows(
        &self,
        x: &CpuAct,
        step: &CpuStep,
        out: &mut CpuAct,
    ) -> Result<(), RuntimeError> {
        let rows = &step.logit_rows;
        check_shape("gather_rows", out, rows.len(), x.cols)?;
        for (dst, &r) in out.data.chunks_mut(x.cols).zip(rows) {
            let r = r as usize;
            if r >= x.rows {
                return Err(RuntimeError::Shape(format!(
                    "gather_rows: row {r} of {}",
                    x.rows
                )));
            }
            dst.copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(())
    }

    fn to_host(&self, x: &CpuAct) -> Result<Vec<f32>, RuntimeError> {
        Ok(x.data.clone())
    }

    fn rows(&self, x: &CpuAct) -> usize {
        x.rows
    }

    fn cols(&self, x: &CpuAct) -> usize {
        x.cols
    }
}
