//! [`CudaDevice`]: a CUDA context on one GPU, its stream and the loaded modules.

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
};
use cudarc::nvrtc::Ptx;

use crate::error::cuda_err;
use crate::{ptx, KernelError, BUILD_INFO};

/// Oldest compute capability the kernels are built for (`sm_80`).
const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// A CUDA context on one GPU, with a stream and the kernel modules it has
/// loaded so far (each module's PTX is loaded on first use and cached).
///
/// The PTX is picked by compute capability: `sm_90` PTX on devices of
/// capability 9.0 and newer, `sm_80` PTX on 8.x; the driver JIT-compiles it.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    total_memory: usize,
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("total_memory", &self.total_memory)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal` (0-based).
    ///
    /// Never panics for want of a GPU: without a loadable `libcuda.so` this is
    /// [`KernelError::NoDriver`]; with a driver but no such device, or one older
    /// than compute capability 8.0, it is [`KernelError::NoDevice`]. It
    /// succeeds on a build without kernels (then launches fail with
    /// [`KernelError::NoKernels`]).
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        // cudarc panics on its first driver call if libcuda cannot be loaded,
        // so look for the library first.
        // SAFETY: only dlopen()s libcuda under its usual names, and closes it.
        if !unsafe { sys::is_culib_present() } {
            return Err(KernelError::NoDriver(
                "no CUDA driver found (libcuda.so): the library could not be loaded; \
                 is the NVIDIA driver installed?"
                    .to_string(),
            ));
        }
        // A library that loads but lacks a symbol cudarc needs also panics.
        panic::catch_unwind(AssertUnwindSafe(|| Self::open(ordinal))).unwrap_or_else(|payload| {
            let reason = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(KernelError::NoDriver(format!(
                "the CUDA driver library (libcuda.so) is not usable: {reason}"
            )))
        })
    }

    fn open(ordinal: usize) -> Result<Self, KernelError> {
        if let Err(e) = result::init() {
            return Err(if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                KernelError::NoDevice(format!("the CUDA driver sees no GPU ({e})"))
            } else {
                KernelError::NoDriver(format!("the CUDA driver failed to initialise: {e}"))
            });
        }
        let count = CudaContext::device_count().map_err(cuda_err("counting devices"))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(KernelError::NoDevice(format!(
                "device {ordinal} requested, the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err(format_args!(
            "creating a context on device {ordinal}"
        )))?;
        let name = ctx.name().map_err(cuda_err(format_args!(
            "querying the name of device {ordinal}"
        )))?;
        let compute_capability = ctx.compute_capability().map_err(cuda_err(format_args!(
            "querying the compute capability of device {ordinal}"
        )))?;
        if compute_capability < MIN_COMPUTE_CAPABILITY {
            return Err(KernelError::NoDevice(format!(
                "device {ordinal} ({name}) has compute capability {}.{}; qrt's kernels need {}.{} or newer",
                compute_capability.0,
                compute_capability.1,
                MIN_COMPUTE_CAPABILITY.0,
                MIN_COMPUTE_CAPABILITY.1
            )));
        }
        let total_memory = ctx.total_mem().map_err(cuda_err(format_args!(
            "querying the memory of device {ordinal}"
        )))?;
        let arch = if compute_capability >= (9, 0) {
            "sm_90"
        } else {
            "sm_80"
        };
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            ordinal,
            name,
            compute_capability,
            total_memory,
            arch,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Compute capability (major, minor), e.g. (9, 0).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }

    /// The PTX arch used on this device: `sm_90` or `sm_80`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The stream all work of this device goes to.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `kernel` of module `module` (loading and caching the module on first use).
    pub(crate) fn function(
        &self,
        module: &'static str,
        kernel: &str,
    ) -> Result<CudaFunction, KernelError> {
        let loaded = {
            let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
            match modules.get(module) {
                Some(loaded) => loaded.clone(),
                None => {
                    let loaded = self.load_module(module)?;
                    modules.insert(module, loaded.clone());
                    loaded
                }
            }
        };
        loaded.load_function(kernel).map_err(cuda_err(format_args!(
            "looking up kernel {kernel} in module {module} ({})",
            self.arch
        )))
    }

    fn load_module(&self, module: &'static str) -> Result<Arc<CudaModule>, KernelError> {
        if !BUILD_INFO.cuda_kernels {
            return Err(KernelError::NoKernels);
        }
        let text = ptx(module, self.arch).ok_or_else(|| {
            KernelError::Cuda(format!("no {} PTX embedded for module {module}", self.arch))
        })?;
        self.ctx
            .load_module(Ptx::from_src(text))
            .map_err(cuda_err(format_args!(
                "loading the {} PTX of module {module} on device {} ({}, compute capability {}.{})",
                self.arch,
                self.ordinal,
                self.name,
                self.compute_capability.0,
                self.compute_capability.1
            )))
    }

    /// Copies `host` to a new device buffer.
    pub(crate) fn upload<T: DeviceRepr>(
        &self,
        what: &str,
        host: &[T],
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(host).map_err(cuda_err(format_args!(
            "uploading {what} ({} elements)",
            host.len()
        )))
    }

    /// Copies a device buffer back to the host.
    pub(crate) fn download<T: DeviceRepr>(
        &self,
        what: &str,
        device: &CudaSlice<T>,
    ) -> Result<Vec<T>, KernelError> {
        self.stream
            .clone_dtoh(device)
            .map_err(cuda_err(format_args!(
                "downloading {what} ({} elements)",
                device.len()
            )))
    }

    /// Waits for the stream and reports any error raised by work on it
    /// (`what` says which work, for the message).
    pub(crate) fn synchronize(&self, what: &str) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(cuda_err(format_args!("{what} (at synchronize)")))?;
        self.ctx
            .check_err()
            .map_err(cuda_err(format_args!("{what} (deferred error)")))
    }
}
