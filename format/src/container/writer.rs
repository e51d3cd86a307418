//! Writing `.qrt` files atomically.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::meta::{check_metadata, encode_metadata, encode_str};
use super::storage::check_shape;
use super::{
    align_up, validate_storage, Metadata, PartInfo, TensorPlan, MAX_NAME_LEN, MAX_PARTS,
    QRT_ALIGNMENT, QRT_HEADER_SIZE, QRT_MAGIC, QRT_VERSION_MAJOR, QRT_VERSION_MINOR,
};
use crate::FormatError;

/// Zero bytes for alignment padding (padding is always shorter than the alignment).
const ZEROS: [u8; QRT_ALIGNMENT as usize] = [0; QRT_ALIGNMENT as usize];

/// Buffer size of the data stream.
const WRITE_BUFFER: usize = 1 << 20;

/// Streams a `.qrt` file to disk.
///
/// The file is written to `<path>.tmp-<pid>` with its magic bytes zeroed;
/// [`QrtWriter::finish`] fills in the checksums and the magic, fsyncs, and renames
/// it onto `path`. So `path` never holds a partial file, and the temporary file
/// never parses. Dropping a writer before `finish` succeeds deletes the temporary file.
pub struct QrtWriter {
    label: String,
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    plans: Vec<TensorPlan>,
    /// Absolute file offset of every part, per tensor.
    offsets: Vec<Vec<u64>>,
    /// Absolute file offset of every tensor's checksum field.
    sha_offsets: Vec<u64>,
    checksums: Vec<[u8; 32]>,
    /// Absolute offset the next byte written will land at.
    pos: u64,
    file_size: u64,
    /// An I/O error occurred; the file is in an unknown state.
    failed: bool,
    /// The file has been renamed into place.
    done: bool,
}

impl std::fmt::Debug for QrtWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrtWriter")
            .field("path", &self.label)
            .field("tmp_path", &self.tmp_path)
            .field("written", &self.checksums.len())
            .field("planned", &self.plans.len())
            .finish()
    }
}

/// The directory bytes and layout computed from the plans.
struct Layout {
    directory: Vec<u8>,
    /// Offset of each checksum field within `directory`.
    sha_in_dir: Vec<u64>,
    /// Offset of each part relative to the data section.
    rel_offsets: Vec<Vec<u64>>,
    data_size: u64,
}

impl QrtWriter {
    /// Validates `metadata` and `plans`, creates `<path>.tmp-<pid>`, and writes the
    /// header, metadata and directory (checksums zero for now), ready to stream data.
    pub fn create(
        path: &Path,
        metadata: &Metadata,
        plans: Vec<TensorPlan>,
    ) -> Result<Self, FormatError> {
        let label = path.display().to_string();
        let invalid = |reason: String| FormatError::Write {
            path: label.clone(),
            reason,
        };
        check_metadata(metadata, "metadata").map_err(invalid)?;
        let layout = layout(&plans).map_err(invalid)?;

        let mut meta_bytes = Vec::new();
        encode_metadata(&mut meta_bytes, metadata);
        let meta_size = meta_bytes.len() as u64;
        let dir_size = layout.directory.len() as u64;
        let dir_start = QRT_HEADER_SIZE + meta_size;
        let too_big = || invalid("the file would exceed 2^64 bytes".to_string());
        let data_offset = dir_start
            .checked_add(dir_size)
            .and_then(align_up)
            .ok_or_else(too_big)?;
        let file_size = data_offset
            .checked_add(layout.data_size)
            .ok_or_else(too_big)?;
        for p in &plans {
            // Readers refuse more than 8 elements per byte of file (see SPEC.md).
            let numel = check_shape(&p.shape).map_err(invalid)?;
            if numel > file_size.saturating_mul(8) {
                return Err(invalid(format!(
                    "tensor '{}' has {numel} elements but the file is only {file_size} bytes; readers refuse more than 8 elements per byte",
                    p.name
                )));
            }
        }

        let mut header = Vec::with_capacity(QRT_HEADER_SIZE as usize);
        // The magic is written as zeros and filled in by `finish`, so that an
        // interrupted write never leaves a file that parses.
        header.extend_from_slice(&[0u8; 4]);
        header.extend_from_slice(&QRT_VERSION_MAJOR.to_le_bytes());
        header.extend_from_slice(&QRT_VERSION_MINOR.to_le_bytes());
        header.extend_from_slice(&(QRT_HEADER_SIZE as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes()); // flags
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        header.extend_from_slice(&meta_size.to_le_bytes());
        header.extend_from_slice(&(plans.len() as u64).to_le_bytes());
        header.extend_from_slice(&dir_size.to_le_bytes());
        header.extend_from_slice(&data_offset.to_le_bytes());
        header.extend_from_slice(&layout.data_size.to_le_bytes());

        let mut tmp: OsString = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp_path = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|source| FormatError::Io {
                path: tmp_path.display().to_string(),
                op: "create",
                source,
            })?;

        // From here on, dropping `w` (on any error) deletes the temporary file.
        let mut w = QrtWriter {
            label,
            final_path: path.to_path_buf(),
            tmp_path,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            offsets: layout
                .rel_offsets
                .iter()
                .map(|v| v.iter().map(|r| data_offset + r).collect())
                .collect(),
            sha_offsets: layout.sha_in_dir.iter().map(|s| dir_start + s).collect(),
            checksums: Vec::with_capacity(plans.len()),
            plans,
            pos: 0,
            file_size,
            failed: false,
            done: false,
        };
        w.write_raw(&header)?;
        w.write_raw(&meta_bytes)?;
        w.write_raw(&layout.directory)?;
        w.pad_to(data_offset)?;
        Ok(w)
    }

    /// Writes the next tensor. Tensors must come in plan order, and `parts` must
    /// hold the bytes of every planned part, in plan order, of exactly the planned sizes.
    pub fn write_tensor(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), FormatError> {
        self.check_usable()?;
        let i = self.checksums.len();
        let (Some(plan), Some(offsets)) = (self.plans.get(i), self.offsets.get(i).cloned()) else {
            return Err(self.misuse(format!(
                "all {} planned tensors are already written; '{name}' is not expected",
                self.plans.len()
            )));
        };
        if plan.name != name {
            let reason = if self.plans[..i].iter().any(|p| p.name == name) {
                format!("tensor '{name}' was already written")
            } else if self.plans.iter().any(|p| p.name == name) {
                format!(
                    "tensors must be written in plan order: expected '{}', got '{name}'",
                    plan.name
                )
            } else {
                format!(
                    "tensor '{name}' is not in the plan (expected '{}')",
                    plan.name
                )
            };
            return Err(self.misuse(reason));
        }
        if parts.len() != plan.parts.len() {
            return Err(self.misuse(format!(
                "tensor '{name}' has {} planned parts, {} given",
                plan.parts.len(),
                parts.len()
            )));
        }
        for ((role, _, nbytes), bytes) in plan.parts.iter().zip(parts) {
            if bytes.len() as u64 != *nbytes {
                return Err(self.misuse(format!(
                    "part '{role}' of tensor '{name}' is planned as {nbytes} bytes, {} given",
                    bytes.len()
                )));
            }
        }
        let mut hasher = Sha256::new();
        for (bytes, offset) in parts.iter().zip(offsets) {
            self.pad_to(offset)?;
            self.write_raw(bytes)?;
            hasher.update(bytes);
        }
        self.checksums.push(hasher.finalize().into());
        Ok(())
    }

    /// Pads the data section, fills in the checksums and magic, fsyncs, and renames
    /// the temporary file onto the destination. Errors (and removes the temporary
    /// file) if any planned tensor was not written.
    pub fn finish(mut self) -> Result<(), FormatError> {
        self.check_usable()?;
        if let Some(missing) = self.plans.get(self.checksums.len()) {
            return Err(self.misuse(format!(
                "only {} of {} planned tensors were written (next missing: '{}')",
                self.checksums.len(),
                self.plans.len(),
                missing.name
            )));
        }
        self.pad_to(self.file_size)?;
        let tmp_label = self.tmp_path.display().to_string();
        let io = |op: &'static str| {
            let path = tmp_label.clone();
            move |source| FormatError::Io { path, op, source }
        };
        let Some(buffered) = self.file.take() else {
            return Err(self.misuse("the file was already closed".to_string()));
        };
        let mut file = buffered
            .into_inner()
            .map_err(|e| io("write")(e.into_error()))?;
        for (offset, sha) in self.sha_offsets.iter().zip(&self.checksums) {
            file.seek(SeekFrom::Start(*offset)).map_err(io("seek"))?;
            file.write_all(sha).map_err(io("write"))?;
        }
        file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        file.write_all(&QRT_MAGIC).map_err(io("write"))?;
        file.sync_all().map_err(io("fsync"))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path).map_err(|source| FormatError::Io {
            path: self.label.clone(),
            op: "rename",
            source,
        })?;
        self.done = true;
        sync_parent_dir(&self.final_path);
        Ok(())
    }

    /// Errors if an earlier I/O error left the file in an unknown state.
    fn check_usable(&self) -> Result<(), FormatError> {
        if self.failed {
            Err(self.misuse("an earlier write failed; this writer can only be dropped".to_string()))
        } else {
            Ok(())
        }
    }

    fn misuse(&self, reason: String) -> FormatError {
        FormatError::Write {
            path: self.label.clone(),
            reason,
        }
    }

    /// Writes `bytes` at the current position, marking the writer failed on error.
    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(io::Error::other("file already closed")),
        };
        if let Err(source) = result {
            self.failed = true;
            return Err(FormatError::Io {
                path: self.tmp_path.display().to_string(),
                op: "write",
                source,
            });
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes zeros up to absolute offset `target` (at most one alignment unit away).
    fn pad_to(&mut self, target: u64) -> Result<(), FormatError> {
        let pad = target.saturating_sub(self.pos);
        let zeros = usize::try_from(pad)
            .ok()
            .and_then(|n| ZEROS.get(..n))
            .ok_or_else(|| self.misuse(format!("internal layout error: padding of {pad} bytes")))?;
        self.write_raw(zeros)
    }
}

impl Drop for QrtWriter {
    fn drop(&mut self) {
        if !self.done {
            // Close before unlinking; errors are irrelevant as the file is discarded.
            drop(self.file.take());
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Makes the rename durable by fsyncing the containing directory (best effort:
/// the file is already complete and in place, and some filesystems refuse this).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Validates the plans and computes the directory bytes and data layout.
fn layout(plans: &[TensorPlan]) -> Result<Layout, String> {
    let mut names = HashSet::new();
    let mut directory = Vec::new();
    let mut sha_in_dir = Vec::with_capacity(plans.len());
    let mut rel_offsets = Vec::with_capacity(plans.len());
    let mut data_end = 0u64;
    for p in plans {
        let name = &p.name;
        if name.is_empty() || name.len() as u64 > MAX_NAME_LEN {
            return Err(format!(
                "tensor name '{name}' must be 1 to {MAX_NAME_LEN} bytes"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("tensor '{name}' is planned twice"));
        }
        check_shape(&p.shape).map_err(|e| format!("tensor '{name}': {e}"))?;
        if p.storage.name.len() as u64 > MAX_NAME_LEN {
            return Err(format!("tensor '{name}': storage type name too long"));
        }
        check_metadata(
            &p.storage.params,
            &format!("storage parameters of tensor '{name}'"),
        )?;
        if p.parts.is_empty() || p.parts.len() > MAX_PARTS {
            return Err(format!(
                "tensor '{name}' has {} parts; 1 to {MAX_PARTS} are allowed",
                p.parts.len()
            ));
        }
        let mut infos: Vec<PartInfo> = Vec::with_capacity(p.parts.len());
        for (role, elem, nbytes) in &p.parts {
            if role.is_empty() || role.len() as u64 > MAX_NAME_LEN {
                return Err(format!(
                    "tensor '{name}': part role '{role}' must be 1 to {MAX_NAME_LEN} bytes"
                ));
            }
            if infos.iter().any(|q| &q.role == role) {
                return Err(format!("tensor '{name}' has two parts with role '{role}'"));
            }
            if *nbytes == 0 || nbytes % elem.size_bytes() != 0 {
                return Err(format!(
                    "part '{role}' of tensor '{name}' is {nbytes} bytes, not a positive multiple of the {}-byte {}",
                    elem.size_bytes(),
                    elem.name()
                ));
            }
            let offset = align_up(data_end).ok_or("data section exceeds 2^64 bytes")?;
            data_end = offset
                .checked_add(*nbytes)
                .ok_or("data section exceeds 2^64 bytes")?;
            infos.push(PartInfo {
                role: role.clone(),
                elem: *elem,
                offset,
                nbytes: *nbytes,
            });
        }
        validate_storage(&p.storage, &p.shape, &infos)
            .map_err(|e| format!("tensor '{name}' (storage type '{}'): {e}", p.storage.name))?;

        let mut entry = Vec::new();
        encode_str(&mut entry, name);
        entry.extend_from_slice(&(p.shape.len() as u32).to_le_bytes());
        for d in &p.shape {
            entry.extend_from_slice(&d.to_le_bytes());
        }
        encode_str(&mut entry, &p.storage.name);
        entry.extend_from_slice(&(p.storage.params.len() as u64).to_le_bytes());
        encode_metadata(&mut entry, &p.storage.params);
        entry.extend_from_slice(&(infos.len() as u32).to_le_bytes());
        for part in &infos {
            encode_str(&mut entry, &part.role);
            entry.extend_from_slice(&part.elem.code().to_le_bytes());
            entry.extend_from_slice(&part.offset.to_le_bytes());
            entry.extend_from_slice(&part.nbytes.to_le_bytes());
        }
        directory.extend_from_slice(&(entry.len() as u64 + 32).to_le_bytes());
        directory.extend_from_slice(&entry);
        sha_in_dir.push(directory.len() as u64);
        directory.extend_from_slice(&[0u8; 32]);
        rel_offsets.push(infos.iter().map(|q| q.offset).collect());
    }
    let data_size = align_up(data_end).ok_or("data section exceeds 2^64 bytes")?;
    Ok(Layout {
        directory,
        sha_in_dir,
        rel_offsets,
        data_size,
    })
}
