//! The GGUF header parser: a bounds-checked cursor over untrusted bytes.
//!
//! Mirrors the checks of ggml's `gguf.cpp`: every count is checked against
//! the bytes left before anything is allocated, every size computation is
//! checked for overflow, strings must be UTF-8, keys and tensor names must be
//! unique, `general.alignment` must be a `u32` power of two, tensor offsets
//! must be aligned and every tensor's data must lie inside the file without
//! overlapping another's.

use std::collections::HashMap;
use std::path::Path;

use super::{GgufArray, GgufTensorInfo, GgufValue, GgufValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::ggml_blocks::GgmlType;
use crate::source_error::SourceError;

/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// Smallest encoding of a key/value pair: key length, value type, one byte.
const MIN_KV_BYTES: usize = 8 + 4 + 1;

/// Smallest encoding of a tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// Everything the header describes.
pub(super) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
}

/// A cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> SourceError {
        SourceError::malformed(self.path, msg)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SourceError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {what} needs {n} bytes at offset {}, only {} left",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SourceError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, SourceError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, SourceError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a `u64` element count and checks that `count` elements of at
    /// least `min_size` bytes each can fit in the rest of the file.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, SourceError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(min_size.max(1))
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            self.err(format!(
                "{what} {n} at offset {at} is impossible: at least {min_size} bytes each, only {} bytes left",
                self.remaining()
            ))
        })
    }

    fn string(&mut self, what: &str) -> Result<String, SourceError> {
        let at = self.pos;
        let len = self.count(&format!("length of {what}"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType, SourceError> {
        let at = self.pos;
        let t = self.u32(what)?;
        GgufValueType::from_id(t)
            .ok_or_else(|| self.err(format!("{what} at offset {at} has unknown value type {t}")))
    }

    fn value(&mut self, ty: GgufValueType, key: &str) -> Result<GgufValue, SourceError> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(&what)?[0]),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            GgufValueType::Bool => GgufValue::Bool(self.bool(&what)?),
            GgufValueType::String => GgufValue::String(self.string(&what)?),
            GgufValueType::Array => GgufValue::Array(self.array_value(key)?),
        })
    }

    fn bool(&mut self, what: &str) -> Result<bool, SourceError> {
        let at = self.pos;
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!(
                "{what} at offset {at} is a bool with invalid byte {b}"
            ))),
        }
    }

    fn array_value(&mut self, key: &str) -> Result<GgufArray, SourceError> {
        let what = format!("array `{key}`");
        let ty = self.value_type(&format!("element type of {what}"))?;
        let min = ty.fixed_size().unwrap_or(8);
        let n = self.count(&format!("element count of {what}"), min)?;
        fn fixed<const N: usize, T>(
            c: &mut Cursor<'_>,
            n: usize,
            what: &str,
            f: fn([u8; N]) -> T,
        ) -> Result<Vec<T>, SourceError> {
            // `count` already checked that n * N bytes are present.
            let bytes = c.take(n * N, what)?;
            Ok(bytes
                .chunks_exact(N)
                .map(|ch| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(ch);
                    f(a)
                })
                .collect())
        }
        Ok(match ty {
            GgufValueType::U8 => GgufArray::U8(self.take(n, &what)?.to_vec()),
            GgufValueType::I8 => GgufArray::I8(fixed(self, n, &what, i8::from_le_bytes)?),
            GgufValueType::U16 => GgufArray::U16(fixed(self, n, &what, u16::from_le_bytes)?),
            GgufValueType::I16 => GgufArray::I16(fixed(self, n, &what, i16::from_le_bytes)?),
            GgufValueType::U32 => GgufArray::U32(fixed(self, n, &what, u32::from_le_bytes)?),
            GgufValueType::I32 => GgufArray::I32(fixed(self, n, &what, i32::from_le_bytes)?),
            GgufValueType::F32 => GgufArray::F32(fixed(self, n, &what, f32::from_le_bytes)?),
            GgufValueType::U64 => GgufArray::U64(fixed(self, n, &what, u64::from_le_bytes)?),
            GgufValueType::I64 => GgufArray::I64(fixed(self, n, &what, i64::from_le_bytes)?),
            GgufValueType::F64 => GgufArray::F64(fixed(self, n, &what, f64::from_le_bytes)?),
            GgufValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(&what)?);
                }
                GgufArray::Bool(v)
            }
            GgufValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format!("element {i} of {what}"))?);
                }
                GgufArray::String(v)
            }
            GgufValueType::Array => {
                return Err(SourceError::unsupported(
                    self.path,
                    format!(
                        "{what} is an array of arrays (nested arrays are not supported by ggml)"
                    ),
                ))
            }
        })
    }
}

/// Parses the header of a GGUF file held in `buf`.
pub(super) fn parse_header(buf: &[u8], path: &Path) -> Result<Header, SourceError> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(c.err(format!(
            "bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"
        )));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(SourceError::unsupported(
                path,
                "GGUF version 1 (only versions 2 and 3 are read)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(SourceError::unsupported(
                path,
                "big-endian GGUF (only little-endian files are read)",
            ))
        }
        v => {
            return Err(SourceError::unsupported(
                path,
                format!("GGUF version {v} (only versions 2 and 3 are read)"),
            ))
        }
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.count("metadata key/value count", MIN_KV_BYTES)?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&format!("key of metadata entry {i}"))?;
        let ty = c.value_type(&format!("type of `{key}`"))?;
        let value = c.value(ty, &key)?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(c.err(format!("duplicate metadata key `{key}`")));
        }
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(GgufValue::U32(a)) => {
            return Err(c.err(format!(
                "general.alignment {a} is not a nonzero power of two"
            )))
        }
        Some(v) => {
            return Err(c.err(format!(
                "general.alignment has type {}, expected u32",
                v.type_name()
            )))
        }
    };

    // The tensor count is only checkable once the metadata has been read.
    let n_tensors = usize::try_from(n_tensors)
        .ok()
        .filter(|&n| n.checked_mul(MIN_TENSOR_INFO_BYTES).is_some_and(|b| b <= c.remaining()))
        .ok_or_else(|| {
            c.err(format!(
                "tensor count {n_tensors} is impossible: at least {MIN_TENSOR_INFO_BYTES} bytes each, only {} bytes left",
                c.remaining()
            ))
        })?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let info = tensor_info(&mut c, i, alignment)?;
        if names.insert(info.name.clone(), i).is_some() {
            return Err(c.err(format!("duplicate tensor name `{}`", info.name)));
        }
        tensors.push(info);
    }

    let end_of_infos = c.pos as u64;
    let data_offset = end_of_infos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.err("data section offset overflows"))?;
    let file_len = buf.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(c.err(format!(
            "truncated: data section starts at {data_offset} but the file has {file_len} bytes"
        )));
    }
    check_tensor_ranges(&tensors, data_offset, file_len, path)?;

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn tensor_info(
    c: &mut Cursor<'_>,
    i: usize,
    alignment: u64,
) -> Result<GgufTensorInfo, SourceError> {
    let name = c.string(&format!("name of tensor {i}"))?;
    let n_dims = c.u32(&format!("dimension count of tensor `{name}`"))?;
    if n_dims > MAX_DIMS {
        return Err(c.err(format!(
            "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
        )));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        ne.push(c.u64(&format!("dimension {d} of tensor `{name}`"))?);
    }
    let type_id = c.u32(&format!("type of tensor `{name}`"))?;
    let offset = c.u64(&format!("data offset of tensor `{name}`"))?;

    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
        c.err(format!(
            "tensor `{name}` has unknown ggml type id {type_id}"
        ))
    })?;
    // ggml keeps element counts in int64_t.
    let n_elements = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            c.err(format!(
                "tensor `{name}` has an element count that overflows: ne={ne:?}"
            ))
        })?;
    let row = ne.first().copied().unwrap_or(1);
    let row_bytes = ggml_type.bytes_for(row).ok_or_else(|| {
        c.err(format!(
            "tensor `{name}` of type {ggml_type} has rows of {row} elements, not a multiple of the block size {}",
            ggml_type.block_size()
        ))
    })?;
    // Checked separately: with a zero-length row, n_elements is 0 whatever
    // the other dimensions are.
    let n_bytes = ne
        .iter()
        .skip(1)
        .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            c.err(format!(
                "tensor `{name}` has a byte size that overflows: ne={ne:?}"
            ))
        })?;
    if !offset.is_multiple_of(alignment) {
        return Err(c.err(format!(
            "tensor `{name}` has data offset {offset}, not a multiple of the alignment {alignment}"
        )));
    }
    Ok(GgufTensorInfo {
        name,
        ggml_type,
        ne,
        offset,
        n_bytes,
        n_elements,
    })
}

fn check_tensor_ranges(
    tensors: &[GgufTensorInfo],
    data_offset: u64,
    file_len: u64,
    path: &Path,
) -> Result<(), SourceError> {
    for t in tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(SourceError::tensor(
                    path,
                    &t.name,
                    format!(
                        "data [{} + {}, {} bytes) runs past the end of the file ({file_len} bytes)",
                        data_offset, t.offset, t.n_bytes
                    ),
                ))
            }
        }
    }
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // In range (checked above), so the sum does not overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(SourceError::tensor(
                path,
                &b.name,
                format!("data at offset {} overlaps tensor `{}`", b.offset, a.name),
            ));
        }
    }
    Ok(())
}
