//! Helpers shared by the source-checkpoint tests: fixture paths, a scratch
//! directory, and a minimal GGUF writer for crafting valid and invalid files.

#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};

/// `format/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh, empty scratch directory unique to this process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qrt-format-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the regular files of `src` into `dst` (created).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// A GGUF metadata value for [`GgufBuilder`].
#[derive(Clone, Debug)]
pub enum Meta {
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    F32Arr(Vec<f32>),
    /// An arbitrary value: type tag and encoded payload.
    Raw(u32, Vec<u8>),
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Meta {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::U64(v) => {
                out.extend(10u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::I32(v) => {
                out.extend(5u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(out, s);
            }
            Meta::StrArr(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(out, s);
                }
            }
            Meta::I32Arr(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    out.extend(x.to_le_bytes());
                }
            }
            Meta::F32Arr(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    out.extend(x.to_le_bytes());
                }
            }
            Meta::Raw(t, payload) => {
                out.extend(t.to_le_bytes());
                out.extend(payload);
            }
        }
    }
}

/// One tensor for [`GgufBuilder`]: name, `ne` (innermost first), ggml type
/// id, data bytes.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// An F32 tensor with HF (outermost-first) `shape`.
    pub fn f32(name: &str, shape: &[u64], values: &[f32]) -> Self {
        assert_eq!(values.len() as u64, shape.iter().product::<u64>());
        RawTensor {
            name: name.into(),
            ne: shape.iter().rev().copied().collect(),
            ty: 0,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// A minimal GGUF writer: header, metadata, tensor infos, aligned data.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Meta)>,
    pub tensors: Vec<RawTensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufBuilder {
    pub fn kv(mut self, key: &str, v: Meta) -> Self {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.into(), v));
        self
    }

    pub fn without(mut self, key: &str) -> Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor(mut self, t: RawTensor) -> Self {
        self.tensors.retain(|x| x.name != t.name);
        self.tensors.push(t);
        self
    }

    pub fn without_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|x| x.name != name);
        self
    }

    /// Encodes the file; returns the bytes and the offset of each tensor
    /// info's `offset` field (for corruption tests).
    pub fn build_with_positions(&self) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            v.encode(&mut out);
        }
        let mut offsets = Vec::new();
        let mut positions = Vec::new();
        let mut at = 0u64;
        for t in &self.tensors {
            offsets.push(at);
            at = (at + t.data.len() as u64).next_multiple_of(self.alignment);
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            positions.push(out.len());
            out.extend(off.to_le_bytes());
        }
        let data_start = (out.len() as u64).next_multiple_of(self.alignment) as usize;
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + *off as usize, 0);
            out.extend(&t.data);
        }
        (out, positions)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_positions().0
    }

    /// Writes the file to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.build()).unwrap();
        p
    }
}

/// Deterministic pseudo-random values in [-0.5, 0.5).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Dimensions of [`mini_llama`].
pub const MINI: (u64, u64, u64, u64, u64, u64) = (8, 2, 1, 4, 16, 8); // hidden, heads, kv, head_dim, ffn, vocab

/// Hugging Face weights of a 1-layer llama with [`MINI`] dimensions (untied).
pub fn mini_weights() -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let (h, nh, nkv, hd, f, v) = MINI;
    let shapes: Vec<(&str, Vec<u64>)> = vec![
        ("model.embed_tokens.weight", vec![v, h]),
        ("model.layers.0.input_layernorm.weight", vec![h]),
        ("model.layers.0.self_attn.q_proj.weight", vec![nh * hd, h]),
        ("model.layers.0.self_attn.k_proj.weight", vec![nkv * hd, h]),
        ("model.layers.0.self_attn.v_proj.weight", vec![nkv * hd, h]),
        ("model.layers.0.self_attn.o_proj.weight", vec![h, nh * hd]),
        ("model.layers.0.post_attention_layernorm.weight", vec![h]),
        ("model.layers.0.mlp.gate_proj.weight", vec![f, h]),
        ("model.layers.0.mlp.up_proj.weight", vec![f, h]),
        ("model.layers.0.mlp.down_proj.weight", vec![h, f]),
        ("model.norm.weight", vec![h]),
        ("lm_head.weight", vec![v, h]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let len = s.iter().product::<u64>() as usize;
            (n.to_string(), s, values(i as u64 + 1, len))
        })
        .collect()
}

/// A GGUF of [`mini_weights`] as llama.cpp would write it for `arch`
/// (`llama`: Q/K rows permuted), all tensors F32, with a small vocabulary.
pub fn mini_llama(arch: &str) -> GgufBuilder {
    let (h, nh, nkv, hd, f, v) = MINI;
    let tokens: Vec<String> = (0..v).map(|i| format!("tok{i}")).collect();
    let mut b = GgufBuilder::default()
        .kv("general.architecture", Meta::Str(arch.into()))
        .kv(&format!("{arch}.block_count"), Meta::U32(1))
        .kv(&format!("{arch}.context_length"), Meta::U32(128))
        .kv(&format!("{arch}.embedding_length"), Meta::U32(h as u32))
        .kv(&format!("{arch}.feed_forward_length"), Meta::U32(f as u32))
        .kv(
            &format!("{arch}.attention.head_count"),
            Meta::U32(nh as u32),
        )
        .kv(
            &format!("{arch}.attention.head_count_kv"),
            Meta::U32(nkv as u32),
        )
        .kv(&format!("{arch}.rope.freq_base"), Meta::F32(10000.0))
        .kv(
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            Meta::F32(1e-5),
        )
        .kv(
            &format!("{arch}.rope.dimension_count"),
            Meta::U32(hd as u32),
        )
        .kv("tokenizer.ggml.model", Meta::Str("llama".into()))
        .kv("tokenizer.ggml.tokens", Meta::StrArr(tokens))
        .kv(
            "tokenizer.ggml.scores",
            Meta::F32Arr((0..v).map(|i| -(i as f32)).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Meta::I32Arr(vec![1; v as usize]),
        )
        .kv("tokenizer.ggml.bos_token_id", Meta::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Meta::U32(2));
    for (name, shape, vals) in mini_weights() {
        let g = qrt_format::gguf::names::hf_to_gguf(&name).unwrap();
        let vals = if arch == "llama" && (name.contains("q_proj") || name.contains("k_proj")) {
            let heads = if name.contains("q_proj") { nh } else { nkv } as usize;
            qrt_format::gguf::names::permute_qk(&vals, heads, h as usize).unwrap()
        } else {
            vals
        };
        b = b.tensor(RawTensor::f32(&g, &shape, &vals));
    }
    b
}
