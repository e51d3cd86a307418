//! Helpers shared by the GPTQ and AWQ tests.

/// `‖x (a − b)ᵀ‖²` for `x [rows, k]`, `a, b [n, k]`, in f64.
pub fn output_error(x: &[f32], rows: usize, k: usize, a: &[f32], b: &[f32], n: usize) -> f64 {
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(p, q)| f64::from(*p) - f64::from(*q))
        .collect();
    let mut total = 0.0;
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for o in 0..n {
            let v: f64 = xr
                .iter()
                .zip(&d[o * k..(o + 1) * k])
                .map(|(p, q)| f64::from(*p) * q)
                .sum();
            total += v * v;
        }
    }
    total
}
