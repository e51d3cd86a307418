//! Dense linear algebra for the quantizers: blocked Cholesky factorization, triangular inverse
//! and the upper Cholesky factor of an inverse, in f64 over row-major `k × k` matrices; and the
//! bounds-checked `gemm` wrapper the quantizers share.
//!
//! The factorizations are right-looking (Cholesky) and right-to-left (triangular inverse)
//! blocked algorithms: a small unblocked kernel on each `128 × 128` diagonal block and `gemm`
//! for everything else, spread over row blocks with rayon. Each costs about `k³/3` flops.
//! GPTQ needs `U` with `Uᵀ U = H⁻¹` ([`inverse_cholesky_upper`]); that is computed with one
//! Cholesky and one triangular inverse of the index-reversed `H` instead of the reference's
//! three steps ([`cholesky_lower`], [`cholesky_inverse`], [`cholesky_upper`]), which are here
//! too and give the same factor in twice the time.

use rayon::prelude::*;

/// Block size of the blocked algorithms (rows and columns of a diagonal block).
const NB: usize = 128;

/// A matrix that should be positive definite is not: the Cholesky pivot at `index` was not
/// positive (or not finite).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("matrix is not positive definite: Cholesky pivot {pivot:e} at index {index}")]
pub struct NotPositiveDefinite {
    /// The row/column whose pivot failed.
    pub index: usize,
    /// The value that should have been positive.
    pub pivot: f64,
}

/// Element types for [`gemm`].
pub(crate) trait Real: Copy + Send + Sync + 'static {
    /// One.
    const ONE: Self;
}

impl Real for f32 {
    const ONE: Self = 1.0;
}

impl Real for f64 {
    const ONE: Self = 1.0;
}

/// A read-only strided matrix view: element `(r, c)` is `data[off + r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<T> View<'_, T> {
    /// Panics unless every element of a `rows × cols` matrix lies inside `data`.
    fn check(&self, rows: usize, cols: usize) {
        let last = self.off + (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(last < self.data.len(), "matrix view out of bounds");
    }
}

/// `dst[m × n] = alpha · dst + beta · lhs[m × depth] · rhs[depth × n]` (without `alpha`,
/// `dst = beta · lhs · rhs`), on one thread. `dst` is row-major from `dst_off` with row stride
/// `dst_rs`. Bounds are checked, so the call is safe.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Real>(
    m: usize,
    n: usize,
    depth: usize,
    dst: &mut [T],
    dst_off: usize,
    dst_rs: usize,
    alpha: Option<T>,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
    beta: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_off + (m - 1) * dst_rs + n <= dst.len(),
        "gemm destination out of bounds"
    );
    if depth == 0 {
        assert!(
            alpha.is_some(),
            "an empty product needs an accumulating destination"
        );
        return;
    }
    lhs.check(m, depth);
    rhs.check(depth, n);
    // SAFETY: all three views were checked to lie inside their slices; `dst` is borrowed
    // mutably, so it cannot overlap the shared borrows behind `lhs` and `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.as_mut_ptr().add(dst_off),
            1,
            dst_rs as isize,
            alpha.is_some(),
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            alpha.unwrap_or(T::ONE),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Cholesky factorization in place: on return the lower triangle of `a` (row-major `k × k`,
/// symmetric positive definite; only its lower triangle is read) holds `L` with `L Lᵀ = A`,
/// and the strict upper triangle is zero.
///
/// # Errors
/// [`NotPositiveDefinite`] when a pivot is not positive; `a` is then partly overwritten.
///
/// # Panics
/// If `a.len() != k * k`.
pub fn cholesky_lower(a: &mut [f64], k: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), k * k, "cholesky_lower: matrix is not {k}x{k}");
    let mut panel = Vec::new();
    let mut j0 = 0;
    while j0 < k {
        let nb = NB.min(k - j0);
        let j1 = j0 + nb;
        let rows = k - j0;
        // The panel A[j0.., j0..j1], contiguous: the diagonal block, then the rows below.
        panel.clear();
        panel.resize(rows * nb, 0.0);
        for r in 0..rows {
            let src = (j0 + r) * k + j0;
            panel[r * nb..(r + 1) * nb].copy_from_slice(&a[src..src + nb]);
        }
        let (diag, below) = panel.split_at_mut(nb * nb);
        cholesky_unblocked(diag, nb).map_err(|e| NotPositiveDefinite {
            index: j0 + e.index,
            pivot: e.pivot,
        })?;
        // A21 ← A21 L11⁻ᵀ as a product with the inverted diagonal block.
        let mut inv = diag.to_vec();
        invert_lower_unblocked(&mut inv, nb, 0, nb);
        let inv = &inv;
        below.par_chunks_mut(nb * 64).for_each(|rows| {
            let m = rows.len() / nb;
            let src = rows.to_vec();
            gemm(
                m,
                nb,
                nb,
                rows,
                0,
                nb,
                None,
                View {
                    data: &src,
                    off: 0,
                    rs: nb,
                    cs: 1,
                },
                View {
                    data: inv,
                    off: 0,
                    rs: 1,
                    cs: nb,
                },
                1.0,
            );
        });
        for r in 0..rows {
            let dst = (j0 + r) * k + j0;
            a[dst..dst + nb].copy_from_slice(&panel[r * nb..(r + 1) * nb]);
        }
        // A22 ← A22 − A21 A21ᵀ on the lower triangle, one block of rows per task.
        if j1 < k {
            let below = &panel[nb * nb..];
            a[j1 * k..]
                .par_chunks_mut(NB * k)
                .enumerate()
                .for_each(|(t, chunk)| {
                    let r0 = j1 + t * NB;
                    let m = chunk.len() / k;
                    let cols = r0 + m - j1;
                    gemm(
                        m,
                        cols,
                        nb,
                        chunk,
                        j1,
                        k,
                        Some(1.0),
                        View {
                            data: below,
                            off: (r0 - j1) * nb,
                            rs: nb,
                            cs: 1,
                        },
                        View {
                            data: below,
                            off: 0,
                            rs: 1,
                            cs: nb,
                        },
                        -1.0,
                    );
                });
        }
        j0 = j1;
    }
    zero_strict_upper(a, k);
    Ok(())
}

/// Unblocked Cholesky of an `m × m` row-major block in place (lower; upper zeroed).
fn cholesky_unblocked(d: &mut [f64], m: usize) -> Result<(), NotPositiveDefinite> {
    for j in 0..m {
        let (upper, lower) = d.split_at_mut((j + 1) * m);
        let rowj = &mut upper[j * m..];
        let pivot = rowj[j] - rowj[..j].iter().map(|v| v * v).sum::<f64>();
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(NotPositiveDefinite { index: j, pivot });
        }
        let ljj = pivot.sqrt();
        rowj[j] = ljj;
        rowj[j + 1..].fill(0.0);
        let rowj = &upper[j * m..j * m + j];
        for rowi in lower.chunks_mut(m) {
            let s: f64 = rowi[..j].iter().zip(rowj).map(|(a, b)| a * b).sum();
            rowi[j] = (rowi[j] - s) / ljj;
        }
    }
    Ok(())
}

/// Inverts in place the `m × m` lower-triangular block whose top-left element is `a[c0]`
/// (rows `0..m` of `a`, row stride `ld`, columns `c0..c0 + m`); its strict upper part becomes
/// zero.
fn invert_lower_unblocked(a: &mut [f64], ld: usize, c0: usize, m: usize) {
    let mut x = vec![0.0; m * m];
    for j in 0..m {
        x[j * m + j] = 1.0 / a[j * ld + c0 + j];
        for i in j + 1..m {
            let li = &a[i * ld + c0..i * ld + c0 + i];
            let s: f64 = (j..i).map(|p| li[p] * x[p * m + j]).sum();
            x[i * m + j] = -s / a[i * ld + c0 + i];
        }
    }
    for i in 0..m {
        a[i * ld + c0..i * ld + c0 + m].copy_from_slice(&x[i * m..(i + 1) * m]);
    }
}

/// Sets the strict upper triangle of a row-major `k × k` matrix to zero.
fn zero_strict_upper(a: &mut [f64], k: usize) {
    a.par_chunks_mut(k)
        .enumerate()
        .for_each(|(i, row)| row[i + 1..].fill(0.0));
}

/// Inverts a lower-triangular matrix in place (row-major `k × k`, nonzero diagonal; the strict
/// upper triangle is ignored and left zero). Blocked: the diagonal blocks are inverted first,
/// then block columns right to left with `X_ij = −(Σ_{p=j+1..i} X_ip L_pj) X_jj`.
///
/// # Panics
/// If `l.len() != k * k`.
pub fn invert_lower_triangular(l: &mut [f64], k: usize) {
    assert_eq!(
        l.len(),
        k * k,
        "invert_lower_triangular: matrix is not {k}x{k}"
    );
    zero_strict_upper(l, k);
    l.par_chunks_mut(NB * k)
        .enumerate()
        .for_each(|(b, chunk)| invert_lower_unblocked(chunk, k, b * NB, chunk.len() / k));
    let blocks = k.div_ceil(NB);
    let mut panel = Vec::new();
    for jb in (0..blocks.saturating_sub(1)).rev() {
        let j0 = jb * NB;
        let j1 = j0 + NB;
        let rows = k - j0;
        // Block column j: X_jj (already inverted) on top, the untouched L_pj (p > j) below.
        panel.clear();
        panel.resize(rows * NB, 0.0);
        for r in 0..rows {
            let src = (j0 + r) * k + j0;
            panel[r * NB..(r + 1) * NB].copy_from_slice(&l[src..src + NB]);
        }
        let (xjj, lcol) = panel.split_at(NB * NB);
        l[j1 * k..]
            .par_chunks_mut(NB * k)
            .enumerate()
            .for_each_init(
                || vec![0.0; NB * NB],
                |tmp, (t, chunk)| {
                    let i0 = j1 + t * NB;
                    let m = chunk.len() / k;
                    let depth = i0 + m - j1;
                    gemm(
                        m,
                        NB,
                        depth,
                        tmp,
                        0,
                        NB,
                        None,
                        View {
                            data: chunk,
                            off: j1,
                            rs: k,
                            cs: 1,
                        },
                        View {
                            data: lcol,
                            off: 0,
                            rs: NB,
                            cs: 1,
                        },
                        1.0,
                    );
                    gemm(
                        m,
                        NB,
                        NB,
                        chunk,
                        j0,
                        k,
                        None,
                        View {
                            data: tmp,
                            off: 0,
                            rs: NB,
                            cs: 1,
                        },
                        View {
                            data: xjj,
                            off: 0,
                            rs: NB,
                            cs: 1,
                        },
                        -1.0,
                    );
                },
            );
    }
}

/// The inverse of `A` from its lower Cholesky factor `L` (`A = L Lᵀ`): `A⁻¹ = L⁻ᵀ L⁻¹`, like
/// `torch.cholesky_inverse`. Returns the full symmetric row-major `k × k` inverse.
///
/// # Panics
/// If `l.len() != k * k`.
pub fn cholesky_inverse(l: &[f64], k: usize) -> Vec<f64> {
    assert_eq!(l.len(), k * k, "cholesky_inverse: matrix is not {k}x{k}");
    let mut x = l.to_vec();
    invert_lower_triangular(&mut x, k);
    let x = &x;
    let mut out = vec![0.0; k * k];
    // Rows i0.. of Xᵀ X only see rows p ≥ i0 of X (X is lower triangular).
    out.par_chunks_mut(NB * k)
        .enumerate()
        .for_each(|(b, chunk)| {
            let i0 = b * NB;
            let m = chunk.len() / k;
            gemm(
                m,
                k,
                k - i0,
                chunk,
                0,
                k,
                None,
                View {
                    data: x,
                    off: i0 * k + i0,
                    rs: 1,
                    cs: k,
                },
                View {
                    data: x,
                    off: i0 * k,
                    rs: k,
                    cs: 1,
                },
                1.0,
            );
        });
    out
}

/// Upper Cholesky factor in place: on return `a` holds `U` (upper triangular, positive
/// diagonal) with `Uᵀ U = A`, like `torch.linalg.cholesky(A, upper=True)`.
///
/// # Errors
/// [`NotPositiveDefinite`] when a pivot is not positive.
///
/// # Panics
/// If `a.len() != k * k`.
pub fn cholesky_upper(a: &mut [f64], k: usize) -> Result<(), NotPositiveDefinite> {
    cholesky_lower(a, k)?;
    for i in 0..k {
        for j in i + 1..k {
            a.swap(i * k + j, j * k + i);
        }
    }
    Ok(())
}

/// GPTQ's inverse factor in place: on return `h` holds the upper-triangular `U` with
/// `Uᵀ U = H⁻¹`, i.e. `cholesky_upper(cholesky_inverse(cholesky_lower(H)))`, computed as
/// `J L̃⁻¹ J` where `J` reverses the index order and `L̃ L̃ᵀ = J H J` (`J H J` and `J X J` are
/// reversals of the row-major storage). One Cholesky and one triangular inverse: `2k³/3`
/// flops instead of `4k³/3`, and `H⁻¹` is never formed.
///
/// # Errors
/// [`NotPositiveDefinite`] when `H` is not (numerically) positive definite; `index` is in the
/// original order.
///
/// # Panics
/// If `h.len() != k * k`.
pub fn inverse_cholesky_upper(h: &mut [f64], k: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(
        h.len(),
        k * k,
        "inverse_cholesky_upper: matrix is not {k}x{k}"
    );
    h.reverse();
    cholesky_lower(h, k).map_err(|e| NotPositiveDefinite {
        index: k - 1 - e.index,
        pivot: e.pivot,
    })?;
    invert_lower_triangular(h, k);
    h.reverse();
    Ok(())
}
