//! The backend interface: a small op set over device-resident buffers.
//!
//! The model graph (`model.rs`) is written once against this trait; the CPU backend is the
//! numerical reference and the CUDA backend implements the same ops with its own kernels.
//! Activations are opaque buffers of `rows x cols` values (the CPU keeps them in f32; a GPU
//! backend may keep them in 16 bits); only `to_host` brings numbers back.

use std::sync::Arc;

use qrt_format::container::{QrtFile, TensorInfo};

use crate::kv_cache::KvGeometry;
use crate::RuntimeError;

/// One sequence's share of a flat batch of tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    /// First row of this sequence in the flat batch.
    pub start: usize,
    /// New tokens of this sequence in the batch.
    pub len: usize,
    /// Tokens this sequence already had in the KV cache before this step.
    pub past: usize,
    /// The sequence's block table (covering `past + len` tokens).
    pub block_table: Vec<u32>,
}

/// How a flat batch of tokens from several sequences is laid out, for attention and KV writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchLayout {
    /// The sequences, in row order.
    pub seqs: Vec<SeqSpan>,
    /// Position of every row within its sequence.
    pub positions: Vec<u32>,
    /// KV-cache slot of every row.
    pub slots: Vec<u32>,
    /// Tokens per KV block.
    pub block_size: usize,
}

impl BatchLayout {
    /// Rows in the flat batch.
    pub fn rows(&self) -> usize {
        self.positions.len()
    }
}

/// Attention head geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadGeometry {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

/// The op set every backend provides.
pub trait Backend: Send + Sync {
    /// An activation buffer of `rows x cols` values.
    type Act;
    /// A weight tensor resident on the device.
    type Weight;
    /// The KV pool of all layers.
    type Kv;

    /// A short description, e.g. `cpu (2 threads)`.
    fn describe(&self) -> String;
    /// Makes a tensor of `file` available to the device.
    fn load_weight(
        &self,
        file: &Arc<QrtFile>,
        tensor: &TensorInfo,
    ) -> Result<Self::Weight, RuntimeError>;
    /// A new activation buffer (contents unspecified).
    fn alloc_act(&self, rows: usize, cols: usize) -> Result<Self::Act, RuntimeError>;
    /// A KV pool of the given geometry.
    fn alloc_kv(&self, geometry: &KvGeometry) -> Result<Self::Kv, RuntimeError>;

    /// `out[r] = table[tokens[r]]`.
    fn embed(
        &self,
        table: &Self::Weight,
        tokens: &[u32],
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `out = x / rms(x) * weight`, row by row.
    fn rms_norm(
        &self,
        x: &Self::Act,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `x += residual; out = rms_norm(x)`.
    fn add_rms_norm(
        &self,
        x: &mut Self::Act,
        residual: &Self::Act,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), RuntimeError>;
    /// `out = x @ weight^T (+ bias)`, with `weight` stored `[out_features, in_features]`.
    fn linear(
        &self,
        x: &Self::Act,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// Rotary embedding in the rotate-half layout, in place, on `x = [rows, heads * head_dim]`;
    /// `inv_freq` has `head_dim / 2` entries.
    fn rope(
        &self,
        x: &mut Self::Act,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        inv_freq: &[f32],
    ) -> Result<(), RuntimeError>;
    /// Stores `k` and `v` rows of layer `layer` into the given slots.
    fn write_kv(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Act,
        v: &Self::Act,
        slots: &[u32],
    ) -> Result<(), RuntimeError>;
    /// Causal attention of every row of `q` over its own sequence's cached keys and values.
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Kv,
        layer: usize,
        batch: &BatchLayout,
        heads: HeadGeometry,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `out = silu(gate) * up`.
    fn silu_mul(
        &self,
        gate: &Self::Act,
        up: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(
        &self,
        x: &Self::Act,
        rows: &[u32],
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// Copies an activation buffer to host memory, row-major f32.
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>, RuntimeError>;
}
