//! The quantized storage types in the container: files round-trip through the writer
//! and reader (format 1.1), 1.0 files still open, and the reader, writer and views
//! refuse wrong parts and parameters with messages that say what is wrong.

mod quant_common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use qrt_format::container::{
    validate_storage, ElemType, MetaValue, Metadata, PartInfo, QrtFile, QrtWriter, StorageType,
    TensorPlan, QRT_VERSION_MAJOR, QRT_VERSION_MINOR,
};
use qrt_format::quant::awq;
use qrt_format::quant::bnb4::{Bnb4Kind, Bnb4Params, Bnb4Tensor};
use qrt_format::quant::gptq::{self, GptqParams};
use qrt_format::quant::int8::{Int8Params, Int8Tensor};
use qrt_format::quant::{quantized_view, FloatDtype, QuantizedParts};
use quant_common::Rng;

fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("qrt-quant-{}-{tag}-{n}.qrt", std::process::id()))
}

/// Named tensors of every quantized type.
fn tensors() -> Vec<(&'static str, Box<dyn QuantizedParts>)> {
    let mut rng = Rng::new(21);
    let w = rng.normals(64 * 128, 0.05);
    let nf4 = Bnb4Params {
        double_quant: true,
        compute_dtype: FloatDtype::Bf16,
        orig_dtype: FloatDtype::Bf16,
        ..Bnb4Params::new(Bnb4Kind::Nf4)
    };
    let fp4 = Bnb4Params {
        block_size: 128,
        ..Bnb4Params::new(Bnb4Kind::Fp4)
    };
    vec![
        (
            "nf4",
            Box::new(Bnb4Tensor::quantize(&w, &[64, 128], &nf4).unwrap()),
        ),
        (
            "fp4",
            Box::new(Bnb4Tensor::quantize(&w, &[64, 128], &fp4).unwrap()),
        ),
        (
            "int8",
            Box::new(Int8Tensor::quantize(&w, 64, 128, &Int8Params::default()).unwrap()),
        ),
        (
            "gptq4",
            Box::new(gptq::rtn_quantize(&w, 64, 128, 4, 32, false).unwrap()),
        ),
        (
            "gptq3",
            Box::new(gptq::rtn_quantize(&w, 64, 128, 3, -1, true).unwrap()),
        ),
        ("awq", Box::new(awq::rtn_quantize(&w, 64, 128, 64).unwrap())),
    ]
}

/// Writes `tensors` plus a dense f32 tensor to a new file.
fn write(tensors: &[(&str, Box<dyn QuantizedParts>)]) -> PathBuf {
    let path = temp_path("file");
    let mut plans: Vec<TensorPlan> = tensors.iter().map(|(n, t)| t.tensor_plan(n)).collect();
    plans.push(TensorPlan::dense("dense", vec![3], ElemType::F32));
    let mut meta = Metadata::new();
    meta.insert("quantization.method", MetaValue::Str("test".into()));
    let mut w = QrtWriter::create(&path, &meta, plans).expect("create");
    for (name, t) in tensors {
        let bytes = t.part_bytes();
        let parts: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        w.write_tensor(name, &parts).expect("write");
    }
    w.write_tensor("dense", &[&[0u8; 12]]).unwrap();
    w.finish().expect("finish");
    path
}

#[test]
fn quantized_tensors_round_trip_through_a_file() {
    let ts = tensors();
    let path = write(&ts);
    let f = QrtFile::open(&path).expect("open");
    assert_eq!(f.version(), (QRT_VERSION_MAJOR, QRT_VERSION_MINOR));
    assert_eq!(QRT_VERSION_MINOR, 1);
    f.verify().expect("checksums");
    for (name, t) in &ts {
        let info = f.tensor(name).expect("tensor");
        assert_eq!(info.storage, t.storage_type(), "{name}");
        assert_eq!(info.shape, t.shape());
        let roles: Vec<&str> = info.parts.iter().map(|p| p.role.as_str()).collect();
        let planned: Vec<String> = t.plan_parts().into_iter().map(|p| p.0).collect();
        assert_eq!(roles, planned, "{name}: parts in canonical order");
        let view = quantized_view(&info.storage, &info.shape, &|role| {
            f.part_bytes(info, role).ok()
        })
        .expect("view");
        // The same tensor decoded from its in-memory parts.
        let bytes = t.part_bytes();
        let mem = quantized_view(&t.storage_type(), &t.shape(), &|role| {
            planned
                .iter()
                .position(|r| r == role)
                .map(|i| bytes[i].as_slice())
        })
        .unwrap();
        assert_eq!(view.dequantize(), mem.dequantize(), "{name}");
        assert_eq!((view.rows(), view.cols()), (64, 128));
    }
    let dense = f.tensor("dense").unwrap();
    let e = quantized_view(&dense.storage, &dense.shape, &|r| {
        f.part_bytes(dense, r).ok()
    })
    .err()
    .expect("dense tensors have no quantized view");
    assert!(e.contains("not a quantized type"), "{e}");
    drop(f);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn files_of_format_1_0_still_open() {
    let path = write(&[]);
    let mut bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(bytes[6..8], QRT_VERSION_MINOR.to_le_bytes());
    bytes[6..8].copy_from_slice(&0u16.to_le_bytes());
    let f = QrtFile::from_bytes(bytes, "v1.0.qrt").expect("a 1.0 file opens");
    assert_eq!(f.version(), (1, 0));
    assert_eq!(f.tensor("dense").unwrap().shape, vec![3]);
    f.verify().unwrap();
}

#[test]
fn the_reader_refuses_bad_quantized_parameters() {
    let ts: Vec<(&str, Box<dyn QuantizedParts>)> = tensors()
        .into_iter()
        .filter(|(n, _)| *n == "gptq4")
        .collect();
    let path = write(&ts);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    // The parameter "bits" (u32, type code 2) = 4, patched to 5.
    let mut key = (4u64).to_le_bytes().to_vec();
    key.extend_from_slice(b"bits");
    key.extend_from_slice(&2u32.to_le_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("bits parameter")
        + key.len();
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes());
    let mut bad = bytes.clone();
    bad[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    let e = QrtFile::from_bytes(bad, "bad.qrt").unwrap_err().to_string();
    assert!(e.contains("gptq4") && e.contains("bits is 5"), "{e}");
    // 8 bits changes the size of qweight: the parts no longer match.
    let mut bad = bytes;
    bad[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
    let e = QrtFile::from_bytes(bad, "bad.qrt").unwrap_err().to_string();
    assert!(e.contains("part 'qweight' is"), "{e}");
}

/// Parts as the directory would list them, from a plan.
fn infos(plan: &[(String, ElemType, u64)]) -> Vec<PartInfo> {
    plan.iter()
        .enumerate()
        .map(|(i, (role, elem, nbytes))| PartInfo {
            role: role.clone(),
            elem: *elem,
            offset: (i as u64 + 1) << 20,
            nbytes: *nbytes,
        })
        .collect()
}

fn expect_invalid(t: &StorageType, shape: &[u64], parts: &[PartInfo], needle: &str) {
    let e = validate_storage(t, shape, parts).expect_err(needle);
    assert!(e.contains(needle), "expected '{needle}' in: {e}");
}

#[test]
fn validation_refuses_missing_extra_and_mis_sized_parts() {
    for (name, t) in tensors() {
        let st = t.storage_type();
        let shape = t.shape();
        let good = infos(&t.plan_parts());
        validate_storage(&st, &shape, &good).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Any order of the parts is accepted.
        let mut reversed = good.clone();
        reversed.reverse();
        validate_storage(&st, &shape, &reversed).unwrap();

        let mut missing = good.clone();
        let gone = missing.pop().unwrap();
        expect_invalid(
            &st,
            &shape,
            &missing,
            &format!("needs a part '{}'", gone.role),
        );

        let mut sized = good.clone();
        sized[0].nbytes += sized[0].elem.size_bytes();
        expect_invalid(&st, &shape, &sized, &format!("part '{}' is", sized[0].role));

        let mut typed = good.clone();
        typed[0].elem = ElemType::U16;
        expect_invalid(&st, &shape, &typed, "has element type u16");

        let mut extra = good.clone();
        extra.push(PartInfo {
            role: "bias".into(),
            ..good[0].clone()
        });
        expect_invalid(&st, &shape, &extra, "unexpected part 'bias'");

        // A shape the parts do not fit.
        expect_invalid(&st, &[shape[0] * 2, shape[1]], &good, "is");
    }
}

/// `t` with parameter `key` set to `v`.
fn with(t: &StorageType, key: &str, v: MetaValue) -> StorageType {
    let mut t = t.clone();
    t.params.insert(key, v);
    t
}

#[test]
fn validation_refuses_bad_parameters() {
    let ts = tensors();
    let find = |n: &str| ts.iter().find(|(name, _)| *name == n).unwrap();
    let check = |n: &str, st: StorageType, needle: &str| {
        let (_, t) = find(n);
        expect_invalid(&st, &t.shape(), &infos(&t.plan_parts()), needle);
    };
    let gptq = find("gptq4").1.storage_type();
    check(
        "gptq4",
        with(&gptq, "bits", MetaValue::U32(5)),
        "bits is 5; allowed: 2, 3, 4, 8",
    );
    check(
        "gptq4",
        with(&gptq, "group_size", MetaValue::I32(16)),
        "qzeros",
    );
    check(
        "gptq4",
        with(&gptq, "group_size", MetaValue::I32(0)),
        "group_size is 0",
    );
    check(
        "gptq4",
        with(&gptq, "group_size", MetaValue::I32(-2)),
        "group_size is -2",
    );
    check(
        "gptq4",
        with(&gptq, "bits", MetaValue::U64(4)),
        "parameter 'bits' of storage type 'gptq' must be u32, found u64",
    );
    check(
        "gptq4",
        with(&gptq, "desc_act", MetaValue::Bool(true)),
        "has no parameter 'desc_act'",
    );
    let mut no_sym = gptq.clone();
    no_sym.params.remove("sym");
    check("gptq4", no_sym, "needs parameter 'sym' (bool)");

    let nf4 = find("nf4").1.storage_type();
    for bad in [16u32, 48, 8192] {
        check(
            "nf4",
            with(&nf4, "block_size", MetaValue::U32(bad)),
            "power of two from 32 to 4096",
        );
    }
    check(
        "nf4",
        with(&nf4, "orig_dtype", MetaValue::Str("f64".into())),
        "'orig_dtype' of storage type 'nf4' is 'f64'; allowed: f16, bf16, f32",
    );
    check(
        "nf4",
        with(&nf4, "compute_dtype", MetaValue::Str("f32".into())),
        "allowed: f16, bf16",
    );
    check(
        "nf4",
        with(&nf4, "double_quant", MetaValue::U8(1)),
        "must be bool",
    );

    let int8 = find("int8").1.storage_type();
    check(
        "int8",
        with(&int8, "threshold", MetaValue::F32(-1.0)),
        "threshold is -1",
    );
    check(
        "int8",
        with(&int8, "threshold", MetaValue::F32(f32::NAN)),
        "must be finite",
    );

    let awq_t = find("awq").1.storage_type();
    check(
        "awq",
        with(&awq_t, "bits", MetaValue::U32(8)),
        "bits is 8; allowed: 4",
    );
    check(
        "awq",
        with(&awq_t, "group_size", MetaValue::U32(0)),
        "group_size is 0",
    );
    check(
        "awq",
        with(&awq_t, "group_size", MetaValue::U32(16)),
        "qzeros",
    );

    // Shapes a layout cannot hold.
    let g3 = GptqParams {
        bits: 3,
        group_size: -1,
        sym: true,
        act_order: false,
    }
    .storage_type();
    expect_invalid(&g3, &[64, 48], &[], "k must be a multiple of 32");
    expect_invalid(&g3, &[40, 64], &[], "n must be a multiple of 32");
    expect_invalid(&awq_t, &[60, 128], &[], "n must be a multiple of 8");
    expect_invalid(&int8, &[2, 3, 4], &[], "holds a matrix [n, k]");
    assert!(validate_storage(&nf4, &[2, 3, 4], &[]).is_err());
}

#[test]
fn the_writer_refuses_parts_that_do_not_match() {
    let (_, t) = tensors().into_iter().find(|(n, _)| *n == "awq").unwrap();
    let mut plan = t.tensor_plan("w");
    plan.parts[2].2 += 2;
    let path = temp_path("refused");
    let e = QrtWriter::create(&path, &Metadata::new(), vec![plan])
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("tensor 'w'") && e.contains("part 'scales' is"),
        "{e}"
    );
    assert!(!path.exists());
}

#[test]
fn views_refuse_bad_data_and_missing_parts() {
    let mut rng = Rng::new(22);
    let w = rng.normals(32 * 64, 0.1);
    let t = gptq::rtn_quantize(&w, 32, 64, 4, 32, false).unwrap();
    let mut bytes = t.part_bytes();
    let roles: Vec<String> = t.plan_parts().into_iter().map(|p| p.0).collect();
    // g_idx (the last part) entry 5 → group 7, which does not exist.
    bytes[3][20..24].copy_from_slice(&7i32.to_le_bytes());
    let e = quantized_view(&t.storage_type(), &t.shape(), &|role| {
        roles
            .iter()
            .position(|r| r == role)
            .map(|i| bytes[i].as_slice())
    })
    .err()
    .expect("bad g_idx");
    assert!(e.contains("g_idx[5] = 7 is not a group"), "{e}");
    let e = quantized_view(&t.storage_type(), &t.shape(), &|role| {
        (role != "scales")
            .then(|| {
                roles
                    .iter()
                    .position(|r| r == role)
                    .map(|i| bytes[i].as_slice())
            })
            .flatten()
    })
    .err()
    .expect("missing part");
    assert!(e.contains("missing part 'scales'"), "{e}");
    let e = quantized_view(&t.storage_type(), &t.shape(), &|role| {
        roles
            .iter()
            .position(|r| r == role)
            .map(|i| &bytes[i][..bytes[i].len() - 4])
    })
    .err()
    .expect("short part");
    assert!(e.contains("part 'qweight' is"), "{e}");
}
