//! Read-only file bytes: memory-mapped from disk, or owned (for in-memory
//! parsing and tests).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::source_error::SourceError;

/// The bytes of a source file.
pub(crate) enum FileBytes {
    /// A read-only memory map of the whole file.
    Mapped(Mmap),
    /// Bytes held in memory.
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Memory-maps `path` read-only. Empty files are returned as empty owned
    /// buffers (mapping zero bytes is not portable).
    pub(crate) fn map(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| SourceError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Ok(Self::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process. As with
        // every memory-mapped reader, the file must not be truncated or
        // rewritten by another process while it is open; all parsing treats
        // the bytes as untrusted and bounds-checks every access.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| SourceError::io(path, "memory-map", e))?;
        Ok(Self::Mapped(map))
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Mapped(_) => "Mapped",
            Self::Owned(_) => "Owned",
        };
        write!(f, "FileBytes::{kind}({} bytes)", self.bytes().len())
    }
}
