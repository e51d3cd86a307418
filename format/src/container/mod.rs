//! The `.qrt` container: a single self-contained, memory-mappable model file.
//!
//! A `.qrt` file holds a fixed 64-byte header, a typed key/value metadata section
//! (model config, tokenizer, quantization recipe, provenance, ...), a tensor
//! directory and a data section in which every part of every tensor starts on a
//! [`QRT_ALIGNMENT`]-byte boundary, so the bytes can be memory-mapped and uploaded
//! to a GPU as they are. The byte layout is specified in `format/SPEC.md`.
//!
//! * [`QrtWriter`] writes a file atomically (temporary file, fsync, rename).
//! * [`QrtFile`] opens a file (memory-mapped) or parses owned bytes, validating
//!   every offset, length and count before use; [`QrtFile::verify`] checks the
//!   per-tensor SHA-256 checksums.
//! * [`Metadata`] / [`MetaValue`] are the typed key/value machinery.
//! * [`StorageType`], [`known_storage_types`] and [`validate_storage`] describe how a
//!   tensor's bytes are laid out; new (e.g. quantized) storage types are added there.

mod cursor;
mod meta;
mod reader;
mod storage;
mod writer;

pub use meta::{MetaValue, Metadata};
pub use reader::QrtFile;
pub use storage::{
    known_storage_types, validate_storage, ElemType, PartInfo, StorageType, TensorInfo, TensorPlan,
};
pub use writer::QrtWriter;

/// The four bytes every `.qrt` file starts with: ASCII `QRT` followed by a zero byte.
pub const QRT_MAGIC: [u8; 4] = *b"QRT\x00";
/// The major format version this build writes and reads. Files with a larger major version are refused.
pub const QRT_VERSION_MAJOR: u16 = 1;
/// The minor format version this build writes (1.1 added the quantized storage types).
/// Files with any minor version of the same major are readable; those up to this one
/// are read strictly (SPEC.md §8).
pub const QRT_VERSION_MINOR: u16 = 1;
/// Alignment, in bytes, of the data section and of every tensor part within the file.
pub const QRT_ALIGNMENT: u64 = 256;
/// Size in bytes of the fixed header written by this version (files of a newer minor version may declare a larger header).
pub const QRT_HEADER_SIZE: u64 = 64;
/// Largest number of dimensions a tensor may have.
pub const MAX_NDIM: usize = 8;
/// Largest number of parts a tensor may have.
pub const MAX_PARTS: usize = 32;
/// Largest length in bytes of a metadata key, tensor name, storage type name or part role.
pub const MAX_NAME_LEN: u64 = 65_535;
/// Largest nesting depth of metadata arrays (an array directly under a key has depth 1).
pub const MAX_ARRAY_DEPTH: usize = 16;

/// Byte offsets of the header fields (see SPEC.md, "Header").
pub(crate) mod header {
    /// `header_size: u32`.
    pub const HEADER_SIZE: usize = 8;
    /// `flags: u32`.
    pub const FLAGS: usize = 12;
    /// `metadata_size: u64`.
    pub const METADATA_SIZE: usize = 24;
    /// `tensor_count: u64`.
    pub const TENSOR_COUNT: usize = 32;
    /// `directory_size: u64`.
    pub const DIRECTORY_SIZE: usize = 40;
    /// `data_offset: u64`.
    pub const DATA_OFFSET: usize = 48;
    /// `data_size: u64`.
    pub const DATA_SIZE: usize = 56;
}

/// Rounds `x` up to the next multiple of [`QRT_ALIGNMENT`]; `None` on overflow.
pub(crate) fn align_up(x: u64) -> Option<u64> {
    x.checked_add(QRT_ALIGNMENT - 1)
        .map(|v| v / QRT_ALIGNMENT * QRT_ALIGNMENT)
}

/// Lower-case hex of a byte string (used for checksums in messages).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
