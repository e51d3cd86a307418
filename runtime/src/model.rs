//! The Llama-family model graph (Llama, Mistral, Qwen2, SmolLM), written once over [`Backend`].

use std::collections::hash_map::{Entry, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use qrt_format::config::ModelConfig;
use qrt_format::container::QrtFile;

use crate::backend::{
    AttentionInputs, Backend, BatchLayout, HeadGeometry, LinearOut, MlpScratch, MlpWeights,
    StepInput,
};
use crate::RuntimeError;

/// Decode-shaped passes (a logit row for every row) of at most this many rows keep their
/// activation buffers between calls, so that a backend can replay a recording of them (the
/// CUDA backend records decode passes of up to 64 rows: `qrt_runtime::cuda::MAX_GRAPH_ROWS`).
/// At most one set of buffers for each row count is kept.
const KEPT_WORKSPACE_ROWS: usize = 64;

/// Whether a pass of `rows` rows and `logit_rows` logit rows keeps its buffers.
fn keeps_workspace(rows: usize, logit_rows: usize) -> bool {
    rows <= KEPT_WORKSPACE_ROWS && logit_rows == rows
}

/// Ids of workspaces.
static NEXT_WORKSPACE_ID: AtomicU64 = AtomicU64::new(1);

/// The activation buffers of one forward pass.
struct Workspace<B: Backend> {
    /// Unique among the workspaces of this process (recordings are kept per workspace).
    id: u64,
    /// The residual stream.
    x: B::Act,
    /// A normalised copy of `x` (where a backend does not fuse the norms).
    h: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    attn: B::Act,
    gate: B::Act,
    up: B::Act,
    act: B::Act,
    /// The rows of `x` whose logits are wanted, and their normalised copy.
    selected: B::Act,
    selected_h: B::Act,
    logits: B::Act,
}

impl<B: Backend> Workspace<B> {
    fn new(
        backend: &B,
        c: &ModelConfig,
        rows: usize,
        logit_rows: usize,
    ) -> Result<Self, RuntimeError> {
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let alloc = |cols| backend.alloc_act(rows, cols);
        let gate_up_rows = if backend.mlp_uses_gate_up() { rows } else { 0 };
        Ok(Self {
            id: NEXT_WORKSPACE_ID.fetch_add(1, Ordering::Relaxed),
            x: alloc(c.hidden_size)?,
            h: alloc(c.hidden_size)?,
            q: alloc(q_dim)?,
            k: alloc(kv_dim)?,
            v: alloc(kv_dim)?,
            attn: alloc(q_dim)?,
            gate: backend.alloc_act(gate_up_rows, c.intermediate_size)?,
            up: backend.alloc_act(gate_up_rows, c.intermediate_size)?,
            act: alloc(c.intermediate_size)?,
            selected: backend.alloc_act(logit_rows, c.hidden_size)?,
            selected_h: backend.alloc_act(logit_rows, c.hidden_size)?,
            logits: backend.alloc_act(logit_rows, c.vocab_size)?,
        })
    }
}

struct Layer<B: Backend> {
    input_norm: B::Weight,
    q: B::Weight,
    k: B::Weight,
    v: B::Weight,
    q_bias: Option<B::Weight>,
    k_bias: Option<B::Weight>,
    v_bias: Option<B::Weight>,
    o: B::Weight,
    o_bias: Option<B::Weight>,
    post_norm: B::Weight,
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
}

/// A loaded model: its configuration and its weights on a backend.
pub struct Model<B: Backend> {
    config: ModelConfig,
    layers: Vec<Layer<B>>,
    embed: B::Weight,
    final_norm: B::Weight,
    lm_head: Option<B::Weight>,
    inv_freq: Vec<f32>,
    /// Buffers of small passes, by (rows, logit rows).
    workspaces: Mutex<HashMap<(usize, usize), Workspace<B>>>,
}

impl<B: Backend> Model<B> {
    /// Loads every weight of `file` that the graph needs onto `backend`.
    pub fn load(
        backend: &B,
        file: &Arc<QrtFile>,
        config: ModelConfig,
    ) -> Result<Self, RuntimeError> {
        let get = |name: String| -> Result<B::Weight, RuntimeError> {
            let t = file.tensor(&name).ok_or_else(|| {
                RuntimeError::MissingTensor(name.clone(), file.path().to_string())
            })?;
            backend.load_weight(file, t)
        };
        let optional = |name: String| -> Result<Option<B::Weight>, RuntimeError> {
            if file.tensor(&name).is_some() {
                get(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: get(format!("{p}.input_layernorm.weight"))?,
                q: get(format!("{p}.self_attn.q_proj.weight"))?,
                k: get(format!("{p}.self_attn.k_proj.weight"))?,
                v: get(format!("{p}.self_attn.v_proj.weight"))?,
                q_bias: optional(format!("{p}.self_attn.q_proj.bias"))?,
                k_bias: optional(format!("{p}.self_attn.k_proj.bias"))?,
                v_bias: optional(format!("{p}.self_attn.v_proj.bias"))?,
                o: get(format!("{p}.self_attn.o_proj.weight"))?,
                o_bias: optional(format!("{p}.self_attn.o_proj.bias"))?,
                post_norm: get(format!("{p}.post_attention_layernorm.weight"))?,
                gate: get(format!("{p}.mlp.gate_proj.weight"))?,
                up: get(format!("{p}.mlp.up_proj.weight"))?,
                down: get(format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight".into())?)
        };
        Ok(Self {
            inv_freq: crate::rope::inverse_frequencies(&config),
            embed: get("model.embed_tokens.weight".into())?,
            final_norm: get("model.norm.weight".into())?,
            lm_head,
            layers,
            config,
            workspaces: Mutex::new(HashMap::new()),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn heads(&self) -> HeadGeometry {
        HeadGeometry {
            num_heads: self.config.num_heads,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Runs the flat batch `tokens` (laid out by `batch`) through the model, storing its keys and
    /// values in `kv`, and returns the logits of the rows listed in `logit_rows`
    /// (`logit_rows.len() x vocab`, row-major).
    pub fn forward(
        &self,
        backend: &B,
        kv: &mut B::Kv,
        tokens: &[u32],
        batch: &BatchLayout,
        logit_rows: &[u32],
    ) -> Result<Vec<f32>, RuntimeError> {
        self.forward_then(backend, kv, tokens, batch, logit_rows, |b, logits| {
            b.to_host(logits)
        })
    }

    /// Like [`Model::forward`], but `read` takes the logits (`logit_rows.len() x vocab`, on
    /// the device) and gives the result: [`Backend::sample`] for generation,
    /// [`Backend::target_log_probs`] for perplexity.
    pub fn forward_then<T>(
        &self,
        backend: &B,
        kv: &mut B::Kv,
        tokens: &[u32],
        batch: &BatchLayout,
        logit_rows: &[u32],
        read: impl FnOnce(&B, &B::Act) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let step = self.prepare(backend, kv, tokens, batch, logit_rows)?;
        self.with_workspace(backend, tokens.len(), logit_rows.len(), |ws| {
            self.run_in(backend, kv, &step, tokens.len(), logit_rows, ws)?;
            read(backend, &ws.logits)
        })
    }

    /// Checks a pass and makes its inputs available to the backend ([`Backend::prepare`]),
    /// without running it: [`Model::launch`] does.
    pub fn prepare(
        &self,
        backend: &B,
        kv: &B::Kv,
        tokens: &[u32],
        batch: &BatchLayout,
        logit_rows: &[u32],
    ) -> Result<B::Step, RuntimeError> {
        let rows = tokens.len();
        if rows != batch.rows() {
            return Err(RuntimeError::Shape(format!(
                "{rows} tokens but a batch layout of {} rows",
                batch.rows()
            )));
        }
        // Checked here, not only by the ops: a backend may replay a recorded pass without
        // running them.
        let vocab = self.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(RuntimeError::InvalidRequest(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let input = StepInput {
            tokens,
            batch,
            logit_rows,
            inv_freq: &self.inv_freq,
            heads: self.heads(),
        };
        backend.prepare(&input, kv)
    }

    /// Queues a prepared pass of at most [`Model::MAX_LAUNCHED_ROWS`] rows, each with a logit
    /// row (a decode step), leaving its logits where [`Model::logits_then`] finds them until
    /// the next pass of the same shape runs.
    pub fn launch(
        &self,
        backend: &B,
        kv: &mut B::Kv,
        step: &B::Step,
        rows: usize,
        logit_rows: &[u32],
    ) -> Result<(), RuntimeError> {
        if !keeps_workspace(rows, logit_rows.len()) {
            return Err(RuntimeError::Shape(format!(
                "a pass of {rows} rows and {} logit rows keeps no buffers to read its logits \
                 from later",
                logit_rows.len()
            )));
        }
        self.with_workspace(backend, rows, logit_rows.len(), |ws| {
            self.run_in(backend, kv, step, rows, logit_rows, ws)
        })
    }

    /// Most rows of a pass [`Model::launch`] takes.
    pub const MAX_LAUNCHED_ROWS: usize = KEPT_WORKSPACE_ROWS;

    /// `read` of the logits of the last pass of `rows` rows and `logit_rows` logit rows queued
    /// by [`Model::launch`].
    pub fn logits_then<T>(
        &self,
        backend: &B,
        rows: usize,
        logit_rows: usize,
        read: impl FnOnce(&B, &B::Act) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let kept = self.kept_workspaces();
        let ws = kept.get(&(rows, logit_rows)).ok_or_else(|| {
            RuntimeError::Shape(format!(
                "no pass of {rows} rows and {logit_rows} logit rows has run"
            ))
        })?;
        read(backend, &ws.logits)
    }

    /// `f` with the buffers of a pass of `rows` rows and `logit_rows` logit rows: kept between
    /// calls where [`keeps_workspace`], else made for this call.
    fn with_workspace<T>(
        &self,
        backend: &B,
        rows: usize,
        logit_rows: usize,
        f: impl FnOnce(&mut Workspace<B>) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if !keeps_workspace(rows, logit_rows) {
            return f(&mut Workspace::new(
                backend,
                &self.config,
                rows,
                logit_rows,
            )?);
        }
        let mut kept = self.kept_workspaces();
        let ws = match kept.entry((rows, logit_rows)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Workspace::new(backend, &self.config, rows, logit_rows)?),
        };
        f(ws)
    }

    /// Frees the buffers kept between passes (passes made later make them again, and
    /// recordings of the passes that used them are never replayed; the backend keeps those
    /// until [`Backend::release_cached`]). Only while no pass launched by
    /// [`Model::launch`] is waiting for [`Model::logits_then`] (an idle engine): that read
    /// would find no buffers and fail.
    pub fn release_workspaces(&self) {
        self.kept_workspaces().clear();
    }

    /// The buffers kept between passes, by (rows, logit rows).
    fn kept_workspaces(&self) -> MutexGuard<'_, HashMap<(usize, usize), Workspace<B>>> {
        self.workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a prepared pass of `rows` rows in `ws`.
    fn run_in(
        &self,
        backend: &B,
        kv: &mut B::Kv,
        step: &B::Step,
        rows: usize,
        logit_rows: &[u32],
        ws: &mut Workspace<B>,
    ) -> Result<(), RuntimeError> {
        // Recordings are valid for these buffers and this KV cache only.
        let scope = (ws.id << 32) | (backend.kv_id(kv) & 0xffff_ffff);
        // Every row in order (decode, or scoring every position): the head reads the residual
        // stream itself, with no gather.
        let all_rows = logit_rows.iter().copied().eq(0..rows as u32);
        backend.run_step(step, scope, &mut || {
            self.body(backend, kv, step, all_rows, ws)
        })
    }

    /// The ops of one forward pass; `all_rows`: the logit rows are every row, in order.
    fn body(
        &self,
        backend: &B,
        kv: &mut B::Kv,
        step: &B::Step,
        all_rows: bool,
        ws: &mut Workspace<B>,
    ) -> Result<(), RuntimeError> {
        let c = &self.config;
        let heads = self.heads();
        backend.embed(&self.embed, step, &mut ws.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            backend.norm_linears(
                &ws.x,
                &layer.input_norm,
                c.rms_norm_eps,
                &mut ws.h,
                &mut [
                    LinearOut {
                        weight: &layer.q,
                        bias: layer.q_bias.as_ref(),
                        out: &mut ws.q,
                    },
                    LinearOut {
                        weight: &layer.k,
                        bias: layer.k_bias.as_ref(),
                        out: &mut ws.k,
                    },
                    LinearOut {
                        weight: &layer.v,
                        bias: layer.v_bias.as_ref(),
                        out: &mut ws.v,
                    },
                ],
            )?;
            backend.rope_kv_attention_projected(
                &mut AttentionInputs {
                    q: &mut ws.q,
                    k: &mut ws.k,
                    v: &ws.v,
                    kv,
                    layer: i,
                    step,
                    heads,
                },
                &mut ws.attn,
                LinearOut {
                    weight: &layer.o,
                    bias: layer.o_bias.as_ref(),
                    out: &mut ws.x,
                },
            )?;
            backend.mlp(
                &mut ws.x,
                &MlpWeights {
                    norm: &layer.post_norm,
                    gate: &layer.gate,
                    up: &layer.up,
                    down: &layer.down,
                },
                c.rms_norm_eps,
                &mut MlpScratch {
                    normed: &mut ws.h,
                    gate: &mut ws.gate,
                    up: &mut ws.up,
                    act: &mut ws.act,
                },
            )?;
        }
        let selected = if all_rows {
            &ws.x
        } else {
            backend.select_rows(&ws.x, step, &mut ws.selected)?;
            &ws.selected
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        backend.norm_linears(
            selected,
            &self.final_norm,
            c.rms_norm_eps,
            &mut ws.selected_h,
            &mut [LinearOut {
                weight: head,
                bias: None,
                out: &mut ws.logits,
            }],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{keeps_workspace, KEPT_WORKSPACE_ROWS};

    #[test]
    fn only_decode_shaped_passes_keep_their_buffers() {
        for rows in 1..=KEPT_WORKSPACE_ROWS {
            assert!(keeps_workspace(rows, rows));
        }
        assert!(!keeps_workspace(
            KEPT_WORKSPACE_ROWS + 1,
            KEPT_WORKSPACE_ROWS + 1
        ));
        // A prefill of one short prompt: its buffers are made for the call.
        assert!(!keeps_workspace(30, 1));
    }
}
