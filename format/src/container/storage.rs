//! Tensor descriptions: element types, storage types and their validation.
//!
//! A tensor's bytes are split into one or more *parts* (for a dense tensor, one
//! part holding the values; a quantized type may have packed weights, scales,
//! zero points, ...). Its [`StorageType`] names how the parts encode the logical
//! tensor. To add a storage type, add its name to [`known_storage_types`] and a
//! case to [`validate_storage`] (quantized types: in [`crate::quant`]), and
//! document its parts in `format/SPEC.md`.

use super::{Metadata, MAX_NDIM};

/// Element type of a raw part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// Unsigned 8-bit integer (also used for packed sub-byte data).
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// IEEE-754 binary16.
    F16,
    /// bfloat16 (the upper half of an IEEE-754 binary32).
    BF16,
    /// IEEE-754 binary32.
    F32,
}

impl ElemType {
    /// Every element type, in type-code order.
    pub const ALL: [ElemType; 9] = [
        ElemType::U8,
        ElemType::I8,
        ElemType::U16,
        ElemType::I16,
        ElemType::U32,
        ElemType::I32,
        ElemType::F16,
        ElemType::BF16,
        ElemType::F32,
    ];

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> u64 {
        match self {
            ElemType::U8 | ElemType::I8 => 1,
            ElemType::U16 | ElemType::I16 | ElemType::F16 | ElemType::BF16 => 2,
            ElemType::U32 | ElemType::I32 | ElemType::F32 => 4,
        }
    }

    /// Lower-case name ("u8", "bf16", ...), as used in SPEC.md.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::U16 => "u16",
            ElemType::I16 => "i16",
            ElemType::U32 => "u32",
            ElemType::I32 => "i32",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::F32 => "f32",
        }
    }

    /// The code written in the file (see SPEC.md, "Element types").
    pub fn code(self) -> u32 {
        match self {
            ElemType::U8 => 0,
            ElemType::I8 => 1,
            ElemType::U16 => 2,
            ElemType::I16 => 3,
            ElemType::U32 => 4,
            ElemType::I32 => 5,
            ElemType::F16 => 6,
            ElemType::BF16 => 7,
            ElemType::F32 => 8,
        }
    }

    /// The element type with file code `code`, if there is one.
    pub fn from_code(code: u32) -> Option<ElemType> {
        ElemType::ALL.into_iter().find(|e| e.code() == code)
    }
}

/// A tensor's storage type: a name and typed parameters (bits, group size, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct StorageType {
    /// The storage type's name, e.g. `"f16"`.
    pub name: String,
    /// Type-specific parameters; empty for the dense types.
    pub params: Metadata,
}

impl StorageType {
    /// The element type of a dense storage type (`f32`, `f16`, `bf16`); `None` for the
    /// quantized ones.
    pub fn dense_elem(&self) -> Option<ElemType> {
        DENSE
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|&(_, e)| e)
    }

    /// The dense storage type holding elements of type `e`, named after it
    /// (`"f32"`, `"f16"`, `"bf16"`; other element types give names that are not
    /// known storage types and are refused by the writer).
    pub fn dense(e: ElemType) -> Self {
        StorageType {
            name: e.name().to_string(),
            params: Metadata::new(),
        }
    }
}

/// Where one part of a tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct PartInfo {
    /// What the part holds (e.g. `"data"`, `"scales"`); unique within the tensor.
    pub role: String,
    /// Element type of the part's values.
    pub elem: ElemType,
    /// Absolute file offset of the first byte; a multiple of [`super::QRT_ALIGNMENT`].
    pub offset: u64,
    /// Length in bytes; a non-zero multiple of `elem.size_bytes()`.
    pub nbytes: u64,
}

/// One tensor's directory entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Unique tensor name.
    pub name: String,
    /// Logical shape, outermost dimension first, row-major: an HF Linear weight is
    /// `[out_features, in_features]`.
    pub shape: Vec<u64>,
    /// How the parts encode the tensor.
    pub storage: StorageType,
    /// The parts, in directory order (the order their bytes are hashed in).
    pub parts: Vec<PartInfo>,
    /// SHA-256 of the concatenated part bytes, in directory order.
    pub sha256: [u8; 32],
}

impl TensorInfo {
    /// Number of logical elements (product of the shape; saturates at `u64::MAX`,
    /// which cannot happen for tensors read from a file).
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Total bytes over all parts (excluding alignment padding).
    pub fn nbytes(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |acc, p| acc.saturating_add(p.nbytes))
    }

    /// The part with role `role`, if any.
    pub fn part(&self, role: &str) -> Option<&PartInfo> {
        self.parts.iter().find(|p| p.role == role)
    }
}

/// What a writer needs to know about a tensor before its data is written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// Unique tensor name.
    pub name: String,
    /// Logical shape, outermost first.
    pub shape: Vec<u64>,
    /// Storage type.
    pub storage: StorageType,
    /// `(role, element type, byte length)` of each part, in the order their bytes
    /// will be given to [`super::QrtWriter::write_tensor`].
    pub parts: Vec<(String, ElemType, u64)>,
}

impl TensorPlan {
    /// A plan for a dense tensor of element type `elem` (storage type
    /// [`StorageType::dense`], one part `"data"` of `numel * elem.size_bytes()` bytes).
    pub fn dense(name: impl Into<String>, shape: Vec<u64>, elem: ElemType) -> Self {
        let nbytes = shape
            .iter()
            .fold(elem.size_bytes(), |acc, &d| acc.saturating_mul(d));
        TensorPlan {
            name: name.into(),
            shape,
            storage: StorageType::dense(elem),
            parts: vec![("data".to_string(), elem, nbytes)],
        }
    }
}

/// The dense storage types, paired with their element type.
const DENSE: [(&str, ElemType); 3] = [
    ("f32", ElemType::F32),
    ("f16", ElemType::F16),
    ("bf16", ElemType::BF16),
];

/// Storage types this version of the reader and writer understand.
///
/// Version 1.0: `"f32"`, `"f16"`, `"bf16"` (dense; one part with role `"data"`).
/// Version 1.1 adds the quantized types of [`crate::quant`]: `"nf4"`, `"fp4"`,
/// `"int8_rowwise"`, `"gptq"`, `"awq"`.
pub fn known_storage_types() -> &'static [&'static str] {
    use crate::quant::QUANTIZED_STORAGE_TYPES as Q;
    const _: () = assert!(DENSE.len() + Q.len() == 8, "list every storage type below");
    const KNOWN: [&str; 8] = [
        DENSE[0].0, DENSE[1].0, DENSE[2].0, Q[0], Q[1], Q[2], Q[3], Q[4],
    ];
    &KNOWN
}

/// Checks that `parts` are what storage type `t` requires for a tensor of logical
/// shape `shape`: their number, roles, element types and sizes, and `t`'s parameters.
///
/// Returns a human-readable reason on failure, including for a storage type that
/// is not in [`known_storage_types`].
pub fn validate_storage(t: &StorageType, shape: &[u64], parts: &[PartInfo]) -> Result<(), String> {
    let numel = check_shape(shape)?;
    if let Some(elem) = t.dense_elem() {
        return validate_dense(t, elem, numel, parts);
    }
    if let Some(result) = crate::quant::validate(t, shape, parts) {
        return result;
    }
    Err(format!(
        "unknown storage type '{}' (known: {})",
        t.name,
        known_storage_types().join(", ")
    ))
}

/// Dense storage: no parameters; exactly one part `"data"` of element type `elem`
/// holding `numel` elements in row-major order.
fn validate_dense(
    t: &StorageType,
    elem: ElemType,
    numel: u64,
    parts: &[PartInfo],
) -> Result<(), String> {
    if let Some((key, _)) = t.params.iter().next() {
        return Err(format!(
            "dense storage type '{}' takes no parameters, found '{key}'",
            t.name
        ));
    }
    let [part] = parts else {
        return Err(format!(
            "dense storage has exactly one part, found {}",
            parts.len()
        ));
    };
    if part.role != "data" {
        return Err(format!(
            "the part of a dense tensor has role 'data', found '{}'",
            part.role
        ));
    }
    if part.elem != elem {
        return Err(format!(
            "part 'data' has element type {}, expected {}",
            part.elem.name(),
            elem.name()
        ));
    }
    let expected = numel
        .checked_mul(elem.size_bytes())
        .ok_or_else(|| format!("{numel} elements of {} overflow u64 bytes", elem.name()))?;
    if part.nbytes != expected {
        return Err(format!(
            "part 'data' is {} bytes, expected {expected} ({numel} elements of {} bytes)",
            part.nbytes,
            elem.size_bytes()
        ));
    }
    Ok(())
}

/// Checks a shape (1 to [`MAX_NDIM`] dimensions, each at least 1) and returns the
/// number of elements, refusing products that overflow `u64`.
pub(crate) fn check_shape(shape: &[u64]) -> Result<u64, String> {
    if shape.is_empty() || shape.len() > MAX_NDIM {
        return Err(format!(
            "a tensor has 1 to {MAX_NDIM} dimensions, this one has {}",
            shape.len()
        ));
    }
    let mut numel = 1u64;
    for (i, &d) in shape.iter().enumerate() {
        if d == 0 {
            return Err(format!(
                "dimension {i} is 0; every dimension must be at least 1"
            ));
        }
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("shape {shape:?} has more than 2^64 elements"))?;
    }
    Ok(numel)
}
