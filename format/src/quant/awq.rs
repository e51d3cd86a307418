//! AWQ storage: `awq`, the AutoAWQ GEMM layout (`SPEC.md` §10.5).
//!
//! An `[n, k]` weight is stored as 4-bit codes `q[r][j]`, a zero point and a scale per
//! (group of `group_size` input columns, output row):
//!
//! * `qweight` — i32 `[k, n/8]`: word `c` of input row `j` holds the codes of outputs
//!   `8c .. 8c+7`, output `8c + AWQ_ORDER[i]` in bits `4i .. 4i+3` (AutoAWQ's
//!   interleave `[0, 2, 4, 6, 1, 3, 5, 7]`);
//! * `qzeros` — i32 `[ceil(k/group_size), n/8]`, the zero points packed the same way, stored
//!   as they are (no offset);
//! * `scales` — f16 `[ceil(k/group_size), n]` (a k that is not a multiple of the group size
//!   leaves a shorter last group).
//!
//! Decoding: `w[r][j] = (q[r][j] − zero[g][r]) × scales[g][r]` in f32, `g = j / group_size`.

use std::borrow::Cow;

use half::f16;

use super::{
    add_group_products, check_decode_args, check_len, f16_scales, fetch_parts, le_bytes, le_slice,
    matrix_shape, storage, transpose, ParamReader, PartSpec, QuantizedMatrix, QuantizedParts,
};
use crate::container::{ElemType, MetaValue, StorageType};

/// AutoAWQ's packing order: nibble `i` of a word holds output `8c + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The nibble holding output `8c + o`: the inverse permutation of [`AWQ_ORDER`].
pub const AWQ_NIBBLE_OF: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Parameters of an `awq` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwqParams {
    /// Bits per code: 4 (the only width of the GEMM layout).
    pub bits: u32,
    /// Input columns per group (≥ 1; the last group may be shorter).
    pub group_size: u32,
}

impl AwqParams {
    /// 4-bit codes in groups of `group_size` inputs.
    pub fn new(group_size: u32) -> Self {
        AwqParams {
            bits: 4,
            group_size,
        }
    }

    /// Parses and checks the parameters of an `awq` storage type.
    pub fn from_storage(t: &StorageType) -> Result<Self, String> {
        if t.name != "awq" {
            return Err(format!("'{}' is not awq", t.name));
        }
        let mut r = ParamReader::new(t);
        let p = AwqParams {
            bits: r.u32("bits")?,
            group_size: r.u32("group_size")?,
        };
        r.finish()?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if self.bits != 4 {
            return Err(format!("bits is {}; allowed: 4", self.bits));
        }
        if self.group_size == 0 {
            return Err("group_size is 0; it must be positive".to_string());
        }
        Ok(())
    }

    /// The storage type with these parameters.
    pub fn storage_type(&self) -> StorageType {
        storage(
            "awq",
            vec![
                ("bits", MetaValue::U32(self.bits)),
                ("group_size", MetaValue::U32(self.group_size)),
            ],
        )
    }

    /// The parts of an `[n, k]` tensor, in canonical order.
    pub(crate) fn part_specs(&self, shape: &[u64]) -> Result<Vec<PartSpec>, String> {
        self.check()?;
        let (n, k) = matrix_shape("awq", shape)?;
        if n % 8 != 0 {
            return Err(format!(
                "n = {n} outputs do not fill whole words of eight 4-bit codes; n must be a multiple of 8"
            ));
        }
        // A k that is not a multiple of the group size leaves a shorter last group.
        let (g, n8) = (k.div_ceil(self.group_size as usize), n / 8);
        Ok(vec![
            PartSpec::new(
                "qweight",
                ElemType::I32,
                (k * n8) as u64,
                format!("[k, n/8] = [{k}, {n8}] i32"),
            )?,
            PartSpec::new(
                "qzeros",
                ElemType::I32,
                (g * n8) as u64,
                format!("[ceil(k/group_size), n/8] = [{g}, {n8}] i32"),
            )?,
            PartSpec::new(
                "scales",
                ElemType::F16,
                (g * n) as u64,
                format!("[ceil(k/group_size), n] = [{g}, {n}] f16"),
            )?,
        ])
    }
}

/// Packs `[rows, cols]` 4-bit codes (row-major, `cols` a multiple of 8) into
/// `[rows, cols/8]` words in AutoAWQ's interleaved order.
///
/// # Panics
/// If `values.len() != rows × cols` or `cols` is not a multiple of 8.
pub fn pack(values: &[u8], rows: usize, cols: usize) -> Vec<i32> {
    assert_eq!(values.len(), rows * cols, "awq::pack: wrong length");
    assert_eq!(cols % 8, 0, "awq::pack: cols must be a multiple of 8");
    values
        .chunks_exact(8)
        .map(|eight| {
            let mut w = 0u32;
            for (i, &o) in AWQ_ORDER.iter().enumerate() {
                w |= u32::from(eight[o] & 0x0F) << (4 * i);
            }
            w as i32
        })
        .collect()
}

/// The inverse of [`pack`]: `[rows, cols]` codes from `[rows, cols/8]` words.
pub fn unpack(words: &[i32]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|&w| AWQ_NIBBLE_OF.map(|i| ((w as u32) >> (4 * i) & 0x0F) as u8))
        .collect()
}

/// An `awq` tensor in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct AwqTensor {
    /// The storage parameters.
    pub params: AwqParams,
    /// Rows (output features).
    pub n: usize,
    /// Columns (input features).
    pub k: usize,
    /// Packed codes, `[k, n/8]`.
    pub qweight: Vec<i32>,
    /// Packed zero points, `[ceil(k/group_size), n/8]`.
    pub qzeros: Vec<i32>,
    /// Scales, `[ceil(k/group_size), n]`.
    pub scales: Vec<f16>,
}

impl AwqTensor {
    /// Packs integer codes produced by an AWQ quantizer: `codes` `[n, k]` row-major,
    /// `scales` and `zeros` `[ceil(k/group_size), n]` (scales rounded to f16 here), every code
    /// and zero point `≤ 15`.
    pub fn from_codes(
        codes: &[u8],
        scales: &[f32],
        zeros: &[u8],
        n: usize,
        k: usize,
        group_size: u32,
    ) -> Result<Self, String> {
        let params = AwqParams::new(group_size);
        params.part_specs(&[n as u64, k as u64])?;
        let groups = k.div_ceil(group_size as usize);
        check_len("codes", codes.len(), n * k)?;
        check_len("scales", scales.len(), groups * n)?;
        check_len("zeros", zeros.len(), groups * n)?;
        if let Some(q) = codes.iter().chain(zeros).find(|&&q| q > 15) {
            return Err(format!("code or zero point {q} does not fit in 4 bits"));
        }
        let scales = f16_scales(scales)?;
        let transposed = transpose(codes, n, k);
        Ok(AwqTensor {
            params,
            n,
            k,
            qweight: pack(&transposed, k, n),
            qzeros: pack(zeros, groups, n),
            scales,
        })
    }

    /// The integer codes, `[n, k]` row-major.
    pub fn codes(&self) -> Vec<u8> {
        transpose(&unpack(&self.qweight), self.k, self.n)
    }

    /// The zero points, `[ceil(k/group_size), n]`.
    pub fn zeros(&self) -> Vec<u8> {
        unpack(&self.qzeros)
    }

    /// A row decoder over this tensor.
    pub fn view(&self) -> AwqView<'_> {
        AwqView {
            n: self.n,
            k: self.k,
            group_size: self.params.group_size as usize,
            qweight: Cow::Borrowed(&self.qweight),
            qzeros: Cow::Borrowed(&self.qzeros),
            scales: Cow::Borrowed(&self.scales),
        }
    }
}

impl QuantizedParts for AwqTensor {
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
        ]
    }
}

/// AWQ's (llm-awq's) asymmetric grid of a group, without requiring 0 in `[min, max]`:
/// `scale = max(max − min, 1e-5) / maxq`, zero point `clamp(−round(min / scale), 0, maxq)`
/// (half to even). Returns `(scale, zero)`.
pub fn group_params(group: &[f32], maxq: f32) -> (f32, f32) {
    let (lo, hi) = group
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let scale = (hi - lo).max(1e-5) / maxq;
    let zero = (-(lo / scale).round_ties_even()).clamp(0.0, maxq);
    (scale, zero)
}

/// Round-to-nearest 4-bit quantization of `w` (`[n, k]` row-major) with a zero point
/// per group, as AutoAWQ's `pseudo_quantize_tensor` (zero-point mode) chooses it:
/// `scale = max(xmax - xmin, 1e-5) / 15`, `zero = clamp(-round(xmin / scale), 0, 15)`,
/// `q = clamp(round(x / s) + zero, 0, 15)` (half to even, f32) with `s` the scale
/// rounded to f16 (the stored value). The AWQ algorithm scales `w` before calling this.
pub fn rtn_quantize(w: &[f32], n: usize, k: usize, group_size: u32) -> Result<AwqTensor, String> {
    AwqParams::new(group_size).part_specs(&[n as u64, k as u64])?;
    check_len("the weight", w.len(), n * k)?;
    if w.iter().any(|v| !v.is_finite()) {
        return Err("the weight has a non-finite value".to_string());
    }
    let gs = group_size as usize;
    let groups = k.div_ceil(gs);
    let mut codes = vec![0u8; n * k];
    let mut scales = vec![0f32; groups * n];
    let mut zeros = vec![0u8; groups * n];
    for r in 0..n {
        for g in 0..groups {
            let x = &w[r * k + g * gs..r * k + ((g + 1) * gs).min(k)];
            let (scale, zero) = group_params(x, 15.0);
            let s = f16::from_f32(scale).to_f32();
            for (j, &v) in x.iter().enumerate() {
                codes[r * k + g * gs + j] =
                    ((v / s).round_ties_even() + zero).clamp(0.0, 15.0) as u8;
            }
            scales[g * n + r] = scale;
            zeros[g * n + r] = zero as u8;
        }
    }
    AwqTensor::from_codes(&codes, &scales, &zeros, n, k, group_size)
}

/// Word columns one call of [`group_products`] takes (64 rows: 8 vector accumulators).
const GEMV_WORDS: usize = 8;

/// `t[8 c + i] = sum_jj xs[jj] q(jj, c, i)` for `t.len() / 8` (at most [`GEMV_WORDS`]) word
/// columns, `q(jj, c, i)` nibble `AWQ_NIBBLE_OF[i]` of word `qweight[row0 + jj * stride + c]`.
fn group_products(xs: &[f32], qweight: &[i32], row0: usize, stride: usize, t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::avx2_fma() {
        // SAFETY: AVX2 and FMA are present.
        unsafe { avx2::group_products(xs, qweight, row0, stride, t) };
        return;
    }
    group_products_scalar(xs, qweight, row0, stride, t);
}

/// [`group_products`] one value at a time (processors without AVX2 and FMA).
fn group_products_scalar(xs: &[f32], qweight: &[i32], row0: usize, stride: usize, t: &mut [f32]) {
    t.fill(0.0);
    for (jj, &xj) in xs.iter().enumerate() {
        let words = &qweight[row0 + jj * stride..][..t.len() / 8];
        for (c, &w) in words.iter().enumerate() {
            for (i, &nibble) in AWQ_NIBBLE_OF.iter().enumerate() {
                t[8 * c + i] += xj * ((w as u32) >> (4 * nibble) & 0x0F) as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{AWQ_NIBBLE_OF, GEMV_WORDS};
    use std::arch::x86_64::*;

    /// [`super::group_products`] with the 8 nibbles of a word in the 8 lanes of a vector and
    /// the accumulators in registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group_products(
        xs: &[f32],
        qweight: &[i32],
        row0: usize,
        stride: usize,
        t: &mut [f32],
    ) {
        let words = t.len() / 8;
        assert!(words <= GEMV_WORDS && t.len() == 8 * words);
        if let Some(last) = xs.len().checked_sub(1) {
            assert!(row0 + last * stride + words <= qweight.len());
        }
        let shifts = AWQ_NIBBLE_OF.map(|n| 4 * n as i32);
        // SAFETY: 8 i32 read from an array of 8; word reads are within the bound asserted
        // above, `t` writes within its length.
        unsafe {
            let shifts = _mm256_loadu_si256(shifts.as_ptr().cast());
            let mask = _mm256_set1_epi32(0x0F);
            let mut acc = [_mm256_setzero_ps(); GEMV_WORDS];
            for (jj, &xj) in xs.iter().enumerate() {
                let xv = _mm256_set1_ps(xj);
                let row = qweight.as_ptr().add(row0 + jj * stride);
                for (c, a) in acc.iter_mut().enumerate().take(words) {
                    let w = _mm256_set1_epi32(*row.add(c));
                    let q = _mm256_and_si256(_mm256_srlv_epi32(w, shifts), mask);
                    *a = _mm256_fmadd_ps(xv, _mm256_cvtepi32_ps(q), *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(words) {
                _mm256_storeu_ps(t.as_mut_ptr().add(8 * c), *a);
            }
        }
    }
}

/// A row decoder over the parts of an `awq` tensor.
#[derive(Clone, Debug)]
pub struct AwqView<'a> {
    n: usize,
    k: usize,
    group_size: usize,
    qweight: Cow<'a, [i32]>,
    qzeros: Cow<'a, [i32]>,
    scales: Cow<'a, [f16]>,
}

impl<'a> AwqView<'a> {
    /// Builds the view from the parts `qweight`, `qzeros`, `scales`, looked up through `parts`.
    pub fn from_parts(
        params: &AwqParams,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let specs = params.part_specs(shape)?;
        let (n, k) = matrix_shape("awq", shape)?;
        let bytes = fetch_parts(&specs, parts)?;
        Ok(AwqView {
            n,
            k,
            group_size: params.group_size as usize,
            qweight: le_slice::<i32>(bytes[0]),
            qzeros: le_slice::<i32>(bytes[1]),
            scales: le_slice::<f16>(bytes[2]),
        })
    }
}

impl QuantizedMatrix for AwqView<'_> {
    fn rows(&self) -> usize {
        self.n
    }

    fn cols(&self) -> usize {
        self.k
    }

    /// Rows in whole words (multiples of 8). Per group of k, with `t = sum_j x[j] q[i, j]`
    /// and `sx = sum_j x[j]`: `out[i] += s[i] t[i] - s[i] z[i] sx`, so the inner loop is one
    /// multiply-add per weight on the packed words as they lie ([k, n / 8]).
    fn gemv_rows(&self, x: &[f32], start: usize, out: &mut [f32]) -> bool {
        let count = out.len();
        if !start.is_multiple_of(8) || !count.is_multiple_of(8) || start + count > self.n {
            return false;
        }
        assert_eq!(
            x.len(),
            self.k,
            "AWQ product: x has {} values for k = {}",
            x.len(),
            self.k
        );
        out.fill(0.0);
        let (n, k, gs) = (self.n, self.k, self.group_size);
        let n8 = n / 8;
        let (c0, words) = (start / 8, count / 8);
        let mut t = vec![0f32; count];
        for g in 0..k.div_ceil(gs) {
            let (j0, j1) = (g * gs, ((g + 1) * gs).min(k));
            for cb in (0..words).step_by(GEMV_WORDS) {
                let wn = GEMV_WORDS.min(words - cb);
                let tb = &mut t[8 * cb..8 * (cb + wn)];
                group_products(&x[j0..j1], &self.qweight, j0 * n8 + c0 + cb, n8, tb);
            }
            let sx: f32 = x[j0..j1].iter().sum();
            let zeros = &self.qzeros[g * n8 + c0..g * n8 + c0 + words];
            add_group_products(out, &t, sx, |ri| {
                let zw = zeros[ri / 8] as u32;
                let z = (zw >> (4 * AWQ_NIBBLE_OF[ri % 8]) & 0x0F) as f32;
                (self.scales[g * n + start + ri].to_f32(), z)
            });
        }
        true
    }

    fn gemv_row_multiple(&self) -> usize {
        8
    }

    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]) {
        check_decode_args(self.n, self.k, start, count, dst);
        let (n, k, gs) = (self.n, self.k, self.group_size);
        let n8 = n / 8;
        let groups = k.div_ceil(gs);
        // Per tile row: its word column and nibble shift, and its zero and scale per group.
        let col: Vec<usize> = (start..start + count).map(|r| r / 8).collect();
        let shift: Vec<u32> = (start..start + count)
            .map(|r| 4 * AWQ_NIBBLE_OF[r % 8] as u32)
            .collect();
        let mut zero = vec![0f32; groups * count];
        let mut scale = vec![0f32; groups * count];
        for g in 0..groups {
            for ri in 0..count {
                let z = (self.qzeros[g * n8 + col[ri]] as u32) >> shift[ri] & 0x0F;
                zero[g * count + ri] = z as f32;
                scale[g * count + ri] = self.scales[g * n + start + ri].to_f32();
            }
        }
        if start.is_multiple_of(8) && count.is_multiple_of(8) {
            // Whole words: word column c0 + ci holds tile rows 8 ci .. 8 ci + 8.
            let c0 = start / 8;
            for j in 0..k {
                let words = &self.qweight[j * n8 + c0..j * n8 + c0 + count / 8];
                let g = j / gs;
                let (zg, sg) = (
                    &zero[g * count..(g + 1) * count],
                    &scale[g * count..(g + 1) * count],
                );
                for (ci, &word) in words.iter().enumerate() {
                    for (i, &nibble) in AWQ_NIBBLE_OF.iter().enumerate() {
                        let ri = 8 * ci + i;
                        let q = ((word as u32) >> (4 * nibble) & 0x0F) as f32;
                        dst[ri * k + j] = (q - zg[ri]) * sg[ri];
                    }
                }
            }
            return;
        }
        for j in 0..k {
            let words = &self.qweight[j * n8..(j + 1) * n8];
            let g = j / gs;
            let (zg, sg) = (
                &zero[g * count..(g + 1) * count],
                &scale[g * count..(g + 1) * count],
            );
            for ri in 0..count {
                let q = ((words[col[ri]] as u32) >> shift[ri] & 0x0F) as f32;
                dst[ri * k + j] = (q - zg[ri]) * sg[ri];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 group product against the scalar one on pseudo-random words and inputs (equal
    /// up to the fused multiply-add's rounding).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_group_products_equal_the_scalar_ones() {
        if !crate::quant::avx2_fma_or_skip() {
            return;
        }
        let mut next = crate::quant::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let (stride, rows) = (11usize, 37usize);
        let qweight: Vec<i32> = (0..stride * rows).map(|_| next() as i32).collect();
        let xs: Vec<f32> = (0..rows)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        for (row0, words) in [(0, 8), (3, 5), (2, 1)] {
            let mut want = vec![0f32; 8 * words];
            let mut got = vec![f32::NAN; 8 * words];
            group_products_scalar(&xs, &qweight, row0, stride, &mut want);
            // SAFETY: AVX2 and FMA checked above.
            unsafe { avx2::group_products(&xs, &qweight, row0, stride, &mut got) };
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }
}
