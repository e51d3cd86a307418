//! Opening and validating `.qrt` files.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::cursor::Cursor;
use super::meta::decode_metadata;
use super::storage::check_shape;
use super::{
    header, hex, known_storage_types, validate_storage, ElemType, Metadata, PartInfo, StorageType,
    TensorInfo, MAX_NAME_LEN, MAX_NDIM, MAX_PARTS, QRT_ALIGNMENT, QRT_HEADER_SIZE, QRT_MAGIC,
    QRT_VERSION_MAJOR, QRT_VERSION_MINOR,
};
use crate::FormatError;

/// Smallest possible encoding of one tensor directory entry (see SPEC.md,
/// "Tensor directory"): entry size (8), a 1-byte name (8+1), ndim (4), one
/// dimension (8), a 1-byte storage name (8+1), parameter count (8), part count
/// (4), one part with a 1-byte role (8+1+4+8+8) and the checksum (32).
const MIN_TENSOR_ENTRY: u64 = 8 + 9 + 4 + 8 + 9 + 8 + 4 + (9 + 4 + 8 + 8) + 32;

/// The bytes a [`QrtFile`] parses: a read-only memory map or an owned buffer.
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open, validated `.qrt` file.
///
/// Opening checks the header, every metadata entry and every directory entry
/// (offsets, lengths, alignment, overlap, storage types); it does not hash the
/// data — call [`QrtFile::verify`] for that.
pub struct QrtFile {
    label: String,
    backing: Backing,
    version: (u16, u16),
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for QrtFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrtFile")
            .field("path", &self.label)
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl QrtFile {
    /// Memory-maps `path` and validates its header, metadata and directory
    /// (not the checksums).
    ///
    /// The file must not be modified or truncated by another process while it is
    /// open: the map reflects such changes, and truncation makes reads fault.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let label = path.display().to_string();
        let io = |op: &'static str| {
            let label = label.clone();
            move |source| FormatError::Io {
                path: label,
                op,
                source,
            }
        };
        let mut file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let backing = if len < QRT_HEADER_SIZE {
            // Too short to be valid; read it so the parser reports exactly why
            // (and so that empty files never reach mmap).
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io("read"))?;
            Backing::Owned(bytes)
        } else {
            // SAFETY: the map is read-only and every access is bounds-checked against
            // its length. Soundness additionally requires that no one modifies the file
            // while it is mapped, which is documented as a requirement of `open`.
            Backing::Mmap(unsafe { Mmap::map(&file) }.map_err(io("mmap"))?)
        };
        Self::parse(backing, label)
    }

    /// Parses and validates owned bytes exactly as [`QrtFile::open`] does;
    /// `label` stands in for the path in messages.
    pub fn from_bytes(bytes: Vec<u8>, label: &str) -> Result<Self, FormatError> {
        Self::parse(Backing::Owned(bytes), label.to_string())
    }

    fn parse(backing: Backing, label: String) -> Result<Self, FormatError> {
        let parsed = parse(backing.bytes(), &label)?;
        let index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(QrtFile {
            label,
            backing,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            index,
        })
    }

    /// The path the file was opened from (or the label given to [`QrtFile::from_bytes`]).
    pub fn path(&self) -> &str {
        &self.label
    }

    /// The file's `(major, minor)` format version.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// The file's metadata (its typed getters name this file in their errors).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// All tensors, in directory order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The bytes of `t`'s part with role `role`, borrowed from the map
    /// (256-byte aligned within the file).
    pub fn part_bytes(&self, t: &TensorInfo, role: &str) -> Result<&[u8], FormatError> {
        let part = t.part(role).ok_or_else(|| FormatError::NoSuchPart {
            path: self.label.clone(),
            tensor: t.name.clone(),
            role: role.to_string(),
        })?;
        self.slice(t, part)
    }

    /// The bytes of `part`, bounds-checked (a `TensorInfo` may come from elsewhere).
    fn slice(&self, t: &TensorInfo, part: &PartInfo) -> Result<&[u8], FormatError> {
        let bytes = self.backing.bytes();
        let range = usize::try_from(part.offset).ok().and_then(|start| {
            let len = usize::try_from(part.nbytes).ok()?;
            Some(start..start.checked_add(len)?)
        });
        range
            .and_then(|r| bytes.get(r))
            .ok_or_else(|| FormatError::Corrupt {
                path: self.label.clone(),
                offset: part.offset,
                reason: format!(
                    "part '{}' of tensor '{}' ({} bytes) lies outside the file ({} bytes)",
                    part.role,
                    t.name,
                    part.nbytes,
                    bytes.len()
                ),
            })
    }

    /// Recomputes every tensor's checksum; the error names the first bad tensor.
    pub fn verify(&self) -> Result<(), FormatError> {
        self.tensors.iter().try_for_each(|t| self.verify_tensor(t))
    }

    /// Recomputes `t`'s checksum (SHA-256 over its parts' bytes in directory order)
    /// and compares it with the directory.
    pub fn verify_tensor(&self, t: &TensorInfo) -> Result<(), FormatError> {
        let mut hasher = Sha256::new();
        for part in &t.parts {
            hasher.update(self.slice(t, part)?);
        }
        let actual: [u8; 32] = hasher.finalize().into();
        if actual == t.sha256 {
            Ok(())
        } else {
            Err(FormatError::ChecksumMismatch {
                path: self.label.clone(),
                tensor: t.name.clone(),
                expected: hex(&t.sha256),
                actual: hex(&actual),
            })
        }
    }

    /// Length of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.backing.bytes().len() as u64
    }
}

/// The validated contents of a file.
struct Parsed {
    version: (u16, u16),
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

/// Header fields after the version.
struct Header {
    strict: bool,
    metadata_count: u64,
    meta_start: u64,
    meta_end: u64,
    tensor_count: u64,
    dir_end: u64,
    data_offset: u64,
    data_size: u64,
}

fn truncated(label: &str, what: &str, start: u64, end: u64, len: u64) -> FormatError {
    FormatError::Truncated {
        path: label.to_string(),
        what: what.to_string(),
        start,
        end,
        len,
    }
}

fn corrupt(label: &str, offset: usize, reason: String) -> FormatError {
    FormatError::Corrupt {
        path: label.to_string(),
        offset: offset as u64,
        reason,
    }
}

fn parse(buf: &[u8], label: &str) -> Result<Parsed, FormatError> {
    let len = buf.len() as u64;
    match buf.get(..QRT_MAGIC.len()) {
        Some(m) if m == QRT_MAGIC => {}
        None if QRT_MAGIC.starts_with(buf) => {
            return Err(truncated(label, "the header", 0, QRT_HEADER_SIZE, len));
        }
        m => {
            return Err(FormatError::BadMagic {
                path: label.to_string(),
                kind: ".qrt",
                found: m.unwrap_or(buf).to_vec(),
                expected: QRT_MAGIC.to_vec(),
            });
        }
    }
    let mut cur = Cursor::new(buf, 0, len, label, "file")?;
    cur.array::<4>("magic")?;
    if len < 8 {
        return Err(truncated(label, "the header", 0, QRT_HEADER_SIZE, len));
    }
    let major = cur.u16("major version")?;
    let minor = cur.u16("minor version")?;
    if major > QRT_VERSION_MAJOR {
        return Err(FormatError::NewerVersion {
            path: label.to_string(),
            major,
            minor,
            supported: QRT_VERSION_MAJOR,
        });
    }
    if major < QRT_VERSION_MAJOR {
        return Err(FormatError::UnsupportedVersion {
            path: label.to_string(),
            major,
            minor,
            supported: QRT_VERSION_MAJOR,
        });
    }
    if len < QRT_HEADER_SIZE {
        return Err(truncated(label, "the header", 0, QRT_HEADER_SIZE, len));
    }
    let header = parse_header(&mut cur, minor, len, label)?;

    let mut mc = Cursor::new(
        buf,
        header.meta_start,
        header.meta_end,
        label,
        "metadata section",
    )?;
    let mut metadata = decode_metadata(&mut mc, header.metadata_count, "metadata")?;
    metadata.set_source(label);
    if header.strict {
        mc.expect_end()?;
    }

    let mut dc = Cursor::new(
        buf,
        header.meta_end,
        header.dir_end,
        label,
        "tensor directory",
    )?;
    let fits = header
        .tensor_count
        .checked_mul(MIN_TENSOR_ENTRY)
        .is_some_and(|need| need <= dc.remaining());
    if !fits {
        return Err(corrupt(
            label,
            header::TENSOR_COUNT,
            format!(
                "the header claims {} tensors, which cannot fit in a {}-byte directory (each entry needs at least {MIN_TENSOR_ENTRY} bytes)",
                header.tensor_count,
                dc.remaining()
            ),
        ));
    }
    // Bounded by the directory size (checked just above).
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(header.tensor_count as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(tensors.capacity());
    for i in 0..header.tensor_count {
        let entry_at = dc.pos();
        let entry_size = dc.u64("tensor entry size")?;
        let mut ec = dc.split(entry_size, "tensor entry")?;
        let t = parse_tensor(&mut ec, &header, len, label)?;
        if header.strict {
            ec.expect_end()?;
        }
        if let Some(&j) = names.get(&t.name) {
            return Err(dc.error_at(
                entry_at,
                format!("duplicate tensor name '{}' (entries {j} and {i})", t.name),
            ));
        }
        names.insert(t.name.clone(), tensors.len());
        tensors.push(t);
    }
    if header.strict {
        dc.expect_end()?;
    }
    check_overlap(&tensors, label)?;

    Ok(Parsed {
        version: (major, minor),
        metadata,
        tensors,
    })
}

/// Reads and checks the header fields after the version (the cursor is at byte 8).
fn parse_header(
    cur: &mut Cursor<'_>,
    minor: u16,
    len: u64,
    label: &str,
) -> Result<Header, FormatError> {
    // Files of a minor version this build knows must match it exactly; newer
    // minor versions may extend the header, entries and sections.
    let newer_minor = minor > QRT_VERSION_MINOR;
    let strict = !newer_minor;
    let header_size = u64::from(cur.u32("header size")?);
    let flags = cur.u32("flags")?;
    let metadata_count = cur.u64("metadata count")?;
    let metadata_size = cur.u64("metadata size")?;
    let tensor_count = cur.u64("tensor count")?;
    let directory_size = cur.u64("directory size")?;
    let data_offset = cur.u64("data offset")?;
    let data_size = cur.u64("data size")?;

    if header_size < QRT_HEADER_SIZE || (strict && header_size != QRT_HEADER_SIZE) {
        return Err(corrupt(
            label,
            header::HEADER_SIZE,
            format!("header size is {header_size}, expected {QRT_HEADER_SIZE}"),
        ));
    }
    if strict && flags != 0 {
        return Err(corrupt(
            label,
            header::FLAGS,
            format!("flags are {flags:#x}; format 1.{QRT_VERSION_MINOR} defines none"),
        ));
    }
    let meta_start = header_size;
    let meta_end = meta_start.checked_add(metadata_size).ok_or_else(|| {
        corrupt(
            label,
            header::METADATA_SIZE,
            format!("metadata size {metadata_size} overflows"),
        )
    })?;
    if meta_end > len {
        return Err(truncated(
            label,
            "the metadata section declared by the header",
            meta_start,
            meta_end,
            len,
        ));
    }
    let dir_end = meta_end.checked_add(directory_size).ok_or_else(|| {
        corrupt(
            label,
            header::DIRECTORY_SIZE,
            format!("directory size {directory_size} overflows"),
        )
    })?;
    if dir_end > len {
        return Err(truncated(
            label,
            "the tensor directory declared by the header",
            meta_end,
            dir_end,
            len,
        ));
    }
    if data_offset % QRT_ALIGNMENT != 0 {
        return Err(corrupt(
            label,
            header::DATA_OFFSET,
            format!("data offset {data_offset} is not a multiple of {QRT_ALIGNMENT}"),
        ));
    }
    if data_offset < dir_end {
        return Err(corrupt(
            label,
            header::DATA_OFFSET,
            format!(
                "data offset {data_offset} lies before the end of the tensor directory ({dir_end})"
            ),
        ));
    }
    let data_end = data_offset.checked_add(data_size).ok_or_else(|| {
        corrupt(
            label,
            header::DATA_SIZE,
            format!("data size {data_size} overflows"),
        )
    })?;
    if data_end > len {
        return Err(truncated(
            label,
            "the data section declared by the header",
            data_offset,
            data_end,
            len,
        ));
    }
    if strict && data_end != len {
        return Err(FormatError::Corrupt {
            path: label.to_string(),
            offset: data_end,
            reason: format!(
                "{} unexpected bytes after the end of the data section",
                len - data_end
            ),
        });
    }
    Ok(Header {
        strict,
        metadata_count,
        meta_start,
        meta_end,
        tensor_count,
        dir_end,
        data_offset,
        data_size,
    })
}

/// Reads one tensor entry (after its size field) and validates it on its own.
fn parse_tensor(
    ec: &mut Cursor<'_>,
    h: &Header,
    len: u64,
    label: &str,
) -> Result<TensorInfo, FormatError> {
    let at = ec.pos();
    let name = ec.string("tensor name", MAX_NAME_LEN)?;
    if name.is_empty() {
        return Err(ec.error_at(at, "tensor name is empty".to_string()));
    }
    let ndim_at = ec.pos();
    let ndim = ec.u32("number of dimensions")?;
    if ndim == 0 || ndim as usize > MAX_NDIM {
        return Err(ec.error_at(
            ndim_at,
            format!("tensor '{name}' has {ndim} dimensions; 1 to {MAX_NDIM} are allowed"),
        ));
    }
    let mut shape = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        shape.push(ec.u64("dimension")?);
    }
    let numel =
        check_shape(&shape).map_err(|e| ec.error_at(ndim_at, format!("tensor '{name}': {e}")))?;
    if numel > len.saturating_mul(8) {
        return Err(ec.error_at(
            ndim_at,
            format!("tensor '{name}' has shape {shape:?} ({numel} elements), absurd for a {len}-byte file"),
        ));
    }
    let storage_at = ec.pos();
    let storage_name = ec.string("storage type name", MAX_NAME_LEN)?;
    let param_count = ec.u64("storage parameter count")?;
    let mut params = decode_metadata(
        ec,
        param_count,
        &format!("storage parameters of tensor '{name}'"),
    )?;
    params.set_source(format!("{label} (storage parameters of tensor '{name}')"));

    let count_at = ec.pos();
    let part_count = ec.u32("part count")?;
    if part_count == 0 || part_count as usize > MAX_PARTS {
        return Err(ec.error_at(
            count_at,
            format!("tensor '{name}' has {part_count} parts; 1 to {MAX_PARTS} are allowed"),
        ));
    }
    let mut parts: Vec<PartInfo> = Vec::with_capacity(part_count as usize);
    for _ in 0..part_count {
        let part_at = ec.pos();
        let role = ec.string("part role", MAX_NAME_LEN)?;
        if role.is_empty() {
            return Err(ec.error_at(
                part_at,
                format!("tensor '{name}' has a part with an empty role"),
            ));
        }
        if parts.iter().any(|p| p.role == role) {
            return Err(ec.error_at(
                part_at,
                format!("tensor '{name}' has two parts with role '{role}'"),
            ));
        }
        let elem_at = ec.pos();
        let code = ec.u32("part element type")?;
        let elem = ElemType::from_code(code).ok_or_else(|| {
            ec.error_at(
                elem_at,
                format!("part '{role}' of tensor '{name}' has unknown element type code {code}"),
            )
        })?;
        let off_at = ec.pos();
        let rel = ec.u64("part offset")?;
        let nbytes = ec.u64("part size")?;
        let what = format!("part '{role}' of tensor '{name}'");
        if rel % QRT_ALIGNMENT != 0 {
            return Err(ec.error_at(
                off_at,
                format!("{what} starts at data offset {rel}, which is not a multiple of {QRT_ALIGNMENT}"),
            ));
        }
        if nbytes == 0 || nbytes % elem.size_bytes() != 0 {
            return Err(ec.error_at(
                off_at,
                format!(
                    "{what} is {nbytes} bytes, not a positive multiple of the {}-byte {}",
                    elem.size_bytes(),
                    elem.name()
                ),
            ));
        }
        let in_bounds = rel.checked_add(nbytes).filter(|&end| end <= h.data_size);
        if in_bounds.is_none() {
            return Err(ec.error_at(
                off_at,
                format!(
                    "{what} (data offset {rel}, {nbytes} bytes) extends past the end of the {}-byte data section",
                    h.data_size
                ),
            ));
        }
        parts.push(PartInfo {
            role,
            elem,
            // rel + nbytes <= data_size and data_offset + data_size <= len: no overflow.
            offset: h.data_offset + rel,
            nbytes,
        });
    }
    let sha256 = ec.array::<32>("checksum")?;

    let storage = StorageType {
        name: storage_name,
        params,
    };
    if !known_storage_types().contains(&storage.name.as_str()) {
        return Err(FormatError::UnknownStorageType {
            path: label.to_string(),
            tensor: name,
            storage: storage.name,
            known: known_storage_types().join(", "),
        });
    }
    if let Err(reason) = validate_storage(&storage, &shape, &parts) {
        return Err(FormatError::InvalidStorage {
            path: label.to_string(),
            tensor: name,
            storage: storage.name,
            reason: format!("{reason} (entry at byte {storage_at})"),
        });
    }
    Ok(TensorInfo {
        name,
        shape,
        storage,
        parts,
        sha256,
    })
}

/// Refuses files in which any two parts (of any tensors) share a byte.
fn check_overlap(tensors: &[TensorInfo], label: &str) -> Result<(), FormatError> {
    let mut spans: Vec<(u64, u64, &str, &str)> = tensors
        .iter()
        .flat_map(|t| {
            t.parts.iter().map(move |p| {
                (
                    p.offset,
                    p.offset + p.nbytes,
                    t.name.as_str(),
                    p.role.as_str(),
                )
            })
        })
        .collect();
    spans.sort_unstable_by_key(|s| (s.0, s.1));
    for w in spans.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.1 > b.0 {
            return Err(FormatError::Corrupt {
                path: label.to_string(),
                offset: b.0,
                reason: format!(
                    "part '{}' of tensor '{}' (bytes {}..{}) overlaps part '{}' of tensor '{}' (bytes {}..{})",
                    b.3, b.2, b.0, b.1, a.3, a.2, a.0, a.1
                ),
            });
        }
    }
    Ok(())
}
