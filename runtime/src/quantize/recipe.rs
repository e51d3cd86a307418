//! Quantization recipes: the method and its parameters, and the named presets that reproduce
//! the FP16-vs-4-bit comparison users run with bitsandbytes, AutoGPTQ and AutoAWQ.

use qrt_format::quant::FloatDtype;
use std::path::PathBuf;

use qrt_format::container::Metadata;

use crate::RuntimeError;

/// How the weight matrices of the transformer blocks are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// 16-bit floats (no quantization).
    Fp16,
    /// bitsandbytes NF4.
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
    /// LLM.int8(): row-wise int8 weights; activation outliers above `threshold` in 16 bits
    /// (threshold 0: weight-only int8).
    Int8 {
        /// Outlier threshold on |activation|.
        threshold: f32,
    },
    /// GPTQ (Frantar et al.).
    Gptq,
    /// AWQ (Lin et al.).
    Awq,
    /// Round-to-nearest per group.
    Rtn,
}

impl Method {
    /// The method's name in recipes and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Fp16 => "fp16",
            Method::Nf4 => "nf4",
            Method::Fp4 => "fp4",
            Method::Int8 { .. } => "int8",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
            Method::Rtn => "rtn",
        }
    }

    /// Whether the method needs calibration data.
    pub fn needs_calibration(&self) -> bool {
        matches!(self, Method::Gptq | Method::Awq)
    }
}

/// Calibration data for GPTQ and AWQ.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Plain text (samples separated by blank lines) or JSONL with a `text` field.
    pub path: PathBuf,
    /// Windows drawn.
    pub samples: usize,
    /// Tokens per window.
    pub seqlen: usize,
    /// Seed of the window positions.
    pub seed: u64,
}

/// Everything that decides how a model is quantized; recorded in the output file.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Preset name, when one was used.
    pub preset: Option<String>,
    /// The method.
    pub method: Method,
    /// Bits per weight of integer methods (GPTQ, AWQ, RTN).
    pub bits: u32,
    /// Group size of GPTQ, AWQ and RTN (`None`: one group per output row); block size of
    /// NF4/FP4.
    pub group_size: Option<usize>,
    /// Symmetric quantization (GPTQ, RTN).
    pub sym: bool,
    /// GPTQ act-order (columns by decreasing Hessian diagonal).
    pub act_order: bool,
    /// GPTQ dampening, a fraction of the mean Hessian diagonal.
    pub damp: f64,
    /// bitsandbytes double quantization of the absmax values.
    pub double_quant: bool,
    /// bitsandbytes compute dtype.
    pub compute_dtype: FloatDtype,
    /// Quantize the output head too (default: it stays in 16 bits).
    pub quantize_head: bool,
    /// Calibration data (GPTQ, AWQ).
    pub calibration: Option<Calibration>,
}

impl Recipe {
    /// A recipe with the defaults of `method`.
    pub fn for_method(method: Method) -> Self {
        let (bits, group_size) = match method {
            Method::Nf4 | Method::Fp4 => (4, Some(64)),
            Method::Int8 { .. } => (8, None),
            Method::Fp16 => (16, None),
            Method::Gptq | Method::Awq | Method::Rtn => (4, Some(128)),
        };
        Self {
            preset: None,
            sym: method == Method::Gptq,
            act_order: method == Method::Gptq,
            double_quant: matches!(method, Method::Nf4 | Method::Fp4),
            method,
            bits,
            group_size,
            damp: 0.01,
            compute_dtype: FloatDtype::F16,
            quantize_head: false,
            calibration: None,
        }
    }

    /// Checks the parameters against the method and the layer widths `k` of the model.
    pub fn validate(&self, input_widths: &[usize]) -> Result<(), RuntimeError> {
        let bad = |m: String| Err(RuntimeError::InvalidRequest(m));
        match self.method {
            Method::Gptq | Method::Rtn if ![2, 3, 4, 8].contains(&self.bits) => {
                return bad(format!(
                    "{} supports 2, 3, 4 or 8 bits, not {}",
                    self.method.name(),
                    self.bits
                ))
            }
            Method::Awq if self.bits != 4 => {
                return bad(format!("awq supports 4 bits, not {}", self.bits))
            }
            _ => {}
        }
        if let Some(g) = self.group_size {
            if g == 0 {
                return bad("the group size must be positive".into());
            }
            // A group size that does not divide a width leaves a shorter last group (as
            // AutoGPTQ does); one wider than a layer is a mistake.
            if let Some(k) = input_widths.iter().find(|&&k| g > k) {
                return bad(format!("group size {g} is wider than the layer width {k}"));
            }
        } else if matches!(self.method, Method::Awq | Method::Nf4 | Method::Fp4) {
            return bad(format!("{} needs a group (block) size", self.method.name()));
        }
        if !(0.0..1.0).contains(&self.damp) {
            return bad(format!("--damp {} must be in [0, 1)", self.damp));
        }
        if self.method.needs_calibration() && self.calibration.is_none() {
            return bad(format!(
                "{} needs calibration data (--calib FILE)",
                self.method.name()
            ));
        }
        Ok(())
    }

    /// Records the recipe under `quantization.*`.
    pub fn to_metadata(&self, m: &mut Metadata) {
        m.insert("quantization.method", self.method.name());
        if let Some(p) = &self.preset {
            m.insert("quantization.preset", p.as_str());
        }
        m.insert("quantization.bits", self.bits);
        m.insert(
            "quantization.group_size",
            self.group_size.map_or(-1i64, |g| g as i64),
        );
        m.insert("quantization.sym", self.sym);
        m.insert("quantization.act_order", self.act_order);
        m.insert("quantization.damp", self.damp);
        m.insert("quantization.double_quant", self.double_quant);
        m.insert("quantization.compute_dtype", self.compute_dtype.name());
        m.insert("quantization.quantize_head", self.quantize_head);
        if let Method::Int8 { threshold } = self.method {
            m.insert("quantization.int8_threshold", threshold);
        }
        if let Some(c) = &self.calibration {
            m.insert("quantization.calib.file", c.path.display().to_string());
            m.insert("quantization.calib.samples", c.samples as u64);
            m.insert("quantization.calib.seqlen", c.seqlen as u64);
            m.insert("quantization.calib.seed", c.seed);
        }
    }
}

/// A named preset: its name, what it reproduces, and its recipe.
pub struct Preset {
    /// Name used with `--preset`.
    pub name: &'static str,
    /// One line on what it is and what it reproduces.
    pub description: &'static str,
    /// Builds its recipe.
    pub recipe: fn() -> Recipe,
}

fn with(method: Method, f: impl FnOnce(&mut Recipe)) -> Recipe {
    let mut r = Recipe::for_method(method);
    f(&mut r);
    r
}

/// The presets, in the order of the comparison table.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "fp16_baseline",
        description: "FP16 weights, nothing quantized: the reference every other preset is compared with",
        recipe: || Recipe::for_method(Method::Fp16),
    },
    Preset {
        name: "bnb_8bit",
        description: "bitsandbytes LLM.int8(): int8 row-wise weights, activation outliers (|x| > 6) in 16 bits (load_in_8bit=True)",
        recipe: || Recipe::for_method(Method::Int8 { threshold: 6.0 }),
    },
    Preset {
        name: "bnb_4bit_nf4",
        description: "bitsandbytes NF4, block 64, double quantization, fp16 compute (load_in_4bit, nf4, double quant)",
        recipe: || Recipe::for_method(Method::Nf4),
    },
    Preset {
        name: "bnb_4bit_fp4",
        description: "bitsandbytes FP4, block 64, double quantization, fp16 compute",
        recipe: || Recipe::for_method(Method::Fp4),
    },
    Preset {
        name: "bnb_4bit_nf4_no_double",
        description: "bitsandbytes NF4, block 64, fp32 absmax (no double quantization), fp16 compute",
        recipe: || with(Method::Nf4, |r| r.double_quant = false),
    },
    Preset {
        name: "bnb_4bit_nf4_bf16",
        description: "bitsandbytes NF4, block 64, double quantization, bf16 compute (bnb_4bit_compute_dtype=bfloat16)",
        recipe: || with(Method::Nf4, |r| r.compute_dtype = FloatDtype::Bf16),
    },
    Preset {
        name: "gptq_4bit_g128",
        description: "GPTQ 4-bit, group 128, symmetric, act-order, damp 0.01 (AutoGPTQ defaults)",
        recipe: || Recipe::for_method(Method::Gptq),
    },
    Preset {
        name: "gptq_4bit_g32",
        description: "GPTQ 4-bit, group 32, symmetric, act-order, damp 0.01",
        recipe: || with(Method::Gptq, |r| r.group_size = Some(32)),
    },
    Preset {
        name: "gptq_3bit_g128",
        description: "GPTQ 3-bit, group 128, symmetric, act-order, damp 0.01",
        recipe: || with(Method::Gptq, |r| r.bits = 3),
    },
    Preset {
        name: "awq_4bit_g128",
        description: "AWQ 4-bit, group 128, zero point: activation-aware scales, clipping search (AutoAWQ GEMM)",
        recipe: || Recipe::for_method(Method::Awq),
    },
    Preset {
        name: "rtn_4bit_g128",
        description: "round-to-nearest 4-bit, group 128, asymmetric: the naive baseline",
        recipe: || with(Method::Rtn, |r| r.sym = false),
    },
];

/// The preset called `name`.
pub fn preset(name: &str) -> Result<Recipe, RuntimeError> {
    let p = PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        RuntimeError::InvalidRequest(format!(
            "unknown preset '{name}' (known: {})",
            PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let mut r = (p.recipe)();
    r.preset = Some(p.name.to_string());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_and_names_itself() {
        for p in PRESETS {
            let r = preset(p.name).unwrap();
            assert_eq!(r.preset.as_deref(), Some(p.name));
        }
        assert!(preset("gptq_5bit").is_err());
        let g = preset("gptq_3bit_g128").unwrap();
        assert_eq!(
            (g.bits, g.group_size, g.sym, g.act_order),
            (3, Some(128), true, true)
        );
        assert!(!preset("bnb_4bit_nf4_no_double").unwrap().double_quant);
    }

    #[test]
    fn validation_refuses_what_cannot_work() {
        let r = preset("rtn_4bit_g128").unwrap();
        assert!(
            r.validate(&[576, 1536]).is_ok(),
            "a shorter last group is allowed"
        );
        assert!(r
            .validate(&[64, 1536])
            .unwrap_err()
            .to_string()
            .contains("wider"));
        let g = preset("gptq_4bit_g128").unwrap();
        assert!(g
            .validate(&[1024])
            .unwrap_err()
            .to_string()
            .contains("--calib"));
        let bad = with(Method::Rtn, |r| r.bits = 5);
        assert!(bad.validate(&[1024]).is_err());
    }
}
