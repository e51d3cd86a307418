//! Attention arguments and checks, and where the output projection merges the decode
//! attention's partitions.

use super::*;

impl CudaBackend {
    /// Checks the shapes of an attention call against the step and the cache.
    pub(super) fn check_attention(
        q: &CudaAct,
        kv: &CudaKv,
        layer: usize,
        step: &CudaStep,
        heads: HeadGeometry,
        out: &CudaAct,
    ) -> Result<(), RuntimeError> {
        let q_dim = heads.num_heads * heads.head_dim;
        check("attention query", q, step.plan.rows, q_dim)?;
        check("attention output", out, step.plan.rows, q_dim)?;
        let g = &kv.geometry;
        if heads != step.heads
            || layer >= g.num_layers
            || g.slot_elems() != heads.num_kv_heads * heads.head_dim
            || step.plan.max_block as usize >= g.num_blocks
        {
            return Err(RuntimeError::Shape(format!(
                "attention of layer {layer} over block {} of a cache of {} layers x {} blocks",
                step.plan.max_block, g.num_layers, g.num_blocks
            )));
        }
        Ok(())
    }

    /// Checks that the step's new keys and values `a.k`, `a.v` fit layer `a.layer` of `a.kv`.
    pub(super) fn check_kv_write(a: &AttentionInputs<'_, Self>) -> Result<(), RuntimeError> {
        let AttentionInputs {
            k,
            v,
            kv,
            step,
            heads,
            ..
        } = a;
        let layer = a.layer;
        let rows = step.plan.rows;
        let kv_dim = heads.num_kv_heads * heads.head_dim;
        check("rope k", k, rows, kv_dim)?;
        check("rope v", v, rows, kv_dim)?;
        let g = &kv.geometry;
        if layer >= g.num_layers
            || g.slot_elems() != kv_dim
            || (rows > 0 && step.plan.max_slot as usize >= g.num_slots())
        {
            return Err(RuntimeError::Shape(format!(
                "KV write of layer {layer}, slot {} into a cache of {} layers x {} slots",
                step.plan.max_slot,
                g.num_layers,
                g.num_slots()
            )));
        }
        Ok(())
    }

    /// The partitions a decode pass's attention may leave to its output projection `o`
    /// ([`CudaDevice::gemv_merging`]): where the attention scores them on tensor cores and the
    /// projection's kernel can merge them; None elsewhere. On an H200 (RESULTS log 43) the 1B
    /// gained 3-5% at batch 2 and up to 6% at batch 8 (with 768-token prompts) from not
    /// merging in the attention's clusters; SmolLM2's projections never take it.
    pub(super) fn projection_merges(
        &self,
        step: &CudaStep,
        attn: &CudaAct,
        o: &LinearOut<'_, Self>,
    ) -> Result<Option<Partitions>, RuntimeError> {
        let Some(split) = step.plan.decode else {
            return Ok(None);
        };
        let Ok(ty) = Self::half_type(o.weight) else {
            return Ok(None);
        };
        if !self.defer_merge
            || !self
                .dev
                .decode_policy()
                .tensor_core_partition(split.partition)
            || attn.rows != step.plan.rows
        {
            return Ok(None);
        }
        let parts = Partitions {
            head_dim: step.heads.head_dim,
            splits: split.splits,
        };
        let merges =
            self.dev
                .gemv_merges_partials(ty, attn.rows, attn.cols, o.weight.rows, parts)?;
        Ok(merges.then_some(parts))
    }

    /// The arguments of a decode attention fused with the rotary embedding and the KV store of
    /// the new keys `a.k` and values `a.v`.
    pub(super) fn fused_decode_args(
        &self,
        a: &AttentionInputs<'_, Self>,
        out: &CudaAct,
    ) -> qrt_attn_args {
        qrt_attn_args {
            inv_freq: a.step.at(a.step.plan.inv_freq),
            k_new: a.k.ptr(),
            v_new: a.v.ptr(),
            ..self.attn_args(a.q, a.kv, a.layer, a.step, out)
        }
    }

    /// [`check_attention`](Self::check_attention) of the attention over `a`, into `out`.
    pub(super) fn check_attention_of(
        a: &AttentionInputs<'_, Self>,
        out: &CudaAct,
    ) -> Result<(), RuntimeError> {
        Self::check_attention(a.q, a.kv, a.layer, a.step, a.heads, out)
    }

    pub(super) fn attn_args(
        &self,
        q: &CudaAct,
        kv: &CudaKv,
        layer: usize,
        step: &CudaStep,
        out: &CudaAct,
    ) -> qrt_attn_args {
        let h = step.heads;
        let split = step.plan.decode.unwrap_or(DecodeSplit {
            splits: 0,
            partition: 0,
        });
        let off = kv.layer_offset(layer);
        qrt_attn_args {
            q: q.ptr(),
            k_cache: kv.k.ptr() + off,
            v_cache: kv.v.ptr() + off,
            out: out.ptr(),
            seqs: step.at(step.plan.seqs),
            block_tables: step.at(step.plan.tables),
            work: if step.plan.decode.is_some() {
                step.buffers.work.ptr()
            } else {
                step.at(step.plan.tiles)
            },
            num_seqs: step.plan.num_seqs as u32,
            num_heads: h.num_heads as u32,
            num_kv_heads: h.num_kv_heads as u32,
            head_dim: h.head_dim as u32,
            block_size: kv.geometry.block_size as u32,
            splits: split.splits as u32,
            partition: split.partition as u32,
            scale: 1.0 / (h.head_dim as f32).sqrt(),
            inv_freq: 0,
            k_new: 0,
            v_new: 0,
        }
    }
}
