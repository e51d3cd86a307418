//! Quantized storage types and their codecs (format 1.1, `SPEC.md` §10).
//!
//! | storage type    | module    | scheme |
//! |-----------------|-----------|--------|
//! | `nf4`, `fp4`    | [`bnb4`]  | bitsandbytes 4-bit blockwise (optionally with 8-bit "double-quantized" block scales, [`dynamic_map`]) |
//! | `int8_rowwise`  | [`int8`]  | LLM.int8() weights: one absmax scale per output row |
//! | `gptq`          | [`gptq`]  | the AutoGPTQ / Hugging Face GPTQ checkpoint layout (2, 3, 4, 8 bits; also used for RTN) |
//! | `awq`           | [`awq`]   | the AutoAWQ GEMM layout (4 bits) |
//!
//! Everything here is pure computation: no I/O. Each type has
//! * a parameter struct parsed from / turned into a [`StorageType`] (the validation of
//!   `container::validate_storage` goes through it, so the reader and the codecs agree);
//! * an owned tensor (`Bnb4Tensor`, `Int8Tensor`, `GptqTensor`, `AwqTensor`) built by a
//!   quantizer or from integer codes, which hands its parts to the writer through
//!   [`QuantizedParts`];
//! * a view that borrows the parts from the file's bytes (`Bnb4View`, ...) and implements
//!   [`QuantizedMatrix`], the row decoder the runtime's matmul uses.
//!
//! [`quantized_view`] builds the right view from a tensor's storage type, shape and parts.
//! Weights are Hugging Face `Linear` weights, logical shape `[n, k]` = `[out, in]`.

pub mod awq;
pub mod bnb4;
pub mod dynamic_map;
pub mod gptq;
pub mod int8;

use std::borrow::Cow;

use half::{bf16, f16};

use crate::container::{ElemType, MetaValue, Metadata, PartInfo, StorageType, TensorPlan};

/// A quantized matrix that can decode runs of its rows to `f32`.
///
/// The logical matrix is `rows() × cols()`, row-major; for a `Linear` weight a row is
/// one output channel (`k` input values).
pub trait QuantizedMatrix {
    /// Number of rows (`n`, output features).
    fn rows(&self) -> usize;
    /// Number of columns (`k`, input features).
    fn cols(&self) -> usize;
    /// Decodes rows `start..start + count` into `dst` (`count × cols()` values, row-major).
    ///
    /// # Panics
    /// If `start + count > rows()` or `dst.len() != count * cols()` (caller bugs; a view
    /// that was built successfully never fails on valid arguments).
    fn decode_rows(&self, start: usize, count: usize, dst: &mut [f32]);
    /// `out[i] = sum_j x[j] * w[start + i, j]` for `out.len()` rows from `start`, reading the
    /// codec's own layout (faster for one input row than decoding rows first), where the codec
    /// has such a product and `start`, `out.len()` suit it
    /// ([`gemv_row_multiple`](Self::gemv_row_multiple) says which); returns false, `out`
    /// untouched, otherwise.
    fn gemv_rows(&self, _x: &[f32], _start: usize, _out: &mut [f32]) -> bool {
        false
    }
    /// Row alignment the codec's [`gemv_rows`](Self::gemv_rows) needs for `start` and the row
    /// count (0: it has none).
    fn gemv_row_multiple(&self) -> usize {
        0
    }
    /// The whole matrix as `f32`, row-major.
    fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        self.decode_rows(0, self.rows(), &mut out);
        out
    }
}

/// What a quantized tensor gives the writer ([`crate::container::QrtWriter`]).
pub trait QuantizedParts {
    /// The storage type (name and parameters) to record in the directory.
    fn storage_type(&self) -> StorageType;
    /// The logical shape (`[n, k]` for a weight).
    fn shape(&self) -> Vec<u64>;
    /// `(role, element type, byte length)` of each part, in the canonical order of
    /// `SPEC.md` §10 (the order [`QuantizedParts::part_bytes`] returns them in).
    fn plan_parts(&self) -> Vec<(String, ElemType, u64)> {
        // The shape was accepted when the tensor was built.
        let specs = part_specs(&self.storage_type(), &self.shape())
            .and_then(Result::ok)
            .unwrap_or_default();
        specs
            .iter()
            .map(|s| (s.role.to_string(), s.elem, s.nbytes))
            .collect()
    }
    /// The bytes of each part (little-endian), in the order of [`QuantizedParts::plan_parts`].
    fn part_bytes(&self) -> Vec<Vec<u8>>;
    /// A [`TensorPlan`] for this tensor under `name`.
    fn tensor_plan(&self, name: &str) -> TensorPlan {
        TensorPlan {
            name: name.to_string(),
            shape: self.shape(),
            storage: self.storage_type(),
            parts: self.plan_parts(),
        }
    }
}

/// Names of the quantized storage types defined in format 1.1.
pub const QUANTIZED_STORAGE_TYPES: [&str; 5] = ["nf4", "fp4", "int8_rowwise", "gptq", "awq"];

/// Builds the row decoder for a tensor of storage type `storage` and logical shape
/// `shape`, borrowing its parts through `part` (role → bytes, e.g. from
/// [`crate::container::QrtFile::part_bytes`]).
///
/// Checks the parameters, every part's presence and byte length, and the data-level
/// invariants a directory check cannot see (code ranges, `g_idx` entries); refuses
/// dense and unknown storage types.
pub fn quantized_view<'a>(
    storage: &StorageType,
    shape: &[u64],
    part: &dyn Fn(&str) -> Option<&'a [u8]>,
) -> Result<Box<dyn QuantizedMatrix + Send + Sync + 'a>, String> {
    match storage.name.as_str() {
        "nf4" | "fp4" => {
            let p = bnb4::Bnb4Params::from_storage(storage)?;
            Ok(Box::new(bnb4::Bnb4View::from_parts(&p, shape, part)?))
        }
        "int8_rowwise" => {
            let p = int8::Int8Params::from_storage(storage)?;
            Ok(Box::new(int8::Int8View::from_parts(&p, shape, part)?))
        }
        "gptq" => {
            let p = gptq::GptqParams::from_storage(storage)?;
            Ok(Box::new(gptq::GptqView::from_parts(&p, shape, part)?))
        }
        "awq" => {
            let p = awq::AwqParams::from_storage(storage)?;
            Ok(Box::new(awq::AwqView::from_parts(&p, shape, part)?))
        }
        other => Err(format!(
            "storage type '{other}' is not a quantized type (quantized: {})",
            QUANTIZED_STORAGE_TYPES.join(", ")
        )),
    }
}

/// Validates the parameters and parts of a quantized storage type for `shape` (the
/// checks of `SPEC.md` §10). `None` if `t` is not a quantized type.
pub(crate) fn validate(
    t: &StorageType,
    shape: &[u64],
    parts: &[PartInfo],
) -> Option<Result<(), String>> {
    part_specs(t, shape).map(|specs| specs.and_then(|specs| check_parts(&t.name, &specs, parts)))
}

/// The parts a quantized storage type `t` has for `shape`, or the reason the parameters or
/// shape are invalid. `None` if `t` is not a quantized type.
fn part_specs(t: &StorageType, shape: &[u64]) -> Option<Result<Vec<PartSpec>, String>> {
    Some(match t.name.as_str() {
        "nf4" | "fp4" => bnb4::Bnb4Params::from_storage(t).and_then(|p| p.part_specs(shape)),
        "int8_rowwise" => int8::Int8Params::from_storage(t).and_then(|p| p.part_specs(shape)),
        "gptq" => gptq::GptqParams::from_storage(t).and_then(|p| p.part_specs(shape)),
        "awq" => awq::AwqParams::from_storage(t).and_then(|p| p.part_specs(shape)),
        _ => return None,
    })
}

/// A floating-point type named by a storage parameter (`compute_dtype`, `orig_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    /// IEEE binary16 (`"f16"`).
    F16,
    /// bfloat16 (`"bf16"`).
    Bf16,
    /// IEEE binary32 (`"f32"`).
    F32,
}

/// `x` with its low `DROP` mantissa bits rounded off (to nearest, ties to even), on the f32
/// bits: exact rounding to a narrower float for values in that float's normal range (and zero).
#[inline]
fn round_bits<const DROP: u32>(x: f32) -> f32 {
    let bits = x.to_bits();
    let lsb = (bits >> DROP) & 1;
    let half = (1u32 << (DROP - 1)) - 1;
    f32::from_bits((bits + half + lsb) & !((1u32 << DROP) - 1))
}

impl FloatDtype {
    /// The parameter value: `"f16"`, `"bf16"` or `"f32"`.
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F16 => "f16",
            FloatDtype::Bf16 => "bf16",
            FloatDtype::F32 => "f32",
        }
    }

    /// The dtype named `s`, if it is one of `allowed`.
    fn parse(s: &str, allowed: &[FloatDtype]) -> Option<FloatDtype> {
        allowed.iter().copied().find(|d| d.name() == s)
    }

    /// `x` rounded to this dtype (round to nearest even), as `f32`.
    ///
    /// Values in f16's normal range are rounded in place on the f32 bits (keep 10 mantissa
    /// bits, ties to even), which is exact there and much faster than a conversion; others
    /// (f16 overflow, subnormals, NaN) go through the `half` conversion.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            FloatDtype::F16 => {
                let exp = (x.to_bits() >> 23) & 0xFF;
                // f16 normal exponents are -14..=15, i.e. biased f32 exponents 113..=142; 142
                // may round up past f16's largest finite value, so it takes the slow path.
                if (113..142).contains(&exp) {
                    round_bits::<13>(x)
                } else {
                    f16::from_f32(x).to_f32()
                }
            }
            FloatDtype::Bf16 => {
                if x.is_finite() && ((x.to_bits() >> 23) & 0xFF) < 0xFE {
                    round_bits::<16>(x)
                } else {
                    bf16::from_f32(x).to_f32()
                }
            }
            FloatDtype::F32 => x,
        }
    }

    /// Whether, for a normal `s`, every product `c * s` with `c` zero or of magnitude in
    /// `[lo, hi]` is a normal f32 (or zero) that [`round`](Self::round) rounds on its bits, so
    /// that [`round_in_range`](Self::round_in_range) gives the same result without checks.
    pub(crate) fn products_in_range(self, s: f32, lo: f32, hi: f32) -> bool {
        let (min, max) = match self {
            FloatDtype::F16 => (1.0 / 16384.0, 32768.0), // f16's normal range, [2^-14, 2^15)
            FloatDtype::Bf16 => (f32::MIN_POSITIVE, 2f32.powi(127)),
            FloatDtype::F32 => (f32::MIN_POSITIVE, f32::INFINITY),
        };
        s.is_normal() && s.abs() * lo >= min && s.abs() * hi < max
    }

    /// [`round`](Self::round) of a value for which
    /// [`products_in_range`](Self::products_in_range) holds (or zero): no branch per value.
    #[inline]
    pub(crate) fn round_in_range(self, x: f32) -> f32 {
        match self {
            FloatDtype::F16 => round_bits::<13>(x),
            FloatDtype::Bf16 => round_bits::<16>(x),
            FloatDtype::F32 => x,
        }
    }
}

/// One required part of a quantized tensor: role, element type and exact byte length.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PartSpec {
    pub role: &'static str,
    pub elem: ElemType,
    pub nbytes: u64,
    /// How the length follows from the shape, for error messages (e.g. `"n × 4"`).
    pub formula: String,
}

impl PartSpec {
    /// A part of `count` elements of `elem`; refuses byte lengths that overflow `u64`.
    fn new(
        role: &'static str,
        elem: ElemType,
        count: u64,
        formula: String,
    ) -> Result<PartSpec, String> {
        let nbytes = count
            .checked_mul(elem.size_bytes())
            .ok_or_else(|| format!("part '{role}' would be larger than 2^64 bytes"))?;
        Ok(PartSpec {
            role,
            elem,
            nbytes,
            formula,
        })
    }
}

/// Checks that `parts` are exactly the parts `specs` require (in any order).
fn check_parts(type_name: &str, specs: &[PartSpec], parts: &[PartInfo]) -> Result<(), String> {
    for s in specs {
        let p = parts
            .iter()
            .find(|p| p.role == s.role)
            .ok_or_else(|| format!("storage type '{type_name}' needs a part '{}'", s.role))?;
        if p.elem != s.elem {
            return Err(format!(
                "part '{}' has element type {}, expected {}",
                s.role,
                p.elem.name(),
                s.elem.name()
            ));
        }
        if p.nbytes != s.nbytes {
            return Err(format!(
                "part '{}' is {} bytes, expected {} ({})",
                s.role, p.nbytes, s.nbytes, s.formula
            ));
        }
    }
    if let Some(extra) = parts
        .iter()
        .find(|p| !specs.iter().any(|s| s.role == p.role))
    {
        let roles: Vec<&str> = specs.iter().map(|s| s.role).collect();
        return Err(format!(
            "unexpected part '{}' for storage type '{type_name}' with these parameters (parts: {})",
            extra.role,
            roles.join(", ")
        ));
    }
    Ok(())
}

/// Fetches every part in `specs` through `part` and checks its byte length.
fn fetch_parts<'a>(
    specs: &[PartSpec],
    part: &dyn Fn(&str) -> Option<&'a [u8]>,
) -> Result<Vec<&'a [u8]>, String> {
    specs
        .iter()
        .map(|s| {
            let bytes = part(s.role).ok_or_else(|| format!("missing part '{}'", s.role))?;
            if bytes.len() as u64 != s.nbytes {
                return Err(format!(
                    "part '{}' is {} bytes, expected {} ({})",
                    s.role,
                    bytes.len(),
                    s.nbytes,
                    s.formula
                ));
            }
            Ok(bytes)
        })
        .collect()
}

/// Reads typed storage parameters and refuses unknown or mistyped ones.
struct ParamReader<'a> {
    t: &'a StorageType,
    known: Vec<&'static str>,
}

impl<'a> ParamReader<'a> {
    fn new(t: &'a StorageType) -> Self {
        ParamReader {
            t,
            known: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str, ty: &str) -> Result<&'a MetaValue, String> {
        self.known.push(key);
        self.t.params.get(key).ok_or_else(|| {
            format!(
                "storage type '{}' needs parameter '{key}' ({ty})",
                self.t.name
            )
        })
    }

    fn wrong(&self, key: &str, ty: &str, v: &MetaValue) -> String {
        format!(
            "parameter '{key}' of storage type '{}' must be {ty}, found {}",
            self.t.name,
            v.type_name()
        )
    }

    fn u32(&mut self, key: &'static str) -> Result<u32, String> {
        match self.get(key, "u32")? {
            MetaValue::U32(v) => Ok(*v),
            v => Err(self.wrong(key, "u32", v)),
        }
    }

    fn i32(&mut self, key: &'static str) -> Result<i32, String> {
        match self.get(key, "i32")? {
            MetaValue::I32(v) => Ok(*v),
            v => Err(self.wrong(key, "i32", v)),
        }
    }

    fn f32(&mut self, key: &'static str) -> Result<f32, String> {
        match self.get(key, "f32")? {
            MetaValue::F32(v) => Ok(*v),
            v => Err(self.wrong(key, "f32", v)),
        }
    }

    fn bool(&mut self, key: &'static str) -> Result<bool, String> {
        match self.get(key, "bool")? {
            MetaValue::Bool(v) => Ok(*v),
            v => Err(self.wrong(key, "bool", v)),
        }
    }

    fn dtype(&mut self, key: &'static str, allowed: &[FloatDtype]) -> Result<FloatDtype, String> {
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        match self.get(key, "string")? {
            MetaValue::Str(s) => FloatDtype::parse(s, allowed).ok_or_else(|| {
                format!(
                    "parameter '{key}' of storage type '{}' is '{s}'; allowed: {}",
                    self.t.name,
                    names.join(", ")
                )
            }),
            v => Err(self.wrong(key, "string", v)),
        }
    }

    /// Refuses parameters that were not read.
    fn finish(self) -> Result<(), String> {
        match self
            .t
            .params
            .iter()
            .find(|(k, _)| !self.known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(format!(
                "storage type '{}' has no parameter '{k}' (parameters: {})",
                self.t.name,
                self.known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// A storage type named `name` with parameters `params`.
fn storage(name: &str, params: Vec<(&str, MetaValue)>) -> StorageType {
    let mut m = Metadata::new();
    for (k, v) in params {
        m.insert(k, v);
    }
    StorageType {
        name: name.to_string(),
        params: m,
    }
}

/// A 2-D shape `[n, k]` as `usize`s; refuses other ranks and sizes that overflow.
fn matrix_shape(type_name: &str, shape: &[u64]) -> Result<(usize, usize), String> {
    let &[n, k] = shape else {
        return Err(format!(
            "storage type '{type_name}' holds a matrix [n, k]; shape {shape:?} has {} dimensions",
            shape.len()
        ));
    };
    let fit = |d: u64| usize::try_from(d).map_err(|_| format!("dimension {d} is too large"));
    let (n, k) = (fit(n)?, fit(k)?);
    if n == 0 || k == 0 {
        return Err(format!("shape {shape:?} has an empty dimension"));
    }
    n.checked_mul(k)
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    Ok((n, k))
}

/// Checks the element count of a codec input.
fn check_len(what: &str, len: usize, expected: usize) -> Result<(), String> {
    if len == expected {
        Ok(())
    } else {
        Err(format!("{what} has {len} values, expected {expected}"))
    }
}

/// Checks the arguments of [`QuantizedMatrix::decode_rows`].
fn check_decode_args(rows: usize, cols: usize, start: usize, count: usize, dst: &[f32]) {
    assert!(
        start.checked_add(count).is_some_and(|end| end <= rows),
        "decode_rows: rows {start}..{start}+{count} out of 0..{rows}"
    );
    assert_eq!(
        dst.len(),
        count * cols,
        "decode_rows: destination holds {} values, expected {count} × {cols}",
        dst.len()
    );
}

/// A scalar that parts store little-endian and that any bit pattern makes valid.
trait LeScalar: Copy + Send + Sync + 'static {
    /// Size in bytes.
    const SIZE: usize;
    /// From `SIZE` little-endian bytes.
    fn from_le(b: &[u8]) -> Self;
    /// Appends the little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
}

impl LeScalar for i8 {
    const SIZE: usize = 1;
    fn from_le(b: &[u8]) -> Self {
        i8::from_le_bytes([b[0]])
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl LeScalar for i32 {
    const SIZE: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        i32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl LeScalar for f32 {
    const SIZE: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl LeScalar for f16 {
    const SIZE: usize = 2;
    fn from_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
}

/// The elements of a little-endian part: borrowed in place when the bytes are aligned
/// for `T` (parts in a file are 256-byte aligned) and the target is little-endian,
/// otherwise copied. `bytes.len()` must be a multiple of `T::SIZE` (checked by the callers).
fn le_slice<T: LeScalar>(bytes: &[u8]) -> Cow<'_, [T]> {
    if cfg!(target_endian = "little") {
        // SAFETY: `T` is `i8`, `i32`, `f32` or `f16` (a transparent `u16`): plain scalars without
        // padding for which every bit pattern is a valid value, so viewing initialized
        // bytes as `T` is sound; `align_to` only returns the correctly aligned middle.
        let (head, mid, tail) = unsafe { bytes.align_to::<T>() };
        if head.is_empty() && tail.is_empty() {
            return Cow::Borrowed(mid);
        }
    }
    Cow::Owned(bytes.chunks_exact(T::SIZE).map(T::from_le).collect())
}

/// The little-endian bytes of `values`.
fn le_bytes<T: LeScalar>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    for &v in values {
        v.put_le(&mut out);
    }
    out
}

/// `v` (`[rows, cols]` row-major) transposed to `[cols, rows]`.
pub(crate) fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); rows * cols];
    for (r, row) in v.chunks_exact(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * rows + r] = x;
        }
    }
    t
}

/// f32 scales stored as f16, refusing any that do not stay finite.
pub(crate) fn f16_scales(scales: &[f32]) -> Result<Vec<f16>, String> {
    let stored: Vec<f16> = scales.iter().map(|&s| f16::from_f32(s)).collect();
    match stored.iter().find(|s| !s.is_finite()) {
        Some(s) => Err(format!("scale {s} is not a finite f16")),
        None => Ok(stored),
    }
}

/// Whether the processor has AVX2 and FMA, which the codecs' vector paths use.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The end of one group of k in a direct product ([`QuantizedMatrix::gemv_rows`]) of a codec
/// with per-group scales `s` and zero points `z`: with `t[i] = sum_j x[j] q[i, j]` and
/// `sx = sum_j x[j]` over the group's inputs, `out[i] += s t[i] - s z sx`, `(s, z)` of output
/// `i` from `scale_zero(i)`.
pub(crate) fn add_group_products(
    out: &mut [f32],
    t: &[f32],
    sx: f32,
    scale_zero: impl Fn(usize) -> (f32, f32),
) {
    for (i, (o, &ti)) in out.iter_mut().zip(t).enumerate() {
        let (s, z) = scale_zero(i);
        *o += s * ti - s * z * sx;
    }
}

/// For the codecs' unit tests of their vector paths: whether AVX2 and FMA are there; says the
/// test is skipped when not.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn avx2_fma_or_skip() -> bool {
    let present = avx2_fma();
    if !present {
        eprintln!("skipped: no AVX2/FMA on this processor");
    }
    present
}

/// A xorshift64 stream of pseudo-random words for the codecs' unit tests.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::bnb4::Bnb4Kind;
    use super::dynamic_map::scale_ftz;
    use super::FloatDtype;

    /// Wherever `products_in_range` holds, the branch-free rounding of `c * s` equals the
    /// checked rounding of the flushed product, for scales over the whole f32 range (and its
    /// edges: subnormal, the f16 and bf16 limits).
    #[test]
    fn in_range_rounding_equals_the_checked_rounding() {
        let mut scales: Vec<f32> = (-1500..=1280)
            .map(|e| 10f32.powf(e as f32 / 40.0))
            .filter(|s| s.is_finite())
            .collect();
        scales.extend([
            1e-42,
            1.0 / 16384.0,
            32768.0,
            65504.0,
            65520.0,
            2f32.powi(126),
        ]);
        let mut fast = 0;
        for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
            let codebook = kind.codebook();
            let (lo, hi) = kind.code_magnitudes();
            for dtype in [FloatDtype::F16, FloatDtype::Bf16, FloatDtype::F32] {
                for s in scales.iter().flat_map(|&s| [s, -s]) {
                    if !dtype.products_in_range(s, lo, hi) {
                        continue;
                    }
                    fast += 1;
                    for &c in codebook {
                        let want = dtype.round(scale_ftz(c, s));
                        let got = dtype.round_in_range(c * s);
                        assert_eq!(got.to_bits(), want.to_bits(), "{dtype:?} {c} * {s}");
                    }
                }
            }
        }
        assert!(fast > 1000, "the fast path was taken only {fast} times");
    }
}
