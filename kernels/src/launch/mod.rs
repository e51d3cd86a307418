//! Launchers of the decoder kernels (`gemv_one.cu`, `gemv.cu`, `gemv_tc.cu`, `gemm.cu`,
//! `gemm_wgmma.cu`, `gemm_tma.cu`, `attention.cu`, `elementwise.cu`)
//! over raw device addresses. They check what can be checked from the host (sizes, limits)
//! and pick the kernel variant and grid; the callers (the CUDA backend) own the buffers.
//!
//! This module holds what every launch shares (`cuLaunchKernelEx` with programmatic dependent
//! launch, clusters and a shared-memory preference, and the argument helpers); each family of
//! kernels has its own file: [`gemv`] (its tensor-core plans in [`gemv_plan`]), [`gemm`],
//! [`attention`] and [`elementwise`]; [`carveout`] says how much shared memory a launch asks
//! to keep beside its blocks, [`inventory`] which kernels the launchers may launch.

mod attention;
mod carveout;
mod elementwise;
mod gemm;
mod gemv;
mod gemv_plan;
mod inventory;

pub use attention::{
    attention_decode_work_bytes, attention_tile_rows, DecodePolicy, DecodeTc, MAX_ATTN_GROUP,
};
pub use elementwise::{argmax_keys_per_row, argmax_token};
pub use gemm::GEMM_SKINNY_MAX_M;
pub use gemv::{Fusion, GemvInput, InputNorm, Partitions, MAX_MERGED_PARTITIONS};
pub(crate) use gemv_plan::TcPlan;
pub use gemv_plan::GEMV_TC_MAX_ROWS;
pub use inventory::kernel_inventory;

use carveout::{carveout_percent, SharedReserve};

use std::ffi::c_void;
use std::sync::PoisonError;

use cudarc::driver::{result, sys, CudaFunction, DeviceRepr, DriverError};

use crate::error::cuda_err;
use crate::layouts::{
    qrt_attn_args, qrt_feed, qrt_gemm_args, qrt_gemm_segment, qrt_gemm_tma_args, qrt_gemv_args,
    qrt_gemv_segment, qrt_rope_kv_args, qrt_tensor_map, QRT_ARGMAX_PER_BLOCK, QRT_FEED_MAX_ROWS,
    QRT_GEMV_MAX_BATCH, QRT_GEMV_MAX_SEGMENTS, QRT_GEMV_MAX_SPLIT, QRT_GEMV_TC_MAX_BATCH,
    QRT_MAX_BLOCK_THREADS,
};
use crate::{CudaDevice, KernelError};

// SAFETY: plain C structs of fixed-width fields with no implicit padding, whose layout nvcc and
// bindgen agree on (static_asserts in qrt_kernels.h, the compile-time layout checks bindgen
// writes into layouts.rs).
unsafe impl DeviceRepr for qrt_gemv_args {}
unsafe impl DeviceRepr for qrt_gemm_args {}
unsafe impl DeviceRepr for qrt_gemm_tma_args {}
unsafe impl DeviceRepr for qrt_attn_args {}
unsafe impl DeviceRepr for qrt_rope_kv_args {}
unsafe impl DeviceRepr for qrt_feed {}

/// A 16-bit floating-point weight type of the matrix kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half16 {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Half16 {
    /// Kernel-name suffix: `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Half16::F16 => "f16",
            Half16::Bf16 => "bf16",
        }
    }
}

/// One weight matrix of a GEMV or GEMM launch: `y[b, :] = w @ x[b, :] (+ bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Device address of `w`, `[n, k]` 16-bit, 16-byte aligned.
    pub w: u64,
    /// Device address of `n` f32 biases, or 0.
    pub bias: u64,
    /// Device address of `y`, `[batch, n]` f32.
    pub y: u64,
    /// Rows of `w`.
    pub n: usize,
}

/// Bytes of 16-bit weights from which a product is large enough to gain from overlapping the
/// kernels around it. Measured on an H200 (RESULTS logs 40 and 41); the line separates
/// SmolLM2's products, 0.66-3.5 MB, which lost where they were given either rule, from the
/// 1B's and 8B's, 8.4 MB and up:
/// - decode attention on tensor cores followed by an output projection this large
///   (`heads * head_dim` square, as in the Llama family) takes its longest partitions, which
///   leave multiprocessors to the projection's blocks: the 1B gained at batches 2-4 (up to
///   4.6% at 512-token prompts, 11% at 1,024); on SmolLM2 they lost 2-5% at batches 6 and 8;
/// - a tensor-core GEMV this large lets the next kernel in at its start, before its own wait:
///   the 1B gained 0.3-2% at batches 2-8 and the 8B 1.7% at batch 8; SmolLM2's products,
///   given the same, lost 2-3% at batches 6 and 8.
///
/// And the other way: a skinny GEMM (products of up to 64 rows on Hopper: batched decode
/// beyond the GEMVs, short prefills) of a product below this line requests its first weights
/// before its wait (`_ahead`), so that they stream in while the previous kernel finishes. On
/// an H200 (RESULTS log 57, call 5) that took SmolLM2's decode step at 17 / 64 sequences -4.2
/// / -3.4%; the 1B's products, given the same, lost 2.0 / 2.1% at 17 / 32 (their early
/// weights compete with the attention's keys and values; call 4), the 8B's 0.1-0.6% at 24,
/// and the prefill GEMMs (TMA) gained nothing from it.
const OVERLAP_BYTES: usize = 4 << 20;

/// Threads of a block that gives each of `units` work items a thread: whole warps, at least
/// one, at most `QRT_MAX_BLOCK_THREADS`.
pub(crate) fn block_threads(units: usize) -> u32 {
    (units.div_ceil(32) * 32).clamp(32, QRT_MAX_BLOCK_THREADS as usize) as u32
}

/// Options of a launch beyond its grid and parameters.
#[derive(Clone, Copy, Debug)]
struct LaunchOptions {
    /// Thread-block clusters of this many blocks along z (1: none).
    cluster_z: u32,
    /// Programmatic dependent launch (where the device has it).
    overlap: bool,
    /// A preferred shared-memory configuration for this launch (else the driver's choice).
    reserve: Option<SharedReserve>,
}

/// Lets `f` take `shared` bytes of dynamic shared memory: above 48 KiB (with its static
/// shared memory) a kernel must opt in.
fn allow_dynamic_shared(f: &CudaFunction, shared: u32) -> Result<(), DriverError> {
    if shared == 0 {
        return Ok(());
    }
    let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    if i64::from(shared) > i64::from(f.get_attribute(attribute)?) {
        f.set_attribute(attribute, shared as i32)?;
    }
    Ok(())
}

/// The launch attribute for clusters of `cluster_z` blocks along z, allowing `f` sizes beyond
/// the portable 8 where asked (Hopper allows 16).
fn cluster_attribute(
    f: &CudaFunction,
    cluster_z: u32,
) -> Result<sys::CUlaunchAttribute, DriverError> {
    if cluster_z > 8 {
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
            1,
        )?;
    }
    let mut attr =
        zeroed_attribute(sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION);
    attr.value.clusterDim.x = 1;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = cluster_z;
    Ok(attr)
}

/// A launch attribute of kind `id`, its value zeroed for the caller to fill.
fn zeroed_attribute(id: sys::CUlaunchAttributeID) -> sys::CUlaunchAttribute {
    sys::CUlaunchAttribute {
        id,
        pad: [0; 4],
        // SAFETY: an all-zero union is a valid value; the caller sets the field that is read.
        value: unsafe { std::mem::zeroed() },
    }
}

fn u32_of(what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| KernelError::Shape(format!("{what} = {v} does not fit 32 bits")))
}

/// A launch of `what` multiplies 1 to QRT_GEMV_MAX_SEGMENTS matrices.
fn check_segments(what: &str, count: usize) -> Result<(), KernelError> {
    if count == 0 || count > QRT_GEMV_MAX_SEGMENTS as usize {
        return Err(KernelError::Shape(format!(
            "{what} takes 1 to {QRT_GEMV_MAX_SEGMENTS} matrices, got {count}"
        )));
    }
    Ok(())
}

/// Pointers to kernel arguments, in order, as cuLaunchKernel takes them.
pub(crate) fn params<const N: usize>(values: [&dyn Param; N]) -> [*mut c_void; N] {
    values.map(|v| v.ptr())
}

/// A kernel argument, passed by address.
pub(crate) trait Param {
    fn ptr(&self) -> *mut c_void;
}

impl<T: DeviceRepr> Param for T {
    fn ptr(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

impl CudaDevice {
    /// Launches `kernel` of `module` with 1-D blocks of `block` threads.
    ///
    /// # Safety
    /// `params` must point to values matching the kernel's parameter list, and every device
    /// address among them must be valid for what the kernel does with it.
    pub(crate) unsafe fn launch(
        &self,
        module: &'static str,
        kernel: &str,
        grid: (u32, u32, u32),
        block: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_config(module, kernel, (grid, block, 0), params, true) }
    }

    /// Launches `kernel` of `module` with (grid, threads per block, dynamic shared bytes),
    /// with programmatic dependent launch only when `overlap` (large kernels that fill the GPU
    /// run better without it).
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    pub(crate) unsafe fn launch_config(
        &self,
        module: &'static str,
        kernel: &str,
        config: ((u32, u32, u32), u32, usize),
        params: &mut [*mut c_void],
        overlap: bool,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_clustered(module, kernel, config, 1, params, overlap) }
    }

    /// [`launch_config`](Self::launch_config) with thread-block clusters of `cluster_z` blocks
    /// along z (1: none; more than 8 only where the device allows non-portable sizes).
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    pub(crate) unsafe fn launch_clustered(
        &self,
        module: &'static str,
        kernel: &str,
        config: ((u32, u32, u32), u32, usize),
        cluster_z: u32,
        params: &mut [*mut c_void],
        overlap: bool,
    ) -> Result<(), KernelError> {
        let options = LaunchOptions {
            cluster_z,
            overlap,
            reserve: None,
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_with(module, kernel, config, params, options) }
    }

    /// [`launch_clustered`](Self::launch_clustered) with every option.
    ///
    /// # Safety
    /// As for [`launch`](Self::launch).
    unsafe fn launch_with(
        &self,
        module: &'static str,
        kernel: &str,
        (grid, block, shared): ((u32, u32, u32), u32, usize),
        params: &mut [*mut c_void],
        LaunchOptions {
            cluster_z,
            overlap,
            reserve,
        }: LaunchOptions,
    ) -> Result<(), KernelError> {
        let f = self.function(module, kernel)?;
        self.bind()?;
        let context = || format!("launching {kernel} (grid {grid:?}, block {block})");
        let shared = u32_of("shared memory bytes", shared)?;
        allow_dynamic_shared(&f, shared).map_err(cuda_err(context()))?;
        let pdl = self.programmatic_launch && overlap;
        let mut attrs: Vec<sys::CUlaunchAttribute> = Vec::with_capacity(3);
        if let Some(reserve) = reserve {
            let fixed = f
                .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(cuda_err(context()))?;
            let per_block =
                shared as usize + usize::try_from(fixed).unwrap_or(0) + self.shared_reserved;
            let mut attr = zeroed_attribute(
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            );
            attr.value.sharedMemCarveout = carveout_percent(reserve, per_block, self.shared_per_sm);
            attrs.push(attr);
        }
        if pdl {
            // Programmatic dependent launch: this kernel may start while the previous one
            // finishes; it waits (griddepcontrol.wait) before reading what that one wrote.
            let mut attr = zeroed_attribute(
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            );
            attr.value.programmaticStreamSerializationAllowed = 1;
            attrs.push(attr);
        }
        if cluster_z > 1 {
            attrs.push(cluster_attribute(&f, cluster_z).map_err(cuda_err(context()))?);
        }
        if attrs.is_empty() {
            // SAFETY: the caller guarantees the parameters; the driver checks grid and block.
            return unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    grid,
                    (block, 1, 1),
                    shared,
                    self.stream.cu_stream(),
                    params,
                )
            }
            .map_err(cuda_err(context()));
        }
        let config = self.launch_config_of(grid, block, shared, &mut attrs);
        // SAFETY: as above; `config` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(cuda_err(context()))
    }

    /// The launch configuration of `grid` blocks of `block` threads with `shared` bytes of
    /// dynamic shared memory and `attrs`, on this device's stream (it points into `attrs`).
    fn launch_config_of(
        &self,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        attrs: &mut [sys::CUlaunchAttribute],
    ) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shared,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        }
    }

    /// How many clusters of `cluster_z` blocks of `kernel` (`block` threads, `shared` bytes of
    /// dynamic shared memory) the device holds at once.
    pub(crate) fn max_active_clusters(
        &self,
        module: &'static str,
        kernel: &str,
        block: u32,
        shared: usize,
        cluster_z: usize,
    ) -> Result<usize, KernelError> {
        let f = self.function(module, kernel)?;
        self.bind()?;
        let context = || format!("occupancy of {kernel} in clusters of {cluster_z}");
        let shared = u32_of("shared memory bytes", shared)?;
        let cluster_z = u32_of("cluster size", cluster_z)?;
        allow_dynamic_shared(&f, shared).map_err(cuda_err(context()))?;
        let mut attrs = [cluster_attribute(&f, cluster_z).map_err(cuda_err(context()))?];
        let config = self.launch_config_of((1, 1, cluster_z), block, shared, &mut attrs);
        let mut clusters = 0i32;
        // SAFETY: `config` and `attrs` outlive the call, which only reads them.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &config) }
            .result()
            .map_err(cuda_err(context()))?;
        Ok(usize::try_from(clusters).unwrap_or(0))
    }
}
