//! bitsandbytes' signed 8-bit dynamic map and its blockwise 8-bit quantization, used
//! for the "double-quantized" block scales of `nf4` / `fp4` tensors.
//!
//! The map is `bitsandbytes.functional.create_dynamic_map(signed=True,
//! max_exponent_bits=7, total_bits=8)`: for each decade `10^(i-6)`, `i = 0..7`, the
//! midpoints of `2^i` equal steps of `linspace(0.1, 1, 2^i + 1)`, scaled by the decade,
//! with both signs; plus `0` and `1`; sorted ascending (127 negative values, `0` at
//! index 127, 127 positive values and `1` at index 255). It is computed here with
//! PyTorch's float32 arithmetic (its CPU `linspace`, an f32 midpoint, an f32 product
//! with the decade rounded to f32), so the values are bit for bit the ones
//! bitsandbytes uses (see [`create_dynamic_map`] for the one CPU-dependent detail).
//!
//! Quantization follows bitsandbytes' `kQuantizeBlockwise` / `dQuantize` (deterministic
//! rounding): each block is scaled by the GPU reciprocal of its absolute maximum
//! ([`kernel_reciprocal`]), then a 7-step binary search over the sorted map ends at
//! an entry (the pivot) and the value is rounded to the nearer of the pivot and its
//! neighbour on the value's side, comparing with their f32 midpoint (a value exactly
//! on the midpoint keeps the pivot).

/// Number of entries in an 8-bit map.
pub const DYNAMIC_MAP_LEN: usize = 256;

/// The powers of ten `10^(i - 6)` of the map's decades, `i = 0..7`, as the f64 values
/// Python's `10 ** (i - 6)` gives.
const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// `bitsandbytes.functional.create_dynamic_map()` (signed, 7 exponent bits, 8 bits),
/// as PyTorch computes it on x86 hosts with AVX2 or AVX-512, whose CPU `linspace` uses
/// fused multiply-adds (on older CPUs a few entries of bitsandbytes' map differ in the
/// last bit; files store the map they were quantized with, so decoding never depends
/// on this).
pub fn create_dynamic_map() -> [f32; DYNAMIC_MAP_LEN] {
    let mut data: Vec<f32> = Vec::with_capacity(DYNAMIC_MAP_LEN);
    for (i, &decade) in DECADES.iter().enumerate() {
        let bounds = torch_linspace(0.1, 1.0, (1usize << i) + 1);
        // PyTorch multiplies a float32 tensor by a Python float in float32.
        let scale = decade as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut map = [0f32; DYNAMIC_MAP_LEN];
    map.copy_from_slice(&data);
    map
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: an f32 step,
/// the first half counted up from `start`, the second half down from `end`.
///
/// PyTorch's x86 builds compile this kernel with FMA contraction for their AVX2 and
/// AVX-512 code paths (the ones any current GPU host runs), so each point is one fused
/// multiply-add; a CPU without AVX2 would round `step × i` separately and get a
/// slightly different map (12 of the 65 points of the last decade differ). Checked
/// against bitsandbytes' map on an AVX-512 host (`tests/fixtures/bnb`).
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// The index of the map entry bitsandbytes' `dQuantize<0>` picks for `x` (`x` already
/// divided by its block's absmax, so nominally in `[-1, 1]`; NaN gives 0).
pub fn quantize_value(code: &[f32; DYNAMIC_MAP_LEN], x: f32) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = code[pivot];
    let mut step = 64usize;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    // Indices are < 256 by construction.
    let pick = if x > val {
        let midpoint = (upper + val) * 0.5;
        if x > midpoint {
            upper_pivot
        } else {
            pivot
        }
    } else {
        let midpoint = (lower + val) * 0.5;
        if x < midpoint {
            lower_pivot
        } else {
            pivot
        }
    };
    pick as u8
}

/// Blockwise 8-bit quantization (`bitsandbytes.functional.quantize_blockwise` without
/// nesting): returns the codes and the absmax of each block of `block_size` values
/// (the last block may be partial).
///
/// # Panics
/// If `block_size` is 0.
pub fn quantize_blockwise(
    x: &[f32],
    code: &[f32; DYNAMIC_MAP_LEN],
    block_size: usize,
) -> (Vec<u8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(block_size));
    for block in x.chunks(block_size) {
        let amax = block_absmax(block);
        let inv = kernel_reciprocal(amax);
        absmax.push(amax);
        q.extend(
            block
                .iter()
                .map(|&v| quantize_value(code, scale_ftz(v, inv))),
        );
    }
    (q, absmax)
}

/// The inverse of [`quantize_blockwise`]: `code[q[i]] × absmax[i / block_size]` in f32
/// (subnormal factors and products flushed to zero, as in bitsandbytes' kernel).
///
/// # Panics
/// If `block_size` is 0 or `absmax` has fewer than `ceil(q.len() / block_size)` entries.
pub fn dequantize_blockwise(
    q: &[u8],
    absmax: &[f32],
    code: &[f32; DYNAMIC_MAP_LEN],
    block_size: usize,
) -> Vec<f32> {
    q.chunks(block_size)
        .zip(absmax)
        .flat_map(|(block, &a)| {
            block
                .iter()
                .map(move |&c| scale_ftz(code[usize::from(c)], a))
        })
        .collect()
}

/// The absolute maximum of a block as bitsandbytes reduces it (`fmaxf` from `-FLT_MAX`,
/// so NaNs are ignored; subnormals count as zero).
pub(crate) fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(-f32::MAX, |m, v| m.max(ftz(v.abs())))
}

/// `x` with a subnormal value flushed to a zero of the same sign, as the GPU does in
/// bitsandbytes' kernels (built with `--use_fast_math`, which implies `-ftz=true`).
#[inline]
pub(crate) fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0f32.copysign(x)
    } else {
        x
    }
}

/// `x × s` as a flush-to-zero f32 multiplication.
#[inline]
pub(crate) fn scale_ftz(x: f32, s: f32) -> f32 {
    ftz(ftz(x) * ftz(s))
}

/// Ten-bit mantissas (bits 13..23 of an f32) whose GPU reciprocal is one ulp above the
/// IEEE one: bit `m % 64` of word `m / 64`.
const RCP_UP: [u64; 16] = [
    0x0001000000160800,
    0x0002030608000000,
    0x0000000002180400,
    0x1000000600021800,
    0x0003050000000010,
    0x0008000004000000,
    0x0080020203081804,
    0x0a04010200080462,
    0x0018000880090380,
    0x0008000000000000,
    0x3000801808000d80,
    0x0000000001100000,
    0x008020a0002e0000,
    0x2000550000000000,
    0x0001000109000000,
    0x0000002018000100,
];

/// Ten-bit mantissas whose GPU reciprocal is one ulp below the IEEE one.
const RCP_DOWN: [u64; 16] = [
    0x4000400100004040,
    0xc000000001c02040,
    0x0009000100000080,
    0x0000000028400000,
    0x0000000080040000,
    0x0000000020000020,
    0x2800000080020000,
    0x0000000006000000,
    0x0000400000000000,
    0x0000004000000000,
    0x0000000000000000,
    0x0000800000000000,
    0x0000000000008000,
    0x0000000000000000,
    0x3440000000000000,
    0x0104000000000020,
];

/// The reciprocal bitsandbytes' kernels scale a block with: `1.0f / absmax` compiled
/// with `--use_fast_math`, i.e. the GPU's approximate (flush-to-zero) reciprocal.
/// It is within one ulp of the IEEE result but differs from it for about 13% of
/// inputs, which moves values that fall exactly on a decision threshold (frequent with
/// coarse bf16 data). For every input whose significand fits in 11 bits — all f16 and
/// bf16 values, hence the absmax of any f16/bf16 block — the deviation is tabulated
/// (the bit sets `RCP_UP` and `RCP_DOWN`, measured on an NVIDIA H200 by
/// `tools/bnb_parity.py`, which checks that it depends only on the mantissa over
/// exponents −100..100); other inputs get the IEEE reciprocal.
pub fn kernel_reciprocal(a: f32) -> f32 {
    let a = ftz(a);
    let r = 1.0 / a;
    let bits = a.to_bits();
    if !a.is_normal() || !r.is_normal() || bits & 0x1FFF != 0 {
        return ftz(r);
    }
    let m = ((bits >> 13) & 0x3FF) as usize;
    let (word, bit) = (m / 64, m % 64);
    // `r` is normal and not the largest float (a ≥ 2^-126 > 1/f32::MAX), so ±1 ulp stays
    // finite and of the same sign.
    if RCP_UP[word] >> bit & 1 == 1 {
        f32::from_bits(r.to_bits() + 1)
    } else if RCP_DOWN[word] >> bit & 1 == 1 {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    }
}
