//! The error type shared by every reader and writer in this crate.
//!
//! Every variant carries `path`: the file path (or, for in-memory input, the label
//! the caller gave) so that a message read on its own says which file is at fault
//! and what is wrong with it.

use std::io;

use thiserror::Error;

/// Anything that can go wrong reading, validating or writing a model file.
#[derive(Debug, Error)]
pub enum FormatError {
    /// An operating-system I/O call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// What was being attempted ("open", "mmap", "write", "rename", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with the expected magic bytes.
    #[error(
        "{path}: not a {kind} file (starts with bytes {found:02x?}, expected {expected:02x?})"
    )]
    BadMagic {
        /// The file involved.
        path: String,
        /// The file kind that was expected (e.g. ".qrt").
        kind: &'static str,
        /// The bytes found at the start of the file (fewer than expected if the file is shorter).
        found: Vec<u8>,
        /// The magic bytes that were expected.
        expected: Vec<u8>,
    },

    /// The file was written by a newer major version of the format.
    #[error("{path}: this file was written by a newer qrt (format {major}.x, file says {major}.{minor}); this build reads {supported}.x")]
    NewerVersion {
        /// The file involved.
        path: String,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The major version this build reads.
        supported: u16,
    },

    /// The file's version is not one this build can read for another reason (e.g. older than any release).
    #[error("{path}: unsupported format version {major}.{minor}; this build reads {supported}.x")]
    UnsupportedVersion {
        /// The file involved.
        path: String,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The major version this build reads.
        supported: u16,
    },

    /// The file is shorter than its own header says it must be.
    #[error("{path}: truncated: {what} needs bytes {start}..{end} but the file is only {len} bytes long")]
    Truncated {
        /// The file involved.
        path: String,
        /// The structure that does not fit.
        what: String,
        /// First byte of the structure.
        start: u64,
        /// One past the last byte of the structure.
        end: u64,
        /// The actual file length.
        len: u64,
    },

    /// A structural inconsistency at a known byte offset.
    #[error("{path}: corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The file involved.
        path: String,
        /// Absolute file offset at which the problem was detected.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A tensor uses a storage type this build does not know.
    #[error("{path}: tensor '{tensor}' uses storage type '{storage}', which this build does not know (known: {known}); a newer qrt is needed to read it")]
    UnknownStorageType {
        /// The file involved.
        path: String,
        /// The tensor's name.
        tensor: String,
        /// The unknown storage type name.
        storage: String,
        /// Comma-separated list of the storage types this build knows.
        known: String,
    },

    /// A tensor's parts do not match what its (known) storage type requires.
    #[error("{path}: tensor '{tensor}' (storage type '{storage}') is invalid: {reason}")]
    InvalidStorage {
        /// The file involved.
        path: String,
        /// The tensor's name.
        tensor: String,
        /// The storage type name.
        storage: String,
        /// What is wrong.
        reason: String,
    },

    /// A required metadata key is absent.
    #[error("{path}: metadata key '{key}' is missing")]
    MissingKey {
        /// The file (or metadata source) involved.
        path: String,
        /// The key that was looked up.
        key: String,
    },

    /// A metadata key holds a value of the wrong type.
    #[error("{path}: metadata key '{key}' holds {found}, expected {expected}")]
    WrongType {
        /// The file (or metadata source) involved.
        path: String,
        /// The key that was looked up.
        key: String,
        /// The type that was asked for.
        expected: &'static str,
        /// The type actually stored.
        found: &'static str,
    },

    /// A tensor has no part with the requested role.
    #[error("{path}: tensor '{tensor}' has no part with role '{role}'")]
    NoSuchPart {
        /// The file involved.
        path: String,
        /// The tensor's name.
        tensor: String,
        /// The role that was asked for.
        role: String,
    },

    /// A tensor's data does not hash to the checksum stored in the directory.
    #[error("{path}: checksum mismatch in tensor '{tensor}': the directory says sha256 {expected}, the data hashes to {actual}")]
    ChecksumMismatch {
        /// The file involved.
        path: String,
        /// The tensor's name.
        tensor: String,
        /// The stored checksum, lower-case hex.
        expected: String,
        /// The recomputed checksum, lower-case hex.
        actual: String,
    },

    /// A writer was used incorrectly or given data that cannot be written.
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The destination file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
