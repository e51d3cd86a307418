//! The RMSNorm kernels with f16 activations, f32 ones, and f32 ones with 16-bit outputs
//! (through the host helpers), against the CPU reference.

use half::{bf16, f16};
use qrt_kernels::{CudaDevice, Half16};
use qrt_runtime::cpu::rms_norm_row;
use qrt_runtime::sampling::Rng;

use super::{rel_err, Checks};

fn reference(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, r) in out.chunks_mut(cols).zip(x.chunks(cols)) {
        rms_norm_row(r, w, eps, o);
    }
    out
}

/// Checks the norm kernels at odd and real widths.
pub fn run(dev: &CudaDevice, rng: &mut Rng, checks: &mut Checks) -> anyhow::Result<()> {
    let eps = 1e-5;
    for &(rows, cols) in &[
        (1usize, 576usize),
        (7, 2048),
        (33, 4096),
        (3, 1000),
        (5, 129),
        (2, 14336),
    ] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.next_normal() * 3.0).collect();
        let w: Vec<f32> = (0..cols).map(|_| 1.0 + 0.1 * rng.next_normal()).collect();
        let want = reference(&x, &w, cols, eps);

        let got = dev.rms_norm_f32(&x, &w, rows, cols, eps)?;
        let mut list = vec![("rms_norm_f32", rel_err(&got, &want), 1e-6)];

        let x16: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
        let x16_f32: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
        let want16 = reference(&x16_f32, &w, cols, eps);
        let got16: Vec<f32> = dev
            .rms_norm_f16(&x16, &w, rows, cols, eps)?
            .iter()
            .map(|v| v.to_f32())
            .collect();
        list.push(("rms_norm_f16", rel_err(&got16, &want16), 1e-3));

        // f32 in, 16-bit out: the prefill GEMMs' input.
        for (name, ty, to_f32, bound) in [
            (
                "rms_norm_f32_to_f16",
                Half16::F16,
                (|b| f16::from_bits(b).to_f32()) as fn(u16) -> f32,
                1e-3,
            ),
            (
                "rms_norm_f32_to_bf16",
                Half16::Bf16,
                |b| bf16::from_bits(b).to_f32(),
                1e-2,
            ),
        ] {
            let got: Vec<f32> = dev
                .rms_norm_f32_to_half16(ty, &x, &w, rows, cols, eps)?
                .into_iter()
                .map(to_f32)
                .collect();
            list.push((name, rel_err(&got, &want), bound));
        }

        for (name, err, bound) in list {
            checks.check(name, &format!("{rows}x{cols}"), err, bound);
        }
    }
    Ok(())
}
