//! LLM.int8() weight storage: `int8_rowwise` (`SPEC.md` §10.3).
//!
//! Each output row `r` of an `[n, k]` weight is scaled by its absolute maximum
//! (bitsandbytes' `SCB`): `data[r][j] = round_half_even(w[r][j] × (127 / absmax[r]))`,
//! and decodes as `(data × scales[r]) × (1/127)` in f32. The `threshold` parameter is
//! the LLM.int8() outlier threshold the runtime applies to *activations* (columns of the
//! input with a value of magnitude ≥ threshold are multiplied in floating point); it
//! does not change the stored weight.

use std::borrow::Cow;

use super::{
    check_decode_args, check_len, fetch_parts, le_bytes, le_slice, matrix_shape, storage,
    ParamReader, PartSpec, QuantizedMatrix, QuantizedParts,
};
use crate::container::{ElemType, MetaValue, StorageType};

/// `1/127` rounded to f32, the factor bitsandbytes' `int8_vectorwise_dequant` uses.
pub const INV_127: f32 = 1.0 / 127.0;

/// Parameters of an `int8_rowwise` tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Int8Params {
    /// Outlier threshold for activations (≥ 0, finite; default 6.0; 0 = weight-only int8).
    pub threshold: f32,
}

impl Default for Int8Params {
    fn default() -> Self {
        Int8Params { threshold: 6.0 }
    }
}

impl Int8Params {
    /// Parses and checks the parameters of an `int8_rowwise` storage type.
    pub fn from_storage(t: &StorageType) -> Result<Self, String> {
        if t.name != "int8_rowwise" {
            return Err(format!("'{}' is not int8_rowwise", t.name));
        }
        let mut r = ParamReader::new(t);
        let p = Int8Params {
            threshold: r.f32("threshold")?,
        };
        r.finish()?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(format!(
                "threshold is {}; it must be finite and ≥ 0",
                self.threshold
            ));
        }
        Ok(())
    }

    /// The storage type with these parameters.
    pub fn storage_type(&self) -> StorageType {
        storage(
            "int8_rowwise",
            vec![("threshold", MetaValue::F32(self.threshold))],
        )
    }

    /// The parts of an `[n, k]` tensor, in canonical order.
    pub(crate) fn part_specs(&self, shape: &[u64]) -> Result<Vec<PartSpec>, String> {
        self.check()?;
        let (n, k) = matrix_shape("int8_rowwise", shape)?;
        Ok(vec![
            PartSpec::new(
                "data",
                ElemType::I8,
                (n as u64) * (k as u64),
                format!("n × k = {n} × {k} i8"),
            )?,
            PartSpec::new("scales", ElemType::F32, n as u64, format!("n = {n} f32"))?,
        ])
    }
}

/// An `int8_rowwise` tensor in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Tensor {
    /// The storage parameters.
    pub params: Int8Params,
    /// Rows (output features).
    pub n: usize,
    /// Columns (input features).
    pub k: usize,
    /// Codes, `[n, k]` row-major.
    pub data: Vec<i8>,
    /// Absolute maximum of each row (0 for an all-zero row).
    pub scales: Vec<f32>,
}

impl Int8Tensor {
    /// Quantizes `w` (`[n, k]` row-major) row by row.
    pub fn quantize(w: &[f32], n: usize, k: usize, params: &Int8Params) -> Result<Self, String> {
        params.part_specs(&[n as u64, k as u64])?;
        check_len("the weight", w.len(), n * k)?;
        let mut data = Vec::with_capacity(n * k);
        let mut scales = Vec::with_capacity(n);
        for row in w.chunks_exact(k) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if !amax.is_finite() {
                return Err("the weight has an infinite value".to_string());
            }
            scales.push(amax);
            let scale = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            // |w × scale| ≤ 127 up to rounding; the clamp only guards that rounding.
            data.extend(
                row.iter()
                    .map(|&v| (v * scale).round_ties_even().clamp(-127.0, 127.0) as i8),
            );
        }
        Ok(Int8Tensor {
            params: *params,
            n,
            k,
            data,
            scales,
        })
    }

    /// A row decoder over this tensor.
    pub fn view(&self) -> Int8View<'_> {
        Int8View {
            n: self.n,
            k: self.k,
            data: Cow::Borrowed(&self.data),
            scales: Cow::Borrowed(&self.scales),
        }
    }
}

impl QuantizedParts for Int8Tensor {
    fn storage_type(&self) -> StorageType {
        self.params.storage_type()
    }

    fn shape(&self) -> Vec<u64> {
        vec![self.n as u64, self.k as u64]
    }

    fn part_bytes(&self) -> Vec<Vec<u8>> {
        vec![le_bytes(&self.data), le_bytes(&self.scales)]
    }
}

/// A row decoder over the parts of an `int8_rowwise` tensor.
#[derive(Clone, Debug)]
pub struct Int8View<'a> {
    n: usize,
    k: usize,
    data: Cow<'a, [i8]>,
    scales: Cow<'a, [f32]>,
}

impl<'a> Int8View<'a> {
    /// Builds the view from the parts `data` and `scales`, looked up through `parts`.
    pub fn from_parts(
        params: &Int8Params,
        shape: &[u64],
        parts: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let specs = params.part_specs(shape)?;
        let (n, k) = matrix_shape("int8_rowwise", shape)?;
        let bytes = fetch_parts(&specs, parts)?;
        Ok(Int8View {
            n,
            k,
            data: le_slice::<i8>(bytes[0]),
            scales: le_slice::<f32>(bytes[1]),
        })
    }

    /// The codes, `[n, k]` row-major.
    pub fn data(&self) -> &[i8] {
        &self.data
    }

    /// The row scales (absmax of each row).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
}

impl QuantizedMatrix for Int8View<'_> {
    fn rows(&self) -> usize {
        self.n
    }

    fn cols(&self) -> usize {
        self.k
    }

    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]) {
        check_decode_args(self.n, self.k, start, count, dst);
        let k = self.k;
        for (ri, out) in dst.chunks_exact_mut(k).enumerate() {
            let r = start + ri;
            let s = self.scales[r];
            for (o, &q) in out.iter_mut().zip(&self.data[r * k..(r + 1) * k]) {
                *o = (f32::from(q) * s) * INV_127;
            }
        }
    }
}
