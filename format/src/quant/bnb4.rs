//! bitsandbytes 4-bit storage: `nf4` and `fp4` (`SPEC.md` §10.2).
//!
//! Byte-compatible with bitsandbytes 0.50 `quantize_4bit` on the row-major flattened
//! tensor: blocks of `block_size` consecutive values share one scale, the block's
//! absolute maximum; each value is divided by it (as a product with the f32 reciprocal)
//! and mapped to one of 16 codes by bitsandbytes' decision thresholds; two codes per
//! byte, the first value of each pair in the high nibble. With `double_quant`
//! (bitsandbytes' `compress_statistics=True`) the block absmaxes are stored as 8-bit
//! codes of the [`super::dynamic_map`] after subtracting their mean, in blocks of 256.
//!
//! Decoding computes `codebook[q] × absmax[block]` in f32 and rounds it to the
//! tensor's original dtype (`orig_dtype`), as bitsandbytes' `dequantize_4bit` does.
//!
//! The GPU arithmetic of bitsandbytes' kernels is reproduced, including its approximate
//! reciprocal ([`super::dynamic_map::kernel_reciprocal`]) and flushing of subnormals;
//! the parity is checked against bitsandbytes itself by `tests/quant_bnb_parity.rs`.

use std::borrow::Cow;

use super::dynamic_map::{self, block_absmax, kernel_reciprocal, scale_ftz, DYNAMIC_MAP_LEN};
use super::{
    check_decode_args, check_len, fetch_parts, le_bytes, le_slice, storage, FloatDtype,
    ParamReader, PartSpec, QuantizedMatrix, QuantizedParts,
};
use crate::container::{ElemType, MetaValue, StorageType};

/// Block size of the second-level (absmax) quantization, fixed by bitsandbytes.
pub const ABSMAX_BLOCK_SIZE: usize = 256;

/// The NF4 (NormalFloat) code values, by code (bitsandbytes' `get_4bit_type("nf4")`).
#[allow(clippy::excessive_precision)] // the reference's decimal strings, rounded to f32 alike
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The FP4 code values, by code: bit 3 is the sign, bits 0-2 index the magnitudes
/// `{0, 0.0625, 8, 12, 4, 6, 2, 3} / 12` (bitsandbytes' `get_4bit_type("fp4")` and the
/// table of its dequantization kernel; code 8 decodes to −0).
#[allow(clippy::excessive_precision)] // the reference's decimal strings, rounded to f32 alike
pub const FP4_CODEBOOK: [f32; 16] = [
    0.0,
    0.005208333333,
    0.66666667,
    1.0,
    0.33333333,
    0.5,
    0.16666667,
    0.25,
    -0.0,
    -0.005208333333,
    -0.66666667,
    -1.0,
    -0.33333333,
    -0.5,
    -0.16666667,
    -0.25,
];

/// The 15 decision thresholds of NF4 (bitsandbytes' `dQuantizeNF4`), ascending: the
/// code of `x` is the number of thresholds `t` with `x > t`.
#[allow(clippy::excessive_precision)] // the reference's decimal strings, rounded to f32 alike
const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// The 7 magnitude thresholds of FP4 (bitsandbytes' `dQuantizeFP4`), ascending.
const FP4_THRESHOLDS: [f32; 7] = [
    0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333,
];

/// FP4 magnitude codes (bits 0-2) in ascending order of magnitude.
const FP4_CODE_BY_RANK: [u8; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

/// Which 4-bit code: NF4 or FP4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bnb4Kind {
    /// NormalFloat 4 (storage type `nf4`).
    Nf4,
    /// bitsandbytes' 4-bit float (storage type `fp4`).
    Fp4,
}

impl Bnb4Kind {
    /// The storage type name, `"nf4"` or `"fp4"`.
    pub fn name(self) -> &'static str {
        match self {
            Bnb4Kind::Nf4 => "nf4",
            Bnb4Kind::Fp4 => "fp4",
        }
    }

    /// The 16 code values.
    pub fn codebook(self) -> &'static [f32; 16] {
        match self {
            Bnb4Kind::Nf4 => &NF4_CODEBOOK,
            Bnb4Kind::Fp4 => &FP4_CODEBOOK,
        }
    }

    /// The smallest and largest magnitudes among the nonzero code values (all normal f32).
    pub fn code_magnitudes(self) -> (f32, f32) {
        let nonzero = || self.codebook().iter().map(|c| c.abs()).filter(|&c| c > 0.0);
        (
            nonzero().fold(f32::INFINITY, f32::min),
            nonzero().fold(0f32, f32::max),
        )
    }

    /// The code bitsandbytes picks for `x` (a value already divided by its block's
    /// absmax). NaN gives code 0.
    pub fn quantize_value(self, x: f32) -> u8 {
        let above = |thresholds: &[f32], v: f32| thresholds.iter().filter(|&&t| v > t).count();
        match self {
            // At most 15 thresholds: the count fits in 4 bits.
            Bnb4Kind::Nf4 => above(&NF4_THRESHOLDS, x) as u8,
            Bnb4Kind::Fp4 => {
                let sign = if x < 0.0 { 0b1000 } else { 0 };
                sign | FP4_CODE_BY_RANK[above(&FP4_THRESHOLDS, x.abs())]
            }
        }
    }
}

/// Parameters of an `nf4` / `fp4` tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bnb4Params {
    /// NF4 or FP4 (the storage type name).
    pub kind: Bnb4Kind,
    /// Values per block: a power of two in `32..=4096` (default 64).
    pub block_size: u32,
    /// Whether the block absmaxes are themselves 8-bit quantized.
    pub double_quant: bool,
    /// The dtype the runtime computes in (`f16` or `bf16`); informational for the codec.
    pub compute_dtype: FloatDtype,
    /// The dtype the weight had (`f16`, `bf16` or `f32`): inputs are rounded to it
    /// before quantization and decoded values are rounded to it.
    pub orig_dtype: FloatDtype,
}

impl Bnb4Params {
    /// Defaults: block size 64, no double quantization, f16 compute and original dtype.
    pub fn new(kind: Bnb4Kind) -> Self {
        Bnb4Params {
            kind,
            block_size: 64,
            double_quant: false,
            compute_dtype: FloatDtype::F16,
            orig_dtype: FloatDtype::F16,
        }
    }

    /// Parses and checks the parameters of an `nf4` / `fp4` storage type.
    pub fn from_storage(t: &StorageType) -> Result<Self, String> {
        let kind = match t.name.as_str() {
            "nf4" => Bnb4Kind::Nf4,
            "fp4" => Bnb4Kind::Fp4,
            other => return Err(format!("'{other}' is not a bitsandbytes 4-bit type")),
        };
        let mut r = ParamReader::new(t);
        let p = Bnb4Params {
            kind,
            block_size: r.u32("block_size")?,
            double_quant: r.bool("double_quant")?,
            compute_dtype: r.dtype("compute_dtype", &[FloatDtype::F16, FloatDtype::Bf16])?,
            orig_dtype: r.dtype(
                "orig_dtype",
                &[FloatDtype::F16, FloatDtype::Bf16, FloatDtype::F32],
            )?,
        };
        r.finish()?;
        p.check()?;
        Ok(p)
    }

    /// Checks the block size.
    fn check(&self) -> Result<(), String> {
        if !(32..=4096).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(format!(
                "block_size is {}; allowed: a power of two from 32 to 4096",
                self.block_size
            ));
        }
        if self.compute_dtype == FloatDtype::F32 {
            return Err("compute_dtype f32 is not allowed; allowed: f16, bf16".to_string());
        }
        Ok(())
    }

    /// The storage type with these parameters.
    pub fn storage_type(&self) -> StorageType {
        storage(
            self.kind.name(),
            vec![
                ("block_size", MetaValue::U32(self.block_size)),
                ("double_quant", MetaValue::Bool(self.double_quant)),
                (
                    "compute_dtype",
                    MetaValue::Str(self.compute_dtype.name().to_string()),
                ),
                (
                    "orig_dtype",
                    MetaValue::Str(self.orig_dtype.name().to_string()),
                ),
            ],
        )
    }

    /// The parts a tensor of logical shape `shape` has, in canonical order.
    pub(crate) fn part_specs(&self, shape: &[u64]) -> Result<Vec<PartSpec>, String> {
        self.check()?;
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("shape {shape:?} has no elements or too many"))?;
        let nblocks = numel.div_ceil(u64::from(self.block_size));
        let mut specs = vec![PartSpec::new(
            "data",
            ElemType::U8,
            numel.div_ceil(2),
            format!("ceil(numel / 2) with numel = {numel}"),
        )?];
        let blocks = format!("ceil(numel / block_size) = {nblocks}");
        if self.double_quant {
            let nscales = nblocks.div_ceil(ABSMAX_BLOCK_SIZE as u64);
            specs.push(PartSpec::new(
                "absmax_q",
                ElemType::U8,
                nblocks,
                blocks.clone(),
            )?);
            specs.push(PartSpec::new(
                "absmax_offset",
                ElemType::F32,
                1,
                "one f32".into(),
            )?);
            specs.push(PartSpec::new(
                "absmax_scale",
                ElemType::F32,
                nscales,
                format!("ceil(nblocks / 256) = {nscales} f32"),
            )?);
            specs.push(PartSpec::new(
                "absmax_code",
                ElemType::F32,
                DYNAMIC_MAP_LEN as u64,
                "256 f32".into(),
            )?);
        } else {
            specs.push(PartSpec::new(
                "absmax",
                ElemType::F32,
                nblocks,
                format!("{blocks} f32"),
            )?);
        }
        Ok(specs)
    }
}

/// bitsandbytes' `quantize_4bit` kernel on `x` (the flattened tensor, already in its
/// dtype): the packed codes (`ceil(len / 2)` bytes, first value of each pair in the high
/// nibble; for an odd length the last low nibble encodes a padding 0) and the absmax of
/// each block.
///
/// # Panics
/// If `block_size` is 0 or odd.
pub fn quantize_4bit(x: &[f32], kind: Bnb4Kind, block_size: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(
        block_size > 0 && block_size.is_multiple_of(2),
        "block size must be even"
    );
    let mut data = Vec::with_capacity(x.len().div_ceil(2));
    let mut absmax = Vec::with_capacity(x.len().div_ceil(block_size));
    for block in x.chunks(block_size) {
        let amax = block_absmax(block);
        let inv = kernel_reciprocal(amax);
        absmax.push(amax);
        for pair in block.chunks(2) {
            let hi = kind.quantize_value(scale_ftz(pair[0], inv));
            // The kernel loads a missing last value as 0 and quantizes it too.
            let lo = kind.quantize_value(scale_ftz(pair.get(1).copied().unwrap_or(0.0), inv));
            data.push(hi << 4 | lo);
        }
    }
    (data, absmax)
}

/// The mean of the block absmaxes that double quantization subtracts
/// (bitsandbytes: `absmax.mean()` in f32): the f64 sum rounded to f32, times the f32
/// reciprocal of the count. PyTorch's parallel reduction may differ in the last bits.
///
/// # Panics
/// If `absmax` is empty.
pub fn absmax_mean(absmax: &[f32]) -> f32 {
    assert!(!absmax.is_empty(), "no absmax values");
    let sum: f64 = absmax.iter().map(|&a| f64::from(a)).sum();
    (sum as f32) * (1.0 / absmax.len() as f32)
}

/// Double-quantized block absmaxes (bitsandbytes' nested `QuantState`).
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuantAbsmax {
    /// One 8-bit code per 4-bit block (`qabsmax`).
    pub q: Vec<u8>,
    /// The mean subtracted before quantizing (`offset`).
    pub offset: f32,
    /// The absmax of each block of 256 centred absmaxes (`state2.absmax`).
    pub scale: Vec<f32>,
    /// The 8-bit map (`state2.code`, the signed dynamic map).
    pub code: Box<[f32; DYNAMIC_MAP_LEN]>,
}

impl DoubleQuantAbsmax {
    /// Double-quantizes `absmax` with `offset = absmax_mean(absmax)`.
    ///
    /// # Panics
    /// If `absmax` is empty.
    pub fn quantize(absmax: &[f32]) -> Self {
        Self::quantize_with_offset(absmax, absmax_mean(absmax))
    }

    /// Double-quantizes `absmax` around a given `offset`: `absmax - offset` in f32,
    /// then blockwise 8-bit quantization with the dynamic map in blocks of 256.
    pub fn quantize_with_offset(absmax: &[f32], offset: f32) -> Self {
        let code = Box::new(dynamic_map::create_dynamic_map());
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (q, scale) = dynamic_map::quantize_blockwise(&centred, &code, ABSMAX_BLOCK_SIZE);
        DoubleQuantAbsmax {
            q,
            offset,
            scale,
            code,
        }
    }

    /// The decoded absmaxes: `code[q] × scale[i / 256] + offset`, in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_absmax(&self.q, &self.scale, &self.code, self.offset)
    }
}

/// `code[q[i]] × scale[i / 256] + offset` (two f32 roundings, as bitsandbytes).
fn dequantize_absmax(
    q: &[u8],
    scale: &[f32],
    code: &[f32; DYNAMIC_MAP_LEN],
    offset: f32,
) -> Vec<f32> {
    let mut v = dynamic_map::dequantize_blockwise(q, scale, code, ABSMAX_BLOCK_SIZE);
    for a in &mut v {
        *a += offset;
    }
    v
}

/// The block scales of a 4-bit tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Bnb4Absmax {
    /// One f32 absmax per block.
    Plain(Vec<f32>),
    /// 8-bit double-quantized absmaxes.
    Double(DoubleQuantAbsmax),
}

/// An `nf4` / `fp4` tensor in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Bnb4Tensor {
    /// The storage parameters.
    pub params: Bnb4Params,
    /// The logical shape.
    pub shape: Vec<u64>,
    /// Packed codes, `ceil(numel / 2)` bytes.
    pub data: Vec<u8>,
    /// Block scales.
    pub absmax: Bnb4Absmax,
}

impl Bnb4Tensor {
    /// Quantizes `w` (row-major, `shape`) as bitsandbytes' `quantize_4bit` does for a
    /// tensor of dtype `params.orig_dtype` (`w` is first rounded to that dtype).
    pub fn quantize(w: &[f32], shape: &[u64], params: &Bnb4Params) -> Result<Self, String> {
        // Checks the parameters and that the shape's element count fits in u64.
        params.part_specs(shape)?;
        let numel = usize::try_from(shape.iter().product::<u64>())
            .map_err(|_| format!("shape {shape:?} is too large for this machine"))?;
        check_len("the weight", w.len(), numel)?;
        let rounded: Vec<f32> = w.iter().map(|&v| params.orig_dtype.round(v)).collect();
        let (data, absmax) = quantize_4bit(&rounded, params.kind, params.block_size as usize);
        let absmax = if params.double_quant {
            Bnb4Absmax::Double(DoubleQuantAbsmax::quantize(&absmax))
        } else {
            Bnb4Absmax::Plain(absmax)
        };
        Ok(Bnb4Tensor {
            params: *params,
            shape: shape.to_vec(),
            data,
            absmax,
        })
    }

    /// A row decoder over this tensor (rows: all dimensions but the last).
    pub fn view(&self) -> Bnb4View<'_> {
        let absmax = match &self.absmax {
            Bnb4Absmax::Plain(a) => Cow::Borrowed(a.as_slice()),
            Bnb4Absmax::Double(d) => Cow::Owned(d.dequantize()),
        };
        let cols = self.shape.last().map_or(1, |&c| c as usize);
        let numel = self.shape.iter().product::<u64>() as usize;
        Bnb4View {
            params: self.params,
            rows: numel / cols,
            cols,
            data: &self.data,
            absmax,
        }
    }
}

impl QuantizedParts for Bnb4Tensor {
    fn storage_type(&self) -> StorageType {
        self.params.storage_type()
    }

    fn shape(&self) -> Vec<u64> {
        self.shape.clone()
    }

    fn part_bytes(&self) -> Vec<Vec<u8>> {
        match &self.absmax {
            Bnb4Absmax::Plain(a) => vec![self.data.clone(), le_bytes(a)],
            Bnb4Absmax::Double(d) => vec![
                self.data.clone(),
                d.q.clone(),
                le_bytes(&[d.offset]),
                le_bytes(&d.scale),
                le_bytes(&d.code[..]),
            ],
        }
    }
}

/// A row decoder over the parts of an `nf4` / `fp4` tensor. The logical matrix has the
/// tensor's last dimension as columns and all others as rows; double-quantized absmaxes
/// are decoded once, when the view is built.
#[derive(Clone, Debug)]
pub struct Bnb4View<'a> {
    params: Bnb4Params,
    rows: usize,
    cols: usize,
    data: &'a [u8],
    absmax: Cow<'a, [f32]>,
}

impl<'a> Bnb4View<'a> {
    /// Builds the view from the parts named in `SPEC.md` §10.2, looked up through `parts`.
    pub fn from_parts(
        params: &Bnb4Params,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        Self::build(params, shape, parts, None)
    }

    /// [`from_parts`](Self::from_parts) with the per-block scales given, already decoded (an
    /// earlier view's [`absmax`](Self::absmax)): under double quantization this skips decoding
    /// them again.
    pub fn with_absmax(
        params: &Bnb4Params,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
        absmax: &'a [f32],
    ) -> Result<Self, String> {
        Self::build(params, shape, parts, Some(absmax))
    }

    /// The per-block scales as f32.
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    fn build(
        params: &Bnb4Params,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
        decoded: Option<&'a [f32]>,
    ) -> Result<Self, String> {
        let specs = params.part_specs(shape)?;
        let bytes = fetch_parts(&specs, parts)?;
        // part_specs accepted the shape: non-empty, every dimension ≥ 1, numel fits u64,
        // and the data part's length (≈ numel / 2 bytes) fit in memory.
        let numel = usize::try_from(shape.iter().product::<u64>())
            .map_err(|_| format!("shape {shape:?} is too large for this machine"))?;
        let cols = shape.last().map_or(1, |&c| c as usize);
        let blocks = numel.div_ceil(params.block_size as usize);
        let absmax = if let Some(a) = decoded {
            if a.len() != blocks {
                return Err(format!(
                    "{} block scales given for {blocks} blocks",
                    a.len()
                ));
            }
            Cow::Borrowed(a)
        } else if params.double_quant {
            let q = bytes[1];
            let offset = le_slice::<f32>(bytes[2])[0];
            let scale = le_slice::<f32>(bytes[3]);
            let code_values = le_slice::<f32>(bytes[4]);
            let mut code = [0f32; DYNAMIC_MAP_LEN];
            code.copy_from_slice(&code_values);
            Cow::Owned(dequantize_absmax(q, &scale, &code, offset))
        } else {
            le_slice::<f32>(bytes[1])
        };
        Ok(Bnb4View {
            params: *params,
            rows: numel / cols,
            cols,
            data: bytes[0],
            absmax,
        })
    }
}

/// `out[t] = table[code of value i + t]`, the codes packed two per byte, the first of a pair in
/// the high nibble: whole bytes at a time between a possibly odd first and last value.
fn decode_nibbles(data: &[u8], i: usize, table: &[f32; 16], out: &mut [f32]) {
    let code = |idx: usize| {
        let byte = data[idx >> 1];
        usize::from(if idx & 1 == 0 { byte >> 4 } else { byte & 0x0F })
    };
    let (mut idx, mut out) = (i, out);
    if idx & 1 == 1 && !out.is_empty() {
        out[0] = table[code(idx)];
        out = &mut out[1..];
        idx += 1;
    }
    let pairs = out.len() / 2;
    for (pair, &byte) in out
        .chunks_exact_mut(2)
        .zip(&data[idx >> 1..(idx >> 1) + pairs])
    {
        pair[0] = table[usize::from(byte >> 4)];
        pair[1] = table[usize::from(byte & 0x0F)];
    }
    if out.len() % 2 == 1 {
        out[2 * pairs] = table[code(idx + 2 * pairs)];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{decode_nibbles, FloatDtype};

    /// [`decode_nibbles`] for a block of scale `a` whose products with the code values are
    /// all in `dtype`'s range (`FloatDtype::products_in_range`): the table is made in vector
    /// registers (`round_in_range` of `c * a`, on the bits), then 8 values per step are looked
    /// up with two permutes.
    ///
    /// # Safety
    /// The CPU must support AVX2 (and the products must be in range, or the values are wrong).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decode_block(
        data: &[u8],
        i: usize,
        codebook: &[f32; 16],
        a: f32,
        dtype: FloatDtype,
        out: &mut [f32],
    ) {
        // SAFETY: the loads read the 16 code values; the stores write the 16-entry table and
        // 8 values at a time inside `out` (bounds computed below).
        unsafe {
            let scale = _mm256_set1_ps(a);
            let round = |v: __m256| match dtype {
                FloatDtype::F16 => round_bits::<13>(v),
                FloatDtype::Bf16 => round_bits::<16>(v),
                FloatDtype::F32 => v,
            };
            let low = round(_mm256_mul_ps(_mm256_loadu_ps(codebook.as_ptr()), scale));
            let high = round(_mm256_mul_ps(
                _mm256_loadu_ps(codebook.as_ptr().add(8)),
                scale,
            ));
            let mut table = [0f32; 16];
            _mm256_storeu_ps(table.as_mut_ptr(), low);
            _mm256_storeu_ps(table.as_mut_ptr().add(8), high);

            // A possibly odd first value, then whole groups of 4 bytes, then the rest.
            let (mut idx, mut at) = (i, 0);
            if idx % 2 == 1 && !out.is_empty() {
                decode_nibbles(data, idx, &table, &mut out[..1]);
                idx += 1;
                at = 1;
            }
            let quads = (out.len() - at) / 8;
            // Value 2b of byte b is its high nibble, value 2b + 1 its low one.
            let shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
            let nibble = _mm256_set1_epi32(0x0F);
            let bytes = &data[idx / 2..idx / 2 + 4 * quads];
            let dst = &mut out[at..at + 8 * quads];
            for (q, four) in bytes.chunks_exact(4).enumerate() {
                let word = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                let codes = _mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(word as i32), shifts),
                    nibble,
                );
                // Codes 0-7 from the low half of the table, 8-15 (bit 3 set) from the high.
                let from_low = _mm256_permutevar8x32_ps(low, codes);
                let from_high = _mm256_permutevar8x32_ps(high, codes);
                let pick_high = _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28));
                let values = _mm256_blendv_ps(from_low, from_high, pick_high);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8 * q), values);
            }
            let done = at + 8 * quads;
            decode_nibbles(data, idx + 8 * quads, &table, &mut out[done..]);
        }
    }

    /// `FloatDtype::round_in_range` on 8 lanes: the low `DROP` mantissa bits rounded off, to
    /// nearest, ties to even.
    #[target_feature(enable = "avx2")]
    fn round_bits<const DROP: i32>(v: __m256) -> __m256 {
        let bits = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<DROP>(bits), _mm256_set1_epi32(1));
        let half = _mm256_set1_epi32((1 << (DROP - 1)) - 1);
        let rounded = _mm256_add_epi32(_mm256_add_epi32(bits, half), lsb);
        _mm256_castsi256_ps(_mm256_and_si256(
            rounded,
            _mm256_set1_epi32(!((1 << DROP) - 1)),
        ))
    }
}

impl QuantizedMatrix for Bnb4View<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]) {
        check_decode_args(self.rows, self.cols, start, count, dst);
        let bs = self.params.block_size as usize;
        let codebook = self.params.kind.codebook();
        let (code_lo, code_hi) = self.params.kind.code_magnitudes();
        let dtype = self.params.orig_dtype;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::is_x86_feature_detected!("avx2");
        let first = start * self.cols;
        let end = first + count * self.cols;
        let mut i = first;
        while i < end {
            let block = i / bs;
            let block_end = ((block + 1) * bs).min(end);
            let a = self.absmax[block];
            let in_range = dtype.products_in_range(a, code_lo, code_hi);
            let seg = &mut dst[i - first..block_end - first];
            #[cfg(target_arch = "x86_64")]
            if in_range && avx2 {
                // SAFETY: AVX2 is present and the block's products are in range.
                unsafe { avx2::decode_block(self.data, i, codebook, a, dtype, seg) };
                i = block_end;
                continue;
            }
            let mut table = [0f32; 16];
            if in_range {
                // Normal products: the flushes do nothing and the rounding needs no checks.
                for (t, &c) in table.iter_mut().zip(codebook) {
                    *t = dtype.round_in_range(c * a);
                }
            } else {
                for (t, &c) in table.iter_mut().zip(codebook) {
                    *t = dtype.round(scale_ftz(c, a));
                }
            }
            decode_nibbles(self.data, i, &table, seg);
            i = block_end;
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The vector path equals the scalar path with the checked table on every in-range
    /// block: random codes, scales over the whole range, every dtype, odd starts and lengths.
    #[test]
    fn avx2_blocks_equal_the_scalar_decode() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        }
        let mut next = crate::quant::xorshift(0x9E37_79B9_7F4A_7C15u64);
        let data: Vec<u8> = (0..256).map(|_| next() as u8).collect();
        let mut checked = 0;
        for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
            let codebook = kind.codebook();
            let (lo, hi) = kind.code_magnitudes();
            for dtype in [FloatDtype::F16, FloatDtype::Bf16, FloatDtype::F32] {
                // Random scales, and scales whose products with the simple FP4 values are
                // exact ties of the f16 or bf16 rounding (ties go to even).
                let ties = [
                    1.0 + 2f32.powi(-11),
                    1.0 + 3.0 * 2f32.powi(-11),
                    1.0 + 2f32.powi(-8),
                ];
                for e in -60..66 {
                    let a = match ties.get((e + 60) as usize % 8) {
                        Some(t) => t * 2f32.powi(e),
                        None => (next() % 1000) as f32 / 500.0 * 2f32.powi(e),
                    };
                    if !dtype.products_in_range(a, lo, hi) {
                        continue;
                    }
                    let mut table = [0f32; 16];
                    for (t, &c) in table.iter_mut().zip(codebook) {
                        *t = dtype.round(scale_ftz(c, a));
                    }
                    for (i, len) in [(0, 64), (1, 63), (3, 40), (10, 7), (5, 1), (2, 0)] {
                        let mut want = vec![f32::NAN; len];
                        decode_nibbles(&data, i, &table, &mut want);
                        let mut got = vec![f32::NAN; len];
                        // SAFETY: AVX2 checked above; the products are in range.
                        unsafe { avx2::decode_block(&data, i, codebook, a, dtype, &mut got) };
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits());
                        assert!(same, "{kind:?} {dtype:?} a={a} at {i}+{len}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 500, "only {checked} blocks checked");
    }
}
