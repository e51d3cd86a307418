//! The corrupt-file corpus: every malformed input must produce an error (never a
//! panic, never an absurd allocation), with a message that names the file.

mod container_common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use container_common::*;
use qrt_format::container::*;
use qrt_format::FormatError;

const LABEL: &str = "corpus.qrt";

fn parse(bytes: Vec<u8>) -> Result<QrtFile, FormatError> {
    QrtFile::from_bytes(bytes, LABEL)
}

/// Parses `bytes`, expecting an error whose message names the file and contains `needle`.
#[track_caller]
fn expect_err(bytes: Vec<u8>, needle: &str) -> FormatError {
    match parse(bytes) {
        Ok(_) => panic!("expected an error containing {needle:?}, but the file parsed"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(LABEL),
                "message does not name the file: {msg}"
            );
            assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
            e
        }
    }
}

#[track_caller]
fn expect_raw_err(raw: &RawFile, needle: &str) -> FormatError {
    expect_err(raw.build(), needle)
}

#[test]
fn baselines_are_valid() {
    let f = parse(small_valid_file()).unwrap();
    f.verify().unwrap();
    let f = parse(RawFile::valid().build()).unwrap();
    f.verify().unwrap();
}

#[test]
fn truncation_at_every_structural_byte_fails() {
    let bytes = small_valid_file();
    let data_offset = get_u64(&bytes, 48) as usize;
    assert!(data_offset > 64 && data_offset < bytes.len());
    // Every length up to the end of the padding after the directory ...
    let mut lens: Vec<usize> = (0..=data_offset).collect();
    // ... and a sample inside the data section, including the last byte.
    lens.extend((data_offset..bytes.len()).step_by(7));
    lens.push(bytes.len() - 1);
    for len in lens {
        let r = parse(bytes[..len].to_vec());
        let e = r
            .err()
            .unwrap_or_else(|| panic!("truncated to {len} bytes, but parsed"));
        assert!(e.to_string().starts_with(LABEL), "{e}");
    }
    // A few through the memory-mapped path too.
    for len in [0, 3, 10, 63, 64, 100, data_offset, bytes.len() - 1] {
        let path = temp_path("trunc");
        std::fs::write(&path, &bytes[..len]).unwrap();
        let e = QrtFile::open(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
    let e = expect_err(bytes[..bytes.len() - 1].to_vec(), "truncated");
    assert!(matches!(e, FormatError::Truncated { .. }));
}

#[test]
fn bad_magic() {
    let mut bytes = small_valid_file();
    bytes[0] = b'X';
    let e = expect_err(bytes, "not a .qrt file");
    assert!(matches!(e, FormatError::BadMagic { .. }));
    expect_err(
        b"GGUF\x03\x00\x00\x00 and so on and so forth, a gguf file".to_vec(),
        "not a .qrt file",
    );
    expect_err(b"hello".to_vec(), "not a .qrt file");
    expect_err(Vec::new(), "truncated");
    expect_err(b"QR".to_vec(), "truncated");
}

#[test]
fn version_rules() {
    let base = small_valid_file();

    let mut newer_major = base.clone();
    newer_major[4..6].copy_from_slice(&2u16.to_le_bytes());
    newer_major[6..8].copy_from_slice(&3u16.to_le_bytes());
    let e = expect_err(newer_major, "was written by a newer qrt (format 2.x");
    assert!(e.to_string().contains("this build reads 1.x"), "{e}");
    assert!(matches!(
        e,
        FormatError::NewerVersion {
            major: 2,
            minor: 3,
            ..
        }
    ));

    // Even a short file with a newer major says so rather than "truncated".
    let mut short = base[..8].to_vec();
    short[4..6].copy_from_slice(&7u16.to_le_bytes());
    expect_err(short, "newer qrt (format 7.x");

    let mut zero_major = base.clone();
    zero_major[4..6].copy_from_slice(&0u16.to_le_bytes());
    let e = expect_err(
        zero_major,
        &format!("unsupported format version 0.{QRT_VERSION_MINOR}"),
    );
    assert!(matches!(e, FormatError::UnsupportedVersion { .. }));

    let mut newer_minor = base.clone();
    newer_minor[6..8].copy_from_slice(&9u16.to_le_bytes());
    let f = parse(newer_minor).expect("a newer minor version must be readable");
    assert_eq!(f.version(), (1, 9));
    f.verify().unwrap();
}

#[test]
fn header_inconsistencies() {
    let base = small_valid_file();
    let patched = |at: usize, v: u64| {
        let mut b = base.clone();
        put_u64(&mut b, at, v);
        b
    };
    let data_offset = get_u64(&base, 48);
    let data_size = get_u64(&base, 56);
    // Huge counts must fail before any allocation.
    expect_err(patched(16, 1 << 60), "cannot fit");
    expect_err(patched(16, u64::MAX), "cannot fit");
    expect_err(patched(32, 1 << 60), "cannot fit");
    expect_err(patched(32, u64::MAX), "cannot fit");
    // Section sizes past the end of the file or overflowing.
    expect_err(patched(24, 1 << 40), "truncated");
    expect_err(patched(24, u64::MAX), "overflows");
    expect_err(patched(40, 1 << 40), "truncated");
    expect_err(patched(40, u64::MAX - 100), "overflows");
    expect_err(patched(56, data_size + 256), "truncated");
    expect_err(patched(56, u64::MAX), "overflows");
    // Data offset misaligned, inside the directory, or past the end.
    expect_err(patched(48, data_offset + 8), "not a multiple of 256");
    expect_err(patched(48, 0), "before the end of the tensor directory");
    expect_err(patched(48, data_offset + 256), "truncated");
    // Smaller data section than the file: trailing bytes in a 1.0 file.
    expect_err(
        patched(56, data_size - 256),
        "unexpected bytes after the end of the data section",
    );
    // Metadata/directory sizes that no longer match their contents.
    let meta_size = get_u64(&base, 24);
    expect_err(patched(24, meta_size - 1), "");
    expect_err(patched(24, meta_size + 1), "");
    let dir_size = get_u64(&base, 40);
    expect_err(patched(40, dir_size - 1), "");
    expect_err(patched(16, get_u64(&base, 16) - 1), "trailing bytes");
    expect_err(patched(32, get_u64(&base, 32) + 1), "");
    // Header size field.
    let mut b = base.clone();
    b[8..12].copy_from_slice(&32u32.to_le_bytes());
    expect_err(b, "header size is 32");
}

#[test]
fn part_offsets_and_sizes() {
    // Offset past the end of the data section.
    let mut raw = RawFile::valid();
    raw.tensors[1].parts[0].offset = 1 << 20;
    expect_raw_err(&raw, "extends past the end");
    let mut raw = RawFile::valid();
    raw.tensors[1].parts[0].offset = u64::MAX - 255;
    expect_raw_err(&raw, "extends past the end");
    let mut raw = RawFile::valid();
    raw.tensors[1].parts[0].nbytes = u64::MAX - 1;
    expect_raw_err(&raw, "");
    // Misaligned part offset.
    let mut raw = RawFile::valid();
    raw.tensors[1].parts[0].offset = 64;
    expect_raw_err(&raw, "not a multiple of 256");
    // Overlapping tensors (same offset, and partially overlapping).
    let mut raw = RawFile::valid();
    raw.tensors[1].parts[0].offset = 0;
    let e = expect_raw_err(&raw, "overlaps");
    assert!(
        e.to_string().contains("'x'") && e.to_string().contains("'y'"),
        "{e}"
    );
    let mut raw = RawFile::valid();
    raw.tensors
        .push(RawTensor::dense("z", "f32", E_F32, 4, &[100], 0));
    raw.tensors[0].parts[0].offset = 256;
    raw.tensors[1].parts[0].offset = 512;
    raw.data = vec![1; 1024];
    expect_raw_err(&raw, "overlaps");
    // Size not a multiple of the element size, and zero size.
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].nbytes = 23;
    expect_raw_err(&raw, "not a positive multiple");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].nbytes = 0;
    expect_raw_err(&raw, "not a positive multiple");
}

#[test]
fn absurd_shapes() {
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![1 << 40, 1 << 40];
    raw.tensors[0].parts[0].nbytes = 24;
    expect_raw_err(&raw, "more than 2^64 elements");
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![1 << 20, 1 << 20];
    raw.tensors[0].parts[0].nbytes = 24;
    expect_raw_err(&raw, "absurd");
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32];
    expect_raw_err(&raw, "more than 2^64 elements");
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![2, 0, 3];
    expect_raw_err(&raw, "dimension 1 is 0");
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![1; 9];
    expect_raw_err(&raw, "9 dimensions");
    let mut raw = RawFile::valid();
    raw.tensors[0].dims = vec![];
    expect_raw_err(&raw, "0 dimensions");
    let mut raw = RawFile::valid();
    raw.tensors[0].ndim = Some(u32::MAX);
    expect_raw_err(&raw, "dimensions");
}

#[test]
fn huge_counts_inside_sections() {
    // Array length.
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"big.array", 9, &payload));
    expect_raw_err(&raw, "cannot fit");
    // String length.
    let mut raw = RawFile::valid();
    raw.metadata
        .push(raw_kv(b"big.string", 8, &(1u64 << 60).to_le_bytes()));
    expect_raw_err(&raw, "runs past the end");
    // Key length.
    let mut raw = RawFile::valid();
    let mut kv = u64::MAX.to_le_bytes().to_vec();
    kv.extend_from_slice(b"k");
    raw.metadata.push(kv);
    expect_raw_err(&raw, "more than the limit");
    // Storage parameter count and part count.
    let mut raw = RawFile::valid();
    raw.tensors[0].param_count = 1 << 60;
    expect_raw_err(&raw, "cannot fit");
    let mut raw = RawFile::valid();
    raw.tensors[0].part_count = Some(u32::MAX);
    expect_raw_err(&raw, "parts; 1 to 32");
    let mut raw = RawFile::valid();
    raw.tensors[0].part_count = Some(0);
    expect_raw_err(&raw, "has 0 parts");
    // Entry size larger than the directory.
    let mut b = RawFile::valid().build();
    let dir_start = 64 + get_u64(&b, 24) as usize;
    put_u64(&mut b, dir_start, 1 << 50);
    expect_err(b, "runs past the end");
}

#[test]
fn invalid_utf8_everywhere() {
    let bad: &[u8] = b"ab\xff\xfecd";
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(bad, 0, &[1]));
    expect_raw_err(&raw, "not valid UTF-8");
    let mut raw = RawFile::valid();
    let mut s = Vec::new();
    raw_str(&mut s, bad);
    raw.metadata.push(raw_kv(b"str", 8, &s));
    expect_raw_err(&raw, "not valid UTF-8");
    let mut raw = RawFile::valid();
    raw.tensors[0].name = bad.to_vec();
    expect_raw_err(&raw, "not valid UTF-8");
    let mut raw = RawFile::valid();
    raw.tensors[0].storage = bad.to_vec();
    expect_raw_err(&raw, "not valid UTF-8");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].role = bad.to_vec();
    expect_raw_err(&raw, "not valid UTF-8");
    // A truncated multi-byte sequence.
    let mut raw = RawFile::valid();
    raw.tensors[0].name = "🦀".as_bytes()[..3].to_vec();
    expect_raw_err(&raw, "not valid UTF-8");
}

#[test]
fn bad_type_codes_and_values() {
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"weird", 42, &[0; 8]));
    let e = expect_raw_err(&raw, "unknown value type code 42");
    assert!(e.to_string().contains("'weird'"), "{e}");
    let mut payload = 77u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&0u64.to_le_bytes());
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"arr", 9, &payload));
    expect_raw_err(&raw, "unknown element type code 77");
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"flag", 7, &[2]));
    expect_raw_err(&raw, "must be 0 or 1");
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"", 0, &[1]));
    expect_raw_err(&raw, "key is empty");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].elem = 99;
    expect_raw_err(&raw, "unknown element type code 99");
}

#[test]
fn nesting_depth_is_limited() {
    // An array nested `depth` levels deep around a single u8.
    let nested = |depth: usize| {
        let mut payload = Vec::new();
        for level in 1..=depth {
            let elem: u32 = if level < depth { 9 } else { 0 };
            payload.extend_from_slice(&elem.to_le_bytes());
            payload.extend_from_slice(&1u64.to_le_bytes());
        }
        payload.push(5);
        raw_kv(b"deep", if depth == 0 { 0 } else { 9 }, &payload)
    };
    let mut raw = RawFile::valid();
    raw.metadata.push(nested(MAX_ARRAY_DEPTH));
    let f = parse(raw.build()).expect("depth at the limit is fine");
    let mut v = f.metadata().get("deep").unwrap();
    for _ in 0..MAX_ARRAY_DEPTH {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &MetaValue::U8(5));
    let mut raw = RawFile::valid();
    raw.metadata.push(nested(MAX_ARRAY_DEPTH + 1));
    expect_raw_err(&raw, "nested more than");
    // Deep enough to overflow the stack if recursion were unbounded.
    let mut raw = RawFile::valid();
    raw.metadata.push(nested(200_000));
    expect_raw_err(&raw, "nested more than");
}

#[test]
fn storage_type_checks() {
    let mut raw = RawFile::valid();
    raw.tensors[0].storage = b"q4_k".to_vec();
    let e = expect_raw_err(&raw, "storage type 'q4_k'");
    assert!(matches!(e, FormatError::UnknownStorageType { .. }));
    assert!(e.to_string().contains("known: f32, f16, bf16"), "{e}");
    assert!(e.to_string().contains("tensor 'x'"), "{e}");
    // Known type, wrong parts.
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].nbytes = 48;
    raw.data = vec![0; 1024];
    raw.tensors[1].parts[0].offset = 512;
    let e = expect_raw_err(&raw, "expected 24");
    assert!(matches!(e, FormatError::InvalidStorage { .. }));
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].elem = E_BF16;
    raw.tensors[0].parts[0].nbytes = 12;
    expect_raw_err(&raw, "element type bf16");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts[0].role = b"weight".to_vec();
    expect_raw_err(&raw, "role 'data'");
    let mut raw = RawFile::valid();
    raw.tensors[0].param_count = 1;
    raw.tensors[0].params = raw_kv(b"bits", 2, &4u32.to_le_bytes());
    expect_raw_err(&raw, "takes no parameters");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts.push(RawPart {
        role: b"extra".to_vec(),
        elem: 0,
        offset: 512,
        nbytes: 1,
    });
    raw.data = vec![0; 768];
    expect_raw_err(&raw, "exactly one part");
}

#[test]
fn duplicates_are_refused() {
    let mut raw = RawFile::valid();
    raw.tensors[1].name = b"x".to_vec();
    expect_raw_err(&raw, "duplicate tensor name 'x'");
    let mut raw = RawFile::valid();
    raw.metadata.push(raw_kv(b"n", 2, &8u32.to_le_bytes()));
    expect_raw_err(&raw, "duplicate metadata key 'n'");
    let mut raw = RawFile::valid();
    raw.tensors[0].param_count = 2;
    let mut params = raw_kv(b"k", 0, &[1]);
    params.extend(raw_kv(b"k", 0, &[2]));
    raw.tensors[0].params = params;
    expect_raw_err(&raw, "duplicate storage parameters of tensor 'x' key 'k'");
    let mut raw = RawFile::valid();
    raw.tensors[0].parts.push(RawPart {
        role: b"data".to_vec(),
        elem: E_F32,
        offset: 512,
        nbytes: 4,
    });
    raw.data = vec![0; 768];
    expect_raw_err(&raw, "two parts with role 'data'");
    let mut raw = RawFile::valid();
    raw.tensors[0].name = Vec::new();
    expect_raw_err(&raw, "tensor name is empty");
}

#[test]
fn flipped_data_byte_fails_verify_naming_the_tensor() {
    let bytes = small_valid_file();
    let f = parse(bytes.clone()).unwrap();
    let b = f.tensor("b").unwrap();
    let at = (b.parts[0].offset + 17) as usize;
    let mut corrupt = bytes.clone();
    corrupt[at] ^= 0x40;
    let f = parse(corrupt).expect("data corruption is not visible at open");
    let e = f.verify().unwrap_err();
    assert!(
        matches!(&e, FormatError::ChecksumMismatch { tensor, .. } if tensor == "b"),
        "{e}"
    );
    assert!(
        e.to_string().contains("tensor 'b'") && e.to_string().starts_with(LABEL),
        "{e}"
    );
    f.verify_tensor(f.tensor("a").unwrap()).unwrap();
    f.verify_tensor(f.tensor("c").unwrap()).unwrap();
    assert!(f.verify_tensor(f.tensor("b").unwrap()).is_err());

    // A flipped checksum byte in the directory is caught the same way.
    let f = parse(bytes.clone()).unwrap();
    let sha = f.tensor("c").unwrap().sha256;
    let pos = bytes.windows(32).position(|w| w == sha).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[pos + 3] ^= 1;
    let f = parse(corrupt).unwrap();
    let e = f.verify().unwrap_err();
    assert!(e.to_string().contains("tensor 'c'"), "{e}");

    // Padding bytes are not covered by checksums and do not matter.
    let a = parse(bytes.clone()).unwrap().tensor("a").unwrap().clone();
    let mut padded = bytes.clone();
    padded[(a.parts[0].offset + a.parts[0].nbytes) as usize] = 0x55;
    parse(padded).unwrap().verify().unwrap();
}

#[test]
fn foreign_tensor_info_is_bounds_checked() {
    let f = parse(small_valid_file()).unwrap();
    let mut t = f.tensor("a").unwrap().clone();
    let e = f.part_bytes(&t, "scales").unwrap_err();
    assert!(matches!(e, FormatError::NoSuchPart { .. }), "{e}");
    t.parts[0].offset = u64::MAX - 3;
    assert!(f.part_bytes(&t, "data").is_err());
    assert!(f.verify_tensor(&t).is_err());
    t.parts[0].offset = f.file_size() - 4;
    t.parts[0].nbytes = 8;
    assert!(f.part_bytes(&t, "data").is_err());
}

/// Applies one random mutation.
fn mutate(rng: &mut XorShift, base: &[u8], structural_end: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    let pos = |rng: &mut XorShift, len: usize| {
        if len == 0 {
            0
        } else if rng.below(5) < 4 {
            rng.below(structural_end.min(len) as u64) as usize
        } else {
            rng.below(len as u64) as usize
        }
    };
    for _ in 0..rng.range(1, 3) {
        match rng.below(6) {
            0 => {
                let p = pos(rng, b.len());
                if let Some(x) = b.get_mut(p) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                let p = pos(rng, b.len());
                if let Some(x) = b.get_mut(p) {
                    *x = rng.next_u64() as u8;
                }
            }
            2 => {
                // An "interesting" little-endian value over a (maybe unaligned) field.
                const VALUES: [u64; 8] =
                    [0, 1, 255, 256, 1 << 32, 1 << 60, u64::MAX, u64::MAX - 255];
                let v = if rng.coin() {
                    VALUES[rng.below(8) as usize]
                } else {
                    rng.next_u64()
                };
                let width = [1usize, 2, 4, 8][rng.below(4) as usize];
                let p = pos(rng, b.len());
                for (i, byte) in v.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(x) = b.get_mut(p + i) {
                        *x = *byte;
                    }
                }
            }
            3 => {
                let len = b.len();
                b.truncate(pos(rng, len));
            }
            4 => {
                let n = rng.below(300) as usize;
                let extra = rng.bytes(n);
                b.extend_from_slice(&extra);
            }
            _ => {
                // Copy a chunk over another place.
                let len = b.len();
                if len > 0 {
                    let (src, dst) = (pos(rng, len), pos(rng, len));
                    let n = (rng.below(64) as usize).min(len - src).min(len - dst);
                    b.copy_within(src..src + n, dst);
                }
            }
        }
    }
    b
}

/// Exercises every accessor of a file that parsed.
fn exercise(f: &QrtFile) {
    let _ = f.verify();
    for t in f.tensors() {
        for p in &t.parts {
            let bytes = f
                .part_bytes(t, &p.role)
                .expect("a validated part must be readable");
            assert_eq!(bytes.len() as u64, p.nbytes);
        }
        let _ = f.verify_tensor(t);
        let _ = (t.numel(), t.nbytes());
    }
    for (k, v) in f.metadata().iter() {
        let _ = (
            v.as_u64(),
            v.as_f64(),
            v.as_str(),
            v.as_array(),
            f.metadata().get_u64(k),
        );
    }
}

#[test]
fn random_mutations_never_panic() {
    let bases = [small_valid_file(), RawFile::valid().build(), {
        let mut rng = XorShift::new(99);
        let meta = random_metadata(&mut rng);
        let tensors = random_tensors(&mut rng, 5);
        let path = temp_path("mutbase");
        write_file(&path, &meta, &tensors);
        let b = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        b
    }];
    let mut rng = XorShift::new(0x5eed);
    let (mut ok, mut err) = (0u32, 0u32);
    for (bi, base) in bases.iter().enumerate() {
        let structural_end = get_u64(base, 48) as usize;
        for i in 0..5000 {
            let m = mutate(&mut rng, base, structural_end);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                match QrtFile::from_bytes(m, "mutant") {
                    Ok(f) => {
                        exercise(&f);
                        true
                    }
                    Err(e) => {
                        assert!(e.to_string().starts_with("mutant"), "{e}");
                        false
                    }
                }
            }));
            match outcome {
                Ok(true) => ok += 1,
                Ok(false) => err += 1,
                Err(_) => panic!("panic on mutation {i} of base {bi}"),
            }
        }
    }
    eprintln!("mutants: {ok} parsed, {err} rejected");
    // The mutations must mostly hit validated structure, and some must be benign.
    assert!(err > 3000, "only {err} mutants were rejected");
    assert!(ok > 0, "no mutant parsed");
}
