//! RMSNorm over rows (`kernels/cuda/norm.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use crate::error::cuda_err;
use crate::launch::{block_threads, params, Param};
use crate::layouts::qrt_rms_norm_args;
use crate::{CudaDevice, Half16, KernelError};

// SAFETY: a C struct of 4-byte integers and a float with no padding, whose
// layout nvcc and bindgen agree on (static_assert in the header, size tests).
unsafe impl DeviceRepr for qrt_rms_norm_args {}

/// PTX module holding the norm kernels.
const MODULE: &str = "norm";

/// An activation type the norm kernels take (weights are always f32).
trait Activation: DeviceRepr + Copy {
    /// The plain RMSNorm kernel for this type.
    const RMS_NORM: &'static str;
    /// Elements per 16-byte vector load in the kernels.
    const VEC: usize;
    /// Fill value for outputs before a launch, so that unwritten elements show.
    const POISON: Self;
}

impl Activation for f32 {
    const RMS_NORM: &'static str = "qrt_rms_norm_f32";
    const VEC: usize = 4;
    const POISON: Self = f32::NAN;
}

impl Activation for f16 {
    const RMS_NORM: &'static str = "qrt_rms_norm_f16";
    const VEC: usize = 8;
    const POISON: Self = f16::NAN;
}

/// Checks a row-wise call: `x_len` activations for `rows` x `cols` and `cols`
/// weights. Returns the kernel arguments for contiguous rows.
fn row_args(
    rows: usize,
    cols: usize,
    eps: f32,
    x_len: usize,
    weights: usize,
) -> Result<qrt_rms_norm_args, KernelError> {
    if cols == 0 {
        return Err(KernelError::Shape("cols must be at least 1".into()));
    }
    let cols32 = u32::try_from(cols)
        .map_err(|_| KernelError::Shape(format!("cols = {cols} does not fit in 32 bits")))?;
    // The grid has one block per row; gridDim.x is at most 2^31 - 1.
    let rows32 = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| KernelError::Shape(format!("rows = {rows} exceeds 2^31 - 1")))?;
    let elements = rows
        .checked_mul(cols)
        .ok_or_else(|| KernelError::Shape(format!("rows * cols = {rows} * {cols} overflows")))?;
    if x_len != elements {
        return Err(KernelError::Shape(format!(
            "x has {x_len} elements, expected rows * cols = {rows} * {cols} = {elements}"
        )));
    }
    if weights != cols {
        return Err(KernelError::Shape(format!(
            "the weight has {weights} elements, expected cols = {cols}"
        )));
    }
    Ok(qrt_rms_norm_args {
        rows: rows32,
        cols: cols32,
        x_stride: cols32,
        y_stride: cols32,
        eps,
    })
}

/// One block per row; threads: enough for one vector load each per row
/// (rounded up to whole warps), between one warp and the kernels' maximum.
fn launch_config(args: &qrt_rms_norm_args, vec: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (args.rows, 1, 1),
        block_dim: (block_threads((args.cols as usize).div_ceil(vec)), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The norm kernel from f32 rows to 16-bit values of type `ty` (`qrt_rms_norm_f32_to_<ty>`).
pub(crate) fn rms_norm_to_half16_kernel(ty: Half16) -> String {
    format!("qrt_rms_norm_f32_to_{}", ty.name())
}

impl CudaDevice {
    /// RMSNorm of `rows` rows of `cols` f32 at `x` into `y`, with the `cols` f32 weights at
    /// `w`; stream-ordered. `y` is f32 (and may be `x`) when `out` is None, else 16-bit values of
    /// type `out` (the input of a tensor-core GEMM).
    ///
    /// # Safety
    /// `x` must hold `rows * cols` f32, `y` room for as many values of its type, `w` `cols`
    /// f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rms_norm_rows(
        &self,
        out: Option<Half16>,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        let kernel = match out {
            None => f32::RMS_NORM.to_string(),
            Some(ty) => rms_norm_to_half16_kernel(ty),
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.norm_rows(&kernel, &[x, w, y], rows, cols, eps) }
    }

    /// Launches norm kernel `kernel` (f32 input activations) with the arguments and then the device
    /// addresses `pointers`, in the kernel's order.
    ///
    /// # Safety
    /// The addresses must be what the kernel reads and writes, each of `rows * cols` values
    /// (the weight `cols`).
    unsafe fn norm_rows(
        &self,
        kernel: &str,
        pointers: &[u64],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        let args = row_args(rows, cols, eps, rows * cols, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let cfg = launch_config(&args, f32::VEC);
        let mut list: Vec<*mut std::ffi::c_void> = params([&args]).to_vec();
        list.extend(pointers.iter().map(Param::ptr));
        // SAFETY: the norm args by value then the pointers, as the kernel takes them; the
        // caller guarantees the addresses, which `pointers` keeps alive for the call.
        unsafe { self.launch(MODULE, kernel, cfg.grid_dim, cfg.block_dim.0, &mut list) }
    }

    /// RMSNorm of each row of `x` (`rows` x `cols`, row-major):
    /// `y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w`, computed in f32.
    ///
    /// A host convenience (upload, launch, download, synchronous), used by self-tests.
    pub fn rms_norm_f32(
        &self,
        x: &[f32],
        w: &[f32],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<f32>, KernelError> {
        self.rms_norm(x, w, rows, cols, eps)
    }

    /// [`rms_norm_f32`](Self::rms_norm_f32) with f16 activations (input and
    /// output); f32 weight and f32 arithmetic.
    pub fn rms_norm_f16(
        &self,
        x: &[f16],
        w: &[f32],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<f16>, KernelError> {
        self.rms_norm(x, w, rows, cols, eps)
    }

    /// [`rms_norm_f32`](Self::rms_norm_f32) rounded to `ty` (the bits of each 16-bit value),
    /// as the prefill GEMMs' input is made (`qrt_rms_norm_f32_to_<ty>`).
    pub fn rms_norm_f32_to_half16(
        &self,
        ty: Half16,
        x: &[f32],
        w: &[f32],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<u16>, KernelError> {
        let kernel = rms_norm_to_half16_kernel(ty);
        // All ones: a NaN in f16 and in bf16.
        self.rms_norm_with(&kernel, x, w, (rows, cols, eps), u16::MAX)
    }

    fn rms_norm<T: Activation>(
        &self,
        x: &[T],
        w: &[f32],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<T>, KernelError> {
        self.rms_norm_with(T::RMS_NORM, x, w, (rows, cols, eps), T::POISON)
    }

    /// Uploads `x` and `w`, runs norm kernel `kernel` into an output filled with `poison`,
    /// and downloads it (synchronous).
    fn rms_norm_with<In: Activation, Out: DeviceRepr + Copy>(
        &self,
        kernel: &str,
        x: &[In],
        w: &[f32],
        (rows, cols, eps): (usize, usize, f32),
        poison: Out,
    ) -> Result<Vec<Out>, KernelError> {
        let args = row_args(rows, cols, eps, x.len(), w.len())?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let func = self.function(MODULE, kernel)?;
        let x_dev = self.upload("x", x)?;
        let w_dev = self.upload("w", w)?;
        let mut y_dev = self.upload("y (poisoned)", &vec![poison; x.len()])?;
        let what = format!("{kernel} over {rows} x {cols}");
        let mut launch = self.stream().launch_builder(&func);
        launch.arg(&args).arg(&x_dev).arg(&w_dev).arg(&mut y_dev);
        // SAFETY: the arguments match the kernel's parameters
        // (qrt_rms_norm_args, const In* x, const float* w, Out* y), every buffer
        // holds rows * cols (w: cols) elements as `args` says, and the block
        // size is a multiple of 32 no larger than QRT_MAX_BLOCK_THREADS.
        unsafe { launch.launch(launch_config(&args, In::VEC)) }
            .map_err(cuda_err(format_args!("launching {what}")))?;
        self.synchronize(&what)?;
        self.download("y", &y_dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layouts::QRT_MAX_BLOCK_THREADS;

    #[test]
    fn row_args_accepts_matching_shapes() {
        let args = row_args(3, 5, 1e-6, 15, 5).unwrap();
        assert_eq!((args.rows, args.cols), (3, 5));
        assert_eq!((args.x_stride, args.y_stride), (5, 5));
        assert_eq!(args.eps, 1e-6);
        // No rows is fine (nothing to launch).
        assert!(row_args(0, 5, 1e-6, 0, 5).is_ok());
    }

    #[test]
    fn row_args_rejects_bad_shapes() {
        let shape_err = |r: Result<qrt_rms_norm_args, KernelError>| match r {
            Err(KernelError::Shape(msg)) => msg,
            other => panic!("expected a shape error, got {other:?}"),
        };
        assert!(shape_err(row_args(2, 0, 1e-6, 0, 0)).contains("cols"));
        assert!(shape_err(row_args(2, 4, 1e-6, 7, 4)).contains("x has 7"));
        assert!(shape_err(row_args(2, 4, 1e-6, 9, 4)).contains("x has 9"));
        assert!(shape_err(row_args(2, 4, 1e-6, 8, 3)).contains("weight"));
        assert!(shape_err(row_args(1 << 31, 1, 1e-6, 1 << 31, 1)).contains("rows"));
        assert!(shape_err(row_args(1, 1 << 32, 1e-6, 1 << 32, 1 << 32)).contains("cols"));
        assert!(shape_err(row_args(usize::MAX / 2, 3, 1e-6, 0, 3)).contains("rows"));
    }

    #[test]
    fn launch_config_uses_whole_warps_within_limits() {
        let cfg = |cols: u32, vec: usize| {
            let args = row_args(7, cols as usize, 0.0, 7 * cols as usize, cols as usize).unwrap();
            let c = launch_config(&args, vec);
            assert_eq!(c.grid_dim, (7, 1, 1));
            assert_eq!(c.shared_mem_bytes, 0);
            c.block_dim.0
        };
        assert_eq!(cfg(1, 4), 32);
        assert_eq!(cfg(576, 4), 160);
        assert_eq!(cfg(576, 8), 96);
        assert_eq!(cfg(4096, 4), 1024);
        assert_eq!(cfg(1 << 20, 8), 1024);
        for cols in [1, 31, 33, 577, 1000, 5000, 100_000] {
            for vec in [4, 8] {
                let t = cfg(cols, vec);
                assert!(t % 32 == 0 && (32..=QRT_MAX_BLOCK_THREADS).contains(&t));
            }
        }
    }
}
