//! Byte-for-byte parity of the `nf4` / `fp4` codecs with bitsandbytes, against fixtures
//! made by `tools/bnb_parity.py` on a CUDA machine (`tests/fixtures/bnb/`): packed
//! data, absmax, the double-quantized absmax (qabsmax, offset, state2), the codebooks,
//! the dynamic map, and the dequantized output. Without the fixtures every test prints
//! "SKIPPED" and passes.

use std::collections::HashMap;
use std::path::PathBuf;

use half::{bf16, f16};
use qrt_format::quant::bnb4::{
    absmax_mean, quantize_4bit, Bnb4Absmax, Bnb4Kind, Bnb4Params, Bnb4Tensor, Bnb4View,
    DoubleQuantAbsmax, FP4_CODEBOOK, NF4_CODEBOOK,
};
use qrt_format::quant::dynamic_map::{create_dynamic_map, kernel_reciprocal};
use qrt_format::quant::{FloatDtype, QuantizedMatrix};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SKIPPED: &str = "SKIPPED: run tools/bnb_parity.py on a GPU machine";

struct Fixtures {
    index: Value,
    blob: Vec<u8>,
}

impl Fixtures {
    fn load() -> Option<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
        let blob = std::fs::read(dir.join(index["blob"].as_str()?)).ok()?;
        Some(Fixtures { index, blob })
    }

    /// The dtype name and raw bytes of array `name`.
    fn raw(&self, name: &str) -> (&str, &[u8]) {
        let a = &self.index["arrays"][name];
        let dtype = a["dtype"].as_str().expect("dtype");
        let size = match dtype {
            "u8" => 1,
            "f16" | "bf16" => 2,
            "f32" => 4,
            other => panic!("unknown fixture dtype {other}"),
        };
        let off = a["offset"].as_u64().expect("offset") as usize;
        let count = a["count"].as_u64().expect("count") as usize;
        (dtype, &self.blob[off..off + count * size])
    }

    /// Array `name` converted to f32 (exactly: f16 and bf16 widen losslessly).
    fn f32s(&self, name: &str) -> Vec<f32> {
        let (dtype, b) = self.raw(name);
        match dtype {
            "f32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            "f16" => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            "bf16" => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            other => panic!("array {name} is {other}, not a float"),
        }
    }

    fn cases(&self) -> &[Value] {
        self.index["cases"].as_array().expect("cases")
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn dtype_of(name: &str) -> FloatDtype {
    match name {
        "f16" => FloatDtype::F16,
        "bf16" => FloatDtype::Bf16,
        "f32" => FloatDtype::F32,
        other => panic!("unknown dtype {other}"),
    }
}

/// Everything a case needs: its parameters, shape and input (already in its dtype).
struct Case<'a> {
    name: String,
    v: &'a Value,
    params: Bnb4Params,
    shape: Vec<u64>,
    input: Vec<f32>,
}

fn case<'a>(fx: &Fixtures, v: &'a Value) -> Case<'a> {
    let input = &fx.index["inputs"][v["input"].as_str().unwrap()];
    let kind = match v["quant_type"].as_str().unwrap() {
        "nf4" => Bnb4Kind::Nf4,
        "fp4" => Bnb4Kind::Fp4,
        other => panic!("unknown quant_type {other}"),
    };
    let params = Bnb4Params {
        kind,
        block_size: v["blocksize"].as_u64().unwrap() as u32,
        double_quant: v["double_quant"].as_bool().unwrap(),
        compute_dtype: FloatDtype::F16,
        orig_dtype: dtype_of(input["dtype"].as_str().unwrap()),
    };
    let shape = input["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    Case {
        name: v["name"].as_str().unwrap().to_string(),
        v,
        params,
        shape,
        input: fx.f32s(input["array"].as_str().unwrap()),
    }
}

/// A line per differing code (at most 5) with what led to it.
fn describe_code_mismatches(c: &Case, ours: &[u8], theirs: &[u8], absmax: &[f32]) -> String {
    let nib = |d: &[u8], i: usize| {
        if i.is_multiple_of(2) {
            d[i / 2] >> 4
        } else {
            d[i / 2] & 15
        }
    };
    let bs = c.params.block_size as usize;
    let mut lines = Vec::new();
    let mut count = 0;
    for i in 0..c.input.len() {
        let (a, b) = (nib(ours, i), nib(theirs, i));
        if a != b {
            count += 1;
            if lines.len() < 5 {
                let amax = absmax[i / bs];
                lines.push(format!(
                    "  value {i}: x = {:e}, block absmax {:e}, x/absmax = {:e}: ours {a}, bitsandbytes {b}",
                    c.input[i],
                    amax,
                    c.input[i] * (1.0 / amax)
                ));
            }
        }
    }
    format!("{count} codes differ\n{}", lines.join("\n"))
}

#[test]
fn codebooks_and_dynamic_map_match_bitsandbytes() {
    let Some(fx) = Fixtures::load() else {
        println!("{SKIPPED}");
        return;
    };
    let books = &fx.index["codebooks"];
    let nf4 = fx.f32s(books["nf4"].as_str().unwrap());
    assert_eq!(bits(&nf4), bits(&NF4_CODEBOOK), "NF4 codebook");
    // bitsandbytes' FP4 code tensor holds +0 for code 8; its kernel decodes code 8 as
    // -0 (sign × 0), which is what FP4_CODEBOOK records.
    let fp4 = fx.f32s(books["fp4"].as_str().unwrap());
    assert_eq!(fp4, FP4_CODEBOOK.to_vec(), "FP4 codebook");
    let map = fx.f32s(books["dynamic_map"].as_str().unwrap());
    assert_eq!(bits(&map), bits(&create_dynamic_map()), "dynamic map");
}

#[test]
fn gpu_reciprocal_table_matches_the_fixture_gpu() {
    let Some(fx) = Fixtures::load() else {
        println!("{SKIPPED}");
        return;
    };
    let Some(name) = fx.index["rcp_deviation"].as_str() else {
        println!("SKIPPED: the fixtures were made without CuPy (no reciprocal table)");
        return;
    };
    let (_, table) = fx.raw(name);
    assert_eq!(table.len(), 1024);
    for (m, &d) in table.iter().enumerate() {
        for e in [-100i32, -7, 0, 3, 100] {
            let x = (1.0 + m as f32 / 1024.0) * 2f32.powi(e);
            let ours = kernel_reciprocal(x).to_bits() as i64 - (1.0 / x).to_bits() as i64;
            assert_eq!(ours, i64::from(d) - 1, "mantissa {m}, exponent {e}");
        }
    }
}

#[test]
fn packed_data_and_absmax_match_bitsandbytes() {
    let Some(fx) = Fixtures::load() else {
        println!("{SKIPPED}");
        return;
    };
    let mut failures = Vec::new();
    for v in fx.cases() {
        let c = case(&fx, v);
        let t = Bnb4Tensor::quantize(&c.input, &c.shape, &c.params).expect("quantize");
        let (_, data) = fx.raw(v["data"].as_str().unwrap());
        let (_, plain) = quantize_4bit(&c.input, c.params.kind, c.params.block_size as usize);
        if t.data != data {
            failures.push(format!(
                "{}: packed data: {}",
                c.name,
                describe_code_mismatches(&c, &t.data, data, &plain)
            ));
        }
        match &t.absmax {
            Bnb4Absmax::Plain(a) => {
                let theirs = fx.f32s(v["absmax"].as_str().unwrap());
                if bits(a) != bits(&theirs) {
                    failures.push(format!("{}: absmax differs", c.name));
                }
            }
            Bnb4Absmax::Double(ours) => {
                let offset = fx.f32s(v["offset"].as_str().unwrap())[0];
                // PyTorch's parallel mean may round differently from ours in the last
                // bits; the rest is checked with bitsandbytes' own offset.
                let mean = absmax_mean(&plain);
                let ulps = (mean.to_bits() as i64 - offset.to_bits() as i64).abs();
                if ulps > 4 {
                    failures.push(format!(
                        "{}: offset {mean:e} vs bitsandbytes {offset:e} ({ulps} ulps)",
                        c.name
                    ));
                }
                let dq = DoubleQuantAbsmax::quantize_with_offset(&plain, offset);
                let (_, qabsmax) = fx.raw(v["qabsmax"].as_str().unwrap());
                if dq.q != qabsmax {
                    let n = dq.q.iter().zip(qabsmax).filter(|(a, b)| a != b).count();
                    failures.push(format!("{}: {n} qabsmax codes differ", c.name));
                }
                if bits(&dq.scale) != bits(&fx.f32s(v["state2_absmax"].as_str().unwrap())) {
                    failures.push(format!("{}: state2.absmax differs", c.name));
                }
                if bits(&dq.code[..]) != bits(&fx.f32s(v["state2_code"].as_str().unwrap())) {
                    failures.push(format!("{}: state2.code differs", c.name));
                }
                if ulps == 0 && ours != &dq {
                    failures.push(format!(
                        "{}: the full pipeline differs although the offsets agree",
                        c.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dequantized_output_matches_bitsandbytes() {
    let Some(fx) = Fixtures::load() else {
        println!("{SKIPPED}");
        return;
    };
    let mut failures = Vec::new();
    for v in fx.cases() {
        let c = case(&fx, v);
        // Decode bitsandbytes' own parts, through the view the runtime uses.
        let mut parts: HashMap<&str, &[u8]> = HashMap::new();
        parts.insert("data", fx.raw(v["data"].as_str().unwrap()).1);
        let roles: &[(&str, &str)] = if c.params.double_quant {
            &[
                ("absmax_q", "qabsmax"),
                ("absmax_offset", "offset"),
                ("absmax_scale", "state2_absmax"),
                ("absmax_code", "state2_code"),
            ]
        } else {
            &[("absmax", "absmax")]
        };
        for (role, key) in roles {
            parts.insert(role, fx.raw(c.v[*key].as_str().unwrap()).1);
        }
        let view = Bnb4View::from_parts(&c.params, &c.shape, &|r| parts.get(r).copied())
            .expect("view over bitsandbytes' parts");
        let out = view.dequantize();
        let mut native = Vec::new();
        for &x in &out {
            match c.params.orig_dtype {
                FloatDtype::F16 => native.extend(f16::from_f32(x).to_le_bytes()),
                FloatDtype::Bf16 => native.extend(bf16::from_f32(x).to_le_bytes()),
                FloatDtype::F32 => native.extend(x.to_le_bytes()),
            }
        }
        let digest: String = Sha256::digest(&native)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(name) = v["dequant"].as_str() {
            let theirs = fx.f32s(name);
            let differ: Vec<usize> = (0..out.len())
                .filter(|&i| out[i].to_bits() != theirs[i].to_bits())
                .collect();
            if let Some(&i) = differ.first() {
                failures.push(format!(
                    "{}: {} dequantized values differ, first at {i}: {:e} vs bitsandbytes {:e}",
                    c.name,
                    differ.len(),
                    out[i],
                    theirs[i]
                ));
            }
        }
        if digest != v["dequant_sha256"].as_str().unwrap() {
            failures.push(format!(
                "{}: SHA-256 of the dequantized output differs",
                c.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
