//! Corrupt, truncated and hostile GGUF input: always an error naming the
//! file, never a panic or a huge allocation.

mod source_common;

use qrt_format::checkpoint::Checkpoint;
use qrt_format::gguf::{GgufArray, GgufFile, GgufValue};
use qrt_format::source_error::SourceError;
use source_common::*;

const LABEL: &str = "/virtual/test.gguf";

fn parse(bytes: Vec<u8>) -> Result<GgufFile, SourceError> {
    GgufFile::from_bytes(bytes, LABEL)
}

/// Parses and expects an error whose message names the file and contains `needle`.
fn expect_err(bytes: Vec<u8>, needle: &str) {
    let e = parse(bytes).expect_err(needle).to_string();
    assert!(e.contains(LABEL), "{e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
}

fn small() -> GgufBuilder {
    GgufBuilder::default()
        .kv("general.architecture", Meta::Str("llama".into()))
        .kv("a.strings", Meta::StrArr(vec!["x".into(), "yz".into()]))
        .kv("a.empty", Meta::I32Arr(vec![]))
        .tensor(RawTensor::f32(
            "t0",
            &[2, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ))
        .tensor(RawTensor::f32("t1", &[5], &[0.5; 5]))
}

#[test]
fn builder_file_is_valid() {
    let f = parse(small().build()).unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(
        f.dequantize("t0").unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(f.tensor("t0").unwrap().shape(), vec![2, 3]);
    assert_eq!(
        f.get("a.empty"),
        Some(&GgufValue::Array(GgufArray::I32(vec![])))
    );
    let mut v2 = small();
    v2.version = 2;
    assert_eq!(parse(v2.build()).unwrap().version(), 2);
    // No tensors, no data section at all.
    let empty = GgufBuilder::default().kv("k", Meta::U32(1)).build();
    assert!(parse(empty).unwrap().tensors().is_empty());
}

#[test]
fn every_truncation_is_an_error() {
    let dir = fixtures().join("gguf");
    for bytes in [
        small().build(),
        std::fs::read(dir.join("all_types.gguf")).unwrap(),
        std::fs::read(dir.join("tiny_qwen2.gguf")).unwrap(),
    ] {
        assert!(parse(bytes.clone()).is_ok());
        // Every cut inside the header, and a sample of cuts inside the data.
        let f = parse(bytes.clone()).unwrap();
        let header_end = f.data_offset() as usize;
        // The file may end with padding after the last tensor; cuts there are harmless.
        let data_end = header_end
            + f.tensors()
                .iter()
                .map(|t| t.offset + t.n_bytes)
                .max()
                .unwrap() as usize;
        let cuts = (0..header_end).chain((header_end..data_end).step_by(7));
        for cut in cuts {
            let r = parse(bytes[..cut].to_vec());
            let e = r.expect_err(&format!("cut at {cut}")).to_string();
            assert!(e.contains(LABEL), "{e}");
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let good = small().build();
    let mut b = good.clone();
    b[0] = b'X';
    expect_err(b, "bad magic");
    expect_err(b"GGU".to_vec(), "truncated");
    expect_err(Vec::new(), "truncated");
    for (v, needle) in [
        (1u32, "version 1"),
        (4, "version 4"),
        (0, "version 0"),
        (0x0300_0000, "big-endian"),
    ] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = parse(b).unwrap_err();
        assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn impossible_counts_fail_before_allocating() {
    let good = small().build();
    for (at, v, needle) in [
        (8, u64::MAX, "tensor count"),
        (8, 1 << 40, "tensor count"),
        (16, u64::MAX, "key/value count"),
        (16, 1 << 33, "key/value count"),
        (24, u64::MAX, "length of key"),
        (24, 1 << 50, "length of key"),
    ] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        expect_err(b, needle);
    }
    // Arrays whose element count cannot fit.
    for (elem_ty, count) in [
        (5u32, u64::MAX),
        (5, u64::MAX / 4 + 1),
        (8, 1 << 60),
        (0, 1 << 45),
    ] {
        let mut payload = elem_ty.to_le_bytes().to_vec();
        payload.extend(count.to_le_bytes());
        let b = small().kv("huge", Meta::Raw(9, payload)).build();
        expect_err(b, "element count of array `huge`");
    }
    // A string element whose length runs past the end.
    let mut payload = 8u32.to_le_bytes().to_vec();
    payload.extend(1u64.to_le_bytes());
    payload.extend((u64::MAX - 3).to_le_bytes());
    expect_err(
        small().kv("s", Meta::Raw(9, payload)).build(),
        "element 0 of array `s`",
    );
}

#[test]
fn malformed_metadata() {
    // Unknown value type.
    expect_err(
        small().kv("x", Meta::Raw(13, vec![0; 8])).build(),
        "unknown value type 13",
    );
    // Nested array.
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(1u64.to_le_bytes());
    let e = parse(small().kv("n", Meta::Raw(9, nested)).build())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested arrays") && e.contains(LABEL), "{e}");
    // Bool that is neither 0 nor 1.
    expect_err(
        small().kv("b", Meta::Raw(7, vec![2])).build(),
        "invalid byte 2",
    );
    // Invalid UTF-8 in a key and in a value.
    let mut b = small().build();
    let key_at = 24 + 8; // first key's bytes
    b[key_at] = 0xFF;
    expect_err(b, "not valid UTF-8");
    let mut bad = Vec::new();
    bad.extend(2u64.to_le_bytes());
    bad.extend([0xC3, 0x28]);
    expect_err(
        small().kv("s", Meta::Raw(8, bad)).build(),
        "not valid UTF-8",
    );
    // Duplicate keys.
    let mut d = small();
    d.kvs.push(("a.strings".into(), Meta::U32(1)));
    expect_err(d.build(), "duplicate metadata key `a.strings`");
}

#[test]
fn alignment_rules() {
    let mut a = small().kv("general.alignment", Meta::U32(64));
    a.alignment = 64;
    let f = parse(a.build()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.dequantize("t1").unwrap(), vec![0.5; 5]);
    for (v, needle) in [
        (Meta::U32(0), "not a nonzero power of two"),
        (Meta::U32(3), "not a nonzero power of two"),
        (Meta::U64(32), "type u64, expected u32"),
    ] {
        expect_err(small().kv("general.alignment", v).build(), needle);
    }
    // Alignment 64 declared but offsets laid out for 32: t1's offset (32) is misaligned.
    expect_err(
        small().kv("general.alignment", Meta::U32(64)).build(),
        "not a multiple of the alignment 64",
    );
}

#[test]
fn malformed_tensor_infos() {
    let base = small();
    let with = |t: RawTensor| parse(base.clone().tensor(t).build());
    let bad = |ne: Vec<u64>, ty: u32, data: Vec<u8>| RawTensor {
        name: "bad".into(),
        ne,
        ty,
        data,
    };

    let e = with(bad(vec![1; 5], 0, vec![0; 4]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 dimensions"), "{e}");
    let e = with(bad(vec![1 << 32, 1 << 32], 0, vec![]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overflows"), "{e}");
    let e = with(bad(vec![u64::MAX], 0, vec![]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overflows"), "{e}");
    // Zero-sized tensors are fine, even with huge other dimensions (as in ggml).
    for ne in [vec![0, 7], vec![0, 1 << 40, 1 << 40]] {
        let f = with(bad(ne, 8, vec![])).unwrap();
        assert_eq!(f.tensor("bad").unwrap().n_bytes, 0);
        assert_eq!(f.dequantize("bad").unwrap(), Vec::<f32>::new());
    }
    for ty in [4u32, 5, 31, 99, u32::MAX] {
        let e = with(bad(vec![32], ty, vec![0; 64]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("unknown ggml type id {ty}")) && e.contains("`bad`"),
            "{e}"
        );
    }
    let e = with(bad(vec![16, 2], 8, vec![0; 34]))
        .unwrap_err()
        .to_string(); // Q8_0 rows of 16
    assert!(e.contains("not a multiple of the block size 32"), "{e}");
    let e = with(bad(vec![1 << 40], 0, vec![0; 4]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runs past the end") && e.contains("`bad`"),
        "{e}"
    );

    // Duplicate tensor names.
    let mut d = base.clone();
    let t0 = d.tensors[0].clone();
    d.tensors.push(t0);
    expect_err(d.build(), "duplicate tensor name `t0`");

    // Offsets patched after encoding: past the end, misaligned, overlapping.
    let (bytes, pos) = base.build_with_positions();
    for (off, needle) in [
        (1u64 << 62, "runs past the end"),
        (u64::MAX - 31, "runs past the end"),
        (8, "alignment 32"),
        (0, "overlaps"),
    ] {
        let mut b = bytes.clone();
        b[pos[1]..pos[1] + 8].copy_from_slice(&off.to_le_bytes());
        expect_err(b, needle);
    }
}

/// Deterministic random corruption of headers: parsing and decoding must
/// never panic, whatever the bytes.
#[test]
fn random_mutations_never_panic() {
    let dir = fixtures().join("gguf");
    let inputs = [
        small().build(),
        std::fs::read(dir.join("all_types.gguf")).unwrap(),
        std::fs::read(dir.join("tiny_llama.gguf")).unwrap(),
    ];
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut ok, mut err) = (0, 0);
    for input in &inputs {
        let header_end = parse(input.clone()).unwrap().data_offset() as usize;
        for _ in 0..1500 {
            let mut b = input.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % header_end;
                b[at] = match next() % 4 {
                    0 => 0,
                    1 => 0xFF,
                    2 => b[at].wrapping_add(1),
                    _ => next() as u8,
                };
            }
            match parse(b) {
                Ok(f) => {
                    ok += 1;
                    for t in f.tensors() {
                        let _ = f.dequantize(&t.name);
                    }
                }
                Err(e) => {
                    err += 1;
                    assert!(e.to_string().contains(LABEL), "{e}");
                }
            }
        }
    }
    assert!(err > 1000, "ok {ok}, err {err}");
}

#[test]
fn checkpoint_open_rejects_corrupt_files() {
    let dir = scratch("corrupt");
    let bytes = std::fs::read(fixtures().join("gguf/tiny_llama.gguf")).unwrap();
    let p = dir.join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::open(&p).unwrap_err().to_string();
    assert!(e.contains("cut.gguf") && e.contains("past the end"), "{e}");
    let p = dir.join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    let e = Checkpoint::open(&p).unwrap_err().to_string();
    assert!(e.contains("empty.gguf") && e.contains("truncated"), "{e}");
    let p = dir.join("random.bin");
    std::fs::write(&p, b"not a model at all").unwrap();
    let e = Checkpoint::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("random.bin") && e.contains("not a GGUF file"),
        "{e}"
    );
    let e = Checkpoint::open(&dir.join("missing.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
