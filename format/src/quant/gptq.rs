//! GPTQ storage: `gptq`, the AutoGPTQ / Hugging Face checkpoint layout (`SPEC.md` §10.4).
//!
//! An `[n, k]` weight (`n` outputs, `k` inputs) is stored as `b`-bit integer codes
//! `q[r][j]`, a zero point and a scale per (group, output row), and the group of each
//! input column:
//!
//! * `qweight` — i32 `[k·b/32, n]`: for each output row `r`, the codes `q[r][0..k]` in
//!   input order as a little-endian bit stream (value `j` at stream bits `j·b ..
//!   j·b+b-1`), cut into 32-bit words; word `w` of row `r` is `qweight[w][r]`. For
//!   2, 4, 8 bits that puts inputs `w·32/b ..` in word `w`, the first in the lowest bits;
//!   for 3 bits it is AutoGPTQ's 32-values-in-3-words scheme (values 10 and 21 straddle
//!   words).
//! * `qzeros` — i32 `[G, n·b/32]`: for each group `g`, the values `(zero[g][r] - 1) mod
//!   2^b` of all rows `r` as a bit stream along the output dimension (the "v1" offset).
//! * `scales` — f16 `[G, n]`.
//! * `g_idx` — i32 `[k]`: the group of each input column (`j / group_size` without
//!   act-order; a permutation-derived mapping with it).
//!
//! Decoding: `w[r][j] = scales[g][r] × (q[r][j] − zero[g][r])` in f32, `g = g_idx[j]`,
//! `zero = (stored + 1) mod 2^b` (AutoGPTQ's reference dequantization).
//!
//! RTN (round to nearest, per group) is stored as `gptq` with `act_order = false`, see
//! [`rtn_quantize`].

use std::borrow::Cow;

use half::f16;

use super::{
    add_group_products, check_decode_args, check_len, f16_scales, fetch_parts, le_bytes, le_slice,
    matrix_shape, storage, transpose, ParamReader, PartSpec, QuantizedMatrix, QuantizedParts,
};
use crate::container::{ElemType, MetaValue, StorageType};

/// Parameters of a `gptq` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqParams {
    /// Bits per code: 2, 3, 4 or 8.
    pub bits: u32,
    /// Input columns per group, or -1 for one group per row (per-channel).
    pub group_size: i32,
    /// Symmetric quantization (every zero point is `2^(bits-1)`).
    pub sym: bool,
    /// Act-order (columns quantized in a permuted order; `g_idx` is not `j / group_size`).
    pub act_order: bool,
}

impl GptqParams {
    /// Parses and checks the parameters of a `gptq` storage type.
    pub fn from_storage(t: &StorageType) -> Result<Self, String> {
        if t.name != "gptq" {
            return Err(format!("'{}' is not gptq", t.name));
        }
        let mut r = ParamReader::new(t);
        let p = GptqParams {
            bits: r.u32("bits")?,
            group_size: r.i32("group_size")?,
            sym: r.bool("sym")?,
            act_order: r.bool("act_order")?,
        };
        r.finish()?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if ![2, 3, 4, 8].contains(&self.bits) {
            return Err(format!("bits is {}; allowed: 2, 3, 4, 8", self.bits));
        }
        if self.group_size == 0 || self.group_size < -1 {
            return Err(format!(
                "group_size is {}; allowed: -1 (one group per row) or a positive number of columns",
                self.group_size
            ));
        }
        Ok(())
    }

    /// The storage type with these parameters.
    pub fn storage_type(&self) -> StorageType {
        storage(
            "gptq",
            vec![
                ("bits", MetaValue::U32(self.bits)),
                ("group_size", MetaValue::I32(self.group_size)),
                ("sym", MetaValue::Bool(self.sym)),
                ("act_order", MetaValue::Bool(self.act_order)),
            ],
        )
    }

    /// Input columns per group for `k` inputs (`k` itself for group size -1).
    pub fn group_len(&self, k: usize) -> usize {
        usize::try_from(self.group_size).unwrap_or(k)
    }

    /// Number of groups for `k` inputs.
    pub fn n_groups(&self, k: usize) -> usize {
        k.div_ceil(self.group_len(k).max(1))
    }

    /// The largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// The parts of an `[n, k]` tensor, in canonical order.
    pub(crate) fn part_specs(&self, shape: &[u64]) -> Result<Vec<PartSpec>, String> {
        self.check()?;
        let (n, k) = matrix_shape("gptq", shape)?;
        let b = self.bits as usize;
        let multiple = 32 / gcd(b, 32);
        if k % multiple != 0 {
            return Err(format!(
                "k = {k} inputs do not fill whole 32-bit words of {b}-bit codes (qweight); k must be a multiple of {multiple}"
            ));
        }
        if n % multiple != 0 {
            return Err(format!(
                "n = {n} outputs do not fill whole 32-bit words of {b}-bit zeros (qzeros); n must be a multiple of {multiple}"
            ));
        }
        // A k that is not a multiple of the group size leaves a shorter last group (as
        // AutoGPTQ's `ceil(infeatures / group_size)` groups).
        let g = self.n_groups(k);
        let (n64, k64, g64) = (n as u64, k as u64, g as u64);
        let kw = k64 * b as u64 / 32;
        let nw = n64 * b as u64 / 32;
        Ok(vec![
            PartSpec::new(
                "qweight",
                ElemType::I32,
                kw * n64,
                format!("[k·bits/32, n] = [{kw}, {n}] i32"),
            )?,
            PartSpec::new(
                "qzeros",
                ElemType::I32,
                g64 * nw,
                format!("[groups, n·bits/32] = [{g}, {nw}] i32"),
            )?,
            PartSpec::new(
                "scales",
                ElemType::F16,
                g64 * n64,
                format!("[groups, n] = [{g}, {n}] f16"),
            )?,
            PartSpec::new("g_idx", ElemType::I32, k64, format!("[k] = [{k}] i32"))?,
        ])
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Value `j` of a little-endian bit stream of `bits`-bit values held in `words`.
#[inline]
fn stream_get(words: impl Fn(usize) -> u32, j: usize, bits: u32) -> u32 {
    let pos = j * bits as usize;
    let (w, sh) = (pos / 32, (pos % 32) as u32);
    let mut v = words(w) >> sh;
    if sh + bits > 32 {
        v |= words(w + 1) << (32 - sh);
    }
    v & ((1u32 << bits) - 1)
}

/// Packs `[rows, cols]` codes (row-major, each `< 2^bits`) along the rows into
/// `[rows·bits/32, cols]` words: column `c`'s values form a little-endian bit stream
/// (AutoGPTQ's `qweight` layout, with `rows = k`, `cols = n`).
///
/// # Panics
/// If `values.len() != rows × cols` or `rows × bits` is not a multiple of 32.
pub fn pack_along_rows(values: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<i32> {
    assert_eq!(values.len(), rows * cols, "pack_along_rows: wrong length");
    assert_eq!(
        rows * bits as usize % 32,
        0,
        "pack_along_rows: partial word"
    );
    let nw = rows * bits as usize / 32;
    let mut out = vec![0u32; nw * cols];
    for (j, row) in values.chunks_exact(cols).enumerate() {
        let pos = j * bits as usize;
        let (w, sh) = (pos / 32, (pos % 32) as u32);
        for (c, &v) in row.iter().enumerate() {
            let v = u32::from(v);
            out[w * cols + c] |= v << sh;
            if sh + bits > 32 {
                out[(w + 1) * cols + c] |= v >> (32 - sh);
            }
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// The inverse of [`pack_along_rows`]: `[rows, cols]` codes.
///
/// # Panics
/// If `words.len() != rows·bits/32 × cols` or `rows × bits` is not a multiple of 32.
pub fn unpack_along_rows(words: &[i32], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    assert_eq!(
        rows * bits as usize % 32,
        0,
        "unpack_along_rows: partial word"
    );
    assert_eq!(
        words.len(),
        rows * bits as usize / 32 * cols,
        "unpack_along_rows: wrong length"
    );
    let mut out = vec![0u8; rows * cols];
    for c in 0..cols {
        for j in 0..rows {
            // Values are < 2^bits ≤ 256.
            out[j * cols + c] = stream_get(|w| words[w * cols + c] as u32, j, bits) as u8;
        }
    }
    out
}

/// Packs `[rows, cols]` codes (row-major, each `< 2^bits`) along the columns into
/// `[rows, cols·bits/32]` words: each row is a little-endian bit stream (AutoGPTQ's
/// `qzeros` layout, with `rows = groups`, `cols = n`).
///
/// # Panics
/// If `values.len() != rows × cols` or `cols × bits` is not a multiple of 32.
pub fn pack_along_cols(values: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<i32> {
    assert_eq!(values.len(), rows * cols, "pack_along_cols: wrong length");
    assert_eq!(
        cols * bits as usize % 32,
        0,
        "pack_along_cols: partial word"
    );
    let nw = cols * bits as usize / 32;
    let mut out = vec![0u32; rows * nw];
    for (row, words) in values.chunks_exact(cols).zip(out.chunks_exact_mut(nw)) {
        for (c, &v) in row.iter().enumerate() {
            let pos = c * bits as usize;
            let (w, sh) = (pos / 32, (pos % 32) as u32);
            let v = u32::from(v);
            words[w] |= v << sh;
            if sh + bits > 32 {
                words[w + 1] |= v >> (32 - sh);
            }
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// The inverse of [`pack_along_cols`]: `[rows, cols]` codes.
///
/// # Panics
/// If `words.len() != rows × cols·bits/32` or `cols × bits` is not a multiple of 32.
pub fn unpack_along_cols(words: &[i32], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    assert_eq!(
        cols * bits as usize % 32,
        0,
        "unpack_along_cols: partial word"
    );
    let nw = cols * bits as usize / 32;
    assert_eq!(words.len(), rows * nw, "unpack_along_cols: wrong length");
    let mut out = Vec::with_capacity(rows * cols);
    for row in words.chunks_exact(nw) {
        out.extend((0..cols).map(|c| stream_get(|w| row[w] as u32, c, bits) as u8));
    }
    out
}

/// A `gptq` tensor in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqTensor {
    /// The storage parameters.
    pub params: GptqParams,
    /// Rows (output features).
    pub n: usize,
    /// Columns (input features).
    pub k: usize,
    /// Packed codes, `[k·bits/32, n]`.
    pub qweight: Vec<i32>,
    /// Packed `(zero - 1) mod 2^bits`, `[groups, n·bits/32]`.
    pub qzeros: Vec<i32>,
    /// Scales, `[groups, n]`.
    pub scales: Vec<f16>,
    /// Group of each input column, `[k]`.
    pub g_idx: Vec<i32>,
}

impl GptqTensor {
    /// Packs integer codes produced by a GPTQ quantizer.
    ///
    /// * `codes`: `[n, k]` row-major codes, each `≤ 2^bits - 1`;
    /// * `scales`: `[groups, n]` (rounded to f16 here);
    /// * `zeros`: `[groups, n]` zero points, each `≤ 2^bits - 1` (all `2^(bits-1)` when `sym`);
    /// * `g_idx`: `[k]`, the group of each input column (`j / group_size` unless `act_order`).
    ///
    /// `k` is `g_idx.len()`, `n` is `codes.len() / k`, and the number of groups is
    /// `ceil(k / group_size)` (1 for `group_size = -1`).
    #[allow(clippy::too_many_arguments)] // the signature the GPTQ quantizer calls
    pub fn from_codes(
        codes: &[u8],
        scales: &[f32],
        zeros: &[u8],
        g_idx: &[i32],
        bits: u32,
        group_size: i32,
        sym: bool,
        act_order: bool,
    ) -> Result<Self, String> {
        let params = GptqParams {
            bits,
            group_size,
            sym,
            act_order,
        };
        params.check()?;
        let k = g_idx.len();
        if k == 0 || !codes.len().is_multiple_of(k) {
            return Err(format!(
                "{} codes do not form rows of k = {k} (the length of g_idx)",
                codes.len()
            ));
        }
        let n = codes.len() / k;
        params.part_specs(&[n as u64, k as u64])?;
        let groups = params.n_groups(k);
        check_len("scales", scales.len(), groups * n)?;
        check_len("zeros", zeros.len(), groups * n)?;
        let maxq = params.maxq();
        if let Some(q) = codes.iter().find(|&&q| u32::from(q) > maxq) {
            return Err(format!("code {q} does not fit in {bits} bits"));
        }
        if let Some(z) = zeros.iter().find(|&&z| u32::from(z) > maxq) {
            return Err(format!("zero point {z} does not fit in {bits} bits"));
        }
        if sym {
            let mid = 1u32 << (bits - 1);
            if let Some(z) = zeros.iter().find(|&&z| u32::from(z) != mid) {
                return Err(format!(
                    "symmetric quantization has every zero point at {mid}, found {z}"
                ));
            }
        }
        check_g_idx(&params, g_idx, k)?;
        let scales = f16_scales(scales)?;
        let transposed = transpose(codes, n, k);
        let stored: Vec<u8> = zeros
            .iter()
            .map(|&z| (u32::from(z).wrapping_sub(1) & maxq) as u8)
            .collect();
        Ok(GptqTensor {
            params,
            n,
            k,
            qweight: pack_along_rows(&transposed, k, n, bits),
            qzeros: pack_along_cols(&stored, groups, n, bits),
            scales,
            g_idx: g_idx.to_vec(),
        })
    }

    /// Number of groups.
    pub fn n_groups(&self) -> usize {
        self.params.n_groups(self.k)
    }

    /// The integer codes, `[n, k]` row-major.
    pub fn codes(&self) -> Vec<u8> {
        let t = unpack_along_rows(&self.qweight, self.k, self.n, self.params.bits);
        transpose(&t, self.k, self.n)
    }

    /// The zero points, `[groups, n]`.
    pub fn zeros(&self) -> Vec<u8> {
        let mask = self.params.maxq();
        unpack_along_cols(&self.qzeros, self.n_groups(), self.n, self.params.bits)
            .into_iter()
            .map(|z| ((u32::from(z) + 1) & mask) as u8)
            .collect()
    }

    /// A row decoder over this tensor.
    pub fn view(&self) -> GptqView<'_> {
        GptqView {
            params: self.params,
            n: self.n,
            k: self.k,
            qweight: Cow::Borrowed(&self.qweight),
            qzeros: Cow::Borrowed(&self.qzeros),
            scales: Cow::Borrowed(&self.scales),
            g_idx: Cow::Borrowed(&self.g_idx),
        }
    }
}

impl QuantizedParts for GptqTensor {
    fn storage_type(&self) -> StorageType {
        self.params.storage_type()
    }

    fn shape(&self) -> Vec<u64> {
        vec![self.n as u64, self.k as u64]
    }

    fn part_bytes(&self) -> Vec<Vec<u8>> {
        vec![
            le_bytes(&self.qweight),
            le_bytes(&self.qzeros),
            le_bytes(&self.scales),
            le_bytes(&self.g_idx),
        ]
    }
}

/// Checks `g_idx`: entries in `0..groups`, and `j / group_size` without act-order.
fn check_g_idx(params: &GptqParams, g_idx: &[i32], k: usize) -> Result<(), String> {
    let groups = params.n_groups(k);
    let gl = params.group_len(k);
    for (j, &g) in g_idx.iter().enumerate() {
        if usize::try_from(g).map_or(true, |g| g >= groups) {
            return Err(format!("g_idx[{j}] = {g} is not a group (0..{groups})"));
        }
        if !params.act_order && g as usize != j / gl {
            return Err(format!(
                "g_idx[{j}] = {g}, but without act_order it must be j / group_size = {}",
                j / gl
            ));
        }
    }
    Ok(())
}

/// GPTQ's quantization grid of a group of values (AutoGPTQ `Quantizer.find_params`, per
/// channel, no MSE search): the range is widened to include 0; symmetric: `xmax =
/// max(|xmin|, xmax)`, `xmin = −xmax` when `xmin < 0`, zero point `(maxq + 1) / 2`;
/// asymmetric: zero point `round(−xmin / scale)` (half to even); an all-zero range becomes
/// `[−1, 1]`. Returns `(scale, zero)`.
pub fn minmax_params(values: impl Iterator<Item = f32>, maxq: f32, sym: bool) -> (f32, f32) {
    let (mut xmin, mut xmax) = values.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if sym {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let scale = (xmax - xmin) / maxq;
    let zero = if sym {
        (maxq + 1.0) / 2.0
    } else {
        (-xmin / scale).round_ties_even().clamp(0.0, maxq)
    };
    (scale, zero)
}

/// Round-to-nearest quantization of `w` (`[n, k]` row-major), per group of
/// `group_size` input columns (-1: the whole row), as AutoGPTQ's `Quantizer.find_params`
/// chooses scale and zero point:
///
/// * `xmin = min(min(x), 0)`, `xmax = max(max(x), 0)`; if `sym`, `xmax = max(|xmin|,
///   xmax)` and a negative `xmin` becomes `-xmax`; an all-zero group uses `[-1, 1]`;
/// * `scale = (xmax - xmin) / (2^bits - 1)`; `zero = 2^(bits-1)` if `sym`, else
///   `round(-xmin / scale)` (half to even);
/// * `q = clamp(round(x / s) + zero, 0, 2^bits - 1)` with `s` the scale rounded to f16
///   (the stored value, so decoding is the nearest grid point).
///
/// All arithmetic is f32. The result has `act_order = false` and `g_idx[j] = j / group_size`.
pub fn rtn_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    bits: u32,
    group_size: i32,
    sym: bool,
) -> Result<GptqTensor, String> {
    let params = GptqParams {
        bits,
        group_size,
        sym,
        act_order: false,
    };
    params.part_specs(&[n as u64, k as u64])?;
    check_len("the weight", w.len(), n * k)?;
    if w.iter().any(|v| !v.is_finite()) {
        return Err("the weight has a non-finite value".to_string());
    }
    let gl = params.group_len(k);
    let groups = params.n_groups(k);
    let maxq = params.maxq() as f32;
    let mut codes = vec![0u8; n * k];
    let mut scales = vec![0f32; groups * n];
    let mut zeros = vec![0u8; groups * n];
    for r in 0..n {
        for g in 0..groups {
            let x = &w[r * k + g * gl..r * k + ((g + 1) * gl).min(k)];
            let (scale, zero) = minmax_params(x.iter().copied(), maxq, sym);
            let s = f16::from_f32(scale).to_f32();
            for (j, &v) in x.iter().enumerate() {
                // A scale below f16's range (a group of tiny values) decodes every
                // code as 0: store the zero point.
                let q = if s > 0.0 {
                    ((v / s).round_ties_even() + zero).clamp(0.0, maxq)
                } else {
                    zero
                };
                codes[r * k + g * gl + j] = q as u8;
            }
            scales[g * n + r] = scale;
            zeros[g * n + r] = zero as u8;
        }
    }
    let g_idx: Vec<i32> = (0..k).map(|j| (j / gl) as i32).collect();
    GptqTensor::from_codes(
        &codes, &scales, &zeros, &g_idx, bits, group_size, sym, false,
    )
}

/// A row decoder over the parts of a `gptq` tensor.
#[derive(Clone, Debug)]
pub struct GptqView<'a> {
    params: GptqParams,
    n: usize,
    k: usize,
    qweight: Cow<'a, [i32]>,
    qzeros: Cow<'a, [i32]>,
    scales: Cow<'a, [f16]>,
    g_idx: Cow<'a, [i32]>,
}

impl<'a> GptqView<'a> {
    /// Builds the view from the parts `qweight`, `qzeros`, `scales`, `g_idx`, looked up
    /// through `parts`; checks every `g_idx` entry.
    pub fn from_parts(
        params: &GptqParams,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let specs = params.part_specs(shape)?;
        let (n, k) = matrix_shape("gptq", shape)?;
        let bytes = fetch_parts(&specs, parts)?;
        let g_idx = le_slice::<i32>(bytes[3]);
        check_g_idx(params, &g_idx, k)?;
        Ok(GptqView {
            params: *params,
            n,
            k,
            qweight: le_slice::<i32>(bytes[0]),
            qzeros: le_slice::<i32>(bytes[1]),
            scales: le_slice::<f16>(bytes[2]),
            g_idx,
        })
    }
}

impl QuantizedMatrix for GptqView<'_> {
    fn rows(&self) -> usize {
        self.n
    }

    fn cols(&self) -> usize {
        self.k
    }

    /// 4- and 8-bit codes in groups of consecutive columns (no act-order), rows in multiples
    /// of 8. Per group, with `t = sum_j x[j] q[i, j]` and `sx = sum_j x[j]`:
    /// `out[i] += s[i] t[i] - s[i] z[i] sx`; the words are read as they lie (`[k bits / 32, n]`,
    /// 8 consecutive outputs per vector).
    fn gemv_rows(&self, x: &[f32], start: usize, out: &mut [f32]) -> bool {
        let (n, k, bits) = (self.n, self.k, self.params.bits);
        let count = out.len();
        if !(bits == 4 || bits == 8)
            || !start.is_multiple_of(8)
            || !count.is_multiple_of(8)
            || start + count > n
        {
            return false;
        }
        let per_word = (32 / bits) as usize;
        let len = self.params.group_len(k);
        // Without act-order, g_idx[j] = j / len (checked when the view was built).
        if len == 0 || !len.is_multiple_of(per_word) || self.params.act_order {
            return false;
        }
        assert_eq!(
            x.len(),
            k,
            "GPTQ product: x has {} values for k = {k}",
            x.len()
        );
        out.fill(0.0);
        let mask = self.params.maxq();
        let nw = n * bits as usize / 32;
        let mut t = vec![0f32; count];
        for g in 0..self.params.n_groups(k) {
            let (j0, j1) = (g * len, ((g + 1) * len).min(k));
            let words = WordRows {
                words: &self.qweight,
                first: j0 / per_word,
                stride: n,
                bits,
            };
            words.products(&x[j0..j1], start, &mut t);
            let sx: f32 = x[j0..j1].iter().sum();
            let qz = &self.qzeros[g * nw..(g + 1) * nw];
            add_group_products(out, &t, sx, |ri| {
                let r = start + ri;
                let z = ((stream_get(|w| qz[w] as u32, r, bits) + 1) & mask) as f32;
                (self.scales[g * n + r].to_f32(), z)
            });
        }
        true
    }

    fn gemv_row_multiple(&self) -> usize {
        8
    }

    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]) {
        check_decode_args(self.n, self.k, start, count, dst);
        let (n, k, bits) = (self.n, self.k, self.params.bits);
        let groups = self.params.n_groups(k);
        let mask = self.params.maxq();
        let kw = k * bits as usize / 32;
        let nw = n * bits as usize / 32;
        // The tile's packed columns, one row of `kw` words per output row (qweight is
        // [kw, n], so each word row contributes `count` contiguous values).
        let mut words = vec![0u32; count * kw];
        for w in 0..kw {
            let src = &self.qweight[w * n + start..w * n + start + count];
            for (ri, &v) in src.iter().enumerate() {
                words[ri * kw + w] = v as u32;
            }
        }
        let mut zero = vec![0f32; groups];
        let mut scale = vec![0f32; groups];
        for ri in 0..count {
            let r = start + ri;
            for g in 0..groups {
                let qz = &self.qzeros[g * nw..(g + 1) * nw];
                let stored = stream_get(|w| qz[w] as u32, r, bits);
                zero[g] = ((stored + 1) & mask) as f32;
                scale[g] = self.scales[g * n + r].to_f32();
            }
            let row_words = &words[ri * kw..(ri + 1) * kw];
            let out = &mut dst[ri * k..(ri + 1) * k];
            // g_idx entries were checked to be groups.
            match bits {
                4 => decode_whole_words::<4>(row_words, &self.g_idx, &scale, &zero, out),
                8 => decode_whole_words::<8>(row_words, &self.g_idx, &scale, &zero, out),
                _ => {
                    for (j, (o, &g)) in out.iter_mut().zip(self.g_idx.iter()).enumerate() {
                        let q = stream_get(|w| row_words[w], j, bits) as f32;
                        let g = g as usize;
                        *o = scale[g] * (q - zero[g]);
                    }
                }
            }
        }
    }
}

/// Rows of packed `bits`-bit words (4 or 8) of a `[k bits / 32, n]` qweight from word row
/// `first` on: word `(w, r)` holds codes of inputs `w (32 / bits) ..` for output `r`.
struct WordRows<'a> {
    words: &'a [i32],
    first: usize,
    stride: usize,
    bits: u32,
}

impl WordRows<'_> {
    /// `t[i] = sum_j xs[j] q(j, r0 + i)` over the word rows that hold `xs`'s inputs.
    fn products(&self, xs: &[f32], r0: usize, t: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if t.len().is_multiple_of(8) && crate::quant::avx2_fma() {
            // SAFETY: AVX2 and FMA are present; `t` is whole vectors.
            match self.bits {
                4 => return unsafe { self.products_avx2::<4>(xs, r0, t) },
                8 => return unsafe { self.products_avx2::<8>(xs, r0, t) },
                _ => {}
            }
        }
        self.products_scalar(xs, r0, t);
    }

    /// [`products`](Self::products) one value at a time.
    fn products_scalar(&self, xs: &[f32], r0: usize, t: &mut [f32]) {
        let per_word = (32 / self.bits) as usize;
        let mask = (1u32 << self.bits) - 1;
        t.fill(0.0);
        for (wr, xw) in xs.chunks(per_word).enumerate() {
            let row = &self.words[(self.first + wr) * self.stride + r0..][..t.len()];
            for (ti, &word) in t.iter_mut().zip(row) {
                for (v, &xj) in xw.iter().enumerate() {
                    *ti += xj * ((word as u32) >> (v as u32 * self.bits) & mask) as f32;
                }
            }
        }
    }

    /// [`products`](Self::products) for 8 outputs per vector, two accumulators per vector;
    /// a word's codes come out by shifting it `BITS` at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn products_avx2<const BITS: i32>(&self, xs: &[f32], r0: usize, t: &mut [f32]) {
        use std::arch::x86_64::*;
        let per_word = (32 / BITS) as usize;
        let rows = xs.len().div_ceil(per_word);
        assert!(t.len().is_multiple_of(8) && xs.len() == rows * per_word);
        if rows > 0 {
            assert!((self.first + rows - 1) * self.stride + r0 + t.len() <= self.words.len());
        }
        // SAFETY: word reads are within the bound asserted above; `t` writes within its
        // length; `xs` reads within its length (rows * per_word values).
        unsafe {
            let mask = _mm256_set1_epi32((1i32 << BITS) - 1);
            for c in 0..t.len() / 8 {
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for wr in 0..rows {
                    let at = (self.first + wr) * self.stride + r0 + 8 * c;
                    let mut w = _mm256_loadu_si256(self.words.as_ptr().add(at).cast());
                    let xw = xs.as_ptr().add(wr * per_word);
                    for v in (0..per_word).step_by(2) {
                        let q0 = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
                        w = _mm256_srli_epi32::<BITS>(w);
                        a0 = _mm256_fmadd_ps(_mm256_set1_ps(*xw.add(v)), q0, a0);
                        let q1 = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
                        w = _mm256_srli_epi32::<BITS>(w);
                        a1 = _mm256_fmadd_ps(_mm256_set1_ps(*xw.add(v + 1)), q1, a1);
                    }
                }
                _mm256_storeu_ps(t.as_mut_ptr().add(8 * c), _mm256_add_ps(a0, a1));
            }
        }
    }
}

/// One row of `BITS`-bit codes from its packed words (widths that divide 32, so no value
/// straddles two words): `out[j] = scale[g] * (q_j - zero[g])` with `g = g_idx[j]`, as the
/// bit-stream path computes it, a word at a time.
fn decode_whole_words<const BITS: u32>(
    words: &[u32],
    g_idx: &[i32],
    scale: &[f32],
    zero: &[f32],
    out: &mut [f32],
) {
    let per_word = (32 / BITS) as usize;
    let mask = (1u32 << BITS) - 1;
    for ((&word, o), gs) in words
        .iter()
        .zip(out.chunks_exact_mut(per_word))
        .zip(g_idx.chunks_exact(per_word))
    {
        if gs.iter().all(|&g| g == gs[0]) {
            // One group for the whole word (always, without act-order): no lookups.
            let g = gs[0] as usize;
            let (s, z) = (scale[g], zero[g]);
            for (t, o) in o.iter_mut().enumerate() {
                *o = s * ((word >> (t as u32 * BITS) & mask) as f32 - z);
            }
        } else {
            for (t, (o, &g)) in o.iter_mut().zip(gs).enumerate() {
                let q = (word >> (t as u32 * BITS) & mask) as f32;
                let g = g as usize;
                *o = scale[g] * (q - zero[g]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 word-row products against the scalar ones, 4 and 8 bits (equal up to the fused
    /// multiply-add's rounding).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_word_row_products_equal_the_scalar_ones() {
        if !crate::quant::avx2_fma_or_skip() {
            return;
        }
        let mut next = crate::quant::xorshift(0x2545_f491_4f6c_dd1du64);
        let (stride, word_rows) = (40usize, 12usize);
        let words: Vec<i32> = (0..stride * word_rows).map(|_| next() as i32).collect();
        for bits in [4u32, 8] {
            let per_word = (32 / bits) as usize;
            let rows = WordRows {
                words: &words,
                first: 2,
                stride,
                bits,
            };
            let xs: Vec<f32> = (0..(word_rows - 2) * per_word)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            for (r0, count) in [(0, 40), (8, 16), (24, 8)] {
                let mut want = vec![0f32; count];
                let mut got = vec![f32::NAN; count];
                rows.products_scalar(&xs, r0, &mut want);
                // SAFETY: AVX2 and FMA checked above.
                unsafe {
                    match bits {
                        4 => rows.products_avx2::<4>(&xs, r0, &mut got),
                        _ => rows.products_avx2::<8>(&xs, r0, &mut got),
                    }
                };
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
                        "{bits} bits: {g} vs {w}"
                    );
                }
            }
        }
    }
}
