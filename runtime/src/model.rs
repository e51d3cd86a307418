//! The Llama-family model graph (Llama, Mistral, Qwen2, SmolLM), written once over [`Backend`].

use std::sync::Arc;

use qrt_format::config::ModelConfig;
use qrt_format::container::QrtFile;

use crate::backend::{Backend, BatchLayout, HeadGeometry};
use crate::RuntimeError;

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
        let c = &self.config;
        let rows = tokens.len();
        if rows != batch.rows() {
            return Err(RuntimeError::Shape(format!(
                "{rows} tokens but a batch layout of {} rows",
                batch.rows()
            )));
        }
        let heads = self.heads();
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut x = backend.alloc_act(rows, c.hidden_size)?;
        let mut h = backend.alloc_act(rows, c.hidden_size)?;
        let mut q = backend.alloc_act(rows, q_dim)?;
        let mut k = backend.alloc_act(rows, kv_dim)?;
        let mut v = backend.alloc_act(rows, kv_dim)?;
        let mut attn = backend.alloc_act(rows, q_dim)?;
        let mut proj = backend.alloc_act(rows, c.hidden_size)?;
        let mut gate = backend.alloc_act(rows, c.intermediate_size)?;
        let mut up = backend.alloc_act(rows, c.intermediate_size)?;
        let mut act = backend.alloc_act(rows, c.intermediate_size)?;

        backend.embed(&self.embed, tokens, &mut x)?;
        backend.rms_norm(&x, &self.layers[0].input_norm, c.rms_norm_eps, &mut h)?;
        for (i, layer) in self.layers.iter().enumerate() {
            backend.linear(&h, &layer.q, layer.q_bias.as_ref(), &mut q)?;
            backend.linear(&h, &layer.k, layer.k_bias.as_ref(), &mut k)?;
            backend.linear(&h, &layer.v, layer.v_bias.as_ref(), &mut v)?;
            backend.rope(
                &mut q,
                &batch.positions,
                c.num_heads,
                c.head_dim,
                &self.inv_freq,
            )?;
            backend.rope(
                &mut k,
                &batch.positions,
                c.num_kv_heads,
                c.head_dim,
                &self.inv_freq,
            )?;
            backend.write_kv(kv, i, &k, &v, &batch.slots)?;
            backend.attention(&q, kv, i, batch, heads, &mut attn)?;
            backend.linear(&attn, &layer.o, layer.o_bias.as_ref(), &mut proj)?;
            backend.add_rms_norm(&mut x, &proj, &layer.post_norm, c.rms_norm_eps, &mut h)?;
            backend.linear(&h, &layer.gate, None, &mut gate)?;
            backend.linear(&h, &layer.up, None, &mut up)?;
            backend.silu_mul(&gate, &up, &mut act)?;
            backend.linear(&act, &layer.down, None, &mut proj)?;
            let next_norm = self
                .layers
                .get(i + 1)
                .map_or(&self.final_norm, |l| &l.input_norm);
            backend.add_rms_norm(&mut x, &proj, next_norm, c.rms_norm_eps, &mut h)?;
        }
        let mut selected = backend.alloc_act(logit_rows.len(), c.hidden_size)?;
        backend.gather_rows(&h, logit_rows, &mut selected)?;
        let mut logits = backend.alloc_act(logit_rows.len(), c.vocab_size)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        backend.linear(&selected, head, None, &mut logits)?;
        backend.to_host(&logits)
    }
}
