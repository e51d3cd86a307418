//! Helpers shared by the container integration tests: a fixed-seed PRNG, unique
//! temp paths, random metadata/tensors, and an independent raw encoder written
//! from `format/SPEC.md` that can also produce deliberately invalid files.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use qrt_format::container::{ElemType, MetaValue, Metadata, QrtWriter, TensorPlan};
use sha2::{Digest, Sha256};

/// xorshift64 PRNG (deterministic, no dependencies).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A fresh path in the system temp directory (nothing is created).
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("qrt-test-{}-{tag}-{n}.qrt", std::process::id()))
}

/// `<path>.tmp-<pid>`, the writer's temporary file for this process.
pub fn tmp_of(path: &std::path::Path, pid: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{pid}"));
    PathBuf::from(s)
}

pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------
// Random content
// ---------------------------------------------------------------------------

pub fn random_string(rng: &mut XorShift, max_chars: u64) -> String {
    const CHARS: [char; 10] = ['a', 'q', 'Z', '0', ' ', '.', 'é', '漢', '🦀', '\0'];
    (0..rng.below(max_chars + 1))
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
        .collect()
}

fn finite_f32(rng: &mut XorShift) -> f32 {
    let v = f32::from_bits(rng.next_u64() as u32);
    if v.is_nan() {
        -1.5
    } else {
        v
    }
}

fn finite_f64(rng: &mut XorShift) -> f64 {
    let v = f64::from_bits(rng.next_u64());
    if v.is_nan() {
        2.25
    } else {
        v
    }
}

/// A random value of variant `kind` (0..=9, in type-code order).
pub fn random_value_of(rng: &mut XorShift, kind: u64, depth: usize) -> MetaValue {
    match kind {
        0 => MetaValue::U8(rng.next_u64() as u8),
        1 => MetaValue::I32(rng.next_u64() as i32),
        2 => MetaValue::U32(rng.next_u64() as u32),
        3 => MetaValue::I64(rng.next_u64() as i64),
        4 => MetaValue::U64(rng.next_u64()),
        5 => MetaValue::F32(finite_f32(rng)),
        6 => MetaValue::F64(finite_f64(rng)),
        7 => MetaValue::Bool(rng.coin()),
        8 => MetaValue::Str(random_string(rng, 12)),
        _ => {
            // Arrays: homogeneous; nested arrays only a few levels deep.
            let elem = if depth >= 3 {
                rng.below(9)
            } else {
                rng.below(10)
            };
            let n = rng.below(6);
            MetaValue::Array(
                (0..n)
                    .map(|_| random_value_of(rng, elem, depth + 1))
                    .collect(),
            )
        }
    }
}

/// Random metadata containing at least one value of every variant (and a nested array).
pub fn random_metadata(rng: &mut XorShift) -> Metadata {
    let mut m = Metadata::new();
    for kind in 0..10 {
        m.insert(format!("kind.{kind}"), random_value_of(rng, kind, 0));
    }
    m.insert(
        "nested",
        MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::U32(1), MetaValue::U32(2)]),
            MetaValue::Array(vec![MetaValue::Str("x".into())]),
            MetaValue::Array(vec![]),
        ]),
    );
    for _ in 0..rng.below(12) {
        let key = format!("rand.{}.{}", random_string(rng, 6), rng.below(1000));
        let kind = rng.below(10);
        m.insert(key, random_value_of(rng, kind, 0));
    }
    m
}

/// Random dense tensor plans with matching random bytes.
pub fn random_tensors(rng: &mut XorShift, count: usize) -> Vec<(TensorPlan, Vec<u8>)> {
    const ELEMS: [ElemType; 3] = [ElemType::F32, ElemType::F16, ElemType::BF16];
    (0..count)
        .map(|i| {
            let ndim = rng.range(1, 4) as usize;
            let mut shape: Vec<u64> = (0..ndim).map(|_| rng.range(1, 9)).collect();
            if rng.below(4) == 0 {
                shape[0] = rng.range(100, 700); // spans several alignment units
            }
            let elem = ELEMS[rng.below(3) as usize];
            let plan = TensorPlan::dense(format!("blk.{i}.w{}", rng.below(100)), shape, elem);
            let data = rng.bytes(plan.parts[0].2 as usize);
            (plan, data)
        })
        .collect()
}

/// Writes `tensors` with `meta` to `path` using the real writer.
pub fn write_file(path: &std::path::Path, meta: &Metadata, tensors: &[(TensorPlan, Vec<u8>)]) {
    let plans = tensors.iter().map(|(p, _)| p.clone()).collect();
    let mut w = QrtWriter::create(path, meta, plans).expect("create");
    for (p, data) in tensors {
        w.write_tensor(&p.name, &[data]).expect("write_tensor");
    }
    w.finish().expect("finish");
}

/// A small valid file made by the real writer, as bytes: metadata with a few
/// keys and three tensors ("a" f32 [2,3], "b" f16 [300], "c" bf16 [4,4]).
pub fn small_valid_file() -> Vec<u8> {
    let mut meta = Metadata::new();
    meta.insert("general.name", "tiny");
    meta.insert("llama.block_count", 2u32);
    meta.insert("tokenizer.tokens", vec!["<s>", "</s>", "hello"]);
    let mut rng = XorShift::new(7);
    let tensors: Vec<(TensorPlan, Vec<u8>)> = [
        ("a", vec![2u64, 3], ElemType::F32),
        ("b", vec![300], ElemType::F16),
        ("c", vec![4, 4], ElemType::BF16),
    ]
    .into_iter()
    .map(|(n, s, e)| {
        let plan = TensorPlan::dense(n, s, e);
        let data = rng.bytes(plan.parts[0].2 as usize);
        (plan, data)
    })
    .collect();
    let path = temp_path("small");
    write_file(&path, &meta, &tensors);
    let bytes = std::fs::read(&path).expect("read back");
    std::fs::remove_file(&path).expect("cleanup");
    bytes
}

/// Reads the little-endian u64 at `at`.
pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Writes the little-endian u64 at `at`.
pub fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------
// Independent raw encoder (from SPEC.md)
// ---------------------------------------------------------------------------

/// Raw string encoding: u64 length + bytes (which need not be UTF-8).
pub fn raw_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// One raw key/value entry with a raw type code and payload.
pub fn raw_kv(key: &[u8], code: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    raw_str(&mut out, key);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub struct RawPart {
    pub role: Vec<u8>,
    pub elem: u32,
    /// Relative to the data section.
    pub offset: u64,
    pub nbytes: u64,
}

pub struct RawTensor {
    pub name: Vec<u8>,
    pub ndim: Option<u32>,
    pub dims: Vec<u64>,
    pub storage: Vec<u8>,
    pub param_count: u64,
    pub params: Vec<u8>,
    pub part_count: Option<u32>,
    pub parts: Vec<RawPart>,
    /// Checksum; `None` = compute from the data section.
    pub sha: Option<[u8; 32]>,
    /// Bytes appended to the entry after the checksum (newer-minor extension).
    pub extra: Vec<u8>,
}

impl RawTensor {
    /// A dense tensor with one "data" part at `offset` (relative), sized for `dims`.
    pub fn dense(
        name: &str,
        storage: &str,
        elem: u32,
        size: u64,
        dims: &[u64],
        offset: u64,
    ) -> Self {
        RawTensor {
            name: name.as_bytes().to_vec(),
            ndim: None,
            dims: dims.to_vec(),
            storage: storage.as_bytes().to_vec(),
            param_count: 0,
            params: Vec::new(),
            part_count: None,
            parts: vec![RawPart {
                role: b"data".to_vec(),
                elem,
                offset,
                nbytes: dims.iter().product::<u64>() * size,
            }],
            sha: None,
            extra: Vec::new(),
        }
    }
}

pub struct RawFile {
    pub magic: [u8; 4],
    pub major: u16,
    pub minor: u16,
    pub header_size: u32,
    pub flags: u32,
    /// `None` = the number of entries in `metadata`.
    pub metadata_count: Option<u64>,
    pub metadata: Vec<Vec<u8>>,
    /// Bytes appended to the metadata section (after the entries).
    pub metadata_extra: Vec<u8>,
    pub tensor_count: Option<u64>,
    pub tensors: Vec<RawTensor>,
    pub data: Vec<u8>,
    /// `None` = first multiple of 256 after the directory.
    pub data_offset: Option<u64>,
    /// `None` = `data.len()`.
    pub data_size: Option<u64>,
    /// Bytes appended after the data section.
    pub trailing: Vec<u8>,
}

/// Element type codes from SPEC.md.
pub const E_F32: u32 = 8;
pub const E_F16: u32 = 6;
pub const E_BF16: u32 = 7;

impl RawFile {
    /// A valid file: two metadata entries and tensors "x" (f32 [2,3] at 0) and
    /// "y" (f16 [5] at 256), data section 512 bytes of a recognisable pattern.
    pub fn valid() -> Self {
        RawFile {
            magic: *b"QRT\0",
            major: 1,
            minor: 0,
            header_size: 64,
            flags: 0,
            metadata_count: None,
            metadata: vec![
                raw_kv(b"general.name", 8, &{
                    let mut v = Vec::new();
                    raw_str(&mut v, b"raw");
                    v
                }),
                raw_kv(b"n", 2, &7u32.to_le_bytes()),
            ],
            metadata_extra: Vec::new(),
            tensor_count: None,
            tensors: vec![
                RawTensor::dense("x", "f32", E_F32, 4, &[2, 3], 0),
                RawTensor::dense("y", "f16", E_F16, 2, &[5], 256),
            ],
            data: (0..512u32).map(|i| (i * 7 + 3) as u8).collect(),
            data_offset: None,
            data_size: None,
            trailing: Vec::new(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut meta = Vec::new();
        for kv in &self.metadata {
            meta.extend_from_slice(kv);
        }
        meta.extend_from_slice(&self.metadata_extra);
        let mut dir = Vec::new();
        for t in &self.tensors {
            let mut e = Vec::new();
            raw_str(&mut e, &t.name);
            e.extend_from_slice(&t.ndim.unwrap_or(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                e.extend_from_slice(&d.to_le_bytes());
            }
            raw_str(&mut e, &t.storage);
            e.extend_from_slice(&t.param_count.to_le_bytes());
            e.extend_from_slice(&t.params);
            e.extend_from_slice(&t.part_count.unwrap_or(t.parts.len() as u32).to_le_bytes());
            let mut hasher = Sha256::new();
            for p in &t.parts {
                raw_str(&mut e, &p.role);
                e.extend_from_slice(&p.elem.to_le_bytes());
                e.extend_from_slice(&p.offset.to_le_bytes());
                e.extend_from_slice(&p.nbytes.to_le_bytes());
                let lo = (p.offset as usize).min(self.data.len());
                let hi = (p.offset.saturating_add(p.nbytes) as usize).min(self.data.len());
                hasher.update(&self.data[lo..hi]);
            }
            let sha: [u8; 32] = t.sha.unwrap_or_else(|| hasher.finalize().into());
            e.extend_from_slice(&sha);
            e.extend_from_slice(&t.extra);
            dir.extend_from_slice(&(e.len() as u64).to_le_bytes());
            dir.extend_from_slice(&e);
        }
        let hs = self.header_size as usize;
        let dir_end = (hs + meta.len() + dir.len()) as u64;
        let data_offset = self.data_offset.unwrap_or(dir_end.div_ceil(256) * 256);
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(&self.header_size.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        let mc = self.metadata_count.unwrap_or(self.metadata.len() as u64);
        out.extend_from_slice(&mc.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        let tc = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        out.extend_from_slice(&tc.to_le_bytes());
        out.extend_from_slice(&(dir.len() as u64).to_le_bytes());
        out.extend_from_slice(&data_offset.to_le_bytes());
        out.extend_from_slice(
            &self
                .data_size
                .unwrap_or(self.data.len() as u64)
                .to_le_bytes(),
        );
        out.resize(hs, 0xEE); // header extension bytes (newer minor versions)
        out.extend_from_slice(&meta);
        out.extend_from_slice(&dir);
        out.resize(data_offset.max(out.len() as u64) as usize, 0);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.trailing);
        out
    }
}
