//! Dequantization and GGUF parsing checked against llama.cpp's gguf-py
//! (fixtures from `tools/make_ggml_fixtures.py`).
//!
//! Our decoders evaluate each formula in the same order as ggml's reference
//! C code and gguf-py (`d * q + m`, `d * sc * q`, `dl * q - ml`, all in f32,
//! no fused multiply-add), so every value is compared bit for bit.

use std::path::PathBuf;

use qrt_format::ggml_blocks::{dequantize, dequantize_into, GgmlType};
use qrt_format::gguf::{GgufFile, GgufValue};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_f32s(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}[{i}]: got {g}, gguf-py {w}"
        );
    }
}

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

#[test]
fn blocks_match_gguf_py_bit_for_bit() {
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        assert!(ty.can_dequantize());
        let raw = std::fs::read(fixtures().join(format!("ggml/{name}.bin"))).unwrap();
        let want = read_f32s(&fixtures().join(format!("ggml/{name}.f32")));
        let n = want.len();
        assert_eq!(
            raw.len() as u64,
            ty.bytes_for(n as u64).unwrap(),
            "{name}: fixture size"
        );
        assert_bits_eq(&dequantize(ty, &raw, n).unwrap(), &want, name);
        let mut out = vec![f32::NAN; n];
        dequantize_into(ty, &raw, &mut out).unwrap();
        assert_bits_eq(&out, &want, name);
        // One block short / one byte short: rejected, no panic.
        let bs = ty.block_size();
        assert!(dequantize(ty, &raw, n - bs).is_err(), "{name}");
        assert!(dequantize(ty, &raw[..raw.len() - 1], n).is_err(), "{name}");
        if bs > 1 {
            assert!(dequantize(ty, &raw, n - 1).is_err(), "{name}");
        }
    }
}

#[test]
fn all_types_gguf_matches_manifest() {
    let dir = fixtures().join("gguf");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("all_types.json")).unwrap())
            .unwrap();
    let f = GgufFile::open(&dir.join("all_types.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.architecture(), Some("testarch"));

    // Metadata: every value type, compared with what gguf-py was asked to write.
    let meta = manifest["metadata"].as_object().unwrap();
    for (key, spec) in meta {
        let v = f.get(key).unwrap_or_else(|| panic!("missing {key}"));
        let want = &spec["value"];
        let ok = match (spec["type"].as_str().unwrap(), v) {
            ("UINT8", GgufValue::U8(x)) => want.as_u64() == Some(u64::from(*x)),
            ("INT8", GgufValue::I8(x)) => want.as_i64() == Some(i64::from(*x)),
            ("UINT16", GgufValue::U16(x)) => want.as_u64() == Some(u64::from(*x)),
            ("INT16", GgufValue::I16(x)) => want.as_i64() == Some(i64::from(*x)),
            ("UINT32", GgufValue::U32(x)) => want.as_u64() == Some(u64::from(*x)),
            ("INT32", GgufValue::I32(x)) => want.as_i64() == Some(i64::from(*x)),
            ("UINT64", GgufValue::U64(x)) => want.as_u64() == Some(*x),
            ("INT64", GgufValue::I64(x)) => want.as_i64() == Some(*x),
            ("FLOAT32", GgufValue::F32(x)) => want.as_f64() == Some(f64::from(*x)),
            ("FLOAT64", GgufValue::F64(x)) => want.as_f64() == Some(*x),
            ("BOOL", GgufValue::Bool(x)) => want.as_bool() == Some(*x),
            ("STRING", GgufValue::String(x)) => want.as_str() == Some(x.as_str()),
            ("ARRAY<STRING>", GgufValue::Array(a)) => {
                let w: Vec<&str> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect();
                a.as_strings().unwrap().iter().map(String::as_str).eq(w)
            }
            ("ARRAY<INT32>" | "ARRAY<UINT64>" | "ARRAY<UINT8>", GgufValue::Array(a)) => {
                let w: Vec<i64> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_i64().unwrap())
                    .collect();
                a.to_i64s() == Some(w)
            }
            ("ARRAY<FLOAT32>", GgufValue::Array(a)) => {
                let w: Vec<f32> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_f64().unwrap() as f32)
                    .collect();
                a.to_f32s() == Some(w)
            }
            ("ARRAY<BOOL>", GgufValue::Array(qrt_format::gguf::GgufArray::Bool(b))) => {
                let w: Vec<bool> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_bool().unwrap())
                    .collect();
                *b == w
            }
            _ => false,
        };
        assert!(ok, "{key}: {} {v:?} vs {want}", spec["type"]);
    }
    assert!(matches!(
        f.get("test.u8s"),
        Some(GgufValue::Array(qrt_format::gguf::GgufArray::U8(_)))
    ));
    assert!(matches!(
        f.get("test.u64s"),
        Some(GgufValue::Array(qrt_format::gguf::GgufArray::U64(_)))
    ));

    // Tensors: type, dims, offsets and gguf-py's dequantization, bit for bit.
    let expected = read_f32s(&dir.join("all_types.f32"));
    let mut at = 0;
    let tensors = manifest["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let info = f.tensor(name).unwrap();
        assert_eq!(info.ggml_type.name(), t["type"].as_str().unwrap(), "{name}");
        let ne: Vec<u64> = t["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.ne, ne, "{name}");
        let mut shape = ne.clone();
        shape.reverse();
        assert_eq!(info.shape(), shape, "{name}");
        assert_eq!(
            f.data_offset() + info.offset,
            t["data_offset"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(info.offset % 64, 0, "{name}");
        let n = t["n"].as_u64().unwrap() as usize;
        assert_eq!(info.n_elements, n as u64);
        assert_bits_eq(&f.dequantize(name).unwrap(), &expected[at..at + n], name);
        at += n;
    }
    assert_eq!(at, expected.len());
}

#[test]
fn all_types_gguf_in_memory_equals_mapped() {
    let path = fixtures().join("gguf/all_types.gguf");
    let mapped = GgufFile::open(&path).unwrap();
    let owned = GgufFile::from_bytes(std::fs::read(&path).unwrap(), "mem").unwrap();
    assert_eq!(mapped.tensors(), owned.tensors());
    assert!(mapped.metadata().eq(owned.metadata()));
    for t in mapped.tensors() {
        assert_eq!(
            mapped.tensor_bytes(&t.name).unwrap(),
            owned.tensor_bytes(&t.name).unwrap()
        );
    }
    assert!(mapped.tensor_bytes("nope").is_err());
}
