//! ggml tensor types and their dequantization to `f32`.
//!
//! The block layouts follow ggml's `ggml-common.h` (all multi-byte fields
//! little-endian, `f16` = IEEE half, `QK_K` = 256):
//!
//! | type | weights/block | bytes | layout |
//! |------|---------------|-------|--------|
//! | `F32`  | 1   | 4   | `f32` |
//! | `F16`  | 1   | 2   | `f16` |
//! | `BF16` | 1   | 2   | bfloat16 (upper half of an `f32`) |
//! | `Q4_0` | 32  | 18  | `f16 d; u8 qs[16]` — `x = d * (q - 8)` |
//! | `Q4_1` | 32  | 20  | `f16 d; f16 m; u8 qs[16]` — `x = d * q + m` |
//! | `Q5_0` | 32  | 22  | `f16 d; u8 qh[4]; u8 qs[16]` — `x = d * (q - 16)` |
//! | `Q5_1` | 32  | 24  | `f16 d; f16 m; u8 qh[4]; u8 qs[16]` — `x = d * q + m` |
//! | `Q8_0` | 32  | 34  | `f16 d; i8 qs[32]` — `x = d * q` |
//! | `Q2_K` | 256 | 84  | `u8 scales[16]; u8 qs[64]; f16 d; f16 dmin` |
//! | `Q3_K` | 256 | 110 | `u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d` |
//! | `Q4_K` | 256 | 144 | `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]` |
//! | `Q5_K` | 256 | 176 | `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]` |
//! | `Q6_K` | 256 | 210 | `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` |
//!
//! In the 32-weight types, the low nibbles of `qs` are weights 0..15 and the
//! high nibbles weights 16..31; for the 5-bit types bit `j` of the
//! little-endian `u32` `qh` is the fifth bit of weight `j`.
//!
//! Every formula is evaluated in the same order as ggml's reference
//! `dequantize_row_*` (which the Python `gguf.quants` package mirrors), in
//! `f32`, without fused multiply-adds, so results are bit-identical to the
//! reference.

use half::{bf16, f16};

/// Number of weights in a K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor element type, as stored in GGUF tensor infos.
///
/// All types ggml defines are listed so that a file using any of them can be
/// parsed (its tensor sizes computed and checked); only the types for which
/// [`GgmlType::can_dequantize`] is true can be decoded.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit symmetric, 32-weight blocks.
    Q4_0,
    /// 4-bit with minimum, 32-weight blocks.
    Q4_1,
    /// 5-bit symmetric, 32-weight blocks.
    Q5_0,
    /// 5-bit with minimum, 32-weight blocks.
    Q5_1,
    /// 8-bit symmetric, 32-weight blocks.
    Q8_0,
    /// 8-bit with sum, 32-weight blocks (activation type).
    Q8_1,
    /// 2-bit K-quant.
    Q2_K,
    /// 3-bit K-quant.
    Q3_K,
    /// 4-bit K-quant.
    Q4_K,
    /// 5-bit K-quant.
    Q5_K,
    /// 6-bit K-quant.
    Q6_K,
    /// 8-bit K-quant (activation type).
    Q8_K,
    /// i-quant, 2.06 bpw.
    IQ2_XXS,
    /// i-quant, 2.31 bpw.
    IQ2_XS,
    /// i-quant, 3.06 bpw.
    IQ3_XXS,
    /// i-quant, 1.56 bpw.
    IQ1_S,
    /// i-quant, 4.5 bpw non-linear.
    IQ4_NL,
    /// i-quant, 3.44 bpw.
    IQ3_S,
    /// i-quant, 2.5 bpw.
    IQ2_S,
    /// i-quant, 4.25 bpw.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit IEEE float.
    F64,
    /// i-quant, 1.75 bpw.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary, 1.69 bpw.
    TQ1_0,
    /// Ternary, 2.06 bpw.
    TQ2_0,
    /// OCP microscaling FP4.
    MXFP4,
    /// NVIDIA FP4 with FP8 scales.
    NVFP4,
    /// 1-bit, 128-weight blocks.
    Q1_0,
}

/// Every [`GgmlType`], in declaration order, with its ggml id, name, block size (weights) and block
/// bytes, from ggml's `type_traits` table.
const TYPE_TABLE: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", QK_K, 84),
    (GgmlType::Q3_K, 11, "Q3_K", QK_K, 110),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 144),
    (GgmlType::Q5_K, 13, "Q5_K", QK_K, 176),
    (GgmlType::Q6_K, 14, "Q6_K", QK_K, 210),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", QK_K, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", QK_K, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", QK_K, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", QK_K, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", QK_K, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

impl GgmlType {
    fn entry(self) -> (GgmlType, u32, &'static str, usize, usize) {
        // The table lists the variants in declaration order (checked by a test).
        TYPE_TABLE[self as usize]
    }

    /// The type with ggml id `id`, or `None` for an unknown or removed id.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPE_TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The type named `name` (ggml spelling, e.g. `"Q4_K"`), case-insensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        TYPE_TABLE
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    /// The ggml id (the value stored in GGUF).
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The ggml name, e.g. `"Q4_1"`.
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Weights per block.
    pub fn block_size(self) -> usize {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().4
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q2_K
                | Self::Q3_K
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
        )
    }

    /// Bytes taken by `n` weights, or `None` when `n` is not a whole number of
    /// blocks or the size overflows `u64`.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An error decoding ggml blocks (no file context: callers add it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The type has no decoder here.
    #[error("dequantization of ggml type {0} is not supported")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{n} elements is not a multiple of the {ty} block size {block}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// The element count.
        n: usize,
        /// The type's block size.
        block: usize,
    },
    /// The byte buffer does not have the size `n` elements need.
    #[error("{n} elements of {ty} need {expected} bytes, got {got}")]
    ByteLength {
        /// The type.
        ty: GgmlType,
        /// The element count.
        n: usize,
        /// The bytes `n` elements take.
        expected: usize,
        /// The bytes supplied.
        got: usize,
    },
}

/// Decodes `n` weights of type `ty` from `bytes` into a new vector.
///
/// `n` must be a multiple of the block size and `bytes` exactly
/// `n / block_size * type_size` long.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, BlockError> {
    check_lengths(ty, bytes.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Decodes `out.len()` weights of type `ty` from `bytes` into `out`.
///
/// The same length rules as [`dequantize`] apply, with `n = out.len()`.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), BlockError> {
    check_lengths(ty, bytes.len(), out.len())?;
    let ts = ty.type_size();
    let bs = ty.block_size();
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        other => return Err(BlockError::Unsupported(other)),
    }
    Ok(())
}

fn check_lengths(ty: GgmlType, got: usize, n: usize) -> Result<(), BlockError> {
    if !ty.can_dequantize() {
        return Err(BlockError::Unsupported(ty));
    }
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(BlockError::PartialBlock { ty, n, block });
    }
    // n / block * type_size <= n * 4 for every supported type, but stay checked.
    let expected = (n / block)
        .checked_mul(ty.type_size())
        .ok_or(BlockError::ByteLength {
            ty,
            n,
            expected: usize::MAX,
            got,
        })?;
    if expected != got {
        return Err(BlockError::ByteLength {
            ty,
            n,
            expected,
            got,
        });
    }
    Ok(())
}

#[inline]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

// Each block decoder below receives exactly one block (`b.len() == type_size`)
// and exactly `block_size` outputs, guaranteed by `chunks_exact` above; all
// indices are compile-time bounded by those sizes.

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let m = half(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let m = half(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = half(b, 80);
    let min = half(b, 82);
    let mut is = 0;
    let mut out = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half_idx in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = min * (sc >> 4) as f32;
                for &qb in &q[16 * half_idx..16 * half_idx + 16] {
                    y[out] = dl * ((qb >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let sc = &b[96..108];
    let d_all = half(b, 108);
    // 16 six-bit scales: low four bits from bytes 0..8 (low then high
    // nibbles), high two bits from bytes 8..12 (2-bit fields, byte j % 4,
    // field j / 4).
    let mut scales = [0i32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    let mut is = 0;
    let mut out = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half_idx in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 16 * half_idx..16 * half_idx + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hm[l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - sub) as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// The `j`-th (0..8) 6-bit scale and min of a Q4_K/Q5_K block's 12 scale bytes.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let min = half(b, 2);
    let scales = &b[4..16];
    for c in 0..4 {
        let q = &b[16 + 32 * c..16 + 32 * c + 32];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let y = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let min = half(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for c in 0..4 {
        let ql = &b[48 + 32 * c..48 + 32 * c + 32];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let u1 = 1u8 << (2 * c);
        let u2 = 2u8 << (2 * c);
        let y = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, &(ty, id, name, _, _)) in TYPE_TABLE.iter().enumerate() {
            assert_eq!(ty as usize, i);
            assert_eq!(GgmlType::from_id(id), Some(ty));
            assert_eq!(GgmlType::from_name(name), Some(ty));
            assert_eq!(ty.id(), id);
            assert_eq!(ty.name(), name);
        }
        assert_eq!(TYPE_TABLE.len(), GgmlType::Q1_0 as usize + 1);
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn q4_1_nibble_order() {
        // d = 1.0, m = -8.0, qs[j] = j | (15 - j) << 4
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-8.0).to_le_bytes());
        for j in 0..16 {
            b[4 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 - 8.0);
            assert_eq!(y[16 + j], (15 - j) as f32 - 8.0);
        }
    }

    #[test]
    fn length_checks() {
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0; 34], 16),
            Err(BlockError::PartialBlock {
                ty: GgmlType::Q8_0,
                n: 16,
                block: 32
            })
        );
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0; 33], 32),
            Err(BlockError::ByteLength {
                ty: GgmlType::Q8_0,
                n: 32,
                expected: 34,
                got: 33
            })
        );
        assert_eq!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66], 256),
            Err(BlockError::Unsupported(GgmlType::IQ2_XXS))
        );
        assert_eq!(dequantize(GgmlType::F32, &[], 0), Ok(vec![]));
        let mut out = [0f32; 2];
        assert!(dequantize_into(GgmlType::F16, &[0; 2], &mut out).is_err());
    }

    #[test]
    fn scalar_types() {
        let v = [1.5f32, -2.25];
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &b, 2).unwrap(), v);
        let b: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), v);
        let b: Vec<u8> = v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &b, 2).unwrap(), v);
    }
}
