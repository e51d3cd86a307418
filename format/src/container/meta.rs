//! Typed key/value metadata: values, the ordered map, and their binary encoding.

use std::collections::BTreeMap;
use std::fmt;

use super::cursor::Cursor;
use super::{MAX_ARRAY_DEPTH, MAX_NAME_LEN};
use crate::FormatError;

/// Type code of [`MetaValue::U8`] in the file.
pub(crate) const TYPE_U8: u32 = 0;
/// Type code of [`MetaValue::I32`].
pub(crate) const TYPE_I32: u32 = 1;
/// Type code of [`MetaValue::U32`].
pub(crate) const TYPE_U32: u32 = 2;
/// Type code of [`MetaValue::I64`].
pub(crate) const TYPE_I64: u32 = 3;
/// Type code of [`MetaValue::U64`].
pub(crate) const TYPE_U64: u32 = 4;
/// Type code of [`MetaValue::F32`].
pub(crate) const TYPE_F32: u32 = 5;
/// Type code of [`MetaValue::F64`].
pub(crate) const TYPE_F64: u32 = 6;
/// Type code of [`MetaValue::Bool`].
pub(crate) const TYPE_BOOL: u32 = 7;
/// Type code of [`MetaValue::Str`].
pub(crate) const TYPE_STR: u32 = 8;
/// Type code of [`MetaValue::Array`].
pub(crate) const TYPE_ARRAY: u32 = 9;

/// Smallest encoding of one key/value entry: key length (8) + a 1-byte key + type code (4) + a 1-byte value.
pub(crate) const MIN_KV_SIZE: u64 = 8 + 1 + 4 + 1;

/// One typed metadata value.
///
/// Arrays are homogeneous: every element has the same variant (the elements of an
/// array of arrays may themselves hold different types). The writer refuses
/// heterogeneous arrays; the encoding makes them unrepresentable in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Unsigned 8-bit integer.
    U8(u8),
    /// Signed 32-bit integer.
    I32(i32),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Signed 64-bit integer.
    I64(i64),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// IEEE-754 binary32.
    F32(f32),
    /// IEEE-754 binary64.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Homogeneous array (possibly nested).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as a `u64`, if it is an unsigned integer or a non-negative signed integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(u64::from(v)),
            MetaValue::U32(v) => Some(u64::from(v)),
            MetaValue::U64(v) => Some(v),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(i64::from(v)),
            MetaValue::U32(v) => Some(i64::from(v)),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I32(v) => Some(i64::from(v)),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an `f64`, if it is a float or an integer (large 64-bit integers are rounded).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(f64::from(v)),
            MetaValue::F64(v) => Some(v),
            MetaValue::U8(v) => Some(f64::from(v)),
            MetaValue::U32(v) => Some(f64::from(v)),
            MetaValue::I32(v) => Some(f64::from(v)),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a `bool`, if it is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Name of the value's type as used in SPEC.md and error messages ("u8", "string", "array", ...).
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_code())
    }

    /// The type code written in the file.
    pub(crate) fn type_code(&self) -> u32 {
        match self {
            MetaValue::U8(_) => TYPE_U8,
            MetaValue::I32(_) => TYPE_I32,
            MetaValue::U32(_) => TYPE_U32,
            MetaValue::I64(_) => TYPE_I64,
            MetaValue::U64(_) => TYPE_U64,
            MetaValue::F32(_) => TYPE_F32,
            MetaValue::F64(_) => TYPE_F64,
            MetaValue::Bool(_) => TYPE_BOOL,
            MetaValue::Str(_) => TYPE_STR,
            MetaValue::Array(_) => TYPE_ARRAY,
        }
    }
}

/// Name of a type code ("unknown" for codes this version does not define).
fn type_name(code: u32) -> &'static str {
    match code {
        TYPE_U8 => "u8",
        TYPE_I32 => "i32",
        TYPE_U32 => "u32",
        TYPE_I64 => "i64",
        TYPE_U64 => "u64",
        TYPE_F32 => "f32",
        TYPE_F64 => "f64",
        TYPE_BOOL => "bool",
        TYPE_STR => "string",
        TYPE_ARRAY => "array",
        _ => "unknown",
    }
}

/// Smallest encoded size of one array element of type `code`, or `None` for an unknown code.
fn min_encoded_size(code: u32) -> Option<u64> {
    Some(match code {
        TYPE_U8 | TYPE_BOOL => 1,
        TYPE_I32 | TYPE_U32 | TYPE_F32 => 4,
        TYPE_I64 | TYPE_U64 | TYPE_F64 => 8,
        TYPE_STR => 8,
        TYPE_ARRAY => 4 + 8,
        _ => return None,
    })
}

impl From<u8> for MetaValue {
    fn from(v: u8) -> Self {
        MetaValue::U8(v)
    }
}
impl From<i32> for MetaValue {
    fn from(v: i32) -> Self {
        MetaValue::I32(v)
    }
}
impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        MetaValue::U32(v)
    }
}
impl From<i64> for MetaValue {
    fn from(v: i64) -> Self {
        MetaValue::I64(v)
    }
}
impl From<u64> for MetaValue {
    fn from(v: u64) -> Self {
        MetaValue::U64(v)
    }
}
impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        MetaValue::F32(v)
    }
}
impl From<f64> for MetaValue {
    fn from(v: f64) -> Self {
        MetaValue::F64(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}
impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::Str(v.to_string())
    }
}
impl From<String> for MetaValue {
    fn from(v: String) -> Self {
        MetaValue::Str(v)
    }
}
/// Builds an array; covers `Vec<MetaValue>` as well as e.g. `Vec<&str>` or `Vec<u32>`.
impl<T: Into<MetaValue>> From<Vec<T>> for MetaValue {
    fn from(v: Vec<T>) -> Self {
        MetaValue::Array(v.into_iter().map(Into::into).collect())
    }
}

/// Ordered key/value metadata (keys sorted by byte value, no duplicates).
///
/// A `Metadata` read from a file remembers the file's label so that the typed
/// getters can name the file in their errors; the label does not take part in
/// equality.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: BTreeMap<String, MetaValue>,
    source: String,
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Metadata {
    /// An empty map with no source label.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) `key`.
    pub fn insert(&mut self, key: impl Into<String>, v: impl Into<MetaValue>) {
        self.entries.insert(key.into(), v.into());
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.get(key)
    }

    /// Removes and returns the value under `key`, if any.
    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        self.entries.remove(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &MetaValue)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The label errors from the typed getters name (the file path for metadata read
    /// from a file; `"(in-memory metadata)"` when none was set).
    pub fn source(&self) -> &str {
        if self.source.is_empty() {
            "(in-memory metadata)"
        } else {
            &self.source
        }
    }

    /// Sets the label the typed getters name in their errors.
    pub fn set_source(&mut self, label: impl Into<String>) {
        self.source = label.into();
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<T, FormatError> {
        let v = self.get(key).ok_or_else(|| FormatError::MissingKey {
            path: self.source().to_string(),
            key: key.to_string(),
        })?;
        conv(v).ok_or_else(|| FormatError::WrongType {
            path: self.source().to_string(),
            key: key.to_string(),
            expected,
            found: v.type_name(),
        })
    }

    /// The value under `key` as a `u64` (see [`MetaValue::as_u64`]).
    pub fn get_u64(&self, key: &str) -> Result<u64, FormatError> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// The value under `key` as an `i64` (see [`MetaValue::as_i64`]).
    pub fn get_i64(&self, key: &str) -> Result<i64, FormatError> {
        self.typed(key, "an integer fitting in i64", MetaValue::as_i64)
    }

    /// The value under `key` as an `f64` (see [`MetaValue::as_f64`]).
    pub fn get_f64(&self, key: &str) -> Result<f64, FormatError> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    /// The value under `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, FormatError> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// The value under `key` as a `bool`.
    pub fn get_bool(&self, key: &str) -> Result<bool, FormatError> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    /// The value under `key` as an array.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], FormatError> {
        self.typed(key, "an array", MetaValue::as_array)
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::Str(v) => write!(f, "{v:?}"),
            MetaValue::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding (writer side)
// ---------------------------------------------------------------------------

/// Checks that `meta` can be written: keys non-empty and at most [`MAX_NAME_LEN`]
/// bytes, arrays homogeneous and nested at most [`MAX_ARRAY_DEPTH`] deep.
pub(crate) fn check_metadata(meta: &Metadata, what: &str) -> Result<(), String> {
    for (key, value) in meta.iter() {
        if key.is_empty() {
            return Err(format!("{what}: empty key"));
        }
        if key.len() as u64 > MAX_NAME_LEN {
            return Err(format!(
                "{what}: key of {} bytes exceeds the limit of {MAX_NAME_LEN}",
                key.len()
            ));
        }
        check_value(value, 0).map_err(|e| format!("{what}: key '{key}': {e}"))?;
    }
    Ok(())
}

fn check_value(v: &MetaValue, depth: usize) -> Result<(), String> {
    if let MetaValue::Array(items) = v {
        if depth + 1 > MAX_ARRAY_DEPTH {
            return Err(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"));
        }
        if let Some(first) = items.first() {
            let code = first.type_code();
            if let Some((i, bad)) = items
                .iter()
                .enumerate()
                .find(|(_, x)| x.type_code() != code)
            {
                return Err(format!(
                    "array is not homogeneous: element 0 is {} but element {i} is {}",
                    first.type_name(),
                    bad.type_name()
                ));
            }
        }
        for item in items {
            check_value(item, depth + 1)?;
        }
    }
    Ok(())
}

/// Appends the entries of `meta` (without the count) in key order.
pub(crate) fn encode_metadata(out: &mut Vec<u8>, meta: &Metadata) {
    for (key, value) in meta.iter() {
        encode_str(out, key);
        out.extend_from_slice(&value.type_code().to_le_bytes());
        encode_value(out, value);
    }
}

/// Appends a string: `u64` byte length then the UTF-8 bytes.
pub(crate) fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends the payload of `v` (its type code is written by the caller).
fn encode_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => encode_str(out, s),
        MetaValue::Array(items) => {
            // An empty array has no element to take the type from; it is written as u8.
            let code = items.first().map_or(TYPE_U8, MetaValue::type_code);
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_value(out, item);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding (reader side)
// ---------------------------------------------------------------------------

/// Reads `count` key/value entries from `cur`. `what` names the map in messages
/// ("metadata", "storage parameters of tensor 'x'").
pub(crate) fn decode_metadata(
    cur: &mut Cursor<'_>,
    count: u64,
    what: &str,
) -> Result<Metadata, FormatError> {
    let fits = count
        .checked_mul(MIN_KV_SIZE)
        .is_some_and(|need| need <= cur.remaining());
    if !fits {
        return Err(cur.error(format!(
            "{what} claims {count} entries, which cannot fit in the {} bytes left (each needs at least {MIN_KV_SIZE})",
            cur.remaining()
        )));
    }
    let mut meta = Metadata::new();
    for _ in 0..count {
        let at = cur.pos();
        let key = cur.string(&format!("{what} key"), MAX_NAME_LEN)?;
        if key.is_empty() {
            return Err(cur.error_at(at, format!("{what} key is empty")));
        }
        let code_at = cur.pos();
        let code = cur.u32(&format!("type code of {what} key '{key}'"))?;
        if min_encoded_size(code).is_none() {
            return Err(cur.error_at(
                code_at,
                format!("{what} key '{key}' has unknown value type code {code}"),
            ));
        }
        let value = decode_value(cur, code, 0)?;
        if meta.entries.contains_key(&key) {
            return Err(cur.error_at(at, format!("duplicate {what} key '{key}'")));
        }
        meta.entries.insert(key, value);
    }
    Ok(meta)
}

/// Reads one value payload of type `code`; `depth` is the number of enclosing arrays.
fn decode_value(cur: &mut Cursor<'_>, code: u32, depth: usize) -> Result<MetaValue, FormatError> {
    Ok(match code {
        TYPE_U8 => MetaValue::U8(cur.u8("u8 value")?),
        TYPE_I32 => MetaValue::I32(i32::from_le_bytes(cur.array("i32 value")?)),
        TYPE_U32 => MetaValue::U32(cur.u32("u32 value")?),
        TYPE_I64 => MetaValue::I64(i64::from_le_bytes(cur.array("i64 value")?)),
        TYPE_U64 => MetaValue::U64(cur.u64("u64 value")?),
        TYPE_F32 => MetaValue::F32(f32::from_le_bytes(cur.array("f32 value")?)),
        TYPE_F64 => MetaValue::F64(f64::from_le_bytes(cur.array("f64 value")?)),
        TYPE_BOOL => {
            let at = cur.pos();
            match cur.u8("bool value")? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(cur.error_at(at, format!("bool value is {b}, must be 0 or 1"))),
            }
        }
        TYPE_STR => MetaValue::Str(cur.string("string value", u64::MAX)?),
        TYPE_ARRAY => {
            let at = cur.pos();
            if depth + 1 > MAX_ARRAY_DEPTH {
                return Err(cur.error_at(
                    at,
                    format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                ));
            }
            let elem = cur.u32("array element type code")?;
            let min = min_encoded_size(elem).ok_or_else(|| {
                cur.error_at(at, format!("array has unknown element type code {elem}"))
            })?;
            let count = cur.u64("array length")?;
            let fits = count
                .checked_mul(min)
                .is_some_and(|need| need <= cur.remaining());
            if !fits {
                return Err(cur.error_at(
                    at,
                    format!(
                        "array of {count} {} elements cannot fit in the {} bytes left",
                        type_name(elem),
                        cur.remaining()
                    ),
                ));
            }
            // count * min <= remaining <= file length, so this allocation is bounded by the input size.
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(decode_value(cur, elem, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        other => {
            return Err(cur.error(format!("unknown value type code {other}")));
        }
    })
}
