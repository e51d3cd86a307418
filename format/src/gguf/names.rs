//! GGUF ↔ Hugging Face tensor names, and the Q/K row permutation llama.cpp's
//! converter applies to `llama`-architecture checkpoints.

/// Whole-model tensors: (GGUF name, Hugging Face name).
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors: (GGUF suffix after `blk.N.`, HF suffix after `model.layers.N.`).
const LAYER_NAMES: [(&str, &str); 13] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Splits `"<prefix><N>.<rest>"` into `(N, rest)`; `N` must be plain decimal.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let tail = name.strip_prefix(prefix)?;
    let (num, rest) = tail.split_once('.')?;
    if num.is_empty()
        || !num.bytes().all(|b| b.is_ascii_digit())
        || (num.len() > 1 && num.starts_with('0'))
    {
        return None;
    }
    Some((num.parse().ok()?, rest))
}

/// The Hugging Face name of a GGUF tensor (llama / qwen2 layout), or `None`
/// when the name has no equivalent.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let (layer, rest) = split_layer(name, "blk.")?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == rest)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of a Hugging Face tensor (llama / qwen2 layout), or `None`
/// when the name has no equivalent.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some(&(g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == name) {
        return Some(g.to_string());
    }
    let (layer, rest) = split_layer(name, "model.layers.")?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

/// Every Hugging Face tensor name a llama / mistral / qwen2 model with
/// `num_layers` layers can have, in canonical order: embeddings, then per
/// layer input norm, q/k/v (weight, bias), o (weight, bias), post-attention
/// norm, gate/up/down, then the final norm and `lm_head.weight`.
pub fn canonical_hf_names(num_layers: usize) -> Vec<String> {
    let mut names = vec![GLOBAL_NAMES[0].1.to_string()];
    for layer in 0..num_layers {
        names.extend(
            LAYER_NAMES
                .iter()
                .map(|(_, hf)| format!("model.layers.{layer}.{hf}")),
        );
    }
    names.extend(GLOBAL_NAMES[1..].iter().map(|(_, hf)| hf.to_string()));
    names
}

/// Which attention projection a Hugging Face tensor name refers to, if it is
/// a `q_proj` or `k_proj` weight or bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkProj {
    /// `self_attn.q_proj.{weight,bias}` (permuted with `num_heads`).
    Q,
    /// `self_attn.k_proj.{weight,bias}` (permuted with `num_kv_heads`).
    K,
}

/// Classifies a Hugging Face name as a Q or K projection tensor.
pub fn qk_proj(hf_name: &str) -> Option<QkProj> {
    let (_, rest) = split_layer(hf_name, "model.layers.")?;
    match rest {
        "self_attn.q_proj.weight" | "self_attn.q_proj.bias" => Some(QkProj::Q),
        "self_attn.k_proj.weight" | "self_attn.k_proj.bias" => Some(QkProj::K),
        _ => None,
    }
}

/// Why a Q/K row permutation cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot permute {len} values as {n_head} heads of rows × {cols} columns: rows must be a multiple of 2 × heads")]
pub struct PermuteError {
    /// Number of values given.
    pub len: usize,
    /// Number of heads.
    pub n_head: usize,
    /// Columns per row.
    pub cols: usize,
}

fn permute_rows(
    data: &[f32],
    n_head: usize,
    cols: usize,
    map: impl Fn(usize, usize, usize, usize) -> (usize, usize),
) -> Result<Vec<f32>, PermuteError> {
    let err = PermuteError {
        len: data.len(),
        n_head,
        cols,
    };
    if cols == 0 || n_head == 0 || !data.len().is_multiple_of(cols) {
        return Err(err);
    }
    let rows = data.len() / cols;
    if !rows.is_multiple_of(2 * n_head) {
        return Err(err);
    }
    let half = rows / n_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for t in 0..2 {
            for i in 0..half {
                let (dst, src) = map(h, t, i, half);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// llama.cpp's HF→GGUF permutation of Q/K rows (rotate-half → interleaved
/// pairs): `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
///
/// `data` is row-major with `cols` columns (1 for a bias).
pub fn permute_qk(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>, PermuteError> {
    // GGUF row h·2·half + 2i + t  ←  HF row h·2·half + t·half + i
    permute_rows(data, n_head, cols, |h, t, i, half| {
        (h * 2 * half + 2 * i + t, h * 2 * half + t * half + i)
    })
}

/// The inverse of [`permute_qk`] (GGUF interleaved pairs → HF rotate-half):
/// view rows as `(n_head, rows/n_head/2, 2)`, swap the last two axes.
pub fn unpermute_qk(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>, PermuteError> {
    // HF row h·2·half + t·half + i  ←  GGUF row h·2·half + 2i + t
    permute_rows(data, n_head, cols, |h, t, i, half| {
        (h * 2 * half + t * half + i, h * 2 * half + 2 * i + t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_norm.weight",
            "blk.12.attn_q.weight",
            "blk.3.attn_k.bias",
            "blk.29.ffn_down.weight",
        ] {
            let h = gguf_to_hf(g).unwrap();
            assert_eq!(hf_to_gguf(&h).as_deref(), Some(g));
        }
        assert_eq!(
            gguf_to_hf("blk.7.attn_output.weight").unwrap(),
            "model.layers.7.self_attn.o_proj.weight"
        );
        assert_eq!(
            gguf_to_hf("blk.7.ffn_norm.weight").unwrap(),
            "model.layers.7.post_attention_layernorm.weight"
        );
        for bad in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk..attn_q.weight",
            "blk.1.foo",
        ] {
            assert_eq!(gguf_to_hf(bad), None, "{bad}");
        }
        let c = canonical_hf_names(2);
        assert_eq!(c.len(), 2 * 13 + 3);
        assert_eq!(c[0], "model.embed_tokens.weight");
        assert_eq!(c[1], "model.layers.0.input_layernorm.weight");
        assert_eq!(c[c.len() - 1], "lm_head.weight");
        assert!(c.iter().all(|h| hf_to_gguf(h).is_some()));
        assert_eq!(
            qk_proj("model.layers.3.self_attn.k_proj.bias"),
            Some(QkProj::K)
        );
        let c = canonical_hf_names(2);
        assert_eq!(c.len(), 2 * 13 + 3);
        assert_eq!(c[0], "model.embed_tokens.weight");
        assert_eq!(c[1], "model.layers.0.input_layernorm.weight");
        assert_eq!(c[c.len() - 1], "lm_head.weight");
        assert!(c.iter().all(|h| hf_to_gguf(h).is_some()));
        assert_eq!(qk_proj("model.layers.3.self_attn.v_proj.weight"), None);
    }

    /// Python reference: `w.reshape(n_head, 2, rows//n_head//2, cols).swapaxes(1, 2).reshape(rows, cols)`
    /// written directly with index arithmetic on a 4-D view.
    fn numpy_permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
        let rows = w.len() / cols;
        let half = rows / n_head / 2;
        let mut out = Vec::with_capacity(w.len());
        // iterate the swapped view (n_head, half, 2, cols) in C order
        for h in 0..n_head {
            for i in 0..half {
                for t in 0..2 {
                    let src_row = (h * 2 + t) * half + i;
                    out.extend_from_slice(&w[src_row * cols..(src_row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn permutation_both_directions() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for (n_head, rows, cols) in [(9, 576, 7), (3, 192, 5), (4, 32, 1), (1, 4, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let p = permute_qk(&w, n_head, cols).unwrap();
            assert_eq!(p, numpy_permute(&w, n_head, cols));
            assert_ne!(p, w);
            assert_eq!(unpermute_qk(&p, n_head, cols).unwrap(), w);
            assert_eq!(
                permute_qk(&unpermute_qk(&w, n_head, cols).unwrap(), n_head, cols).unwrap(),
                w
            );
        }
        assert!(permute_qk(&[0.0; 12], 4, 2).is_err());
        assert!(unpermute_qk(&[0.0; 12], 0, 2).is_err());
        assert!(unpermute_qk(&[0.0; 12], 1, 0).is_err());
        assert!(unpermute_qk(&[0.0; 11], 1, 2).is_err());
    }
}
