//! The backend interface: a small op set over device-resident buffers.
//!
//! The model graph (`model.rs`) is written once against this trait; the CPU backend is the
//! numerical reference and the CUDA backend implements the same ops with its own kernels.
//! Activations are opaque buffers of `rows x cols` values (the CPU keeps them in f32; a GPU
//! backend may keep them in 16 bits); only `to_host` brings numbers back.

use std::sync::Arc;

use qrt_format::container::{QrtFile, TensorInfo};
use rayon::prelude::*;

use crate::kv_cache::KvGeometry;
use crate::sampling::{sample_with_uniform, SamplingParams};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadGeometry {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

/// What one forward pass reads besides its weights: the tokens, their layout over the KV cache,
/// the rows whose logits are wanted and the rotary frequencies.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// Token of every row of the flat batch.
    pub tokens: &'a [u32],
    /// How the rows belong to sequences and cache slots.
    pub batch: &'a BatchLayout,
    /// Rows whose logits the pass returns.
    pub logit_rows: &'a [u32],
    /// The `head_dim / 2` rotary inverse frequencies.
    pub inv_freq: &'a [f32],
    /// The model's attention heads.
    pub heads: HeadGeometry,
}

/// What a layer's attention works on ([`Backend::rope_kv`] and the calls that fuse it): the
/// step's projections, and the cache the new keys and values go to.
pub struct AttentionInputs<'a, B: Backend + ?Sized> {
    /// The queries, `[rows, num_heads * head_dim]`.
    pub q: &'a mut B::Act,
    /// The new keys, `[rows, num_kv_heads * head_dim]`.
    pub k: &'a mut B::Act,
    /// The new values, as `k`.
    pub v: &'a B::Act,
    /// The cache.
    pub kv: &'a mut B::Kv,
    /// The layer, in the cache.
    pub layer: usize,
    /// The step (positions and cache slots of its rows).
    pub step: &'a B::Step,
    /// The heads' layout.
    pub heads: HeadGeometry,
}

/// One weight product of a [`Backend::linears`] call: `out = x @ weight^T (+ bias)`.
pub struct LinearOut<'a, B: Backend + ?Sized> {
    /// The weight, `[out_features, in_features]`.
    pub weight: &'a B::Weight,
    /// Optional bias, `[out_features]`.
    pub bias: Option<&'a B::Weight>,
    /// The output, `[rows, out_features]`.
    pub out: &'a mut B::Act,
}

impl<'a, B: Backend + ?Sized> LinearOut<'a, B> {
    /// A product without bias.
    pub fn plain(weight: &'a B::Weight, out: &'a mut B::Act) -> Self {
        LinearOut {
            weight,
            bias: None,
            out,
        }
    }

    /// The gate and up projections of a SwiGLU MLP (no biases), for [`Backend::linears`].
    pub fn gate_up(
        gate_w: &'a B::Weight,
        up_w: &'a B::Weight,
        gate: &'a mut B::Act,
        up: &'a mut B::Act,
    ) -> [Self; 2] {
        [Self::plain(gate_w, gate), Self::plain(up_w, up)]
    }
}

/// The weights of a SwiGLU MLP block with its input norm, for [`Backend::mlp`].
pub struct MlpWeights<'a, B: Backend + ?Sized> {
    /// RMSNorm weights of the block's input, `[hidden]`.
    pub norm: &'a B::Weight,
    /// `[intermediate, hidden]`.
    pub gate: &'a B::Weight,
    /// `[intermediate, hidden]`.
    pub up: &'a B::Weight,
    /// `[hidden, intermediate]`.
    pub down: &'a B::Weight,
}

/// Scratch buffers of [`Backend::mlp`], which a fusing backend may leave unused.
pub struct MlpScratch<'a, B: Backend + ?Sized> {
    /// The normalised input, `[rows, hidden]`.
    pub normed: &'a mut B::Act,
    /// `[rows, intermediate]`, or no rows where the backend does not use it
    /// ([`Backend::mlp_uses_gate_up`]).
    pub gate: &'a mut B::Act,
    /// As `gate`.
    pub up: &'a mut B::Act,
    /// `silu(gate) * up`, `[rows, intermediate]`.
    pub act: &'a mut B::Act,
}

/// Checks that `len` host values fill a `[rows, cols]` activation.
pub fn check_host_len(rows: usize, cols: usize, len: usize) -> Result<(), RuntimeError> {
    if len != rows * cols {
        return Err(RuntimeError::Shape(format!(
            "{len} values for a [{rows}, {cols}] activation"
        )));
    }
    Ok(())
}

/// In a feed list ([`Backend::argmax_feed`]): this row's token feeds no row of the next pass.
pub const NO_FEED: u32 = u32::MAX;

/// Checks a feed list against the rows of the logits and of the next pass.
pub fn check_feed(rows: usize, next_rows: usize, feed: &[u32]) -> Result<(), RuntimeError> {
    if feed.len() != rows {
        return Err(RuntimeError::Shape(format!(
            "a feed list of {} entries for {rows} rows of logits",
            feed.len()
        )));
    }
    if let Some(&f) = feed
        .iter()
        .find(|&&f| f != NO_FEED && f as usize >= next_rows)
    {
        return Err(RuntimeError::Shape(format!(
            "a choice fed to row {f} of a pass of {next_rows} rows"
        )));
    }
    Ok(())
}

/// The op set every backend provides.
pub trait Backend: Send + Sync {
    /// An activation buffer of `rows x cols` values.
    type Act: Send;
    /// A weight tensor resident on the device.
    type Weight;
    /// The KV pool of all layers.
    type Kv;
    /// A forward pass's [`StepInput`], made available to the device.
    type Step;
    /// Greedy choices of [`Backend::argmax_feed`], possibly still on their way to the host.
    type Chosen: Send;

    /// A short description, e.g. `cpu (2 threads)`.
    fn describe(&self) -> String;
    /// Another backend on the same device (for a second model beside this one's).
    fn another(&self) -> Result<Self, RuntimeError>
    where
        Self: Sized;
    /// Makes a tensor of `file` available to the device.
    fn load_weight(
        &self,
        file: &Arc<QrtFile>,
        tensor: &TensorInfo,
    ) -> Result<Self::Weight, RuntimeError>;
    /// A new activation buffer (contents unspecified).
    fn alloc_act(&self, rows: usize, cols: usize) -> Result<Self::Act, RuntimeError>;
    /// An activation buffer holding `data` (`rows x cols`, row-major f32).
    fn act_from_host(
        &self,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self::Act, RuntimeError>;
    /// Bytes of one value in this backend's KV cache (4 for f32, 2 for f16).
    fn kv_value_bytes(&self) -> usize;
    /// Device memory free now, in bytes, where the backend has its own memory.
    fn free_memory(&self) -> Option<u64> {
        None
    }
    /// Frees what the backend keeps between passes only to run them faster (recorded passes,
    /// their inputs, cached buffers), once the work queued so far has finished; later passes
    /// make them again.
    fn release_cached(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// A KV pool of the given geometry.
    fn alloc_kv(&self, geometry: &KvGeometry) -> Result<Self::Kv, RuntimeError>;
    /// Makes a pass's inputs available to the device, checking them against the KV cache the
    /// pass will use (block size, blocks and slots in range).
    fn prepare(&self, input: &StepInput<'_>, kv: &Self::Kv) -> Result<Self::Step, RuntimeError>;
    /// An id of `kv` that no other KV cache of this backend has had (for [`run_step`]'s
    /// scope); 0 where a backend records nothing.
    ///
    /// [`run_step`]: Self::run_step
    fn kv_id(&self, kv: &Self::Kv) -> u64 {
        let _ = kv;
        0
    }
    /// Runs `body`, the ops of one forward pass over `step` writing into buffers that live
    /// across passes. A backend may record the ops the first time a kind of step is seen in a
    /// `scope` (one model with its buffers and KV cache) and replay the recording afterwards
    /// instead of calling `body` (CUDA graphs), so `body` must do nothing but queue ops on this
    /// backend.
    fn run_step(
        &self,
        step: &Self::Step,
        scope: u64,
        body: &mut dyn FnMut() -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        let _ = (step, scope);
        body()
    }

    /// `out[r] = table[tokens[r]]`.
    fn embed(
        &self,
        table: &Self::Weight,
        step: &Self::Step,
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
    /// `out = x @ weight^T (+ bias)`, with `weight` stored `[out_features, in_features]`.
    fn linear(
        &self,
        x: &Self::Act,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// `out += x @ weight^T (+ bias)`: a product added into the residual stream.
    fn linear_add(
        &self,
        x: &Self::Act,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// Several products of the same input (q, k and v; gate and up), which a backend may
    /// compute in one pass over `x`.
    fn linears(&self, x: &Self::Act, outs: &mut [LinearOut<'_, Self>]) -> Result<(), RuntimeError> {
        for o in outs {
            self.linear(x, o.weight, o.bias, o.out)?;
        }
        Ok(())
    }
    /// [`linears`](Self::linears) of `rms_norm(x)` (an attention block's q, k and v; the
    /// logits). `normed` is the backend's scratch for the normalised input (f32-sized; a
    /// backend that fuses the norm into the products may leave it alone, one that rounds it
    /// for its products may hold the rounded values there).
    fn norm_linears(
        &self,
        x: &Self::Act,
        norm: &Self::Weight,
        eps: f32,
        normed: &mut Self::Act,
        outs: &mut [LinearOut<'_, Self>],
    ) -> Result<(), RuntimeError> {
        self.rms_norm(x, norm, eps, normed)?;
        self.linears(normed, outs)
    }
    /// Rotary embedding (rotate-half layout) of `a.q` and `a.k` in place at the step's
    /// positions, then `a.k` and `a.v` stored in the step's cache slots of layer `a.layer`.
    fn rope_kv(&self, a: &mut AttentionInputs<'_, Self>) -> Result<(), RuntimeError>;
    /// [`rope_kv`](Self::rope_kv) then [`attention`](Self::attention), which a backend may
    /// fuse (then `q` and `k` need not be left rotated).
    fn rope_kv_attention(
        &self,
        a: &mut AttentionInputs<'_, Self>,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError> {
        self.rope_kv(a)?;
        self.attention(a.q, a.kv, a.layer, a.step, a.heads, out)
    }
    /// [`rope_kv_attention`](Self::rope_kv_attention) into `attn`, then the attention's
    /// output projection added into the residual: `o.out += attn @ o.weight^T (+ o.bias)`. A
    /// backend may fuse them (then `attn` need not hold the attention's output afterwards).
    fn rope_kv_attention_projected(
        &self,
        a: &mut AttentionInputs<'_, Self>,
        attn: &mut Self::Act,
        o: LinearOut<'_, Self>,
    ) -> Result<(), RuntimeError> {
        self.rope_kv_attention(a, attn)?;
        self.linear_add(attn, o.weight, o.bias, o.out)
    }
    /// Causal attention of every row of `q` over its own sequence's cached keys and values.
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Kv,
        layer: usize,
        step: &Self::Step,
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
    /// Whether [`Backend::mlp`] uses the `gate` and `up` buffers of its [`MlpScratch`] (the
    /// default does); a backend whose products write silu(gate) * up directly into `act`
    /// says no, and is then given them with no rows.
    fn mlp_uses_gate_up(&self) -> bool {
        true
    }
    /// A SwiGLU MLP block with its residual: `x += (silu(n @ gate^T) * (n @ up^T)) @ down^T`
    /// where `n = rms_norm(x)`.
    fn mlp(
        &self,
        x: &mut Self::Act,
        w: &MlpWeights<'_, Self>,
        eps: f32,
        scratch: &mut MlpScratch<'_, Self>,
    ) -> Result<(), RuntimeError> {
        self.rms_norm(x, w.norm, eps, scratch.normed)?;
        self.linears(
            scratch.normed,
            &mut LinearOut::gate_up(w.gate, w.up, scratch.gate, scratch.up),
        )?;
        self.silu_mul(scratch.gate, scratch.up, scratch.act)?;
        self.linear_add(scratch.act, w.down, None, x)
    }
    /// `out[i] = x[logit_rows[i]]` for the step's logit rows.
    fn select_rows(
        &self,
        x: &Self::Act,
        step: &Self::Step,
        out: &mut Self::Act,
    ) -> Result<(), RuntimeError>;
    /// Copies an activation buffer to host memory, row-major f32.
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>, RuntimeError>;
    /// The index of the largest value of every row (the first on ties): greedy decoding.
    fn argmax(&self, logits: &Self::Act) -> Result<Vec<u32>, RuntimeError> {
        map_host_rows(self, logits, |_, row| crate::sampling::argmax(row))
    }
    /// The argmax of every row of `logits` (as [`Backend::argmax`]), also made the input
    /// token of row `feed[i]` of the prepared pass `next` for every `i` whose `feed[i]` is not
    /// [`NO_FEED`], so that `next` can be queued before the host has read the choice (on the
    /// device it never goes through the host); [`Backend::read_chosen`] returns it.
    fn argmax_feed(
        &self,
        logits: &Self::Act,
        next: &mut Self::Step,
        feed: &[u32],
    ) -> Result<Self::Chosen, RuntimeError>;
    /// The tokens of an [`Backend::argmax_feed`], waiting for them where needed.
    fn read_chosen(&self, chosen: Self::Chosen) -> Result<Vec<u32>, RuntimeError>;
    /// One token per row of `logits`: row `i` chosen under `params[i]` with the uniform
    /// `uniforms[i]` (ignored by greedy rows), as [`sample_with_uniform`] chooses it. The
    /// default copies the logits to the host and runs that CPU reference.
    fn sample(
        &self,
        logits: &Self::Act,
        params: &[SamplingParams],
        uniforms: &[f64],
    ) -> Result<Vec<u32>, RuntimeError> {
        check_sampling(self.rows(logits), params, uniforms)?;
        map_host_rows(self, logits, |i, row| {
            sample_with_uniform(row, &params[i], uniforms[i])
        })
    }
    /// `log softmax(logits[r])[targets[r]]` for every row (the reference arithmetic of
    /// [`crate::logprob`]); by default on the host.
    fn target_log_probs(
        &self,
        logits: &Self::Act,
        targets: &[u32],
    ) -> Result<Vec<f32>, RuntimeError> {
        check_targets(self.rows(logits), self.cols(logits), targets)?;
        map_host_rows(self, logits, |i, row| {
            crate::logprob::log_prob(row, targets[i])
        })
    }
    /// Rows of an activation buffer.
    fn rows(&self, x: &Self::Act) -> usize;
    /// Columns of an activation buffer.
    fn cols(&self, x: &Self::Act) -> usize;
}

/// `f(i, row)` for every row `i` of `logits`, copied to the host: the default bodies of the
/// ops on logits.
fn map_host_rows<B: Backend + ?Sized, T: Send>(
    backend: &B,
    logits: &B::Act,
    f: impl Fn(usize, &[f32]) -> T + Sync,
) -> Result<Vec<T>, RuntimeError> {
    let rows = backend.rows(logits);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let host = backend.to_host(logits)?;
    Ok(host
        .par_chunks(host.len() / rows)
        .enumerate()
        .map(|(i, row)| f(i, row))
        .collect())
}

/// Checks that a [`Backend::target_log_probs`] call has one target per row, each inside the
/// vocabulary of `vocab`.
pub fn check_targets(rows: usize, vocab: usize, targets: &[u32]) -> Result<(), RuntimeError> {
    if targets.len() != rows {
        return Err(RuntimeError::Shape(format!(
            "{} targets for {rows} rows of logits",
            targets.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(RuntimeError::InvalidRequest(format!(
            "target token {t} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// Checks that a [`Backend::sample`] call has parameters and a uniform for each of its `rows`
/// rows; returns `rows`.
pub fn check_sampling(
    rows: usize,
    params: &[SamplingParams],
    uniforms: &[f64],
) -> Result<usize, RuntimeError> {
    if params.len() != rows || uniforms.len() != rows {
        return Err(RuntimeError::Shape(format!(
            "sampling {rows} rows with {} parameter sets and {} uniforms",
            params.len(),
            uniforms.len()
        )));
    }
    Ok(rows)
}
