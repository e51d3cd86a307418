//! Round-trip tests of the `.qrt` writer and reader, and of the metadata API.

mod container_common;

use container_common::*;
use qrt_format::container::*;
use qrt_format::FormatError;

#[test]
fn random_round_trips() {
    for seed in 1..=24u64 {
        let mut rng = XorShift::new(seed);
        let meta = random_metadata(&mut rng);
        let count = rng.range(0, 12) as usize;
        let tensors = random_tensors(&mut rng, count);
        let path = temp_path("roundtrip");
        write_file(&path, &meta, &tensors);

        let f = QrtFile::open(&path).expect("open");
        assert_eq!(f.path(), path.display().to_string());
        assert_eq!(f.version(), (QRT_VERSION_MAJOR, QRT_VERSION_MINOR));
        assert_eq!(f.metadata(), &meta, "seed {seed}");
        assert_eq!(f.tensors().len(), tensors.len());
        assert_eq!(f.file_size(), std::fs::metadata(&path).unwrap().len());
        assert_eq!(f.file_size() % QRT_ALIGNMENT, 0);
        for ((plan, data), t) in tensors.iter().zip(f.tensors()) {
            assert_eq!(t.name, plan.name);
            assert_eq!(t.shape, plan.shape);
            assert_eq!(t.storage, plan.storage);
            assert_eq!(t.numel(), plan.shape.iter().product::<u64>());
            assert_eq!(t.nbytes(), data.len() as u64);
            assert_eq!(t.parts.len(), 1);
            let p = &t.parts[0];
            assert_eq!(
                (p.role.as_str(), p.elem, p.nbytes),
                (plan.parts[0].0.as_str(), plan.parts[0].1, plan.parts[0].2)
            );
            assert_eq!(p.offset % QRT_ALIGNMENT, 0, "tensor {} misaligned", t.name);
            assert_eq!(f.part_bytes(t, "data").unwrap(), &data[..]);
            assert_eq!(t.sha256, sha256(&[data]));
            assert!(std::ptr::eq(f.tensor(&t.name).unwrap(), t));
        }
        f.verify().expect("verify");

        // The same bytes through the owned-buffer parser give the same result.
        let bytes = std::fs::read(&path).unwrap();
        let g = QrtFile::from_bytes(bytes, "mem").expect("from_bytes");
        assert_eq!(g.metadata(), f.metadata());
        assert_eq!(g.tensors(), f.tensors());
        g.verify().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn data_section_is_aligned_and_packed() {
    // Two tiny tensors: each part sits on its own 256-byte boundary, in plan order.
    let tensors: Vec<(TensorPlan, Vec<u8>)> = vec![
        (TensorPlan::dense("t0", vec![3], ElemType::F32), vec![1; 12]),
        (TensorPlan::dense("t1", vec![1], ElemType::BF16), vec![2; 2]),
        (
            TensorPlan::dense("t2", vec![128], ElemType::F16),
            vec![3; 256],
        ),
    ];
    let path = temp_path("layout");
    write_file(&path, &Metadata::new(), &tensors);
    let f = QrtFile::open(&path).unwrap();
    let offs: Vec<u64> = f.tensors().iter().map(|t| t.parts[0].offset).collect();
    assert_eq!(offs[1], offs[0] + 256);
    assert_eq!(offs[2], offs[1] + 256);
    assert_eq!(f.file_size(), offs[2] + 256);
    let bytes = std::fs::read(&path).unwrap();
    // Padding between parts is zero.
    assert!(bytes[offs[0] as usize + 12..offs[1] as usize]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&bytes[..4], &QRT_MAGIC);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn empty_file_round_trips() {
    let path = temp_path("empty");
    write_file(&path, &Metadata::new(), &[]);
    let f = QrtFile::open(&path).unwrap();
    assert!(f.metadata().is_empty());
    assert!(f.tensors().is_empty());
    assert_eq!(f.file_size(), 256);
    f.verify().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn independent_encoder_agrees_with_reader() {
    // A file built byte by byte from SPEC.md parses, with the expected contents.
    let raw = RawFile::valid();
    let f = QrtFile::from_bytes(raw.build(), "raw.qrt").expect("spec-built file must parse");
    assert_eq!(f.metadata().get_str("general.name").unwrap(), "raw");
    assert_eq!(f.metadata().get("n"), Some(&MetaValue::U32(7)));
    let x = f.tensor("x").unwrap();
    assert_eq!(x.shape, vec![2, 3]);
    assert_eq!(x.storage, StorageType::dense(ElemType::F32));
    assert_eq!(f.part_bytes(x, "data").unwrap(), &raw.data[..24]);
    let y = f.tensor("y").unwrap();
    assert_eq!(y.parts[0].offset, x.parts[0].offset + 256);
    assert_eq!(f.part_bytes(y, "data").unwrap(), &raw.data[256..266]);
    f.verify().unwrap();

    // And the writer's output for the same content is byte-identical.
    let mut meta = Metadata::new();
    meta.insert("general.name", "raw");
    meta.insert("n", 7u32);
    let tensors = vec![
        (
            TensorPlan::dense("x", vec![2, 3], ElemType::F32),
            raw.data[..24].to_vec(),
        ),
        (
            TensorPlan::dense("y", vec![5], ElemType::F16),
            raw.data[256..266].to_vec(),
        ),
    ];
    let path = temp_path("agree");
    write_file(&path, &meta, &tensors);
    let written = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut expected = raw.build();
    // The writer writes the current minor version (the raw file says 1.0).
    expected[6..8].copy_from_slice(&QRT_VERSION_MINOR.to_le_bytes());
    // The raw file's padding holds pattern bytes; the writer's holds zeros.
    let data_offset = get_u64(&expected, 48) as usize;
    expected[data_offset + 24..data_offset + 256].fill(0);
    expected[data_offset + 266..].fill(0);
    assert_eq!(written, expected);
}

#[test]
fn newer_minor_version_with_extensions_is_readable() {
    // A newer minor format may grow the header, append to entries, sections and the file.
    let mut raw = RawFile::valid();
    raw.minor = QRT_VERSION_MINOR + 1;
    raw.header_size = 96;
    raw.flags = 0x8000_0000;
    raw.metadata_extra = vec![0xAB; 5];
    raw.tensors[0].extra = vec![1, 2, 3];
    raw.trailing = vec![9; 100];
    let f = QrtFile::from_bytes(raw.build(), "v1.next.qrt").expect("newer minor must open");
    assert_eq!(f.version(), (1, QRT_VERSION_MINOR + 1));
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.metadata().get_u64("n").unwrap(), 7);
    f.verify().unwrap();

    // The same extensions in a 1.0 file are corruption.
    for tweak in 0..5 {
        let mut raw = RawFile::valid();
        match tweak {
            0 => raw.header_size = 96,
            1 => raw.flags = 1,
            2 => raw.metadata_extra = vec![0; 5],
            3 => raw.tensors[1].extra = vec![0],
            _ => raw.trailing = vec![0; 256],
        }
        let e = QrtFile::from_bytes(raw.build(), "v1.0.qrt").unwrap_err();
        assert!(
            matches!(e, FormatError::Corrupt { .. }),
            "tweak {tweak}: {e}"
        );
    }
}

#[test]
fn metadata_getters_and_conversions() {
    let mut m = Metadata::new();
    m.insert("u8", 200u8);
    m.insert("i32", -5i32);
    m.insert("i32pos", 5i32);
    m.insert("u32", 7u32);
    m.insert("i64", -9i64);
    m.insert("u64", u64::MAX);
    m.insert("f32", 0.5f32);
    m.insert("f64", 1.25f64);
    m.insert("bool", true);
    m.insert("str", "hello");
    m.insert("string", String::from("world"));
    m.insert("arr", vec![1u32, 2, 3]);
    m.insert("vals", vec![MetaValue::F32(1.0)]);
    assert_eq!(m.len(), 13);
    assert!(!m.is_empty());
    assert_eq!(m.get_u64("u8").unwrap(), 200);
    assert_eq!(m.get_u64("i32pos").unwrap(), 5);
    assert!(m.get_u64("i32").is_err());
    assert_eq!(m.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(m.get_i64("i64").unwrap(), -9);
    assert!(m.get_i64("u64").is_err());
    assert_eq!(m.get_f64("f32").unwrap(), 0.5);
    assert_eq!(m.get_f64("u32").unwrap(), 7.0);
    assert_eq!(m.get_f64("i32").unwrap(), -5.0);
    assert_eq!(m.get_str("string").unwrap(), "world");
    assert!(m.get_bool("bool").unwrap());
    assert_eq!(m.get_array("arr").unwrap().len(), 3);
    assert_eq!(
        m.get("arr").unwrap().as_array().unwrap()[2].as_u64(),
        Some(3)
    );
    assert_eq!(MetaValue::Bool(true).as_u64(), None);
    assert_eq!(MetaValue::Str("1".into()).as_f64(), None);
    assert_eq!(MetaValue::U8(1).as_bool(), None);
    assert_eq!(MetaValue::U8(1).as_str(), None);
    assert_eq!(m.iter().next().unwrap().0, "arr"); // sorted keys

    let e = m.get_u64("missing").unwrap_err();
    assert!(matches!(e, FormatError::MissingKey { .. }));
    assert!(e.to_string().contains("'missing'"), "{e}");
    let e = m.get_str("u32").unwrap_err();
    assert!(
        matches!(e, FormatError::WrongType { found: "u32", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("'u32'") && e.to_string().contains("expected a string"),
        "{e}"
    );

    // Metadata read from a file names the file in getter errors.
    let path = temp_path("getters");
    write_file(&path, &m, &[]);
    let f = QrtFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &m);
    let e = f.metadata().get_bool("str").unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn storage_registry_validates_dense_types() {
    assert_eq!(
        known_storage_types(),
        &[
            "f32",
            "f16",
            "bf16",
            "nf4",
            "fp4",
            "int8_rowwise",
            "gptq",
            "awq"
        ]
    );
    let part = |role: &str, elem, nbytes| PartInfo {
        role: role.into(),
        elem,
        offset: 0,
        nbytes,
    };
    let f16 = StorageType::dense(ElemType::F16);
    assert_eq!(f16.name, "f16");
    assert!(validate_storage(&f16, &[3, 4], &[part("data", ElemType::F16, 24)]).is_ok());
    assert!(validate_storage(&f16, &[3, 4], &[part("data", ElemType::F16, 22)]).is_err());
    assert!(validate_storage(&f16, &[3, 4], &[part("data", ElemType::BF16, 24)]).is_err());
    assert!(validate_storage(&f16, &[3, 4], &[part("w", ElemType::F16, 24)]).is_err());
    assert!(validate_storage(&f16, &[3, 4], &[]).is_err());
    assert!(validate_storage(&f16, &[], &[part("data", ElemType::F16, 2)]).is_err());
    assert!(validate_storage(&f16, &[u64::MAX, 2], &[part("data", ElemType::F16, 2)]).is_err());
    let mut with_params = f16.clone();
    with_params.params.insert("bits", 4u32);
    assert!(validate_storage(&with_params, &[3, 4], &[part("data", ElemType::F16, 24)]).is_err());
    let e = validate_storage(
        &StorageType::dense(ElemType::U8),
        &[1],
        &[part("data", ElemType::U8, 1)],
    )
    .unwrap_err();
    assert!(e.contains("unknown storage type 'u8'"), "{e}");
    for e in ElemType::ALL {
        assert_eq!(ElemType::from_code(e.code()), Some(e));
    }
    assert_eq!(ElemType::from_code(9), None);
}
