//! The CUDA backend: the ops of [`Backend`] on an NVIDIA GPU with qrt's own kernels
//! (crate `qrt-kernels`).
//!
//! Activations are f32 in device buffers from a caching pool ([`pool`]); weights are uploaded
//! once from the memory-mapped file (f16/bf16 matrices as they are stored, vectors as f32);
//! the KV cache is f16, `[layers][blocks][block_size][kv_heads][head_dim]` for K and for V.
//! Products of up to 8 rows run as GEMV (decode), of 9 to 16 as tensor-core GEMV where it pays
//! ([`CudaDevice::wide_gemv_pays`]), the rest as tensor-core GEMM (prefill, and batched decode
//! beyond). A pass's inputs go to the device in one copy ([`step`]);
//! decode passes of up to 64 rows are recorded once as a CUDA graph per (rows, context
//! partitions) and replayed afterwards. The routes of products (`products.rs`) and the
//! attention's arguments (`attention.rs`) have files of their own, as has `QRT_PROFILE`'s
//! timing (`profile.rs`).
//! The CPU backend is the reference these ops are checked against (`qrt selftest`).

mod attention;
pub mod pool;
mod products;
mod profile;
pub mod step;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use qrt_format::container::{QrtFile, TensorInfo};
use qrt_kernels::layouts::{qrt_attn_args, qrt_rope_kv_args, qrt_sample_row};
use qrt_kernels::{
    argmax_keys_per_row, argmax_token, attention_decode_work_bytes, sampled_token, CudaDevice,
    DeviceBuffer, Event, Fusion, GemvInput, Graph, Half16, InputNorm, Partitions, PinnedU32,
    ReadBack, Segment,
};

use crate::backend::{
    check_feed, check_host_len, check_sampling, check_targets, AttentionInputs, Backend,
    HeadGeometry, LinearOut, MlpScratch, MlpWeights, StepInput,
};
use crate::cpu::read_dense_f32;
use crate::kv_cache::KvGeometry;
use crate::sampling::SamplingParams;
use crate::RuntimeError;
use pool::{ActPool, PooledBuffer};
use products::{gemv_input, segments, Staging, RESIDUAL};
use profile::TimedOp;
use step::{plan, DecodeSplit, StepPlan};

/// Largest batch of rows every product multiplies by GEMV (the FMA kernels where the tensor
/// cores cannot); up to [`MAX_TC_GEMV_ROWS`] where the tensor-core GEMV has a plan, else and
/// beyond by GEMM.
pub const MAX_GEMV_ROWS: usize = 8;

/// Largest batch of rows the tensor-core GEMV multiplies.
pub const MAX_TC_GEMV_ROWS: usize = qrt_kernels::GEMV_TC_MAX_ROWS;

/// Largest decode pass recorded as a CUDA graph: as many rows as the skinny GEMM takes. Such
/// passes keep every buffer they write between passes: the model's workspace, the pass's step
/// buffers and the staging buffers (`Staging`).
pub const MAX_GRAPH_ROWS: usize = qrt_kernels::GEMM_SKINNY_MAX_M;

/// The CUDA backend on one GPU. It runs one pass at a time (an engine drives it from one
/// thread): a pass's inputs and a recorded pass's buffers are shared per kind of pass.
pub struct CudaBackend {
    dev: Arc<CudaDevice>,
    pool: ActPool,
    graphs: Mutex<Graphs>,
    use_graphs: bool,
    /// With `QRT_PROFILE=1`: every op's start and end events (graphs are then off).
    profile: Option<Mutex<Vec<TimedOp>>>,
    /// Pinned host memory for chosen tokens, kept between passes (allocating it is slow).
    pinned: Mutex<Vec<PinnedU32>>,
    /// Batched decode attention may leave its partitions for the output projection to merge
    /// (unless `QRT_ATTN_DEFER=0`).
    defer_merge: bool,
    /// MLPs of at least this many rows (up to 16: batched decode, or a short prefill) may pass
    /// silu(gate) * up to down in 16 bits (`QRT_MLP_HALF16=N`; 0 never; default
    /// [`HALF16_MLP_MIN_ROWS`]).
    half16_mlp_rows: AtomicUsize,
    /// 16-bit copies of activations for the GEMMs of passes that may be recorded.
    staging: Staging,
    /// Output projections issued that merged the attention's partitions.
    merged_projections: AtomicUsize,
    /// MLPs issued that passed their activations in 16 bits.
    half16_mlps: AtomicUsize,
}

/// Greedy tokens on their way to the host ([`Backend::argmax_feed`]).
pub struct CudaChosen(ReadBack);

/// Recorded decode passes, and the fixed input buffers they read.
#[derive(Default)]
struct Graphs {
    /// Keys run once already (the second run is recorded).
    seen: HashSet<(StepKey, u64)>,
    recorded: HashMap<(StepKey, u64), Graph>,
    inputs: HashMap<StepKey, Arc<StepBuffers>>,
}

/// What makes two decode passes replayable by one recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StepKey {
    rows: usize,
    split: DecodeSplit,
    heads: HeadGeometry,
    block_size: usize,
}

/// The storage of a weight on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WeightType {
    Half(Half16),
    F32,
}

/// A weight on the device.
pub struct CudaWeight {
    buf: DeviceBuffer,
    ty: WeightType,
    rows: usize,
    cols: usize,
    name: String,
}

/// An f32 activation buffer on the device.
pub struct CudaAct {
    buf: PooledBuffer,
    rows: usize,
    cols: usize,
}

impl CudaAct {
    fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The KV cache: f16 keys and values of every layer.
pub struct CudaKv {
    k: DeviceBuffer,
    v: DeviceBuffer,
    geometry: KvGeometry,
    /// Unique among the caches of this process (recordings are kept per cache).
    id: u64,
}

/// Ids of KV caches.
static NEXT_KV_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl CudaKv {
    /// Byte offset of layer `layer` in either pool.
    fn layer_offset(&self, layer: usize) -> u64 {
        (layer * self.geometry.num_slots() * self.geometry.slot_elems() * 2) as u64
    }
}

/// The device buffers of a pass's inputs: the packed words and, for decode, the partial
/// results of the attention partitions.
struct StepBuffers {
    words: DeviceBuffer,
    work: DeviceBuffer,
}

/// A pass's inputs on the device.
pub struct CudaStep {
    buffers: Arc<StepBuffers>,
    plan: StepPlan,
    heads: HeadGeometry,
    key: Option<StepKey>,
}

impl CudaStep {
    fn at(&self, offset_words: usize) -> u64 {
        self.buffers.words.ptr() + 4 * offset_words as u64
    }
}

/// Fewest rows (of at most 16) whose MLP passes its activations in 16 bits where it can
/// ([`CudaDevice::mlp_in_half16`]). On an H200 (RESULTS log 43, the 1B's decode) it cost
/// 0.3-0.7% at 2 and 4 rows and gained 0.1-1.3% at 6 to 8.
const HALF16_MLP_MIN_ROWS: usize = 6;

/// The error of a row whose logits are all NaN (no token to choose).
fn all_nan() -> RuntimeError {
    RuntimeError::InvalidRequest("every logit of a row is NaN".into())
}

/// The tokens the sampling kernels wrote, one per row ([`sampled_token`]).
fn sampled_tokens(raw: Vec<u32>) -> Result<Vec<u32>, RuntimeError> {
    raw.into_iter()
        .map(|t| sampled_token(t).ok_or_else(all_nan))
        .collect()
}

fn check(what: &str, act: &CudaAct, rows: usize, cols: usize) -> Result<(), RuntimeError> {
    if act.rows != rows || act.cols != cols {
        return Err(RuntimeError::Shape(format!(
            "{what}: expected [{rows}, {cols}], got [{}, {}]",
            act.rows, act.cols
        )));
    }
    Ok(())
}

impl CudaBackend {
    /// A backend on GPU `ordinal`; CUDA graphs for decode unless `QRT_CUDA_GRAPHS=0`;
    /// `QRT_PROFILE=1` times every op (see [`profile_report`](Self::profile_report)).
    pub fn new(ordinal: usize) -> Result<Self, RuntimeError> {
        Ok(Self::on(CudaDevice::new(ordinal)?))
    }

    /// A backend on `dev` (e.g. a device whose decode attention policy was set), with the
    /// same environment switches as [`new`](Self::new), `QRT_ATTN_DEFER=0` to keep the
    /// batched decode attention's partitions merged by the attention itself, and
    /// `QRT_MLP_HALF16=N` to pass the MLP activations of passes of N to 8 rows in 16 bits (0:
    /// never).
    pub fn on(dev: CudaDevice) -> Self {
        let dev = Arc::new(dev);
        let flag = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty() && v != "0")
        };
        let profile = flag("QRT_PROFILE").map(|_| Mutex::default());
        let use_graphs =
            profile.is_none() && std::env::var("QRT_CUDA_GRAPHS").map_or(true, |v| v != "0");
        Self {
            pool: ActPool::new(dev.clone()),
            dev,
            graphs: Mutex::default(),
            use_graphs,
            profile,
            pinned: Mutex::default(),
            defer_merge: std::env::var("QRT_ATTN_DEFER").map_or(true, |v| v != "0"),
            half16_mlp_rows: AtomicUsize::new(
                std::env::var("QRT_MLP_HALF16")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(
                        HALF16_MLP_MIN_ROWS,
                        |n: usize| if n == 0 { usize::MAX } else { n },
                    ),
            ),
            staging: Staging::default(),
            merged_projections: AtomicUsize::new(0),
            half16_mlps: AtomicUsize::new(0),
        }
    }

    /// Whether batched decode attention may leave its partitions to the output projection
    /// (`QRT_ATTN_DEFER`).
    pub fn defers_attention_merge(&self) -> bool {
        self.defer_merge
    }

    /// From how many rows (of at most 16) MLPs may pass their activations in 16 bits
    /// (`QRT_MLP_HALF16`; `usize::MAX`: never).
    pub fn half16_mlp_rows(&self) -> usize {
        self.half16_mlp_rows.load(Ordering::Relaxed)
    }

    /// Sets [`half16_mlp_rows`](Self::half16_mlp_rows) for the MLPs issued from now on (the
    /// selftest checks both forms).
    pub fn set_half16_mlp_rows(&self, rows: usize) {
        self.half16_mlp_rows.store(rows, Ordering::Relaxed);
    }

    /// How many output projections so far merged the decode attention's partitions as they
    /// read them, and how many MLPs passed their activations in 16 bits (issued from the
    /// host: a replayed CUDA graph counts once, when recorded).
    pub fn fused_counts(&self) -> (usize, usize) {
        (
            self.merged_projections.load(Ordering::Relaxed),
            self.half16_mlps.load(Ordering::Relaxed),
        )
    }

    /// The device.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Fills `act` with NaN, so that elements an op fails to write show up.
    pub fn poison(&self, act: &mut CudaAct) -> Result<(), RuntimeError> {
        // SAFETY: the buffer holds act.len() f32; all-ones bytes are a NaN.
        unsafe { self.dev.fill_bytes(act.ptr(), 0xff, act.len() * 4)? };
        Ok(())
    }

    /// Copies the f16 keys (`values = false`) or values of `layer` back, as f32,
    /// `[slots, kv_heads * head_dim]`.
    pub fn kv_to_host(
        &self,
        kv: &CudaKv,
        layer: usize,
        values: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        let n = kv.geometry.num_slots() * kv.geometry.slot_elems();
        let mut host = vec![half::f16::ZERO; n];
        let pool = if values { &kv.v } else { &kv.k };
        // SAFETY: each layer of the pool holds n f16.
        unsafe {
            self.dev.copy_to_host(
                pool.ptr() + kv.layer_offset(layer),
                &mut host,
                "the KV cache",
            )?
        };
        Ok(host.iter().map(|v| v.to_f32()).collect())
    }

    /// Packs and uploads a pass's inputs; decode passes reuse the buffers of their key.
    fn upload_step(&self, plan: StepPlan, heads: HeadGeometry) -> Result<CudaStep, RuntimeError> {
        let key = plan
            .decode
            .filter(|_| self.use_graphs && plan.rows <= MAX_GRAPH_ROWS)
            .map(|split| StepKey {
                rows: plan.rows,
                split,
                heads,
                block_size: plan.block_size,
            });
        let (counters_at, work_bytes) = plan.decode.map_or((0, 0), |d| {
            attention_decode_work_bytes(
                plan.num_seqs,
                heads.num_heads,
                heads.num_kv_heads,
                heads.head_dim,
                d.splits,
            )
        });
        let alloc = || -> Result<Arc<StepBuffers>, RuntimeError> {
            let work = self.dev.alloc(work_bytes, "attention partials")?;
            // SAFETY: the arrival counters lie within the work buffer.
            unsafe {
                self.dev
                    .fill_bytes(work.ptr() + counters_at as u64, 0, work_bytes - counters_at)?
            };
            Ok(Arc::new(StepBuffers {
                words: self.dev.alloc(plan.words.len() * 4, "pass inputs")?,
                work,
            }))
        };
        let buffers = match key {
            Some(k) => {
                let mut graphs = self.graphs.lock().unwrap_or_else(PoisonError::into_inner);
                match graphs.inputs.get(&k) {
                    Some(b) => b.clone(),
                    None => {
                        let b = alloc()?;
                        graphs.inputs.insert(k, b.clone());
                        b
                    }
                }
            }
            None => alloc()?,
        };
        if buffers.words.bytes() < plan.words.len() * 4 {
            return Err(RuntimeError::Shape(
                "a decode pass outgrew its recorded input layout".into(),
            ));
        }
        // SAFETY: the buffer holds at least words.len() u32.
        unsafe {
            self.dev
                .copy_to_device(&plan.words, buffers.words.ptr(), "pass inputs")?
        };
        Ok(CudaStep {
            buffers,
            plan,
            heads,
            key,
        })
    }
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Weight = CudaWeight;
    type Kv = CudaKv;
    type Step = CudaStep;
    type Chosen = CudaChosen;

    fn describe(&self) -> String {
        let (major, minor) = self.dev.compute_capability();
        format!(
            "cuda:{} ({}, sm_{major}{minor}, {} MiB{})",
            self.dev.ordinal(),
            self.dev.name(),
            self.dev.total_memory() >> 20,
            if self.use_graphs { ", CUDA graphs" } else { "" }
        )
    }

    fn another(&self) -> Result<Self, RuntimeError> {
        Self::new(self.dev.ordinal())
    }

    fn load_weight(
        &self,
        file: &Arc<QrtFile>,
        tensor: &TensorInfo,
    ) -> Result<CudaWeight, RuntimeError> {
        let name = tensor.name.clone();
        let storage = tensor.storage.name.as_str();
        let (rows, cols) = match tensor.shape.as_slice() {
            [n] => (1, *n as usize),
            [r, c] => (*r as usize, *c as usize),
            other => {
                return Err(RuntimeError::Shape(format!(
                    "tensor {name}: expected 1 or 2 dimensions, got {other:?}"
                )))
            }
        };
        let what = format!("tensor {name} of {}", file.path());
        if tensor.shape.len() == 1 {
            // Norm scales and biases: f32 on the device.
            let values = read_dense_f32(file, &name)?;
            let buf = self.dev.alloc(values.len() * 4, &what)?;
            // SAFETY: the buffer holds values.len() f32.
            unsafe { self.dev.copy_to_device(&values, buf.ptr(), &what)? };
            return Ok(CudaWeight {
                buf,
                ty: WeightType::F32,
                rows,
                cols,
                name,
            });
        }
        let ty = match storage {
            "f16" => WeightType::Half(Half16::F16),
            "bf16" => WeightType::Half(Half16::Bf16),
            other => {
                return Err(RuntimeError::Unsupported(format!(
                    "{what} is stored as {other}; the CUDA backend runs f16 and bf16 matrices \
                     (quantized CUDA kernels are not built yet): use --device cpu, or a 16-bit \
                     model"
                )))
            }
        };
        let bytes = file.part_bytes(tensor, "data")?;
        if bytes.len() != rows * cols * 2 {
            return Err(RuntimeError::Shape(format!(
                "{what}: {} bytes of data for shape [{rows}, {cols}]",
                bytes.len()
            )));
        }
        let buf = self.dev.alloc(bytes.len(), &what)?;
        // SAFETY: the buffer holds bytes.len() bytes.
        unsafe { self.dev.copy_to_device(bytes, buf.ptr(), &what)? };
        Ok(CudaWeight {
            buf,
            ty,
            rows,
            cols,
            name,
        })
    }

    fn alloc_act(&self, rows: usize, cols: usize) -> Result<CudaAct, RuntimeError> {
        Ok(CudaAct {
            buf: self.pool.get(rows * cols * 4, "activations")?,
            rows,
            cols,
        })
    }

    fn act_from_host(
        &self,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<CudaAct, RuntimeError> {
        check_host_len(rows, cols, data.len())?;
        let act = self.alloc_act(rows, cols)?;
        // SAFETY: the buffer holds rows * cols f32.
        unsafe { self.dev.copy_to_device(data, act.ptr(), "activations")? };
        Ok(act)
    }

    fn kv_value_bytes(&self) -> usize {
        2
    }

    fn free_memory(&self) -> Option<u64> {
        self.dev.memory_info().ok().map(|(free, _)| free as u64)
    }

    fn alloc_kv(&self, g: &KvGeometry) -> Result<CudaKv, RuntimeError> {
        let bytes = g.num_layers * g.num_slots() * g.slot_elems() * self.kv_value_bytes();
        Ok(CudaKv {
            k: self.dev.alloc(bytes, "the KV cache (keys)")?,
            v: self.dev.alloc(bytes, "the KV cache (values)")?,
            geometry: *g,
            id: NEXT_KV_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn prepare(&self, input: &StepInput<'_>, kv: &CudaKv) -> Result<CudaStep, RuntimeError> {
        self.timed("upload inputs", || {
            let plan = plan(input, &self.dev.decode_policy())?;
            // Checked here as well as by the ops, since a replayed recording runs no op.
            let g = &kv.geometry;
            let heads = input.heads;
            if plan.block_size != g.block_size
                || heads.num_kv_heads * heads.head_dim != g.slot_elems()
                || (plan.rows > 0
                    && (plan.max_block as usize >= g.num_blocks
                        || plan.max_slot as usize >= g.num_slots()))
            {
                return Err(RuntimeError::Shape(format!(
                    "a pass over blocks of {} tokens (block {}, slot {}) does not fit a KV cache \
                     of {} blocks of {} tokens",
                    plan.block_size, plan.max_block, plan.max_slot, g.num_blocks, g.block_size
                )));
            }
            self.upload_step(plan, heads)
        })
    }

    fn release_cached(&self) -> Result<(), RuntimeError> {
        // Recordings read the step inputs and staging buffers: all go, after the work queued.
        self.dev
            .synchronize("the passes queued before freeing cached buffers")?;
        let mut graphs = self.graphs.lock().unwrap_or_else(PoisonError::into_inner);
        *graphs = Graphs::default();
        self.staging.clear();
        self.pool.release_cached();
        Ok(())
    }

    fn kv_id(&self, kv: &CudaKv) -> u64 {
        kv.id
    }

    fn run_step(
        &self,
        step: &CudaStep,
        scope: u64,
        body: &mut dyn FnMut() -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        let Some(key) = step.key else {
            return body();
        };
        let key = (key, scope);
        let mut graphs = self.graphs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(graph) = graphs.recorded.get(&key) {
            return Ok(self.dev.replay(graph)?);
        }
        if graphs.seen.insert(key) {
            // The first pass of a kind runs directly: it loads the kernels and shows errors.
            return body();
        }
        self.dev.begin_capture()?;
        let result = body();
        let graph = self.dev.end_capture();
        result?;
        let graph = graph?;
        self.dev.replay(&graph)?;
        graphs.recorded.insert(key, graph);
        Ok(())
    }

    fn embed(
        &self,
        table: &CudaWeight,
        step: &CudaStep,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.timed("embed", || {
            check("embed", out, step.plan.rows, table.cols)?;
            if step.plan.rows > 0 && step.plan.max_token as usize >= table.rows {
                return Err(RuntimeError::Shape(format!(
                    "token id {} is outside the vocabulary of {}",
                    step.plan.max_token, table.rows
                )));
            }
            let ty = Self::half_type(table)?.name();
            if step.plan.rows == 0 {
                return Ok(());
            }
            // SAFETY: the tokens are below table.rows (checked); out holds rows * cols f32.
            unsafe {
                self.dev.embed(
                    ty,
                    table.buf.ptr(),
                    step.at(step.plan.tokens),
                    out.ptr(),
                    step.plan.rows,
                    table.cols,
                )?
            };
            Ok(())
        })
    }

    fn rms_norm(
        &self,
        x: &CudaAct,
        weight: &CudaWeight,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.timed("rms_norm", || {
            check("rms_norm", out, x.rows, weight.cols)?;
            check("rms_norm input", x, out.rows, weight.cols)?;
            Self::check_vector(weight)?;
            // SAFETY: shapes checked; the weight holds cols f32.
            unsafe {
                self.dev.rms_norm_rows(
                    None,
                    x.ptr(),
                    weight.buf.ptr(),
                    out.ptr(),
                    x.rows,
                    x.cols,
                    eps,
                )?
            };
            Ok(())
        })
    }

    fn linear(
        &self,
        x: &CudaAct,
        weight: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.linears(x, &mut [LinearOut { weight, bias, out }])
    }

    fn linear_add(
        &self,
        x: &CudaAct,
        weight: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.products(x, &mut [LinearOut { weight, bias, out }], RESIDUAL)
    }

    fn linears(&self, x: &CudaAct, outs: &mut [LinearOut<'_, Self>]) -> Result<(), RuntimeError> {
        self.products(x, outs, Fusion::default())
    }

    fn norm_linears(
        &self,
        x: &CudaAct,
        norm: &CudaWeight,
        eps: f32,
        normed: &mut CudaAct,
        outs: &mut [LinearOut<'_, Self>],
    ) -> Result<(), RuntimeError> {
        // Several products (q, k and v; the head is one) feed the attention, whose blocks
        // start on the multiprocessors their plan leaves free.
        let fusion = Fusion {
            spare_multiprocessors: outs.len() > 1,
            ..Fusion::default()
        };
        let gemv = x.rows <= MAX_GEMV_ROWS
            || (self.dev.gemv_fuses_norm(x.rows, x.cols)
                && Self::product_type(x, outs)?
                    .map(|ty| self.gemv_takes(ty, x, outs, fusion))
                    .transpose()?
                    .unwrap_or(false));
        if !gemv {
            // Prefill: the norm writes the GEMMs' 16-bit input directly.
            return self.timed("linear gemm (normed input)", || {
                let Some(ty) = Self::product_type(x, outs)? else {
                    return Ok(());
                };
                let a = self.rms_norm_half16(x, norm, eps, ty, normed)?;
                self.gemm_products(ty, a, x, outs, false)
            });
        }
        let (input, norm_fusion) = self.normed_input(x, norm, eps, normed)?;
        self.products(
            input,
            outs,
            Fusion {
                norm: norm_fusion.norm,
                ..fusion
            },
        )
    }

    fn mlp_uses_gate_up(&self) -> bool {
        false
    }

    fn mlp(
        &self,
        x: &mut CudaAct,
        w: &MlpWeights<'_, Self>,
        eps: f32,
        scratch: &mut MlpScratch<'_, Self>,
    ) -> Result<(), RuntimeError> {
        let act = &mut *scratch.act;
        Self::check_linear(x, w.gate, None, act)?;
        Self::check_linear(x, w.up, None, act)?;
        Self::check_linear(act, w.down, None, x)?;
        let ty = Self::half_type(w.gate)?;
        if Self::half_type(w.up)? != ty || w.up.rows != w.gate.rows {
            return Err(RuntimeError::Unsupported(format!(
                "{} and {} differ in shape or storage",
                w.gate.name, w.up.name
            )));
        }
        if x.rows == 0 {
            return Ok(());
        }
        // Whether the GEMVs can pass silu(gate) * up to down in 16 bits (and, beyond
        // MAX_GEMV_ROWS, pay: see CudaDevice::wide_gemv_pays).
        let half16_fits = Self::half_type(w.down)? == ty
            && self.dev.mlp_in_half16(ty, x.rows, x.cols, w.gate.rows)?;
        // Beyond MAX_GEMV_ROWS, the tensor-core GEMVs where they take the norm and could pass
        // the activations in 16 bits (so that both products have plans of a tile a warp).
        let gemv =
            x.rows <= MAX_GEMV_ROWS || (half16_fits && self.dev.gemv_fuses_norm(x.rows, x.cols));
        if gemv {
            let (input, fusion) = self.normed_input(x, w.norm, eps, scratch.normed)?;
            // From 6 rows (batched decode, or a short prefill, whose MLP works row by row the
            // same), where the kernels can: silu(gate) * up in 16 bits (in `act`, f32-sized, so
            // twice the room; a buffer of the workspace, so that a recorded graph never writes
            // into memory handed out since), for down to stage as it is.
            let half16_act = x.rows >= self.half16_mlp_rows() && half16_fits;
            // Gate and up read together, silu(gate) * up written directly (at batch one with
            // the norm applied on the fly).
            self.timed("linear gemv (gate, up, silu)", || {
                let segment = Segment {
                    w: w.gate.buf.ptr(),
                    bias: 0,
                    y: act.ptr(),
                    n: w.gate.rows,
                };
                let (input, up) = (gemv_input(input), w.up.buf.ptr());
                // SAFETY: shapes checked above; `act` holds rows x ffn f32, room for as many
                // 16-bit values.
                unsafe {
                    if half16_act {
                        self.dev.gemv_gated_half16(ty, input, segment, up, fusion)?
                    } else {
                        self.dev.gemv_gated(ty, input, segment, up, fusion)?
                    }
                };
                Ok(())
            })?;
            if !half16_act {
                return self.products(act, &mut [LinearOut::plain(w.down, x)], RESIDUAL);
            }
            return self.timed("linear gemv (down, 16-bit input)", || {
                let down = Segment {
                    w: w.down.buf.ptr(),
                    bias: 0,
                    y: x.ptr(),
                    n: w.down.rows,
                };
                let act_input = GemvInput {
                    x: act.ptr(),
                    rows: x.rows,
                    k: w.gate.rows,
                };
                // SAFETY: shapes checked above; the gated GEMV wrote rows x ffn 16-bit values.
                unsafe { self.dev.gemv_half16(ty, act_input, &[down], RESIDUAL)? };
                self.half16_mlps.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
        }
        // Prefill and decode beyond the GEMVs: gate and up in one GEMM whose epilogue writes
        // silu(gate) * up rounded for the tensor cores; then down adding into the residual, by
        // GEMM or, where it pays (9 to 16 rows), by the tensor-core GEMV of 16-bit input.
        self.timed("linear gemm (norm; gate, up, silu; down)", || {
            let rows = x.rows;
            let ffn = w.gate.rows;
            let a = self.rms_norm_half16(x, w.norm, eps, ty, scratch.normed)?;
            let down = [Segment {
                w: w.down.buf.ptr(),
                bias: 0,
                y: x.ptr(),
                n: w.down.rows,
            }];
            // SAFETY: shapes checked above; `act` holds rows x ffn f32, room for silu(gate) * up
            // as as many 16-bit values.
            unsafe {
                self.dev.gemm_gated(
                    ty,
                    a,
                    rows,
                    x.cols,
                    (w.gate.buf.ptr(), w.up.buf.ptr()),
                    ffn,
                    act.ptr(),
                )?;
                if self.dev.gemv_half16_takes(ty, rows, ffn, w.down.rows)? {
                    let input = GemvInput {
                        x: act.ptr(),
                        rows,
                        k: ffn,
                    };
                    self.dev.gemv_half16(ty, input, &down, RESIDUAL)?;
                } else {
                    self.dev.gemm(ty, act.ptr(), rows, ffn, &down, true)?;
                }
            }
            Ok(())
        })
    }

    fn rope_kv(&self, a: &mut AttentionInputs<'_, Self>) -> Result<(), RuntimeError> {
        self.timed("rope_kv", || {
            let AttentionInputs {
                q,
                k,
                v,
                kv,
                layer,
                step,
                heads,
            } = &*a;
            let rows = step.plan.rows;
            let d = heads.head_dim;
            check("rope q", q, rows, heads.num_heads * d)?;
            Self::check_kv_write(a)?;
            if rows == 0 {
                return Ok(());
            }
            let off = kv.layer_offset(*layer);
            let args = qrt_rope_kv_args {
                q: q.ptr(),
                k: k.ptr(),
                v: v.ptr(),
                k_cache: kv.k.ptr() + off,
                v_cache: kv.v.ptr() + off,
                positions: step.at(step.plan.positions),
                slots: step.at(step.plan.slots),
                inv_freq: step.at(step.plan.inv_freq),
                rows: rows as u32,
                num_heads: heads.num_heads as u32,
                num_kv_heads: heads.num_kv_heads as u32,
                head_dim: d as u32,
            };
            // SAFETY: shapes and slots checked above.
            unsafe { self.dev.rope_kv(&args)? };
            Ok(())
        })
    }

    fn rope_kv_attention(
        &self,
        a: &mut AttentionInputs<'_, Self>,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        if a.step.plan.decode.is_none() || a.step.plan.rows == 0 {
            self.rope_kv(a)?;
            return self.attention(a.q, a.kv, a.layer, a.step, a.heads, out);
        }
        // Decode: the attention kernel rotates q and the new key, and stores the new key and
        // value itself.
        Self::check_kv_write(a)?;
        Self::check_attention_of(a, out)?;
        self.timed("attention decode (+ rope, KV store)", || {
            let args = self.fused_decode_args(a, out);
            // SAFETY: shapes, slots, blocks and tables checked (tables by `plan`).
            unsafe { self.dev.attention_decode(&args)? };
            Ok(())
        })
    }

    fn rope_kv_attention_projected(
        &self,
        a: &mut AttentionInputs<'_, Self>,
        attn: &mut CudaAct,
        o: LinearOut<'_, Self>,
    ) -> Result<(), RuntimeError> {
        let Some(parts) = self.projection_merges(a.step, attn, &o)? else {
            self.rope_kv_attention(a, attn)?;
            return self.linear_add(attn, o.weight, o.bias, o.out);
        };
        // Batched decode: the attention leaves its partitions in the step's work area, and the
        // output projection merges them as it stages its input.
        Self::check_kv_write(a)?;
        Self::check_attention_of(a, attn)?;
        Self::check_linear(attn, o.weight, o.bias, o.out)?;
        let ty = Self::half_type(o.weight)?;
        self.timed("attention decode (unmerged)", || {
            let args = qrt_attn_args {
                out: 0,
                ..self.fused_decode_args(a, attn)
            };
            // SAFETY: shapes, slots, blocks and tables checked (tables by `plan`); a decode
            // pass has one row per sequence, so the partitions' rows are 0..num_seqs.
            unsafe { self.dev.attention_decode(&args)? };
            Ok(())
        })?;
        self.timed("linear gemv (merging attention)", || {
            let input = GemvInput {
                x: a.step.buffers.work.ptr(),
                rows: attn.rows,
                k: attn.cols,
            };
            // SAFETY: the work area holds the partitions the attention just left, for
            // attn.rows rows of attn.cols / head_dim heads; shapes checked above.
            unsafe {
                self.dev.gemv_merging(
                    ty,
                    input,
                    parts,
                    &segments(std::slice::from_ref(&o)),
                    RESIDUAL,
                )?
            };
            Ok(())
        })?;
        self.merged_projections.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn attention(
        &self,
        q: &CudaAct,
        kv: &CudaKv,
        layer: usize,
        step: &CudaStep,
        heads: HeadGeometry,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        let label = if step.plan.decode.is_some() {
            "attention decode"
        } else {
            "attention prefill"
        };
        self.timed(label, || {
            Self::check_attention(q, kv, layer, step, heads, out)?;
            if step.plan.rows == 0 {
                return Ok(());
            }
            let args = self.attn_args(q, kv, layer, step, out);
            // SAFETY: shapes, blocks and tables checked (tables by `plan`).
            unsafe {
                if step.plan.decode.is_some() {
                    self.dev.attention_decode(&args)?
                } else {
                    self.dev.attention_prefill(&args, step.plan.num_tiles)?
                }
            };
            Ok(())
        })
    }

    fn silu_mul(
        &self,
        gate: &CudaAct,
        up: &CudaAct,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.timed("silu_mul", || {
            check("silu_mul up", up, gate.rows, gate.cols)?;
            check("silu_mul output", out, gate.rows, gate.cols)?;
            // SAFETY: all three hold gate.len() f32.
            unsafe {
                self.dev
                    .silu_mul(gate.ptr(), up.ptr(), out.ptr(), gate.len())?
            };
            Ok(())
        })
    }

    fn select_rows(
        &self,
        x: &CudaAct,
        step: &CudaStep,
        out: &mut CudaAct,
    ) -> Result<(), RuntimeError> {
        self.timed("select_rows", || {
            check("select_rows input", x, step.plan.rows, out.cols)?;
            check("select_rows output", out, step.plan.num_logit_rows, x.cols)?;
            if out.rows == 0 {
                return Ok(());
            }
            // SAFETY: the logit rows are below x.rows (checked by `plan`).
            unsafe {
                self.dev.gather_rows(
                    x.ptr(),
                    step.at(step.plan.logit_rows),
                    out.ptr(),
                    out.rows,
                    x.cols,
                )?
            };
            Ok(())
        })
    }

    fn to_host(&self, x: &CudaAct) -> Result<Vec<f32>, RuntimeError> {
        let mut host = vec![0f32; x.len()];
        // SAFETY: x holds len f32.
        unsafe { self.dev.copy_to_host(x.ptr(), &mut host, "activations")? };
        Ok(host)
    }

    fn target_log_probs(
        &self,
        logits: &CudaAct,
        targets: &[u32],
    ) -> Result<Vec<f32>, RuntimeError> {
        self.timed("target log-probs", || {
            let rows = logits.rows;
            check_targets(rows, logits.cols, targets)?;
            if rows == 0 {
                return Ok(Vec::new());
            }
            let targets_dev = self.pool.get(rows * 4, "target tokens")?;
            let out = self.pool.get(rows * 4, "target log-probabilities")?;
            let mut host = vec![0f32; rows];
            // SAFETY: logits holds rows * cols f32; the targets (checked below cols) and the
            // output hold rows 4-byte values.
            unsafe {
                self.dev
                    .copy_to_device(targets, targets_dev.ptr(), "target tokens")?;
                self.dev.target_log_probs(
                    logits.ptr(),
                    targets_dev.ptr(),
                    out.ptr(),
                    rows,
                    logits.cols,
                )?;
                self.dev
                    .copy_to_host(out.ptr(), &mut host, "target log-probabilities")?;
            }
            Ok(host)
        })
    }

    fn argmax(&self, logits: &CudaAct) -> Result<Vec<u32>, RuntimeError> {
        self.timed("argmax", || {
            if logits.rows == 0 {
                return Ok(Vec::new());
            }
            let per_row = argmax_keys_per_row(logits.cols);
            let mut keys = vec![0u64; logits.rows * per_row];
            let buf = self.pool.get(keys.len() * 8, "argmax keys")?;
            // SAFETY: logits holds rows * cols f32, buf room for rows * per_row u64.
            unsafe {
                self.dev
                    .argmax(logits.ptr(), buf.ptr(), logits.rows, logits.cols)?;
                self.dev.copy_to_host(buf.ptr(), &mut keys, "argmax keys")?;
            }
            keys.chunks(per_row)
                .map(|row| {
                    row.iter()
                        .copied()
                        .max()
                        .and_then(argmax_token)
                        .ok_or_else(all_nan)
                })
                .collect()
        })
    }

    /// On the device: the argmax kernel's keys reduced to tokens by a one-block kernel that
    /// writes them into the next pass's uploaded inputs and into mapped host memory.
    fn argmax_feed(
        &self,
        logits: &CudaAct,
        next: &mut CudaStep,
        feed: &[u32],
    ) -> Result<CudaChosen, RuntimeError> {
        self.timed("argmax (fed to the next pass)", || {
            let rows = logits.rows;
            check_feed(rows, next.plan.rows, feed)?;
            let keys = self.pool.get(
                rows.max(1) * argmax_keys_per_row(logits.cols) * 8,
                "argmax keys",
            )?;
            let host = {
                let mut free = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
                match free.iter().position(|p| p.len() >= rows) {
                    Some(i) => free.swap_remove(i),
                    None => self.dev.pinned_u32(rows.max(64))?,
                }
            };
            // SAFETY: logits holds rows x cols f32; keys room for what the argmax writes, the
            // mapped host memory for rows u32; every fed row lies in the next pass's token
            // list (check_feed).
            unsafe {
                self.dev.argmax_feed(
                    logits.ptr(),
                    keys.ptr(),
                    rows,
                    logits.cols,
                    feed,
                    next.at(next.plan.tokens),
                    host.device_ptr(),
                )?;
            }
            Ok(CudaChosen(self.dev.read_back(host, rows)?))
        })
    }

    fn read_chosen(&self, chosen: CudaChosen) -> Result<Vec<u32>, RuntimeError> {
        let (raw, host) = chosen.0.wait()?;
        self.pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(host);
        sampled_tokens(raw)
    }

    /// On the device (`qrt_sample`); batches of greedy rows only take the argmax kernel.
    fn sample(
        &self,
        logits: &CudaAct,
        params: &[SamplingParams],
        uniforms: &[f64],
    ) -> Result<Vec<u32>, RuntimeError> {
        let rows = check_sampling(logits.rows, params, uniforms)?;
        if params.iter().all(SamplingParams::is_greedy) {
            return self.argmax(logits);
        }
        self.timed("sample", || {
            let host: Vec<qrt_sample_row> = params
                .iter()
                .zip(uniforms)
                .map(|(p, &uniform)| qrt_sample_row {
                    uniform,
                    temperature: p.temperature,
                    top_p: p.top_p,
                    // Any k beyond the vocabulary keeps everything, as on the CPU.
                    top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
                    pad: 0,
                })
                .collect();
            let row_params = self.pool.get(
                rows * std::mem::size_of::<qrt_sample_row>(),
                "sampling parameters",
            )?;
            let out = self.pool.get(rows * 4, "sampled tokens")?;
            let mut tokens = vec![0u32; rows];
            // SAFETY: logits holds rows * cols f32; row_params room for rows qrt_sample_row,
            // out for rows u32.
            unsafe {
                self.dev
                    .copy_to_device(&host, row_params.ptr(), "sampling parameters")?;
                self.dev
                    .sample(logits.ptr(), row_params.ptr(), out.ptr(), rows, logits.cols)?;
                self.dev
                    .copy_to_host(out.ptr(), &mut tokens, "sampled tokens")?;
            }
            sampled_tokens(tokens)
        })
    }

    fn rows(&self, x: &CudaAct) -> usize {
        x.rows
    }

    fn cols(&self, x: &CudaAct) -> usize {
        x.cols
    }
}
